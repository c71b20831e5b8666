"""Tensor helpers every method shares: the one way a batch of token rows is padded."""

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100  # label of a position no loss is taken on (torch's cross-entropy default)


def pad_batch(rows: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention_mask) long tensors of a batch of token rows."""
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def pad_labels(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Target rows padded with IGNORE_INDEX, so padding carries no loss."""
    return pad_batch(rows, IGNORE_INDEX)[0]
