"""Cross-track turn analytics against the fixtures' scripts (the analytics issue, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
from support import expected

from fixtures import real_calls as rc
from mise_twilio.core.audio import FRAME_MS
from mise_twilio.core.records import AnyRecord, StreamStopped, TurnRecord
from mise_twilio.replay import replay_offline

GRID_TOLERANCE_MS = 3 * FRAME_MS
"""A detected gap is the difference of two boundaries on the 20 ms frame grid (±20 ms each
against the script's whole-ms labels), and the VAD decides an end one frame at a time (the
post-roll rounds it up by up to a frame): three frames. On top come the generator's own
uncertainties at the two edges involved (``edge_uncertainty_ms`` in expected.json: labelled
speech too close to the line noise to be told from it)."""
TWO_TRACK = ["fork_two_track", "lossy_3pct", "bleed_two_track"]


def matched(records: list[AnyRecord], name: str) -> list[tuple[dict[str, object], TurnRecord]]:
    turns = [r for r in records if isinstance(r, TurnRecord)]
    pairs = []
    for truth in expected(name)["turns"]:
        found = [
            t
            for t in turns
            if t.track == truth["track"]
            and t.start_ms < truth["end_ms"]
            and truth["start_ms"] < t.end_ms
        ]
        assert len(found) == 1, (name, truth)
        pairs.append((truth, found[0]))
    return pairs


@pytest.mark.parametrize("name", TWO_TRACK)
def test_flags_match_the_script(name: str, offline_records: dict[str, list[AnyRecord]]) -> None:
    for truth, got in matched(offline_records[name], name):
        tags = set(truth.get("tags") or [])  # type: ignore[call-overload]
        assert got.barge_in is ("barge_in" in tags), (name, truth, got)
        assert got.interrupted is ("interrupted" in tags), (name, truth, got)
        assert got.backchannel is ("backchannel" in tags), (name, truth, got)


@pytest.mark.parametrize("name", TWO_TRACK)
def test_gap_before_matches_the_script_within_the_grid_and_label_uncertainty(
    name: str, offline_records: dict[str, list[AnyRecord]]
) -> None:
    script = expected(name)["turns"]
    checked = 0
    for truth, got in matched(offline_records[name], name):
        tags = set(truth.get("tags") or [])  # type: ignore[call-overload]
        if truth.get("gap_before_ms") is None or "backchannel" in tags:
            continue  # a backchannel's "gap" is to a turn that is still going
        previous = [
            t for t in script if t["track"] != truth["track"] and t["start_ms"] < truth["start_ms"]
        ][-1]
        tolerance = (
            GRID_TOLERANCE_MS
            + truth["edge_uncertainty_ms"][0]  # type: ignore[index]
            + previous["edge_uncertainty_ms"][1]
        )
        assert got.gap_before_ms is not None
        error = abs(got.gap_before_ms - truth["gap_before_ms"])  # type: ignore[operator]
        assert error <= tolerance, (truth, got, tolerance)
        checked += 1
    assert checked >= 4


def test_barge_in_is_an_interruption_and_a_backchannel_is_not(
    offline_records: dict[str, list[AnyRecord]],
) -> None:
    records = offline_records["fork_two_track"]
    summary = next(r for r in records if isinstance(r, StreamStopped)).summary
    script = expected("fork_two_track")["turns"]
    barge_ins = {
        speaker: sum(
            1
            for t in script
            if "barge_in" in (t.get("tags") or [])
            and speaker == ("caller" if t["track"] == "inbound" else "agent")
        )
        for speaker in ("caller", "agent")
    }
    assert summary.interruptions == barge_ins
    assert summary.overlap_ms is not None and summary.overlap_ms > 0
    assert summary.response_latency is not None and summary.response_latency.count >= 3
    # latency = agent start minus the caller turn end it answers: the script's agent gaps
    agent_gaps = [
        t["gap_before_ms"]
        for t in script
        if t["track"] == "outbound" and (t.get("gap_before_ms") or 0) > 0
    ]
    assert summary.response_latency.p50_ms is not None
    assert abs(summary.response_latency.p50_ms - sorted(agent_gaps)[len(agent_gaps) // 2]) <= 100


def test_bleed_does_not_open_turns(offline_records: dict[str, list[AnyRecord]]) -> None:
    records = offline_records["bleed_two_track"]
    turns = [r for r in records if isinstance(r, TurnRecord)]
    assert len(turns) == len(expected("bleed_two_track")["turns"])


# -- echo and double-talk on real speech (AMI, ../shared/real-speech) -------------------------


def _delayed(x: np.ndarray, delay_ms: int, gain_db: float) -> np.ndarray:
    y = np.zeros_like(x)
    d = delay_ms * 8
    y[d:] = x[: x.size - d] * 10 ** (gain_db / 20)
    return y


@pytest.mark.parametrize("delay_ms", [0, 40])
def test_an_echo_of_the_agent_24_db_down_opens_no_caller_turn(delay_ms: int) -> None:
    agent = rc.load_file("trn06")
    agent = agent + rc.line_noise(agent.size, "echo-agent")
    caller = rc.line_noise(agent.size, "echo-caller") + _delayed(agent, delay_ms, -24.0)
    call = rc.make_call({"inbound": caller, "outbound": agent}, {"inbound": [], "outbound": []})
    turns = [r for r in replay_offline(rc.wire_lines(call)) if isinstance(r, TurnRecord)]
    assert [t for t in turns if t.track == "inbound"] == []
    assert sum(t.speech_ms for t in turns if t.track == "outbound") > 5000  # the agent talks


def test_double_talk_at_equal_level_is_counted_as_overlap() -> None:
    a, b = rc.load_file("trn04"), rc.load_file("trn07")
    regions = rc.load_regions()
    ta = rc.merge_spans(r for rr in regions["trn04"].values() for r in rr)
    tb = rc.merge_spans(r for rr in regions["trn07"].values() for r in rr)
    b = b * (rc.active_rms(a, ta) / rc.active_rms(b, tb))  # the same active level
    n = min(a.size, b.size)
    call = rc.make_call(
        {
            "inbound": a[:n] + rc.line_noise(n, "dt-a"),
            "outbound": b[:n] + rc.line_noise(n, "dt-b"),
        },
        {"inbound": ta, "outbound": tb},
    )
    records = replay_offline(rc.wire_lines(call))
    summary = next(r for r in records if isinstance(r, StreamStopped)).summary
    true_overlap_ms = sum(max(0, min(e1, e2) - max(s1, s2)) for s1, e1 in ta for s2, e2 in tb)
    assert true_overlap_ms > 2000
    assert summary.overlap_ms is not None
    # labels are good to about ±100 ms per boundary: most of the double-talk must be found
    assert summary.overlap_ms >= 0.8 * true_overlap_ms
    assert summary.turn_counts["caller"] >= 2 and summary.turn_counts["agent"] >= 2
