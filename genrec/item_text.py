"""Item metadata as text: the generator's input (docs/methods.md, "IDGenRec") and the words an ID may use."""

import re
from collections.abc import Mapping
from functools import lru_cache

from .errors import ConfigError

# Fields that name the item; they lead the flattened text because they carry most meaning.
TITLE_FIELDS = ("title", "movie_title", "name")
# Raw field names (ml-100k's atomic files) -> readable labels for the item text.
_FIELD_LABELS = {"movie_title": "title", "release_year": "year", "class": "genres"}
_WS = re.compile(r"\s+")
# The labels title-like fields get in the flattened text.
_TITLE_LABELS = tuple(dict.fromkeys(_FIELD_LABELS.get(f, f) for f in TITLE_FIELDS))


def _collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


def field_label(field: str) -> str:
    """The label a metadata field gets in the item text (ml-100k's movie_title -> title)."""
    return _collapse(_FIELD_LABELS.get(field, field.replace("_", " ")))


def flatten_metadata(metadata: Mapping) -> dict[str, str]:
    """Posted metadata (strings, numbers, lists of strings) as string values."""
    flat: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, list):
            flat[key] = " ".join(str(v) for v in value)
        elif isinstance(value, float) and value.is_integer():
            flat[key] = str(int(value))
        else:
            flat[key] = str(value)
    return flat


def item_text_fields(text: str) -> dict[str, str]:
    """The fields of a flattened item text, {label: value}: the inverse of `flatten_item_text`
    for the bundle's items, whose metadata the bundle keeps only as this text. A "; " that is
    not followed by "label: " stays inside the value; a value that itself holds "; word: "
    reads as two fields, and a text truncated to max_chars loses its tail."""
    fields: dict[str, str] = {}
    label = None
    for part in text.split("; "):
        name, sep, value = part.partition(": ")
        if sep and _is_label(name):
            label = name
            fields[label] = f"{fields[label]} {value}" if label in fields else value
        elif label is not None:
            fields[label] += f"; {part}"
    return fields


@lru_cache(maxsize=4096)
def _is_label(name: str) -> bool:
    """Whether `name` may be a field label (cached: an item text's few labels recur in every item)."""
    return bool(name.strip()) and name == _collapse(name)


def flatten_item_text(metadata: Mapping[str, str], max_chars: int | None = None) -> str:
    """All metadata as one readable line, e.g. 'title: Toy Story; year: 1995; genres: Animation'.

    Title-like fields lead (the ID generator should see the name first); raw field names are made
    readable (ml-100k's movie_title/release_year/class); whitespace is collapsed; empty values are
    skipped. ``max_chars`` truncates the result (docs/methods.md, "IDGenRec": item text is truncated).
    """
    if max_chars is not None and max_chars < 1:
        raise ConfigError(f"max_chars must be >= 1 or None, got {max_chars}")
    ordered = [f for f in TITLE_FIELDS if f in metadata]
    ordered += [f for f in metadata if f not in TITLE_FIELDS]
    parts = []
    for field in ordered:
        value = _collapse(str(metadata[field]))
        if not value:
            continue
        parts.append(f"{field_label(field)}: {value}")
    text = "; ".join(parts)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip(" ;:") or text[:max_chars]  # never empty when there was text
    return text


def item_title(text: str) -> str:
    """An item's title, read back from its flattened text: the value of the leading title-like
    field ('Toy Story (1995)' of 'title: Toy Story (1995); year: 1995'), else the whole text.

    flatten_item_text puts title-like fields first, so bundle items (which keep only their text)
    and minted ones get their title the same way. A title holding '; x: ' is cut there.
    """
    return title_of_fields(item_text_fields(text), text)


def title_of_fields(fields: Mapping[str, str], text: str) -> str:
    """`item_title` of a text whose fields (`item_text_fields(text)`) are parsed already."""
    label, value = next(iter(fields.items()), (None, ""))
    return value if label in _TITLE_LABELS and value else text


def metadata_values_text(metadata: Mapping[str, str]) -> str:
    """The metadata's values without field names: the words an ID may be made of."""
    return " ".join(_collapse(str(v)) for v in metadata.values() if v)
