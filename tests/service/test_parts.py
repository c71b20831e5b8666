"""The parts on their own: settings, the CLI, the catalog's trie folding, the micro-batcher."""

from __future__ import annotations

import asyncio
import queue
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

import service.catalog
from genrec.bundle import BundleItem
from genrec.trie import TextualIdTrie
from service import cli
from service.batching import BatcherClosed, MicroBatcher
from service.catalog import Catalog
from service.settings import Settings

from .conftest import N_ITEMS, metric_value, serve

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
        assert catalog.add(item.item_id, item.textual_id, item.token_ids, {"tag": "late" if item.item_id != "i30" else ""})
    assert not catalog.add("i31", "w31", _items(1, offset=31)[0].token_ids)  # idempotent
    with pytest.raises(ValueError):
        catalog.add("i31", "other", [7, EOS])
    old = catalog.trie
    assert old.overlay_size == 5
    assert catalog.fold() and catalog.folds == 1
    new = catalog.trie
    assert new is not old and new.overlay_size == 0 and len(new) == 35
    late = catalog.matching({"tag": ["late"]})  # a filter's items, held as trie indices, valid in the fold
    assert late == {"i31", "i32", "i33", "i34"} and late.indices_in(new).tolist() == [31, 32, 33, 34]
    for index, item in enumerate(_items(35)):
        assert new.index_of(item.item_id) == index == old.index_of(item.item_id)
        assert new.find(item.token_ids) == index
    assert not catalog.fold()  # nothing to fold


def test_catalog_fold_replays_the_items_added_while_it_built(monkeypatch):
    """Items added while the new base is being built (outside the write lock) are replayed into
    the new trie's overlay before the swap: none is lost, all keep their indices."""
    catalog = Catalog(_items(30), EOS)
    for item in _items(5, offset=30):
        catalog.add(item.item_id, item.textual_id, item.token_ids)
    late = _items(3, offset=35)

    class AddsMeanwhile(TextualIdTrie):
        def base_tables(self):
            tables = super().base_tables()
            while late:  # during the slow part of the fold, against the old trie
                item = late.pop(0)
                assert catalog.add(item.item_id, item.textual_id, item.token_ids)
            return tables

    monkeypatch.setattr(service.catalog, "TextualIdTrie", AddsMeanwhile)
    old = catalog.trie
    assert catalog.fold()
    new = catalog.trie
    assert new is not old and not late
    assert len(old) == len(new) == len(catalog) == 38
    assert new.overlay_size == 3  # the 35 items folded into the base, the 3 late ones replayed
    for index, item in enumerate(_items(38)):
        assert new.index_of(item.item_id) == index
        assert new.find(item.token_ids) == index
        assert catalog.textual_id(item.item_id) == item.textual_id
    assert int(new.tables().leaf_count[0]) == 38


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
        # The fold the overlay's size set off is counted once, and the overlay gauge follows it.
        for _ in range(250):
            text = (await client.get("/metrics")).text
            if metric_value(text, "genrec_trie_folds_total") >= 1:
                break
            await asyncio.sleep(0.02)
        assert metric_value(text, "genrec_trie_folds_total") == state.catalog.folds == 1
        assert metric_value(text, "genrec_trie_overlay_items") == state.catalog.overlay_size < 3

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


class GatedHandle:
    """A batcher's `handle` that records each batch and, for the requests named in `gated`,
    reports that it is running them and waits until the test opens their gate."""

    def __init__(self, *gated: str):
        self.gates = {name: threading.Event() for name in gated}
        self.running: queue.Queue[str] = queue.Queue()
        self.seen: list[list[str]] = []

    def __call__(self, requests: list[str]) -> list:
        self.seen.append(list(requests))
        for request in requests:
            if request in self.gates:
                self.running.put(request)
                self.gates[request].wait(10)
        return [ValueError(r) if r.startswith("bad") else r.upper() for r in requests]

    async def wait_running(self) -> str:
        return await asyncio.to_thread(self.running.get, True, 10)

    def open_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


@pytest.mark.anyio
async def test_batcher_stop_past_its_timeout_fails_the_running_batch_and_the_queue():
    """A batch still running when stop's timeout ends is cancelled; its callers and the ones
    queued behind it get BatcherClosed (none is left waiting forever)."""
    handle = GatedHandle("a")
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher("test", handle, executor, max_batch=1, max_wait_ms=0)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit("a"))
        assert await handle.wait_running() == "a"
        queued = asyncio.ensure_future(batcher.submit("b"))
        await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        await batcher.stop(timeout_s=0.2)
        stopped = asyncio.get_running_loop().time() - started
        for caller in (running, queued):
            with pytest.raises(BatcherClosed):
                await asyncio.wait_for(caller, 2)
        assert 0.2 <= stopped < 2.0
        assert batcher._task is None
        with pytest.raises(BatcherClosed):
            await batcher.submit("c")
        handle.open_all()  # the executor thread finishes the abandoned call
    assert handle.seen == [["a"]]


@pytest.mark.anyio
async def test_batcher_skips_callers_that_left_and_discards_results_nobody_waits_for():
    """A request whose caller went away before its batch ran is never handled; one whose caller
    went away while it ran has its result handed to `discard` (errors are not); the batcher
    goes on serving the others."""
    handle = GatedHandle("a", "bad-x")
    discarded: list[tuple[str, str]] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher("test", handle, executor, max_batch=1, max_wait_ms=0,
                               discard=lambda request, result: discarded.append((request, result)))
        batcher.start()
        running = asyncio.ensure_future(batcher.submit("a"))
        assert await handle.wait_running() == "a"
        left_in_queue = asyncio.ensure_future(batcher.submit("b"))
        await asyncio.sleep(0.01)
        left_in_queue.cancel()
        running.cancel()  # its caller leaves while "a" is being handled
        handle.gates["a"].set()
        failing = asyncio.ensure_future(batcher.submit("bad-x"))
        assert await handle.wait_running() == "bad-x"
        failing.cancel()
        handle.gates["bad-x"].set()
        assert await batcher.submit("c") == "C"
        await batcher.stop()
    assert handle.seen == [["a"], ["bad-x"], ["c"]]  # "b" was never handled
    assert discarded == [("a", "A")]  # "bad-x" failed: nothing to give back


@pytest.mark.anyio
async def test_batcher_a_failing_batch_fails_its_callers_only():
    """`handle` raising, or returning the wrong number of results, fails every caller of that
    batch with the error, and the next batch is served."""
    calls = []

    def handle(requests):
        calls.append(list(requests))
        if "boom" in requests:
            raise RuntimeError("boom")
        return requests[:-1] if "short" in requests else [r.upper() for r in requests]

    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher("test", handle, executor, max_batch=2, max_wait_ms=50, adaptive_wait=False)
        with pytest.raises(BatcherClosed):
            await batcher.submit("early")  # not started yet
        batcher.start()

        def both(a, b):  # never waits forever, should the batcher die
            return asyncio.wait_for(asyncio.gather(batcher.submit(a), batcher.submit(b), return_exceptions=True), 5)

        assert [type(r) for r in await both("boom", "x")] == [RuntimeError, RuntimeError]
        results = await both("short", "y")
        assert all(isinstance(r, RuntimeError) and "1 results for 2 requests" in str(r) for r in results), results
        assert await both("p", "q") == ["P", "Q"]
        await batcher.stop()
    assert calls == [["boom", "x"], ["short", "y"], ["p", "q"]]
