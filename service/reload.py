"""Reloading the bundle without downtime (docs/operations.md, "Reload a bundle").

`POST /admin/reload` (an admin token) and SIGHUP (the bundle at GENREC_BUNDLE, read again) ask
the `Reloader` for the next generation (service/generation.py). It is built beside the one that
serves, which goes on answering meanwhile:

1. the bundle is loaded with its checksums verified (always, whatever GENREC_VERIFY_BUNDLE
   says: a bundle copied in place while it was being written is refused here), and the method;
2. its catalog namespace is connected: the bundle's items seeded, the items minted so far
   loaded, the events stream followed;
3. what the previous catalog of the dataset knew and this bundle lacks is carried over
   (service/upgrade.py);
4. a smoke recommendation runs through the new batcher, inference thread and trie;
5. the new generation is swapped in, in one assignment: a request takes the generation that
   serves when it starts, so it runs on the old one or on the new one, never on both;
6. the old one is closed once its requests have left (at most GENREC_RELOAD_DRAIN_S).

A failure at steps 1-4 closes the new generation and leaves the old one serving; nothing is
half swapped. One reload runs at a time (a second one is answered 409).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from genrec.bundle import read_manifest
from genrec.errors import BundleError, StoreUnavailableError
from genrec.registry import kinds

from .errors import ApiError
from .generation import Generation
from .limits import retry_after
from .redis_clients import STORE_ERRORS
from .upgrade import carry_over, record_serving

log = logging.getLogger("service.reload")

HEARTBEAT_S = 60.0  # how often the serving catalog's last_served is written (genrec:catalogs:<dataset>)


class Reloader:
    """Builds generations (at start and on reloads) and swaps them in, one reload at a time."""

    def __init__(self, state: Any):
        self.state = state  # the ServiceState (service/state.py, which imports this module)
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task] = set()  # old generations draining, then closing
        self.running_since: float | None = None  # wall time a reload under way started
        self.last: dict[str, Any] | None = None  # the outcome of the last reload
        self._heartbeat: asyncio.Task | None = None

    async def build(self, generation: Generation, verify: bool) -> None:
        """Loads, connects and upgrades `generation` (not yet serving); closes it on failure."""
        s = self.state.settings
        try:
            await generation.load(verify)
            seeded = await generation.connect()
            if s.upgrade_items:
                await carry_over(generation)
        except BaseException:
            await generation.close()
            raise
        log.info("loaded %s bundle %s (%s): %d items (%d minted), catalog %r, seeding %s",
                 generation.bundle.kind, generation.model_info["bundle"], generation.bundle_path,
                 len(generation.catalog), generation.minted_at_start, generation.catalog_name, seeded)

    def serving(self, generation: Generation) -> None:
        """Marks `generation` as the one serving: metrics, and the catalogs record in Redis
        (best effort) that tells a later bundle which catalog came before it."""
        metrics = self.state.metrics
        metrics.bundle_info.clear()
        info = generation.describe()
        metrics.bundle_info.labels(bundle=info["bundle"], digest=info["digest"], catalog=info["catalog"],
                                   kind=info["kind"], path=info["path"]).set(1)
        metrics.bundle_generation.set(generation.number)
        task = asyncio.get_running_loop().create_task(record_serving(generation))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="genrec-catalog-heartbeat")

    async def _beat(self) -> None:
        """Keeps the serving catalog's `last_served` fresh, so that the catalog an upgrade carries
        over from is the one serving, not one a replica served briefly later."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self.state.generation is not None and self.state.generation.ready:
                await record_serving(self.state.generation)

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def status(self) -> dict[str, Any]:
        """Whether a reload runs (since when), and how the last one ended."""
        return {"running": self.running, "running_since": self.running_since, "last": self.last}

    async def reload(self, path: str | Path | None) -> dict[str, Any]:
        """Loads the bundle at `path` (default: GENREC_BUNDLE, read again: a symlink there may
        point elsewhere now), checks it and swaps it in; the outcome, as `ReloadResult` has it.
        ApiError 409 while another reload runs, 422 for a bundle that cannot serve (the old one
        goes on serving), 503 when Redis does not answer."""
        state = self.state
        if self._lock.locked():
            raise ApiError(409, "reload_in_progress", "a reload is already running; retry when it is done",
                           {"running_since": self.running_since}, headers=retry_after(1))
        if not state.ready or state.generation is None:
            raise ApiError(503, "not_ready", "the service is starting or stopping")
        async with self._lock:
            started, self.running_since = time.perf_counter(), time.time()
            target = Path(path) if path else state.settings.bundle
            old = state.generation
            try:
                outcome = await self._reload(old, target, started)
            except ApiError as exc:
                self._ended("refused" if exc.status == 422 else "failed", target, started, exc.message)
                raise
            except BaseException as exc:
                self._ended("failed", target, started, f"{type(exc).__name__}: {exc}")
                raise
            finally:
                self.running_since = None
            return outcome

    async def _reload(self, old: Generation, target: Path, started: float) -> dict[str, Any]:
        state = self.state
        _precheck(target)
        new = state.new_generation(target.resolve(), number=old.number + 1)
        try:
            await self.build(new, verify=True)
            await new.smoke()
        except BundleError as exc:
            await new.close()
            raise _refused("verify", str(exc), target) from exc
        except (*STORE_ERRORS, StoreUnavailableError) as exc:
            await new.close()
            raise ApiError(503, "store_unavailable", f"Redis does not answer; the bundle in place goes on serving: "
                           f"{exc}", headers=retry_after(1)) from exc
        except asyncio.CancelledError:
            await new.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a model that does not load or answer: refused
            log.exception("the bundle %s cannot serve", target)
            await new.close()
            stage = "load" if new.recommend_batcher is None else "smoke"
            raise _refused(stage, f"{type(exc).__name__}: {exc}", target) from exc
        if state.stopping:
            await new.close()
            raise ApiError(503, "not_ready", "the service is stopping")
        new.settle()
        state.generation = new  # the swap: requests from now on lease the new generation
        self.serving(new)
        seconds = time.perf_counter() - started
        outcome = {"previous": old.describe(), "serving": new.describe(), "seconds": round(seconds, 3),
                   "items_carried_over": new.upgrade.carried if new.upgrade is not None else 0,
                   "old_inflight": old.inflight}
        self._ended("ok", target, started, None, outcome)
        log.info("reloaded in %.2f s: now serving %s (%s, catalog %r), was %s (%d request(s) still on it)",
                 seconds, new.model_info["bundle"], new.bundle_path, new.catalog_name, old.model_info["bundle"],
                 old.inflight)
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return outcome

    async def _retire(self, old: Generation) -> None:
        """Closes the old generation once its last request has left (or the drain time is up)."""
        drain_s = self.state.settings.reload_drain_s
        if not await old.drained(drain_s):
            log.warning("%d request(s) still on the old bundle after %.0f s; closing it", old.inflight, drain_s)
        await old.close()
        # The old bundle was frozen out of the collector's reach (Generation.settle), so it must
        # go by reference counting: the generation lets go of its parts (a full collection to
        # find cycles would pause every request for up to seconds on a large heap).
        old.release()

    def _ended(self, outcome: str, target: Path, started: float, error: str | None,
               result: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - started
        metrics = self.state.metrics
        metrics.reloads.labels(outcome=outcome).inc()
        metrics.reload_duration.set(seconds)
        self.last = {"outcome": outcome, "bundle": str(target), "seconds": round(seconds, 3), "error": error,
                     "finished_at": time.time(), **({"serving": result["serving"]} if result else {})}
        if error is not None:
            log.warning("reload of %s %s after %.2f s: %s; the bundle in place goes on serving", target,
                        outcome, seconds, error)

    def reload_in_background(self, path: str | Path | None = None) -> None:
        """SIGHUP: a reload of GENREC_BUNDLE (its outcome logged, and kept for GET /admin/reload)."""

        async def run() -> None:
            try:
                await self.reload(path)
            except ApiError as exc:
                log.warning("SIGHUP reload not done: %s", exc.message)
            except Exception:  # noqa: BLE001 - logged; the old bundle serves on
                log.exception("SIGHUP reload failed")

        task = asyncio.get_running_loop().create_task(run())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        """At shutdown: waits for the old generations being closed (and a reload under way)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        pending = list(self._closing)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _precheck(target: Path) -> None:
    """422 at once for a path that is no bundle, before anything is loaded."""
    try:
        manifest = read_manifest(target)
    except BundleError as exc:
        raise _refused("verify", str(exc), target) from exc
    if manifest.get("kind") not in kinds():
        raise _refused("verify", f"the service serves {', '.join(kinds())} bundles; this one is "
                       f"{manifest.get('kind')!r}")


def _refused(stage: str, message: str, target: Path | None = None) -> ApiError:
    if target is not None:  # the operator knows the path; an error body does not repeat it
        for name in {str(target.resolve()), str(target)}:
            message = message.replace(name, "the bundle")
    return ApiError(422, "bad_bundle", f"the bundle cannot serve ({stage}): {message}; the bundle in place goes on "
                    "serving", {"stage": stage})
