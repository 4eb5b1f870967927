"""pytest plugin: a real ``redis-server`` per test, plus synthetic call records for sink tests.

Register from ``tests/conftest.py`` with ``pytest_plugins = ["conftest_redis"]``.

Fixtures:

- ``redis_server`` → ``RedisServer``: a ``redis-server`` on a free loopback port in a temporary
  directory, no background persistence (``--save '' --appendonly no``). ``url`` is
  ``redis://127.0.0.1:N/0``; ``stop()`` (data kept via ``SHUTDOWN SAVE``) or ``kill()`` (data
  lost) and ``start()`` take it down and bring it back on the same port (outage tests); it is
  killed at teardown. Skips the test when ``redis-server`` is not installed.
- ``make_call_records`` → ``(n_turns, call_index=0) -> list[AnyRecord]``: the records of one
  synthetic call (stream.started, alternating caller/agent turns, a dtmf, a diagnostic,
  stream.stopped, call.completed), built from ``mise_twilio.core.records`` models.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mise_twilio.core.messages import MediaFormat
from mise_twilio.core.records import (
    AnyRecord,
    CallStatusEvent,
    CallSummary,
    Diagnostic,
    DtmfEvent,
    Energy,
    LatencyStats,
    Pitch,
    StreamStarted,
    StreamStopped,
    TurnRecord,
)

REDIS_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int, timeout_s: float = 0.5) -> bool:
    # A raw RESP PING keeps the fixture independent of the client library under test.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on ``127.0.0.1:port`` with its files in ``directory``."""

    def __init__(self, executable: str, port: int, directory: Path) -> None:
        self.executable = executable
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING. Raises ``RuntimeError``."""
        if self.running:
            return
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}: "
                    + (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                )
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {REDIS_START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Take the server down, keeping its data: ``SHUTDOWN SAVE`` writes ``dump.rdb`` in
        ``directory`` (even with ``--save ''``) and ``start()`` loads it again — a restart of a
        persistent Redis, so records delivered before the outage are still there after it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"SHUTDOWN SAVE\r\n")
                    s.recv(64)  # the connection closes when the server exits
            except OSError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server: a crash, unsaved data is lost."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")
    server = RedisServer(executable, _free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


# ---------------------------------------------------------------------------------------------
# synthetic records

CallRecordsFactory = Callable[..., list[AnyRecord]]


def synthetic_call(n_turns: int, call_index: int = 0) -> list[AnyRecord]:
    """The records of one synthetic two-party call with ``n_turns`` turns (+5 events)."""
    call_sid = f"CA{call_index:032x}"
    stream_sid = f"MZ{call_index:032x}"
    account_sid = "AC" + "1" * 32
    t0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC) + timedelta(hours=call_index)
    ids = {"call_sid": call_sid, "stream_sid": stream_sid, "account_sid": account_sid}
    out: list[AnyRecord] = [
        StreamStarted(
            id=f"{stream_sid}:stream.started",
            tracks=["inbound", "outbound"],
            media_format=MediaFormat(encoding="audio/x-mulaw", sample_rate_hz=8000, channels=1),
            custom_parameters={"campaign": "synthetic"},
            protocol_version="1.0.0",
            received_at=t0,
            **ids,
        )
    ]
    pos_ms = 400
    for i in range(n_turns):
        track = "inbound" if i % 2 == 0 else "outbound"
        duration_ms = 800 + (i * 137) % 2400
        start_ms, end_ms = pos_ms, pos_ms + duration_ms
        mid = start_ms + duration_ms // 2
        out.append(
            TurnRecord(
                id=f"{stream_sid}:turn:{i}",
                track=track,
                speaker="caller" if track == "inbound" else "agent",
                index=i,
                start_ms=start_ms,
                end_ms=end_ms,
                duration_ms=duration_ms,
                speech_ms=duration_ms - 120,
                segments=[(start_ms, mid - 60), (mid + 60, end_ms)],
                started_at=t0 + timedelta(milliseconds=start_ms),
                ended_at=t0 + timedelta(milliseconds=end_ms),
                end_reason="floor_taken" if i % 3 else "pause",
                gap_before_ms=None if i == 0 else 180 - (i % 5) * 90,
                overlap_ms=(i % 4) * 40,
                barge_in=i % 7 == 3,
                interrupted=i % 11 == 5,
                backchannel=False,
                lost_ms=0,
                energy=Energy(
                    mean_dbfs=-28.5 + i % 5,
                    p95_dbfs=-18.0,
                    peak_dbfs=-6.2,
                    dynamic_range_db=21.4,
                ),
                pitch=Pitch(
                    median_hz=118.0 if track == "inbound" else 205.0,
                    iqr_semitones=3.1,
                    voiced_ratio=0.62,
                    slope_semitones_per_s=-0.4,
                ),
                speech_rate_hz=4.2,
                custom_parameters={"campaign": "synthetic"},
                **ids,
            )
        )
        if i == n_turns // 2:
            out.append(
                DtmfEvent(
                    id=f"{stream_sid}:dtmf:{i}",
                    digit="5",
                    track="inbound_track",
                    sequence_number=1000 + i,
                    at_ms=end_ms,
                    **ids,
                )
            )
            out.append(
                Diagnostic(
                    id=f"{stream_sid}:diagnostic:gap:{i}",
                    code="timestamp_gap",
                    message="inbound: 40 ms missing, filled with silence",
                    sequence_number=1001 + i,
                    **ids,
                )
            )
        pos_ms = end_ms + 250
    summary = CallSummary(
        duration_ms=pos_ms,
        talk_ms={"caller": pos_ms // 3, "agent": pos_ms // 3},
        talk_ratio={"caller": 0.5, "agent": 0.5},
        turn_counts={"caller": (n_turns + 1) // 2, "agent": n_turns // 2},
        overlap_ms=1200,
        silence_ms=pos_ms // 3,
        silence_incidents=0,
        interruptions={"caller": 2, "agent": 1},
        response_latency=LatencyStats(
            count=n_turns // 2, p50_ms=420.0, p95_ms=910.0, max_ms=1500.0
        ),
        lost_ms={"inbound": 40, "outbound": 0},
        media_messages={"inbound": pos_ms // 20, "outbound": pos_ms // 20},
        diagnostics=1,
    )
    out.append(
        StreamStopped(
            id=f"{stream_sid}:stream.stopped",
            reason="stop",
            summary=summary,
            stopped_at=t0 + timedelta(milliseconds=pos_ms),
            **ids,
        )
    )
    out.append(
        CallStatusEvent(
            id=f"{call_sid}:call.completed:5",
            type="call.completed",
            call_status="completed",
            sequence_number=5,
            event_at=t0 + timedelta(milliseconds=pos_ms + 300),
            direction="inbound",
            duration_s=pos_ms // 1000,
            **{"from": "h:3f1c0a", "to": "h:9b2e11"},
            call_sid=call_sid,
            account_sid=account_sid,
        )
    )
    return out


@pytest.fixture
def make_call_records() -> CallRecordsFactory:
    return synthetic_call
