"""Textual user IDs (docs/methods.md, "Textual user IDs"): the ID generator turns the textual IDs of the items a prompt
may see into a short ID for the user, which fills `{user_id}` in the prompt.

Training and serving share this code. The caller decides which items are visible: the
training prefix for a training example, the training part for evaluation, the request's own
history in the service; never a validation or test target (the reference code's leak).
"""

import hashlib
import json
from collections.abc import Sequence

import torch

from ..progress import progress_bar
from ..tensors import pad_batch
from ..textual_ids import normalize_textual_id
from ..tokenization import encode_text
from .prompts import HISTORY_SEPARATOR

DEFAULT_MAX_WORDS = 4


def user_id_source(tokenizer, history_ids: Sequence[Sequence[int]], max_source_length: int = 256) -> list[int]:
    """The generator's input: the items' ID tokens joined by the history separator (the most
    recent ones kept when too long), ending with EOS."""
    separator = encode_text(tokenizer, HISTORY_SEPARATOR)
    tokens: list[int] = []
    for i, ids in enumerate(history_ids):
        if i:
            tokens.extend(separator)
        tokens.extend(ids)
    keep = max(0, max_source_length - 1)
    return (tokens[-keep:] if keep else []) + [tokenizer.eos_token_id]


def history_digest(history_ids: Sequence[Sequence[int]], max_words: int = DEFAULT_MAX_WORDS) -> str:
    """sha1 of the visible items' ID tokens (and the word limit): the user ID's cache key."""
    payload = json.dumps([max_words, [list(ids) for ids in history_ids]], separators=(",", ":"))
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def generate_user_ids(
    generator,
    tokenizer,
    histories: Sequence[Sequence[Sequence[int]]],
    *,
    max_words: int = DEFAULT_MAX_WORDS,
    max_source_length: int = 256,
    batch_size: int = 256,
    progress: bool = False,
) -> list[list[int]]:
    """Greedy user IDs (token ids, no EOS) of at most `max_words` distinct words, one per history.

    An empty history, or a generation with no word, gives an empty user ID.
    """
    results: list[list[int]] = [[] for _ in histories]
    todo = [i for i, history in enumerate(histories) if history]
    if not todo:
        return results
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    # Padding and unknown tokens are never words of an ID (an undertrained generator emits padding).
    suppressed = [t for t in (tokenizer.pad_token_id, tokenizer.unk_token_id) if t is not None]
    try:
        with torch.inference_mode():
            starts = range(0, len(todo), batch_size)
            for start in progress_bar(starts, desc="user IDs", unit="batch", enabled=progress):
                batch = todo[start : start + batch_size]
                ids, mask = pad_batch(
                    [user_id_source(tokenizer, histories[i], max_source_length) for i in batch], tokenizer.pad_token_id
                )
                out = generator.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=4 * max_words,
                    min_new_tokens=1,  # an immediate EOS would leave every user without an ID
                    no_repeat_ngram_size=1,  # an ID never repeats a word
                    suppress_tokens=suppressed or None,
                    num_beams=1,
                    do_sample=False,
                )
                for i, row in zip(batch, out.tolist(), strict=True):
                    results[i] = _canonical_user_id(tokenizer, row, max_words)
    finally:
        generator.train(was_training)
    return results


def _canonical_user_id(tokenizer, generated: list[int], max_words: int) -> list[int]:
    words = normalize_textual_id(tokenizer.decode(generated, skip_special_tokens=True)).split(" ")
    text = " ".join(list(dict.fromkeys(w for w in words if w))[:max_words])
    return encode_text(tokenizer, text)
