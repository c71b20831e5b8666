"""Pure ASGI middleware: request ids, the request body size limit and the per-route request metrics."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import REQUEST_ID_HEADER, error_response
from .metrics import ServiceMetrics

# A caller's own request id is kept only when it is short and plain: it goes into logs and headers.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestIdMiddleware:
    """Gives every request an id (the caller's `X-Request-ID` when it is plain, else a new one),
    keeps it in the request state for error bodies and logs, and returns it as `X-Request-ID`,
    so a 500 a client reports can be found in the service's log."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == REQUEST_ID_HEADER.encode()), b"")
        given = given.decode("latin-1")
        request_id = given if _CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = asyncio.get_running_loop().time()  # the request's deadline counts from here

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER.encode()]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """413 (error envelope) for a body over `max_bytes`: by its Content-Length up front, or
    while it streams in (chunked bodies, lying headers)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self):
        return error_response(
            413, "payload_too_large", f"the request body is over {self.max_bytes} bytes", {"max_bytes": self.max_bytes}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await error_response(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
                    return
                if length > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions met while reading the body.
                    raise HTTPException(413, f"the request body is over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Counts requests and observes their latency by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(scope.get("method", ""), path, status, time.perf_counter() - start)
