"""Proxy mode end to end: "Twilio" → ``mise-twilio serve`` → a bot, all real processes.

"Twilio" is ``twilio_emulator.FakeTwilio`` (it streams a caller and plays the bot's audio back
through a playback buffer of its own, on a continuous clock); the bot is ``proxy_bot.py`` in a
child process; the server is ``python -m mise_twilio.cli serve`` in another, shared by the
module's tests so that each failure is also checked not to hurt the calls after it.

What the proxy rebuilds is compared with two references: the bot's own log (what it sent, and
what it cleared, on the stream clock as the bot saw it) and what "Twilio" actually played. Each
reference becomes a ``<Start>`` fork stream (the caller's audio plus the reference outbound
track) replayed offline through the same analysis, so the VAD's own boundary error cancels
and what is left is the playback model's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from proxy_bot import load_clips
from server_harness import read_jsonl, running_server, wait_until
from test_operations import ServerProcess, free_port
from twilio_emulator import FakeTwilio, TwilioLog, caller_stream, stream_sid_of
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mise_twilio.core.records import from_json
from mise_twilio.replay import replay_offline
from mise_twilio.server.proxy import PROXY_PATH
from mise_twilio.server.replay_client import sign_websocket

HERE = Path(__file__).resolve().parent
HANG_GUARD_S = 60.0
"""Bounds a wait so a broken server fails the test instead of hanging it; not a timing check."""
SPEED = 1.0
"""Stream time per wall time for "Twilio" in the one conversation whose playback is checked
against what "Twilio" played (the analysis runs on stream time throughout): real time, as
Twilio plays. At 2, a 20 ms pause of this process's event loop (where the emulator runs,
among every earlier test's objects) read as 40 ms of stream, the tolerance below. On
2026-12-02 one of three clean-clone CI runs failed on 3.13 with an answer "played" 100 ms
late against the bot's log, which the proxy matched; the cause was not found, and at real
time any such pause counts once. The other calls here check what was relayed, not when, and
run faster."""
TURN_TOLERANCE_MS = 40
UNPLAYED_TOLERANCE_MS = 20


# ---------------------------------------------------------------------------------------------
# processes


class BotProcess:
    """``proxy_bot.py`` as a child process on ``port``."""

    def __init__(self, port: int, log_path: Path, *, mode: str = "answer", script: Any = None):
        self.port = port
        self.log_path = log_path
        self.mode = mode
        self.script = script
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> BotProcess:
        args = [sys.executable, str(HERE / "proxy_bot.py"), "--port", str(self.port)]
        args += ["--log", str(self.log_path), "--mode", self.mode]
        if self.script is not None:
            script_path = self.log_path.with_suffix(".script.json")
            script_path.write_text(json.dumps(self.script), encoding="utf-8")
            args += ["--script", str(script_path)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("listening"), f"bot did not start: {line!r}"
        return self

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.log_path)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Stack:
    """The shared server and the ports of its upstreams."""

    def __init__(self, server: ServerProcess, ports: dict[str, int], tmp: Path) -> None:
        self.server = server
        self.ports = ports
        self.tmp = tmp
        self.calls = 0

    def url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.server.port}{PROXY_PATH}/{name}"

    def bot(self, name: str, **kwargs: Any) -> BotProcess:
        self.calls += 1
        log = self.tmp / f"bot-{name}-{self.calls}.jsonl"
        return BotProcess(self.ports[name], log, **kwargs).start()

    def records(self, stream_sid: str) -> list[dict[str, Any]]:
        path = self.server.data_dir / "events.jsonl"
        return [r for r in read_jsonl(path) if r.get("stream_sid") == stream_sid]

    async def final_records(self, stream_sid: str) -> list[dict[str, Any]]:
        """The call's records once ``stream.stopped`` reached the JSONL file."""
        await wait_until(
            lambda: any(r["type"] == "stream.stopped" for r in self.records(stream_sid)),
            HANG_GUARD_S,
            "stream.stopped in the JSONL sink",
        )
        return self.records(stream_sid)

    async def healthy(self) -> bool:
        """The server process is up and answers ``/healthz``."""
        process = self.server.process
        assert process is not None and process.poll() is None, self.server.log()
        async with httpx.AsyncClient() as client:
            response = await client.get(self.server.http_url + "/healthz", timeout=5)
        return response.status_code == 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("proxy")
    ports = {name: free_port() for name in ("answer", "script", "down", "crash", "deaf")}
    upstreams = ",".join(f"{n}=ws://127.0.0.1:{p}/twilio" for n, p in ports.items())
    server = ServerProcess(
        tmp / "data",
        tmp / "server.log",
        MISE_UPSTREAMS=upstreams,
        MISE_UPSTREAM_HEADERS__answer=json.dumps({"Authorization": "Bearer bot-token"}),
        MISE_API_KEY="test-key",
        MISE_PROXY_BACKLOG_BYTES=str(1024 * 1024),  # flat-out replays outrun the bot dial
        MISE_UPSTREAM_OPEN_TIMEOUT_S="2",
        MISE_LOG_LEVEL="info",  # the stream_started / stream_stopped lines
    )
    asyncio.run(server.start())
    try:
        yield Stack(server, ports, tmp)
    finally:
        server.kill()


