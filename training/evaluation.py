"""Leave-one-out evaluation with full ranking (SPEC 1.6), for the model and the baselines.

History items are excluded from every ranking, for every model and baseline alike (as
RecBole does). Rankings of the model come from the same constrained beam search that serves.
"""

from collections import Counter
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from genrec.metrics import leave_one_out_metrics
from genrec.recommend import IdGenRecRecommender

from .data import SplitData

SPLITS = ("valid", "test")


def evaluation_users(split: SplitData, which: str, limit: int | None = None) -> list[str]:
    users = [u for u in split.train if u in getattr(split, which)]
    return users[:limit] if limit else users


def rank_users(
    recommender: IdGenRecRecommender,
    split: SplitData,
    which: str,
    users: Sequence[str],
    *,
    max_history: int,
    k: int = 10,
    num_beams: int = 10,
    batch_size: int = 32,
    progress: bool = True,
    user_tokens: Callable[[list[str]], list[list[int]]] | None = None,
) -> list[list[str]]:
    """`user_tokens(users)`: their textual user IDs (SPEC 1.5), None when the model has none."""
    rankings: list[list[str]] = []
    for start in tqdm(range(0, len(users), batch_size), desc=f"ranking {which}", disable=not progress, leave=False):
        batch = users[start : start + batch_size]
        found = recommender.recommend(
            [split.history(u, which, max_history) for u in batch],
            k,
            num_beams=num_beams,
            # The whole visible history is excluded, not just the prompt's last items.
            exclude_items=[split.history(u, which, 10**9) for u in batch],
            user_id_tokens=user_tokens(batch) if user_tokens else None,
        )
        rankings.extend([r.item_id for r in row] for row in found)
    return rankings


def evaluate_model(
    recommender: IdGenRecRecommender,
    split: SplitData,
    which: str,
    *,
    max_history: int,
    users: int | None = None,
    num_beams: int = 10,
    batch_size: int = 32,
    progress: bool = True,
    user_tokens: Callable[[list[str]], list[list[int]]] | None = None,
) -> dict[str, float]:
    chosen = evaluation_users(split, which, users)
    rankings = rank_users(
        recommender, split, which, chosen, max_history=max_history, num_beams=num_beams, batch_size=batch_size,
        progress=progress, user_tokens=user_tokens,
    )
    targets = [getattr(split, which)[u] for u in chosen]
    return leave_one_out_metrics(rankings, targets)


def popularity_rankings(split: SplitData, which: str, users: Sequence[str], k: int = 10) -> list[list[str]]:
    """Most interacted items of the data visible at `which` time, minus each user's history."""
    counts: Counter[str] = Counter()
    for user, sequence in split.train.items():
        counts.update(sequence)
        if which == "test" and user in split.valid:
            counts[split.valid[user]] += 1
    ranked = [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    rankings = []
    for user in users:
        seen = set(split.history(user, which, 10**9))
        rankings.append([item for item in ranked if item not in seen][:k])
    return rankings


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
