"""The hostile load of issue 21 against the real service (uvicorn on loopback, its own
redis-server), beside one normal client that sends a 10-item history with k 10 every 50 ms:

- attack: 64 clients send maximal recommendation requests (200-item history, k 50) back to
  back, ignoring Retry-After. The normal client's p50/p99 alone and under attack, and the
  statuses each side got (200, 429, 503).
- unknown ids: 64 clients each naming 64 ids the catalog lacks; Redis commands per request,
  from the INFO commandstats of the benchmark's own redis-server.
- mint repeats: 40 new items with one same metadata, from 4 clients; how long until all are
  answered, and the normal client's p50/p99 meanwhile.
- mint burst: 4 clients posting near duplicates (the same words, other punctuation: not
  repeats, and every generator candidate taken); the normal client's p50/p99.

Configs: `after` (this checkout with the recommended settings below), `after-shared` (the same
with GENREC_MINT_THREAD=false: mints on the recommendations' thread) and `before` (the service
of another checkout, --before-root, e.g. `git worktree add /tmp/before <commit>`, with its own
defaults). The attackers share one token, the normal client has its own: a per-client limit
tells them apart (on loopback every client has the same address).

    python -m benchmarks.attack_load (--bundle DIR | --test-bundle) [--configs after,before --before-root DIR] \
        [--runs N] [--out benchmarks/results/attack_load.json]

`--test-bundle` builds the service tests' bundle (40 items, untrained tiny T5s; seconds to
build) with the default mint schedule (MintConfig(): 20 generator rounds before the suffix).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import redis

from service.embedded_redis import start_redis_server

from .common import (
    Server,
    parser,
    percentile,
    plot_path,
    print_table,
    pyplot,
    save_figure,
    write_json,
)
from .raw_http import KeepAliveConnection, RawHttpError

TOKENS = {"attacker": "attacker-token-0000000001", "normal": "normal-token-000000000001",
          "writer": "writer-token-000000000001"}
CROWD = [f"crowd-token-{i:013d}" for i in range(64)]  # 64 clients with a token each
# The recommended settings (docs/reliability.md), and the tokens of the clients.
AFTER = {
    "API_TOKENS": f"attacker:{TOKENS['attacker']}:read;normal:{TOKENS['normal']}:read;"
                  f"writer:{TOKENS['writer']}:read,write;" + ";".join(f"c{i}:{t}:read" for i, t in enumerate(CROWD)),
    "GENREC_RATE_LIMIT_READ": "40",
    "GENREC_RATE_LIMIT_WRITE": "100",
    "GENREC_RATE_LIMIT_WINDOW_S": "1",
    "GENREC_MAX_QUEUE": "64",
    "GENREC_REQUEST_TIMEOUT_S": "2",
}
CONFIGS = {
    "after": AFTER,
    "after-shared": {**AFTER, "GENREC_MINT_THREAD": "false"},
    "before": {"API_TOKEN": TOKENS["writer"]},
}
NORMAL_INTERVAL_S = 0.05


def auth(who: str) -> dict[str, str]:
    """The Authorization header of a named client, or of a raw token."""
    return {"Authorization": f"Bearer {TOKENS.get(who, who)}"}


async def normal_client(url: str, catalog: list[str], stop: float, rng: random.Random) -> dict:
    """One request every 50 ms (right after the previous answer when that took longer)."""
    connection = KeepAliveConnection(url)
    latencies, statuses = [], Counter()
    try:
        while time.monotonic() < stop:
            body = {"history": rng.sample(catalog, 10), "k": 10}
            start = time.monotonic()
            try:
                status, _ = await connection.post_json("/v1/recommendations", body, auth("normal"))
            except RawHttpError:
                status = 0
            took = time.monotonic() - start
            latencies.append(took)
            statuses[status] += 1
            await asyncio.sleep(max(0.0, NORMAL_INTERVAL_S - took))
    finally:
        await connection.close()
    return {"requests": len(latencies), "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99), "max_ms": 1000 * max(latencies, default=0),
            "statuses": dict(statuses)}


async def flood(url: str, bodies, clients: int, stop: float, path: str = "/v1/recommendations",
                who=lambda i: "attacker") -> Counter:
    """`clients` connections sending `bodies()` back to back until `stop` (connection i as
    `who(i)`), ignoring Retry-After; their statuses."""
    statuses: Counter = Counter()

    async def one(i: int) -> None:
        connection = KeepAliveConnection(url)
        try:
            while time.monotonic() < stop:
                try:
                    status, _ = await connection.post_json(path, bodies(), auth(who(i)))
                except (RawHttpError, OSError):
                    status = 0
                statuses[status] += 1
        finally:
            await connection.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return statuses


def normal_process(url: str, catalog: list[str], seconds: float) -> dict:
    """The normal client in a process of its own: its latencies are the service's, not the wait
    for its turn in the load generator's event loop."""
    return asyncio.run(normal_client(url, catalog, time.monotonic() + seconds, random.Random(0)))


