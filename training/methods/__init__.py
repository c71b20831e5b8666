"""The training halves of the methods, by bundle kind (the serving halves: genrec.registry)."""

from __future__ import annotations

import importlib

from genrec.errors import ConfigError
from genrec.registry import kinds

from .base import Trainer

TRAINERS: dict[str, str] = {
    "idgenrec": "training.methods.idgenrec:IdGenRecTrainer",
    "cllm4rec": "training.methods.cllm4rec:Cllm4RecTrainer",
    "sasrec": "training.methods.sasrec:SasRecTrainer",
}


def trainer_for(kind: str) -> Trainer:
    if kind not in TRAINERS:
        raise ConfigError(f"no trainer for method kind {kind!r}; trainable kinds: {', '.join(TRAINERS)}")
    module_name, _, class_name = TRAINERS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["TRAINERS", "Trainer", "kinds", "trainer_for"]
