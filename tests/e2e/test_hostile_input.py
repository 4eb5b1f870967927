"""Hostile input against a real server: each request is answered with the right 4xx (or the
connection closed) within the time limit, nothing reaches a sink, no traceback reaches the log,
and the server goes on serving.

One table of raw requests (bytes exactly as sent on the socket, so nothing a client library
would fix up can hide a problem) and a few cases on an open stream. Add a case whenever a new
kind of input turns up: the table is meant to grow.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import structlog
from server_harness import read_jsonl, running_server, wait_until
from support import CALL_SID, fixture_lines, status_callback
from websockets.asyncio.client import connect

from mise_twilio.server.app import STREAM_PATH, WEBHOOK_PATH
from mise_twilio.server.config import Settings
from mise_twilio.server.logs import configure_logging

TIME_LIMIT_S = 5.0
"""A case not answered (or closed) by then hangs: that is the failure, not slowness."""
CLOSED = 0
"""Expected "status" of a case the server must answer by closing the connection."""


def form_body(**overrides: str) -> bytes:
    from urllib.parse import urlencode

    return urlencode(status_callback("ringing", 1, **overrides)).encode()


def post(body: bytes, *, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    return (
        b"POST " + WEBHOOK_PATH.encode() + b" HTTP/" + version + b"\r\nHost: mise.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


def upgrade(path: bytes = STREAM_PATH.encode(), *, extra: bytes = b"", key: bool = True) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: mise.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        + (b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n" if key else b"")
        + b"Sec-WebSocket-Version: 13\r\n"
        + extra
        + b"\r\n"
    )


PAIRS_100K = b"&".join(b"a%d=1" % i for i in range(100_000))


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    status: int | tuple[int, ...]  # CLOSED: the server closes without a response
    half_close: bool = False  # shut our write side after sending (EOF mid-request)


CASES = [
    # -- status callbacks ------------------------------------------------------------------
    Case(
        "chunked body, huge chunk size, cut by EOF",
        b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: mise.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"FFFFFFFFFF\r\nCallSid=CA",
        CLOSED,
        half_close=True,
    ),
    Case(
        "Content-Length beyond the body, cut by EOF",
        post(form_body())[:-10],
        CLOSED,
        half_close=True,
    ),
    Case("100,000-pair form", post(PAIRS_100K), 413),
    Case(
        "100,000-pair form, chunked (no Content-Length)",
        b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: mise.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + b"%x\r\n" % len(PAIRS_100K) + PAIRS_100K + b"\r\n0\r\n\r\n",
        413,
    ),
    Case(
        "100,000-pair query string",
        b"GET " + WEBHOOK_PATH.encode() + b"?" + PAIRS_100K + b" HTTP/1.1\r\nHost: mise.test\r\n"
        b"Connection: close\r\n\r\n",
        (400, 414, 431),
    ),
    Case("500 small fields", post(b"&".join(b"f%d=1" % i for i in range(500))), 400),
    Case("CallSid with another SID's prefix", post(form_body(CallSid="MZ" + CALL_SID[2:])), 400),
    Case("CallSid one hex digit short", post(form_body(CallSid=CALL_SID[:-1])), 400),
    Case("AccountSid that is a CallSid", post(form_body(AccountSid=CALL_SID)), 400),
    Case("HTTP/9.9", post(form_body(), version=b"9.9"), 505),
    Case("HTTP/0.9-style version", post(form_body(), version=b"0.9"), (400, 505)),
    Case("one 64 KiB header", post(form_body(), extra=b"X-Big: " + b"a" * 65536 + b"\r\n"), 431),
    Case(
        "1,000 headers",
        post(form_body(), extra=b"".join(b"X-H%d: v\r\n" % i for i in range(1000))),
        431,
    ),
    Case(
        "Content-Length not a number",
        post(form_body()).replace(b"Content-Length: ", b"Content-Length: x", 1),
        400,
    ),
    Case(
        "Content-Length and Transfer-Encoding",
        post(form_body(), extra=b"Transfer-Encoding: chunked\r\n"),
        400,
    ),
    Case("NUL in a header value", post(form_body(), extra=b"X-A: a\x00b\r\n"), 400),
    Case("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400),
    Case("form over 64 KiB", post(b"A=" + b"x" * 70_000), 413),
    # -- the stream's handshake ------------------------------------------------------------
    Case("WebSocket to a wrong path", upgrade(b"/v1/stream/nope"), 404),
    Case("WebSocket to the webhook path", upgrade(WEBHOOK_PATH.encode()), 404),
    Case(
        "plain HTTP to the stream path",
        b"GET " + STREAM_PATH.encode() + b" HTTP/1.1\r\nHost: mise.test\r\n"
        b"Connection: close\r\n\r\n",
        426,
    ),
    Case(
        "100 KB header on the handshake", upgrade(extra=b"X-Big: " + b"a" * 100_000 + b"\r\n"), 431
    ),
    Case("64 KiB header on the handshake", upgrade(extra=b"X-Big: " + b"a" * 65536 + b"\r\n"), 431),
    Case(
        "1,000 headers on the handshake",
        upgrade(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(1000))),
        431,
    ),
    Case("handshake without Sec-WebSocket-Key", upgrade(key=False), 400),
    Case(
        "handshake with Sec-WebSocket-Version 8",
        upgrade().replace(b"Version: 13", b"Version: 8"),
        (400, 426),  # RFC 6455 §4.4 suggests 426; websockets answers 400
    ),
]


async def exchange(port: int, case: Case) -> int:
    """Send ``case.raw``; the response's status code, or ``CLOSED`` when the server closed the
    connection without one. Raises ``TimeoutError`` after ``TIME_LIMIT_S``."""

    async def go() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            try:
                writer.write(case.raw)
                await writer.drain()
                if case.half_close:
                    writer.write_eof()
            except ConnectionError:
                pass  # the server may refuse before reading everything; read its answer
            try:
                head = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return CLOSED
            parts = head.split()
            assert parts[0].startswith(b"HTTP/1."), head
            return int(parts[1])
        finally:
            writer.close()

    return await asyncio.wait_for(go(), TIME_LIMIT_S)


@pytest.fixture
def settings(server_settings: Callable[..., Settings]) -> Iterator[Settings]:
    configure_logging("info", "json")  # as ``mise-twilio serve`` does: every line JSON
    yield server_settings(log_format="json")
    structlog.reset_defaults()


async def test_hostile_requests_are_answered_and_the_server_goes_on(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    results: dict[str, int] = {}
    async with running_server(settings) as (http_url, ws_base, app):
        port = int(http_url.rsplit(":", 1)[1])
        for case in CASES:
            results[case.name] = await exchange(port, case)
        # Still serving: a real call goes through after all that.
        await _replay(ws_base, fixture_lines("connect_inbound"))
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "stream closed")
    wrong = {
        case.name: results[case.name]
        for case in CASES
        if results[case.name]
        not in (case.status if isinstance(case.status, tuple) else (case.status,))
    }
    assert not wrong, wrong
    records = read_jsonl(settings.resolved_jsonl_path)
    assert {r["type"] for r in records} >= {"stream.started", "turn", "stream.stopped"}
    assert not [r for r in records if r["type"].startswith("call.")], "a hostile form got in"
    log = capsys.readouterr()
    assert "Traceback" not in log.err + log.out
    assert "Exception in ASGI application" not in log.err
    assert "without completing handshake" not in log.err
    for line in log.err.splitlines():
        json.loads(line)  # every log line is JSON, uvicorn's own included


async def _replay(ws_base: str, lines: list[str]) -> None:
    from mise_twilio.server.replay_client import replay_websocket

    await replay_websocket(lines, ws_base + STREAM_PATH, speed=0)


@pytest.mark.parametrize(
    ("name", "frame", "text"),
    [
        ("text frame that is not UTF-8", b'{"event":"media","x":"\xff\xfe"}', True),
        ("lone surrogate bytes in a text frame", b'{"event":"\xed\xa0\x80"}', True),
        ("binary garbage", bytes(range(256)), False),
        ("frame over the message limit", b"{" + b" " * 70_000 + b"}", True),
    ],
)
async def test_bad_frames_are_diagnostics_and_the_call_goes_on(
    settings: Settings, capsys: pytest.CaptureFixture[str], name: str, frame: bytes, text: bool
) -> None:
    lines = fixture_lines("connect_inbound")
    async with running_server(settings) as (_, ws_base, app):
        async with connect(ws_base + STREAM_PATH, ping_interval=None) as ws:
            for line in lines[:50]:
                await ws.send(line)
            await ws.send(frame, text=text)
            for line in lines[50:]:
                await ws.send(line)
            await asyncio.wait_for(ws.wait_closed(), TIME_LIMIT_S * 4)
            assert ws.close_code == 1000, name
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "stream closed")
    records = read_jsonl(settings.resolved_jsonl_path)
    stopped = [r for r in records if r["type"] == "stream.stopped"]
    assert len(stopped) == 1 and stopped[0]["reason"] == "stop", name  # the call went on
    assert [r for r in records if r["type"] == "diagnostic"], name
    assert "Traceback" not in capsys.readouterr().err


async def test_a_frame_over_the_socket_cap_closes_1009_and_keeps_the_turns(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = fixture_lines("connect_inbound")
    async with running_server(settings) as (_, ws_base, app):
        async with connect(ws_base + STREAM_PATH, ping_interval=None, max_size=None) as ws:
            for line in lines[: len(lines) // 2]:
                await ws.send(line)
            await ws.send("x" * (2 * 1024 * 1024))
            await asyncio.wait_for(ws.wait_closed(), TIME_LIMIT_S)
        assert ws.close_code == 1009
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "stream closed")
    records = read_jsonl(settings.resolved_jsonl_path)
    assert records[-1]["type"] == "stream.stopped"
    assert "Traceback" not in capsys.readouterr().err
