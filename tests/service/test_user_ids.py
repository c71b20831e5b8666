"""Textual user IDs in the service (docs/methods.md, "Textual user IDs"): built from the request's history with the
bundle's generator, cached in Redis under `uid:{sha1 of the history}`."""

from __future__ import annotations

import pytest

import genrec.idgenrec.method as method_module
import genrec.idgenrec.recommender as recommender_module
from genrec.bundle import load_bundle
from genrec.idgenrec.prompts import HISTORY_SEPARATOR
from genrec.idgenrec.user_ids import history_digest
from genrec.method import Query
from genrec.tokenization import encode_text
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
    # Recommending works with user IDs (what reaches the prompt: the next test).
    results = engine.recommend_batch([RecommendJob(("m1", "m2", "m3"), 5, True)])
    assert not isinstance(results[0], Exception) and len(results[0]) == 5


def test_the_textual_user_id_reaches_the_prompt(bundle_path, registry, monkeypatch):
    """The encoder input of every query is the test template with the query's textual user ID
    tokens where `{user_id}` stands, right after "Considering user"."""
    engine = make_engine(bundle_path, registry)
    method, trie, tokenizer = engine.method, engine.catalog.trie, engine.bundle.tokenizer
    prompts: list[list[list[int]]] = []
    real = recommender_module.constrained_beam_search

    def spy(model, batch, *args, **kwargs):
        prompts.append([list(p) for p in batch])
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(recommender_module, "constrained_beam_search", spy)
    histories = [("m1", "m2", "m3"), ("m4",)]
    queries = [Query(history=h, exclude=h) for h in histories]
    user_ids = method.user_id_tokens(queries, trie, engine.cache)
    assert all(user_ids), user_ids
    method.recommend(queries, 5, trie, engine.cache)
    assert len(prompts) == 1 and len(prompts[0]) == 2
    before, between, after = (encode_text(tokenizer, part) for part in (
        "Considering user", "has interacted with items", ". What is the next recommendation for the user ?"))
    for prompt, history, user in zip(prompts[0], histories, user_ids, strict=True):
        items = [list(trie.sequence(trie.index_of(i))[:-1]) for i in history]
        separator = encode_text(tokenizer, HISTORY_SEPARATOR)
        listed = [t for n, ids in enumerate(items) for t in (separator if n else []) + ids]
        assert prompt == before + user + between + listed + after + [tokenizer.eos_token_id]


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
