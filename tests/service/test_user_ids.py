"""Textual user IDs in the service (docs/methods.md, "Textual user IDs"): built from the request's history with the
bundle's generator, cached in Redis under `uid:{sha1 of the history}`."""

from __future__ import annotations

import pytest

import genrec.idgenrec.method as method_module
from genrec.bundle import load_bundle
from genrec.idgenrec.user_ids import history_digest
from service.catalog import Catalog
from service.engine import Engine, RecommendJob
from service.metrics import ServiceMetrics
from service.registry import Registry


@pytest.fixture
def registry(redis_url, catalog_name):
    """A real Registry on the test Redis, in this test's own key namespace."""
    registry = Registry(redis_url, catalog_name)
    yield registry
    registry.sync.close()


def cached_digests(registry) -> set[str]:
    prefix = registry.user_id_key("")
    return {key.decode()[len(prefix):] if isinstance(key, bytes) else key[len(prefix):]
            for key in registry.sync.scan_iter(match=prefix + "*")}


def make_engine(bundle_path, registry, user_ids=True):
    bundle = load_bundle(bundle_path)
    bundle.manifest["config"].setdefault("alternate", {})["user_ids"] = user_ids
    return Engine(bundle, Catalog(bundle.items, bundle.tokenizer.eos_token_id), registry, ServiceMetrics())


def test_user_ids_come_from_the_history_and_are_cached(bundle_path, registry, monkeypatch):
    engine = make_engine(bundle_path, registry)
    assert engine.method.uses_user_ids
    calls = []
    real = method_module.generate_user_ids
    monkeypatch.setattr(method_module, "generate_user_ids", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))

    def user_ids(jobs):
        return engine.method.user_id_tokens([job.query() for job in jobs], engine.catalog.trie, engine.cache)

    jobs = [RecommendJob(("m1", "m2", "m3"), 5, True), RecommendJob(("m4",), 5, True, user_id="ignored")]
    first = user_ids(jobs)
    assert calls == [2] and all(isinstance(t, list) for t in first)
    trie = engine.catalog.trie
    digest = history_digest([list(trie.sequence(trie.index_of(i))[:-1]) for i in ("m1", "m2", "m3")])
    assert registry.get_user_ids_sync([digest])[0] == first[0]
    assert len(cached_digests(registry)) == 2
    # Cached: the same histories generate nothing; a new one is generated alone.
    again = user_ids(jobs + [RecommendJob(("m5", "m6"), 5, True)])
    assert again[:2] == first and calls == [2, 1]
    assert len(cached_digests(registry)) == 3
    # The prompt carries the user ID, and recommending works with it.
    results = engine.recommend_batch([RecommendJob(("m1", "m2", "m3"), 5, True)])
    assert not isinstance(results[0], Exception) and len(results[0]) == 5


def test_no_user_ids_when_the_bundle_has_none(bundle_path, registry):
    engine = make_engine(bundle_path, registry, user_ids=False)
    assert not engine.method.uses_user_ids
    results = engine.recommend_batch([RecommendJob(("m1",), 5, True)])
    assert not isinstance(results[0], Exception) and len(results[0]) == 5
    assert cached_digests(registry) == set()


def test_registry_user_id_cache(redis_url, catalog_name):
    registry = Registry(redis_url, catalog_name)
    try:
        assert registry.get_user_ids_sync(["abc"])[0] is None
        registry.set_user_ids_sync({"abc": [5, 6, 7]}, ttl_s=60)
        assert registry.get_user_ids_sync(["abc"])[0] == [5, 6, 7]
        assert registry.user_id_key("abc").endswith("uid:abc")
        assert 0 < registry.sync.ttl(registry.user_id_key("abc")) <= 60
    finally:
        registry.sync.delete(registry.user_id_key("abc"))
        registry.sync.close()


def test_registry_user_id_cache_batches(registry):
    """One MGET answers a batch (absent and unreadable entries are None); one pipeline writes."""
    registry.set_user_ids_sync({"a": [1, 2], "b": [3]}, ttl_s=60)
    registry.cache.set(registry.user_id_key("bad"), "not json")
    assert registry.get_user_ids_sync(["a", "missing", "b", "bad"]) == [[1, 2], None, [3], None]
    assert registry.get_user_ids_sync([]) == []
    assert 0 < registry.sync.ttl(registry.user_id_key("b")) <= 60
