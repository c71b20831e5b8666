"""A set of a catalog's items held as their trie indices: what a request's filter lets through.

At a million items a filter may let hundreds of thousands through; as a frozenset of item-id
strings that is ~50 bytes and a string made per item, and the recommender then looks every one
up again for its trie index. `IndexedItems` keeps the sorted index array the filter index
produced: it reads as a set of item ids (membership, iteration, equality), and a trie that
numbers items alike (`TextualIdTrie.numbering`: the catalog's trie and its folds) takes the
indices as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set

import numpy as np

from .trie import TextualIdTrie


class IndexedItems(Set[str]):
    """Items of `trie`'s catalog, given by their indices (sorted, distinct)."""

    def __init__(self, indices: np.ndarray, trie: TextualIdTrie):
        self.indices = indices
        self.numbering = trie.numbering
        self._trie = trie

    @classmethod
    def _from_iterable(cls, items: Iterable[str]) -> frozenset[str]:
        return frozenset(items)  # what the set operators (&, |, -) make

    def __len__(self) -> int:
        return len(self.indices)

    def __contains__(self, item_id: object) -> bool:
        index = self._trie.index_of(item_id) if isinstance(item_id, str) else None
        if index is None:
            return False
        position = int(np.searchsorted(self.indices, index))
        return position < len(self.indices) and int(self.indices[position]) == index

    def __iter__(self) -> Iterator[str]:
        keys = self._trie.item_keys
        return map(keys.__getitem__, self.indices.tolist())

    __hash__ = Set._hash

    def indices_in(self, trie: TextualIdTrie) -> np.ndarray | None:
        """The indices (the array itself: a broad filter's may hold most of a million), sorted,
        when `trie` numbers items as the one they came from; else None."""
        return self.indices if trie.numbering is self.numbering else None
