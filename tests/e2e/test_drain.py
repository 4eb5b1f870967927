"""SIGTERM behind a load balancer (server/drain.py), on a real ``mise-twilio serve`` process:
unready first while everything is still served, open streams allowed to finish, the rest
closed as ``shutdown`` once the stream grace is over."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
from server_harness import read_jsonl
from support import comparable, fixture_lines
from test_operations import HANG_GUARD_S, scrape, server_process
from websockets.asyncio.client import connect

from mise_twilio.replay import replay_offline
from mise_twilio.server.replay_client import replay_websocket


async def test_sigterm_goes_unready_first_and_lets_streams_finish(tmp_path: Path) -> None:
    long_call = fixture_lines("fork_two_track")
    late_call = fixture_lines("quiet_caller")
    half = len(long_call) // 2
    env = {"MISE_DRAIN_DELAY_S": "1.5", "MISE_STREAM_GRACE_S": "30"}
    async with (
        server_process(tmp_path / "data", tmp_path / "server.log", **env) as server,
        httpx.AsyncClient(base_url=server.http_url) as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        async with connect(server.ws_url, ping_interval=None) as ws:
            for line in long_call[:half]:
                await ws.send(line)
            server.signal(signal.SIGTERM)
            # 1. unready at once, still alive and still serving
            deadline = time.monotonic() + HANG_GUARD_S
            while (await client.get("/readyz")).status_code != 503:
                assert time.monotonic() < deadline, "readyz never turned 503"
                await asyncio.sleep(0.02)
            assert (await client.get("/healthz")).status_code == 200
            samples = await scrape(server.http_url)
            assert samples[("mise_draining", ())] == 1
            # a stream the balancer still sends during the drain delay is taken, whole
            late = await replay_websocket(late_call, server.ws_url, speed=0)
            assert late.close_code == 1000
            # 2. the open stream may finish on its own: Twilio's stop ends it, not the server
            for line in long_call[half:]:
                await ws.send(line)
            await asyncio.wait_for(ws.wait_closed(), HANG_GUARD_S)
            assert ws.close_code == 1000
        # 3. no stream open and the drain delay over: the process stops by itself
        assert await server.wait(HANG_GUARD_S) == 0, server.log()

    records = read_jsonl(tmp_path / "data" / "events.jsonl")
    expected = replay_offline(long_call) + replay_offline(late_call)
    key = lambda r: r["id"]  # noqa: E731 - the two streams interleave in the file
    assert sorted(map(comparable, records), key=key) == sorted(map(comparable, expected), key=key)
    assert {r["reason"] for r in records if r["type"] == "stream.stopped"} == {"stop"}


async def test_streams_still_open_after_the_grace_are_closed_as_shutdown(tmp_path: Path) -> None:
    lines = fixture_lines("fork_two_track")
    head = lines[: len(lines) // 3]
    env = {"MISE_DRAIN_DELAY_S": "0.5", "MISE_STREAM_GRACE_S": "1"}
    async with server_process(tmp_path / "data", tmp_path / "server.log", **env) as server:
        async with connect(server.ws_url, ping_interval=None) as ws:
            for line in head:
                await ws.send(line)
            deadline = time.monotonic() + HANG_GUARD_S
            while (await scrape(server.http_url)).get(
                ("mise_message_processing_seconds_count", ())
            ) != len(head):
                assert time.monotonic() < deadline, "server did not process the messages"
                await asyncio.sleep(0.05)
            server.signal(signal.SIGTERM)
            await asyncio.wait_for(ws.wait_closed(), HANG_GUARD_S)
            assert ws.close_code == 1012  # the grace ran out: "service restart"
        assert await server.wait(HANG_GUARD_S) == 0, server.log()
    (stopped,) = [
        r for r in read_jsonl(tmp_path / "data" / "events.jsonl") if r["type"] == "stream.stopped"
    ]
    assert stopped["reason"] == "shutdown"
