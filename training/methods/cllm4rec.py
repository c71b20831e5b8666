"""CLLM4Rec's training half: T5 backbone with user/item tokens -> pretraining (alternating
collaborative and content steps with mutual regularization) -> recommendation fine-tuning
(masked multinomial likelihood) -> the trained method; and CLLM4Rec's own evaluation protocol.

Data use. One model serves both protocols without leaking either's targets: per user, a random
`holdout_share` of the leave-one-out training part (fixed seed) is held out for CLLM4Rec's own
protocol, and the model trains on the rest only. Leave-one-out valid/test items are never trained
on either. Leave-one-out prompts show the whole visible history (held-out items included, they are
history at that time); the CLLM4Rec protocol's prompts show the training items, its relevant items
are the held-out ones, and the leave-one-out valid/test items are removed from its rankings.
"""

from __future__ import annotations

import copy
import random
import time
from collections import Counter
from collections.abc import Sequence

import torch

from genrec.bundle import items_trie
from genrec.cllm4rec.config import Cllm4RecConfig
from genrec.cllm4rec.method import Cllm4Rec
from genrec.cllm4rec.model import (
    COLLAB_ORDERS,
    MODEL_DIR,
    OBJECTIVES,
    PROMPT_TEXTS,
    Cllm4RecModel,
    PromptPieces,
    collab_batch,
    content_batch,
    doc_loss,
    extend_tokenizer,
    finetune_batch,
    mask_history,
    multinomial_loss,
    mutual_regularization,
)
from genrec.config import TrainConfig
from genrec.errors import ConfigError
from genrec.method import Method, Query
from genrec.metrics import ndcg_multi_at, recall_at
from genrec.modeling import build_t5
from genrec.tokenization import encode_text

from ..baselines import popularity_ranking, top_unseen
from ..data import Dataset, SplitData
from ..loop import fit
from ..report import table
from ..sequences import CROPS, window
from ..title_ids import title_id_items
from .base import RunContext, Trained, Trainer

PROTOCOL_KEY = "cllm4rec_protocol"
PROTOCOL_METRICS = ("recall@20", "recall@40", "ndcg@100")


