"""Access control (issue 21, point 4): named tokens with read and write scopes (API_TOKENS),
API_TOKEN as before, reads behind a token when asked, no start without a write token unless
anonymous writes are asked for, a minimum token length, wrong tokens throttled per address
across replicas, /metrics and the docs behind settings, and the docs pages served from the
package's own files (no CDN), so they work offline."""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import ValidationError

from service import cli
from service.settings import MIN_TOKEN_LENGTH, Settings, parse_api_tokens

from .conftest import assert_error, serve

pytestmark = pytest.mark.anyio

READER = "reader-token-000001"
WRITER = "writer-token-000001"
BOTH = "both-token-00000001"
TOKENS = f"dash:{READER}:read; ingest:{WRITER}:write\nops:{BOTH}:read,write"
ITEM = {"item_id": "s-1", "metadata": {"title": "fresh entry"}}
FROZEN = 2_000_000.25


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- settings


def test_api_tokens_parse_into_named_scoped_keys():
    keys = parse_api_tokens(TOKENS)
    assert [(k.name, sorted(k.scopes)) for k in keys] == [
        ("dash", ["read"]), ("ingest", ["write"]), ("ops", ["read", "write"])]
    assert READER not in repr(keys)  # the secret never shows
    assert [sorted(k.scopes) for k in parse_api_tokens(f"ops:{READER}:admin,read")] == [["admin", "read"]]
    for bad in (f"dash:{READER}", f"dash:{READER}:root", f"bad name:{READER}:read", f"a:{READER}:read:x"):
        with pytest.raises(ValueError) as info:
            parse_api_tokens(bad)
        assert READER not in str(info.value)  # errors name the entry, never its token


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "no write token"),
        ({"api_tokens": f"dash:{READER}:read"}, "no write token"),
        ({"api_token": "short-token"}, f"shorter than {MIN_TOKEN_LENGTH}"),
        ({"api_tokens": f"a:{WRITER}:write;a:{BOTH}:write"}, "share a name"),
        ({"api_tokens": f"a:{WRITER}:write;b:{WRITER}:read"}, "are the same"),
        ({"api_token": BOTH, "require_read_token": False, "api_tokens": "x:y"}, "not name:token:scopes"),
        ({"api_tokens": f"w:{WRITER}:write", "require_read_token": True}, "needs a token with the read scope"),
        ({"api_tokens": f"w:{WRITER}:write", "metrics_access": "token"}, "needs a token with the read scope"),
    ],
)
def test_settings_refuse_unsafe_access(bundle_path, values, message):
    with pytest.raises(ValidationError, match=message) as info:
        Settings(bundle=bundle_path, **values)
    for secret in (READER, WRITER, BOTH):
        assert secret not in str(info.value)


def test_anonymous_writes_must_be_asked_for(bundle_path):
    settings = Settings(bundle=bundle_path, allow_anonymous_writes=True)
    assert not settings.write_protected() and settings.access("metrics") == "open"
    locked = Settings(bundle=bundle_path, api_tokens=TOKENS, require_read_token=True)
    assert locked.write_protected() and locked.access("metrics") == locked.access("docs") == "token"


