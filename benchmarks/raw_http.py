"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for load generation.

The load generator shares the 2-core machine with the service it measures. httpx spends about
a millisecond of CPU per request on its own machinery, which is CPU taken from the server and
a bias against whichever mode serves more requests per second; this client writes the request
bytes and reads the status line, headers and a Content-Length body, nothing more.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit


class RawHttpError(RuntimeError):
    """The server answered something this client does not read (or closed the connection)."""


class KeepAliveConnection:
    """One persistent connection; requests on it are sequential (one in flight)."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def post_json(self, path: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, response body) of POST `path` with `body` as JSON (and extra `headers`)."""
        if self._writer is None:
            await self._connect()
        payload = json.dumps(body).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self._writer.write(head + payload)
        await self._writer.drain()
        return await self._read_response()

    async def _read_response(self) -> tuple[int, bytes]:
        try:
            raw_head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise RawHttpError(f"connection closed before a response: {exc}") from exc
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            await self.close()
            raise RawHttpError(f"response without Content-Length (status {status})")
        body = await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
        self._reader = self._writer = None
