"""Paired bootstrap over test users: how sure a difference between two rankers is.

Both rankers are scored on the same users; resampling users with replacement (the same draw for
both) and taking the difference of the means each time gives the distribution of the mean
difference; its 2.5% and 97.5% percentiles are the 95% interval. An interval that excludes 0 is
a result; one that spans it is not. Seeded, so a report reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float  # the observed mean (difference) over all users
    low: float
    high: float
    confidence: float
    resamples: int

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _percentile_interval(samples: np.ndarray, observed: float, confidence: float, resamples: int) -> Interval:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return Interval(float(observed), float(low), float(high), confidence, resamples)


def _draws(users: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, users, size=(resamples, users))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> Interval:
    """Interval of mean(a) - mean(b), a[i] and b[i] being the same user's values."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("paired_bootstrap needs two equally long, non-empty series (one value per user)")
    diff = a - b
    samples = diff[_draws(len(diff), resamples, seed)].mean(axis=1)
    return _percentile_interval(samples, float(diff.mean()), confidence, resamples)


def bootstrap_mean(values: Sequence[float], *, resamples: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> Interval:
    """Interval of one ranker's mean metric (for plots)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or not len(values):
        raise ValueError("bootstrap_mean needs a non-empty series")
    samples = values[_draws(len(values), resamples, seed)].mean(axis=1)
    return _percentile_interval(samples, float(values.mean()), confidence, resamples)
