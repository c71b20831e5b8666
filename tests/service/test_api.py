"""The endpoints through httpx, against real Redis, with the tiny bundle: success and bad input."""

from __future__ import annotations

import json

import pytest

from genrec.bundle import read_items

from .conftest import N_ITEMS, assert_error, metric_value, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(make_settings):
    async with serve(make_settings(max_history=5)) as (_app, client):
        yield client


# --------------------------------------------------------------------------- recommendations


async def test_recommendations_top_k(client, bundle_path):
    textual = {i.item_id: i.textual_id for i in read_items(bundle_path)}
    response = await client.post("/v1/recommendations", json={"history": ["m1", "m2", "m3"], "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"]
    assert len(items) == 5
    assert len({i["item_id"] for i in items}) == 5
    assert not {"m1", "m2", "m3"} & {i["item_id"] for i in items}  # history excluded by default
    for item in items:
        assert item["textual_id"] == textual[item["item_id"]]
        assert item["score"] <= 0.0
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert body["model"]["kind"] == "idgenrec"
    assert body["model"]["dataset"] == "synthetic"
    assert body["model"]["bundle"].startswith("synthetic-")


async def test_recommendations_whole_catalog_and_history_flag(client):
    every = await client.post("/v1/recommendations", json={"history": ["m0"], "k": 100})
    assert every.status_code == 200
    assert {i["item_id"] for i in every.json()["items"]} == {f"m{i}" for i in range(1, N_ITEMS)}
    kept = await client.post("/v1/recommendations", json={"history": ["m0"], "k": 100, "exclude_history": False})
    assert {i["item_id"] for i in kept.json()["items"]} == {f"m{i}" for i in range(N_ITEMS)}


async def test_recommendations_same_answer_alone_or_batched(client):
    import asyncio

    alone = (await client.post("/v1/recommendations", json={"history": ["m4", "m5"], "k": 3})).json()["items"]
    bodies = [{"history": ["m4", "m5"], "k": 3}, {"history": ["m7"], "k": 8}, {"history": ["m9", "m1"], "k": 1}]
    together = await asyncio.gather(*(client.post("/v1/recommendations", json=b) for b in bodies * 3))
    assert all(r.status_code == 200 for r in together)
    assert [len(r.json()["items"]) for r in together] == [3, 8, 1] * 3
    got = together[0].json()["items"]
    assert [i["item_id"] for i in got] == [i["item_id"] for i in alone]
    assert [i["score"] for i in got] == pytest.approx([i["score"] for i in alone], abs=1e-4)


async def test_unknown_items_are_listed(client):
    response = await client.post("/v1/recommendations", json={"history": ["m1", "nope", "m2", "gone", "nope"]})
    error = assert_error(response, 422, "unknown_items")
    assert error["details"]["item_ids"] == ["nope", "gone"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"history": ["m1"] * 6}, "history"),  # max_history is 5 here
        ({"history": ["m1"], "k": 0}, "k"),
        ({"history": ["m1"], "k": 101}, "k"),  # max_k is 100
        ({"history": ["m1"], "k": -3}, "k"),
        ({"history": "m1"}, "history"),
        ({"history": [1, 2]}, "history.0"),
        ({"history": ["m1"], "k": "5"}, "k"),
        ({"history": ["m1"], "k": 2.5}, "k"),
        ({"history": ["m1"], "exclude_history": "yes"}, "exclude_history"),
        ({"history": ["m1"], "user_id": 7}, "user_id"),
        ({"history": ["m1"], "surprise": 1}, "surprise"),
        ({"history": [""]}, "history.0"),
    ],
)
async def test_recommendations_bad_input(client, body, field):
    error = assert_error(await client.post("/v1/recommendations", json=body), 422, "invalid_request")
    assert field in [f["field"] for f in error["details"]["fields"]]


async def test_recommendations_user_id_accepted(client):
    response = await client.post("/v1/recommendations", json={"history": ["m1"], "user_id": "u-17", "k": 2})
    assert response.status_code == 200
    assert len(response.json()["items"]) == 2


