"""Service settings, read from environment variables and validated at start.

Every variable has the `GENREC_` prefix except those the operators know by their usual
names, `REDIS_URL`, `REDIS_CLUSTER`, `API_TOKEN` and `API_TOKENS` (the prefixed forms
`GENREC_REDIS_URL`, `GENREC_REDIS_CLUSTER`, `GENREC_API_TOKEN` and `GENREC_API_TOKENS` work
too). `Settings()` raises pydantic's ValidationError on a bad value, and so does a start without
a write token unless `GENREC_ALLOW_ANONYMOUS_WRITES=true` says that is meant
(docs/configuration.md, "Security").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .redis_clients import cluster_url_problem

ENV_PREFIX = "GENREC_"
MIN_TOKEN_LENGTH = 16  # characters of an API token; shorter ones are refused at start
SCOPES = ("read", "write", "admin")
_KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

Access = Literal["open", "token", "off"]


@dataclass(frozen=True)
class ApiKey:
    """One API token: a name (logs, metrics, rate limits; never the secret), the secret and
    its scopes ("read", "write", "admin")."""

    name: str
    secret: bytes
    scopes: frozenset[str]

    def __repr__(self) -> str:  # the secret never shows in a log or a traceback
        return f"ApiKey(name={self.name!r}, scopes={sorted(self.scopes)})"


def parse_api_tokens(text: str) -> list[ApiKey]:
    """`API_TOKENS`: entries `name:token:scopes` separated by `;` or newlines, scopes a comma
    list of read, write and admin (`ci:4f0c...:read,write; dashboard:9a1e...:read;
    ops:77aa...:admin`). Errors name the entry, never its token."""
    keys = []
    for number, entry in enumerate((e.strip() for e in re.split(r"[;\n]", text)), start=1):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ValueError(f"API_TOKENS entry {number} is not name:token:scopes")
        name, token, scopes = (part.strip() for part in parts)
        if not _KEY_NAME.fullmatch(name):
            raise ValueError(f"API_TOKENS entry {number}: the name must match [A-Za-z0-9._-]{{1,64}}")
        wanted = {scope.strip() for scope in scopes.split(",") if scope.strip()}
        if not wanted or not wanted <= set(SCOPES):
            raise ValueError(f"API_TOKENS entry {number} ({name}): scopes must be among read, write, admin")
        keys.append(ApiKey(name, token.encode(), frozenset(wanted)))
    return keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, populate_by_name=True
    )

    # What is served.
    bundle: Path | None = Field(None, description="bundle folder written by genrec-train (GENREC_BUNDLE)")
    verify_bundle: bool = Field(True, description="check the bundle's sha256 checksums at start")

    # Redis: the item-ID registry. No URL: an embedded redis-server keeps its data in data_dir.
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "GENREC_REDIS_URL"))
    catalog: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,80}$",
        description="Redis namespace of the catalog (default: the bundle's dataset and a digest of its IDs)",
    )
    redis_cluster: bool = Field(
        False,
        validation_alias=AliasChoices("REDIS_CLUSTER", "GENREC_REDIS_CLUSTER"),
        description="REDIS_URL is a Redis Cluster (one or several comma-separated seed nodes)",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=32,
        description="acknowledge a mint only once this many replicas of the Redis master have it (WAIT); "
        "0: replication stays asynchronous",
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, le=60_000, description="how long a mint waits for those replicas before it answers 503"
    )
    data_dir: Path = Field(Path("var/redis"), description="data folder of the embedded Redis")
    redis_timeout_s: float = Field(5.0, gt=0, le=60, description="Redis socket timeout")
    redis_startup_timeout_s: float = Field(30.0, ge=0, le=600, description="how long start waits for Redis")
    redis_lookup_timeout_s: float = Field(
        0.25,
        gt=0,
        le=10,
        description="budget of the optional Redis reads on the recommendation path (unknown history items, "
        "the user-ID cache); past it the request is answered from memory",
    )

    pending_claim_ttl_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="a textual ID claimed by a mint expires after this long unless committed, so a "
        "replica that dies mid-mint does not keep the ID forever",
    )

    # Access (docs/configuration.md, "Security"). API_TOKEN is one token with both scopes (the
    # write token of earlier versions); API_TOKENS holds any number of named tokens.
    api_token: SecretStr | None = Field(None, validation_alias=AliasChoices("API_TOKEN", "GENREC_API_TOKEN"))
    api_tokens: SecretStr | None = Field(None, validation_alias=AliasChoices("API_TOKENS", "GENREC_API_TOKENS"))
    require_read_token: bool = Field(False, description="reads need a token with the read scope")
    allow_anonymous_writes: bool = Field(
        False, description="start without any write token (POST /v1/items open to all); a warning is logged"
    )
    auth_failure_limit: int = Field(
        10, ge=1, le=1_000_000, description="wrong tokens one client address may send per window before 429s"
    )
    auth_failure_window_s: float = Field(60.0, gt=0, le=86_400)
    metrics_access: Access | None = Field(
        None, description="/metrics: open, token (read scope) or off; default token when reads need one, else open"
    )
    docs_access: Access | None = Field(
        None, description="/docs, /redoc, /openapi.json: open, token or off; default as metrics_access"
    )

    # Load shedding and quotas (docs/reliability.md).
    max_queue: int = Field(256, ge=1, le=1_000_000, description="recommendations waiting for the inference thread")
    max_mint_queue: int = Field(64, ge=1, le=1_000_000, description="new items waiting for the mint thread")
    request_timeout_s: float = Field(
        10.0, gt=0, le=600, description="deadline of a request; past it 503 and its queued work is dropped"
    )
    max_redis_lookups: int = Field(
        16, ge=0, le=10_000, description="unknown history ids one request may look up in Redis (one pipelined read)"
    )
    rate_limit_read: int = Field(0, ge=0, description="reads per client per window (0: no limit)")
    rate_limit_write: int = Field(0, ge=0, description="writes per client per window (0: no limit)")
    rate_limit_window_s: float = Field(1.0, gt=0, le=86_400)
    refusal_delay_s: float = Field(
        1.0, ge=0, le=60, description="how long a 429 to a client already over its quota is held back "
        "(at most until its window ends)"
    )

    # Limits of one request.
    max_history: int = Field(200, ge=1, le=10_000, description="most history items a request may send")
    max_k: int = Field(50, ge=1, le=1000, description="largest k a request may ask for")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest request body")
    max_metadata_fields: int = Field(64, ge=1, le=10_000)
    max_metadata_chars: int = Field(8192, ge=16, le=1_000_000, description="longest metadata text, as posted")
    max_metadata_value_chars: int = Field(4096, ge=16, le=1_000_000, description="longest metadata value")
    max_metadata_word_chars: int = Field(64, ge=8, le=1_000_000, description="longest word of a metadata value")
    num_beams: int | None = Field(None, ge=1, le=1000, description="beam width (default: the bundle's eval.num_beams)")

    # Users' events (POST /v1/events; docs/api.md, "Users and events").
    max_events_per_request: int = Field(
        500, ge=1, le=100_000, description="most events one POST /v1/events may carry (the body must also fit "
        "GENREC_MAX_BODY_BYTES)"
    )
    user_events_factor: int = Field(
        2, ge=1, le=100, description="events kept per user: this many times the model's history length (the "
        "latest items it reads; GENREC_MAX_HISTORY for a method without one)"
    )
    event_id_ttl_s: float = Field(
        86_400.0, gt=0, le=90 * 86_400, description="how long a user's event id is remembered: a repeat within "
        "it is not stored again"
    )
    event_ids_per_user: int = Field(
        1000, ge=1, le=1_000_000, description="most event ids remembered per user (the newest; older ones are "
        "forgotten sooner than GENREC_EVENT_ID_TTL_S)"
    )

    # Micro-batching and inference.
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    adaptive_wait: bool = Field(
        True, description="wait max_wait_ms for more requests only when the previous batch had more than one"
    )
    torch_threads: int | None = Field(None, ge=1, le=256)
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$",
        description="where the models run: auto (a GPU when torch sees one), cpu, cuda or cuda:N",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the forward passes under bf16 autocast on CUDA (ignored on the CPU)"
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 quantisation of the models' Linear layers at load, for CPU "
        "serving (faster; recommendations may differ slightly from the unquantised model's)"
    )
    trie_fold_threshold: int = Field(1000, ge=1, description="overlay size at which the trie is rebuilt")
    mint_thread: bool = Field(True, description="mint on a thread of its own, beside the recommendations' one")
    mint_max_rounds: int = Field(
        4, ge=0, le=10_000, description="ID-generator rounds per new item before the numeric suffix (0: no cap)"
    )

    # Reloads and upgrades (docs/operations.md).
    reload_drain_s: float = Field(
        30.0, gt=0, le=3600, description="after a reload, how long requests still on the old bundle may take "
        "before it is closed"
    )
    upgrade_items: bool = Field(
        True, description="a bundle with a new catalog namespace carries over the items (and users' events) of the "
        "catalog of the same dataset that served before it"
    )
    upgrade_from: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,80}$",
        description="the catalog to carry over from (default: the other catalog of the dataset served most recently)",
    )
    upgrade_follow_s: float = Field(
        1.0, gt=0, le=3600, description="how often items minted meanwhile in the previous catalog (by replicas "
        "not yet upgraded) are carried over"
    )

    # Lifecycle.
    shutdown_timeout_s: float = Field(
        25.0,
        ge=0,
        le=600,
        description="on SIGTERM, how long in-flight requests may take before they are cancelled "
        "(below the orchestrator's kill deadline, e.g. Kubernetes' 30 s grace period)",
    )

    @field_validator("redis_url", "api_token", "api_tokens", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _redis_topology(self) -> Settings:
        url = self.redis_url
        if self.redis_cluster:
            if url is None:
                raise ValueError("REDIS_CLUSTER needs REDIS_URL: the embedded Redis is a single server")
            problem = cluster_url_problem(url)
            if problem is not None:
                raise ValueError(problem)
        elif url is not None and "," in urlsplit(url).netloc.rpartition("@")[2]:
            raise ValueError("REDIS_URL lists several nodes, which only a Redis Cluster takes: set REDIS_CLUSTER=true")
        if self.redis_wait_replicas and url is None:
            raise ValueError("GENREC_REDIS_WAIT_REPLICAS needs REDIS_URL: the embedded Redis has no replicas")
        return self

    @model_validator(mode="after")
    def _bundle_exists(self) -> Settings:
        if self.bundle is None:
            raise ValueError("no bundle given: set GENREC_BUNDLE or pass --bundle")
        if not self.bundle.is_dir():
            raise ValueError(f"bundle folder not found: {self.bundle}")
        return self

    @model_validator(mode="after")
    def _tokens_usable(self) -> Settings:
        keys = self.keys()  # raises on a malformed API_TOKENS
        for key in keys:
            if len(key.secret) < MIN_TOKEN_LENGTH:
                raise ValueError(f"the token {key.name!r} is shorter than {MIN_TOKEN_LENGTH} characters")
            if any(c.isspace() for c in key.secret.decode()):
                raise ValueError(f"the token {key.name!r} contains whitespace")
        if len({k.name for k in keys}) < len(keys):
            raise ValueError("two API tokens share a name")
        if len({k.secret for k in keys}) < len(keys):
            raise ValueError("two API tokens are the same")
        if not self.write_protected() and not self.allow_anonymous_writes:
            raise ValueError(
                "no write token: set API_TOKEN (or API_TOKENS with a write scope), or "
                "GENREC_ALLOW_ANONYMOUS_WRITES=true to let anyone add items"
            )
        if self.require_read_token and not any("read" in k.scopes for k in keys):
            raise ValueError("GENREC_REQUIRE_READ_TOKEN=true needs a token with the read scope")
        for name in ("metrics_access", "docs_access"):
            if getattr(self, name) == "token" and not any("read" in k.scopes for k in keys):
                raise ValueError(f"GENREC_{name.upper()}=token needs a token with the read scope")
        return self

    def keys(self) -> list[ApiKey]:
        """Every configured token: API_TOKEN (named api_token, read and write, not admin: a reload
        names a folder on the replica, which a client that may only write items must not) and
        API_TOKENS."""
        keys = []
        if self.api_token is not None and self.api_token.get_secret_value():
            keys.append(ApiKey("api_token", self.api_token.get_secret_value().encode(),
                               frozenset({"read", "write"})))
        if self.api_tokens is not None:
            keys += parse_api_tokens(self.api_tokens.get_secret_value())
        return keys

    def admin_enabled(self) -> bool:
        """Whether some token has the admin scope (the /admin endpoints exist only then)."""
        return any("admin" in key.scopes for key in self.keys())

    def write_protected(self) -> bool:
        """Whether writes need a token (some token has the write scope)."""
        return any("write" in key.scopes for key in self.keys())

    def access(self, endpoint: Literal["metrics", "docs", "admin"]) -> Access:
        """Who may read /metrics or the API docs (the default follows GENREC_REQUIRE_READ_TOKEN);
        the /admin endpoints: a token with the admin scope, off (404) when no token has it."""
        if endpoint == "admin":
            return "token" if self.admin_enabled() else "off"
        chosen = getattr(self, f"{endpoint}_access")
        return chosen if chosen is not None else ("token" if self.require_read_token else "open")
