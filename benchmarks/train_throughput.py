"""Training throughput of each method's preset: examples and target tokens per second of every
training phase, on the real data, through the trainers' own phase functions and training loop.

For each preset, every training phase gets its real examples (the preset's dataset, tokenizer
and settings) and trains a fresh model for `--warmup` steps and then `--steps` timed optimizer
steps, stopped there: no preset is trained whole. The variants (settings that change how the
model is trained, not the model) train side by side in the same process, each in its own
thread, taking turns one optimizer step at a time, so that whatever else loads the machine
slows them alike: their ratios are the meaningful numbers on a busy machine, the absolute
rates only on a quiet one (the rates per CPU second, with one thread, come closer). Each of
`--rounds` rounds trains fresh models on other batches.

    python -m benchmarks.train_throughput --methods ml100k,cllm4rec-ml100k,sasrec-ml100k \\
        --variants default,length_grouped --out benchmarks/results/train_throughput.json
    python -m benchmarks.train_throughput --methods ml100k --variants threads=1,threads=2
    torchrun --standalone --nproc_per_node=2 -m benchmarks.train_throughput --methods ml100k --threads 1

A variant is `default` (the preset as it is), `length_grouped` (every length-grouping flag of
the method's sections on), `threads=N` (torch threads while it runs) or `section.key=value`
(a config override, as `genrec-train --set`), joined with `+`. Under torchrun every rank trains
its shard and the rates are summed over the ranks (methods whose trainer cannot run under
torchrun are skipped).

Stand-ins: IDGenRec's recommender reads keyword IDs (the warm-up targets the ID generator learns
to produce, of about the minted IDs' length: minting needs a warmed generator); textual user IDs
and alternate training's ID phases are not measured.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from genrec.config import TrainConfig, apply_override
from genrec.modeling import build_t5
from genrec.sasrec.model import PAD
from genrec.tensors import IGNORE_INDEX
from genrec.tokenization import encode_text
from training.data import Dataset
from training.id_generator import warm_up_generator
from training.keywords import keyword_targets
from training.loop import distributed_world
from training.methods import trainer_for
from training.methods.cllm4rec import build_model as build_cllm4rec
from training.methods.cllm4rec import finetune, holdout_split, pretrain
from training.methods.sasrec import build_model as build_sasrec
from training.methods.sasrec import train_sequences, training_sequences
from training.pipeline import init_distributed, load_config_dataset, make_tokenizer
from training.presets import preset
from training.recommender import train_recommender, training_pairs

from .common import plot_path, print_table, pyplot, save_figure, write_json

FOREVER = 10**6  # epochs: a timed run is stopped by its step count, never by its epochs
OnBatch = Callable[[int, list[int]], None]


# --------------------------------------------------------------------------- measuring


class Meter:
    """What the model was fed since `reset`, counted by hooks on its forward: rows (examples),
    encoder positions (real and padded) and target positions (those a loss is taken on)."""

    def __init__(self) -> None:
        self.reset()
        self.started = time.process_time()

    def reset(self) -> None:
        self.examples = self.source = self.source_padded = self.target = 0

    def start(self) -> None:
        """Called by a phase right before its training function: setup time counts from here."""
        self.started = time.process_time()

    def add(self, mask: torch.Tensor, target: int) -> None:
        self.examples += mask.shape[0]
        self.source += int(mask.sum())
        self.source_padded += mask.numel()
        self.target += target


def meter_t5(model, meter: Meter) -> None:
    """IDGenRec's T5s: called with input_ids, attention_mask and labels."""

    def count(_module, _args, kwargs):
        meter.add(kwargs["attention_mask"], int((kwargs["labels"] != IGNORE_INDEX).sum()))

    model.register_forward_pre_hook(count, with_kwargs=True)


def meter_cllm4rec(model, meter: Meter) -> None:
    """CLLM4Rec: its backbone's encoder reads the prompts, its decoder the positions scored."""
    encoder_masks: list[torch.Tensor] = []
    model.backbone.encoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: encoder_masks.append(kwargs["attention_mask"]), with_kwargs=True)

    def count(_module, _args, kwargs):
        meter.add(encoder_masks.pop(), int(kwargs["attention_mask"].sum()))

    model.backbone.decoder.register_forward_pre_hook(count, with_kwargs=True)