# ---------------------------------------------------------------------------------------------
# references


def fork_of(caller: list[str], outbound: bytes, first_ms: int) -> list[str]:
    """A ``<Start>`` both-tracks stream: ``caller``'s lines plus an outbound track carrying
    ``outbound`` (μ-law from ``first_ms``), a frame beside each inbound frame."""
    lines: list[str] = []
    chunk = 0
    for line in caller:
        message = json.loads(line)
        if message.get("event") == "start":
            message["start"]["tracks"] = ["inbound", "outbound"]
            line = json.dumps(message, separators=(",", ":"))
        lines.append(line)
        if message.get("event") == "media":
            at = (int(message["media"]["timestamp"]) - first_ms) * 8
            frame = outbound[at : at + 160].ljust(160, b"\xff")
            chunk += 1
            media = {
                "track": "outbound",
                "chunk": str(chunk),
                "timestamp": message["media"]["timestamp"],
                "payload": base64.b64encode(frame).decode(),
            }
            lines.append(
                json.dumps(
                    {"event": "media", "media": media, "streamSid": message["streamSid"]},
                    separators=(",", ":"),
                )
            )
    return lines


def bot_reference(bot_log: list[dict[str, Any]], first_ms: int, end_ms: int) -> bytes:
    """The outbound track by the bot's log: each answer from where the bot sent it (its
    clock: the end of the inbound audio it had; before any, the first frame's timestamp),
    after the previous one, up to the clear the bot sent for it."""
    clips = load_clips()
    out = bytearray(b"\xff" * ((end_ms - first_ms) * 8))
    queue_end = first_ms
    cleared = {r["answer"]: r["at_ms"] for r in bot_log if r["kind"] == "clear"}
    for record in (r for r in bot_log if r["kind"] == "answer"):
        start = max(record["at_ms"], first_ms, queue_end)
        clip = clips[record["clip"]]
        cut_at = cleared.get(record["answer"])
        queue_end = start + len(clip) // 8 if cut_at is None else cut_at
        played = clip[: (min(queue_end, end_ms) - start) * 8]
        at = (start - first_ms) * 8
        out[at : at + len(played)] = played
    return bytes(out)


def turns_of(records: list[Any], speaker: str) -> list[dict[str, Any]]:
    out = []
    for r in records:
        d = r if isinstance(r, dict) else json.loads(r.model_dump_json())
        if d["type"] == "turn" and d["speaker"] == speaker:
            out.append(d)
    return sorted(out, key=lambda t: t["start_ms"])


def summary_of(records: list[Any]) -> dict[str, Any]:
    for r in records:
        d = r if isinstance(r, dict) else json.loads(r.model_dump_json())
        if d["type"] == "stream.stopped":
            summary: dict[str, Any] = d["summary"]
            return summary
    raise AssertionError("no stream.stopped")


def assert_turns_match(
    got: list[dict[str, Any]], want: list[dict[str, Any]], what: str, *context: object
) -> None:
    """Same turn count, and every start and end within ``TURN_TOLERANCE_MS``; ``context``
    goes into the failure message."""
    spans = [(t["start_ms"], t["end_ms"]) for t in got]
    assert len(got) == len(want), (what, spans, want, *context)
    for g, w in zip(got, want, strict=True):
        assert abs(g["start_ms"] - w["start_ms"]) <= TURN_TOLERANCE_MS, (what, g, w, *context)
        assert abs(g["end_ms"] - w["end_ms"]) <= TURN_TOLERANCE_MS, (what, g, w, *context)


