"""core/summary.py: the call summary's arousal per speaker and its escalation count."""

from __future__ import annotations

from typing import Any

import pytest

from mise_twilio.core.records import CallSummary, TurnRecord
from mise_twilio.core.summary import ESCALATION_AROUSAL_REL, CallStats


def turn(index: int, speaker: str, start_ms: int, end_ms: int, **fields: Any) -> TurnRecord:
    track = "inbound" if speaker == "caller" else "outbound"
    return TurnRecord(
        id=f"MZ:turn:{index}",
        track=track,
        speaker=speaker,
        index=index,
        start_ms=start_ms,
        end_ms=end_ms,
        duration_ms=end_ms - start_ms,
        speech_ms=end_ms - start_ms,
        segments=[(start_ms, end_ms)],
        end_reason="pause",
        **fields,
    )


def summarise(turns: list[TurnRecord], *, cross_track: bool = True) -> CallSummary:
    stats = CallStats()
    for t in turns:
        stats.add(t)
    speakers = ["caller", "agent"] if cross_track else ["caller"]
    span = max(t.end_ms for t in turns) if turns else 0
    return stats.summary(
        speakers,  # type: ignore[arg-type]
        span_ms=span,
        cross_track=cross_track,
        lost_ms={},
        media_messages={},
        diagnostics=0,
    )


def call_with_a_slow_answer() -> list[TurnRecord]:
    """Caller and agent alternate; the agent's second answer comes 3 s late (the others
    0.3-0.5 s), so it is the only one above the call's p95 response latency."""
    return [
        turn(0, "caller", 0, 2000, arousal=-0.2, arousal_rel=0.0),
        turn(1, "agent", 2300, 4000, arousal=0.0),
        turn(2, "caller", 4500, 6000, arousal=0.1, arousal_rel=0.5),
        turn(3, "agent", 9000, 10000, arousal=0.0),  # answers 3000 ms late
        turn(4, "caller", 10300, 12000, arousal=0.6, arousal_rel=1.5),  # after the slow answer
        turn(5, "agent", 12400, 13000, arousal=0.1),
        turn(6, "caller", 13500, 15000, arousal=0.2, arousal_rel=1.2),  # agent was quick
        turn(7, "agent", 15400, 17000, arousal=0.1),
        turn(8, "caller", 16500, 18000, arousal=0.7, arousal_rel=2.0, barge_in=True),
        turn(9, "caller", 70000, 71000, arousal=0.3, arousal_rel=1.1),  # nothing before it
    ]


def test_arousal_per_speaker() -> None:
    summary = summarise(call_with_a_slow_answer())
    caller = summary.arousal["caller"]
    assert caller.turns == 6
    assert caller.mean == pytest.approx((-0.2 + 0.1 + 0.6 + 0.2 + 0.7 + 0.3) / 6, abs=1e-4)
    assert caller.peak == 0.7 and caller.peak_turn_index == 8
    assert caller.trend_per_min is not None and caller.trend_per_min > 0.0
    agent = summary.arousal["agent"]
    assert agent.turns == 4 and agent.peak == 0.1 and agent.peak_turn_index == 5
    assert agent.trend_per_min is None  # under 30 s from the first to the last


def test_escalation_counts_barge_ins_and_turns_after_slow_answers() -> None:
    summary = summarise(call_with_a_slow_answer())
    assert summary.response_latency is not None and summary.response_latency.p95_ms is not None
    assert summary.response_latency.p95_ms < 3000.0
    # Turn 4 (after the 3 s answer) and turn 8 (barge-in); not 6 (quick answer), 9 (none),
    # nor 2 (under the threshold).
    assert summary.escalation == 2


def test_escalation_needs_the_caller_above_their_usual() -> None:
    turns = call_with_a_slow_answer()
    calmer = [
        t.model_copy(update={"arousal_rel": ESCALATION_AROUSAL_REL - 0.01})
        if t.speaker == "caller"
        else t
        for t in turns
    ]
    assert summarise(calmer).escalation == 0


def test_escalation_counts_a_caller_exactly_at_the_threshold() -> None:
    """``arousal_rel`` ≥ +1 (issue 15's definition), so +1.00 as the record rounds it counts."""
    turns = call_with_a_slow_answer()
    at = [
        t.model_copy(update={"arousal_rel": ESCALATION_AROUSAL_REL})
        if t.speaker == "caller"
        and t.arousal_rel is not None
        and t.arousal_rel >= ESCALATION_AROUSAL_REL
        else t
        for t in turns
    ]
    assert summarise(at).escalation == 2


def test_backchannels_neither_escalate_nor_count_in_arousal() -> None:
    turns = [
        turn(0, "agent", 0, 4000, arousal=0.0),
        turn(
            1, "caller", 1000, 1400, arousal=0.9, arousal_rel=3.0, barge_in=True, backchannel=True
        ),
        turn(2, "caller", 4500, 6000, arousal=0.1, arousal_rel=0.2),
    ]
    summary = summarise(turns)
    assert summary.escalation == 0
    assert summary.arousal["caller"].turns == 1 and summary.arousal["caller"].peak == 0.1


def test_only_the_first_caller_turn_after_a_slow_answer_counts() -> None:
    second = turn(10, "caller", 12500, 13500, arousal=0.5, arousal_rel=1.4)
    turns = [*call_with_a_slow_answer()[:5], second]
    assert summarise(turns).escalation == 1


def test_without_the_agent_track_escalation_is_null() -> None:
    turns = [t for t in call_with_a_slow_answer() if t.speaker == "caller"]
    summary = summarise(turns, cross_track=False)
    assert summary.escalation is None and summary.response_latency is None
    assert summary.arousal["caller"].turns == 6


def test_turns_without_arousal() -> None:
    summary = summarise([turn(0, "caller", 0, 1000), turn(1, "agent", 1500, 2500)])
    for stats in summary.arousal.values():
        assert stats.turns == 0 and stats.mean is None and stats.peak_turn_index is None
    assert summary.escalation == 0
