"""Load shedding and quotas (issue 21, point 2): the bounded inference queue (503 with
Retry-After when full), the per-request deadline, work dropped when its client has gone, the cap
on the Redis reads one request may cause, and the per-client rate limits, counted in Redis so
that they hold across replicas (and counted in memory when Redis does not answer).

The inference thread is held by a gate around the recommend batcher's handler, so what waits in
the queue, and what reaches the model, is known exactly."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import pytest
import redis

from service.engine import RecommendJob

from .conftest import assert_error, serve, wait_until

pytestmark = pytest.mark.anyio

BODY = {"history": ["m1", "m2"], "k": 3}
FROZEN = 1_000_000.5  # a fixed clock for the limiter: every hit falls in one window


class Gate:
    """Wraps a batcher's handler: the first call blocks until `open()`; every request that
    reaches the handler is recorded."""

    def __init__(self, batcher):
        self.inner = batcher.handle
        self.event = threading.Event()
        self.entered = threading.Event()
        self.seen: list = []
        batcher.handle = self

    def __call__(self, requests):
        self.seen.extend(requests)
        self.entered.set()
        self.event.wait(30)
        return self.inner(requests)

    def open(self):
        self.event.set()


async def hold_the_thread(state) -> tuple[Gate, asyncio.Task]:
    """A request that holds the inference thread (submitted straight to the batcher) until the
    gate opens."""
    gate = Gate(state.recommend_batcher)
    holder = asyncio.create_task(state.recommend_batcher.submit(RecommendJob(("m3",), 2, True)))
    assert await wait_until(gate.entered.is_set)
    return gate, holder


def shed(state, reason: str) -> float:
    return state.metrics.shed.labels(reason=reason)._value.get()


async def test_a_full_queue_answers_503_with_retry_after(make_settings):
    async with serve(make_settings(max_queue=2, max_batch_size=1)) as (app, client):
        state = app.state.service
        gate, holder = await hold_the_thread(state)
        queued = [asyncio.create_task(client.post("/v1/recommendations", json=BODY)) for _ in range(2)]
        assert await wait_until(lambda: state.recommend_batcher.depth == 2)
        refused = await client.post("/v1/recommendations", json=BODY)
        assert_error(refused, 503, "queue_full")
        assert refused.headers["retry-after"] == "1"
        assert shed(state, "queue_full") == 1
        gate.open()
        assert [r.status_code for r in await asyncio.gather(*queued)] == [200, 200]
        await holder
        assert len(gate.seen) == 3  # the holder and the two queued ones; never the refused one
        metrics = (await client.get("/metrics")).text
        assert 'genrec_requests_shed_total{reason="queue_full"} 1.0' in metrics


async def test_past_its_deadline_a_request_gets_503_and_its_work_is_dropped(make_settings):
    async with serve(make_settings(request_timeout_s=0.3)) as (app, client):
        state = app.state.service
        gate, holder = await hold_the_thread(state)
        late = await client.post("/v1/recommendations", json={"history": ["m7"], "k": 2})
        assert_error(late, 503, "deadline_exceeded")
        assert late.headers["retry-after"] == "1"
        assert shed(state, "deadline") == 1
        gate.open()
        await holder
        ok = await client.post("/v1/recommendations", json=BODY)
        assert ok.status_code == 200
        assert ("m7",) not in [job.history for job in gate.seen]  # never decoded
        assert state.recommend_batcher.dropped["abandoned"] == 1


async def test_a_request_whose_client_has_gone_is_dropped_before_its_batch(make_settings):
    """The ASGI app driven directly: the client's disconnect arrives while its request waits
    for the inference thread; the request never reaches the model."""
    async with serve(make_settings()) as (app, client):
        state = app.state.service
        gate, holder = await hold_the_thread(state)
        body = json.dumps({"history": ["m9"], "k": 2}).encode()
        disconnect = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive():
            if messages:
                return messages.pop(0)
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/recommendations", "raw_path": b"/v1/recommendations",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000), "server": ("genrec.test", 80),
            "headers": [(b"host", b"genrec.test"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }
        call = asyncio.create_task(app(scope, receive, send))
        assert await wait_until(lambda: state.recommend_batcher.depth == 1)
        disconnect.set()
        await asyncio.wait_for(call, 5)
        assert sent[0]["status"] == 499
        assert shed(state, "client_gone") == 1 and state.recommend_batcher.depth == 0
        gate.open()
        await holder
        assert (await client.post("/v1/recommendations", json=BODY)).status_code == 200
        assert ("m9",) not in [job.history for job in gate.seen]


async def test_unknown_ids_cost_at_most_one_capped_redis_read(make_settings, monkeypatch):
    async with serve(make_settings(max_redis_lookups=4)) as (app, client):
        registry = app.state.service.registry
        reads: list[list[str]] = []
        real = registry.get_items

        async def counted(item_ids):
            reads.append(list(item_ids))
            return await real(item_ids)

        monkeypatch.setattr(registry, "get_items", counted)
        many = [f"nope-{i}" for i in range(5)]
        error = assert_error(await client.post("/v1/recommendations", json={"history": ["m1", *many]}), 422)
        assert error["details"]["item_ids"] == many and reads == []  # over the cap: no read at all
        few = [f"nope-{i}" for i in range(3)]
        assert_error(await client.post("/v1/recommendations", json={"history": ["m1", *few, *few]}), 422)
        assert reads == [few]  # one pipelined read, each id once


async def test_rate_limits_hold_across_replicas(make_settings):
    """Two apps (replicas) on one Redis share each client's count: 3 reads per window in all,
    counted by token name when a token is sent, else by address; writes have their own quota."""
    tokens = "dash:dashboard-token-0001:read;ops:operator-token-00001:read,write"
    settings = make_settings(api_tokens=tokens, rate_limit_read=3, rate_limit_write=1, rate_limit_window_s=60,
                             refusal_delay_s=0)
    async with serve(settings) as (app_a, a), serve(settings) as (app_b, b):
        for app in (app_a, app_b):
            app.state.service.limiter.clock = lambda: FROZEN
        statuses = [(await client.post("/v1/recommendations", json=BODY)).status_code for client in (a, b, a)]
        assert statuses == [200, 200, 200]
        refused = await b.post("/v1/recommendations", json=BODY)
        error = assert_error(refused, 429, "too_many_requests")
        assert error["details"] == {"limit": 3, "window_s": 60.0}
        assert refused.headers["retry-after"] == str(math.ceil(60 - FROZEN % 60))
        assert (await a.get("/v1/items/m1")).status_code == 429  # every read counts
        dash = {"authorization": "Bearer dashboard-token-0001"}
        assert [(await c.get("/v1/items/m1", headers=dash)).status_code for c in (a, b, a, b)] == [200, 200, 200, 429]
        ops = {"authorization": "Bearer operator-token-00001"}
        first = await a.post("/v1/items", json={"item_id": "q-1", "metadata": {"title": "fresh entry"}}, headers=ops)
        assert first.status_code == 201
        second = await b.post("/v1/items", json={"item_id": "q-2", "metadata": {"title": "fresh entry"}}, headers=ops)
        assert_error(second, 429)
        assert shed(app_a.state.service, "rate_limited") + shed(app_b.state.service, "rate_limited") == 4


async def test_without_redis_the_limits_hold_per_replica(make_settings, monkeypatch, caplog):
    async with serve(make_settings(rate_limit_read=2, rate_limit_window_s=60, refusal_delay_s=0)) as (app, client):
        state = app.state.service
        state.limiter.clock = lambda: FROZEN

        async def down(*_args):
            raise redis.ConnectionError("refused")

        monkeypatch.setattr(state.registry, "count_hit", down)
        statuses = [(await client.post("/v1/recommendations", json=BODY)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert state.metrics.limiter_fallbacks._value.get() == 3
        assert any("per replica only" in r.getMessage() for r in caplog.records)


async def test_a_larger_k_costs_more_of_the_quota_and_refusals_skip_the_body(make_settings):
    """A recommendation counts ceil(k / 10) against the read limit. Once a caller is over it,
    the refusal comes before its body is read (a broken body gets 429, not 400), and it is held
    back for half to all of the refusal delay, so a client that retries at once is slowed."""
    async with serve(make_settings(rate_limit_read=6, rate_limit_window_s=60, refusal_delay_s=0.4)) as (app, client):
        app.state.service.limiter.clock = lambda: FROZEN
        assert (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 50})).status_code == 200
        assert (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 10})).status_code == 200
        assert_error(await client.post("/v1/recommendations", json={"history": ["m1"], "k": 3}), 429)
        start = asyncio.get_running_loop().time()
        broken = await client.post("/v1/recommendations", content=b"{not json", headers={"content-type": "application/json"})
        held = asyncio.get_running_loop().time() - start
        assert_error(broken, 429, "too_many_requests")
        assert 0.2 <= held < 2.0
        assert (await client.get("/healthz")).status_code == 200  # operations have no quota
