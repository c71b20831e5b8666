"""A TCP forwarder the tests can cut: one replica talks to Redis through it, so a network
partition between that replica and Redis (while the others still reach it) is a real one.

It also injects one-shot faults on a single command (matched in the bytes the client sends):
`lose_reply` lets the command reach Redis, which runs it, and then loses the reply with the
connection (a network failure between request and reply); `hold` stalls the command until
`release_held()` (a slow network, while other clients go on). `ThreadedProxy` runs a proxy on
an event loop of its own thread, for tests that block (subprocess replicas, sync HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


@dataclass
class _Fault:
    kind: str  # "lose_reply" | "hold"
    command: bytes
    fired: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Link:
    """One proxied connection: the writers of both sides and the fault it is under."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    lose_reply: _Fault | None = None
    resume: asyncio.Event | None = None  # set: a held command goes on


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` on the running event loop.

    `cut()` drops every open connection and stops listening (connections are refused, as
    for a Redis that is down); `heal()` listens again on the same port.
    """

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port  # None: the kernel's pick at start(), so no other process can take it first
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task] = set()
        self._faults: list[_Fault] = []
        self._held: list[_Link] = []
        self._lock = threading.Lock()  # faults may be armed from another thread

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, url: str) -> str:
        """`url` (a Redis URL of the target) with this proxy's address: same database."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    # ------------------------------------------------------------------ faults

    def lose_reply(self, command: bytes) -> threading.Event:
        """Arms a one-shot fault: the next client write that holds `command` reaches Redis, but
        Redis's reply is dropped and that connection closed on both sides. The returned event
        is set once the reply was lost (so the command had run)."""
        return self._arm(_Fault("lose_reply", command))

    def hold(self, command: bytes) -> threading.Event:
        """Arms a one-shot fault: the next client write that holds `command` is held back (its
        connection stalls) until `release_held()`. The event is set once it is held."""
        return self._arm(_Fault("hold", command))

    async def release_held(self) -> None:
        """Lets every held command go on to Redis."""
        held, self._held = self._held, []
        for link in held:
            link.resume.set()

    def _arm(self, fault: _Fault) -> threading.Event:
        with self._lock:
            self._faults.append(fault)
        return fault.fired

    def _take_fault(self, data: bytes) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.command in data:
                    self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ listening

    async def start(self) -> None:
        """Listens on `port`, or on a port the kernel picks and binds at once (port 0)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port or 0)
            self.port = self._server.sockets[0].getsockname()[1]

    async def heal(self) -> None:
        """Listens again on the same port."""
        await self.start()

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._writers.clear()

    close = cut

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, upstream_writer))
        link = _Link(client_writer, upstream_writer)
        for pump in (self._requests(client_reader, link), self._replies(upstream_reader, link)):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _requests(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """Client -> Redis, applying an armed fault to the write that matches it."""
        async with self._pumping(link.upstream):
            while data := await reader.read(65536):
                fault = self._take_fault(data)
                if fault is not None and fault.kind == "hold":
                    link.resume = asyncio.Event()
                    self._held.append(link)
                    fault.fired.set()
                    await link.resume.wait()
                elif fault is not None:
                    link.lose_reply = fault
                link.upstream.write(data)
                await link.upstream.drain()

    async def _replies(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """Redis -> client; a reply to be lost is read (the command has run) and dropped, and
        the connection closed on both sides."""
        async with self._pumping(link.client):
            while data := await reader.read(65536):
                if link.lose_reply is not None:
                    link.upstream.close()
                    link.lose_reply.fired.set()
                    return
                link.client.write(data)
                await link.client.drain()

    @contextlib.asynccontextmanager
    async def _pumping(self, writer: asyncio.StreamWriter):
        try:
            yield
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


class ThreadedProxy:
    """A `TcpProxy` on an event loop in a thread of its own; a context manager."""

    def __init__(self, target_port: int):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self.proxy = TcpProxy(target_port)
        self._call(self.proxy.start())
        self.url_for = self.proxy.url_for
        self.lose_reply = self.proxy.lose_reply
        self.hold = self.proxy.hold

    def _call(self, coroutine, timeout_s: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def release_held(self) -> None:
        self._call(self.proxy.release_held())

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self.proxy.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ThreadedProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
