"""The ID generator: warm-up on keyword targets, then minting the whole catalog."""

from collections.abc import Sequence

import torch

from genrec.idgenrec.minting import MintConfig, MintStats, fill_length_stats, mint_ids
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
    model, tokenizer, texts: list[str], vocabulary_texts: list[str], config: MintConfig, progress: bool = True,
    kept: Sequence[tuple[str, list[int]] | None] | None = None,
) -> tuple[list[MintedId], MintStats]:
    """Unique IDs for a whole catalog, batched, claimed in an in-memory set. `kept[i]`: the ID
    (text, tokens) item i keeps from a previous version (training.stable_ids), claimed before
    the others are minted; None: mint one."""
    kept = list(kept) if kept is not None else [None] * len(texts)
    claim = claim_in({k[0] for k in kept if k is not None})
    todo = [i for i, k in enumerate(kept) if k is None]
    model.eval()
    with torch.inference_mode():
        minted, stats = mint_ids(model, tokenizer, [texts[i] for i in todo], claim, config, progress=progress,
                                 vocabulary_texts=[vocabulary_texts[i] for i in todo]) if todo else ([], MintStats())
    if len(todo) == len(texts):
        return minted, stats
    result = [MintedId(k[0], list(k[1]), 0.0, 0, suffixed=False) if k is not None else None for k in kept]
    for i, m in zip(todo, minted, strict=True):
        result[i] = m
    stats.items, stats.kept = len(result), len(result) - len(todo)
    fill_length_stats(stats, result)
    return result, stats
