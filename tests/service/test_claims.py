"""Faults between a mint's claim (SET NX of a pending marker) and its commit (one Lua script),
injected for real: a TCP proxy between a replica and Redis holds a command or loses its reply
after Redis ran it, a second replica commits the same item while the first one's commit is on
the wire, a replica process is SIGKILLed in the middle of a mint. In each case no ID is handed out twice, and none
stays unusable: an orphaned claim expires after GENREC_PENDING_CLAIM_TTL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from service.engine import MintJob, texts_for
from service.registry import namespace

from .conftest import assert_error, metric_value, serve, wait_until
from .redis_server import registry_contents
from .tcp_proxy import TcpProxy, ThreadedProxy
from .test_lifecycle import CliService, cli_env

TITLE = {"title": "fresh space story"}
COMMIT = b"redis.call('XADD'"  # a piece of the commit script, which only the commit sends


@pytest.fixture
async def proxy(redis_url):
    """A TCP proxy in front of the test Redis (one replica talks to Redis through it)."""
    proxy = TcpProxy(urlsplit(redis_url).port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def minted(redis_url: str, catalog: str) -> dict:
    """What the mints left in Redis: pending claims, the claims of minted items, the events."""
    contents = registry_contents(redis_url, catalog)
    minted_items = {i for i, record in contents["items"].items() if record["source"] == "minted"}
    return {
        "pending": {t: v for t, v in contents["tids"].items() if v.startswith("pending:")},
        "tids": {t: v for t, v in contents["tids"].items() if v in minted_items},
        "items": {i: contents["items"][i] for i in minted_items},
        "events": contents["events"],
    }


def tid_key(catalog: str, textual_id: str) -> str:
    return f"{namespace(catalog)}tid:{textual_id}"


# --------------------------------------------------------------------------- in-process replicas


@pytest.mark.anyio
async def test_a_concurrent_commit_wins_and_the_loser_gives_its_claim_back(
    make_settings, proxy, redis_url, catalog_name
):
    """Replica A's commit is held on the wire; replica B commits the same item meanwhile. A's
    commit script finds the item: A answers with B's ID and its claim is given back."""
    settings_a = make_settings(redis_url=proxy.url_for(redis_url), redis_timeout_s=20.0)
    async with serve(settings_a) as (app_a, a), serve(make_settings()) as (_app_b, b):
        held = proxy.hold(COMMIT)
        posting = asyncio.ensure_future(a.post("/v1/items", json={"item_id": "race-1", "metadata": TITLE}))
        assert await asyncio.to_thread(held.wait, 20), "A never sent its commit"
        claim_a = minted(redis_url, catalog_name)["pending"]
        assert len(claim_a) == 1  # A has claimed its ID
        won = await b.post("/v1/items", json={"item_id": "race-1", "metadata": TITLE})
        assert won.status_code == 201, won.text
        assert won.json()["textual_id"] not in claim_a  # A's claim kept B off A's ID
        await proxy.release_held()
        released = time.monotonic()
        lost = await asyncio.wait_for(posting, 20)
        answered = time.monotonic() - released
    assert lost.status_code == 200, lost.text
    assert lost.json()["textual_id"] == won.json()["textual_id"] and lost.json()["created"] is False
    left = minted(redis_url, catalog_name)
    assert left["pending"] == {}  # A's claim was given back, not left to expire
    assert left["tids"] == {won.json()["textual_id"]: "race-1"} and left["events"] == 1
    assert app_a.state.service.catalog.textual_id("race-1") == won.json()["textual_id"]
    print(f"\nCommit after a concurrent one: A answered 200 with B's ID {answered:.3f} s after its commit went on")


