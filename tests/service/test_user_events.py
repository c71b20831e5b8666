"""Users' events and recommendations for a user (issue 16, points 1 and 2), through httpx against
real Redis: events kept in timestamp order, capped, stored once per event id, refused whole for an
unknown item; two replicas share a user's history; a recommendation by user_id reads the stored
events (a history in the request wins); an empty history gets the bundle's popularity list."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time

import pytest
import redis

import genrec.idgenrec.method as idgenrec_method
from genrec.bundle import read_items
from service.registry import namespace

from .conftest import N_ITEMS, assert_error, catalog_metadata, catalog_popularity, serve

pytestmark = pytest.mark.anyio

HISTORY_LENGTH = 10  # the test bundle's data.max_history: what its IDGenRec reads
KEEP = 2 * HISTORY_LENGTH  # events kept per user at the default GENREC_USER_EVENTS_FACTOR


@pytest.fixture
async def client(make_settings):
    async with serve(make_settings(max_history=6, max_events_per_request=40)) as (_app, client):
        yield client


@pytest.fixture
def snapshot(redis_url, catalog_name):
    """Every key of the catalog's namespace with its value (sorted sets with their scores)."""
    prefix = namespace(catalog_name)

    def take() -> dict:
        with redis.Redis.from_url(redis_url, decode_responses=True) as r:
            out = {}
            for key in r.scan_iter(match=f"{prefix}*", count=1000):
                kind = r.type(key)
                if kind == "zset":
                    out[key] = r.zrange(key, 0, -1, withscores=True)
                elif kind == "string":
                    out[key] = r.get(key)
                else:
                    out[key] = kind
            return out

    return take


def event(user: str, item: str, timestamp: float | None = None, event_id: str | None = None) -> dict:
    body = {"user_id": user, "item_id": item}
    if timestamp is not None:
        body["timestamp"] = timestamp
    if event_id is not None:
        body["event_id"] = event_id
    return body


async def post_events(client, *events: dict, status: int = 200) -> dict:
    response = await client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == status, response.text
    return response.json()


async def stored(client, user: str) -> list[tuple[str, float]]:
    response = await client.get(f"/v1/users/{user}/events")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == user
    return [(e["item_id"], e["timestamp"]) for e in body["events"]]


def popular_top(k: int, exclude=()) -> list[str]:
    counts = {item: c for item, c in catalog_popularity().items() if c > 0 and item not in exclude}
    return sorted(counts, key=lambda item: (-counts[item], item))[:k]


# --------------------------------------------------------------------------- storing events


async def test_events_are_kept_in_timestamp_order_whatever_order_they_come_in(client):
    assert await post_events(client, event("u1", "m3", 300), event("u1", "m1", 100.5)) == {
        "accepted": 2, "duplicates": 0}
    # A late event lands in its place; equal timestamps keep their arrival order.
    await post_events(client, event("u1", "m2", 200), event("u1", "m5", 300), event("u1", "m4", 300))
    assert await stored(client, "u1") == [("m1", 100.5), ("m2", 200), ("m3", 300), ("m5", 300), ("m4", 300)]


async def test_an_event_without_a_timestamp_is_stamped_when_received(client):
    before = time.time()
    await post_events(client, event("u2", "m7"), event("u2", "m8"), event("u2", "m1", 50))
    after = time.time()
    events = await stored(client, "u2")
    assert [item for item, _ in events] == ["m1", "m7", "m8"]  # the batch's order among the stamped ones
    assert events[1][1] == events[2][1]
    assert before - 1 <= events[1][1] <= after + 1  # the Redis clock, on this machine


async def test_an_unknown_user_has_an_empty_history(client):
    assert await stored(client, "nobody-yet") == []


async def test_user_ids_with_slashes_and_unicode_round_trip(client):
    user = "shop/42 ünï"
    await post_events(client, event(user, "m2", 5))
    response = await client.get("/v1/users/shop%2F42%20%C3%BCn%C3%AF/events")
    assert response.json() == {"user_id": user, "events": [{"item_id": "m2", "timestamp": 5.0}]}
    assert (await client.get("/v1/users/shop/42 ünï/events")).json()["user_id"] == user


