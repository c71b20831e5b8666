"""`genrec-train run` and `evaluate`: data -> tokenizer -> the method's trainer -> evaluation ->
report -> bundle, the same steps for every method (the trainer is the only part that differs).
"""

import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from genrec.bundle import (
    items_trie,
    load_bundle,
    update_bundle_files,
    update_manifest,
    write_bundle,
)
from genrec.config import TrainConfig
from genrec.device import check_precision, describe, resolve_device
from genrec.errors import ConfigError
from genrec.method import Method, RuntimeOptions, load_method
from genrec.trie import TextualIdTrie

from .baselines import ContentTfIdf, Popularity, Transitions, visible_counts, visible_sequences
from .cold import cold_users, cold_view, receive_new_items
from .data import Dataset, SplitData, load_dataset
from .evaluation import evaluate_all, evaluate_method, evaluate_users, evaluation_users, means
from .loop import distributed_world, training_precision
from .methods import Trainer, trainer_for
from .methods.base import RunContext, Trained
from .report import metrics_table, plot_id_lengths, plot_training, write_report
from .stable_ids import previous_ids
from .tokenizer_training import tokenizer_from_pretrained, train_tokenizer

# eval.json keys written by every run; a trainer's extra_evaluation adds its own beside them.
EVAL_KEYS = ("valid", "test", "baselines")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed(device: str = "auto") -> torch.device:
    """The run's device (genrec.device); under torchrun, this rank's (`cuda:LOCAL_RANK` when the
    device is CUDA), and the process group joined: nccl on GPUs, gloo on the CPU."""
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    resolved = resolve_device(device, local_rank=local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return resolved


def log(message: str) -> None:
    """One line per step of the run (rank 0 only): what a log file should hold."""
    if distributed_world()[0] == 0:
        print(message, flush=True)


def load_config_dataset(config: TrainConfig) -> Dataset:
    return load_dataset(
        config.data.dataset, Path(config.data.data_dir) if config.data.data_dir else None,
        kcore=config.data.kcore, max_text_chars=config.data.max_text_chars,
    )


def make_tokenizer(config: TrainConfig, trainer: Trainer, dataset: Dataset):
    """The run's tokenizer: the configured pretrained one, else one trained on the trainer's
    corpus of `dataset`'s item texts."""
    if config.tokenizer.pretrained_path:
        return tokenizer_from_pretrained(config.tokenizer.pretrained_path)
    corpus = trainer.tokenizer_corpus([dataset.item_text[i] for i in dataset.catalog.items])
    return train_tokenizer(corpus, config.tokenizer.vocab_size)


def run(config: TrainConfig, out: Path, progress: bool = True, previous_bundle: Path | None = None) -> dict:
    """Trains the config's method and writes the bundle to `out` (rank 0). Returns eval.json's content.
    `previous_bundle`: the items it held (and those of the export the data is, when it is one) keep
    their textual IDs where the new tokenizer allows (training.stable_ids)."""
    trainer = trainer_for(config.kind)
    check_precision(config.precision)
    device = init_distributed(config.device)
    rank, world = distributed_world()
    finished = False
    try:
        if world > 1 and not trainer.supports_ddp:
            raise ConfigError(f"{config.kind} training does not run under torchrun with several processes")
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        started = time.perf_counter()
        previous = previous_ids(previous_bundle, config.data.data_dir)
        dataset = load_config_dataset(config)
        view = cold_view(dataset, config.data.cold_items)
        seen = view.train  # what training may see: everything but the withheld new items
        log(f"device: {describe(device)}, precision {config.precision}" + (f", {world} processes" if world > 1 else ""))
        log(f"data: {dataset.name}: {len(dataset.split.train)} users, {len(dataset.catalog)} items"
            + (f", {len(view.withheld)} withheld as new items" if view.withheld else ""))
        tokenizer = make_tokenizer(config, trainer, seen)
        timings = {"data_and_tokenizer": time.perf_counter() - started}

        def validate(method: Method, trie: TextualIdTrie, users: int | None) -> float:
            return evaluate_method(method, trie, seen.split, "valid", users=users,
                                   batch_size=config.eval.batch_size, progress=False)["ndcg@10"]

        ctx = RunContext(config=config, dataset=seen, tokenizer=tokenizer, progress=progress, log=log,
                         validate=validate, device=device, previous_ids=previous)
        with training_precision(config.precision):
            trained = trainer.train(ctx)
        timings.update(trained.timings)
        result: dict = {}
        if rank == 0:
            t = time.perf_counter()
            result = evaluate(trainer, trained.method, trained.items, tokenizer.eos_token_id, config, dataset,
                              config.eval.users, progress)
            timings["evaluation"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - started
            result["id_stats"] = trained.id_stats
            result["users"] = {which: len(getattr(dataset.split, which)) for which in ("valid", "test")}
            result["timings_s"] = timings
            write_run_bundle(out, trainer, trained, tokenizer, config, dataset, result, timings,
                             training_counts(seen.split))
            log("\n" + metrics_table(result, "test", trained.method.label))
            for line in trainer.report_sections(result):
                log(line)
            if previous_bundle is not None:
                kept = trained.id_stats.get("previous", {})
                log(f"textual IDs: {kept.get('kept', 0)} of the {kept.get('previous_items', 0)} items of the "
                    f"previous version kept theirs ({kept.get('kept_share', 0.0):.1%})")
            log(f"bundle written to {out} in {timings['total']:.0f} s")
        finished = True
        return result
    finally:
        if dist.is_initialized():
            if finished:  # a rank that failed must not wait for the others at the barrier
                dist.barrier()
            dist.destroy_process_group()


def evaluate(trainer: Trainer, method: Method, items: list, eos_token_id: int, config: TrainConfig,
             dataset: Dataset, users: int | None, progress: bool) -> dict:
    """Leave-one-out on valid and test with the baselines, plus the trainer's own evaluation.

    Under the new-item protocol (data.cold_items > 0) the withheld items are first received by
    the method as the service would receive them (minted, added to the trie); every user is
    then ranked over all items, and `new_items` holds the metrics of the users whose test item
    is a new one."""
    view = cold_view(dataset, config.data.cold_items)
    new = receive_new_items(method, dataset, items, view.withheld, eos_token_id)
    trie = items_trie(list(items) + new, eos_token_id)
    rankers = baselines(dataset, view.train.split)

    def run(ranker, split: SplitData, which: str, chosen: int | list[str] | None) -> dict[str, float]:
        users = chosen if isinstance(chosen, list) else evaluation_users(split, which, chosen)
        return means(evaluate_users(ranker, trie, split, which, users, batch_size=config.eval.batch_size,
                                    progress=progress))

    result = evaluate_all(
        lambda which: run(method, dataset.split, which, users),
        {name: (lambda which, r=make: run(r(which), dataset.split, which, users)) for name, make in rankers.items()},
    )
    if view.withheld:
        cold = cold_users(dataset.split, "test", view.withheld)[:users] if users else cold_users(
            dataset.split, "test", view.withheld)
        result["new_items"] = {
            "share": config.data.cold_items, "withheld": len(view.withheld), "minted": len(new),
            "users": len(cold), "recommendable": method.new_items_recommendable,
            "test": run(method, dataset.split, "test", cold),
            "baselines": {name: {"test": run(make("test"), dataset.split, "test", cold)}
                          for name, make in rankers.items()},
        }
    # A method's own protocol runs on what training saw (CLLM4Rec's holds out part of it).
    result.update(trainer.extra_evaluation(method, config, view.train, users))
    result["kind"] = method.kind
    return result


def baselines(dataset: Dataset, train_split: SplitData) -> dict:
    """Baseline name -> (split -> ranker): popularity and transitions count what training saw;
    the content baseline reads every item's text (a new item's text arrives with it)."""
    content = ContentTfIdf(dataset.item_text)
    return {
        "popularity": lambda which: Popularity(visible_counts(train_split, which)),
        "transitions": lambda which: Transitions(visible_sequences(train_split, which),
                                                 visible_counts(train_split, which)),
        "content": lambda which: content,
    }


def training_counts(split: SplitData) -> Counter[str]:
    """Interactions per item in the training part of the split: the bundle's popularity list."""
    return Counter(item for sequence in split.train.values() for item in sequence)


def _metrics(result: dict) -> dict:
    """What the manifest records: every evaluation entry (eval.json holds the rest too)."""
    return {k: v for k, v in result.items() if k not in ("kind", "id_stats", "users", "timings_s")}


def write_run_bundle(out: Path, trainer: Trainer, trained: Trained, tokenizer, config: TrainConfig,
                     dataset: Dataset, result: dict, timings: dict, popularity: Counter[str]) -> Path:
    """The bundle of a run; `popularity`: the training interactions per item, which the service
    answers users without a history with (genrec.popular)."""
    label = trained.method.label
    examples = [(item.textual_id, item.text) for item in trained.items[:10]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        files = {
            "training.png": plot_training(trained.history, tmp_dir / "training.png"),
            "id_lengths.png": plot_id_lengths([i.textual_id for i in trained.items], tmp_dir / "id_lengths.png"),
            "eval.json": _write_json(tmp_dir / "eval.json", result),
            "history.json": _write_json(tmp_dir / "history.json", trained.history),
            "report.md": write_report(
                tmp_dir / "report.md", title=f"{label} on {dataset.name} (config {config.name})", label=label,
                evaluation=result, id_stats=trained.id_stats, history=trained.history, timings=timings,
                examples=examples, sections=trainer.report_sections(result),
            ),
        }
        return write_bundle(
            out, kind=config.kind, tokenizer=tokenizer, models=trained.models, items=trained.items,
            config=config.to_dict(), dataset=dataset.name, id_stats=trained.id_stats, metrics=_metrics(result),
            extra_files=files, extra_dirs=trained.model_dirs, popularity=popularity,
        )


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
    return path


def reevaluate(bundle_dir: Path, users: int | None = None, progress: bool = True, device: str = "auto",
               precision: str | None = None, quantize: str = "none") -> dict:
    """`genrec-train evaluate`: the bundle's method on its own dataset and split, on `device`; a
    full re-evaluation (users=None) replaces the recorded metrics, keeping the rest of eval.json.
    `quantize` ("int8"): the models quantised as the service's GENREC_QUANTIZE does; the
    recorded metrics are then left as they are."""
    bundle = load_bundle(bundle_dir)
    config = bundle.train_config
    method = load_method(bundle, RuntimeOptions(device=device, precision=precision, quantize=quantize))
    dataset = load_config_dataset(config)
    result = evaluate(trainer_for(bundle.kind), method, bundle.items, bundle.tokenizer.eos_token_id, config,
                      dataset, users, progress)
    if users is None and quantize in (None, "none"):
        saved_path = Path(bundle_dir) / "eval.json"
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
        saved.update(result)
        update_manifest(bundle_dir, metrics=_metrics(result))
        update_bundle_files(bundle_dir, {"eval.json": json.dumps(saved, indent=2)})
    return result