@pytest.mark.anyio
async def test_a_commit_whose_reply_is_lost_answers_with_the_id_it_committed(
    make_settings, proxy, redis_url, catalog_name
):
    """Redis ran the commit script, and the connection died before its reply came back: the
    client runs it again, which finds the replica's own record, and it answers 201 with that ID (not a 503 that would make the
    client mint again, not a second ID)."""
    async with serve(make_settings(redis_url=proxy.url_for(redis_url))) as (app, client):
        lost = proxy.lose_reply(COMMIT)
        started = time.monotonic()
        response = await client.post("/v1/items", json={"item_id": "lost-exec", "metadata": TITLE})
        took = time.monotonic() - started
        assert lost.is_set(), "the commit's reply was not lost"
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["created"] is True
        again = await client.post("/v1/items", json={"item_id": "lost-exec", "metadata": TITLE})
        assert again.status_code == 200 and again.json()["textual_id"] == body["textual_id"]
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "genrec_items_minted_total") == 1
        assert app.state.service.catalog.textual_id("lost-exec") == body["textual_id"]
    left = minted(redis_url, catalog_name)
    assert left["pending"] == {} and left["tids"] == {body["textual_id"]: "lost-exec"} and left["events"] == 1
    print(f"\nCommit reply lost: answered 201 with the committed ID in {took:.2f} s")


@pytest.mark.anyio
async def test_a_claim_whose_reply_is_lost_is_still_taken_as_ours(make_settings, proxy, redis_url, catalog_name):
    """The SET NX ran but its reply was lost; the client's retry finds the ID taken, by this
    very claim: the mint keeps that ID instead of leaving it claimed and taking another."""
    async with serve(make_settings(redis_url=proxy.url_for(redis_url))) as (_app, client):
        lost = proxy.lose_reply(b"pending:")
        response = await client.post("/v1/items", json={"item_id": "lost-claim", "metadata": TITLE})
        assert lost.is_set(), "the claim's reply was not lost"
        assert response.status_code == 201, response.text
    left = minted(redis_url, catalog_name)
    assert left["pending"] == {}  # no orphaned claim on the first candidate
    assert left["tids"] == {response.json()["textual_id"]: "lost-claim"}


@pytest.mark.anyio
async def test_a_mint_slower_than_the_claim_ttl_commits_unless_the_id_was_taken_meanwhile(
    make_settings, redis_url, catalog_name
):
    """A pending claim expires after the TTL. A mint that outlived it still commits when nobody
    took the ID meanwhile, and gets 503 (retry) when somebody did, whose claim stays theirs."""
    ttl_s = 0.3
    async with serve(make_settings(pending_claim_ttl_s=ttl_s)) as (app, client):
        method = app.state.service.engine.method
        real_mint = method.mint
        seen: list[tuple[str, int]] = []
        steal = {"on": False}

        def slow_mint(items, claim):
            result = real_mint(items, claim)
            key = tid_key(catalog_name, result[0].textual_id)
            with redis.Redis.from_url(redis_url) as r:
                seen.append((result[0].textual_id, r.pttl(key)))
                time.sleep(ttl_s + 0.3)  # the claim expires
                if steal["on"]:
                    assert r.set(key, "pending:somebody-else", nx=True)
            return result

        method.mint = slow_mint
        kept = await client.post("/v1/items", json={"item_id": "slow-1", "metadata": TITLE})
        assert kept.status_code == 201, kept.text
        assert seen[0][0] == kept.json()["textual_id"] and 0 < seen[0][1] <= ttl_s * 1000
        steal["on"] = True
        # Other metadata: a repeat of slow-1's would skip the method (straight to a suffix).
        other = {"title": "another tale of the sea"}
        refused = await client.post("/v1/items", json={"item_id": "slow-2", "metadata": other})
        assert_error(refused, 503, "store_unavailable")
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.pttl(tid_key(catalog_name, kept.json()["textual_id"])) == -1  # committed: no expiry
        assert r.get(tid_key(catalog_name, seen[1][0])) == "pending:somebody-else"
    left = minted(redis_url, catalog_name)
    assert set(left["items"]) == {"slow-1"} and left["events"] == 1


