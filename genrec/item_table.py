"""Top-k over a table of item scores, for the methods that score every item of their own table
in one pass (CLLM4Rec, SASRec). A query's exclusions and its allowed set are masks applied to
its score row before the top-k, not filters after it: a query gets k items whenever k qualify."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from .method import Recommendation


def mask_rows(scores: torch.Tensor, columns: Mapping[str, int], excludes: Sequence[Collection[str]],
              alloweds: Sequence[Collection[str] | None] | None = None) -> None:
    """Sets, in place, -inf in each row r of `scores` for every item query r must not get (see
    `Query`): its `excludes[r]`, and with an `alloweds[r]` set every column outside it. `columns`
    maps the table's item ids to their columns; ids it lacks (items the model was not trained
    with) are ignored. The indices are gathered on the host and sent to the scores' device in
    one copy for the batch, not one per query."""
    device = scores.device
    rows: list[int] = []
    cols: list[int] = []
    for row, exclude in enumerate(excludes):
        banned = _columns(exclude, columns)
        rows += [row] * len(banned)
        cols += banned
    if rows:
        scores[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = float("-inf")
    limited = [row for row, allowed in enumerate(alloweds or ()) if allowed is not None]
    if limited:
        keep = torch.zeros((len(limited), scores.shape[-1]), dtype=torch.bool)
        for i, row in enumerate(limited):
            keep[i, _columns(alloweds[row], columns)] = True
        index = torch.tensor(limited, device=device)
        scores[index] = scores[index].masked_fill(~keep.to(device), float("-inf"))


def top_items(scores: torch.Tensor, item_ids: Sequence[str], k: int) -> list[list[Recommendation]]:
    """The k best items of each row, best first; masked (-inf) items never, so a row may get fewer."""
    values, cols = scores.topk(min(k, scores.shape[-1]), dim=-1)
    return [[Recommendation(item_ids[c], v) for v, c in zip(vrow, crow, strict=True) if v != float("-inf")]
            for vrow, crow in zip(values.tolist(), cols.tolist(), strict=True)]


def _columns(items: Collection[str], columns: Mapping[str, int]) -> list[int]:
    return [columns[i] for i in items if i in columns]
