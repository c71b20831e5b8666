"""Ablation of alternate training and user IDs (docs/methods.md, "Alternate training" and "Textual user IDs"):

    python -m training.ablation --config ml100k --out runs/ablation [--rounds 3] [--set key=value ...]

Variants, all with the same seed and the same total recommender epochs (`recommender.epochs`,
split over the recommender phases by training.alternate.phase_schedule):
  (a) keyword   keyword-warmed IDs minted once, no ID learning (alternate.rounds=0)
  (b) alternate alternate training, `--rounds` rounds, ID phase first
  (c) alt+user  (b) with textual user IDs
  (d) popularity the popularity baseline on the same split
and, on request (`--variants ...,alternate_rec_first`):
  (b') alternate_rec_first  recommender phase first: (rec, ID) x (rounds-1) + rec, so the same
       number of recommender phases as (b) and the first ID phase learns through a recommender
       that has been trained (with the paper's order the first ID phase sees a random one)
Writes OUT/<variant>/ (each variant's bundle), OUT/ablation.md (test HR@5, HR@10, NDCG@5,
NDCG@10, ID statistics, wall time), OUT/ablation.json and OUT/ablation.png.

The variants are independent, so on a machine with cores to spare they can run as separate
processes (`--variants keyword,popularity` in one, `--variants alternate` in another, each with
its own --out) and be joined afterwards:

    python -m training.ablation --out runs/ablation --merge runs/abl/*/ablation.json
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from genrec.config import TrainConfig, apply_override
from genrec.errors import GenRecError

from .presets import PRESETS, preset

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
DEFAULT_VARIANTS = ("keyword", "alternate", "alternate_user_ids", "popularity")
VARIANTS = ("keyword", "alternate", "alternate_rec_first", "alternate_user_ids", "popularity")


def variant_configs(base: TrainConfig, rounds: int) -> dict[str, TrainConfig]:
    keyword = copy.deepcopy(base)
    keyword.alternate.rounds = 0
    keyword.alternate.user_ids = keyword.recommender.user_ids = False
    alternate = copy.deepcopy(keyword)
    alternate.alternate.rounds = rounds
    alternate.alternate.id_phase_first = True
    rec_first = copy.deepcopy(alternate)
    rec_first.alternate.id_phase_first = False
    rec_first.alternate.rounds = max(1, rounds - 1)
    with_users = copy.deepcopy(alternate)
    with_users.alternate.user_ids = True
    return {"keyword": keyword, "alternate": alternate, "alternate_rec_first": rec_first,
            "alternate_user_ids": with_users}


def run_ablation(base: TrainConfig, out: Path, *, rounds: int = 3, progress: bool = True,
                 variants: tuple[str, ...] = DEFAULT_VARIANTS) -> dict:
    from .baselines import Popularity, visible_counts
    from .evaluation import evaluate_method
    from .pipeline import load_config_dataset, run

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name, config in variant_configs(base, rounds).items():
        if name not in variants:
            continue
        started = time.perf_counter()
        result = run(config, out / name, progress=progress)
        results[name] = {
            "test": result["test"],
            "valid": result["valid"],
            "id_stats": result.get("id_stats", {}),
            "wall_s": time.perf_counter() - started,
            "recommender_epochs": config.recommender.epochs,
            "rounds": config.alternate.rounds,
            "user_ids": config.alternate.user_ids,
            "id_phase_first": config.alternate.id_phase_first,
        }
    if "popularity" in variants:
        started = time.perf_counter()
        split = load_config_dataset(base).split
        results["popularity"] = {
            which: evaluate_method(Popularity(visible_counts(split, which)), None, split, which,
                                   users=base.eval.users, progress=False)
            for which in ("test", "valid")
        } | {
            "id_stats": {},
            "wall_s": time.perf_counter() - started,
        }
    summary = {"config": base.name, "seed": base.seed, "rounds": rounds, "variants": results}
    write_summary(summary, out)
    return summary


def write_summary(summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
    (out / "ablation.md").write_text(ablation_table(summary), encoding="utf-8")
    plot_ablation(summary, out / "ablation.png")


def merge_summaries(paths: list[Path]) -> dict:
    """One summary from the ablation.json of runs that each did some of the variants.

    The runs must agree on config, seed and rounds (otherwise the rows would not be comparable);
    a variant present in two runs is refused rather than silently picked."""
    if not paths:
        raise GenRecError("--merge needs at least one ablation.json")
    merged: dict | None = None
    for path in paths:
        try:
            part = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GenRecError(f"cannot read {path}: {exc}") from exc
        if not isinstance(part, dict) or not isinstance(part.get("variants"), dict):
            raise GenRecError(f"{path} is not an ablation.json (no 'variants')")
        key = {k: part.get(k) for k in ("config", "seed", "rounds")}
        if merged is None:
            merged = {**key, "variants": {}}
        elif key != {k: merged[k] for k in key}:
            raise GenRecError(f"{path} was run with {key}, the others with "
                              f"{ {k: merged[k] for k in key} }: not comparable")
        for name, row in part["variants"].items():
            if name in merged["variants"]:
                raise GenRecError(f"variant {name!r} appears in more than one of the merged files")
            merged["variants"][name] = row
    ordered = {v: merged["variants"][v] for v in VARIANTS if v in merged["variants"]}
    merged["variants"] = ordered
    return merged


def plot_ablation(summary: dict, path: Path) -> None:
    """Test NDCG@10 and HR@10 per variant, and the wall time, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    rows = [summary["variants"][n] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.4
    xs = range(len(names))
    for offset, metric in ((-width / 2, "ndcg@10"), (width / 2, "hr@10")):
        axes[0].bar([x + offset for x in xs], [r["test"].get(metric, 0.0) for r in rows], width, label=metric.upper())
    axes[0].set_xticks(list(xs), names, rotation=15)
    axes[0].set(title=f"test, config {summary['config']}")
    axes[0].legend()
    axes[1].bar(list(xs), [r["wall_s"] / 60 for r in rows], color="tab:gray")
    axes[1].set_xticks(list(xs), names, rotation=15)
    axes[1].set(title="wall time", ylabel="minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ablation_table(summary: dict) -> str:
    lines = [
        f"# Ablation (config {summary['config']}, seed {summary['seed']}, {summary['rounds']} rounds)",
        "",
        "| variant | " + " | ".join(m.upper() for m in METRICS)
        + " | mean ID words | max ID words | suffixed IDs | wall time (s) |",
        "|---" * (len(METRICS) + 5) + "|",
    ]
    for name, row in summary["variants"].items():
        stats = row.get("id_stats") or {}
        id_cells = [
            f"{stats['mean_words']:.2f}" if "mean_words" in stats else "-",
            str(stats.get("max_words", "-")),
            str(stats.get("suffixed", "-")),
        ]
        metrics = [f"{row['test'].get(m, float('nan')):.4f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(metrics + id_cells) + f" | {row['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ml100k", help=f"preset: {', '.join(sorted(PRESETS))}")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--merge", nargs="+", type=Path, metavar="ABLATION_JSON",
                        help="join the ablation.json of separate runs into OUT (trains nothing)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the alternate variants")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of every variant (repeatable)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated, from " + ", ".join(VARIANTS) + " (default: all but alternate_rec_first)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.merge:
            summary = merge_summaries(args.merge)
            write_summary(summary, args.out)
            print(ablation_table(summary))
            return 0
        config = preset(args.config)
        for assignment in args.overrides:
            apply_override(config, assignment)
        chosen = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = sorted(set(chosen) - set(VARIANTS))
        if unknown:
            raise GenRecError(f"unknown variants: {', '.join(unknown)}")
        summary = run_ablation(config, args.out, rounds=args.rounds, progress=not args.no_progress, variants=chosen)
    except GenRecError as exc:
        print(f"ablation: error: {exc}", file=sys.stderr)
        return 2
    print(ablation_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
