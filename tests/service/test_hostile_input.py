"""Hostile input, through httpx against real Redis: size limits per field, unicode and control
characters, repeated and over-long histories, broken JSON and wrong content types.

Every rejection must be a 4xx whose JSON error names the field, and a rejected mint must leave
Redis exactly as it was (no key, no stream entry). What is accepted must round-trip exactly."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import redis

from service.registry import namespace

from .conftest import assert_error, serve

pytestmark = pytest.mark.anyio

LIMITS = dict(max_history=8, max_k=20, max_metadata_fields=8, max_metadata_chars=400, max_body_bytes=16 * 1024)


@pytest.fixture
async def client(make_settings):
    async with serve(make_settings(**LIMITS)) as (_app, client):
        yield client


@pytest.fixture
def snapshot(redis_url, catalog_name):
    """What the catalog's namespace holds: every key and the length of the events stream."""
    prefix = namespace(catalog_name)

    def take() -> tuple[frozenset, int]:
        with redis.Redis.from_url(redis_url) as r:
            keys = frozenset(r.scan_iter(match=f"{prefix}*", count=1000))
            return keys, r.xlen(f"{prefix}events")

    return take


def field_names(error: dict) -> list[str]:
    return [f["field"] for f in error["details"]["fields"]]


def assert_names_field(error: dict, field: str) -> None:
    """The error lists the field in details and says its name in the message."""
    names = field_names(error)
    assert any(n == field or n.startswith(field + ".") for n in names), names
    assert field in error["message"], error["message"]


# --------------------------------------------------------------------------- size limits

MINT_OVER_LIMITS = [
    pytest.param({"item_id": "x" * 257, "metadata": {"title": "x"}}, "item_id", id="item_id-257-chars"),
    pytest.param({"item_id": "a", "metadata": {f"k{i}": "v" for i in range(9)}}, "metadata", id="9-keys-max-8"),
    pytest.param({"item_id": "a", "metadata": {"k" * 65: "v"}}, "metadata", id="key-65-chars"),
    pytest.param({"item_id": "a", "metadata": {"title": "v" * 4097}}, "metadata.title", id="value-4097-chars"),
    pytest.param({"item_id": "a", "metadata": {"tags": ["t"] * 65}}, "metadata.tags", id="list-65-entries"),
    pytest.param({"item_id": "a", "metadata": {"tags": ["t" * 257]}}, "metadata.tags", id="list-entry-257-chars"),
    pytest.param({"item_id": "a", "metadata": {"year": 2**53}}, "metadata.year", id="int-beyond-2^53"),
    pytest.param({"item_id": "a", "metadata": {"year": -(2**53)}}, "metadata.year", id="int-below-minus-2^53"),
    pytest.param({"item_id": "a", "metadata": {"year": 1e20}}, "metadata.year", id="float-beyond-2^53"),
]


@pytest.mark.parametrize("body, field", MINT_OVER_LIMITS)
async def test_mint_over_a_limit_names_the_field_and_writes_nothing(client, snapshot, body, field):
    before = snapshot()
    error = assert_error(await client.post("/v1/items", json=body), 422, "invalid_request")
    assert_names_field(error, field)
    assert snapshot() == before


async def test_mint_over_the_text_limit_is_413_and_writes_nothing(client, snapshot):
    """The item text is a size the OpenAPI document cannot state: 413, like a body too large."""
    before = snapshot()
    body = {"item_id": "a", "metadata": {"title": "v " * 201}}
    error = assert_error(await client.post("/v1/items", json=body), 413, "payload_too_large")
    assert_names_field(error, "metadata")
    assert snapshot() == before


