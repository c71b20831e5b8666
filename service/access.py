"""Access control and quotas (docs/configuration.md, "Security"): who the caller is (its API
token's key, else its address), whether it may do what it asks (scopes), the throttle on wrong
tokens, and the per-client rate limits (service/limits.py counts them).

Two places use it. `QuotaGate`, an ASGI middleware, answers 429 to a caller that is already
refused for the rest of a window, before the body is read or parsed; every refusal is held
back for half to all of GENREC_REFUSAL_DELAY_S: a client that ignores Retry-After and sends
again at once gets about one refusal per connection per delay, so a flood of refusals does not
take the event loop from the callers within their quota. The FastAPI dependencies (service/dependencies.py) then do the full checks
and count each request that gets through.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import random
from typing import TYPE_CHECKING, Literal

from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, error_response
from .limits import retry_after
from .settings import ApiKey

if TYPE_CHECKING:
    from .state import ServiceState

Kind = Literal["read", "write", "admin"]
COST_K = 10  # a recommendation counts ceil(k / COST_K) against the read limit (its beams cost that)
MAX_HELD = 1024  # refusals held back at once (per app); past it they are answered at once
_UNSET = object()


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, parsed as HTTPBearer does."""
    authorization = request.headers.get("authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


def client_address(request: Request) -> str:
    """The client's address (uvicorn puts the proxy's client there when FORWARDED_ALLOW_IPS
    trusts the proxy)."""
    return request.client.host if request.client is not None else "unknown"


def caller(request: Request, state: ServiceState) -> tuple[str | None, ApiKey | None]:
    """(the bearer token sent, the key it matches), worked out once per request. Every key is
    compared, each in constant time (hmac.compare_digest), so the answer's timing tells
    nothing about any token."""
    found = getattr(request.state, "genrec_caller", _UNSET)
    if found is not _UNSET:
        return found
    given, key = bearer_token(request), None
    if given is not None:
        for candidate in state.keys:
            if hmac.compare_digest(given.encode(), candidate.secret) and key is None:
                key = candidate
    request.state.genrec_caller = (given, key)
    return given, key


WRITE_PATHS = frozenset({"/v1/items", "/v1/events"})  # POSTed to, they write (routes behind write_access)


def kind_of(method: str, path: str) -> Kind | None:
    """Which quota a /v1 request counts against (None: not a /v1 request)."""
    if not path.startswith("/v1/"):
        return None
    return "write" if method == "POST" and path in WRITE_PATHS else "read"


def needs_token(state: ServiceState, kind: Kind) -> bool:
    return state.write_protected if kind == "write" else state.settings.require_read_token


def bucket(kind: Kind, key: ApiKey | None, address: str) -> str:
    """Whose quota: the token's name when a valid token was sent, else the address."""
    return f"{kind}:" + (f"key:{key.name}" if key is not None else f"addr:{address}")


def throttled_error(wait: float) -> ApiError:
    return ApiError(429, "too_many_requests", "too many wrong tokens from this address; retry later",
                    headers=retry_after(wait))


def rate_limited_error(state: ServiceState, kind: Kind, wait: float) -> ApiError:
    s = state.settings
    limit = s.rate_limit_read if kind == "read" else s.rate_limit_write
    return ApiError(429, "too_many_requests", f"over the limit of {limit} {kind} requests per "
                    f"{s.rate_limit_window_s:g} s", {"limit": limit, "window_s": s.rate_limit_window_s},
                    headers=retry_after(wait))


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


async def authorize(request: Request, state: ServiceState, kind: Kind, required: bool) -> ApiKey | None:
    """The caller's key (None: anonymous). A token that is sent must be valid, wherever it is
    sent; `required`: the endpoint needs a token with the `kind` scope (401 without one, 403
    when the token lacks it). Wrong tokens are counted per client address across replicas:
    past GENREC_AUTH_FAILURE_LIMIT in a window, every token from that address gets 429 until
    the window ends, the right one included (so guessing learns nothing more)."""
    given, key = caller(request, state)
    if given is None and not required:
        return None
    address = client_address(request)
    s = state.settings
    throttled = state.limiter.blocked_for(f"auth:{address}")
    if throttled:
        state.metrics.shed.labels(reason="auth_throttled").inc()
        raise throttled_error(throttled)
    if given is None:
        raise unauthorized("this endpoint needs 'Authorization: Bearer <API token>'")
    if key is None:
        await state.limiter.hit(f"auth:{address}", s.auth_failure_limit - 1, s.auth_failure_window_s)
        raise unauthorized("this endpoint needs 'Authorization: Bearer <API token>'" if required
                           else "the API token is not valid")
    if required and kind not in key.scopes:
        raise ApiError(403, "forbidden", f"the API token {key.name!r} lacks the {kind} scope")
    return key


async def charge(request: Request, state: ServiceState, kind: Kind, key: ApiKey | None, cost: int = 1) -> None:
    """Counts `cost` against the caller's `kind` quota (GENREC_RATE_LIMIT_READ / _WRITE per
    GENREC_RATE_LIMIT_WINDOW_S); 429 with Retry-After once it is over."""
    s = state.settings
    limit = s.rate_limit_read if kind == "read" else s.rate_limit_write
    if not limit or cost <= 0:
        return
    name = bucket(kind, key, client_address(request))
    wait = state.limiter.blocked_for(name) or await state.limiter.hit(name, limit, s.rate_limit_window_s, cost)
    if wait:
        state.metrics.shed.labels(reason="rate_limited").inc()
        await hold_back(state, wait)
        raise rate_limited_error(state, kind, wait)


async def hold_back(state: ServiceState, wait: float) -> None:
    """Holds a refusal back for half to all of the refusal delay (at random, so that refused
    clients come back spread out, not all at the next window's start), unless MAX_HELD are held
    already: a client that retries at once then costs about one request per delay."""
    delay = state.settings.refusal_delay_s * random.uniform(0.5, 1.0)
    if delay <= 0 or state.limiter.held >= MAX_HELD:
        return
    state.limiter.held += 1
    try:
        await asyncio.sleep(delay)
    finally:
        state.limiter.held -= 1


def recommendation_cost(k: int) -> int:
    """What a recommendation counts against the read limit: its beam search grows with k."""
    return max(1, math.ceil(k / COST_K))


class QuotaGate:
    """429 before the body is read, for a /v1 caller refused for the rest of the window (its
    quota spent, or too many wrong tokens from its address), held back for up to the refusal
    delay. Everything else passes on to the routes, whose dependencies count it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = kind_of(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
        state = getattr(scope["app"].state, "service", None) if kind is not None and "app" in scope else None
        if state is None or not state.ready:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given, key = caller(request, state)
        address = client_address(request)
        error, wait = None, 0.0
        if given is not None or needs_token(state, kind):
            wait = state.limiter.blocked_for(f"auth:{address}")
            if wait:
                state.metrics.shed.labels(reason="auth_throttled").inc()
                error = throttled_error(wait)
        if error is None:
            wait = state.limiter.blocked_for(bucket(kind, key, address))
            if wait:
                state.metrics.shed.labels(reason="rate_limited").inc()
                error = rate_limited_error(state, kind, wait)
        if error is None:
            await self.app(scope, receive, send)
            return
        await hold_back(state, wait)
        await error_response(error.status, error.code, error.message, error.details, error.headers)(scope, receive, send)
