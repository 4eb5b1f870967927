"""The stream endpoint over a real WebSocket to a real server on a loopback port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from server_harness import read_jsonl, running_server, wait_until
from support import FIXTURE_NAMES, comparable, fixture_lines

from mise_twilio.core.records import AnyRecord
from mise_twilio.server.app import STREAM_PATH
from mise_twilio.server.config import Settings
from mise_twilio.server.replay_client import replay_websocket


def by_stream(records: list[dict[str, Any]], stream_sid: str) -> list[dict[str, Any]]:
    return [comparable(r) for r in records if r.get("stream_sid") == stream_sid]


def stream_sid_of(lines: list[str]) -> str:
    start = json.loads(next(line for line in lines if '"event":"start"' in line))
    return str(start["streamSid"])


async def test_every_fixture_live_equals_offline(
    server_settings: Callable[..., Settings], offline_records: dict[str, list[AnyRecord]]
) -> None:
    settings = server_settings()
    async with running_server(settings) as (_http_url, ws_base, app):
        for name in FIXTURE_NAMES:
            stats = await replay_websocket(fixture_lines(name), ws_base + STREAM_PATH, speed=0)
            assert stats.messages_sent == len(fixture_lines(name))
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "streams closed")
    records = read_jsonl(settings.resolved_jsonl_path)  # after shutdown: sinks drained
    for name in FIXTURE_NAMES:
        offline = [comparable(r) for r in offline_records[name]]
        got = by_stream(records, stream_sid_of(fixture_lines(name)))
        assert got == offline, name
        assert got[-1]["type"] == "stream.stopped"
    # the live run stamped wall-clock times; offline had none
    live_turn = next(r for r in records if r["type"] == "turn")
    assert live_turn["started_at"] is not None


async def test_paced_replay_places_audio_by_timestamp_not_arrival(
    server_settings: Callable[..., Settings], offline_records: dict[str, list[AnyRecord]]
) -> None:
    lines = fixture_lines("connect_inbound")
    settings = server_settings()
    async with running_server(settings) as (_http_url, ws_base, app):
        stats = await replay_websocket(lines, ws_base + STREAM_PATH, speed=8.0)
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "streams closed")
    assert stats.wall_s >= stats.media_span_ms / 1000 / 8 * 0.9
    got = by_stream(read_jsonl(settings.resolved_jsonl_path), stream_sid_of(lines))
    assert got == [comparable(r) for r in offline_records["connect_inbound"]]


def _as_other_call(lines: list[str], n: int) -> list[str]:
    """The same call under another CallSid/StreamSid (a distinct concurrent call)."""
    sid = stream_sid_of(lines)
    new_sid = sid[:-4] + f"{n:04d}"
    start = json.loads(next(line for line in lines if '"event":"start"' in line))
    call_sid = start["start"]["callSid"]
    new_call = call_sid[:-4] + f"{n:04d}"
    return [line.replace(sid, new_sid).replace(call_sid, new_call) for line in lines]


async def test_twenty_concurrent_replays_all_get_their_records(
    server_settings: Callable[..., Settings], offline_records: dict[str, list[AnyRecord]]
) -> None:
    names = ["fork_two_track", "connect_inbound", "lossy_3pct", "garbage_lines", "quiet_caller"]
    calls = [
        (names[i % len(names)], _as_other_call(fixture_lines(names[i % len(names)]), i))
        for i in range(20)
    ]
    settings = server_settings()
    async with running_server(settings) as (http_url, ws_base, app):
        results = await asyncio.gather(
            *(replay_websocket(lines, ws_base + STREAM_PATH, speed=0) for _, lines in calls)
        )
        assert all(r.messages_sent > 0 for r in results)
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "streams closed")
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(http_url + "/metrics")).text
    records = read_jsonl(settings.resolved_jsonl_path)

    def strip(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # ids and sids differ by construction
        return [
            {k: v for k, v in r.items() if k not in {"id", "stream_sid", "call_sid"}} for r in rs
        ]

    for name, lines in calls:
        sid = stream_sid_of(lines)
        got = by_stream(records, sid)
        want = [comparable(r) for r in offline_records[name]]
        assert strip(got) == strip(want), name
    assert "mise_active_streams 0.0" in metrics


async def test_health_and_unknown_paths(server_settings: Callable[..., Settings]) -> None:
    settings = server_settings()
    async with (
        running_server(settings) as (http_url, _ws_base, _app),
        httpx.AsyncClient() as client,
    ):
        health = await client.get(http_url + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = await client.get(http_url + "/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert (await client.get(http_url + "/nope")).status_code == 404
        # The stream paths over plain HTTP (someone checking the URL with a browser or curl):
        # 426 with the Upgrade header, not a 404 that reads as a wrong path.
        for path in (STREAM_PATH, STREAM_PATH + "/", STREAM_PATH + "/proxy/support"):
            plain = await client.get(http_url + path)
            assert plain.status_code == 426, (path, plain.status_code)
            assert plain.headers["upgrade"] == "websocket" and "WebSocket" in plain.text


async def test_idle_stream_is_ended_and_its_turns_kept(
    server_settings: Callable[..., Settings],
) -> None:
    from websockets.asyncio.client import connect

    lines = fixture_lines("connect_inbound")
    head = [line for line in lines if '"event":"stop"' not in line][:400]  # first turn, no stop
    settings = server_settings(idle_timeout_s=0.5)
    async with running_server(settings) as (_http_url, ws_base, app):
        async with connect(ws_base + STREAM_PATH) as ws:
            for line in head:
                await ws.send(line)
            await asyncio.wait_for(ws.wait_closed(), 5)  # the server hangs up on the idle stream
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "streams closed")
    records = by_stream(read_jsonl(settings.resolved_jsonl_path), stream_sid_of(lines))
    assert records[-1]["type"] == "stream.stopped" and records[-1]["reason"] == "idle"
    assert [r for r in records if r["type"] == "turn"]


@pytest.mark.parametrize("bad", ["\x00" * 10, "{" * 5000, '{"event":"media"}'])
async def test_bad_frames_do_not_end_the_stream(
    server_settings: Callable[..., Settings], bad: str
) -> None:
    lines = fixture_lines("connect_inbound")
    poisoned = lines[:100] + [bad] * 3 + lines[100:]
    settings = server_settings()
    async with running_server(settings) as (_http_url, ws_base, app):
        stats = await replay_websocket(poisoned, ws_base + STREAM_PATH, speed=0)
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "streams closed")
    assert stats.close_code in (None, 1000)
    records = by_stream(read_jsonl(settings.resolved_jsonl_path), stream_sid_of(lines))
    assert len([r for r in records if r["type"] == "turn"]) == 3
    assert any(r["type"] == "diagnostic" for r in records)


@pytest.mark.parametrize(("arrival", "skew_ms"), [("skew", 2000), ("skew", 4500)])
async def test_tracks_skewed_within_the_bound_give_the_offline_records(
    server_settings: Callable[..., Settings],
    offline_records: dict[str, list[AnyRecord]],
    arrival: str,
    skew_ms: int,
) -> None:
    from test_lockstep import interleave

    lines = interleave(fixture_lines("fork_two_track"), arrival, skew_ms, seed=skew_ms)
    settings = server_settings()  # MISE_MAX_TRACK_SKEW_MS: the 5000 ms default
    assert settings.max_track_skew_ms == 5000
    async with running_server(settings) as (_http_url, ws_base, app):
        await replay_websocket(lines, ws_base + STREAM_PATH, speed=0)
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "streams closed")
    got = by_stream(read_jsonl(settings.resolved_jsonl_path), stream_sid_of(lines))
    assert got == [comparable(r) for r in offline_records["fork_two_track"]]
    assert not [r for r in got if r["type"] == "diagnostic"]  # no late_media below the bound
