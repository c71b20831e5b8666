"""One serving generation: everything that depends on the bundle, built together, swapped
together and closed together (docs/operations.md, "Reload a bundle").

A `Generation` holds the bundle, its catalog (trie, filter index, title search), the Redis
registry of its catalog namespace (`genrec:{catalog}:`), the users' events store, the engine
over the method, the event follower and the two micro-batchers, and answers the requests:
recommendations, mints, events and reads. A request takes the generation that serves when it
starts (`ServiceState.lease`) and finishes on it, even if a reload swaps in another meanwhile;
the old generation is closed once its last request has left.

The threads (the inference and mint executors), the metrics, the quotas and an embedded Redis
belong to the process (service/state.py), not to a generation.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from genrec.bundle import Bundle, load_bundle
from genrec.errors import StoreUnavailableError

from .batching import BatcherClosed, DeadlineExceeded, MicroBatcher, QueueFull
from .catalog import Catalog, EventFollower, TextDigests, release_free_memory
from .engine import Engine, MintJob, MintResult, RecommendJob, text_digest, texts_for
from .errors import ApiError, invalid
from .limits import retry_after
from .metrics import ServiceMetrics
from .posted_items import check_metadata, check_same_item
from .redis_clients import STORE_ERRORS
from .registry import CommitResult, ItemRecord, Registry, ReplicationUnconfirmedError, default_catalog_name
from .registry import dataset_slug as _dataset_slug
from .registry import id_space_digest as _id_space_digest
from .schemas import (
    EventsAccepted,
    EventsRequest,
    ItemCreateRequest,
    ItemRecordResponse,
    ItemSearchHit,
    ItemSearchResponse,
    RecommendationRequest,
    RecommendationResponse,
    RecommendedItem,
    StoredEvent,
    UserEventsResponse,
)
from .settings import Settings
from .user_events import UserEvent, UserEventStore

log = logging.getLogger("service")

MAX_LISTED_FIELDS = 50  # filter fields an unknown_filter_field error lists at most


def bundle_digest(bundle: Bundle) -> str:
    """Short digest of every file of the bundle (from its manifest's checksums)."""
    files = bundle.manifest.get("files", {})
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


def id_space_digest(bundle: Bundle) -> str:
    return _id_space_digest(bundle.manifest)


def dataset_slug(bundle: Bundle) -> str:
    return _dataset_slug(bundle.manifest)


def default_catalog(bundle: Bundle) -> str:
    """Redis namespace of a bundle's catalog: its dataset and the digest of its ID space."""
    return default_catalog_name(bundle.manifest)


# One bundle loads at a time in a process: loading a model patches torch globally for a moment
# (transformers' empty-weights initialisation), and two loads interleaved on two threads can
# leave it patched, every later model on the meta device.
_LOAD_LOCK = threading.Lock()


def _loading(load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with _LOAD_LOCK:
        return load(*args, **kwargs)


class Generation:
    """The bundle and everything built on it; `open` builds it, `close` tears it down."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, replica_id: str, bundle_path: Path,
                 redis_url: str, executor: ThreadPoolExecutor, mint_executor: ThreadPoolExecutor, number: int = 1):
        self.settings = settings
        self.redis_url = redis_url
        self.metrics = metrics
        self.replica_id = replica_id
        self.bundle_path = Path(bundle_path)
        self.executor = executor
        self.mint_executor = mint_executor
        self.number = number  # 1 for the bundle served at start, +1 a reload
        self.bundle: Bundle | None = None
        self.catalog: Catalog | None = None
        self.registry: Registry | None = None
        self.user_events_store: UserEventStore | None = None
        self.engine: Engine | None = None
        self.follower: EventFollower | None = None
        self.recommend_batcher: MicroBatcher | None = None
        self.mint_batcher: MicroBatcher | None = None
        self.bundle_bases: TextDigests | dict[str, str] = {}  # digest of a bundle item's text -> its textual ID
        self.model_info: dict[str, Any] = {}
        self.digest = ""
        self.catalog_name = ""
        self.ready = False
        self.stopping = False
        self.minted_at_start = 0  # items minted in the catalog before this generation connected
        self.upgrade: Any = None  # the upgrade from earlier catalogs (service/upgrade.py), if any
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight_mints: dict[str, asyncio.Task] = {}
        self._fold_task: asyncio.Task | None = None
        self._restore_task: asyncio.Task | None = None
        self.phase = PhaseTimer(metrics)  # the parts of its load, in genrec_startup_seconds{phase}

    # ------------------------------------------------------------------ build and tear down

    async def load(self, verify: bool) -> None:
        """Loads the bundle (checksums verified with `verify`) and the method, on a thread of its
        own (the inference thread goes on serving the generation in place, if any): the slow
        part, done before anything is written to Redis."""
        s = self.settings
        self.bundle = await asyncio.to_thread(_loading, load_bundle, self.bundle_path, verify=verify)
        self.phase("bundle")
        self.catalog = await asyncio.to_thread(Catalog, self.bundle.items, self.bundle.tokenizer.eos_token_id)
        self.phase("catalog")
        self.digest = bundle_digest(self.bundle)
        self.model_info = {
            "kind": self.bundle.kind,
            "bundle": f"{dataset_slug(self.bundle)}-{self.digest}",
            "dataset": self.bundle.manifest.get("dataset"),
            "created_at": self.bundle.manifest.get("created_at"),
        }
        self.catalog_name = s.catalog or default_catalog(self.bundle)
        self.registry = Registry(self.redis_url, self.catalog_name, timeout_s=s.redis_timeout_s,
                                 replica=self.replica_id, lookup_timeout_s=s.redis_lookup_timeout_s,
                                 pending_ttl_s=s.pending_claim_ttl_s, cluster=s.redis_cluster,
                                 wait_replicas=s.redis_wait_replicas, wait_timeout_ms=s.redis_wait_timeout_ms)
        self.engine = await asyncio.to_thread(_loading, lambda: Engine(
            self.bundle, self.catalog, self.registry, self.metrics, num_beams=s.num_beams,
            mint_max_rounds=s.mint_max_rounds or None, device=s.device, precision=s.precision,
            quantize=s.quantize))
        self.phase("models")
        self.bundle_bases = TextDigests(self.bundle.items, text_digest)
        self.phase("text_digests")
        if self.engine.popular is None:
            log.warning("the bundle has no popularity list (it was written before they were): requests with "
                        "an empty history get no items (strategy \"popular\"); retrain the bundle to get one")

    async def connect(self) -> dict:
        """Connects the catalog's namespace in Redis: seeds the bundle's items, loads the items
        minted so far, follows the events stream and starts the batchers. Returns the seeding's
        outcome."""
        s = self.settings
        self.user_events_store = UserEventStore(
            self.registry.aio, self.registry.prefix,
            keep=s.user_events_factor * (self.engine.method.history_length() or s.max_history),
            id_ttl_s=s.event_id_ttl_s, ids_per_user=s.event_ids_per_user,
        )
        await self._wait_for_redis()
        self.phase("redis_connect")
        seeded = await self.registry.seed(self.bundle.items, self.model_info["created_at"] or "", self.digest)
        self.phase("seed")
        events, last_id = await self.registry.load_events()
        self.follower = EventFollower(
            self.registry,
            self.catalog,
            last_id,
            on_error=lambda _exc: self.metrics.redis_errors.labels(operation="follow").inc(),
            on_rewind=self._stream_rewound,
        )
        self.follower.apply(events)  # the items minted before this start
        self.phase("minted_items")
        # The decoding tables, before the first request rather than in it (on a thread of its
        # own: during a reload the inference thread serves the generation in place).
        await asyncio.to_thread(self.catalog.trie.tables)
        self.phase("trie_tables")
        self.follower.on_added = lambda event: self._after_add(followed=event.replica != self.replica_id)
        await self.registry.connect_follower()
        self.follower.start()
        self.recommend_batcher = self._batcher("recommend", self.engine.recommend_batch, self.executor,
                                               s.max_queue)
        self.mint_batcher = self._batcher("mint", self.engine.mint_batch, self.mint_executor, s.max_mint_queue,
                                          discard=self._discard_mint)
        self.recommend_batcher.start()
        self.mint_batcher.start()
        self._after_add(followed=False, count=False)
        self.minted_at_start = len(events)
        return seeded

    def settle(self) -> None:
        """Ready to serve. The bundle, catalog and trie are long-lived: moved out of the garbage
        collector's generations, full collections stop walking them (they paused requests for up
        to hundreds of ms under load)."""
        gc.enable()  # ServiceState.start disables it while the first generation is built
        gc.collect()
        gc.freeze()
        release_free_memory()
        self.phase("gc")
        self.phase.total()
        self.ready = True

    def _batcher(self, kind: str, handle: Callable[[list], Sequence], executor: ThreadPoolExecutor,
                 max_queue: int, **extra: Any) -> MicroBatcher:
        """A batcher on `executor` with a queue of at most `max_queue`, the settings' batching,
        and its batch sizes and queue depth observed."""
        s = self.settings
        batcher = MicroBatcher(
            kind,
            handle,
            executor,
            max_batch=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            adaptive_wait=s.adaptive_wait,
            on_batch=lambda n: self.metrics.batch_size.labels(kind=kind).observe(n),
            max_queue=max_queue,
            **extra,
        )
        self.metrics.queue_depth.labels(kind=kind).set_function(lambda: float(batcher.depth))
        return batcher

    async def _wait_for_redis(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.redis_startup_timeout_s
        while True:
            try:
                await self.registry.probe()
                return
            except STORE_ERRORS as exc:
                if asyncio.get_running_loop().time() >= deadline:
                    raise StoreUnavailableError(f"Redis at {_redact(self.registry.url)} does not answer: {exc}") from exc
                await asyncio.sleep(0.25)

    async def close(self) -> None:
        """Graceful: the batches queued so far are still decoded/minted and the mints under way
        committed, before its Redis clients close (the threads are the process's). Once: a
        second call returns at once."""
        self.ready = False
        if self.stopping:
            return
        self.stopping = True
        if self.upgrade is not None:
            await self.upgrade.stop()
        if self.follower is not None:
            await self.follower.stop()
        for batcher in (self.recommend_batcher, self.mint_batcher):
            if batcher is not None:
                await batcher.stop()
        for task in list(self._inflight_mints.values()):
            try:
                await asyncio.wait_for(asyncio.shield(task), 10)
            except (Exception, asyncio.CancelledError):
                pass
        if self._fold_task is not None:
            await asyncio.gather(self._fold_task, return_exceptions=True)
        if self._restore_task is not None:
            self._restore_task.cancel()
            await asyncio.gather(self._restore_task, return_exceptions=True)
        if self.registry is not None:
            await self.registry.close()

    def release(self) -> None:
        """After `close`, once no request runs on it (a reload retired it): lets go of the
        bundle, the models, the catalog and the rest, so that they are freed (see Reloader._retire)."""
        if self.follower is not None:  # a stopped follower may outlive this (its task's last exception holds
            # its frame): it lets go of the catalog and of this generation
            self.follower.catalog = self.follower.on_added = self.follower.on_rewind = self.follower.on_error = None
        self.engine = self.bundle = self.catalog = self.follower = None
        self.recommend_batcher = self.mint_batcher = self.user_events_store = self.upgrade = None
        self.bundle_bases = {}
        self._inflight_mints.clear()
        self._fold_task = self._restore_task = None

    # ------------------------------------------------------------------ requests in flight

    def enter(self) -> None:
        """A request starts on this generation."""
        self._inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight <= 0:
            self._inflight = 0
            self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def drained(self, timeout_s: float) -> bool:
        """Waits until no request is on this generation (at most `timeout_s`); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def describe(self) -> dict[str, Any]:
        """What serves: the bundle's name, digest, path, kind, dataset and creation time, and the
        catalog namespace."""
        return {**self.model_info, "digest": self.digest, "path": str(self.bundle_path),
                "catalog": self.catalog_name, "generation": self.number}

    async def smoke(self) -> None:
        """A recommendation through the whole path (batcher, inference thread, method, trie) on
        a history of the bundle's own items; raises when it fails or returns nothing."""
        items = [item_id for item_id, _count in (self.bundle.popularity or [])[:3]] or [
            item.item_id for item in self.bundle.items[:3]]
        job = RecommendJob(tuple(items), 5, True)
        rows = await self.recommend_batcher.submit(job, None)
        if isinstance(rows, Exception):
            raise rows
        if not rows and len(self.catalog) > len(items):
            raise RuntimeError("a smoke recommendation returned no items")

    # ------------------------------------------------------------------ catalog upkeep

    def _after_add(self, *, followed: bool, count: bool = True) -> None:
        if count and followed:
            self.metrics.items_followed.inc()
        catalog = self.catalog
        self.metrics.trie_overlay_items.set(catalog.overlay_size)
        if catalog.overlay_size >= self.settings.trie_fold_threshold and (
            self._fold_task is None or self._fold_task.done()
        ):
            self._fold_task = asyncio.create_task(self._fold())

    async def _fold(self) -> None:
        if await asyncio.to_thread(self.catalog.fold):
            self.metrics.trie_folds.inc()
            self.metrics.trie_overlay_items.set(self.catalog.overlay_size)

    def _stream_rewound(self, end: str) -> None:
        """The events stream lost the entries after `end` (a failover to a Redis replica that
        had not received them): the minted items this replica holds from among them are
        written back, so their IDs stay reserved (docs/reliability.md, "Known limits"). A
        stream lost whole (Redis restarted without its data) gets the bundle seeded again too."""
        self.metrics.stream_rewinds.inc()
        lost = self.catalog.minted_since(end)
        if (lost or end == "0-0") and (self._restore_task is None or self._restore_task.done()):
            self._restore_task = asyncio.create_task(self._restore(lost, reseed=end == "0-0"))

    async def _restore(self, item_ids: list[str], reseed: bool = False) -> None:
        if reseed:
            try:
                seeded = await self.registry.seed(self.bundle.items, self.model_info["created_at"] or "",
                                                  bundle_digest(self.bundle))
                log.warning("the events stream was lost whole; the bundle's items were seeded again: %s", seeded)
            except STORE_ERRORS as exc:
                log.warning("could not seed the bundle's items again: %s", exc)
        # Whole records first; items known only by their ID (learned from the stream) once every
        # follower has retried (its backoff is at most 2 s), so that the replica that minted
        # an item, which holds its metadata, restores it when it is still up.
        whole = [i for i in item_ids if self.catalog.record(i) is not None]
        bare = [i for i in item_ids if self.catalog.record(i) is None]
        outcomes = {1: 0, 0: 0, -1: 0, None: 0}
        for group, delay_s in ((whole, 0.0), (bare, self.follower.max_backoff_s + 1.0)):
            if group:
                await asyncio.sleep(delay_s)
            for item_id in group:
                record = self.catalog.record(item_id) or ItemRecord(
                    item_id=item_id, textual_id=self.catalog.textual_id(item_id) or "",
                    token_ids=self.catalog.token_ids(item_id) or [], text="", metadata=None, created_at="",
                    source="minted")
                try:
                    status = await self.registry.restore(record)
                except STORE_ERRORS as exc:
                    log.warning("could not restore item %r: %s", item_id, exc)
                    status = None
                outcomes[status] += 1
                if status == 1:
                    self.metrics.items_restored.inc()
                elif status == -1:
                    log.error("item %r was lost by Redis and its textual ID %r now belongs to another item",
                              item_id, record.textual_id)
        log.warning("the events stream lost %d item(s) this replica holds: %d restored, %d already back, "
                    "%d whose ID was taken meanwhile, %d failed", len(item_ids), outcomes[1], outcomes[0],
                    outcomes[-1], outcomes[None])

    # ------------------------------------------------------------------ recommendations

    async def recommend(self, body: RecommendationRequest, deadline: float | None = None,
                        gone: asyncio.Event | None = None) -> RecommendationResponse:
        """The answer to a recommendation request; `deadline` (loop time) and `gone` (set when
        the client disconnects) drop the request's work when they come first."""
        s = self.settings
        if body.history is not None and len(body.history) > s.max_history:
            raise invalid("history", f"at most {s.max_history} items (got {len(body.history)})")
        if "k" not in body.model_fields_set:
            body.k = min(body.k, s.max_k)  # the default (10) follows a smaller GENREC_MAX_K
        if body.k > s.max_k:
            got = body.k if body.k < 10**12 else "more"  # 1e300 is an integer too: no 301-digit message
            raise invalid("k", f"must be between 1 and {s.max_k} (got {got})")
        if body.history is not None:
            history = body.history
            await self._check_known(history)
        elif body.user_id is not None:
            history = await self._stored_history(body.user_id)
        else:
            history = []
        await self._check_known(body.exclude_items, "exclude_items")
        job = RecommendJob(tuple(history), body.k, body.exclude_history, body.user_id,
                           exclude_items=tuple(body.exclude_items), allowed=self._filtered(body.filter))
        if history:
            strategy = "model"
            rows = await self._queued(self.recommend_batcher.submit(job, deadline), deadline, gone)
        else:  # nothing for a model to read: a new user, or one not identified
            strategy = "popular"
            rows = self.engine.recommend_popular(job)
        items = [
            RecommendedItem(item_id=r.item_id, textual_id=self.catalog.textual_id(r.item_id) or "", score=r.score)
            for r in rows
        ]
        return RecommendationResponse(items=items, model=self.model_info, strategy=strategy)

    async def _check_known(self, item_ids: Sequence[str], field: str = "", store_needed: bool = False) -> None:
        """422 `unknown_items` naming the ids (of the history, or of `field`) that neither this
        replica nor Redis knows; with `store_needed` (the request writes to Redis anyway), 503
        when Redis could not be asked."""
        missing = self.catalog.unknown(item_ids)
        asked = True
        if missing:
            missing, asked = await self._look_up_missing(missing)
        if missing and store_needed and not asked:
            raise _events_unavailable("the events' items cannot be checked now")
        if missing:
            unchecked = "" if asked else " (the item registry could not be asked; try again later)"
            where = f" in {field}" if field else ""
            raise ApiError(422, "unknown_items", f"{len(missing)} item id(s){where} are not in the catalog{unchecked}",
                           {"item_ids": missing, **({"field": field} if field else {})})

    async def _stored_history(self, user_id: str) -> list[str]:
        """The latest GENREC_MAX_HISTORY stored items of the user, oldest first. They were known
        when stored; one minted on another replica a moment ago is looked up, and one still
        unknown here (more than GENREC_MAX_REDIS_LOOKUPS of them) is left out."""
        history = [e.item_id for e in await self._read_events(user_id, self.settings.max_history)]
        missing = self.catalog.unknown(history)
        if missing:
            missing, _asked = await self._look_up_missing(missing)
            gone = set(missing)
            history = [item for item in history if item not in gone]
        return history

    async def _read_events(self, user_id: str, last: int | None = None):
        try:
            return await self.user_events_store.history(user_id, last)
        except STORE_ERRORS as exc:
            self.metrics.redis_errors.labels(operation="user_events").inc()
            raise _events_unavailable("the user's stored events cannot be read now") from exc

    # ------------------------------------------------------------------ users' events

    async def add_events(self, body: EventsRequest) -> EventsAccepted:
        """Stores a batch of events (each user's latest, in timestamp order) in one atomic
        script: every item must be known (422 `unknown_items` otherwise, nothing written)."""
        cap = self.settings.max_events_per_request
        if len(body.events) > cap:
            raise invalid("events", f"at most {cap} events (got {len(body.events)})")
        await self._check_known(list(dict.fromkeys(e.item_id for e in body.events)), store_needed=True)
        events = [UserEvent(e.user_id, e.item_id, e.timestamp, e.event_id) for e in body.events]
        try:
            accepted, duplicates = await self.user_events_store.add(events)
        except STORE_ERRORS as exc:
            self.metrics.redis_errors.labels(operation="events").inc()
            log.warning("storing %d event(s) failed, Redis unavailable: %s", len(events), exc)
            raise _events_unavailable("the events cannot be stored now") from exc
        return EventsAccepted(accepted=accepted, duplicates=duplicates)

    async def user_events(self, user_id: str) -> UserEventsResponse:
        """The user's stored events, oldest first; a user with none has an empty list."""
        events = await self._read_events(user_id)
        return UserEventsResponse(user_id=user_id,
                                  events=[StoredEvent(item_id=e.item_id, timestamp=e.timestamp) for e in events])

    def _filtered(self, query: dict[str, list[str]] | None) -> AbstractSet[str] | None:
        """The items a request's filter lets through (None: no filter), from the catalog's filter
        index; 422 unknown_filter_field when a field is one no item has."""
        if query is None:
            return None
        unknown = self.catalog.unknown_filter_fields(query)
        if unknown:
            known = self.catalog.filter_fields
            raise ApiError(422, "unknown_filter_field",
                           f"no item has the filter field(s) {', '.join(map(repr, unknown))}; "
                           f"the fields are: {', '.join(known[:MAX_LISTED_FIELDS])}",
                           {"fields": unknown, "known_fields": known[:MAX_LISTED_FIELDS]})
        return self.catalog.matching(query)

    async def _queued(self, submitted: Awaitable, deadline: float | None, gone: asyncio.Event | None = None):
        """The result of a batcher submit, or the API error that sheds it: 503 when the queue is
        full or the deadline passes first, 499 when the client goes away first. Whatever comes
        first, a request that is not answered is dropped from its queue (or its result
        discarded, if its batch already runs)."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(submitted)
        watch = asyncio.ensure_future(gone.wait()) if gone is not None else None
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            done, _ = await asyncio.wait({task} | ({watch} if watch else set()), timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if task in done:
            try:
                return task.result()
            except QueueFull as exc:
                self.metrics.shed.labels(reason="queue_full").inc()
                raise _overloaded("queue_full", "too many requests are waiting; retry later") from exc
            except DeadlineExceeded as exc:
                self.metrics.shed.labels(reason="deadline").inc()
                raise _overloaded("deadline_exceeded", self._deadline_message()) from exc
            except BatcherClosed as exc:
                raise ApiError(503, "shutting_down", "the service is shutting down") from exc
        task.cancel()
        if watch is not None and watch in done:
            self.metrics.shed.labels(reason="client_gone").inc()
            raise ApiError(499, "client_closed_request", "the client closed the connection")
        self.metrics.shed.labels(reason="deadline").inc()
        raise _overloaded("deadline_exceeded", self._deadline_message())

    def _deadline_message(self) -> str:
        return f"no answer within {self.settings.request_timeout_s:g} s (GENREC_REQUEST_TIMEOUT_S); retry later"

    async def _look_up_missing(self, item_ids: list[str]) -> tuple[list[str], bool]:
        """(ids still unknown after asking Redis, whether Redis answered): an item minted on
        another replica a moment ago is usable here before the event follower brings it.

        The lookup is optional, so it gets `redis_lookup_timeout_s`, not the full Redis
        timeout: with Redis down or hung the request is answered from memory at once (the
        ids stay unknown) instead of waiting on, or failing with, the store. It is one
        pipelined read of at most GENREC_MAX_REDIS_LOOKUPS ids; a request naming more unknown
        ids is answered without any read."""
        if len(item_ids) > self.settings.max_redis_lookups:  # no read at all: a request costs Redis little
            return item_ids, True
        try:
            records = await asyncio.wait_for(self.registry.get_items(item_ids), self.settings.redis_lookup_timeout_s)
        except (*STORE_ERRORS, TimeoutError) as exc:
            self.metrics.redis_errors.labels(operation="lookup").inc()
            log.warning("looking up unknown history items in Redis failed: %s", exc or type(exc).__name__)
            return self.catalog.unknown(item_ids), False
        for record in records:
            self._learn(record)
        return self.catalog.unknown(item_ids), True

    # ------------------------------------------------------------------ minting

    async def create_item(self, body: ItemCreateRequest, deadline: float | None = None) -> tuple[str, bool]:
        """(textual_id, created) for the item; mints it when nobody has. An item that exists
        answers with its ID when it was posted with the same metadata, else 409 (nothing is
        stored). A mint still queued at `deadline` is dropped (503); one under way is awaited
        (its generator rounds are capped)."""
        check_metadata(body.metadata, self.settings)
        text, vocabulary = texts_for(body.metadata, self.engine.max_text_chars)
        if not text or not vocabulary.strip():
            raise invalid("metadata", "has no text (every value is empty)")
        job = MintJob(body.item_id, text, vocabulary, digest=text_digest(text))
        try:
            return await self._find_or_mint(body.item_id, job, body.metadata, deadline)
        except ReplicationUnconfirmedError as exc:
            self.metrics.redis_errors.labels(operation="wait").inc()
            log.warning("minting %r: %s", body.item_id, exc)
            raise _mint_unconfirmed(exc) from exc
        except (*STORE_ERRORS, StoreUnavailableError) as exc:
            self.metrics.redis_errors.labels(operation="mint").inc()
            log.warning("minting %r failed, Redis unavailable: %s", body.item_id, exc)
            raise _mint_unavailable() from exc

    async def _find_or_mint(self, item_id: str, job: MintJob, metadata: dict,
                            deadline: float | None = None) -> tuple[str, bool]:
        """The known ID (memory, then Redis), the result of a mint of this item under way, or a
        new mint; an existing item posted with other metadata raises the 409. Two posts of one
        item at once, on any replicas, are decided by the commit script: the one that finds the
        item written compares against what the other wrote."""
        known = self.catalog.textual_id(item_id)
        if known is not None:
            check_same_item(await self._existing(item_id), metadata)
            await self.registry.confirm(item_id)  # with GENREC_REDIS_WAIT_REPLICAS: on enough replicas
            return known, False
        inflight = self._inflight_mints.get(item_id)
        if inflight is None:
            existing = await self.registry.get_item(item_id)
            if existing is not None:
                self._learn(existing)
                check_same_item(existing, metadata)
                await self.registry.confirm(item_id)
                return existing.textual_id, False
            inflight = self._inflight_mints.get(item_id)  # another request may have started meanwhile
        if inflight is not None:
            result = await asyncio.shield(inflight)
            check_same_item(result.record, metadata)
            return result.record.textual_id, False
        task = asyncio.create_task(self._mint_and_commit(job, metadata, deadline))
        self._inflight_mints[item_id] = task
        task.add_done_callback(lambda _t: self._inflight_mints.pop(item_id, None))
        result = await asyncio.shield(task)  # a client that goes away does not stop a mint halfway
        if not result.created:  # another replica committed the item first
            check_same_item(result.record, metadata)
        return result.record.textual_id, result.created

    async def _existing(self, item_id: str) -> ItemRecord:
        """The record of an item this replica knows: from memory when it holds the whole record,
        else from Redis (a Redis that has lost it is treated as unavailable: the item is being
        written back, docs/reliability.md)."""
        record = self.catalog.record(item_id) or await self.registry.get_item(item_id)
        if record is None:
            raise StoreUnavailableError(f"item {item_id!r} is known here but missing from Redis")
        return record

    async def _mint_and_commit(self, job: MintJob, metadata: dict, deadline: float | None = None) -> CommitResult:
        """Mints (a repeat of known metadata text: straight to a numeric suffix of the ID that text
        got first, without the generator), commits, and records a new text's ID for its repeats."""
        repeat = await self.registry.repeat_of(job.digest, self.bundle_bases.get(job.digest, ""))
        if repeat is not None:
            job = job.repeating(*repeat)
        minted: MintResult = await self._queued(self.mint_batcher.submit(job, deadline), None)
        try:
            result = await self.registry.commit(
                job.item_id,
                minted.minted.textual_id,
                self.engine.trie_key(minted.minted),
                job.text,
                metadata,
                minted.marker,
            )
        except ReplicationUnconfirmedError as exc:
            # Written on the master, not acknowledged: held like any item, so that a retry
            # finds it and, should a failover lose it, this replica restores it.
            if exc.result is not None:
                self._learned_commit(exc.result)
            raise
        self._learned_commit(result)
        if result.created:
            if repeat is not None:
                self.metrics.mint_repeats.inc()
            else:
                await self._remember_text(job.digest, minted)
        return result

    def _learned_commit(self, result: CommitResult) -> None:
        self._learn(result.record)
        if result.created:
            self.catalog.note_entry(result.record.item_id, result.entry_id)
            self.metrics.items_minted.inc()

    async def _remember_text(self, digest: str, minted: MintResult) -> None:
        """Best effort (the item is committed already): the base of this text's first ID."""
        words = minted.minted.textual_id.split(" ")
        base = " ".join(words[:-1] if minted.minted.suffixed and len(words) > 1 else words)
        try:
            await self.registry.remember_text(digest, base)
        except STORE_ERRORS as exc:
            log.warning("could not record the metadata text of a minted item: %s", exc)

    def _learn(self, record: ItemRecord) -> None:
        try:
            if self.catalog.add(record.item_id, record.textual_id, record.token_ids, record.metadata):
                self._after_add(followed=False, count=False)
        except ValueError as exc:
            log.error("item %r cannot join the trie: %s", record.item_id, exc)
            return
        self.catalog.remember(record)

    def _discard_mint(self, job: MintJob, result: MintResult) -> None:
        asyncio.get_running_loop().create_task(self.registry.release(result.minted.textual_id, result.marker))

    # ------------------------------------------------------------------ reads

    async def get_item(self, item_id: str) -> ItemRecordResponse:
        """The item's record from Redis; when Redis cannot answer, from memory (as
        recommendations are), if this replica knows the item."""
        try:
            record = await self.registry.get_item(item_id)
        except STORE_ERRORS as exc:
            self.metrics.redis_errors.labels(operation="item").inc()
            held = self._held_item(item_id)
            if held is None:
                raise StoreUnavailableError(f"cannot read item {item_id!r}: {exc}") from exc
            log.warning("reading item %r from Redis failed (%s); answered from memory", item_id, exc)
            return held
        if record is None:
            raise ApiError(404, "item_not_found", f"item {item_id!r} is not in the catalog", {"item_id": item_id})
        if record.source == "minted" and record.item_id in self.catalog:
            self.catalog.remember(record)
        return self._item_response(record)

    def search_items(self, query: str, limit: int) -> ItemSearchResponse:
        """Items whose titles match `query`, from memory (service/title_search.py)."""
        hits = [
            ItemSearchHit(item_id=item_id, textual_id=self.catalog.textual_id(item_id) or "", title=title,
                          recommendable=self.engine.is_recommendable(item_id))
            for item_id, title in self.catalog.search(query, limit)
        ]
        return ItemSearchResponse(items=hits)

    def _item_response(self, record: ItemRecord, partial: bool = False) -> ItemRecordResponse:
        return ItemRecordResponse(
            item_id=record.item_id,
            textual_id=record.textual_id,
            metadata=record.metadata,
            text=record.text,
            source=record.source,
            created_at=record.created_at or None,
            recommendable=self.engine.is_recommendable(record.item_id),
            partial=partial,
        )

    def _held_item(self, item_id: str) -> ItemRecordResponse | None:
        """What memory holds of an item: the whole record of a bundle item (Redis holds what
        the bundle has) and of a minted one this replica committed or read; of an item learned
        only from the events stream, its textual ID (`partial`: no metadata, text or time)."""
        textual_id = self.catalog.textual_id(item_id)
        if textual_id is None:
            return None
        record = self.catalog.record(item_id)
        partial = False
        if record is None:
            text = self.catalog.bundle_text(item_id)
            partial = text is None
            record = ItemRecord(
                item_id=item_id,
                textual_id=textual_id,
                token_ids=[],
                text=text or "",
                metadata=None,
                created_at="" if partial else self.model_info.get("created_at") or "",
                source="minted" if partial else "bundle",
            )
        return self._item_response(record, partial=partial)

def _overloaded(code: str, message: str) -> ApiError:
    """503 for a request shed under load; retrying a second later is fine."""
    return ApiError(503, code, message, headers=retry_after(1))


def _events_unavailable(what: str) -> ApiError:
    return ApiError(503, "store_unavailable", f"{what}: the event store (Redis) is unreachable; retry later "
                    "(events with an event_id are stored once however often they are sent)",
                    headers=retry_after(1))


def _mint_unavailable() -> ApiError:
    """Minting without Redis could hand out an ID that another replica hands out too: refuse."""
    return ApiError(
        503,
        "store_unavailable",
        "cannot mint an ID now: the item registry (Redis) is unreachable, so the new ID's uniqueness "
        "cannot be guaranteed; retry later (retrying with the same item_id is safe)",
        headers={"Retry-After": "1"},
    )


def _mint_unconfirmed(exc: ReplicationUnconfirmedError) -> ApiError:
    """The item is written on the Redis master, but not on enough replicas to survive a
    failover: not acknowledged. A retry answers it (200) once enough replicas confirm it."""
    return ApiError(
        503,
        "store_unavailable",
        f"the item's ID is stored but not yet confirmed by {exc.wanted} Redis replica(s) "
        f"({exc.confirmed} confirmed); retry with the same item_id (safe)",
        headers={"Retry-After": "1"},
    )


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


class PhaseTimer:
    """Times the parts of a generation's load, each into `genrec_startup_seconds{phase}` (a
    reload's overwrite the start's)."""

    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics
        self.start = self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.metrics.startup_seconds.labels(phase=name).set(now - self.last)
        self.last = now

    def total(self) -> None:
        elapsed = time.perf_counter() - self.start
        self.metrics.startup_seconds.labels(phase="total").set(elapsed)
        log.info("loaded in %.2f s", elapsed)