async def test_not_json_and_wrong_shapes(client):
    assert_error(
        await client.post("/v1/recommendations", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    assert_error(await client.post("/v1/recommendations", json=[1, 2, 3]), 422, "invalid_request")
    assert_error(await client.post("/v1/recommendations"), 422, "invalid_request")
    assert_error(await client.get("/v1/recommendations"), 405, "method_not_allowed")
    assert_error(await client.get("/v2/nothing"), 404, "not_found")


async def test_oversize_body_is_413(client):
    big = {"history": ["m1"] * 5, "user_id": "x" * 200, "padding": "y" * (20 * 1024)}
    assert_error(await client.post("/v1/recommendations", json=big), 413, "payload_too_large")

    async def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"history": ["m1"], "user_id": "'
        for _ in range(40):
            yield b"z" * 1024
        yield b'"}'

    response = await client.post("/v1/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    item = {"item_id": "big", "metadata": {"title": "t" * (17 * 1024)}}
    assert_error(await client.post("/v1/items", json=item), 413, "payload_too_large")


# --------------------------------------------------------------------------- items


async def test_mint_is_idempotent_and_readable(client):
    metadata = {"title": "Toy Story Night", "year": 2026, "genres": ["animation", "comedy"]}
    first = await client.post("/v1/items", json={"item_id": "new-1", "metadata": metadata})
    assert first.status_code == 201, first.text
    created = first.json()
    assert created["item_id"] == "new-1" and created["created"] is True
    assert created["textual_id"] and created["textual_id"] == created["textual_id"].lower()

    again = await client.post("/v1/items", json={"item_id": "new-1", "metadata": metadata})
    assert again.status_code == 200
    assert again.json() == {**created, "created": False}

    record = await client.get("/v1/items/new-1")
    assert record.status_code == 200
    body = record.json()
    assert body["textual_id"] == created["textual_id"]
    assert body["metadata"] == metadata
    assert body["source"] == "minted"
    assert "Toy Story Night" in body["text"] and "animation comedy" in body["text"]

    # Recommendable at once: usable in a history, and returned when asking for everything.
    response = await client.post("/v1/recommendations", json={"history": ["m0"], "k": 100})
    assert "new-1" in {i["item_id"] for i in response.json()["items"]}
    response = await client.post("/v1/recommendations", json={"history": ["new-1", "m3"], "k": 3})
    assert response.status_code == 200


async def test_bundle_items_are_readable_and_not_reminted(client, bundle_path):
    bundle_item = read_items(bundle_path)[7]
    record = await client.get(f"/v1/items/{bundle_item.item_id}")
    assert record.status_code == 200
    body = record.json()
    assert body["textual_id"] == bundle_item.textual_id
    assert body["source"] == "bundle" and body["metadata"] is None and body["text"] == bundle_item.text
    again = await client.post("/v1/items", json={"item_id": bundle_item.item_id, "metadata": {"title": "x"}})
    assert_error(again, 409, "item_conflict")  # its metadata were never posted: nothing to be the same as
    assert (await client.get(f"/v1/items/{bundle_item.item_id}")).json() == body


async def test_unknown_item_is_404(client):
    error = assert_error(await client.get("/v1/items/does-not-exist"), 404, "item_not_found")
    assert error["details"] == {"item_id": "does-not-exist"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"item_id": "a"}, "metadata"),
        ({"item_id": "a", "metadata": {}}, "metadata"),
        ({"item_id": "a", "metadata": None}, "metadata"),
        ({"item_id": "a", "metadata": "title"}, "metadata"),
        ({"item_id": "a", "metadata": {"title": True}}, "metadata.title"),
        ({"item_id": "a", "metadata": {"title": {"nested": "x"}}}, "metadata.title"),
        ({"item_id": "a", "metadata": {"tags": ["x", 3]}}, "metadata.tags"),
        ({"item_id": "a", "metadata": {"title": "   ", "other": ""}}, "metadata"),
        ({"item_id": "a", "metadata": {f"f{i}": "x" for i in range(65)}}, "metadata"),
        ({"item_id": "", "metadata": {"title": "x"}}, "item_id"),
        ({"item_id": "a\nb", "metadata": {"title": "x"}}, "item_id"),
        ({"item_id": "x" * 257, "metadata": {"title": "x"}}, "item_id"),
        ({"item_id": 5, "metadata": {"title": "x"}}, "item_id"),
        ({"metadata": {"title": "x"}}, "item_id"),
        ({"item_id": "a", "metadata": {"title": "x"}, "extra": 1}, "extra"),
    ],
)
async def test_mint_bad_input(client, body, field):
    error = assert_error(await client.post("/v1/items", json=body), 422, "invalid_request")
    fields = [f["field"] for f in error["details"]["fields"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


async def test_mint_accepts_numbers_and_lists(client):
    body = {"item_id": "n-1", "metadata": {"title": "Space Story", "year": 1999, "rating": 4.5, "tags": ["toy", "space"]}}
    response = await client.post("/v1/items", json=body)
    assert response.status_code == 201
    record = (await client.get("/v1/items/n-1")).json()
    assert record["metadata"] == body["metadata"]
    assert "year: 1999" in record["text"] and "tags: toy space" in record["text"]


async def test_item_ids_with_slashes_and_unicode(client):
    for item_id in ("shop/42", "ünï cödé"):
        response = await client.post("/v1/items", json={"item_id": item_id, "metadata": {"title": "fresh entry"}})
        assert response.status_code == 201, response.text
        from urllib.parse import quote

        record = await client.get(f"/v1/items/{quote(item_id)}")
        assert record.status_code == 200 and record.json()["item_id"] == item_id


# --------------------------------------------------------------------------- operations


async def test_health_ready_metrics_docs(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert {k: body[k] for k in ("status", "checks")} == {"status": "ready", "checks": {"bundle": "ok", "redis": "ok"}}
    assert body["serving"]["generation"] == 1 and body["serving"]["kind"] == "idgenrec"
    assert body["serving"]["bundle"].startswith("synthetic-") and body["serving"]["path"] is None

    await client.post("/v1/recommendations", json={"history": ["m1"], "k": 2})
    await client.post("/v1/recommendations", json={"history": ["zzz"], "k": 2})
    await client.post("/v1/items", json={"item_id": "metrics-1", "metadata": {"title": "new movie"}})
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'genrec_http_requests_total{method="POST",route="/v1/recommendations",status="200"} 1.0' in text
    assert 'genrec_http_requests_total{method="POST",route="/v1/recommendations",status="422"} 1.0' in text
    assert 'genrec_http_request_duration_seconds_bucket{le="0.5",method="POST",route="/v1/items",status="201"}' in text
    assert "genrec_decode_duration_seconds_count 1.0" in text
    assert 'genrec_batch_size_count{kind="recommend"} 1.0' in text
    assert f"genrec_catalog_items {float(N_ITEMS + 1)}" in text
    assert "genrec_items_minted_total 1.0" in text
    # The mint went through its own batcher once and took one minting run ...
    assert metric_value(text, "genrec_batch_size_count", kind="mint") == 1
    assert metric_value(text, "genrec_mint_duration_seconds_count") == 1
    # ... the unknown item was looked up in Redis, and no Redis operation failed.
    assert metric_value(text, "genrec_redis_errors_total") == 0

    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = (await client.get("/openapi.json")).json()
    assert {"/v1/recommendations", "/v1/items", "/v1/items/{item_id}", "/healthz", "/readyz", "/metrics"} <= set(
        schema["paths"]
    )
    dumped = json.dumps(schema)
    assert '"examples"' in dumped and "toy story 5" in dumped


@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/v1/items", "GET, POST"),  # two routes share the path: the search and the mint
    ("DELETE", "/v1/recommendations", "POST"),
])
async def test_a_wrong_method_gets_405_naming_every_method_of_the_path(client, method, path, allowed):
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["code"] == "method_not_allowed"
