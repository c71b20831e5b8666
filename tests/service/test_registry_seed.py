"""Seeding the bundle's items into Redis (`Registry.seed`): the chunk's columns travel as one
JSON argument and come back as three numbers, several pipelines in flight; what lands in
Redis must be exactly each item's record, and a textual ID owned by another item is reported,
not overwritten."""

from __future__ import annotations

import json

import pytest
import redis

from genrec.bundle import BundleItem
from service.registry import Registry, namespace

pytestmark = pytest.mark.anyio

# Texts a JSON round trip through Redis' Lua (cjson) could change: escapes, quotes, control
# characters, combining marks, astral characters, a NUL, an empty text.
TEXTS = ['title: "Quoted" \\ back\\slash', "naïve cafe\u0301 東京 हिन्दी", "emoji 😀 𝔘 end", "tab\tnew\nline\u0000nul",
         "", "[1, 2, 3]", "\u2028\u2029 separators", "x" * 5000]


def _items(count: int) -> list[BundleItem]:
    return [BundleItem(f"item-{i}", f"tid {i} {TEXTS[i % len(TEXTS)][:8]}", [i + 2, (i * 7) % 4000 + 2, 1],
                       TEXTS[i % len(TEXTS)]) for i in range(count)]


async def test_seed_writes_every_record_exactly(redis_url, catalog_name):
    items = _items(203)
    registry = Registry(redis_url, catalog_name)
    try:
        # Chunks of 7 items, 2 to a round, 3 rounds in flight: many rounds, a short last one.
        outcome = await registry.seed(items, "2026-12-06T00:00:00Z", "digest-1", chunk=7, in_flight=2, pipelines=3)
    finally:
        await registry.close()
    assert outcome == {"written": 203, "present": 0, "conflicts": 0, "skipped": False}
    prefix = namespace(catalog_name)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        for item in items:
            assert client.hgetall(f"{prefix}item:{item.item_id}") == {
                "textual_id": item.textual_id, "token_ids": json.dumps(item.token_ids), "text": item.text,
                "metadata": "", "created_at": "2026-12-06T00:00:00Z", "source": "bundle"}
            assert client.get(f"{prefix}tid:{item.textual_id}") == item.item_id
        assert client.get(f"{prefix}seeded") == "digest-1"


async def test_seed_counts_present_items_and_reports_taken_ids(redis_url, catalog_name, caplog):
    items = _items(40)
    prefix = namespace(catalog_name)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.set(f"{prefix}tid:{items[5].textual_id}", "someone-else")  # a minted item holds item 5's ID
        client.set(f"{prefix}tid:{items[33].textual_id}", "another")
        client.hset(f"{prefix}item:{items[12].item_id}", mapping={"textual_id": "old", "source": "bundle"})
    registry = Registry(redis_url, catalog_name)
    try:
        outcome = await registry.seed(items, "now", "digest-2", chunk=4, in_flight=3, pipelines=2)
        again = await registry.seed(items, "later", "digest-3", chunk=64)
        skipped = await registry.seed(items, "later", "digest-3")
    finally:
        await registry.close()
    assert outcome == {"written": 37, "present": 1, "conflicts": 2, "skipped": False}
    assert again == {"written": 0, "present": 38, "conflicts": 2, "skipped": False}
    assert skipped == {"written": 0, "present": 40, "conflicts": 0, "skipped": True}
    taken = [r.getMessage() for r in caplog.records if "belongs to another item" in r.getMessage()]
    assert sum("'item-5'" in m for m in taken) == 2 and sum("'item-33'" in m for m in taken) == 2
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.get(f"{prefix}tid:{items[5].textual_id}") == "someone-else"  # not overwritten
        assert not client.exists(f"{prefix}item:item-5")
        assert client.hget(f"{prefix}item:item-12", "textual_id") == "old"  # an existing record stays


async def test_a_failing_round_fails_the_seed_and_marks_nothing_seeded(redis_url, catalog_name):
    items = _items(30)
    prefix = namespace(catalog_name)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.hset(f"{prefix}tid:{items[20].textual_id}", "not", "a string")  # GET on it fails: WRONGTYPE
    registry = Registry(redis_url, catalog_name)
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await registry.seed(items, "now", "digest-4", chunk=3, in_flight=1, pipelines=4)
    finally:
        await registry.close()
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.get(f"{prefix}seeded") is None
