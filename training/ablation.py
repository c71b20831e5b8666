"""Ablation of alternate training and user IDs (SPEC 1.4, 1.5):

    python -m training.ablation --config ml100k --out runs/ablation [--rounds 3] [--set key=value ...]

Variants, all with the same seed and the same total recommender epochs (`recommender.epochs`,
split over the recommender phases by training.alternate.phase_schedule):
  (a) keyword   keyword-warmed IDs minted once, no ID learning (alternate.rounds=0)
  (b) alternate alternate training, `--rounds` rounds, ID phase first
  (c) alt+user  (b) with textual user IDs
  (d) popularity the popularity baseline on the same split
Writes OUT/<variant>/ (each variant's bundle), OUT/ablation.md (test HR@5, HR@10, NDCG@5,
NDCG@10, ID statistics, wall time) and OUT/ablation.json.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from genrec.errors import GenRecError

from .config import PRESETS, TrainConfig, apply_override, preset

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
VARIANTS = ("keyword", "alternate", "alternate_user_ids", "popularity")


def variant_configs(base: TrainConfig, rounds: int) -> dict[str, TrainConfig]:
    keyword = copy.deepcopy(base)
    keyword.alternate.rounds = 0
    keyword.alternate.user_ids = keyword.recommender.user_ids = False
    alternate = copy.deepcopy(keyword)
    alternate.alternate.rounds = rounds
    alternate.alternate.id_phase_first = True
    with_users = copy.deepcopy(alternate)
    with_users.alternate.user_ids = True
    return {"keyword": keyword, "alternate": alternate, "alternate_user_ids": with_users}


def run_ablation(base: TrainConfig, out: Path, *, rounds: int = 3, progress: bool = True,
                 variants: tuple[str, ...] = VARIANTS) -> dict:
    from .data import load_dataset
    from .evaluation import evaluate_popularity
    from .pipeline import run

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
        }
    if "popularity" in variants:
        started = time.perf_counter()
        dataset = load_dataset(
            base.data.dataset, Path(base.data.data_dir) if base.data.data_dir else None,
            kcore=base.data.kcore, max_text_chars=base.data.max_text_chars,
        )
        results["popularity"] = {
            "test": evaluate_popularity(dataset.split, "test", base.eval.users),
            "valid": evaluate_popularity(dataset.split, "valid", base.eval.users),
            "id_stats": {},
            "wall_s": time.perf_counter() - started,
        }
    summary = {"config": base.name, "seed": base.seed, "rounds": rounds, "variants": results}
    (out / "ablation.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
    (out / "ablation.md").write_text(ablation_table(summary), encoding="utf-8")
    return summary


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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the alternate variants")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of every variant (repeatable)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
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