async def beside_normal(url: str, catalog: list[str], seconds: float, load=None) -> tuple[dict, object]:
    """The normal client (its own process) for `seconds`, with `load(stop)` running beside it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0)  # the process is up
        normal = asyncio.get_running_loop().run_in_executor(pool, normal_process, url, catalog, seconds)
        if load is None:
            return await normal, None
        return tuple(await asyncio.gather(normal, load(time.monotonic() + seconds)))


def item_reads(url: str) -> int:
    """Item-record reads (HGETALL) Redis has served so far."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def run_phases(url: str, redis_url: str, catalog: list[str], args) -> dict:
    rng = random.Random(1)
    out: dict = {}
    await beside_normal(url, catalog, 1.0)  # warm-up
    out["unloaded"], _ = await beside_normal(url, catalog, args.unloaded_s)

    def maximal():
        history = rng.sample(catalog, 200) if len(catalog) >= 200 else rng.choices(catalog, k=200)
        return {"history": history, "k": 50}

    normal, statuses = await beside_normal(
        url, catalog, args.attack_s, lambda stop: flood(url, maximal, args.attackers, stop))
    out["attack"] = {"normal": normal, "attackers": dict(statuses)}
    await asyncio.sleep(1.5)  # the attack's windows and queues drain
    normal, statuses = await beside_normal(
        url, catalog, args.attack_s, lambda stop: flood(url, maximal, args.attackers, stop, who=lambda i: CROWD[i]))
    out["attack_64_tokens"] = {"normal": normal, "attackers": dict(statuses)}
    await asyncio.sleep(2.5)
    out["gone"] = await clients_gone(url, maximal, 256)
    await asyncio.sleep(1.5)

    def unknown():
        return {"history": [f"unknown-{rng.randrange(10**9)}" for _ in range(64)], "k": 10}

    before = item_reads(redis_url)
    stop = time.monotonic() + args.unknown_s
    statuses = await flood(url, unknown, args.attackers, stop)
    sent = sum(statuses.values())
    reads = item_reads(redis_url) - before
    out["unknown_ids"] = {"requests": sent, "statuses": dict(statuses), "item_reads": reads,
                          "item_reads_per_request": reads / max(sent, 1)}

    same = {"title": "Same Film Again", "genres": "Drama Comedy", "year": 1999}
    out["mint_repeats"] = await mint_burst(url, catalog, lambda n: same, args.repeats, args.mint_s)
    # Near duplicates: the same words with other punctuation, so the text is new (no repeat) but
    # every candidate is taken: each one runs all its generator rounds before the suffix.
    near = lambda n: {"title": "Other Film Again" + "!" * (n % 50) + "?" * (n // 50), "genres": "Drama"}  # noqa: E731
    out["mint_burst"] = await mint_burst(url, catalog, near, 10_000, args.mint_s)
    # After the mints: before the fix, this item's ID made every later decode slow.
    out["big_item"] = await big_item(url)
    out["after_big_item"], _ = await beside_normal(url, catalog, 3.0)
    # Last: past the limit, every token from this address (all clients here) is refused for a while.
    stop = time.monotonic() + 3.0
    guesses = await flood(url, lambda: {"item_id": "guess", "metadata": {"title": "x"}}, 16, stop, "/v1/items",
                          who=lambda i: f"wrong-guess-{rng.randrange(10**12):016d}")
    out["wrong_tokens"] = {"statuses": dict(guesses), "per_s": sum(guesses.values()) / 3.0}
    return out


async def big_item(url: str) -> dict:
    """The request of point 1: four 4,000-digit metadata values."""
    connection = KeepAliveConnection(url)
    body = {"item_id": f"big-{random.randrange(10**9)}", "metadata": {f"f{i}": "1234567890" * 400 for i in range(4)}}
    start = time.monotonic()
    try:
        status, raw = await connection.post_json("/v1/items", body, auth("writer"))
    finally:
        await connection.close()
    answer = json.loads(raw) if raw else {}
    textual_id = answer.get("textual_id", "")
    return {"status": status, "seconds": time.monotonic() - start, "id_chars": len(textual_id),
            "id_words": len(textual_id.split()) if textual_id else 0}


def batched_requests(url: str) -> float:
    """Recommendation requests the service has decoded so far (its batch-size histogram)."""
    text = httpx.get(f"{url}/metrics", timeout=10, headers=auth("normal")).text
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith('genrec_batch_size_sum{kind="recommend"}')), 0.0)


