"""The call summary: whole-stream statistics from the turns a stream produced.

``CallStats`` is fed each turn record as it is emitted and builds the ``CallSummary`` of
``stream.stopped`` at the end. Definitions (``docs/architecture.md``, "Records"):

- ``talk_ms``: per speaker, the sum of turn ``speech_ms``; ``talk_ratio`` its share.
- ``silence_ms``: analysed time in which neither speaker's segments are speech;
  ``silence_incidents``: mutual silences longer than ``SILENCE_INCIDENT_MS``.
- ``overlap_ms``: the sum of the caller turns' ``overlap_ms`` (which equals the agent's sum:
  both are the intersection of the two speakers' segments).
- ``interruptions``: barge-ins by each speaker.
- ``response_latency``: agent turn start minus the end of the caller turn it answers.
- ``arousal``: per speaker, the mean and peak turn ``arousal``, the turn index of the peak and
  the least-squares trend per minute, over turns that have one (backchannels aside).
- ``escalation``: caller turns (backchannels aside) with ``arousal_rel`` ≥
  ``ESCALATION_AROUSAL_REL`` that either barged in or are the caller's first turn after an
  agent response whose latency was above the call's p95 response latency. The caller getting
  more activated than their usual right as they cut the agent off or after being kept waiting
  is the documented, inspectable definition of a frustration episode.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from mise_twilio.core.records import ArousalStats, CallSummary, LatencyStats, Speaker, TurnRecord

SILENCE_INCIDENT_MS = 4000
"""A mutual silence longer than this counts as a silence incident (dead air)."""
ESCALATION_AROUSAL_REL = 1.0
"""An escalating caller turn is at least this far above the caller's usual arousal."""
TREND_MIN_TURNS = 3
TREND_MIN_SPAN_MS = 30_000
"""The arousal trend needs this many turns spread over at least this long."""


@dataclass(frozen=True, slots=True)
class _TurnStat:
    speaker: Speaker
    start_ms: int
    end_ms: int
    speech_ms: int
    barge_in: bool | None
    backchannel: bool | None
    overlap_ms: int | None
    index: int
    arousal: float | None
    arousal_rel: float | None


class CallStats:
    """Accumulates what the summary needs from each turn record (a few ints per turn)."""

    def __init__(self) -> None:
        self._turns: list[_TurnStat] = []
        self._segments_ms: list[tuple[int, int]] = []

    def add(self, turn: TurnRecord) -> None:
        """Count one emitted turn."""
        self._turns.append(
            _TurnStat(
                turn.speaker,
                turn.start_ms,
                turn.end_ms,
                turn.speech_ms,
                turn.barge_in,
                turn.backchannel,
                turn.overlap_ms,
                turn.index,
                turn.arousal,
                turn.arousal_rel,
            )
        )
        self._segments_ms.extend(turn.segments)

    def summary(
        self,
        speakers: list[Speaker],
        *,
        span_ms: int,
        cross_track: bool,
        lost_ms: dict[str, int],
        media_messages: dict[str, int],
        diagnostics: int,
    ) -> CallSummary:
        """The summary over ``speakers`` (in track order). ``span_ms``: stream clock time
        analysed; ``cross_track``: both tracks present (else the cross-track fields are
        ``None``); the per-track counts and the diagnostic count go in as given."""
        stats = self._turns
        talk = {s: sum(t.speech_ms for t in stats if t.speaker == s) for s in speakers}
        total_talk = sum(talk.values())
        union = _union(self._segments_ms)
        silence_ms = max(0, span_ms - sum(e - s for s, e in union))
        incidents = sum(
            1 for (_, e1), (s2, _) in itertools.pairwise(union) if s2 - e1 > SILENCE_INCIDENT_MS
        )
        ordered = sorted(stats, key=lambda t: (t.start_ms, t.index))
        answers = _answers(ordered) if cross_track else []
        latency = _latency([ms for _, ms in answers]) if cross_track else None
        return CallSummary(
            duration_ms=span_ms,
            talk_ms=talk,
            talk_ratio={
                s: (round(v / total_talk, 4) if total_talk else 0.0) for s, v in talk.items()
            },
            turn_counts={s: sum(1 for t in stats if t.speaker == s) for s in speakers},
            overlap_ms=(
                sum(t.overlap_ms or 0 for t in stats if t.speaker == "caller")
                if cross_track
                else None
            ),
            silence_ms=silence_ms,
            silence_incidents=incidents,
            interruptions=(
                {s: sum(1 for t in stats if t.speaker == s and t.barge_in) for s in speakers}
                if cross_track
                else None
            ),
            response_latency=latency,
            arousal={s: _arousal_stats([t for t in stats if t.speaker == s]) for s in speakers},
            escalation=(
                _escalation(ordered, answers, latency.p95_ms) if latency is not None else None
            ),
            lost_ms=lost_ms,
            media_messages=media_messages,
            diagnostics=diagnostics,
        )


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _answers(ordered: list[_TurnStat]) -> list[tuple[_TurnStat, float]]:
    """(agent turn, response latency in ms) for every agent turn that answers a caller turn.

    An agent turn answers the latest caller turn (backchannels aside) that ended before the
    agent turn began, if no other agent turn began in between; barge-ins are not answers.
    ``ordered``: the turns by start.
    """
    out: list[tuple[_TurnStat, float]] = []
    pending_caller_end: int | None = None
    for t in ordered:
        if t.backchannel:
            continue
        if t.speaker == "caller":
            pending_caller_end = t.end_ms
        elif pending_caller_end is not None:
            if t.start_ms >= pending_caller_end:
                out.append((t, float(t.start_ms - pending_caller_end)))
            pending_caller_end = None
    return out


