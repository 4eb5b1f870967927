"""The status-callback endpoint behind a real uvicorn server on a loopback port.

Requests are signed with twilio's own ``RequestValidator.compute_signature`` for the configured
public URL (``https://ingest.example.com``, as behind a TLS-terminating proxy), while the client
connects to ``http://127.0.0.1:<port>``: the signature URL must come from configuration, not
from the Host header.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from support import ACCOUNT_SID, CALL_SID, FROM, TO
from support import status_callback as callback
from twilio.request_validator import RequestValidator

from mise_twilio.core.lifecycle import CallLifecycle
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import CallStatusEvent, StreamStatusEvent, to_json
from mise_twilio.core.status import StatusEvent
from mise_twilio.server.signature import TwilioSignature
from mise_twilio.server.webhook import WEBHOOK_PATH, make_webhook_endpoint, run_lifecycle_poller

TOKEN = "e2e-auth-token-0123456789abcdef"
PUBLIC = "https://ingest.example.com"
SIGNED_URL = PUBLIC + WEBHOOK_PATH
MAX_BODY = 16 * 1024
WINDOW_S = 0.3
RAW_NUMBERS = (FROM, TO, FROM[1:], TO[1:], "%2B14155550123", "%2B919876543210")


def sign(url: str, params: dict[str, str] | None = None, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


@dataclass
class Harness:
    client: httpx.AsyncClient
    records: list[StatusEvent]
    logs: io.StringIO
    lifecycle: CallLifecycle
    server: uvicorn.Server
    base: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    async def post(
        self, form: dict[str, str], *, signature: str | None = "auto", **kw: Any
    ) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature == "auto":
            signature = sign(SIGNED_URL, form)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        return await self.client.post(WEBHOOK_PATH, content=urlencode(form), headers=headers, **kw)

    async def post_raw(self, body: bytes, *, signature: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        return await self.client.post(WEBHOOK_PATH, content=body, headers=headers)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines() if line]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    logs = io.StringIO()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=logs),
        cache_logger_on_first_use=False,
    )
    records: list[StatusEvent] = []
    lifecycle = CallLifecycle(reorder_window_s=WINDOW_S, max_calls=100)
    pii = PiiPolicy(b"e2e-pii-key", keep=False)
    endpoint = make_webhook_endpoint(
        signature=TwilioSignature(TOKEN, PUBLIC),
        lifecycle=lifecycle,
        pii=pii,
        publish=records.append,
        max_body_bytes=MAX_BODY,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = asyncio.create_task(run_lifecycle_poller(lifecycle, records.append, 0.05))
        yield
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller

    app = Starlette(
        routes=[Route(WEBHOOK_PATH, endpoint, methods=["GET", "POST"])], lifespan=lifespan
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
        yield Harness(client, records, logs, lifecycle, server, base)
    server.should_exit = True
    await asyncio.wait_for(task, timeout=10.0)
    structlog.reset_defaults()


async def wait_for(pred: Any, timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def types(records: list[StatusEvent]) -> list[str]:
    return [r.type for r in records]


# ---------------------------------------------------------------------------------------------


async def test_signed_callbacks_become_events(harness: Harness) -> None:
    r = await harness.post(callback("initiated", 0))
    assert r.status_code == 204
    assert r.content == b""
    await harness.post(callback("ringing", 1))
    await harness.post(callback("in-progress", 2))
    await harness.post(
        callback("completed", 3, CallDuration="91", Duration="2", SipResponseCode="200")
    )
    assert types(harness.records) == [
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.completed",
    ]
    done = harness.records[-1]
    assert isinstance(done, CallStatusEvent)
    assert done.id == f"{CALL_SID}:call.completed"
    assert done.duration_s == 91
    assert done.sip_response_code == 200
    assert harness.lifecycle.last_status(CALL_SID) == "completed"


async def test_retries_and_late_statuses_answer_204_without_new_events(harness: Harness) -> None:
    for _ in range(2):
        assert (await harness.post(callback("initiated", 0))).status_code == 204
    assert (await harness.post(callback("completed", 1))).status_code == 204
    assert (await harness.post(callback("ringing", 2))).status_code == 204  # after terminal
    assert types(harness.records) == ["call.initiated", "call.completed"]
    reasons = [line["reason"] for line in harness.log_lines() if line["event"] == "status_dropped"]
    assert reasons == ["duplicate_sequence", "after_terminal"]


async def test_out_of_order_is_reordered_and_poller_releases_gaps(harness: Harness) -> None:
    await harness.post(callback("ringing", 1))
    assert harness.records == []
    await harness.post(callback("initiated", 0))
    assert types(harness.records) == ["call.initiated", "call.ringing"]
    await harness.post(callback("completed", 3))  # sequence 2 never arrives
    assert len(harness.records) == 2
    await wait_for(lambda: len(harness.records) == 3)
    assert harness.records[-1].type == "call.completed"


async def test_forged_or_missing_signature_is_403_and_no_event(harness: Harness) -> None:
    form = callback("initiated", 0)
    forged = await harness.post(form, signature="bm90IGEgc2lnbmF0dXJlIGF0IGFsbA==")
    missing = await harness.post(form, signature=None)
    other_token = await harness.post(form, signature=sign(SIGNED_URL, form, token="other"))
    # signed for the URL the client actually used (Host-derived): must not pass
    host_based = await harness.post(form, signature=sign(harness.base + WEBHOOK_PATH, form))
    http_scheme = await harness.post(
        form, signature=sign("http://ingest.example.com" + WEBHOOK_PATH, form)
    )
    for r in (forged, missing, other_token, host_based, http_scheme):
        assert r.status_code == 403
        assert r.text == "invalid Twilio signature"
    assert harness.records == []
    warnings = [line for line in harness.log_lines() if line["event"] == "webhook_forbidden"]
    assert len(warnings) == 5
    assert warnings[1]["reason"] == "missing X-Twilio-Signature"
    assert all(w["level"] == "warning" for w in warnings)
    assert all(w["call_sid"] == CALL_SID for w in warnings)


async def test_get_callback_signed_over_the_full_url(harness: Harness) -> None:
    form = callback("ringing", 0)
    query = urlencode(form)
    good = sign(f"{SIGNED_URL}?{query}")
    r = await harness.client.get(f"{WEBHOOK_PATH}?{query}", headers={"X-Twilio-Signature": good})
    assert r.status_code == 204
    assert types(harness.records) == ["call.ringing"]
    bad = await harness.client.get(
        f"{WEBHOOK_PATH}?{query.replace('ringing', 'completed')}",
        headers={"X-Twilio-Signature": good},
    )
    assert bad.status_code == 403
    assert len(harness.records) == 1


async def test_stream_status_callback(harness: Harness) -> None:
    form = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": CALL_SID,
        "StreamSid": "MZ0123456789abcdef0123456789abcdef",
        "StreamName": "mise",
        "StreamEvent": "stream-error",
        "StreamError": "Stream - WebSocket - Connection Broken Pipe",
        "Timestamp": "2026-02-12T11:49:00.125Z",
    }
    assert (await harness.post(form)).status_code == 204
    (record,) = harness.records
    assert isinstance(record, StreamStatusEvent)
    assert record.stream_event == "stream-error"
    assert record.stream_error == "Stream - WebSocket - Connection Broken Pipe"


async def test_malformed_requests_get_clear_4xx_and_the_server_keeps_serving(
    harness: Harness,
) -> None:
    no_sid = {k: v for k, v in callback("initiated", 0).items() if k != "CallSid"}
    unknown = callback("answered", 0)
    cases: list[tuple[httpx.Response, int, str]] = [
        (await harness.post_raw(b"CallSid=CA1&From=\xff\xfe"), 400, "not valid UTF-8"),
        (await harness.post_raw(b"CallSid=CA1&From=%FF%FE"), 400, "not valid UTF-8"),
        (await harness.post_raw(b"CallSid=CA1&From=%zz1"), 400, "malformed percent-encoding"),
        (await harness.post(no_sid), 400, "missing CallSid"),
        (await harness.post(unknown), 400, "unknown CallStatus (expected one of"),
        (await harness.post({"Foo": "bar"}), 400, "neither CallStatus nor StreamEvent"),
        (await harness.post(callback("ringing", 0, Timestamp="soon")), 400, "Timestamp is not"),
        (await harness.post_raw(b"A=" + b"x" * (1 << 20)), 413, f"over {MAX_BODY} bytes"),
        (
            await harness.client.post(
                WEBHOOK_PATH, content=b"{}", headers={"Content-Type": "application/json"}
            ),
            415,
            "expected Content-Type application/x-www-form-urlencoded",
        ),
        (await harness.client.put(WEBHOOK_PATH, content=b""), 405, ""),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (response.status_code, response.text)
        assert message in response.text

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(64):
            yield b"x" * 1024

    streamed = await harness.client.post(
        WEBHOOK_PATH,
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert streamed.status_code == 413
    assert harness.records == []
    rejected = [line for line in harness.log_lines() if line["event"] == "webhook_rejected"]
    assert len(rejected) >= 8

    ok = await harness.post(callback("initiated", 0))
    assert ok.status_code == 204
    assert types(harness.records) == ["call.initiated"]


async def test_no_raw_phone_number_in_records_or_logs(
    harness: Harness, capfd: pytest.CaptureFixture[str]
) -> None:
    await harness.post(callback("initiated", 0, CallerName="JOHN SMITH", ForwardedFrom=FROM))
    await harness.post(callback("ringing", 1), signature="forged")
    await harness.post(callback("bogus", 1))
    query = urlencode(callback("in-progress", 2))
    await harness.client.get(
        f"{WEBHOOK_PATH}?{query}", headers={"X-Twilio-Signature": sign(f"{SIGNED_URL}?{query}")}
    )
    await harness.post(callback("completed", 3))
    await harness.post(callback("completed", 3))  # duplicate: logged as dropped
    await wait_for(lambda: len(harness.records) == 3)  # sequence 1 was refused: gap skipped
    assert types(harness.records) == ["call.initiated", "call.answered", "call.completed"]
    first = harness.records[0]
    assert isinstance(first, CallStatusEvent)
    assert first.from_ is not None and first.from_.startswith("+1~")
    assert first.to is not None and first.to.startswith("+91~")
    assert first.caller_name is not None and "JOHN" not in first.caller_name
    dumped = "\n".join(to_json(r) for r in harness.records)
    logged = harness.logs.getvalue()
    captured = capfd.readouterr()
    assert "status_dropped" in logged and "webhook_forbidden" in logged
    for text in (dumped, logged, captured.out, captured.err):
        for raw in RAW_NUMBERS:
            assert raw not in text
        assert "JOHN SMITH" not in text
