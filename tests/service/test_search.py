"""GET /v1/items?q=: the title search, through httpx against real Redis with the tiny bundle
(titles "The <adjective> <noun> <i>"), and its index against a brute-force reference."""

from __future__ import annotations

import random

import pytest

from genrec.bundle import read_items
from genrec.item_text import item_title
from service.catalog import Catalog
from service.registry import ItemRecord
from service.title_search import TitleIndex, title_words

from .conftest import N_ITEMS, assert_error, catalog_metadata, serve, wait_until

pytestmark = pytest.mark.anyio

TITLES = [m["title"] for m in catalog_metadata()]  # item m{i} has TITLES[i]


@pytest.fixture
async def client(make_settings):
    async with serve(make_settings()) as (_app, client):
        yield client


def brute_force(titles: list[str], query: str) -> list[int]:
    """The positions a search must answer, found by reading every title."""
    prefixes = title_words(query)
    if not prefixes:
        return []
    return [i for i, title in enumerate(titles)
            if all(any(w.startswith(p) for w in title_words(title)) for p in prefixes)]


async def test_words_of_the_query_begin_words_of_the_title(client, bundle_path):
    response = await client.get("/v1/items", params={"q": "RED Riv"})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    expected = [f"m{i}" for i in brute_force(TITLES, "red riv")]
    assert expected and [item["item_id"] for item in items] == expected
    textual = {i.item_id: i.textual_id for i in read_items(bundle_path)}
    for item in items:
        index = int(item["item_id"][1:])
        assert item == {"item_id": f"m{index}", "textual_id": textual[item["item_id"]], "title": TITLES[index],
                        "recommendable": True}
    # A word of the query must begin a title word: "iver" is inside "river", which is not enough.
    assert (await client.get("/v1/items", params={"q": "iver"})).json() == {"items": []}
    # Whole numbers are words too, and a query with no word matches nothing.
    assert [i["item_id"] for i in (await client.get("/v1/items", params={"q": "the 17"})).json()["items"]] == ["m17"]
    assert (await client.get("/v1/items", params={"q": "!!"})).json() == {"items": []}


async def test_limit_default_cap_and_bad_queries(client):
    everything = (await client.get("/v1/items", params={"q": "the"})).json()["items"]
    assert [i["item_id"] for i in everything] == [f"m{i}" for i in range(20)]  # the default limit, catalog order
    some = (await client.get("/v1/items", params={"q": "the", "limit": 3})).json()["items"]
    assert some == everything[:3]
    whole = (await client.get("/v1/items", params={"q": "the", "limit": 100})).json()["items"]
    assert len(whole) == N_ITEMS
    for params, field in (({"q": "the", "limit": 101}, "limit"), ({"q": "the", "limit": 0}, "limit"),
                          ({"q": "the", "limit": "many"}, "limit"), ({}, "q"), ({"q": ""}, "q"),
                          ({"q": "x" * 201}, "q")):
        error = assert_error(await client.get("/v1/items", params=params), 422, "invalid_request")
        assert field in str(error["details"]), (params, error)
    # The item look-up beside it still answers.
    assert (await client.get("/v1/items/m3")).json()["item_id"] == "m3"
    assert_error(await client.get("/v1/items/nope"), 404, "item_not_found")


async def test_schema_shows_the_limit_cap(client):
    schema = (await client.get("/openapi.json")).json()
    parameters = {p["name"]: p for p in schema["paths"]["/v1/items"]["get"]["parameters"]}
    assert parameters["limit"]["schema"]["maximum"] == 100 and parameters["limit"]["schema"]["default"] == 20
    assert parameters["q"]["required"] is True


async def test_minted_items_are_found_at_once_on_every_replica(make_settings):
    settings = make_settings()
    async with serve(settings) as (app_a, a), serve(settings) as (_app_b, b):
        item = {"item_id": "found-1", "metadata": {"title": "Fresh Night Story", "year": 2024, "genres": "comedy"}}
        minted = await a.post("/v1/items", json=item)
        assert minted.status_code == 201, minted.text
        hit = {"item_id": "found-1", "textual_id": minted.json()["textual_id"], "title": "Fresh Night Story",
               "recommendable": True}
        assert (await a.get("/v1/items", params={"q": "fresh nig"})).json()["items"] == [hit]
        # Replica B learns the item, its text included, from the events stream.
        catalog_b = _app_b.state.service.catalog
        assert await wait_until(lambda: "found-1" in catalog_b)
        assert (await b.get("/v1/items", params={"q": "night fresh"})).json()["items"] == [hit]
        assert app_a.state.service.catalog.search("story", 5) == [("found-1", "Fresh Night Story")]


