"""Tensor helpers every method shares: the one way a batch of token rows is padded."""

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100  # label of a position no loss is taken on (torch's cross-entropy default)


def pad_batch(rows: Sequence[Sequence[int]], pad_value: int, *, width: int | None = None,
              left: bool = False, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (ids, attention_mask) long tensors of a batch of token rows: right-padded (what the
    T5s read), or left-padded with `left` (a causal model's latest item in the last column);
    `width`: pad to this many columns (default: the longest row). Built on the host and moved
    to `device` (when given) in one copy each."""
    width = max((len(row) for row in rows), default=0) if width is None else width
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not len(row):
            continue
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, cols] = 1
    if device is not None and torch.device(device) != ids.device:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def pad_labels(rows: Sequence[Sequence[int]], device: torch.device | None = None) -> torch.Tensor:
    """Target rows padded with IGNORE_INDEX, so padding carries no loss."""
    return pad_batch(rows, IGNORE_INDEX, device=device)[0]
