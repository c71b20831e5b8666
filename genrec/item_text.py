"""Item metadata as text: the generator's input (docs/methods.md, "IDGenRec") and the words an ID may use."""

import re
from collections.abc import Mapping

from .errors import ConfigError

# Fields that name the item; they lead the flattened text because they carry most meaning.
TITLE_FIELDS = ("title", "movie_title", "name")
# Raw field names (ml-100k's atomic files) -> readable labels for the item text.
_FIELD_LABELS = {"movie_title": "title", "release_year": "year", "class": "genres"}
_WS = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


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
        label = _FIELD_LABELS.get(field, field.replace("_", " "))
        parts.append(f"{_collapse(label)}: {value}")
    text = "; ".join(parts)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip(" ;:") or text[:max_chars]  # never empty when there was text
    return text


def metadata_values_text(metadata: Mapping[str, str]) -> str:
    """The metadata's values without field names: the words an ID may be made of."""
    return " ".join(_collapse(str(v)) for v in metadata.values() if v)
