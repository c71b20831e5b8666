"""The served OpenAPI document is the contract the server keeps: the bearer token declared on
exactly the operations that need one as configured, the limits that are settings stated as
their values, and the request bodies it declares valid accepted, those it declares invalid
refused (422), checked body by body against the document itself (a JSON Schema validator that
reads patterns as ECMA-262 does). The patterns' character classes are checked against what
Python means by them."""

from __future__ import annotations

import json
import re
import unicodedata

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from genrec.word_characters import word_character
from service.app import create_app
from service.schemas import (
    CONTROL_CHARACTERS,
    FILTER_WORD,
    NON_WORD_CHARACTERS,
    SETTINGS_KEY,
    WHITESPACE,
    WORD_SEPARATORS,
    FilterWord,
    words_at_most,
)

from .conftest import assert_error, serve
from .redis_server import registry_contents

READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"


def secured_operations(document: dict) -> set[str]:
    return {f"{method.upper()} {path}" for path, entries in document["paths"].items()
            for method, operation in entries.items() if operation.get("security")}


READS = {"POST /v1/recommendations", "GET /v1/items", "GET /v1/items/{item_id}", "GET /v1/users/{user_id}/events"}
WRITES = {"POST /v1/items", "POST /v1/events"}


@pytest.mark.parametrize(
    "overrides, secured",
    [
        ({}, set()),  # anonymous writes: nothing needs a token
        ({"api_token": WRITER}, WRITES),
        ({"api_token": WRITER, "require_read_token": True}, READS | WRITES | {"GET /metrics"}),
        ({"api_token": WRITER, "require_read_token": True, "metrics_access": "open"}, READS | WRITES),
        ({"api_tokens": f"web:{READER}:read", "require_read_token": True}, READS | {"GET /metrics"}),
        ({"api_tokens": f"web:{READER}:read", "metrics_access": "token"}, {"GET /metrics"}),
    ],
    ids=["no token", "write token", "read token", "read token, open metrics", "read-only token", "metrics token"],
)
def test_the_token_is_declared_exactly_where_it_is_needed(make_settings, overrides, secured):
    document = create_app(make_settings(**overrides)).openapi()
    assert secured_operations(document) == secured
    schemes = document.get("components", {}).get("securitySchemes", {})
    assert (schemes["apiToken"]["scheme"] == "bearer") if secured else schemes == {}


def test_an_operation_turned_off_is_not_in_the_document(make_settings):
    document = create_app(make_settings(metrics_access="off")).openapi()
    assert "/metrics" not in document["paths"] and "/v1/items" in document["paths"]


@pytest.mark.anyio
async def test_without_a_token_the_write_declares_none_and_answers_201(make_settings):
    """The contract schemathesis once found broken: the document said 401 where the server said 201."""
    async with serve(make_settings()) as (_app, client):
        document = (await client.get("/openapi.json")).json()
        assert "security" not in document["paths"]["/v1/items"]["post"]
        response = await client.post("/v1/items", json={"item_id": "open-1", "metadata": {"title": "fresh entry"}})
        assert response.status_code == 201, response.text


LIMITS = dict(max_history=3, max_k=7, max_metadata_fields=4, max_metadata_value_chars=40, max_metadata_word_chars=10,
              max_metadata_chars=120, max_events_per_request=6)


@pytest.mark.anyio
async def test_a_request_without_k_gets_the_default_the_document_states(make_settings):
    """k's default is 10, or GENREC_MAX_K when that is smaller: a request that leaves k out is
    never refused for a value it did not send (found by schemathesis: the default was over the
    maximum the document stated)."""
    async with serve(make_settings(**LIMITS)) as (_app, client):
        response = await client.post("/v1/recommendations", json={"history": ["m1"]})
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 7
        assert_error(await client.post("/v1/recommendations", json={"history": ["m1"], "k": 8}), 422, "invalid_request")


def request_schemas(document: dict) -> tuple[dict, dict]:
    schemas = document["components"]["schemas"]
    return schemas["RecommendationRequest"], schemas["ItemCreateRequest"]


def history_schema(recommend: dict) -> dict:
    """The history's array schema (the field may be null)."""
    return next(branch for branch in recommend["properties"]["history"]["anyOf"] if branch["type"] == "array")


def test_the_limits_that_are_settings_are_stated_as_their_values(make_settings):
    document = create_app(make_settings(**LIMITS)).openapi()
    assert SETTINGS_KEY not in json.dumps(document)
    recommend, item = request_schemas(document)
    assert history_schema(recommend)["maxItems"] == 3
    assert document["components"]["schemas"]["EventsRequest"]["properties"]["events"]["maxItems"] == 6
    assert recommend["properties"]["k"]["maximum"] == 7 and recommend["properties"]["k"]["default"] == 7
    metadata = item["properties"]["metadata"]
    assert metadata["maxProperties"] == 4
    string, _integer, _number, listed = metadata["additionalProperties"]["anyOf"]
    for text in (string, listed["items"]):
        assert text["maxLength"] == 40 and text["pattern"] == words_at_most(10)
    # A setting above a static limit leaves the static one.
    wide = create_app(make_settings(max_metadata_value_chars=100_000)).openapi()
    assert request_schemas(wide)[0]["properties"]["k"]["default"] == 10  # max_k 100: the default stays
    string, *_, listed = request_schemas(wide)[1]["properties"]["metadata"]["additionalProperties"]["anyOf"]
    assert string["maxLength"] == 4096 and listed["items"]["maxLength"] == 256


