"""Two replicas of the service (separate uvicorn processes on loopback) sharing one Redis
namespace, driven by concurrent async httpx clients with a mix of recommendations and mints.

Mints come in three shapes: a new item sent to one replica; the same item (same id and
metadata) sent to both replicas at once; and two new items with identical metadata sent one to
each replica at once (the race the Redis SET NX claim must settle). Recommendation histories
are catalog items, and later also items minted a moment ago on either replica.

Checks afterwards: every answer 2xx; no item minted twice (two IDs, or created twice); no
textual ID held by two items (answers, bundle items and Redis's records); no claim left
pending; and every minted item recommendable on both replicas: both tries hold it (their
catalog gauges count every item), both serve its record, and both take it in a history.

    python -m benchmarks.load_replicas --bundle DIR [--requests N] [--concurrency C] [--out FILE.json]
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from .common import Server, clean_keys, mean, parser, percentile, print_table, redis_url, write_json

REPLICAS = 2
MINT_SHAPES = ("one_replica", "same_item_both", "twins")


@dataclass
class Sample:
    """One HTTP request of the load phase."""

    kind: str  # "recommend" or "mint"
    replica: int
    status: int  # 0: no answer (connection error, timeout)
    latency_s: float
    body: dict | None = None


@dataclass
class Workload:
    """What the clients draw from: the catalog, words for new titles, and what got minted."""

    catalog_ids: list[str]
    words: list[str]
    max_history: int
    k: int
    token: str
    rng: random.Random
    minted: list[str] = field(default_factory=list)  # item ids whose mint answered 2xx
    counter: int = 0

    def new_item_id(self) -> str:
        self.counter += 1
        return f"load-{self.counter}"

    def metadata(self) -> dict:
        words = self.rng.sample(self.words, k=min(3, len(self.words)))
        return {"title": " ".join(words), "genres": self.rng.sample(self.words, k=min(2, len(self.words)))}

    def history(self) -> list[str]:
        """Catalog items, with one minted item in about a third of the histories once there are some."""
        size = self.rng.randint(1, self.max_history)
        history = self.rng.sample(self.catalog_ids, k=min(size, len(self.catalog_ids)))
        if self.minted and self.rng.random() < 0.33:
            history[-1] = self.rng.choice(self.minted)
        return history


# --------------------------------------------------------------------------- the load phase


def plan(requests: int, mint_fraction: float, rng: random.Random) -> list[str]:
    """Operation kinds in sending order; pair shapes send two requests, so they count twice."""
    ops: list[str] = []
    sent = 0
    while sent < requests:
        if rng.random() < mint_fraction:
            shape = rng.choice(MINT_SHAPES)
            if shape != "one_replica" and sent + 2 > requests:
                shape = "one_replica"
            ops.append(shape)
            sent += 1 if shape == "one_replica" else 2
        else:
            ops.append("recommend")
            sent += 1
    return ops


async def timed_post(client: httpx.AsyncClient, kind: str, replica: int, path: str, body: dict, headers=None) -> Sample:
    start = time.perf_counter()
    try:
        response = await client.post(path, json=body, headers=headers)
        status, payload = response.status_code, _json(response)
    except httpx.HTTPError:
        status, payload = 0, None
    return Sample(kind, replica, status, time.perf_counter() - start, payload)


def _json(response: httpx.Response) -> dict | None:
    try:
        return response.json()
    except ValueError:
        return None


async def run_op(op: str, clients: list[httpx.AsyncClient], work: Workload) -> list[Sample]:
    """Sends one operation (one request, or two at once for the pair shapes)."""
    auth = {"authorization": f"Bearer {work.token}"}
    if op == "recommend":
        replica = work.rng.randrange(REPLICAS)
        body = {"history": work.history(), "k": work.k}
        return [await timed_post(clients[replica], "recommend", replica, "/v1/recommendations", body)]
    if op == "one_replica":
        replica = work.rng.randrange(REPLICAS)
        body = {"item_id": work.new_item_id(), "metadata": work.metadata()}
        samples = [await timed_post(clients[replica], "mint", replica, "/v1/items", body, auth)]
    else:
        metadata = work.metadata()
        ids = [work.new_item_id()] * 2 if op == "same_item_both" else [work.new_item_id(), work.new_item_id()]
        samples = list(
            await asyncio.gather(
                *(
                    timed_post(clients[r], "mint", r, "/v1/items", {"item_id": ids[r], "metadata": metadata}, auth)
                    for r in range(REPLICAS)
                )
            )
        )
    for sample in samples:
        if 200 <= sample.status < 300 and sample.body:
            work.minted.append(sample.body["item_id"])
    return samples


async def drive(urls: list[str], ops: list[str], concurrency: int, work: Workload) -> tuple[list[Sample], float]:
    """`concurrency` workers take operations in order until none is left; (samples, wall seconds)."""
    queue = list(reversed(ops))
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=2 * concurrency)
    async with ReplicaClients(urls, limits) as clients:

        async def worker():
            while queue:
                samples.extend(await run_op(queue.pop(), clients, work))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - start


class ReplicaClients:
    """One async httpx client per replica URL, closed together."""

    def __init__(self, urls: list[str], limits: httpx.Limits | None = None):
        limits = limits or httpx.Limits()
        self.clients = [httpx.AsyncClient(base_url=u, timeout=120, limits=limits) for u in urls]

    async def __aenter__(self) -> list[httpx.AsyncClient]:
        return self.clients

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients))


# --------------------------------------------------------------------------- the checks


def mint_outcomes(samples: list[Sample]) -> tuple[dict[str, str], int, int]:
    """(item id -> textual id, items minted twice, items nobody created): minted twice is an
    item that got two different textual IDs or was answered `created: true` more than once; an
    item sent to both replicas at once must be created by exactly one of them."""
    textual: dict[str, set[str]] = defaultdict(set)
    created: Counter = Counter()
    for s in samples:
        if s.kind == "mint" and 200 <= s.status < 300 and s.body:
            textual[s.body["item_id"]].add(s.body["textual_id"])
            created[s.body["item_id"]] += bool(s.body.get("created"))
    twice = sum(1 for item, ids in textual.items() if len(ids) > 1 or created[item] > 1)
    uncreated = sum(1 for item in textual if created[item] == 0)
    return {item: min(ids) for item, ids in textual.items()}, twice, uncreated


def duplicate_textual_ids(minted: dict[str, str], bundle_ids: dict[str, str]) -> int:
    """Textual IDs that more than one item holds, among the bundle's items and the minted ones."""
    owners = Counter({**bundle_ids, **minted}.values())
    return sum(1 for n in owners.values() if n > 1)


