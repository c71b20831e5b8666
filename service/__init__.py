"""The online service: FastAPI app, Redis item registry, micro-batching, metrics.

`service.app.create_app(settings)` builds the app; `genrec-serve` (service.cli) runs it.
Depends on `genrec` only.
"""
