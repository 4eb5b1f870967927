"""Speech segments → turns, and the cross-track fields of each turn.

Works in frame indices on the call grid (20 ms frames, see ``timeline.py``); the session
converts to ms. Both tracks are stepped in lockstep (``lockstep.py``), so when a turn closes the
other track is known up to the same instant and every cross-track field is final
(``docs/architecture.md``, "Turns").

Definitions (frames; ``p`` = ``TurnParams``):

- **Segment** (inter-pausal unit): one VAD on/off span ``[start, end)``.
- **Turn**: consecutive segments of one track while no pause reaches ``p.turn_pause_ms`` and the
  other speaker has not taken the turn over (held ``p.take_over_ms`` of speech that began
  after this turn's last segment began, while this speaker is silent). ``end_reason``: ``pause``,
  ``floor_taken``, ``max_duration`` or ``stream_end``.
- ``gap_before``: start minus the end of the other track's last segment that began before this
  turn (negative: began in overlap). ``None`` if there is none, or if that segment is still
  going when this turn closes (its end is not known yet: a backchannel inside a long turn).
- ``overlap``: frames where this turn's segments and the other track's segments coincide.
  Summed over a track's turns it equals the other track's sum (both are the intersection).
- ``backchannel``: at most ``p.backchannel_max_ms``, inside a turn of the other speaker that
  began before it and had speech after it ended (the other kept the floor).
- ``barge_in``: not a backchannel, began while the other was in a segment, and lasted at least
  ``p.interruption_min_ms``.
- ``interrupted``: the other barged in during this turn (a turn of theirs that began inside
  one of this turn's segments and lasted ``p.interruption_min_ms``) and this turn ended within
  ``p.yield_window_ms`` of that start.

These follow the floor-transfer offset of Heldner & Edlund (2010), "Pauses, gaps and overlaps in
conversations", J. Phonetics 38(4), and the backchannel/interruption distinctions common in turn-
taking studies (e.g. Gravano & Hirschberg 2011, Computer Speech & Language 25(3)). The record
value ``floor_taken`` keeps that literature's word for "the other speaker took the turn"; in
the code, "floor" alone means nothing (the VAD's level reference is the *noise floor*).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mise_twilio.core.audio import FRAME_MS
from mise_twilio.core.messages import Track

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class TurnParams:
    """Turn-taking parameters (all durations in ms).

    - ``turn_pause_ms`` 700: a speaker's own pause that ends the turn (within-turn pauses in
      conversation rarely exceed 500-700 ms; Heldner & Edlund 2010, J. Phonetics 38(4)).
    - ``take_over_ms`` 1000: the other speaker holding this long takes the turn over
      (``end_reason: floor_taken``).
    - ``interruption_min_ms`` 500: a turn started in the other's speech is a barge-in when it
      lasts this long; ``yield_window_ms`` 1000: the interrupted turn must end this soon after.
    - ``backchannel_max_ms`` 1000: at most this long, inside a turn of the other speaker that
      goes on afterwards ("uh huh", "right").
    - ``max_turn_ms`` 120000: a turn this long is cut (``end_reason: max_duration``).

    Raises ``ValueError`` when a duration is shorter than one 20 ms frame.
    """

    turn_pause_ms: int = field(default=700, metadata={"doc": "own pause that ends a turn"})
    take_over_ms: int = field(
        default=1000, metadata={"doc": "the other's speech that takes the turn over"}
    )
    interruption_min_ms: int = field(default=500, metadata={"doc": "shortest barge-in"})
    yield_window_ms: int = field(
        default=1000, metadata={"doc": "an interrupted turn ends this soon after the barge-in"}
    )
    backchannel_max_ms: int = field(default=1000, metadata={"doc": "longest backchannel"})
    max_turn_ms: int = field(default=120_000, metadata={"doc": "a longer turn is cut"})

    def __post_init__(self) -> None:
        for name in (
            "turn_pause_ms",
            "take_over_ms",
            "interruption_min_ms",
            "yield_window_ms",
            "backchannel_max_ms",
            "max_turn_ms",
        ):
            if getattr(self, name) < FRAME_MS:
                raise ValueError(f"{name} must be at least one {FRAME_MS} ms frame")


_HISTORY_SEGMENTS = 512
_HISTORY_TURNS = 64


@dataclass(frozen=True, slots=True)
class Turn:
    """A closed turn, in frames on the call grid (``end_frame`` exclusive)."""

    track: Track
    index: int
    start_frame: int
    end_frame: int
    segments: tuple[Span, ...]
    end_reason: str
    gap_before_frames: int | None = None
    overlap_frames: int | None = None
    barge_in: bool | None = None
    interrupted: bool | None = None
    backchannel: bool | None = None

    @property
    def speech_frames(self) -> int:
        return sum(end - start for start, end in self.segments)


@dataclass(slots=True)
class _OpenTurn:
    """A turn still open: its closed segments; a segment in progress is the track's
    ``seg_start`` (the one place that says speech is on)."""

    index: int
    start: int
    segments: list[Span] = field(default_factory=list)
    last_end: int = 0


@dataclass(slots=True)
class _TrackState:
    track: Track
    seg_start: int | None = None
    """Start of the segment in progress (speech is on), else ``None``."""
    segments: deque[Span] = field(default_factory=lambda: deque(maxlen=_HISTORY_SEGMENTS))
    turn: _OpenTurn | None = None
    turns: deque[Turn] = field(default_factory=lambda: deque(maxlen=_HISTORY_TURNS))

    def extent_end(self, now: int) -> int:
        """Where the open turn's speech reaches so far (``now`` while a segment is on)."""
        assert self.turn is not None
        return now if self.seg_start is not None else self.turn.last_end

    def speech_since(self, now: int) -> int:
        """Speech frames of the open turn up to ``now``."""
        assert self.turn is not None
        total = sum(e - s for s, e in self.turn.segments)
        if self.seg_start is not None:
            total += now - self.seg_start
        return total


