"""SASRec behind the method interface: one forward pass per batch scores every item of the model's
own table from the state after the latest history item. New items get a unique textual ID from
their title words (for the API) but have no row in the table: they are not recommendable, and are
skipped in histories, until retraining."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..bundle import Bundle
from ..config import TrainConfig
from ..device import model_device
from ..item_table import mask_rows, top_items
from ..method import Claim, Method, NewItem, Query, Recommendation, RuntimeOptions, UserIdCache
from ..tensors import pad_batch
from ..textual_ids import MintedId, title_textual_id
from ..trie import TextualIdTrie
from .config import SasRecSections
from .model import MODEL_DIR, PAD, SasRecModel, load_sasrec

CHUNK = 256  # queries per forward pass


class SasRec(Method):
    kind = "sasrec"
    label = "SASRec"
    config_class = SasRecSections
    new_items_recommendable = False

    def __init__(self, model: SasRecModel, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.columns = {item: j for j, item in enumerate(model.item_ids)}  # item -> score column

    @classmethod
    def load(cls, bundle: Bundle, config: TrainConfig, options: RuntimeOptions | None = None) -> SasRec:
        # The model folder holds its own sizes (sasrec.json); the config's are what trained it.
        return cls(load_sasrec(bundle.path / MODEL_DIR), bundle.tokenizer)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def batch_key(self, k: int) -> None:
        return None  # one pass scores every item, each query padded alike: any k shares a batch

    def recommend(self, queries: Sequence[Query], k: int, trie: TextualIdTrie | None = None,
                  cache: UserIdCache | None = None) -> list[list[Recommendation]]:
        out: list[list[Recommendation]] = []
        for start in range(0, len(queries), CHUNK):
            out.extend(self._recommend(queries[start : start + CHUNK], k))
        return out

    @torch.inference_mode()
    def _recommend(self, queries: Sequence[Query], k: int) -> list[list[Recommendation]]:
        model = self.model
        if not queries or k < 1:
            return [[] for _ in queries]
        rows = [model.rows(q.history)[-model.max_len :] for q in queries]
        # Every query is padded to max_len, so its scores do not depend on its batch-mates.
        device = model_device(model)
        batch, _ = pad_batch(rows, PAD, width=model.max_len, left=True, device=device)
        was_training = model.training
        model.eval()
        try:
            with self.autocast(device):
                scores = model.last_scores(batch)
            scores = scores.float()
        finally:
            model.train(was_training)
        # No known history item: the network has no state to read, so rank by training popularity.
        empty = [r for r, seq in enumerate(rows) if not seq]
        if empty:
            scores[empty] = torch.log1p(model.item_counts.float())
        mask_rows(scores, self.columns, [q.exclude for q in queries], [q.allowed for q in queries])
        return top_items(scores, model.item_ids, k)

    def mint(self, items: Sequence[NewItem], claim: Claim) -> list[MintedId]:
        return [title_textual_id(self.tokenizer, item.text, claim) for item in items]

    def history_length(self) -> int:
        return self.model.max_len

    def is_recommendable(self, item_id: str) -> bool:
        """Only items with a row in the trained model's table can be recommended."""
        return item_id in self.model.item_index
