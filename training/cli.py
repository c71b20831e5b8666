"""`genrec-train`: train a bundle (`run`) or re-evaluate one (`evaluate`)."""

import argparse
import sys
from pathlib import Path

from genrec.config import apply_override
from genrec.errors import GenRecError

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
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate = sub.add_parser("evaluate", help="re-evaluate a bundle on its dataset")
    evaluate.add_argument("--bundle", required=True, type=Path)
    evaluate.add_argument("--users", type=int, default=None, help="only the first N users")
    evaluate.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from .pipeline import run

            config = preset(args.config)
            for assignment in args.overrides:
                apply_override(config, assignment)
            run(config, args.out, progress=not args.no_progress)
        else:
            from genrec.registry import method_class

            from .pipeline import reevaluate
            from .report import metrics_table

            result = reevaluate(args.bundle, users=args.users, progress=not args.no_progress)
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
