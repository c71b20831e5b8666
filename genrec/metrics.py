"""Ranking metrics of the leave-one-out protocol (one held-out item per user)."""

import math
from collections.abc import Sequence


def hit_rate_at(ranked: Sequence[str], target: str, k: int) -> float:
    return 1.0 if target in list(ranked[:k]) else 0.0


def ndcg_at(ranked: Sequence[str], target: str, k: int) -> float:
    """With one relevant item the ideal DCG is 1, so NDCG = 1 / log2(rank + 1)."""
    top = list(ranked[:k])
    if target not in top:
        return 0.0
    return 1.0 / math.log2(top.index(target) + 2)


def leave_one_out_metrics(
    rankings: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = (5, 10)
) -> dict[str, float]:
    """Mean HR@k and NDCG@k over users (`hr@5`, `ndcg@5`, ...)."""
    if len(rankings) != len(targets):
        raise ValueError("rankings and targets differ in length")
    n = max(len(targets), 1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = sum(hit_rate_at(r, t, k) for r, t in zip(rankings, targets, strict=True)) / n
        out[f"ndcg@{k}"] = sum(ndcg_at(r, t, k) for r, t in zip(rankings, targets, strict=True)) / n
    return out


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """CLLM4Rec's protocol: hits in the top k over min(k, |relevant|)."""
    if not relevant:
        return 0.0
    hits = sum(1 for item in ranked[:k] if item in relevant)
    return hits / min(k, len(relevant))


def ndcg_multi_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal
