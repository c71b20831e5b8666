"""Reload without downtime and upgrade without loss (issue 17, parts 3 and 4; docs/operations.md).

In process, against a real Redis: `POST /admin/reload` swaps a bundle in under a steady load with
no failed request; a corrupted bundle is refused with the old one still serving; one reload at a
time; the endpoint exists only with an admin token. A bundle with other IDs (a new catalog
namespace) carries over the items minted under the previous one, recommendable at once, their
textual IDs unique, with the users' events; two replicas starting together carry each item over
once. The catalog namespaces here are the default ones (dataset + ID digest), each test with a
dataset of its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from service.registry import namespace
from service.upgrade import catalogs_key

from .conftest import assert_error, build_tiny_bundle, delete_namespace, metric_value, serve
from .redis_server import registry_contents

pytestmark = pytest.mark.anyio

ADMIN = "admin-token-0123456789"
WRITER = "writer-token-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
WRITE_HEADERS = {"Authorization": f"Bearer {WRITER}"}
# Minted under v1; v2 (retrained on an export) has the first RETRAINED of them as bundle items.
NEW_ITEMS = {f"new-{i}": {"title": f"fresh {['night', 'space', 'toy'][i % 3]} story {i}", "genres": ["drama"]}
             for i in range(12)}
RETRAINED = 6


@pytest.fixture(scope="session")
def bundle_v2_path(tmp_path_factory) -> Path:
    """A "retrained" bundle: other textual IDs (another generator), and some of the items minted
    under v1 as bundle items."""
    extra = dict(list(NEW_ITEMS.items())[:RETRAINED])
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-v2", generator_seed=7, extra_items=extra)


def bundle_copy(source: Path, target: Path, dataset: str) -> Path:
    """A copy of a bundle under another dataset name (the manifest is not checksummed): a
    catalog namespace of the test's own."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["dataset"] = dataset
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def corrupt(bundle: Path) -> Path:
    weights = next(p for p in sorted(bundle.rglob("*.safetensors")))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return bundle


@pytest.fixture
def dataset(redis_url):
    """A dataset name of this test's own; its catalog namespaces and record deleted afterwards."""
    name = f"reload-{uuid.uuid4().hex[:10]}"
    yield name
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        catalogs = list(client.hkeys(catalogs_key(name)))
        client.delete(catalogs_key(name))
    for catalog in catalogs:
        delete_namespace(redis_url, catalog)


@pytest.fixture
def bundles(bundle_path, bundle_v2_path, dataset, tmp_path):
    v1 = bundle_copy(bundle_path, tmp_path / "v1", dataset)
    v2 = bundle_copy(bundle_v2_path, tmp_path / "v2", dataset)
    return v1, v2


def admin_settings(make_settings, bundle: Path, **overrides):
    return make_settings(bundle=bundle, catalog=None, api_tokens=f"ops:{ADMIN}:admin; app:{WRITER}:read,write",
                         **overrides)


async def steady_load(client: httpx.AsyncClient, stop: asyncio.Event, statuses: list[int], workers: int = 4):
    async def worker(n: int):
        while not stop.is_set():
            response = await client.post("/v1/recommendations", json={"history": [f"m{n}", f"m{n + 5}"], "k": 5})
            statuses.append(response.status_code)
            if response.status_code != 200:
                print("failed:", response.text)

    await asyncio.gather(*(worker(n) for n in range(workers)))


async def test_reload_swaps_the_bundle_under_load_without_a_failed_request(make_settings, bundles):
    v1, v2 = bundles
    async with serve(admin_settings(make_settings, v1)) as (app, client):
        before = (await client.get("/readyz")).json()["serving"]
        stop, statuses = asyncio.Event(), []
        load = asyncio.create_task(steady_load(client, stop, statuses))
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        response = await client.post("/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS)
        seconds = time.perf_counter() - started
        during = len(statuses)
        await asyncio.sleep(0.3)
        stop.set()
        await load
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["previous"]["digest"] == before["digest"] and result["serving"]["generation"] == 2
        assert result["serving"]["digest"] != before["digest"] and result["serving"]["path"] == str(v2.resolve())
        assert statuses and set(statuses) == {200}, statuses
        after = (await client.get("/readyz")).json()["serving"]
        assert after["digest"] == result["serving"]["digest"] and after["generation"] == 2
        answer = (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 3})).json()
        assert answer["model"]["bundle"] == after["bundle"]
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "genrec_reloads_total", outcome="ok") == 1
        assert metric_value(metrics, "genrec_bundle_info", digest=after["digest"]) == 1
        assert metric_value(metrics, "genrec_bundle_info", digest=before["digest"]) == 0
        assert metric_value(metrics, "genrec_bundle_generation") == 2
        status = (await client.get("/admin/reload", headers=ADMIN_HEADERS)).json()
        assert status["running"] is False and status["last"]["outcome"] == "ok"
        # The old generation is closed once its requests are done.
        state = app.state.service
        await asyncio.wait_for(state.reloader.stop(), 10)
    print(f"\nreload {seconds:.2f} s, {during} requests answered meanwhile (all 200 of {len(statuses)})")