async def test_each_user_keeps_the_latest_events_up_to_the_cap(client):
    """KEEP = 2 x the model's history length; the newest by timestamp stay, whatever the order of
    arrival, and an event older than all of a full history is accepted but not kept."""
    events = [event("u3", f"m{i % N_ITEMS}", 1000 + i) for i in range(KEEP + 5)]
    assert (await post_events(client, *events[5:]))["accepted"] == KEEP
    assert (await post_events(client, *events[:5]))["accepted"] == 5
    kept = await stored(client, "u3")
    assert len(kept) == KEEP
    assert kept == [(e["item_id"], e["timestamp"]) for e in events[5:]]
    await post_events(client, event("u3", "m39", 5000))
    assert (await stored(client, "u3"))[-1] == ("m39", 5000) and len(await stored(client, "u3")) == KEEP


async def test_the_cap_follows_the_factor_setting(make_settings):
    async with serve(make_settings(user_events_factor=1)) as (_app, client):
        await post_events(client, *[event("u", f"m{i}", i) for i in range(HISTORY_LENGTH + 3)])
        assert [item for item, _ in await stored(client, "u")] == [f"m{i}" for i in range(3, HISTORY_LENGTH + 3)]


async def test_a_repeated_event_id_is_stored_once(client):
    first = await post_events(client, event("u4", "m1", 10, "e-1"), event("u4", "m2", 20, "e-2"),
                              event("u4", "m1", 10, "e-1"))
    assert first == {"accepted": 2, "duplicates": 1}
    again = await post_events(client, event("u4", "m2", 20, "e-2"), event("u4", "m3", 30, "e-3"))
    assert again == {"accepted": 1, "duplicates": 1}
    # Event ids are the user's own: the same id from another user is another event.
    assert await post_events(client, event("u5", "m2", 20, "e-2")) == {"accepted": 1, "duplicates": 0}
    # Without an event id, a repeat is a new interaction (the same item again).
    await post_events(client, event("u4", "m3", 30))
    assert await stored(client, "u4") == [("m1", 10), ("m2", 20), ("m3", 30), ("m3", 30)]


async def test_event_ids_are_forgotten_after_their_ttl_and_past_the_per_user_cap(make_settings):
    async with serve(make_settings(event_id_ttl_s=0.3, event_ids_per_user=2)) as (_app, client):
        assert (await post_events(client, event("u", "m1", 1, "a")))["accepted"] == 1
        assert (await post_events(client, event("u", "m1", 1, "a")))["duplicates"] == 1
        await asyncio.sleep(0.4)
        assert (await post_events(client, event("u", "m1", 1, "a")))["accepted"] == 1  # past the TTL
        await post_events(client, event("u", "m2", 2, "b"), event("u", "m3", 3, "c"))
        assert (await post_events(client, event("u", "m1", 1, "a")))["accepted"] == 1  # past the newest 2
        assert (await post_events(client, event("u", "m3", 3, "c")))["duplicates"] == 1


async def test_an_unknown_item_refuses_the_whole_batch_and_writes_nothing(client, snapshot):
    await post_events(client, event("u6", "m1", 1, "e-1"))
    before = snapshot()
    response = await client.post("/v1/events", json={"events": [
        event("u6", "m2", 2, "e-2"), event("u7", "nope", 3), event("u6", "gone", 4), event("u8", "nope", 5)]})
    error = assert_error(response, 422, "unknown_items")
    assert error["details"]["item_ids"] == ["nope", "gone"]
    assert snapshot() == before
    assert (await post_events(client, event("u6", "m2", 2, "e-2")))["accepted"] == 1  # e-2 was not remembered


async def test_an_item_minted_on_another_replica_is_accepted_at_once(make_settings):
    async with serve(make_settings()) as (_a, first), serve(make_settings()) as (b_app, second):
        await b_app.state.service.follower.stop()  # second learns the item only by asking Redis
        created = await first.post("/v1/items", json={"item_id": "fresh-1", "metadata": {"title": "fresh entry"}})
        assert created.status_code == 201, created.text
        assert (await post_events(second, event("u", "fresh-1", 1)))["accepted"] == 1


async def test_two_replicas_see_the_same_user_history(make_settings):
    async with serve(make_settings()) as (_a, first), serve(make_settings()) as (_b, second):
        await post_events(first, event("shared", "m1", 1), event("shared", "m2", 3))
        await post_events(second, event("shared", "m3", 2, "x"))
        assert await stored(first, "shared") == await stored(second, "shared") == [
            ("m1", 1), ("m3", 2), ("m2", 3)]
        by_user = {"user_id": "shared", "k": 4}
        answers = [(await c.post("/v1/recommendations", json=by_user)).json() for c in (first, second)]
        assert answers[0]["items"] == answers[1]["items"] and answers[0]["strategy"] == "model"
        # The event id second saw is a duplicate on first too.
        assert (await post_events(first, event("shared", "m3", 2, "x")))["duplicates"] == 1


