"""The error responses each route declares in the OpenAPI document, from one table, so that
every route describes the same error with the same words and the shared `ErrorResponse` body."""

from __future__ import annotations

from .errors import ErrorResponse

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "the body is not valid JSON",
        401: "missing or wrong API token",
        403: "the API token lacks the scope this endpoint needs",
        404: "unknown item (or an endpoint turned off)",
        413: "request body too large",
        415: "the body is not JSON",
        422: "invalid request (fields listed in details) or unknown item ids",
        429: "over the client's rate limit, or too many wrong tokens from its address (see Retry-After)",
        500: "internal error: a generic message and the request id (details.request_id, X-Request-ID)",
        503: "not ready, Redis unavailable, or overloaded: the queue is full or the request's deadline "
        "passed (see Retry-After)",
    }.items()
}


def error_responses(*statuses: int) -> dict:
    """The error responses of a route, for its OpenAPI entry; every route can answer 500."""
    return {s: ERROR_RESPONSES[s] for s in (*statuses, 500)}


def set_max_items(schema: dict, model: str, field: str, most: int) -> dict:
    """Declares a list field's cap that a setting chooses at start (maxItems) in the OpenAPI
    document, so the schema shows the limit the server enforces."""
    schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {}).get(field, {})[
        "maxItems"] = most
    return schema


def mark_secured(schema: dict, operations: set[tuple[str, str]]) -> dict:
    """Declares the bearer token on `operations` ((method, path) pairs) of an OpenAPI document:
    the reads, when GENREC_REQUIRE_READ_TOKEN makes them need one."""
    for path, entries in schema.get("paths", {}).items():
        for method, operation in entries.items():
            if (method.upper(), path) in operations:
                operation["security"] = [{"apiToken": []}]
    return schema
