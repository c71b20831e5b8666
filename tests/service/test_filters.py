"""Business filters through the API, against real Redis, on tiny IDGenRec, CLLM4Rec and SASRec
bundles: `filter` and `exclude_items` prune the search, so the answer equals a brute-force
reference (every qualifying item scored directly, the top k taken), and a request gets k items
whenever k qualify; minted items are filterable by their posted metadata at once, on every
replica; bad input gets a 422."""

from __future__ import annotations

import pytest

from genrec.bundle import load_bundle
from genrec.method import Query, load_method
from genrec.trie import TextualIdTrie
from service.filters import FilterIndex, field_name, words
from service.schemas import MAX_EXCLUDE_ITEMS, MAX_FILTER_FIELDS, MAX_FILTER_VALUES

from ..genrec.test_beam_search import assert_same_ranking, brute_force
from .conftest import N_ITEMS, assert_error, catalog_metadata, serve, wait_until
from .test_item_table_methods_api import cllm4rec_bundle_path, sasrec_bundle_path  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio

KINDS = ["idgenrec", "cllm4rec", "sasrec"]
ITEMS = [f"m{i}" for i in range(N_ITEMS)]


@pytest.fixture(params=KINDS)
def kind_bundle(request):
    """(kind, bundle folder) of each method."""
    name = "bundle_path" if request.param == "idgenrec" else f"{request.param}_bundle_path"
    return request.param, request.getfixturevalue(name)


def qualifying(query: dict[str, list[str]]) -> set[str]:
    """Brute force over the test catalog's metadata (simple space-separated words): the items
    whose every filtered field holds one of its words."""
    found = set()
    for item_id, metadata in zip(ITEMS, catalog_metadata(), strict=True):
        values = {key: " ".join(v) if isinstance(v, list) else str(v) for key, v in metadata.items()}
        if all(set(values.get(f.lower(), "").lower().split()) & {w.lower() for w in ws} for f, ws in query.items()):
            found.add(item_id)
    return found


_METHODS: dict[str, object] = {}


def reference_top(kind: str, bundle_path, history: list[str], allowed: set[str], k: int) -> list[tuple[str, float]]:
    """Every allowed item scored directly, best first, the top k: for IDGenRec each item's
    textual ID teacher-forced through the recommender (what a beam as wide as the catalog must
    find), for the item-table methods the method's full score row."""
    if kind not in _METHODS:
        bundle = load_bundle(bundle_path)
        method = load_method(bundle)
        trie = TextualIdTrie([i.item_id for i in bundle.items], [i.token_ids for i in bundle.items],
                             bundle.tokenizer.eos_token_id)
        _METHODS[kind] = (method, trie)
    method, trie = _METHODS[kind]
    if kind == "idgenrec":
        method.recommender.trie = trie
        outside = [i for i, item in enumerate(trie.item_keys) if item not in allowed]
        ranked = brute_force(method.recommender_model, method.recommender.prompt_ids(history), trie, outside)
        return [(trie.item_keys[i], score) for i, score in ranked[:k]]
    row = method.recommend([Query(history)], len(trie), trie)[0]
    assert len(row) == N_ITEMS  # the whole score row
    return [(r.item_id, r.score) for r in row if r.item_id in allowed][:k]


async def recommend(client, **body) -> list[dict]:
    response = await client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    return response.json()["items"]


# --------------------------------------------------------------------------- the index


def test_words_and_field_names():
    assert words("title: Toy Story (1995)") == {"title", "toy", "story", "1995"}
    assert words("Children's Sci-Fi rock/pop  FILM-Noir") == {"children's", "sci-fi", "rock", "pop", "film-noir"}
    assert words("ＣＯＭＥＤＹ Straße") == {"comedy", "strasse"}  # NFKC, case-folded
    # Combining marks belong to their words (Python's \\w would split हिन्दी into ह, न, द); NFKC
    # composes a decomposed accent.
    assert words("हिन्दी ภาษาไทย ภูมิศาสตร์ Cafe\u0301") == {"हिन्दी", "ภาษาไทย", "ภูมิศาสตร์", "caf\u00e9"}
    # Beyond the BMP too: an emoji separates words, a Brahmi vowel sign (Mc) is part of its word.
    assert words("rock\U0001f3b8pop \U00011013\U00011038") == {"rock", "pop", "\U00011013\U00011038"}
    assert field_name("Genres") == field_name("genres") == "genres"
    assert field_name("movie_title") == "title"  # the item text's label (ml-100k)
    assert field_name("Release Date") == field_name("release_date") == "release_date"