class TurnTracker:
    """Cuts turns for one or two tracks stepped in lockstep.

    Call ``on_start``/``on_end`` with the VAD transitions of frame ``now`` (starts may lie a few
    frames back: confirmation and pre-roll), then ``tick(now)``; both return the turns they
    closed. ``flush(now)`` closes everything at the stream's end. ``cross_track`` false (one
    track, e.g. ``<Connect>`` inbound only) leaves the cross-track fields ``None``.
    """

    def __init__(
        self,
        tracks: list[Track],
        params: TurnParams,
        *,
        cross_track: bool,
        vad_lookback_frames: int,
    ) -> None:
        """``vad_lookback_frames``: how far behind the current frame a VAD may report a
        speech start (``VadParams.lookback_frames``); a pause is only final after it."""
        self._p = params
        self._states = {t: _TrackState(t) for t in tracks}
        self._cross = cross_track and len(tracks) == 2
        self._next_index = 0
        self._pause = max(1, params.turn_pause_ms // FRAME_MS)
        self._lookback = vad_lookback_frames
        self._take_over = max(1, params.take_over_ms // FRAME_MS)
        self._max_turn = max(1, params.max_turn_ms // FRAME_MS)
        self._int_min = max(1, params.interruption_min_ms // FRAME_MS)
        self._yield = max(1, params.yield_window_ms // FRAME_MS)
        self._bc_max = max(1, params.backchannel_max_ms // FRAME_MS)

    def open_turn_start(self, track: Track) -> int | None:
        """Start frame of the track's open turn (audio from here on is still needed)."""
        turn = self._states[track].turn
        return None if turn is None else turn.start

    def on_start(self, track: Track, start: int, now: int) -> list[Turn]:
        state = self._states[track]
        closed: list[Turn] = []
        turn = state.turn
        if turn is not None and state.seg_start is None:
            start = max(start, turn.last_end)
            if start - turn.last_end >= self._pause:
                closed.append(self._close(state, now, self._pause_reason(state)))
                turn = None
        if turn is None:
            turn = _OpenTurn(index=self._next_index, start=start, last_end=start)
            self._next_index += 1
            state.turn = turn
        if state.seg_start is None:
            state.seg_start = start
        return closed

    def on_end(self, track: Track, end: int, now: int) -> list[Turn]:
        state = self._states[track]
        seg_start = state.seg_start
        if seg_start is None:
            return []
        end = max(end, seg_start + 1)
        state.segments.append((seg_start, end))
        state.seg_start = None
        turn = state.turn
        if turn is not None:
            turn.segments.append((seg_start, end))
            turn.last_end = end
        return []

    def tick(self, now: int) -> list[Turn]:
        closed: list[Turn] = []
        for state in self._states.values():
            turn = state.turn
            if turn is None:
                continue
            if state.seg_start is None:
                if now - turn.last_end >= self._pause + self._lookback:
                    closed.append(self._close(state, now, self._pause_reason(state)))
                elif self._taken_over(state, now):
                    closed.append(self._close(state, now, "floor_taken"))
            elif now - turn.start >= self._max_turn:
                # Cut a monologue: close at ``now`` and go on in a new turn.
                state.segments.append((state.seg_start, now))
                turn.segments.append((state.seg_start, now))
                turn.last_end = now
                state.seg_start = None
                closed.append(self._close(state, now, "max_duration"))
                state.seg_start = now
                state.turn = _OpenTurn(index=self._next_index, start=now, last_end=now)
                self._next_index += 1
        return closed

    def flush(self, now: int) -> list[Turn]:
        """Stream end: close open segments at ``now`` and every open turn (``stream_end``)."""
        for state in self._states.values():
            if state.seg_start is not None:
                self.on_end(state.track, now, now)
        open_states = [s for s in self._states.values() if s.turn is not None]
        open_states.sort(key=lambda s: s.turn.start if s.turn else 0)
        return [self._close(s, now, "stream_end") for s in open_states]

    # -- internals -----------------------------------------------------------------------

    def _other(self, state: _TrackState) -> _TrackState | None:
        if not self._cross:
            return None
        for other in self._states.values():
            if other is not state:
                return other
        return None

    def _pause_reason(self, state: _TrackState) -> str:
        other = self._other(state)
        turn = state.turn
        if other is None or other.turn is None or turn is None:
            return "pause"
        last_seg_start = turn.segments[-1][0] if turn.segments else turn.start
        return "floor_taken" if other.turn.start > last_seg_start else "pause"

    def _taken_over(self, state: _TrackState, now: int) -> bool:
        other = self._other(state)
        turn = state.turn
        if other is None or other.turn is None or turn is None:
            return False
        last_seg_start = turn.segments[-1][0] if turn.segments else turn.start
        return other.turn.start > last_seg_start and other.speech_since(now) >= self._take_over

    def _close(self, state: _TrackState, now: int, reason: str) -> Turn:
        turn = state.turn
        assert turn is not None
        state.turn = None
        segments = tuple(turn.segments) or ((turn.start, max(turn.start + 1, turn.last_end)),)
        start, end = segments[0][0], segments[-1][1]
        other = self._other(state)
        if other is None:
            closed = Turn(state.track, turn.index, start, end, segments, reason)
        else:
            closed = self._with_cross(state.track, turn.index, segments, reason, other, now)
        state.turns.append(closed)
        return closed

    def _with_cross(
        self,
        track: Track,
        index: int,
        segments: tuple[Span, ...],
        reason: str,
        other: _TrackState,
        now: int,
    ) -> Turn:
        start, end = segments[0][0], segments[-1][1]
        other_segs = list(other.segments)
        if other.seg_start is not None:
            other_segs.append((other.seg_start, now))

        overlap = 0
        for s1, e1 in segments:
            for s2, e2 in other_segs:
                if s2 < e1 and s1 < e2:
                    overlap += min(e1, e2) - max(s1, s2)

        gap_before: int | None = None
        before = [seg for seg in other_segs if seg[0] < start]
        if before:
            last = before[-1]
            still_open = other.seg_start is not None and last[0] == other.seg_start
            gap_before = None if still_open else start - last[1]

        other_speaking_at_start = any(s2 <= start < e2 for s2, e2 in other_segs)

        backchannel = False
        if end - start <= self._bc_max:
            for o_start, o_has_after in self._other_turn_spans(other, end, now):
                if o_start < start and o_has_after:
                    backchannel = True
                    break

        barge_in = (not backchannel) and other_speaking_at_start and end - start >= self._int_min

        interrupted = False
        for o_start, o_extent_end in self._other_turn_starts(other, now):
            if not (start < o_start < end):
                continue
            if not any(s1 <= o_start < e1 for s1, e1 in segments):
                continue
            if o_extent_end - o_start >= self._int_min and end - o_start <= self._yield:
                interrupted = True
                break

        return Turn(
            track,
            index,
            start,
            end,
            segments,
            reason,
            gap_before_frames=gap_before,
            overlap_frames=overlap,
            barge_in=barge_in,
            interrupted=interrupted,
            backchannel=backchannel,
        )

    @staticmethod
    def _other_turn_spans(other: _TrackState, end: int, now: int) -> list[tuple[int, bool]]:
        """(turn start, whether it had speech after ``end``) for the other track's turns."""
        spans = [(t.start_frame, t.end_frame > end) for t in other.turns]
        if other.turn is not None:
            spans.append((other.turn.start, other.extent_end(now) > end))
        return spans

    @staticmethod
    def _other_turn_starts(other: _TrackState, now: int) -> list[tuple[int, int]]:
        """(turn start, extent end so far) for the other track's turns, open one included."""
        spans = [(t.start_frame, t.end_frame) for t in other.turns]
        if other.turn is not None:
            spans.append((other.turn.start, other.extent_end(now)))
        return spans
