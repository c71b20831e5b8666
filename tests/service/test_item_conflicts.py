"""A re-post of an existing item: the same metadata answers 200 with its ID; other metadata
answers 409 `item_conflict` with both metadata digests, and nothing is stored. Two posts of one
item with different metadata at once, on one replica or on two, end with one item: one 201 and
one 409, whichever wins, including when the loser's commit is already on the wire."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from .conftest import assert_error, catalog_metadata, serve
from .redis_server import registry_contents
from .test_claims import COMMIT, minted, proxy  # noqa: F401 (proxy is a fixture)

pytestmark = pytest.mark.anyio

FIRST = {"title": "fresh space story", "year": 2026, "genres": ["drama", "comedy"]}
OTHER = {"title": "fresh space story", "year": 2027, "genres": ["drama", "comedy"]}


def digest(metadata: dict) -> str:
    """The documented digest (docs/api.md, "Add an item"), computed here on its own: sha256 of
    the canonical JSON (keys sorted, no spaces, UTF-8; these metadata hold no integral floats)."""
    return hashlib.sha256(json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode()).hexdigest()


def post(client, item_id: str, metadata: dict):
    return client.post("/v1/items", json={"item_id": item_id, "metadata": metadata})


async def test_other_metadata_is_a_409_naming_both_digests_and_stores_nothing(make_settings, redis_url, catalog_name):
    async with serve(make_settings()) as (_app, client):
        created = await post(client, "c-1", FIRST)
        assert created.status_code == 201, created.text
        before = registry_contents(redis_url, catalog_name)
        error = assert_error(await post(client, "c-1", OTHER), 409, "item_conflict")
        assert error["details"] == {"item_id": "c-1", "textual_id": created.json()["textual_id"],
                                    "existing_metadata_digest": digest(FIRST), "posted_metadata_digest": digest(OTHER)}
        assert "other metadata" in error["message"]
        assert registry_contents(redis_url, catalog_name) == before
        assert (await client.get("/v1/items/c-1")).json()["metadata"] == FIRST


async def test_the_same_metadata_again_is_200_with_the_existing_id(make_settings):
    """The same metadata in another key order, or a year sent as 2026.0, is the same metadata."""
    async with serve(make_settings()) as (_app, client):
        created = await post(client, "c-2", FIRST)
        assert created.status_code == 201, created.text
        for again in (FIRST, dict(reversed(FIRST.items())), {**FIRST, "year": 2026.0}):
            response = await post(client, "c-2", again)
            assert response.status_code == 200, response.text
            assert response.json() == {**created.json(), "created": False}


async def test_a_bundle_item_posted_is_a_409(make_settings, redis_url, catalog_name):
    """A bundle item's metadata were never posted (the bundle holds its text): any post of one
    is a conflict, with no existing digest."""
    async with serve(make_settings()) as (_app, client):
        before = registry_contents(redis_url, catalog_name)
        error = assert_error(await post(client, "m7", catalog_metadata()[7]), 409, "item_conflict")
        assert error["details"]["existing_metadata_digest"] is None
        assert error["details"]["posted_metadata_digest"] == digest(catalog_metadata()[7])
        assert "bundle" in error["message"]
        assert registry_contents(redis_url, catalog_name) == before


async def test_one_replica_posting_one_item_twice_at_once(make_settings, redis_url, catalog_name):
    """The second post waits for the first one's mint, then compares."""
    async with serve(make_settings()) as (_app, client):
        answers = await asyncio.gather(post(client, "c-3", FIRST), post(client, "c-3", OTHER))
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    won = FIRST if answers[0].status_code == 201 else OTHER
    stored = registry_contents(redis_url, catalog_name)["items"]["c-3"]
    assert json.loads(stored["metadata"]) == won


async def test_two_replicas_posting_one_item_with_different_metadata_at_once(make_settings, redis_url, catalog_name):
    """Whichever replica commits first wins; the other answers 409 naming the winner's digest.
    With the same metadata, both answer with the one ID."""
    async with serve(make_settings()) as (_a, a), serve(make_settings()) as (_b, b):
        for n in range(4):
            item_id = f"race-{n}"
            answers = await asyncio.gather(post(a, item_id, FIRST), post(b, item_id, OTHER))
            assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
            won, lost = sorted(answers, key=lambda r: r.status_code)
            winner = FIRST if won is answers[0] else OTHER
            assert lost.json()["error"]["details"]["existing_metadata_digest"] == digest(winner)
            stored = registry_contents(redis_url, catalog_name)["items"][item_id]
            assert json.loads(stored["metadata"]) == winner and stored["textual_id"] == won.json()["textual_id"]
        same = await asyncio.gather(post(a, "same-1", FIRST), post(b, "same-1", FIRST))
        assert sorted(r.status_code for r in same) == [200, 201]
        assert same[0].json()["textual_id"] == same[1].json()["textual_id"]
    left = minted(redis_url, catalog_name)
    assert left["pending"] == {} and left["events"] == 5


async def test_the_replica_whose_commit_loses_the_race_answers_409(make_settings, proxy, redis_url,  # noqa: F811
                                                                   catalog_name):
    """Replica A has minted and claimed an ID and its commit is on the wire (held) when replica
    B commits the item with other metadata: A's commit script finds B's item, A answers 409
    and gives its claim back; Redis holds B's item alone."""
    async with serve(make_settings(redis_url=proxy.url_for(redis_url), redis_timeout_s=20.0)) as (_app_a, a), \
            serve(make_settings()) as (_app_b, b):
        held = proxy.hold(COMMIT)
        posting = asyncio.ensure_future(post(a, "held-1", FIRST))
        assert await asyncio.to_thread(held.wait, 20), "A never sent its commit"
        won = await post(b, "held-1", OTHER)
        assert won.status_code == 201, won.text
        await proxy.release_held()
        lost = await asyncio.wait_for(posting, 20)
    error = assert_error(lost, 409, "item_conflict")
    assert error["details"]["existing_metadata_digest"] == digest(OTHER)
    assert error["details"]["posted_metadata_digest"] == digest(FIRST)
    left = minted(redis_url, catalog_name)
    assert left["pending"] == {}  # A's claim was given back
    assert left["tids"] == {won.json()["textual_id"]: "held-1"} and left["events"] == 1
    assert json.loads(left["items"]["held-1"]["metadata"]) == OTHER