RECOMMEND_OVER_LIMITS = [
    pytest.param({"history": ["m1"] * 9}, "history", id="history-9-max-8"),
    pytest.param({"history": [f"m{i % 40}" for i in range(2000)]}, "history", id="history-2000"),
    pytest.param({"history": ["x" * 257]}, "history.0", id="history-id-257-chars"),
    pytest.param({"history": ["m1"], "k": 0}, "k", id="k-0"),
    pytest.param({"history": ["m1"], "k": 21}, "k", id="k-over-max"),
    pytest.param({"history": ["m1"], "k": 10**30}, "k", id="k-huge"),
    pytest.param({"history": ["m1"], "user_id": "u" * 257}, "user_id", id="user_id-257-chars"),
]


@pytest.mark.parametrize("body, field", RECOMMEND_OVER_LIMITS)
async def test_recommendation_over_a_limit_names_the_field(client, body, field):
    error = assert_error(await client.post("/v1/recommendations", json=body), 422, "invalid_request")
    assert_names_field(error, field)


async def test_body_over_the_limit_is_413_and_writes_nothing(client, snapshot):
    before = snapshot()
    body = {"item_id": "big", "metadata": {f"k{i}": "v" * 4000 for i in range(5)}}  # ~20 KB > 16 KB
    error = assert_error(await client.post("/v1/items", json=body), 413, "payload_too_large")
    assert error["details"] == {"max_bytes": 16 * 1024}
    assert snapshot() == before


async def test_longest_allowed_history_is_served(client):
    """max_history items are accepted (the model reads the bundle's last max_history of them)."""
    response = await client.post("/v1/recommendations", json={"history": [f"m{i}" for i in range(8)], "k": 3})
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 3


# --------------------------------------------------------------------------- unicode and control characters

ACCEPTED_IDS = [
    pytest.param("🎬-film-1", id="emoji"),
    pytest.param("👩‍👩‍👧 family", id="zwj-emoji-sequence"),
    pytest.param("فيلم-٢٣", id="rtl-arabic"),
    pytest.param("שלום\u202eevil", id="bidi-override"),
    pytest.param("cafe\u0301", id="combining-acute"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("../../etc/passwd", id="path-like"),
]


@pytest.mark.parametrize("item_id", ACCEPTED_IDS)
async def test_unicode_ids_and_control_characters_in_values_round_trip(client, item_id):
    metadata = {
        "title": "Toy Story 🎬 — فيلم café\u0301",
        "notes": "line one\nline two\ttab\x00nul\x1b[31mesc",
        "tags": ["🚀", "\u202eevil", "e\u0301"],
    }
    created = await client.post("/v1/items", json={"item_id": item_id, "metadata": metadata})
    assert created.status_code == 201, created.text
    assert created.json()["item_id"] == item_id

    record = await client.get(f"/v1/items/{quote(item_id, safe='')}")
    assert record.status_code == 200, record.text
    assert record.json()["item_id"] == item_id
    assert record.json()["metadata"] == metadata
    assert record.json()["textual_id"] == created.json()["textual_id"]

    again = await client.post("/v1/items", json={"item_id": item_id, "metadata": metadata})
    assert again.status_code == 200 and again.json()["textual_id"] == created.json()["textual_id"]
    usable = await client.post("/v1/recommendations", json={"history": [item_id, "m1"], "k": 2})
    assert usable.status_code == 200, usable.text


async def test_ids_are_not_unicode_normalised(client):
    """Ids are exact strings: 'é' precomposed and 'e' + combining acute are two items."""
    ids = ["caf\u00e9", "cafe\u0301"]
    minted = [await client.post("/v1/items", json={"item_id": i, "metadata": {"title": "fresh entry"}}) for i in ids]
    assert [m.status_code for m in minted] == [201, 201]
    assert minted[0].json()["textual_id"] != minted[1].json()["textual_id"]


CONTROL_CHARACTERS = ["\x00", "\x1b", "\n", "\r", "\t", "\x7f", "\x85"]


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=repr)
async def test_control_characters_in_ids_and_keys_are_rejected_without_writes(client, snapshot, char):
    before = snapshot()
    for body, field in [
        ({"item_id": f"a{char}b", "metadata": {"title": "x"}}, "item_id"),
        ({"item_id": "clean", "metadata": {f"ti{char}tle": "x"}}, "metadata"),
    ]:
        error = assert_error(await client.post("/v1/items", json=body), 422, "invalid_request")
        assert_names_field(error, field)
        assert "control characters" in error["message"]
    error = assert_error(await client.post("/v1/recommendations", json={"history": [f"m1{char}"]}), 422)
    assert_names_field(error, "history.0")
    assert snapshot() == before
    assert (await client.get("/v1/items/clean")).status_code == 404


