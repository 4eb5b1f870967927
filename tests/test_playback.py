"""The playback model (core/playback.py) and proxy mode through CallSession.

The model is checked against Twilio's documented buffer behaviour (docs/protocol.md §2):
media plays back to back from arrival at 8 kHz, ``clear`` drops what has not played, a mark is
due when the audio before it has played (at once with nothing queued) and a cleared mark is
told apart from a played one. The session tests script a bot against a caller stream on the
stream clock and check the agent turns, marks and summary that come out.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import scripted_call_lines, speechlike_ulaw

from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.playback import Cut, MarkOutcome, PlaybackModel
from mise_twilio.core.records import Diagnostic, MarkEvent, StreamStopped, TurnRecord

SILENCE = 0xFF
T0 = 120  # first inbound timestamp, ms


def run_clock(model: PlaybackModel, frames: range, t0: int = T0) -> bytes:
    """Drive ``model`` with one 20 ms inbound chunk per index; the played outbound bytes."""
    out = bytearray()
    for k in frames:
        for ts, frame in model.on_inbound(t0 + 20 * k, 160):
            assert len(frame) == 160 and (ts - t0) % 20 == 0 and ts < t0 + 20 * (k + 1)
            out += frame
    return bytes(out)


def tone(n: int, value: int = 0x10) -> bytes:
    return bytes([value]) * n


# ---------------------------------------------------------------------------------------------
# the model


def test_media_plays_from_arrival_back_to_back() -> None:
    model = PlaybackModel()
    played = run_clock(model, range(5))  # 100 ms of silence
    model.media(tone(240, 1))  # arrives at 100 ms, plays 100-130
    model.media(tone(100, 2))  # queued behind it: 130-142.5
    played += run_clock(model, range(5, 10))
    assert played == tone(800, SILENCE) + tone(240, 1) + tone(100, 2) + tone(460, SILENCE)


def test_media_after_the_queue_drained_starts_at_its_arrival() -> None:
    model = PlaybackModel()
    model.media(tone(80, 1))
    played = run_clock(model, range(3))
    model.media(tone(80, 2))  # at 60 ms: the first payload ended at 10 ms
    played += run_clock(model, range(3, 5))
    assert played == tone(80, 1) + tone(400, SILENCE) + tone(80, 2) + tone(240, SILENCE)


def test_clear_drops_what_has_not_played() -> None:
    model = PlaybackModel()
    model.media(tone(8000, 1))  # one second
    played = run_clock(model, range(10))  # 200 ms played
    assert model.clear() == 8000 - 1600
    played += run_clock(model, range(10, 15))
    assert played == tone(1600, 1) + tone(800, SILENCE)


def test_clear_mid_frame_keeps_the_audio_before_it() -> None:
    model = PlaybackModel()
    model.media(tone(400, 1))
    model.on_inbound(T0, 100)  # now = 100 samples into the first frame
    assert model.clear() == 300
    played = run_clock(model, range(1, 3))
    assert played == tone(100, 1) + tone(380, SILENCE)


def test_mark_is_played_when_the_audio_before_it_has_played() -> None:
    model = PlaybackModel()
    run_clock(model, range(2))
    model.media(tone(1000, 1))  # at 40 ms, plays to 165 ms
    model.mark("a")
    run_clock(model, range(2, 20))
    assert model.echo("a") == MarkOutcome("played", T0 + 40 + 125)


def test_mark_with_nothing_queued_is_due_now() -> None:
    model = PlaybackModel()
    run_clock(model, range(3))
    model.mark("now")
    assert model.clear() == 0
    assert model.echo("now") == MarkOutcome("played", T0 + 60)


def test_clear_clears_the_marks_not_yet_due_and_only_those() -> None:
    model = PlaybackModel()
    model.media(tone(800, 1))
    model.mark("first")  # due at 100 ms
    model.media(tone(8000, 2))
    model.mark("second")  # due at 1100 ms
    run_clock(model, range(10))  # 200 ms: "first" has played
    model.clear()
    assert model.echo("second") == MarkOutcome("cleared", T0 + 200)
    assert model.echo("first") == MarkOutcome("played", T0 + 100)


def test_echoes_match_marks_of_one_name_oldest_first() -> None:
    model = PlaybackModel()
    model.media(tone(800, 1))
    model.mark("m")
    model.media(tone(800, 1))
    model.mark("m")
    run_clock(model, range(7))  # 140 ms: the first is due, the second is not
    model.clear()
    assert model.echo("m") == MarkOutcome("played", T0 + 100)
    assert model.echo("m") == MarkOutcome("cleared", T0 + 140)
    assert model.echo("m") is None
    assert model.echo("never-sent") is None


def test_an_echo_before_the_model_reaches_the_mark_means_it_played() -> None:
    model = PlaybackModel()
    model.media(tone(8000, 1))
    model.mark("early")  # due at 1000 ms
    run_clock(model, range(5))
    assert model.echo("early") == MarkOutcome("played", T0 + 1000)
    model.clear()  # Twilio said it played: a later clear cannot take that back
    assert model.echo("early") is None


def test_audio_before_the_first_inbound_chunk_starts_at_the_origin() -> None:
    model = PlaybackModel()
    model.media(tone(200, 1))
    model.mark("greeting")
    assert model.echo("greeting") == MarkOutcome("played", None)  # no clock yet
    played = run_clock(model, range(2))
    assert played == tone(200, 1) + tone(120, SILENCE)


def test_an_unconfirmed_timestamp_jump_does_not_move_the_clock() -> None:
    model = PlaybackModel(max_gap_ms=1000)
    model.media(tone(16000, 1))
    assert len(run_clock(model, range(3))) == 480
    assert model.on_inbound(T0 + 60 + 3_600_000, 160) == []  # one wild timestamp
    assert len(run_clock(model, range(3, 6))) == 480  # back on track
    jump = T0 + 120 + 2000
    assert model.on_inbound(jump, 160) == []
    frames = model.on_inbound(jump + 20, 160)  # confirmed: the clock moves on
    assert len(frames) == (2000 + 40) // 20
    assert b"".join(f for _, f in frames) == tone(16000 - 960, 1) + tone(2040 * 8 - 15040, SILENCE)


def test_chunks_behind_the_clock_change_nothing() -> None:
    model = PlaybackModel()
    run_clock(model, range(5))
    assert model.on_inbound(T0 + 40, 160) == []
    assert model.on_inbound(T0 + 80, 160) == []


def test_the_queue_is_bounded() -> None:
    model = PlaybackModel(max_queued_ms=1000)
    assert model.media(tone(6000, 1)) == 0
    assert model.media(tone(6000, 2)) == 4000
    played = run_clock(model, range(60))
    assert played == tone(6000, 1) + tone(2000, 2) + tone(1600, SILENCE)


def test_cuts_go_to_the_turn_they_fall_in() -> None:
    model = PlaybackModel()
    model.media(tone(8000, 1))
    run_clock(model, range(10))  # 200 ms
    model.clear()  # cut at T0 + 200, 800 ms unplayed
    model.media(tone(8000, 1))
    run_clock(model, range(10, 50))
    model.finish()  # at T0 + 1000: 800 - 200 ... queued since 200 ms, 1 s long → 200 ms left
    assert model.claim(T0 + 250, T0 + 900) == []  # the first cut came before this turn: gone
    assert model.claim(T0 + 300, T0 + 2000) == [Cut(T0 + 1000, 1600, by_clear=False)]
    assert model.claim(T0, T0 + 5000) == []


@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=12),
    arrival_frames=st.lists(st.integers(0, 40), min_size=12, max_size=12),
    cut_at=st.integers(0, 2),
)
def test_payload_boundaries_do_not_matter(
    sizes: list[int], arrival_frames: list[int], cut_at: int
) -> None:
    """Twilio plays bytes, not messages: one payload split into many at the same instant
    plays the same audio."""
    audio = bytes(range(256)) * 40
    order = sorted(zip(arrival_frames, sizes, strict=False))

    def play(split: int) -> bytes:
        model = PlaybackModel()
        out = bytearray()
        position = 0
        for k in range(60):
            for at, size in order:
                if at == k:
                    piece = audio[position : position + size]
                    position += size
                    step = max(1, len(piece) // split)
                    for i in range(0, len(piece), step):
                        model.media(piece[i : i + step])
            if k == 30 + cut_at:
                model.clear()
            out += b"".join(f for _, f in model.on_inbound(T0 + 20 * k, 160))
        return bytes(out)

    assert play(1) == play(3) == play(7)


# ---------------------------------------------------------------------------------------------
# proxy mode through CallSession

SID = "MZ" + "5" * 32


class ScriptedBot:
    """Feeds a proxied session: a caller stream, the bot's messages at given inbound
    positions (ms since the first media frame), and Twilio's mark echoes where a real
    Twilio would send them."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)

    def media(self, speech_ms: int, lead_ms: int = 200) -> str:
        """``speech_ms`` of speech-like audio with ``lead_ms`` of line noise either side."""
        total = speech_ms + 2 * lead_ms
        payload = speechlike_ulaw([(lead_ms, lead_ms + speech_ms)], total, self.rng)
        body = {"payload": base64.b64encode(payload).decode()}
        return json.dumps({"event": "media", "streamSid": SID, "media": body})

    @staticmethod
    def mark(name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}})

    CLEAR = json.dumps({"event": "clear", "streamSid": SID})

    def run(
        self,
        caller_speech: list[tuple[int, int]],
        duration_ms: int,
        bot: dict[int, list[str | bytes]],
        echoes: dict[int, str],
        params: SessionParams | None = None,
    ) -> list[Any]:
        session = CallSession(params or SessionParams(proxied=True))
        lines = scripted_call_lines({"inbound": caller_speech}, duration_ms)
        seq = 100_000
        pending = dict(bot)
        for line in lines:
            session.receive_text(line)
            message = json.loads(line)
            if message["event"] == "start":
                for frame in pending.pop(-1, []):
                    session.receive_playback(frame)
            if message["event"] != "media":
                continue
            position = int(message["media"]["timestamp"]) + 20 - T0
            for at in sorted(a for a in pending if a <= position):
                for frame in pending.pop(at):
                    session.receive_playback(frame)
            for at in sorted(a for a in echoes if a <= position):
                seq += 1
                session.receive_text(
                    json.dumps(
                        {
                            "event": "mark",
                            "sequenceNumber": str(seq),
                            "streamSid": SID,
                            "mark": {"name": echoes.pop(at)},
                        }
                    )
                )
        return session.take_events()


