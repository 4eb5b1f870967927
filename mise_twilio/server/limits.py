"""Request limits every route shares: HTTP version, header count and header bytes.

uvicorn's h11 server caps only a request head that has *not yet* arrived whole
(``h11_max_incomplete_event_size``): a 64 KiB header or 1,000 headers arriving in one read are
parsed and passed on, and h11 accepts any ``HTTP/d.d`` version. This ASGI middleware refuses
them before any route runs: ``505`` for an HTTP version other than 1.0/1.1 (2 and 3 when the
server speaks them), ``431`` for more than ``max_header_count`` headers or more than
``max_header_bytes`` of header names and values, ``400`` for a body framed twice
(``Content-Length`` and ``Transfer-Encoding``). Each refusal is one structlog warning, with
no header value in it. A WebSocket upgrade is refused the same way (a denial response where the
server supports the ``websocket.http.response`` extension, a 403 otherwise).

Twilio's own requests carry about 15 headers and under 2 KiB of them
(docs/protocol.md §5-6); the defaults leave a wide margin for proxies in front.
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HTTP_VERSIONS", "MAX_HEADER_BYTES", "MAX_HEADER_COUNT", "RequestLimits"]

MAX_HEADER_COUNT = 100
"""Headers per request (Twilio sends about 15; websockets' own handshake limit is 128)."""
MAX_HEADER_BYTES = 16 * 1024
"""Header names plus values per request, bytes (h11's default cap of a request head)."""
HTTP_VERSIONS = frozenset({"1.0", "1.1", "2", "3"})

log = structlog.get_logger("mise_twilio.server")


class RequestLimits:
    """ASGI middleware: refuse requests outside the limits (see the module docstring).

    ``max_header_count``: most headers; ``max_header_bytes``: most bytes of header names and
    values together. Lifespan and other scopes pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_header_count: int = MAX_HEADER_COUNT,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.app = app
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, reason)`` when ``scope`` breaks a limit, else ``None``."""
        version = scope.get("http_version", "1.1")
        if version not in HTTP_VERSIONS:
            return 505, "HTTP version not supported"
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if len(headers) > self.max_header_count:
            return 431, f"more than {self.max_header_count} headers"
        size = sum(len(name) + len(value) for name, value in headers)
        if size > self.max_header_bytes:
            return 431, f"headers over {self.max_header_bytes} bytes"
        names = {name for name, _ in headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            # Two framings for one body is how requests are smuggled past proxies; h11 takes
            # the chunked one and would wait for chunks that never come (RFC 9112 §6.1).
            return 400, "both Content-Length and Transfer-Encoding"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, reason = refused
        log.warning(
            "request_refused",
            status_code=status,
            reason=reason,
            path=scope.get("path", "")[:200],
            kind=scope["type"],
        )
        body = reason.encode() + b"\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": status, "headers": headers}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
