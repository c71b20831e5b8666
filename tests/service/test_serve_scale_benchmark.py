"""The serve_scale benchmark's path on a 20,000-item synthetic bundle (benchmarks/synthetic_bundle.py):
built by the real bundle writer, served by the real service (uvicorn subprocess, real Redis),
started on an empty catalog namespace, measured (parts of its start, memory), asked for
recommendations at concurrency 1 and 16, and minting an item."""

from __future__ import annotations

import time
from argparse import Namespace

import pytest

from benchmarks.serve_scale import PHASES, measure_size, summarise
from benchmarks.synthetic_bundle import build
from genrec.bundle import read_items

ITEMS = 20_000


@pytest.mark.slow
def test_serve_scale_path_on_20k_items(tmp_path, redis_url, catalog_name):
    start = time.perf_counter()
    bundle = build(ITEMS, tmp_path / "bundle", quiet=True, tokenizer_items=ITEMS)
    items = read_items(bundle)
    assert len(items) == ITEMS and len({i.textual_id for i in items}) == ITEMS
    assert all(i.token_ids[-1] == 1 for i in items[:100])  # EOS ends every trie key

    args = Namespace(requests=4, requests_c16=16, mints=1, ready_timeout_s=180.0, env=[])
    row = measure_size(bundle, ITEMS, redis_url, tmp_path, args, catalog=catalog_name, flush=False,
                       second_replica=False)
    assert row["c1"]["requests"] == 4 and row["c1"]["errors"] == 0
    assert row["c16"]["requests"] == 16 and row["c16"]["errors"] == 0
    assert row["mint_p50_ms"] > 0
    parts = row["phases_empty_redis"]
    assert set(PHASES) <= set(parts) and parts["total"] <= row["ready_empty_redis_s"]
    assert row["memory_ready"]["rss_mib"] > 0 and row["redis_mib"] > 0
    summary = summarise([row])
    assert summary["sizes"] == [ITEMS]
    assert time.perf_counter() - start < 300  # bounded: the build and one replica (~1 min on a loaded 2-core machine)