def agent_turns(records: list[Any]) -> list[TurnRecord]:
    return [r for r in records if isinstance(r, TurnRecord) and r.speaker == "agent"]


@pytest.fixture(scope="module")
def conversation() -> list[Any]:
    """Greeting (600 ms of speech); the caller speaks 1-3 s; the bot answers at 3.5 s with
    3.8 s of speech and a mark; the caller barges in at 6 s and the bot clears at 6.3 s; the
    caller stops at 8 s and the bot answers at 8.6 s with 0.8 s and a mark. Every payload has
    200 ms of line noise before and after its speech."""
    bot = ScriptedBot()
    return bot.run(
        [(1000, 3000), (6000, 8000)],
        12_000,
        bot={
            -1: [bot.media(600), bot.mark("greeting")],
            3500: [bot.media(3800), bot.mark("answer-1")],
            6300: [ScriptedBot.CLEAR],
            8600: [bot.media(800), bot.mark("answer-2")],
        },
        echoes={1000: "greeting", 6300: "answer-1", 9800: "answer-2"},
    )


def test_agent_turns_are_rebuilt_where_the_bot_audio_played(conversation: list[Any]) -> None:
    turns = agent_turns(conversation)
    # (start, end) of the speech in each payload as played, ms since the first media frame;
    # the VAD is within 60 ms of the scripted bursts (frame grid, confirmation, post-roll).
    expected = [(200, 800), (3700, 6300), (8800, 9600)]
    assert len(turns) == 3
    for turn, (start, end) in zip(turns, expected, strict=True):
        assert abs(turn.start_ms - T0 - start) <= 60, turn
        assert abs(turn.end_ms - T0 - end) <= 60, turn


