"""Prometheus metrics, one CollectorRegistry per app (two apps in one process never clash)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self, catalog_size: Callable[[], float] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "genrec_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "genrec_http_request_duration_seconds",
            "HTTP request latency by route and status",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_latency = Histogram(
            "genrec_decode_duration_seconds", "one batched constrained decode", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "genrec_batch_size", "requests per decode or mint batch", ["kind"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.mint_latency = Histogram(
            "genrec_mint_duration_seconds", "one batched ID-minting run", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.items_minted = Counter("genrec_items_minted", "items minted by this replica", registry=r)
        self.items_followed = Counter(
            "genrec_items_followed", "items minted by other replicas, learned from the event stream", registry=r
        )
        self.redis_errors = Counter("genrec_redis_errors", "failed Redis operations", ["operation"], registry=r)
        self.stream_rewinds = Counter(
            "genrec_events_stream_rewinds",
            "times the events stream ended before the last entry this replica had read (entries lost, "
            "e.g. a failover to a Redis replica that had not received them)",
            registry=r,
        )
        self.items_restored = Counter(
            "genrec_items_restored", "lost minted items this replica wrote back to Redis after a rewind", registry=r
        )
        self.startup_seconds = Gauge(
            "genrec_startup_seconds", "seconds each part of this replica's start took (set once, at start)",
            ["phase"], registry=r,
        )
        self.catalog_items = Gauge("genrec_catalog_items", "items the trie holds (bundle + minted)", registry=r)
        self.trie_overlay_items = Gauge("genrec_trie_overlay_items", "minted items not yet folded into the base", registry=r)
        self.trie_folds = Counter("genrec_trie_folds", "rebuilds of the trie base", registry=r)
        self.shed = Counter(
            "genrec_requests_shed",
            "requests refused or dropped to protect the service, by reason (queue_full, deadline, "
            "client_gone, rate_limited, auth_throttled)",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge("genrec_queue_depth", "requests waiting for a batch, by batcher", ["kind"], registry=r)
        self.mint_repeats = Counter(
            "genrec_mint_repeats", "new items whose metadata text was minted before: suffixed without the generator",
            registry=r,
        )
        self.limiter_fallbacks = Counter(
            "genrec_rate_limit_local_fallbacks",
            "rate-limit and auth-failure counts kept in this replica's memory because Redis did not answer",
            registry=r,
        )
        self.bundle_info = Gauge(
            "genrec_bundle_info", "the bundle serving now (value 1): its name, digest, catalog namespace, kind and path",
            ["bundle", "digest", "catalog", "kind", "path"], registry=r,
        )
        self.bundle_generation = Gauge(
            "genrec_bundle_generation", "which bundle since the start serves: 1, then +1 a successful reload",
            registry=r,
        )
        self.reloads = Counter(
            "genrec_reloads", "bundle reloads by outcome (ok; refused: a bad bundle; failed: e.g. Redis away)",
            ["outcome"], registry=r,
        )
        self.reload_duration = Gauge("genrec_reload_duration_seconds", "how long the last reload took", registry=r)
        self.items_carried_over = Counter(
            "genrec_items_carried_over", "items of a previous catalog this replica minted under the new one "
            "(service/upgrade.py)", registry=r,
        )
        if catalog_size is not None:
            self.catalog_items.set_function(catalog_size)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.request_latency.labels(*labels).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Timer:
    """`with Timer() as t: ...; t.seconds`"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
