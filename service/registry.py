"""The item registry in Redis (docs/design.md, "Redis keys"): who owns which textual ID, item
records, and the stream of minted items every replica follows.

Keys, all under the namespace `genrec:{<catalog>}:` (the braces are a Redis Cluster hash tag,
so the keys of one catalog share a slot: its multi-key scripts stay legal on a cluster):

    tid:<textual_id>  -> item_id            the uniqueness guarantee, taken with SET NX
    item:<item_id>    -> hash {textual_id, token_ids (JSON, EOS included), text,
                               metadata (JSON; "" for bundle items), created_at, source,
                               replica (minted items: which replica minted it)}
    events            -> stream, one entry {item_id, textual_id, token_ids, replica, metadata (JSON)}
                         per minted item (the metadata: so every replica can filter on it at once)
    seeded            -> digest of the bundle whose items were seeded
    uid:<digest>      -> a cached textual user ID (expires)
    confirm           -> written before a WAIT that confirms an existing item (wait_replicas)
    mtext:<digest>    -> hash {base, n}: a metadata text minted before, the base of its first ID
                         and the last suffix number handed to a repeat of it
    rl:<bucket>:<window> -> a fixed-window quota counter (service/limits.py), expiring

A mint claims its ID first (SET NX, value: a pending marker of this claim, expiring after the
pending-claim TTL), then commits it with one Lua script, atomic on the slot's node: if the item
exists already (another replica won) it gives the claim back and returns the existing record;
if the claim is held by someone else it writes nothing; otherwise (the claim is still ours, or
expired with nobody taking the ID meanwhile) it writes the claim's final value (no expiry), the
item hash and the stream entry. A commit that fails is followed by a release of the claim (only
while it still holds the marker), so nothing is left half-written; a replica that dies between
claim and commit leaves its claim for at most the TTL. A commit whose reply was lost and that
the client ran again finds its own record: that is told from a lost race by comparing it.

The same code serves one Redis and a Redis Cluster (service/redis_clients.py): every command
names keys of the one slot, and the scripts are sent with EVAL (not EVALSHA), so a node that
took the slot over by a migration or a failover, whose script cache is empty, runs them too.
With `wait_replicas`, a mint is acknowledged only once that many replicas of the slot's
master have it (WAIT on the connection that wrote it, see `_run_in_slot`). `restore` writes back
an item that a failover lost, from what a service replica holds (the same script, no claim).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AskError, MovedError, TryAgainError
from redis.retry import Retry

try:  # redis-py 7+: maintenance notifications, which plain Redis does not support
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - older redis-py
    MaintNotificationsConfig = None

from genrec.bundle import BundleItem
from genrec.errors import StoreUnavailableError

from .redis_clients import STORE_ERRORS, async_client, sync_client

log = logging.getLogger("service.registry")

USER_ID_TTL_S = 7 * 24 * 3600  # a cached user ID lives a week (it is cheap to regenerate)

# Deletes KEYS[1] only while it still holds ARGV[1] (a claim nobody else has finalised).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Seeds a chunk of bundle items in one call: per item, claim its ID (NX) and write its hash if
# absent. KEYS: tid, item of each item in turn; ARGV: created_at, then the chunk's columns as one
# JSON array [item ids, textual ids, token ids (each already a JSON text), texts]. Returns
# {written, already there, {the chunk positions (1-based) of the items whose ID belongs to
# another item}}. One script a chunk, not one an item (the script text sent and run per item
# was most of the time), one argument a chunk, not four an item, and three numbers back, not
# one an item: at a million items, encoding the arguments and parsing a reply per item were
# most of the service's seeding CPU.
_SEED = """
local columns = cjson.decode(ARGV[2])
local ids, tids, tokens, texts = columns[1], columns[2], columns[3], columns[4]
local written, present, conflicts = 0, 0, {}
for i = 1, #KEYS / 2 do
  local tid, key, id = KEYS[2 * i - 1], KEYS[2 * i], ids[i]
  local owner = redis.call('GET', tid)
  if owner and owner ~= id then
    conflicts[#conflicts + 1] = i
  else
    if not owner then redis.call('SET', tid, id) end
    if redis.call('EXISTS', key) == 1 then
      present = present + 1
    else
      redis.call('HSET', key, 'textual_id', tids[i], 'token_ids', tokens[i], 'text', texts[i],
                 'metadata', '', 'created_at', ARGV[1], 'source', 'bundle')
      written = written + 1
    end
  end
end
return {written, present, conflicts}
"""
# A write in the catalog's slot for WAIT to wait on (KEYS: confirm; ARGV: replica).
_CONFIRM = "return redis.call('SET', KEYS[1], ARGV[1], 'EX', 3600)"
# Commits a claimed ID. KEYS: tid, item, events. ARGV: marker, item_id, textual_id, token_ids,
# text, metadata, created_at, replica. Returns {1, stream entry id} when written, {0, the
# existing item's hash as a flat list} when the item existed (the claim is given back), {-1}
# when the claim no longer holds the marker (nothing written). An empty marker restores an item
# that Redis lost: written unless its ID now belongs to another item ({-1}).
_COMMIT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return {0, redis.call('HGETALL', KEYS[2])}
end
local owner = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if owner and owner ~= ARGV[2] then return {-1} end
elseif owner and owner ~= ARGV[1] then return {-1} end  -- no owner: our claim expired, nobody took it
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'textual_id', ARGV[3], 'token_ids', ARGV[4], 'text', ARGV[5],
           'metadata', ARGV[6], 'created_at', ARGV[7], 'source', 'minted', 'replica', ARGV[8])
return {1, redis.call('XADD', KEYS[3], '*', 'item_id', ARGV[2], 'textual_id', ARGV[3],
                      'token_ids', ARGV[4], 'replica', ARGV[8], 'metadata', ARGV[6])}
"""

# Metadata text minted before: its ID's base and the next suffix number (HINCRBY), or nil. ARGV[1]:
# a base to record first when the text is not known yet ('' : none).
_REPEAT = """
local base = redis.call('HGET', KEYS[1], 'base')
if not base then
  if ARGV[1] == '' then return false end
  redis.call('HSET', KEYS[1], 'base', ARGV[1])
  base = ARGV[1]
end
return {base, redis.call('HINCRBY', KEYS[1], 'n', 1)}
"""


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    textual_id: str
    token_ids: list[int]  # trie key: ID tokens + EOS
    text: str
    metadata: dict | None
    created_at: str
    source: str  # "bundle" | "minted"

    @classmethod
    def from_hash(cls, item_id: str, data: dict[str, str]) -> ItemRecord:
        metadata = data.get("metadata") or ""
        return cls(
            item_id=item_id,
            textual_id=data.get("textual_id", ""),
            token_ids=json.loads(data.get("token_ids") or "[]"),
            text=data.get("text", ""),
            metadata=json.loads(metadata) if metadata else None,
            created_at=data.get("created_at", ""),
            source=data.get("source", ""),
        )


@dataclass(frozen=True)
class MintedEvent:
    """One entry of the events stream."""

    entry_id: str
    item_id: str
    textual_id: str
    token_ids: list[int]
    replica: str = ""  # id of the replica that minted it
    metadata: dict | None = None  # as posted; None when the entry lacks it (older entries)


@dataclass(frozen=True)
class CommitResult:
    record: ItemRecord
    created: bool  # False: the item_id already existed (another request or replica won)
    entry_id: str = ""  # of the item's events stream entry, when this commit wrote it


def namespace(catalog: str) -> str:
    return f"genrec:{{{catalog}}}:"


def id_space_digest(manifest: dict) -> str:
    """Digest of what a bundle's textual IDs depend on (items and tokenizer), from its manifest:
    the default Redis namespace changes when a new bundle brings other IDs, and stays when only
    the recommender changed."""
    files = manifest.get("files", {})
    parts = {k: v for k, v in files.items() if k == "items.jsonl" or k.startswith("tokenizer/")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def dataset_slug(manifest: dict) -> str:
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", str(manifest.get("dataset") or ""))[:40].strip("-")
    return dataset or "catalog"


def default_catalog_name(manifest: dict) -> str:
    """Redis namespace of a bundle's catalog: its dataset and the digest of its ID space."""
    return f"{dataset_slug(manifest)}-{id_space_digest(manifest)}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)


def _aio_retry() -> AsyncRetry:
    return AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), 1)


