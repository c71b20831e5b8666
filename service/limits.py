"""Per-client quotas shared by the replicas: fixed-window counters in Redis, for the rate
limits (GENREC_RATE_LIMIT_READ / _WRITE) and for the wrong tokens a client address may send
(GENREC_AUTH_FAILURE_LIMIT). Keys: `genrec:{catalog}:rl:<bucket>:<window>` (the catalog's hash
tag, so a Redis Cluster keeps them in the catalog's slot), each expiring after its window.

A window is aligned on the clock (its index is floor(time / window)), so every replica counts
into the same key. Once a client is over a limit, this replica refuses it from memory for the
rest of the window, without asking Redis again: an attacker's excess requests cost no Redis
round trip.

When Redis does not answer within the lookup budget, the count is kept in this replica's
memory instead, and Redis is left alone for `COOLDOWN_S`: the limits then hold per replica,
not across replicas (with n replicas a client gets up to n times its quota). That is logged
and counted (genrec_rate_limit_local_fallbacks_total); requests are never refused because
Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

log = logging.getLogger("service.limits")

# The shared counter: (name, ttl_s, amount) -> the count after this hit (Registry.count_hit).
CountHit = Callable[[str, int, int], Awaitable[int]]


class Limiter:
    COOLDOWN_S = 5.0
    _PRUNE_AT = 10_000  # buckets kept in memory before old ones are dropped

    def __init__(self, count_hit: CountHit, timeout_s: float, on_fallback: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.count_hit = count_hit
        self.timeout_s = timeout_s
        self.on_fallback = on_fallback
        self.clock = clock
        self._blocked: dict[str, float] = {}  # bucket -> clock time its block ends
        self._local: dict[str, tuple[int, int]] = {}  # bucket -> (window, count), while Redis is away
        self._redis_down_until = 0.0
        self.held = 0  # refusals being held back (service/access.py)

    def blocked_for(self, bucket: str) -> float:
        """Seconds the bucket stays refused (0: not refused)."""
        until = self._blocked.get(bucket)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._blocked[bucket]
            return 0.0
        return left

    async def hit(self, bucket: str, limit: int, window_s: float, cost: int = 1) -> float:
        """Counts `cost` hits of `bucket`; 0 while it is within `limit` this window, else the
        seconds until the window ends (the bucket is refused from memory until then)."""
        now = self.clock()
        window = int(now // window_s)
        count = await self._count(bucket, window, window_s, now, cost)
        if count <= limit:
            return 0.0
        until = (window + 1) * window_s
        self._blocked[bucket] = until
        if len(self._blocked) > self._PRUNE_AT:
            self._blocked = {b: t for b, t in self._blocked.items() if t > now}
        return until - now

    async def _count(self, bucket: str, window: int, window_s: float, now: float, cost: int) -> int:
        if now >= self._redis_down_until:
            try:
                ttl = math.ceil(window_s) + 1
                return await asyncio.wait_for(self.count_hit(f"{bucket}:{window}", ttl, cost), self.timeout_s)
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_down_until = now + self.COOLDOWN_S
                log.warning("rate limits: Redis did not answer (%s); counting in this replica's memory for %.0f s, "
                            "so the limits hold per replica only", exc or type(exc).__name__, self.COOLDOWN_S)
        if self.on_fallback is not None:
            self.on_fallback()
        seen_window, count = self._local.get(bucket, (window, 0))
        count = count + cost if seen_window == window else cost
        self._local[bucket] = (window, count)
        if len(self._local) > self._PRUNE_AT:
            self._local = {b: wc for b, wc in self._local.items() if wc[0] == window}
        return count


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait of `seconds` (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
