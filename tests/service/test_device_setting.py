"""The service's device (GENREC_DEVICE) and precision (GENREC_PRECISION): read and checked by the
settings, the engine's method placed there at load and recommending and minting from there;
CUDA asked for without a GPU stops the start with a message. The `cuda` test is skipped with a
reason where torch sees no GPU (benchmarks/gpu_check.sh runs it)."""

import pytest
import torch
from pydantic import ValidationError

from genrec.bundle import load_bundle
from genrec.device import model_device
from genrec.errors import ConfigError
from genrec.method import NewItem, Query
from service.catalog import Catalog
from service.engine import Engine
from service.metrics import ServiceMetrics
from service.settings import Settings


def test_the_settings_read_and_check_the_device_and_precision(monkeypatch, bundle_path):
    monkeypatch.setenv("GENREC_BUNDLE", str(bundle_path))
    monkeypatch.setenv("GENREC_ALLOW_ANONYMOUS_WRITES", "true")
    assert (Settings().device, Settings().precision) == ("auto", "fp32")
    for device in ("cpu", "cuda", "cuda:1"):
        monkeypatch.setenv("GENREC_DEVICE", device)
        assert Settings().device == device
    monkeypatch.setenv("GENREC_PRECISION", "bf16")
    assert Settings().precision == "bf16"
    for key, value in (("GENREC_DEVICE", "gpu"), ("GENREC_DEVICE", "cuda:x"), ("GENREC_PRECISION", "fp16")):
        monkeypatch.setenv(key, value)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(key)


def _engine(bundle_path, **kwargs) -> Engine:
    bundle = load_bundle(bundle_path)
    return Engine(bundle, Catalog(bundle.items, bundle.tokenizer.eos_token_id), None, ServiceMetrics(), **kwargs)


def _recommend_and_mint(engine: Engine) -> None:
    items = [item.item_id for item in engine.bundle.items[:3]]
    found = engine.method.recommend([Query(history=items, exclude=items)], 5, engine.catalog.trie)
    assert len(found[0]) == 5 and not {r.item_id for r in found[0]} & set(items)
    taken: set[str] = set()
    minted = engine.method.mint([NewItem("title: a brand new lamp", "a brand new lamp")],
                                lambda tid: tid not in taken and not taken.add(tid))
    assert len(minted) == 1


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_the_engine_places_the_method_on_the_device(bundle_path, device):
    engine = _engine(bundle_path, device=device, precision="bf16")  # bf16 changes nothing on the CPU
    expected = torch.device("cuda", torch.cuda.current_device()) if (
        device == "auto" and torch.cuda.is_available()) else torch.device("cpu")
    assert {model_device(m) for m in engine.method.modules()} == {expected}
    _recommend_and_mint(engine)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_stops_the_engine_with_a_message(bundle_path):
    with pytest.raises(ConfigError, match=r"device 'cuda' asked for CUDA, but torch sees no GPU here"):
        _engine(bundle_path, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_engine_recommends_and_mints_on_the_gpu(bundle_path, precision):
    engine = _engine(bundle_path, device="cuda", precision=precision)
    assert {model_device(m).type for m in engine.method.modules()} == {"cuda"}
    assert engine.method.precision == precision
    _recommend_and_mint(engine)