# ---------------------------------------------------------------------------------------------
# acceptance 2: the agent as the caller heard it


@pytest.fixture(scope="module")
def conversation(stack: Stack) -> dict[str, Any]:
    """One call: the fork_two_track caller through the proxy to the answering bot."""
    bot = stack.bot("answer")
    caller = caller_stream(call=1)
    try:
        twilio = FakeTwilio(caller, speed=SPEED)
        log = asyncio.run(twilio.run(stack.url("answer")))
        records = asyncio.run(stack.final_records(stream_sid_of(caller)))
    finally:
        bot.kill()
    return {"caller": caller, "twilio": log, "bot": bot.records(), "records": records}


def test_the_bot_saw_what_twilio_sent(conversation: dict[str, Any]) -> None:
    bot = conversation["bot"]
    (connection,) = [r for r in bot if r["kind"] == "connection"]
    assert connection["headers"]["authorization"] == "Bearer bot-token"  # MISE_UPSTREAM_HEADERS
    (start,) = [r for r in bot if r["kind"] == "start"]
    # customParameters untouched, api_key included; the records never carry it
    assert start["custom_parameters"] == {"tenant": "acme", "api_key": "test-key"}
    started = next(r for r in conversation["records"] if r["type"] == "stream.started")
    assert started["custom_parameters"] == {"tenant": "acme"}
    assert [r["kind"] for r in bot].count("clear") >= 2  # the scenario has barge-ins


def test_the_server_logs_the_proxied_stream_by_its_sids(
    stack: Stack, conversation: dict[str, Any]
) -> None:
    sid = stream_sid_of(conversation["caller"])

    def lines(event: str) -> list[dict[str, Any]]:
        text = stack.server.log_path.read_text(errors="replace")
        logged = (
            json.loads(line)
            for line in text[: text.rfind("\n") + 1].splitlines()  # whole lines only
            if line.startswith("{") and sid in line
        )
        return [line for line in logged if line["event"] == event]

    # The stream logs stream_stopped once it has ended, after its records reached the sink
    # (where the conversation fixture saw them): on a loaded machine, a moment later.
    asyncio.run(wait_until(lambda: lines("stream_stopped"), HANG_GUARD_S, "stream_stopped"))
    started, stopped = lines("stream_started"), lines("stream_stopped")
    assert len(started) == 1 and started[0]["proxied"] is True
    assert started[0]["upstream"] == "answer" and started[0]["call_sid"]
    summary = summary_of(conversation["records"])
    assert len(stopped) == 1 and stopped[0]["reason"] == "stop"
    assert stopped[0]["turns"] == sum(summary["turn_counts"].values())


def test_agent_turns_match_what_the_bot_sent_minus_what_it_cleared(
    conversation: dict[str, Any],
) -> None:
    twilio: TwilioLog = conversation["twilio"]
    first, end = twilio.first_ms, int(twilio.ended_at_ms or 0)
    caller = conversation["caller"]
    records = conversation["records"]
    reference = replay_offline(
        fork_of(caller, bot_reference(conversation["bot"], first, end), first)
    )
    truth = replay_offline(fork_of(caller, twilio.played_ulaw(end), first))
    got = turns_of(records, "agent")
    assert len(got) >= 5
    assert_turns_match(got, turns_of(reference, "agent"), "bot log")
    # what it played is when its loop got to each frame: a stall of that loop shifts it
    stalls = ("emulator loop stalls", twilio.stalls)
    assert_turns_match(got, turns_of(truth, "agent"), "as played", stalls)
    # the caller's turns are the caller's audio: the same as the fork's
    assert_turns_match(turns_of(records, "caller"), turns_of(truth, "caller"), "caller")


def test_response_latency_is_to_the_first_played_agent_audio(
    conversation: dict[str, Any],
) -> None:
    twilio: TwilioLog = conversation["twilio"]
    first, end = twilio.first_ms, int(twilio.ended_at_ms or 0)
    reference = replay_offline(
        fork_of(conversation["caller"], bot_reference(conversation["bot"], first, end), first)
    )
    got = summary_of(conversation["records"])["response_latency"]
    want = summary_of(reference)["response_latency"]
    assert got["count"] == want["count"] >= 3
    for key in ("p50_ms", "max_ms"):
        assert abs(got[key] - want[key]) <= TURN_TOLERANCE_MS, (key, got, want)
    # and per agent turn: its gap to the caller's speech before it (the floor-transfer offset)
    got_gaps = [t["gap_before_ms"] for t in turns_of(conversation["records"], "agent")]
    want_gaps = [t["gap_before_ms"] for t in turns_of(reference, "agent")]
    assert len(got_gaps) == len(want_gaps)
    for g, w in zip(got_gaps, want_gaps, strict=True):
        assert (g is None) == (w is None) and abs((g or 0) - (w or 0)) <= TURN_TOLERANCE_MS


