"""Micro-batching: concurrent requests gathered for up to `max_wait_ms` (or `max_batch`
requests) and handled in one call on an executor.

Each executor is a single dedicated thread (the recommendations' one, and the mints' own
unless GENREC_MINT_THREAD=false), so the torch calls of one batcher never run concurrently and
never block the event loop.

Load shedding: the queue is bounded (`max_queue`: a submit past it raises QueueFull at once),
a request may carry a deadline (past it, it is dropped from the queue with DeadlineExceeded),
and a request whose caller stopped waiting (its future cancelled: the client went away, or the
caller's own timeout) is dropped before its batch is handled.
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


class QueueFull(RuntimeError):
    """The batcher's queue holds `max_queue` requests already; the request was not queued."""


class DeadlineExceeded(RuntimeError):
    """The request's deadline passed while it waited in the queue; it was not handled."""


@dataclass
class _Job(Generic[Req]):
    request: Req
    future: asyncio.Future = field(repr=False)
    deadline: float | None = None  # loop time
    queued: bool = True  # counted in the batcher's queue depth until gathered or abandoned


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
        max_queue: int | None = None,
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
        self.max_queue = max_queue
        self.dropped = {"deadline": 0, "abandoned": 0}  # queued requests never handled, by reason
        self._queue: asyncio.Queue[_Job[Req]] = asyncio.Queue()
        self._waiting = 0  # live requests in the queue (abandoned ones no longer count)
        self._task: asyncio.Task | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Requests waiting in the queue, not counting those whose callers gave up."""
        return self._waiting

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

    async def submit(self, request: Req, deadline: float | None = None) -> Res:
        """The request's result. QueueFull when the queue is full; DeadlineExceeded when
        `deadline` (loop time) passes before its batch starts. Cancelling the caller drops the
        request from the queue (or, once its batch runs, discards its result)."""
        if self._closed or self._task is None:
            raise BatcherClosed(f"{self.name} batcher is not running")
        if self.max_queue is not None and self._waiting >= self.max_queue:
            raise QueueFull(f"{self.name} queue is full ({self._waiting} waiting)")
        future = asyncio.get_running_loop().create_future()
        job = _Job(request, future, deadline)
        self._waiting += 1
        future.add_done_callback(lambda _f: self._leave_queue(job))
        self._queue.put_nowait(job)
        return await future

    def _leave_queue(self, job: _Job) -> None:
        if job.queued:
            job.queued = False
            self._waiting -= 1

    def _usable(self, job: _Job, now: float) -> bool:
        """Leaves the queue; False (and the job answered, if need be) when it must be dropped."""
        self._leave_queue(job)
        if job.future.done():
            self.dropped["abandoned"] += 1
            return False
        if job.deadline is not None and now >= job.deadline:
            self.dropped["deadline"] += 1
            job.future.set_exception(DeadlineExceeded(f"{self.name}: the deadline passed in the queue"))
            return False
        return True

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
        now = loop.time()
        return [job for job in batch if self._usable(job, now)], stopping

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
