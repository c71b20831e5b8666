"""`genrec-train run`: data -> tokenizer -> ID generator -> IDs -> recommender -> evaluation -> bundle."""

import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from genrec.bundle import BundleItem, load_bundle, update_bundle_files, update_manifest, write_bundle
from genrec.errors import ConfigError
from genrec.item_text import metadata_values_text
from genrec.modeling import build_t5
from genrec.recommend import IdGenRecRecommender
from genrec.trie import TextualIdTrie

from .alternate import UserIds, mint_state, train_alternating, uses_user_ids
from .config import TrainConfig, config_from_dict
from .data import load_dataset
from .evaluation import evaluate_all, evaluate_model
from .id_generator import warm_up_generator
from .keywords import keyword_targets
from .report import metrics_table, plot_id_lengths, plot_training, write_report
from .seq2seq import distributed_world
from .tokenizer_training import tokenizer_from_pretrained, train_tokenizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed() -> None:
    """Joins the process group when started by torchrun (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def log(message: str) -> None:
    if distributed_world()[0] == 0:
        print(message, flush=True)


def run(config: TrainConfig, out: Path, progress: bool = True) -> dict:
    """Trains everything and writes the bundle to `out` (rank 0). Returns eval.json's content."""
    if config.kind == "cllm4rec":
        from .cllm4rec_training import run_cllm4rec

        return run_cllm4rec(config, out, progress=progress)
    if config.kind != "idgenrec":
        raise ConfigError(f"unknown config kind {config.kind!r}; known: idgenrec, cllm4rec")
    init_distributed()
    rank, _ = distributed_world()
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    t = time.perf_counter()
    dataset = load_dataset(
        config.data.dataset,
        Path(config.data.data_dir) if config.data.data_dir else None,
        kcore=config.data.kcore,
        max_text_chars=config.data.max_text_chars,
    )
    item_ids = list(dataset.catalog.items)
    texts = [dataset.item_text[i] for i in item_ids]
    metadata = [dataset.catalog.items[i] for i in item_ids]
    log(f"data: {dataset.name}: {len(dataset.split.train)} users, {len(item_ids)} items")
    if config.tokenizer.pretrained_path:
        tokenizer = tokenizer_from_pretrained(config.tokenizer.pretrained_path)
    else:
        tokenizer = train_tokenizer(texts, config.tokenizer.vocab_size)
    timings["data_and_tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    generator = build_t5(config.generator.model, tokenizer, seed=config.seed)
    keywords = keyword_targets(metadata, config.generator.keyword_count)
    warm_loss = warm_up_generator(
        generator, tokenizer, texts, keywords,
        epochs=config.generator.warmup_epochs, lr=config.generator.lr, batch_size=config.generator.batch_size,
        seed=config.seed, max_source_length=config.generator.mint.max_source_length, progress=progress,
    )
    timings["generator_warmup"] = time.perf_counter() - t
    t = time.perf_counter()
    vocabulary_texts = [metadata_values_text(m) for m in metadata]
    ids = mint_state(generator, tokenizer, item_ids, texts, vocabulary_texts, config.generator.mint, progress=progress)
    minted, stats, item_tokens = ids.minted, ids.stats, ids.item_tokens
    timings["minting"] = time.perf_counter() - t
    log(
        f"IDs: {stats.items} unique, mean {stats.mean_words:.2f} words / {stats.mean_tokens:.2f} tokens, "
        f"raised penalty {stats.raised_penalty}, raised length {stats.raised_length}, suffixed {stats.suffixed}"
    )

    eos = tokenizer.eos_token_id
    trie = TextualIdTrie(item_ids, [item_tokens[i] + [eos] for i in item_ids], eos)
    recommender_model = build_t5(config.recommender.model, tokenizer, seed=config.seed + 1)
    recommender = IdGenRecRecommender(
        recommender_model, tokenizer, trie,
        max_history=config.data.max_history, max_source_length=config.recommender.max_source_length,
    )
    user_ids = None
    if uses_user_ids(config):
        user_ids = UserIds(
            generator, tokenizer, item_tokens, max_words=config.alternate.user_id_max_words,
            max_source_length=config.generator.mint.max_source_length, progress=progress and rank == 0,
        )
    eval_user_tokens = user_ids.for_evaluation(dataset.split, config.data.max_history) if user_ids else None

    def validate(model) -> float:
        return evaluate_model(
            recommender, dataset.split, "valid", max_history=config.data.max_history,
            users=config.recommender.valid_users, num_beams=config.eval.num_beams,
            batch_size=config.eval.batch_size, progress=False, user_tokens=eval_user_tokens,
        )["ndcg@10"]

    t = time.perf_counter()
    # Alternate training (SPEC 1.4) when alternate.rounds > 0; else one recommender phase.
    ids, history = train_alternating(
        config, generator=generator, recommender_model=recommender_model, recommender=recommender,
        tokenizer=tokenizer, split=dataset.split, item_ids=item_ids, texts=texts, vocabulary_texts=vocabulary_texts,
        ids=ids, user_ids=user_ids, validate=validate, progress=progress, log=log,
    )
    minted, stats, item_tokens = ids.minted, ids.stats, ids.item_tokens
    history["generator_warmup_loss"] = warm_loss
    timings["recommender_training"] = time.perf_counter() - t

    result: dict = {}
    if rank == 0:
        t = time.perf_counter()
        result = evaluate_all(
            lambda which: evaluate_model(
                recommender, dataset.split, which, max_history=config.data.max_history, users=config.eval.users,
                num_beams=config.eval.num_beams, batch_size=config.eval.batch_size, progress=progress,
                user_tokens=eval_user_tokens,
            ),
            dataset.split,
            config.eval.users,
        )
        result["id_stats"] = stats.to_dict()
        timings["evaluation"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        result["kind"] = "idgenrec"
        result["users"] = {which: len(getattr(dataset.split, which)) for which in ("valid", "test")}
        result["timings_s"] = timings
        items = [
            BundleItem(item_id=i, textual_id=m.textual_id, token_ids=item_tokens[i] + [eos], text=dataset.item_text[i])
            for i, m in zip(item_ids, minted, strict=True)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            tmp_dir = Path(tmp)
            files = {
                "training.png": plot_training(history, tmp_dir / "training.png"),
                "id_lengths.png": plot_id_lengths(stats.length_histogram, tmp_dir / "id_lengths.png"),
                "eval.json": _write_json(tmp_dir / "eval.json", result),
                "history.json": _write_json(tmp_dir / "history.json", history),
                "report.md": write_report(
                    tmp_dir / "report.md", title=f"IDGenRec on {dataset.name} (config {config.name})",
                    evaluation=result, id_stats=stats.to_dict(), history=history, timings=timings,
                    examples=[(m.textual_id, dataset.item_text[i]) for i, m in list(zip(item_ids, minted, strict=True))[:10]],
                ),
            }
            write_bundle(
                out, kind="idgenrec", tokenizer=tokenizer,
                models={"recommender": recommender_model, "id_generator": generator}, items=items,
                config=config.to_dict(), dataset=dataset.name, id_stats=stats.to_dict(),
                metrics={k: result[k] for k in ("valid", "test", "baselines")}, extra_files=files,
            )
        log("\n" + metrics_table(result, "test"))
        log(f"bundle written to {out} in {timings['total']:.0f} s")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
    return path


def reevaluate(bundle_dir: Path, users: int | None = None, progress: bool = True) -> dict:
    """`genrec-train evaluate`: the bundle's recommender on its own dataset and split."""
    bundle = load_bundle(bundle_dir)
    if bundle.kind == "cllm4rec":
        from .cllm4rec_training import reevaluate_cllm4rec

        return reevaluate_cllm4rec(bundle, users=users, progress=progress)
    config = config_from_dict(bundle.config)
    dataset = load_dataset(
        config.data.dataset, Path(config.data.data_dir) if config.data.data_dir else None,
        kcore=config.data.kcore, max_text_chars=config.data.max_text_chars,
    )
    eos = bundle.tokenizer.eos_token_id
    trie = TextualIdTrie([i.item_id for i in bundle.items], [i.token_ids for i in bundle.items], eos)
    recommender = IdGenRecRecommender(
        bundle.recommender, bundle.tokenizer, trie,
        max_history=config.data.max_history, max_source_length=config.recommender.max_source_length,
    )
    user_tokens = None
    if uses_user_ids(config):  # built by the bundle's generator from the training part, as in training
        user_tokens = UserIds(
            bundle.id_generator, bundle.tokenizer, {i.item_id: list(i.token_ids[:-1]) for i in bundle.items},
            max_words=config.alternate.user_id_max_words, max_source_length=config.generator.mint.max_source_length,
        ).for_evaluation(dataset.split, config.data.max_history)
    result = evaluate_all(
        lambda which: evaluate_model(
            recommender, dataset.split, which, max_history=config.data.max_history, users=users,
            num_beams=config.eval.num_beams, batch_size=config.eval.batch_size, progress=progress,
            user_tokens=user_tokens,
        ),
        dataset.split,
        users,
    )
    result["kind"] = bundle.kind
    if users is None:  # a full re-evaluation replaces the recorded metrics, keeping the rest
        saved_path = Path(bundle_dir) / "eval.json"
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
        saved.update(result)
        update_manifest(bundle_dir, metrics={k: result[k] for k in ("valid", "test", "baselines")})
        update_bundle_files(bundle_dir, {"eval.json": json.dumps(saved, indent=2)})
    return result
