"""The real service (uvicorn subprocess, its own redis-server) on synthetic catalogs of growing
size (benchmarks/synthetic_bundle.py, the same tokenizer and model at every size): time from
start to ready and its parts, resident memory, Redis memory, recommendation p50/p99 at
concurrency 1 and 16, mint latency, and the time a second replica takes to become ready on
the Redis the first one seeded.

    python -m benchmarks.serve_scale --sizes 1682,10000,100000,1000000 --out docs/img/serve_scale.json

Per size: a fresh (flushed) Redis; replica A starts on it (empty Redis: seeds the catalog), is
measured, serves the requests and the mints; replica B then starts on the seeded Redis while A
still runs. Memory per item is (RSS of A after ready at this size - RSS at the smallest size) /
(items - smallest items): what the catalog costs beyond the models and the interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

from .common import Server, plot_path, print_table, pyplot, write_json

PHASES = ("bundle", "catalog", "models", "text_digests", "redis_connect", "seed", "minted_items", "trie_tables", "gc")


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return {"rss_mib": found.get("VmRSS", float("nan")), "peak_mib": found.get("VmHWM", float("nan"))}


def startup_phases(url: str) -> dict[str, float]:
    """The service's own `genrec_startup_seconds{phase}` gauges."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    phases = {}
    for line in text.splitlines():
        if line.startswith("genrec_startup_seconds{"):
            name = line.split('phase="', 1)[1].split('"', 1)[0]
            phases[name] = float(line.rpartition(" ")[2])
    return phases


def start_replica(bundle: Path, env: dict[str, str], log: Path, timeout_s: float) -> tuple[Server, float]:
    """A started service and the seconds from its (last) launch to its first 200 on /readyz."""
    server = Server(bundle, env, log)
    try:
        server.wait_ready(timeout_s, poll_s=0.05)
    except BaseException:
        server.stop()
        raise
    return server, time.perf_counter() - server.launched_at


