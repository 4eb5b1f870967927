"""Both tracks of a stream on one 20 ms grid, analysed frame by frame together.

Each track's chunks are placed by ``TrackTimeline`` (timestamp → frame index on the call's
grid). Frame ``k`` of every track is then decoded (``audioop.ulaw2lin``), measured
(``audioop.rms``) and fed to that track's ``EnergyVad`` with the other track's recent level
(the bleed check), and the ``TurnTracker`` cuts turns from the VAD transitions. Stepping both
tracks together is what makes the cross-track fields of a turn final when it closes, and what
lets one track's VAD see the other's level.

A track that falls more than ``max_track_skew_ms`` behind the other is taken as silent for the
frames it has not delivered, so one stalled track cannot hold the other back (audio of it that
arrives later than that is dropped as ``late_media``).

Memory: each track keeps the decoded PCM of its open turn (or the last ~0.6 s when no turn is
open), 320 bytes per 20 ms, trimmed in 64-frame blocks; a turn is at most
``TurnParams.max_turn_ms`` long.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass

from mise_twilio.core import audio
from mise_twilio.core.errors import ProtocolError
from mise_twilio.core.messages import TRACKS, Track
from mise_twilio.core.timeline import DISCONTINUITY, TrackTimeline
from mise_twilio.core.turns import Turn, TurnParams, TurnTracker
from mise_twilio.core.vad import EnergyVad, VadParams

_SILENT_PCM = bytes(audio.FRAME_SAMPLES * audio.SAMPLE_WIDTH_BYTES)
_FRAME_BYTES = audio.FRAME_SAMPLES * audio.SAMPLE_WIDTH_BYTES
_TRIM_BLOCK_FRAMES = 64  # del on a bytearray moves memory: trim in blocks
_KEEP_BEHIND_FRAMES = 32  # with no open turn: VAD confirmation + pre-roll look back less


@dataclass(frozen=True, slots=True)
class Notice:
    """Input the analysis could not use: becomes a ``diagnostic`` record (``code`` is its
    code; ``sequence_number`` the message's, when the notice is about one message)."""

    code: str
    message: str
    sequence_number: int | None = None


_VERDICTS = {
    "duplicate_media": "{track} chunk repeated (timestamp {ts}); dropped",
    "timestamp_behind": "{track} timestamp {ts} is behind audio already placed; dropped",
    "timestamp_outlier": "{track} timestamp jump not confirmed by the next chunk; dropped",
}


@dataclass(frozen=True, slots=True)
class ClosedTurn:
    """A turn the tracker closed, with its audio: ``pcm`` is 16-bit 8 kHz mono PCM from
    ``turn.start_frame`` to ``turn.end_frame`` (320 bytes per frame), ``lost_samples`` the
    samples in that span Twilio never sent (filled with silence)."""

    turn: Turn
    pcm: bytes
    lost_samples: int


class _TrackPipe:
    """Timeline, VAD and the recent decoded audio of one track."""

    __slots__ = (
        "buf_start",
        "late_frames",
        "lost",
        "media_messages",
        "pcm",
        "recent_levels",
        "timeline",
        "track",
        "vad",
    )

    def __init__(self, track: Track, origin: int, vad: VadParams, max_gap_ms: int) -> None:
        self.track = track
        self.timeline = TrackTimeline(origin, max_gap_ms=max_gap_ms)
        self.vad = EnergyVad(vad)
        self.pcm = bytearray()  # decoded 16-bit PCM from frame ``buf_start`` on
        self.lost = array("H")  # lost samples per buffered frame
        self.buf_start: int | None = None
        # this track's last few frame levels: the other track's bleed reference (VadParams)
        self.recent_levels: deque[float] = deque(
            [audio.SILENCE_DBFS], maxlen=max(1, vad.bleed_lag_ms // audio.FRAME_MS + 1)
        )
        self.media_messages = 0
        self.late_frames = 0


class Lockstep:
    """The frame grid, the tracks' pipes and the turn tracker of one stream.

    Usage: ``push()`` each valid media chunk and ``take_output()`` after it; ``finish()`` once
    at the stream's end, then ``take_output()`` again. Frame indices are on the grid anchored
    at the first chunk pushed (its timestamp is ``origin_ms``).
    """

    def __init__(
        self,
        tracks: list[Track],
        *,
        vad: VadParams,
        turns: TurnParams,
        max_gap_ms: int,
        max_track_skew_ms: int,
    ) -> None:
        """``tracks``: the tracks listed in ``start`` (media on another one before analysis
        begins adds it; after, it is refused)."""
        self._tracks = list(tracks)
        self._vad = vad
        self._turn_params = turns
        self._max_gap_ms = max_gap_ms
        self._skew_frames = max(1, max_track_skew_ms // audio.FRAME_MS)
        self._pipes: dict[Track, _TrackPipe] = {}
        self._pipe_list: list[_TrackPipe] = []
        self._origin: int | None = None
        self.origin_ms = 0
        """Stream-clock ms of frame 0 (the first chunk's timestamp)."""
        self._cursor: int | None = None
        self._first_frame: int | None = None
        self._turns: TurnTracker | None = None
        self._output: list[ClosedTurn | Notice] = []

    # -- input -----------------------------------------------------------------------------

    def push(
        self,
        track: Track,
        timestamp_ms: int,
        payload: bytes,
        chunk: int | None,
        sequence_number: int | None = None,
    ) -> None:
        """Place one chunk and analyse every frame that is now complete on all tracks.

        A chunk the timeline drops (``duplicate_media``, ``timestamp_behind``,
        ``timestamp_outlier``) becomes a ``Notice``. Raises ``ProtocolError``
        (``unlisted_track``) for media on a track that joins after analysis began.
        """
        pipe = self._pipes.get(track)
        if pipe is None:
            self._admit(track, sequence_number)
        if self._origin is None:
            # The first valid chunk anchors the call's frame grid; pipes are made only now,
            # so every timeline is built on it.
            self._origin = timestamp_ms * audio.SAMPLES_PER_MS
            self.origin_ms = timestamp_ms
        if pipe is None:
            pipe = self._new_pipe(track)
        pipe.media_messages += 1
        verdict = pipe.timeline.push(timestamp_ms, payload, chunk)
        if verdict is not None:
            text = _VERDICTS[verdict].format(track=track, ts=timestamp_ms)
            self._output.append(Notice(verdict, text, sequence_number))
        self._advance(final=False)

    def finish(self) -> None:
        """End of stream: flush the timelines, analyse what is left, close every open turn."""
        for pipe in self._pipe_list:
            if pipe.timeline.finish():
                self._output.append(
                    Notice(
                        "timestamp_outlier", "a timestamp jump was never confirmed; chunk dropped"
                    )
                )
        self._advance(final=True)
        if self._turns is not None and self._cursor is not None:
            for turn in self._turns.flush(self._cursor):
                self._close(turn)

    # -- output ----------------------------------------------------------------------------

    def take_output(self) -> list[ClosedTurn | Notice]:
        """Turns closed and notices since the last call, in the order they happened."""
        out, self._output = self._output, []
        return out

    @property
    def tracks(self) -> list[Track]:
        """The tracks being analysed (listed in ``start``, or added before analysis began)."""
        return list(self._tracks)

    @property
    def cross_track(self) -> bool:
        """Both tracks are present: cross-track fields are computed."""
        return len(self._pipe_list) == 2

    @property
    def position_ms(self) -> int | None:
        """Stream clock ms up to which both tracks have been analysed (``None`` before)."""
        if self._cursor is None:
            return None
        return self.origin_ms + self._cursor * audio.FRAME_MS

    @property
    def span_ms(self) -> int:
        """Stream clock ms analysed so far, from the first frame."""
        if self._first_frame is None or self._cursor is None:
            return 0
        return (self._cursor - self._first_frame) * audio.FRAME_MS

    def track_position_ms(self, track: Track) -> int | None:
        """Stream clock ms where ``track``'s placed audio ends (``position_ms`` without it)."""
        pipe = self._pipes.get(track)
        if pipe is None or pipe.timeline.end_frame is None:
            return self.position_ms
        return self.origin_ms + pipe.timeline.end_frame * audio.FRAME_MS

    def lost_ms(self) -> dict[str, int]:
        """Per track: audio never sent (timestamp gaps) plus audio that came too late, ms."""
        return {
            p.track: p.timeline.lost_samples // audio.SAMPLES_PER_MS
            + p.late_frames * audio.FRAME_MS
            for p in self._pipe_list
        }

    def media_messages(self) -> dict[str, int]:
        """Per track: media chunks pushed."""
        return {p.track: p.media_messages for p in self._pipe_list}

    # -- internals -------------------------------------------------------------------------

    def _admit(self, track: Track, sequence_number: int | None) -> None:
        if self._turns is not None:
            # Analysis has started with a fixed set of tracks (the turn tracker's); a track
            # appearing mid-call cannot join it, and must not take the call down either.
            raise ProtocolError(
                "unlisted_track",
                f"media on {track!r}, not listed in start.tracks, after the call began; dropped",
                sequence_number=sequence_number,
            )
        if track not in self._tracks:
            text = f"media on {track!r}, not listed in start.tracks"
            self._output.append(Notice("unlisted_track", text, sequence_number))
            self._tracks.append(track)

    def _new_pipe(self, track: Track) -> _TrackPipe:
        assert self._origin is not None
        pipe = _TrackPipe(track, self._origin, self._vad, self._max_gap_ms)
        self._pipes[track] = pipe
        self._pipe_list = [self._pipes[t] for t in TRACKS if t in self._pipes]
        return pipe

    def _start_analysis(self) -> TurnTracker:
        """Once, at the first frames: a pipe for every listed track, and the turn tracker."""
        for track in self._tracks:
            if track not in self._pipes:
                self._new_pipe(track)
        self._turns = TurnTracker(
            [p.track for p in self._pipe_list],
            self._turn_params,
            cross_track=len(self._pipe_list) == 2,
            vad_lookback_frames=self._vad.lookback_frames,
        )
        return self._turns

    def _advance(self, *, final: bool) -> None:
        """Process every frame that all tracks have delivered (or that skew/finality allows)."""
        if self._origin is None:
            return
        if self._turns is None:
            self._start_analysis()
        pipes = self._pipe_list
        if self._cursor is None:
            firsts = [p.timeline.frames[0][0] for p in pipes if p.timeline.frames]
            if not firsts:
                return
            waiting = [p for p in pipes if p.timeline.end_frame is None]
            lead = max((p.timeline.end_frame or 0) for p in pipes)
            if waiting and not final and lead - min(firsts) <= self._skew_frames:
                return
            self._cursor = min(firsts)
            self._first_frame = self._cursor
        while True:
            k = self._cursor
            lead = -(1 << 62)
            for p in pipes:
                end = p.timeline.end_frame
                if end is not None and end > lead:
                    lead = end
            any_frame = False
            for p in pipes:
                frames = p.timeline.frames
                if frames and frames[0][0] <= k:
                    any_frame = True
                    continue
                if final or lead - k > self._skew_frames:
                    continue
                return  # this track has not delivered frame k yet: wait for it
            if not any_frame and (final or not any(p.timeline.frames for p in pipes)):
                return  # nothing left at or after k
            self._step(k)
            self._cursor = k + 1

    def _step(self, k: int) -> None:
        pipes = self._pipe_list
        levels: list[float] = []
        for p in pipes:
            frames = p.timeline.frames
            level = audio.SILENCE_DBFS
            pcm = _SILENT_PCM
            lost = 0
            while frames and frames[0][0] <= k:
                idx, ulaw, lost_samples = frames.popleft()
                if ulaw == DISCONTINUITY:
                    self._discontinuity(p, k)
                    continue
                if idx < k:
                    p.late_frames += 1
                    self._output.append(
                        Notice("late_media", f"{p.track} audio arrived after its time; dropped")
                    )
                    continue
                pcm = audio.ulaw_to_pcm16(ulaw)
                level = audio.rms_dbfs(pcm)
                lost = lost_samples
            if p.buf_start is None:
                p.buf_start = k
            p.pcm += pcm
            p.lost.append(lost)
            p.recent_levels.append(level)
            levels.append(level)
        turns = self._turns
        assert turns is not None
        closed: list[Turn] = []
        two = len(pipes) == 2
        for i, p in enumerate(pipes):
            other = max(pipes[1 - i].recent_levels) if two else None
            transition = p.vad.step(k, levels[i], other)
            if transition is not None:
                kind, frame = transition
                if kind == "start":
                    closed += turns.on_start(p.track, frame, k)
                else:
                    closed += turns.on_end(p.track, frame, k)
        closed += turns.tick(k)
        for turn in closed:
            self._close(turn)
        for p in pipes:
            self._trim(p, k)

    def _discontinuity(self, pipe: _TrackPipe, k: int) -> None:
        turns = self._turns
        assert turns is not None
        transition = pipe.vad.reset_speech()
        if transition is not None:
            for turn in turns.on_end(pipe.track, transition[1], k):
                self._close(turn)
        self._output.append(
            Notice(
                "discontinuity",
                f"{pipe.track} timestamps jumped more than {self._max_gap_ms} ms; not filled",
            )
        )

    def _trim(self, pipe: _TrackPipe, k: int) -> None:
        """Drop buffered audio no open or future turn can need (bounded memory per track)."""
        assert self._turns is not None and pipe.buf_start is not None
        keep_from = self._turns.open_turn_start(pipe.track)
        if keep_from is None:
            keep_from = k - _KEEP_BEHIND_FRAMES
        drop = keep_from - pipe.buf_start
        if drop >= _TRIM_BLOCK_FRAMES:
            del pipe.pcm[: drop * _FRAME_BYTES]
            del pipe.lost[:drop]
            pipe.buf_start += drop

    def _close(self, turn: Turn) -> None:
        pipe = self._pipes[turn.track]
        assert pipe.buf_start is not None
        lo = max(0, turn.start_frame - pipe.buf_start)
        hi = max(lo, turn.end_frame - pipe.buf_start)
        pcm = bytes(pipe.pcm[lo * _FRAME_BYTES : hi * _FRAME_BYTES])
        self._output.append(ClosedTurn(turn, pcm, sum(pipe.lost[lo:hi])))