def holdout_split(split: SplitData, share: float, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training items, held-out items) per user: a random `share` of each user's leave-one-out
    training part held out (at least one item kept), with a fixed seed."""
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"cllm4rec.holdout_share must be in [0, 1), got {share}")
    rng = random.Random(seed)
    train: dict[str, list[str]] = {}
    held: dict[str, list[str]] = {}
    for user, items in split.train.items():
        if share > 0:
            train[user], held[user] = mask_history(items, share, rng)
        else:
            train[user], held[user] = list(dict.fromkeys(items)), []
    return train, held



def build_model(cfg: Cllm4RecConfig, tokenizer, user_ids: list[str], item_ids: list[str],
                seed: int) -> tuple[Cllm4RecModel, PromptPieces]:
    """A fresh model and its prompt pieces; extends `tokenizer` with the user and item tokens
    (the backbone is sized to the words before the extension)."""
    backbone = build_t5(cfg.model, tokenizer, seed=seed)
    vocab_size = extend_tokenizer(tokenizer, user_ids, item_ids)
    model = Cllm4RecModel(backbone, vocab_size, user_ids, item_ids, init_std=cfg.init_std,
                          item_bias=cfg.item_bias, item_head_scale=cfg.item_head_scale)
    model.set_backbone_trainable(not cfg.freeze_backbone)
    return model, PromptPieces.from_tokenizer(tokenizer)


# --------------------------------------------------------------------------- training


def _chunks(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def collab_documents(users: Sequence[str], train_items: dict[str, list[str]], cfg: Cllm4RecConfig, size: int,
                     rng: random.Random, user_dropout: float = 0.0) -> list[tuple[str | None, list[str]]]:
    """One collaborative document per user for an epoch: at most `size` of the user's items,
    shuffled (cfg.collab_order "shuffled", the paper's) or a window of consecutive items in time
    order ("chronological", cfg.crop). With `user_dropout`, that share of the documents has no
    user (the model also learns histories of users it has no token for)."""
    docs: list[tuple[str | None, list[str]]] = []
    for user in users:
        if cfg.collab_order == "chronological":
            seq = window(train_items[user], size, cfg.crop, rng)
        else:
            seq = list(train_items[user])
            rng.shuffle(seq)
            seq = seq[:size]
        docs.append((None if user_dropout and rng.random() < user_dropout else user, seq))
    return docs


def check_config(cfg: Cllm4RecConfig) -> None:
    for name, value, allowed in (("objective", cfg.objective, OBJECTIVES),
                                 ("collab_order", cfg.collab_order, COLLAB_ORDERS), ("crop", cfg.crop, CROPS)):
        if value not in allowed:
            raise ConfigError(f"cllm4rec.{name} must be one of {', '.join(allowed)}, got {value!r}")


def pretrain(model: Cllm4RecModel, pieces: PromptPieces, train_items: dict[str, list[str]],
             item_text_ids: dict[str, list[int]], cfg: Cllm4RecConfig, seed: int, progress: bool = True,
             log=None, on_batch=None) -> dict:
    """Alternating collaborative and content steps (one optimizer step each); each epoch
    reshuffles the documents and the order of the items inside each collaborative document.
    `on_batch`: as in training.loop.fit (each of its batches is one step's documents)."""
    rng = random.Random(seed)
    users = [u for u, items in train_items.items() if items]
    items = list(item_text_ids)

    def steps(epoch: int) -> list[tuple[str, list]]:
        docs = collab_documents(users, train_items, cfg, cfg.max_doc_items, rng)
        rng.shuffle(docs)
        order = list(items)
        rng.shuffle(order)
        cdocs = [(i, item_text_ids[i][: cfg.max_text_tokens]) for i in order]
        collab, content = _chunks(docs, cfg.batch_size), _chunks(cdocs, cfg.batch_size)
        out = []
        for s in range(max(len(collab), len(content))):
            out += [("collab", collab[s])] if s < len(collab) else []
            out += [("content", content[s])] if s < len(content) else []
        return out

    builders = {"collab": collab_batch, "content": content_batch}

    def loss(model_, units):
        lm, docs = units[0]
        value, parts = doc_loss(model_, builders[lm](model_, pieces, docs), lm, cfg.reg_lambda)
        return value, {f"{lm}_nll": parts["nll"], f"{lm}_reg": parts["reg"]}

    history = fit(
        model, epochs=cfg.pretrain_epochs, examples=steps, collate=list, loss=loss, batch_size=1,
        lr=cfg.pretrain_lr, weight_decay=cfg.weight_decay, decay=False, grad_clip=cfg.grad_clip, shuffle=False,
        distributed=False, on_batch=on_batch, desc="pretrain", progress=progress, log=log,
    )
    return {key: history.get(key, []) for key in ("collab_nll", "content_nll", "collab_reg", "content_reg")}


def finetune(model: Cllm4RecModel, pieces: PromptPieces, train_items: dict[str, list[str]], cfg: Cllm4RecConfig,
             seed: int, validate=None, progress: bool = True, log=None, on_batch=None) -> dict:
    """Recommendation fine-tuning: per epoch a fresh random mask of each user's items; the loss is
    the multinomial likelihood of the masked-out items (+ the regularization toward the content
    LM). With `validate`, the epoch with the best validation NDCG@10 is kept. `on_batch`: as in
    training.loop.fit."""
    rng = random.Random(seed + 1)
    history: dict = {"finetune_loss": [], "valid_ndcg@10": []}
    best = {"score": -1.0, "state": None, "epoch": -1}
    users = [u for u, items in train_items.items() if len(items) >= 2]

    def examples(epoch: int) -> list:
        out = []
        for _ in range(cfg.finetune_views_per_user):
            if cfg.objective == "next_item":  # the prompt's items and the one after them
                out.extend(collab_documents(users, train_items, cfg, cfg.max_prompt_items + 1, rng, cfg.user_dropout))
                continue
            for user in users:
                last = rng.random() < cfg.last_item_share
                kept, held = mask_history(train_items[user], cfg.mask_share, rng, include_last=last)
                out.append((None if rng.random() < cfg.user_dropout else user, kept, held))
        rng.shuffle(out)
        return out

    def next_item_loss(model_, chunk):
        return doc_loss(model_, collab_batch(model_, pieces, chunk), "collab", cfg.reg_lambda)[0]

    def masked_loss(model_, chunk):
        batch = finetune_batch(model_, pieces, chunk, cfg.max_prompt_items)
        value = multinomial_loss(model_.score_items(batch.enc_ids, batch.enc_mask), batch.targets)
        if cfg.reg_lambda:
            user_rows = torch.tensor(sorted({model_.user_index[u] for u, _, _ in chunk if u is not None}),
                                     dtype=torch.long, device=batch.targets.device)
            item_rows = batch.targets.sum(0).nonzero().flatten()
            value = value + cfg.reg_lambda * mutual_regularization(model_, "collab", user_rows, item_rows)
        return value

    def after_epoch(epoch: int, means: dict) -> None:
        history["finetune_loss"].append(means["loss"])
        message = f"finetune epoch {epoch + 1}/{cfg.finetune_epochs}: loss {means['loss']:.4f}"
        if validate is not None:
            model.eval()
            score = validate()
            history["valid_ndcg@10"].append(score)
            message += f", valid NDCG@10 {score:.4f}"
            if score > best["score"]:
                best.update(score=score, state=copy.deepcopy(model.state_dict()), epoch=epoch)
                history["best_epoch"] = epoch + 1
        if log is not None:
            log(message + f" ({means['examples_per_s']:.0f} examples/s)")
        return validate is not None and cfg.patience is not None and epoch - best["epoch"] >= cfg.patience

    def prompt_items(example) -> int:  # what a prompt's (or a document's) length grows with
        return min(len(example[1]), cfg.max_prompt_items + 1)

    loss = next_item_loss if cfg.objective == "next_item" else masked_loss
    fit(model, epochs=cfg.finetune_epochs, examples=examples, collate=list, loss=loss, batch_size=cfg.batch_size,
        lr=cfg.finetune_lr, weight_decay=cfg.weight_decay, decay=False, grad_clip=cfg.grad_clip, shuffle=False,
        distributed=False, length=prompt_items if cfg.length_grouped else None, after_epoch=after_epoch,
        on_batch=on_batch, desc="finetune", progress=progress)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return history


# --------------------------------------------------------------------------- CLLM4Rec's protocol


def protocol_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]]) -> dict[str, float]:
    n = max(len(rankings), 1)
    return {
        "recall@20": sum(recall_at(r, t, 20) for r, t in zip(rankings, relevant, strict=True)) / n,
        "recall@40": sum(recall_at(r, t, 40) for r, t in zip(rankings, relevant, strict=True)) / n,
        "ndcg@100": sum(ndcg_multi_at(r, t, 100) for r, t in zip(rankings, relevant, strict=True)) / n,
    }


