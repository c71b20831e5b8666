"""CLLM4Rec behind the method interface: one forward pass scores every item that has a token in
the trained model. New items get a unique textual ID from their title words (for the API), but
have no item token: they are not recommendable, and are skipped in histories, until retraining."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..bundle import Bundle
from ..config import TrainConfig
from ..errors import BundleError
from ..method import Claim, Method, NewItem, Query, Recommendation, RuntimeOptions, UserIdCache
from ..textual_ids import MintedId, title_textual_id
from ..trie import TextualIdTrie
from .config import Cllm4RecSections
from .model import MODEL_DIR, Cllm4RecModel, Cllm4RecRecommender, load_cllm4rec


class Cllm4Rec(Method):
    kind = "cllm4rec"
    label = "CLLM4Rec"
    config_class = Cllm4RecSections
    new_items_recommendable = False

    def __init__(self, model: Cllm4RecModel, tokenizer, config: TrainConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.recommender = Cllm4RecRecommender(model, tokenizer, max_history=config.cllm4rec.max_prompt_items,
                                               autocast=self.autocast, objective=config.cllm4rec.objective)

    @classmethod
    def load(cls, bundle: Bundle, config: TrainConfig, options: RuntimeOptions | None = None) -> Cllm4Rec:
        folder = bundle.path / MODEL_DIR
        if not folder.is_dir():
            raise BundleError(f"the cllm4rec bundle {bundle.path} lacks its {MODEL_DIR}/ model folder")
        return cls(load_cllm4rec(folder), bundle.tokenizer, config)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def batch_key(self, k: int) -> None:
        return None  # one pass scores every item: any k shares a batch

    def recommend(self, queries: Sequence[Query], k: int, trie: TextualIdTrie,
                  cache: UserIdCache | None = None) -> list[list[Recommendation]]:
        return self.recommender.recommend(
            [q.history for q in queries], k, users=[q.user_id for q in queries],
            exclude_history=False, exclude_items=[q.exclude for q in queries],
            allowed_items=[q.allowed for q in queries],
        )

    def mint(self, items: Sequence[NewItem], claim: Claim) -> list[MintedId]:
        return [title_textual_id(self.tokenizer, item.text, claim) for item in items]

    def history_length(self) -> int:
        return self.recommender.max_history

    def is_recommendable(self, item_id: str) -> bool:
        """Only items with a token in the trained model can be recommended."""
        return item_id in self.model.item_index
