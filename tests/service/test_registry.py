"""Minting under concurrency, replicas sharing one Redis, restarts, failures midway, the API
token, readiness when Redis goes away, and the embedded Redis default."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis

from service.embedded_redis import EmbeddedRedis
from service.registry import namespace

from .conftest import N_ITEMS, assert_error, metric_value, serve, wait_until

pytestmark = pytest.mark.anyio


def _keys(url: str, catalog: str, kind: str) -> dict[str, str]:
    """{key suffix: value} of the string keys (tid:) or hashes (item:) of a namespace."""
    prefix = namespace(catalog)
    escaped = prefix.replace("{", "\\{").replace("}", "\\}")
    out = {}
    with redis.Redis.from_url(url, decode_responses=True) as client:
        for key in client.scan_iter(match=f"{escaped}{kind}:*", count=1000):
            out[key[len(prefix) + len(kind) + 1 :]] = client.get(key) if kind == "tid" else client.hgetall(key)
        events = client.xlen(f"{prefix}events")
    out["__events__"] = events
    return out


async def test_fifty_concurrent_identical_mints_get_distinct_ids(make_settings, redis_url, catalog_name):
    metadata = {"title": "Same Thing", "genres": ["drama"]}
    async with serve(make_settings(max_batch_size=16)) as (app, client):
        responses = await asyncio.gather(
            *(client.post("/v1/items", json={"item_id": f"same-{i}", "metadata": metadata}) for i in range(50))
        )
        assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses if r.status_code != 201]
        ids = [r.json()["textual_id"] for r in responses]
        assert len(set(ids)) == 50
        catalog = app.state.service.catalog
        assert len(catalog) == N_ITEMS + 50
        bundle_ids = {catalog.textual_id(f"m{i}") for i in range(N_ITEMS)}
        assert not bundle_ids & set(ids)

    tids = _keys(redis_url, catalog_name, "tid")
    items = _keys(redis_url, catalog_name, "item")
    assert tids.pop("__events__") == 50
    minted = {k: v for k, v in items.items() if k.startswith("same-")}
    assert len(minted) == 50
    for item_id, record in minted.items():
        assert record["source"] == "minted"
        assert tids[record["textual_id"]] == item_id  # the claim names its item: no pending marker left
    assert not [v for v in tids.values() if v.startswith("pending:")]
    assert len(tids) == N_ITEMS + 50


async def test_concurrent_mints_of_one_item_agree(make_settings, redis_url, catalog_name):
    body = {"item_id": "dup", "metadata": {"title": "fresh entry", "genres": "comedy"}}
    async with serve(make_settings()) as (_app, client):
        responses = await asyncio.gather(*(client.post("/v1/items", json=body) for _ in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 7 + [201]
    assert len({r.json()["textual_id"] for r in responses}) == 1
    tids = _keys(redis_url, catalog_name, "tid")
    assert tids.pop("__events__") == 1
    assert len(tids) == N_ITEMS + 1


async def test_two_replicas_share_items(make_settings):
    settings = make_settings()
    async with serve(settings) as (app_a, a), serve(settings) as (app_b, b):
        created = await a.post("/v1/items", json={"item_id": "shared-1", "metadata": {"title": "space story"}})
        assert created.status_code == 201
        textual_id = created.json()["textual_id"]
        # B learns it from the events stream, without restarting.
        assert await wait_until(lambda: "shared-1" in app_b.state.service.catalog, timeout_s=5)
        assert app_b.state.service.catalog.textual_id("shared-1") == textual_id
        every = await b.post("/v1/recommendations", json={"history": ["m2"], "k": 100})
        assert "shared-1" in {i["item_id"] for i in every.json()["items"]}
        assert (await b.post("/v1/recommendations", json={"history": ["shared-1"], "k": 2})).status_code == 200
        again = await b.post("/v1/items", json={"item_id": "shared-1", "metadata": {"title": "space story"}})
        assert again.status_code == 200 and again.json()["textual_id"] == textual_id
        # Minting on both at once: the IDs stay unique across replicas.
        bodies = [{"item_id": f"both-{i}", "metadata": {"title": "space story"}} for i in range(10)]
        responses = await asyncio.gather(*(
            (a if i % 2 else b).post("/v1/items", json=body) for i, body in enumerate(bodies)
        ))
        assert all(r.status_code == 201 for r in responses)
        ids = {r.json()["textual_id"] for r in responses} | {textual_id}
        assert len(ids) == 11
        for app in (app_a, app_b):
            assert await wait_until(lambda app=app: len(app.state.service.catalog) == N_ITEMS + 11)
        metrics = (await b.get("/metrics")).text
        assert "genrec_items_followed_total 6.0" in metrics


async def test_same_new_item_on_two_replicas_at_once(make_settings, redis_url, catalog_name):
    settings = make_settings()
    body = {"item_id": "race", "metadata": {"title": "night movie"}}
    async with serve(settings) as (_a, a), serve(settings) as (_b, b):
        responses = await asyncio.gather(a.post("/v1/items", json=body), b.post("/v1/items", json=body))
    assert sorted(r.status_code for r in responses) == [200, 201]
    assert len({r.json()["textual_id"] for r in responses}) == 1
    tids = _keys(redis_url, catalog_name, "tid")
    assert tids.pop("__events__") == 1
    assert [k for k, v in tids.items() if v == "race"] == [responses[0].json()["textual_id"]]
    assert not [v for v in tids.values() if v.startswith("pending:")]


async def test_restart_keeps_minted_items(make_settings):
    settings = make_settings()
    async with serve(settings) as (_app, client):
        created = (await client.post("/v1/items", json={"item_id": "keep-1", "metadata": {"title": "toy"}})).json()
    async with serve(settings) as (app, client):
        assert app.state.service.catalog.textual_id("keep-1") == created["textual_id"]
        record = await client.get("/v1/items/keep-1")
        assert record.status_code == 200 and record.json()["textual_id"] == created["textual_id"]
        every = await client.post("/v1/recommendations", json={"history": ["m1"], "k": 100})
        assert "keep-1" in {i["item_id"] for i in every.json()["items"]}
        again = await client.post("/v1/items", json={"item_id": "keep-1", "metadata": {"title": "toy"}})
        assert again.status_code == 200 and again.json()["textual_id"] == created["textual_id"]


async def test_failed_commit_leaves_nothing_half_written(make_settings, redis_url, catalog_name, monkeypatch):
    # A long batching window, always waited (no adaptive wait), so the three concurrent mints
    # below share one minting batch (the first claim succeeds, the second fails: the batch must
    # give the first one back).
    async with serve(make_settings(max_wait_ms=300, adaptive_wait=False)) as (app, client):
        before = _keys(redis_url, catalog_name, "tid")

        async def broken_execute(self, *args, **kwargs):
            raise redis.ConnectionError("connection lost in the middle of a transaction")

        with monkeypatch.context() as patch:
            patch.setattr(aioredis.client.Pipeline, "execute", broken_execute)
            response = await client.post("/v1/items", json={"item_id": "half", "metadata": {"title": "fresh entry"}})
        assert_error(response, 503, "store_unavailable")
        assert _keys(redis_url, catalog_name, "tid") == before  # the claim was given back
        assert "half" not in _keys(redis_url, catalog_name, "item")
        assert "half" not in app.state.service.catalog
        assert (await client.get("/v1/items/half")).status_code == 404

        # A failure inside the minting loop (claims already made) gives its claims back too.
        calls = {"n": 0}
        registry = app.state.service.registry
        real_claim = registry.claim_sync

        def flaky_claim(textual_id, marker):
            calls["n"] += 1
            if calls["n"] > 1:
                raise redis.ConnectionError("Redis went away")
            return real_claim(textual_id, marker)

        monkeypatch.setattr(registry, "claim_sync", flaky_claim)
        bodies = [{"item_id": f"half-{i}", "metadata": {"title": "fresh entry"}} for i in range(3)]
        responses = await asyncio.gather(*(client.post("/v1/items", json=b) for b in bodies))
        assert {r.status_code for r in responses} == {503}
        assert _keys(redis_url, catalog_name, "tid") == before
        monkeypatch.undo()
        ok = await client.post("/v1/items", json={"item_id": "half", "metadata": {"title": "fresh entry"}})
        assert ok.status_code == 201


async def test_api_token_guards_writes_only(make_settings):
    async with serve(make_settings(api_token="s3cret-token-16ch")) as (_app, client):
        body = {"item_id": "guarded", "metadata": {"title": "toy"}}
        missing = await client.post("/v1/items", json=body)
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(await client.post("/v1/items", json=body, headers={"Authorization": "Bearer nope"}), 401)
        assert_error(await client.post("/v1/items", json=body, headers={"Authorization": "s3cret-token-16ch"}), 401)
        # Checked before the body: an anonymous caller learns nothing about validation.
        assert_error(await client.post("/v1/items", json={"item_id": ""}), 401)
        ok = await client.post("/v1/items", json=body, headers={"Authorization": "Bearer s3cret-token-16ch"})
        assert ok.status_code == 201
        assert (await client.get("/v1/items/guarded")).status_code == 200
        assert (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 1})).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_readyz_503_when_redis_goes_away(make_settings, tmp_path):
    server = EmbeddedRedis(tmp_path / "own-redis")
    url = server.start()
    try:
        async with serve(make_settings(redis_url=url, redis_timeout_s=1.0)) as (_app, client):
            assert (await client.get("/readyz")).status_code == 200
            server.stop()
            error = assert_error(await client.get("/readyz"), 503, "not_ready")
            assert error["details"]["checks"]["bundle"] == "ok"
            assert error["details"]["checks"]["redis"].startswith("unreachable")
            assert "redis" in error["message"]
            assert (await client.get("/healthz")).status_code == 200
            # Recommendations and look-ups of known items are served from memory; writes, and
            # look-ups of items this replica does not know, say the store is unavailable.
            assert (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 3})).status_code == 200
            minted = await client.post("/v1/items", json={"item_id": "offline", "metadata": {"title": "toy"}})
            assert_error(minted, 503, "store_unavailable")
            held = await client.get("/v1/items/m1")
            assert held.status_code == 200 and held.json()["source"] == "bundle" and not held.json()["partial"]
            assert_error(await client.get("/v1/items/never-seen"), 503, "store_unavailable")
            # Each failure counted once, under its operation (the follower's retries are its own).
            text = (await client.get("/metrics")).text
            assert metric_value(text, "genrec_redis_errors_total", operation="ping") == 1  # the failed /readyz
            assert metric_value(text, "genrec_redis_errors_total", operation="mint") == 1
            assert metric_value(text, "genrec_redis_errors_total", operation="request") == 1  # never-seen's read
            assert metric_value(text, "genrec_redis_errors_total", operation="lookup") == 0  # m1 is known
    finally:
        server.stop()


async def test_embedded_redis_default_persists(make_settings, tmp_path):
    data_dir = tmp_path / "embedded"
    settings = make_settings(redis_url=None, data_dir=data_dir)
    async with serve(settings) as (app, client):
        assert app.state.service.embedded is not None and app.state.service.embedded.running
        assert (await client.get("/readyz")).status_code == 200
        created = (await client.post("/v1/items", json={"item_id": "local-1", "metadata": {"title": "toy"}})).json()
    assert app.state.service.embedded.url is None  # stopped with the app
    assert any(data_dir.rglob("*.aof*")) or any(data_dir.rglob("appendonly*"))
    async with serve(settings) as (app, client):
        assert app.state.service.catalog.textual_id("local-1") == created["textual_id"]
        record = (await client.get("/v1/items/local-1")).json()
        assert record["metadata"] == {"title": "toy"}


async def test_seeding_is_idempotent(make_settings, redis_url, catalog_name, bundle_path):
    settings = make_settings()
    async with serve(settings) as (app, _client):
        registry = app.state.service.registry
        first = _keys(redis_url, catalog_name, "item")
        again = await registry.seed(app.state.service.bundle.items, "later", "another-digest")
        assert again == {"written": 0, "present": N_ITEMS, "conflicts": 0, "skipped": False}
        assert _keys(redis_url, catalog_name, "item") == first
        skipped = await registry.seed(app.state.service.bundle.items, "later", "another-digest")
        assert skipped["skipped"] is True
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        record = client.hgetall(f"{namespace(catalog_name)}item:m3")
    assert record["source"] == "bundle"
    assert json.loads(record["token_ids"])[-1] == 1  # EOS ends the trie key


async def test_item_minted_elsewhere_is_usable_before_the_stream_brings_it(make_settings):
    settings = make_settings()
    async with serve(settings) as (_a, a), serve(settings) as (app_b, b):
        await app_b.state.service.follower.stop()  # B hears nothing from the stream now
        created = await a.post("/v1/items", json={"item_id": "just-now", "metadata": {"title": "toy"}})
        assert created.status_code == 201
        response = await b.post("/v1/recommendations", json={"history": ["m1", "just-now"], "k": 3})
        assert response.status_code == 200  # looked up in Redis, not refused as unknown
        assert app_b.state.service.catalog.textual_id("just-now") == created.json()["textual_id"]
        error = assert_error(await b.post("/v1/recommendations", json={"history": ["never-minted"]}), 422)
        assert error["details"]["item_ids"] == ["never-minted"]
