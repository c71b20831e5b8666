"""The most popular items: the one popularity order of the project, and the answer for a user with
no history.

Training counts the interactions of its training data per item and writes them into every bundle
(`popularity.json`, see genrec/bundle.py), whichever the method; the service answers an empty
history with `PopularItems`: the items by that count, minus the query's exclusions. A model has
nothing to read for such a user, and the most popular items are the strongest non-personal answer
(docs/results.md: the popularity baseline).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from .method import Query, Recommendation


def popularity_ranking(counts: Mapping[str, int]) -> list[str]:
    """Items by interaction count, ties by item id: the one popularity order of the project."""
    return [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def top_unseen(ranked: Iterable[str], seen: Collection[str], k: int,
               allowed: Collection[str] | None = None) -> list[str]:
    """The first k of `ranked` that are not in `seen` (and, given `allowed`, are in it)."""
    banned = set(seen)
    out: list[str] = []
    for item in ranked:
        if item not in banned and (allowed is None or item in allowed):
            out.append(item)
            if len(out) == k:
                break
    return out


class PopularItems:
    """A bundle's popularity list as a recommender: the top-k items by training interactions,
    none of a query's `exclude` and, when it has one, only items of its `allowed` set. An item's
    score is its share of the training interactions (its count over all of them), in (0, 1]:
    comparable across bundles, unlike a raw count."""

    def __init__(self, counts: Sequence[tuple[str, int]]):
        total = sum(count for _, count in counts)
        by_item = dict(counts)
        self.ranked = popularity_ranking(by_item)
        self.shares = {item: count / total for item, count in by_item.items()} if total else {}

    def __len__(self) -> int:
        return len(self.ranked)

    def recommend(self, query: Query, k: int) -> list[Recommendation]:
        """The top-k for one query (its history is not read: it is empty when this is asked)."""
        ranked = top_unseen(self.ranked, query.exclude, k, query.allowed)
        return [Recommendation(item, self.shares[item]) for item in ranked]
