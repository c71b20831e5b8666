"""A port picked free may be taken before redis-server binds it (a busy CI machine): every
redis-server the service or the tests start on a picked port moves to another one then, and
a server that does start is never mistaken for another Redis that took its port."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio

from genrec.errors import StoreUnavailableError
from service import embedded_redis
from service.embedded_redis import EmbeddedRedis, free_port

from .redis_cluster import LocalCluster
from .redis_server import RedisServer
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port another process holds (listening) for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def picks(monkeypatch, *first: int) -> list[int]:
    """free_port returns `first` (ports another process took since), then free ones; the list
    of what it returned."""
    queue, returned = list(first), []

    def pick() -> int:
        returned.append(queue.pop(0) if queue else free_port())
        return returned[-1]

    monkeypatch.setattr(embedded_redis, "free_port", pick)
    return returned


def server_pid(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return client.info("server")["process_id"]


def test_embedded_redis_moves_to_another_port_when_its_pick_was_taken(tmp_path, monkeypatch, taken, caplog):
    returned = picks(monkeypatch, taken, taken)
    with EmbeddedRedis(tmp_path / "data") as server:
        assert server.port not in (taken, None) and returned[:2] == [taken, taken] and len(returned) == 3
        assert server_pid(server.url) == server._process.pid
    assert "could not bind port" in caplog.text


def test_a_port_taken_by_another_redis_is_not_mistaken_for_ours(tmp_path, monkeypatch):
    with EmbeddedRedis(tmp_path / "other") as other:
        picks(monkeypatch, other.port)
        with EmbeddedRedis(tmp_path / "mine") as mine:
            assert mine.port != other.port
            assert server_pid(mine.url) == mine._process.pid != server_pid(other.url)


def test_embedded_redis_gives_up_after_five_taken_ports_quoting_the_log(tmp_path, monkeypatch, taken):
    returned = picks(monkeypatch, *[taken] * 10)
    with pytest.raises(StoreUnavailableError, match=r"attempt 5 of 5") as raised:
        EmbeddedRedis(tmp_path / "data").start()
    assert "Address already in use" in str(raised.value) and str(tmp_path / "data") in str(raised.value)
    assert returned == [taken] * 5


def test_a_configured_port_that_is_taken_fails_at_once(tmp_path, taken):
    with pytest.raises(StoreUnavailableError, match=rf"(?s)port {taken} exited .*attempt 1 of 1\).*Address already in use"):
        EmbeddedRedis(tmp_path / "data", port=taken).start()


def test_a_start_that_fails_for_another_reason_is_not_retried(tmp_path, monkeypatch):
    returned = picks(monkeypatch)
    (tmp_path / "data").mkdir()
    args = lambda port: [shutil.which("redis-server"), "--port", str(port), "--no-such-option", "x"]  # noqa: E731
    with pytest.raises(StoreUnavailableError, match=r"(?s)attempt 1 of 5.*no-such-option"):
        embedded_redis.start_redis_server(args, tmp_path / "data" / "redis.log", timeout_s=10)
    assert len(returned) == 1


def test_the_fault_tests_redis_moves_on_first_start_and_keeps_its_port_after(tmp_path, taken):
    server = RedisServer(tmp_path / "data")
    server.port = taken  # picked free, taken since
    try:
        server.start()
        port = server.port
        assert port != taken and server.answers()
        server.crash()
        server.start()  # a restart stays on its port: clients know it by that address
        assert server.port == port and server.answers()
    finally:
        server.close()


def test_cluster_nodes_move_when_a_port_or_a_bus_port_was_taken(tmp_path):
    with socket.socket() as held, socket.socket() as held_bus:
        for sock in (held, held_bus):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        cluster = LocalCluster(tmp_path / "cluster", masters=3)
        cluster.nodes[0].port = held.getsockname()[1]
        cluster.nodes[1].bus_port = held_bus.getsockname()[1]
        with cluster:
            assert cluster.nodes[0].port != held.getsockname()[1]
            assert cluster.nodes[1].bus_port != held_bus.getsockname()[1]
            assert len(cluster.masters_now()) == 3
            with redis.RedisCluster.from_url(cluster.url) as client:
                client.set("moved", "yes")
                assert client.get("moved") == b"yes"


@pytest.mark.anyio
async def test_the_proxy_listens_on_the_port_the_kernel_bound_and_heals_on_it(redis_url):
    proxy = TcpProxy(urlsplit(redis_url).port)
    await proxy.start()  # port 0: nothing to take between the pick and the bind
    try:
        port = proxy.port
        await proxy.cut()
        await proxy.heal()
        assert proxy.port == port
        async with redis.asyncio.Redis.from_url(proxy.url_for(redis_url)) as client:
            assert await client.ping()
    finally:
        await proxy.close()
