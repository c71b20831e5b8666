"""Reload without downtime and upgrade without loss (issue 17, parts 3 and 4; docs/operations.md).

In process, against a real Redis: `POST /admin/reload` swaps a bundle in under a steady load with
no failed request; a corrupted bundle is refused with the old one still serving; one reload at a
time; the endpoint exists only with an admin token. A bundle with other IDs (a new catalog
namespace) carries over the items minted under the previous one, recommendable at once, their
textual IDs unique, with the users' events; two replicas starting together carry each item over
once. The catalog namespaces here are the default ones (dataset + ID digest), each test with a
dataset of its own. The whole loop (slow): two CLI replicas, `genrec-serve export`,
`genrec-train run` on the export, and a rolling reload under load.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import weakref
from pathlib import Path

import httpx
import pytest
import redis

from service.registry import namespace
from service.upgrade import catalogs_key

from .conftest import N_ITEMS as N_ITEMS_V1
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
        old_method = weakref.ref(app.state.service.engine.method)
        old_catalog = weakref.ref(app.state.service.catalog)
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
        # The old generation is closed once its requests are done, and its models freed.
        await asyncio.wait_for(app.state.service.reloader.stop(), 10)
        assert old_method() is None and old_catalog() is None
    print(f"\nreload {seconds:.2f} s, {during} requests answered meanwhile (all 200 of {len(statuses)})")


async def test_a_request_under_way_at_the_swap_finishes_on_the_old_bundle(make_settings, bundles):
    v1, v2 = bundles
    async with serve(admin_settings(make_settings, v1)) as (app, client):
        old = app.state.service.generation
        decode = old.engine.recommend_batch

        def slow(jobs):
            time.sleep(1.0)
            return decode(jobs)

        old.recommend_batcher.handle = slow
        request = asyncio.create_task(client.post("/v1/recommendations", json={"history": ["m1"], "k": 3}))
        await asyncio.sleep(0.2)  # its batch runs now, on the old generation
        assert old.inflight == 1
        response = await client.post("/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS)
        assert response.status_code == 200, response.text
        assert response.json()["old_inflight"] in (0, 1)
        answer = await request
        assert answer.status_code == 200 and answer.json()["model"]["bundle"] == response.json()["previous"]["bundle"]
        await asyncio.wait_for(app.state.service.reloader.stop(), 10)
        assert old.stopping and old.inflight == 0


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


async def test_a_bundle_failing_its_smoke_recommendation_is_refused(make_settings, bundles, monkeypatch):
    import service.generation

    v1, v2 = bundles

    async def broken(self):
        raise RuntimeError("a smoke recommendation returned no items")

    async with serve(admin_settings(make_settings, v1)) as (app, client):
        before = app.state.service.generation
        monkeypatch.setattr(service.generation.Generation, "smoke", broken)
        error = assert_error(await client.post("/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS),
                             422, "bad_bundle")
        assert error["details"] == {"stage": "smoke"}
        assert app.state.service.generation is before and before.ready
        response = await client.post("/v1/recommendations", json={"history": ["m1"], "k": 3})
        assert response.status_code == 200 and response.json()["model"] == before.model_info


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


async def mint_new_items(client) -> None:
    """POST /v1/items of every NEW_ITEMS item, each a 201."""
    for item_id, metadata in NEW_ITEMS.items():
        response = await client.post("/v1/items", json={"item_id": item_id, "metadata": metadata},
                                     headers=WRITE_HEADERS)
        assert response.status_code == 201, response.text


async def test_an_upgrade_carries_over_the_minted_items_and_the_users_events(make_settings, bundles, redis_url):
    v1, v2 = bundles
    async with serve(admin_settings(make_settings, v1)) as (app, client):
        old_catalog = app.state.service.generation.catalog_name
        await mint_new_items(client)
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


async def test_an_upgrade_copies_the_events_of_more_users_than_a_chunk(make_settings, bundles, redis_url):
    """The users are copied CHUNK at a time (a few round trips a chunk, not per user): every one
    of them, each once, with the catalog's event counter raised past theirs."""
    from service.upgrade import CHUNK
    from service.user_events import seq_key

    v1, v2 = bundles
    users = CHUNK + 123
    async with serve(admin_settings(make_settings, v1, max_body_bytes=64 * 1024)) as (app, client):
        old_catalog = app.state.service.generation.catalog_name
        for start in range(0, users, 250):
            events = [{"user_id": f"many-{u}", "item_id": f"m{u % 40}", "timestamp": 1000 + u}
                      for u in range(start, min(start + 250, users))]
            response = await client.post("/v1/events", json={"events": events}, headers=WRITE_HEADERS)
            assert response.status_code == 200 and response.json()["accepted"] == len(events), response.text
        response = await client.post("/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS)
        assert response.status_code == 200, response.text
        new_catalog = response.json()["serving"]["catalog"]
        with redis.Redis.from_url(redis_url, decode_responses=True) as r:
            prefix = namespace(new_catalog).replace("{", "\\{").replace("}", "\\}")
            copied = {k for k in r.scan_iter(match=f"{prefix}user:*", count=1000)}
            assert len(copied) == users
            assert int(r.get(seq_key(namespace(new_catalog)))) >= int(r.get(seq_key(namespace(old_catalog))))
        for u in (0, CHUNK - 1, CHUNK, users - 1):
            stored = (await client.get(f"/v1/users/many-{u}/events")).json()["events"]
            assert [(e["item_id"], e["timestamp"]) for e in stored] == [(f"m{u % 40}", 1000 + u)]
        # An event posted now sorts after the copied ones.
        response = await client.post("/v1/events", json={"events": [{"user_id": "many-0", "item_id": "m1", "timestamp": 99999}]},
                                     headers=WRITE_HEADERS)
        assert response.status_code == 200
        stored = (await client.get("/v1/users/many-0/events")).json()["events"]
        assert [e["item_id"] for e in stored][-1] == "m1"


async def test_replicas_starting_together_on_a_new_bundle_carry_each_item_over_once(make_settings, bundles,
                                                                                     redis_url):
    v1, v2 = bundles
    async with serve(admin_settings(make_settings, v1)) as (app, client):
        old_catalog = app.state.service.generation.catalog_name
        await mint_new_items(client)
    started = []

    async def one(settings):
        async with serve(settings) as (app, client):
            started.append(app.state.service.generation)
            await asyncio.sleep(0.5)
            return {i: (await client.get(f"/v1/items/{i}")).json()["textual_id"] for i in NEW_ITEMS}

    seen_a, seen_b = await asyncio.gather(one(admin_settings(make_settings, v2)), one(admin_settings(make_settings, v2)))
    assert seen_a == seen_b
    assert all(g.upgrade is not None for g in started)
    assert sorted(g.upgrade.carried for g in started) == [0, len(NEW_ITEMS) - RETRAINED]  # one did it all
    new_catalog = started[0].catalog_name
    assert new_catalog != old_catalog
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        entries = client.xrange(f"{namespace(new_catalog)}events")
    carried = [fields["item_id"] for _id, fields in entries]
    assert sorted(carried) == sorted(list(NEW_ITEMS)[RETRAINED:])  # each once


async def test_forget_catalog_deletes_an_old_namespace_only_when_asked(make_settings, bundles, redis_url,
                                                                       monkeypatch, capsys):
    from service.cli import main

    v1, v2 = bundles
    monkeypatch.setenv("REDIS_URL", redis_url)
    async with serve(admin_settings(make_settings, v1)) as (app, client):
        old_catalog = app.state.service.generation.catalog_name
        item = next(iter(NEW_ITEMS.items()))
        await client.post("/v1/items", json={"item_id": "gone-1", "metadata": item[1]}, headers=WRITE_HEADERS)
        response = await client.post("/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS)
        assert response.status_code == 200
        dataset_key = catalogs_key(response.json()["serving"]["dataset"])
        assert await asyncio.to_thread(main, ["forget-catalog", old_catalog]) == 1  # served a moment ago
        assert "served within" in capsys.readouterr().err
        assert registry_contents(redis_url, old_catalog)["items"]
        assert await asyncio.to_thread(main, ["forget-catalog", old_catalog, "--force"]) == 0
        assert registry_contents(redis_url, old_catalog) == {"tids": {}, "items": {}, "events": 0}
        with redis.Redis.from_url(redis_url, decode_responses=True) as r:
            assert old_catalog not in r.hkeys(dataset_key)
        record = (await client.get("/v1/items/gone-1")).json()  # carried over before: still there
        assert record["recommendable"] is True


# --------------------------------------------------------------------------- the whole loop, two replicas

LOOP_ITEMS = {**NEW_ITEMS, **{f"loop-{i}": {"title": f"new toy entry {i}", "genres": ["comedy"]} for i in range(18)}}
LOOP_USERS = 10
EVENTS_PER_USER = 6  # over the minted items: enough for training's leave-one-out split
# v2: the tiny preset made smaller still, to train in seconds on the export of the test's catalog.
LOOP_TRAIN = ["--config", "tiny", "--no-progress", "--device", "cpu",
              "--set", "generator.warmup_epochs=1", "--set", "recommender.epochs=1",
              "--set", "generator.model.d_model=32", "--set", "generator.model.d_ff=64",
              "--set", "generator.model.num_layers=1", "--set", "generator.model.num_decoder_layers=1",
              "--set", "recommender.model.d_model=32", "--set", "recommender.model.d_ff=64",
              "--set", "recommender.model.num_layers=1", "--set", "recommender.model.num_decoder_layers=1",
              "--set", "tokenizer.vocab_size=400", "--set", "eval.num_beams=10"]


def textual_ids_unique(url: str, catalog: str) -> None:
    """Within the namespace: every item's textual ID is claimed by that item, and no two items share one."""
    contents = registry_contents(url, catalog)
    by_id: dict[str, str] = {}
    for item_id, record in contents["items"].items():
        assert by_id.setdefault(record["textual_id"], item_id) == item_id, (record["textual_id"], item_id)
        assert contents["tids"].get(record["textual_id"]) in (item_id, None) or \
            contents["tids"][record["textual_id"]].startswith("pending:")


def loop_events() -> list[dict]:
    """Each user's EVENTS_PER_USER events on minted items, in time order."""
    items = list(LOOP_ITEMS)
    return [{"user_id": f"user-{u}", "item_id": items[(u * 7 + n * 5) % len(items)], "timestamp": 1000 + 10 * n + u}
            for u in range(LOOP_USERS) for n in range(EVENTS_PER_USER)]


def cli(args: list[str], env: dict[str, str], log: Path, timeout_s: float) -> float:
    """One CLI run as an operator would (`python -m service.cli ...`, `python -m training.cli ...`),
    its output in `log`; its wall time."""
    from .test_lifecycle import ROOT

    began = time.monotonic()
    with open(log, "ab") as out:
        done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout_s)
    assert done.returncode == 0, log.read_text()
    return time.monotonic() - began


@pytest.mark.slow
def test_rolling_upgrade_of_two_replicas_under_load(bundle_path, dataset, redis_url, tmp_path):
    """Issue 17's loop, with the real commands: v1 on two replicas (the CLI under uvicorn); 30
    items minted and events of 10 users on them; `genrec-serve export --no-base` while the load
    runs and events keep coming; `genrec-train run` on the export with `--previous-bundle v1`;
    a corrupted bundle refused while v1 serves on; then replica 0 reloaded by POST /admin/reload
    and replica 1 by SIGHUP (GENREC_BUNDLE is a symbolic link, turned to v2), one after the
    other, under a steady load of recommendations and item reads: no failed request, the 30
    items bundle items of v2 with their v1 textual IDs and recommendable on both replicas, no
    textual ID held by two items in either namespace at any moment. Prints the loop's figures
    (docs/operations.md)."""
    from .test_lifecycle import CliService, cli_env

    v1 = bundle_copy(bundle_path, tmp_path / "v1", dataset)
    current = tmp_path / "current"
    current.symlink_to(v1)
    bad = corrupt(bundle_copy(v1, tmp_path / "bad", dataset))
    env = cli_env(redis_url, "unused", API_TOKENS=f"ops:{ADMIN}:admin; app:{WRITER}:read,write",
                  GENREC_RELOAD_DRAIN_S="10", GENREC_UPGRADE_FOLLOW_S="0.2")
    env.pop("GENREC_CATALOG")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), env.get("PYTHONPATH")]))
    logs = [tmp_path / "replica-0.log", tmp_path / "replica-1.log"]
    began = time.monotonic()
    with CliService(current, env, logs[0]) as s0, CliService(current, env, logs[1]) as s1:
        for service in (s0, s1):
            service.wait_ready()
        urls, p1 = [s0.base_url, s1.base_url], s1.process
        old_catalog = httpx.get(f"{urls[0]}/readyz").json()["serving"]["catalog"]
        report = asyncio.run(_loop(urls, p1, current, v1, bad, redis_url, old_catalog, env, tmp_path))
        for log in logs:
            assert "Traceback" not in log.read_text(), log.read_text()
    report["test_s"] = round(time.monotonic() - began, 1)
    print(f"\n{json.dumps(report, indent=1)}")