def test_an_agent_turn_cut_by_clear_is_interrupted_with_its_unplayed_audio(
    conversation: list[Any],
) -> None:
    greeting, cut, answer = agent_turns(conversation)
    # answer-1: 4.2 s queued at 3.5 s (200 ms lead, 3.8 s speech, 200 ms tail), cleared at 6.3 s
    assert cut.interrupted is True and cut.unplayed_ms == 4200 - (6300 - 3500)
    assert greeting.unplayed_ms == 0 and greeting.interrupted is False
    assert answer.unplayed_ms == 0 and answer.interrupted is False
    callers = [r for r in conversation if isinstance(r, TurnRecord) and r.speaker == "caller"]
    assert all(c.unplayed_ms is None for c in callers)


def test_barge_in_and_response_latency_see_the_agent(conversation: list[Any]) -> None:
    callers = [r for r in conversation if isinstance(r, TurnRecord) and r.speaker == "caller"]
    assert [c.barge_in for c in callers] == [False, True]
    stopped = next(r for r in conversation if isinstance(r, StreamStopped))
    latency = stopped.summary.response_latency
    assert latency is not None and latency.count == 2
    # agent speech at 3.7 s and 8.8 s after caller turns ending at 3.0 s and 8.0 s
    assert latency.p50_ms is not None and abs(latency.p50_ms - 750) <= 80
    assert stopped.summary.interruptions == {"caller": 1, "agent": 0}
    assert stopped.summary.media_messages["outbound"] == 3