def registry_audit(url: str, catalog: str) -> dict:
    """What Redis holds for the catalog: items, textual IDs held twice, pending claims, and
    claims whose item record names another ID."""
    import redis

    prefix = f"genrec:{{{catalog}}}:"
    with redis.Redis.from_url(url, decode_responses=True) as client:
        items = list(client.scan_iter(match=f"{prefix}item:*", count=1000))
        textual = [client.hget(key, "textual_id") for key in items]
        claims = list(client.scan_iter(match=f"{prefix}tid:*", count=1000))
        owners = client.mget(claims) if claims else []
        pending = sum(1 for o in owners if o and o.startswith("pending:"))
        mismatched = sum(
            1
            for claim, owner in zip(claims, owners, strict=True)
            if owner and not owner.startswith("pending:")
            and client.hget(f"{prefix}item:{owner}", "textual_id") != claim[len(prefix) + 4 :]
        )
    return {
        "items": len(items),
        "claims": len(claims),
        "duplicate_textual_ids": sum(1 for n in Counter(textual).values() if n > 1),
        "pending_claims": pending,
        "mismatched_claims": mismatched,
    }


async def catalog_size(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    found = re.search(r"^genrec_catalog_items (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


async def wait_for_catalogs(urls: list[str], expected: int, timeout_s: float = 60.0) -> list[float]:
    """Waits until every replica's trie holds `expected` items (the event stream has reached it);
    the sizes last seen."""
    async with ReplicaClients(urls) as clients:
        deadline = time.monotonic() + timeout_s
        while True:
            sizes = [await catalog_size(c) for c in clients]
            if all(s >= expected for s in sizes) or time.monotonic() > deadline:
                return sizes
            await asyncio.sleep(0.2)


async def recommendable_on_all(urls: list[str], minted: dict[str, str], concurrency: int) -> int:
    """How many minted items every replica serves with their textual ID and takes in a history."""
    semaphore = asyncio.Semaphore(concurrency)

    async def on_all(item_id: str, textual_id: str) -> bool:
        async with semaphore:
            for client in clients:
                record = await client.get(f"/v1/items/{quote(item_id, safe='')}")
                if record.status_code != 200 or record.json()["textual_id"] != textual_id:
                    return False
                if not record.json()["recommendable"]:
                    return False
                used = await client.post("/v1/recommendations", json={"history": [item_id], "k": 1})
                if used.status_code != 200:
                    return False
            return True

    async with ReplicaClients(urls) as clients:
        return sum(await asyncio.gather(*(on_all(i, t) for i, t in minted.items())))


# --------------------------------------------------------------------------- running it


@contextmanager
def replicas(bundle: Path, url: str, catalog: str, token: str, log_dir: Path):
    """Starts the replicas side by side (they load at the same time) and stops them at the end."""
    env = {"REDIS_URL": url, "GENREC_CATALOG": catalog, "GENREC_API_TOKEN": token}
    with ExitStack() as stack:
        servers = []
        for i in range(REPLICAS):
            server = Server(bundle, env, log_dir / f"replica-{i}.log")
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            server.wait_ready(timeout_s=300)
        yield servers


@contextmanager
def shared_redis(requested: str | None, data_dir: Path):
    """The Redis the replicas share: the given one, a local one, or an embedded one started here."""
    url = redis_url(requested)
    if url is not None:
        yield url
        return
    from service.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(data_dir)
    try:
        yield server.start()
    finally:
        server.stop()


def summarise(samples: list[Sample], wall_s: float) -> dict:
    by_kind = {kind: [s for s in samples if s.kind == kind] for kind in ("recommend", "mint")}
    rows = {}
    for kind, group in {"all": samples, **by_kind}.items():
        latencies = [s.latency_s for s in group]
        rows[kind] = {
            "requests": len(group),
            "errors": sum(1 for s in group if not 200 <= s.status < 300),
            "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99),
            "mean_ms": 1000 * mean(latencies),
        }
    rows["all"]["throughput_rps"] = len(samples) / wall_s
    rows["status_counts"] = dict(Counter(str(s.status) for s in samples))
    return rows


def run(
    bundle: Path,
    requests: int = 3000,
    concurrency: int = 16,
    mint_fraction: float = 0.2,
    k: int = 10,
    redis: str | None = None,
    catalog: str | None = None,
    seed: int = 0,
) -> dict:
    """The whole benchmark; returns its figures and checks (see the module docstring)."""
    from genrec.bundle import load_bundle

    loaded = load_bundle(bundle)
    bundle_ids = {item.item_id: item.textual_id for item in loaded.items}
    words = sorted({w for item in loaded.items for w in re.findall(r"[a-z]{3,}", item.text.lower())})
    rng = random.Random(seed)
    work = Workload(
        catalog_ids=sorted(bundle_ids),
        words=words,
        max_history=loaded.train_config.data.max_history,
        k=k,
        token=secrets.token_urlsafe(16),
        rng=rng,
    )
    own_namespace = catalog is None  # a namespace made here is cleaned here; a given one by its owner
    catalog = catalog or f"load-{uuid.uuid4().hex[:12]}"
    ops = plan(requests, mint_fraction, rng)
    with tempfile.TemporaryDirectory(prefix="genrec-load-replicas-") as tmp, shared_redis(redis, Path(tmp) / "redis") as url:
        try:
            with replicas(bundle, url, catalog, work.token, Path(tmp)) as servers:
                urls = [s.url for s in servers]
                samples, wall_s = asyncio.run(drive(urls, ops, concurrency, work))
                minted, minted_twice, uncreated = mint_outcomes(samples)
                sizes = asyncio.run(wait_for_catalogs(urls, len(bundle_ids) + len(minted)))
                on_all = asyncio.run(recommendable_on_all(urls, minted, concurrency))
            audit = registry_audit(url, catalog)
        finally:
            if own_namespace:
                clean_keys(url, catalog)
    summary = summarise(samples, wall_s)
    return {
        "replicas": REPLICAS,
        "requests": len(samples),
        "concurrency": concurrency,
        "mint_fraction": mint_fraction,
        "wall_s": wall_s,
        "summary": summary,
        "errors": summary["all"]["errors"],
        "mint_shapes": dict(Counter(op for op in ops if op != "recommend")),
        "minted_items": len(minted),
        "items_minted_twice": minted_twice,
        "items_nobody_created": uncreated,
        "duplicate_textual_ids": duplicate_textual_ids(minted, bundle_ids),
        "registry": audit,
        "catalog_sizes": sizes,
        "expected_catalog_size": len(bundle_ids) + len(minted),
        "recommendable_on_all_replicas": on_all,
    }


def print_result(result: dict) -> None:
    s = result["summary"]
    rows = [
        [kind, s[kind]["requests"], s[kind]["errors"], s[kind]["p50_ms"], s[kind]["p99_ms"]]
        for kind in ("all", "recommend", "mint")
    ]
    print_table(
        f"{result['replicas']} replicas, one Redis, concurrency {result['concurrency']}",
        ["requests", "count", "errors", "p50 ms", "p99 ms"],
        rows,
    )
    reg = result["registry"]
    print_table(
        "checks",
        ["check", "value"],
        [
            ["requests", result["requests"]],
            ["errors (non-2xx)", result["errors"]],
            ["throughput req/s", s["all"]["throughput_rps"]],
            ["p50 ms", s["all"]["p50_ms"]],
            ["p99 ms", s["all"]["p99_ms"]],
            ["minted items", result["minted_items"]],
            ["duplicate item ids (minted twice)", result["items_minted_twice"]],
            ["items no replica created", result["items_nobody_created"]],
            ["duplicate textual ids (answers)", result["duplicate_textual_ids"]],
            ["duplicate textual ids (Redis)", reg["duplicate_textual_ids"]],
            ["pending / mismatched claims (Redis)", f"{reg['pending_claims']} / {reg['mismatched_claims']}"],
            ["catalog size per replica (expected)", f"{result['catalog_sizes']} ({result['expected_catalog_size']})"],
            ["minted items recommendable on both", f"{result['recommendable_on_all_replicas']} / {result['minted_items']}"],
        ],
    )


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3000, help="requests of the load phase (default 3000)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--mint-fraction", type=float, default=0.2, help="share of requests that mint (default 0.2)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--redis-url", default=None, help="default: redis://127.0.0.1:6379/15 if up, else embedded")
    args = p.parse_args(argv)
    result = run(args.bundle, args.requests, args.concurrency, args.mint_fraction, args.k, args.redis_url)
    print_result(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