def test_filter_index_semantics():
    index = FilterIndex()
    index.add(0, {"title": "Toy Story", "genres": ["Animation", "Children's", "Comedy"], "year": 1995})
    index.add(1, {"title": "Heat", "genres": "Action Crime Thriller", "year": 1995.0})
    index.add(2, {"movie_title": "Toy Soldiers", "genres": "Action"})

    def matching(query):
        return set(index.matching(query).tolist())

    assert index.fields == ["genres", "title", "year"]
    assert matching({"genres": ["comedy"]}) == {0}
    assert matching({"genres": ["COMEDY", "action"]}) == {0, 1, 2}  # OR within a field
    assert matching({"genres": ["action"], "title": ["toy"]}) == {2}  # AND across fields
    assert matching({"year": ["1995"]}) == {0, 1}
    assert matching({"genres": ["children's"]}) == {0}
    assert matching({"genres": ["children"]}) == set()  # whole words only
    assert matching({"title": ["to"]}) == set()
    assert matching({"Genres": ["crime"]}) == {1}  # field names case-insensitive
    assert index.unknown_fields(["genres", "colour", "Colour", "colour"]) == ["colour", "Colour"]
    assert not index.add(0, {"genres": "Horror"})  # items never change: indexed once
    assert matching({"genres": ["horror"]}) == set()
    assert index.add(40, {"genres": "Horror"}) and 40 in index and 39 not in index  # numbers may skip
    assert index.matching({"genres": ["horror", "heat"]}).tolist() == [40]


def test_filter_index_of_bundle_reads_item_texts(bundle_path):
    bundle = load_bundle(bundle_path)
    index = FilterIndex.of_bundle(bundle.items)
    assert index.fields == ["genres", "title"]
    for query in ({"genres": ["comedy"]}, {"title": ["red", "blue"], "genres": ["drama"]}, {"title": ["7"]}):
        assert {bundle.items.item_ids[n] for n in index.matching(query).tolist()} == qualifying(query)


# --------------------------------------------------------------------------- against brute force


CASES = [
    ({"genres": ["Comedy"]}, [], 5),
    ({"genres": ["comedy", "HORROR"], "title": ["red", "blue", "dark", "lost"]}, ["m1"], 4),
    ({"title": ["river", "castle"]}, ["m3", "m9"], 40),  # k above what qualifies: all of them
]


@pytest.mark.parametrize(("query", "excluded", "k"), CASES)
async def test_filtered_recommendations_equal_brute_force(make_settings, kind_bundle, query, excluded, k):
    """A beam as wide as the catalog (IDGenRec) or a full score row: the filtered answer is the
    brute-force top k of the items that qualify, minus the history and exclude_items."""
    kind, path = kind_bundle
    history = ["m0", "m5", "m7"]
    allowed = qualifying(query) - set(history) - set(excluded)
    assert 3 <= len(allowed) < N_ITEMS - 10  # the filter matters
    expected = reference_top(kind, path, history, allowed, k)
    async with serve(make_settings(bundle=path, num_beams=64)) as (_app, client):
        got = await recommend(client, history=history, k=k, filter=query, exclude_items=excluded)
    assert len(got) == min(k, len(allowed))
    assert {i["item_id"] for i in got} <= allowed
    assert_same_ranking([(i["item_id"], i["score"]) for i in got], expected)


async def test_exactly_k_qualifying_items_come_back(make_settings, kind_bundle):
    """The bundle's own beam width (10 for IDGenRec): when exactly k items qualify all k come back,
    when fewer qualify those and nothing else, exclusions on top included."""
    kind, path = kind_bundle
    reds = qualifying({"title": ["red"]})
    assert reds == {"m0", "m10", "m20", "m30"}
    async with serve(make_settings(bundle=path)) as (_app, client):
        for history in (["m1", "m2"], ["m7", "m31", "m5"]):
            got = await recommend(client, history=history, k=4, filter={"title": ["red"]})
            assert {i["item_id"] for i in got} == reds
            got = await recommend(client, history=history, k=10, filter={"title": ["Red"]})
            assert {i["item_id"] for i in got} == reds
            got = await recommend(client, history=history, k=4, filter={"title": ["red"]}, exclude_items=["m20"])
            assert {i["item_id"] for i in got} == reds - {"m20"}
        # The history is excluded from what qualifies too; exclude_history=false lets it back.
        got = await recommend(client, history=["m10"], k=4, filter={"title": ["red"]})
        assert {i["item_id"] for i in got} == reds - {"m10"}
        got = await recommend(client, history=["m10"], k=4, filter={"title": ["red"]}, exclude_history=False)
        assert {i["item_id"] for i in got} == reds
        # Nothing qualifies: an empty answer, not an error.
        assert await recommend(client, history=["m1"], k=5, filter={"title": ["red"], "genres": ["horror"]}) == []


