"""`genrec-train`: train a bundle (`run`), compare bundles (`compare`), re-evaluate one
(`evaluate`) or plot their learning curves (`curves`)."""

import argparse
import sys
from pathlib import Path

from genrec.config import apply_override
from genrec.errors import DataError, GenRecError
from genrec.exports import is_export, read_export_manifest

from .presets import PRESETS, preset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrec-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train everything and write a bundle")
    run.add_argument("--config", default="tiny", help=f"preset: {', '.join(sorted(PRESETS))}")
    run.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set recommender.epochs=3 (repeatable)",
    )
    run.add_argument("--data-dir", type=Path, default=None,
                     help="data folder (sets data.data_dir): RecBole atomic files, Amazon files, or a "
                          "`genrec-serve export` folder, read over the data its bundle was trained on")
    run.add_argument("--previous-bundle", type=Path, default=None,
                     help="the bundle this one follows: its items (and an export's minted items) keep their "
                          "textual IDs where the new tokenizer allows")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    _device_arguments(run)
    compare = sub.add_parser("compare", help="every method and the baselines on one split, with intervals")
    compare.add_argument("--configs", required=True,
                         help="comma-separated presets (trained into OUT/bundles/ unless there already) "
                              "or bundle folders, e.g. ml100k,cllm4rec-ml100k,sasrec-ml100k")
    compare.add_argument("--out", required=True, type=Path, help="folder for compare.md/.json/.png")
    compare.add_argument("--cold-items", type=float, default=None, metavar="SHARE",
                         help="new-item protocol: withhold this share of the items (first seen latest) "
                              "from training, e.g. 0.2")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value of every preset trained here (repeatable)")
    compare.add_argument("--baseline-kinds", default="sasrec",
                         help="method kinds counted as baselines (comma-separated; default sasrec)")
    compare.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare.add_argument("--latency-users", type=int, default=64, help="test users timed (default 64)")
    compare.add_argument("--no-progress", action="store_true")
    _device_arguments(compare)
    evaluate = sub.add_parser("evaluate", help="re-evaluate a bundle on its dataset")
    evaluate.add_argument("--bundle", required=True, type=Path)
    evaluate.add_argument("--users", type=int, default=None, help="only the first N users")
    evaluate.add_argument("--quantize", choices=["none", "int8"], default="none",
                          help="evaluate with the models quantised as GENREC_QUANTIZE does (the bundle's "
                               "recorded metrics are then left as they are)")
    evaluate.add_argument("--no-progress", action="store_true")
    _device_arguments(evaluate)
    curves = sub.add_parser("curves", help="validation NDCG@10 by epoch of bundles, in one plot")
    curves.add_argument("--bundles", required=True, help="comma-separated bundle folders")
    curves.add_argument("--out", required=True, type=Path, help="the .png to write (a .json beside it)")
    return parser


def _device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="auto (CUDA when there is a GPU; the default), cpu, cuda or cuda:N "
                             "(the same as --set device=...)")
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                        help="fp32 (default) or bf16: bf16 autocast on CUDA (the same as --set precision=...)")


def _device_overrides(args: argparse.Namespace) -> list[str]:
    """--device and --precision as config overrides, after the --set ones (they win)."""
    return [f"{key}={value}" for key, value in (("device", args.device), ("precision", args.precision)) if value]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from .pipeline import run

            config = preset(args.config)
            for assignment in args.overrides + _device_overrides(args):
                apply_override(config, assignment)
            if args.data_dir is not None:
                if not args.data_dir.is_dir():
                    raise DataError(f"--data-dir {args.data_dir}: not a folder")
                config.data.data_dir = str(args.data_dir.absolute())
                if is_export(args.data_dir) and not any(o.split("=", 1)[0].strip() == "data.dataset"
                                                        for o in args.overrides):
                    # The new bundle continues the exported service's dataset: the service's
                    # upgrade carries over from the catalog of the same dataset.
                    config.data.dataset = read_export_manifest(args.data_dir).get("dataset") or config.data.dataset
            if args.previous_bundle is not None and not (args.previous_bundle / "items.jsonl").is_file():
                raise DataError(f"--previous-bundle {args.previous_bundle}: not a bundle (no items.jsonl)")
            run(config, args.out, progress=not args.no_progress, previous_bundle=args.previous_bundle)
        elif args.command == "compare":
            from .comparison import compare

            if args.resamples < 1000:
                print("genrec-train: note: fewer than 1000 bootstrap resamples give rough intervals",
                      file=sys.stderr)
            summary = compare(
                [c.strip() for c in args.configs.split(",") if c.strip()], args.out,
                overrides=args.overrides + _device_overrides(args),
                cold_items=args.cold_items, baseline_kinds=tuple(k.strip() for k in args.baseline_kinds.split(",")),
                resamples=args.resamples, seed=args.seed, latency_users=args.latency_users,
                progress=not args.no_progress, device=args.device or "auto", precision=args.precision,
            )
            print((args.out / "compare.md").read_text())
            print(f"written: {args.out / 'compare.md'}, compare.json, compare.png in {summary['wall_s']:.0f} s")
        elif args.command == "curves":
            from .learning_curves import write_curves

            for curve in write_curves([Path(b.strip()) for b in args.bundles.split(",") if b.strip()], args.out):
                best = f", kept epoch {curve.best_epoch}" if curve.best_epoch else ""
                print(f"{curve.label}: {len(curve.values)} epochs, best {max(curve.values):.4f}{best}")
            print(f"written: {args.out} and {args.out.with_suffix('.json')}")
        else:
            from genrec.registry import method_class

            from .pipeline import reevaluate
            from .report import metrics_table

            result = reevaluate(args.bundle, users=args.users, progress=not args.no_progress,
                                device=args.device or "auto", precision=args.precision, quantize=args.quantize)
            print(metrics_table(result, "test", method_class(result["kind"]).label))
    except GenRecError as exc:
        print(f"genrec-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genrec-train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
