"""Only Twilio gets in: signatures, the shared api_key, PII and malformed webhooks, end to end.

Every test runs the real app (``create_app``) under uvicorn on a loopback port. The server is
configured with ``MISE_PUBLIC_URL=https://ingest.example.test`` (as behind a TLS-terminating
proxy) while the clients connect to ``127.0.0.1:PORT``: signatures must be checked against the
configured public URL, never against the Host the request arrived with. Signatures are computed
with twilio's own ``RequestValidator.compute_signature``, as Twilio computes them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import urlencode

import httpx
import pytest
import structlog
from server_harness import read_jsonl, running_server
from support import status_callback
from twilio.request_validator import RequestValidator
from websockets.exceptions import InvalidStatus

from mise_twilio.core.pii import PiiPolicy
from mise_twilio.replay import read_fixture
from mise_twilio.server.app import STREAM_PATH, WEBHOOK_PATH
from mise_twilio.server.config import Settings
from mise_twilio.server.logs import configure_logging
from mise_twilio.server.replay_client import replay_websocket

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TOKEN = "e2e-secure-auth-token-0123456789ab"
PUBLIC = "https://ingest.example.test"
WS_URL = "wss://ingest.example.test" + STREAM_PATH
HOOK_URL = PUBLIC + WEBHOOK_PATH
PII_KEY = "e2e-pii-key-not-a-secret"
API_KEY = "k3y-Shared-Secret-7f2c9a41"

CALL_SID = "CA0123456789abcdef0123456789abcdef"
ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
FROM = "+14155550123"
TO = "+442071838750"
FORWARDED = "+919876543210"
CALLER_NAME = "JOHN SMITH"
RAW_PII = (
    FROM,
    TO,
    FORWARDED,
    CALLER_NAME,
    FROM[1:],  # the digits without "+"
    TO[1:],
    FORWARDED[1:],
    "4155550123",  # national forms
    "2071838750",
    "9876543210",
    "%2B14155550123",  # percent-encoded, as on the wire
    "%2B442071838750",
    "JOHN+SMITH",
)

FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


# -- helpers ----------------------------------------------------------------------------------


def sign(url: str, params: dict[str, str] | None = None, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


def ws_headers(url: str = WS_URL, token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": sign(url, token=token)}


def callback(status: str, seq: int, **extra: str) -> dict[str, str]:
    """The real status callback's fields (docs/protocol.md §5) for this module's call, with
    a caller name and a forwarding number, which must be redacted too."""
    fields = {
        "CallSid": CALL_SID,
        "AccountSid": ACCOUNT_SID,
        "From": FROM,
        "Caller": FROM,
        "To": TO,
        "Called": TO,
        "CallerName": CALLER_NAME,
        "ForwardedFrom": FORWARDED,
        "Direction": "inbound",
    }
    return status_callback(status, seq, **(fields | extra))


async def post_form(
    client: httpx.AsyncClient,
    form: dict[str, str],
    *,
    signed_url: str | None = HOOK_URL,
    token: str = TOKEN,
) -> httpx.Response:
    """POST ``form`` urlencoded, signed over ``signed_url`` (``None``: no signature header)."""
    headers = dict(FORM_HEADERS)
    if signed_url is not None:
        headers["X-Twilio-Signature"] = sign(signed_url, form, token)
    return await client.post(WEBHOOK_PATH, content=urlencode(form), headers=headers)


def with_custom_parameters(lines: list[str], params: dict[str, str]) -> list[str]:
    """A copy of a fixture whose ``start.customParameters`` is ``params``."""
    out = list(lines)
    for i, line in enumerate(out):
        message = json.loads(line)
        if message.get("event") == "start":
            message["start"]["customParameters"] = params
            out[i] = json.dumps(message, separators=(",", ":"))
            return out
    raise AssertionError("fixture has no start message")


def log_events(text: str) -> list[dict[str, Any]]:
    """The structlog JSON lines in captured output (other lines ignored)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def warnings_named(text: str, event: str) -> list[dict[str, Any]]:
    return [e for e in log_events(text) if e.get("event") == event and e["level"] == "warning"]


