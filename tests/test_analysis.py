"""Proxy mode's analysis process (server/analysis.py): the same records as a session in
this process, whatever the batching, across a real child process, and what a dead child
leaves.

The reference is a ``CallSession`` fed the same frames directly: a caller stream with speech
and a bot answering into it (``media`` and a ``mark``), as the proxy feeds it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from support import scripted_call_lines, speechlike_ulaw

from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import AnyRecord, to_json
from mise_twilio.server.analysis import AnalysisProcess, _Worker

SID = "MZ" + "5" * 32
PARAMS = SessionParams(proxied=True)


def conversation() -> list[tuple[str, str]]:
    """(kind, frame) in relay order: ``text`` from Twilio, ``play`` from the bot."""
    lines = scripted_call_lines({"inbound": [(200, 1400), (4200, 5000)]}, 7000)
    answer = speechlike_ulaw([(200, 1700)], 1900, np.random.default_rng(1))
    bot = [
        json.dumps(
            {
                "event": "media",
                "streamSid": SID,
                "media": {"payload": base64.b64encode(answer[i : i + 1600]).decode()},
            }
        )
        for i in range(0, len(answer), 1600)
    ]
    bot.append(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "answer-1"}}))
    ops = []
    for line in lines:
        ops.append(("text", line))
        timestamp = json.loads(line).get("media", {}).get("timestamp")
        if timestamp == "2220":  # 2.1 s in: the bot answers after the caller
            ops += [("play", frame) for frame in bot]
        if timestamp == "4020":  # Twilio echoes the mark once the answer played
            echo = {"event": "mark", "sequenceNumber": "9000", "streamSid": SID}
            ops.append(("text", json.dumps({**echo, "mark": {"name": "answer-1"}})))
    return ops


def direct(ops: list[tuple[str, str]]) -> list[AnyRecord]:
    session = CallSession(PARAMS)
    for kind, frame in ops:
        if kind == "text":
            session.receive_text(frame, received_at_s=1.0e9)
        else:
            session.receive_playback(frame)
    session.close("eof", at_s=1.0e9 + 7.0)
    return session.take_events()


def rendered(records: list[AnyRecord]) -> list[str]:
    return [to_json(r) for r in records]


OPS = conversation()
REFERENCE = rendered(direct(OPS))


def test_the_reference_has_agent_turns_and_the_mark() -> None:
    types = [json.loads(r)["type"] for r in REFERENCE]
    speakers = {json.loads(r).get("speaker") for r in REFERENCE}
    assert {"turn", "mark", "stream.stopped"} <= set(types)
    assert {"caller", "agent"} <= speakers


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, len(OPS)), max_size=12))
def test_the_worker_gives_the_sessions_own_records_whatever_the_batching(
    cuts: list[int],
) -> None:
    worker = _Worker()
    ops: list[tuple[Any, ...]] = [("open", 7, PARAMS)]
    ops += [(kind, 7, frame, 1.0e9) if kind == "text" else (kind, 7, frame) for kind, frame in OPS]
    ops += [("close", 7, "eof", 1.0e9 + 7.0), ("sync", 7), ("drop", 7)]
    bounds = [0, *sorted(set(cuts)), len(ops)]
    records: list[AnyRecord] = []
    finals = 0
    for lo, hi in itertools.pairwise(bounds):
        for out in worker.apply(ops[lo:hi]):
            records += out.events
            finals += out.final
    assert rendered(records) == REFERENCE
    assert finals == 1 and worker.sessions == {}


async def test_a_child_process_gives_the_same_records_and_counts() -> None:
    process = AnalysisProcess(backlog_max_bytes=64 * 1024 * 1024)
    await process.start()
    try:
        session = process.open(PARAMS)
        for kind, frame in OPS:
            if kind == "text":
                session.receive_text(frame, received_at_s=1.0e9)
            else:
                session.receive_playback(frame)
        assert await session.synced(30.0)
        assert session.stream_sid == SID and session.call_sid is not None
        session.close("eof", at_s=1.0e9 + 7.0)
        assert session.close_expected()
        assert await session.synced(30.0)
        assert rendered(session.take_events()) == REFERENCE
        counts = session.take_message_counts()
        assert counts["media"] == sum(1 for k, f in OPS if k == "text" and '"event": "media"' in f)
        assert counts["upstream_media"] == 10 and counts["upstream_mark"] == 1
        assert len(session.take_processing_s()) == sum(1 for k, _ in OPS if k == "text")
        session.release()
        await asyncio.sleep(0.2)
        assert process.running
    finally:
        await process.stop()
    assert not process.running


async def test_a_dead_child_ends_its_sessions_with_a_diagnostic_and_a_new_one_starts() -> None:
    process = AnalysisProcess(backlog_max_bytes=64 * 1024 * 1024)
    await process.start()
    try:
        session = process.open(PARAMS)
        outputs: list[int] = []
        session.on_output = lambda: outputs.append(1)
        for kind, frame in OPS[:50]:
            assert kind == "text"
            session.receive_text(frame, received_at_s=1.0e9)
        assert await session.synced(30.0)
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for _ in range(300):
            if session.lost:
                break
            await asyncio.sleep(0.01)
        assert session.lost and session.close_expected() and session.close_code() == 1011
        lost = [json.loads(r) for r in rendered(session.take_events())]
        assert lost[-1]["code"] == "analysis_lost" and lost[-1]["stream_sid"] == SID
        assert not await session.synced(1.0)
        assert not process.running
        await process.start()  # the next call
        again = process.open(PARAMS)
        for kind, frame in OPS:
            if kind == "text":
                again.receive_text(frame, received_at_s=1.0e9)
            else:
                again.receive_playback(frame)
        again.close("eof", at_s=1.0e9 + 7.0)
        assert await again.synced(30.0)
        assert process.pid not in (None, first)
        assert rendered(again.take_events()) == REFERENCE
    finally:
        await process.stop()
