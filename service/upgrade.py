"""Upgrade without loss (docs/operations.md, "Upgrade: what carries over").

A bundle with other IDs gets a catalog namespace of its own (`default_catalog`: the dataset and
a digest of its ID space). Items minted through `POST /v1/items` live only in Redis, under the
namespace they were minted in; so when a generation (service/generation.py) starts on a new
namespace, it carries over from the catalog of the same dataset that served before it:

- every item that catalog knew (minted, carried over into it, or one of its bundle's items) and
  that the new namespace lacks is minted under the new one: with its old textual ID when that ID
  is free there and survives the new tokenizer's round trip, else with a new one from the new
  bundle's method (the claim and commit scripts of service/registry.py keep textual IDs
  unique, and an item id once committed is never written again); for IDGenRec it is
  recommendable at once;
- the users' stored events (`user:` and `uevid:` keys; the catalog's counter `eseq` is raised to the old one) are copied, for each user the new
  namespace has no events of; a user the new namespace has no events of yet (one who posted
  to a replica still on the previous catalog, during a rolling upgrade) is read from the
  previous namespace, and copied before the first events the new one stores
  (service/user_events.py).

Nothing in the previous namespace is written or deleted (`genrec-serve forget-catalog` does
that, when an operator says so). The pass runs under a lock in the new namespace, so replicas
starting together carry each item over once; each records how far it got (`upgraded:<old>`),
so a later start, or a replica that waited for the lock, goes on from there. While the previous
catalog may still be served by other replicas (a rolling upgrade), the generation follows its
events stream and carries over what is minted there, every GENREC_UPGRADE_FOLLOW_S.

Which catalog served before: `genrec:catalogs:<dataset>` (outside any catalog namespace) is a
hash, catalog name -> JSON {first_served, last_served, bundle, digest}, written when a
generation starts serving. The previous catalog is the other one served most recently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence

from genrec.item_text import item_text_fields, metadata_values_text
from genrec.textual_ids import canonical_id

from .engine import MintJob, texts_for
from .generation import Generation, dataset_slug
from .redis_clients import STORE_ERRORS
from .registry import ItemRecord, Registry, now_iso

log = logging.getLogger("service.upgrade")

LOCK_TTL_MS = 30_000  # the upgrade lock lapses this long after its holder stopped renewing it
CHUNK = 500  # items (or users) per round trip

# Deletes or renews KEYS[1] only while it holds ARGV[1] (our lock).
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def catalogs_key(dataset: str) -> str:
    return f"genrec:catalogs:{dataset}"


def _dataset(generation: Generation) -> str:
    return dataset_slug(generation.bundle)


async def served_catalogs(client, dataset: str) -> dict[str, dict]:
    """The catalogs of `dataset` that have served, name -> {first_served, last_served, bundle, digest}."""
    raw = await client.hgetall(catalogs_key(dataset))
    found = {}
    for name, value in raw.items():
        try:
            found[name] = json.loads(value)
        except ValueError:
            continue
    return found


async def record_serving(generation: Generation) -> None:
    """Best effort: notes that `generation`'s catalog serves now (the next bundle's start reads
    it). A catalog named by GENREC_CATALOG is no part of the chain of upgrades: not noted."""
    if generation.settings.catalog:
        return
    try:
        client = generation.registry.aio
        key, name = catalogs_key(_dataset(generation)), generation.catalog_name
        entry = json.loads(await client.hget(key, name) or "{}")
        now = time.time()
        entry.update(first_served=entry.get("first_served", now), last_served=now,
                     bundle=generation.model_info.get("bundle"), digest=generation.digest)
        await client.hset(key, name, json.dumps(entry))
    except (*STORE_ERRORS, ValueError) as exc:
        log.warning("could not record the catalog %r as serving: %s", generation.catalog_name, exc)


async def previous_catalog(generation: Generation) -> str | None:
    """The other catalog of the dataset served most recently (GENREC_UPGRADE_FROM, when set;
    none for a catalog named by GENREC_CATALOG, which every bundle shares)."""
    if generation.settings.upgrade_from:
        chosen = generation.settings.upgrade_from
        return None if chosen == generation.catalog_name else chosen
    if generation.settings.catalog:
        return None
    served = await served_catalogs(generation.registry.aio, _dataset(generation))
    others = [(entry.get("last_served", 0), name) for name, entry in served.items() if name != generation.catalog_name]
    return max(others)[1] if others else None


async def carry_over(generation: Generation) -> None:
    """Carries over what the previous catalog knew into `generation`'s (connected, not yet
    serving), then follows the previous catalog's stream; nothing when there is none."""
    previous = await previous_catalog(generation)
    if previous is None:
        return
    upgrade = Upgrade(generation, previous)
    generation.upgrade = upgrade
    generation.user_events_store.fallback_prefix = upgrade.old.prefix
    await upgrade.run()
    upgrade.follow()


