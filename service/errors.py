"""The HTTP error envelope and the mapping of domain errors to it.

Every error response is `{"error": {"code", "message", "details"}}`. Messages say what is
wrong with the request; they never carry tracebacks, file paths or Redis internals. A 500 says
only "internal error" and the request's id (also in the `X-Request-ID` header), which is what
the service's log line of the failure carries too.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisClusterException, RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from genrec.errors import (
    BundleError,
    ConfigError,
    DataError,
    GenRecError,
    IdExhaustedError,
    StoreUnavailableError,
    UnknownItemError,
)

log = logging.getLogger("service")

REQUEST_ID_HEADER = "x-request-id"


def request_id_of(scope) -> str | None:
    """The id `middleware.RequestIdMiddleware` gave this request (None outside it)."""
    return (scope.get("state") or {}).get("request_id")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """What every 4xx/5xx response carries."""

    error: ErrorBody


class ApiError(Exception):
    """An error the API layer raises on purpose, with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(status: int, code: str, message: str, details: Any = None, headers=None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(field: str, message: str) -> ApiError:
    """A 422 for one request field, shaped like the validation errors."""
    return ApiError(422, "invalid_request", f"{field}: {message}", {"fields": [{"field": field, "message": message}]})


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def domain_error(exc: GenRecError) -> ApiError:
    """Domain exception -> the API error that reports it."""
    if isinstance(exc, UnknownItemError):
        return ApiError(
            422,
            "unknown_items",
            f"{len(exc.item_ids)} item id(s) are not in the catalog",
            {"item_ids": exc.item_ids},
        )
    if isinstance(exc, StoreUnavailableError):
        return ApiError(503, "store_unavailable", "the item registry (Redis) is unavailable; try again later")
    if isinstance(exc, IdExhaustedError):
        return ApiError(503, "id_exhausted", "no free textual ID could be minted for this item")
    if isinstance(exc, ConfigError | DataError):
        return ApiError(422, "invalid_request", str(exc))
    if isinstance(exc, BundleError):
        return ApiError(503, "bundle_unavailable", "the model bundle is not usable")
    return ApiError(500, "internal_error", "internal error")


def _count_redis_error(request: Request) -> None:
    state = getattr(request.app.state, "service", None)
    if state is not None:
        state.metrics.redis_errors.labels(operation="request").inc()


def _field_name(loc: tuple, error_type: str | None = None) -> str:
    if error_type == "json_invalid":  # its loc is a character offset, not a field
        return "body"
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def internal_error(request: Request) -> JSONResponse:
    """The one body every unexpected failure gets: no exception text, only the request id."""
    request_id = request_id_of(request.scope)
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return error_response(500, "internal_error", "internal error", {"request_id": request_id}, headers)


HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path (a path such as
    /v1/items has a route per method), asked of the router itself: included routers hold their
    routes out of sight."""
    allowed = []
    for method in HTTP_METHODS:
        scope = {"type": "http", "path": request.url.path, "root_path": "", "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        fields = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            fields.append({"field": _field_name(loc, err.get("type")), "message": err.get("msg", "invalid"), "type": err.get("type")})
        if any(f["type"] == "json_invalid" for f in fields):
            return error_response(400, "invalid_json", "the request body is not valid JSON", {"fields": fields})
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return error_response(422, "invalid_request", summary or "invalid request", {"fields": fields})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names the methods of the first route of the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, code, message, None, headers)

    @app.exception_handler(GenRecError)
    async def _domain(request: Request, exc: GenRecError):
        err = domain_error(exc)
        if isinstance(exc, StoreUnavailableError):
            _count_redis_error(request)
        if err.status == 500:
            log.error("request %s failed: %s: %s", request_id_of(request.scope), type(exc).__name__, exc)
            return internal_error(request)
        if err.status > 500:
            log.warning("request failed: %s: %s", type(exc).__name__, exc)
        return error_response(err.status, err.code, err.message, err.details)

    @app.exception_handler(RedisError)
    @app.exception_handler(RedisClusterException)  # the cluster client's: no reachable node, slots not covered
    async def _redis(request: Request, exc: RedisError | RedisClusterException):
        log.warning("Redis error: %s: %s", type(exc).__name__, exc)
        _count_redis_error(request)
        return error_response(503, "store_unavailable", "the item registry (Redis) is unavailable; try again later")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path,
                      request_id_of(request.scope))
        return internal_error(request)
