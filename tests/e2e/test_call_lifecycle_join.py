"""Stream records and call status callbacks join on ``call_sid``, on a real server.

``fixtures/fork_two_track.jsonl`` is replayed over the stream endpoint (speed 0, signed as
Twilio signs it) while that call's status callbacks (initiated 0, ringing 1, in-progress 2,
completed 3) are posted shuffled and duplicated, as Twilio may deliver them ("there is no
guarantee they will arrive in the same order", with retries). The JSONL must hold the turns and
exactly one event per status, in SequenceNumber order; ``call.completed`` carries the stream's
summary and ``stream.stopped`` carries the last call status when that arrived first.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from server_harness import read_jsonl, running_server, wait_until
from support import status_callback
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from mise_twilio.replay import read_fixture
from mise_twilio.server.app import STREAM_PATH, WEBHOOK_PATH
from mise_twilio.server.config import Settings
from mise_twilio.server.replay_client import replay_websocket

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "fork_two_track.jsonl"
EXPECTED = json.loads(FIXTURE.with_suffix(".expected.json").read_text(encoding="utf-8"))
CALL_SID: str = EXPECTED["call_sid"]
STREAM_SID: str = EXPECTED["stream_sid"]
ACCOUNT_SID: str = EXPECTED["account_sid"]

TOKEN = "e2e-join-auth-token-0123456789abcd"
PUBLIC = "https://ingest.example.test"
WS_URL = "wss://ingest.example.test" + STREAM_PATH
HOOK_URL = PUBLIC + WEBHOOK_PATH
CALL_DURATION_S = "41"

STATUSES = [("initiated", 0), ("ringing", 1), ("in-progress", 2), ("completed", 3)]
CALL_TYPES = ["call.initiated", "call.ringing", "call.answered", "call.completed"]


def callback(status: str, seq: int) -> dict[str, str]:
    return status_callback(status, seq, CallSid=CALL_SID, AccountSid=ACCOUNT_SID)


def sign(url: str, params: dict[str, str] | None = None) -> str:
    return str(RequestValidator(TOKEN).compute_signature(url, params or {}))


def shuffled_with_duplicates(statuses: list[tuple[str, int]], seed: int) -> list[dict[str, str]]:
    """Every callback twice (a Twilio retry), in a seeded random order."""
    forms = [callback(status, seq) for status, seq in statuses] * 2
    random.Random(seed).shuffle(forms)
    return forms


async def post_all(client: httpx.AsyncClient, forms: list[dict[str, str]]) -> None:
    for form in forms:
        response = await client.post(
            WEBHOOK_PATH,
            content=urlencode(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": sign(HOOK_URL, form),
            },
        )
        assert response.status_code == 204, response.text  # duplicates too: no retry storm


def twilio_stream(ws_base: str) -> Any:
    """A WebSocket to the stream endpoint, upgraded the way Twilio does (signed)."""
    return connect(ws_base + STREAM_PATH, additional_headers={"X-Twilio-Signature": sign(WS_URL)})


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return read_fixture(FIXTURE)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        twilio_auth_token=TOKEN,
        public_url=PUBLIC,
        data_dir=tmp_path,
        pii_key="e2e-join-pii-key",
        http_url=None,
        redis_url=None,
        api_key=None,
    )


def records_of(settings: Settings) -> list[dict[str, Any]]:
    return read_jsonl(settings.resolved_jsonl_path)


def has_type(settings: Settings, kind: str) -> Callable[[], bool]:
    return lambda: any(r["type"] == kind for r in records_of(settings))


def stream_open(app: Any) -> Callable[[], bool]:
    bridge = app.state.bridge
    return lambda: any(s.call_sid == CALL_SID for s in bridge.sessions.values())


def check_join(records: list[dict[str, Any]], *, last_call_status: str | None) -> None:
    """The shared acceptance checks: turns, one event per status in order, the joins."""
    assert {r["call_sid"] for r in records} == {CALL_SID}
    turns = [r for r in records if r["type"] == "turn"]
    assert len(turns) == len(EXPECTED["turns"])
    assert {t["stream_sid"] for t in turns} == {STREAM_SID}
    assert {t["speaker"] for t in turns} == {"caller", "agent"}

    calls = [r for r in records if r["type"].startswith("call.")]
    assert [c["type"] for c in calls] == CALL_TYPES
    assert [c["sequence_number"] for c in calls] == [0, 1, 2, 3]
    assert len({c["id"] for c in calls}) == 4
    assert all(c["account_sid"] == ACCOUNT_SID for c in calls)

    (stopped,) = [r for r in records if r["type"] == "stream.stopped"]
    assert stopped["last_call_status"] == last_call_status
    assert sum(stopped["summary"]["turn_counts"].values()) == len(turns)

    completed = calls[-1]
    assert completed["duration_s"] == int(CALL_DURATION_S)
    assert completed["summary"] is not None
    assert completed["summary"] == stopped["summary"]
    assert [r["type"] for r in records].count("stream.started") == 1


async def test_all_statuses_before_the_stream_ends(settings: Settings, lines: list[str]) -> None:
    """Completed arrives while the stream is open: it is held until ``stream.stopped``."""
    async with (
        running_server(settings) as (http_base, ws_base, app),
        httpx.AsyncClient(base_url=http_base) as client,
    ):
        async with twilio_stream(ws_base) as ws:
            for line in lines[:2]:  # connected, start
                await ws.send(line)
            await wait_until(stream_open(app), what="stream started")
            await post_all(client, shuffled_with_duplicates(STATUSES, seed=3))
            await wait_until(has_type(settings, "call.answered"), what="call.answered written")
            await asyncio.sleep(0.2)
            assert not has_type(settings, "call.completed")()  # held: the stream is open
            for line in lines[2:]:
                await ws.send(line)
        await wait_until(has_type(settings, "call.completed"), what="call.completed written")
        records = records_of(settings)
    check_join(records, last_call_status="completed")
    kinds = [r["type"] for r in records]
    # Held until the stream stopped, then joined with its summary.
    assert kinds.index("call.answered") < kinds.index("stream.stopped")
    assert kinds.index("stream.stopped") < kinds.index("call.completed")
    assert records_of(settings) == records  # the shutdown added nothing


async def test_answered_before_stream_end_completed_after(
    settings: Settings, lines: list[str]
) -> None:
    async with (
        running_server(settings) as (http_base, ws_base, app),
        httpx.AsyncClient(base_url=http_base) as client,
    ):
        async with twilio_stream(ws_base) as ws:
            for line in lines[:2]:
                await ws.send(line)
            await wait_until(stream_open(app), what="stream started")
            await post_all(client, shuffled_with_duplicates(STATUSES[:3], seed=5))
            for line in lines[2:]:
                await ws.send(line)
        await wait_until(lambda: not stream_open(app)(), what="stream closed")
        await post_all(client, shuffled_with_duplicates(STATUSES[1:], seed=7))
        await wait_until(has_type(settings, "call.completed"), what="call.completed written")
    records = records_of(settings)
    check_join(records, last_call_status="in-progress")
    kinds = [r["type"] for r in records]
    assert kinds.index("stream.stopped") < kinds.index("call.completed")


@pytest.mark.parametrize("seed", [11, 12])
async def test_stream_ends_before_any_status(
    settings: Settings, lines: list[str], seed: int
) -> None:
    async with (
        running_server(settings) as (http_base, ws_base, app),
        httpx.AsyncClient(base_url=http_base) as client,
    ):
        stats = await replay_websocket(
            lines, ws_base + STREAM_PATH, speed=0, headers={"X-Twilio-Signature": sign(WS_URL)}
        )
        assert stats.close_code == 1000
        await wait_until(lambda: not stream_open(app)(), what="stream closed")
        await post_all(client, shuffled_with_duplicates(STATUSES, seed=seed))
        await wait_until(has_type(settings, "call.completed"), what="call.completed written")
    records = records_of(settings)
    check_join(records, last_call_status=None)
    kinds = [r["type"] for r in records]
    assert kinds.index("stream.stopped") < kinds.index("call.initiated")


async def test_completed_ends_a_stream_that_never_stops(
    settings: Settings, lines: list[str]
) -> None:
    """A tunnel swallowed ``stop`` and the close: ``call.completed`` still gets its summary
    within the hold (the server ends the stream after a grace period)."""
    without_stop = [line for line in lines if '"event":"stop"' not in line]
    assert len(without_stop) == len(lines) - 1
    async with (
        running_server(settings) as (http_base, ws_base, app),
        httpx.AsyncClient(base_url=http_base) as client,
        twilio_stream(ws_base) as ws,
    ):
        for line in without_stop:
            await ws.send(line)
        await wait_until(stream_open(app), what="stream started")
        await post_all(client, shuffled_with_duplicates(STATUSES, seed=13))
        await wait_until(
            has_type(settings, "call.completed"), timeout_s=6.0, what="call.completed written"
        )
        records = records_of(settings)
    check_join(records, last_call_status="completed")
    kinds = [r["type"] for r in records]
    assert kinds.index("stream.stopped") < kinds.index("call.completed")
