"""Schemathesis against the served OpenAPI document, every check (`--checks all`) and every phase
(examples, coverage, fuzzing, stateful), in process against real Redis, configured by the
repository's schemathesis.toml, as the CLI is (docs/api.md, "The OpenAPI document").

Three configurations, each with the document it serves: anonymous writes (no token: nothing
declares security), a write token (POST /v1/items declares it and is refused without it), and
read tokens required (every /v1 operation declares it). Every operation of the served document is
tested, whatever routes exist. Histories and item ids are drawn from the catalog half the time
(random ids are all unknown, and would never reach the decoder). Bounded: EXAMPLES per operation
and phase, STATEFUL_SCENARIOS of STATEFUL_STEPS. Afterwards Redis must hold no half-written item.

One check of this service's own runs with schemathesis': a body the document declares valid
may get 422 only for what no schema can know (BUSINESS_422)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema_rs
import pytest
import redis
import schemathesis
from schemathesis.core.failures import FailureGroup
from schemathesis.engine import events, from_schema
from schemathesis.python import asgi as schemathesis_asgi

from service.app import create_app
from service.registry import namespace

from .conftest import N_ITEMS

CONFIG_FILE = Path(__file__).resolve().parents[2] / "schemathesis.toml"
TOKEN = "fuzz-token-16-chars"
EXAMPLES = 20  # per operation and phase
STATEFUL_SCENARIOS, STATEFUL_STEPS = 10, 10
CATALOG_IDS = [f"m{i}" for i in range(N_ITEMS)]
# Small limits, so that the coverage phase reaches them and their 422/413 answers are checked too;
# no throttle on wrong tokens (its 429 would stand in for the 401 the auth checks look for).
LIMITS = dict(max_history=5, max_k=20, max_metadata_fields=8, max_metadata_chars=600, max_metadata_word_chars=24,
              max_metadata_value_chars=300, max_events_per_request=5, auth_failure_limit=1_000_000)
CONFIGURATIONS = {
    "no token": {},
    "write token": {"api_token": TOKEN},
    "read token": {"api_token": TOKEN, "require_read_token": True},
}


# The 422s a body valid by the document may get: items, or filter fields, that the catalog lacks
# (schemathesis.toml lets 422 pass on the operations that can answer them).
BUSINESS_422 = {"unknown_items", "unknown_filter_field"}
_BODY_VALIDATORS: dict[tuple[int, str, str], object] = {}


def body_validator(document: dict, path: str, method: str):
    """A JSON Schema validator (ECMA-262 patterns) of an operation's JSON body, or None."""
    key = (id(document), path, method)
    if key not in _BODY_VALIDATORS:
        body = document["paths"][path][method].get("requestBody", {}).get("content", {}).get("application/json")
        _BODY_VALIDATORS[key] = body and jsonschema_rs.validator_for(
            {**body["schema"], "components": document.get("components", {})})
    return _BODY_VALIDATORS[key]


@schemathesis.check
def valid_bodies_get_only_business_422s(ctx, response, case) -> None:
    """A 422 to a body the document declares valid must be one the document cannot foresee
    (BUSINESS_422): any other code means the document and the server disagree, which the
    widened 422 of schemathesis.toml would let pass."""
    if response.status_code != 422 or not isinstance(case.body, dict):
        return
    validator = body_validator(case.operation.schema.raw_schema, case.operation.path, case.method.lower())
    if validator is None or not validator.is_valid(case.body):
        return
    code = response.json().get("error", {}).get("code")
    if code not in BUSINESS_422:
        raise AssertionError(f"a body the document declares valid got 422 {code}, not one of "
                             f"{sorted(BUSINESS_422)}: {response.text[:500]}")


