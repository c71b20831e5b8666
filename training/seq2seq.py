"""The teacher-forced seq2seq training loop both T5s share (with optional DDP)."""

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from genrec.beam_search import pad_batch


@dataclass
class Example:
    source: list[int]  # encoder input ids, EOS included
    target: list[int]  # decoder labels, EOS included


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    input_ids, attention_mask = pad_batch([e.source for e in examples], pad_token_id)
    width = max(len(e.target) for e in examples)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        labels[row, : len(e.target)] = torch.as_tensor(e.target, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(count: int, epoch: int, seed: int) -> list[int]:
    """This process's share of a per-epoch shuffle; every rank gets the same number of items
    (the shuffle is padded by wrapping, like DistributedSampler) so the ranks stay in step."""
    rank, world = distributed_world()
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if world > 1:
        per_rank = math.ceil(count / world)
        order = (order * 2)[: per_rank * world]
        order = order[rank::world]
    return order


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return max(0.05, 1.0 - (step - warmup) / max(total - warmup, 1))


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
    after_epoch: Callable[[int, float], None] | None = None,
    desc: str = "training",
    progress: bool = True,
) -> list[float]:
    """Trains for `epochs`; `make_examples(epoch)` renders that epoch's examples (templates are
    re-sampled per epoch). Returns the mean loss of each epoch. Under DDP the model must
    is wrapped here and each rank trains on its own shard."""
    rank, world = distributed_world()
    if world > 1 and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    first = make_examples(0)
    steps_per_epoch = math.ceil(len(shard_indices(len(first), 0, seed)) / batch_size)
    total = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, warmup_steps, total)
    )
    losses = []
    for epoch in range(epochs):
        examples = first if epoch == 0 else make_examples(epoch)
        order = shard_indices(len(examples), epoch, seed)
        model.train()
        total_loss, batches = 0.0, 0
        bar = tqdm(
            range(0, len(order), batch_size),
            desc=f"{desc} epoch {epoch + 1}/{epochs}",
            disable=not progress or rank != 0,
            leave=False,
        )
        for start in bar:
            batch = collate([examples[i] for i in order[start : start + batch_size]], pad_token_id)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach())
            batches += 1
            bar.set_postfix(loss=f"{total_loss / batches:.3f}")
        mean = total_loss / max(batches, 1)
        if world > 1:
            reduced = torch.tensor([mean])
            dist.all_reduce(reduced)
            mean = float(reduced) / world
        losses.append(mean)
        if after_epoch is not None:
            after_epoch(epoch, mean)
    return losses
