"""Shared bits of the benchmarks: argument parsing, loading a bundle's split, output."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def parser(description: str, bundle_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bundle", type=Path, required=bundle_required, help="bundle folder")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (a PNG plot goes beside it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def setup(args) -> None:
    torch.set_num_threads(args.threads)


def load_split(bundle):
    """The bundle's dataset split, as training built it."""
    from training.data import load_dataset

    data = bundle.config.get("data", {})
    return load_dataset(
        data["dataset"], kcore=data.get("kcore", 5), max_text_chars=data.get("max_text_chars") or 1024
    )


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def percentile(values, q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def mean(values) -> float:
    return statistics.fmean(values) if values else float("nan")


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {path}")


def plot_path(out: Path | None) -> Path | None:
    return out.with_suffix(".png") if out is not None else None


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