async def test_lone_surrogates_are_rejected(client, snapshot):
    """JSON can escape half a UTF-16 pair; such a string is no text and cannot be stored."""
    before = snapshot()
    for raw, field in [
        (rb'{"item_id": "a\ud800", "metadata": {"title": "x"}}', "item_id"),
        (rb'{"item_id": "s1", "metadata": {"title": "x\udfffy"}}', "metadata.title"),
    ]:
        response = await client.post("/v1/items", content=raw, headers={"content-type": "application/json"})
        assert_names_field(assert_error(response, 422, "invalid_request"), field)
    assert snapshot() == before


# --------------------------------------------------------------------------- histories


async def test_repeated_ids_in_a_history_are_kept_and_answer_deterministically(client):
    """Repeats are part of the history the model reads; exclusion removes each id once, and the
    same request gets the same answer."""
    body = {"history": ["m1", "m2", "m1", "m1", "m2"], "k": 10}
    first, second = [await client.post("/v1/recommendations", json=body) for _ in range(2)]
    assert first.status_code == 200, first.text
    assert first.json()["items"] == second.json()["items"]
    returned = [i["item_id"] for i in first.json()["items"]]
    assert len(returned) == 10 and len(set(returned)) == 10
    assert not {"m1", "m2"} & set(returned)
    different = await client.post("/v1/recommendations", json={"history": ["m1", "m2"], "k": 10})
    assert different.status_code == 200


async def test_history_of_every_item_with_exclusion_is_an_empty_answer(make_settings):
    async with serve(make_settings(max_history=40)) as (_app, client):
        response = await client.post("/v1/recommendations", json={"history": [f"m{i}" for i in range(40)], "k": 5})
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


# --------------------------------------------------------------------------- broken bodies

BROKEN_JSON = [
    pytest.param(b'{"history": ["m1"', id="truncated"),
    pytest.param(b'{"history": ["m1"]} trailing', id="trailing-garbage"),
    pytest.param(b"{'history': ['m1']}", id="single-quotes"),
    pytest.param(b'{"history": ["m1",]}', id="trailing-comma"),
    pytest.param(b"\x00\x01\x02", id="binary"),
]


@pytest.mark.parametrize("raw", BROKEN_JSON)
async def test_invalid_json_is_400(client, raw):
    response = await client.post("/v1/recommendations", content=raw, headers={"content-type": "application/json"})
    error = assert_error(response, 400, "invalid_json")
    assert field_names(error) == ["body"]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"history": ["\xff\xfe"]}', id="invalid-utf8"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-5000-deep"),
        pytest.param(b'{"history": ["m1"], "k": ' + b"9" * 5000 + b"}", id="5000-digit-number"),
    ],
)
async def test_unparseable_bodies_are_400(client, raw):
    response = await client.post("/v1/recommendations", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None],
)
async def test_a_body_that_is_not_json_is_415(client, snapshot, content_type):
    before = snapshot()
    headers = {"content-type": content_type} if content_type else {}
    for path, raw in [
        ("/v1/recommendations", b'{"history": ["m1"]}'),
        ("/v1/items", b'{"item_id": "ct", "metadata": {"title": "x"}}'),
    ]:
        error = assert_error(await client.post(path, content=raw, headers=headers), 415, "unsupported_media_type")
        assert "application/json" in error["message"]
    assert snapshot() == before


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/problem+json"])
async def test_json_media_types_are_accepted(client, content_type):
    response = await client.post(
        "/v1/recommendations", content=b'{"history": ["m1"], "k": 2}', headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
