"""Textual user IDs in the service (SPEC 1.5): built from the request's history with the
bundle's generator, cached in Redis under `uid:{sha1 of the history}`."""

from __future__ import annotations

import service.engine as engine_module
from genrec.bundle import load_bundle
from genrec.user_ids import history_digest
from service.catalog import Catalog
from service.engine import Engine, RecommendJob
from service.metrics import ServiceMetrics
from service.registry import Registry


class FakeCache:
    def __init__(self):
        self.values: dict[str, list[int]] = {}

    def get_user_id_sync(self, digest):
        return self.values.get(digest)

    def set_user_id_sync(self, digest, tokens, ttl_s=0):
        self.values[digest] = list(tokens)


def make_engine(bundle_path, registry, user_ids=True):
    bundle = load_bundle(bundle_path)
    bundle.manifest["config"].setdefault("alternate", {})["user_ids"] = user_ids
    return Engine(bundle, Catalog(bundle.items, bundle.tokenizer.eos_token_id), registry, ServiceMetrics())


def test_user_ids_come_from_the_history_and_are_cached(bundle_path, monkeypatch):
    cache = FakeCache()
    engine = make_engine(bundle_path, cache)
    assert engine.uses_user_ids
    calls = []
    real = engine_module.generate_user_ids
    monkeypatch.setattr(engine_module, "generate_user_ids", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    jobs = [RecommendJob(("m1", "m2", "m3"), 5, True), RecommendJob(("m4",), 5, True, user_id="ignored")]
    first = engine.user_id_tokens_batch(jobs)
    assert calls == [2] and all(isinstance(t, list) for t in first)
    trie = engine.catalog.trie
    digest = history_digest([list(trie.sequence(trie.index_of(i))[:-1]) for i in ("m1", "m2", "m3")])
    assert cache.values[digest] == first[0]
    # Cached: the same histories generate nothing; a new one is generated alone.
    again = engine.user_id_tokens_batch(jobs + [RecommendJob(("m5", "m6"), 5, True)])
    assert again[:2] == first and calls == [2, 1]
    # The prompt carries the user ID, and recommending works with it.
    results = engine.recommend_batch([RecommendJob(("m1", "m2", "m3"), 5, True)])
    assert not isinstance(results[0], Exception) and len(results[0]) == 5


def test_no_user_ids_when_the_bundle_has_none(bundle_path):
    cache = FakeCache()
    engine = make_engine(bundle_path, cache, user_ids=False)
    assert not engine.uses_user_ids
    assert engine.user_id_tokens(RecommendJob(("m1",), 5, True)) is None
    assert cache.values == {}


def test_registry_user_id_cache(redis_url, catalog_name):
    registry = Registry(redis_url, catalog_name)
    try:
        assert registry.get_user_id_sync("abc") is None
        registry.set_user_id_sync("abc", [5, 6, 7], ttl_s=60)
        assert registry.get_user_id_sync("abc") == [5, 6, 7]
        assert registry.user_id_key("abc").endswith("uid:abc")
        assert 0 < registry.sync.ttl(registry.user_id_key("abc")) <= 60
    finally:
        registry.sync.delete(registry.user_id_key("abc"))
        registry.sync.close()
