"""The replica's in-memory catalog: the textual-ID trie (marisa base + overlay of minted items),
item lookups and the title search index, plus the follower that learns other replicas' minted items from Redis.

Folding: `TextualIdTrie` keeps the bundle's items in an immutable marisa trie and minted ones
in an overlay. `fold()` builds a new trie whose base holds every item, in the same index order,
and swaps it in atomically. A decode that started on the old trie stays correct: item indices
never change, and the new trie only knows more items.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from genrec.bundle import BundleItem, BundleItems
from genrec.item_set import IndexedItems
from genrec.item_text import (
    flatten_item_text,
    flatten_metadata,
    item_text_fields,
    item_title,
    title_of_fields,
)
from genrec.trie import TextualIdTrie

from .filters import FilterIndex
from .redis_clients import STORE_ERRORS
from .registry import ItemRecord, MintedEvent, Registry
from .title_search import TitleIndex

log = logging.getLogger("service.catalog")


class Catalog:
    """Item id <-> textual ID <-> trie index, for the bundle's items and the minted ones."""

    def __init__(self, items: Sequence[BundleItem], eos_token_id: int):
        self.eos_token_id = eos_token_id
        items = items if isinstance(items, BundleItems) else BundleItems.of(items)
        # The trie shares the bundle's packed columns; the bundle's items are read through their
        # trie index (which never changes), and the filter and title indexes number items by it.
        self._trie = TextualIdTrie(items.item_ids, items.token_ids, eos_token_id)
        self._items = items
        self._num_bundle = len(items)
        self._minted_textual: dict[str, str] = {}  # textual IDs of the items added after the bundle's
        self._records: dict[str, ItemRecord] = {}  # minted items whose whole record was seen
        self._entries: dict[str, str] = {}  # minted item -> id of its latest events stream entry
        # What request filters match and the title search, from one parse of each item text.
        self._filters = FilterIndex()
        titles = []
        for number, text in enumerate(items.texts):
            fields = item_text_fields(text)
            self._filters.add_fields(number, fields)
            titles.append(title_of_fields(fields, text))
        self._titles = TitleIndex(titles)
        del titles
        self._write_lock = threading.Lock()  # adds and the swap of a fold
        self._fold_lock = threading.Lock()  # one fold at a time
        self.folds = 0

    @property
    def trie(self) -> TextualIdTrie:
        return self._trie

    def __len__(self) -> int:
        return len(self._trie)

    def __contains__(self, item_id: str) -> bool:
        return self._trie.index_of(item_id) is not None

    @property
    def overlay_size(self) -> int:
        return self._trie.overlay_size

    def textual_id(self, item_id: str) -> str | None:
        index = self._trie.index_of(item_id)
        if index is None:
            return None
        return self._items.textual_ids[index] if index < self._num_bundle else self._minted_textual.get(item_id)

    def bundle_text(self, item_id: str) -> str | None:
        index = self._trie.index_of(item_id)
        return self._items.texts[index] if index is not None and index < self._num_bundle else None

    def record(self, item_id: str) -> ItemRecord | None:
        """The whole record of a minted item, when this replica committed or read it."""
        return self._records.get(item_id)

    def remember(self, record: ItemRecord) -> None:
        """Keeps a minted item's record (metadata included), to answer look-ups from memory
        while Redis is unavailable; items never change once minted."""
        if record.source != "bundle":
            self._records[record.item_id] = record

    def token_ids(self, item_id: str) -> list[int] | None:
        """The item's trie key (ID tokens + EOS)."""
        trie = self._trie
        index = trie.index_of(item_id)
        return None if index is None else list(trie.sequence(index))

    def note_entry(self, item_id: str, entry_id: str) -> None:
        """Where a minted item is in the events stream (to know what a lossy failover took)."""
        if entry_id:
            self._entries[item_id] = entry_id

    def minted_since(self, entry_id: str) -> list[str]:
        """The minted items this replica holds whose stream entry comes after `entry_id`, in
        stream order."""
        after = _entry_order(entry_id)
        later = [(order, item) for item, entry in list(self._entries.items()) if (order := _entry_order(entry)) > after]
        return [item for _order, item in sorted(later)]

    def search(self, query: str, limit: int) -> list[tuple[str, str]]:
        """(item id, title) of up to `limit` items whose titles match `query` (service/title_search.py)."""
        keys = self._trie.item_keys
        return [(keys[number], title) for number, title in self._titles.search(query, limit)]

    def unknown(self, item_ids: Iterable[str]) -> list[str]:
        """The ids (first occurrence order, no repeats) that the catalog does not hold."""
        trie = self._trie
        return [i for i in dict.fromkeys(item_ids) if trie.index_of(i) is None]

    def add(self, item_id: str, textual_id: str, token_ids: Sequence[int], metadata: Mapping | None = None) -> bool:
        """Adds a minted item (idempotent) to the trie, and its posted metadata to the filter index
        and the title search, at once; True when it was new. ValueError on a conflict. An item
        first known without its metadata (an events entry of an older version, a restore of an ID
        alone) is indexed when a later add brings it."""
        with self._write_lock:
            known = self.textual_id(item_id)
            if known is not None and known != textual_id:
                raise ValueError(f"item {item_id!r} already has the textual ID {known!r}")
            if known is None:
                self._trie.add(item_id, token_ids)
                self._minted_textual[item_id] = textual_id
            if metadata:
                number = self._trie.index_of(item_id)
                self._filters.add(number, metadata)
                self._titles.add(number, item_title(flatten_item_text(flatten_metadata(metadata))))
            return known is None

    @property
    def filter_fields(self) -> list[str]:
        """The metadata fields a filter may name (some item has them), sorted."""
        with self._write_lock:
            return self._filters.fields

    def unknown_filter_fields(self, fields: Iterable[str]) -> list[str]:
        with self._write_lock:
            return self._filters.unknown_fields(fields)

    def matching(self, query: Mapping[str, Sequence[str]]) -> IndexedItems:
        """The items that qualify for a request's filter, a set of item ids held as their trie
        indices (a new one: the caller owns it)."""
        with self._write_lock:
            return IndexedItems(self._filters.matching(query), self._trie)

    def fold(self) -> bool:
        """Rebuilds the trie with the overlay folded into its marisa base; safe while decodes
        and adds run (adds made during the rebuild are replayed before the swap)."""
        if not self._fold_lock.acquire(blocking=False):
            return False
        try:
            with self._write_lock:
                old = self._trie
                if old.overlay_size == 0:
                    return False
                count = len(old)
                keys = old.item_keys[:count]
                sequences = [old.sequence(i) for i in range(count)]
            # The slow part (marisa and the base decoding tables), outside the write lock:
            # adds and decodes go on against the old trie meanwhile.
            new = TextualIdTrie(keys, sequences, self.eos_token_id)
            new.numbering = old.numbering  # the same indices
            new.base_tables()
            with self._write_lock:
                for index in range(count, len(old)):  # adds made meanwhile: overlay edges only
                    new.add(old.item_keys[index], old.sequence(index))
                new.tables()  # the first decode after the swap should not pay for it
                self._trie = new
            self.folds += 1
            return True
        finally:
            self._fold_lock.release()


