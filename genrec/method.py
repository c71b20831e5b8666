"""The method interface: what a bundle kind can do, behind one type.

A *method* (IDGenRec, CLLM4Rec, SASRec, ...) is the serving half of a bundle kind. The
evaluator, the report and the service hold a `Method` and never ask which kind it is; the
registry (`genrec.registry`) maps a bundle's kind to its class, and `load_method` below is
the one place that asks it. How to add a method is
described in docs/design.md ("Adding a method").

Every method:
- loads itself from a bundle (`load`), reading its settings through the typed config that
  training wrote (`genrec.config.TrainConfig`), so defaults cannot drift between the two;
- recommends top-k items for a batch of queries (`recommend`), never returning an item of a
  query's `exclude`, nor, when the query has an `allowed` set, an item outside it; both prune
  the search (dead trie subtrees, masked score rows), so a query gets k items whenever k qualify;
- makes a new item known (`mint`): gives it a unique textual ID, claimed through the caller's
  `claim(textual_id) -> bool` (a set in training, Redis `SET NX` in the service), and says with
  `new_items_recommendable` whether such an item can be recommended before retraining.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from .bundle import Bundle
from .config import TrainConfig
from .device import autocast, check_precision, resolve_device
from .errors import ConfigError
from .registry import method_class
from .textual_ids import MintedId
from .trie import TextualIdTrie


@dataclass(frozen=True)
class Query:
    """One recommendation request: the user's history (item ids, oldest first)."""

    history: Sequence[str]
    exclude: Collection[str] = ()  # item ids that must not be recommended (e.g. the history)
    # The only item ids that may be recommended (e.g. those a request's filter lets through);
    # None: every item. A set the size of what qualifies, not of the catalog: a narrow filter
    # on a large catalog stays cheap (its complement, as `exclude`, would not).
    allowed: Collection[str] | None = None
    user_id: str | None = None  # the caller's user id; methods with a user vocabulary use it
    # Items the user is described by, for methods that derive a user representation from items
    # (IDGenRec's textual user IDs); None: the history. Evaluation passes the training part.
    profile: Sequence[str] | None = None


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float  # the method's score; higher is better (a log-probability for the generative ones)


@dataclass(frozen=True)
class NewItem:
    """A new item as the methods see it: its flattened metadata."""

    text: str  # "title: ...; year: ...": what an ID generator reads
    vocabulary_text: str  # the metadata values: the words a textual ID may use


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings the deployment may change without retraining (None: the bundle's own)."""

    num_beams: int | None = None  # beam width of methods that decode (IDGenRec)
    mint_max_rounds: int | None = None  # generator rounds per new item before the numeric suffix (IDGenRec)
    device: str | None = None  # auto, cpu, cuda or cuda:N (genrec.device); None: auto
    precision: str | None = None  # fp32 or bf16 (bf16 autocast on CUDA); None: fp32
    quantize: str | None = None  # "int8": dynamic int8 quantisation of the models' Linear layers (CPU)


class UserIdCache(Protocol):
    """A shared cache for derived user representations (the service backs it with Redis)."""

    def get_many(self, keys: Sequence[str]) -> list[list[int] | None]: ...

    def set_many(self, values: dict[str, list[int]]) -> None: ...


Claim = Callable[[str], bool]


class Method(ABC):
    """A trained recommender loaded from a bundle; see the module docstring."""

    kind: ClassVar[str]  # the bundle kind, e.g. "idgenrec"
    label: ClassVar[str]  # the name people read, e.g. "IDGenRec"
    config_class: ClassVar[type]  # the dataclass of the method's config sections
    new_items_recommendable: ClassVar[bool]  # can an item minted after training be recommended?
    precision: str = "fp32"  # of the forward passes (genrec.device.autocast); set by `place`

    @classmethod
    @abstractmethod
    def load(cls, bundle: Bundle, config: TrainConfig, options: RuntimeOptions | None = None) -> Method:
        """The method's models from the bundle folder, in eval mode."""

    @abstractmethod
    def recommend(
        self,
        queries: Sequence[Query],
        k: int,
        trie: TextualIdTrie,
        cache: UserIdCache | None = None,
    ) -> list[list[Recommendation]]:
        """Top-k per query, best first, none of a query's `exclude` and, when it has an `allowed`
        set, only items of it; fewer than k only when fewer qualify. `trie` holds every item the
        caller knows (the bundle's and the minted ones, by textual ID); methods that score their
        own item table use it only to know new items."""

    @abstractmethod
    def mint(self, items: Sequence[NewItem], claim: Claim) -> list[MintedId]:
        """A unique textual ID per new item, each taken through `claim`."""

    def modules(self) -> list[torch.nn.Module]:
        """The torch models the method runs (what `place` moves); none by default."""
        return []

    def place(self, device: torch.device | str, precision: str | None = None) -> Method:
        """Moves the method's models to `device` and sets the precision of its forward passes;
        its inputs are then built on that device and only the top-k comes back to the host."""
        device = resolve_device(device)
        for module in self.modules():
            module.to(device)
        self.precision = check_precision(precision)
        return self

    def autocast(self, device: torch.device):
        """The context of a forward pass on `device` at the method's precision."""
        return autocast(device, self.precision)

    def batch_key(self, k: int) -> object:
        """Requests whose keys are equal may be answered in one `recommend` call with the largest
        of their k, each trimmed to its own k: a request's answer must not depend on its
        batch-mates. None (the default): any k may share a call."""
        return None

    def is_recommendable(self, item_id: str) -> bool:
        """Whether `recommend` can return this item (every item, for methods that decode IDs)."""
        return True

    def history_length(self) -> int | None:
        """How many of a history's latest items the method reads (the service keeps a small
        multiple of it per user); None: no bound of its own."""
        return None


def load_method(bundle: Bundle, options: RuntimeOptions | None = None) -> Method:
    """The bundle's trained method, ready to recommend and mint, on the options' device (default
    auto: a GPU when there is one), its models quantised when the options say so (CPU only):
    the one dispatch on its kind."""
    method = method_class(bundle.kind).load(bundle, bundle.train_config, options)
    device = resolve_device(options.device if options else None)
    if options is not None and options.quantize not in (None, "", "none"):
        if device.type != "cpu":
            raise ConfigError(f"quantize {options.quantize!r} is for CPU serving; the device is {device}")
        quantize_models(method, options.quantize)
    return method.place(device, options.precision if options else None)


QUANTIZE_MODES = ("none", "int8")


def quantize_models(method: Method, mode: str) -> int:
    """Dynamic quantisation, in place, of every model the method holds (its torch modules):
    with "int8" each Linear layer keeps int8 weights and quantises its input on the fly, which
    CPU inference runs faster (docs/benchmarks.md, "int8"). Returns how many modules it quantised."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantize mode {mode!r}; known: {', '.join(QUANTIZE_MODES)}")
    if mode == "none":
        return 0
    seen: set[int] = set()
    for value in list(vars(method).values()):
        if isinstance(value, torch.nn.Module) and id(value) not in seen:
            seen.add(id(value))
            torch.ao.quantization.quantize_dynamic(value, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return len(seen)
