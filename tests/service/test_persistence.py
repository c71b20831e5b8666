"""No lost or duplicated data (issue 7.2): with Redis persisting through its append-only file,
restarting Redis and every replica loses no minted item; replicas minting at the same time,
even for identical metadata, never hand out one ID twice.

(test_registry.py covers one replica under 50 identical mints, two replicas racing on one
item, and an app restart on a Redis that kept running; these go further.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from .conftest import N_ITEMS, serve, wait_until
from .redis_server import RedisServer, registry_contents

pytestmark = pytest.mark.anyio


def assert_consistent(contents: dict, minted: dict[str, str]) -> None:
    """Redis holds exactly the bundle items plus `minted` ({item_id: textual_id}), each ID
    claimed by its own item, one stream entry per minted item, no claim left pending."""
    tids, items = contents["tids"], contents["items"]
    stored = {item_id: record["textual_id"] for item_id, record in items.items() if record["source"] == "minted"}
    assert stored == minted
    assert contents["events"] == len(minted)
    assert len(tids) == N_ITEMS + len(minted) == len(items)
    assert all(tids[record["textual_id"]] == item_id for item_id, record in items.items())
    assert not [owner for owner in tids.values() if owner.startswith("pending:")]


async def recommended_ids(client) -> set[str]:
    response = await client.post("/v1/recommendations", json={"history": ["m0"], "k": 100})
    assert response.status_code == 200, response.text
    return {item["item_id"] for item in response.json()["items"]}


@pytest.mark.parametrize(
    "how, appendfsync",
    [
        ("stop", "everysec"),  # docker compose restart: SIGTERM, Redis flushes its AOF (compose's fsync policy)
        ("crash", "always"),  # SIGKILL: only what was fsynced before each reply survives
    ],
)
async def test_minted_items_survive_a_restart_of_redis_and_every_replica(make_settings, tmp_path, how, appendfsync):
    server = RedisServer(tmp_path / "redis-data", appendfsync=appendfsync)
    try:
        server.start()
        settings = make_settings(redis_url=server.url, redis_timeout_s=1.0, max_batch_size=4)
        async with serve(settings) as (_a, a), serve(settings) as (_b, b):
            bodies = [{"item_id": f"kept-{i}", "metadata": {"title": f"new movie {i}", "genres": ["drama"]}}
                      for i in range(20)]
            responses = await asyncio.gather(*((a, b)[i % 2].post("/v1/items", json=body)
                                               for i, body in enumerate(bodies)))
        assert [r.status_code for r in responses] == [201] * 20
        minted = {r.json()["item_id"]: r.json()["textual_id"] for r in responses}
        assert len(set(minted.values())) == 20

        server.crash() if how == "crash" else server.stop()
        server.start()  # the same data folder: Redis replays its append-only file

        assert_consistent(registry_contents(server.url, settings.catalog), minted)
        async with serve(settings) as (app_c, c), serve(settings) as (app_d, d):
            for app, client in ((app_c, c), (app_d, d)):
                catalog = app.state.service.catalog
                assert {item_id: catalog.textual_id(item_id) for item_id in minted} == minted
                assert set(minted) <= await recommended_ids(client)
            for item_id, textual_id in minted.items():
                record = await d.get(f"/v1/items/{item_id}")
                assert record.status_code == 200 and record.json()["textual_id"] == textual_id
            again = await c.post("/v1/items", json=bodies[3])
            assert again.status_code == 200 and again.json()["textual_id"] == minted["kept-3"]
            fresh = await d.post("/v1/items", json={"item_id": "after-restart", "metadata": bodies[3]["metadata"]})
            assert fresh.status_code == 201 and fresh.json()["textual_id"] not in minted.values()
    finally:
        server.close()


async def test_identical_metadata_on_three_replicas_never_shares_an_id(make_settings, redis_url, catalog_name):
    settings = make_settings(max_batch_size=8, max_wait_ms=5.0)
    metadata = {"title": "Same Thing", "genres": ["drama", "comedy"], "year": 2026}
    async with contextlib.AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(serve(settings)) for _ in range(3)]
        clients = [client for _app, client in replicas]
        distinct = [(clients[i % 3], f"same-{i}") for i in range(60)]
        # The same item_id on all three replicas at once: one mint wins, the others get its ID.
        racing = [(client, f"race-{k}") for k in range(4) for client in clients]
        calls = distinct + racing
        responses = await asyncio.gather(
            *(client.post("/v1/items", json={"item_id": item_id, "metadata": metadata}) for client, item_id in calls)
        )
        assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses if r.status_code > 201]
        by_item: dict[str, set[str]] = {}
        for (_client, item_id), response in zip(calls, responses, strict=True):
            by_item.setdefault(item_id, set()).add(response.json()["textual_id"])
        assert all(len(ids) == 1 for ids in by_item.values())  # one ID per item, whoever answered
        created = [item_id for (_c, item_id), r in zip(calls, responses, strict=True) if r.status_code == 201]
        assert sorted(created) == sorted(by_item)  # each item created exactly once
        minted = {item_id: ids.pop() for item_id, ids in by_item.items()}
        assert len(minted) == 64 and len(set(minted.values())) == 64  # no two items share an ID

        catalogs = [app.state.service.catalog for app, _client in replicas]
        bundle_ids = {catalogs[0].textual_id(f"m{i}") for i in range(N_ITEMS)}
        assert not bundle_ids & set(minted.values())
        for catalog in catalogs:  # every replica ends with the same mapping, from the stream
            assert await wait_until(lambda catalog=catalog: len(catalog) == N_ITEMS + 64, timeout_s=10)
            assert {item_id: catalog.textual_id(item_id) for item_id in minted} == minted

    contents = registry_contents(redis_url, catalog_name)
    assert_consistent(contents, minted)
    assert {json.loads(contents["items"][i]["metadata"])["title"] for i in minted} == {"Same Thing"}
