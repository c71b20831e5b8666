"""IDGenRec behind the method interface: recommendations by trie-constrained beam search over
the textual IDs of every known item (minted ones included), new items minted by the ID
generator, so they are recommendable at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..bundle import Bundle
from ..config import TrainConfig
from ..device import model_device
from ..errors import BundleError
from ..method import Claim, Method, NewItem, Query, Recommendation, RuntimeOptions, UserIdCache
from ..modeling import load_t5
from ..textual_ids import MintedId
from ..trie import TextualIdTrie
from .config import IdGenRecSections
from .minting import mint_ids
from .prompts import TEST_TEMPLATE
from .recommender import IdGenRecRecommender
from .user_ids import generate_user_ids, history_digest

RECOMMENDER_DIR = "recommender"
GENERATOR_DIR = "id_generator"


class IdGenRec(Method):
    kind = "idgenrec"
    label = "IDGenRec"
    config_class = IdGenRecSections
    new_items_recommendable = True  # a minted ID joins the trie: beam search can produce it

    def __init__(self, recommender_model, id_generator, tokenizer, config: TrainConfig,
                 options: RuntimeOptions | None = None):
        self.tokenizer = tokenizer
        self.id_generator = id_generator
        self.recommender_model = recommender_model
        self.num_beams = int((options.num_beams if options else None) or config.eval.num_beams)
        self.mint_config = config.generator.mint
        if options is not None and options.mint_max_rounds is not None:
            self.mint_config = replace(self.mint_config, max_rounds=options.mint_max_rounds)
        self.recommender = IdGenRecRecommender(
            recommender_model, tokenizer, None, template=TEST_TEMPLATE,
            max_history=config.data.max_history, max_source_length=config.recommender.max_source_length,
        )
        # Textual user IDs (docs/methods.md, "Textual user IDs"): when the bundle was trained
        # with them, the generator builds them from the query's profile (default: its history).
        self.uses_user_ids = bool(config.recommender.user_ids or config.alternate.user_ids)
        self.user_id_max_words = config.alternate.user_id_max_words
        self._user_ids: dict[str, list[int]] = {}  # used when the caller brings no cache

    @classmethod
    def load(cls, bundle: Bundle, config: TrainConfig, options: RuntimeOptions | None = None) -> IdGenRec:
        for folder in (RECOMMENDER_DIR, GENERATOR_DIR):
            if not (bundle.path / folder).is_dir():
                raise BundleError(f"the idgenrec bundle {bundle.path} lacks its {folder}/ model")
        return cls(load_t5(bundle.path / RECOMMENDER_DIR), load_t5(bundle.path / GENERATOR_DIR),
                   bundle.tokenizer, config, options)

    def modules(self) -> list[torch.nn.Module]:
        return [self.recommender_model, self.id_generator]

    def batch_key(self, k: int) -> int:
        """The beam width: a request's answer must not depend on its batch-mates' k."""
        return max(self.num_beams, k)

    def recommend(self, queries: Sequence[Query], k: int, trie: TextualIdTrie,
                  cache: UserIdCache | None = None) -> list[list[Recommendation]]:
        if not queries:
            return []
        self.recommender.trie = trie
        user_id_tokens = self.user_id_tokens(queries, trie, cache) if self.uses_user_ids else None
        with self.autocast(model_device(self.recommender_model)):
            return self.recommender.recommend(
                [q.history for q in queries], k, num_beams=self.batch_key(k), exclude_history=False,
                exclude_items=[q.exclude for q in queries], allowed_items=[q.allowed for q in queries],
                user_id_tokens=user_id_tokens,
            )

    def user_id_tokens(self, queries: Sequence[Query], trie: TextualIdTrie,
                       cache: UserIdCache | None = None) -> list[list[int]]:
        """The textual user IDs of the queries' profiles (their last max_history items), cached
        under a digest of the items' ID tokens: one cache read for the batch, the misses
        generated in one batch and written back at once."""
        histories = []
        for query in queries:
            profile = query.profile if query.profile is not None else query.history
            indices = [trie.index_of(item) for item in list(profile)[-self.recommender.max_history :]]
            # Unknown items are reported by the recommender; they do not feed the user ID.
            histories.append([list(trie.sequence(i)[:-1]) for i in indices if i is not None])
        digests = [history_digest(h, self.user_id_max_words) for h in histories]
        found = cache.get_many(digests) if cache is not None else [self._user_ids.get(d) for d in digests]
        missing = [i for i, tokens in enumerate(found) if tokens is None]
        if missing:
            with torch.inference_mode(), self.autocast(model_device(self.id_generator)):
                made = generate_user_ids(
                    self.id_generator, self.tokenizer, [histories[i] for i in missing],
                    max_words=self.user_id_max_words, max_source_length=self.mint_config.max_source_length,
                )
            for i, tokens in zip(missing, made, strict=True):
                found[i] = tokens
            fresh = {digests[i]: found[i] for i in missing}
            if cache is not None:
                cache.set_many(fresh)
            else:
                self._user_ids.update(fresh)
        return found

    def history_length(self) -> int:
        return self.recommender.max_history

    def clear_user_ids(self) -> None:
        """Forget the user IDs memoised without a cache (training: the generator changed)."""
        self._user_ids.clear()

    def mint(self, items: Sequence[NewItem], claim: Claim) -> list[MintedId]:
        with torch.inference_mode(), self.autocast(model_device(self.id_generator)):
            minted, _stats = mint_ids(
                self.id_generator, self.tokenizer, [item.text for item in items], claim, self.mint_config,
                progress=False, vocabulary_texts=[item.vocabulary_text for item in items],
            )
        return minted
