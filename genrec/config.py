"""The typed configuration of a run, shared by training (which writes it into the bundle) and
the service (which reads it back): the same dataclasses on both sides, so defaults cannot drift.

A config has the sections every method uses (`data`, `tokenizer`, `eval`) and the sections of
its method (`TrainConfig.method`, the dataclass that the registry names for `kind`). In a
bundle's manifest all sections sit side by side at the top level, e.g. `recommender.epochs`;
`config.recommender` reads the method's section directly. Presets live in `training.presets`.
"""

import json
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from .errors import ConfigError
from .registry import config_class


@dataclass
class DataConfig:
    dataset: str = "ml-100k"
    data_dir: str | None = None
    kcore: int = 5
    max_history: int = 20
    max_text_chars: int = 512
    # New-item protocol: the share of items (first seen latest) withheld from training and
    # received after it as the service would receive them (training.cold). 0: off.
    cold_items: float = 0.0


@dataclass
class TokenizerConfig:
    vocab_size: int = 4000
    pretrained_path: str | None = None  # a local folder with a pretrained T5 tokenizer


@dataclass
class EvalConfig:
    num_beams: int = 20  # beam >= k; 20 finds better-scoring IDs than 10 for a few ms more per user
    batch_size: int = 32
    users: int | None = None  # evaluate on the first n users (None: all)


_COMMON = ("name", "kind", "seed", "threads", "device", "precision", "data", "tokenizer", "eval")


@dataclass
class TrainConfig:
    name: str = "custom"
    kind: str = "idgenrec"  # the method: a kind the registry knows (genrec.registry)
    seed: int = 42
    threads: int | None = None
    # Where training runs (genrec.device): auto (CUDA when there is a GPU), cpu, cuda or cuda:N;
    # under torchrun each rank takes its own GPU. The service chooses its own (GENREC_DEVICE).
    device: str = "auto"
    precision: str = "fp32"  # fp32, or bf16: bf16 autocast of the forward passes on CUDA (no-op on the CPU)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: Any = None  # the kind's sections (e.g. IdGenRecSections); None: its defaults

    def __post_init__(self) -> None:
        expected = config_class(self.kind)
        if self.method is None:
            self.method = expected()
        elif not isinstance(self.method, expected):
            raise ConfigError(f"a {self.kind!r} config takes {expected.__name__} sections, not {type(self.method).__name__}")

    def __getattr__(self, name: str):
        # Called only when normal lookup fails: the method's sections read as attributes.
        method = self.__dict__.get("method")
        if method is not None and is_dataclass(method) and name in {f.name for f in fields(method)}:
            return getattr(method, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute or {self.kind!r} section {name!r}")

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in _COMMON}
        out = {k: asdict(v) if is_dataclass(v) else v for k, v in out.items()}
        out.update(asdict(self.method))
        return out


def apply_override(config, assignment: str) -> None:
    """`section.sub.key=value` with a JSON value (plain strings need no quotes)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    path, raw = assignment.split("=", 1)
    if path.strip() in ("kind", "method"):
        raise ConfigError(f"{path.strip()!r} cannot be overridden: choose a preset of the method you want")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    target = config
    parts = path.strip().split(".")
    for part in parts[:-1]:
        if not is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"unknown config section {part!r} in {path!r}")
        target = getattr(target, part)
    name = parts[-1]
    if not is_dataclass(target) or name not in {f.name for f in fields(target)}:
        raise ConfigError(f"unknown config key {path!r}")
    current = getattr(target, name)
    if is_dataclass(current):
        raise ConfigError(f"{path!r} is a section; set one of its keys")
    if isinstance(current, str) and value is not None and not isinstance(value, str):
        value = raw.strip()  # a string field takes the text as written (e.g. a folder named 5)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{path!r} takes true or false, not {raw!r}")
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and value is not None and type(current) is not type(value):
        raise ConfigError(f"{path!r} takes a {type(current).__name__}, not {raw!r}")
    if current is None and value is not None:
        value = _typed_for_optional(type(target), name, value, raw, path)
    setattr(target, name, value)


def _typed_for_optional(cls, name: str, value, raw: str, path: str):
    """A value for a field whose current value is None: checked against the field's annotation
    (e.g. `int | None`), since there is no current value to take the type from."""
    expected = [t for t in typing.get_args(typing.get_type_hints(cls)[name]) if t is not type(None)]
    if not expected:
        return value
    if str in expected and not isinstance(value, str):
        return raw.strip()  # e.g. a folder named 5
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if int in expected and isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) not in expected:
        names = " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"{path!r} takes a {names} or null, not {raw!r}")
    return value


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuilds a config recorded in a bundle manifest (unknown keys and the sections of other
    methods, which older bundles recorded too, are ignored)."""
    kind = data.get("kind", "idgenrec")
    common = {name: data[name] for name in _COMMON if name in data}
    common["kind"] = kind
    built = _build(TrainConfig, common)
    built.method = _build(config_class(kind), data)
    return built


def _build(cls, data: dict):
    default = cls()
    kwargs = {}
    for f in fields(cls):
        if f.name == "method":
            continue
        if f.name in data:
            value = data[f.name]
            current = getattr(default, f.name)
            if is_dataclass(current) and isinstance(value, dict):
                value = _build(type(current), value)
            kwargs[f.name] = value
    return cls(**kwargs)
