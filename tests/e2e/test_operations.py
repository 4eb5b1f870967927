"""Running in production: turn audio files, SIGTERM mid-call, SIGKILL + restart with a spool,
``/metrics`` against the records, ``/readyz`` against a Redis outage.

The signal tests run ``python -m mise_twilio.cli serve`` as a real child process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest_redis import RedisServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from server_harness import read_jsonl, running_server, wait_until
from support import ROOT, comparable, fixture_lines
from websockets.asyncio.client import connect

from mise_twilio.core.call import CallSession
from mise_twilio.server.app import STREAM_PATH
from mise_twilio.server.config import Settings
from mise_twilio.server.replay_client import replay_websocket
from mise_twilio.server.sinks.spool import SEGMENT_RE

HANG_GUARD_S = 60.0
"""Bounds a wait so a broken server fails the test instead of hanging it; not a timing check."""
SHUTDOWN_DEADLINE_S = 5.0
STARTUP_TIMEOUT_S = 20.0


# ---------------------------------------------------------------------------------------------
# helpers


def stream_sid_of(lines: list[str]) -> str:
    start = json.loads(next(line for line in lines if '"event":"start"' in line))
    return str(start["streamSid"])


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a Prometheus exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def labelled(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, label: str
) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name and v}


async def scrape(http_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(http_url + "/metrics")
    response.raise_for_status()
    return metric_samples(response.text)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spooled_ids(spool_dir: Path) -> list[str]:
    """Record ids in a sink's spool segments on disk (nothing of it was committed)."""
    ids: list[str] = []
    if not spool_dir.exists():
        return ids
    for path in sorted(spool_dir.iterdir()):
        if SEGMENT_RE.match(path.name):
            for line in path.read_bytes().splitlines():
                with contextlib.suppress(ValueError):  # a torn last line
                    ids.append(json.loads(line)["id"])
    return ids


