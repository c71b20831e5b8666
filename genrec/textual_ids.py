"""Textual item IDs: normalisation (lower case, `\\w+` words joined by one space, never
empty), the round-trip check every ID passes, and title-word IDs for the methods that have no
ID generator (CLLM4Rec, SASRec). IDGenRec's generator-made IDs are in genrec.idgenrec.minting."""

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import IdExhaustedError
from .tokenization import encode_text

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_textual_id(text: str) -> str:
    """Canonical form of a candidate ID; '' means the candidate is not a valid ID."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


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


def canonical_id(tokenizer, candidate: str) -> tuple[str, list[int]] | None:
    """Normalised ID and its tokens, or None if it is empty or does not survive a
    decode/encode round trip (two distinct IDs must never share a token sequence)."""
    text = normalize_textual_id(candidate)
    if not text:
        return None
    tokens = encode_text(tokenizer, text)
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


def title_textual_id(tokenizer: PreTrainedTokenizerBase, text: str, claim: Callable[[str], bool],
                     max_words: int = 8, max_suffix: int = 100000) -> MintedId:
    """A unique textual ID from the item's title words (normalized, at most max_words), with a
    numeric suffix when taken or not round-trippable; `claim(id)` takes it when free."""
    words = normalize_textual_id(id_source(text)).split(" ")[:max_words]
    base = " ".join(w for w in words if w) or "item"
    for n in range(1, max_suffix + 1):
        candidate = base if n == 1 else f"{base} {n}"
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
