"""call.py: CallSession on the committed fixtures, against their ground truth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import FIXTURE_NAMES, audio_call_lines, expected, fixture_lines

from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import AnyRecord, Diagnostic, StreamStopped, ToneRecord, TurnRecord
from mise_twilio.replay import replay_offline

BOUNDARY_TOLERANCE_MS = 100


def turns_of(records: list[AnyRecord]) -> list[TurnRecord]:
    return [r for r in records if isinstance(r, TurnRecord)]


def match(turns: list[TurnRecord], truth: dict[str, Any]) -> TurnRecord:
    found = [
        t
        for t in turns
        if t.track == truth["track"]
        and t.start_ms < truth["end_ms"]
        and truth["start_ms"] < t.end_ms
    ]
    assert len(found) == 1, f"{truth} matched {len(found)} turns"
    return found[0]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_turns_match_ground_truth_within_100ms(
    name: str, offline_records: dict[str, list[AnyRecord]]
) -> None:
    # 100 ms, plus the generator's own uncertainty at that edge (labelled speech too close to
    # the line noise, or under the other speaker's voice, to be told from it)
    truth = expected(name)
    turns = turns_of(offline_records[name])
    assert len(turns) == len(truth["turns"])
    for t in truth["turns"]:
        got = match(turns, t)
        start_tol, end_tol = (BOUNDARY_TOLERANCE_MS + u for u in t["edge_uncertainty_ms"])
        assert abs(got.start_ms - t["start_ms"]) <= start_tol, (got, t)
        assert abs(got.end_ms - t["end_ms"]) <= end_tol, (got, t)
        assert got.speaker == ("caller" if t["track"] == "inbound" else "agent")


def test_lost_frames_show_up_in_lost_ms(offline_records: dict[str, list[AnyRecord]]) -> None:
    truth = expected("lossy_3pct")
    records = offline_records["lossy_3pct"]
    stopped = next(r for r in records if isinstance(r, StreamStopped))
    assert stopped.summary.lost_ms == truth["lost_ms"]
    assert sum(t.lost_ms for t in turns_of(records)) > 0
    # and a clean call reports none
    clean = next(r for r in offline_records["fork_two_track"] if isinstance(r, StreamStopped))
    assert set(clean.summary.lost_ms.values()) == {0}


def test_each_turn_counts_exactly_the_frames_lost_inside_it(
    offline_records: dict[str, list[AnyRecord]],
) -> None:
    # lost_spans are the generator's own record of the frames it did not send, on the same
    # 20 ms grid as the turns: the count is exact, not approximate.
    spans = expected("lossy_3pct")["lost_spans"]
    turns = turns_of(offline_records["lossy_3pct"])
    for turn in turns:
        truth = sum(
            max(0, min(e, turn.end_ms) - max(s, turn.start_ms)) for s, e in spans[turn.track]
        )
        assert turn.lost_ms == truth, turn
    assert sum(t.lost_ms for t in turns) > 100


def test_garbage_lines_give_diagnostics_and_leave_turns_unchanged(
    offline_records: dict[str, list[AnyRecord]],
) -> None:
    def shape(records: list[AnyRecord]) -> list[tuple[Any, ...]]:
        return [(t.track, t.start_ms, t.end_ms, t.segments, t.energy) for t in turns_of(records)]

    garbage, clean = offline_records["garbage_lines"], offline_records["connect_inbound"]
    assert shape(garbage) == shape(clean)
    codes = [r.code for r in garbage if isinstance(r, Diagnostic)]
    truth = expected("garbage_lines")["garbage_lines"]
    assert len(codes) >= len(truth)
    assert {
        "bad_json",
        "unknown_event",
        "bad_payload",
        "wrong_stream_sid",
        "duplicate_start",
        "bad_message",
        "message_too_large",
    } <= set(codes)
    assert not [r for r in clean if isinstance(r, Diagnostic)]


def test_connect_call_has_dtmf_and_mark_and_no_cross_track_fields(
    offline_records: dict[str, list[AnyRecord]],
) -> None:
    records = offline_records["connect_inbound"]
    types = [r.type for r in records]
    assert types[0] == "stream.started" and types[-1] == "stream.stopped"
    assert "dtmf" in types and "mark" in types
    for t in turns_of(records):
        assert t.speaker == "caller"
        assert t.gap_before_ms is None and t.barge_in is None and t.overlap_ms is None
    started = records[0]
    assert "api_key" not in started.custom_parameters  # type: ignore[union-attr]


def test_summary_talk_time_is_the_sum_of_turn_speech(
    offline_records: dict[str, list[AnyRecord]],
) -> None:
    for name, records in offline_records.items():
        stopped = next(r for r in records if isinstance(r, StreamStopped))
        for speaker, talk in stopped.summary.talk_ms.items():
            assert talk == sum(t.speech_ms for t in turns_of(records) if t.speaker == speaker), name
        assert sum(stopped.summary.turn_counts.values()) == len(turns_of(records))


def test_turn_ids_are_stable_and_indexes_follow_start(
    offline_records: dict[str, list[AnyRecord]],
) -> None:
    again = replay_offline(fixture_lines("fork_two_track"))
    assert [r.id for r in again] == [r.id for r in offline_records["fork_two_track"]]
    turns = sorted(turns_of(again), key=lambda t: t.index)
    assert [t.start_ms for t in turns] == sorted(t.start_ms for t in turns)


def _lines_with(name: str, edit: Any) -> list[str]:
    lines = fixture_lines(name)
    return [edit(json.loads(line)) if '"start"' in line[:30] else line for line in lines]


def test_api_key_mismatch_rejects_and_emits_nothing() -> None:
    lines = fixture_lines("connect_inbound")
    session = CallSession(SessionParams(expected_api_key="something-else"))
    for line in lines:
        session.receive_text(line)
    session.receive_eof()
    assert session.rejection == "api_key" and session.close_code() == 1008
    assert session.take_events() == []
    ok = replay_offline(lines, SessionParams(expected_api_key="test-key"))
    assert turns_of(ok)


def test_media_before_start_and_missing_connected_are_tolerated() -> None:
    lines = fixture_lines("connect_inbound")
    media = [line for line in lines if '"event":"media"' in line]
    session = CallSession()
    session.receive_text(media[0])  # before start: a diagnostic, not a crash
    for line in lines[1:]:  # no "connected"
        session.receive_text(line)
    records = session.take_events()
    assert [r.code for r in records if isinstance(r, Diagnostic)] == ["media_before_start"]
    assert len(turns_of(records)) == 3


def test_eof_without_stop_closes_open_turns_as_stream_end() -> None:
    lines = fixture_lines("connect_inbound")
    cut = [line for line in lines if '"event":"media"' in line][400]
    session = CallSession()
    for line in lines[: lines.index(cut)]:
        session.receive_text(line)
    session.receive_eof()
    records = session.take_events()
    assert turns_of(records)[-1].end_reason == "stream_end"
    assert isinstance(records[-1], StreamStopped) and records[-1].reason == "eof"
    session.receive_text(lines[-1])  # after close: ignored
    assert session.take_events() == []


def test_one_bad_message_never_ends_the_call() -> None:
    lines = fixture_lines("connect_inbound")
    poisoned: list[str] = []
    for i, line in enumerate(lines):
        poisoned.append(line)
        if i % 50 == 10:
            poisoned += ["\x00\xff", "{", "null", '{"event":"media"}', "[]" * 1000]
    clean = turns_of(replay_offline(lines))
    dirty = turns_of(replay_offline(poisoned))
    assert [(t.start_ms, t.end_ms) for t in dirty] == [(t.start_ms, t.end_ms) for t in clean]


@pytest.mark.parametrize("name", ["fork_two_track", "connect_inbound"])
def test_turn_records_come_out_within_1s_of_their_end(name: str) -> None:
    """Fed as Twilio sends it, each turn record is out before any media stamped more than
    1 s after the turn's end has been fed (both tracks live: the analytics issue's bound)."""
    session = CallSession()
    fed_ms = 0
    lateness: list[int] = []
    for line in fixture_lines(name):
        if '"event":"media"' in line:
            fed_ms = max(fed_ms, int(json.loads(line)["media"]["timestamp"]))
        session.receive_text(line)
        for record in session.take_events():
            if isinstance(record, TurnRecord) and record.end_reason != "stream_end":
                lateness.append(fed_ms - record.end_ms)
    assert lateness
    assert max(lateness) <= 1000, lateness


def test_media_on_an_unlisted_track_mid_call_is_dropped_not_fatal() -> None:
    lines = fixture_lines("connect_inbound")  # start.tracks == ["inbound"]
    media = [i for i, line in enumerate(lines) if '"event":"media"' in line]
    stray = json.loads(lines[media[300]])
    stray["media"]["track"] = "outbound"
    poisoned = lines[: media[300]] + [json.dumps(stray)] * 5 + lines[media[300] :]
    records = replay_offline(poisoned)
    codes = [r.code for r in records if isinstance(r, Diagnostic)]
    assert codes == ["unlisted_track"] * 5
    clean = replay_offline(lines)
    assert [(t.start_ms, t.end_ms) for t in turns_of(records)] == [
        (t.start_ms, t.end_ms) for t in turns_of(clean)
    ]


@pytest.mark.parametrize(("silence_ms", "incidents"), [(3600, 0), (4400, 1)])
def test_a_mutual_silence_over_4s_is_one_silence_incident(silence_ms: int, incidents: int) -> None:
    from support import scripted_call_lines

    first_end = 1500
    second = first_end + silence_ms
    lines = scripted_call_lines(
        {"inbound": [(500, first_end)], "outbound": [(second, second + 1500)]}, second + 3000
    )
    stopped = replay_offline(lines)[-1]
    assert isinstance(stopped, StreamStopped)
    turns = stopped.summary.turn_counts
    assert turns == {"caller": 1, "agent": 1}
    assert stopped.summary.silence_incidents == incidents


def test_dtmf_and_mark_ids_stay_unique_without_sequence_numbers() -> None:
    # Twilio numbers every message, but a message without ``sequenceNumber`` must not make two
    # records share an id: a deduplicating sink would merge two keypresses into one.
    lines = fixture_lines("connect_inbound")
    sid = json.loads(lines[1])["streamSid"]
    digits = [json.dumps({"event": "dtmf", "streamSid": sid, "dtmf": {"digit": d}}) for d in "12"]
    marks = [json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": n}}) for n in "ab"]
    session = CallSession()
    ids: list[str] = []
    for line in lines[:50]:
        session.receive_text(line)
    for line in [digits[0], marks[0]]:
        session.receive_text(line)
        ids += [r.id for r in session.take_events() if r.type in ("dtmf", "mark")]
    for line in [digits[1], marks[1]]:
        session.receive_text(line)
        ids += [r.id for r in session.take_events() if r.type in ("dtmf", "mark")]
    assert len(ids) == 4
    assert len(set(ids)) == 4, ids


def voicemail_greeting_then_beep() -> tuple[list[str], int]:
    """A <Connect> call answered by a machine: line noise, a 2.5 s greeting, 100 ms of quiet,
    a 1 kHz beep of 400 ms, then silence. Returns the lines and the beep's start (stream ms)."""
    import numpy as np

    from fixtures import signals

    rng = np.random.default_rng(3)
    greeting = signals.utterance(190.0, syllables=10, seed=4)
    greeting *= 32768 * 10 ** (-24 / 20) / np.sqrt(np.mean(greeting**2))
    quiet = np.zeros(800)
    beep = signals.tone(1000.0, 0.4, 0.25) * 32768
    x = np.concatenate([np.zeros(4000), greeting, quiet, beep, np.zeros(12000)])
    x += rng.normal(0, 32768 * 10 ** (-62 / 20), x.shape[0])
    beep_ms = 120 + (4000 + greeting.shape[0] + quiet.shape[0]) // 8
    return audio_call_lines({"inbound": x}, name="voicemail"), beep_ms