class ServerProcess:
    """``python -m mise_twilio.cli serve`` as a child process on a free loopback port."""

    def __init__(self, data_dir: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}{STREAM_PATH}"
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
        self.env.update(
            MISE_HOST="127.0.0.1",
            MISE_PORT=str(self.port),
            MISE_DATA_DIR=str(data_dir),
            MISE_LOG_LEVEL="warning",
            MISE_SHUTDOWN_DEADLINE_S=str(SHUTDOWN_DEADLINE_S),
        )
        self.env.update(env)  # the caller's settings win, MISE_LOG_LEVEL included
        self.process: subprocess.Popen[bytes] | None = None

    def _launch(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "mise_twilio.cli", "serve"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        self.process = self._launch()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        async with httpx.AsyncClient() as client:
            while True:
                assert self.process.poll() is None, f"server exited: {self.log()}"
                try:
                    if (await client.get(self.http_url + "/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"server did not start: {self.log()}"
                await asyncio.sleep(0.05)

    async def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout_s)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@asynccontextmanager
async def server_process(
    data_dir: Path, log_path: Path, **env: str
) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(data_dir, log_path, **env)
    try:
        await server.start()
        yield server
    finally:
        server.kill()


# ---------------------------------------------------------------------------------------------
# turn audio


async def test_turn_audio_wav_per_turn_named_by_the_record(
    server_settings: Callable[..., Settings],
) -> None:
    settings = server_settings(turn_audio="wav")
    lines = fixture_lines("fork_two_track")
    async with running_server(settings) as (_, ws_base, app):
        await replay_websocket(lines, ws_base + STREAM_PATH, speed=0)
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "stream closed")
    turns = [r for r in read_jsonl(settings.resolved_jsonl_path) if r["type"] == "turn"]
    assert len(turns) >= 4
    audio_dir = settings.data_dir / "audio"
    files = sorted(audio_dir.rglob("*.wav"))
    assert sorted(Path(t["audio"]) for t in turns) == files  # one file per turn, no other
    for turn in turns:
        path = Path(turn["audio"])
        stream_dir = audio_dir / turn["call_sid"] / turn["stream_sid"]
        assert path == stream_dir / f"{turn['index']}-{turn['speaker']}.wav"
        with wave.open(str(path), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16_000, 1, 2)
            assert abs(wav.getnframes() / 16 - turn["duration_ms"]) <= 20


# ---------------------------------------------------------------------------------------------
# /metrics and /readyz


async def test_metrics_match_records(server_settings: Callable[..., Settings]) -> None:
    settings = server_settings()
    fixtures = [fixture_lines("fork_two_track"), fixture_lines("connect_inbound")]
    sent = [line for lines in fixtures for line in lines]
    async with running_server(settings) as (http_url, ws_base, app):
        for lines in fixtures:
            await replay_websocket(lines, ws_base + STREAM_PATH, speed=0)
        await wait_until(lambda: not app.state.bridge.sessions, 10.0, "streams closed")
        # the sink writes in batches after the streams close: scrape once it has caught up
        # and the file holds what it delivered (a loaded CI machine can take seconds). Turns
        # and diagnostics are counted when the session hands them over, every record when
        # the write-ahead log passes it on: until the log has passed on the last turn, the
        # first two counters are ahead of the file while the others agree with it.
        for _ in range(1000):
            samples = await scrape(http_url)
            published = sum(labelled(samples, "mise_records_total", "type").values())
            delivered = labelled(samples, "mise_sink_delivered_total", "sink").get("jsonl")
            handed = sum(labelled(samples, "mise_turns_total", "speaker").values()) + sum(
                labelled(samples, "mise_diagnostics_total", "code").values()
            )
            records = read_jsonl(settings.resolved_jsonl_path) if delivered == published else []
            in_file = sum(r["type"] in ("turn", "diagnostic") for r in records)
            if delivered == published == len(records) and handed == in_file:
                break
            await asyncio.sleep(0.02)
        assert delivered == published == len(records), (delivered, published, len(records))
    assert {r["stream_sid"] for r in records} == {stream_sid_of(lines) for lines in fixtures}

    turns_by_speaker = Counter(r["speaker"] for r in records if r["type"] == "turn")
    assert labelled(samples, "mise_turns_total", "speaker") == turns_by_speaker
    assert labelled(samples, "mise_records_total", "type") == Counter(r["type"] for r in records)
    diagnostics = Counter(r["code"] for r in records if r["type"] == "diagnostic")
    assert labelled(samples, "mise_diagnostics_total", "code") == diagnostics

    events = Counter(json.loads(line)["event"] for line in sent)
    by_event = labelled(samples, "mise_messages_total", "event")
    assert by_event["media"] == events["media"]
    assert by_event == events
    assert samples[("mise_message_processing_seconds_count", ())] == len(sent)
    assert samples[("mise_active_streams", ())] == 0
    delivered_by_sink = labelled(samples, "mise_sink_delivered_total", "sink")
    assert delivered_by_sink == {"jsonl": len(records)}


async def test_webhook_requests_total_counts_status_callbacks(
    server_settings: Callable[..., Settings],
) -> None:
    from support import status_callback

    from mise_twilio.server.app import WEBHOOK_PATH

    async with (
        running_server(server_settings()) as (http_url, _, _),
        httpx.AsyncClient(base_url=http_url) as client,
    ):
        for seq, status in enumerate(["initiated", "ringing", "in-progress"]):
            response = await client.post(WEBHOOK_PATH, data=status_callback(status, seq))
            assert response.status_code == 204
        bad = await client.post(WEBHOOK_PATH, data=status_callback("ringing", 9, CallSid="CA1"))
        assert bad.status_code == 400
        huge = await client.post(WEBHOOK_PATH, content=b"a=" + b"x" * 100_000)
        assert huge.status_code in (413, 415)
        samples = await scrape(http_url)
    outcomes = labelled(samples, "mise_webhook_requests_total", "outcome")
    assert outcomes["accepted"] == 3 and outcomes["rejected"] == 1
    assert sum(outcomes.values()) == 5


async def test_messages_total_is_live_during_a_call(
    server_settings: Callable[..., Settings],
) -> None:
    lines = fixture_lines("fork_two_track")
    head = lines[: len(lines) // 2]
    media = sum(1 for line in head if json.loads(line)["event"] == "media")
    async with (
        running_server(server_settings()) as (http_url, ws_base, _),
        connect(ws_base + STREAM_PATH) as ws,
    ):
        for line in head:
            await ws.send(line)
        deadline = time.monotonic() + 5.0
        while True:
            samples = await scrape(http_url)
            if samples.get(("mise_messages_total", (("event", "media"),))) == media:
                break
            assert time.monotonic() < deadline, "mise_messages_total not updated mid-call"
            await asyncio.sleep(0.1)
        assert samples[("mise_active_streams", ())] == 1


async def test_readyz_follows_redis(
    server_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = server_settings(redis_url=redis_server.url)
    async with running_server(settings) as (http_url, _, _), httpx.AsyncClient() as client:
        response = await client.get(http_url + "/readyz")
        assert response.status_code == 200
        assert response.json() == {
            "ready": True,
            "started": True,
            "sinks": {"jsonl": True, "redis": True},
        }
        redis_server.stop()
        response = await client.get(http_url + "/readyz")
        assert response.status_code == 503
        assert response.json()["sinks"] == {"jsonl": True, "redis": False}
        assert (await client.get(http_url + "/healthz")).status_code == 200  # still alive
        redis_server.start()
        response = await client.get(http_url + "/readyz")
        assert response.status_code == 200


# ---------------------------------------------------------------------------------------------
# signals (a real child process)


async def test_sigterm_mid_call(tmp_path: Path) -> None:
    lines = fixture_lines("fork_two_track")
    head = lines[: int(len(lines) * 0.6)]
    data_dir = tmp_path / "data"
    async with server_process(data_dir, tmp_path / "server.log") as server:
        async with connect(server.ws_url, ping_interval=None) as ws:
            for line in head:
                await ws.send(line)
            # Every message handled (the histogram counts each), the socket still open.
            deadline = time.monotonic() + 10.0
            while (await scrape(server.http_url)).get(
                ("mise_message_processing_seconds_count", ())
            ) != len(head):
                assert time.monotonic() < deadline, "server did not process the messages"
                await asyncio.sleep(0.05)
            assert ws.close_code is None
            server.signal(signal.SIGTERM)
            # The server hangs up on the stream before it exits (the timeout only keeps a
            # broken shutdown from hanging the test; it is not a speed requirement).
            await asyncio.wait_for(ws.wait_closed(), HANG_GUARD_S)
            assert ws.close_code == 1012  # "service restart"
        returncode = await server.wait(HANG_GUARD_S)
        assert returncode == 0, server.log()

    # The same prefix offline, closed the way SIGTERM closes it.
    session = CallSession()
    expected = []
    for line in head:
        session.receive_text(line)
        expected += session.take_events()
    session.close("shutdown")
    expected += session.take_events()

    records = read_jsonl(data_dir / "events.jsonl")
    assert [comparable(r) for r in records] == [comparable(r) for r in expected]
    turns = [r for r in records if r["type"] == "turn"]
    assert len(turns) >= 2
    assert turns[-1]["end_reason"] == "stream_end"
    stopped = records[-1]
    assert stopped["type"] == "stream.stopped" and stopped["reason"] == "shutdown"


async def test_sigkill_then_restart_delivers_spooled_records(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    stream = "ops:events"
    redis_server.stop()  # down for the whole first life of the server
    lines = fixture_lines("fork_two_track")
    data_dir = tmp_path / "data"
    spool = data_dir / "spool" / "redis"
    env = {"MISE_REDIS_URL": redis_server.url, "MISE_REDIS_STREAM": stream}
    async with server_process(data_dir, tmp_path / "server-1.log", **env) as server:
        await replay_websocket(lines, server.ws_url, speed=0)
        stopped_id = f"{stream_sid_of(lines)}:stream.stopped"
        deadline = time.monotonic() + 10.0
        while True:
            samples = await scrape(server.http_url)
            on_disk = spooled_ids(spool)
            if samples.get(("mise_sink_spool_bytes", (("sink", "redis"),)), 0) > 0 and (
                stopped_id in on_disk
            ):
                break
            assert time.monotonic() < deadline, f"records never reached the spool: {on_disk}"
            await asyncio.sleep(0.05)
        server.signal(signal.SIGKILL)
        assert await server.wait(5.0) == -signal.SIGKILL

    spooled = spooled_ids(spool)
    published = [r["id"] for r in read_jsonl(data_dir / "events.jsonl")]
    assert spooled == published  # the whole call, in order, nothing lost before the kill
    redis_server.start()

    async with server_process(data_dir, tmp_path / "server-2.log", **env) as server:
        client = Redis.from_url(redis_server.url)
        try:
            deadline = time.monotonic() + 15.0
            while True:
                entries: Any = await client.xrange(stream, "-", "+")
                got = [fields[b"id"].decode() for _, fields in entries]
                if set(spooled) <= set(got):
                    break
                assert time.monotonic() < deadline, f"{len(got)}/{len(spooled)} in Redis"
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        assert got == spooled  # in order; a crash mid-batch could repeat some, not here
        samples = await scrape(server.http_url)
        assert samples[("mise_sink_spool_bytes", (("sink", "redis"),))] == 0
        server.signal(signal.SIGTERM)
        await server.wait(SHUTDOWN_DEADLINE_S + 5.0)