def types(records: list[dict[str, Any]]) -> list[str]:
    return [r["type"] for r in records]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_lines() -> list[str]:
    """A one-track ``<Connect>`` call (about 9 s of audio, 3 caller turns)."""
    return read_fixture(FIXTURES / "connect_inbound.jsonl")


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "twilio_auth_token": TOKEN,
            "public_url": PUBLIC,
            "data_dir": tmp_path,
            "pii_key": PII_KEY,
            "http_url": None,
            "redis_url": None,
            "api_key": None,
        }
        values.update(overrides)
        return Settings(**values)

    return make


class _CurrentStderr:
    """A file that writes to whatever ``sys.stderr`` is at the time of the write."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def logs(capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """structlog as in production (JSON lines to stderr, debug level); returns a reader of
    everything written to stdout and stderr so far."""
    configure_logging("debug", "json")
    # pytest swaps ``sys.stderr`` between the setup and call phases: resolve it per write.
    # PrintLogger only writes and flushes: a proxy is enough where structlog asks for a TextIO
    stderr = cast("TextIO", _CurrentStderr())
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stderr))
    seen: list[str] = []

    def read() -> str:
        out, err = capfd.readouterr()
        seen.append(out + err)
        return "".join(seen)

    yield read
    structlog.reset_defaults()


# -- 1. the WebSocket upgrade -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "signed_url"),
    [
        (STREAM_PATH, WS_URL),
        (STREAM_PATH, WS_URL + "/"),  # Twilio's "try appending a trailing /"
        (STREAM_PATH + "/", WS_URL + "/"),
        (STREAM_PATH + "/", WS_URL),
    ],
    ids=["exact", "signed-with-slash", "path-with-slash", "path-with-slash-signed-without"],
)
async def test_signed_upgrade_is_accepted(
    make_settings: Callable[..., Settings],
    fixture_lines: list[str],
    logs: Callable[[], str],
    path: str,
    signed_url: str,
) -> None:
    settings = make_settings()
    async with running_server(settings) as (_, ws_base, _app):
        stats = await replay_websocket(
            fixture_lines, ws_base + path, speed=0, headers=ws_headers(signed_url)
        )
    assert stats.messages_sent == len(fixture_lines)
    records = read_jsonl(settings.resolved_jsonl_path)
    kinds = types(records)
    assert kinds[0] == "stream.started"
    assert kinds[-1] == "stream.stopped"
    assert kinds.count("turn") >= 1
    assert {r["call_sid"] for r in records} == {"CA5642c6542c8c534951ca311284054303"}
    assert not warnings_named(logs(), "stream_forbidden")


def _forged_headers(port_url: str) -> dict[str, dict[str, str]]:
    return {
        "forged": ws_headers(token="not-the-auth-token"),
        "garbage": {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        "empty": {"X-Twilio-Signature": ""},
        "missing": {},
        "other-host": ws_headers("wss://evil.example.test" + STREAM_PATH),
        "https-not-wss": ws_headers(PUBLIC + STREAM_PATH),
        "ws-not-wss": ws_headers("ws://ingest.example.test" + STREAM_PATH),
        "other-path": ws_headers("wss://ingest.example.test/v1/stream/other"),
        "with-query": ws_headers(WS_URL + "?token=abc"),
        # What a server that rebuilt the URL from the Host header would accept:
        "loopback-host": ws_headers(port_url.replace("ws://", "wss://")),
        "loopback-host-ws": ws_headers(port_url),
    }


@pytest.mark.parametrize(
    "variant",
    [
        "forged",
        "garbage",
        "empty",
        "missing",
        "other-host",
        "https-not-wss",
        "ws-not-wss",
        "other-path",
        "with-query",
        "loopback-host",
        "loopback-host-ws",
    ],
)
async def test_unsigned_or_missigned_upgrade_is_refused(
    make_settings: Callable[..., Settings],
    fixture_lines: list[str],
    logs: Callable[[], str],
    variant: str,
) -> None:
    settings = make_settings()
    async with running_server(settings) as (http_base, ws_base, app):
        url = ws_base + STREAM_PATH
        headers = _forged_headers(url)[variant]
        with pytest.raises(InvalidStatus) as refused:
            await replay_websocket(fixture_lines, url, speed=0, headers=headers)
        assert refused.value.response.status_code == 403
        assert not app.state.bridge.sessions
        # Still serving: a correctly signed stream right after is accepted.
        async with httpx.AsyncClient(base_url=http_base) as client:
            assert (await client.get("/healthz")).status_code == 200
    assert read_jsonl(settings.resolved_jsonl_path) == []
    forbidden = warnings_named(logs(), "stream_forbidden")
    assert len(forbidden) == 1
    assert forbidden[0]["path"] == STREAM_PATH


# -- 2. webhooks ------------------------------------------------------------------------------


async def test_signed_webhook_is_accepted(
    make_settings: Callable[..., Settings], logs: Callable[[], str]
) -> None:
    settings = make_settings()
    async with (
        running_server(settings) as (http_base, _, _app),
        httpx.AsyncClient(base_url=http_base) as client,
    ):
        response = await post_form(client, callback("initiated", 0))
        assert response.status_code == 204
        assert response.content == b""
    records = read_jsonl(settings.resolved_jsonl_path)
    assert types(records) == ["call.initiated"]
    (event,) = records
    assert event["call_sid"] == CALL_SID
    assert event["account_sid"] == ACCOUNT_SID
    assert event["id"] == f"{CALL_SID}:call.initiated"
    assert event["sequence_number"] == 0
    assert event["direction"] == "inbound"
    assert event["event_at"].startswith("2026-02-12T11:48:25")
    assert not warnings_named(logs(), "webhook_forbidden")


WEBHOOK_FORGERIES: dict[str, dict[str, Any]] = {
    "forged": {"token": "not-the-auth-token"},
    "missing": {"signed_url": None},
    "other-host": {"signed_url": "https://evil.example.test" + WEBHOOK_PATH},
    "http-not-https": {"signed_url": "http://ingest.example.test" + WEBHOOK_PATH},
    "other-path": {"signed_url": PUBLIC + "/v1/webhook/other"},
    "stream-url": {"signed_url": WS_URL},
}


@pytest.mark.parametrize("variant", [*WEBHOOK_FORGERIES, "loopback-host", "tampered-params"])
async def test_missigned_webhook_is_refused(
    make_settings: Callable[..., Settings], logs: Callable[[], str], variant: str
) -> None:
    settings = make_settings()
    form = callback("ringing", 1)
    async with (
        running_server(settings) as (http_base, _, _app),
        httpx.AsyncClient(base_url=http_base) as client,
    ):
        if variant == "loopback-host":
            response = await post_form(client, form, signed_url=http_base + WEBHOOK_PATH)
        elif variant == "tampered-params":
            headers = {**FORM_HEADERS, "X-Twilio-Signature": sign(HOOK_URL, form)}
            tampered = {**form, "CallStatus": "completed"}
            response = await client.post(WEBHOOK_PATH, content=urlencode(tampered), headers=headers)
        else:
            response = await post_form(client, form, **WEBHOOK_FORGERIES[variant])
        assert response.status_code == 403
        assert "signature" in response.text
        # The server goes on: a correctly signed request is accepted afterwards.
        assert (await post_form(client, callback("initiated", 0))).status_code == 204
    assert types(read_jsonl(settings.resolved_jsonl_path)) == ["call.initiated"]
    forbidden = warnings_named(logs(), "webhook_forbidden")
    assert len(forbidden) == 1
    assert forbidden[0]["status_code"] == 403


# -- 3. the shared api_key --------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"tenant": "acme", "api_key": "wrong-key"},
        {"tenant": "acme", "api_key": API_KEY + "x"},
        {"tenant": "acme", "api_key": ""},
        {"tenant": "acme"},
    ],
    ids=["wrong", "longer", "empty", "absent"],
)
async def test_wrong_api_key_closes_1008_and_emits_nothing(
    make_settings: Callable[..., Settings],
    fixture_lines: list[str],
    logs: Callable[[], str],
    params: dict[str, str],
) -> None:
    settings = make_settings(api_key=API_KEY)
    lines = with_custom_parameters(fixture_lines, params)
    async with running_server(settings) as (_, ws_base, _app):
        stats = await replay_websocket(lines, ws_base + STREAM_PATH, speed=0, headers=ws_headers())
    assert stats.close_code == 1008
    assert read_jsonl(settings.resolved_jsonl_path) == []
    text = logs()
    assert [e["reason"] for e in warnings_named(text, "stream_rejected")] == ["api_key"]
    (rejected,) = warnings_named(text, "stream_rejected")
    start = json.loads(next(line for line in lines if '"event":"start"' in line))
    assert rejected["stream_sid"] == start["streamSid"]  # the refusal names its call
    assert rejected["call_sid"] == start["start"]["callSid"]
    assert API_KEY not in text


async def test_right_api_key_streams_and_is_never_written(
    make_settings: Callable[..., Settings], fixture_lines: list[str], logs: Callable[[], str]
) -> None:
    settings = make_settings(api_key=API_KEY)
    lines = with_custom_parameters(fixture_lines, {"tenant": "acme", "api_key": API_KEY})
    async with running_server(settings) as (_, ws_base, _app):
        stats = await replay_websocket(lines, ws_base + STREAM_PATH, speed=0, headers=ws_headers())
    assert stats.close_code == 1000
    records = read_jsonl(settings.resolved_jsonl_path)
    kinds = types(records)
    assert kinds[0] == "stream.started"
    assert kinds[-1] == "stream.stopped"
    assert "turn" in kinds
    assert records[0]["custom_parameters"] == {"tenant": "acme"}
    assert all(r["custom_parameters"] == {"tenant": "acme"} for r in records if r["type"] == "turn")
    raw = settings.resolved_jsonl_path.read_text(encoding="utf-8")
    assert API_KEY not in raw
    assert "api_key" not in raw
    assert API_KEY not in logs()


# -- 4. PII -----------------------------------------------------------------------------------


async def test_phone_numbers_never_reach_records_or_logs(
    make_settings: Callable[..., Settings], logs: Callable[[], str]
) -> None:
    settings = make_settings()
    assert settings.keep_pii is False
    async with (
        running_server(settings) as (http_base, _, _app),
        httpx.AsyncClient(base_url=http_base) as client,
    ):
        for seq, status in enumerate(["initiated", "ringing", "in-progress"]):
            assert (await post_form(client, callback(status, seq))).status_code == 204
        done = callback("completed", 3, CallDuration="42", Duration="1", SipResponseCode="200")
        assert (await post_form(client, done)).status_code == 204
        # Refused and malformed requests carrying numbers must not log them either.
        assert (await post_form(client, callback("busy", 4), token="forged")).status_code == 403
        bad = callback("exploded", 5, From=FROM + "\u00e9")
        assert (await post_form(client, bad)).status_code == 400
        bad_time = callback("ringing", 6, Timestamp="not a date")
        assert (await post_form(client, bad_time)).status_code == 400
        # A GET callback (params in the query string, signed URL includes it).
        query = urlencode(callback("ringing", 1, CallSid=CALL_SID.replace("0", "1")))
        response = await client.get(
            f"{WEBHOOK_PATH}?{query}",
            headers={"X-Twilio-Signature": sign(f"{HOOK_URL}?{query}")},
        )
        assert response.status_code == 204

    raw = settings.resolved_jsonl_path.read_text(encoding="utf-8")
    text = logs()
    for value in RAW_PII:
        assert value not in raw, f"{value!r} in the JSONL"
        assert value not in text, f"{value!r} in the logs"

    records = read_jsonl(settings.resolved_jsonl_path)
    assert types(records) == [
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.completed",
        "call.ringing",
    ]
    policy = PiiPolicy(PII_KEY.encode(), keep=False)
    for record in records:
        # Stable keyed hashes that keep the country calling code.
        assert record["from"] == policy.redact(FROM)
        assert record["from"].startswith("+1~")
        assert record["to"] == policy.redact(TO)
        assert record["to"].startswith("+44~")
        assert record["caller_name"] == policy.redact(CALLER_NAME)
        assert record["forwarded_from"] == policy.redact(FORWARDED)
    assert records[3]["duration_s"] == 42
    # The forbidden and malformed requests were logged (without the numbers).
    assert warnings_named(text, "webhook_forbidden")
    assert len(warnings_named(text, "webhook_rejected")) == 2


# -- 5. malformed webhooks --------------------------------------------------------------------


def _raw_headers() -> dict[str, str]:
    """Headers for a raw body (these bodies are refused before the signature is checked)."""
    return {**FORM_HEADERS, "X-Twilio-Signature": sign(HOOK_URL)}


async def _big_chunks(total: int) -> AsyncIterator[bytes]:
    chunk = b"Pad=" + b"x" * (64 * 1024 - 4)
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


async def test_malformed_webhooks_get_4xx_and_the_server_goes_on(
    make_settings: Callable[..., Settings], logs: Callable[[], str]
) -> None:
    settings = make_settings()
    one_mb = 1024 * 1024
    raw_cases: list[tuple[str, bytes, int, str]] = [
        ("bad percent", b"CallSid=" + CALL_SID.encode() + b"&CallStatus=%ZZ", 400, "percent"),
        ("truncated percent", b"CallSid=CA1&CallStatus=ringing%2", 400, "percent"),
        ("invalid utf-8 bytes", b"CallSid=CA\xff\xfe&CallStatus=ringing", 400, "UTF-8"),
        ("invalid utf-8 escapes", b"CallSid=CA1&From=%FF%FE&CallStatus=ringing", 400, "UTF-8"),
        ("1 MB body", b"Pad=" + b"x" * one_mb, 413, "body over"),
    ]
    signed_cases: list[tuple[str, dict[str, str], int, str]] = [
        ("missing CallSid", {k: v for k, v in callback("ringing", 1).items() if k != "CallSid"},
         400, "missing CallSid"),
        ("unknown CallStatus", callback("exploded", 1), 400, "unknown CallStatus"),
        ("no CallStatus", {"CallSid": CALL_SID, "AccountSid": ACCOUNT_SID}, 400, "CallStatus"),
        ("bad SequenceNumber", callback("ringing", 1, SequenceNumber="-1"), 400, "SequenceNumber"),
        ("bad Timestamp", callback("ringing", 1, Timestamp="yesterday"), 400, "Timestamp"),
        ("bad CallSid", callback("ringing", 1, CallSid="CA<script>"), 400, "CallSid"),
    ]  # fmt: skip
    async with (
        running_server(settings) as (http_base, _, _app),
        httpx.AsyncClient(base_url=http_base, timeout=10.0) as client,
    ):
        for name, body, status, words in raw_cases:
            response = await client.post(WEBHOOK_PATH, content=body, headers=_raw_headers())
            assert response.status_code == status, name
            assert words in response.text, (name, response.text)
        for name, form, status, words in signed_cases:
            response = await post_form(client, form)
            assert response.status_code == status, name
            assert words in response.text, (name, response.text)
        # 1 MB streamed without Content-Length (chunked): cut off while reading.
        response = await client.post(
            WEBHOOK_PATH, content=_big_chunks(one_mb), headers=_raw_headers()
        )
        assert response.status_code == 413
        assert "body over" in response.text
        # Not a form at all.
        response = await client.post(
            WEBHOOK_PATH,
            content=json.dumps(callback("ringing", 1)),
            headers={"Content-Type": "application/json", "X-Twilio-Signature": sign(HOOK_URL)},
        )
        assert response.status_code == 415
        # Still serving, and the earlier garbage did not poison the call's lifecycle.
        assert (await post_form(client, callback("initiated", 0))).status_code == 204
        assert (await post_form(client, callback("ringing", 1))).status_code == 204
        assert (await client.get("/healthz")).status_code == 200
    assert types(read_jsonl(settings.resolved_jsonl_path)) == ["call.initiated", "call.ringing"]
    rejected = warnings_named(logs(), "webhook_rejected")
    assert len(rejected) == len(raw_cases) + len(signed_cases) + 2
    assert all(400 <= e["status_code"] < 500 for e in rejected)
