"""Textual item IDs: normalisation (NFKC, lower case, words joined by one space, never empty;
a word is a run of word characters, letters with their combining marks included:
genrec/word_characters.py), the round-trip check every ID passes, the caps every ID keeps to,
numeric-suffix IDs, and title-word IDs for the methods that have no ID generator (CLLM4Rec,
SASRec). IDGenRec's generator-made IDs are in genrec.idgenrec.minting.

The caps (`MAX_ID_WORDS`, `MAX_ID_TOKENS`, `MAX_ID_WORD_CHARS`) hold on every path that makes an
ID, in training and in the service alike: `canonical_id` refuses a candidate over them, and the
suffix and title paths build their base from `id_base`, which keeps only the leading words that
fit. An ID's tokens are the depth of its trie path and the length of its Redis key, so one item's
metadata must never make a long one (docs/design.md, "Minting").
"""

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import IdExhaustedError
from .tokenization import encode_text
from .word_characters import find_words

# Far above what real IDs use (IDGenRec's generator stops at min_length + extra_length tokens,
# 21 with the default MintConfig; ml-100k's longest metadata word has 15 characters).
MAX_ID_WORDS = 24  # words of one textual ID
MAX_ID_TOKENS = 32  # tokens of one textual ID (EOS not counted)
MAX_ID_WORD_CHARS = 32  # characters of one word of an ID; longer metadata words are never used
SUFFIX_TOKENS = 8  # room `id_base` leaves for a numeric suffix (" 100000" and then some)


def normalize_textual_id(text: str) -> str:
    """Canonical form of a candidate ID; '' means the candidate is not a valid ID. Its words are
    not Python's `\\w+`, which cut `हिन्दी` into `ह न द`; IDs minted while they were keep those
    pieces, as stored IDs never change."""
    return " ".join(find_words(unicodedata.normalize("NFKC", text).lower()))


def id_words(textual_id: str) -> list[str]:
    return textual_id.split(" ") if textual_id else []


def claim_in(taken: set[str]) -> Callable[[str], bool]:
    """A `claim` over an in-memory set (training mints a whole catalog this way; the service
    claims in Redis): True, and the ID is taken, when it was free."""

    def claim(textual_id: str) -> bool:
        if textual_id in taken:
            return False
        taken.add(textual_id)
        return True

    return claim


@dataclass
class MintedId:
    textual_id: str
    token_ids: list[int]  # without EOS
    penalty: float
    min_length: int
    suffixed: bool


def within_id_limits(text: str, tokens: list[int] | None = None) -> bool:
    """Whether a normalised ID (and its tokens, when given) keeps to the caps."""
    words = id_words(text)
    if len(words) > MAX_ID_WORDS or any(len(w) > MAX_ID_WORD_CHARS for w in words):
        return False
    return tokens is None or len(tokens) <= MAX_ID_TOKENS


def canonical_id(tokenizer, candidate: str) -> tuple[str, list[int]] | None:
    """Normalised ID and its tokens, or None if it is empty, over the caps, or does not survive
    a decode/encode round trip (two distinct IDs must never share a token sequence)."""
    text = normalize_textual_id(candidate)
    if not text or not within_id_limits(text):
        return None
    tokens = encode_text(tokenizer, text)
    if len(tokens) > MAX_ID_TOKENS:
        return None
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in tokens:
        return None
    decoded = normalize_textual_id(tokenizer.decode(tokens, skip_special_tokens=True))
    if decoded != text:
        return None
    return text, tokens


def id_source(text: str) -> str:
    """The words a CLLM4Rec item's textual ID is made of: the value of the first field of the
    flattened item text ('title: Toy Story (1995); year: ...' -> 'Toy Story (1995)')."""
    first = text.split(";", 1)[0]
    return first.split(":", 1)[1] if ":" in first else first


def id_base(tokenizer, text: str, max_words: int = MAX_ID_WORDS, room_for_suffix: bool = False) -> str:
    """The leading words of `text` (normalised; words over MAX_ID_WORD_CHARS left out, at most
    `max_words`) that fit the caps, with room for a numeric suffix when asked; '' if none."""
    limit_words = MAX_ID_WORDS - 1 if room_for_suffix else MAX_ID_WORDS
    limit_tokens = MAX_ID_TOKENS - SUFFIX_TOKENS if room_for_suffix else MAX_ID_TOKENS
    words = [w for w in id_words(normalize_textual_id(text)) if len(w) <= MAX_ID_WORD_CHARS]
    words = words[: min(max_words, limit_words)]
    while words and len(encode_text(tokenizer, " ".join(words))) > limit_tokens:
        words.pop()
    return " ".join(words)


def suffixed_id(tokenizer, base: str, claim: Callable[[str], bool], start: int = 2,
                max_suffix: int = 100000, penalty: float = 0.0, min_length: int = -1) -> MintedId:
    """`<base> <n>` for the first n >= start whose ID is free (taken through `claim`). The base
    is cut by `id_base` so that the number always fits the caps; an empty base becomes 'item'."""
    base = (canonical_id(tokenizer, id_base(tokenizer, base, room_for_suffix=True)) or ("item", []))[0]
    for n in range(start, max_suffix):
        canonical = canonical_id(tokenizer, f"{base} {n}")
        if canonical is not None and claim(canonical[0]):
            return MintedId(canonical[0], canonical[1], penalty, min_length, suffixed=True)
    raise IdExhaustedError(f"no free ID with a numeric suffix for {base!r}")


def title_textual_id(tokenizer: PreTrainedTokenizerBase, text: str, claim: Callable[[str], bool],
                     max_words: int = 8, max_suffix: int = 100000) -> MintedId:
    """A unique textual ID from the item's title words (normalized, at most max_words, within
    the caps), with a numeric suffix when taken or not round-trippable; `claim(id)` takes it
    when free."""
    base = id_base(tokenizer, id_source(text), max_words=max_words) or "item"
    suffix_base = None
    for n in range(1, max_suffix + 1):
        if n == 2:  # from here on the number must fit beside the words
            suffix_base = id_base(tokenizer, base, room_for_suffix=True) or "item"
        candidate = base if n == 1 else f"{suffix_base} {n}"
        canon = canonical_id(tokenizer, candidate)
        if canon is None:
            if n == 1:
                continue
            canon = canonical_id(tokenizer, f"item {n}")
            if canon is None:
                continue
        textual_id, tokens = canon
        if claim(textual_id):
            return MintedId(textual_id, tokens, penalty=0.0, min_length=0, suffixed=n > 1)
    raise IdExhaustedError(f"no free textual ID for {base!r} after {max_suffix} suffixes")
