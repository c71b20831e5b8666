"""Test helpers for Redis faults: a real redis-server subprocess that a test owns (start,
crash, freeze, restart on the same port and data folder), and a reader of what Redis holds
for a catalog. The fault tests need a Redis they may break; the shared one at 127.0.0.1:6379
belongs to everybody else."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from service.embedded_redis import free_port, start_redis_server
from service.registry import namespace

MISSING = ("redis-server is not on the PATH: install Redis 7 (apt-get install redis-server, "
           "brew install redis, or copy redis-server from the redis:7 image)")


def missing_redis_server() -> None:
    """Skips the test that needs a redis-server of its own, except in CI (CI=true), where it
    fails: a CI without redis-server must not go green having run none of the fault tests."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{MISSING}; CI=true, so the Redis fault tests may not be skipped", pytrace=False)
    pytest.skip(MISSING)


class RedisServer:
    """One redis-server on 127.0.0.1:`port` with its data under `data_dir`.

    `appendonly`: persist through an append-only file (what docker-compose.yml runs);
    `appendfsync`: "always" (fsync before every reply) or "everysec" (compose's setting).
    Use it as a context manager or call `close()`: the process never outlives the test.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = True,
                 appendfsync: str = "everysec"):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            missing_redis_server()
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._repick = port is None  # a picked port may move until the first start binds it
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self, port: int) -> list[str]:
        return [
            self.binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
            "--loglevel", "warning",
        ]  # fmt: skip

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis-server.log"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Starts the server (again, on the same port and data) and waits until it answers PING.
        The first start of a picked port moves to another if that one was taken meanwhile."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process, self.port = start_redis_server(self._args, self.log_path, self.port, repick=self._repick,
                                                     timeout_s=timeout_s)
        self._repick = False
        return self

    def answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """A clean shutdown (SIGTERM: Redis flushes its append-only file and exits)."""
        self._signal_and_wait(signal.SIGTERM, timeout_s)

    def crash(self) -> None:
        """SIGKILL: no chance to flush anything; what survives is what Redis had written."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def freeze(self) -> None:
        """SIGSTOP: connections still open, nothing answers (a hung server or a black hole)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self, timeout_s: float = 10.0) -> RedisServer:
        self.stop()
        return self.start(timeout_s)

    def _signal_and_wait(self, sig: int, timeout_s: float) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Teardown: whatever state the server is in, it is gone afterwards."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def registry_contents(url: str, catalog: str) -> dict:
    """What Redis holds for a catalog: tid claims, item hashes and the stream length."""
    prefix = namespace(catalog)
    escaped = prefix.replace("{", "\\{").replace("}", "\\}")
    with redis.Redis.from_url(url, decode_responses=True) as client:
        tids = {key[len(prefix) + 4 :]: client.get(key) for key in client.scan_iter(match=f"{escaped}tid:*")}
        items = {key[len(prefix) + 5 :]: client.hgetall(key) for key in client.scan_iter(match=f"{escaped}item:*")}
        events = client.xlen(f"{prefix}events")
    return {"tids": tids, "items": items, "events": events}
