"""Training the tokenizer on a corpus (the catalog text and whatever prompt words the method
adds: `Trainer.tokenizer_corpus`)."""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from genrec.errors import ConfigError

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer (BPE over Metaspace words), lower-casing, with T5's
    special tokens. BPE rather than Unigram: on a catalog-sized corpus the `tokenizers`
    Unigram trainer stops far below the requested size and splits even the most frequent
    words ('tit'+'le'), which doubles prompt lengths; BPE keeps frequent words whole."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace()]
    )
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def tokenizer_from_pretrained(path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"tokenizer path {path} is not a folder")
    return AutoTokenizer.from_pretrained(str(path))
