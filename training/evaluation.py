"""Leave-one-out evaluation with full ranking (docs/methods.md, "Evaluation protocol"): one
evaluator for every method, and the popularity baseline.

A user's whole visible history goes into the query (each method keeps as much of it as it
reads) and is excluded from the ranking, for every method and baseline alike (as RecBole
does). Rankings come from the method's own `recommend`, the path that serves.
"""

from collections import Counter
from collections.abc import Callable, Sequence

from genrec.method import Method, Query
from genrec.metrics import leave_one_out_metrics
from genrec.progress import progress_bar
from genrec.trie import TextualIdTrie

from .data import SplitData

SPLITS = ("valid", "test")
WHOLE_HISTORY = 10**9


def evaluation_users(split: SplitData, which: str, limit: int | None = None) -> list[str]:
    users = [u for u in split.train if u in getattr(split, which)]
    return users[:limit] if limit else users


def user_query(split: SplitData, user: str, which: str) -> Query:
    """What the method sees when predicting `which` for `user`: the visible history, excluded
    from the ranking; the user's training part describes the user (never a valid/test target)."""
    history = split.history(user, which, WHOLE_HISTORY)
    return Query(history=history, exclude=history, user_id=user, profile=split.train[user])


def rank_users(
    method: Method, trie: TextualIdTrie, split: SplitData, which: str, users: Sequence[str], *,
    k: int = 10, batch_size: int = 32, progress: bool = True,
) -> list[list[str]]:
    rankings: list[list[str]] = []
    for start in progress_bar(range(0, len(users), batch_size), desc=f"ranking {which}", enabled=progress):
        queries = [user_query(split, u, which) for u in users[start : start + batch_size]]
        rankings.extend([r.item_id for r in row] for row in method.recommend(queries, k, trie))
    return rankings


def evaluate_method(
    method: Method, trie: TextualIdTrie, split: SplitData, which: str, *, users: int | None = None,
    batch_size: int = 32, progress: bool = True,
) -> dict[str, float]:
    chosen = evaluation_users(split, which, users)
    rankings = rank_users(method, trie, split, which, chosen, batch_size=batch_size, progress=progress)
    return leave_one_out_metrics(rankings, [getattr(split, which)[u] for u in chosen])


def popularity_ranking(counts: Counter[str]) -> list[str]:
    """Items by interaction count, ties by item id: the one popularity order of the project."""
    return [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def top_unseen(ranked: Sequence[str], seen: Sequence[str], k: int) -> list[str]:
    banned = set(seen)
    out: list[str] = []
    for item in ranked:
        if item not in banned:
            out.append(item)
            if len(out) == k:
                break
    return out


def popularity_rankings(split: SplitData, which: str, users: Sequence[str], k: int = 10) -> list[list[str]]:
    """Most interacted items of the data visible at `which` time, minus each user's history."""
    counts: Counter[str] = Counter()
    for user, sequence in split.train.items():
        counts.update(sequence)
        if which == "test" and user in split.valid:
            counts[split.valid[user]] += 1
    ranked = popularity_ranking(counts)
    return [top_unseen(ranked, split.history(user, which, WHOLE_HISTORY), k) for user in users]


def evaluate_popularity(split: SplitData, which: str, users: int | None = None) -> dict[str, float]:
    chosen = evaluation_users(split, which, users)
    targets = [getattr(split, which)[u] for u in chosen]
    return leave_one_out_metrics(popularity_rankings(split, which, chosen), targets)


def evaluate_all(
    evaluate_split: Callable[[str], dict[str, float]], split: SplitData, users: int | None = None
) -> dict:
    """eval.json's shape: {"valid": {...}, "test": {...}, "baselines": {"popularity": {...}}}."""
    result = {which: evaluate_split(which) for which in SPLITS}
    result["baselines"] = {"popularity": {which: evaluate_popularity(split, which, users) for which in SPLITS}}
    return result
