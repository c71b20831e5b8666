"""The ID generator: warm-up on keyword targets, then minting the whole catalog."""

import torch

from genrec.idgenrec.minting import MintConfig, MintStats, mint_ids
from genrec.textual_ids import MintedId, claim_in
from genrec.tokenization import encode_text

from .seq2seq import Example, train_epochs


def warm_up_generator(
    model, tokenizer, texts: list[str], keywords: list[str], *, epochs: int, lr: float, batch_size: int,
    seed: int, max_source_length: int = 256, length_grouped: bool = False, on_batch=None, progress: bool = True,
    log=None,
) -> list[float]:
    """Teaches the generator to turn item text into its distinctive words (docs/methods.md, "IDGenRec").
    `length_grouped` and `on_batch`: as in training.seq2seq.train_epochs."""
    eos = tokenizer.eos_token_id
    examples = [
        Example(source=encode_text(tokenizer, t)[: max_source_length - 1] + [eos], target=encode_text(tokenizer, k) + [eos])
        for t, k in zip(texts, keywords, strict=True)
    ]
    return train_epochs(
        model,
        lambda epoch: examples,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
        warmup_steps=20,
        length_grouped=length_grouped,
        on_batch=on_batch,
        desc="ID generator warm-up",
        progress=progress,
        log=log,
    )


def mint_catalog(
    model, tokenizer, texts: list[str], vocabulary_texts: list[str], config: MintConfig, progress: bool = True
) -> tuple[list[MintedId], MintStats]:
    """Unique IDs for a whole catalog, batched, claimed in an in-memory set."""
    claim = claim_in(set())
    model.eval()
    with torch.inference_mode():
        return mint_ids(model, tokenizer, texts, claim, config, progress=progress, vocabulary_texts=vocabulary_texts)
