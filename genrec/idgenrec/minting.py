"""Minting unique textual IDs with the ID generator (the uniqueness loop of docs/design.md, "Minting").

One implementation serves training (the whole catalog, in batches, claiming in a set) and
the service (new items, claiming in Redis with SET NX): the caller's `claim(textual_id)`
returns True when the ID was free and is now taken. The loop always ends: after the last
length step (or after `max_rounds` generator rounds, when set) a deterministic numeric suffix is
used, and counted. Every ID keeps to the caps of genrec.textual_ids, the suffixed ones included.
"""

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from ..diverse_beam import WordConstraint, diverse_beam_search
from ..progress import progress_bar
from ..textual_ids import MAX_ID_WORD_CHARS, MintedId, canonical_id, normalize_textual_id, suffixed_id
from ..tokenization import encode_texts


@dataclass
class MintConfig:
    num_groups: int = 10
    penalty_start: float = 1.0
    penalty_step: float = 1.0
    penalty_max: float = 10.0
    min_length_start: int = 1
    min_length_step: int = 10
    length_steps: int = 2  # how many minimum lengths are tried before the suffix fallback
    extra_length: int = 10  # max_length = min_length + extra_length
    batch_size: int = 64
    restrict_to_item_words: bool = True  # IDs made only of whole words of the item's metadata
    max_source_length: int = 256
    max_suffix: int = 100000
    # Generator rounds (one diverse beam search each) per item before the suffix fallback; None:
    # the whole penalty x length schedule. The service caps it (GENREC_MINT_MAX_ROUNDS).
    max_rounds: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MintStats:
    items: int = 0
    mean_words: float = 0.0
    max_words: int = 0
    mean_tokens: float = 0.0
    max_tokens: int = 0
    raised_penalty: int = 0
    raised_length: int = 0
    suffixed: int = 0
    generator_calls: int = 0
    kept: int = 0  # IDs a previous version gave (training's --previous-bundle), not minted again
    length_histogram: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def mint_ids(
    model,
    tokenizer,
    texts: Sequence[str],
    claim: Callable[[str], bool],
    config: MintConfig | None = None,
    progress: bool = False,
    vocabulary_texts: Sequence[str] | None = None,
) -> tuple[list[MintedId], MintStats]:
    """A unique textual ID for every text, in input order.

    `vocabulary_texts[i]` (default: `texts[i]`) holds the words item i's ID may be made of
    when `config.restrict_to_item_words` is on (e.g. metadata values without field names).
    """
    config = config or MintConfig()
    source = [ids[: config.max_source_length - 1] + [tokenizer.eos_token_id] for ids in encode_texts(tokenizer, texts)]
    constraints = None
    if config.restrict_to_item_words:
        constraints = item_word_constraints(tokenizer, vocabulary_texts or texts)
    results: list[MintedId | None] = [None] * len(texts)
    fallback: list[str] = [""] * len(texts)
    state = {i: (config.penalty_start, config.min_length_start, 0) for i in range(len(texts))}
    rounds = [0] * len(texts)
    stats = MintStats(items=len(texts))
    bar = progress_bar(total=len(texts), desc="minting IDs", enabled=progress, unit="item")
    was_raised_penalty: set[int] = set()
    was_raised_length: set[int] = set()
    while state:
        # Items at the same (penalty, length) decode together.
        by_setting: dict[tuple[float, int, int], list[int]] = {}
        for i, setting in state.items():
            by_setting.setdefault(setting, []).append(i)
        next_state: dict[int, tuple[float, int, int]] = {}
        for (penalty, min_length, length_step), indices in sorted(by_setting.items()):
            decode = functools.partial(
                diverse_beam_search,
                model,
                num_groups=config.num_groups,
                diversity_penalty=penalty,
                min_length=min_length,
                max_length=min_length + config.extra_length,
            )
            for i, item_candidates in _decoded_in_order(decode, indices, source, constraints, config.batch_size, stats):
                rounds[i] += 1
                texts_tried = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in item_candidates]
                minted = _claim_first(tokenizer, texts_tried, claim)
                if minted is not None:
                    text, tokens = minted
                    results[i] = MintedId(text, tokens, penalty, min_length, suffixed=False)
                    bar.update(1)
                    continue
                if not fallback[i]:
                    fallback[i] = next(
                        (c[0] for c in map(lambda t: canonical_id(tokenizer, _without_repeats(t)), texts_tried) if c),
                        "",
                    )
                following = _next_setting(config, penalty, min_length, length_step, rounds[i])
                if following is not None:
                    (was_raised_length if following[2] > length_step else was_raised_penalty).add(i)
                    next_state[i] = following
                    continue
                words = _text_words((vocabulary_texts or texts)[i] if config.restrict_to_item_words else texts[i])
                results[i] = _suffixed(tokenizer, fallback[i] or words, claim, config)
                bar.update(1)
        state = next_state
    bar.close()
    minted = [r for r in results if r is not None]
    assert len(minted) == len(texts)
    stats.raised_penalty = len(was_raised_penalty)
    stats.raised_length = len(was_raised_length)
    stats.suffixed = sum(r.suffixed for r in minted)
    fill_length_stats(stats, minted)
    return minted, stats


