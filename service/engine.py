"""What runs on the inference thread: batched recommendations and batched ID minting, over the
bundle's method (genrec.method.Method), whichever it is.

Recommendation requests are grouped by the method's `batch_key(k)` (a request's answer must not
depend on its batch-mates), answered with the largest k of the group and trimmed to each
request's k. Minting claims every candidate ID in Redis (SET NX) through the registry's
synchronous client; each claim carries a pending marker of its own (the batch's, numbered) until
its item is committed by the event loop. An item whose metadata text was minted before skips the
method: its ID is that text's first ID with the next free numeric suffix (what the generator
would end with anyway, after all its rounds had found every candidate taken).
"""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

from genrec.bundle import Bundle
from genrec.item_text import flatten_item_text, flatten_metadata, metadata_values_text
from genrec.method import Method, NewItem, Query, Recommendation, RuntimeOptions, load_method
from genrec.popular import PopularItems
from genrec.textual_ids import MintedId, suffixed_id

from .catalog import Catalog
from .metrics import ServiceMetrics
from .registry import Registry


@dataclass(frozen=True)
class RecommendJob:
    history: tuple[str, ...]
    k: int
    exclude_history: bool
    user_id: str | None = None
    exclude_items: tuple[str, ...] = ()  # the request's exclude_items
    allowed: AbstractSet[str] | None = None  # the items its filter lets through (None: no filter)

    def query(self) -> Query:
        exclude = (*self.history, *self.exclude_items) if self.exclude_history else self.exclude_items
        return Query(history=self.history, exclude=exclude, user_id=self.user_id, allowed=self.allowed)


@dataclass(frozen=True)
class MintJob:
    item_id: str
    text: str  # flattened metadata: the generator's input
    vocabulary_text: str  # the words the ID may use
    digest: str = ""  # text_digest(text): how a repeat of the same text is found
    repeat_base: str | None = None  # set for a repeat: the base of the text's first ID...
    repeat_from: int = 2  # ...and the first suffix number to try

    def repeating(self, base: str, n: int) -> MintJob:
        """This job as a repeat of a text whose first ID was made from `base` (suffixes from n + 1)."""
        return replace(self, repeat_base=base, repeat_from=n + 1)


def text_digest(text: str) -> str:
    """The key of an item text in the registry's `mtext:` records."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class MintResult:
    minted: MintedId
    marker: str  # value of the pending claim until it is committed


class RedisUserIdCache:
    """The method's user-ID cache on the registry (`uid:{digest}` keys)."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def get_many(self, keys: Sequence[str]) -> list[list[int] | None]:
        return self.registry.get_user_ids_sync(list(keys))

    def set_many(self, values: dict[str, list[int]]) -> None:
        self.registry.set_user_ids_sync(values)


class Engine:
    """The bundle's method, its catalog and what the service measures around them."""

    def __init__(self, bundle: Bundle, catalog: Catalog, registry: Registry | None, metrics: ServiceMetrics,
                 num_beams: int | None = None, method: Method | None = None, mint_max_rounds: int | None = None,
                 device: str | None = None, precision: str | None = None, quantize: str | None = None):
        self.bundle = bundle
        self.catalog = catalog
        self.registry = registry
        self.metrics = metrics
        options = RuntimeOptions(num_beams=num_beams, mint_max_rounds=mint_max_rounds, device=device,
                                 precision=precision, quantize=quantize)
        self.method = method if method is not None else load_method(bundle, options)
        self.eos_token_id = bundle.tokenizer.eos_token_id
        self.max_text_chars = bundle.train_config.data.max_text_chars
        self.cache = RedisUserIdCache(registry) if registry is not None else None
        # The answer for an empty history; None for a bundle written before popularity lists.
        self.popular = PopularItems(bundle.popularity) if bundle.popularity is not None else None

    @property
    def new_items_recommendable(self) -> bool:
        return self.method.new_items_recommendable

    def is_recommendable(self, item_id: str) -> bool:
        return self.method.is_recommendable(item_id)

    # ------------------------------------------------------------------ recommendations

    def recommend_batch(self, jobs: list[RecommendJob]) -> list[list[Recommendation] | Exception]:
        trie = self.catalog.trie  # the latest (possibly folded) trie
        results: list[list[Recommendation] | Exception] = [[] for _ in jobs]
        groups: dict[object, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(self.method.batch_key(job.k), []).append(index)
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            start = time.perf_counter()
            try:
                found = self.method.recommend([job.query() for job in group], max(job.k for job in group), trie,
                                              self.cache)
            except Exception as exc:  # one failing group does not fail the others
                for i in indices:
                    results[i] = exc
                continue
            finally:
                self.metrics.decode_latency.observe(time.perf_counter() - start)
            for i, job, row in zip(indices, group, found, strict=True):
                results[i] = row[: job.k]
        return results

    def recommend_popular(self, job: RecommendJob) -> list[Recommendation]:
        """The most popular items for a job with an empty history (no model runs: cheap enough for
        the event loop); none for a bundle without a popularity list."""
        return self.popular.recommend(job.query(), job.k) if self.popular is not None else []

    # ------------------------------------------------------------------ minting

    def mint_batch(self, jobs: list[MintJob]) -> list[MintResult]:
        """Unique IDs for a batch of new items, each claimed in Redis with a pending marker.

        On failure every claim this batch made is given back before the error propagates.
        """
        if self.registry is None:
            raise RuntimeError("minting needs the registry")
        batch = f"pending:{uuid.uuid4().hex}"
        attempts = itertools.count()
        claimed: dict[str, str] = {}  # textual ID -> the marker of this batch's claim on it

        def claim(textual_id: str) -> bool:
            # One marker per claim, not per batch: a claim retried after its reply was lost
            # knows itself by its marker, and cannot take an ID another item of the batch holds.
            marker = f"{batch}:{next(attempts)}"
            if self.registry.claim_sync(textual_id, marker):
                claimed[textual_id] = marker
                return True
            return False

        start = time.perf_counter()
        try:
            minted = self._mint(jobs, claim)
        except BaseException:
            for textual_id, marker in claimed.items():
                self.registry.release_sync([textual_id], marker)
            raise
        finally:
            self.metrics.mint_latency.observe(time.perf_counter() - start)
        return [MintResult(m, claimed[m.textual_id]) for m in minted]

    def _mint(self, jobs: list[MintJob], claim) -> list[MintedId]:
        """Repeats of known texts straight to their suffix; the other items through the method."""
        minted: list[MintedId | None] = [None] * len(jobs)
        fresh = [i for i, job in enumerate(jobs) if job.repeat_base is None]
        for i, job in enumerate(jobs):
            if job.repeat_base is not None:
                minted[i] = suffixed_id(self.bundle.tokenizer, job.repeat_base, claim, start=job.repeat_from)
        if fresh:
            made = self.method.mint([NewItem(jobs[i].text, jobs[i].vocabulary_text) for i in fresh], claim)
            for i, one in zip(fresh, made, strict=True):
                minted[i] = one
        return minted

    def trie_key(self, minted: MintedId) -> list[int]:
        return list(minted.token_ids) + [self.eos_token_id]


def texts_for(metadata: dict, max_chars: int | None) -> tuple[str, str]:
    """(generator input, ID vocabulary) of an item's metadata."""
    flat = flatten_metadata(metadata)
    return flatten_item_text(flat, max_chars=max_chars), metadata_values_text(flat)