def test_a_voicemail_beep_becomes_a_tone_record_after_its_turn() -> None:
    lines, beep_ms = voicemail_greeting_then_beep()
    records = replay_offline(lines)
    tones = [r for r in records if isinstance(r, ToneRecord)]
    assert len(tones) == 1
    tone = tones[0]
    assert tone.frequency_hz == pytest.approx(1000.0, abs=1.0)
    assert abs(tone.start_ms - beep_ms) <= 20 and abs(tone.duration_ms - 400) <= 40
    assert tone.end_ms == tone.start_ms + tone.duration_ms
    turn = next(r for r in records if isinstance(r, TurnRecord) and r.index == tone.turn_index)
    assert turn.start_ms <= tone.start_ms < tone.end_ms <= turn.end_ms
    assert records.index(tone) == records.index(turn) + 1  # right after its turn
    assert tone.id == f"{turn.stream_sid}:tone:{turn.index}"
    assert [r.id for r in replay_offline(lines) if isinstance(r, ToneRecord)] == [tone.id]


def test_speech_turns_carry_prosody_voice_and_arousal(
    offline_records: dict[str, list[AnyRecord]],
) -> None:
    for name in ("fork_two_track", "connect_inbound"):
        turns = [r for r in offline_records[name] if isinstance(r, TurnRecord)]
        assert not [r for r in offline_records[name] if isinstance(r, ToneRecord)], name
        seen: dict[str, int] = {}
        for t in turns:
            assert t.prosody is not None and t.voice is not None, t.id
            if t.pitch is not None and t.pitch.median_hz is not None:
                assert t.arousal is not None and -1.0 <= t.arousal <= 1.0
                # against the speaker's usual: none before their baseline holds a turn
                assert (t.arousal_rel is None) == (t.prosody.baseline_turns == 0), t.id
            # Backchannels are compared with the baseline but not added to it.
            assert t.prosody.baseline_turns == seen.get(t.speaker, 0), t.id
            if not t.backchannel:
                seen[t.speaker] = seen.get(t.speaker, 0) + 1
        stopped = offline_records[name][-1]
        assert isinstance(stopped, StreamStopped)
        for speaker, stats in stopped.summary.arousal.items():
            rated = [t for t in turns if t.speaker == speaker and t.arousal is not None]
            assert stats.turns == len([t for t in rated if not t.backchannel])


