"""The serve_load benchmark's own parts on a real service (uvicorn subprocess, real Redis): the
service launcher moves to another port when its pick was taken, the raw keep-alive client reads
200s and error bodies on one connection, and `drive` counts the requests, the errors and the
server's batches from its /metrics."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

import benchmarks.common
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


def test_the_launcher_moves_to_another_port_when_its_pick_was_taken(bundle_path, redis_url, catalog_name,
                                                                   tmp_path, monkeypatch):
    """The port Server picked is taken before uvicorn binds it (a busy machine): the service
    exits saying the address is in use, and `wait_ready` starts it again on another port."""
    real, picked = benchmarks.common.free_port, []
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(benchmarks.common, "free_port",
                            lambda: picked.append(real() if picked else taken) or picked[-1])
        running = Server(bundle_path, {"REDIS_URL": redis_url, "GENREC_CATALOG": catalog_name},
                         tmp_path / "server.log")
        try:
            running.wait_ready()
            assert picked[0] == taken and running.port == picked[-1] != taken and len(picked) == 2
            assert running.url == f"http://127.0.0.1:{running.port}"
            assert httpx.get(f"{running.url}/readyz", timeout=10).status_code == 200
            assert "address already in use" in running.log_tail(100_000)  # the first start's, kept in the log
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
    before_sizes = batch_sizes(server.url)
    bodies = [{"history": ["m1", "m2", f"m{3 + i % 5}"], "k": 5} for i in range(48)]
    bodies.append({"history": ["no-such-item"], "k": 5})
    result = asyncio.run(drive(server.url, bodies, concurrency=12))
    assert result["requests"] == 49 and result["errors"] == 1
    assert result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"]
    # 48 requests reached the batcher (the unknown item is refused before it) ...
    assert server_stats(server.url)["batched_requests"] - before["batched_requests"] == 48
    # ... and were batched: 12 clients at once shared decodes (without batching every batch
    # holds one request, and the mean is 1) ...
    sizes = {le: count - before_sizes[le] for le, count in batch_sizes(server.url).items()}
    print(f"\nmean batch {result['mean_batch']:.2f}; batches by size bucket {sizes}")
    assert result["mean_batch"] >= 1.5, result
    assert sizes["1.0"] < sizes["+Inf"]
    # ... of at most GENREC_MAX_BATCH_SIZE=8 requests.
    assert sizes["8.0"] == sizes["+Inf"]
    assert result["mean_decode_ms"] > 0


def batch_sizes(url: str) -> dict[str, float]:
    """The server's recommend batches so far, by histogram bucket (le -> cumulative count)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "genrec_batch_size_bucket" and sample.labels.get("kind") == "recommend"
    }


def test_methods_table_rows_from_eval_files(tmp_path):
    from benchmarks.methods import quality_rows, read_eval

    loo = {"hr@5": 0.05, "hr@10": 0.1, "ndcg@5": 0.03, "ndcg@10": 0.05}
    popularity = {"valid": dict(loo, **{"ndcg@10": 0.03}), "test": dict(loo, **{"ndcg@10": 0.04})}
    idgenrec = {"test": loo, "valid": loo, "baselines": {"popularity": popularity}, "timings_s": {"total": 60.0}}
    cllm4rec = {"test": dict(loo, **{"ndcg@10": 0.06}), "valid": loo, "baselines": {"popularity": popularity},
                "timings_s": {"total": 30.0},
                "cllm4rec_protocol": {"recall@20": 0.3, "recall@40": 0.4, "ndcg@100": 0.45,
                                      "popularity": {"recall@20": 0.2, "recall@40": 0.25, "ndcg@100": 0.3}}}
    rows = quality_rows({"IDGenRec": idgenrec, "CLLM4Rec": cllm4rec})
    assert [r["method"] for r in rows] == ["IDGenRec", "CLLM4Rec", "popularity"]
    assert rows[1]["test"]["ndcg@10"] == 0.06 and rows[2]["test"]["ndcg@10"] == 0.04
    assert rows[0]["protocol"] is None and rows[1]["protocol"]["recall@20"] == 0.3
    assert rows[2]["protocol"]["recall@20"] == 0.2 and rows[2]["train_s"] is None
    with pytest.raises(SystemExit, match="train the bundle first"):
        read_eval(tmp_path / "missing")


def test_decode_benchmark_tie_rule():
    from benchmarks.decode import same_up_to_ties
    from genrec.beam_search import ScoredItem

    ref = [ScoredItem(1, -1.0), ScoredItem(2, -2.0), ScoredItem(3, -2.000001), ScoredItem(4, -3.0)]
    swapped_tie = [ref[0], ref[2], ref[1], ref[3]]
    swapped_real = [ref[1], ref[0], ref[2], ref[3]]
    assert same_up_to_ties(ref, ref) and same_up_to_ties(swapped_tie, ref)
    assert not same_up_to_ties(swapped_real, ref)
    assert not same_up_to_ties([ref[0], ref[1], ref[2], ScoredItem(9, -3.0)], ref)
