"""The serve_load benchmark's own parts on a real service (uvicorn subprocess, real Redis): the
raw keep-alive client reads 200s and error bodies on one connection, and `drive` counts the
requests, the errors and the server's batches from its /metrics."""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks.common import Server
from benchmarks.raw_http import KeepAliveConnection
from benchmarks.serve_load import drive, server_stats


@pytest.fixture
def server(bundle_path, redis_url, catalog_name, tmp_path):
    env = {"REDIS_URL": redis_url, "GENREC_CATALOG": catalog_name, "GENREC_MAX_BATCH_SIZE": "8",
           "GENREC_MAX_WAIT_MS": "5", "GENREC_DATA_DIR": str(tmp_path / "redis")}
    running = Server(bundle_path, env, tmp_path / "server.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.mark.slow
def test_raw_client_and_drive_against_the_service(server):
    async def two_on_one_connection():
        connection = KeepAliveConnection(server.url)
        try:
            good = await connection.post_json("/v1/recommendations", {"history": ["m1", "m2"], "k": 3})
            bad = await connection.post_json("/v1/recommendations", {"history": ["no-such-item"], "k": 3})
        finally:
            await connection.close()
        return good, bad

    (good_status, good_body), (bad_status, bad_body) = asyncio.run(two_on_one_connection())
    assert good_status == 200 and len(json.loads(good_body)["items"]) == 3
    assert bad_status == 422 and json.loads(bad_body)["error"]["code"] == "unknown_items"

    before = server_stats(server.url)
    bodies = [{"history": ["m1", "m2", f"m{3 + i % 5}"], "k": 5} for i in range(24)]
    bodies.append({"history": ["no-such-item"], "k": 5})
    result = asyncio.run(drive(server.url, bodies, concurrency=6))
    assert result["requests"] == 25 and result["errors"] == 1
    assert result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"]
    # 24 requests reached the batcher (the unknown item is refused before it), in batches of <= 8.
    assert server_stats(server.url)["batched_requests"] - before["batched_requests"] == 24
    assert 24 / 8 <= 24 / result["mean_batch"] <= 24
    assert result["mean_decode_ms"] > 0
