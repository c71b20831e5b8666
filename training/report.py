"""What evaluation measured, for people: a metrics table, plots and report.md."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")


def metrics_table(evaluation: dict, split: str = "test") -> str:
    """Markdown table: the model and every baseline on one split."""
    rows = [("IDGenRec" if evaluation.get("kind", "idgenrec") == "idgenrec" else evaluation["kind"], evaluation[split])]
    for name, result in evaluation.get("baselines", {}).items():
        rows.append((name, result[split]))
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in METRICS) + " |")
    return "\n".join(lines)


def plot_training(history: dict, path: Path) -> Path:
    """Recommender loss and validation NDCG@10 by epoch (plus the generator warm-up loss)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    warm = history.get("generator_warmup_loss", [])
    axes[0].plot(range(1, len(warm) + 1), warm, marker=".")
    axes[0].set(title="ID generator warm-up loss", xlabel="epoch", ylabel="loss")
    loss = history.get("loss", [])
    axes[1].plot(range(1, len(loss) + 1), loss, marker="o")
    axes[1].set(title="recommender training loss", xlabel="epoch", ylabel="loss")
    ndcg = history.get("valid_ndcg@10", [])
    axes[2].plot(range(1, len(ndcg) + 1), ndcg, marker="o", color="tab:green")
    best = history.get("best_epoch")
    if best:
        axes[2].axvline(best, color="grey", linestyle="--", label=f"kept: epoch {best}")
        axes[2].legend()
    axes[2].set(title="validation NDCG@10", xlabel="epoch", ylabel="NDCG@10")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_id_lengths(histogram: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    lengths = sorted(int(k) for k in histogram)
    ax.bar(lengths, [histogram[k] if k in histogram else histogram[str(k)] for k in lengths])
    ax.set(title="textual ID length", xlabel="words", ylabel="items")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(path: Path, *, title: str, evaluation: dict, id_stats: dict, history: dict, timings: dict, examples: list[tuple[str, str]]) -> Path:
    parts = [f"# {title}", ""]
    parts += ["## Test (leave-one-out, full ranking, history excluded)", "", metrics_table(evaluation, "test"), ""]
    parts += ["## Validation", "", metrics_table(evaluation, "valid"), ""]
    parts += ["## Textual IDs", ""]
    for key in ("items", "mean_words", "max_words", "mean_tokens", "max_tokens", "raised_penalty", "raised_length", "suffixed"):
        if key in id_stats:
            value = id_stats[key]
            parts.append(f"- {key.replace('_', ' ')}: {value:.2f}" if isinstance(value, float) else f"- {key.replace('_', ' ')}: {value}")
    parts += ["", "Examples:", ""] + [f"- `{tid}` <- {text}" for tid, text in examples] + [""]
    parts += ["## Training", ""]
    if history.get("valid_ndcg@10"):
        parts.append("| epoch | loss | valid NDCG@10 |")
        parts.append("|---|---|---|")
        for i, (loss, ndcg) in enumerate(zip(history["loss"], history["valid_ndcg@10"], strict=False), 1):
            parts.append(f"| {i} | {loss:.4f} | {ndcg:.4f} |")
        parts.append(f"\nBest epoch kept: {history.get('best_epoch')}\n")
    parts += ["## Time (seconds)", ""] + [f"- {k}: {v:.1f}" for k, v in timings.items()] + [""]
    parts += ["![training](training.png)", "", "![ID lengths](id_lengths.png)", ""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
