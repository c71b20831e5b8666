"""The OpenAPI document as served: the error responses each route declares, from one table (so
that every route describes the same error with the same words and the shared `ErrorResponse`
body), and what depends on the settings: the limits that are settings, and the bearer token on
exactly the operations that need one (docs/api.md, "The OpenAPI document")."""

from __future__ import annotations

from .errors import ErrorResponse
from .schemas import SETTINGS_KEY, words_at_most
from .settings import Settings

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "the body is not valid JSON",
        401: "missing or wrong API token",
        403: "the API token lacks the scope this endpoint needs",
        404: "unknown item (or an endpoint turned off)",
        409: "the item exists with other metadata (item_conflict; details: both metadata digests); nothing stored",
        413: "request body too large (GENREC_MAX_BODY_BYTES), or the item text of the metadata over "
        "GENREC_MAX_METADATA_CHARS characters",
        415: "the body is not JSON",
        422: "invalid request (fields listed in details) or unknown item ids",
        429: "over the client's rate limit, or too many wrong tokens from its address (see Retry-After)",
        499: "the client closed the connection before the answer (logged; no client reads it)",
        500: "internal error: a generic message and the request id (details.request_id, X-Request-ID)",
        503: "not ready, Redis unavailable, or overloaded: the queue is full or the request's deadline "
        "passed (see Retry-After)",
    }.items()
}


def error_responses(*statuses: int) -> dict:
    """The error responses of a route, for its OpenAPI entry; every route can answer 500."""
    return {s: ERROR_RESPONSES[s] for s in (*statuses, 500)}


SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "an API token (API_TOKEN or API_TOKENS): writes need one with the write scope, reads one "
    "with the read scope when GENREC_REQUIRE_READ_TOKEN=true. Declared only on the operations that need one "
    "as configured; a token sent to any other must still be valid (401)",
}
# The JSON Schema type each keyword a setting gives applies to (a field that may be null has its
# keyword on the branch of that type).
_KEYWORD_TYPES = {"maxItems": "array", "maximum": "integer", "maxProperties": "object", "maxLength": "string",
                  "pattern": "string", "default": "integer"}


def mark_secured(schema: dict, operations: set[tuple[str, str]]) -> dict:
    """Declares the bearer token on `operations` ((method, path) pairs) of an OpenAPI document,
    and its scheme when any operation needs it."""
    for path, entries in schema.get("paths", {}).items():
        for method, operation in entries.items():
            if (method.upper(), path) in operations:
                operation["security"] = [{"apiToken": []}]
                schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiToken"] = SECURITY_SCHEME
    return schema


def setting_keywords(settings: Settings) -> dict[str, dict]:
    """The JSON Schema keywords of each setting a request field is limited by (the names that
    schemas.set_by takes); state.py enforces the same values."""
    return {
        "max_history": {"maxItems": settings.max_history},
        "max_events_per_request": {"maxItems": settings.max_events_per_request},
        "max_k": {"maximum": settings.max_k, "default": settings.max_k},
        "max_metadata_fields": {"maxProperties": settings.max_metadata_fields},
        "max_metadata_value_chars": {"maxLength": settings.max_metadata_value_chars},
        "max_metadata_word_chars": {"pattern": words_at_most(settings.max_metadata_word_chars)},
    }


def apply_settings(node, keywords: dict[str, dict]):
    """Replaces every `x-genrec-settings` list in the document by the keywords of those settings;
    a setting only tightens the static limit a field has (pydantic enforces that one)."""
    if isinstance(node, list):
        for item in node:
            apply_settings(item, keywords)
    elif isinstance(node, dict):
        for name in node.pop(SETTINGS_KEY, ()):
            for keyword, value in keywords[name].items():
                for target in _of_type(node, _KEYWORD_TYPES[keyword]):
                    bounded = keyword != "pattern" and keyword in target
                    target[keyword] = min(target[keyword], value) if bounded else value
        for value in node.values():
            apply_settings(value, keywords)
    return node


def _of_type(node: dict, json_type: str) -> list[dict]:
    if node.get("type") == json_type:
        return [node]
    return [branch for branch in node.get("anyOf", ()) if branch.get("type") == json_type]
