"""Bounded IDs and texts through the API (issue 21, point 1): every metadata limit checked on
the metadata as posted, one metadata word capped, and every minted ID within the caps of
genrec/textual_ids.py. The attack: `POST /v1/items` with four 4,000-digit values once made a
15,531-token ID (201 after 4.9 s) whose trie path and Redis key never went away."""

from __future__ import annotations

import time

import pytest
import redis

from genrec.textual_ids import MAX_ID_TOKENS, MAX_ID_WORD_CHARS, MAX_ID_WORDS
from service.registry import namespace

from .conftest import assert_error, serve

pytestmark = pytest.mark.anyio

ATTACK = {"item_id": "attack-1", "metadata": {f"f{i}": "1234567890" * 400 for i in range(4)}}


def catalog_keys(url: str, catalog: str) -> set[bytes]:
    with redis.Redis.from_url(url) as client:
        return {k for k in client.scan_iter(match=f"{namespace(catalog)}*", count=1000) if b":rl:" not in k}


def assert_bounded(textual_id: str, token_ids: list[int]) -> None:
    words = textual_id.split(" ")
    assert len(words) <= MAX_ID_WORDS and all(len(w) <= MAX_ID_WORD_CHARS for w in words), textual_id
    assert len(token_ids) <= MAX_ID_TOKENS + 1  # + EOS in the trie key


async def test_the_attack_request_is_a_clear_422_and_writes_nothing(make_settings, redis_url, catalog_name):
    async with serve(make_settings(max_body_bytes=64 * 1024)) as (_app, client):
        before = catalog_keys(redis_url, catalog_name)
        start = time.perf_counter()
        response = await client.post("/v1/items", json=ATTACK)
        took = time.perf_counter() - start
        error = assert_error(response, 422, "invalid_request")
        assert error["details"]["fields"][0]["field"] == "metadata.f0"
        assert "a word may have at most 64 characters" in error["message"]
        assert took < 1.0  # no generator ran
        assert catalog_keys(redis_url, catalog_name) == before
        assert (await client.get("/v1/items/attack-1")).status_code == 404


async def test_the_text_limit_is_checked_as_posted_not_after_the_cut(make_settings):
    """The 8,192-character limit once ran on the text cut to the bundle's max_text_chars (512
    here), so it never fired. Words allowed, the same request now fails on the posted length
    (413: a size, which the OpenAPI document cannot state)."""
    settings = make_settings(max_body_bytes=64 * 1024, max_metadata_word_chars=100_000)
    async with serve(settings) as (app, client):
        assert app.state.service.engine.max_text_chars < settings.max_metadata_chars
        error = assert_error(await client.post("/v1/items", json=ATTACK), 413, "payload_too_large")
        assert error["details"]["fields"][0]["field"] == "metadata"
        assert "over 8192 characters" in error["message"]


@pytest.mark.parametrize(
    "overrides, metadata, field",
    [
        ({"max_metadata_value_chars": 100}, {"title": "fresh entry", "blurb": "word " * 30}, "metadata.blurb"),
        ({"max_metadata_value_chars": 100}, {"tags": ["word", "word " * 30]}, "metadata.tags"),  # each string
        ({"max_metadata_word_chars": 10}, {"title": "a-supercalifragilistic-word"}, "metadata.title"),
        ({"max_metadata_fields": 2}, {"a": "x", "b": "y", "c": "z"}, "metadata"),
    ],
)
async def test_each_metadata_limit_names_its_field(make_settings, overrides, metadata, field):
    async with serve(make_settings(**overrides)) as (_app, client):
        error = assert_error(await client.post("/v1/items", json={"item_id": "x1", "metadata": metadata}), 422)
        assert error["details"]["fields"][0]["field"] == field


async def test_the_item_text_limit_is_a_413_naming_the_metadata(make_settings):
    async with serve(make_settings(max_metadata_chars=40)) as (_app, client):
        metadata = {"a": "fresh entry " * 2, "b": "fresh entry " * 2}
        response = await client.post("/v1/items", json={"item_id": "x1", "metadata": metadata})
        error = assert_error(response, 413, "payload_too_large")
        assert error["details"]["fields"][0]["field"] == "metadata"


async def test_a_long_legal_value_mints_a_bounded_id(make_settings):
    """A description of 300 words (each under the word limit, 4,000 characters in all) is
    accepted; its ID, and a repeat's numeric-suffix ID, keep to the caps."""
    words = "fresh entry story movie title genres year toy space night".split()
    description = " ".join(f"{words[i % 10]}{'q' * (i % 7)}" for i in range(300))[:4000]
    metadata = {"title": "same thing " * 20, "description": description}
    async with serve(make_settings(max_body_bytes=64 * 1024)) as (app, client):
        catalog = app.state.service.catalog
        for item_id in ("long-1", "long-2"):
            response = await client.post("/v1/items", json={"item_id": item_id, "metadata": metadata})
            assert response.status_code == 201, response.text
            textual_id = response.json()["textual_id"]
            index = catalog.trie.index_of(item_id)
            assert_bounded(textual_id, list(catalog.trie.sequence(index)))
        assert response.json()["textual_id"].split(" ")[-1].isdigit()  # the repeat: a suffix
