"""`genrec-train run` for configs of kind "sasrec": SASRec trained with full cross-entropy over every
item at every position of each user's training sequence (Klenitskiy & Vasilev, RecSys 2023), by
the project's one training loop; the epoch with the best validation NDCG@10 is kept, and training
stops after `patience` epochs without a better one.

Data use: only the leave-one-out training part of each user (`split.train`); the valid and test
targets are never trained on. Each example is one user's sequence: the inputs are its items but
the last, the targets its items but the first (the next item at every position).
"""

from __future__ import annotations

import copy
import random
import time
from collections import Counter
from collections.abc import Sequence

import torch

from genrec.bundle import items_trie
from genrec.errors import ConfigError
from genrec.sasrec.config import SasRecConfig
from genrec.sasrec.method import SasRec
from genrec.sasrec.model import MODEL_DIR, PAD, SasRecModel
from genrec.tensors import pad_batch

from ..loop import fit
from ..sequences import CROPS, window
from ..title_ids import title_id_items
from .base import RunContext, Trained, Trainer


def build_model(item_ids: Sequence[str], cfg: SasRecConfig) -> SasRecModel:
    return SasRecModel(item_ids, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                       inner_size=cfg.inner_size, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, max_len=cfg.max_len, init_std=cfg.init_std)


def training_sequences(model: SasRecModel, train: dict[str, list[str]]) -> list[list[int]]:
    """Each user's training items as model rows (users with fewer than two items teach nothing)."""
    rows = (model.rows(items) for items in train.values())
    return [seq for seq in rows if len(seq) >= 2]


def collate(windows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (inputs, targets): inputs are each window but its last item, targets the next
    item at every position (padding where there is none)."""
    inputs, _ = pad_batch([w[:-1] for w in windows], PAD, left=True)
    targets, _ = pad_batch([w[1:] for w in windows], PAD, left=True)
    return inputs, targets


def sequence_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    return model(inputs, targets)  # the forward computes the loss: DDP sees the whole step


def train_sequences(model: SasRecModel, sequences: list[list[int]], cfg: SasRecConfig, seed: int, *,
                    after_epoch=None, on_batch=None, progress: bool = True) -> dict[str, list[float]]:
    """The training loop over the sequences: each epoch a window of every sequence (cfg.crop),
    batches grouped by length with cfg.length_grouped. `after_epoch` and `on_batch`: as in
    training.loop.fit, whose history this returns."""

    def examples(epoch: int) -> list[list[int]]:
        rng = random.Random(seed * 7919 + epoch)
        return [window(seq, cfg.max_len + 1, cfg.crop, rng) for seq in sequences]

    return fit(model, epochs=cfg.epochs, examples=examples, collate=collate, loss=sequence_loss,
               batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
               decay=False, grad_clip=cfg.grad_clip, seed=seed, length=len if cfg.length_grouped else None,
               after_epoch=after_epoch, on_batch=on_batch, desc="sasrec", progress=progress, log=None)


class SasRecTrainer(Trainer):
    kind = "sasrec"
    supports_ddp = True  # the loss is the model's forward; every rank validates the same weights

    def train(self, ctx: RunContext) -> Trained:
        config, cfg = ctx.config, ctx.config.sasrec
        if cfg.crop not in CROPS:
            raise ConfigError(f"sasrec.crop must be one of {', '.join(CROPS)}, got {cfg.crop!r}")
        if cfg.patience < 1:
            raise ConfigError(f"sasrec.patience must be >= 1, got {cfg.patience}")
        timings: dict[str, float] = {}
        started = t = time.perf_counter()
        split = ctx.dataset.split
        item_ids = list(ctx.dataset.catalog.items)
        texts = [ctx.dataset.item_text[i] for i in item_ids]
        items, id_stats = title_id_items(ctx.tokenizer, item_ids, texts, ctx.previous_ids)
        id_stats["users"] = len(split.train)
        timings["textual_ids"] = time.perf_counter() - t

        t = time.perf_counter()
        torch.manual_seed(config.seed)
        model = build_model(item_ids, cfg).to(ctx.device)
        model.set_item_counts(Counter(i for seq in split.train.values() for i in seq))
        method = SasRec(model, ctx.tokenizer)
        method.precision = config.precision  # validation runs as the service would
        trie = items_trie(items, ctx.tokenizer.eos_token_id)
        sequences = training_sequences(model, split.train)
        if not sequences:
            raise ConfigError("no user has two training items: SASRec has nothing to learn from")
        ctx.log(f"sasrec: {len(sequences)} training sequences, {model.num_items} items, "
                f"{sum(p.numel() for p in model.parameters())} parameters")

        history: dict = {"loss": [], "valid_ndcg@10": [], "examples_per_s": []}
        best = {"score": float("-inf"), "epoch": 0, "state": None}
        epoch_started = [time.perf_counter()]

        def after_epoch(epoch: int, means: dict[str, float]) -> bool:
            score = ctx.validate(method, trie, cfg.valid_users)
            history["loss"].append(means["loss"])
            history["examples_per_s"].append(means["examples_per_s"])
            history["valid_ndcg@10"].append(score)
            if score > best["score"]:
                best.update(score=score, epoch=epoch + 1, state=copy.deepcopy(model.state_dict()))
            now = time.perf_counter()
            ctx.log(f"sasrec epoch {epoch + 1}/{cfg.epochs}: loss {means['loss']:.4f}, valid NDCG@10 {score:.4f} "
                    f"(best {best['score']:.4f} at epoch {best['epoch']}), {now - epoch_started[0]:.1f} s, "
                    f"{means['examples_per_s']:.0f} sequences/s")
            epoch_started[0] = now
            if epoch + 1 - best["epoch"] >= cfg.patience:
                ctx.log(f"sasrec: no better validation for {cfg.patience} epochs, stopping")
                return True  # fit stops here
            return False

        train_sequences(model, sequences, cfg, config.seed, after_epoch=after_epoch, progress=ctx.progress)
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        model.eval()
        history["best_epoch"] = best["epoch"]
        timings["training"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        return Trained(method=method, items=items, model_dirs={MODEL_DIR: model.save}, history=history,
                       id_stats=id_stats, timings=timings)