def _latency(latencies: list[float]) -> LatencyStats:
    """Agent turn start minus the end of the caller turn it answers, ms (``_answers``)."""
    if not latencies:
        return LatencyStats(count=0, p50_ms=None, p95_ms=None, max_ms=None)
    arr = np.asarray(latencies)
    return LatencyStats(
        count=len(latencies),
        p50_ms=float(np.percentile(arr, 50)),
        p95_ms=float(np.percentile(arr, 95)),
        max_ms=float(arr.max()),
    )


def _arousal_stats(turns: list[_TurnStat]) -> ArousalStats:
    rated = [t for t in turns if t.arousal is not None and not t.backchannel]
    if not rated:
        return ArousalStats(turns=0, mean=None, peak=None, peak_turn_index=None, trend_per_min=None)
    values = np.asarray([t.arousal for t in rated], dtype=np.float64)
    peak_at = int(np.argmax(values))
    trend: float | None = None
    minutes = np.asarray([t.start_ms for t in rated], dtype=np.float64) / 60_000.0
    span_ms = (minutes.max() - minutes.min()) * 60_000.0
    if len(rated) >= TREND_MIN_TURNS and span_ms >= TREND_MIN_SPAN_MS:
        mc = minutes - minutes.mean()
        trend = round(float(np.dot(mc, values - values.mean()) / np.dot(mc, mc)), 4)
    return ArousalStats(
        turns=len(rated),
        mean=round(float(values.mean()), 4),
        peak=float(values[peak_at]),
        peak_turn_index=rated[peak_at].index,
        trend_per_min=trend,
    )


def _escalation(
    ordered: list[_TurnStat], answers: list[tuple[_TurnStat, float]], p95_ms: float | None
) -> int:
    """The ``escalation`` count (see the module docstring); ``ordered``: turns by start."""
    slow = {id(agent) for agent, ms in answers if p95_ms is not None and ms > p95_ms}
    waiting = False  # a slow answer started and the caller has not spoken since
    count = 0
    for t in ordered:
        if t.backchannel:
            continue
        if id(t) in slow:
            waiting = True
        elif t.speaker == "caller":
            after_slow, waiting = waiting, False
            if (
                t.arousal_rel is not None
                and t.arousal_rel >= ESCALATION_AROUSAL_REL
                and (t.barge_in or after_slow)
            ):
                count += 1
    return count
