"""The FastAPI app: `create_app(settings)`, where the parts meet.

It builds one `ServiceState` (service/state.py) and the app around it: its lifespan, the error
handlers, the middleware and the routers (service/routes/). Nothing heavy happens at import;
the bundle and Redis are loaded by the lifespan.
"""

from __future__ import annotations

from fastapi import FastAPI

from .errors import install_error_handlers
from .middleware import BodySizeLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from .routes import ROUTERS
from .settings import Settings
from .state import ServiceState, lifespan

__all__ = ["API_VERSION", "ServiceState", "create_app"]

API_VERSION = "1.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    state = ServiceState(settings)
    app = FastAPI(
        title="genrec",
        version=API_VERSION,
        description=(
            "Generative recommendation (IDGenRec): textual item IDs, trie-constrained beam search, "
            "and ID minting for new items. Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`."
        ),
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    return app
