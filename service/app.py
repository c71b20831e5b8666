"""The FastAPI app: `create_app(settings)`, where the parts meet.

It builds one `ServiceState` (service/state.py) and the app around it: its lifespan, the error
handlers, the middleware and the routers (service/routes/). Nothing heavy happens at import;
the bundle and Redis are loaded by the lifespan.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute

from .access import QuotaGate
from .dependencies import read_access
from .errors import install_error_handlers
from .middleware import BodySizeLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from .openapi import mark_secured, set_max_items
from .routes import ROUTERS, docs, page
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
        # Served by routes/docs.py instead: from the package's own files, and behind GENREC_DOCS_ACCESS.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(QuotaGate)  # innermost: runs after the request id and the metrics are in place
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)
    for router in (*ROUTERS, docs.router, page.router):
        app.include_router(router)
    _declare_limits(app, settings)
    if settings.require_read_token:
        _declare_read_token(app)
    return app


def _declare_limits(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document shows the request limits the settings chose."""
    generate = app.openapi

    def openapi() -> dict:
        return set_max_items(generate(), "EventsRequest", "events", settings.max_events_per_request)

    app.openapi = openapi


def _declare_read_token(app: FastAPI) -> None:
    """The OpenAPI document marks the reads (the routes behind `read_access`) as needing the
    bearer token too."""
    reads = {
        (method, route.path_format)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and any(d.call is read_access for d in route.dependant.dependencies)
        for method in route.methods
    }
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = mark_secured(generate(), reads)
        return app.openapi_schema

    app.openapi = openapi