# --------------------------------------------------------------------------- recommendations by user


@pytest.fixture
def queries(monkeypatch):
    """The queries the bundle's method is asked (it still answers them)."""
    seen = []
    recommend = idgenrec_method.IdGenRec.recommend

    def spy(self, batch, k, trie, cache=None):
        seen.extend(batch)
        return recommend(self, batch, k, trie, cache)

    monkeypatch.setattr(idgenrec_method.IdGenRec, "recommend", spy)
    return seen


async def test_a_user_id_without_a_history_reads_the_stored_events(client, queries):
    await post_events(client, event("u9", "m4", 40), event("u9", "m2", 20), event("u9", "m3", 30))
    by_user = await client.post("/v1/recommendations", json={"user_id": "u9", "k": 5})
    assert by_user.status_code == 200, by_user.text
    assert queries[-1].history == ("m2", "m3", "m4") and queries[-1].user_id == "u9"
    assert set(queries[-1].exclude) == {"m2", "m3", "m4"}
    explicit = await client.post("/v1/recommendations", json={"history": ["m2", "m3", "m4"], "k": 5})
    assert by_user.json()["items"] == explicit.json()["items"]
    assert by_user.json()["strategy"] == explicit.json()["strategy"] == "model"


async def test_the_stored_history_is_cut_to_the_latest_max_history(client, queries):
    await post_events(client, *[event("u10", f"m{i}", i) for i in range(9)])  # max_history is 6 here
    assert (await client.post("/v1/recommendations", json={"user_id": "u10", "k": 3})).status_code == 200
    assert queries[-1].history == tuple(f"m{i}" for i in range(3, 9))


async def test_a_history_in_the_request_wins_over_the_stored_one(client, queries):
    await post_events(client, event("u11", "m1", 1), event("u11", "m2", 2))
    response = await client.post("/v1/recommendations", json={"user_id": "u11", "history": ["m7"], "k": 3})
    assert response.status_code == 200, response.text
    assert queries[-1].history == ("m7",) and queries[-1].user_id == "u11"
    # An empty history given wins too: the popular answer, not the stored events.
    empty = (await client.post("/v1/recommendations", json={"user_id": "u11", "history": [], "k": 3})).json()
    assert empty["strategy"] == "popular" and len(queries) == 1


# --------------------------------------------------------------------------- new users: the popular answer


@pytest.mark.parametrize("body", [{"history": []}, {"user_id": "brand-new"}, {}], ids=["empty", "new-user", "none"])
async def test_an_empty_history_gets_the_bundles_most_popular_items(client, bundle_path, queries, body):
    textual = {i.item_id: i.textual_id for i in read_items(bundle_path)}
    response = await client.post("/v1/recommendations", json={**body, "k": 5})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["strategy"] == "popular"
    assert [i["item_id"] for i in answer["items"]] == popular_top(5)
    total = sum(catalog_popularity().values())
    for item in answer["items"]:
        assert item["textual_id"] == textual[item["item_id"]]
        assert item["score"] == pytest.approx(catalog_popularity()[item["item_id"]] / total)
    assert answer["model"]["kind"] == "idgenrec"
    assert queries == []  # the model was not asked


async def test_the_popular_answer_keeps_to_the_filter_and_the_exclusions(client):
    """A new user's answer obeys the same filter and exclude_items as a model's answer."""
    comedies = {f"m{i}" for i, m in enumerate(catalog_metadata()) if "comedy" in m["genres"]}
    excluded = [item for item in popular_top(40) if item in comedies][:2]
    body = {"history": [], "k": 5, "filter": {"genres": ["Comedy"]}, "exclude_items": excluded}
    answer = (await client.post("/v1/recommendations", json=body)).json()
    assert answer["strategy"] == "popular"
    expected = [item for item in popular_top(40, exclude=excluded) if item in comedies][:5]
    assert [i["item_id"] for i in answer["items"]] == expected and len(expected) == 5


async def test_the_popular_answer_stops_at_the_items_with_interactions(client):
    with_counts = sum(1 for c in catalog_popularity().values() if c > 0)
    answer = (await client.post("/v1/recommendations", json={"history": [], "k": 100})).json()
    assert [i["item_id"] for i in answer["items"]] == popular_top(100) and len(answer["items"]) == with_counts


