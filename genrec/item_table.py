"""Top-k over a table of item scores, for the methods that score every item of their own table
in one pass (CLLM4Rec, SASRec). A query's exclusions and its allowed set are masks applied to
its score row before the top-k, not filters after it: a query gets k items whenever k qualify."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from .method import Recommendation


def mask_row(scores: torch.Tensor, row: int, columns: Mapping[str, int], exclude: Collection[str],
             allowed: Collection[str] | None = None) -> None:
    """Sets, in place, -inf in row `row` of `scores` for every item a query must not get (see
    `Query`): its `exclude`, and with an `allowed` set every column outside it. `columns` maps the
    table's item ids to their columns; ids it lacks (items the model was not trained with) are
    ignored."""
    if allowed is not None:
        kept = _columns(allowed, columns)
        masked = torch.full_like(scores[row], float("-inf"))
        if kept:
            masked[kept] = scores[row, kept]
        scores[row] = masked
    banned = _columns(exclude, columns)
    if banned:
        scores[row, banned] = float("-inf")


def top_items(scores: torch.Tensor, item_ids: Sequence[str], k: int) -> list[list[Recommendation]]:
    """The k best items of each row, best first; masked (-inf) items never, so a row may get fewer."""
    values, cols = scores.topk(min(k, scores.shape[-1]), dim=-1)
    return [[Recommendation(item_ids[c], v) for v, c in zip(vrow, crow, strict=True) if v != float("-inf")]
            for vrow, crow in zip(values.tolist(), cols.tolist(), strict=True)]


def _columns(items: Collection[str], columns: Mapping[str, int]) -> list[int]:
    return [columns[i] for i in items if i in columns]
