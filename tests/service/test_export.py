"""`genrec-serve export` (issue 17, part 1) against real Redis: a served catalog with minted items
and users' events comes out as RecBole atomic files that training's loader reads; writes that
land while the export reads are wholly in it or wholly out of it; bad input gets one clear line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis

from genrec.exports import CATALOG_NAME, MANIFEST_NAME, read_export_ids, read_export_manifest
from service.cli import main as serve_main
from service.export import CatalogReader, export_catalog
from service.registry import namespace
from service.user_events import member_seq
from training.data import load_dataset, load_recbole_atomic

from .conftest import N_ITEMS, serve

pytestmark = pytest.mark.anyio

NEW_ITEMS = [
    {"item_id": "new-1", "metadata": {"title": "Fresh Space Story", "genres": ["drama", "comedy"], "year": 2026}},
    {"item_id": "new-2", "metadata": {"title": "Night Toy Movie", "genres": "animation", "odd: key": "x\ty"}},
]


def export(redis_url: str, catalog: str, out: Path, **kwargs):
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        return export_catalog(client, catalog, out, dataset="synthetic", **kwargs)


def read_inter(folder: Path) -> list[tuple[str, str, float]]:
    _, interactions = load_recbole_atomic(folder, "synthetic", allow_empty=True)
    return [(x.user_id, x.item_id, x.timestamp) for x in interactions]


async def test_the_export_is_a_dataset_training_reads(make_settings, redis_url, catalog_name, tmp_path):
    async with serve(make_settings()) as (_app, client):
        minted = {}
        for item in NEW_ITEMS:
            response = await client.post("/v1/items", json=item)
            assert response.status_code == 201, response.text
            minted[item["item_id"]] = response.json()["textual_id"]
        events = [{"user_id": f"u{u}", "item_id": item, "timestamp": 1000 + 10 * u + n}
                  for u in range(5) for n, item in enumerate(["m1", "m2", "new-1", f"m{u + 3}", "new-2"])]
        assert (await client.post("/v1/events", json={"events": events})).json()["accepted"] == len(events)
        summary = export(redis_url, catalog_name, tmp_path / "export")

    out = tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, CATALOG_NAME, "synthetic.item",
                                                            "synthetic.inter"])
    manifest = read_export_manifest(out)
    assert manifest["catalog"] == catalog_name and manifest["base"] is None
    assert manifest["items"]["bundle"] == N_ITEMS and manifest["items"]["minted"] == 2
    assert manifest["events"]["events"] == len(events) and manifest["events"]["users"] == 5
    assert summary.items == manifest["items"]

    catalog, _ = load_recbole_atomic(out, "synthetic", allow_empty=True)
    assert list(catalog.items)[:N_ITEMS] == [f"m{i}" for i in range(N_ITEMS)]  # the bundle's order, then minted
    assert list(catalog.items)[N_ITEMS:] == ["new-1", "new-2"]
    assert catalog.items["new-1"] == {"title": "Fresh Space Story", "genres": "drama comedy", "year": "2026"}
    assert catalog.items["new-2"]["odd_key"] == "x y"  # a column name without ':', a value on one line
    assert catalog.items["m0"]["title"] == "The red river 0"  # a bundle item's fields, from its text
    assert sorted(read_inter(out)) == sorted((e["user_id"], e["item_id"], float(e["timestamp"])) for e in events)
    ids = read_export_ids(out)
    assert ids["new-1"] == minted["new-1"] and ids["new-2"] == minted["new-2"] and len(ids) == N_ITEMS + 2

    dataset = load_dataset("synthetic", data_dir=out, kcore=0)
    assert set(dataset.split.train) == {f"u{u}" for u in range(5)}
    assert dataset.split.test["u0"] == "new-2" and dataset.split.valid["u0"] == "m3"
    assert len(dataset.catalog) == N_ITEMS + 2  # the whole catalog carries over, items without events too
    assert dataset.item_text["new-1"].startswith("title: Fresh Space Story")


async def test_writes_during_the_export_are_wholly_in_or_out(make_settings, redis_url, catalog_name, tmp_path,
                                                             monkeypatch):
    """Batches of two users' events, and mints, keep landing while the export reads (a writer
    task beside it, and more writes made right after the boundary is taken): each batch is in the
    export for both its users or for neither, every exported event names an exported item, and
    exactly the events numbered up to the boundary are there."""
    async with serve(make_settings(max_events_per_request=500)) as (_app, client):
        bulk = [{"user_id": f"bulk{u}", "item_id": f"m{(u + n) % N_ITEMS}", "timestamp": n}
                for u in range(300) for n in range(15)]
        for start in range(0, len(bulk), 150):
            assert (await client.post("/v1/events", json={"events": bulk[start : start + 150]})).status_code == 200
        posted: list[int] = []
        lock = asyncio.Lock()

        async def write_one():
            async with lock:  # one sequence of batches, numbered in the order they are stored
                k = len(posted)
                if k % 5 == 0:
                    response = await client.post("/v1/items", json={"item_id": f"late-{k}",
                                                                    "metadata": {"title": f"story {k}"}})
                    assert response.status_code == 201
                item = f"late-{k - k % 5}"
                batch = [{"user_id": f"pa{k % 7}", "item_id": item, "timestamp": 5000 + k},
                         {"user_id": f"pb{k % 7}", "item_id": item, "timestamp": 5000 + k}]
                assert (await client.post("/v1/events", json={"events": batch})).status_code == 200
                posted.append(k)

        stop = asyncio.Event()

        async def writer():
            while not stop.is_set():
                await write_one()
                await asyncio.sleep(0)

        loop = asyncio.get_running_loop()
        original = CatalogReader.boundary

        def boundary_then_writes(self):
            found = original(self)
            for _ in range(6):  # land between the boundary and the reads, for sure
                asyncio.run_coroutine_threadsafe(write_one(), loop).result(timeout=30)
            return found

        monkeypatch.setattr(CatalogReader, "boundary", boundary_then_writes)
        task = asyncio.create_task(writer())
        while len(posted) < 10:
            await asyncio.sleep(0.01)
        summary = await asyncio.to_thread(export, redis_url, catalog_name, tmp_path / "export")
        stop.set()
        await task
    assert summary.events["events_after_boundary"] >= 12 and summary.items["minted_after_boundary"] >= 1

    out = tmp_path / "export"
    catalog, _ = load_recbole_atomic(out, "synthetic", allow_empty=True)
    rows = read_inter(out)
    assert {item for _, item, _ in rows} <= set(catalog.items)
    pairs: dict[float, set[str]] = {}
    for user, _item, timestamp in rows:
        if timestamp >= 5000:
            pairs.setdefault(timestamp, set()).add(user[:2])
    assert all(users == {"pa", "pb"} for users in pairs.values()), pairs
    exported = {int(t) - 5000 for t in pairs}
    assert exported == set(range(len(exported)))  # a prefix of the batches: nothing after the boundary
    assert 0 < len(exported) and exported < set(posted)  # the writer went on after the boundary
    minted = [i for i in catalog.items if i.startswith("late-")]
    assert max(exported) - max(exported) % 5 <= max(int(i[5:]) for i in minted)

    # Exactly the members numbered up to the boundary, from what Redis holds now.
    limit = summary.boundary["event_seq"]
    prefix = namespace(catalog_name) + "user:"
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        stored = [(key[len(prefix):], member, score) for key in r.scan_iter(match=prefix.replace("{", "\\{")
                  .replace("}", "\\}") + "*") for member, score in r.zrange(key, 0, -1, withscores=True)]
    expected = sorted((user, member[17:], score) for user, member, score in stored if member_seq(member) <= limit)
    assert sorted(rows) == expected
    assert len(rows) == len(bulk) + 2 * len(exported)


async def test_an_export_without_a_bundle_names_the_catalog_and_refuses_bad_input(
        make_settings, redis_url, catalog_name, tmp_path, capsys):
    async with serve(make_settings()):
        pass  # seeds the catalog
    out = tmp_path / "out"
    assert serve_main(["export", "--redis", redis_url, "--catalog", catalog_name, "--out", str(out)]) == 0
    assert f"exported catalog {catalog_name}" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    # The dataset: the catalog's name less the digest the service's default names end with.
    assert manifest["dataset"] == "test" and manifest["events"]["events"] == 0
    assert (out / "test.inter").read_text() == "user_id:token\titem_id:token\ttimestamp:float\n"

    # An earlier export is replaced only with --force; any other folder never.
    assert serve_main(["export", "--redis", redis_url, "--catalog", catalog_name, "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert serve_main(["export", "--redis", redis_url, "--catalog", catalog_name, "--out", str(out), "--force"]) == 0
    (tmp_path / "other").mkdir()
    assert serve_main(["export", "--redis", redis_url, "--catalog", catalog_name, "--out",
                       str(tmp_path / "other"), "--force"]) == 2
    assert "is not an export" in capsys.readouterr().err

    assert serve_main(["export", "--redis", redis_url, "--catalog", "no-such-catalog", "--out",
                       str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "catalog 'no-such-catalog' has no items" in err and catalog_name in err
    assert not (tmp_path / "none").exists()
    assert serve_main(["export", "--catalog", catalog_name, "--redis", "", "--out", str(tmp_path / "x")]) == 2
    assert "no Redis" in capsys.readouterr().err
    assert serve_main(["export", "--redis", redis_url, "--out", str(tmp_path / "x")]) == 2
    assert "--bundle DIR" in capsys.readouterr().err
    assert serve_main(["export", "--redis", "redis://127.0.0.1:1/0", "--catalog", catalog_name, "--out",
                       str(tmp_path / "x")]) == 1
    assert "Redis:" in capsys.readouterr().err
    assert not any(p.name.startswith(("x", "none")) for p in tmp_path.iterdir())


async def test_the_bundle_names_the_catalog_and_the_base_data(make_settings, bundle_path, redis_url, tmp_path,
                                                              capsys):
    from genrec.bundle import load_bundle
    from service.generation import default_catalog

    catalog = default_catalog(load_bundle(bundle_path, verify=False))
    try:
        async with serve(make_settings(catalog=None)):
            pass
        out = tmp_path / "export"
        assert serve_main(["export", "--redis", redis_url, "--bundle", str(bundle_path), "--out", str(out)]) == 0
        manifest = read_export_manifest(out)
        assert manifest["catalog"] == catalog and manifest["dataset"] == "synthetic"
        assert manifest["base"] == {"dataset": "ml-100k", "data_dir": None}  # what its config trained on
        assert manifest["bundle"]["kind"] == "idgenrec"
        assert serve_main(["export", "--redis", redis_url, "--bundle", str(bundle_path), "--no-base", "--out",
                           str(tmp_path / "alone")]) == 0
        assert read_export_manifest(tmp_path / "alone")["base"] is None
    finally:
        from .conftest import delete_namespace

        delete_namespace(redis_url, catalog)


async def test_an_export_from_a_redis_cluster(make_settings, tmp_path, capsys):
    """The catalog's keys share one slot of a 3-master cluster: the boundary script runs on its
    node, and SCAN walks every master."""
    from .redis_cluster import LocalCluster

    with LocalCluster(tmp_path / "cluster", masters=3) as cluster:
        settings = make_settings(redis_url=cluster.seeds_url, redis_cluster=True, catalog="exported")
        async with serve(settings) as (_app, client):
            assert (await client.post("/v1/items", json=NEW_ITEMS[0])).status_code == 201
            events = [{"user_id": f"u{u}", "item_id": item, "timestamp": 1000 + n}
                      for u in range(3) for n, item in enumerate(["m1", "new-1", "m2"])]
            assert (await client.post("/v1/events", json={"events": events})).status_code == 200
        out = tmp_path / "export"
        assert serve_main(["export", "--redis", cluster.seeds_url, "--cluster", "--catalog", "exported",
                           "--dataset", "synthetic", "--out", str(out)]) == 0
    manifest = read_export_manifest(out)
    assert manifest["items"]["bundle"] == N_ITEMS and manifest["items"]["minted"] == 1
    assert sorted(read_inter(out)) == sorted((e["user_id"], e["item_id"], float(e["timestamp"])) for e in events)


def test_the_command_names_the_catalog_without_torch(bundle_path):
    """`genrec-serve export` reads the bundle's manifest and item list only: it starts without
    importing torch or transformers (that took 11 s, a minute on a busy machine), and names the
    catalog as the service does."""
    import subprocess
    import sys

    from genrec.bundle import load_bundle
    from service.generation import default_catalog

    script = ("import sys; from pathlib import Path; from service.export import bundle_details; "
              f"print(bundle_details(Path({str(bundle_path)!r}))[0]); "
              "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, check=True)
    catalog, heavy = done.stdout.splitlines()
    assert catalog == default_catalog(load_bundle(bundle_path, verify=False))
    assert heavy == "[]"
