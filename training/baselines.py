"""The non-learned baselines every method is compared with, ranked through the evaluator like
a method (`recommend(queries, k, trie)`):

- **popularity**: items by interaction count in the training data visible at that time (the
  valid items count too when ranking for test); new items have no count.
- **transitions**: a first-order Markov chain: items by how often they followed the user's
  latest item in the training data visible at that time (ties by popularity). ml-100k's
  leave-one-out targets have a strong short-range order, which this captures with no model.
- **content**: TF-IDF over the items' text, a user scored by the cosine similarity of each item
  to the user's recent items. It is the fair thing to beat on new items, where popularity and
  ID-based models have nothing: a new item's text is known the moment it is posted.

The TF-IDF arithmetic is our own sparse arithmetic over numpy (an inverted index from word to
(item, weight) arrays), not scikit-learn: it is a few lines, adds no dependency to the project,
and scoring a user touches only the postings of the words of the user's recent items, so it
stays cheap for catalogs far larger than ml-100k.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from genrec.method import Query, Recommendation
from genrec.popular import popularity_ranking, top_unseen
from genrec.word_characters import find_words

from .data import SplitData


def visible_counts(split: SplitData, which: str) -> Counter[str]:
    """Interactions of the training part, plus the valid items when ranking for test."""
    counts: Counter[str] = Counter()
    for user, sequence in split.train.items():
        counts.update(sequence)
        if which == "test" and user in split.valid:
            counts[split.valid[user]] += 1
    return counts


class Popularity:
    """The most interacted items, minus each query's exclusions."""

    label = "popularity"

    def __init__(self, counts: Counter[str]):
        self.ranked = popularity_ranking(counts)
        self.counts = counts

    def recommend(self, queries: Sequence[Query], k: int, trie=None, cache=None) -> list[list[Recommendation]]:
        return [[Recommendation(i, float(self.counts[i])) for i in top_unseen(self.ranked, q.exclude, k)]
                for q in queries]


class Transitions:
    """Next-item counts after the query's latest item, popularity breaking ties."""

    label = "transitions"

    def __init__(self, sequences, counts: Counter[str]):
        self.following: dict[str, Counter[str]] = {}
        for sequence in sequences:
            for before, after in zip(sequence, sequence[1:], strict=False):
                self.following.setdefault(before, Counter())[after] += 1
        self.popular = Popularity(counts)

    def recommend(self, queries: Sequence[Query], k: int, trie=None, cache=None) -> list[list[Recommendation]]:
        out = []
        for q in queries:
            banned = set(q.exclude)
            after = self.following.get(q.history[-1], Counter()) if q.history else Counter()
            ranked = sorted((i for i in after if i not in banned), key=lambda i: (-after[i], -self.popular.counts[i], i))
            row = [Recommendation(i, float(after[i])) for i in ranked[:k]]
            if len(row) < k:
                taken = banned | set(ranked)
                row += [Recommendation(i, 0.0) for i in top_unseen(self.popular.ranked, taken, k - len(row))]
            out.append(row)
        return out


def visible_sequences(split: SplitData, which: str) -> list[list[str]]:
    """Each user's training part, and for test its valid item after it."""
    return [seq + [split.valid[u]] if which == "test" and u in split.valid else seq for u, seq in split.train.items()]


class ContentTfIdf:
    """Cosine similarity of TF-IDF item vectors to the mean of the user's recent items' vectors."""

    label = "content"

    def __init__(self, texts: Mapping[str, str], recent: int = 20):
        self.item_ids = list(texts)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.recent = recent
        counts = [Counter(find_words(texts[item].lower())) for item in self.item_ids]
        df = Counter(word for c in counts for word in c)
        n = len(self.item_ids)
        idf = {w: math.log((1 + n) / (1 + d)) + 1.0 for w, d in df.items()}
        # Item vectors (sublinear TF x IDF, L2-normalised), stored by word: the postings.
        postings: dict[str, tuple[list[int], list[float]]] = {}
        self.vectors: list[dict[str, float]] = []
        for row, c in enumerate(counts):
            weights = {w: (1.0 + math.log(tf)) * idf[w] for w, tf in c.items()}
            norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
            vector = {w: v / norm for w, v in weights.items()}
            self.vectors.append(vector)
            for w, v in vector.items():
                postings.setdefault(w, ([], []))[0].append(row)
                postings[w][1].append(v)
        self.postings = {w: (np.asarray(rows), np.asarray(vals)) for w, (rows, vals) in postings.items()}

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """Cosine similarity of every item to the mean vector of the last `recent` known items."""
        recent = [self.index[i] for i in history if i in self.index][-self.recent :]
        profile: Counter[str] = Counter()
        for row in recent:
            for w, v in self.vectors[row].items():
                profile[w] += v / len(recent)
        scores = np.zeros(len(self.item_ids))
        for w, p in profile.items():
            rows, vals = self.postings[w]
            scores[rows] += p * vals  # a word occurs once per item vector: no repeated rows
        norm = math.sqrt(sum(v * v for v in profile.values()))
        return scores / norm if norm else scores

    def recommend(self, queries: Sequence[Query], k: int, trie=None, cache=None) -> list[list[Recommendation]]:
        out = []
        for q in queries:
            scores = self.scores(q.history)
            for item in q.exclude:
                if item in self.index:
                    scores[self.index[item]] = -np.inf
            k_eff = min(k, len(scores))
            top = np.argpartition(-scores, k_eff - 1)[:k_eff] if k_eff else np.array([], dtype=int)
            # Best first; ties by catalog order (a stable order, as popularity's).
            top = sorted(top.tolist(), key=lambda r: (-scores[r], r))
            out.append([Recommendation(self.item_ids[r], float(scores[r])) for r in top if scores[r] != -np.inf])
        return out
