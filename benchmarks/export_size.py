"""How long `genrec-serve export` takes (service/export.py) for catalogs and event stores of
several sizes: each size is written into a throwaway catalog of a real Redis (bundle items
seeded, minted items with their stream entries, users' events through the service's own
script), exported into a temporary folder, read back by training's loader, and deleted.

    python -m benchmarks.export_size [--redis URL] [--sizes 1682:50:1000:20,...] [--out FILE.json]

A size is items:minted:users:events_per_user.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import redis

from genrec.bundle import BundleItem
from service.export import export_catalog
from service.registry import ItemRecord, Registry
from service.user_events import UserEvent, UserEventStore
from training.data import load_recbole_atomic

from .common import print_table, write_json

DEFAULT_SIZES = "1682:50:1000:40,1682:1000:20000:40,20000:5000:50000:20"


async def fill(url: str, catalog: str, items: int, minted: int, users: int, per_user: int) -> None:
    registry = Registry(url, catalog)
    try:
        bundle = [BundleItem(str(i), f"item words {i}", [5, 6, 1], f"title: Item {i}; genres: drama")
                  for i in range(1, items + 1)]
        await registry.seed(bundle, "2026-01-01T00:00:00+00:00", "benchmark")
        for start in range(0, minted, 20):
            await asyncio.gather(*(registry.restore(ItemRecord(
                f"new-{n}", f"new item {n}", [7, 8, 1], f"title: New {n}", {"title": f"New {n}", "year": 2026},
                "2026-01-02T00:00:00+00:00", "minted")) for n in range(start, min(start + 20, minted))))
        store = UserEventStore(registry.aio, registry.prefix, keep=per_user, id_ttl_s=60, ids_per_user=10)
        events = [UserEvent(f"u{u}", str(1 + (u * 7 + n) % items), 1_700_000_000 + n)
                  for u in range(users) for n in range(per_user)]
        for start in range(0, len(events), 2000):
            await store.add(events[start : start + 2000])
    finally:
        await registry.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--sizes", default=DEFAULT_SIZES)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows, results = [], []
    for size in args.sizes.split(","):
        items, minted, users, per_user = (int(x) for x in size.split(":"))
        catalog = f"bench-export-{uuid.uuid4().hex[:8]}"
        client = redis.Redis.from_url(args.redis, decode_responses=True)
        try:
            asyncio.run(fill(args.redis, catalog, items, minted, users, per_user))
            with tempfile.TemporaryDirectory() as tmp:
                summary = export_catalog(client, catalog, Path(tmp) / "export", dataset="bench")
                started = time.perf_counter()
                _, interactions = load_recbole_atomic(Path(tmp) / "export", "bench", allow_empty=True)
                load_s = time.perf_counter() - started
                size_mb = sum(f.stat().st_size for f in (Path(tmp) / "export").iterdir()) / 1e6
        finally:
            asyncio.run(_drop(args.redis, catalog))
            client.close()
        assert len(interactions) == users * per_user == summary.events["events"]
        result = {"items": items, "minted": minted, "users": users, "events": users * per_user,
                  "export_s": round(summary.seconds, 2), "load_s": round(load_s, 2), "size_mb": round(size_mb, 1)}
        results.append(result)
        rows.append([items, minted, users, users * per_user, f"{summary.seconds:.2f}", f"{load_s:.2f}",
                     f"{size_mb:.1f}"])
    print_table("genrec-serve export", ["bundle items", "minted", "users", "events", "export s",
                                        "training load s", "MB"], rows)
    if args.out:
        write_json(args.out, {"redis": args.redis, "results": results})


async def _drop(url: str, catalog: str) -> None:
    registry = Registry(url, catalog)
    try:
        await registry.delete_namespace()
    finally:
        await registry.close()


if __name__ == "__main__":
    main()