def request_bodies(items: int, count: int, seed: int = 0, k: int = 10) -> list[dict]:
    """Recommendation requests with histories of 5 to 20 catalog items (popular ones more often)."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        length = rng.randint(5, 20)
        history = [f"i{min(items - 1, int(items * rng.random() ** 3))}" for _ in range(length)]
        bodies.append({"history": list(dict.fromkeys(history)), "k": k, "exclude_history": True})
    return bodies


def mint_latencies(url: str, count: int, tag: str) -> list[float]:
    """Seconds of `count` sequential POST /v1/items of new items."""
    out = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for n in range(count):
            body = {"item_id": f"new-{tag}-{n}",
                    "metadata": {"title": f"brand new item number {n} {tag}", "genres": ["drama"]}}
            start = time.perf_counter()
            response = client.post("/v1/items", json=body)
            out.append(time.perf_counter() - start)
            if response.status_code not in (200, 201):
                raise RuntimeError(f"mint failed: {response.status_code} {response.text[:300]}")
    return out


def redis_memory_mib(url: str) -> float:
    with redis.Redis.from_url(url) as client:
        return client.info("memory")["used_memory"] / 2**20


def measure_size(bundle: Path, items: int, redis_url: str, tmp: Path, args, *, catalog: str | None = None,
                 flush: bool = True, second_replica: bool = True) -> dict:
    """One catalog size: replica A on an empty Redis (`flush`: all of it flushed first, for its
    memory; else a catalog namespace of its own), load, mints; replica B on the seeded Redis."""
    from .serve_load import drive

    if flush:
        with redis.Redis.from_url(redis_url) as client:
            client.flushall()
    catalog = catalog or f"scale-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_url, "GENREC_CATALOG": catalog, "GENREC_MAX_BATCH_SIZE": "32",
           "GENREC_MAX_WAIT_MS": "5", **dict(e.split("=", 1) for e in args.env)}
    row: dict = {"items": items, "bundle": str(bundle)}
    a, row["ready_empty_redis_s"] = start_replica(bundle, env, tmp / f"a-{items}.log", args.ready_timeout_s)
    try:
        row["phases_empty_redis"] = startup_phases(a.url)
        row["memory_ready"] = rss_mib(a.proc.pid)
        row["redis_mib"] = redis_memory_mib(redis_url)
        bodies = request_bodies(items, args.requests + args.requests_c16 + 8)
        asyncio.run(drive(a.url, bodies[:8], 4))  # warm-up
        row["c1"] = asyncio.run(drive(a.url, bodies[8 : 8 + args.requests], 1))
        row["c16"] = asyncio.run(drive(a.url, bodies[8 + args.requests :], 16))
        mints = mint_latencies(a.url, args.mints, catalog)
        row["mint_p50_ms"] = 1000 * statistics.median(mints)
        row["mint_max_ms"] = 1000 * max(mints)
        row["memory_after_load"] = rss_mib(a.proc.pid)
        if not second_replica:
            return row
        b, row["ready_seeded_redis_s"] = start_replica(bundle, env, tmp / f"b-{items}.log", args.ready_timeout_s)
        try:
            row["phases_seeded_redis"] = startup_phases(b.url)
            row["memory_second_replica"] = rss_mib(b.proc.pid)
        finally:
            b.stop()
    finally:
        a.stop()
    return row


def bundle_for(items: int, bundles_dir: Path) -> Path:
    from .synthetic_bundle import build

    path = bundles_dir / f"synthetic-{items}"
    if not (path / "manifest.json").is_file():
        build(items, path)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1682,10000,100000,1000000", help="catalog sizes, comma separated")
    p.add_argument("--bundles-dir", type=Path, default=Path("/tmp/genrec-synthetic"),
                   help="where the synthetic bundles are built (reused when present)")
    p.add_argument("--requests", type=int, default=100, help="requests at concurrency 1 (default 100)")
    p.add_argument("--requests-c16", type=int, default=320, help="requests at concurrency 16 (default 320)")
    p.add_argument("--mints", type=int, default=10, help="sequential mints (default 10)")
    p.add_argument("--ready-timeout-s", type=float, default=600.0)
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (a PNG plot goes beside it)")
    args = p.parse_args(argv)
    from service.embedded_redis import EmbeddedRedis

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="genrec-serve-scale-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = EmbeddedRedis(tmp / "redis")
        url = redis_server.start()
        try:
            for items in sizes:
                bundle = bundle_for(items, args.bundles_dir)
                try:
                    rows.append(measure_size(bundle, items, url, tmp, args))
                except RuntimeError as exc:  # e.g. not ready in time: said in the results, the rest go on
                    print(f"{items} items failed: {exc}", flush=True)
                    rows.append({"items": items, "error": str(exc)[:500]})
                write_json(args.out, {"sizes": sizes, "results": rows, "partial": True})
                print(f"{items} items done", flush=True)
        finally:
            redis_server.stop()
            shutil.rmtree(tmp / "redis", ignore_errors=True)
    result = summarise(rows)
    write_json(args.out, result)
    png = plot_path(args.out)
    if png is not None and any("error" not in r for r in rows):
        plot([r for r in rows if "error" not in r], png)
    return result


def summarise(all_rows: list[dict]) -> dict:
    rows = [r for r in all_rows if "error" not in r]
    for r in all_rows:
        if "error" in r:
            print(f"{r['items']} items: {r['error']}")
    if not rows:
        return {"sizes": [r["items"] for r in all_rows], "results": all_rows}
    base = rows[0]
    table = []
    for r in rows:
        extra = r["items"] - base["items"]
        r["kib_per_item"] = ((r["memory_ready"]["rss_mib"] - base["memory_ready"]["rss_mib"]) * 1024 / extra
                             if extra > 0 else None)
        r["redis_bytes_per_item"] = r["redis_mib"] * 2**20 / r["items"]
        r["p50_c1_vs_smallest"] = r["c1"]["p50_ms"] / base["c1"]["p50_ms"]
        table.append([
            r["items"], r["ready_empty_redis_s"], r.get("ready_seeded_redis_s", "-"),
            r["phases_empty_redis"].get("seed", float("nan")), r["memory_ready"]["rss_mib"],
            r["kib_per_item"] if r["kib_per_item"] is not None else "-", r["redis_mib"],
            r["c1"]["p50_ms"], r["c1"]["p99_ms"], r["c16"]["p50_ms"], r["c16"]["p99_ms"],
            r["c16"]["throughput_rps"], r["mint_p50_ms"],
        ])
    print_table(
        "the service on synthetic catalogs",
        ["items", "ready empty s", "ready seeded s", "seed s", "RSS MiB", "KiB/item", "Redis MiB",
         "c1 p50 ms", "c1 p99 ms", "c16 p50 ms", "c16 p99 ms", "c16 req/s", "mint p50 ms"],
        table,
    )
    phases = []
    for r in rows:
        for which in ("empty", "seeded"):
            if f"phases_{which}_redis" not in r:  # no second replica
                continue
            parts = r[f"phases_{which}_redis"]
            ready = r[f"ready_{which}_redis_s"]
            # before the app's start: the interpreter, the imports (torch, transformers), uvicorn
            r[f"before_start_{which}_redis_s"] = ready - parts.get("total", float("nan"))
            phases.append([r["items"], which, r[f"before_start_{which}_redis_s"],
                           *(parts.get(ph, float("nan")) for ph in PHASES), ready])
    print_table("start-up parts (s)", ["items", "redis", "imports", *PHASES, "ready"], phases)
    return {"sizes": [r["items"] for r in all_rows], "results": all_rows}


def plot(rows: list[dict], png: Path) -> None:
    plt = pyplot()
    sizes = [r["items"] for r in rows]
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    ax[0].plot(sizes, [r["ready_empty_redis_s"] for r in rows], marker="o", label="empty Redis")
    ax[0].plot(sizes, [r["ready_seeded_redis_s"] for r in rows], marker="o", label="seeded Redis (2nd replica)")
    ax[0].set_ylabel("start to ready (s)")
    ax[1].plot(sizes, [r["memory_ready"]["rss_mib"] for r in rows], marker="o", label="service RSS")
    ax[1].plot(sizes, [r["redis_mib"] for r in rows], marker="o", label="Redis used_memory")
    ax[1].set_ylabel("MiB")
    for c in ("c1", "c16"):
        ax[2].plot(sizes, [r[c]["p50_ms"] for r in rows], marker="o", label=f"p50, concurrency {c[1:]}")
        ax[2].plot(sizes, [r[c]["p99_ms"] for r in rows], marker="x", linestyle="--", label=f"p99, concurrency {c[1:]}")
    ax[2].set_ylabel("recommendation latency (ms)")
    ax[3].plot(sizes, [r["mint_p50_ms"] for r in rows], marker="o", label="mint p50")
    ax[3].set_ylabel("mint latency (ms)")
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("catalog items")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
