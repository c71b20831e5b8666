"""Normalised textual IDs: lower case, `\\w+` words joined by one space, never empty."""

import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_textual_id(text: str) -> str:
    """Canonical form of a candidate ID; '' means the candidate is not a valid ID."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def id_words(textual_id: str) -> list[str]:
    return textual_id.split(" ") if textual_id else []
