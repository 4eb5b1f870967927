"""turns.py: turn cutting and cross-track fields on scripted segment timelines."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mise_twilio.core.turns import Turn, TurnParams, TurnTracker
from mise_twilio.core.vad import VadParams

Script = dict[str, list[tuple[int, int]]]  # track -> [start_frame, end_frame) segments


def play(script: Script, *, params: TurnParams | None = None, end: int | None = None) -> list[Turn]:
    """Drive a TurnTracker as the session does: a VAD reports a start ``lag`` frames after it
    and an end ``hang`` frames after it, then tick."""
    params = params or TurnParams()
    vad = VadParams()
    lag, hang = 2, vad.hangover_ms // 20
    tracks = list(script)
    tracker = TurnTracker(
        tracks,  # type: ignore[arg-type]
        params,
        cross_track=len(tracks) == 2,
        vad_lookback_frames=vad.lookback_frames,
    )
    events: dict[int, list[tuple[str, Any, int]]] = {}
    for track, segments in script.items():
        for s, e in segments:
            events.setdefault(s + lag, []).append(("start", track, s))
            events.setdefault(e + hang, []).append(("end", track, e))
    last = end if end is not None else max(events) + 1
    closed: list[Turn] = []
    for now in range(last):
        for kind, track, frame in events.get(now, []):
            if kind == "start":
                closed += tracker.on_start(track, frame, now)
            else:
                closed += tracker.on_end(track, frame, now)
        closed += tracker.tick(now)
    closed += tracker.flush(last)
    return closed


def by_track(turns: list[Turn], track: str) -> list[Turn]:
    return sorted((t for t in turns if t.track == track), key=lambda t: t.start_frame)


def test_short_pauses_merge_long_pauses_split() -> None:
    turns = play({"inbound": [(0, 50), (60, 100), (200, 250)]}, end=400)
    assert [(t.start_frame, t.end_frame, len(t.segments)) for t in turns] == [
        (0, 100, 2),
        (200, 250, 1),
    ]
    assert turns[0].end_reason == "pause"
    assert turns[0].gap_before_frames is None  # one track: no cross-track fields


def test_turn_pause_at_its_boundary() -> None:
    """A pause of ``turn_pause_ms`` (700 ms: 35 frames) ends the turn; one frame less does
    not."""
    pause = TurnParams().turn_pause_ms // 20
    for gap, turns_wanted in ((pause - 1, 1), (pause, 2)):
        turns = play({"inbound": [(0, 50), (50 + gap, 100 + gap)]}, end=400)
        assert len(turns) == turns_wanted, (gap, turns)


def test_exchange_gap_before_and_floor_taken() -> None:
    turns = play({"outbound": [(0, 100)], "inbound": [(135, 250)]}, end=400)
    agent, caller = by_track(turns, "outbound")[0], by_track(turns, "inbound")[0]
    assert caller.gap_before_frames == 35
    assert agent.end_reason == "floor_taken"
    assert caller.overlap_frames == agent.overlap_frames == 0
    assert not (caller.barge_in or agent.interrupted)


def test_barge_in_and_interrupted() -> None:
    # agent talks; caller starts at 100 and holds 2 s; agent stops 15 frames (300 ms) later
    turns = play({"outbound": [(0, 115)], "inbound": [(100, 200)]}, end=400)
    agent, caller = by_track(turns, "outbound")[0], by_track(turns, "inbound")[0]
    assert caller.barge_in and not caller.backchannel
    assert agent.interrupted
    assert caller.gap_before_frames == -15
    assert caller.overlap_frames == agent.overlap_frames == 15


def test_backchannel_is_not_an_interruption() -> None:
    turns = play({"outbound": [(0, 300)], "inbound": [(100, 125)]}, end=500)
    agent, caller = by_track(turns, "outbound")[0], by_track(turns, "inbound")[0]
    assert caller.backchannel and not caller.barge_in
    assert not agent.interrupted
    assert caller.overlap_frames == agent.overlap_frames == 25


def test_backchannel_length_limit_at_its_boundary() -> None:
    limit = TurnParams().backchannel_max_ms // 20  # frames
    for length, is_backchannel in ((limit - 1, True), (limit, True), (limit + 1, False)):
        turns = play({"outbound": [(0, 400)], "inbound": [(100, 100 + length)]}, end=600)
        caller = by_track(turns, "inbound")[0]
        assert caller.end_frame - caller.start_frame == length
        assert caller.backchannel is is_backchannel, length
        # one frame too long for a backchannel, it is a barge-in into the agent's turn
        assert caller.barge_in is (not is_backchannel), length


def test_barge_in_minimum_length_at_its_boundary() -> None:
    # The caller starts inside the agent's speech; the agent stops first (so it is no
    # backchannel). Shorter than interruption_min_ms it is not a barge-in.
    minimum = TurnParams().interruption_min_ms // 20
    for length, is_barge_in in ((minimum - 1, False), (minimum, True)):
        turns = play({"outbound": [(0, 100)], "inbound": [(95, 95 + length)]}, end=400)
        caller = by_track(turns, "inbound")[0]
        assert not caller.backchannel
        assert caller.barge_in is is_barge_in, length


def test_interrupted_only_when_the_turn_ends_within_the_yield_window() -> None:
    window = TurnParams().yield_window_ms // 20
    for agent_end, interrupted in ((100 + window, True), (100 + window + 1, False)):
        turns = play({"outbound": [(0, agent_end)], "inbound": [(100, 400)]}, end=700)
        agent, caller = by_track(turns, "outbound")[0], by_track(turns, "inbound")[0]
        assert caller.barge_in
        assert agent.interrupted is interrupted, agent_end


def test_monologue_is_cut_at_max_duration() -> None:
    params = TurnParams(max_turn_ms=2000)
    turns = play({"inbound": [(0, 250)]}, params=params, end=400)
    assert [t.end_reason for t in turns][:2] == ["max_duration", "max_duration"]
    assert turns[0].end_frame - turns[0].start_frame == 100
    assert sum(t.speech_frames for t in turns) == 250


segments_strategy = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 80)), min_size=0, max_size=12
).map(lambda gaps: _to_segments(gaps))


def _to_segments(gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, t = [], 0
    for gap, length in gaps:
        start = t + gap + 12  # the VAD cannot end and restart within its hangover
        out.append((start, start + length))
        t = start + length
    return out


@settings(max_examples=150, deadline=None)
@given(inbound=segments_strategy, outbound=segments_strategy)
def test_properties_ordered_disjoint_symmetric(
    inbound: list[tuple[int, int]], outbound: list[tuple[int, int]]
) -> None:
    turns = play({"inbound": inbound, "outbound": outbound}, end=2000)
    for track, segs in (("inbound", inbound), ("outbound", outbound)):
        mine = by_track(turns, track)
        for a, b in itertools.pairwise(mine):
            assert a.end_frame <= b.start_frame  # within a track: ordered, no overlap
        # every speech frame lands in exactly one turn
        assert sum(t.speech_frames for t in mine) == sum(e - s for s, e in segs)
    overlap_in = sum(t.overlap_frames or 0 for t in by_track(turns, "inbound"))
    overlap_out = sum(t.overlap_frames or 0 for t in by_track(turns, "outbound"))
    truth = sum(max(0, min(e1, e2) - max(s1, s2)) for s1, e1 in inbound for s2, e2 in outbound)
    assert overlap_in == overlap_out == truth
    indices = sorted(t.index for t in turns)
    assert indices == list(range(len(turns)))