def release_free_memory() -> None:
    """Hands the C heap's free pages back to the system (glibc's malloc_trim): building a large
    catalog frees hundreds of MB of temporary arrays and dictionaries that glibc would otherwise
    keep, counted in the process's resident memory. Nothing elsewhere (no glibc): no-op."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class TextDigests:
    """The digest of a bundle item's text -> its textual ID (`get`, as a dict's), for the mints
    that repeat a bundle item's text: the digests' first 64 bits, sorted, and the items'
    positions, 12 bytes an item rather than a dictionary entry and a digest string (about 180);
    a prefix found is confirmed against the item's whole digest."""

    def __init__(self, items: Sequence[BundleItem], digest: Callable[[str], str]):
        items = items if isinstance(items, BundleItems) else BundleItems.of(items)
        self._items = items
        self._digest = digest
        prefixes = np.fromiter((int(digest(text)[:16], 16) for text in items.texts), dtype=np.uint64,
                               count=len(items))
        order = np.argsort(prefixes, kind="stable")
        self._prefixes = prefixes[order]
        self._order = order.astype(np.int32 if len(items) < 2**31 else np.int64)

    def get(self, digest: str, default: str = "") -> str:
        """The textual ID of the (last) bundle item whose text has this digest, else `default`."""
        try:
            key = np.uint64(int(digest[:16], 16))
        except ValueError:
            return default
        lo = int(np.searchsorted(self._prefixes, key, side="left"))
        hi = int(np.searchsorted(self._prefixes, key, side="right"))
        for position in range(hi - 1, lo - 1, -1):
            index = int(self._order[position])
            if self._digest(self._items.texts[index]) == digest:
                return self._items.textual_ids[index]
        return default


