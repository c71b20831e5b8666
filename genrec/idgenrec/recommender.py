"""History of item ids in, top-k item ids out: the one path that evaluation and serving share."""

from collections.abc import Collection, Iterable, Sequence

from ..beam_search import constrained_beam_search, reference_generate_topk
from ..errors import UnknownItemError
from ..item_set import IndexedItems
from ..method import Recommendation
from ..trie import TextualIdTrie
from .prompts import TEST_TEMPLATE, PromptRenderer


class IdGenRecRecommender:
    """Renders the test prompt from the textual IDs of a history and decodes over the trie."""

    def __init__(
        self,
        model,
        tokenizer,
        trie: TextualIdTrie,
        *,
        template: str = TEST_TEMPLATE,
        max_history: int = 20,
        max_source_length: int = 512,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.trie = trie
        self.template = template
        self.max_history = max_history
        self.renderer = PromptRenderer(tokenizer, max_source_length)

    def unknown_items(self, history: Sequence[str]) -> list[str]:
        return [item for item in dict.fromkeys(history) if self.trie.index_of(item) is None]

    def prompt_ids(self, history: Sequence[str], user_id_tokens: list[int] | None = None) -> list[int]:
        missing = self.unknown_items(history)
        if missing:
            raise UnknownItemError(missing)
        recent = list(history)[-self.max_history :]
        ids = [list(self.trie.sequence(self.trie.index_of(item))[:-1]) for item in recent]
        return self.renderer.render(self.template, ids, user_id_tokens).input_ids

    def _indices(self, items: Iterable[str]) -> Sequence[int]:
        """The trie indices of the known items among `items`, sorted (unknown ones are skipped):
        a filter's `IndexedItems` gives its index array as it is."""
        if isinstance(items, IndexedItems) and (known := items.indices_in(self.trie)) is not None:
            return known
        indices = (self.trie.index_of(item) for item in items)
        return sorted(i for i in indices if i is not None)

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        *,
        num_beams: int | None = None,
        exclude_history: bool = True,
        exclude_items: Sequence[Sequence[str]] | None = None,
        user_id_tokens: Sequence[list[int] | None] | None = None,
        reference: bool = False,
        allowed_items: Sequence[Collection[str] | None] | None = None,
    ) -> list[list[Recommendation]]:
        """Top-k per history; `exclude_items[i]` are more items request i must not return
        (e.g. the older history beyond the prompt), `allowed_items[i]` the only items it may
        return (None: any). `reference=True` decodes through `generate` (tests, benchmarks)."""
        num_beams = max(num_beams or k, k)
        prompts = [
            self.prompt_ids(h, user_id_tokens[i] if user_id_tokens else None) for i, h in enumerate(histories)
        ]
        exclude = None
        if exclude_history or exclude_items:
            exclude = []
            for i, history in enumerate(histories):
                banned = set(history) if exclude_history else set()
                banned.update(exclude_items[i] if exclude_items else ())
                exclude.append(self._indices(banned))
        allowed = None
        if allowed_items is not None and any(items is not None for items in allowed_items):
            allowed = [None if items is None else self._indices(items) for items in allowed_items]
        if reference:
            found = reference_generate_topk(self.model, prompts, self.trie, num_beams, k, exclude, allowed)
        else:
            found = constrained_beam_search(self.model, prompts, self.trie.tables(), num_beams, k, exclude,
                                            allowed=allowed)
        keys = self.trie.item_keys
        return [[Recommendation(keys[s.item_index], s.score) for s in row] for row in found]