def meter_sasrec(model, meter: Meter) -> None:
    """SASRec: called with (inputs, targets), left-padded with PAD."""

    def count(_module, args):
        inputs, targets = args
        meter.add(inputs != PAD, int((targets != PAD).sum()))

    model.register_forward_pre_hook(count)


class _Enough(Exception):
    """The timed steps are done."""


@dataclass
class Run:
    """One timed run of a phase under one variant."""

    seconds: float
    cpu_seconds: float  # the process's CPU time in those steps (the other variants wait meanwhile)
    steps: int
    examples: int
    source: int
    source_padded: int
    target: int
    setup_cpu_s: float  # CPU time from the phase function's call to its first batch (its examples built)
    threads: int


@dataclass
class Phase:
    """A training phase of a method: `train(config, on_batch, meter)` builds a fresh model, hooks
    `meter` to it, calls `meter.start()` and trains through the trainer's own phase function,
    with `on_batch` passed to the training loop (which stops it)."""

    name: str
    examples_per_epoch: int
    train: Callable[[TrainConfig, OnBatch, Meter], None]


class Turns:
    """Lets the variants' training threads take turns, one optimizer step each, so that each
    step runs alone and the machine's load at that moment weighs on every variant alike."""

    def __init__(self, count: int):
        self.turn, self.count, self.finished = 0, count, set()
        self.changed = threading.Condition()

    def wait(self, k: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.turn == k)

    def pass_on(self, k: int, finished: bool = False) -> None:
        with self.changed:
            if finished:
                self.finished.add(k)
            for step in range(1, self.count + 1):
                if (k + step) % self.count not in self.finished:
                    self.turn = (k + step) % self.count
                    break
            self.changed.notify_all()