class ReplicationUnconfirmedError(StoreUnavailableError):
    """The commit was written on the slot's master, but fewer replicas than `wait_replicas`
    confirmed it within the WAIT timeout: a failover now could lose it, so it is not
    acknowledged (a retry with the same item_id finds it). `result`: what this commit wrote
    (None when an existing item was being confirmed)."""

    def __init__(self, item_id: str, confirmed: int, wanted: int, timeout_ms: int,
                 result: CommitResult | None = None):
        super().__init__(f"item {item_id!r} is stored but confirmed by {confirmed} of {wanted} "
                         f"replica(s) within {timeout_ms} ms")
        self.result = result
        self.confirmed = confirmed
        self.wanted = wanted


class Registry:
    """Async access for the event loop, plus synchronous clients for the claims and the user-ID
    cache that the inference thread uses.

    `cluster`: the URL is a Redis Cluster (one or several seed nodes); every client is then a
    redis-py cluster client. `wait_replicas`: acknowledge a mint only once that many replicas
    confirm it (WAIT, at most `wait_timeout_ms`); 0 leaves replication asynchronous.
    """

    # After a failed user-ID cache call, the cache is skipped this long: while Redis is down
    # or hung, the inference thread pays at most one short timeout per window, not one per batch.
    CACHE_COOLDOWN_S = 5.0

    def __init__(self, url: str, catalog: str, timeout_s: float = 5.0, replica: str = "",
                 lookup_timeout_s: float = 0.25, pending_ttl_s: float = 60.0, *, cluster: bool = False,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000):
        self.url = url
        self.pending_ttl_ms = max(1, round(pending_ttl_s * 1000))
        self.cluster = cluster
        self.replica = replica
        self.catalog = catalog
        self.prefix = namespace(catalog)
        self.timeout_s = timeout_s
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        common = dict(
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=min(timeout_s, 2.0),
            health_check_interval=15,
        )
        if MaintNotificationsConfig is not None:
            # Skip the extra handshake per connection that plain Redis answers with an error.
            common["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        self.aio = async_client(url, cluster=cluster, retry=_aio_retry(), **common)
        # XREAD BLOCK holds its connection: a client of its own with a longer read timeout.
        self.follow_client = async_client(url, cluster=cluster, retry=_aio_retry(),
                                          **{**common, "socket_timeout": timeout_s + 5})
        # The synchronous clients are built on first use: a cluster client reads the slot map
        # when it is built, which must not happen before the start has waited for Redis.
        self._sync_options = {
            "sync": dict(common, retry=_retry()),
            # The user-ID cache is optional (a miss is recomputed): short timeouts, no retries.
            "cache": dict(common, socket_timeout=lookup_timeout_s, socket_connect_timeout=lookup_timeout_s,
                          retry=Retry(ExponentialBackoff(), 0)),
        }
        self._sync_clients: dict[str, Any] = {}
        self._sync_lock = threading.Lock()
        self._cache_down_until = 0.0

    def _sync_client(self, name: str):
        client = self._sync_clients.get(name)
        if client is None:
            with self._sync_lock:
                client = self._sync_clients.get(name)
                if client is None:
                    client = sync_client(self.url, cluster=self.cluster, **self._sync_options[name])
                    self._sync_clients[name] = client
        return client

    @property
    def sync(self):
        """The synchronous client of the claims (inference thread)."""
        return self._sync_client("sync")

    @property
    def cache(self):
        """The synchronous client of the user-ID cache: short timeouts, no retries."""
        return self._sync_client("cache")

    # ------------------------------------------------------------------ keys

    def tid_key(self, textual_id: str) -> str:
        return f"{self.prefix}tid:{textual_id}"

    def item_key(self, item_id: str) -> str:
        return f"{self.prefix}item:{item_id}"

    @property
    def events_key(self) -> str:
        return f"{self.prefix}events"

    @property
    def seeded_key(self) -> str:
        return f"{self.prefix}seeded"

    @property
    def confirm_key(self) -> str:
        return f"{self.prefix}confirm"

    # ------------------------------------------------------------------ lifecycle

    async def ping(self) -> bool:
        return bool(await self.aio.ping())

    async def probe(self) -> None:
        """A keyed read in the catalog's slot: it answers only when the node that serves the
        slot now (on a cluster, after redirects) does. A PING carries no key, so on a cluster
        it says nothing about the catalog's slot."""
        await self.aio.get(self.seeded_key)

    async def connect_follower(self) -> None:
        """Opens the follower's connection (to the node of the catalog's slot) before the
        follower task starts (cancelling a task in the middle of redis-py's connection
        handshake can lose the cancellation)."""
        await self.follow_client.exists(self.events_key)

    async def close(self) -> None:
        for client in (self.aio, self.follow_client):
            try:
                await client.aclose()
            except STORE_ERRORS:  # pragma: no cover - closing a broken connection
                pass
        for client in self._sync_clients.values():
            client.close()

    # ------------------------------------------------------------------ seeding and loading

    async def seed(self, items: Sequence[BundleItem], created_at: str, digest: str, chunk: int = 500,
                   in_flight: int = 4, pipelines: int = 3) -> dict:
        """Writes the bundle's items (idempotent, NX); skipped when this bundle was seeded before.
        One script call a chunk of items, `in_flight` chunks to a pipeline (one round trip), and
        up to `pipelines` pipelines on the wire at once: the next one is built (Python, this
        process) while Redis runs the previous (its own process, the other core)."""
        if await self.aio.get(self.seeded_key) == digest:
            return {"written": 0, "present": len(items), "conflicts": 0, "skipped": True}
        counts = {"written": 0, "present": 0, "conflicts": 0}
        pending: set[asyncio.Task] = set()
        try:
            for start in range(0, len(items), chunk * in_flight):
                batches = [items[at : at + chunk]
                           for at in range(start, min(start + chunk * in_flight, len(items)), chunk)]
                pending.add(asyncio.ensure_future(self._seed_round(batches, created_at, counts)))
                if len(pending) >= pipelines:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    _raise_first_error(done)
            if pending:
                done, pending = await asyncio.wait(pending)
                _raise_first_error(done)
        finally:
            for task in pending:
                task.cancel()
        await self.aio.set(self.seeded_key, digest)
        return {**counts, "skipped": False}

    async def _seed_round(self, batches: list[Sequence[BundleItem]], created_at: str, counts: dict) -> None:
        """One pipelined round trip of seeding scripts, one a batch; adds their outcome to `counts`."""
        pipe = self.aio.pipeline(transaction=False)
        for batch in batches:
            keys: list[str] = []
            for item in batch:
                keys += (self.tid_key(item.textual_id), self.item_key(item.item_id))
            columns = ([item.item_id for item in batch], [item.textual_id for item in batch],
                       [json.dumps(item.token_ids) for item in batch], [item.text for item in batch])
            pipe.eval(_SEED, len(keys), *keys, created_at, json.dumps(columns, ensure_ascii=False))
        for batch, (written, present, conflicts) in zip(batches, await pipe.execute(), strict=True):
            counts["written"] += written
            counts["present"] += present
            counts["conflicts"] += len(conflicts)
            for position in conflicts:
                item = batch[position - 1]
                log.warning("bundle item %r: its textual ID %r belongs to another item in Redis",
                            item.item_id, item.textual_id)

    async def read_events(self, after: str = "0-0", count: int = 500, block_ms: int | None = None) -> list[MintedEvent]:
        """Stream entries after `after`; with block_ms, waits that long for the first one."""
        if block_ms is None:
            rows = await self.aio.xrange(self.events_key, min=f"({after}" if after != "0-0" else "-", count=count)
        else:
            found = await self.follow_client.xread({self.events_key: after}, count=count, block=block_ms)
            rows = found[0][1] if found else []
        return [_event(entry_id, fields) for entry_id, fields in rows]

    async def latest_event_up_to(self, entry_id: str) -> str:
        """The id of the newest entry at or before `entry_id` ("0-0": none). Entries are never
        deleted, so anything but `entry_id` itself means entries were lost."""
        rows = await self.aio.xrevrange(self.events_key, max=entry_id, min="-", count=1)
        return rows[0][0] if rows else "0-0"

    async def load_events(self, page: int = 1000) -> tuple[list[MintedEvent], str]:
        """Every minted item so far and the id of the last entry (to follow from)."""
        events: list[MintedEvent] = []
        last = "0-0"
        while True:
            rows = await self.read_events(last, count=page)
            if not rows:
                return events, last
            events.extend(rows)
            last = rows[-1].entry_id

    # ------------------------------------------------------------------ reads

    async def get_item(self, item_id: str) -> ItemRecord | None:
        data = await self.aio.hgetall(self.item_key(item_id))
        return ItemRecord.from_hash(item_id, data) if data else None

    async def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord]:
        """The records of those ids that exist (one round trip)."""
        pipe = self.aio.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(self.item_key(item_id))
        found = await pipe.execute()
        return [ItemRecord.from_hash(i, data) for i, data in zip(item_ids, found, strict=True) if data]

    async def owner_of(self, textual_id: str) -> str | None:
        return await self.aio.get(self.tid_key(textual_id))

    # ------------------------------------------------------------------ user IDs

    def user_id_key(self, digest: str) -> str:
        return f"{self.prefix}uid:{digest}"

    @property
    def cache_available(self) -> bool:
        """False during the cool-down after a failed cache call (the cache is skipped then)."""
        return time.monotonic() >= self._cache_down_until

    def _cache_failed(self, action: str, exc: Exception) -> None:
        self._cache_down_until = time.monotonic() + self.CACHE_COOLDOWN_S
        log.warning("user ID cache %s failed (%s); skipping the cache for %.0f s", action, exc, self.CACHE_COOLDOWN_S)

    def get_user_ids_sync(self, digests: Sequence[str]) -> list[list[int] | None]:
        """The cached textual user IDs (token ids) of a batch of history digests in one round
        trip (MGET; the keys share the catalog's slot); None for each one absent, unreadable, or
        when Redis cannot answer within the lookup timeout (the caller then generates it, which
        gives the same ID: the cache only saves the generator's time)."""
        if not digests or not self.cache_available:
            return [None] * len(digests)
        try:
            raws = self.cache.mget([self.user_id_key(d) for d in digests])
        except STORE_ERRORS as exc:
            self._cache_failed("read", exc)
            return [None] * len(digests)
        return [_parse_token_list(raw) for raw in raws]

    def set_user_ids_sync(self, tokens_by_digest: dict[str, Sequence[int]], ttl_s: int = USER_ID_TTL_S) -> None:
        """Best effort: caches a batch of user IDs for `ttl_s` seconds in one pipelined round
        trip (skipped while the cache is down)."""
        if not tokens_by_digest or not self.cache_available:
            return
        try:
            pipe = self.cache.pipeline(transaction=False)
            for digest, tokens in tokens_by_digest.items():
                pipe.set(self.user_id_key(digest), json.dumps([int(t) for t in tokens]), ex=ttl_s)
            pipe.execute()
        except STORE_ERRORS as exc:
            self._cache_failed("write", exc)

    # ------------------------------------------------------------------ minting

    def claim_sync(self, textual_id: str, marker: str) -> bool:
        """SET NX from the inference thread, expiring after the pending-claim TTL: True when the
        ID was free and is now ours. `marker` must be this claim's own: when the reply to the SET
        was lost and the client retried it, the retry finds the ID taken, by this claim itself
        when it holds the marker."""
        key = self.tid_key(textual_id)
        try:
            return bool(self.sync.set(key, marker, nx=True, px=self.pending_ttl_ms)) or self.sync.get(key) == marker
        except STORE_ERRORS as exc:
            raise StoreUnavailableError(f"cannot claim a textual ID: {exc}") from exc

    def release_sync(self, textual_ids: Iterable[str], marker: str) -> None:
        """Best effort: gives back claims that still hold `marker`."""
        for textual_id in textual_ids:
            try:
                self.sync.eval(_RELEASE, 1, self.tid_key(textual_id), marker)
            except STORE_ERRORS as exc:
                log.warning("could not release the claim on %r: %s", textual_id, exc)

    async def release(self, textual_id: str, marker: str) -> None:
        try:
            await self.aio.eval(_RELEASE, 1, self.tid_key(textual_id), marker)
        except STORE_ERRORS as exc:
            log.warning("could not release the claim on %r: %s", textual_id, exc)

    async def commit(
        self,
        item_id: str,
        textual_id: str,
        token_ids: Sequence[int],
        text: str,
        metadata: dict,
        marker: str,
    ) -> CommitResult:
        """Finalises a claimed ID: tid value, item hash and stream entry in one atomic script.

        If the item_id exists already (another request or replica won the race), the claim
        is released and the existing record returned, unless it is the very record this commit
        wrote (the script ran, its reply was lost and the client ran it again): then the item was
        created here. A claim that expired (a mint slower than the pending-claim TTL) is taken
        back if nobody took the ID meanwhile. On a Redis failure the claim is released (when
        Redis still answers) and StoreUnavailableError raised. With `wait_replicas`, a new item
        that fewer replicas confirm in time raises ReplicationUnconfirmedError (it stays
        written: a retry finds it).
        """
        record = ItemRecord(
            item_id=item_id,
            textual_id=textual_id,
            token_ids=[int(t) for t in token_ids],
            text=text,
            metadata=metadata,
            created_at=now_iso(),
            source="minted",
        )
        try:
            outcome, confirmed = await self._run_commit(record, marker)
        except STORE_ERRORS as exc:
            await self.release(textual_id, marker)
            raise StoreUnavailableError(f"cannot store item {item_id!r}: {exc}") from exc
        status = int(outcome[0])
        if status == 0:
            flat = outcome[1]
            existing = ItemRecord.from_hash(item_id, dict(zip(flat[::2], flat[1::2], strict=True)))
            await self.confirm(item_id)  # the winner's commit may not be on the replicas yet
            return CommitResult(existing, created=existing == record)
        if status < 0:
            await self.release(textual_id, marker)
            raise StoreUnavailableError(f"the claim on {textual_id!r} was lost before it was committed")
        result = CommitResult(record, created=True, entry_id=str(outcome[1]))
        if confirmed is not None and confirmed < self.wait_replicas:
            raise ReplicationUnconfirmedError(item_id, confirmed, self.wait_replicas, self.wait_timeout_ms, result)
        return result

    async def restore(self, record: ItemRecord) -> int:
        """Writes back a minted item that Redis lost (a failover to a replica that had not
        received it) from what a service replica holds: 1 when restored (with a new stream
        entry), 0 when Redis has the item, -1 when its textual ID now belongs to another item."""
        outcome, _confirmed = await self._run_commit(record, marker="")
        return int(outcome[0])

    async def confirm(self, item_id: str) -> None:
        """With `wait_replicas`: returns once that many replicas have everything written to the
        catalog's slot so far (a write of the `confirm` key, then WAIT: replication is in
        order, so they have the item too); ReplicationUnconfirmedError past the timeout. An
        existing item is confirmed this way before a mint request is answered with it."""
        if not self.wait_replicas:
            return
        _outcome, confirmed = await self._run_in_slot(_CONFIRM, (self.confirm_key,), (self.replica,))
        if confirmed < self.wait_replicas:
            raise ReplicationUnconfirmedError(item_id, confirmed, self.wait_replicas, self.wait_timeout_ms)

    async def _run_commit(self, record: ItemRecord, marker: str) -> tuple[list, int | None]:
        keys = (self.tid_key(record.textual_id), self.item_key(record.item_id), self.events_key)
        metadata = "" if record.metadata is None else json.dumps(record.metadata, ensure_ascii=False)
        args = (marker, record.item_id, record.textual_id, json.dumps(record.token_ids), record.text, metadata,
                record.created_at, self.replica)
        return await self._run_in_slot(_COMMIT, keys, args)

    async def _run_in_slot(self, script: str, keys: Sequence[str], args: Sequence[str]) -> tuple[Any, int | None]:
        """Runs a write script on the catalog's slot, followed, with `wait_replicas`, by WAIT on
        the same connection (WAIT counts the replicas that have that connection's writes):
        (the script's answer, how many replicas confirmed it, or None without WAIT)."""
        if not self.cluster:
            pipe = self.aio.pipeline(transaction=False)
            pipe.eval(script, len(keys), *keys, *args)
            if self.wait_replicas:
                pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            outcome, *rest = await pipe.execute()
            return outcome, (int(rest[0]) if rest else None)
        # A cluster pipeline runs each node's commands on one connection of that node: the
        # script and WAIT both go to the node that serves the slot as far as the client knows.
        # Redirects are not followed inside the pipeline (the script would run elsewhere than
        # WAIT); after one the commit is sent again, as is a commit refused while the slot is
        # being migrated (TRYAGAIN: its keys are split between the two nodes; ASK: the target
        # must create the item), until the Redis timeout: a migration delays mints, it does not
        # fail them.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            await self.aio.initialize()  # a no-op while the slot map is known
            node = self.aio.get_node_from_key(keys[0])
            pipe = self.aio.pipeline(transaction=False)
            pipe.eval(script, len(keys), *keys, *args)
            if self.wait_replicas:
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms, target_nodes=node)
            try:
                outcome, *rest = await pipe.execute(allow_redirections=False)
                return outcome, (int(rest[0]) if rest else None)
            except (AskError, TryAgainError) as exc:  # MovedError is an AskError
                if loop.time() >= deadline:
                    raise
                if isinstance(exc, MovedError):
                    await self.aio.exists(keys[0])  # follows the redirect: the client learns the slot's new node
                else:
                    await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ quotas and repeated metadata

    async def count_hit(self, name: str, ttl_s: int, amount: int = 1) -> int:
        """INCRBY of the counter `rl:<name>`, which expires after ttl_s seconds (the fixed-window
        quotas of service/limits.py); one round trip."""
        key = f"{self.prefix}rl:{name}"
        pipe = self.aio.pipeline(transaction=False)
        pipe.incrby(key, amount)
        pipe.expire(key, ttl_s)
        count, _ = await pipe.execute()
        return int(count)

    def text_key(self, digest: str) -> str:
        return f"{self.prefix}mtext:{digest}"

    async def repeat_of(self, digest: str, known_base: str = "") -> tuple[str, int] | None:
        """For metadata text (by digest) minted before: (the base its ID was made from, a fresh
        number n >= 1 to start the numeric suffix after); None when the text is new. A
        `known_base` (a bundle item's ID with this text) records the text first."""
        found = await self.aio.eval(_REPEAT, 1, self.text_key(digest), known_base)  # EVAL: see the docstring
        return (found[0], int(found[1])) if found else None

    async def remember_text(self, digest: str, base: str) -> None:
        """Records the base of the first ID minted from this metadata text (the first one wins)."""
        await self.aio.hsetnx(self.text_key(digest), "base", base)

    # ------------------------------------------------------------------ tests / operations

    async def delete_namespace(self) -> int:
        """Deletes every key of this catalog (tests; never called by the service)."""
        deleted = 0
        async for key in self.aio.scan_iter(match=f"{_glob_escape(self.prefix)}*", count=1000):
            deleted += await self.aio.delete(key)
        return deleted


