"""Two replicas (real uvicorn processes) sharing one Redis under a bounded concurrent load of
recommendations and racing mints (benchmarks/load_replicas.py): no error, no item minted twice,
no textual ID held twice, and every minted item recommendable on both replicas. The checks
themselves are tested on made-up answers and a made-up pending claim, so they can fail."""

from __future__ import annotations

import pytest
import redis

from benchmarks.load_replicas import Sample, duplicate_textual_ids, mint_outcomes, registry_audit, run
from service.registry import namespace


@pytest.mark.slow
def test_two_replicas_under_load(bundle_path, redis_url, catalog_name):
    result = run(bundle_path, requests=600, concurrency=8, redis=redis_url, catalog=catalog_name)
    assert result["requests"] == 600
    assert result["errors"] == 0, result["summary"]["status_counts"]
    assert set(result["mint_shapes"]) == {"one_replica", "same_item_both", "twins"}
    assert result["minted_items"] > 50
    assert result["items_minted_twice"] == 0
    assert result["items_nobody_created"] == 0
    assert result["duplicate_textual_ids"] == 0
    assert result["registry"]["duplicate_textual_ids"] == 0
    assert result["registry"]["pending_claims"] == result["registry"]["mismatched_claims"] == 0
    assert result["registry"]["items"] == result["expected_catalog_size"]
    assert result["catalog_sizes"] == [result["expected_catalog_size"]] * 2
    assert result["recommendable_on_all_replicas"] == result["minted_items"]


def minted(item_id: str, textual_id: str, created: bool, replica: int = 0) -> Sample:
    body = {"item_id": item_id, "textual_id": textual_id, "created": created}
    return Sample("mint", replica, 201 if created else 200, 0.01, body)


def test_the_checks_see_items_minted_twice_and_shared_ids():
    samples = [
        minted("a", "red river", True, 0),
        minted("a", "red river", False, 1),  # fine: one replica created it, the other found it
        minted("b", "blue castle", True, 0),
        minted("b", "blue castle", True, 1),  # created twice
        minted("c", "green garden", True),
        minted("c", "green garden two", False),  # two IDs for one item
        minted("d", "blue castle", True),  # another item's ID
        minted("e", "lost robot", False),  # nobody created it
    ]
    ids, twice, uncreated = mint_outcomes(samples)
    assert twice == 2 and uncreated == 1
    assert duplicate_textual_ids(ids, {"m1": "lost robot"}) == 2  # "blue castle", "lost robot"


def test_the_audit_sees_pending_and_mismatched_claims(redis_url, catalog_name):
    prefix = namespace(catalog_name)
    with redis.Redis.from_url(redis_url) as r:
        r.hset(f"{prefix}item:x", mapping={"textual_id": "red river"})
        r.set(f"{prefix}tid:red river", "x")
        r.set(f"{prefix}tid:stale", "pending:abc")
        r.set(f"{prefix}tid:wrong", "x")
    assert registry_audit(redis_url, catalog_name) == {
        "items": 1,
        "claims": 3,
        "duplicate_textual_ids": 0,
        "pending_claims": 1,
        "mismatched_claims": 1,
    }