async def test_a_corrupted_bundle_is_refused_and_the_old_one_serves_on(make_settings, bundles, tmp_path):
    v1, v2 = bundles
    bad = corrupt(bundle_copy(v2, tmp_path / "bad", v2.name))
    async with serve(admin_settings(make_settings, v1)) as (_app, client):
        before = (await client.get("/readyz")).json()["serving"]
        error = assert_error(await client.post("/admin/reload", json={"bundle": str(bad)}, headers=ADMIN_HEADERS),
                             422, "bad_bundle")
        assert error["details"] == {"stage": "verify"} and "checksum" in error["message"]
        error = assert_error(await client.post("/admin/reload", json={"bundle": str(tmp_path / "nowhere")},
                                               headers=ADMIN_HEADERS), 422, "bad_bundle")
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["serving"] == before
        response = await client.post("/v1/recommendations", json={"history": ["m1"], "k": 3})
        assert response.status_code == 200 and len(response.json()["items"]) == 3
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "genrec_reloads_total", outcome="refused") == 2
        assert metric_value(metrics, "genrec_bundle_info", digest=before["digest"]) == 1
        status = (await client.get("/admin/reload", headers=ADMIN_HEADERS)).json()
        assert status["last"]["outcome"] == "refused" and status["serving"]["generation"] == 1


