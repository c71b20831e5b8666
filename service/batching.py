"""Micro-batching: concurrent requests gathered for up to `max_wait_ms` (or `max_batch`
requests) and handled in one call on the inference executor.

The executor is a single dedicated thread shared by every batcher of an app, so torch
calls (decoding, minting) never run concurrently and never block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("service.batching")

Req = TypeVar("Req")
Res = TypeVar("Res")


_STOP: Any = object()  # queued by stop(): handle what came before it, then end


class BatcherClosed(RuntimeError):
    """The batcher is stopping; the request was not handled."""


@dataclass
class _Job(Generic[Req]):
    request: Req
    future: asyncio.Future = field(repr=False)


class MicroBatcher(Generic[Req, Res]):
    """`await batcher.submit(request)` -> that request's result.

    `handle(requests)` runs on `executor` and returns one result per request, in order; a
    result that is an Exception instance is raised to that request's caller only.
    `discard(request, result)` runs (on the loop) for results nobody waits for any more.

    With `adaptive_wait`, a request that finds the queue empty waits `max_wait_ms` for company
    only when the previous batch had company: a lone client (concurrency 1) pays no wait,
    while under concurrent load batches still fill up (the first batch of a burst goes alone,
    and the requests that queue behind it make the next ones bigger).
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[list[Req]], Sequence[Res | Exception]],
        executor: Executor,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        adaptive_wait: bool = True,
        on_batch: Callable[[int], None] | None = None,
        discard: Callable[[Req, Res], None] | None = None,
    ):
        self.name = name
        self.handle = handle
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.adaptive_wait = adaptive_wait
        self._last_batch_size = 1  # a service starts idle: its first request goes at once
        self.on_batch = on_batch
        self.discard = discard
        self._queue: asyncio.Queue[_Job[Req]] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"genrec-batcher-{self.name}")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Drains, then stops: new submits are refused at once, while the batch under way and
        every request queued before the stop are still handled and answered (a graceful
        shutdown loses no accepted work). Past `timeout_s` the rest fails with BatcherClosed."""
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except (TimeoutError, Exception):
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):
                    pass
            self._task = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not _STOP and not job.future.done():
                job.future.set_exception(BatcherClosed(f"{self.name} batcher stopped"))

    async def submit(self, request: Req) -> Res:
        if self._closed or self._task is None:
            raise BatcherClosed(f"{self.name} batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(request, future))
        return await future

    async def _gather(self) -> tuple[list[_Job[Req]], bool]:
        """The next batch, and whether the stop sentinel was met."""
        first = await self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        loop = asyncio.get_running_loop()
        alone = self.adaptive_wait and self._last_batch_size <= 1
        deadline = loop.time() + (0.0 if alone else self.max_wait_s)
        stopping = False
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if job is _STOP:
                stopping = True
                break
            batch.append(job)
        return [job for job in batch if not job.future.done()], stopping

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            batch, stopping = await self._gather()
            if not batch:
                continue
            self._last_batch_size = len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            requests = [job.request for job in batch]
            try:
                results: Sequence[Any] = await loop.run_in_executor(self.executor, self.handle, requests)
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")
            except asyncio.CancelledError:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed(f"{self.name} batcher stopped"))
                raise
            except Exception as exc:  # the whole batch failed: every caller sees the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results, strict=True):
                if job.future.done():
                    if self.discard is not None and not isinstance(result, Exception):
                        self.discard(job.request, result)
                elif isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
