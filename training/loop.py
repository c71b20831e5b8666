"""The one training loop every method's phases run: AdamW, a warm-up (and optionally linear
decay) schedule, gradient clipping, data parallelism under torchrun, progress and a log line
per epoch with the examples per second.

A phase hands the loop three functions: `examples(epoch)` (that epoch's examples, re-rendered
or re-masked per epoch if the method wants), `collate(examples) -> batch` and
`loss(model, batch) -> loss` (or `(loss, {name: value})` to have named parts averaged per
epoch too). Under torchrun each rank trains on its own shard of every epoch's examples and
DDP averages the gradients; `loss` receives the DDP-wrapped model, so it must call the model
(its forward) for the gradients to be synchronised.

With `length(example)` given, each epoch's batches are grouped by length
(`length_grouped_batches`): a batch pads to its longest example, so batches of similar lengths
waste less compute on padding, while the batches themselves still come in random order.

Devices: the loop trains the model where it is (the trainers put it on the run's device,
`genrec.device`); each collated batch of tensors (a tensor, a tuple, a dict or a dataclass of
them) is moved there in one copy per tensor (nothing on the CPU), and the loss runs under the
run's precision (`training_precision`: bf16 autocast on CUDA). A collate that returns a list
(`collate=list`) hands the loss its raw examples, and the loss builds its tensors on the
model's device itself (CLLM4Rec's batches, IDGenRec's ID phases).
Under torchrun on GPUs, DDP wraps the model on its own rank's device.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from genrec.device import autocast, check_precision, model_device, to_device
from genrec.progress import progress_bar

T = TypeVar("T")
B = TypeVar("B")
LossFn = Callable[[torch.nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


_PRECISION: contextvars.ContextVar[str] = contextvars.ContextVar("training_precision", default="fp32")


@contextlib.contextmanager
def training_precision(precision: str | None) -> Iterator[None]:
    """The precision every `fit` inside runs its losses at (the run's `precision`; fp32 outside):
    set once by the pipeline around a trainer, so the phases need not pass it along."""
    token = _PRECISION.set(check_precision(precision))
    try:
        yield
    finally:
        _PRECISION.reset(token)


def distributed_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(count: int, epoch: int, seed: int, shuffle: bool = True,
                  rank_world: tuple[int, int] | None = None) -> list[int]:
    """This process's share of an epoch's examples (shuffled per epoch unless `shuffle` is off);
    every rank gets the same number (the order is padded by wrapping, like DistributedSampler)
    so the ranks stay in step. `rank_world`: (rank, world size), default this process's."""
    rank, world = rank_world or distributed_world()
    order = list(range(count))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if world > 1:
        per_rank = math.ceil(count / world)
        order = (order * 2)[: per_rank * world]
        order = order[rank::world]
    return order


POSTFIX_EVERY = 50  # off the CPU, the bar shows the mean loss every this many steps (reading it waits for the GPU)
GROUP_CHUNK_BATCHES = 50  # batches per sorted chunk: lengths even out, batches stay random samples


def length_grouped_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int, rng: random.Random,
                           chunk_batches: int = GROUP_CHUNK_BATCHES) -> list[list[int]]:
    """`order` (an epoch's shuffled share of the examples) as batches of similar lengths:
    cut into chunks of `chunk_batches` batches, each chunk sorted by length (`lengths[k]` is
    the length of `order[k]`; ties keep their order), cut into batches of `batch_size`; the
    batches shuffled, a short last batch kept last. Every example is in exactly one batch, and
    ranks with equal shares and the same `rng` get batches of the same sizes in the same places."""
    if len(lengths) != len(order):
        raise ValueError(f"{len(lengths)} lengths for {len(order)} examples")
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(range(start, min(start + chunk, len(order))), key=lambda k: lengths[k])
        batches += [[order[k] for k in part[i : i + batch_size]] for i in range(0, len(part), batch_size)]
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    rng.shuffle(batches)
    return batches + short


def epoch_batches(order: list[int], batch_size: int, lengths: Sequence[int] | None, seed: int,
                  epoch: int) -> list[list[int]]:
    """An epoch's batches: `order` cut as it comes, or grouped by `lengths` (deterministic per
    seed and epoch)."""
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return length_grouped_batches(order, lengths, batch_size, random.Random(f"length-grouped:{seed}:{epoch}"))


def linear_warmup_decay(step: int, warmup: int, total: int, decay: bool = True) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then linear decay to 5% at
    `total` (or constant 1 with decay off)."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    if not decay:
        return 1.0
    return max(0.05, 1.0 - (step - warmup) / max(total - warmup, 1))


