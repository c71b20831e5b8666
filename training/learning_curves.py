"""`genrec-train curves`: validation NDCG@10 by epoch of several bundles in one plot (a PNG and
a JSON beside it), read from the `history.json` every bundle keeps (docs/results.md, "Learning
curves"). No model is loaded: it is for comparing how methods and settings learn."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from genrec.bundle import MANIFEST_NAME  # noqa: E402
from genrec.errors import DataError  # noqa: E402
from genrec.registry import method_class  # noqa: E402

from .report import VALIDATION  # noqa: E402


@dataclass
class Curve:
    label: str
    values: list[float]  # validation NDCG@10 after each epoch
    best_epoch: int | None  # the epoch whose weights the bundle kept (1-based), if recorded


def read_curve(bundle: Path) -> Curve:
    """A bundle's validation curve; a DataError naming the bundle when it has none."""
    manifest, history = bundle / MANIFEST_NAME, bundle / "history.json"
    if not manifest.is_file() or not history.is_file():
        raise DataError(f"{bundle}: not a bundle with a training history (no {MANIFEST_NAME} or history.json)")
    info = json.loads(manifest.read_text())
    values = json.loads(history.read_text()).get(VALIDATION) or []
    if not values:
        raise DataError(f"{bundle}: its history.json has no {VALIDATION} by epoch")
    best = json.loads(history.read_text()).get("best_epoch")
    name = (info.get("config") or {}).get("name") or bundle.name
    return Curve(f"{method_class(info['kind']).label} ({name}, {bundle.name})", [float(v) for v in values],
                 int(best) if isinstance(best, int) else None)


def plot_curves(curves: list[Curve], path: Path) -> Path:
    """One line per bundle; a ring marks the epoch each kept."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for curve in curves:
        epochs = range(1, len(curve.values) + 1)
        (line,) = ax.plot(epochs, curve.values, marker=".", label=curve.label)
        if curve.best_epoch and curve.best_epoch <= len(curve.values):
            ax.plot([curve.best_epoch], [curve.values[curve.best_epoch - 1]], "o", mfc="none", ms=10,
                    color=line.get_color())
    ax.set(xlabel="epoch", ylabel="validation NDCG@10", title="Learning curves (ring: the epoch kept)")
    if max(len(c.values) for c in curves) > 40:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_curves(bundles: list[Path], out: Path) -> list[Curve]:
    """`out` (a .png) and the same name with .json: every bundle's curve."""
    if out.suffix != ".png":
        raise DataError(f"--out {out}: give a .png path (the .json is written beside it)")
    curves = [read_curve(b) for b in bundles]
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out)
    out.with_suffix(".json").write_text(json.dumps(
        [{"label": c.label, VALIDATION: c.values, "best_epoch": c.best_epoch} for c in curves], indent=2) + "\n")
    return curves