def test_cleared_audio_is_the_unplayed_ms_of_the_cut_turn(conversation: dict[str, Any]) -> None:
    twilio: TwilioLog = conversation["twilio"]
    bot = conversation["bot"]
    answers = {r["answer"]: r for r in bot if r["kind"] == "answer"}
    clears = [r for r in bot if r["kind"] == "clear"]
    agent = turns_of(conversation["records"], "agent")
    cut = [t for t in agent if t["interrupted"] and t["unplayed_ms"]]
    assert len(cut) == len(clears) == len(twilio.clears) >= 2
    for turn, clear, dropped in zip(cut, clears, twilio.clears, strict=True):
        answer = answers[clear["answer"]]
        sent_ms = answer["samples"] / 8
        by_bot_log = sent_ms - (clear["at_ms"] - max(answer["at_ms"], twilio.first_ms))
        assert abs(turn["unplayed_ms"] - by_bot_log) <= UNPLAYED_TOLERANCE_MS, (turn, clear)
        assert abs(turn["unplayed_ms"] - dropped["dropped_ms"]) <= UNPLAYED_TOLERANCE_MS
    # the answer the stream's end cut: unplayed, not interrupted
    last = agent[-1]
    assert last["end_reason"] == "stream_end" and not last["interrupted"]
    assert abs(last["unplayed_ms"] - twilio.leftover_ms) <= UNPLAYED_TOLERANCE_MS
    assert all(t["unplayed_ms"] == 0 for t in agent if t not in cut and t is not last)


def test_marks_are_classified_as_twilio_echoed_them(conversation: dict[str, Any]) -> None:
    twilio: TwilioLog = conversation["twilio"]
    marks = [r for r in conversation["records"] if r["type"] == "mark"]
    assert len(marks) >= 5
    truth = {name: [e["outcome"] for e in echoes] for name, echoes in twilio.marks.items()}
    assert {m["name"]: [m["outcome"]] for m in marks} == truth
    cleared_answers = {f"answer-{r['answer']}" for r in conversation["bot"] if r["kind"] == "clear"}
    assert {m["name"] for m in marks if m["outcome"] == "cleared"} == cleared_answers
    for mark in marks:  # the model's time against Twilio's (its own clock), per mark
        (echo,) = twilio.marks[mark["name"]]
        assert abs(mark["expected_at_ms"] - echo["at_ms"]) <= TURN_TOLERANCE_MS, (mark, echo)


# ---------------------------------------------------------------------------------------------
# acceptance 1: the relay copies every frame both ways


BOT_SCRIPT: list[dict[str, str]] = [
    {"text": json.dumps({"event": "media", "streamSid": "{sid}", "media": {"payload": "/w=="}})},
    {"text": '{"event":"mark","streamSid":"{sid}","mark":{"name":"é ✓ unicode"}}'},
    {"text": '{"event":"clear","streamSid":"{sid}"}'},
    {"text": "not json at all {"},
    {"text": '{"event":"dance","streamSid":"{sid}"}'},
    {"binary": base64.b64encode(bytes(range(256))).decode()},
    {"text": "  "},
    {
        "text": json.dumps(
            {"event": "media", "streamSid": "{sid}", "media": {"payload": "A" * 40000}}
        )
    },
]


