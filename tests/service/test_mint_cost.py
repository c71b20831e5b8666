"""Minting cost bounded (issue 21, point 3): a repeat of metadata text minted before (by any item,
the bundle's included) gets its ID without the generator, the generator's rounds per item are
capped, and mints run on a thread of their own, so recommendations are answered while a mint
batch runs. Before, each repeat ran every generator round (1.6-2.9 s) on the thread that
recommendations share."""

from __future__ import annotations

import asyncio
import threading

import pytest

from genrec.textual_ids import MAX_ID_TOKENS

from .conftest import catalog_metadata, serve, wait_until

pytestmark = pytest.mark.anyio

METADATA = {"title": "same thing", "genres": ["drama", "comedy"], "year": 2024}


class Spy:
    """Wraps a method's `mint` or `recommend`: the items it got and the thread it ran on."""

    def __init__(self, method, name: str):
        self.inner = getattr(method, name)
        self.items: list = []
        self.threads: set[str] = set()
        setattr(method, name, self)

    def __call__(self, items, *args, **kwargs):
        self.items.extend(items)
        self.threads.add(threading.current_thread().name)
        return self.inner(items, *args, **kwargs)


async def test_a_repeat_of_known_metadata_skips_the_generator(make_settings):
    async with serve(make_settings()) as (app, client):
        state = app.state.service
        mint = Spy(state.engine.method, "mint")
        ids = []
        for n in range(4):
            response = await client.post("/v1/items", json={"item_id": f"rep-{n}", "metadata": METADATA})
            assert response.status_code == 201, response.text
            ids.append(response.json()["textual_id"])
        assert len(mint.items) == 1  # only the first one ran the generator
        base = ids[0]
        assert ids[1:] == [f"{base} 2", f"{base} 3", f"{base} 4"]
        assert len(set(ids)) == 4
        assert state.metrics.mint_repeats._value.get() == 3
        rec = await client.post("/v1/recommendations", json={"history": ["rep-3", "rep-1"], "k": 3})
        assert rec.status_code == 200  # the repeats are in the trie


async def test_a_repeat_of_a_bundle_items_metadata_is_suffixed_at_once(make_settings):
    async with serve(make_settings()) as (app, client):
        state = app.state.service
        mint = Spy(state.engine.method, "mint")
        response = await client.post("/v1/items", json={"item_id": "copy-of-m0", "metadata": catalog_metadata()[0]})
        assert response.status_code == 201 and mint.items == []
        bundle_id = state.catalog.textual_id("m0")
        assert response.json()["textual_id"] == f"{bundle_id} 2"


async def test_the_generator_rounds_are_capped_by_the_setting(make_settings):
    async with serve(make_settings(mint_max_rounds=2)) as (app, _client):
        assert app.state.service.engine.method.mint_config.max_rounds == 2
    async with serve(make_settings(mint_max_rounds=0)) as (app, _client):
        assert app.state.service.engine.method.mint_config.max_rounds is None  # the bundle's whole schedule


@pytest.mark.parametrize("own_thread", [True, False])
async def test_mints_have_their_own_thread(make_settings, own_thread):
    async with serve(make_settings(mint_thread=own_thread)) as (app, client):
        method = app.state.service.engine.method
        mint, recommend = Spy(method, "mint"), Spy(method, "recommend")
        assert (await client.post("/v1/items", json={"item_id": "t-1", "metadata": {"title": "fresh entry"}})).status_code == 201
        assert (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 2})).status_code == 200
        assert recommend.threads == {"genrec-inference_0"}
        assert mint.threads == ({"genrec-mint_0"} if own_thread else {"genrec-inference_0"})


async def test_recommendations_are_answered_while_a_mint_batch_runs(make_settings):
    async with serve(make_settings()) as (app, client):
        state = app.state.service
        release, entered = threading.Event(), threading.Event()
        inner = state.mint_batcher.handle

        def slow(jobs):
            entered.set()
            release.wait(30)
            return inner(jobs)

        state.mint_batcher.handle = slow
        minting = asyncio.create_task(client.post("/v1/items", json={"item_id": "slow-1", "metadata": {"title": "toy"}}))
        assert await wait_until(entered.is_set)
        answered = await asyncio.wait_for(client.post("/v1/recommendations", json={"history": ["m1"], "k": 2}), 10)
        assert answered.status_code == 200 and not minting.done()
        release.set()
        created = await minting
        assert created.status_code == 201
        index = state.catalog.trie.index_of("slow-1")
        assert len(state.catalog.trie.sequence(index)) <= MAX_ID_TOKENS + 1