def test_the_cli_refuses_to_start_without_a_write_token(bundle_path, monkeypatch, capsys):
    for name in ("API_TOKEN", "GENREC_API_TOKEN", "API_TOKENS", "GENREC_API_TOKENS", "GENREC_ALLOW_ANONYMOUS_WRITES"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["--bundle", str(bundle_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-serve: no write token") and "GENREC_ALLOW_ANONYMOUS_WRITES=true" in err
    assert "\n" not in err


async def test_anonymous_writes_are_logged_at_start(make_settings, caplog):
    with caplog.at_level(logging.WARNING, logger="service"):
        async with serve(make_settings()) as (_app, client):
            assert (await client.post("/v1/items", json=ITEM)).status_code == 201
    assert any("GENREC_ALLOW_ANONYMOUS_WRITES=true" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- scopes


async def test_scopes_decide_who_reads_and_who_writes(make_settings):
    settings = make_settings(api_tokens=TOKENS, require_read_token=True, allow_anonymous_writes=False)
    async with serve(settings) as (_app, client):
        rec = {"history": ["m1"], "k": 2}
        assert_error(await client.post("/v1/recommendations", json=rec), 401, "unauthorized")
        assert_error(await client.get("/v1/items/m1"), 401, "unauthorized")
        error = assert_error(await client.get("/v1/items/m1", headers=bearer(WRITER)), 403, "forbidden")
        assert "'ingest' lacks the read scope" in error["message"] and WRITER not in str(error)
        assert (await client.post("/v1/recommendations", json=rec, headers=bearer(READER))).status_code == 200
        assert (await client.get("/v1/items/m1", headers=bearer(BOTH))).status_code == 200
        assert_error(await client.post("/v1/items", json=ITEM), 401)
        assert_error(await client.post("/v1/items", json=ITEM, headers=bearer(READER)), 403, "forbidden")
        assert (await client.post("/v1/items", json=ITEM, headers=bearer(WRITER))).status_code == 201
        assert (await client.post("/v1/items", json=ITEM, headers=bearer(BOTH))).status_code == 200
        events = {"events": [{"user_id": "u1", "item_id": "m1"}]}
        assert_error(await client.post("/v1/events", json=events, headers=bearer(READER)), 403, "forbidden")
        assert (await client.post("/v1/events", json=events, headers=bearer(WRITER))).status_code == 200
        assert_error(await client.get("/v1/users/u1/events", headers=bearer(WRITER)), 403, "forbidden")
        assert (await client.get("/v1/users/u1/events", headers=bearer(READER))).json()["events"][0]["item_id"] == "m1"
        schema = (await client.get("/openapi.json", headers=bearer(READER))).json()
        secured = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m, op in ops.items() if "security" in op}
        assert secured == {"POST /v1/recommendations", "GET /v1/items", "GET /v1/items/{item_id}", "POST /v1/items",
                           "POST /v1/events", "GET /v1/users/{user_id}/events", "GET /metrics"}


async def test_reads_stay_open_by_default_but_a_sent_token_must_be_valid(make_settings):
    async with serve(make_settings(api_token=BOTH)) as (_app, client):
        assert (await client.get("/v1/items/m1")).status_code == 200
        assert (await client.get("/v1/items/m1", headers=bearer(BOTH))).status_code == 200
        assert_error(await client.get("/v1/items/m1", headers=bearer("not-a-token-at-all")), 401, "unauthorized")


# --------------------------------------------------------------------------- throttled 401s


async def test_wrong_tokens_are_throttled_per_address_across_replicas(make_settings):
    """Past the limit, every token from that address gets 429 until the window ends, the right
    one included: guessing learns nothing more. Another address is not affected."""
    settings = make_settings(api_token=BOTH, auth_failure_limit=3, auth_failure_window_s=600, refusal_delay_s=0)
    async with serve(settings) as (app_a, a), serve(settings) as (app_b, b):
        for app in (app_a, app_b):
            app.state.service.limiter.clock = lambda: FROZEN
        wrong = [(await c.post("/v1/items", json=ITEM, headers=bearer(f"guess-{i:012d}"))).status_code
                 for i, c in enumerate((a, b, a))]
        assert wrong == [401, 401, 401]
        for client in (a, b):  # b learns of it at its next wrong token; a already knows
            if client is b:
                assert_error(await b.post("/v1/items", json=ITEM, headers=bearer("guess-again-000")), 401)
            throttled = await client.post("/v1/items", json=ITEM, headers=bearer(BOTH))
            assert_error(throttled, 429, "too_many_requests")
            assert int(throttled.headers["retry-after"]) == 600 - int(FROZEN % 600)
        assert (await a.get("/v1/items/m1")).status_code == 200  # an open read without a token
        other = httpx.ASGITransport(app=app_a, client=("127.0.0.2", 4000))
        async with httpx.AsyncClient(transport=other, base_url="http://genrec.test") as elsewhere:
            assert (await elsewhere.post("/v1/items", json=ITEM, headers=bearer(BOTH))).status_code == 201
        assert app_a.state.service.metrics.shed.labels(reason="auth_throttled")._value.get() == 1


# --------------------------------------------------------------------------- /metrics and the docs


@pytest.mark.parametrize("access, anonymous, with_token", [("open", 200, 200), ("token", 401, 200), ("off", 404, 404)])
async def test_metrics_and_docs_follow_their_settings(make_settings, access, anonymous, with_token):
    settings = make_settings(api_tokens=f"dash:{READER}:read", metrics_access=access, docs_access=access)
    async with serve(settings) as (_app, client):
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc", "/docs/assets/swagger-ui.css"):
            assert (await client.get(path)).status_code == anonymous, path
            assert (await client.get(path, headers=bearer(READER))).status_code == with_token, path


async def test_swagger_ui_is_served_from_the_packages_own_files(make_settings):
    async with serve(make_settings()) as (_app, client):
        page = (await client.get("/docs")).text
        assert "/docs/assets/swagger-ui-bundle.js" in page and "/docs/assets/swagger-ui.css" in page
        assert "cdn" not in page and "https://" not in page.replace("https://swagger.io", "")
        script = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 500_000 and b"SwaggerUIBundle" in script.content
        assert script.headers["content-type"].startswith("text/javascript")
        redoc = (await client.get("/redoc")).text
        assert "/docs/assets/redoc.standalone.js" in redoc and "fonts.googleapis" not in redoc
        assert (await client.get("/docs/assets/redoc.standalone.js")).status_code == 200
        for hostile in ("../../pyproject.toml", "%2e%2e%2fconsts.py", "core.py", "__init__.py"):
            assert (await client.get(f"/docs/assets/{hostile}")).status_code == 404
        assert (await client.get("/docs/oauth2-redirect")).status_code == 404
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "genrec"