def run_config(token: str | None) -> schemathesis.Config:
    """schemathesis.toml, with every check on (as `--checks all`), the run's bounds, the catalog's
    ids as a dictionary for histories and item ids, and the token for the operations that
    declare it."""
    data = tomllib.loads(CONFIG_FILE.read_text())
    data["generation"] = {**data.get("generation", {}), "max-examples": EXAMPLES, "deterministic": False}
    phases = data.setdefault("phases", {})
    phases["stateful"] = {**phases.get("stateful", {}), "max-steps": STATEFUL_STEPS,
                          "generation": {"max-examples": STATEFUL_SCENARIOS}}
    data["dictionaries"] = {"catalog": {"values": CATALOG_IDS}}
    data["parameters"] = {"body.history[*]": {"dictionary": "catalog", "probability": 0.5},
                          "body.events[*].item_id": {"dictionary": "catalog", "probability": 0.5},
                          "path.item_id": {"dictionary": "catalog", "probability": 0.5}}
    if token is not None:
        data["auth"] = {"openapi": {"apiToken": {"bearer": token}}}
    config = schemathesis.Config.from_dict(data, base_dir=str(CONFIG_FILE.parent))
    config.projects.override.checks.update(included_check_names=["all"])
    return config


def _state_machine_stuck(event) -> bool:
    """Hypothesis' "No progress can be made from state ..." in the stateful phase: the random
    walk reached a state where none of the links the document declares applies (e.g. only
    POST /v1/items -> 200 was seen, whose links need another answer). A limit of the harness's
    walk, not an answer of the service; the walk's requests were checked all the same."""
    value = getattr(event, "value", None)
    return type(value).__name__ == "InvalidDefinition" and "No progress can be made" in str(value)


def run_all_phases(schema) -> tuple[list[str], set[str], int]:
    """Runs every phase: each failed check (operation, check, what it found, a curl that
    reproduces it) and each error, as text; the operations tested; the requests sent."""
    failures, tested, sent = [], set(), 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tested.add(event.recorder.label)
            sent += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.append(f"{event.recorder.label} {check.name}: {failure.title}\n{failure.message}\n"
                                        f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            if not _state_machine_stuck(event):
                failures.append(f"error: {event}")
    return failures, tested, sent


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


@pytest.mark.parametrize("overrides", CONFIGURATIONS.values(), ids=CONFIGURATIONS.keys())
def test_every_check_passes_on_every_operation(make_settings, redis_url, catalog_name, overrides):
    token = overrides.get("api_token")
    app = create_app(make_settings(**LIMITS, **overrides))
    headers = {"Authorization": f"Bearer {token}"} if token else {}  # the document is behind the read token
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=run_config(token), headers=headers)
        failures, tested, sent = run_all_phases(schema)
        served = {f"{method.upper()} {path}" for path, entries in app.openapi()["paths"].items() for method in entries}
    finally:
        schemathesis_asgi.shutdown_lifespans()
    assert not failures, "\n\n".join(failures)
    assert served <= tested and "Stateful tests" in tested, (served, tested)
    print(f"\n{len(served)} operations, {sent} requests, every check passed")
    assert_nothing_half_written(redis_url, catalog_name)


def test_the_business_422_check_catches_a_document_that_promises_too_much(make_settings):
    """The check itself: a document that states a wider k than the server takes (its maximum
    raised after the fact) makes a valid body's 422 invalid_request a failure; an unknown item's
    422 unknown_items, and a 200, are none."""
    app = create_app(make_settings(**LIMITS))
    app.openapi()["components"]["schemas"]["RecommendationRequest"]["properties"]["k"]["maximum"] = 1000
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=run_config(None))
        operation = schema["/v1/recommendations"]["POST"]
        for body in ({"history": ["m1"], "k": 3}, {"history": ["m1", "nowhere"], "k": 3}):
            case = operation.Case(body=body)
            case.validate_response(case.call(), checks=[valid_bodies_get_only_business_422s])
        case = operation.Case(body={"history": ["m1"], "k": 500})
        response = case.call()
        assert response.status_code == 422
        with pytest.raises(FailureGroup, match="declares valid got 422 invalid_request"):
            case.validate_response(response, checks=[valid_bodies_get_only_business_422s])
    finally:
        schemathesis_asgi.shutdown_lifespans()
