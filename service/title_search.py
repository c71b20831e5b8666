"""Search of the catalog by title (GET /v1/items?q=): every word of the query must begin a word
of the title, case-insensitively ("star wa" finds "Star Wars (1977)"); answers in catalog order
(the bundle's items, then minted ones as this replica learned them).

An inverted index over title words, so a search never scans every title: the distinct words are
kept sorted, and the items holding words that begin with a query word are a range of them (two
bisections). The query word with the fewest such items drives the search, its items taken in
order through a lazy merge of their posting lists, each checked against the other query words,
until `limit` are found; when that query word is so common that reading the titles in order
is expected to find `limit` items sooner, the titles are read first, within a budget of what
the merge costs. Building is O(n log n); an add appends to posting lists and inserts new words
into the sorted list.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from itertools import islice

from genrec.packed import GrowingStrings, PackedStrings
from genrec.word_characters import find_words, fold

SCAN_COST = 2  # titles read in order for what merging costs per posting list


def title_words(text: str) -> list[str]:
    """The words search compares: runs of word characters (letters with their combining marks,
    digits: genrec/word_characters.py), NFKC-normalised and case-folded, as the filters' are."""
    return find_words(fold(text))


class TitleIndex:
    """Item titles and the index over their words; adds are idempotent per item.

    Items are numbered by the caller (the catalog: their trie index). The titles given at
    construction are items 0, 1, ... in that order, packed in one buffer (genrec/packed.py); an
    item added later takes the next position, whatever its number. Posting lists hold positions
    as int32: 4 bytes an item a word."""

    def __init__(self, titles: Iterable[str] = ()):
        self._postings: dict[str, array] = {}  # word -> positions of the titles holding it, ascending
        self._positions: dict[int, int] = {}  # number -> position of the items added later
        self._numbers: list[int] = []  # number of the item at each position after the first ones
        base = []
        for title in titles:
            self._index_words(len(base), title)
            base.append(title)
        self._titles = GrowingStrings(PackedStrings(base))
        del base
        self._words: list[str] = sorted(self._postings)

    def __len__(self) -> int:
        return len(self._titles)

    def __contains__(self, number: int) -> bool:
        return 0 <= number < len(self._titles.base) or number in self._positions

    def title(self, number: int) -> str | None:
        position = number if 0 <= number < len(self._titles.base) else self._positions.get(number)
        return None if position is None else self._titles[position]

    def add(self, number: int, title: str) -> bool:
        """Indexes an item's title; False when the item is indexed already."""
        if number in self:
            return False
        position = len(self._titles)
        self._titles.append(title)
        self._positions[number] = position
        self._numbers.append(number)
        for word in self._index_words(position, title):
            insort(self._words, word)
        return True

    def _number(self, position: int) -> int:
        count = len(self._titles.base)
        return position if position < count else self._numbers[position - count]

    def _index_words(self, position: int, title: str) -> list[str]:
        """Adds the title's words at `position`; returns the words the index did not hold yet."""
        new = []
        for word in dict.fromkeys(title_words(title)):
            postings = self._postings.get(word)
            if postings is None:
                postings = self._postings[word] = array("i")
                new.append(word)
            postings.append(position)
        return new

    def search(self, query: str, limit: int) -> list[tuple[int, str]]:
        """(item number, title) of the first `limit` items, in catalog order, whose titles have, for
        every word of `query`, a word that begins with it. A query without words matches nothing."""
        prefixes = list(dict.fromkeys(title_words(query)))
        if not prefixes or limit < 1:
            return []
        groups = [self._postings_of(prefix) for prefix in prefixes]
        sizes = [sum(map(len, group)) for group in groups]
        driver = min(range(len(prefixes)), key=sizes.__getitem__)
        group, count = groups[driver], sizes[driver]
        if count == 0:
            return []
        found: list[tuple[int, str]] = []
        # A short prefix (many words, many items) is found faster by reading the titles in order
        # than by merging its many posting lists: read them while that is expected to reach
        # `limit` items within what starting the merge would cost, then merge from there on.
        scanned = 0
        if limit * len(self._titles) < SCAN_COST * len(group) * count:
            scanned = min(len(self._titles), SCAN_COST * len(group))
            for position in range(scanned):
                if self._matches(position, prefixes, found) and len(found) == limit:
                    return found
        others = prefixes[:driver] + prefixes[driver + 1:]
        for position in _merged(group, scanned):
            if self._matches(position, others, found) and len(found) == limit:
                break
        return found

    def _matches(self, position: int, prefixes: list[str], found: list[tuple[int, str]]) -> bool:
        """Whether the title at `position` has a word beginning with each prefix (then added to `found`)."""
        title = self._titles[position]
        if prefixes:
            words = title_words(title)
            if not all(any(w.startswith(p) for w in words) for p in prefixes):
                return False
        found.append((self._number(position), title))
        return True

    def _postings_of(self, prefix: str) -> list[array]:
        """The posting lists of every indexed word that begins with `prefix`."""
        words = self._words
        start = bisect_left(words, prefix)
        end = bisect_left(words, prefix + "\U0010ffff", start)
        while end < len(words) and words[end].startswith(prefix):  # U+10FFFF (unassigned) follows the prefix
            end += 1
        postings = self._postings
        return [postings[w] for w in words[start:end]]


def _merged(postings: list[array], start: int = 0) -> Iterator[int]:
    """The positions from `start` on of several ascending posting lists, ascending, each once."""
    tails = [islice(p, bisect_left(p, start), None) for p in postings]
    last = -1
    for position in heapq.merge(*tails) if len(tails) > 1 else tails[0]:
        if position != last:
            yield position
            last = position