def _next_setting(config: MintConfig, penalty: float, min_length: int, length_step: int,
                  rounds: int) -> tuple[float, int, int] | None:
    """The (penalty, min length, length step) of an item's next generator round, or None when
    its rounds are spent: a higher diversity penalty first, then a longer minimum length."""
    if config.max_rounds is not None and rounds >= config.max_rounds:
        return None
    if penalty + config.penalty_step <= config.penalty_max:
        return penalty + config.penalty_step, min_length, length_step
    if length_step + 1 < config.length_steps:
        return config.penalty_start, min_length + config.min_length_step, length_step + 1
    return None


def _decoded_in_order(
    decode: Callable, indices: list[int], source: list[list[int]], constraints, batch_size: int, stats: MintStats
) -> Iterator[tuple[int, list]]:
    """(item, candidates) for `indices`, in their order (claims must not depend on how items
    were batched). Within windows of a few batches, items are decoded sorted by source length,
    so a batch pads its sources to similar lengths."""
    window = 8 * batch_size
    for start in range(0, len(indices), window):
        chunk = sorted(indices[start : start + window], key=lambda i: len(source[i]))
        decoded: dict[int, list] = {}
        for at in range(0, len(chunk), batch_size):
            batch = chunk[at : at + batch_size]
            words = [constraints[i] for i in batch] if constraints else None
            candidates = decode([source[i] for i in batch], word_constraints=words)
            stats.generator_calls += 1
            decoded.update(zip(batch, candidates, strict=True))
        for i in indices[start : start + window]:
            yield i, decoded.pop(i)


def item_word_constraint(tokenizer, text: str) -> WordConstraint:
    """The item's distinct normalised words, each tokenised as it is inside an ID."""
    return item_word_constraints(tokenizer, [text])[0]


def item_word_constraints(tokenizer, texts: Sequence[str]) -> list[WordConstraint]:
    """`item_word_constraint` of each text, all words tokenised in one batched call."""
    words = [[w for w in dict.fromkeys(normalize_textual_id(text).split(" ")) if w and len(w) <= MAX_ID_WORD_CHARS]
             for text in texts]
    encoded = iter(encode_texts(tokenizer, [w for item in words for w in item]))
    return [WordConstraint([next(encoded) for _ in item]) for item in words]


def _claim_first(tokenizer, candidates: Sequence[str], claim: Callable[[str], bool]) -> tuple[str, list[int]] | None:
    seen: set[str] = set()
    for candidate in candidates:
        canonical = canonical_id(tokenizer, _without_repeats(candidate))
        if canonical is None or canonical[0] in seen:
            continue
        seen.add(canonical[0])
        if claim(canonical[0]):
            return canonical
    return None


def _without_repeats(text: str) -> str:
    """The normalised candidate with repeated words dropped (an ID never repeats a word)."""
    return " ".join(dict.fromkeys(normalize_textual_id(text).split(" ")))


def _text_words(text: str) -> str:
    """The suffix fallback's base when no candidate was valid: the item's first words, none over
    MAX_ID_WORD_CHARS (suffixed_id fits them, with the number, to the other caps)."""
    words = [w for w in _without_repeats(text).split(" ") if w and len(w) <= MAX_ID_WORD_CHARS]
    return " ".join(words[:4]) or "item"


def _suffixed(tokenizer, base: str, claim: Callable[[str], bool], config: MintConfig) -> MintedId:
    return suffixed_id(tokenizer, base, claim, max_suffix=config.max_suffix, penalty=config.penalty_max)


def fill_length_stats(stats: MintStats, minted: Sequence[MintedId]) -> None:
    """The ID length figures of `stats`, over `minted`."""
    if not minted:
        return
    words = [len(m.textual_id.split(" ")) for m in minted]
    tokens = [len(m.token_ids) for m in minted]
    stats.mean_words = sum(words) / len(words)
    stats.max_words = max(words)
    stats.mean_tokens = sum(tokens) / len(tokens)
    stats.max_tokens = max(tokens)
    histogram: dict[int, int] = {}
    for w in words:
        histogram[w] = histogram.get(w, 0) + 1
    stats.length_histogram = dict(sorted(histogram.items()))
