"""Columns of a large catalog without a Python object per item: strings as one UTF-8 buffer and
offsets (`PackedStrings`), lists of small ints as one array and offsets (`PackedInts`).

A million items held as str, list and tuple objects cost ~1 KiB an item in the service (object
headers, pointers, hash tables); packed, an item costs its bytes and two offsets. A value is
made when it is read, so these suit columns read a few items at a time (a request's items), not
a hot loop over all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

import marisa_trie
import numpy as np


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Start offsets (n + 1) of values of these lengths, in the smallest dtype that holds them."""
    ends = np.cumsum(lengths, dtype=np.int64)
    dtype = np.uint32 if not len(ends) or ends[-1] < 2**32 else np.int64
    return np.concatenate([np.zeros(1, dtype=np.int64), ends]).astype(dtype)


class Indexed(Sequence):
    """A sequence read through `_at(index)` for 0 <= index < len, and `_range(start, stop)` for
    a run of them (a class may read a run faster than item by item): slices (as lists) and
    negative indexes are handled here."""

    def _at(self, index: int):
        raise NotImplementedError

    def _range(self, start: int, stop: int) -> list:
        return [self._at(i) for i in range(start, stop)]

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._range(start, max(start, stop))
            return [self._at(i) for i in range(start, stop, step)]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__} index out of range")
        return self._at(index)


class PackedStrings(Indexed, Sequence[str]):
    """An immutable sequence of strings in one UTF-8 buffer; `position` finds a string's index
    through a marisa trie built on first use (a few bytes an item, not a dict entry)."""

    def __init__(self, values: Iterable[str] = ()):
        encoded = [value.encode("utf-8") for value in values]
        self._data = b"".join(encoded)
        self._offsets = _offsets(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        self._index: tuple[marisa_trie.Trie, np.ndarray] | None = None
        self._lock = threading.Lock()

    @classmethod
    def joined(cls, parts: Sequence[PackedStrings]) -> PackedStrings:
        """The strings of `parts`, one after the other."""
        joined = cls()
        joined._data = b"".join(part._data for part in parts)
        joined._offsets = _joined_offsets([part._offsets for part in parts])
        return joined

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _at(self, index: int) -> str:
        return self._data[int(self._offsets[index]):int(self._offsets[index + 1])].decode("utf-8")

    def _range(self, start: int, stop: int) -> list[str]:
        data, bounds = self._data, self._offsets[start:stop + 1].tolist()
        return [data[a:b].decode("utf-8") for a, b in zip(bounds, bounds[1:])]  # noqa: B905 - one shorter

    def __iter__(self) -> Iterator[str]:
        data, bounds = self._data, self._offsets.tolist()
        for start, end in zip(bounds, bounds[1:]):  # noqa: B905 - one shorter by design
            yield data[start:end].decode("utf-8")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self.position(value) is not None

    def position(self, value: str) -> int | None:
        """The index of `value` (the last one, should it occur twice), or None."""
        trie, positions = self._lookup()
        key_id = trie.get(value)
        return None if key_id is None else int(positions[key_id])

    def distinct(self) -> bool:
        """Whether no string occurs twice."""
        return len(self._lookup()[0]) == len(self)

    def _lookup(self) -> tuple[marisa_trie.Trie, np.ndarray]:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    values = list(self)
                    trie = marisa_trie.Trie(values)
                    positions = np.empty(len(trie), dtype=np.int32 if len(values) < 2**31 else np.int64)
                    positions[np.fromiter(map(trie.__getitem__, values), dtype=np.int64, count=len(values))] = \
                        np.arange(len(values))
                    self._index = trie, positions
        return self._index

    @property
    def nbytes(self) -> int:
        return len(self._data) + self._offsets.nbytes


class GrowingStrings(Indexed, Sequence[str]):
    """Packed strings followed by strings appended later (a catalog's base items, then the
    items minted since)."""

    def __init__(self, base: PackedStrings):
        self.base = base
        self.added: list[str] = []

    def __len__(self) -> int:
        return len(self.base) + len(self.added)

    def _at(self, index: int) -> str:
        count = len(self.base)
        return self.base[index] if index < count else self.added[index - count]

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from self.added

    def append(self, value: str) -> None:
        self.added.append(value)


class PackedInts(Indexed, Sequence[tuple[int, ...]]):
    """An immutable sequence of int tuples (token ids) as one flat array and offsets."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = flat
        self.offsets = offsets

    @classmethod
    def of(cls, rows: Iterable[Sequence[int]]) -> PackedInts:
        rows = rows if isinstance(rows, list) else list(rows)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter((value for row in rows for value in row), dtype=np.int64, count=int(lengths.sum()))
        return cls(_narrow(flat), _offsets(lengths))

    @classmethod
    def joined(cls, parts: Sequence[PackedInts]) -> PackedInts:
        """The rows of `parts`, one after the other."""
        if not parts:
            return cls.of([])
        return cls(_narrow(np.concatenate([part.flat for part in parts])),
                   _joined_offsets([part.offsets for part in parts]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _at(self, index: int) -> tuple[int, ...]:
        return tuple(self.flat[int(self.offsets[index]):int(self.offsets[index + 1])].tolist())

    def _range(self, start: int, stop: int) -> list[tuple[int, ...]]:
        bounds = self.offsets[start:stop + 1].tolist()
        if not bounds:
            return []
        first = bounds[0]
        values = self.flat[first:bounds[-1]].tolist()
        return [tuple(values[a - first:b - first]) for a, b in zip(bounds, bounds[1:])]  # noqa: B905 - one shorter

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        values, bounds = self.flat.tolist(), self.offsets.tolist()
        for start, end in zip(bounds, bounds[1:]):  # noqa: B905 - one shorter by design
            yield tuple(values[start:end])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets.astype(np.int64))

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes + self.offsets.nbytes


def _joined_offsets(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The offsets of values whose parts have these offsets, one part after the other."""
    return _offsets(np.concatenate([np.diff(part.astype(np.int64)) for part in parts] or [np.zeros(0, np.int64)]))


def _narrow(values: np.ndarray) -> np.ndarray:
    """Non-negative ints in int32 when they fit (token ids do), else int64."""
    if not len(values) or (values.min() >= 0 and values.max() < 2**31):
        return values.astype(np.int32)
    return values.astype(np.int64)
