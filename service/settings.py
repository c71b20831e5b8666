"""Service settings, read from environment variables and validated at start.

Every variable has the `GENREC_` prefix except the three the operators know by their usual
names, `REDIS_URL`, `REDIS_CLUSTER` and `API_TOKEN` (the prefixed forms `GENREC_REDIS_URL`,
`GENREC_REDIS_CLUSTER` and `GENREC_API_TOKEN` work too). `Settings()` raises pydantic's ValidationError on a bad value.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .redis_clients import cluster_url_problem

ENV_PREFIX = "GENREC_"


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

    # Write access: POST /v1/items needs `Authorization: Bearer <token>` when set.
    api_token: SecretStr | None = Field(None, validation_alias=AliasChoices("API_TOKEN", "GENREC_API_TOKEN"))

    # Limits of one request.
    max_history: int = Field(200, ge=1, le=10_000, description="most history items a request may send")
    max_k: int = Field(50, ge=1, le=1000, description="largest k a request may ask for")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest request body")
    max_metadata_fields: int = Field(64, ge=1, le=10_000)
    max_metadata_chars: int = Field(8192, ge=16, le=1_000_000, description="longest metadata text")
    num_beams: int | None = Field(None, ge=1, le=1000, description="beam width (default: the bundle's eval.num_beams)")

    # Micro-batching and inference.
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    adaptive_wait: bool = Field(
        True, description="wait max_wait_ms for more requests only when the previous batch had more than one"
    )
    torch_threads: int | None = Field(None, ge=1, le=256)
    trie_fold_threshold: int = Field(1000, ge=1, description="overlay size at which the trie is rebuilt")

    # Lifecycle.
    shutdown_timeout_s: float = Field(
        25.0,
        ge=0,
        le=600,
        description="on SIGTERM, how long in-flight requests may take before they are cancelled "
        "(below the orchestrator's kill deadline, e.g. Kubernetes' 30 s grace period)",
    )

    @field_validator("redis_url", "api_token", mode="before")
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

    def write_protected(self) -> bool:
        return self.api_token is not None and bool(self.api_token.get_secret_value())