async def clients_gone(url: str, bodies, count: int) -> dict:
    """`count` maximal requests whose clients close the connection right after sending (one
    token each of 64, so that the rate limit is not what stops them); how many the service
    still decoded, and how long a request sent right after them took."""
    before = batched_requests(url)
    payloads = [json.dumps(bodies()).encode() for _ in range(count)]
    host, port = url.removeprefix("http://").split(":")

    async def send_and_leave(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (f"POST /v1/recommendations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CROWD[i % 64]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payloads[i])}\r\n\r\n").encode()
        writer.write(head + payloads[i])
        await writer.drain()
        writer.close()

    await asyncio.gather(*(send_and_leave(i) for i in range(count)))
    connection = KeepAliveConnection(url)
    start = time.monotonic()
    try:
        status, _ = await connection.post_json("/v1/recommendations", {"history": bodies()["history"][:10], "k": 10},
                                               auth("normal"))
    finally:
        await connection.close()
    took = time.monotonic() - start
    await asyncio.sleep(3.0)  # whatever was queued is decoded (or dropped) by now
    return {"sent": count, "decoded": batched_requests(url) - before - 1, "next_status": status,
            "next_ms": 1000 * took}


async def mint_burst(url: str, catalog: list[str], metadata, count: int, seconds: float) -> dict:
    """Up to `count` new items (4 clients) within `seconds`, beside the normal client."""
    prefix = f"bench-{random.randrange(10**9)}-"
    remaining = list(range(count))
    latencies: list[float] = []
    statuses: Counter = Counter()
    started = time.monotonic()
    last_answer = [started]

    async def load(stop: float) -> None:
        async def one() -> None:
            connection = KeepAliveConnection(url)
            try:
                while remaining and time.monotonic() < stop:
                    n = remaining.pop()
                    start = time.monotonic()
                    try:
                        status, _ = await connection.post_json(
                            "/v1/items", {"item_id": f"{prefix}{n}", "metadata": metadata(n)}, auth("writer"))
                    except (RawHttpError, OSError):
                        status = 0
                    latencies.append(time.monotonic() - start)
                    statuses[status] += 1
                    last_answer[0] = time.monotonic()
            finally:
                await connection.close()

        await asyncio.gather(*(one() for _ in range(4)))

    normal, _ = await beside_normal(url, catalog, seconds, load)
    return {"normal": normal, "minted": statuses.get(201, 0), "statuses": dict(statuses),
            "mint_p50_ms": 1000 * percentile(latencies, 50), "mint_max_ms": 1000 * max(latencies, default=0),
            "answered_s": last_answer[0] - started, "all_answered": not remaining and len(latencies) == count}


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """The benchmark's own redis-server (no persistence), on a free port: started again on
    another if the port is taken before it binds (service/embedded_redis.py)."""
    redis_server = shutil.which("redis-server") or "redis-server"
    process, port = start_redis_server(
        lambda port: [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", str(folder)],
        folder / "redis.log")
    return process, f"redis://127.0.0.1:{port}/0"


def run_config(name: str, args, catalog: list[str]) -> dict:
    root = args.before_root if name == "before" else None
    if name == "before" and root is None:
        raise SystemExit("--configs before needs --before-root DIR (a checkout of the earlier commit)")
    with tempfile.TemporaryDirectory(prefix="genrec-attack-") as tmp:
        process, url = start_redis(Path(tmp))
        env = {**CONFIGS[name], "REDIS_URL": url, "GENREC_CATALOG": "attack",
               "GENREC_TORCH_THREADS": str(args.threads)}
        server = Server(args.bundle, env, Path(tmp) / "server.log", root=root)
        try:
            server.wait_ready()
            result = asyncio.run(run_phases(server.url, url, catalog, args))
        finally:
            server.stop()
            process.terminate()
            process.wait(10)
    result["settings"] = {k: v for k, v in CONFIGS[name].items() if "TOKEN" not in k}
    return result


def build_test_bundle(folder: Path) -> Path:
    """tests/service/conftest.py's bundle, with the default MintConfig instead of its short one."""
    from genrec.idgenrec.minting import MintConfig
    from tests.service.conftest import build_tiny_bundle

    path = build_tiny_bundle(folder / "test")
    manifest = json.loads((path / "manifest.json").read_text())
    mint = MintConfig().to_dict()
    mint.pop("max_rounds")  # so that a checkout from before it existed reads the bundle too
    manifest["config"]["generator"]["mint"] = mint
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def _codes(statuses: dict) -> str:
    return "/".join(str(statuses.get(code, 0)) for code in (200, 429, 503))


PHASES = [("alone", lambda r: r["unloaded"]), ("attack 1 token", lambda r: r["attack"]["normal"]),
          ("attack 64 tokens", lambda r: r["attack_64_tokens"]["normal"]),
          ("40 repeats", lambda r: r["mint_repeats"]["normal"]), ("near-duplicate mints", lambda r: r["mint_burst"]["normal"]),
          ("after big item", lambda r: r["after_big_item"])]


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], bundle_required=False)
    p.add_argument("--test-bundle", action="store_true", help="build and use the service tests' bundle")
    p.add_argument("--configs", default="after", help="after, after-shared, before (comma-separated)")
    p.add_argument("--before-root", type=Path, default=None, help="checkout whose service is 'before'")
    p.add_argument("--runs", type=int, default=1, help="runs of each config (the machine is noisy)")
    p.add_argument("--attackers", type=int, default=64)
    p.add_argument("--unloaded-s", type=float, default=8.0)
    p.add_argument("--attack-s", type=float, default=8.0)
    p.add_argument("--unknown-s", type=float, default=3.0)
    p.add_argument("--mint-s", type=float, default=6.0)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args(argv)
    if args.test_bundle == (args.bundle is not None):
        p.error("give --bundle DIR or --test-bundle")
    with tempfile.TemporaryDirectory(prefix="genrec-attack-bundle-") as tmp:
        if args.test_bundle:
            args.bundle = build_test_bundle(Path(tmp))
        return run(args)


