"""The filter index: which items' metadata fields hold which words, so that a recommendation
request's `filter` ({field: [word, ...]}) resolves to its qualifying items with a few array
operations, never a scan of the item texts.

Built once at start from the bundle's item texts (their `label: value` fields) and updated
with every item the catalog adds (the posted metadata of a minted item), under the catalog's
write lock, so an item is filterable as soon as it is recommendable, on every replica.

The language, as docs/api.md ("Filters") states it: a field matches when its value holds one
of the filter's words as a whole word (case-insensitive); every field must match. A word is a
run of word characters (letters with their combining marks, digits, underscores:
genrec/word_characters.py), which may be joined by single apostrophes or hyphens
(`children's`, `sci-fi`); so `(1995)` holds the word `1995`, `rock/pop` the words `rock` and
`pop`, and `हिन्दी` is one word. Field names are the item text's labels (ml-100k's `movie_title` is `title`), matched
case-insensitively, with spaces and underscores alike.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from genrec.bundle import BundleItem
from genrec.int_arrays import union
from genrec.item_text import field_label, flatten_metadata, item_text_fields
from genrec.word_characters import fold, word_finder

_SEPARATORS = re.compile(r"[\s_]+")


# Word characters joined by single apostrophes or hyphens (schemas.FILTER_WORD's language).
_find_words = word_finder(lambda char: f"{char}+(?:['’-]{char}+)*")


def words(text: str) -> set[str]:
    """The whole words of a text, folded."""
    return set(_find_words(fold(text)))


@lru_cache(maxsize=4096)
def field_name(key: str) -> str:
    """A metadata key or filter field as the index names it: its item-text label, case-folded,
    with runs of spaces and underscores as one underscore (`Release Date` -> `release_date`)."""
    return _SEPARATORS.sub("_", fold(field_label(key)).strip())


class FilterIndex:
    """field -> word -> numbers of the items whose field holds that word.

    Items are numbered by the caller (the catalog: their trie index), and a word's items are an
    array of int32, 4 bytes an item a word rather than a set entry of an item-id string (~50):
    at a million items the sets were ~0.4 KiB an item.

    Not thread-safe by itself: the catalog adds and resolves under its write lock. `matching`
    returns a new array, so the caller may hand it to another thread while items are added."""

    def __init__(self):
        self._index: dict[str, dict[str, array]] = {}
        self._indexed = bytearray()  # 1 at the numbers of the items indexed

    @classmethod
    def of_bundle(cls, items: Iterable[BundleItem]) -> FilterIndex:
        """The index of the bundle's items (numbered in their order), read from their item texts."""
        index = cls()
        for number, item in enumerate(items):
            index.add_fields(number, item_text_fields(item.text))
        return index

    def add(self, number: int, metadata: Mapping) -> bool:
        """Indexes an item's metadata (strings, numbers or lists of strings); an item is indexed
        once (items never change). True when it was new."""
        return self.add_fields(number, flatten_metadata(metadata))

    def add_fields(self, number: int, fields: Mapping[str, str]) -> bool:
        """`add` of metadata whose values are strings already (an item text's fields)."""
        if number in self:
            return False
        if number >= len(self._indexed):
            self._indexed.extend(bytes(max(number + 1 - len(self._indexed), len(self._indexed) // 8)))
        self._indexed[number] = 1
        for key, value in fields.items():
            by_word = self._index.setdefault(field_name(key), {})
            for word in words(value):
                postings = by_word.get(word)
                if postings is None:
                    postings = by_word[word] = array("i")
                postings.append(number)
        return True

    def __contains__(self, number: int) -> bool:
        return 0 <= number < len(self._indexed) and self._indexed[number] == 1

    @property
    def fields(self) -> list[str]:
        """Every field name some item has, sorted."""
        return sorted(self._index)

    def unknown_fields(self, fields: Iterable[str]) -> list[str]:
        """The fields (as asked, first occurrence order) that no item has."""
        return [f for f in dict.fromkeys(fields) if field_name(f) not in self._index]

    def matching(self, query: Mapping[str, Sequence[str]]) -> np.ndarray:
        """Numbers of the items that qualify, ascending: for every field, one of its words (AND
        of ORs)."""
        result: np.ndarray | None = None
        for field, values in sorted(query.items(), key=lambda kv: self._size(*kv)):  # the smallest first
            found = union([np.frombuffer(p, dtype=np.int32) for p in self._postings(field, values)],
                          len(self._indexed))
            result = found if result is None else np.intersect1d(result, found, assume_unique=True)
            if not len(result):
                break
        return result if result is not None else np.zeros(0, dtype=np.int32)

    def _postings(self, field: str, values: Sequence[str]) -> list[array]:
        by_word = self._index.get(field_name(field), {})
        return [postings for v in values if (postings := by_word.get(fold(v))) is not None]

    def _size(self, field: str, values: Sequence[str]) -> int:
        return sum(map(len, self._postings(field, values)))