def fit(
    model: torch.nn.Module,
    *,
    epochs: int,
    examples: Callable[[int], Sequence[T]],
    collate: Callable[[list[T]], B],
    loss: LossFn,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    decay: bool = True,
    grad_clip: float = 1.0,
    seed: int = 0,
    shuffle: bool = True,
    distributed: bool = True,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    length: Callable[[T], int] | None = None,
    after_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    on_batch: Callable[[int, list[int]], None] | None = None,
    desc: str = "training",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Trains `model` in place for `epochs`; returns per-epoch means: "loss", every named part of
    the loss, and "examples_per_s".

    `shuffle=False` takes each epoch's examples in the order given (the phase shuffled them
    itself). `distributed=False` keeps the model unwrapped and every rank on all examples (a
    phase whose ranks must do the same work). `parameters`: what the optimizer updates
    (default: every parameter that requires a gradient). `length(example)`: group each epoch's
    batches by it (`length_grouped_batches`; None: batches cut from the epoch's order as it
    comes). `after_epoch(epoch, means)` runs on
    every rank after each epoch (validation, keeping the best weights); returning True stops
    the training there (early stopping). `on_batch(epoch, indices)`
    gets, for every batch, the indices into that epoch's examples the batch was collated from:
    what this rank really trained on.
    """
    rank, world = distributed_world()
    shard = distributed and world > 1
    device = model_device(model)
    precision = _PRECISION.get()
    trained = model
    if shard and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    first = examples(0) if epochs > 0 else []
    count = len(shard_indices(len(first), 0, seed, shuffle)) if shard else len(first)
    total_steps = math.ceil(count / batch_size) * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, warmup_steps, total_steps, decay)
    )
    history: dict[str, list[float]] = {"loss": [], "examples_per_s": []}
    show = progress and rank == 0
    for epoch in range(epochs):
        epoch_examples = first if epoch == 0 else examples(epoch)
        if shard:
            order = shard_indices(len(epoch_examples), epoch, seed, shuffle)
        elif shuffle:
            order = list(range(len(epoch_examples)))
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        else:
            order = list(range(len(epoch_examples)))
        trained.train()
        sums: dict[str, Any] = {"loss": 0.0}  # floats, or float64 tensors on the model's device
        counts: dict[str, int] = {"loss": 0}  # a named part is averaged over the steps that report it
        steps = 0
        started = time.perf_counter()
        lengths = [length(epoch_examples[i]) for i in order] if length is not None else None
        batches = epoch_batches(order, batch_size, lengths, seed, epoch)
        bar = progress_bar(batches, desc=f"{desc} {epoch + 1}/{epochs}", enabled=show)
        for indices in bar:
            if on_batch is not None:
                on_batch(epoch, list(indices))
            batch = collate([epoch_examples[i] for i in indices])
            if device.type != "cpu" and not isinstance(batch, list):  # (the CPU path as it was)
                batch = to_device(batch, device)
            with autocast(device, precision):
                value = loss(trained, batch)
            parts: dict[str, float] = {}
            if isinstance(value, tuple):
                value, parts = value
            if value is None:
                continue
            optimizer.zero_grad(set_to_none=True)  # untouched tables keep grad None: AdamW skips them
            value.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
            optimizer.step()
            scheduler.step()
            steps += 1
            for name, part in {"loss": value.detach(), **parts}.items():
                # Summed where it is: on a GPU no step waits to read its loss back (float64 sums
                # what Python's floats would, so the CPU's figures are the same to the bit).
                part = part.detach().double() if isinstance(part, torch.Tensor) else float(part)
                sums[name] = sums.get(name, 0.0) + part
                counts[name] = counts.get(name, 0) + 1
            if hasattr(bar, "set_postfix") and (device.type == "cpu" or steps % POSTFIX_EVERY == 0):
                bar.set_postfix(loss=f"{float(sums['loss']) / steps:.3f}")
        elapsed = time.perf_counter() - started
        means = {name: float(total) / max(counts[name], 1) for name, total in sums.items()}
        if shard:
            reduced = torch.tensor([means["loss"]], device=device)  # nccl reduces only GPU tensors
            dist.all_reduce(reduced)
            means["loss"] = float(reduced) / world
        means["examples_per_s"] = len(order) * (world if shard else 1) / max(elapsed, 1e-9)
        for name, value in means.items():
            history.setdefault(name, []).append(value)
        if log is not None and rank == 0:
            shown = ", ".join(f"{name} {value:.4f}" for name, value in means.items() if name != "examples_per_s")
            log(f"{desc} epoch {epoch + 1}/{epochs}: {shown} ({elapsed:.1f} s, {means['examples_per_s']:.0f} examples/s)")
        if after_epoch is not None and after_epoch(epoch, means):
            break  # early stopping: every rank decides alike (validation is broadcast or identical)
    return history