async def test_a_bundle_without_a_popularity_list_answers_an_empty_popular_list(make_settings, bundle_path,
                                                                                tmp_path, caplog):
    """A bundle written before popularity lists still serves; the start says what is missing."""
    old = tmp_path / "old-bundle"
    shutil.copytree(bundle_path, old)
    (old / "popularity.json").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["popularity.json"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="service"):
        async with serve(make_settings(bundle=old)) as (_app, client):
            answer = (await client.post("/v1/recommendations", json={"user_id": "new", "k": 3})).json()
            assert answer["items"] == [] and answer["strategy"] == "popular"
            model = (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 3})).json()
            assert len(model["items"]) == 3 and model["strategy"] == "model"
    assert "no popularity list" in caplog.text


# --------------------------------------------------------------------------- bad input


def many(n: int) -> list[dict]:
    return [event("u", "m1", i) for i in range(n)]


BAD_EVENTS = [
    pytest.param({}, "events", id="no-events"),
    pytest.param({"events": []}, "events", id="empty"),
    pytest.param({"events": many(41)}, "events", id="41-events-max-40"),
    pytest.param({"events": "m1"}, "events", id="not-a-list"),
    pytest.param({"events": [{"item_id": "m1"}]}, "events.0.user_id", id="no-user"),
    pytest.param({"events": [{"user_id": "u"}]}, "events.0.item_id", id="no-item"),
    pytest.param({"events": [event("u", "m1"), {"user_id": 7, "item_id": "m1"}]}, "events.1.user_id",
                 id="int-user"),
    pytest.param({"events": [{"user_id": "u", "item_id": 1}]}, "events.0.item_id", id="int-item"),
    pytest.param({"events": [{"user_id": "", "item_id": "m1"}]}, "events.0.user_id", id="empty-user"),
    pytest.param({"events": [{"user_id": "u" * 257, "item_id": "m1"}]}, "events.0.user_id", id="user-257-chars"),
    pytest.param({"events": [{"user_id": "u\n1", "item_id": "m1"}]}, "events.0.user_id", id="user-newline"),
    pytest.param({"events": [{"user_id": "u", "item_id": "m\x001"}]}, "events.0.item_id", id="item-nul"),
    pytest.param({"events": [event("u", "m1", event_id="e\x1b")]}, "events.0.event_id", id="event-id-escape"),
    pytest.param({"events": [event("u", "m1", event_id="e" * 129)]}, "events.0.event_id", id="event-id-129"),
    pytest.param({"events": [event("u", "m1", event_id="")]}, "events.0.event_id", id="event-id-empty"),
    pytest.param({"events": [{"user_id": "u", "item_id": "m1", "timestamp": "5"}]}, "events.0.timestamp",
                 id="timestamp-string"),
    pytest.param({"events": [{"user_id": "u", "item_id": "m1", "timestamp": True}]}, "events.0.timestamp",
                 id="timestamp-bool"),
    pytest.param({"events": [event("u", "m1", -1)]}, "events.0.timestamp", id="timestamp-negative"),
    pytest.param({"events": [event("u", "m1", 1e13)]}, "events.0.timestamp", id="timestamp-past-9999"),
    pytest.param({"events": [{**event("u", "m1"), "rating": 5}]}, "events.0.rating", id="extra-field"),
    pytest.param({"events": [event("u", "m1")], "more": 1}, "more", id="extra-top-field"),
]


@pytest.mark.parametrize("body, field", BAD_EVENTS)
async def test_bad_events_are_422_naming_the_field_and_write_nothing(client, snapshot, body, field):
    before = snapshot()
    error = assert_error(await client.post("/v1/events", json=body), 422, "invalid_request")
    assert field in [f["field"] for f in error["details"]["fields"]], error
    assert snapshot() == before


