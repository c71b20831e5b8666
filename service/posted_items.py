"""What `POST /v1/items` checks beyond pydantic's validation of the body: the metadata limits
that are settings, stated in the OpenAPI document as the same keywords (service/openapi.py), and
whether a re-post of an existing item is the same item (200) or a conflict (409)."""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache

from genrec.item_text import flatten_item_text, flatten_metadata

from .errors import ApiError, invalid
from .registry import ItemRecord
from .schemas import words_at_most
from .settings import Settings


@lru_cache(maxsize=8)
def _words_at_most(max_chars: int) -> re.Pattern[str]:
    return re.compile(words_at_most(max_chars))


def check_metadata(metadata: dict, settings: Settings) -> None:
    """Every metadata limit that is a setting, on the metadata as posted (before the text is cut
    to the bundle's max_text_chars): the field count, and each string's length and longest word
    (a list's strings included), 422 naming the field, as the document's maxProperties,
    maxLength and pattern say; then the length of the whole item text, 413 (a size, like the
    body's, that JSON Schema cannot state)."""
    s = settings
    if len(metadata) > s.max_metadata_fields:
        raise invalid("metadata", f"at most {s.max_metadata_fields} fields (got {len(metadata)})")
    words = _words_at_most(s.max_metadata_word_chars)
    for key, value in metadata.items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue  # a number's words are short by construction (it is within ±(2^53-1))
            if len(text) > s.max_metadata_value_chars:
                raise invalid(f"metadata.{key}", f"a value may have at most {s.max_metadata_value_chars} characters")
            if not words.fullmatch(text):
                raise invalid(f"metadata.{key}", f"a word may have at most {s.max_metadata_word_chars} characters")
    if len(flatten_item_text(flatten_metadata(metadata))) > s.max_metadata_chars:
        message = f"the item text is over {s.max_metadata_chars} characters"
        raise ApiError(413, "payload_too_large", f"metadata: {message}",
                       {"fields": [{"field": "metadata", "message": message}], "max_chars": s.max_metadata_chars})


def canonical_json(value) -> str:
    """Metadata as canonical JSON: keys sorted, no spaces, UTF-8 as is, and a number that is an
    integer written as one (2014.0 is 2014: JSON does not tell them apart)."""
    return json.dumps(_canonical(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _canonical(value):
    if isinstance(value, dict):
        return {key: _canonical(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def metadata_digest(metadata: dict | None) -> str | None:
    """sha256 (hex) of the canonical JSON of posted metadata; None for an item that has none (a
    bundle item)."""
    return None if metadata is None else hashlib.sha256(canonical_json(metadata).encode()).hexdigest()


def check_same_item(existing: ItemRecord, posted: dict) -> None:
    """Passes when `posted` is the metadata `existing` was minted from (the re-post answers 200
    with its ID); else raises the 409 `item_conflict` naming both digests. A bundle item's
    metadata were never posted, so any post of one conflicts."""
    held, sent = metadata_digest(existing.metadata), metadata_digest(posted)
    if held == sent:
        return
    if existing.source == "bundle":
        message = f"item {existing.item_id!r} is one of the bundle's items; nothing was stored"
    else:
        message = f"item {existing.item_id!r} exists with other metadata; nothing was stored"
    raise ApiError(409, "item_conflict", message, {
        "item_id": existing.item_id,
        "textual_id": existing.textual_id,
        "existing_metadata_digest": held,
        "posted_metadata_digest": sent,
    })
