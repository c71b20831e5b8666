"""Windows of users' chronological item sequences, shared by the methods that train on every
position of a sequence (SASRec, and CLLM4Rec's chronological collaborative documents)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

CROPS = ("latest", "random")


def window(seq: Sequence[T], size: int, crop: str, rng: random.Random) -> list[T]:
    """At most `size` consecutive items of `seq`: the latest, or a random window (so that, over
    epochs, older items are trained on too)."""
    seq = list(seq)
    if len(seq) <= size:
        return seq
    start = len(seq) - size if crop == "latest" else rng.randint(0, len(seq) - size)
    return seq[start : start + size]
