"""`genrec-train run` for configs of kind "cllm4rec" (SPEC 2): data -> tokenizer -> T5 backbone
with user/item tokens -> pretraining (alternating collaborative and content steps with mutual
regularization) -> recommendation fine-tuning (masked multinomial likelihood) -> both evaluation
protocols -> bundle of kind "cllm4rec".

Data use. One model serves both protocols without leaking either's targets: per user, a random
`holdout_share` of the leave-one-out training part (fixed seed) is held out for CLLM4Rec's own
protocol, and the model trains on the rest only. Leave-one-out valid/test items are never trained
on either. Leave-one-out prompts show the whole visible history (held-out items included, they are
history at that time); the CLLM4Rec protocol's prompts show the training items, its relevant items
are the held-out ones, and the leave-one-out valid/test items are removed from its rankings.
"""

from __future__ import annotations

import copy
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from genrec.bundle import BundleItem, update_bundle_files, update_manifest, write_bundle
from genrec.cllm4rec import (
    MODEL_DIR,
    PROMPT_TEXTS,
    Cllm4RecModel,
    Cllm4RecRecommender,
    PromptPieces,
    collab_batch,
    content_batch,
    doc_loss,
    extend_tokenizer,
    finetune_batch,
    load_cllm4rec,
    mask_history,
    multinomial_loss,
    mutual_regularization,
    title_textual_id,
)
from genrec.errors import ConfigError
from genrec.metrics import leave_one_out_metrics, ndcg_multi_at, recall_at
from genrec.modeling import build_t5
from genrec.tokenization import encode_text

from .config import Cllm4RecConfig, TrainConfig, config_from_dict
from .data import Dataset, SplitData, load_dataset
from .evaluation import evaluate_all, evaluation_users
from .report import metrics_table
from .tokenizer_training import tokenizer_from_pretrained, train_tokenizer

PROTOCOL_KEY = "cllm4rec_protocol"
PROTOCOL_METRICS = ("recall@20", "recall@40", "ndcg@100")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log(message: str) -> None:
    print(message, flush=True)


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


# --------------------------------------------------------------------------- training