def alternating_round(phase: Phase, configs: list[TrainConfig], threads: list[int], warmup: int,
                      steps: int) -> list[Run]:
    """One run of `phase` per config, each in its own thread with a fresh model, taking turns
    step by step (setup included); `warmup` untimed steps, then `steps` timed ones each."""
    turns = Turns(len(configs))
    runs: list[Run | None] = [None] * len(configs)
    errors: list[BaseException] = []

    def take_turn(k: int) -> None:
        turns.wait(k)
        torch.set_num_threads(threads[k])  # at every turn: OpenMP's count is per thread, torch's global

    def run(k: int) -> None:
        meter, marks, seconds = Meter(), [], [0.0, 0.0]  # wall and CPU seconds of the timed steps

        def on_batch(_epoch: int, _indices: list[int]) -> None:
            now = (time.perf_counter(), time.process_time())
            if len(marks) > warmup:  # the step that just ended
                seconds[0] += now[0] - marks[-1][0]
                seconds[1] += now[1] - marks[-1][1]
            marks.append(now)
            if len(marks) == warmup + 1:
                meter.reset()  # the counts of the timed steps only
            if len(marks) == warmup + steps + 1:
                raise _Enough
            turns.pass_on(k)
            take_turn(k)
            marks[-1] = (time.perf_counter(), time.process_time())  # this step starts now, alone

        take_turn(k)
        try:
            phase.train(configs[k], on_batch, meter)
            raise RuntimeError(f"{phase.name} ended before {warmup + steps} steps")
        except _Enough:
            runs[k] = Run(seconds=seconds[0], cpu_seconds=seconds[1], steps=steps, examples=meter.examples,
                          source=meter.source, source_padded=meter.source_padded, target=meter.target,
                          setup_cpu_s=marks[0][1] - meter.started, threads=threads[k])
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
            errors.append(exc)
        finally:
            turns.pass_on(k, finished=True)

    workers = [threading.Thread(target=run, args=(k,), name=f"variant-{k}") for k in range(len(configs))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return [r for r in runs if r is not None]


# --------------------------------------------------------------------------- the methods' phases


def idgenrec_phases(config: TrainConfig, dataset: Dataset, tokenizer) -> list[Phase]:
    items = list(dataset.catalog.items)
    texts = [dataset.item_text[i] for i in items]
    keywords = keyword_targets([dataset.catalog.items[i] for i in items], config.generator.keyword_count)
    item_tokens = {i: encode_text(tokenizer, k) for i, k in zip(items, keywords, strict=True)}  # stand-in IDs

    def generator_warmup(c: TrainConfig, on_batch: OnBatch, meter: Meter) -> None:
        model = build_t5(c.generator.model, tokenizer, seed=c.seed)
        meter_t5(model, meter)
        meter.start()
        warm_up_generator(model, tokenizer, texts, keywords, epochs=FOREVER, lr=c.generator.lr,
                          batch_size=c.generator.batch_size, seed=c.seed,
                          max_source_length=c.generator.mint.max_source_length,
                          length_grouped=c.generator.length_grouped, on_batch=on_batch, progress=False)

    def recommender(c: TrainConfig, on_batch: OnBatch, meter: Meter) -> None:
        model = build_t5(c.recommender.model, tokenizer, seed=c.seed + 1)
        meter_t5(model, meter)
        meter.start()
        train_recommender(model, tokenizer, dataset.split, item_tokens,
                          dataclasses.replace(c.recommender, epochs=FOREVER), max_history=c.data.max_history,
                          seed=c.seed, validate=None, progress=False, on_batch=on_batch, log=lambda _: None)

    pairs = training_pairs(dataset.split, config.data.max_history, config.recommender.max_prefixes_per_user)
    return [Phase("generator warm-up", len(items), generator_warmup), Phase("recommender", len(pairs), recommender)]


def cllm4rec_phases(config: TrainConfig, dataset: Dataset, tokenizer) -> list[Phase]:
    split = dataset.split
    item_ids, user_ids = list(dataset.catalog.items), list(split.train)
    item_text_ids = {i: encode_text(tokenizer, dataset.item_text[i]) for i in item_ids}
    train_items, _held = holdout_split(split, config.cllm4rec.holdout_share, config.seed)

    def model(c: TrainConfig, meter: Meter):
        # The trainer extends its tokenizer with the user and item tokens: a copy per model here.
        built, pieces = build_cllm4rec(c.cllm4rec, copy.deepcopy(tokenizer), user_ids, item_ids, c.seed)
        meter_cllm4rec(built, meter)
        return built, pieces

    def pretraining(c: TrainConfig, on_batch: OnBatch, meter: Meter) -> None:
        built, pieces = model(c, meter)
        meter.start()
        pretrain(built, pieces, train_items, item_text_ids, dataclasses.replace(c.cllm4rec, pretrain_epochs=FOREVER),
                 c.seed, progress=False, on_batch=on_batch)

    def finetuning(c: TrainConfig, on_batch: OnBatch, meter: Meter) -> None:
        built, pieces = model(c, meter)
        meter.start()
        finetune(built, pieces, train_items, dataclasses.replace(c.cllm4rec, finetune_epochs=FOREVER), c.seed,
                 progress=False, on_batch=on_batch)

    documents = sum(1 for items in train_items.values() if items) + len(item_ids)
    views = config.cllm4rec.finetune_views_per_user * sum(1 for items in train_items.values() if len(items) >= 2)
    return [Phase("pretraining", documents, pretraining), Phase("fine-tuning", views, finetuning)]


def sasrec_phases(config: TrainConfig, dataset: Dataset, tokenizer) -> list[Phase]:
    item_ids = list(dataset.catalog.items)
    sequences = training_sequences(build_sasrec(item_ids, config.sasrec), dataset.split.train)

    def training(c: TrainConfig, on_batch: OnBatch, meter: Meter) -> None:
        torch.manual_seed(c.seed)
        model = build_sasrec(item_ids, c.sasrec)
        meter_sasrec(model, meter)
        meter.start()
        train_sequences(model, sequences, dataclasses.replace(c.sasrec, epochs=FOREVER), c.seed, on_batch=on_batch,
                        progress=False)

    return [Phase("training", len(sequences), training)]


# The benchmark's own table of what to measure per method kind (the trainers' phases).
PHASES: dict[str, Callable[[TrainConfig, Dataset, object], list[Phase]]] = {
    "idgenrec": idgenrec_phases,
    "cllm4rec": cllm4rec_phases,
    "sasrec": sasrec_phases,
}


# --------------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str
    overrides: list[str]  # section.key=value
    length_grouped: bool
    threads: int | None

    @classmethod
    def parse(cls, text: str) -> Variant:
        overrides, grouped, threads = [], False, None
        for part in filter(None, (p.strip() for p in text.split("+"))):
            if part == "default":
                continue
            if part == "length_grouped":
                grouped = True
            elif part.startswith("threads="):
                threads = int(part.split("=", 1)[1])
            elif "=" in part:
                overrides.append(part)
            else:
                raise SystemExit(f"unknown variant part {part!r}: default, length_grouped, threads=N or key=value")
        return cls(text, overrides, grouped, threads)

    def config(self, base: TrainConfig, seed: int) -> TrainConfig:
        config = copy.deepcopy(base)
        config.seed = seed
        if self.length_grouped:
            for section in dataclasses.fields(config.method):
                value = getattr(config.method, section.name)
                if dataclasses.is_dataclass(value) and hasattr(value, "length_grouped"):
                    value.length_grouped = True
        for assignment in self.overrides:
            apply_override(config, assignment)
        return config


# --------------------------------------------------------------------------- the benchmark


def summed(runs: list[Run], sharded_over: int) -> dict:
    """Rates over all runs of a variant (every rank's counts when `sharded_over` > 1)."""
    seconds = sum(r.seconds for r in runs)  # rank 0's: the ranks step together
    totals = {k: sum(getattr(r, k) for r in runs)
              for k in ("examples", "source", "source_padded", "target", "cpu_seconds")}
    if sharded_over > 1:
        reduced = torch.tensor([float(v) for v in totals.values()], dtype=torch.float64)
        dist.all_reduce(reduced)
        totals = dict(zip(totals, reduced.tolist(), strict=True))
    cpu_seconds = totals.pop("cpu_seconds")  # every rank's
    totals = {k: int(v) for k, v in totals.items()}
    return {
        "examples_per_s": totals["examples"] / seconds,
        "examples_per_cpu_s": totals["examples"] / cpu_seconds,
        "target_tokens_per_s": totals["target"] / seconds,
        "source_tokens_per_s": totals["source"] / seconds,
        "padding_share": 1 - totals["source"] / max(totals["source_padded"], 1),
        "per_round_examples_per_s": [r.examples * sharded_over / r.seconds for r in runs],
        "cpu_seconds": cpu_seconds,
        "seconds": seconds,
        "setup_cpu_s": statistics.median(r.setup_cpu_s for r in runs),
        "steps": sum(r.steps for r in runs),
        "threads": runs[0].threads,
        **totals,
    }


def measure(method: str, sets: list[str], variants: list[Variant], args, datasets: dict) -> list[dict]:
    rank, world = distributed_world()
    base = preset(method)
    for assignment in sets:
        apply_override(base, assignment)
    trainer = trainer_for(base.kind)
    if world > 1 and not trainer.supports_ddp:
        if rank == 0:
            print(f"{method}: {base.kind} training does not run under torchrun; skipped")
        return []
    key = (base.data.dataset, base.data.data_dir, base.data.kcore, base.data.max_text_chars)
    if key not in datasets:
        datasets[key] = load_config_dataset(base)
    dataset = datasets[key]
    phases = PHASES[base.kind](base, dataset, make_tokenizer(base, trainer, dataset))
    rows = []
    for phase in phases:
        if args.phases and phase.name not in args.phases:
            continue
        runs: dict[str, list[Run]] = {v.name: [] for v in variants}
        for r in range(args.rounds):
            # Each round other batches (another seed), the same seed for every variant.
            configs = [v.config(base, base.seed + r) for v in variants]
            found = alternating_round(phase, configs, [v.threads or args.threads for v in variants], args.warmup,
                                      args.steps)
            for variant, run in zip(variants, found, strict=True):
                runs[variant.name].append(run)
            if rank == 0:
                print(f"  {method} {phase.name} round {r + 1}: " + ", ".join(
                    f"{v.name} {run.examples * world / run.seconds:.1f}" for v, run in zip(variants, found, strict=True))
                      + " examples/s", flush=True)
        first = None
        for variant in variants:
            result = summed(runs[variant.name], world)
            first = first or result
            rows.append({
                "method": method, "kind": base.kind, "phase": phase.name, "variant": variant.name,
                "examples_per_epoch": phase.examples_per_epoch,
                "epoch_s_estimate": phase.examples_per_epoch / result["examples_per_s"],
                "ratio": result["examples_per_s"] / first["examples_per_s"],
                **result,
            })
    return rows


def plot(rows: list[dict], png: Path) -> None:
    plt = pyplot()
    groups = list(dict.fromkeys((r["method"], r["phase"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(groups) * max(len(variants), 1) + 1.5))
    height = 0.8 / max(len(variants), 1)
    for j, variant in enumerate(variants):
        found = {(r["method"], r["phase"]): r for r in rows if r["variant"] == variant}
        ys = [i + j * height for i in range(len(groups))]
        axes[0].barh(ys, [found[g]["examples_per_s"] if g in found else 0 for g in groups], height, label=variant)
        axes[1].barh(ys, [found[g]["ratio"] if g in found else 0 for g in groups], height, label=variant)
    for ax in axes:
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(groups))], [f"{m}\n{p}" for m, p in groups])
        ax.invert_yaxis()
    axes[0].set_xscale("log")
    axes[0].xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0].set_xlabel("training examples per second")
    axes[1].axvline(1.0, color="grey", linewidth=0.8)
    axes[1].set_xlabel(f"ratio to {variants[0]} (same process, step by step)")
    axes[1].legend(fontsize=8)
    save_figure(fig, png)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="ml100k,cllm4rec-ml100k,sasrec-ml100k", help="presets, comma-separated")
    p.add_argument("--phases", default="", help="only these phases (comma-separated names), default all")
    p.add_argument("--variants", default="default,length_grouped", help="comma-separated; see the module docstring")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="fresh runs of every variant, other batches (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads unless a variant sets them (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of every preset")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (a PNG plot goes beside it)")
    args = p.parse_args(argv)
    args.phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    variants = [Variant.parse(v) for v in args.variants.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    init_distributed()
    rank, world = distributed_world()
    datasets: dict = {}
    rows = []
    for method in filter(None, (m.strip() for m in args.methods.split(","))):
        rows += measure(method, args.set, variants, args, datasets)
    if rank == 0:
        print_table(
            f"training throughput: {args.steps} steps x {args.rounds} rounds per variant, each after {args.warmup} "
            f"warm-up steps; {world} process(es), {os.cpu_count()} CPUs",
            ["method", "phase", "variant", "threads", "examples/s", "target tok/s", "examples/CPU s", "padding",
             "setup CPU s", "epoch s (est.)", "ratio"],
            [[r["method"], r["phase"], r["variant"], r["threads"], r["examples_per_s"], r["target_tokens_per_s"],
              r["examples_per_cpu_s"], f"{100 * r['padding_share']:.1f}%", r["setup_cpu_s"], r["epoch_s_estimate"],
              f"{r['ratio']:.2f}x"]
             for r in rows],
        )
        print("ratio: examples/s over the first variant's, the variants taking turns step by step in this process "
              "(on a busy machine only the ratios hold). examples/CPU s: per second of this process's CPU time "
              "(with one thread, about an idle machine's rate). setup CPU s: from the phase's call to its first "
              "batch (its first epoch's examples built)")
        write_json(args.out, {
            "world_size": world, "cpus": os.cpu_count(), "torch": torch.__version__, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads, "set": args.set,
            "variants": [v.name for v in variants], "results": rows,
        })
        png = plot_path(args.out)
        if png is not None and rows:
            plot(rows, png)
    if dist.is_initialized():
        dist.destroy_process_group()
    return rows


if __name__ == "__main__":
    main()