class Upgrade:
    """The carrying over from one previous catalog into a generation's."""

    def __init__(self, generation: Generation, previous: str):
        self.generation = generation
        self.previous = previous
        new = generation.registry
        s = generation.settings
        self.old = Registry(new.url, previous, timeout_s=s.redis_timeout_s, replica=new.replica, cluster=s.redis_cluster)
        self.client = new.aio
        self.progress_key = f"{new.prefix}upgraded:{previous}"
        self.lock_key = f"{new.prefix}upgrading"
        self.token = f"{new.replica}:{uuid.uuid4().hex[:8]}"
        self.carried = 0  # items this replica minted under the new namespace
        self.users_copied = 0
        self.seen = "0-0"  # the previous stream's last entry this replica handled
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ the pass

    async def run(self) -> int:
        """One pass under the lock: the previous catalog's items and users (once per pair of
        catalogs), then its stream from where the last pass stopped. Returns the items carried."""
        started, before = time.perf_counter(), self.carried
        await self._lock()
        try:
            progress = await self.client.hgetall(self.progress_key)
            if not progress.get("scanned"):
                await self._carry_scanned()
                await self._copy_users()
                await self.client.hset(self.progress_key, "scanned", now_iso())
            last = progress.get("last_entry", "0-0")
            while True:
                events = await self.old.read_events(last, count=CHUNK)
                if not events:
                    break
                await self._carry([e.item_id for e in events])
                last = events[-1].entry_id
                await self.client.hset(self.progress_key, "last_entry", last)
                await self._renew()
            self.seen = last
        finally:
            await self.client.eval(_UNLOCK, 1, self.lock_key, self.token)
        carried = self.carried - before
        if carried or self.users_copied:
            log.info("carried over %d item(s) and %d user(s) from catalog %r into %r in %.2f s", carried,
                     self.users_copied, self.previous, self.generation.catalog_name, time.perf_counter() - started)
        return carried

    async def _lock(self) -> None:
        """Takes the upgrade lock of the new namespace, waiting while another replica holds it
        (it renews it while it works; a holder that died lets it lapse after LOCK_TTL_MS)."""
        while not await self.client.set(self.lock_key, self.token, nx=True, px=LOCK_TTL_MS):
            await asyncio.sleep(0.1)

    async def _renew(self) -> None:
        await self.client.eval(_RENEW, 1, self.lock_key, self.token, LOCK_TTL_MS)

    async def _carry_scanned(self) -> None:
        """Every item key of the previous namespace (its bundle's items included)."""
        prefix = f"{self.old.prefix}item:"
        batch: list[str] = []
        async for key in self.old.aio.scan_iter(match=f"{_glob_escape(prefix)}*", count=1000):
            batch.append(key[len(prefix):])
            if len(batch) >= CHUNK:
                await self._carry(batch)
                await self._renew()
                batch = []
        if batch:
            await self._carry(batch)

    async def _carry(self, item_ids: Sequence[str]) -> None:
        """Mints under the new namespace those of `item_ids` it lacks."""
        generation = self.generation
        wanted = [i for i in dict.fromkeys(item_ids) if i and i not in generation.catalog]
        if not wanted:
            return
        there = {r.item_id: r for r in await generation.registry.get_items(wanted)}
        for record in there.values():  # carried over by another replica, not followed here yet
            generation._learn(record)
        missing = [r for r in await self.old.get_items([i for i in wanted if i not in there]) if r.textual_id]
        fresh: list[ItemRecord] = []
        for record in missing:
            if not await self._keep_id(record):
                fresh.append(record)
        if fresh:
            await self._mint(fresh)

    async def _keep_id(self, record: ItemRecord) -> bool:
        """Commits `record` under its old textual ID when that is free in the new namespace and
        the new tokenizer writes it the same; False when it needs a new one."""
        generation = self.generation
        canonical = canonical_id(generation.bundle.tokenizer, record.textual_id)
        if canonical is None or canonical[0] != record.textual_id:
            return False
        marker = f"pending:upgrade-{uuid.uuid4().hex}"
        registry = generation.registry
        if not await registry.aio.set(registry.tid_key(record.textual_id), marker, nx=True, px=registry.pending_ttl_ms):
            return False
        tokens = [*canonical[1], generation.engine.eos_token_id]
        result = await registry.commit(record.item_id, record.textual_id, tokens, record.text,
                                       record.metadata, marker)
        self._committed(result)
        return True

    async def _mint(self, records: list[ItemRecord]) -> None:
        """New IDs from the new bundle's method (through the mint batcher), then commits."""
        generation = self.generation
        jobs = []
        for record in records:
            if record.metadata:
                text, vocabulary = texts_for(record.metadata, generation.engine.max_text_chars)
            else:  # a bundle item of the previous catalog: its metadata is its flattened text
                text, vocabulary = record.text, metadata_values_text(item_text_fields(record.text))
            jobs.append(MintJob(record.item_id, text, vocabulary or text))
        minted = await asyncio.gather(*(generation.mint_batcher.submit(job, None) for job in jobs))
        for record, result in zip(records, minted, strict=True):
            outcome = await generation.registry.commit(record.item_id, result.minted.textual_id,
                                                       generation.engine.trie_key(result.minted), record.text,
                                                       record.metadata, result.marker)
            self._committed(outcome)

    def _committed(self, result) -> None:
        self.generation._learned_commit(result)
        if result.created:
            self.carried += 1
            self.generation.metrics.items_carried_over.inc()

    async def _copy_users(self) -> None:
        """Each user's events, copied where the new namespace has none of that user's."""
        prefix = f"{self.old.prefix}user:"
        store = self.generation.user_events_store
        users: list[str] = []
        async for key in self.old.aio.scan_iter(match=f"{_glob_escape(prefix)}*", count=1000):
            users.append(key[len(prefix):])
            if len(users) == CHUNK:
                self.users_copied += await store.copy_users(self.old.prefix, users)
                await self._renew()
                users = []
        self.users_copied += await store.copy_users(self.old.prefix, users)

    # ------------------------------------------------------------------ following

    def follow(self) -> None:
        """Carries over, every GENREC_UPGRADE_FOLLOW_S, what is minted meanwhile in the previous
        catalog (by replicas still serving it)."""
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="genrec-upgrade-follower")

    async def _follow(self) -> None:
        interval = self.generation.settings.upgrade_follow_s
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.old.read_events(self.seen, count=1):
                    await self.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away or a bad entry: try again later
                log.warning("carrying over from catalog %r failed (%s); retrying", self.previous, exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.old.close()


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


FORGET_RECENT_S = 600  # a catalog served this recently is not forgotten without --force


def forget_main(argv: list[str]) -> int:
    """`genrec-serve forget-catalog NAME [--dataset D] [--force]`: deletes every key of the catalog
    namespace NAME (REDIS_URL, REDIS_CLUSTER) and its entry in the catalogs record; refused for a
    catalog that served within the last ten minutes unless --force."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(prog="genrec-serve forget-catalog",
                                     description="Delete a catalog namespace that an upgrade left behind.")
    parser.add_argument("catalog", help="the catalog's name (genrec:{NAME}:), as /readyz or the catalogs record names it")
    parser.add_argument("--force", action="store_true", help="even if it served within the last ten minutes")
    args = parser.parse_args(argv)
    # Only Redis is read here (Settings() would want a bundle too).
    url = os.environ.get("REDIS_URL") or os.environ.get("GENREC_REDIS_URL")
    cluster = (os.environ.get("REDIS_CLUSTER") or os.environ.get("GENREC_REDIS_CLUSTER") or "").lower() == "true"
    if not url:
        print("genrec-serve forget-catalog: set REDIS_URL", file=sys.stderr)
        return 2
    try:
        deleted, refused = asyncio.run(_forget(url, cluster, args.catalog, args.force))
    except STORE_ERRORS as exc:
        print(f"genrec-serve forget-catalog: Redis: {exc}", file=sys.stderr)
        return 1
    if refused:
        print(f"genrec-serve forget-catalog: {refused}", file=sys.stderr)
        return 1
    print(f"deleted {deleted} key(s) of catalog {args.catalog!r}")
    return 0


async def _forget(url: str, cluster: bool, catalog: str, force: bool) -> tuple[int, str | None]:
    registry = Registry(url, catalog, cluster=cluster)
    try:
        client = registry.aio
        records = []
        async for key in client.scan_iter(match="genrec:catalogs:*", count=100):
            entry = await client.hget(key, catalog)
            if entry is not None:
                records.append((key, json.loads(entry)))
        recent = [e for _k, e in records if time.time() - e.get("last_served", 0) < FORGET_RECENT_S]
        if recent and not force:
            return 0, (f"catalog {catalog!r} served within the last {FORGET_RECENT_S // 60} minutes; "
                       "stop every replica serving it first, or pass --force")
        deleted = await registry.delete_namespace()
        for key, _entry in records:
            await client.hdel(key, catalog)
        return deleted, None
    finally:
        await registry.close()