class EventFollower:
    """Reads the events stream from the last id seen and adds other replicas' items.

    It outlives Redis outages: a failed read is retried with exponential backoff (capped at
    `max_backoff_s`) for as long as the app runs, and resumes after `last_id`, so the items
    minted while this replica was cut off arrive once Redis answers again, without a restart.
    On a cluster the reads follow the stream's slot to whichever node serves it (redirects
    after a migration, a new slot map after a failover).

    Before each read it checks that the entry it had read last before the previous read is
    still in the stream (entries are never deleted): a Redis that changed under that read (a
    failover to a replica that had not received the newest entries, or a Redis restarted
    without its data, even one the client reconnected to at once) shows as that entry gone.
    The follower then goes on from the newest entry left at or before it (new entries could
    otherwise fall below `last_id` and be skipped) and reports that entry (`on_rewind`), after
    which the app writes back the lost items it holds. The check costs one XREVRANGE a read.
    (Comparing with the stream's last id instead would miss the loss once new entries or
    another replica's restores follow it.)
    """

    def __init__(
        self,
        registry: Registry,
        catalog: Catalog,
        last_id: str,
        *,
        block_ms: int = 1000,
        max_backoff_s: float = 2.0,
        on_added: Callable[[MintedEvent], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        on_rewind: Callable[[str], None] | None = None,
    ):
        self.registry = registry
        self.catalog = catalog
        self.last_id = last_id
        self.block_ms = block_ms
        self.max_backoff_s = max_backoff_s
        self.on_added = on_added
        self.on_error = on_error
        self.on_rewind = on_rewind
        self.rewinds = 0
        self.connected = True  # False from a failed read until the next one succeeds
        self._task: asyncio.Task | None = None
        self._stopping = False

    def apply(self, events: Iterable[MintedEvent]) -> int:
        added = 0
        for event in events:
            self.last_id = event.entry_id
            if not (event.item_id and event.textual_id and event.token_ids):
                log.warning("event %s is malformed; skipped", event.entry_id)
                continue
            self.catalog.note_entry(event.item_id, event.entry_id)
            try:
                if self.catalog.add(event.item_id, event.textual_id, event.token_ids, event.metadata):
                    added += 1
                    if self.on_added is not None:
                        self.on_added(event)
            except ValueError as exc:
                log.warning("event %s: item %r not added: %s", event.entry_id, event.item_id, exc)
        return added

    async def run(self) -> None:
        backoff = 0.1
        boundary = None  # `last_id` before the previous read
        while not self._stopping:
            try:
                if boundary is not None:
                    await self._check_continuity(boundary)
                boundary = self.last_id
                events = await self.registry.read_events(self.last_id, block_ms=self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis, network or a malformed entry: never die
                if self._stopping:
                    return
                self._failed(exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if not self.connected:
                log.info("events stream readable again; resuming after entry %s", self.last_id)
                self.connected = True
            backoff = 0.1
            self.apply(events)

    async def _check_continuity(self, entry_id: str) -> None:
        if entry_id == "0-0":
            return
        last = await self.registry.latest_event_up_to(entry_id)
        if last == entry_id:
            return
        log.error("entry %s of the events stream, which this replica read, is gone, and the stream has nothing "
                  "between it and %s: entries were lost (a Redis failover to a replica that had not received them, "
                  "or Redis restarted without its data); following on from %s", entry_id, last, last)
        self.last_id = last
        self.rewinds += 1
        if self.on_rewind is not None:
            self.on_rewind(last)

    def _failed(self, exc: Exception, backoff: float) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        if isinstance(exc, STORE_ERRORS):
            log.warning("following the events stream failed (%s); retrying in %.1f s", exc, backoff)
        else:
            log.exception("following the events stream failed; retrying in %.1f s", backoff)
        self.connected = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="genrec-event-follower")

    async def stop(self) -> None:
        """Cancels the follower; the stop flag ends it as well should a cancellation be lost
        inside the Redis client (its blocking read returns within block_ms)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.block_ms / 1000 + 5)
        if not done:
            log.warning("the event follower did not stop")
        elif not task.cancelled() and task.exception() is not None:
            log.warning("the event follower ended with %r", task.exception())


def _entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("<ms>-<seq>") as a tuple that sorts as Redis orders entries."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