async def test_events_not_json_or_too_large(client, snapshot):
    before = snapshot()
    assert_error(await client.post("/v1/events", content=b"{nope", headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(await client.post("/v1/events", content=b"user_id=u", headers={"content-type": "text/plain"}),
                 415, "unsupported_media_type")
    big = {"events": [event("u" * 256, "m1", 1, "e" * 128) for _ in range(40)]}  # within the cap, over 16 KiB
    assert_error(await client.post("/v1/events", json=big), 413, "payload_too_large")
    for infinite in (b"Infinity", b"NaN", b"1e999"):
        body = b'{"events": [{"user_id": "u", "item_id": "m1", "timestamp": ' + infinite + b"}]}"
        response = await client.post("/v1/events", content=body, headers={"content-type": "application/json"})
        assert response.status_code in (400, 422), response.text
    assert snapshot() == before


@pytest.mark.parametrize("path", ["/v1/users/u%091/events", "/v1/users/u%7F/events", "/v1/users/%C2%85/events",
                                  "/v1/users/" + "u" * 257 + "/events"])
async def test_a_bad_user_id_in_the_path_is_422(client, path):
    error = assert_error(await client.get(path), 422, "invalid_request")
    assert "user_id" in error["message"]


async def test_a_newline_in_the_path_matches_no_route(client):
    """As for /v1/items/{item_id}: the router's path parameters never span a line break."""
    assert_error(await client.get("/v1/users/u%0A1/events"), 404, "not_found")


@pytest.mark.parametrize("body, field", [
    ({"user_id": ""}, "user_id"),
    ({"user_id": "u\t1"}, "user_id"),
    ({"user_id": 42}, "user_id"),
    ({"history": None, "user_id": "u" * 257}, "user_id"),
    ({"history": "m1"}, "history"),
])
async def test_recommendations_by_user_bad_input(client, body, field):
    error = assert_error(await client.post("/v1/recommendations", json=body), 422, "invalid_request")
    assert field in [f["field"] for f in error["details"]["fields"]]


async def test_the_openapi_document_shows_the_events_cap(client):
    schema = (await client.get("/openapi.json")).json()
    events = schema["components"]["schemas"]["EventsRequest"]["properties"]["events"]
    assert events["maxItems"] == 40 and events["minItems"] == 1
    assert "/v1/users/{user_id}/events" in schema["paths"]


async def test_a_batch_of_events_counts_one_write_against_the_write_quota(make_settings):
    """Events are writes: a caller whose reads are spent may still send them; its second batch
    in the window is refused, and after that the refusal comes before the body is read."""
    async with serve(make_settings(rate_limit_read=1, rate_limit_write=1, rate_limit_window_s=60,
                                   refusal_delay_s=0)) as (_app, client):
        assert (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 2})).status_code == 200
        assert_error(await client.post("/v1/recommendations", json={"history": ["m1"], "k": 2}), 429)
        assert (await post_events(client, *many(30)))["accepted"] == 30
        error = assert_error(await client.post("/v1/events", json={"events": many(1)}), 429, "too_many_requests")
        assert "write requests" in error["message"]
        refused = await client.post("/v1/events", content=b"{broken", headers={"content-type": "application/json"})
        assert_error(refused, 429, "too_many_requests")


async def test_copied_events_keep_their_arrival_numbers_below_the_new_catalogs_counter(redis_url, catalog_name):
    """An upgrade copies a user's events into the new catalog (service/upgrade.py): the new
    catalog's counter is raised to the old one's, so events stored there later sort after the
    copied ones, and an export's boundary (the counter's value) counts the copied ones in."""
    import redis.asyncio as aioredis

    from service.user_events import UserEvent, UserEventStore, member_seq, seq_key

    old_prefix, new_prefix = namespace(f"{catalog_name}-old"), namespace(f"{catalog_name}-new")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        old = UserEventStore(client, old_prefix, keep=20, id_ttl_s=60, ids_per_user=10)
        for n in range(5):  # other users first: the old counter runs ahead of the new one
            await old.add([UserEvent(f"other{n}", "m1", 100.0 + n, None)])
        await old.add([UserEvent("u", "m1", 10.0, "e1"), UserEvent("u", "m2", 10.0, "e2")])
        new = UserEventStore(client, new_prefix, keep=20, id_ttl_s=60, ids_per_user=10, fallback_prefix=old_prefix)
        assert [e.item_id for e in await new.history("u")] == ["m1", "m2"]  # read through before the copy
        await new.add([UserEvent("u", "m3", 10.0, None), UserEvent("u", "e1-again", 10.0, "e1")])
        members = await client.zrange(new.events_key("u"), 0, -1)
        counter = int(await client.get(seq_key(new_prefix)))
        assert [m.split(":", 1)[1] for m in members] == ["m1", "m2", "m3"]  # same timestamp: arrival order
        assert all(member_seq(m) <= counter for m in members)
        assert member_seq(members[-1]) > max(member_seq(m) for m in members[:2])
        assert await client.exists(f"{old_prefix}user:u")  # nothing written or deleted there
    finally:
        for prefix in (old_prefix, new_prefix):
            async for key in client.scan_iter(match=f"{prefix}*"):
                await client.delete(key)
        await client.aclose()