async def test_relay_is_byte_identical_both_ways(stack: Stack) -> None:
    lines = caller_stream("garbage_lines", api_key="test-key", call=2)
    sid = stream_sid_of(lines)
    script = [{k: v.replace("{sid}", sid) for k, v in frame.items()} for frame in BOT_SCRIPT]
    bot = stack.bot("script", mode="script", script=script)
    try:
        twilio = FakeTwilio(lines)
        log = await twilio.run(stack.url("script"), verbatim=True, hold_last_until=len(script))
        await stack.final_records(sid)
    finally:
        bot.kill()
    received = [r for r in bot.records() if r["kind"] == "recv"]
    assert [r["text"] for r in received] == log.sent  # every Twilio frame, in order, as sent
    want = [f["text"] if "text" in f else base64.b64decode(f["binary"]) for f in script]
    assert log.received == want  # every bot frame, in order, text as text, binary as binary
    diagnostics = {r["code"] for r in stack.records(sid) if r["type"] == "diagnostic"}
    assert {"bad_json", "upstream_bad_json", "upstream_binary_frame"} <= diagnostics
    assert await stack.healthy()


# ---------------------------------------------------------------------------------------------
# acceptance 4: failures end the call, final, and the server goes on


async def upstream_down(stack: Stack) -> tuple[TwilioLog, list[dict[str, Any]]]:
    """A call through to an upstream nobody listens on: what Twilio saw, and the records."""
    lines = caller_stream(call=3)
    log = await asyncio.wait_for(FakeTwilio(lines, speed=4).run(stack.url("down")), HANG_GUARD_S)
    return log, await stack.final_records(stream_sid_of(lines))


async def test_upstream_down_closes_twilio_with_a_diagnostic(stack: Stack) -> None:
    log, records = await upstream_down(stack)
    assert log.close_code == 1011
    diag = next(r for r in records if r["type"] == "diagnostic")
    assert diag["code"] == "upstream_unreachable" and "down" in diag["message"]
    assert records[-1]["type"] == "stream.stopped"
    assert records[-1]["reason"] == "upstream_unreachable"
    assert "upstream_unreachable" in stack.server.log()
    assert await stack.healthy()


async def upstream_crash(stack: Stack) -> tuple[TwilioLog, list[dict[str, Any]]]:
    """A call whose bot is killed after its first answer: what Twilio saw, and the records."""
    bot = stack.bot("crash")
    lines = caller_stream(call=4)
    call = asyncio.create_task(FakeTwilio(lines, speed=4).run(stack.url("crash")))
    try:
        await wait_until(
            lambda: any(r.get("answer") == 1 for r in bot.records()), HANG_GUARD_S, "an answer"
        )
        bot.kill()  # SIGKILL: no close frame, the kernel resets the connection
        log = await asyncio.wait_for(call, HANG_GUARD_S)
    finally:
        bot.kill()
        call.cancel()
    return log, await stack.final_records(stream_sid_of(lines))


async def test_upstream_crash_mid_call_closes_twilio_and_finalises_turns(stack: Stack) -> None:
    log, records = await upstream_crash(stack)
    assert log.close_code == 1011
    assert [r["code"] for r in records if r["type"] == "diagnostic"] == ["upstream_closed"]
    stopped = records[-1]
    assert stopped["type"] == "stream.stopped" and stopped["reason"] == "upstream_closed"
    turns = [r for r in records if r["type"] == "turn"]
    assert {t["speaker"] for t in turns} == {"caller", "agent"}
    assert sum(stopped["summary"]["turn_counts"].values()) == len(turns)
    assert await stack.healthy()


