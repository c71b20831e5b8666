"""FastAPI dependencies shared by the routers: the app's `ServiceState`, the write-token check
and the JSON body check.

The routes hold no state of their own: they reach the app instance's `ServiceState`
(request.app.state.service) through these, so one module can serve any number of apps.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError
from .state import ServiceState


def service_state(request: Request) -> ServiceState:
    """The app's state, ready or not (health, readiness and metrics answer either way)."""
    return request.app.state.service


def get_state(request: Request) -> ServiceState:
    """The app's state once it is ready; 503 `not_ready` while it starts or stops."""
    state = service_state(request)
    if not state.ready:
        raise ApiError(503, "not_ready", "the service is starting or stopping")
    return state


# Declared for the OpenAPI document (so clients and fuzzers know write endpoints take a bearer
# token); auto_error is off because the check, and whether a token is needed at all, is ours.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="the service's API token (API_TOKEN); write endpoints need it when one is set",
)


def require_write_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    """Write endpoints need `Authorization: Bearer <token>` when a token is set. The comparison
    is constant-time (hmac.compare_digest), so answer timing tells nothing about the token."""
    settings = service_state(request).settings
    if not settings.write_protected():
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, expected):
        raise ApiError(
            401,
            "unauthorized",
            "this endpoint needs 'Authorization: Bearer <API token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_json(request: Request) -> None:
    """A body must be JSON: a 415 that says so beats a 422 about a missing object."""
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if has_body and not (media_type == "application/json" or media_type.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "the request body must be JSON (Content-Type: application/json)",
                       {"content_type": media_type or None})
