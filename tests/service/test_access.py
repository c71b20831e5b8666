"""Access and leaks: the write token on every write endpoint (missing, wrong, malformed,
correct), reads open to all, and no error that shows a stack trace, an exception's text or a
server path; an unexpected failure is a generic 500 that carries the request's id."""

from __future__ import annotations

import hmac
import logging

import httpx
import pytest
import redis

import genrec.idgenrec.method as idgenrec_method
from genrec.errors import GenRecError
from service import access
from service.registry import namespace

from .conftest import assert_error, serve

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-value"
SECRET_PATH = "/work/secret/path.py"
# Every endpoint that writes, with a body it accepts.
WRITE_ENDPOINTS = [
    ("POST", "/v1/items", {"item_id": "w-1", "metadata": {"title": "fresh entry"}}),
    ("POST", "/v1/events", {"events": [{"user_id": "u1", "item_id": "m1", "event_id": "e-1"}]}),
]
READ_ENDPOINTS = [
    ("POST", "/v1/recommendations", {"history": ["m1"], "k": 2}),
    ("POST", "/v1/recommendations", {"user_id": "u1", "k": 2}),
    ("GET", "/v1/items/m1", None),
    ("GET", "/v1/users/u1/events", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
]


@pytest.fixture
async def served(make_settings):
    """The app with the token set, and a client that gets a 500 as a response (not as the app's
    exception re-raised)."""
    async with serve(make_settings(api_token=TOKEN)) as (app, _client):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://genrec.test") as client:
            yield app, client


@pytest.fixture
def client(served):
    return served[1]


@pytest.fixture
def namespace_keys(redis_url, catalog_name):
    """The catalog's keys, less the expiring `rl:` counters (a wrong token is counted there)."""
    def keys() -> frozenset:
        with redis.Redis.from_url(redis_url) as r:
            found = r.scan_iter(match=f"{namespace(catalog_name)}*", count=1000)
            return frozenset(k for k in found if not k.startswith(f"{namespace(catalog_name)}rl:".encode()))

    return keys


def send(client, method: str, path: str, body, headers=None):
    return client.request(method, path, json=body, headers=headers or {})


# --------------------------------------------------------------------------- the write token

REFUSED_AUTHORIZATION = [
    pytest.param(None, id="missing"),
    pytest.param("Bearer wrong-token", id="wrong"),
    pytest.param(f"Bearer {TOKEN[:-1]}", id="prefix-of-token"),
    pytest.param(f"Bearer {TOKEN}x", id="token-plus-one"),
    pytest.param(f"Bearer {TOKEN.upper()}", id="other-case"),
    pytest.param(TOKEN, id="no-scheme"),
    pytest.param(f"Basic {TOKEN}", id="basic-scheme"),
    pytest.param(f"Token {TOKEN}", id="token-scheme"),
    pytest.param("Bearer", id="scheme-only"),
    pytest.param("Bearer ", id="empty-token"),
    pytest.param(f"Bearer{TOKEN}", id="no-space"),
]


@pytest.mark.parametrize("method, path, body", WRITE_ENDPOINTS)
@pytest.mark.parametrize("authorization", REFUSED_AUTHORIZATION)
async def test_writes_without_the_right_token_are_401_and_write_nothing(
    client, namespace_keys, method, path, body, authorization
):
    before = namespace_keys()
    headers = {"authorization": authorization} if authorization is not None else {}
    response = await send(client, method, path, body, headers)
    error = assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text and "Bearer <API token>" in error["message"]
    assert namespace_keys() == before


@pytest.mark.parametrize("method, path, body", WRITE_ENDPOINTS)
@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  "])
async def test_writes_with_the_token_succeed(client, method, path, body, authorization):
    """The scheme is case-insensitive and spaces around the token do not matter (RFC 7235)."""
    response = await send(client, method, path, body, {"authorization": authorization})
    assert response.status_code in (200, 201), response.text


@pytest.mark.parametrize("method, path, body", WRITE_ENDPOINTS)
async def test_the_token_is_checked_before_the_fields(client, method, path, body):
    """Without the token a caller learns nothing about what a valid body looks like."""
    broken = {"item_id": "", "metadata": {}, "unexpected": 1}
    assert_error(await send(client, method, path, broken), 401, "unauthorized")
    response = await client.request(method, path, content=b"plain", headers={"content-type": "text/plain"})
    assert_error(response, 401, "unauthorized")


async def test_the_token_is_compared_in_constant_time(client, monkeypatch):
    """Every token check goes through hmac.compare_digest (whose time does not depend on where
    the first differing byte is), with the given and the configured token."""
    calls = []
    compare_digest = hmac.compare_digest

    def spy(given, expected):
        calls.append((given, expected))
        return compare_digest(given, expected)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    body = {"item_id": "ct-1", "metadata": {"title": "fresh entry"}}
    assert (await client.post("/v1/items", json=body, headers={"authorization": "Bearer nope"})).status_code == 401
    assert (await client.post("/v1/items", json=body, headers={"authorization": f"Bearer {TOKEN}"})).status_code == 201
    assert calls == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


@pytest.mark.parametrize("method, path, body", READ_ENDPOINTS)
async def test_reads_need_no_token(client, method, path, body):
    """Reads are open by design: the token guards what changes the catalog."""
    response = await send(client, method, path, body)
    assert response.status_code == 200, response.text


async def test_openapi_documents_the_token_on_writes_only(client):
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["apiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["apiToken"]["description"],
    }
    secured = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    assert secured == {f"{method} {path}" for method, path, _ in WRITE_ENDPOINTS}


# --------------------------------------------------------------------------- no leaks


def assert_generic_500(response: httpx.Response) -> str:
    """A 500 with nothing but a generic message and the request id; returns that id."""
    error = assert_error(response, 500, "internal_error")
    assert error["message"] == "internal error"
    request_id = error["details"]["request_id"]
    assert request_id and response.headers["x-request-id"] == request_id
    for leak in (SECRET_PATH, "secret", "RuntimeError", "Traceback", ".py", "/work"):
        assert leak not in response.text, leak
    return request_id


def boom(*_args, **_kwargs):
    raise RuntimeError(f"failed in {SECRET_PATH} line 3")


async def test_a_failing_decode_is_a_generic_500_with_a_request_id(served, monkeypatch, caplog):
    app, client = served
    monkeypatch.setattr(app.state.service.engine.method, "recommend", boom)
    with caplog.at_level(logging.ERROR, logger="service"):
        response = await client.post("/v1/recommendations", json={"history": ["m1"], "k": 2})
    request_id = assert_generic_500(response)
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the log has what the client must not see


async def test_a_failing_mint_is_a_generic_500_and_leaves_nothing_in_redis(
    served, namespace_keys, monkeypatch, redis_url, catalog_name
):
    """The mint fails after it has claimed an ID in Redis: the claim is given back."""
    _app, client = served
    before = namespace_keys()
    claimed: list[tuple[str, str | None]] = []  # (textual ID, what Redis held for it then)
    real_mint_ids = idgenrec_method.mint_ids

    def claim_then_fail(generator, tokenizer, texts, claim, *args, **kwargs):
        def claim_once(textual_id: str) -> bool:
            if not claim(textual_id):
                return False
            with redis.Redis.from_url(redis_url, decode_responses=True) as r:
                claimed.append((textual_id, r.get(f"{namespace(catalog_name)}tid:{textual_id}")))
            boom()

        return real_mint_ids(generator, tokenizer, texts, claim_once, *args, **kwargs)

    monkeypatch.setattr(idgenrec_method, "mint_ids", claim_then_fail)
    body = {"item_id": "fails-1", "metadata": {"title": "fresh entry"}}
    response = await client.post("/v1/items", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert_generic_500(response)
    assert len(claimed) == 1 and claimed[0][1].startswith("pending:"), claimed  # it was claimed ...
    assert namespace_keys() == before  # ... and released
    assert (await client.get("/v1/items/fails-1")).status_code == 404


async def test_a_domain_error_without_a_mapping_is_a_generic_500(served, monkeypatch):
    app, client = served

    async def fails(_item_id):
        raise GenRecError(f"bundle file {SECRET_PATH} unreadable")

    monkeypatch.setattr(app.state.service.registry, "get_item", fails)
    assert_generic_500(await client.get("/v1/items/m1"))


async def test_a_redis_error_does_not_show_its_text(served, monkeypatch):
    app, client = served

    async def fails(_item_id):
        raise redis.ConnectionError(f"Error 2 connecting to unix socket: {SECRET_PATH}.sock")

    monkeypatch.setattr(app.state.service.registry, "get_item", fails)
    # An item this replica does not hold (one it holds is answered from memory).
    error = assert_error(await client.get("/v1/items/not-held"), 503, "store_unavailable")
    assert "secret" not in error["message"] and "socket" not in str(error)


async def test_the_callers_request_id_is_kept_when_plain(client):
    kept = await client.get("/healthz", headers={"x-request-id": "trace-42.a:b"})
    assert kept.headers["x-request-id"] == "trace-42.a:b"
    for hostile in ("has space", "x" * 65, "new\\nline", "<script>"):
        replaced = await client.get("/healthz", headers={"x-request-id": hostile})
        assert replaced.headers["x-request-id"] != hostile
        assert len(replaced.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    "body",
    [
        {"item_id": "/etc/passwd\x00", "metadata": {"title": "x"}},
        {"item_id": "ok", "metadata": {"/var/lib/secret": {"nested": "/etc/shadow"}}},
        {"item_id": "ok", "metadata": {"title": "x"}, "/root/.ssh/id_rsa": "y"},
    ],
)
async def test_validation_errors_do_not_echo_values_or_server_paths(client, body):
    """Messages name fields and rules; the rejected values themselves are never echoed, nor any
    path of the server (module files, the bundle folder)."""
    response = await client.post("/v1/items", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    error = assert_error(response, 422, "invalid_request")
    for field in error["details"]["fields"]:
        assert set(field) == {"field", "message", "type"}
    for leak in ("/etc/passwd", "/etc/shadow", "site-packages", "/work/", "pydantic.dev", ".py"):
        assert leak not in response.text, leak


def test_the_quota_gate_knows_every_write_route():
    """The gate picks a request's quota before routing: its list of write paths must be the
    routes behind write_access, every one of them POSTed to."""
    from fastapi.routing import APIRoute

    from service.dependencies import write_access
    from service.routes import ROUTERS

    writes = {(method, route.path) for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)
              and any(d.call is write_access for d in route.dependant.dependencies) for method in route.methods}
    assert writes == {("POST", path) for path in access.WRITE_PATHS}
    assert all(access.kind_of(method, path) == "write" for method, path in writes)
    assert access.kind_of("GET", "/v1/users/u/events") == access.kind_of("POST", "/v1/recommendations") == "read"
