"""Where the models run and in what precision: the one place a device setting is read.

Training (`device` and `precision` in the config, `genrec-train --device`) and the service
(`GENREC_DEVICE`, `GENREC_PRECISION`) name a device as `auto`, `cpu`, `cuda` or `cuda:N`;
`auto` picks CUDA when torch sees a GPU. Everything else follows the model: batches are built
on the host and moved once per step (`to_device`), the decoders create their tensors on the
model's device (`model_device`), and results leave the device only as the final top-k.

Precision: `fp32` (default) or `bf16`, which runs the forward passes under bf16 autocast on
CUDA (the weights and the optimizer stay fp32). On the CPU `bf16` is ignored: autocast there is
slower than fp32 on most CPUs, and the CPU path stays bit-for-bit what it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
_SPEC = re.compile(r"auto|cpu|cuda(?::([0-9]{1,3}))?")
PRECISIONS = ("fp32", "bf16")


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device a setting names. `auto` (or None): CUDA when available, else the CPU;
    `cuda` under torchrun (`local_rank` given): this rank's GPU, `cuda:LOCAL_RANK`. Asking for
    CUDA on a machine without it fails with a ConfigError that says so."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ConfigError(f"device {spec!r} asked for CUDA, but torch sees no GPU here ({build}); "
                          "use device cpu or auto")
    if match.group(1) is not None:
        index = int(match.group(1))
    else:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ConfigError(f"device {spec!r}: cuda:{index} does not exist ({count} GPU(s) visible)")
    return torch.device("cuda", index)


def check_precision(precision: str | None) -> str:
    """The precision setting, checked: fp32 (None too) or bf16."""
    value = (precision or "fp32").strip().lower()
    if value not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return value


def autocast(device: torch.device, precision: str | None):
    """The context the forward passes run in: bf16 autocast on CUDA with precision bf16,
    nothing otherwise (fp32, or the CPU)."""
    if torch.device(device).type == "cuda" and check_precision(precision) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it on `device`: tensors, and tuples, lists, dicts and
    dataclasses of them (other values as they are). One copy per tensor from the host, none
    when it is there already."""
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        return batch.to(device, non_blocking=batch.device.type == "cpu" and batch.is_pinned())
    if isinstance(batch, tuple | list):
        if not any(isinstance(x, _HOLDERS) for x in batch):
            return batch  # plain values (a batch of raw examples, ids, texts): nothing to move
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
            return type(batch)(*(to_device(x, device) for x in batch))
        return type(batch)(to_device(x, device) for x in batch)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **changes)
    return batch


_HOLDERS = (torch.Tensor, tuple, list, Mapping)  # what may hold a tensor (dataclasses aside)


def describe(device: torch.device) -> str:
    """A device for a log line: `cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3)`."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
