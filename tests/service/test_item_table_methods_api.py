"""The methods that score their own item table (CLLM4Rec, SASRec): a bundle of each round-trips
through write/load and is served through the same endpoints, in-process and by a real
`genrec-serve` process (scores for every known item, title-word IDs for new items, which are
not recommendable until retraining)."""

from __future__ import annotations

import signal

import httpx
import pytest
import torch

from genrec.bundle import BundleItem, load_bundle, read_items, verify_bundle, write_bundle
from genrec.cllm4rec.method import Cllm4Rec
from genrec.cllm4rec.model import (
    MODEL_DIR,
    PROMPT_TEXTS,
    Cllm4RecModel,
    extend_tokenizer,
    load_cllm4rec,
)
from genrec.item_text import flatten_item_text, flatten_metadata
from genrec.method import load_method
from genrec.modeling import build_t5
from genrec.sasrec.model import MODEL_DIR as SASREC_DIR
from genrec.sasrec.model import SasRecModel
from genrec.textual_ids import claim_in, title_textual_id
from training.presets import preset
from training.title_ids import title_id_items
from training.tokenizer_training import train_tokenizer

from .conftest import EXTRA_TEXT, N_ITEMS, TINY, catalog_metadata, serve
from .test_lifecycle import CliService, cli_env

USERS = [f"u{i}" for i in range(6)]


@pytest.fixture(scope="session")
def sasrec_bundle_path(tmp_path_factory):
    texts = [flatten_item_text(flatten_metadata(m)) for m in catalog_metadata()]
    tokenizer = train_tokenizer(texts + [EXTRA_TEXT], vocab_size=200)
    item_ids = [f"m{i}" for i in range(N_ITEMS)]
    items, id_stats = title_id_items(tokenizer, item_ids, texts)
    torch.manual_seed(0)
    model = SasRecModel(item_ids, hidden_size=16, num_layers=1, num_heads=1, inner_size=32, max_len=20).eval()
    out = tmp_path_factory.mktemp("bundles") / "sasrec"
    return write_bundle(
        out, kind="sasrec", tokenizer=tokenizer, models={}, items=items, config=preset("sasrec-tiny").to_dict(),
        dataset="synthetic", id_stats=id_stats, metrics={}, extra_dirs={SASREC_DIR: model.save},
    )


@pytest.fixture(params=["cllm4rec", "sasrec"])
def table_bundle(request):
    """(bundle folder, kind) of each item-table method."""
    return request.getfixturevalue(f"{request.param}_bundle_path"), request.param


@pytest.fixture(scope="session")
def cllm4rec_bundle_path(tmp_path_factory):
    texts = [flatten_item_text(flatten_metadata(m)) for m in catalog_metadata()]
    tokenizer = train_tokenizer(texts + [EXTRA_TEXT, *PROMPT_TEXTS], vocab_size=200)
    claim = claim_in(set())
    minted = [title_textual_id(tokenizer, t, claim) for t in texts]
    backbone = build_t5(TINY, tokenizer, seed=0)
    item_ids = [f"m{i}" for i in range(N_ITEMS)]
    vocab = extend_tokenizer(tokenizer, USERS, item_ids)
    torch.manual_seed(0)
    model = Cllm4RecModel(backbone, vocab, USERS, item_ids).eval()
    eos = tokenizer.eos_token_id
    items = [BundleItem(i, m.textual_id, list(m.token_ids) + [eos], t)
             for i, m, t in zip(item_ids, minted, texts, strict=True)]
    config = preset("cllm4rec-tiny").to_dict()
    out = tmp_path_factory.mktemp("bundles") / "cllm"
    return write_bundle(
        out, kind="cllm4rec", tokenizer=tokenizer, models={}, items=items, config=config,
        dataset="synthetic", id_stats={"items": len(items)}, metrics={},
        extra_dirs={MODEL_DIR: model.save},
    )