async def test_twilio_crash_mid_call_closes_the_upstream(stack: Stack) -> None:
    bot = stack.bot("answer")
    lines = caller_stream(call=5)
    sid = "MZ" + f"{5:032x}"
    assert stream_sid_of(lines) == sid
    twilio = await asyncio.create_subprocess_exec(
        *(sys.executable, str(HERE / "twilio_emulator.py"), "--url", stack.url("answer")),
        *("--speed", "4", "--call", "5"),
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_until(
            lambda: any(r.get("answer") == 1 for r in bot.records()), HANG_GUARD_S, "an answer"
        )
        os.kill(twilio.pid, signal.SIGKILL)
        await asyncio.wait_for(twilio.wait(), HANG_GUARD_S)
        records = await stack.final_records(sid)
        await wait_until(
            lambda: any(r["kind"] == "closed" for r in bot.records()), HANG_GUARD_S, "bot closed"
        )
    finally:
        if twilio.returncode is None:
            twilio.kill()
        bot.kill()
    stopped = records[-1]
    assert stopped["type"] == "stream.stopped" and stopped["reason"] == "eof"
    assert [r for r in records if r["type"] == "turn"]
    assert await stack.healthy()


async def deaf_bot(stack: Stack) -> tuple[TwilioLog, list[dict[str, Any]]]:
    """A call flat out to a bot that reads nothing: what Twilio saw, and the records."""
    bot = stack.bot("deaf", mode="deaf")
    one = caller_stream(call=6)
    media = [line for line in one if '"event":"media"' in line]
    lines = one[:2] + media * 30  # about 10 MB, flat out
    try:
        log = await asyncio.wait_for(
            FakeTwilio(lines).run(stack.url("deaf"), verbatim=True), HANG_GUARD_S
        )
        return log, await stack.final_records(stream_sid_of(lines))
    finally:
        bot.kill()


async def test_a_bot_that_stops_reading_ends_the_call_at_the_backlog(stack: Stack) -> None:
    log, records = await deaf_bot(stack)
    assert log.close_code == 1011
    assert "backlog" in [r["code"] for r in records if r["type"] == "diagnostic"]
    assert records[-1]["reason"] == "backlog"
    assert await stack.healthy()


def analysis_pid(server: ServerProcess) -> int:
    """The server's analysis process (``server/analysis.py``), by its parent and command."""
    assert server.process is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == server.process.pid and b"mise_twilio.server.analysis" in command:
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def test_the_analysis_process_runs_below_the_relays_priority(
    stack: Stack, conversation: dict[str, Any]
) -> None:
    # MISE_PROXY_ANALYSIS_NICE's default: a frame waking the relay preempts the analysis
    assert conversation["records"]  # the analysis ran, so its process exists
    assert stack.server.process is not None
    assert os.getpriority(os.PRIO_PROCESS, stack.server.process.pid) == 0
    assert os.getpriority(os.PRIO_PROCESS, analysis_pid(stack.server)) == 19


async def test_the_analysis_process_dying_ends_its_calls_and_the_next_is_analysed(
    stack: Stack,
) -> None:
    bot = stack.bot("answer")
    lines = caller_stream(call=13)
    sid = stream_sid_of(lines)
    before = analysis_pid(stack.server)
    call = asyncio.create_task(FakeTwilio(lines, speed=4).run(stack.url("answer")))
    try:
        await wait_until(
            lambda: any(r.get("answer") == 1 for r in bot.records()), HANG_GUARD_S, "an answer"
        )
        os.kill(before, signal.SIGKILL)
        log = await asyncio.wait_for(call, HANG_GUARD_S)
    finally:
        bot.kill()
        call.cancel()
    assert log.close_code == 1011  # ended as any failure of the proxy ends a call
    await wait_until(
        lambda: any(r.get("code") == "analysis_lost" for r in stack.records(sid)),
        HANG_GUARD_S,
        "the analysis_lost diagnostic",
    )
    assert "analysis_process_died" in stack.server.log()
    # The next call gets a new analysis process and is analysed whole.
    bot = stack.bot("answer")
    lines = caller_stream("connect_inbound", call=14)
    try:
        await FakeTwilio(lines, speed=8).run(stack.url("answer"))
        records = await stack.final_records(stream_sid_of(lines))
    finally:
        bot.kill()
    assert analysis_pid(stack.server) != before
    assert records[-1]["reason"] == "stop"
    assert [r for r in records if r["type"] == "turn" and r["speaker"] == "agent"]
    assert await stack.healthy()


async def test_a_stalled_analysis_delays_no_frame_and_loses_no_record(stack: Stack) -> None:
    # The analysis process stopped (SIGSTOP) for a whole call: the relay goes on both ways,
    # and once it runs again every record of the call is written.
    bot = stack.bot("answer")
    lines = caller_stream("connect_inbound", call=15)
    sid = stream_sid_of(lines)
    pid = analysis_pid(stack.server)
    os.kill(pid, signal.SIGSTOP)
    try:
        log = await asyncio.wait_for(
            FakeTwilio(lines, speed=8).run(stack.url("answer")), HANG_GUARD_S
        )
        await wait_until(
            lambda: any(r["kind"] == "closed" for r in bot.records()), HANG_GUARD_S, "bot closed"
        )
        assert stack.records(sid) == []  # nothing analysed yet
    finally:
        os.kill(pid, signal.SIGCONT)
        bot.kill()
    kinds = [r["kind"] for r in bot.records()]
    assert kinds.count("start") == 1 and "answer" in kinds  # the bot heard the caller
    assert log.received  # and Twilio got the bot's answers
    records = await stack.final_records(sid)
    assert records[-1]["reason"] == "stop"
    assert not [r for r in records if r["type"] == "diagnostic"]
    agent = [r for r in records if r["type"] == "turn" and r["speaker"] == "agent"]
    assert agent and sum(records[-1]["summary"]["turn_counts"].values()) == len(
        [r for r in records if r["type"] == "turn"]
    )
    assert await stack.healthy()


async def test_past_the_analysis_backlog_frames_are_relayed_and_the_loss_is_said(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        MISE_UPSTREAMS=f"bot=ws://127.0.0.1:{port}/twilio",
        MISE_PROXY_ANALYSIS_BACKLOG_BYTES=str(64 * 1024),
        MISE_PROXY_BACKLOG_BYTES=str(16 * 1024 * 1024),
    )
    await server.start()
    bot = BotProcess(port, tmp_path / "bot.jsonl", mode="script", script=[]).start()
    one = caller_stream(call=16)
    media = [line for line in one if '"event":"media"' in line]
    lines = one[:2] + media * 4 + one[-1:]  # about 1.3 MB flat out, then ``stop``
    sid = stream_sid_of(lines)
    pid = analysis_pid(server)
    os.kill(pid, signal.SIGSTOP)
    url = f"ws://127.0.0.1:{server.port}{PROXY_PATH}/bot"
    try:
        log = await asyncio.wait_for(FakeTwilio(lines).run(url, verbatim=True), HANG_GUARD_S)
        await wait_until(
            lambda: any(r["kind"] == "closed" for r in bot.records()), HANG_GUARD_S, "bot closed"
        )
        os.kill(pid, signal.SIGCONT)
        path = tmp_path / "data" / "events.jsonl"
        await wait_until(
            lambda: any(r["type"] == "stream.stopped" for r in read_jsonl(path)),
            HANG_GUARD_S,
            "stream.stopped",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        bot.kill()
        server.kill()
    assert [r["text"] for r in bot.records() if r["kind"] == "recv"] == log.sent
    records = [r for r in read_jsonl(path) if r.get("stream_sid") == sid]
    backlog = [r for r in records if r["type"] == "diagnostic" and r["code"] == "analysis_backlog"]
    assert len(backlog) == 1 and "frames were relayed but not analysed" in backlog[0]["message"]
    skipped = int(backlog[0]["message"].split()[0])
    assert 0 < skipped < len(lines)
    assert records[-1]["type"] == "stream.stopped"


FAILURES = {"unreachable": upstream_down, "dropped": upstream_crash, "backlog": deaf_bot}
"""Each way an upstream fails, by its ``reason`` label in ``/metrics``, and a call that
provokes it."""


async def metrics_text(stack: Stack) -> str:
    """The server's ``/metrics`` page."""
    async with httpx.AsyncClient() as client:
        return (await client.get(stack.server.http_url + "/metrics", timeout=5)).text


async def test_the_server_is_healthy_and_proxies_after_every_failure(stack: Stack) -> None:
    # The failure tests above have usually run on this server; run alone (or after a -k
    # selection), this test provokes the failures they would have.
    metrics = await metrics_text(stack)
    for reason, provoke in FAILURES.items():
        if f'reason="{reason}"' not in metrics:
            await provoke(stack)
    bot = stack.bot("answer")
    lines = caller_stream("connect_inbound", call=7)
    try:
        await FakeTwilio(lines, speed=8).run(stack.url("answer"))
        records = await stack.final_records(stream_sid_of(lines))
    finally:
        bot.kill()
    assert records[-1]["reason"] == "stop"
    assert [r for r in records if r["type"] == "turn" and r["speaker"] == "agent"]
    metrics = await metrics_text(stack)
    for reason in FAILURES:
        assert f'reason="{reason}"' in metrics
    assert await stack.healthy()


async def test_sigterm_mid_call_ends_the_proxied_stream_as_shutdown(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        MISE_UPSTREAMS=f"bot=ws://127.0.0.1:{port}/twilio",
        MISE_API_KEY="test-key",
    )
    await server.start()
    bot = BotProcess(port, tmp_path / "bot.jsonl").start()
    lines = caller_stream(call=12)
    url = f"ws://127.0.0.1:{server.port}{PROXY_PATH}/bot"
    call = asyncio.create_task(FakeTwilio(lines, speed=4).run(url))
    try:
        await wait_until(
            lambda: any(r.get("answer") == 1 for r in bot.records()), HANG_GUARD_S, "an answer"
        )
        server.signal(signal.SIGTERM)
        assert await server.wait(HANG_GUARD_S) == 0
        log = await asyncio.wait_for(call, HANG_GUARD_S)
        await wait_until(
            lambda: any(r["kind"] == "closed" for r in bot.records()), HANG_GUARD_S, "bot closed"
        )
    finally:
        call.cancel()
        bot.kill()
        server.kill()
    assert log.close_code == 1012  # uvicorn's "service restart"
    records = read_jsonl(tmp_path / "data" / "events.jsonl")
    stopped = records[-1]
    assert stopped["type"] == "stream.stopped" and stopped["reason"] == "shutdown"
    assert [r for r in records if r["type"] == "turn" and r["speaker"] == "agent"]


# ---------------------------------------------------------------------------------------------
# who may connect (in-process server; the bot is a real process)


async def test_unknown_upstream_is_refused_at_the_handshake(
    server_settings: Any, tmp_path: Path
) -> None:
    settings = server_settings(upstreams=f"known=ws://127.0.0.1:{free_port()}/x")
    async with running_server(settings) as (_, ws_url, _app):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url + PROXY_PATH + "/unknown"):
                pass
        assert refused.value.response.status_code == 404
        with pytest.raises(InvalidStatus) as refused:  # no route: Starlette's 403
            async with connect(ws_url + PROXY_PATH + "/..%2F..%2Fadmin"):
                pass
        assert refused.value.response.status_code in (403, 404)


async def test_the_twilio_side_is_authenticated_like_the_stream_endpoint(
    server_settings: Any, tmp_path: Path
) -> None:
    token = "auth-token-for-tests"
    port = free_port()
    bot = BotProcess(port, tmp_path / "bot.jsonl").start()
    settings = server_settings(
        upstreams=f"bot=ws://127.0.0.1:{port}/twilio",
        twilio_auth_token=token,
        public_url="https://ingest.example.com",
        api_key="test-key",
    )
    try:
        async with running_server(settings) as (_, ws_url, app):
            path = PROXY_PATH + "/bot"
            with pytest.raises(InvalidStatus) as refused:  # no signature
                async with connect(ws_url + path):
                    pass
            assert refused.value.response.status_code == 403
            headers = sign_websocket("wss://ingest.example.com" + path, token)
            wrong_key = caller_stream("connect_inbound", api_key="wrong", call=8)
            log = await FakeTwilio(wrong_key, speed=8, headers=headers).run(ws_url + path)
            assert log.close_code == 1008
            await wait_until(lambda: not app.state.bridge.sessions, HANG_GUARD_S, "closed")
            good = caller_stream("connect_inbound", call=9)
            log = await FakeTwilio(good, speed=8, headers=headers).run(ws_url + path)
            assert log.close_code == 1000
            await wait_until(lambda: not app.state.bridge.sessions, HANG_GUARD_S, "closed")
    finally:
        bot.kill()
    starts = [r for r in bot.records() if r["kind"] == "start"]
    assert [s["custom_parameters"]["api_key"] for s in starts] == ["test-key"]  # never "wrong"
    records = [from_json(line) for line in settings.resolved_jsonl_path.read_text().splitlines()]
    assert {r.stream_sid for r in records} == {"MZ" + f"{9:032x}"}  # the refused call: nothing


async def test_with_only_an_api_key_the_bot_is_dialled_after_start(
    server_settings: Any, tmp_path: Path
) -> None:
    port = free_port()
    bot = BotProcess(port, tmp_path / "bot.jsonl").start()
    settings = server_settings(upstreams=f"bot=ws://127.0.0.1:{port}/twilio", api_key="test-key")
    try:
        async with running_server(settings) as (_, ws_url, app):
            lines = caller_stream("connect_inbound", api_key="wrong", call=10)
            log = await FakeTwilio(lines, speed=8).run(ws_url + PROXY_PATH + "/bot")
            await wait_until(lambda: not app.state.bridge.sessions, HANG_GUARD_S, "closed")
    finally:
        bot.kill()
    assert log.close_code == 1008
    assert [r for r in bot.records() if r["kind"] == "connection"] == []


# ---------------------------------------------------------------------------------------------
# turn features off the event loop