def test_without_features_there_is_no_prosody_voice_arousal_or_tone() -> None:
    lines, _ = voicemail_greeting_then_beep()
    records = replay_offline(lines, SessionParams(measure_features=False))
    turns = [r for r in records if isinstance(r, TurnRecord)]
    assert turns and not [r for r in records if isinstance(r, ToneRecord)]
    for t in turns:
        assert t.prosody is None and t.voice is None and t.arousal is None
        assert t.arousal_rel is None


def test_the_media_fast_path_gives_the_records_the_models_give() -> None:
    """Every fixture (garbage lines, gaps, dtmf, marks included) plus hostile media frames
    that the fast path takes (unknown track, bad base64, wrong streamSid, before start,
    timestamps out of range, an oversized chunk): fed as text (fast path) and as parsed
    models, the records are identical, diagnostics included."""
    from mise_twilio.core.messages import match_media, parse_message

    fork = fixture_lines("fork_two_track")
    media = next(line for line in fork if '"event":"media"' in line)
    sid = json.loads(media)["streamSid"]
    hostile = [
        media.replace('"track":"inbound"', '"track":"sideways"'),
        media.replace('"payload":"', '"payload":"=='),
        media.replace(sid, "MZ" + "0" * 32),
        media.replace('"timestamp":"', '"timestamp":"9999999999'),
        media.split('"payload":"')[0]
        + '"payload":"'
        + "A" * 20000
        + '"},"streamSid":"'
        + sid
        + '"}',
        media.split('"payload":"')[0] + '"payload":""},"streamSid":"' + sid + '"}',
    ]
    assert all(match_media(line) is not None for line in hostile)
    calls = [fixture_lines(name) for name in FIXTURE_NAMES]
    calls.append([media, *fork[:40], *hostile, *fork[40:]])
    small = SessionParams(max_chunk_ms=100, max_timestamp_ms=10**9)
    for lines in calls:
        fast, models = CallSession(small), CallSession(small)
        for line in lines:
            fast.receive_text(line)
            try:
                message = parse_message(line)
            except Exception:
                message = None
            if message is None or len(line) > small.max_message_bytes:
                models.receive_text(line)  # dropped before parsing: both take the same path
            else:
                models.receive_message(message)
        fast.receive_eof()
        models.receive_eof()
        assert [r.model_dump() for r in fast.take_events()] == [
            r.model_dump() for r in models.take_events()
        ]


def test_stop_asks_for_the_close_at_once_and_its_records_come_when_taken() -> None:
    """The edge hangs up before the stream's end is analysed (``close`` defers that work to
    ``take_events``): same records, in the same order, as taking them at every step."""
    lines = fixture_lines("fork_two_track")
    session = CallSession(SessionParams(max_track_skew_ms=None))
    records: list[AnyRecord] = []
    for line in lines[:-1]:
        session.receive_text(line)
        records += session.take_events()
    assert '"event":"stop"' in lines[-1]
    session.receive_text(lines[-1])
    assert session.close_expected()
    assert session.events_pending
    session.receive_eof()  # a close after the stop changes nothing
    tail = session.take_events()
    assert isinstance(tail[-1], StreamStopped) and tail[-1].reason == "stop"
    assert not session.events_pending and session.take_events() == []
    assert [r.model_dump() for r in records + tail] == [
        r.model_dump() for r in replay_offline(lines)
    ]
