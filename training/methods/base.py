"""The training half of a method: what `genrec-train run` asks of it, and what it hands back.

The pipeline (training.pipeline) loads the data, calls `Trainer.train`, evaluates the returned
`Method` with the one evaluator, and writes the bundle and its report from `Trained`; it never
asks which method it runs. A trainer lives in training/methods/<kind>.py and is named in
training.methods.TRAINERS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from genrec.bundle import BundleItem
from genrec.config import TrainConfig
from genrec.method import Method

from ..data import Dataset


@dataclass
class RunContext:
    """What a trainer gets from the pipeline."""

    config: TrainConfig
    dataset: Dataset
    tokenizer: PreTrainedTokenizerBase  # trained on `Trainer.tokenizer_corpus` (or a local pretrained one)
    progress: bool  # bars on a terminal
    log: Callable[[str], None]  # one line per epoch or phase (rank 0 only)
    # Validation NDCG@10 of a method (leave-one-out, full ranking) on the first `users` users
    # (None: all); the trainers call it after each epoch and keep the best epoch.
    validate: Callable[[Method, int | None], float]
    # Where the models train (genrec.device; this rank's GPU under torchrun): the trainer puts
    # each model there when it builds it, and the loop moves the batches to the model.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Item id -> the textual ID it had in the previous version (--previous-bundle), which it keeps
    # where the tokenizer allows (training.stable_ids); {}: every ID is new.
    previous_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class Trained:
    """A trained method and everything the bundle needs from it."""

    method: Method  # ready to recommend (eval mode): the evaluator runs it
    items: list[BundleItem]  # every item with its textual ID (items.jsonl)
    models: dict = field(default_factory=dict)  # bundle folder -> model with save_pretrained
    model_dirs: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # folder -> writer
    # Per-epoch curves for the report and its plot: name -> values; "valid_ndcg@10" and
    # "best_epoch" (1-based) are drawn on the validation panel.
    history: dict = field(default_factory=dict)
    id_stats: dict = field(default_factory=dict)  # about the textual IDs (manifest id_stats)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


class Trainer(ABC):
    kind: ClassVar[str]
    supports_ddp: ClassVar[bool] = False  # may run under torchrun with several processes

    @abstractmethod
    def train(self, ctx: RunContext) -> Trained:
        """Train on ctx.dataset's training part (never its valid/test targets)."""

    def tokenizer_corpus(self, texts: list[str]) -> list[str]:
        """Texts the tokenizer is trained on (default: the item texts)."""
        return texts

    def extra_evaluation(self, method: Method, config: TrainConfig, dataset: Dataset, users: int | None) -> dict:
        """More eval.json entries beside the leave-one-out metrics (e.g. a paper's own protocol)."""
        return {}

    def report_sections(self, evaluation: dict) -> list[str]:
        """Markdown lines about `extra_evaluation`'s entries, for report.md."""
        return []
