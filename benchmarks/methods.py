"""IDGenRec, CLLM4Rec and the popularity baseline side by side: quality from each bundle's
eval.json (leave-one-out HR/NDCG@5/10 on the same split; CLLM4Rec's own protocol where the
bundle has it), training time, and serving latency measured the same way for both bundles
(the real service under uvicorn with Redis, micro-batching on, concurrency 1 and 16).

    python -m benchmarks.methods --idgenrec bundles/ml100k --cllm4rec bundles/cllm4rec-ml100k \\
        --out benchmarks/results/methods_ml100k.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import print_table, redis_url, write_json
from .serve_load import MODES, request_bodies, run_levels

LOO = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
PROTOCOL = ("recall@20", "recall@40", "ndcg@100")


def read_eval(bundle: Path) -> dict:
    path = bundle / "eval.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: train the bundle first (genrec-train run --config ... --out {bundle})")
    return json.loads(path.read_text())


def quality_rows(evals: dict[str, dict]) -> list[dict]:
    """One row per method: test and valid leave-one-out metrics, the protocol where known, train
    time; popularity once, from the first bundle (both bundles use the same split)."""
    rows = []
    for name, ev in evals.items():
        protocol = ev.get("cllm4rec_protocol") or {}
        rows.append({
            "method": name,
            "test": {m: ev["test"][m] for m in LOO},
            "valid_ndcg@10": ev["valid"]["ndcg@10"],
            "protocol": {m: protocol[m] for m in PROTOCOL if m in protocol} or None,
            "train_s": ev.get("timings_s", {}).get("total"),
        })
    first = next(iter(evals.values()))
    popularity = first["baselines"]["popularity"]
    protocol = next((ev["cllm4rec_protocol"]["popularity"] for ev in evals.values() if ev.get("cllm4rec_protocol")), None)
    rows.append({
        "method": "popularity",
        "test": {m: popularity["test"][m] for m in LOO},
        "valid_ndcg@10": popularity["valid"]["ndcg@10"],
        "protocol": {m: protocol[m] for m in PROTOCOL} if protocol else None,
        "train_s": None,
    })
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idgenrec", type=Path, required=True, help="an idgenrec bundle")
    p.add_argument("--cllm4rec", type=Path, required=True, help="a cllm4rec bundle (same dataset)")
    p.add_argument("--requests", type=int, default=256, help="requests per concurrency level (default 256)")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--redis-url", default=None, help="default: redis://127.0.0.1:6379/15 if up, else embedded")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    bundles = {"IDGenRec": args.idgenrec, "CLLM4Rec": args.cllm4rec}
    evals = {name: read_eval(path) for name, path in bundles.items()}
    rows = quality_rows(evals)

    url = redis_url(args.redis_url)
    levels = [int(c) for c in args.concurrency.split(",")]
    bodies = request_bodies(args.idgenrec, args.requests, args.k)
    serving = {name: run_levels(path, MODES["batching on"], bodies, levels, url) for name, path in bundles.items()}
    for row in rows:
        row["serving"] = serving.get(row["method"])

    print_table(
        "leave-one-out (test; all users; full ranking, history excluded)",
        ["method", *LOO, "valid ndcg@10", "train s"],
        [[r["method"], *(r["test"][m] for m in LOO), r["valid_ndcg@10"], r["train_s"] or "-"] for r in rows],
    )
    print_table(
        "CLLM4Rec protocol (held-out 20% of training interactions)",
        ["method", *PROTOCOL],
        [[r["method"], *(r["protocol"][m] for m in PROTOCOL)] for r in rows if r["protocol"]],
    )
    print_table(
        "serving (POST /v1/recommendations, micro-batching on)",
        ["method", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"],
        [[name, r["concurrency"], r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors"]]
         for name, runs in serving.items() for r in runs],
    )
    result = {"bundles": {k: str(v) for k, v in bundles.items()}, "k": args.k, "requests_per_level": args.requests,
              "methods": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
