"""Leave-one-out evaluation with full ranking (docs/methods.md, "Evaluation protocol"): one
evaluator for every method and baseline.

A user's whole visible history goes into the query (each method keeps as much of it as it
reads) and is excluded from the ranking, for every method and baseline alike (as RecBole
does). Rankings come from the method's own `recommend`, the path that serves. Metrics are kept
per user, so that two rankers can be compared on the same users (training.bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from genrec.method import Query, Recommendation
from genrec.metrics import hit_rate_at, ndcg_at
from genrec.progress import progress_bar
from genrec.trie import TextualIdTrie

from .data import SplitData

SPLITS = ("valid", "test")
WHOLE_HISTORY = 10**9
METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")


class Ranker(Protocol):
    """What the evaluator ranks with: a `Method`, or a baseline with the same call."""

    def recommend(self, queries: Sequence[Query], k: int, trie: TextualIdTrie,
                  cache=None) -> list[list[Recommendation]]: ...


def evaluation_users(split: SplitData, which: str, limit: int | None = None) -> list[str]:
    users = [u for u in split.train if u in getattr(split, which)]
    return users[:limit] if limit else users


def user_query(split: SplitData, user: str, which: str) -> Query:
    """What a ranker sees when predicting `which` for `user`: the visible history, excluded
    from the ranking; the user's training part describes the user (never a valid/test target)."""
    history = split.history(user, which, WHOLE_HISTORY)
    return Query(history=history, exclude=history, user_id=user, profile=split.train[user])


def rank_users(
    ranker: Ranker, trie: TextualIdTrie | None, split: SplitData, which: str, users: Sequence[str], *,
    k: int = 10, batch_size: int = 32, progress: bool = True,
) -> list[list[str]]:
    rankings: list[list[str]] = []
    for start in progress_bar(range(0, len(users), batch_size), desc=f"ranking {which}", enabled=progress):
        queries = [user_query(split, u, which) for u in users[start : start + batch_size]]
        rankings.extend([r.item_id for r in row] for row in ranker.recommend(queries, k, trie))
    return rankings


def per_user_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[str]) -> dict[str, list[float]]:
    """HR@5/10 and NDCG@5/10 of every user, in the users' order."""
    if len(rankings) != len(targets):
        raise ValueError("rankings and targets differ in length")
    out: dict[str, list[float]] = {}
    for k in (5, 10):
        out[f"hr@{k}"] = [hit_rate_at(r, t, k) for r, t in zip(rankings, targets, strict=True)]
        out[f"ndcg@{k}"] = [ndcg_at(r, t, k) for r, t in zip(rankings, targets, strict=True)]
    return {m: out[m] for m in METRICS}


def means(per_user: dict[str, list[float]]) -> dict[str, float]:
    return {m: sum(v) / max(len(v), 1) for m, v in per_user.items()}


def evaluate_users(
    ranker: Ranker, trie: TextualIdTrie | None, split: SplitData, which: str, users: Sequence[str], *,
    batch_size: int = 32, progress: bool = True,
) -> dict[str, list[float]]:
    rankings = rank_users(ranker, trie, split, which, users, batch_size=batch_size, progress=progress)
    return per_user_metrics(rankings, [getattr(split, which)[u] for u in users])


def evaluate_method(
    method: Ranker, trie: TextualIdTrie | None, split: SplitData, which: str, *, users: int | None = None,
    batch_size: int = 32, progress: bool = True,
) -> dict[str, float]:
    """Mean metrics of `method` on the first `users` users of `which` (None: all)."""
    chosen = evaluation_users(split, which, users)
    return means(evaluate_users(method, trie, split, which, chosen, batch_size=batch_size, progress=progress))


def evaluate_all(
    evaluate_split: Callable[[str], dict[str, float]],
    baselines: dict[str, Callable[[str], dict[str, float]]],
) -> dict:
    """eval.json's shape: {"valid": {...}, "test": {...}, "baselines": {name: {"valid", "test"}}}."""
    result: dict = {which: evaluate_split(which) for which in SPLITS}
    result["baselines"] = {name: {which: run(which) for which in SPLITS} for name, run in baselines.items()}
    return result
