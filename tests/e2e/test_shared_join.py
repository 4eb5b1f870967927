"""The completed/summary join across two replicas sharing a real redis-server.

Two servers (``running_server``, in this process, each with its own data directory) write to
one Redis stream; the call's media stream goes to replica A and its status callbacks to
replica B, in both orders Twilio may deliver them. The Redis stream must hold exactly one
``call.completed``, carrying the summary A computed, and A's ``stream.stopped`` must carry the
status B received. Then Redis goes down: nothing is lost, the join happens in-process, and the
fallback is logged and counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import httpx
import pytest
import structlog
from conftest_redis import RedisServer
from redis.asyncio import Redis
from server_harness import read_jsonl, running_server, wait_until
from support import fixture_lines, status_callback
from websockets.asyncio.client import connect

from mise_twilio.server.app import STREAM_PATH, WEBHOOK_PATH
from mise_twilio.server.config import Settings
from mise_twilio.server.replay_client import replay_websocket

STREAM = "join:events"
LINES = fixture_lines("fork_two_track")
START = json.loads(LINES[1])["start"]
CALL_SID: str = START["callSid"]
STREAM_SID: str = START["streamSid"]


def callback(status: str, seq: int) -> dict[str, str]:
    return status_callback(status, seq, CallSid=CALL_SID, AccountSid=START["accountSid"])


async def post(client: httpx.AsyncClient, status: str, seq: int) -> None:
    response = await client.post(
        WEBHOOK_PATH,
        content=urlencode(callback(status, seq)),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 204, response.text


def replica_settings(tmp_path: Path, name: str, redis_url: str, **overrides: Any) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / name,
        redis_url=redis_url,
        redis_stream=STREAM,
        pii_key="shared-join-pii-key",
        **overrides,
    )


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[tuple[str, str, Any], tuple[str, str, Any]]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            running_server(replica_settings(tmp_path, "a", redis_url, **overrides))
        )
        b = await stack.enter_async_context(
            running_server(replica_settings(tmp_path, "b", redis_url, **overrides))
        )
        yield a, b


async def stream_records(url: str) -> list[dict[str, Any]]:
    client = Redis.from_url(url)
    try:
        entries = await client.xrange(STREAM, "-", "+")
    finally:
        await client.aclose()
    # redis-py types every decode mode (and nil entries); this client's XRANGE gives bytes
    rows = cast("list[tuple[bytes, dict[bytes, bytes]]]", entries)
    return [json.loads(fields[b"record"]) for _, fields in rows]


def check(records: list[dict[str, Any]], *, last_call_status: str) -> dict[str, Any]:
    (stopped,) = [r for r in records if r["type"] == "stream.stopped"]
    completed = [r for r in records if r["type"] == "call.completed"]
    assert len(completed) == 1, completed  # claimed once: no duplicate to deduplicate
    assert completed[0]["id"] == f"{CALL_SID}:call.completed"
    assert completed[0]["summary"] == stopped["summary"]
    assert stopped["last_call_status"] == last_call_status
    turns = [r for r in records if r["type"] == "turn"]
    assert sum(stopped["summary"]["turn_counts"].values()) == len(turns) > 0
    return completed[0]


def is_published(app: Any, kind: str) -> Callable[[], bool]:
    path = app.state.bridge.settings.resolved_jsonl_path
    return lambda: any(r["type"] == kind for r in read_jsonl(path))


async def test_stream_on_a_callbacks_on_b_completed_after_the_stop(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        two_replicas(tmp_path, redis_server.url) as ((_, ws_a, app_a), (http_b, _, app_b)),
        httpx.AsyncClient(base_url=http_b) as hooks,
    ):
        for seq, status in enumerate(["initiated", "ringing", "in-progress"]):
            await post(hooks, status, seq)
        await wait_until(is_published(app_b, "call.answered"), what="answered on b")
        await replay_websocket(LINES, ws_a + STREAM_PATH, speed=0)
        await wait_until(is_published(app_a, "stream.stopped"), what="stopped on a")
        await post(hooks, "completed", 3)
        await wait_until(is_published(app_b, "call.completed"), what="completed on b")
    records = await stream_records(redis_server.url)
    check(records, last_call_status="in-progress")
    # b saw the second half and published the joined record; a published none
    a_types = [r["type"] for r in read_jsonl(tmp_path / "a" / "events.jsonl")]
    assert "call.completed" not in a_types


@pytest.mark.parametrize("held_on", ["a", "b"])
async def test_a_status_held_for_reordering_counts_for_the_stop(
    tmp_path: Path, redis_server: RedisServer, held_on: str
) -> None:
    """``initiated`` reaches one replica, ``ringing`` and ``in-progress`` the other, which holds
    them for its reorder window (it never saw ``initiated``); the stream, on a, stops inside
    that window. Its ``stream.stopped`` still says ``in-progress``, whether a itself holds them
    or b does (b told Redis what it received when it received it). In the 2026-12-02 CI run
    before this, a stream cut at shutdown in that window said ``initiated``."""
    async with (
        two_replicas(tmp_path, redis_server.url) as ((http_a, ws_a, app_a), (http_b, _, app_b)),
        httpx.AsyncClient(base_url=http_a) as hooks_a,
        httpx.AsyncClient(base_url=http_b) as hooks_b,
    ):
        first, holder, holder_app = (
            (hooks_b, hooks_a, app_a) if held_on == "a" else (hooks_a, hooks_b, app_b)
        )
        window_s = holder_app.state.bridge.settings.lifecycle.reorder_window_s
        await post(first, "initiated", 0)
        await post(holder, "ringing", 1)
        await post(holder, "in-progress", 2)
        posted = time.monotonic()
        await replay_websocket(LINES, ws_a + STREAM_PATH, speed=0)
        await wait_until(is_published(app_a, "stream.stopped"), what="stopped on a")
        assert time.monotonic() - posted < window_s  # both still held: the case under test
        assert not is_published(holder_app, "call.answered")()
        await post(holder, "completed", 3)
        await wait_until(
            is_published(holder_app, "call.completed"), timeout_s=window_s + 5.0, what="completed"
        )
    records = await stream_records(redis_server.url)
    check(records, last_call_status="in-progress")


async def test_completed_reaches_b_while_the_stream_is_open_on_a(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        two_replicas(tmp_path, redis_server.url) as ((_, ws_a, app_a), (http_b, _, app_b)),
        httpx.AsyncClient(base_url=http_b) as hooks,
    ):
        async with connect(ws_a + STREAM_PATH) as ws:
            half = len(LINES) // 2
            for line in LINES[:half]:
                await ws.send(line)
            await wait_until(lambda: bool(app_a.state.bridge.sessions), what="stream open")
            for seq, status in enumerate(["in-progress", "completed"], start=2):
                await post(hooks, status, seq)
            # b's Redis round trip saw the stream open on a: it holds, publishes nothing
            await wait_until(lambda: app_b.state.bridge.join.held_count() == 1, what="held on b")
            assert not is_published(app_b, "call.completed")()
            for line in LINES[half:]:
                await ws.send(line)
        await wait_until(is_published(app_a, "call.completed"), what="completed on a")
        # b's hold ends at shutdown: its claim loses, nothing is published twice
    records = await stream_records(redis_server.url)
    check(records, last_call_status="completed")
    b_types = [r["type"] for r in read_jsonl(tmp_path / "b" / "events.jsonl")]
    assert "call.completed" not in b_types


async def test_a_duplicate_completed_on_both_replicas_is_published_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        two_replicas(tmp_path, redis_server.url) as (a, b),
        httpx.AsyncClient(base_url=a[0]) as hooks_a,
        httpx.AsyncClient(base_url=b[0]) as hooks_b,
    ):
        await post(hooks_b, "in-progress", 2)
        await wait_until(is_published(b[2], "call.answered"), what="answered on b")
        await replay_websocket(LINES, a[1] + STREAM_PATH, speed=0)
        await wait_until(is_published(a[2], "stream.stopped"), what="stopped on a")
        await post(hooks_a, "completed", 3)
        await post(hooks_b, "completed", 3)  # Twilio's retry, to the other replica
    records = await stream_records(redis_server.url)
    completed = check(records, last_call_status="in-progress")
    assert completed["summary"] is not None


async def test_redis_down_joins_in_process_and_says_so(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.stop()
    settings = replica_settings(tmp_path, "solo", redis_server.url)
    with structlog.testing.capture_logs() as logs:
        async with running_server(settings) as (http, ws, app):
            async with httpx.AsyncClient(base_url=http) as hooks:
                for seq, status in enumerate(["initiated", "ringing", "in-progress"]):
                    await post(hooks, status, seq)
                await replay_websocket(LINES, ws + STREAM_PATH, speed=0)
                await wait_until(is_published(app, "stream.stopped"), what="stream.stopped")
                await post(hooks, "completed", 3)
                await wait_until(is_published(app, "call.completed"), what="call.completed")
            metrics = app.state.bridge.metrics
            fallbacks = {
                s.labels["op"]: s.value
                for m in metrics.join_fallback_total.collect()
                for s in m.samples
                if s.name.endswith("_total")
            }
    records = read_jsonl(settings.resolved_jsonl_path)  # nothing lost: every record written
    check(records, last_call_status="in-progress")
    assert fallbacks.keys() >= {"stream_started", "status", "stream_stopped"}
    assert any(e["event"] == "join_fallback" and e["call_sid"] == CALL_SID for e in logs)
    assert {r["id"] for r in records} >= {f"{STREAM_SID}:stream.stopped"}