ITEM_BODIES = [
    {"title": "fresh entry"},
    {"title": "x" * 10},  # a word of the longest length
    {"title": "x" * 11},  # one character more
    {"title": "ab,cd;ef gh\u00a0ij\u3001kl\u2014mn\uff0cop"},  # words split by separators of several scripts
    {"title": "\u00e9" * 11},  # letters beyond ASCII make words too
    {"title": "\u0661" * 10 + "\u00bd"},  # digits of other scripts too; Latin-1's ½ separates
    {"title": "word " * 8},  # 40 characters
    {"title": "word " * 8 + "w"},  # 41
    {"tags": ["word"] * 20},  # a list of short strings: each string counts
    {"tags": ["w" * 41]},
    {"a": "x", "b": "y", "c": "z", "d": "w"},  # as many fields as allowed
    {"a": "x", "b": "y", "c": "z", "d": "w", "e": "v"},
    {"title": " \t\u3000"},  # only whitespace
    {"title": "", "tags": [], "more": [" ", "\u2028"]},  # every value blank
    {"title": "", "year": 0},  # a number is text
    {"title": " ", "tags": ["", "x"]},
    {"ti\u0085tle": "x"},  # a control character in a key (U+0085 is one)
    {"t\u00a0itle": "x"},  # a no-break space is not one
    {"year": 2**53 - 1},
    {"year": 2**53},
    {"year": 1e15},
    {"year": 1e20},  # a float past the bound, like the integer
    {"year": -9.5e15},
    {"title": "ok", "\u00e9t\u00e9": ["x\u0007y"]},  # values may hold control characters
]


RECOMMEND_BODIES = [
    {"history": ["m1", "m2", "m3"], "k": 7},
    {"history": ["m1", "m2", "m3", "m4"]},
    {"history": ["m1"], "k": 8},
    {"history": ["m\u00851"]},
    {"history": ["m1"], "k": 7.0},  # JSON Schema's integer: 7.0 is one
    {"history": ["m1"], "k": 1.0},
    {"history": ["m1"], "k": 6.5},
    {"history": ["m1"], "k": True},
    {"history": ["m1"], "k": "7"},
    {"history": ["m1"], "k": 8.0},
    {"history": ["m1"], "k": 0.0},
    {"history": ["m1"], "filter": {"genres": ["Comedy", "Sci-Fi", "children's", "l\u2019\u00e9t\u00e9"]}},
    {"history": ["m1"], "filter": {"genres": ["Com\u00e9die", "\u0939\u093f\u0928\u094d\u0926\u0940", "\u00bd"]}},
    {"history": ["m1"], "filter": {"genres": ["x\u0301", "a_b", "\U0001d400"]}},  # a mark; a letter past the BMP
    {"history": ["m1"], "filter": {"genres": ["sci-"]}},
    {"history": ["m1"], "filter": {"genres": ["sci--fi"]}},
    {"history": ["m1"], "filter": {"genres": ["two words"]}},
    {"history": ["m1"], "filter": {"genres": ["\u00bfqu\u00e9"]}},
    {"history": ["m1"], "filter": {"genres\u0000": ["comedy"]}},  # a control character in a field name
]


@pytest.mark.anyio
async def test_what_the_document_declares_valid_the_server_accepts_and_no_more(make_settings):
    async with serve(make_settings(**LIMITS)) as (_app, client):
        document = (await client.get("/openapi.json")).json()
        recommend_schema, item_schema = request_schemas(document)
        item_valid = jsonschema_rs.validator_for(item_schema).is_valid
        recommend_valid = jsonschema_rs.validator_for(recommend_schema).is_valid
        bodies = [(f"item-{n}", metadata) for n, metadata in enumerate(ITEM_BODIES)]
        bodies += [("bad\u0000id", {"title": "x"}), ("bad\u009fid", {"title": "x"}), ("ok\u00a0id", {"title": "x"})]
        outcomes = []
        for item_id, metadata in bodies:
            body = {"item_id": item_id, "metadata": metadata}
            response = await client.post("/v1/items", json=body)
            assert response.status_code in (201, 422), response.text
            outcomes.append((body, item_valid(body), response.status_code))
        assert all(valid == (status == 201) for _body, valid, status in outcomes), [
            (body, valid, status) for body, valid, status in outcomes if valid != (status == 201)]
        assert {valid for _b, valid, _s in outcomes} == {True, False}  # both kinds were tried
        for body in RECOMMEND_BODIES:
            response = await client.post("/v1/recommendations", json=body)
            assert recommend_valid(body) == (response.status_code == 200), (body, response.text)