@pytest.mark.anyio
async def test_a_mint_nobody_waits_for_any_more_gives_its_claim_back(make_settings, redis_url, catalog_name):
    """The mint batcher's discard path: a mint whose waiter was cancelled while it ran releases
    the claim it made, and commits nothing."""
    async with serve(make_settings()) as (app, _client):
        state = app.state.service
        claimed, gate = threading.Event(), threading.Event()
        real_handle = state.mint_batcher.handle

        def gated(jobs):
            results = real_handle(jobs)  # claims made
            claimed.set()
            gate.wait(10)
            return results

        state.mint_batcher.handle = gated
        text, vocabulary = texts_for(TITLE, state.engine.max_text_chars)
        waiter = asyncio.ensure_future(state.mint_batcher.submit(MintJob("gone-1", text, vocabulary)))
        assert await asyncio.to_thread(claimed.wait, 10)
        assert len(minted(redis_url, catalog_name)["pending"]) == 1
        waiter.cancel()
        gate.set()
        assert await wait_until(lambda: not minted(redis_url, catalog_name)["pending"], timeout_s=5)
    left = minted(redis_url, catalog_name)
    assert left == {"pending": {}, "tids": {}, "items": {}, "events": 0}


# --------------------------------------------------------------------------- a replica process


def test_a_replica_killed_between_claim_and_commit_frees_its_id_after_the_ttl(
    bundle_path, redis_url, catalog_name, make_settings, tmp_path
):
    """A genrec-serve process claims an ID, its commit is held on the wire, and it is
    SIGKILLed: its claim outlives it, expires after GENREC_PENDING_CLAIM_TTL_S, and another
    replica then mints that very ID for the item."""
    ttl_s = 2.0
    log = tmp_path / "replica.log"
    body = {"item_id": "orphan-1", "metadata": TITLE}
    with ThreadedProxy(urlsplit(redis_url).port) as proxy:
        env = cli_env(proxy.url_for(redis_url), catalog_name, GENREC_PENDING_CLAIM_TTL_S=str(ttl_s),
                      GENREC_REDIS_TIMEOUT_S="30")
        with CliService(bundle_path, env, log) as service:
            service.wait_ready()
            process = service.process
            held = proxy.hold(COMMIT)
            poster = threading.Thread(target=_post_quietly, args=(f"{service.base_url}/v1/items", body))
            poster.start()
            assert held.wait(60), f"the replica never committed:\n{log.read_text()}"
            [(textual_id, marker)] = minted(redis_url, catalog_name)["pending"].items()
            process.kill()
            process.wait(10)
            killed = time.monotonic()
            poster.join(30)
    key = tid_key(catalog_name, textual_id)
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        left_ms = r.pttl(key)
        assert r.get(key) == marker and 0 < left_ms <= ttl_s * 1000  # the dead replica's claim ...
        while r.exists(key) and time.monotonic() - killed < ttl_s + 5:
            time.sleep(0.02)
        freed = time.monotonic() - killed
        assert not r.exists(key), "the orphaned claim never expired"  # ... is gone after the TTL

    async def mint_elsewhere() -> httpx.Response:
        async with serve(make_settings()) as (_app, client):
            return await client.post("/v1/items", json=body)

    again = asyncio.run(mint_elsewhere())
    assert again.status_code == 201, again.text
    assert again.json()["textual_id"] == textual_id  # the ID is usable again
    left = minted(redis_url, catalog_name)
    assert left["pending"] == {} and left["tids"] == {textual_id: "orphan-1"} and left["events"] == 1
    print(f"\nSIGKILLed replica's claim on {textual_id!r}: {left_ms} ms of TTL left at the kill, "
          f"gone {freed:.2f} s after it; minted again by another replica")


def _post_quietly(url: str, body: dict) -> None:
    """A client whose replica dies under it."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=60)
