"""Loading the shared tokenizer and encoding text the same way at training and serving time."""

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .errors import BundleError


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"tokenizer folder not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many kinds of errors for a broken folder
        raise BundleError(f"cannot load the tokenizer in {path}: {exc}") from exc


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of `text` with no special tokens (segments are concatenated by the caller)."""
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """`encode_text` of each text in one batched tokenizer call (the per-call overhead of
    `encode` dominates for short texts such as single words)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(ids) if text else [] for text, ids in zip(texts, encoded, strict=True)]


def encode_textual_id(tokenizer: PreTrainedTokenizerBase, textual_id: str) -> list[int]:
    """Trie key of an ID: its tokens followed by EOS."""
    return encode_text(tokenizer, textual_id) + [tokenizer.eos_token_id]
