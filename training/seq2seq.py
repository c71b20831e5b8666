"""Teacher-forced seq2seq examples and training for IDGenRec's two T5s."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from genrec.tensors import pad_batch, pad_labels

from .loop import fit


@dataclass
class Example:
    source: list[int]  # encoder input ids, EOS included
    target: list[int]  # decoder labels, EOS included


def source_length(example: Example) -> int:
    """What a batch of examples pads to (the longest source): the key of length-grouped batches."""
    return len(example.source)


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    input_ids, attention_mask = pad_batch([e.source for e in examples], pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": pad_labels([e.target for e in examples])}


def seq2seq_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def train_epochs(
    model: torch.nn.Module,
    make_examples: Callable[[int], Sequence[Example]],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    pad_token_id: int,
    seed: int,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    grad_clip: float = 1.0,
    length_grouped: bool = False,
    on_batch: Callable[[int, list[int]], None] | None = None,
    desc: str = "training",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Teacher-forced training through the one loop (training.loop.fit); `make_examples(epoch)`
    renders that epoch's examples (templates are re-sampled per epoch). Returns the mean loss of
    each epoch; under DDP each rank trains on its own shard. `length_grouped`: batches of
    sources of similar lengths; `on_batch`: as in fit."""
    history = fit(
        model, epochs=epochs, examples=make_examples, collate=lambda batch: collate(batch, pad_token_id),
        loss=seq2seq_loss, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
        grad_clip=grad_clip, seed=seed, length=source_length if length_grouped else None, on_batch=on_batch,
        desc=desc, progress=progress, log=log,
    )
    return history["loss"]
