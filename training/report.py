"""What evaluation measured, for people: the one report writer of every method (report.md, a
training-curve plot and a textual-ID length plot) and the metrics table the CLI prints."""

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
VALIDATION = "valid_ndcg@10"


def table(rows: Sequence[tuple[str, dict]], metrics: Sequence[str] = METRICS) -> str:
    """Markdown table: one row per (name, {metric: value})."""
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in metrics) + " |")
    return "\n".join(lines)


def metrics_table(evaluation: dict, split: str = "test", label: str | None = None) -> str:
    """The method and every baseline on one split."""
    rows = [(label or evaluation.get("kind", "model"), evaluation[split])]
    rows += [(name, result[split]) for name, result in evaluation.get("baselines", {}).items()]
    return table(rows)


def curves(history: dict) -> dict[str, list[float]]:
    """The per-epoch series of a training history (lists of numbers), validation last."""
    found = {
        name: values for name, values in history.items()
        if isinstance(values, list) and values and all(isinstance(v, int | float) for v in values)
        and name != VALIDATION
    }
    if history.get(VALIDATION):
        found[VALIDATION] = history[VALIDATION]
    return found


def plot_training(history: dict, path: Path) -> Path:
    """One panel per curve; the validation panel marks the epoch kept."""
    series = curves(history)
    count = max(len(series), 1)
    cols = min(3, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (name, values) in zip(flat, series.items(), strict=False):
        ax.plot(range(1, len(values) + 1), values, marker=".", color="tab:green" if name == VALIDATION else None)
        ax.set(title=name.replace("_", " "), xlabel="epoch")
        if name == VALIDATION and history.get("best_epoch"):
            ax.axvline(history["best_epoch"], color="grey", linestyle="--", label=f"kept: epoch {history['best_epoch']}")
            ax.legend()
    for ax in flat[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_id_lengths(textual_ids: Sequence[str], path: Path) -> Path:
    lengths = Counter(len(t.split(" ")) for t in textual_ids)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar(sorted(lengths), [lengths[n] for n in sorted(lengths)])
    ax.set(title="textual ID length", xlabel="words", ylabel="items")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    path: Path, *, title: str, label: str, evaluation: dict, id_stats: dict, history: dict, timings: dict,
    examples: Sequence[tuple[str, str]], sections: Sequence[str] = (),
) -> Path:
    parts = [f"# {title}", ""]
    parts += ["## Test (leave-one-out, full ranking, history excluded)", "", metrics_table(evaluation, "test", label), ""]
    parts += ["## Validation", "", metrics_table(evaluation, "valid", label), ""]
    parts += list(sections)
    parts += ["## Textual IDs", ""]
    for key, value in id_stats.items():
        if isinstance(value, int | float):
            parts.append(f"- {key.replace('_', ' ')}: {value:.2f}" if isinstance(value, float) else f"- {key.replace('_', ' ')}: {value}")
    parts += ["", "Examples:", ""] + [f"- `{tid}` <- {text}" for tid, text in examples] + [""]
    parts += ["## Training", ""]
    for name, values in curves(history).items():
        parts.append(f"- {name}: " + ", ".join(f"{v:.4f}" for v in values))
    if history.get("best_epoch"):
        parts.append(f"- epoch kept (best validation NDCG@10): {history['best_epoch']}")
    parts += ["", "## Time (seconds)", ""] + [f"- {k}: {v:.1f}" for k, v in timings.items()] + [""]
    parts += ["![training](training.png)", "", "![ID lengths](id_lengths.png)", ""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
