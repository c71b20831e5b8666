"""Each user's latest interactions, kept in Redis so that a recommendation can be asked for a user
id alone, on any replica (docs/design.md, "Redis keys"; docs/api.md, "Users and events").

Keys, under the catalog's namespace `genrec:{<catalog>}:` (one Redis Cluster slot: a batch of
events, whatever its users, is one atomic script):

    user:<user_id>   -> sorted set: the user's latest events, score = the event's timestamp (unix
                        seconds), member = "<16 hex digits: arrival number>:<item_id>" (events with
                        the same timestamp keep their arrival order; the same item may appear
                        several times). At most `keep` events: the newest by timestamp.
    uevid:<user_id>  -> sorted set: the user's event ids seen, score = when received (ms, Redis
                        clock); an id is forgotten `id_ttl_ms` after it was received, and past the
                        user's newest `ids_per_user` ids; the key expires with its newest id.
    eseq             -> the catalog's arrival counter (INCR per stored event), which numbers the
                        members of every `user:<user_id>`; it starts at SEQ_START, above the
                        per-user counters (`useq:<user_id>`) that numbered the members before it

One counter for the whole catalog, rather than one per user, gives an export its boundary in one
read (service/export.py): the events stored before it are exactly the members numbered up to the
counter's value then, whichever user they belong to (a batch of events is one script, so it is
wholly before or wholly after).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SEQ_DIGITS = 16  # the arrival number's width in a member: "<seq>:<item_id>"
# The first value of the catalog's counter: above any per-user counter of the members stored
# before it (so they count as stored before any export boundary), far below 2^53 (Lua numbers).
SEQ_START = 1 << 48

# Adds a batch of events. KEYS: the catalog's counter, then per user (in ARGV's user numbering,
# from 0) its events and event-id keys. ARGV: keep, id_ttl_ms, ids_per_user, SEQ_START (the counter's
# first value), then per event its user's number, item id, timestamp ('' : now, by the Redis clock) and event id ('' : none). Returns {accepted,
# duplicates}. An event whose id the user sent within id_ttl_ms is a duplicate: not stored again.
_ADD_EVENTS = """
local keep, id_ttl, id_cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local accepted, duplicates, touched = 0, 0, {}
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[4]) end
for i = 5, #ARGV, 4 do
  local base = tonumber(ARGV[i]) * 2 + 1
  local event_id = ARGV[i + 3]
  local fresh = true
  if event_id ~= '' then
    local seen = redis.call('ZSCORE', KEYS[base + 2], event_id)
    if seen and tonumber(seen) > now_ms - id_ttl then
      fresh = false
    else
      redis.call('ZADD', KEYS[base + 2], now_ms, event_id)
    end
  end
  if fresh then
    local ts = ARGV[i + 2]
    if ts == '' then ts = now_s end
    local seq = redis.call('INCR', KEYS[1])
    redis.call('ZADD', KEYS[base + 1], ts, string.format('%0""" + str(SEQ_DIGITS) + """x', seq) .. ':' .. ARGV[i + 1])
    accepted = accepted + 1
  else
    duplicates = duplicates + 1
  end
  touched[base] = true
end
for base in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', KEYS[base + 1], 0, -keep - 1)
  if redis.call('EXISTS', KEYS[base + 2]) == 1 then
    redis.call('ZREMRANGEBYSCORE', KEYS[base + 2], '-inf', now_ms - id_ttl)
    redis.call('ZREMRANGEBYRANK', KEYS[base + 2], 0, -id_cap - 1)
    redis.call('PEXPIRE', KEYS[base + 2], id_ttl)
  end
end
return {accepted, duplicates}
"""


def seq_key(prefix: str) -> str:
    """The catalog's arrival counter, under its namespace `prefix`."""
    return f"{prefix}eseq"


def member_seq(member: str) -> int:
    """The arrival number of a `user:<user_id>` member."""
    return int(member[:SEQ_DIGITS], 16)


def member_item(member: str) -> str:
    """The item id of a `user:<user_id>` member."""
    return member[SEQ_DIGITS + 1 :]


# Sets KEYS[1] to ARGV[1] unless it holds a larger number already.
_RAISE_TO = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""


@dataclass(frozen=True)
class UserEvent:
    """One interaction as posted: timestamp None is now (the Redis clock), event_id None has none."""

    user_id: str
    item_id: str
    timestamp: float | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    item_id: str
    timestamp: float


