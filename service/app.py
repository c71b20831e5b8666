"""The FastAPI app: `create_app(settings)`, where the parts meet.

It builds one `ServiceState` (service/state.py) and the app around it: its lifespan, the error
handlers, the middleware and the routers (service/routes/). Nothing heavy happens at import;
the bundle and Redis are loaded by the lifespan.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute

from .access import QuotaGate
from .dependencies import read_access, write_access
from .errors import install_error_handlers
from .middleware import BodySizeLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from .openapi import apply_settings, mark_secured, setting_keywords
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
    _serve_exact_document(app, settings)
    return app


def _serve_exact_document(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document says what this app, as configured, does: the limits that are
    settings, the bearer token on the operations that need one (writes with a write token
    configured, reads with GENREC_REQUIRE_READ_TOKEN, /metrics behind `token`), and no operation
    that is turned off."""
    secured, hidden = set(), set()
    for router in ROUTERS:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            calls = [d.call for d in route.dependant.dependencies]
            if any(_needs_token(call, settings) for call in calls):
                secured |= {(method, route.path_format) for method in route.methods}
            if any(settings.access(call.guards) == "off" for call in calls if hasattr(call, "guards")):
                hidden.add(route.path_format)
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = apply_settings(generate(), setting_keywords(settings))
            for path in hidden:
                document["paths"].pop(path, None)
            app.openapi_schema = mark_secured(document, secured)
        return app.openapi_schema

    app.openapi = openapi


def _needs_token(dependency, settings: Settings) -> bool:
    if dependency is read_access:
        return settings.require_read_token
    if dependency is write_access:
        return settings.write_protected()
    guarded = getattr(dependency, "guards", None)  # /metrics (dependencies.guarded)
    return guarded is not None and settings.access(guarded) == "token"
