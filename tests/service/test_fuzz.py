"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis), in
process, against real Redis, with the write token set and supplied so minting is fuzzed too.

Checked on every generated request: no 5xx, the status code is one the route documents, the
content type and body match the documented schema; a write sent without the token is refused.
Valid requests (per the schema) and invalid ones are both generated. Afterwards Redis must hold
no half-written item. Bounded: 50 examples per operation and mode."""

from __future__ import annotations

import json

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.registry import namespace

from .conftest import N_ITEMS

TOKEN = "fuzz-token-16-chars"
EXAMPLES = 50  # per operation and mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
    negative_data_rejection,
]
# Statuses that count as rejecting a request the schema forbids (413: too large is a rejection too;
# 429: after too many wrong tokens from one address, its requests are refused before their body
# is read, which random Authorization headers reach within a run).
REJECTIONS = [400, 401, 404, 413, 415, 422, 429]
CATALOG_IDS = [f"m{i}" for i in range(N_ITEMS)]


def assert_nothing_half_written(url: str, catalog: str) -> None:
    """Every claimed textual ID belongs to an item whose record names that ID, and no claim is
    still pending: what a mint that failed halfway would leave behind."""
    prefix = namespace(catalog)
    with redis.Redis.from_url(url, decode_responses=True) as client:
        for key in client.scan_iter(match=f"{prefix}tid:*", count=1000):
            owner = client.get(key)
            assert not owner.startswith("pending:"), (key, owner)
            record = client.hgetall(f"{prefix}item:{owner}")
            assert record.get("textual_id") == key[len(prefix) + len("tid:"):], (key, owner, record)
            json.loads(record["token_ids"])


@pytest.fixture
def api_schema(make_settings, redis_url, catalog_name):
    """The app's OpenAPI document, loaded from the app itself (which starts it); the app is
    stopped and Redis inspected when the test ends."""
    app = create_app(make_settings(api_token=TOKEN, max_history=5))
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    yield schema
    schemathesis_asgi.shutdown_lifespans()
    assert_nothing_half_written(redis_url, catalog_name)


def with_catalog_history(case, history: list[str]):
    """The case with a history of real catalog items: random ids are all unknown, and would
    never reach the decoder."""
    if isinstance(case.body, dict):
        case.body = {**case.body, "history": history}
    return case


def cases(operation, mode: GenerationMode):
    """The operation's generated requests; valid recommendations half the time get a history of real items."""
    strategy = operation.as_strategy(generation_mode=mode)
    if operation.label == "POST /v1/recommendations" and mode is GenerationMode.POSITIVE:
        histories = st.lists(st.sampled_from(CATALOG_IDS), min_size=1, max_size=7)  # max_history is 5
        return st.one_of(strategy, st.builds(with_catalog_history, strategy, histories))
    return strategy


def fuzz_operation(operation, mode: GenerationMode) -> None:
    """Runs one operation's cases (schemathesis' own pytest loader does not work with pytest 9.2,
    so Hypothesis drives the strategy directly)."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases(operation, mode))
    def run(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_answer_conforms_to_the_schema(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/recommendations", "POST /v1/items", "GET /v1/items/{item_id}"}
    if mode is GenerationMode.NEGATIVE:  # only a body can be made invalid: paths take any string
        operations = [op for op in operations if len(op.body)]
    for operation in operations:
        fuzz_operation(operation, mode)