def run(args) -> dict:
    catalog = [json.loads(line)["item_id"] for line in (args.bundle / "items.jsonl").read_text().splitlines()
               if line.strip()]
    names = args.configs.split(",")
    results: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.runs):  # configs interleaved, so a busy spell of the machine hits them alike
        for name in names:
            results[name].append(run_config(name, args, catalog))
    runs = [(f"{name} #{i + 1}", r) for name in names for i, r in enumerate(results[name])]
    print_table(
        "the normal client (p50 / p99 ms) alone, under the attacks and during mints",
        ["config", *(label for label, _ in PHASES)],
        [[label] + [f"{get(r)['p50_ms']:.0f} / {get(r)['p99_ms']:.0f}" for _, get in PHASES] for label, r in runs],
    )
    print_table(
        "what the attackers got",
        ["config", "1 token 200/429/503", "64 tokens 200/429/503", "gone: decoded of 256", "unknown ids: reads/req",
         "big item", "wrong tokens 401/429", "40 repeats answered in s", "burst minted"],
        [[label, _codes(r["attack"]["attackers"]), _codes(r["attack_64_tokens"]["attackers"]),
          f"{r['gone']['decoded']:.0f}", f"{r['unknown_ids']['item_reads_per_request']:.1f}",
          f"{r['big_item']['status']} in {r['big_item']['seconds']:.2f} s, ID {r['big_item']['id_chars']} chars",
          f"{r['wrong_tokens']['statuses'].get(401, 0)}/{r['wrong_tokens']['statuses'].get(429, 0)}",
          f"{r['mint_repeats']['answered_s']:.1f} ({r['mint_repeats']['minted']} minted)", r["mint_burst"]["minted"]]
         for label, r in runs],
    )
    bundle = "the service tests' bundle, default MintConfig" if args.test_bundle else str(args.bundle)
    result = {"bundle": bundle, "attackers": args.attackers, "normal_interval_s": NORMAL_INTERVAL_S,
              "seconds": {"unloaded": args.unloaded_s, "attack": args.attack_s, "unknown": args.unknown_s,
                          "mint": args.mint_s},
              "torch_threads": args.threads, "runs": args.runs, "configs": results}
    write_json(args.out, result)
    png = plot_path(args.out)
    if png is not None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(9, 3.8))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            p99s = [[get(r)["p99_ms"] for r in results[name]] for _, get in PHASES]
            middle = [statistics.median(v) for v in p99s]
            ax.bar([j + i * width for j in range(len(PHASES))], middle, width, label=name,
                   yerr=[[m - min(v) for m, v in zip(middle, p99s, strict=True)],
                         [max(v) - m for m, v in zip(middle, p99s, strict=True)]], capsize=2)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(PHASES))], [label for label, _ in PHASES],
                      fontsize=8)
        ax.set_ylabel("normal client's p99 (ms)")
        ax.set_yscale("log")
        ax.set_title(f"median of {args.runs} run(s), whiskers min-max")
        ax.legend(fontsize=8)
        save_figure(fig, png)
    return result


if __name__ == "__main__":
    main()
