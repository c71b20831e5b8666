"""Fixtures of the service tests: a tiny bundle built in seconds (untrained models), a real
Redis (the one at GENREC_TEST_REDIS_URL / 127.0.0.1:6379, or an embedded one when nothing
answers there), a fresh key namespace per test, and apps driven through httpx with their
lifespan run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from genrec.bundle import BundleItem, write_bundle
from genrec.idgenrec.minting import MintConfig
from genrec.idgenrec.prompts import prompt_corpus
from genrec.item_text import flatten_item_text, flatten_metadata, metadata_values_text
from genrec.modeling import ModelConfig, build_t5
from genrec.tokenization import encode_textual_id
from service.app import create_app
from service.embedded_redis import EmbeddedRedis
from service.registry import namespace
from service.settings import Settings
from training.id_generator import mint_catalog
from training.presets import preset
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
ADJECTIVES = ["red", "blue", "green", "quiet", "brave", "dark", "sunny", "lost", "wild", "golden"]
NOUNS = ["river", "castle", "garden", "robot", "island", "forest", "city", "dragon"]
GENRES = ["drama", "comedy", "action", "horror", "romance", "animation"]
N_ITEMS = 40
# Words new items in the tests use, so the tokenizer knows them.
EXTRA_TEXT = "same thing new item fresh entry story movie title genres year toy space night"


def catalog_metadata() -> list[dict]:
    return [
        {
            "title": f"The {ADJECTIVES[i % 10]} {NOUNS[(i * 3) % 8]} {i}",
            "genres": [GENRES[i % 6], GENRES[(i + 2) % 6]],
        }
        for i in range(N_ITEMS)
    ]


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory) -> Path:
    """A complete idgenrec bundle: trained tokenizer, untrained tiny T5s, IDs minted for real."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


def build_tiny_bundle(out: Path, *, generator_seed: int = 1, extra_items: dict[str, dict] | None = None,
                      dataset: str = "synthetic") -> Path:
    """The test bundle, written to `out`; a plain function so scripts (benchmarks/load_replicas.py
    runs) can build the same bundle outside pytest. A "retrained" one (tests of reloads and
    upgrades): another `generator_seed` gives its items other textual IDs, and `extra_items`
    (item id -> metadata) adds items after the catalog's, as a bundle trained on an export of
    the items minted since would."""
    extra_items = extra_items or {}
    metadata = [flatten_metadata(m) for m in [*catalog_metadata(), *extra_items.values()]]
    texts = [flatten_item_text(m) for m in metadata]
    vocabulary = [metadata_values_text(m) for m in metadata]
    tokenizer = train_tokenizer(texts + [EXTRA_TEXT] + prompt_corpus(), vocab_size=200)
    recommender = build_t5(TINY, tokenizer, seed=0).eval()
    generator = build_t5(TINY, tokenizer, seed=generator_seed).eval()
    mint = MintConfig(num_groups=4, penalty_max=3.0, length_steps=1, extra_length=6, batch_size=64)
    minted, stats = mint_catalog(generator, tokenizer, texts, vocabulary, mint, progress=False)
    items = [
        BundleItem(item_id, m.textual_id, encode_textual_id(tokenizer, m.textual_id), text)
        for item_id, m, text in zip([f"m{i}" for i in range(N_ITEMS)] + list(extra_items), minted, texts, strict=True)
    ]
    config = preset("tiny").to_dict()
    config["generator"]["mint"] = mint.to_dict()
    config["data"]["max_history"] = 10
    config["recommender"]["max_source_length"] = 256
    config["eval"]["num_beams"] = 10
    return write_bundle(
        out,
        kind="idgenrec",
        tokenizer=tokenizer,
        models={"recommender": recommender, "id_generator": generator},
        items=items,
        config=config,
        dataset=dataset,
        id_stats=stats.to_dict(),
        metrics={},
        popularity=catalog_popularity(),
    )


def catalog_popularity() -> dict[str, int]:
    """The test bundle's training interactions per item: uneven, with ties, some items without any."""
    return {f"m{i}": (i * 7) % 11 for i in range(N_ITEMS)}


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """The configured Redis if it answers, else a real embedded one for the session."""
    url = os.environ.get("GENREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


def delete_namespace(url: str, catalog: str) -> None:
    prefix = namespace(catalog).replace("{", "\\{").replace("}", "\\}")
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def catalog_name(redis_url):
    """A key namespace of this test's own, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


@pytest.fixture
def make_settings(bundle_path, redis_url, catalog_name, tmp_path):
    def make(**overrides) -> Settings:
        values = dict(
            bundle=bundle_path,
            redis_url=redis_url,
            catalog=catalog_name,
            api_token=None,
            allow_anonymous_writes=True,  # the tests that need tokens set them
            data_dir=tmp_path / "redis-data",
            max_history=20,
            max_k=100,
            max_body_bytes=16 * 1024,
            max_wait_ms=2.0,
            redis_startup_timeout_s=5.0,
            trie_fold_threshold=1000,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@contextlib.asynccontextmanager
async def serve(settings: Settings):
    """A started app (lifespan run) and an httpx client talking to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://genrec.test") as client:
            yield app, client


async def wait_until(predicate, timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return predicate()


def metric_value(text: str, sample: str, **labels: str) -> float:
    """The value of one sample (e.g. `genrec_items_minted_total`, or a histogram's
    `genrec_batch_size_count` with kind="recommend") in a Prometheus text page: the sum over the
    samples of that name whose labels include `labels`; 0 when there is none."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return total


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text and "/tmp" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
def anyio_backend():
    return "asyncio"