def _batches(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _step(model: Cllm4RecModel, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)  # untouched tables keep grad None: AdamW skips them
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if clip and params:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def make_optimizer(model: Cllm4RecModel, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def pretrain(model: Cllm4RecModel, pieces: PromptPieces, train_items: dict[str, list[str]],
             item_text_ids: dict[str, list[int]], cfg: Cllm4RecConfig, seed: int, progress: bool = True) -> dict:
    """Alternating collaborative and content steps; each epoch reshuffles the documents and the
    order of the items inside each collaborative document."""
    rng = random.Random(seed)
    optimizer = make_optimizer(model, cfg.pretrain_lr, cfg.weight_decay)
    history: dict[str, list[float]] = {"collab_nll": [], "content_nll": [], "collab_reg": [], "content_reg": []}
    users = [u for u, items in train_items.items() if items]
    items = list(item_text_ids)
    model.train()
    for epoch in range(cfg.pretrain_epochs):
        docs = []
        for user in users:
            seq = list(train_items[user])
            rng.shuffle(seq)
            docs.append((user, seq[: cfg.max_doc_items]))
        rng.shuffle(docs)
        order = list(items)
        rng.shuffle(order)
        cdocs = [(i, item_text_ids[i][: cfg.max_text_tokens]) for i in order]
        collab, content = _batches(docs, cfg.batch_size), _batches(cdocs, cfg.batch_size)
        sums = Counter()
        counts = Counter()
        steps = max(len(collab), len(content))
        for s in tqdm(range(steps), desc=f"pretrain {epoch + 1}", disable=not progress, leave=False):
            for lm, batches, build in (("collab", collab, collab_batch), ("content", content, content_batch)):
                if s < len(batches):
                    loss, parts = doc_loss(model, build(model, pieces, batches[s]), lm, cfg.reg_lambda)
                    _step(model, optimizer, loss, cfg.grad_clip)
                    sums[f"{lm}_nll"] += parts["nll"]
                    sums[f"{lm}_reg"] += parts["reg"]
                    counts[lm] += 1
        for key in history:
            lm = key.split("_")[0]
            history[key].append(sums[key] / max(counts[lm], 1))
        _log(f"pretrain epoch {epoch + 1}: collab nll {history['collab_nll'][-1]:.4f}, "
             f"content nll {history['content_nll'][-1]:.4f}")
    return history


def finetune(model: Cllm4RecModel, pieces: PromptPieces, train_items: dict[str, list[str]], cfg: Cllm4RecConfig,
             seed: int, validate=None, progress: bool = True) -> dict:
    """Recommendation fine-tuning: per epoch a fresh random mask of each user's items; the loss is
    the multinomial likelihood of the masked-out items (+ the regularization toward the content
    LM). With `validate`, the epoch with the best validation NDCG@10 is kept."""
    rng = random.Random(seed + 1)
    optimizer = make_optimizer(model, cfg.finetune_lr, cfg.weight_decay)
    history: dict = {"finetune_loss": [], "valid_ndcg@10": []}
    best, best_state = -1.0, None
    users = [u for u, items in train_items.items() if len(items) >= 2]
    for epoch in range(cfg.finetune_epochs):
        model.train()
        examples = []
        for _ in range(cfg.finetune_views_per_user):
            for user in users:
                last = rng.random() < cfg.last_item_share
                kept, held = mask_history(train_items[user], cfg.mask_share, rng, include_last=last)
                examples.append((None if rng.random() < cfg.user_dropout else user, kept, held))
        rng.shuffle(examples)
        total, n = 0.0, 0
        for chunk in tqdm(_batches(examples, cfg.batch_size), desc=f"finetune {epoch + 1}", disable=not progress, leave=False):
            batch = finetune_batch(model, pieces, chunk, cfg.max_prompt_items)
            loss = multinomial_loss(model.score_items(batch.enc_ids, batch.enc_mask), batch.targets)
            if cfg.reg_lambda:
                user_rows = torch.tensor(sorted({model.user_index[u] for u, _, _ in chunk if u is not None}), dtype=torch.long)
                item_rows = batch.targets.sum(0).nonzero().flatten()
                loss = loss + cfg.reg_lambda * mutual_regularization(model, "collab", user_rows, item_rows)
            _step(model, optimizer, loss, cfg.grad_clip)
            total += float(loss.detach())
            n += 1
        history["finetune_loss"].append(total / max(n, 1))
        message = f"finetune epoch {epoch + 1}: loss {history['finetune_loss'][-1]:.4f}"
        if validate is not None:
            model.eval()
            score = validate()
            history["valid_ndcg@10"].append(score)
            message += f", valid NDCG@10 {score:.4f}"
            if score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
                history["best_epoch"] = epoch + 1
        _log(message)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


# --------------------------------------------------------------------------- evaluation


def rank(recommender: Cllm4RecRecommender, users: Sequence[str], histories: Sequence[Sequence[str]],
         exclude: Sequence[Sequence[str]], k: int, batch_size: int) -> list[list[str]]:
    out: list[list[str]] = []
    for start in range(0, len(users), batch_size):
        found = recommender.recommend(
            histories[start : start + batch_size], k, users=users[start : start + batch_size],
            exclude_history=True, exclude_items=exclude[start : start + batch_size],
        )
        out.extend([r.item_id for r in row] for row in found)
    return out


def evaluate_loo(recommender: Cllm4RecRecommender, split: SplitData, which: str, users: int | None,
                 batch_size: int) -> dict[str, float]:
    """Leave-one-out HR/NDCG@5/10 (SPEC 1.6): the whole visible history in the prompt and excluded."""
    chosen = evaluation_users(split, which, users)
    histories = [split.history(u, which, 10**9) for u in chosen]
    rankings = rank(recommender, chosen, histories, histories, 10, batch_size)
    return leave_one_out_metrics(rankings, [getattr(split, which)[u] for u in chosen])


def protocol_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]]) -> dict[str, float]:
    n = max(len(rankings), 1)
    return {
        "recall@20": sum(recall_at(r, t, 20) for r, t in zip(rankings, relevant, strict=True)) / n,
        "recall@40": sum(recall_at(r, t, 40) for r, t in zip(rankings, relevant, strict=True)) / n,
        "ndcg@100": sum(ndcg_multi_at(r, t, 100) for r, t in zip(rankings, relevant, strict=True)) / n,
    }


def evaluate_protocol(recommender: Cllm4RecRecommender | None, split: SplitData, train_items: dict[str, list[str]],
                      held: dict[str, list[str]], users: int | None, batch_size: int) -> dict:
    """CLLM4Rec's protocol: per-user held-out interactions, Recall@20/40, NDCG@100; the model and
    a popularity baseline (training items counted) on the same users and exclusions."""
    chosen = [u for u in split.train if held.get(u)]
    chosen = chosen[:users] if users else chosen
    histories = [train_items[u] for u in chosen]
    exclude = [train_items[u] + [split.valid[u], split.test[u]] for u in chosen]
    relevant = [set(held[u]) for u in chosen]
    counts = Counter(i for items in train_items.values() for i in items)
    ranked = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    popular = []
    for banned in exclude:
        banned_set = set(banned)
        popular.append([i for i in ranked if i not in banned_set][:100])
    result: dict = {}
    if recommender is not None:
        result.update(protocol_metrics(rank(recommender, chosen, histories, exclude, 100, batch_size), relevant))
    result["users"] = len(chosen)
    result["popularity"] = protocol_metrics(popular, relevant)
    return result


