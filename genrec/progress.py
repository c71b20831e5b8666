"""Progress the way command-line tools show it: a bar on a terminal, nothing in a log file
(where the caller writes one line per epoch or phase instead of thousands of bar frames)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, enabled: bool = True,
                 unit: str = "it") -> tqdm:
    """A transient tqdm bar, shown only when `enabled` and stderr is a terminal."""
    # smoothing=0: the rate since the start, not of the last few updates (minting and decoding come
    # in bursts, which made the smoothed ETA swing from seconds to hours).
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not (enabled and on_terminal()), leave=False,
                smoothing=0)
