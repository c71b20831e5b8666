"""What runs on the inference thread: batched recommendation decoding and batched ID minting.

Both take a whole micro-batch. Recommendation requests are grouped by beam width (a request's
answer must not depend on its batch-mates), decoded with the largest k of the group and
trimmed to each request's k. Minting claims every candidate ID in Redis (SET NX) through the
registry's synchronous client; the claims carry a marker of the batch until each item is
committed by the event loop.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, fields

import torch

from genrec.bundle import Bundle
from genrec.errors import BundleError
from genrec.item_text import flatten_item_text, metadata_values_text
from genrec.minting import MintConfig, MintedId, mint_ids
from genrec.prompts import TEST_TEMPLATE
from genrec.recommend import IdGenRecRecommender, Recommendation
from genrec.user_ids import DEFAULT_MAX_WORDS, generate_user_ids, history_digest

from .catalog import Catalog
from .metrics import ServiceMetrics
from .registry import Registry

log = logging.getLogger("service.engine")


@dataclass(frozen=True)
class RecommendJob:
    history: tuple[str, ...]
    k: int
    exclude_history: bool
    user_id: str | None = None


@dataclass(frozen=True)
class MintJob:
    item_id: str
    text: str  # flattened metadata: the generator's input
    vocabulary_text: str  # the words the ID may use


@dataclass(frozen=True)
class MintResult:
    minted: MintedId
    marker: str  # value of the pending claim until it is committed


class Engine:
    def __init__(self, bundle: Bundle, catalog: Catalog, registry: Registry | None, metrics: ServiceMetrics,
                 num_beams: int | None = None):
        if bundle.kind != "idgenrec":
            raise BundleError(f"this service serves idgenrec bundles, not {bundle.kind!r}")
        if bundle.recommender is None or bundle.id_generator is None:
            raise BundleError("the bundle lacks its recommender or id_generator model")
        config = bundle.config
        self.bundle = bundle
        self.catalog = catalog
        self.registry = registry
        self.metrics = metrics
        self.tokenizer = bundle.tokenizer
        self.num_beams = int(num_beams or config.get("eval", {}).get("num_beams", 10))
        self.mint_config = mint_config_from(config.get("generator", {}).get("mint", {}))
        self.max_text_chars = config.get("data", {}).get("max_text_chars")
        self.recommender = IdGenRecRecommender(
            bundle.recommender,
            bundle.tokenizer,
            catalog.trie,
            template=TEST_TEMPLATE,
            max_history=int(config.get("data", {}).get("max_history", 20)),
            max_source_length=int(config.get("recommender", {}).get("max_source_length", 512)),
        )
        # Textual user IDs (SPEC 1.5): when the bundle was trained with them, the bundle's
        # generator builds them from the request's own history (the request's user_id is not used).
        alternate = config.get("alternate", {})
        self.uses_user_ids = bool(config.get("recommender", {}).get("user_ids", False) or alternate.get("user_ids", False))
        self.user_id_max_words = int(alternate.get("user_id_max_words", DEFAULT_MAX_WORDS))

    def beams_for(self, k: int) -> int:
        return max(self.num_beams, k)

    def user_id_tokens(self, job: RecommendJob) -> list[int] | None:
        """Tokens filling {user_id} in the prompt (None when the bundle has no user IDs)."""
        return self.user_id_tokens_batch([job])[0]

    def user_id_tokens_batch(self, jobs: list[RecommendJob]) -> list[list[int] | None]:
        """User IDs of the requests' visible histories (the last max_history items), cached in
        Redis under `uid:{sha1 of the history's ID tokens}`: one MGET for the whole batch, the
        misses generated in one batch and written back in one pipelined round trip."""
        if not self.uses_user_ids:
            return [None] * len(jobs)
        trie = self.catalog.trie
        histories = []
        for job in jobs:
            recent = list(job.history)[-self.recommender.max_history :]
            indices = [trie.index_of(item) for item in recent]
            # Unknown items are reported by the recommender; they do not feed the user ID.
            histories.append([list(trie.sequence(i)[:-1]) for i in indices if i is not None])
        digests = [history_digest(h, self.user_id_max_words) for h in histories]
        found = self.registry.get_user_ids_sync(digests) if self.registry is not None else [None] * len(jobs)
        missing = [i for i, tokens in enumerate(found) if tokens is None]
        if missing:
            with torch.inference_mode():
                made = generate_user_ids(
                    self.bundle.id_generator, self.tokenizer, [histories[i] for i in missing],
                    max_words=self.user_id_max_words, max_source_length=self.mint_config.max_source_length,
                )
            for i, tokens in zip(missing, made, strict=True):
                found[i] = tokens
            if self.registry is not None:
                self.registry.set_user_ids_sync({digests[i]: found[i] for i in missing})
        return found

    # ------------------------------------------------------------------ recommendations

    def recommend_batch(self, jobs: list[RecommendJob]) -> list[list[Recommendation] | Exception]:
        self.recommender.trie = self.catalog.trie  # the latest (possibly folded) trie
        results: list[list[Recommendation] | Exception] = [[] for _ in jobs]
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(self.beams_for(job.k), []).append(index)
        for beams, indices in sorted(groups.items()):
            group = [jobs[i] for i in indices]
            start = time.perf_counter()
            try:
                found = self.recommender.recommend(
                    [list(job.history) for job in group],
                    max(job.k for job in group),
                    num_beams=beams,
                    exclude_history=False,
                    exclude_items=[list(job.history) if job.exclude_history else [] for job in group],
                    user_id_tokens=self.user_id_tokens_batch(group) if self.uses_user_ids else None,
                )
            except Exception as exc:  # one failing group does not fail the others
                for i in indices:
                    results[i] = exc
                continue
            finally:
                self.metrics.decode_latency.observe(time.perf_counter() - start)
            for i, job, row in zip(indices, group, found, strict=True):
                results[i] = row[: job.k]
        return results

    # ------------------------------------------------------------------ minting

    def mint_batch(self, jobs: list[MintJob]) -> list[MintResult]:
        """Unique IDs for a batch of new items, each claimed in Redis with a pending marker.

        On failure every claim this batch made is given back before the error propagates.
        """
        if self.registry is None:
            raise RuntimeError("minting needs the registry")
        marker = f"pending:{uuid.uuid4().hex}"
        claimed: list[str] = []

        def claim(textual_id: str) -> bool:
            if self.registry.claim_sync(textual_id, marker):
                claimed.append(textual_id)
                return True
            return False

        start = time.perf_counter()
        try:
            with torch.inference_mode():
                minted, _stats = mint_ids(
                    self.bundle.id_generator,
                    self.tokenizer,
                    [job.text for job in jobs],
                    claim,
                    self.mint_config,
                    progress=False,
                    vocabulary_texts=[job.vocabulary_text for job in jobs],
                )
        except BaseException:
            self.registry.release_sync(claimed, marker)
            raise
        finally:
            self.metrics.mint_latency.observe(time.perf_counter() - start)
        return [MintResult(m, marker) for m in minted]

    def trie_key(self, minted: MintedId) -> list[int]:
        return list(minted.token_ids) + [self.tokenizer.eos_token_id]

    minted_items_recommendable = True  # a minted ID joins the trie: beam search can produce it

    def is_recommendable(self, item_id: str) -> bool:
        return True


def mint_config_from(values: dict) -> MintConfig:
    """The bundle's minting settings; keys this version of genrec does not know are skipped
    (a bundle written by an older or newer core still serves)."""
    known = {f.name for f in fields(MintConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        log.warning("bundle mint settings not known here, ignored: %s", ", ".join(unknown))
    return MintConfig(**{k: v for k, v in values.items() if k in known})


def flatten_metadata(metadata: dict) -> dict[str, str]:
    """Request metadata (strings, numbers, lists of strings) as string values."""
    flat: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, list):
            flat[key] = " ".join(str(v) for v in value)
        elif isinstance(value, float) and value.is_integer():
            flat[key] = str(int(value))
        else:
            flat[key] = str(value)
    return flat


def texts_for(metadata: dict, max_chars: int | None) -> tuple[str, str]:
    """(generator input, ID vocabulary) of an item's metadata."""
    flat = flatten_metadata(metadata)
    return flatten_item_text(flat, max_chars=max_chars), metadata_values_text(flat)


def create_engine(bundle: Bundle, catalog: Catalog, registry: Registry | None, metrics: ServiceMetrics,
                  num_beams: int | None = None):
    """The engine for the bundle's kind: `Engine` (idgenrec) or `Cllm4RecEngine` (cllm4rec)."""
    if bundle.kind == "cllm4rec":
        from .cllm4rec_engine import Cllm4RecEngine

        return Cllm4RecEngine(bundle, catalog, registry, metrics)
    return Engine(bundle, catalog, registry, metrics, num_beams=num_beams)