def evaluate_protocol(method: Method, split: SplitData, train_items: dict[str, list[str]],
                      held: dict[str, list[str]], users: int | None, batch_size: int) -> dict:
    """CLLM4Rec's protocol: per-user held-out interactions, Recall@20/40, NDCG@100; the model and
    a popularity baseline (training items counted) on the same users and exclusions."""
    chosen = [u for u in split.train if held.get(u)]
    chosen = chosen[:users] if users else chosen
    # The leave-one-out targets are removed too (under the new-item protocol a withheld one is
    # not in the training view's split at all).
    queries = [Query(history=train_items[u], user_id=u,
                     exclude=train_items[u] + [t for t in (split.valid.get(u), split.test.get(u)) if t])
               for u in chosen]
    relevant = [set(held[u]) for u in chosen]
    rankings: list[list[str]] = []
    for start in range(0, len(queries), batch_size):
        found = method.recommend(queries[start : start + batch_size], 100, None)
        rankings.extend([r.item_id for r in row] for row in found)
    ranked = popularity_ranking(Counter(i for items in train_items.values() for i in items))
    popular = [top_unseen(ranked, q.exclude, 100) for q in queries]
    return {**protocol_metrics(rankings, relevant), "users": len(chosen), "popularity": protocol_metrics(popular, relevant)}


