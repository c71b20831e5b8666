"""GENREC_QUANTIZE=int8: the models' Linear layers quantised at load (dynamic int8); the service
recommends and mints with them as with the unquantised models."""

from __future__ import annotations

import pytest
import torch

from genrec.bundle import load_bundle
from genrec.errors import ConfigError
from genrec.method import RuntimeOptions, load_method, quantize_models

from .conftest import serve

pytestmark = pytest.mark.anyio

def _quantized_linears(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in module.modules())


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_load_method_quantizes_every_model(bundle_path, anyio_backend):
    bundle = load_bundle(bundle_path)
    plain = load_method(bundle)
    quantized = load_method(bundle, RuntimeOptions(quantize="int8"))
    assert _quantized_linears(plain.recommender_model) == 0
    assert _quantized_linears(quantized.recommender_model) > 0
    assert _quantized_linears(quantized.id_generator) > 0
    assert quantized.recommender.model is quantized.recommender_model  # quantised in place: one model
    with pytest.raises(ConfigError, match="unknown quantize mode"):
        quantize_models(plain, "int4")


async def test_service_serves_with_int8_models(make_settings):
    async with serve(make_settings(quantize="int8")) as (app, client):
        assert _quantized_linears(app.state.service.engine.method.recommender_model) > 0
        response = await client.post("/v1/recommendations", json={"history": ["m1", "m2"], "k": 5})
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 5
        minted = await client.post("/v1/items", json={"item_id": "q-1", "metadata": {"title": "fresh story"}})
        assert minted.status_code == 201, minted.text
