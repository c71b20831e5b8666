"""The integer set operations that replace numpy 2's slow hashing `np.unique` on large arrays:
each against numpy's own answer, on both of `union`'s paths (a sort for a few numbers, a mask
over the catalog for many)."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.int_arrays import complement, sorted_unique, union, unique_inverse


@pytest.mark.parametrize("seed", [0, 1])
def test_sorted_unique_and_unique_inverse_equal_numpys(seed):
    rng = np.random.default_rng(seed)
    for values in (rng.integers(0, 50, 400), rng.integers(0, 10**12, 1000), np.sort(rng.integers(0, 9, 30)),
                   np.zeros(0, dtype=np.int64), np.array([5])):
        assert np.array_equal(sorted_unique(values), np.unique(values))
        distinct, inverse = unique_inverse(values)
        expected, expected_inverse = np.unique(values, return_inverse=True)
        assert np.array_equal(distinct, expected) and np.array_equal(inverse, expected_inverse.reshape(-1))
        assert np.array_equal(distinct[inverse], values)


@pytest.mark.parametrize("per_array", [3, 400])  # few numbers: the sort; many: the mask
def test_union_of_posting_lists(per_array):
    rng = np.random.default_rng(per_array)
    size = 1000
    arrays = [rng.choice(size, per_array, replace=False).astype(np.int32) for _ in range(4)] + [
        np.zeros(0, dtype=np.int32)]
    got = union(arrays, size)
    assert got.dtype == np.int32
    assert np.array_equal(got, np.unique(np.concatenate(arrays)))
    assert union([], size).size == 0 and union([np.zeros(0, dtype=np.int32)], size).size == 0
    assert np.array_equal(union([np.array([size - 1, 0, 0], dtype=np.int32)] * 40, size), [0, size - 1])


def test_complement():
    assert complement(np.array([0, 3, 3, 5]), 7).tolist() == [1, 2, 4, 6]
    assert complement(np.zeros(0, dtype=np.int64), 3).tolist() == [0, 1, 2]
    assert complement(np.arange(4), 4).size == 0
