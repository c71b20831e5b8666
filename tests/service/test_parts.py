"""The parts on their own: settings, the CLI, the catalog's trie folding, the micro-batcher."""

from __future__ import annotations

import asyncio
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from genrec.bundle import BundleItem
from service import cli
from service.batching import BatcherClosed, MicroBatcher
from service.catalog import Catalog
from service.settings import Settings

from .conftest import N_ITEMS, serve

EOS = 1

# --------------------------------------------------------------------------- settings


def test_settings_from_environment(monkeypatch, bundle_path):
    env = {
        "GENREC_BUNDLE": str(bundle_path),
        "REDIS_URL": "redis://cache:6379/2",
        "API_TOKEN": "s3cr3t-value-16chars",
        "GENREC_CATALOG": "ml-100k",
        "GENREC_MAX_HISTORY": "50",
        "GENREC_MAX_K": "20",
        "GENREC_MAX_BODY_BYTES": "4096",
        "GENREC_MAX_BATCH_SIZE": "8",
        "GENREC_MAX_WAIT_MS": "3.5",
        "GENREC_TORCH_THREADS": "2",
        "GENREC_NUM_BEAMS": "12",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.bundle == bundle_path
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.api_token.get_secret_value() == "s3cr3t-value-16chars" and settings.write_protected()
    assert (settings.catalog, settings.max_history, settings.max_k) == ("ml-100k", 50, 20)
    assert (settings.max_body_bytes, settings.max_batch_size, settings.max_wait_ms) == (4096, 8, 3.5)
    assert (settings.torch_threads, settings.num_beams) == (2, 12)
    assert "s3cr3t-value-16chars" not in repr(settings)  # the token never shows in logs

    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("API_TOKEN", "")
    monkeypatch.setenv("GENREC_ALLOW_ANONYMOUS_WRITES", "true")
    settings = Settings()
    assert settings.redis_url is None and not settings.write_protected()


@pytest.mark.parametrize(
    "key, value",
    [
        ("GENREC_MAX_K", "0"),
        ("GENREC_MAX_K", "many"),
        ("GENREC_MAX_BATCH_SIZE", "-1"),
        ("GENREC_MAX_BODY_BYTES", "10"),
        ("REDIS_URL", "http://localhost:6379"),
        ("GENREC_CATALOG", "bad{name}"),
        ("GENREC_BUNDLE", "/does/not/exist"),
    ],
)
def test_settings_refuse_bad_values(monkeypatch, bundle_path, key, value):
    monkeypatch.setenv("GENREC_BUNDLE", str(bundle_path))
    monkeypatch.setenv("GENREC_ALLOW_ANONYMOUS_WRITES", "true")  # so only the bad value can fail
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_need_a_bundle(monkeypatch):
    monkeypatch.delenv("GENREC_BUNDLE", raising=False)
    with pytest.raises(ValidationError, match="no bundle given"):
        Settings()


# --------------------------------------------------------------------------- CLI


def test_cli_bad_bundle_exits_2_with_one_line(tmp_path, bundle_path, capsys, monkeypatch):
    monkeypatch.delenv("GENREC_BUNDLE", raising=False)
    monkeypatch.setenv("GENREC_ALLOW_ANONYMOUS_WRITES", "true")
    assert cli.main(["--bundle", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-serve: ") and "bundle folder not found" in err and "\n" not in err

    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    with open(broken / "items.jsonl", "a", encoding="utf-8") as fh:
        fh.write("\n")
    assert cli.main(["--bundle", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "genrec-serve: bad bundle: checksum mismatch for items.jsonl: the file was changed or corrupted"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["--bundle", str(empty)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err

    monkeypatch.setenv("GENREC_MAX_K", "lots")
    assert cli.main(["--bundle", str(bundle_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-serve: max_k:") and "\n" not in err


def test_cli_starts_uvicorn(monkeypatch, bundle_path):
    import uvicorn

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    monkeypatch.setenv("GENREC_MAX_K", "7")
    monkeypatch.setenv("GENREC_ALLOW_ANONYMOUS_WRITES", "true")
    assert cli.main(["--bundle", str(bundle_path), "--host", "0.0.0.0", "--port", "9123"]) == 0
    assert (calls["host"], calls["port"]) == ("0.0.0.0", 9123)
    state = calls["app"].state.service
    assert state.settings.bundle == bundle_path and state.settings.max_k == 7
    assert state.bundle is None  # nothing loads before the lifespan runs


# --------------------------------------------------------------------------- catalog


def _items(n: int, offset: int = 0) -> list[BundleItem]:
    return [BundleItem(f"i{offset + i}", f"w{offset + i}", [10 + (offset + i) // 50, 100 + (offset + i) % 50, EOS], "")
            for i in range(n)]


def test_catalog_fold_keeps_indices_and_items():
    catalog = Catalog(_items(30), EOS)
    for item in _items(5, offset=30):
        assert catalog.add(item.item_id, item.textual_id, item.token_ids)
    assert not catalog.add("i31", "w31", _items(1, offset=31)[0].token_ids)  # idempotent
    with pytest.raises(ValueError):
        catalog.add("i31", "other", [7, EOS])
    old = catalog.trie
    assert old.overlay_size == 5
    assert catalog.fold() and catalog.folds == 1
    new = catalog.trie
    assert new is not old and new.overlay_size == 0 and len(new) == 35
    for index, item in enumerate(_items(35)):
        assert new.index_of(item.item_id) == index == old.index_of(item.item_id)
        assert new.find(item.token_ids) == index
    assert not catalog.fold()  # nothing to fold


def test_catalog_fold_while_items_arrive():
    catalog = Catalog(_items(100), EOS)
    incoming = _items(400, offset=100)
    stop = threading.Event()

    def writer():
        for item in incoming:
            catalog.add(item.item_id, item.textual_id, item.token_ids)
        stop.set()

    def folder():
        while not stop.is_set():
            catalog.fold()
        catalog.fold()

    threads = [threading.Thread(target=writer), threading.Thread(target=folder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    trie = catalog.trie
    assert len(trie) == 500 and len(catalog) == 500
    for index, item in enumerate(_items(500)):
        assert trie.index_of(item.item_id) == index
        assert trie.find(item.token_ids) == index
    assert int(trie.tables().leaf_count[0]) == 500


@pytest.mark.anyio
async def test_app_folds_the_trie_while_serving(make_settings):
    async with serve(make_settings(trie_fold_threshold=3)) as (app, client):
        state = app.state.service
        for i in range(4):
            response = await client.post("/v1/items", json={"item_id": f"f{i}", "metadata": {"title": f"toy {i}"}})
            assert response.status_code == 201
        assert await _eventually(lambda: state.catalog.folds >= 1)

        async def fold_again():
            for i in range(4, 7):
                await client.post("/v1/items", json={"item_id": f"f{i}", "metadata": {"title": f"toy {i}"}})
            await asyncio.to_thread(state.catalog.fold)

        requests = [client.post("/v1/recommendations", json={"history": ["m1"], "k": 100}) for _ in range(10)]
        results = await asyncio.gather(fold_again(), *requests)
        for response in results[1:]:
            assert response.status_code == 200
            assert {f"f{i}" for i in range(4)} <= {i["item_id"] for i in response.json()["items"]}
        final = await client.post("/v1/recommendations", json={"history": ["m1"], "k": 100})
        assert len(final.json()["items"]) == N_ITEMS + 7 - 1
        assert "genrec_trie_folds_total" in (await client.get("/metrics")).text


async def _eventually(predicate, timeout_s: float = 5.0) -> bool:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


# --------------------------------------------------------------------------- micro-batcher


@pytest.mark.anyio
async def test_batcher_gathers_and_answers_each_request():
    seen: list[list[int]] = []

    def handle(requests: list[int]):
        seen.append(list(requests))
        return [ValueError(f"bad {r}") if r == 13 else r * 2 for r in requests]

    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher("test", handle, executor, max_batch=8, max_wait_ms=20)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
        await batcher.stop()
        assert [r for i, r in enumerate(results) if i != 13] == [i * 2 for i in range(20) if i != 13]
        assert isinstance(results[13], ValueError)
        assert max(len(b) for b in seen) == 8 and len(seen) < 20
        assert sorted(r for b in seen for r in b) == list(range(20))
        with pytest.raises(BatcherClosed):
            await batcher.submit(1)


@pytest.mark.anyio
@pytest.mark.parametrize("adaptive", [True, False])
async def test_batcher_waits_for_company_only_after_a_batch_that_had_some(adaptive):
    """adaptive_wait: a lone request (previous batch of one) is not held for max_wait_ms; once
    a batch had several requests, the next one waits and gathers the stragglers."""
    seen: list[list[int]] = []
    loop = asyncio.get_running_loop()

    def handle(requests):
        seen.append(list(requests))
        return requests

    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher("test", handle, executor, max_batch=8, max_wait_ms=1500, adaptive_wait=adaptive)
        batcher.start()
        start = loop.time()
        assert await batcher.submit(1) == 1
        lone = loop.time() - start
        assert (lone < 1.0) if adaptive else (lone >= 1.4)  # not held for the 1.5 s window
        # Two at once (queued together): one batch, with company.
        assert await asyncio.gather(batcher.submit(2), batcher.submit(3)) == [2, 3]
        # After a batch with company, a request waits for the next one arriving 0.3 s later.
        first = asyncio.ensure_future(batcher.submit(4))
        await asyncio.sleep(0.3)
        assert await asyncio.gather(first, batcher.submit(5)) == [4, 5]
        await batcher.stop()
    assert seen == [[1], [2, 3], [4, 5]]


@pytest.mark.anyio
async def test_batcher_stop_finishes_the_running_batch():
    started = threading.Event()
    release = threading.Event()

    def handle(requests):
        started.set()
        release.wait(5)
        return requests

    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher("test", handle, executor, max_batch=1, max_wait_ms=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.to_thread(started.wait, 5)
        second = asyncio.ensure_future(batcher.submit("b"))
        await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosed):
            await batcher.submit("c")  # refused once stopping
        release.set()
        await stopping
        assert await first == "a"  # the batch under way was delivered
        assert await second == "b"  # and what was queued before the stop
