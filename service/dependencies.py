"""FastAPI dependencies shared by the routers: the app's `ServiceState`, access control (tokens
and scopes, the per-client quotas; the rules are in service/access.py), the request's deadline
and disconnect watch, and the JSON body check.

The routes hold no state of their own: they reach the app instance's `ServiceState`
(request.app.state.service) through these, so one module can serve any number of apps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import Request

from .access import authorize, charge
from .errors import ApiError
from .generation import Generation
from .settings import ApiKey
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


async def serving(request: Request) -> AsyncIterator[Generation]:
    """The generation (bundle, catalog, engine) that serves when the request starts, held until
    it ends: a reload meanwhile does not change what this request runs on."""
    async with get_state(request).lease() as generation:
        yield generation


# Neither dependency declares the bearer token itself: whether an operation needs one depends on
# the settings, and create_app declares it in the OpenAPI document where it does.


async def read_access(request: Request) -> ApiKey | None:
    """Reads: open unless GENREC_REQUIRE_READ_TOKEN (a sent token must still be valid), and one
    unit of the read quota."""
    state = get_state(request)
    key = await authorize(request, state, "read", state.settings.require_read_token)
    await charge(request, state, "read", key)
    return key


async def write_access(request: Request) -> ApiKey | None:
    """Writes need a token with the write scope (unless GENREC_ALLOW_ANONYMOUS_WRITES and no
    write token is configured), and one unit of the write quota."""
    state = get_state(request)
    key = await authorize(request, state, "write", state.write_protected)
    await charge(request, state, "write", key)
    return key


def guarded(endpoint: Literal["metrics", "docs", "admin"]):
    """A dependency for /metrics or the docs: 404 when off, a read token when `token`; for the
    /admin endpoints: 404 unless some token has the admin scope, and a token with it."""

    async def dependency(request: Request) -> None:
        state = service_state(request)
        access = state.settings.access(endpoint)
        if access == "off":
            raise ApiError(404, "not_found", "not found")
        if access == "token":
            await authorize(request, state, "admin" if endpoint == "admin" else "read", required=True)

    dependency.guards = endpoint  # create_app reads it for the OpenAPI document
    return dependency


def request_deadline(request: Request) -> float:
    """Loop time by which the request must be answered (GENREC_REQUEST_TIMEOUT_S after it came in)."""
    state = service_state(request)
    started = (request.scope.get("state") or {}).get("started")
    if started is None:
        started = asyncio.get_running_loop().time()
    return started + state.settings.request_timeout_s


@contextlib.asynccontextmanager
async def client_gone(request: Request) -> AsyncIterator[asyncio.Event]:
    """An event set when the client disconnects while the request is being handled (the body
    has been read by then, so the next ASGI message can only be the disconnect)."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    task = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def require_json(request: Request) -> None:
    """A body must be JSON: a 415 that says so beats a 422 about a missing object."""
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if has_body and not (media_type == "application/json" or media_type.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "the request body must be JSON (Content-Type: application/json)",
                       {"content_type": media_type or None})
