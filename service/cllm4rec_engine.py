"""The inference-thread engine for bundles of kind "cllm4rec" (SPEC 2): same interface as
`service.engine.Engine` (recommend_batch, mint_batch, trie_key, is_recommendable).

Recommendations: one forward pass for the whole micro-batch scores every item the model has a
token for (score = the item head's log-softmax); history items are removed; top-k.

New items: they get a textual ID from their title words (unique, claimed in Redis like any other)
and are stored like any other item, but they have no item token in the trained model: they are
not recommendable (and are skipped when they appear in a history) until the bundle is retrained.
"""

from __future__ import annotations

import time
import uuid

from genrec.bundle import Bundle
from genrec.cllm4rec import MODEL_DIR, Cllm4RecRecommender, load_cllm4rec, title_textual_id
from genrec.errors import BundleError
from genrec.minting import MintedId
from genrec.recommend import Recommendation

from .catalog import Catalog
from .engine import MintJob, MintResult, RecommendJob
from .metrics import ServiceMetrics
from .registry import Registry


class Cllm4RecEngine:
    minted_items_recommendable = False

    def __init__(self, bundle: Bundle, catalog: Catalog, registry: Registry | None, metrics: ServiceMetrics):
        if bundle.kind != "cllm4rec":
            raise BundleError(f"Cllm4RecEngine serves cllm4rec bundles, not {bundle.kind!r}")
        folder = bundle.path / MODEL_DIR
        if not folder.is_dir():
            raise BundleError(f"the bundle lacks its {MODEL_DIR}/ model folder")
        config = bundle.config
        self.bundle = bundle
        self.catalog = catalog
        self.registry = registry
        self.metrics = metrics
        self.tokenizer = bundle.tokenizer
        self.max_text_chars = config.get("data", {}).get("max_text_chars")
        self.model = load_cllm4rec(folder)
        max_items = int(config.get("cllm4rec", {}).get("max_prompt_items", 50))
        self.recommender = Cllm4RecRecommender(self.model, self.tokenizer, max_history=max_items)

    def is_recommendable(self, item_id: str) -> bool:
        """Only items with a token in the trained model can be recommended."""
        return item_id in self.model.item_index

    def recommend_batch(self, jobs: list[RecommendJob]) -> list[list[Recommendation] | Exception]:
        start = time.perf_counter()
        try:
            found = self.recommender.recommend(
                [list(job.history) for job in jobs],
                max(job.k for job in jobs),
                users=[job.user_id for job in jobs],
                exclude_history=False,
                exclude_items=[list(job.history) if job.exclude_history else [] for job in jobs],
            )
        except Exception as exc:
            return [exc for _ in jobs]
        finally:
            self.metrics.decode_latency.observe(time.perf_counter() - start)
        return [row[: job.k] for job, row in zip(jobs, found, strict=True)]

    def mint_batch(self, jobs: list[MintJob]) -> list[MintResult]:
        """Title-word IDs for new items, each claimed in Redis (SET NX) with a pending marker."""
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
            minted = [title_textual_id(self.tokenizer, job.text, claim) for job in jobs]
        except BaseException:
            self.registry.release_sync(claimed, marker)
            raise
        finally:
            self.metrics.mint_latency.observe(time.perf_counter() - start)
        return [MintResult(m, marker) for m in minted]

    def trie_key(self, minted: MintedId) -> list[int]:
        return list(minted.token_ids) + [self.tokenizer.eos_token_id]