def _raise_first_error(done: Iterable[asyncio.Task]) -> None:
    """Raises the first error of finished tasks, having read every one's (so none is logged as
    never retrieved)."""
    errors = [error for task in done if (error := task.exception()) is not None]
    if errors:
        raise errors[0]


def _event(entry_id: str, fields: dict[str, str]) -> MintedEvent:
    """A stream entry as an event; a malformed one gets no token ids (the follower skips it
    and moves on, instead of failing on the same entry forever)."""
    try:
        token_ids = [int(t) for t in json.loads(fields.get("token_ids") or "[]")]
    except (ValueError, TypeError):
        token_ids = []
    return MintedEvent(
        entry_id=entry_id,
        item_id=fields.get("item_id", ""),
        textual_id=fields.get("textual_id", ""),
        token_ids=token_ids,
        replica=fields.get("replica", ""),
        metadata=_metadata(fields.get("metadata")),
    )


def _metadata(raw: str | None) -> dict | None:
    """A stream entry's metadata; None when it is absent or malformed (the item is still added,
    it only matches no filter)."""
    try:
        metadata = json.loads(raw) if raw else None
    except ValueError:
        return None
    return metadata if isinstance(metadata, dict) else None


def _parse_token_list(raw: str | bytes | None) -> list[int] | None:
    """A cached user ID back from its JSON list; None when absent or not a list of ints."""
    if raw is None:
        return None
    try:
        return [int(t) for t in json.loads(raw)]
    except (ValueError, TypeError):
        return None


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