async def _loop(urls, sighup_process, current: Path, v1: Path, bad: Path, redis_url: str, old_catalog: str,
                env: dict[str, str], tmp_path: Path) -> dict:
    import signal

    async with httpx.AsyncClient(timeout=30.0) as client:
        for n, (item_id, metadata) in enumerate(LOOP_ITEMS.items()):
            response = await client.post(f"{urls[n % 2]}/v1/items", json={"item_id": item_id, "metadata": metadata},
                                         headers=WRITE_HEADERS)
            assert response.status_code == 201, response.text
        events = loop_events()
        response = await client.post(f"{urls[0]}/v1/events", json={"events": events}, headers=WRITE_HEADERS)
        assert response.status_code == 200 and response.json()["accepted"] == len(events), response.text
        old_ids = {i: (await client.get(f"{urls[0]}/v1/items/{i}")).json()["textual_id"] for i in LOOP_ITEMS}

        stop, samples, failures = asyncio.Event(), [], []
        catalogs = {old_catalog}
        live_events = [0]
        running = asyncio.Event()  # cleared while v2 trains: the load is for the export and the reloads
        running.set()

        async def load(worker: int):
            n = 0
            while not stop.is_set():
                await running.wait()
                replica = (worker + n) % 2
                url = urls[replica]
                n += 1
                began = time.monotonic()
                item = list(LOOP_ITEMS)[n % len(LOOP_ITEMS)]
                try:
                    if n % 3:
                        response = await client.post(f"{url}/v1/recommendations",
                                                     json={"user_id": f"user-{n % LOOP_USERS}", "k": 5})
                    else:
                        response = await client.get(f"{url}/v1/items/{item}")
                    samples.append((began, time.monotonic(), replica, response.status_code))
                    if response.status_code != 200:
                        failures.append(response.text)
                except httpx.HTTPError as exc:
                    samples.append((began, time.monotonic(), replica, 0))
                    failures.append(repr(exc))

        async def writer():
            """Events of other users, posted while the export reads (one batch of two users at a time)."""
            n = 0
            while not stop.is_set():
                batch = [{"user_id": f"live-{2 * n + k}", "item_id": list(LOOP_ITEMS)[(n + k) % 30],
                          "timestamp": 5000 + n} for k in range(2)]
                response = await client.post(f"{urls[n % 2]}/v1/events", json={"events": batch}, headers=WRITE_HEADERS)
                if response.status_code != 200:
                    failures.append(response.text)
                live_events[0] += 2
                n += 1
                await asyncio.sleep(0.1)

        async def audit():
            while not stop.is_set():
                for catalog in list(catalogs):
                    await asyncio.to_thread(textual_ids_unique, redis_url, catalog)
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(load(w)) for w in range(4)] + [asyncio.create_task(audit())]
        await asyncio.sleep(1.0)

        # Export (the bundle's base, ml-100k, is not the test catalog's data: --no-base) while
        # the load runs and events keep coming.
        export = tmp_path / "export"
        writing = asyncio.create_task(writer())
        export_s = await asyncio.to_thread(
            cli, ["service.cli", "export", "--bundle", str(current), "--out", str(export), "--no-base"], env,
            tmp_path / "export.log", 120)
        writes_during_export = live_events[0]
        writing.cancel()
        manifest = json.loads((export / "export.json").read_text())
        assert manifest["items"]["minted"] == len(LOOP_ITEMS), manifest
        exported = {line.split("\t")[0] for line in
                    (export / f"{manifest['name']}.item").read_text().splitlines()[1:]}
        assert set(LOOP_ITEMS) <= exported and f"m{N_ITEMS_V1 - 1}" in exported
        rows = [line.split("\t") for line in (export / f"{manifest['name']}.inter").read_text().splitlines()[1:]]
        assert len(rows) == manifest["events"]["events"] and {r[1] for r in rows} <= exported
        assert sum(r[0].startswith("user-") for r in rows) == len(events)
        live = {}
        for row in rows:  # a batch is in whole or not at all: both users of it, or neither
            live.setdefault(float(row[2]), set()).add(row[0])
        assert all(len(users) == 2 for stamp, users in live.items() if stamp >= 5000), live

        # Retrain on the export, keeping v1's IDs (the load paused: training is no part of serving).
        v2 = tmp_path / "v2"
        running.clear()
        train_s = await asyncio.to_thread(
            cli, ["training.cli", "run", *LOOP_TRAIN, "--data-dir", str(export), "--previous-bundle", str(v1),
                  "--out", str(v2)], env, tmp_path / "train.log", 300)
        v2_manifest = json.loads((v2 / "manifest.json").read_text())
        assert v2_manifest["dataset"] == json.loads((v1 / "manifest.json").read_text())["dataset"]
        v2_items = {json.loads(line)["item_id"]: json.loads(line)["textual_id"]
                    for line in (v2 / "items.jsonl").read_text().splitlines()}
        assert set(LOOP_ITEMS) <= set(v2_items)
        running.set()
        await asyncio.sleep(1.0)

        # A corrupted bundle: refused, v1 serves on.
        response = await client.post(f"{urls[0]}/admin/reload", json={"bundle": str(bad)}, headers=ADMIN_HEADERS)
        assert_error(response, 422, "bad_bundle")
        assert (await client.get(f"{urls[0]}/readyz")).json()["serving"]["generation"] == 1

        # Replica 0: POST /admin/reload.
        t0 = time.monotonic()
        response = await client.post(f"{urls[0]}/admin/reload", json={"bundle": str(v2)}, headers=ADMIN_HEADERS)
        t1 = time.monotonic()
        assert response.status_code == 200, response.text
        first = response.json()
        catalogs.add(first["serving"]["catalog"])
        await asyncio.sleep(1.0)  # replica 0 on v2, replica 1 on v1: both serve

        # Replica 1: SIGHUP, GENREC_BUNDLE (a symbolic link) now pointing to v2.
        current.unlink()
        current.symlink_to(v2)
        t2 = time.monotonic()
        sighup_process.send_signal(signal.SIGHUP)
        while (await client.get(f"{urls[1]}/readyz")).json()["serving"]["generation"] != 2:
            assert time.monotonic() - t2 < 60, "SIGHUP did not reload"
            await asyncio.sleep(0.05)
        t3 = time.monotonic()
        second = (await client.get(f"{urls[1]}/admin/reload", headers=ADMIN_HEADERS)).json()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)

        assert not failures, failures[:5]
        new_catalog = first["serving"]["catalog"]
        assert second["serving"]["catalog"] == new_catalog != old_catalog
        for url in urls:
            for item_id in LOOP_ITEMS:
                record = (await client.get(f"{url}/v1/items/{item_id}")).json()
                assert record["recommendable"] is True, record
                assert record["textual_id"] == v2_items[item_id], record
            response = await client.post(f"{url}/v1/recommendations", json={"history": list(LOOP_ITEMS)[-3:], "k": 5})
            assert response.status_code == 200 and len(response.json()["items"]) == 5
            for user in range(LOOP_USERS):
                stored = (await client.get(f"{url}/v1/users/user-{user}/events")).json()["events"]
                assert len(stored) == EVENTS_PER_USER
        kept = sum(v2_items[i] == old_ids[i] for i in LOOP_ITEMS)
        assert kept == len(LOOP_ITEMS), {i: (old_ids[i], v2_items[i]) for i in LOOP_ITEMS if v2_items[i] != old_ids[i]}
        for catalog in catalogs:
            textual_ids_unique(redis_url, catalog)
        return {
            "export_s": round(export_s, 2),
            "export_reading_s": float(re.search(r" in ([0-9.]+) s:", (tmp_path / "export.log").read_text())[1]),
            "events_posted_during_export": writes_during_export,
            "exported": {"items": manifest["items"], "events": manifest["events"]["events"]},
            "train_s": round(train_s, 1),
            "id_stats_previous": v2_manifest.get("id_stats", {}).get("previous"),
            "minted_items_keeping_their_id": f"{kept} of {len(LOOP_ITEMS)}",
            "reload_post_s": first["seconds"],
            "reload_post_wall_s": round(t1 - t0, 2),
            "reload_sighup_s": second["last"]["seconds"],
            "reload_sighup_wall_s": round(t3 - t2, 2),
            "requests": len(samples),
            "failed": len(failures),
            "served_during_post_reload": _during(samples, t0, t1),
            "served_during_sighup_reload": _during(samples, t2, t3),
            "carried_over_by_replica_0": first["items_carried_over"],
        }


def _during(samples, start: float, end: float) -> dict:
    """Requests answered within [start, end], per replica, and the slowest of those that overlapped it."""
    answered = [0, 0]
    slowest = [0.0, 0.0]
    for began, ended, replica, _status in samples:
        if start <= ended <= end:
            answered[replica] += 1
        if began <= end and ended >= start:
            slowest[replica] = max(slowest[replica], ended - began)
    return {"answered_by_replica": answered, "slowest_s_by_replica": [round(x, 2) for x in slowest]}