def test_cllm4rec_bundle_round_trips(cllm4rec_bundle_path):
    manifest = verify_bundle(cllm4rec_bundle_path)
    assert manifest["kind"] == "cllm4rec"
    assert any(name.startswith(f"{MODEL_DIR}/backbone/") for name in manifest["files"])
    bundle = load_bundle(cllm4rec_bundle_path)
    assert bundle.kind == "cllm4rec"
    method = load_method(bundle)
    assert isinstance(method, Cllm4Rec) and not method.new_items_recommendable
    model = load_cllm4rec(cllm4rec_bundle_path / MODEL_DIR)
    assert model.item_ids == [i.item_id for i in bundle.items] and model.user_ids == USERS
    tok = bundle.tokenizer  # the saved tokenizer keeps the atomic tokens
    assert tok.encode("item_m7", add_special_tokens=False) == [model.item_token_id("m7")]
    assert tok.encode("user_u3", add_special_tokens=False) == [model.user_token_id("u3")]
    assert len({i.textual_id for i in bundle.items}) == N_ITEMS



@pytest.mark.anyio
async def test_an_item_table_bundle_is_served(make_settings, table_bundle):
    bundle_path, kind = table_bundle
    textual = {i.item_id: i.textual_id for i in read_items(bundle_path)}
    async with serve(make_settings(bundle=bundle_path)) as (_app, client):
        response = await client.post("/v1/recommendations", json={"history": ["m1", "m2", "m3"], "k": 5, "user_id": "u2"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["kind"] == kind
        items = body["items"]
        assert len(items) == 5 and not {"m1", "m2", "m3"} & {i["item_id"] for i in items}
        for item in items:
            assert item["textual_id"] == textual[item["item_id"]]
            if kind == "cllm4rec":
                assert item["score"] <= 0.0  # a log-softmax
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True)

        every = await client.post("/v1/recommendations", json={"history": ["m0"], "k": 100})
        assert {i["item_id"] for i in every.json()["items"]} == {f"m{i}" for i in range(1, N_ITEMS)}
        kept = await client.post("/v1/recommendations", json={"history": ["m0"], "k": 100, "exclude_history": False})
        assert {i["item_id"] for i in kept.json()["items"]} == {f"m{i}" for i in range(N_ITEMS)}
        # An unknown user (no token): the prompt goes without user tokens.
        anon = await client.post("/v1/recommendations", json={"history": ["m4"], "k": 3, "user_id": "stranger"})
        assert anon.status_code == 200 and len(anon.json()["items"]) == 3

        # A new item: a unique title-word ID, stored like any other, not recommendable until retraining.
        metadata = {"title": "Toy Story Night", "year": 2026, "genres": ["animation", "comedy"]}
        first = await client.post("/v1/items", json={"item_id": "new-1", "metadata": metadata})
        assert first.status_code == 201, first.text
        created = first.json()
        assert created["textual_id"] == "toy story night" and created["recommendable"] is False
        twin = await client.post("/v1/items", json={"item_id": "new-2", "metadata": metadata})
        assert twin.json()["textual_id"] == "toy story night 2"
        again = await client.post("/v1/items", json={"item_id": "new-1", "metadata": metadata})
        assert again.status_code == 200 and again.json() == {**created, "created": False}
        record = (await client.get("/v1/items/new-1")).json()
        assert record["source"] == "minted" and record["recommendable"] is False
        assert (await client.get("/v1/items/m3")).json()["recommendable"] is True
        # Usable in a history (skipped by the model), never recommended.
        response = await client.post("/v1/recommendations", json={"history": ["new-1", "m3"], "k": 100})
        assert response.status_code == 200
        returned = {i["item_id"] for i in response.json()["items"]}
        assert "new-1" not in returned and "new-2" not in returned and "m3" not in returned


def test_the_real_cli_serves_an_item_table_bundle(table_bundle, redis_url, catalog_name, tmp_path):
    """`genrec-serve` (the CLI under uvicorn, as `make serve` and Docker run it) starts on a
    cllm4rec or sasrec bundle and answers recommendations and mints through HTTP."""
    bundle_path, kind = table_bundle
    log = tmp_path / "service.log"
    with CliService(bundle_path, cli_env(redis_url, catalog_name), log) as service:
        service.wait_ready()
        process, base_url = service.process, service.base_url
        with httpx.Client(base_url=base_url, timeout=20.0) as client:
            found = client.post("/v1/recommendations", json={"history": ["m1", "m2"], "k": 3})
            assert found.status_code == 200, found.text
            assert found.json()["model"]["kind"] == kind
            assert len(found.json()["items"]) == 3
            assert not {"m1", "m2"} & {item["item_id"] for item in found.json()["items"]}
            created = client.post("/v1/items", json={"item_id": "fresh", "metadata": {"title": "Brand New Film"}})
            assert created.status_code == 201 and created.json()["recommendable"] is False
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
