"""Prefix trie over the token sequences of all valid textual IDs (each ending with EOS).

The base catalog lives in a `marisa_trie.Trie` (compact, immutable); items minted later go
into a small overlay. Decoding never walks marisa per step: `tables()` returns `TrieTables`,
level-ordered CSR arrays for the base (node -> sorted tokens; edge e leads to node e + 1, so
children and parents are implicit) plus a small CSR of the overlay's edges, merged by
`expand`, so a beam-search step masks every beam with a few tensor operations. Adding an
item touches only the overlay (O(its length)); nothing of the base is rebuilt.
"""

import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import marisa_trie
import numpy as np
import torch

from .int_arrays import sorted_unique, unique_inverse
from .packed import GrowingStrings, PackedInts, PackedStrings

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


def _long(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


@dataclass(frozen=True)
class OverlayTables:
    """The overlay's part of a snapshot: nodes numbered from the base's node count on, and a
    CSR of every edge the overlay added, keyed by its source node (a base or overlay node)."""

    first_node: int  # id of the first overlay node (= the base's node count)
    first_item: int  # item index of the first overlay item
    src: torch.Tensor  # (S,) int64 sorted source nodes that have overlay edges
    indptr: torch.Tensor  # (S + 1,) int64
    tokens: torch.Tensor  # (E,) int64, sorted within each source
    children: torch.Tensor  # (E,) int64
    leaf_item: torch.Tensor  # (M,) int64 item of overlay node first_node + j, or -1
    parent: torch.Tensor  # (M,) int64
    item_leaf: torch.Tensor  # (I,) int64 leaf node of item first_item + i
    count_delta: dict[int, int]  # node -> overlay items below it
    max_depth: int

    @property
    def num_nodes(self) -> int:
        return int(self.leaf_item.shape[0])

    def to(self, device) -> "OverlayTables":
        moved = {
            k: getattr(self, k).to(device)
            for k in ("src", "indptr", "tokens", "children", "leaf_item", "parent", "item_leaf")
        }
        return OverlayTables(
            self.first_node, self.first_item, count_delta=self.count_delta, max_depth=self.max_depth, **moved
        )


@dataclass(frozen=True)
class TrieTables:
    """Decoding tables of one snapshot of the trie. Node 0 is the root.

    Base part (level order): `base_indptr` (N+1,) int32 and `base_tokens` (N-1,) int32; edge e
    of node n (base_indptr[n] <= e < base_indptr[n+1]) carries base_tokens[e] and leads to node
    e + 1. Leaves are the targets of EOS edges; `leaf_nodes` (sorted) / `leaf_items` map them to
    item indices, `base_item_leaf` the other way. The overlay (if any) adds nodes and edges.
    Per-node arrays (`leaf_item`, `parent`, `leaf_count`, ...) are materialised on demand for
    inspection; decoding uses `expand`, `items_at` and `dead_nodes`.
    """

    base_indptr: torch.Tensor
    base_tokens: torch.Tensor
    leaf_nodes: torch.Tensor  # (L,) int32 sorted
    leaf_items: torch.Tensor  # (L,) int32
    base_item_leaf: torch.Tensor  # (num_base_items,) int32, -1 if absent
    root_tokens: torch.Tensor  # (R,) int64 sorted: the dense first level (base + overlay)
    root_children: torch.Tensor  # (R,) int64
    max_depth: int  # longest key, EOS included
    overlay: OverlayTables | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ sizes

    @property
    def num_base_nodes(self) -> int:
        return int(self.base_indptr.shape[0]) - 1

    @property
    def num_nodes(self) -> int:
        return self.num_base_nodes + (self.overlay.num_nodes if self.overlay is not None else 0)

    @property
    def num_items(self) -> int:
        """Items numbered by these tables (base and overlay): indices run from 0 to this."""
        return int(self.base_item_leaf.numel()) + (int(self.overlay.item_leaf.numel()) if self.overlay is not None else 0)

    def nbytes(self) -> int:
        """Bytes held by the tables' tensors."""
        tensors = [
            self.base_indptr,
            self.base_tokens,
            self.leaf_nodes,
            self.leaf_items,
            self.base_item_leaf,
            self.root_tokens,
            self.root_children,
        ]
        if self.overlay is not None:
            o = self.overlay
            tensors += [o.src, o.indptr, o.tokens, o.children, o.leaf_item, o.parent, o.item_leaf]
        return sum(t.element_size() * t.numel() for t in tensors)

    def to(self, device) -> "TrieTables":
        """A copy on `device` (cached per device)."""
        device = torch.device(device)
        if device == self.base_indptr.device:
            return self
        key = ("device", str(device))
        moved = self._cache.get(key)
        if moved is None:
            moved = TrieTables(
                *(
                    getattr(self, name).to(device)
                    for name in (
                        "base_indptr",
                        "base_tokens",
                        "leaf_nodes",
                        "leaf_items",
                        "base_item_leaf",
                        "root_tokens",
                        "root_children",
                    )
                ),
                max_depth=self.max_depth,
                overlay=self.overlay.to(device) if self.overlay is not None else None,
            )
            self._cache[key] = moved
        return moved

    # ------------------------------------------------------------------ decoding

    def expand(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All outgoing edges of `nodes` (B,) as flat (row, token, child) int64 arrays, rows
        ascending; rows index `nodes`. Rows whose node is negative (dead beams) get no edges."""
        nb = self.num_base_nodes
        in_base = (nodes >= 0) & (nodes < nb)
        safe = torch.where(in_base, nodes, torch.zeros_like(nodes))
        starts = self.base_indptr[safe].long()
        counts = torch.where(in_base, self.base_indptr[safe + 1].long() - starts, torch.zeros_like(starts))
        rows, offsets = _segments(starts, counts)
        tokens = self.base_tokens[offsets].long()
        children = offsets + 1
        o = self.overlay
        if o is not None and o.src.numel():
            pos = torch.searchsorted(o.src, nodes.clamp(min=0)).clamp(max=o.src.numel() - 1)
            hit = (nodes >= 0) & (o.src[pos] == nodes)
            o_starts = o.indptr[pos]
            o_counts = torch.where(hit, o.indptr[pos + 1] - o_starts, torch.zeros_like(o_starts))
            o_rows, o_offsets = _segments(o_starts, o_counts)
            if o_rows.numel():
                rows = torch.cat([rows, o_rows])
                order = torch.sort(rows, stable=True).indices
                rows = rows[order]
                tokens = torch.cat([tokens, o.tokens[o_offsets]])[order]
                children = torch.cat([children, o.children[o_offsets]])[order]
        return rows, tokens, children

    def expand_padded(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Outgoing edges of `nodes` (N,) as padded (N, W) tokens, children and a validity mask,
        W = the most edges any of the nodes has (base and overlay edges side by side; tokens
        are not sorted across the two). Invalid slots hold arbitrary real tokens and children."""
        nb = self.num_base_nodes
        in_base = (nodes >= 0) & (nodes < nb)
        safe = torch.where(in_base, nodes, torch.zeros_like(nodes))
        starts = self.base_indptr[safe].long()
        counts = torch.where(in_base, self.base_indptr[safe + 1].long() - starts, torch.zeros_like(starts))
        tokens, children, valid = _padded(starts, counts, self.base_tokens, None)
        o = self.overlay
        if o is not None and o.src.numel():
            pos = torch.searchsorted(o.src, nodes.clamp(min=0)).clamp(max=o.src.numel() - 1)
            hit = (nodes >= 0) & (o.src[pos] == nodes)
            o_starts = o.indptr[pos]
            o_counts = torch.where(hit, o.indptr[pos + 1] - o_starts, torch.zeros_like(o_starts))
            o_tokens, o_children, o_valid = _padded(o_starts, o_counts, o.tokens, o.children)
            tokens = torch.cat([tokens, o_tokens], 1)
            children = torch.cat([children, o_children], 1)
            valid = torch.cat([valid, o_valid], 1)
        return tokens, children, valid

    def items_at(self, nodes: torch.Tensor) -> torch.Tensor:
        """Item index of each leaf node in `nodes` (any shape), -1 for inner or negative nodes."""
        flat = nodes.reshape(-1)
        result = torch.full_like(flat, -1)
        nb = self.num_base_nodes
        if self.leaf_nodes.numel():
            base = (flat >= 0) & (flat < nb)
            pos = torch.searchsorted(self.leaf_nodes, flat.to(self.leaf_nodes.dtype)).clamp(
                max=self.leaf_nodes.numel() - 1
            )
            hit = base & (self.leaf_nodes[pos].long() == flat)
            result = torch.where(hit, self.leaf_items[pos].long(), result)
        o = self.overlay
        if o is not None and o.num_nodes:
            local = (flat - nb).clamp(min=0, max=o.num_nodes - 1)
            result = torch.where(flat >= nb, o.leaf_item[local], result)
        return result.view(nodes.shape)

    # ------------------------------------------------------------------ node queries (host side)

    @cached_property
    def _np(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base_indptr.cpu().numpy(), self.base_tokens.cpu().numpy()

    def _base_children(self, node: int) -> tuple[list[int], list[int]]:
        indptr, tokens = self._np
        lo, hi = int(indptr[node]), int(indptr[node + 1])
        return tokens[lo:hi].tolist(), list(range(lo + 1, hi + 1))

    def allowed(self, node: int) -> tuple[list[int], list[int]]:
        """(tokens, children) of `node`, sorted by token."""
        tokens: list[int] = []
        children: list[int] = []
        if 0 <= node < self.num_base_nodes:
            tokens, children = self._base_children(node)
        o = self.overlay
        if o is not None and o.src.numel():
            pos = int(torch.searchsorted(o.src.cpu(), torch.tensor(node)))
            if pos < o.src.numel() and int(o.src[pos]) == node:
                lo, hi = int(o.indptr[pos]), int(o.indptr[pos + 1])
                pairs = sorted(
                    zip(tokens + o.tokens[lo:hi].tolist(), children + o.children[lo:hi].tolist(), strict=True)
                )
                tokens, children = [p[0] for p in pairs], [p[1] for p in pairs]
        return tokens, children

    def parent_of(self, node: int) -> int:
        nb = self.num_base_nodes
        if node <= 0:
            return -1
        if node < nb:
            indptr, _ = self._np
            return int(np.searchsorted(indptr, node - 1, side="right")) - 1
        return int(self.overlay.parent[node - nb])

    def leaf_of_item(self, item: int) -> int:
        o = self.overlay
        if o is not None and o.first_item <= item < o.first_item + o.item_leaf.numel():
            return int(o.item_leaf[item - o.first_item])
        if 0 <= item < self.base_item_leaf.numel():
            return int(self.base_item_leaf[item])
        return -1

    def leaves_of_items(self, items: np.ndarray) -> np.ndarray:
        """Vectorised `leaf_of_item`."""
        result = np.full(items.shape, -1, dtype=np.int64)
        base = self.base_item_leaf.cpu().numpy()
        in_base = (items >= 0) & (items < base.size)
        result[in_base] = base[items[in_base]]
        o = self.overlay
        if o is not None:
            local = items - o.first_item
            over = (local >= 0) & (local < o.item_leaf.numel())
            result[over] = o.item_leaf.cpu().numpy()[local[over]]
        return result

    def count_below(self, node: int) -> int:
        """Items whose ID passes through `node` (leaves at or below it)."""
        key = ("count", node)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        nb = self.num_base_nodes
        count = 0
        if node < nb:
            # Level order: the descendants of a node range at one level form a node range at the next.
            indptr, _ = self._np
            a, b = node, node + 1
            while a < b:
                lo, hi = int(indptr[a]), int(indptr[b])
                count += (b - a) - int(np.count_nonzero(np.diff(indptr[a : b + 1])))  # nodes without children
                a, b = lo + 1, hi + 1
        if self.overlay is not None:
            count += self.overlay.count_delta.get(node, 0)
        self._cache[key] = count
        return count

    def dead_nodes(self, items: "Sequence[int]") -> list[int]:
        """Nodes all of whose items are in `items`: excluding those items must prune them whole,
        so no beam walks into a prefix that can no longer end in a valid ID."""
        return self.dead_node_keys([items]).tolist()

    def dead_node_keys(self, items_per_request: "Sequence[Sequence[int]]") -> np.ndarray:
        """`dead_nodes` of every request at once, as sorted keys `request * num_nodes + node`.

        Bottom-up with array operations over all requests together: the excluded items' leaves
        are dead; a node is dead once as many of its children are dead as it has children
        (children die at different rounds when IDs have different lengths, so partial counts
        carry over between rounds)."""
        num_nodes = self.num_nodes
        requests, items = _flat_requests(items_per_request)
        leaves = self.leaves_of_items(items)
        frontier = sorted_unique(requests[leaves > 0] * num_nodes + leaves[leaves > 0])
        dead = [frontier]
        pending_keys = np.empty(0, dtype=np.int64)  # parents with some, not all, children dead
        pending_counts = np.empty(0, dtype=np.int64)
        while frontier.size:
            request, node = np.divmod(frontier, num_nodes)
            parents = self._parents(node)
            keep = parents > 0
            keys = np.concatenate([pending_keys, request[keep] * num_nodes + parents[keep]])
            weights = np.concatenate([pending_counts, np.ones(int(keep.sum()), dtype=np.int64)])
            keys, inverse = unique_inverse(keys)
            totals = np.bincount(inverse, weights=weights, minlength=keys.size).astype(np.int64)
            full = totals == self._num_children(keys % num_nodes)
            pending_keys, pending_counts = keys[~full], totals[~full]
            frontier = keys[full]
            dead.append(frontier)
        return np.sort(np.concatenate(dead), kind="stable")  # sorted runs, one a round: merged, not re-sorted

    def live_node_keys(self, items_per_request: "Sequence[Sequence[int]]") -> np.ndarray:
        """The nodes on the paths of each request's items (root excluded), as sorted keys
        `request * num_nodes + node`: the only nodes a request limited to those items may enter
        (every other node leads to none of them). Costs O(items x ID length), whatever the
        catalog's size: what a narrow filter on a large catalog needs, where the dead nodes of
        its complement would cost O(catalog)."""
        num_nodes = self.num_nodes
        requests, items = _flat_requests(items_per_request)
        leaves = self.leaves_of_items(items)
        frontier = sorted_unique(requests[leaves > 0] * num_nodes + leaves[leaves > 0])
        live = [frontier]
        while frontier.size:
            request, node = np.divmod(frontier, num_nodes)
            parents = self._parents(node)
            keep = parents > 0
            frontier = sorted_unique(request[keep] * num_nodes + parents[keep])
            live.append(frontier)
        return sorted_unique(np.concatenate(live))

    def _parents(self, nodes: np.ndarray) -> np.ndarray:
        nb = self.num_base_nodes
        indptr, _ = self._np
        # Needles of the haystack's dtype: a mixed-dtype search is about 2x slower.
        result = np.searchsorted(indptr, (nodes - 1).astype(indptr.dtype), side="right").astype(np.int64) - 1
        if self.overlay is not None and (nodes >= nb).any():
            over = nodes >= nb
            result[over] = self.overlay.parent.cpu().numpy()[nodes[over] - nb]
        return result

    def _num_children(self, nodes: np.ndarray) -> np.ndarray:
        nb = self.num_base_nodes
        indptr, _ = self._np
        base = nodes < nb
        safe = np.where(base, nodes, 0)
        counts = np.where(base, indptr[safe + 1].astype(np.int64) - indptr[safe], 0)
        o = self.overlay
        if o is not None and o.src.numel():
            src, o_indptr = o.src.cpu().numpy(), o.indptr.cpu().numpy()
            pos = np.minimum(np.searchsorted(src, nodes), src.size - 1)
            hit = src[pos] == nodes
            counts = counts + np.where(hit, o_indptr[pos + 1] - o_indptr[pos], 0)
        return counts

    # ------------------------------------------------------------------ full per-node arrays (inspection, tests)

    @cached_property
    def leaf_item(self) -> torch.Tensor:
        return self.items_at(torch.arange(self.num_nodes))

    @cached_property
    def parent(self) -> torch.Tensor:
        counts = torch.diff(self.base_indptr.long())
        base = torch.cat(
            [torch.tensor([-1]), torch.repeat_interleave(torch.arange(self.num_base_nodes), counts)]
        )
        if self.overlay is None:
            return base
        return torch.cat([base, self.overlay.parent.cpu()])

    @cached_property
    def leaf_count(self) -> torch.Tensor:
        return torch.tensor([self.count_below(n) for n in range(self.num_nodes)], dtype=torch.long)

    @cached_property
    def item_leaf(self) -> torch.Tensor:
        size = self.base_item_leaf.numel()
        if self.overlay is not None:
            size = max(size, self.overlay.first_item + self.overlay.item_leaf.numel())
        return torch.tensor([self.leaf_of_item(i) for i in range(size)], dtype=torch.long)

    @cached_property
    def _merged_csr(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.overlay is None:
            edges = self.base_tokens.numel()
            return self.base_indptr.long(), self.base_tokens.long(), torch.arange(1, edges + 1)
        indptr, tokens, children = [0], [], []
        for node in range(self.num_nodes):
            t, c = self.allowed(node)
            tokens += t
            children += c
            indptr.append(len(tokens))
        return _long(indptr), _long(tokens), _long(children)

    @property
    def indptr(self) -> torch.Tensor:
        return self._merged_csr[0]

    @property
    def tokens(self) -> torch.Tensor:
        return self._merged_csr[1]

    @property
    def children(self) -> torch.Tensor:
        return self._merged_csr[2]


def _flat_requests(items_per_request: "Sequence[Sequence[int]]") -> tuple[np.ndarray, np.ndarray]:
    """(request of each item, the items) of per-request item lists or arrays, as two flat int64
    arrays (arrays are joined as they are, not read item by item)."""
    groups = [np.asarray(items, dtype=np.int64) for items in items_per_request]
    if not groups:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    requests = np.repeat(np.arange(len(groups), dtype=np.int64), [group.size for group in groups])
    return requests, np.concatenate(groups)


def _padded(starts, counts, tokens, children):
    """Segments [starts[i], starts[i] + counts[i]) of `tokens` (and `children`, or the implicit
    child e + 1 of edge e) as (N, max count) matrices plus their validity mask; invalid slots
    hold some real token and child (masked by the caller)."""
    width = int(counts.max()) if counts.numel() else 0  # one host sync
    slots = torch.arange(width, device=starts.device)
    valid = slots[None, :] < counts[:, None]
    if tokens.numel() == 0:
        zeros = torch.zeros_like(valid, dtype=torch.long)
        return zeros, zeros, valid
    offsets = (starts[:, None] + slots[None, :]).clamp_(max=tokens.numel() - 1)
    got_children = offsets + 1 if children is None else children[offsets]
    # index_select on the flat offsets: ~2.5x faster than advanced indexing with a 2-D index.
    got_tokens = tokens.index_select(0, offsets.view(-1)).view(offsets.shape)
    return got_tokens.long(), got_children, valid


def _segments(starts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments [starts[i], starts[i] + counts[i]): (segment of each position, position)."""
    rows = torch.repeat_interleave(torch.arange(starts.shape[0], device=starts.device), counts)
    if rows.numel() == 0:
        empty = rows.new_empty(0)
        return rows, empty
    first = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(rows.numel(), device=starts.device) - first[rows] + starts[rows]
    return rows, offsets


def build_tables(sequences: Sequence[Sequence[int]], item_indices: Sequence[int]) -> TrieTables:
    """Level-ordered CSR tables for `sequences` (each ending with EOS), built with array
    operations (no per-token Python loop); a sequence's leaf maps to its item index."""
    n = len(sequences)
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int32)
        return TrieTables(
            torch.zeros(1, dtype=torch.int32),
            empty,
            empty,
            empty,
            empty,
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            0,
        )
    if isinstance(sequences, PackedInts):
        lengths, flat = sequences.lengths, sequences.flat.astype(np.int64)
    else:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
        flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    width = int(lengths.max())
    present = np.arange(width)[None, :] < lengths[:, None]  # (n, width)
    mat = np.full((n, width), -1, dtype=np.int64)
    mat[present] = flat
    order = np.lexsort(mat.T[::-1])  # rows in lexicographic order
    mat, present, lengths = mat[order], present[order], lengths[order]
    differs = mat[1:] != mat[:-1]
    first_diff = np.concatenate([[0], np.where(differs.any(1), differs.argmax(1), width)])
    new = (np.arange(width)[None, :] >= first_diff[:, None]) & present  # row i opens a node at depth d
    ids = np.zeros((n, width), dtype=np.int64)
    parents_per_level, tokens_per_level = [], []
    next_id = 1
    for d in range(width):
        col = new[:, d]
        count = int(col.sum())
        opened = np.where(col, next_id + np.cumsum(col) - 1, -1)
        ids[:, d] = np.maximum.accumulate(opened)  # rows sharing the prefix share its node
        parent = ids[:, d - 1] if d else np.zeros(n, dtype=np.int64)
        parents_per_level.append(parent[col])
        tokens_per_level.append(mat[col, d])
        next_id += count
    num_nodes = next_id
    parents = np.concatenate(parents_per_level)  # parent of node 1, 2, ...: nondecreasing
    tokens = np.concatenate(tokens_per_level)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(parents, minlength=num_nodes))])
    leaves = ids[np.arange(n), lengths - 1]
    items = np.asarray(item_indices, dtype=np.int64)[order]
    by_leaf = np.argsort(leaves)
    item_leaf = np.full(int(items.max()) + 1 if n else 0, -1, dtype=np.int64)
    item_leaf[items] = leaves
    root_count = int(indptr[1])
    dtype = np.int32 if num_nodes < 2**31 - 1 else np.int64
    return TrieTables(
        base_indptr=torch.from_numpy(indptr.astype(dtype)),
        base_tokens=torch.from_numpy(tokens.astype(dtype)),
        leaf_nodes=torch.from_numpy(leaves[by_leaf].astype(dtype)),
        leaf_items=torch.from_numpy(items[by_leaf].astype(dtype)),
        base_item_leaf=torch.from_numpy(item_leaf.astype(dtype)),
        root_tokens=torch.from_numpy(tokens[:root_count].copy()),
        root_children=torch.arange(1, root_count + 1),
        max_depth=width,
    )


def _encoded_keys(sequences: PackedInts) -> list[str]:
    """`encode_key` of every sequence, with array operations: one character a token."""
    flat = sequences.flat.astype(np.int64)
    codes = np.where(flat < _SURROGATE_START, flat, flat + _SURROGATE_SHIFT).astype("<u4")
    text = codes.tobytes().decode("utf-32-le")
    bounds = sequences.offsets.tolist()
    return [text[start:end] for start, end in zip(bounds, bounds[1:])]  # noqa: B905 - one shorter by design


class TextualIdTrie:
    """All valid IDs of a catalog: marisa base + mutable overlay, with decoding tables.

    Items are addressed by an integer index (position in `item_keys`) during decoding and by
    their catalog key (item id) outside it. Thread-safe for one writer and many readers:
    `tables()` always returns a complete, immutable snapshot; after an `add` only the
    overlay's small arrays are rebuilt (O(overlay)), never the base tables.
    """

    def __init__(self, item_keys: Sequence[str], sequences: Sequence[Sequence[int]], eos_token_id: int):
        if len(item_keys) != len(sequences):
            raise ValueError("item_keys and sequences differ in length")
        self.eos_token_id = eos_token_id
        self._lock = threading.RLock()
        # Shared by the tries that number items alike (a catalog's folds set it to their
        # predecessor's): an item's index in one is its index in the others.
        self.numbering = object()
        # The base items packed (genrec/packed.py), shared with a bundle's columns when given
        # them: no str, tuple or dict entry an item.
        base_keys = item_keys if isinstance(item_keys, PackedStrings) else PackedStrings(item_keys)
        if not base_keys.distinct():
            raise ValueError("duplicate item keys")
        self.item_keys = GrowingStrings(base_keys)
        self._base_sequences = self._checked_rows(sequences)
        self._num_base = len(self._base_sequences)
        self._added_index: dict[str, int] = {}  # key -> index of the items added after the base
        self._added_sequences: list[tuple[int, ...]] = []
        keys = _encoded_keys(self._base_sequences)
        self._base = marisa_trie.Trie(keys)
        if len(self._base) != self._num_base:
            raise ValueError("two items share one token sequence (textual IDs must be unique)")
        # marisa assigns its own key ids: map them to item indices.
        base = self._base
        self._base_item = np.empty(self._num_base, dtype=np.int32 if self._num_base < 2**31 else np.int64)
        self._base_item[np.fromiter((base[key] for key in keys), dtype=np.int64, count=len(keys))] = np.arange(
            len(keys), dtype=np.int64)
        del keys
        self._overlay: dict[str, int] = {}
        self._base_tables: TrieTables | None = None
        # The overlay's trie, append-only: edges (node, token) -> child, per-node arrays.
        self._ov_edges: dict[tuple[int, int], int] = {}
        self._ov_leaf_item: list[int] = []
        self._ov_parent: list[int] = []
        self._ov_item_leaf: list[int] = []
        self._ov_count: dict[int, int] = {}
        self._ov_depth = 0
        self._tables: TrieTables | None = None

    def _checked(self, tokens: Iterable[int]) -> tuple[int, ...]:
        tokens = tuple(map(int, tokens))
        if len(tokens) < 2 or tokens[-1] != self.eos_token_id or self.eos_token_id in tokens[:-1]:
            raise ValueError(f"a trie key must be one or more tokens followed by a single EOS: {tokens}")
        return tokens

    def _checked_rows(self, sequences: Sequence[Sequence[int]]) -> PackedInts:
        """The base sequences packed, each checked as `_checked` does (with array operations
        when they come packed; the first bad one, if any, raises through `_checked`)."""
        if not isinstance(sequences, PackedInts):
            return PackedInts.of([self._checked(tokens) for tokens in sequences])
        lengths, flat = sequences.lengths, sequences.flat
        ends = sequences.offsets[1:].astype(np.int64) - 1
        if len(flat) and not ((lengths >= 2).all() and (flat[ends] == self.eos_token_id).all()
                              and int((flat == self.eos_token_id).sum()) == len(lengths)):
            for tokens in sequences:
                self._checked(tokens)
        return sequences

    def __len__(self) -> int:
        return self._num_base + len(self._added_sequences)

    @property
    def overlay_size(self) -> int:
        return len(self._overlay)

    @property
    def marisa_bytes(self) -> int:
        return len(self._base.tobytes())

    def sequence(self, index: int) -> tuple[int, ...]:
        if index < self._num_base:
            return self._base_sequences[index]
        return self._added_sequences[index - self._num_base]

    def index_of(self, item_key: str) -> int | None:
        index = self.item_keys.base.position(item_key)
        return index if index is not None else self._added_index.get(item_key)

    def find(self, tokens: Sequence[int]) -> int | None:
        """Item index whose key is exactly `tokens` (EOS included), or None."""
        key = encode_key(tokens)
        base_id = self._base.get(key)
        if base_id is not None:
            return int(self._base_item[base_id])
        return self._overlay.get(key)

    def base_tables(self) -> TrieTables:
        tables = self._base_tables
        if tables is None:
            with self._lock:
                if self._base_tables is None:
                    self._base_tables = build_tables(self._base_sequences, range(self._num_base))
                tables = self._base_tables
        return tables

    def add(self, item_key: str, tokens: Sequence[int]) -> int:
        """Adds a minted item to the overlay; idempotent for the same key and sequence."""
        tokens = self._checked(tokens)
        base = self.base_tables()
        with self._lock:
            existing = self.index_of(item_key)
            if existing is not None:
                if self.sequence(existing) != tokens:
                    raise ValueError(f"item {item_key!r} already has another ID")
                return existing
            if self.find(tokens) is not None:
                raise ValueError(f"token sequence of {item_key!r} already belongs to another item")
            index = len(self)
            self._insert_overlay(base, tokens, index)
            self.item_keys.append(item_key)
            self._added_sequences.append(tokens)
            self._added_index[item_key] = index
            self._overlay[encode_key(tokens)] = index
            self._tables = None
            return index

    def _insert_overlay(self, base: TrieTables, tokens: tuple[int, ...], index: int) -> None:
        nb = base.num_base_nodes
        indptr, base_tokens = base._np
        node = 0
        path = [0]
        for token in tokens:
            child = None
            if node < nb:
                lo, hi = int(indptr[node]), int(indptr[node + 1])
                pos = lo + int(np.searchsorted(base_tokens[lo:hi], token))
                if pos < hi and int(base_tokens[pos]) == token:
                    child = pos + 1
            if child is None:
                child = self._ov_edges.get((node, token))
            if child is None:
                child = nb + len(self._ov_leaf_item)
                self._ov_edges[(node, token)] = child
                self._ov_leaf_item.append(-1)
                self._ov_parent.append(node)
            node = child
            path.append(node)
        self._ov_leaf_item[node - nb] = index
        assert index - self._num_base == len(self._ov_item_leaf)
        self._ov_item_leaf.append(node)
        for n in path:
            self._ov_count[n] = self._ov_count.get(n, 0) + 1
        self._ov_depth = max(self._ov_depth, len(tokens))

    def tables(self) -> TrieTables:
        """Decoding tables for every item known now: the base tables plus a snapshot of the
        overlay (rebuilt lazily after `add`, in O(overlay size))."""
        tables = self._tables
        if tables is None:
            base = self.base_tables()
            with self._lock:
                if self._tables is None:
                    self._tables = self._snapshot(base) if self._ov_item_leaf else base
                tables = self._tables
        return tables

    def _snapshot(self, base: TrieTables) -> TrieTables:
        edges = sorted((node, token, child) for (node, token), child in self._ov_edges.items())
        arr = np.array(edges, dtype=np.int64).reshape(-1, 3)
        nodes = arr[:, 0]  # sorted: the first edge of each source node starts its run
        starts = np.flatnonzero(np.concatenate(([True], nodes[1:] != nodes[:-1]))) if len(nodes) else nodes
        src = nodes[starts]
        overlay = OverlayTables(
            first_node=base.num_base_nodes,
            first_item=self._num_base,
            src=torch.from_numpy(src),
            indptr=torch.from_numpy(np.concatenate([starts, [len(arr)]]).astype(np.int64)),
            tokens=torch.from_numpy(arr[:, 1].copy()),
            children=torch.from_numpy(arr[:, 2].copy()),
            leaf_item=_long(self._ov_leaf_item),
            parent=_long(self._ov_parent),
            item_leaf=_long(self._ov_item_leaf),
            count_delta=dict(self._ov_count),
            max_depth=self._ov_depth,
        )
        root = arr[arr[:, 0] == 0]
        root_tokens = torch.cat([base.root_tokens, torch.from_numpy(root[:, 1].copy())])
        root_children = torch.cat([base.root_children, torch.from_numpy(root[:, 2].copy())])
        order = torch.argsort(root_tokens)
        return TrieTables(
            base.base_indptr,
            base.base_tokens,
            base.leaf_nodes,
            base.leaf_items,
            base.base_item_leaf,
            root_tokens[order],
            root_children[order],
            max(base.max_depth, self._ov_depth),
            overlay,
        )

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
