"""At-least-once across SIGKILL, with real processes: ``mise-twilio serve`` as a child process,
ten live calls streamed into it, an HTTP sink whose receiver takes seconds per batch, SIGKILL
mid-call, a restart on the same data directory. Every record the server had counted as
published (``mise_records_total``) before the kill reaches the receiver, by id
(docs/operations.md §4 says what a SIGKILL can and cannot lose)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from server_harness import read_jsonl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support import fixture_lines
from test_operations import labelled, scrape, server_process

from mise_twilio.server.replay_client import ReplayStats, replay_websocket

CALLS = 10
SPEED = 4.0  # × real time: the 40 s call takes 10 s
KILL_AFTER_S = 5.0  # half-way through every call
RECEIVER_DELAY_S = 2.0  # per batch: the receiver falls far behind
BATCH_MAX = 10


class SlowReceiver:
    """An HTTP ingest endpoint (a real server on a loopback port) that takes
    ``RECEIVER_DELAY_S`` per batch, then stores the batch's record ids and answers 200."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.batches = 0

    async def ingest(self, request: Request) -> Response:
        body = await request.body()
        await asyncio.sleep(RECEIVER_DELAY_S)
        self.ids.extend(record["id"] for record in json.loads(body))
        self.batches += 1
        return Response(status_code=200)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = Starlette(routes=[Route("/ingest", self.ingest, methods=["POST"])])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), "the receiver did not start"
            await asyncio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}/ingest"
        finally:
            server.should_exit = True
            server.force_exit = True  # do not wait for handlers still sleeping
            await asyncio.wait_for(task, 30)
            sock.close()


def call_lines(n: int) -> list[str]:
    """``fork_two_track`` as call ``n``: its own stream and call sids, so its records have ids
    of their own."""
    lines = fixture_lines("fork_two_track")
    start = json.loads(next(line for line in lines if '"event":"start"' in line))
    stream_sid, call_sid = start["streamSid"], start["start"]["callSid"]
    new_stream = stream_sid[:-4] + f"{n:04x}"
    new_call = call_sid[:-4] + f"{n:04x}"
    return [line.replace(stream_sid, new_stream).replace(call_sid, new_call) for line in lines]


async def test_sigkill_mid_call_loses_no_record_counted_as_published(tmp_path: Path) -> None:
    receiver = SlowReceiver()
    data_dir = tmp_path / "data"
    async with receiver.running() as url:
        env = {"MISE_HTTP_URL": url, "MISE_SINK_BATCH_MAX": str(BATCH_MAX)}
        async with server_process(data_dir, tmp_path / "server-1.log", **env) as server:
            calls = [
                asyncio.create_task(replay_websocket(call_lines(n), server.ws_url, speed=SPEED))
                for n in range(CALLS)
            ]
            await asyncio.sleep(KILL_AFTER_S)
            samples = await scrape(server.http_url)
            counted = sum(labelled(samples, "mise_records_total", "type").values())
            server.signal(signal.SIGKILL)
            assert await server.wait(10.0) == -signal.SIGKILL
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(
            isinstance(r, Exception) or (isinstance(r, ReplayStats) and r.close_code != 1000)
            for r in results
        ), "the kill was mid-call"
        at_kill = {r["id"] for r in read_jsonl(data_dir / "events.jsonl")}
        received_before_restart = set(receiver.ids)
        # The receiver was far behind: most of what was published had not reached it.
        assert counted >= 2 * CALLS, counted  # stream.started and a turn, at least
        assert len(received_before_restart) < counted / 2, (len(received_before_restart), counted)
        assert at_kill - received_before_restart

        async with server_process(data_dir, tmp_path / "server-2.log", **env) as server:
            deadline = time.monotonic() + 120
            while len(set(receiver.ids)) < counted or not at_kill <= set(receiver.ids):
                assert time.monotonic() < deadline, (
                    f"{len(set(receiver.ids))}/{counted} records reached the receiver; "
                    f"missing {sorted(at_kill - set(receiver.ids))[:5]}"
                )
                await asyncio.sleep(0.2)
            server.signal(signal.SIGTERM)
            await server.wait(30)

    received = set(receiver.ids)
    assert at_kill <= received  # by id: everything the other sink had, this one got
    assert len(received) >= counted  # every record counted as published before the kill
    # Stable ids: a record delivered twice (a batch in flight at the kill) is the same record.
    assert all(i.startswith(("MZ", "CA")) for i in received)
