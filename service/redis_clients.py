"""The registry's Redis clients: one Redis server, or a Redis Cluster through redis-py's
cluster clients (`redis.cluster.RedisCluster`, `redis.asyncio.cluster.RedisCluster`), which
follow MOVED/ASK redirects, retry TRYAGAIN and learn a new slot map after a failover.

A cluster's REDIS_URL may list several seed nodes, `redis://[user:password@]host1:port1,host2:port2/0`
(the credentials and options of the URL apply to every node): the client starts from the
first one that answers and learns the others from it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

# What a Redis call may raise when the store is down, hung or moving: redis-py's own errors,
# the cluster client's (no reachable seed, slots not covered; not RedisError subclasses), and
# socket errors.
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)

DEFAULT_PORT = 6379


def url_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every node a redis:// or rediss:// URL names (several: comma-separated)."""
    netloc = urlsplit(url).netloc
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for host in hosts.split(","):
        parts = urlsplit(f"//{host.strip()}")
        if not parts.hostname:
            raise ValueError(f"REDIS_URL names a node without a host: {host!r}")
        nodes.append((parts.hostname, parts.port or DEFAULT_PORT))
    return nodes


def first_node_url(url: str) -> str:
    """The URL with only its first node (what redis-py parses); credentials, path and options kept."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    auth, at, hosts = netloc.rpartition("@")
    return urlunsplit((scheme, f"{auth}{at}{hosts.split(',')[0].strip()}", path, query, fragment))


def cluster_url_problem(url: str) -> str | None:
    """Why a URL cannot reach a Redis Cluster, or None when it can."""
    if not url.startswith(("redis://", "rediss://")):
        return "a Redis Cluster is reached over TCP: REDIS_URL must start with redis:// or rediss://"
    try:
        url_nodes(url)
    except ValueError as exc:
        return str(exc)
    database = urlsplit(url).path.strip("/")
    if database not in ("", "0"):
        return f"a Redis Cluster has only database 0 (REDIS_URL names database {database!r})"
    return None


def async_client(url: str, *, cluster: bool, **kwargs: Any) -> aioredis.Redis | AsyncRedisCluster:
    if not cluster:
        return aioredis.Redis.from_url(url, **kwargs)
    seeds = [AsyncClusterNode(host, port) for host, port in url_nodes(url)[1:]]
    return AsyncRedisCluster.from_url(first_node_url(url), startup_nodes=seeds or None, **kwargs)


def sync_client(url: str, *, cluster: bool, **kwargs: Any) -> redis.Redis | RedisCluster:
    """A synchronous client. The cluster one reads the slot map when it is built, so build it
    where a failure is handled (it raises one of STORE_ERRORS when no seed answers)."""
    if not cluster:
        return redis.Redis.from_url(url, **kwargs)
    seeds = [ClusterNode(host, port) for host, port in url_nodes(url)[1:]]
    return RedisCluster.from_url(first_node_url(url), startup_nodes=seeds or None, **kwargs)