async def test_exclude_items_are_never_returned(make_settings, kind_bundle):
    """exclude_items without a filter: the top k of the rest (every item but the history and
    the excluded ones, when k asks for all)."""
    kind, path = kind_bundle
    async with serve(make_settings(bundle=path, num_beams=64)) as (_app, client):
        top = [i["item_id"] for i in await recommend(client, history=["m1"], k=5)]
        got = [i["item_id"] for i in await recommend(client, history=["m1"], k=5, exclude_items=top[:3])]
        assert len(got) == 5 and not set(got) & (set(top[:3]) | {"m1"})
        assert got[:2] == top[3:]  # the rest keep their order
        every = await recommend(client, history=["m1"], k=N_ITEMS, exclude_items=top + ["m1"], exclude_history=False)
        assert {i["item_id"] for i in every} == set(ITEMS) - set(top) - {"m1"}


# --------------------------------------------------------------------------- minted items


async def test_minted_items_are_filterable_at_once_on_every_replica(make_settings):
    """A minted item's posted metadata is in the filter index as soon as its ID is in the trie:
    on the replica that minted it (no wait), on a replica that follows the events stream, and on
    one started afterwards; a field only the new item has becomes a known field."""
    settings = make_settings()
    new = {"item_id": "new-1", "metadata": {"title": "Fresh Space Story", "genres": ["Night"], "brand": "Toy"}}
    async with serve(settings) as (_app_a, a), serve(settings) as (app_b, b):
        assert_error(await a.post("/v1/recommendations", json={"history": ["m1"], "filter": {"brand": ["toy"]}}),
                     422, "unknown_filter_field")
        assert (await a.post("/v1/items", json=new)).status_code == 201
        for query in ({"genres": ["night"]}, {"brand": ["TOY"]}, {"title": ["fresh"], "genres": ["night", "drama"]}):
            assert [i["item_id"] for i in await recommend(a, history=["m1"], k=5, filter=query)] == ["new-1"]
        # Bundle items and the new one under one filter: it is ranked among them.
        got = await recommend(a, history=["m1"], k=N_ITEMS, filter={"genres": ["night", "comedy"]})
        assert {i["item_id"] for i in got} == qualifying({"genres": ["comedy"]}) - {"m1"} | {"new-1"}
        assert await wait_until(lambda: "new-1" in app_b.state.service.catalog)
        assert [i["item_id"] for i in await recommend(b, history=["m1"], k=5, filter={"brand": ["toy"]})] == ["new-1"]
    async with serve(settings) as (_app_c, c):  # reads the stream at start
        assert [i["item_id"] for i in await recommend(c, history=["m1"], k=5, filter={"genres": ["night"]})] == ["new-1"]


async def test_words_with_combining_marks_match_whole(make_settings):
    """An item whose text holds words of scripts with combining marks (Devanagari, Thai) and a
    Latin word with a combining accent is found by a filter with each of those words, and not by
    the pieces Python's \\w would have cut them into."""
    new = {"item_id": "new-marks", "metadata": {"title": "Cafe\u0301 हिन्दी", "genres": "ภาษาไทย ภูมิศาสตร์"}}
    async with serve(make_settings()) as (_app, client):
        assert (await client.post("/v1/items", json=new)).status_code == 201
        for query in ({"title": ["हिन्दी"]}, {"title": ["cafe\u0301"]}, {"title": ["CAF\u00c9"]},
                      {"genres": ["ภาษาไทย"]}, {"genres": ["ภูมิศาสตร์"]}):
            assert [i["item_id"] for i in await recommend(client, history=["m1"], k=5, filter=query)] == ["new-marks"]
        for query in ({"title": ["ह"]}, {"title": ["cafe"]}, {"genres": ["ภ"]}):
            assert await recommend(client, history=["m1"], k=5, filter=query) == []


