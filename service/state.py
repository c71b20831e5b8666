"""What one app instance holds, apart from HTTP: `ServiceState` and the lifespan that starts and
stops it, kept out of the routes so the lifecycle reads on its own.

The process holds the settings, the metrics, the quotas, the threads (one for recommendations,
one for mints; GENREC_MINT_THREAD=false puts both on one) and an embedded Redis when there is no
REDIS_URL. Everything that depends on the bundle (the bundle, the catalog and its Redis
namespace, the engine, the follower, the batchers) is one serving `Generation`
(service/generation.py), which answers the requests. A request takes the generation that serves
when it starts (`lease`) and finishes on it; a reload (service/reload.py) builds the next one
beside it and swaps them atomically.

Start: load the bundle, connect Redis (or start the embedded one), seed the bundle's items,
load the items minted so far from the events stream, carry over what an earlier catalog of the
dataset knew (service/upgrade.py), then follow the stream. Nothing heavy happens at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI

from .embedded_redis import EmbeddedRedis
from .errors import ApiError
from .generation import Generation
from .limits import Limiter
from .metrics import ServiceMetrics
from .redis_clients import STORE_ERRORS
from .reload import Reloader
from .settings import Settings

log = logging.getLogger("service")


def _serving(name: str, empty: Callable[[], Any] = lambda: None) -> property:
    """A read-only view of an attribute of the generation that serves now (`empty()` before one does)."""
    return property(lambda self: getattr(self.generation, name) if self.generation else empty(),
                    doc=f"the serving generation's {name}")


class ServiceState:
    """Everything one app instance holds; built in the lifespan, torn down at shutdown."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.generation: Generation | None = None  # the one serving; swapped by a reload
        self.embedded: EmbeddedRedis | None = None
        self.redis_url: str | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.mint_executor: ThreadPoolExecutor | None = None  # the executor itself unless mint_thread
        self.keys = settings.keys()
        self.write_protected = settings.write_protected()
        self.ready = False
        self.stopping = False
        self.replica_id = uuid.uuid4().hex[:12]
        self.metrics = ServiceMetrics(catalog_size=lambda: float(len(self.catalog)) if self.catalog else 0.0)
        self.limiter = Limiter(self._count_hit, settings.redis_lookup_timeout_s,
                               on_fallback=self.metrics.limiter_fallbacks.inc)
        self.reloader = Reloader(self)
        self.loop: asyncio.AbstractEventLoop | None = None

    # What serves now (for operations and tests; a request uses the generation it leased).
    bundle = _serving("bundle")
    catalog = _serving("catalog")
    registry = _serving("registry")
    engine = _serving("engine")
    follower = _serving("follower")
    recommend_batcher = _serving("recommend_batcher")
    mint_batcher = _serving("mint_batcher")
    model_info = _serving("model_info", empty=dict)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        self.loop = asyncio.get_running_loop()
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        if not self.write_protected:
            log.warning("no write token and GENREC_ALLOW_ANONYMOUS_WRITES=true: anyone who can reach this "
                        "service can add items (POST /v1/items); set API_TOKEN or API_TOKENS in production")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-inference")
        self.mint_executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-mint")
                              if s.mint_thread else self.executor)
        try:
            url = s.redis_url
            if url is None:
                self.embedded = EmbeddedRedis(s.data_dir)
                url = await asyncio.to_thread(self.embedded.start)
            self.redis_url = url
            generation = self.new_generation(s.bundle, number=1)
            self.generation = generation
            # Millions of long-lived objects are made for a large catalog: no collections while
            # they are (settle() enables the collector again and freezes them).
            gc.disable()
            await self.reloader.build(generation, verify=s.verify_bundle)
            generation.settle()
            self.reloader.serving(generation)
            self.ready = True
        except BaseException:
            gc.enable()
            await self.stop()
            raise

    def reload_on_signal(self) -> None:
        """SIGHUP (installed by the CLI; safe from a signal handler): a reload, in the background,
        of the bundle the replica started with (GENREC_BUNDLE or --bundle, read again: a symbolic
        link there may point to another bundle now)."""
        loop = self.loop
        if loop is not None and self.ready and not loop.is_closed():
            loop.call_soon_threadsafe(self.reloader.reload_in_background)

    def new_generation(self, bundle_path, number: int) -> Generation:
        return Generation(self.settings, self.metrics, self.replica_id, bundle_path, self.redis_url,
                          self.executor, self.mint_executor, number=number)

    async def _count_hit(self, name: str, ttl_s: int, amount: int) -> int:
        """The limiter's shared counter (Redis); before Redis is connected, an error (the
        limiter then counts in memory)."""
        registry = self.registry
        if registry is None or self.generation is None or not self.generation.ready:
            raise ConnectionError("the registry is not connected yet")
        return await registry.count_hit(name, ttl_s, amount)

    async def stop(self) -> None:
        """Graceful: new requests get 503 at once, while the batches queued so far are still
        decoded/minted and the mints under way committed, before Redis and the threads close."""
        self.ready = False
        self.stopping = True
        await self.reloader.stop()
        if self.generation is not None:
            await self.generation.close()
        if self.mint_executor is not None and self.mint_executor is not self.executor:
            await asyncio.to_thread(self.mint_executor.shutdown, True)
        self.mint_executor = None
        if self.executor is not None:
            await asyncio.to_thread(self.executor.shutdown, True)
            self.executor = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Generation]:
        """The generation that serves now, held for the whole request: a reload meanwhile swaps
        in the next one, and this request finishes on this one (closed once its last request has
        left)."""
        generation = self.generation
        if not self.ready or generation is None or not generation.ready:
            raise ApiError(503, "not_ready", "the service is starting or stopping")
        generation.enter()
        try:
            yield generation
        finally:
            generation.leave()

    async def readiness(self) -> dict[str, str]:
        """Named checks, each "ok" or what is wrong: the bundle (and trie) loaded and the app
        not stopping, and Redis answering, within a second, a read of a key in the catalog's
        slot (on a cluster: from the node that serves the slot now)."""
        generation = self.generation
        if self.ready and generation is not None and generation.ready:
            checks = {"bundle": "ok"}
        else:
            checks = {"bundle": "stopping" if self.stopping else "not loaded"}
        registry = generation.registry if generation is not None else None
        if registry is None:
            checks["redis"] = "not connected"
        else:
            try:
                await asyncio.wait_for(registry.probe(), timeout=1.0)
                checks["redis"] = "ok"
            except (*STORE_ERRORS, TimeoutError) as exc:
                self.metrics.redis_errors.labels(operation="ping").inc()
                checks["redis"] = f"unreachable ({type(exc).__name__})"
        return checks


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's lifespan: its `ServiceState` (app.state.service) started before the first
    request and stopped, gracefully, at shutdown."""
    state: ServiceState = app.state.service
    await state.start()
    try:
        yield
    finally:
        await state.stop()
