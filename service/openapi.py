"""The error responses each route declares in the OpenAPI document, from one table, so that
every route describes the same error with the same words and the shared `ErrorResponse` body."""

from __future__ import annotations

from .errors import ErrorResponse

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "the body is not valid JSON",
        401: "missing or wrong API token",
        404: "unknown item",
        413: "request body too large",
        415: "the body is not JSON",
        422: "invalid request (fields listed in details) or unknown item ids",
        500: "internal error: a generic message and the request id (details.request_id, X-Request-ID)",
        503: "not ready, or Redis unavailable",
    }.items()
}


def error_responses(*statuses: int) -> dict:
    """The error responses of a route, for its OpenAPI entry; every route can answer 500."""
    return {s: ERROR_RESPONSES[s] for s in (*statuses, 500)}