def test_marks_are_classified_played_or_cleared(conversation: list[Any]) -> None:
    marks = {r.name: r for r in conversation if isinstance(r, MarkEvent)}
    assert {n: m.outcome for n, m in marks.items()} == {
        "greeting": "played",
        "answer-1": "cleared",
        "answer-2": "played",
    }
    assert marks["greeting"].expected_at_ms == T0 + 1000
    assert marks["answer-1"].expected_at_ms == T0 + 6300
    assert marks["answer-2"].expected_at_ms == T0 + 9800
    assert not [r for r in conversation if isinstance(r, Diagnostic)]


def test_what_twilio_would_ignore_plays_nothing() -> None:
    bot = ScriptedBot()
    other = json.loads(bot.media(500))
    other["streamSid"] = "MZ" + "6" * 32
    extra = json.loads(bot.media(500))
    extra["media"]["track"] = "outbound"  # an extra field: Twilio's 31951
    ignored: list[str | bytes] = [
        json.dumps(other),
        json.dumps(extra),
        bot.media(500).encode(),  # a binary frame: 31950
        json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "not base64!"}}),
        "{not json",
        json.dumps({"event": "stop", "streamSid": SID}),
    ]
    records = bot.run([(1000, 2000)], 5000, bot={3000: ignored}, echoes={3100: "never-sent"})
    assert agent_turns(records) == []
    codes = sorted(r.code for r in records if isinstance(r, Diagnostic))
    assert codes == [
        "mark_not_sent",
        "upstream_bad_json",
        "upstream_bad_message",
        "upstream_bad_payload",
        "upstream_binary_frame",
        "upstream_unknown_event",
        "upstream_wrong_stream_sid",
    ]
    mark = next(r for r in records if isinstance(r, MarkEvent))
    assert mark.outcome is None and mark.expected_at_ms is None


def test_audio_still_queued_at_the_end_is_unplayed_but_not_interrupted() -> None:
    bot = ScriptedBot()
    records = bot.run([(500, 1500)], 4000, bot={2000: [bot.media(5000)]}, echoes={})
    (turn,) = agent_turns(records)
    assert turn.end_reason == "stream_end"
    assert turn.interrupted is False
    assert turn.unplayed_ms == 5400 - 2000  # 5.4 s queued at 2 s, the stream ends at 4 s


def test_outside_proxy_mode_nothing_changes() -> None:
    session = CallSession(SessionParams())
    with pytest.raises(RuntimeError):
        session.receive_playback("{}")
    for line in scripted_call_lines({"inbound": [(500, 1500)]}, 3000):
        session.receive_text(line)
    turns = [r for r in session.take_events() if isinstance(r, TurnRecord)]
    assert turns and all(t.unplayed_ms is None for t in turns)


def test_report_becomes_a_diagnostic_of_the_stream() -> None:
    session = CallSession(SessionParams(proxied=True))
    lines = scripted_call_lines({"inbound": []}, 200)
    session.receive_text(lines[1])
    session.report("upstream_closed", "the bot went away")
    session.close("upstream_closed")
    records = session.take_events()
    diag = next(r for r in records if isinstance(r, Diagnostic))
    assert (diag.code, diag.stream_sid) == ("upstream_closed", SID)
    assert isinstance(records[-1], StreamStopped) and records[-1].reason == "upstream_closed"