class UserEventStore:
    """The users' latest events of one catalog (`prefix`: its namespace), on an async Redis client
    (or cluster client: every key of a call is in the catalog's slot)."""

    def __init__(self, client, prefix: str, keep: int, id_ttl_s: float, ids_per_user: int,
                 fallback_prefix: str | None = None):
        self.client = client
        self.prefix = prefix
        # The previous catalog's namespace after an upgrade (service/upgrade.py): a user with no
        # events here is read from there, and copied here before the first events stored here.
        self.fallback_prefix = fallback_prefix
        self.keep = keep
        self.id_ttl_ms = max(1, round(id_ttl_s * 1000))
        self.ids_per_user = ids_per_user

    def events_key(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    def ids_key(self, user_id: str) -> str:
        return f"{self.prefix}uevid:{user_id}"

    @property
    def seq_key(self) -> str:
        return seq_key(self.prefix)

    async def add(self, events: Sequence[UserEvent]) -> tuple[int, int]:
        """(accepted, duplicates): the whole batch in one script, atomic on the slot's node. Without
        an event_id a retried batch is stored again; with one, a repeat is not."""
        users: dict[str, int] = {}
        args: list[str | int] = [self.keep, self.id_ttl_ms, self.ids_per_user, SEQ_START]
        for event in events:
            number = users.setdefault(event.user_id, len(users))
            timestamp = "" if event.timestamp is None else repr(float(event.timestamp))
            args += [number, event.item_id, timestamp, event.event_id or ""]
        if self.fallback_prefix is not None:
            await self._carry_over(list(users))
        keys = [self.seq_key] + [key for user in users for key in (self.events_key(user), self.ids_key(user))]
        accepted, duplicates = await self.client.eval(_ADD_EVENTS, len(keys), *keys, *args)
        return int(accepted), int(duplicates)

    async def history(self, user_id: str, last: int | None = None) -> list[StoredEvent]:
        """The user's stored events, oldest first (the newest `last` of them); [] for a user
        with none."""
        start = -last if last else 0
        rows = await self.client.zrange(self.events_key(user_id), start, -1, withscores=True)
        if not rows and self.fallback_prefix is not None:
            rows = await self.client.zrange(f"{self.fallback_prefix}user:{user_id}", start, -1, withscores=True)
        return [StoredEvent(member_item(member), float(score)) for member, score in rows]

    async def _carry_over(self, user_ids: list[str]) -> None:
        """Copies, before their first events are stored here, the users' events from the
        previous namespace."""
        await self.copy_users(self.fallback_prefix, user_ids)

    async def copy_users(self, prefix: str, user_ids: Sequence[str]) -> int:
        """Merges the users' events and event ids stored under `prefix` into this namespace, for
        each user this one holds no events of; how many users it copied. Members keep their
        arrival numbers, and the catalog's counter here (`eseq`) is raised to the one there, so
        events stored later sort after them and an export's boundary (service/export.py) counts
        the copied events as stored before it. Three round trips whatever the number of users
        (an upgrade copies them CHUNK at a time: one at a time, 1,368 users took 19 s)."""
        user_ids = list(dict.fromkeys(user_ids))  # a SCAN may return a key twice
        if not user_ids:
            return 0
        check = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            check.exists(self.events_key(user_id))
        absent = [u for u, present in zip(user_ids, await check.execute(), strict=True) if not present]
        if not absent:
            return 0
        read = self.client.pipeline(transaction=False)
        read.get(seq_key(prefix))
        for user_id in absent:
            read.zrange(f"{prefix}user:{user_id}", 0, -1, withscores=True)
            read.zrange(f"{prefix}uevid:{user_id}", 0, -1, withscores=True)
            read.pttl(f"{prefix}uevid:{user_id}")
        seq, *rows = await read.execute()
        write = self.client.pipeline(transaction=False)
        copied = 0
        for n, user_id in enumerate(absent):
            events, ids, ids_ttl = rows[3 * n:3 * n + 3]
            if not events:
                continue
            copied += 1
            write.zadd(self.events_key(user_id), dict(events))
            if ids:
                write.zadd(self.ids_key(user_id), dict(ids))
                write.pexpire(self.ids_key(user_id), ids_ttl if ids_ttl and ids_ttl > 0 else self.id_ttl_ms)
        if copied and seq is not None:
            write.eval(_RAISE_TO, 1, self.seq_key, int(seq))
        if copied:
            await write.execute()
        return copied
