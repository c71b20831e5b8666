"""Starting a server on a loopback port picked free: the port is free when picked but another
process may take it before the server binds it (a busy machine), so a start that failed for that
is tried again on another port; a failed start quotes the end of its log. Used by the embedded Redis (service/embedded_redis.py), the
benchmarks' service launcher (benchmarks/common.py) and the tests' (tests/service/test_lifecycle.py).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ATTEMPTS = 5  # starts in all, the first included
# What uvicorn logs when it cannot bind its port ("[Errno 98] error while attempting to bind on
# address ('127.0.0.1', 8000): address already in use"), before the service exits.
ADDRESS_IN_USE = re.compile(r"address already in use", re.IGNORECASE)


def free_port() -> int:
    """A loopback TCP port no one listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def address_in_use(log_text: str) -> bool:
    """Whether a service's (uvicorn's) log says its port was taken."""
    return ADDRESS_IN_USE.search(log_text) is not None


def log_tail(path: Path, offset: int = 0, lines: int = 8) -> str:
    """The last `lines` lines a server wrote to its log `path` after `offset`: what an error
    message about its start quotes."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            text = file.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def retry_on_taken_port(wait: Callable[[], T], lost_port: Callable[[], bool], relaunch: Callable[[], None],
                        attempts: int = ATTEMPTS) -> T:
    """`wait()` for a server launched on a picked port; when it fails and `lost_port()` says
    the server exited because that port was taken, `relaunch()` it on another and wait again,
    `attempts` times in all. Any other failure, or the last one, is raised as it is."""
    for attempt in range(1, attempts + 1):
        try:
            return wait()
        except Exception:
            if attempt == attempts or not lost_port():
                raise
            relaunch()
    raise AssertionError("unreachable")  # pragma: no cover