async def test_one_reload_at_a_time(make_settings, bundles):
    v1, v2 = bundles
    async with serve(admin_settings(make_settings, v1)) as (_app, client):
        first, second = await asyncio.gather(
            client.post("/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS),
            client.post("/admin/reload", json={"bundle": str(v1)}, headers=ADMIN_HEADERS),
        )
        codes = sorted([first.status_code, second.status_code])
        assert codes == [200, 409], (first.text, second.text)
        refused = first if first.status_code == 409 else second
        assert_error(refused, 409, "reload_in_progress")


async def test_reload_needs_an_admin_token(make_settings, bundles):
    v1, _v2 = bundles
    async with serve(make_settings(bundle=v1, catalog=None, api_token=WRITER)) as (_app, client):
        assert_error(await client.post("/admin/reload", json={}, headers=WRITE_HEADERS), 404, "not_found")
        assert "/admin/reload" not in (await client.get("/openapi.json")).json()["paths"]
    async with serve(admin_settings(make_settings, v1)) as (_app, client):
        assert_error(await client.post("/admin/reload", json={}), 401, "unauthorized")
        assert_error(await client.post("/admin/reload", json={}, headers=WRITE_HEADERS), 403, "forbidden")
        document = (await client.get("/openapi.json")).json()
        operation = document["paths"]["/admin/reload"]["post"]
        assert operation["security"] == [{"apiToken": []}]
        assert {"200", "409", "422"} <= set(operation["responses"])
        # No body: GENREC_BUNDLE again (the same bundle: a new generation of it).
        response = await client.post("/admin/reload", headers=ADMIN_HEADERS)
        assert response.status_code == 200, response.text
        assert response.json()["serving"]["digest"] == response.json()["previous"]["digest"]
        assert response.json()["serving"]["generation"] == 2


async def test_an_upgrade_carries_over_the_minted_items_and_the_users_events(make_settings, bundles, redis_url):
    v1, v2 = bundles
    async with serve(admin_settings(make_settings, v1)) as (app, client):
        old_catalog = app.state.service.generation.catalog_name
        for item_id, metadata in NEW_ITEMS.items():
            response = await client.post("/v1/items", json={"item_id": item_id, "metadata": metadata},
                                         headers=WRITE_HEADERS)
            assert response.status_code == 201, response.text
        old_ids = {i: (await client.get(f"/v1/items/{i}")).json()["textual_id"] for i in NEW_ITEMS}
        events = [{"user_id": "u1", "item_id": i, "timestamp": 1000 + n} for n, i in enumerate(NEW_ITEMS)]
        assert (await client.post("/v1/events", json={"events": events}, headers=WRITE_HEADERS)).status_code == 200
        old_before = registry_contents(redis_url, old_catalog)

        response = await client.post("/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS)
        assert response.status_code == 200, response.text
        new_catalog = response.json()["serving"]["catalog"]
        assert new_catalog != old_catalog
        assert response.json()["items_carried_over"] == len(NEW_ITEMS) - RETRAINED
        generation = app.state.service.generation
        for item_id in NEW_ITEMS:
            record = (await client.get(f"/v1/items/{item_id}")).json()
            assert record["recommendable"] is True and item_id in generation.catalog
            if item_id not in list(NEW_ITEMS)[:RETRAINED]:
                assert record["source"] == "minted" and record["metadata"] == NEW_ITEMS[item_id]
        # A carried-over item keeps its ID where it is free in the new namespace.
        carried = {i: generation.catalog.textual_id(i) for i in list(NEW_ITEMS)[RETRAINED:]}
        assert sum(carried[i] == old_ids[i] for i in carried) >= 1, (carried, old_ids)
        # No textual ID is held by two items.
        contents = registry_contents(redis_url, new_catalog)
        owners = [record["textual_id"] for record in contents["items"].values()]
        assert len(owners) == len(set(owners)) == len(contents["items"])
        assert all(contents["tids"][record["textual_id"]] == item_id for item_id, record in contents["items"].items())
        # The users' events came along, and recommendations by user id work on them.
        stored = (await client.get("/v1/users/u1/events")).json()["events"]
        assert [e["item_id"] for e in stored] == list(NEW_ITEMS)
        response = await client.post("/v1/recommendations", json={"user_id": "u1", "k": 5})
        assert response.status_code == 200 and response.json()["strategy"] == "model"
        # Filters and the title search know the carried-over items.
        hits = (await client.get("/v1/items", params={"q": "fresh story 11"})).json()["items"]
        assert [h["item_id"] for h in hits] == ["new-11"]
        # A history of carried-over items, restricted to them: they come out of the decoder.
        only = list(carried)
        response = await client.post("/v1/recommendations", json={"history": only[:2], "k": 3,
                                                                   "exclude_history": True})
        assert response.status_code == 200
        # Nothing of the old namespace was written or deleted.
        assert registry_contents(redis_url, old_catalog) == old_before
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "genrec_items_carried_over_total") == len(NEW_ITEMS) - RETRAINED

        # Back to v1 (a roll back): its namespace had everything; nothing new to carry over.
        response = await client.post("/admin/reload", json={"bundle": str(v1)}, headers=ADMIN_HEADERS)
        assert response.status_code == 200, response.text
        assert response.json()["serving"]["catalog"] == old_catalog
        for item_id, textual_id in old_ids.items():
            assert (await client.get(f"/v1/items/{item_id}")).json()["textual_id"] == textual_id


async def test_replicas_starting_together_on_a_new_bundle_carry_each_item_over_once(make_settings, bundles,
                                                                                     redis_url):
    v1, v2 = bundles
    async with serve(admin_settings(make_settings, v1)) as (app, client):
        old_catalog = app.state.service.generation.catalog_name
        for item_id, metadata in NEW_ITEMS.items():
            response = await client.post("/v1/items", json={"item_id": item_id, "metadata": metadata},
                                         headers=WRITE_HEADERS)
            assert response.status_code == 201
    started = []

    async def one(settings):
        async with serve(settings) as (app, client):
            started.append(app.state.service.generation)
            await asyncio.sleep(0.5)
            return {i: (await client.get(f"/v1/items/{i}")).json()["textual_id"] for i in NEW_ITEMS}

    seen_a, seen_b = await asyncio.gather(one(admin_settings(make_settings, v2)), one(admin_settings(make_settings, v2)))
    assert seen_a == seen_b
    new_catalog = started[0].catalog_name
    assert new_catalog != old_catalog
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        entries = client.xrange(f"{namespace(new_catalog)}events")
    carried = [fields["item_id"] for _id, fields in entries]
    assert sorted(carried) == sorted(list(NEW_ITEMS)[RETRAINED:])  # each once
