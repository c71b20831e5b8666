"""Prefix trie over the token sequences of all valid textual IDs (each ending with EOS).

The base catalog lives in a `marisa_trie.Trie` (compact, immutable); items minted later go
into a small overlay dict. Decoding never walks marisa per step: `tables()` returns
`TrieTables`, flat CSR arrays (node -> sorted (token, child) pairs) built from base + overlay,
so a beam-search step masks every beam with a few array operations.
"""

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import marisa_trie
import numpy as np
import torch

_SURROGATE_START = 0xD800
_SURROGATE_SHIFT = 0x800


def _token_char(token: int) -> str:
    """Token id as one unicode character (skipping the surrogate range marisa cannot store)."""
    return chr(token if token < _SURROGATE_START else token + _SURROGATE_SHIFT)


def _char_token(char: str) -> int:
    code = ord(char)
    return code if code < _SURROGATE_START else code - _SURROGATE_SHIFT


def encode_key(tokens: Sequence[int]) -> str:
    return "".join(_token_char(t) for t in tokens)


def decode_key(key: str) -> list[int]:
    return [_char_token(c) for c in key]


@dataclass(frozen=True)
class TrieTables:
    """CSR transition tables. Node 0 is the root; `leaf_item[n]` is the item index reached
    by the EOS edge into leaf n (-1 for inner nodes)."""

    indptr: torch.Tensor  # (num_nodes + 1,) int64
    tokens: torch.Tensor  # (num_edges,) int64, sorted within each node
    children: torch.Tensor  # (num_edges,) int64
    leaf_item: torch.Tensor  # (num_nodes,) int64
    parent: torch.Tensor  # (num_nodes,) int64, -1 for the root
    leaf_count: torch.Tensor  # (num_nodes,) int64: items below each node
    item_leaf: torch.Tensor  # (num_items,) int64: leaf node of each item index (-1 if absent)
    max_depth: int  # longest key, EOS included

    @property
    def num_nodes(self) -> int:
        return int(self.leaf_item.shape[0])

    def allowed(self, node: int) -> tuple[list[int], list[int]]:
        lo, hi = int(self.indptr[node]), int(self.indptr[node + 1])
        return self.tokens[lo:hi].tolist(), self.children[lo:hi].tolist()

    def dead_nodes(self, items: "Sequence[int]") -> list[int]:
        """Nodes all of whose items are in `items`: excluding those items must prune them whole,
        so no beam walks into a prefix that can no longer end in a valid ID."""
        below: dict[int, int] = {}
        parent = self.parent.tolist() if len(items) > 8 else None
        for item in set(int(i) for i in items):
            if item < 0 or item >= self.item_leaf.shape[0]:
                continue
            node = int(self.item_leaf[item])
            while node > 0:
                below[node] = below.get(node, 0) + 1
                node = parent[node] if parent is not None else int(self.parent[node])
        return [node for node, count in below.items() if count == int(self.leaf_count[node])]

    def expand(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All outgoing edges of `nodes` (B,) as flat (row, token, child) arrays; rows index `nodes`.

        Rows whose node is negative (dead beams) get no edges.
        """
        safe = nodes.clamp(min=0)
        starts = self.indptr[safe]
        counts = torch.where(nodes >= 0, self.indptr[safe + 1] - starts, torch.zeros_like(starts))
        rows = torch.repeat_interleave(torch.arange(nodes.shape[0], device=nodes.device), counts)
        if rows.numel() == 0:
            empty = rows.new_empty(0)
            return rows, empty, empty
        first = torch.cumsum(counts, 0) - counts
        offsets = torch.arange(rows.numel(), device=nodes.device) - first[rows] + starts[rows]
        return rows, self.tokens[offsets], self.children[offsets]


def build_tables(sequences: Sequence[Sequence[int]], item_indices: Sequence[int]) -> TrieTables:
    """CSR tables for `sequences` (each ending with EOS); a sequence's leaf maps to its item index."""
    edges: dict[tuple[int, int], int] = {}
    leaf_item: list[int] = [-1]
    parent: list[int] = [-1]
    leaf_count: list[int] = [0]
    item_leaf: dict[int, int] = {}
    max_depth = 0
    for tokens, item in zip(sequences, item_indices, strict=True):
        node = 0
        leaf_count[0] += 1
        for token in tokens:
            child = edges.get((node, token))
            if child is None:
                child = len(leaf_item)
                edges[(node, token)] = child
                leaf_item.append(-1)
                parent.append(node)
                leaf_count.append(0)
            node = child
            leaf_count[node] += 1
        leaf_item[node] = item
        item_leaf[int(item)] = node
        max_depth = max(max_depth, len(tokens))
    num_nodes = len(leaf_item)
    item_leaf_array = np.full(max(item_leaf, default=-1) + 1, -1, dtype=np.int64)
    for item, node in item_leaf.items():
        item_leaf_array[item] = node
    if edges:
        arr = np.array([(p, t, c) for (p, t), c in edges.items()], dtype=np.int64)
        order = np.lexsort((arr[:, 1], arr[:, 0]))
        arr = arr[order]
        counts = np.bincount(arr[:, 0], minlength=num_nodes)
    else:
        arr = np.zeros((0, 3), dtype=np.int64)
        counts = np.zeros(num_nodes, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return TrieTables(
        indptr=torch.from_numpy(indptr),
        tokens=torch.from_numpy(np.ascontiguousarray(arr[:, 1])),
        children=torch.from_numpy(np.ascontiguousarray(arr[:, 2])),
        leaf_item=torch.tensor(leaf_item, dtype=torch.int64),
        parent=torch.tensor(parent, dtype=torch.int64),
        leaf_count=torch.tensor(leaf_count, dtype=torch.int64),
        item_leaf=torch.from_numpy(item_leaf_array),
        max_depth=max_depth,
    )


class TextualIdTrie:
    """All valid IDs of a catalog: marisa base + mutable overlay, with cached decoding tables.

    Items are addressed by an integer index (position in `item_keys`) during decoding and by
    their catalog key (item id) outside it. Thread-safe for one writer and many readers:
    `tables()` always returns a complete, immutable snapshot.
    """

    def __init__(self, item_keys: Sequence[str], sequences: Sequence[Sequence[int]], eos_token_id: int):
        if len(item_keys) != len(sequences):
            raise ValueError("item_keys and sequences differ in length")
        self.eos_token_id = eos_token_id
        self._lock = threading.Lock()
        self.item_keys: list[str] = list(item_keys)
        self._index_of_key = {key: i for i, key in enumerate(self.item_keys)}
        if len(self._index_of_key) != len(self.item_keys):
            raise ValueError("duplicate item keys")
        self._sequences: list[tuple[int, ...]] = []
        for tokens in sequences:
            self._sequences.append(self._checked(tokens))
        self._base = marisa_trie.Trie([encode_key(s) for s in self._sequences])
        if len(self._base) != len(self._sequences):
            raise ValueError("two items share one token sequence (textual IDs must be unique)")
        # marisa assigns its own key ids: map them to item indices.
        self._base_item = np.empty(len(self._sequences), dtype=np.int64)
        for index, seq in enumerate(self._sequences):
            self._base_item[self._base[encode_key(seq)]] = index
        self._overlay: dict[str, int] = {}
        self._tables: TrieTables | None = None

    def _checked(self, tokens: Iterable[int]) -> tuple[int, ...]:
        tokens = tuple(int(t) for t in tokens)
        if len(tokens) < 2 or tokens[-1] != self.eos_token_id or self.eos_token_id in tokens[:-1]:
            raise ValueError(f"a trie key must be one or more tokens followed by a single EOS: {tokens}")
        return tokens

    def __len__(self) -> int:
        return len(self.item_keys)

    @property
    def overlay_size(self) -> int:
        return len(self._overlay)

    def sequence(self, index: int) -> tuple[int, ...]:
        return self._sequences[index]

    def index_of(self, item_key: str) -> int | None:
        return self._index_of_key.get(item_key)

    def find(self, tokens: Sequence[int]) -> int | None:
        """Item index whose key is exactly `tokens` (EOS included), or None."""
        key = encode_key(tokens)
        base_id = self._base.get(key)
        if base_id is not None:
            return int(self._base_item[base_id])
        return self._overlay.get(key)

    def add(self, item_key: str, tokens: Sequence[int]) -> int:
        """Adds a minted item to the overlay; idempotent for the same key and sequence."""
        tokens = self._checked(tokens)
        with self._lock:
            existing = self._index_of_key.get(item_key)
            if existing is not None:
                if self._sequences[existing] != tokens:
                    raise ValueError(f"item {item_key!r} already has another ID")
                return existing
            if self.find(tokens) is not None:
                raise ValueError(f"token sequence of {item_key!r} already belongs to another item")
            index = len(self.item_keys)
            self.item_keys.append(item_key)
            self._sequences.append(tokens)
            self._index_of_key[item_key] = index
            self._overlay[encode_key(tokens)] = index
            self._tables = None
            return index

    def tables(self) -> TrieTables:
        """Decoding tables for every item known now (base + overlay); rebuilt lazily after `add`."""
        tables = self._tables
        if tables is None:
            with self._lock:
                if self._tables is None:
                    self._tables = build_tables(self._sequences, range(len(self._sequences)))
                tables = self._tables
        return tables

    def allowed_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow `prefix` (simple walk; used by the reference decoder)."""
        tables = self.tables()
        node = 0
        for token in prefix:
            tokens, children = tables.allowed(node)
            try:
                node = children[tokens.index(int(token))]
            except ValueError:
                return []
        return tables.allowed(node)[0]