async def test_minted_items_of_item_table_bundles_match_but_are_not_recommended(make_settings, sasrec_bundle_path):  # noqa: F811
    """CLLM4Rec and SASRec cannot recommend a new item before retraining: a filter only it
    matches is a known field with an empty answer, never another item."""
    async with serve(make_settings(bundle=sasrec_bundle_path)) as (_app, client):
        new = {"item_id": "new-2", "metadata": {"title": "Fresh Night", "brand": "Toy"}}
        assert (await client.post("/v1/items", json=new)).status_code == 201
        assert await recommend(client, history=["m1"], k=5, filter={"brand": ["toy"]}) == []
        got = await recommend(client, history=["m1"], k=N_ITEMS, filter={"title": ["fresh", "red"]})
        assert {i["item_id"] for i in got} == qualifying({"title": ["red"]})


# --------------------------------------------------------------------------- bad input


@pytest.fixture
async def client(make_settings):
    async with serve(make_settings()) as (_app, client):
        yield client


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"filter": ["genres"]}, "filter"),
        ({"filter": "genres=comedy"}, "filter"),
        ({"filter": {"genres": "comedy"}}, "filter.genres"),
        ({"filter": {"genres": [1]}}, "filter.genres.0"),
        ({"filter": {"genres": [None]}}, "filter.genres.0"),
        ({"filter": {}}, "filter"),
        ({"filter": {"genres": []}}, "filter.genres"),
        ({"filter": {"genres": [""]}}, "filter.genres.0"),
        ({"filter": {"genres": ["two words"]}}, "filter.genres.0"),
        ({"filter": {"genres": ["comedy,"]}}, "filter.genres.0"),
        ({"filter": {"genres": ["com\x01edy"]}}, "filter.genres.0"),
        ({"filter": {"genres": ["x" * 65]}}, "filter.genres.0"),
        ({"filter": {"genres": ["comedy"] * (MAX_FILTER_VALUES + 1)}}, "filter.genres"),
        ({"filter": {f"f{i}": ["a"] for i in range(MAX_FILTER_FIELDS + 1)}}, "filter"),
        ({"filter": {"": ["comedy"]}}, "filter..[key]"),
        ({"filter": {"gen\x01res": ["comedy"]}}, "filter.gen\x01res.[key]"),
        ({"filter": {"g" * 65: ["comedy"]}}, f"filter.{'g' * 65}.[key]"),
        ({"exclude_items": "m2"}, "exclude_items"),
        ({"exclude_items": [2]}, "exclude_items.0"),
        ({"exclude_items": [""]}, "exclude_items.0"),
        ({"exclude_items": ["m\x012"]}, "exclude_items.0"),
        ({"exclude_items": ["m" * 257]}, "exclude_items.0"),
        ({"exclude_items": ["m2"] * (MAX_EXCLUDE_ITEMS + 1)}, "exclude_items"),
    ],
)
async def test_bad_filters_and_exclusions(client, extra, field):
    error = assert_error(await client.post("/v1/recommendations", json={"history": ["m1"], **extra}), 422,
                         "invalid_request")
    assert field in [f["field"] for f in error["details"]["fields"]], error


async def test_unknown_filter_fields_and_excluded_items(client):
    error = assert_error(await client.post("/v1/recommendations", json={
        "history": ["m1"], "filter": {"genres": ["comedy"], "colour": ["red"], "Size": ["xl"]}}),
        422, "unknown_filter_field")
    assert error["details"] == {"fields": ["colour", "Size"], "known_fields": ["genres", "title"]}
    assert "'colour'" in error["message"] and "genres, title" in error["message"]
    error = assert_error(await client.post("/v1/recommendations", json={
        "history": ["m1"], "exclude_items": ["m2", "ghost", "m3", "ghost"]}), 422, "unknown_items")
    assert error["details"] == {"item_ids": ["ghost"], "field": "exclude_items"}
    assert "exclude_items" in error["message"]


async def test_edge_values_are_accepted(client):
    """At the caps, empty exclusions, a null filter, field names in any case."""
    assert len(await recommend(client, history=["m1"], k=3, exclude_items=[], filter=None)) == 3
    at_cap = ["m2"] * MAX_EXCLUDE_ITEMS
    assert "m2" not in {i["item_id"] for i in await recommend(client, history=["m1"], k=3, exclude_items=at_cap)}
    wide = {"GENRES": ["comedy"] * MAX_FILTER_VALUES, "Title": ["the"]}
    got = await recommend(client, history=["m1"], k=N_ITEMS, filter=wide)
    assert {i["item_id"] for i in got} == qualifying({"genres": ["comedy"]}) - {"m1"}
