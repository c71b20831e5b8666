"""SASRec's network (Kang & McAuley, ICDM 2018): item embeddings plus learned positions, causal
self-attention blocks, and scores over every item from the hidden state tied to the item table.

Conventions:

* Item rows: row 0 is padding, item `item_ids[j]` is row j + 1. Scores have one column per item
  (column j is `item_ids[j]`); padding never gets a score, so it can never be recommended.
* Sequences are left-padded: the newest item is the last column. A position is counted from the
  newest item (the newest has position 0), which is what the original's left-padded window of
  max_len slots amounts to, and makes a sequence's hidden states independent of how much padding
  its batch needed.
* Attention is causal: position t reads positions <= t only, so the state at t (the prediction of
  item t + 1) never sees later items. Padding keys are masked; a padding query reads itself only
  (its output is never used), so no attention row is empty.
* `forward(items, targets)` returns the mean cross-entropy over every non-padding target, the
  softmax taken over all items (the training loss; computed in forward, so DDP sees the whole
  step); `forward(items)` returns the hidden states.
* The model also keeps each item's training count (`item_counts`): queries with no known
  history item are ranked by popularity, as the network has no state for an empty sequence.

This module depends on torch and safetensors only (never on training/ or service/).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import BundleError

MODEL_DIR = "sasrec"  # the bundle folder of the model
WEIGHTS_NAME = "model.safetensors"
META_NAME = "sasrec.json"
META_FORMAT = 1
PAD = 0
_SIZES = ("hidden_size", "num_layers", "num_heads", "inner_size", "max_len")


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not a multiple of num_heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, hidden = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, length, hidden))


class _Block(nn.Module):
    """A pre-norm transformer block: x + attention(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, hidden: int, heads: int, inner: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attention = _SelfAttention(hidden, heads, attn_dropout)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x), allowed))
        return x + self.drop(self.ffn(self.norm2(x)))


class SasRecModel(nn.Module):
    def __init__(self, item_ids: Sequence[str], *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
                 inner_size: int = 256, dropout: float = 0.2, attn_dropout: float = 0.0, max_len: int = 200,
                 init_std: float = 0.02):
        super().__init__()
        self.item_ids = [str(i) for i in item_ids]
        if not self.item_ids:
            raise ValueError("SASRec needs at least one item")
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ValueError("item ids repeat")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.item_index = {item: j + 1 for j, item in enumerate(self.item_ids)}  # item -> row
        self.sizes = {"hidden_size": int(hidden_size), "num_layers": int(num_layers), "num_heads": int(num_heads),
                      "inner_size": int(inner_size), "max_len": int(max_len)}
        self.max_len = int(max_len)
        self.item_embedding = nn.Embedding(len(self.item_ids) + 1, hidden_size, padding_idx=PAD)
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden_size, num_heads, inner_size, dropout, attn_dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_size)
        self.register_buffer("item_counts", torch.zeros(len(self.item_ids)))
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def rows(self, items: Sequence[str]) -> list[int]:
        """The rows of the known items among `items`, in order (unknown ones are skipped)."""
        index = self.item_index
        return [index[i] for i in items if i in index]

    def set_item_counts(self, counts: dict[str, int]) -> None:
        """Each item's number of training interactions (the popularity fallback)."""
        self.item_counts.copy_(torch.tensor([float(counts.get(i, 0)) for i in self.item_ids]))

    # ---------------------------------------------------------------- the network

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, H) of left-padded item rows (B, L), L <= max_len."""
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequences of {length} items are longer than max_len {self.max_len}")
        positions = torch.arange(length - 1, -1, -1, device=items.device)  # the newest item is 0
        x = self.input_dropout(self.item_embedding(items) + self.position_embedding(positions))
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        readable = (items != PAD)[:, None, :] | torch.eye(length, dtype=torch.bool, device=items.device)
        allowed = (causal & readable).unsqueeze(1)  # (B, 1, L, L): query t reads key s
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., num_items) of hidden states (..., H): dot products with the item table."""
        return hidden @ self.item_embedding.weight[1:].T

    def forward(self, items: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encode(items)
        if targets is None:
            return hidden
        where = targets != PAD
        return F.cross_entropy(self.item_scores(hidden[where]), targets[where] - 1)

    def last_scores(self, items: torch.Tensor) -> torch.Tensor:
        """Scores (B, num_items) of the next item after each left-padded sequence (B, L)."""
        return self.item_scores(self.encode(items)[:, -1])

    # ---------------------------------------------------------------- persistence

    def save(self, folder: Path) -> None:
        """`model.safetensors` (the weights and item counts) and `sasrec.json` (sizes, item ids)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_NAME))
        meta = {"format": META_FORMAT, **self.sizes, "item_ids": self.item_ids}
        (folder / META_NAME).write_text(json.dumps(meta), encoding="utf-8")


def load_sasrec(folder: Path) -> SasRecModel:
    """The model saved by `SasRecModel.save`, in eval mode; BundleError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"the SASRec model folder {folder} does not exist")
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"the SASRec model in {folder} lacks its {META_NAME}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{folder / META_NAME} cannot be read: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise BundleError(f"{folder / META_NAME}: not a SASRec model description of format {META_FORMAT}")
    bad = [k for k in _SIZES if type(meta.get(k)) is not int or meta[k] < 1]
    items = meta.get("item_ids")
    if bad or not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise BundleError(f"{folder / META_NAME}: missing or invalid {', '.join(bad) or 'item_ids'}")
    try:
        model = SasRecModel(items, **{k: meta[k] for k in _SIZES})
    except ValueError as exc:
        raise BundleError(f"{folder / META_NAME}: {exc}") from exc
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise BundleError(f"the SASRec model in {folder} lacks its {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for a corrupt file
        raise BundleError(f"{weights} cannot be read: {exc}") from exc
    expected = model.state_dict()
    wrong = sorted(name for name, t in expected.items()
                   if name not in tensors or tensors[name].shape != t.shape or tensors[name].dtype != t.dtype)
    extra = sorted(set(tensors) - set(expected))
    if wrong or extra:
        raise BundleError(f"{weights} does not match {META_NAME}: missing or mis-shaped "
                          f"{', '.join(wrong) or '-'}; unexpected {', '.join(extra) or '-'}")
    model.load_state_dict(tensors)
    model.eval()
    return model
