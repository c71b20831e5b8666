"""A bundle's items (items.jsonl) as read for serving: packed columns, not an object an item.

`BundleItems` is a sequence of `BundleItem` made on access, over four packed columns (item ids,
textual IDs, token ids, texts: genrec/packed.py). At a million items the objects cost ~0.9 KiB
an item in the service (their strings, token lists and slots); the columns cost their bytes and
offsets, ~0.2 KiB for the synthetic bundle's items. It compares equal to a list of the same
items and concatenates to a list, as the list it replaces did.

`read_items_file` parses items.jsonl in chunks of lines (one `json.loads` a chunk: a call a line
costs several times more at a million items), validating each row, so that only a chunk's rows
are Python objects at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError
from .packed import Indexed, PackedInts, PackedStrings

ITEMS_NAME = "items.jsonl"
_CHUNK_LINES = 50_000
_ROW_FIELDS = ("item_id", "textual_id", "token_ids", "text")


@dataclass(slots=True)
class BundleItem:
    item_id: str
    textual_id: str
    token_ids: list[int]  # the ID's tokens followed by EOS (the trie key)
    text: str  # flattened item metadata

    def to_dict(self) -> dict:
        return asdict(self)


class BundleItems(Indexed, Sequence[BundleItem]):
    """The items of a bundle, in items.jsonl order, as packed columns."""

    def __init__(self, item_ids: PackedStrings, textual_ids: PackedStrings, token_ids: PackedInts,
                 texts: PackedStrings):
        if not len(item_ids) == len(textual_ids) == len(token_ids) == len(texts):
            raise ValueError("the columns of the items differ in length")
        self.item_ids = item_ids
        self.textual_ids = textual_ids
        self.token_ids = token_ids
        self.texts = texts

    @classmethod
    def of(cls, items: Iterable[BundleItem]) -> BundleItems:
        items = list(items)
        return cls(PackedStrings(i.item_id for i in items), PackedStrings(i.textual_id for i in items),
                   PackedInts.of([i.token_ids for i in items]), PackedStrings(i.text for i in items))

    def __len__(self) -> int:
        return len(self.item_ids)

    def _at(self, index: int) -> BundleItem:
        return BundleItem(self.item_ids[index], self.textual_ids[index], list(self.token_ids[index]),
                          self.texts[index])

    def _range(self, start: int, stop: int) -> list[BundleItem]:
        columns = (self.item_ids, self.textual_ids, self.token_ids, self.texts)
        return [BundleItem(i, t, list(k), x) for i, t, k, x in zip(*(c[start:stop] for c in columns), strict=True)]

    def __iter__(self) -> Iterator[BundleItem]:
        for item_id, textual_id, tokens, text in zip(self.item_ids, self.textual_ids, self.token_ids, self.texts,
                                                     strict=True):
            yield BundleItem(item_id, textual_id, list(tokens), text)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # mutable-looking like the list it replaces: not hashable

    def __add__(self, other: Iterable[BundleItem]) -> list[BundleItem]:
        return [*self, *other]

    def __radd__(self, other: Iterable[BundleItem]) -> list[BundleItem]:
        return [*other, *self]

    def index_of(self, item_id: str) -> int | None:
        return self.item_ids.position(item_id)

    @property
    def nbytes(self) -> int:
        return self.item_ids.nbytes + self.textual_ids.nbytes + self.token_ids.nbytes + self.texts.nbytes


def read_items_file(ipath: Path) -> BundleItems:
    """The items of an items.jsonl file, validated: a malformed or duplicate row is refused
    with a BundleError that names its line."""
    lines = ipath.read_text(encoding="utf-8").rstrip("\n").split("\n") if ipath.stat().st_size else []
    columns: list[tuple] = []
    line_of: list[int] = []  # line number of every row (rows skip blank lines)
    for start in range(0, len(lines), _CHUNK_LINES):
        chunk = lines[start:start + _CHUNK_LINES]
        lines[start:start + _CHUNK_LINES] = [""] * len(chunk)  # each chunk's text freed once parsed
        rows, linenos = _parsed(chunk, start + 1)
        line_of += linenos
        columns.append(_chunk_columns(rows, linenos))
    del lines
    items = BundleItems(*(_joined([c[k] for c in columns]) for k in range(4)))
    _check_distinct(items.item_ids, "item_id", line_of, items.item_ids.distinct())  # the index look-ups use
    _check_distinct(items.textual_ids, "textual_id", line_of, len(set(items.textual_ids)) == len(items))
    return items


def _parsed(lines: list[str], first_lineno: int) -> tuple[list, list[int]]:
    """The rows of a chunk of lines and their line numbers: parsed as one JSON array when that
    works, else line by line (blank lines skipped), so that an error names its line."""
    if lines:
        try:
            rows = json.loads("[" + ",".join(lines) + "]", object_hook=_row_fields)
        except json.JSONDecodeError:
            rows = None
        if rows is not None and len(rows) == len(lines):
            return rows, list(range(first_lineno, first_lineno + len(lines)))
    rows, linenos = [], []
    for lineno, line in enumerate(lines, start=first_lineno):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, object_hook=_row_fields))
        except json.JSONDecodeError as exc:
            raise BundleError(f"{ITEMS_NAME} line {lineno}: not valid JSON: {exc}") from exc
        linenos.append(lineno)
    return rows, linenos


def _chunk_columns(rows: list, linenos: list[int]) -> tuple:
    """A chunk's validated rows as packed columns."""
    for row, lineno in zip(rows, linenos, strict=True):
        _check_row(row, f"{ITEMS_NAME} line {lineno}")
    return (PackedStrings(r[0] for r in rows), PackedStrings(r[1] for r in rows),
            PackedInts.of([r[2] for r in rows]), PackedStrings(r[3] for r in rows))


