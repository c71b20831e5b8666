"""The one registry of methods: bundle kind -> the class that serves it.

Everything that depends on the kind (loading a bundle's models, its config sections,
recommending, minting) is reached through the class found here; nothing else in the project
branches on the kind. Classes are named by import path and imported on first use, so that
reading a config does not load every method's models and code. Adding a method: docs/design.md.
"""

from __future__ import annotations

import importlib

from .errors import ConfigError

METHODS: dict[str, str] = {
    "idgenrec": "genrec.idgenrec.method:IdGenRec",
    "cllm4rec": "genrec.cllm4rec.method:Cllm4Rec",
    "sasrec": "genrec.sasrec.method:SasRec",
}


def kinds() -> tuple[str, ...]:
    return tuple(METHODS)


def method_class(kind: str) -> type:
    """The class serving `kind`; ConfigError naming the known kinds if there is none."""
    try:
        module_name, _, class_name = METHODS[kind].partition(":")
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method kind {kind!r}; known kinds: {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def config_class(kind: str) -> type:
    """The dataclass of `kind`'s config sections."""
    return method_class(kind).config_class
