"""Prompt templates of the base recommender and their rendering into token ids.

Prompts are assembled from token segments (template text, item IDs, separators) rather than
by tokenising one long string, so the exact positions of every history item's ID tokens are
known: the ID-generator phase (docs/methods.md, "Alternate training") swaps soft embeddings in at exactly those places.
"""

import re
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from ..tokenization import encode_text

TRAIN_TEMPLATES: tuple[str, ...] = (
    "Considering user {user_id} has interacted with items {history} . What is the next recommendation for the user ?",
    "Here is the purchase history of user {user_id} : {history} . What to recommend next for the user ?",
    "User {user_id} has the following interaction history : {history} . Predict the next item the user will interact with .",
    "According to the items user {user_id} has watched : {history} . Can you recommend another item to the user ?",
    "Given the history {history} of user {user_id} , which item should be recommended next ?",
    "The user {user_id} liked {history} . What would the user like next ?",
    "Based on {history} , what is the next item for user {user_id} ?",
    "Sequence of items of user {user_id} : {history} . Generate the next item .",
    "User {user_id} previously interacted with {history} . Recommend the next item for this user .",
    "Items seen by user {user_id} in order : {history} . What comes next ?",
)
TEST_TEMPLATE = TRAIN_TEMPLATES[0]
HISTORY_SEPARATOR = " ;"
_PLACEHOLDER = re.compile(r"\{(user_id|history)\}")


@dataclass
class RenderedPrompt:
    """Encoder input ids (ending with EOS) and the [start, end) span of each history item's ID."""

    input_ids: list[int]
    item_spans: list[tuple[int, int]] = field(default_factory=list)


class PromptRenderer:
    """Renders templates into token ids with a per-template cache of the constant segments."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_source_length: int = 512):
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self._segments: dict[str, list[tuple[str, list[int]]]] = {}
        self._separator = encode_text(tokenizer, HISTORY_SEPARATOR)

    def _template_segments(self, template: str) -> list[tuple[str, list[int]]]:
        cached = self._segments.get(template)
        if cached is None:
            cached, pos = [], 0
            for match in _PLACEHOLDER.finditer(template):
                cached.append(("text", encode_text(self.tokenizer, template[pos : match.start()].strip())))
                cached.append((match.group(1), []))
                pos = match.end()
            cached.append(("text", encode_text(self.tokenizer, template[pos:].strip())))
            self._segments[template] = cached
        return cached

    def render(
        self, template: str, history_ids: list[list[int]], user_id_tokens: list[int] | None = None
    ) -> RenderedPrompt:
        """`history_ids`: token ids of each history item's textual ID (no EOS), oldest first."""
        segments = self._template_segments(template)
        fixed = sum(len(tokens) for _, tokens in segments) + len(user_id_tokens or []) + 1
        budget = self.max_source_length - fixed
        # Drop the oldest items until the prompt fits.
        start = 0
        while start < len(history_ids) and _history_length(history_ids[start:], len(self._separator)) > budget:
            start += 1
        history_ids = history_ids[start:]
        input_ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for kind, tokens in segments:
            if kind == "text":
                input_ids.extend(tokens)
            elif kind == "user_id":
                input_ids.extend(user_id_tokens or [])
            else:
                for i, item in enumerate(history_ids):
                    if i:
                        input_ids.extend(self._separator)
                    spans.append((len(input_ids), len(input_ids) + len(item)))
                    input_ids.extend(item)
        input_ids.append(self.tokenizer.eos_token_id)
        return RenderedPrompt(input_ids=input_ids, item_spans=spans)


def _history_length(history_ids: list[list[int]], separator_length: int) -> int:
    if not history_ids:
        return 0
    return sum(len(item) for item in history_ids) + separator_length * (len(history_ids) - 1)


def prompt_corpus() -> list[str]:
    """The templates' words and the history separator: added to the tokenizer's corpus so that
    they are whole tokens (prompts stay short)."""
    return [t.replace("{user_id}", "").replace("{history}", "") for t in TRAIN_TEMPLATES] + [HISTORY_SEPARATOR]