# --------------------------------------------------------------------------- the run


def _load(config: TrainConfig) -> Dataset:
    return load_dataset(
        config.data.dataset, Path(config.data.data_dir) if config.data.data_dir else None,
        kcore=config.data.kcore, max_text_chars=config.data.max_text_chars,
    )


def run_cllm4rec(config: TrainConfig, out: Path, progress: bool = True) -> dict:
    """Trains CLLM4Rec and writes a bundle of kind "cllm4rec" to `out`; returns eval.json's content."""
    cfg = config.cllm4rec
    if config.threads:
        torch.set_num_threads(config.threads)
    _seed(config.seed)
    timings: dict[str, float] = {}
    started = t = time.perf_counter()
    dataset = _load(config)
    split = dataset.split
    item_ids = list(dataset.catalog.items)
    user_ids = list(split.train)
    texts = [dataset.item_text[i] for i in item_ids]
    _log(f"data: {dataset.name}: {len(user_ids)} users, {len(item_ids)} items")
    if config.tokenizer.pretrained_path:
        tokenizer = tokenizer_from_pretrained(config.tokenizer.pretrained_path)
    else:
        tokenizer = train_tokenizer(texts + list(PROMPT_TEXTS), config.tokenizer.vocab_size)
    # Textual IDs (for the API): normalized title words, unique, minted before the extension.
    taken: set[str] = set()

    def claim(textual_id: str) -> bool:
        if textual_id in taken:
            return False
        taken.add(textual_id)
        return True

    minted = [title_textual_id(tokenizer, text, claim) for text in texts]
    item_text_ids = {i: encode_text(tokenizer, text) for i, text in zip(item_ids, texts, strict=True)}
    backbone = build_t5(cfg.model, tokenizer, seed=config.seed)  # sized to the words only
    vocab_size = extend_tokenizer(tokenizer, user_ids, item_ids)
    model = Cllm4RecModel(backbone, vocab_size, user_ids, item_ids, init_std=cfg.init_std, item_bias=cfg.item_bias,
                          item_head_scale=cfg.item_head_scale)
    model.set_backbone_trainable(not cfg.freeze_backbone)
    pieces = PromptPieces.from_tokenizer(tokenizer)
    train_items, held = holdout_split(split, cfg.holdout_share, config.seed)
    timings["data_and_tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    history = pretrain(model, pieces, train_items, item_text_ids, cfg, config.seed, progress)
    timings["pretraining"] = time.perf_counter() - t

    recommender = Cllm4RecRecommender(model, tokenizer, max_history=cfg.max_prompt_items)
    t = time.perf_counter()
    history.update(finetune(
        model, pieces, train_items, cfg, config.seed,
        validate=lambda: evaluate_loo(recommender, split, "valid", cfg.valid_users, config.eval.batch_size)["ndcg@10"],
        progress=progress,
    ))
    timings["finetuning"] = time.perf_counter() - t

    t = time.perf_counter()
    result = evaluate_all(
        lambda which: evaluate_loo(recommender, split, which, config.eval.users, config.eval.batch_size),
        split, config.eval.users,
    )
    result[PROTOCOL_KEY] = evaluate_protocol(recommender, split, train_items, held, config.eval.users,
                                             config.eval.batch_size)
    result[PROTOCOL_KEY]["holdout_share"] = cfg.holdout_share
    timings["evaluation"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    result["kind"] = "cllm4rec"
    result["users"] = {which: len(getattr(split, which)) for which in ("valid", "test")}
    result["timings_s"] = timings

    eos = tokenizer.eos_token_id
    items = [BundleItem(i, m.textual_id, list(m.token_ids) + [eos], dataset.item_text[i])
             for i, m in zip(item_ids, minted, strict=True)]
    id_stats = {
        "items": len(items),
        "mean_words": sum(len(m.textual_id.split(" ")) for m in minted) / max(len(minted), 1),
        "suffixed": sum(m.suffixed for m in minted),
        "users": len(user_ids),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        files = {
            "eval.json": _write_json(tmp_dir / "eval.json", result),
            "history.json": _write_json(tmp_dir / "history.json", history),
            "training.png": plot_history(history, tmp_dir / "training.png"),
            "report.md": write_report(tmp_dir / "report.md", dataset.name, config.name, result, history, timings,
                                      [(m.textual_id, dataset.item_text[i]) for i, m in list(zip(item_ids, minted, strict=True))[:10]]),
        }
        write_bundle(
            out, kind="cllm4rec", tokenizer=tokenizer, models={}, items=items, config=config.to_dict(),
            dataset=dataset.name, id_stats=id_stats,
            metrics={k: result[k] for k in ("valid", "test", "baselines", PROTOCOL_KEY)},
            extra_files=files, extra_dirs={MODEL_DIR: model.save},
        )
    _log("\n" + metrics_table(result, "test"))
    _log(protocol_table(result))
    _log(f"bundle written to {out} in {timings['total']:.0f} s")
    return result


def reevaluate_cllm4rec(bundle, users: int | None = None, progress: bool = True) -> dict:
    """`genrec-train evaluate` for a cllm4rec bundle: both protocols on its dataset and split."""
    config = config_from_dict(bundle.config)
    dataset = _load(config)
    model = load_cllm4rec(bundle.path / MODEL_DIR)
    recommender = Cllm4RecRecommender(model, bundle.tokenizer, max_history=config.cllm4rec.max_prompt_items)
    train_items, held = holdout_split(dataset.split, config.cllm4rec.holdout_share, config.seed)
    result = evaluate_all(
        lambda which: evaluate_loo(recommender, dataset.split, which, users, config.eval.batch_size),
        dataset.split, users,
    )
    result[PROTOCOL_KEY] = evaluate_protocol(recommender, dataset.split, train_items, held, users, config.eval.batch_size)
    result[PROTOCOL_KEY]["holdout_share"] = config.cllm4rec.holdout_share
    result["kind"] = "cllm4rec"
    if users is None:
        saved_path = bundle.path / "eval.json"
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
        saved.update(result)
        update_manifest(bundle.path, metrics={k: result[k] for k in ("valid", "test", "baselines", PROTOCOL_KEY)})
        update_bundle_files(bundle.path, {"eval.json": json.dumps(saved, indent=2)})
    return result


# --------------------------------------------------------------------------- report


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
    return path


def protocol_table(result: dict) -> str:
    proto = result.get(PROTOCOL_KEY, {})
    lines = ["| model | " + " | ".join(PROTOCOL_METRICS) + " |", "|---" * (len(PROTOCOL_METRICS) + 1) + "|"]
    for name, values in (("cllm4rec", proto), ("popularity", proto.get("popularity", {}))):
        lines.append(f"| {name} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in PROTOCOL_METRICS) + " |")
    return "\n".join(lines)


def plot_history(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("collab_nll", "content_nll"):
        values = history.get(key, [])
        axes[0].plot(range(1, len(values) + 1), values, marker="o", label=key)
    axes[0].legend()
    axes[0].set(title="pretraining (main-text NLL)", xlabel="epoch")
    loss = history.get("finetune_loss", [])
    axes[1].plot(range(1, len(loss) + 1), loss, marker="o")
    axes[1].set(title="fine-tuning (multinomial NLL)", xlabel="epoch")
    ndcg = history.get("valid_ndcg@10", [])
    axes[2].plot(range(1, len(ndcg) + 1), ndcg, marker="o", color="tab:green")
    axes[2].set(title="validation NDCG@10 (leave-one-out)", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(path: Path, dataset: str, config_name: str, result: dict, history: dict, timings: dict,
                 examples: list[tuple[str, str]]) -> Path:
    parts = [f"# CLLM4Rec on {dataset} (config {config_name})", ""]
    parts += ["## Test (leave-one-out, full ranking, history excluded)", "", metrics_table(result, "test"), ""]
    parts += ["## Validation", "", metrics_table(result, "valid"), ""]
    parts += ["## CLLM4Rec protocol (per-user held-out interactions)", "", protocol_table(result), ""]
    parts += ["## Textual IDs (title words, for the API)", ""] + [f"- `{tid}` <- {text}" for tid, text in examples] + [""]
    parts += ["## Training", ""]
    for key in ("collab_nll", "content_nll", "finetune_loss", "valid_ndcg@10"):
        if history.get(key):
            parts.append(f"- {key}: " + ", ".join(f"{v:.4f}" for v in history[key]))
    if history.get("best_epoch"):
        parts.append(f"- fine-tuning epoch kept: {history['best_epoch']}")
    parts += ["", "## Time (seconds)", ""] + [f"- {k}: {v:.1f}" for k, v in timings.items()] + [""]
    parts += ["![training](training.png)", ""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
