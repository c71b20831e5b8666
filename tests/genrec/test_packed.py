"""The packed columns of a large catalog read back as the lists, tuples and sets they replace."""

import numpy as np
import pytest

from genrec.bundle_items import BundleItem, BundleItems
from genrec.item_set import IndexedItems
from genrec.packed import GrowingStrings, PackedInts, PackedStrings
from genrec.trie import TextualIdTrie


def test_packed_strings_read_as_a_list():
    values = ["a", "ünïcode", "", "b c", "a"]
    packed = PackedStrings(values)
    assert list(packed) == values and len(packed) == 5
    assert [packed[i] for i in range(-5, 5)] == values * 2
    assert packed[1:4] == values[1:4] and packed[::-2] == values[::-2] and packed[4:2] == [] and packed[5:] == []
    with pytest.raises(IndexError):
        packed[5]
    assert packed.position("ünïcode") == 1 and packed.position("zzz") is None and "b c" in packed
    assert not packed.distinct() and PackedStrings(values[:4]).distinct()
    assert list(PackedStrings.joined([packed, PackedStrings(["z"])])) == [*values, "z"]
    grown = GrowingStrings(packed)
    grown.append("late")
    assert list(grown) == [*values, "late"] and grown[-1] == "late" and grown[4:] == ["a", "late"]


def test_packed_ints_read_as_tuples():
    rows = [[5, 6, 1], [7, 1], [2**20, 1]]
    packed = PackedInts.of(rows)
    assert list(packed) == [tuple(r) for r in rows] and packed[-1] == (2**20, 1)
    assert packed[1:] == [(7, 1), (2**20, 1)] and packed[2:1] == [] and packed[3:] == [] and packed[::2] == [(5, 6, 1), (2**20, 1)]
    assert packed.flat.dtype == np.int32 and packed.lengths.tolist() == [3, 2, 2]
    assert list(PackedInts.joined([packed, PackedInts.of([[3, 1]])])) == [*map(tuple, rows), (3, 1)]


def test_bundle_items_compare_and_concatenate_as_a_list():
    items = [BundleItem("i0", "red fox", [5, 6, 1], "title: Red Fox"), BundleItem("i1", "blue", [7, 1], "")]
    packed = BundleItems.of(items)
    assert packed == items and items == packed and packed[1] == items[1] and packed[:1] == items[:1]
    assert packed + [items[0]] == [*items, items[0]] and [items[0]] + packed == [items[0], *items]
    assert packed != items[:1] and packed.index_of("i1") == 1 and packed.index_of("i9") is None


def test_indexed_items_read_as_a_set_of_item_ids():
    trie = TextualIdTrie(PackedStrings(["a", "b", "c"]), PackedInts.of([[5, 1], [6, 1], [7, 1]]), 1)
    trie.add("d", [8, 1])
    chosen = IndexedItems(np.array([1, 3], dtype=np.int32), trie)
    assert chosen == {"b", "d"} and {"b", "d"} == chosen and frozenset(chosen) == {"b", "d"}
    assert "d" in chosen and "a" not in chosen and "zz" not in chosen and 3 not in chosen and len(chosen) == 2
    assert chosen - {"b"} == {"d"} and chosen & {"a", "b"} == {"b"} and hash(chosen) == hash(frozenset({"b", "d"}))
    assert chosen.indices_in(trie).tolist() == [1, 3]
    assert chosen.indices_in(TextualIdTrie(["a"], [[5, 1]], 1)) is None  # another numbering