def _check_row(row, where: str) -> None:
    if not isinstance(row, _Row):
        raise BundleError(f"{where}: expected a JSON object")
    if row.missing:
        raise BundleError(f"{where}: missing field(s) {', '.join(row.missing)}")
    item_id, textual_id, token_ids, text = row
    if not isinstance(item_id, str) or not item_id:
        raise BundleError(f"{where}: item_id must be a non-empty string")
    if not isinstance(textual_id, str) or not textual_id:
        raise BundleError(f"{where}: textual_id must be a non-empty string")
    if not isinstance(text, str):
        raise BundleError(f"{where}: text must be a string")
    if not isinstance(token_ids, list) or not token_ids or set(map(type, token_ids)) != {int} or min(token_ids) < 0:
        raise BundleError(f"{where}: token_ids must be a non-empty list of non-negative integers")


def _joined(parts: list):
    """One column from the columns of the chunks."""
    if parts and isinstance(parts[0], PackedInts):
        return PackedInts.joined(parts)
    return PackedStrings.joined(parts)


def _check_distinct(values: PackedStrings, name: str, line_of: list[int], distinct: bool) -> None:
    if distinct:
        return
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            raise BundleError(f"{ITEMS_NAME} line {line_of[index]}: duplicate {name} {value!r} "
                              f"(first on line {line_of[first[value]]})")
        first[value] = index


class _Row(tuple):
    """A parsed items.jsonl object, as its four fields (a dict a row would hold far more memory
    while a chunk is read); `missing` names the fields it lacks."""

    missing: tuple[str, ...] = ()


def _row_fields(obj: dict) -> _Row:
    row = _Row((obj.get("item_id"), obj.get("textual_id"), obj.get("token_ids"), obj.get("text")))
    if None in row:
        row.missing = tuple(key for key in _ROW_FIELDS if key not in obj)
    return row


def first_token_over(items: BundleItems, limit: int) -> int | None:
    """The position of the first item with a token id of at least `limit`, else None."""
    flat = items.token_ids.flat
    over = np.flatnonzero(flat >= limit)
    if not len(over):
        return None
    return int(np.searchsorted(items.token_ids.offsets, over[0], side="right")) - 1
