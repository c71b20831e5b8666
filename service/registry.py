"""The item registry in Redis (docs/design.md, "Redis keys"): who owns which textual ID, item
records, and the stream of minted items every replica follows.

Keys, all under the namespace `genrec:{<catalog>}:` (the braces are a Redis Cluster hash tag,
so the keys of one catalog share a slot and its MULTI/EXEC transactions stay legal there):

    tid:<textual_id>  -> item_id            the uniqueness guarantee, taken with SET NX
    item:<item_id>    -> hash {textual_id, token_ids (JSON, EOS included), text,
                               metadata (JSON; "" for bundle items), created_at, source,
                               replica (minted items: which replica minted it)}
    events            -> stream, one entry {item_id, textual_id, token_ids, replica} per minted item
    seeded            -> digest of the bundle whose items were seeded
    mtext:<digest>    -> hash {base, n}: a metadata text minted before, the base of its first ID
                         and the last suffix number handed to a repeat of it
    rl:<bucket>:<window> -> a fixed-window quota counter (service/limits.py), expiring

A mint claims its ID first (SET NX, value: a pending marker of its batch), then writes the
claim's final value, the item hash and the stream entry in one MULTI/EXEC, watching the item
key so two replicas minting the same item_id at once end with one winner. If the transaction
fails or loses, the claim is deleted again (only while it still holds the marker), so nothing
is left half-written.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, WatchError
from redis.retry import Retry

try:  # redis-py 7+: maintenance notifications, which plain Redis does not support
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - older redis-py
    MaintNotificationsConfig = None

from genrec.bundle import BundleItem
from genrec.errors import StoreUnavailableError

log = logging.getLogger("service.registry")

USER_ID_TTL_S = 7 * 24 * 3600  # a cached user ID lives a week (it is cheap to regenerate)

# Deletes KEYS[1] only while it still holds ARGV[1] (a claim nobody else has finalised).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Seeds one bundle item: claim its ID (NX) and write its hash if absent.
# Returns 1 when written, 0 when already there, -1 when the ID belongs to another item.
_SEED = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return -1 end
if not owner then redis.call('SET', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'textual_id', ARGV[2], 'token_ids', ARGV[3], 'text', ARGV[4],
           'metadata', '', 'created_at', ARGV[5], 'source', 'bundle')
return 1
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


@dataclass(frozen=True)
class CommitResult:
    record: ItemRecord
    created: bool  # False: the item_id already existed (another request or replica won)


def namespace(catalog: str) -> str:
    return f"genrec:{{{catalog}}}:"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)


def _aio_retry() -> AsyncRetry:
    return AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), 1)


class Registry:
    """Async access for the event loop, plus a synchronous client for the claims that the
    minting loop makes from the inference thread."""

    # After a failed user-ID cache call, the cache is skipped this long: while Redis is down
    # or hung, the inference thread pays at most one short timeout per window, not one per batch.
    CACHE_COOLDOWN_S = 5.0

    def __init__(self, url: str, catalog: str, timeout_s: float = 5.0, replica: str = "",
                 lookup_timeout_s: float = 0.25):
        self.url = url
        self.replica = replica
        self.catalog = catalog
        self.prefix = namespace(catalog)
        common = dict(
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=min(timeout_s, 2.0),
            health_check_interval=15,
        )
        if MaintNotificationsConfig is not None:
            # Skip the extra handshake per connection that plain Redis answers with an error.
            common["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        self.aio = aioredis.Redis.from_url(url, retry=_aio_retry(), **common)
        # XREAD BLOCK holds its connection: a client of its own with a longer read timeout.
        self.follow_client = aioredis.Redis.from_url(url, retry=_aio_retry(), **{**common, "socket_timeout": timeout_s + 5})
        self.sync = redis.Redis.from_url(url, retry=_retry(), **common)
        # The user-ID cache is optional (a miss is recomputed): short timeouts, no retries.
        self.cache = redis.Redis.from_url(
            url,
            **{**common, "socket_timeout": lookup_timeout_s, "socket_connect_timeout": lookup_timeout_s},
            retry=Retry(ExponentialBackoff(), 0),
        )
        self._cache_down_until = 0.0
        self._release_sync = self.sync.register_script(_RELEASE)
        self._release_aio = self.aio.register_script(_RELEASE)
        self._seed_script = self.aio.register_script(_SEED)
        self._repeat_script = self.aio.register_script(_REPEAT)

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

    # ------------------------------------------------------------------ lifecycle

    async def ping(self) -> bool:
        return bool(await self.aio.ping())

    async def connect_follower(self) -> None:
        """Opens the follower's connection before the follower task starts (cancelling a task
        in the middle of redis-py's connection handshake can lose the cancellation)."""
        await self.follow_client.ping()

    async def close(self) -> None:
        for client in (self.aio, self.follow_client):
            try:
                await client.aclose()
            except (RedisError, OSError):  # pragma: no cover - closing a broken connection
                pass
        self.sync.close()
        self.cache.close()

    # ------------------------------------------------------------------ seeding and loading

    async def seed(self, items: Sequence[BundleItem], created_at: str, digest: str, chunk: int = 500) -> dict:
        """Writes the bundle's items (idempotent, NX); skipped when this bundle was seeded before."""
        if await self.aio.get(self.seeded_key) == digest:
            return {"written": 0, "present": len(items), "conflicts": 0, "skipped": True}
        written = present = conflicts = 0
        for start in range(0, len(items), chunk):
            pipe = self.aio.pipeline(transaction=False)
            batch = items[start : start + chunk]
            for item in batch:
                await self._seed_script(
                    keys=[self.tid_key(item.textual_id), self.item_key(item.item_id)],
                    args=[item.item_id, item.textual_id, json.dumps(list(item.token_ids)), item.text, created_at],
                    client=pipe,
                )
            results = await pipe.execute()
            for item, result in zip(batch, results, strict=True):
                if result == 1:
                    written += 1
                elif result == 0:
                    present += 1
                else:
                    conflicts += 1
                    log.warning("bundle item %r: its textual ID %r belongs to another item in Redis",
                                item.item_id, item.textual_id)
        await self.aio.set(self.seeded_key, digest)
        return {"written": written, "present": present, "conflicts": conflicts, "skipped": False}

    async def read_events(self, after: str = "0-0", count: int = 500, block_ms: int | None = None) -> list[MintedEvent]:
        """Stream entries after `after`; with block_ms, waits that long for the first one."""
        if block_ms is None:
            rows = await self.aio.xrange(self.events_key, min=f"({after}" if after != "0-0" else "-", count=count)
        else:
            found = await self.follow_client.xread({self.events_key: after}, count=count, block=block_ms)
            rows = found[0][1] if found else []
        return [_event(entry_id, fields) for entry_id, fields in rows]

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
        trip (MGET); None for each one absent, unreadable, or when Redis cannot answer within
        the lookup timeout (the caller then generates it, which gives the same ID: the cache
        only saves the generator's time)."""
        if not digests or not self.cache_available:
            return [None] * len(digests)
        try:
            raws = self.cache.mget([self.user_id_key(d) for d in digests])
        except (RedisError, OSError) as exc:
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
        except (RedisError, OSError) as exc:
            self._cache_failed("write", exc)

    # ------------------------------------------------------------------ minting

    def claim_sync(self, textual_id: str, marker: str) -> bool:
        """SET NX from the inference thread: True when the ID was free and is now ours."""
        try:
            return bool(self.sync.set(self.tid_key(textual_id), marker, nx=True))
        except RedisError as exc:
            raise StoreUnavailableError(f"cannot claim a textual ID: {exc}") from exc

    def release_sync(self, textual_ids: Iterable[str], marker: str) -> None:
        """Best effort: gives back claims that still hold `marker`."""
        for textual_id in textual_ids:
            try:
                self._release_sync(keys=[self.tid_key(textual_id)], args=[marker])
            except RedisError as exc:
                log.warning("could not release the claim on %r: %s", textual_id, exc)

    async def release(self, textual_id: str, marker: str) -> None:
        try:
            await self._release_aio(keys=[self.tid_key(textual_id)], args=[marker])
        except RedisError as exc:
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
        """Finalises a claimed ID: tid value, item hash and stream entry in one transaction.

        If the item_id exists already (another request or replica won the race), the claim
        is released and the existing record returned. On a Redis failure the claim is
        released (when Redis still answers) and StoreUnavailableError raised.
        """
        tid_key, item_key = self.tid_key(textual_id), self.item_key(item_id)
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
            async with self.aio.pipeline(transaction=True) as pipe:
                await pipe.watch(item_key, tid_key)
                existing = await pipe.hgetall(item_key)
                owner = await pipe.get(tid_key)
                if existing or owner != marker:
                    await pipe.unwatch()
                    await self.release(textual_id, marker)
                    if existing:
                        return CommitResult(ItemRecord.from_hash(item_id, existing), created=False)
                    raise StoreUnavailableError(f"the claim on {textual_id!r} was lost before it was committed")
                pipe.multi()
                pipe.set(tid_key, item_id)
                pipe.hset(
                    item_key,
                    mapping={
                        "textual_id": textual_id,
                        "token_ids": json.dumps(record.token_ids),
                        "text": text,
                        "metadata": json.dumps(metadata, ensure_ascii=False),
                        "created_at": record.created_at,
                        "source": "minted",
                        "replica": self.replica,
                    },
                )
                pipe.xadd(
                    self.events_key,
                    {
                        "item_id": item_id,
                        "textual_id": textual_id,
                        "token_ids": json.dumps(record.token_ids),
                        "replica": self.replica,
                    },
                )
                await pipe.execute()
            return CommitResult(record, created=True)
        except WatchError:
            await self.release(textual_id, marker)
            existing_record = await self.get_item(item_id)
            if existing_record is None:
                raise StoreUnavailableError(f"item {item_id!r} changed while it was being committed") from None
            return CommitResult(existing_record, created=False)
        except RedisError as exc:
            await self.release(textual_id, marker)
            raise StoreUnavailableError(f"cannot store item {item_id!r}: {exc}") from exc

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
        found = await self._repeat_script(keys=[self.text_key(digest)], args=[known_base])
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
    )


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
