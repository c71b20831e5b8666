"""Dynamic int8 quantisation (GENREC_QUANTIZE=int8) against the unquantised model: test NDCG@10
through the evaluation harness (training/evaluation.py), how many top-10 lists change, and the
service's throughput at concurrency 1 and 16 (benchmarks/serve_load.py's measurement, the two
modes alternated, each run twice, on one Redis of its own).

    python -m benchmarks.quantize --bundle runs/tiny --out docs/img/quantize.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from genrec.bundle import items_trie, load_bundle
from genrec.method import RuntimeOptions, load_method

from .common import load_split, parser, print_table, setup, write_json
from .serve_load import request_bodies, run_levels

MODES = ("none", "int8")


def quality(bundle_path: Path, users: int | None, batch_size: int) -> dict:
    """Test metrics of each mode over the same users, and how the top-10 lists differ."""
    from training.evaluation import evaluation_users, means, per_user_metrics, rank_users

    bundle = load_bundle(bundle_path)
    split = load_split(bundle).split
    trie = items_trie(bundle.items, bundle.tokenizer.eos_token_id)
    chosen = evaluation_users(split, "test", users)
    targets = [split.test[u] for u in chosen]
    rankings, out = {}, {}
    for mode in MODES:
        method = load_method(bundle, RuntimeOptions(quantize=mode))
        start = time.perf_counter()
        rankings[mode] = rank_users(method, trie, split, "test", chosen, batch_size=batch_size, progress=False)
        wall = time.perf_counter() - start
        out[mode] = {**means(per_user_metrics(rankings[mode], targets)), "rank_s": wall}
    pairs = list(zip(rankings["none"], rankings["int8"], strict=True))
    out["users"] = len(chosen)
    out["lists_changed"] = sum(a != b for a, b in pairs)
    out["sets_changed"] = sum(set(a) != set(b) for a, b in pairs)
    out["top1_changed"] = sum(a[:1] != b[:1] for a, b in pairs)
    out["mean_overlap_at_10"] = sum(len(set(a) & set(b)) for a, b in pairs) / max(1, len(pairs))
    out["ndcg@10_delta"] = out["int8"]["ndcg@10"] - out["none"]["ndcg@10"]
    out["offline_speedup"] = out["none"]["rank_s"] / out["int8"]["rank_s"]
    return out


def throughput(bundle_path: Path, requests: int, repeats: int) -> dict:
    from service.embedded_redis import EmbeddedRedis

    bodies = request_bodies(bundle_path, requests, 10)
    runs: dict[str, list[list[dict]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="genrec-quantize-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        url = server.start()
        try:
            for _ in range(repeats):
                for mode in MODES:
                    env = {"GENREC_QUANTIZE": mode, "GENREC_MAX_BATCH_SIZE": "32", "GENREC_MAX_WAIT_MS": "5"}
                    runs[mode].append(run_levels(bundle_path, env, bodies, [1, 16], url))
        finally:
            server.stop()
    best = {mode: [max((run[i] for run in runs[mode]), key=lambda r: r["throughput_rps"]) for i in range(2)]
            for mode in MODES}
    return {
        "runs": runs,
        "best": best,
        "speedup_c1": best["int8"][0]["throughput_rps"] / best["none"][0]["throughput_rps"],
        "speedup_c16": best["int8"][1]["throughput_rps"] / best["none"][1]["throughput_rps"],
    }


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=None, help="test users (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--requests", type=int, default=256, help="requests per concurrency level (default 256)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternated (default 2; best kept)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args(argv)
    setup(args)
    result: dict = {"bundle": str(args.bundle)}
    if not args.skip_quality:
        q = result["quality"] = quality(args.bundle, args.users, args.batch_size)
        print_table(
            f"test metrics over {q['users']} users",
            ["mode", "ndcg@10", "hr@10", "ndcg@5", "rank s"],
            [[m, q[m]["ndcg@10"], q[m]["hr@10"], q[m]["ndcg@5"], q[m]["rank_s"]] for m in MODES],
        )
        print(f"NDCG@10 int8 - none: {q['ndcg@10_delta']:+.4f}; top-10 lists changed: {q['lists_changed']} of "
              f"{q['users']} (as sets: {q['sets_changed']}; first item: {q['top1_changed']}); mean overlap "
              f"{q['mean_overlap_at_10']:.2f} of 10; offline ranking {q['offline_speedup']:.2f}x")
        write_json(args.out, result)
    if not args.skip_throughput:
        t = result["throughput"] = throughput(args.bundle, args.requests, args.repeats)
        print_table(
            "service throughput (best of the runs)",
            ["mode", "concurrency", "req/s", "p50 ms", "p99 ms"],
            [[m, r["concurrency"], r["throughput_rps"], r["p50_ms"], r["p99_ms"]] for m in MODES for r in t["best"][m]],
        )
        print(f"int8 throughput: {t['speedup_c1']:.2f}x at concurrency 1, {t['speedup_c16']:.2f}x at 16")
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
