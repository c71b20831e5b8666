"""The filter index: which items' metadata fields hold which words, so that a recommendation
request's `filter` ({field: [word, ...]}) resolves to its qualifying items with a few set
operations, never a scan of the item texts.

Built once at start from the bundle's item texts (their `label: value` fields) and updated
with every item the catalog adds (the posted metadata of a minted item), under the catalog's
write lock, so an item is filterable as soon as it is recommendable, on every replica.

The language, as docs/api.md ("Filters") states it: a field matches when its value holds one
of the filter's words as a whole word (case-insensitive); every field must match. A word is a
run of letters, digits and underscores, which may be joined by single apostrophes or hyphens
(`children's`, `sci-fi`); so `(1995)` holds the word `1995`, and `rock/pop` the words `rock` and
`pop`. Field names are the item text's labels (ml-100k's `movie_title` is `title`), matched
case-insensitively, with spaces and underscores alike.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from genrec.bundle import BundleItem
from genrec.item_text import field_label, flatten_metadata, item_text_fields

WORD_PATTERN = r"\w+(?:['’-]\w+)*"
_WORD = re.compile(WORD_PATTERN)
_SEPARATORS = re.compile(r"[\s_]+")


def fold(text: str) -> str:
    """How words are compared: Unicode-normalised (NFKC) and case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str) -> set[str]:
    """The whole words of a text, folded."""
    return set(_WORD.findall(fold(text)))


@lru_cache(maxsize=4096)
def field_name(key: str) -> str:
    """A metadata key or filter field as the index names it: its item-text label, case-folded,
    with runs of spaces and underscores as one underscore (`Release Date` -> `release_date`)."""
    return _SEPARATORS.sub("_", fold(field_label(key)).strip())


class FilterIndex:
    """field -> word -> ids of the items whose field holds that word.

    Not thread-safe by itself: the catalog adds and resolves under its write lock. `matching`
    returns a new (frozen) set, so the caller may hand it to another thread while items are added."""

    def __init__(self):
        self._index: dict[str, dict[str, set[str]]] = {}
        self._indexed: set[str] = set()

    @classmethod
    def of_bundle(cls, items: Iterable[BundleItem]) -> FilterIndex:
        """The index of the bundle's items, read from their item texts."""
        index = cls()
        for item in items:
            index.add_fields(item.item_id, item_text_fields(item.text))
        return index

    def add(self, item_id: str, metadata: Mapping) -> bool:
        """Indexes an item's metadata (strings, numbers or lists of strings); an item is indexed
        once (items never change). True when it was new."""
        return self.add_fields(item_id, flatten_metadata(metadata))

    def add_fields(self, item_id: str, fields: Mapping[str, str]) -> bool:
        """`add` of metadata whose values are strings already (an item text's fields)."""
        if item_id in self._indexed:
            return False
        self._indexed.add(item_id)
        for key, value in fields.items():
            by_word = self._index.setdefault(field_name(key), {})
            for word in words(value):
                by_word.setdefault(word, set()).add(item_id)
        return True

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._indexed

    @property
    def fields(self) -> list[str]:
        """Every field name some item has, sorted."""
        return sorted(self._index)

    def unknown_fields(self, fields: Iterable[str]) -> list[str]:
        """The fields (as asked, first occurrence order) that no item has."""
        return [f for f in dict.fromkeys(fields) if field_name(f) not in self._index]

    def matching(self, query: Mapping[str, Sequence[str]]) -> frozenset[str]:
        """Ids of the items that qualify: for every field, one of its words (AND of ORs)."""
        result: frozenset[str] | None = None
        for field, values in sorted(query.items(), key=lambda kv: self._size(*kv)):  # the smallest first
            by_word = self._index.get(field_name(field), {})
            found = frozenset().union(*(by_word.get(fold(v), ()) for v in values))
            result = found if result is None else result & found
            if not result:
                break
        return result or frozenset()

    def _size(self, field: str, values: Sequence[str]) -> int:
        by_word = self._index.get(field_name(field), {})
        return sum(len(by_word.get(fold(v), ())) for v in values)