def protocol_table(result: dict) -> str:
    proto = result.get(PROTOCOL_KEY, {})
    return table([("CLLM4Rec", proto), ("popularity", proto.get("popularity", {}))], PROTOCOL_METRICS)


# --------------------------------------------------------------------------- the trainer


class Cllm4RecTrainer(Trainer):
    kind = "cllm4rec"

    def tokenizer_corpus(self, texts: list[str]) -> list[str]:
        return texts + list(PROMPT_TEXTS)  # the prompts' words are whole tokens too

    def train(self, ctx: RunContext) -> Trained:
        config, dataset, tokenizer = ctx.config, ctx.dataset, ctx.tokenizer
        cfg = config.cllm4rec
        check_config(cfg)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        split = dataset.split
        item_ids = list(dataset.catalog.items)
        user_ids = list(split.train)
        texts = [dataset.item_text[i] for i in item_ids]
        # Textual IDs (for the API): title words, unique, minted before the vocabulary extension.
        items, id_stats = title_id_items(tokenizer, item_ids, texts, ctx.previous_ids)
        id_stats["users"] = len(user_ids)
        item_text_ids = {i: encode_text(tokenizer, text) for i, text in zip(item_ids, texts, strict=True)}
        model, pieces = build_model(cfg, tokenizer, user_ids, item_ids, config.seed)
        model.to(ctx.device)
        train_items, _held = holdout_split(split, cfg.holdout_share, config.seed)
        timings["model_setup"] = time.perf_counter() - t

        t = time.perf_counter()
        history = pretrain(model, pieces, train_items, item_text_ids, cfg, config.seed, ctx.progress, ctx.log)
        timings["pretraining"] = time.perf_counter() - t

        method = Cllm4Rec(model, tokenizer, config)
        method.precision = config.precision  # validation runs as the service would
        trie = items_trie(items, tokenizer.eos_token_id)
        t = time.perf_counter()
        history.update(finetune(
            model, pieces, train_items, cfg, config.seed,
            validate=lambda: ctx.validate(method, trie, cfg.valid_users), progress=ctx.progress, log=ctx.log,
        ))
        timings["finetuning"] = time.perf_counter() - t
        return Trained(method=method, items=items, model_dirs={MODEL_DIR: model.save}, history=history,
                       id_stats=id_stats, timings=timings)

    def extra_evaluation(self, method: Method, config: TrainConfig, dataset: Dataset, users: int | None) -> dict:
        cfg = config.cllm4rec
        if not cfg.holdout_share:  # every training item was trained on: the protocol has nothing to score
            return {}
        train_items, held = holdout_split(dataset.split, cfg.holdout_share, config.seed)
        result = evaluate_protocol(method, dataset.split, train_items, held, users, config.eval.batch_size)
        return {PROTOCOL_KEY: {**result, "holdout_share": cfg.holdout_share}}

    def report_sections(self, evaluation: dict) -> list[str]:
        if PROTOCOL_KEY not in evaluation:
            return []
        return ["## CLLM4Rec protocol (per-user held-out interactions)", "", protocol_table(evaluation), ""]