@pytest.mark.anyio
async def test_an_item_text_over_the_size_limit_is_413(make_settings, redis_url, catalog_name):
    """Per field the metadata are valid; the item text they flatten to is over
    GENREC_MAX_METADATA_CHARS, a size JSON Schema cannot state: 413, nothing written."""
    async with serve(make_settings(**LIMITS)) as (_app, client):
        before = registry_contents(redis_url, catalog_name)
        metadata = {"a": "word " * 8, "b": "word " * 8, "c": "word " * 8}
        error = assert_error(await client.post("/v1/items", json={"item_id": "big", "metadata": metadata}), 413,
                             "payload_too_large")
        assert error["details"]["fields"][0]["field"] == "metadata" and error["details"]["max_chars"] == 120
        assert registry_contents(redis_url, catalog_name) == before


def test_the_character_classes_mean_what_python_means():
    """CONTROL_CHARACTERS is Unicode's Cc, WHITESPACE is str.isspace (what the item text's
    whitespace collapsing strips), over every code point."""
    control, space = re.compile(f"[{CONTROL_CHARACTERS}]"), re.compile(f"[{WHITESPACE}]")
    for code in range(0x110000):
        char = chr(code)
        assert bool(control.match(char)) == (unicodedata.category(char) == "Cc"), hex(code)
        assert bool(space.match(char)) == char.isspace(), hex(code)


def test_the_word_characters_are_what_schemas_says():
    """A filter word's characters: every code point but controls and formats (the zero-width
    joiners excepted), private use, punctuation but connectors, symbols and separators. Within the
    BMP they are exactly the filter index's word characters (combining marks included, which
    Python's \\w leaves out), so any word it holds can be asked and any word asked can be held;
    beyond it the document's pattern admits every character (ECMA-262 reads surrogate halves)."""
    word = re.compile(f"[^{NON_WORD_CHARACTERS}]")
    in_index = re.compile(word_character())
    non_word = {"Cc", "Cf", "Co", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp"}
    for code in range(0x110000):
        char = chr(code)
        is_word = char in "\u200c\u200d" or unicodedata.category(char) not in non_word
        assert bool(word.match(char)) == (code > 0xFFFF or is_word), hex(code)
        assert bool(in_index.match(char)) == is_word, hex(code)
        assert not re.match(r"\w", char) or in_index.match(char), hex(code)
    assert all(in_index.match(mark) for mark in "\u0301\u093f\u094d\u0e39\u20dd\U00011046")  # Mn, Mc, Me


WORD_PIECES = st.sampled_from(["a", "Z", "\u00e9", "\u0301", "_", "7", "\u00bd", "-", "'", "\u2019", " ", "\u00a0",
                               "\u2014", "\u3001", "\U0001d400", "\U0001f3ac", "\u200d", "\n", "\u0000"])


@settings(max_examples=500, deadline=None)
@given(text=st.text(st.one_of(st.characters(codec="utf-8"), WORD_PIECES), min_size=1, max_size=12))
def test_the_filter_word_pattern_means_the_same_in_python_in_ecma_and_on_the_server(text):
    """A filter word the document's pattern admits (read as ECMA-262 by a JSON Schema validator,
    or by Python's re) is one the server accepts, and no other."""
    in_python = re.fullmatch(FILTER_WORD, text) is not None
    assert jsonschema_rs.validator_for({"type": "string", "pattern": FILTER_WORD}).is_valid(text) == in_python
    try:
        TypeAdapter(FilterWord).validate_python(text)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == (in_python and len(text) <= 64)


TEXT = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from("ab1_ ,.\u00a0\u3001\u00e9")), max_size=40)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, longest=st.integers(1, 6))
def test_the_word_pattern_limits_the_longest_word_in_python_and_in_ecma(text, longest):
    """The pattern says what the server means (no run of word characters longer than `longest`),
    and a JSON Schema validator, which reads it as ECMA-262, agrees."""
    runs = re.split(f"[{WORD_SEPARATORS}]+", text)
    expected = max(map(len, runs)) <= longest
    pattern = words_at_most(longest)
    assert (re.fullmatch(pattern, text) is not None) == expected
    assert jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid(text) == expected


@pytest.mark.anyio
async def test_a_huge_integral_k_is_refused_with_a_short_message(make_settings):
    async with serve(make_settings(**LIMITS)) as (_app, client):
        response = await client.post("/v1/recommendations", json={"history": ["m1"], "k": 1e300})
        assert response.status_code == 422 and "(got more)" in response.text, response.text
        assert len(response.text) < 1000