async def test_a_replica_started_later_finds_the_minted_items(make_settings):
    settings = make_settings()
    async with serve(settings) as (_app, a):
        item = {"item_id": "early-1", "metadata": {"name": "Golden Toy", "genres": "drama"}}
        assert (await a.post("/v1/items", json=item)).status_code == 201
    async with serve(settings) as (_app, b):
        items = (await b.get("/v1/items", params={"q": "golden toy"})).json()["items"]
        assert [(i["item_id"], i["title"]) for i in items] == [("early-1", "Golden Toy")]


async def test_reads_need_a_token_when_reads_do(make_settings):
    token = "r" * 32
    settings = make_settings(api_token=token, require_read_token=True, allow_anonymous_writes=False)
    async with serve(settings) as (_app, client):
        assert_error(await client.get("/v1/items", params={"q": "red"}), 401, "unauthorized")
        response = await client.get("/v1/items", params={"q": "red"}, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.json()["items"]


def test_index_agrees_with_brute_force_and_learns_titles_later():
    rng = random.Random(7)
    # A few common words and many rare ones ("w0".."w79"): short prefixes of either kind take the
    # search through both its ways (titles read in order, posting lists merged).
    vocabulary = ["star", "stars", "start", "wars", "war", "Wonder", "ÉTÉ", "été", "a", "an", "x1", "1977", "trek"]
    vocabulary += [f"w{n}" for n in range(80)] * 2
    titles = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    half = len(titles) // 2
    index = TitleIndex(titles[:half])  # items 0 .. half - 1
    for n in reversed(range(half, len(titles))):  # added later: positions in the order added
        assert index.add(n, titles[n])
    assert not index.add(0, "something else") and index.title(0) == titles[0]
    assert not index.add(half, "something else") and index.title(half) == titles[half]
    order = [*range(half), *reversed(range(half, len(titles)))]
    queries = ["st", "star wa", "wa st", "ÉT", "a", "an x", "197", "WONDER", "zzz", "st zzz", "s s", "trek 1977 a",
               "w", "w1", "w7 st", "w 1977", "a w", "w1 w7", "w2 w5"]
    for query in queries:
        for limit in (1, 7, 1000):
            in_order = [titles[n] for n in order]
            expected = [(order[p], in_order[p]) for p in brute_force(in_order, query)][:limit]
            assert index.search(query, limit) == expected, (query, limit)


def test_words_keep_their_combining_marks():
    """A word's combining marks are part of it (Python's \\w would split हिन्दी into ह, न, द), a
    decomposed accent finds the composed one (NFKC), and a word holding U+10FFFF (unassigned, so a
    word character) is still found by its prefix."""
    assert title_words("हिन्दी ภูมิศาสตร์ Cafe\u0301") == ["हिन्दी", "ภูมิศาสตร์", "caf\u00e9"]
    titles = ["हिन्दी फ़िल्म", "Caf\u00e9 Noir", "ภูมิศาสตร์ ไทย", "a\U0010ffffb", "हिरन"]
    index = TitleIndex(titles)
    assert index.search("हिन्", 10) == [(0, titles[0])]
    assert index.search("हि", 10) == [(0, titles[0]), (4, titles[4])]
    assert index.search("cafe\u0301", 10) == [(1, titles[1])]
    assert index.search("ภูมิ", 10) == [(2, titles[2])]
    assert index.search("a", 10) == [(3, titles[3])]
    assert index.search("ह न", 10) == []  # the pieces \\w made are no words


def test_catalog_indexes_an_item_learned_without_its_metadata_once_it_comes():
    catalog = Catalog([], eos_token_id=1)
    assert catalog.add("q-1", "quiet robot", [5, 6, 1])  # an events entry without metadata
    assert catalog.search("quiet", 5) == []
    metadata = {"year": 1999, "title": ["Quiet", "Robot"]}  # title fields lead the item text
    record = ItemRecord("q-1", "quiet robot", [5, 6, 1], "", metadata, "", "minted")
    assert not catalog.add(record.item_id, record.textual_id, record.token_ids, record.metadata)
    assert catalog.search("quiet", 5) == [("q-1", "Quiet Robot")]
    # Without a title field, the title is the item's whole text.
    assert catalog.add("q-2", "blue note", [7, 1], {"label": "Blue Note", "year": 1.0})
    assert catalog.search("blue", 5) == [("q-2", "label: Blue Note; year: 1")]


@pytest.mark.parametrize("text, title", [
    ("title: Toy Story (1995); year: 1995; genres: Animation", "Toy Story (1995)"),
    ("name: Blue: Note; tags: jazz", "Blue: Note"),  # the labels of the title fields: title, name
    ("title: A; B; year: 3", "A; B"),  # a "; " not followed by a label stays in the title
    ("year: 1995; title: Late", "year: 1995; title: Late"),  # only a leading title field
    ("Plain words", "Plain words"),
])
def test_item_title_reads_the_leading_title_field(text, title):
    assert item_title(text) == title
