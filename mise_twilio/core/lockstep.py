"""Both tracks of a stream on one 20 ms grid, analysed together, whatever order they arrive in.

Each track's chunks are placed by ``TrackTimeline`` (timestamp → frame index on the call's
grid). Frame ``k`` is analysed once every track has delivered it: both tracks' frames are
decoded (``audioop.ulaw2lin``, one call per block), measured in blocks of up to five frames
(``vad.frame_features``, numpy) and stepped through one ``BandVad`` (each track's echo check
sees the other track), and the ``TurnTracker`` replays the VAD's decisions frame by frame. So
records depend only on each track's timestamps and payloads, never on how the two tracks'
messages interleave on the socket, and every cross-track field of a turn is final when the
turn closes.

Skew. A track may lag the other by up to ``max_track_skew_ms``: until then the other waits
for it (records come out that much later, never more). Beyond it (a stalled track, or Twilio
not sending a track while it is silent), the lagging track is taken as silent for the frames
it has not delivered and the call goes on; turns whose span had the other track missing that
way are flagged ``cross_track_partial``. Audio of it that then arrives late is still analysed,
never dropped: a separate one-track VAD goes over it and its turns join the tracker (also
flagged), with a ``late_media`` diagnostic; filled gaps (timestamp jumps: audio Twilio never
sent) are silence and are only counted in ``lost_ms``. ``max_track_skew_ms=None`` waits for
everything (offline replay: the result is exactly order-independent).

Memory per call, bounded: the frames a leading track delivers while the other lags (μ-law,
160 bytes per 20 ms: 40 KB at the 5 s default, unbounded with ``None``), the μ-law of each
track's open turn (or its last ~0.6 s: 160 bytes per 20 ms, up to ``TurnParams.max_turn_ms``:
960 KB for a 120 s monologue, ~25 KB for a typical 3 s turn; decoded to PCM once, when the
turn closes), the VAD's state (~10 KB) and the turn tracker's history (a few hundred
segments).
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass

import numpy as np

from mise_twilio.core import audio
from mise_twilio.core.errors import ProtocolError
from mise_twilio.core.messages import TRACKS, Track
from mise_twilio.core.timeline import DISCONTINUITY, SILENT_FRAME, TrackTimeline
from mise_twilio.core.turns import Turn, TurnParams, TurnTracker
from mise_twilio.core.vad import N_FEATURES, BandVad, VadModel, VadParams, frame_features

_FRAME_BYTES = audio.FRAME_SAMPLES  # μ-law: one byte per sample
_BLOCK_FRAMES = 5  # 100 ms: the VAD's numpy work is batched over this many frames
_TRIM_BLOCK_FRAMES = 64  # del on a bytearray moves memory: trim in blocks
_KEEP_BEHIND_FRAMES = 32  # with no open turn: VAD confirmation + pre-roll look back less
_TRIM_FROM_FRAMES = _KEEP_BEHIND_FRAMES + _TRIM_BLOCK_FRAMES  # buffered before a trim can drop
_RELEASED_SPANS = 64  # per track: the spans it was taken as silent (for the partial flag)


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
    samples in that span Twilio never sent (filled with silence). ``cross_track_partial``:
    the other track's audio for part of the span was not known when the turn was analysed
    (it lagged beyond the skew bound, or this turn was analysed late)."""

    turn: Turn
    pcm: bytes
    lost_samples: int
    cross_track_partial: bool


class _TrackPipe:
    """Timeline and recent audio (μ-law) of one track, and how it kept up."""

    __slots__ = (
        "buf_start",
        "late_next",
        "late_vad",
        "lost",
        "media_messages",
        "released",
        "released_from",
        "timeline",
        "track",
        "ulaw",
    )

    def __init__(self, track: Track, origin: int, max_gap_ms: int) -> None:
        self.track = track
        self.timeline = TrackTimeline(origin, max_gap_ms=max_gap_ms)
        # μ-law from frame ``buf_start`` on (half the memory of decoded PCM; a turn's span is
        # decoded once, when it closes)
        self.ulaw = bytearray()
        self.lost = array("H")  # lost samples per buffered frame
        self.buf_start: int | None = None
        self.media_messages = 0
        # [start, end) frame spans in which the track was taken as silent (skew bound)
        self.released: deque[tuple[int, int]] = deque(maxlen=_RELEASED_SPANS)
        self.released_from: int | None = None
        self.late_vad: BandVad | None = None  # analyses audio that came after its time
        self.late_next = 0


class Lockstep:
    """The frame grid, the tracks' pipes, the VAD and the turn tracker of one stream.

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
        max_track_skew_ms: int | None,
        vad_model: VadModel | None = None,
    ) -> None:
        """``tracks``: the tracks listed in ``start`` (media on another one before analysis
        begins adds it; after, it is refused). ``max_track_skew_ms``: how far one track may
        lag before the other goes on without it; ``None`` waits for everything."""
        self._tracks = list(tracks)
        self._vad_params = vad
        self._vad_model = vad_model
        self._turn_params = turns
        self._max_gap_ms = max_gap_ms
        self._skew_frames = (
            None if max_track_skew_ms is None else max(1, max_track_skew_ms // audio.FRAME_MS)
        )
        self._skew_ms = max_track_skew_ms
        self._pipes: dict[Track, _TrackPipe] = {}
        self._pipe_list: list[_TrackPipe] = []
        self._origin: int | None = None
        self.origin_ms = 0
        """Stream-clock ms of frame 0 (the first chunk's timestamp)."""
        self._cursor: int | None = None
        self._first_frame: int | None = None
        self._vad: BandVad | None = None
        self._turns: TurnTracker | None = None
        self._block: list[bytes] = []  # PCM of the frames stepped but not yet through the VAD
        self._block_start = 0
        self._last_tick: int | None = None
        self._output: list[ClosedTurn | Notice] = []
        self._lead = -(1 << 62)  # the leading track's end frame (no track has one yet)

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
        timeline = pipe.timeline
        verdict = timeline.push(timestamp_ms, payload, chunk)
        end = timeline.end_frame  # only ever moves forward
        if end is not None and end > self._lead:
            self._lead = end
        if verdict is not None:
            text = _VERDICTS[verdict].format(track=track, ts=timestamp_ms)
            self._output.append(Notice(verdict, text, sequence_number))
        self._advance(final=False)

    def finish(self) -> None:
        """End of stream: flush the timelines, analyse what is left, close every open turn."""
        for pipe in self._pipe_list:
            if pipe.timeline.finish():
                text = "a timestamp jump was never confirmed; chunk dropped"
                self._output.append(Notice("timestamp_outlier", text))
            end = pipe.timeline.end_frame
            if end is not None and end > self._lead:
                self._lead = end
        self._advance(final=True)
        self._run_block()
        turns = self._turns
        if turns is None or self._cursor is None:
            return
        now = self._cursor
        for pipe in self._pipe_list:
            self._end_late(pipe, now)
        assert self._vad is not None
        for ti, (_, frame) in self._vad.flush():
            self._close_all(turns.on_end(self._pipe_list[ti].track, frame, now))
        self._close_all(turns.flush(now))

    # -- output ----------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """``take_output()`` has something (checked per message, so it is cheap)."""
        return bool(self._output)

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
        """Per track: audio Twilio never sent (timestamp gaps, filled with silence), ms."""
        return {p.track: p.timeline.lost_samples // audio.SAMPLES_PER_MS for p in self._pipe_list}

    def media_messages(self) -> dict[str, int]:
        """Per track: media chunks pushed."""
        return {p.track: p.media_messages for p in self._pipe_list}

    # -- set-up ----------------------------------------------------------------------------

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
        pipe = _TrackPipe(track, self._origin, self._max_gap_ms)
        self._pipes[track] = pipe
        self._pipe_list = [self._pipes[t] for t in TRACKS if t in self._pipes]
        return pipe

    def _start_analysis(self) -> None:
        """Once, at the first frames: a pipe for every listed track, the VAD, the tracker."""
        for track in self._tracks:
            if track not in self._pipes:
                self._new_pipe(track)
        n = len(self._pipe_list)
        self._vad = BandVad(n, self._vad_params, self._vad_model)
        self._turns = TurnTracker(
            [p.track for p in self._pipe_list],
            self._turn_params,
            cross_track=n == 2,
            vad_lookback_frames=self._vad_params.lookback_frames,
        )

    # -- stepping --------------------------------------------------------------------------

    def _advance(self, *, final: bool) -> None:
        """Step every frame that all tracks have delivered (or that the skew bound or the end
        of the stream releases)."""
        if self._origin is None:
            return
        if self._turns is None:
            self._start_analysis()
        pipes = self._pipe_list
        skew = self._skew_frames
        if self._cursor is None:
            firsts = [p.timeline.frames[0][0] for p in pipes if p.timeline.frames]
            if not firsts:
                return
            waiting = any(p.timeline.end_frame is None for p in pipes)
            first_lead = max((p.timeline.end_frame or 0) for p in pipes)
            if waiting and not final and (skew is None or first_lead - min(firsts) <= skew):
                return
            self._cursor = self._block_start = min(firsts)
            self._first_frame = self._cursor
        lead = self._lead
        while True:
            k = self._cursor
            ready = True
            any_frame = False
            for p in pipes:
                frames = p.timeline.frames
                if frames:
                    # its frame k, or its next frame is later: frame k is silence for it
                    # (frames come in order, so nothing for k can still arrive but late audio)
                    any_frame = any_frame or frames[0][0] <= k
                elif not final and (skew is None or lead - k <= skew):
                    ready = False  # this track has not delivered frame k yet: wait for it
                    break
            if not ready:
                return
            if not any_frame and not any(p.timeline.frames for p in pipes):
                return  # nothing left at or after k
            self._step(k, final)
            self._cursor = k + 1
            if self._cursor % _BLOCK_FRAMES == 0:
                self._run_block()

    def _step(self, k: int, final: bool) -> None:
        """Take frame ``k`` of every track: its audio, or silence for a track whose frames
        start after ``k`` (before its first chunk, after a discontinuity) or that the skew
        bound released (remembered, for the partial flag)."""
        taken: list[tuple[bytes, int]] = []
        jumped: list[_TrackPipe] = []
        for p in self._pipe_list:
            frames = p.timeline.frames
            ulaw_k, lost = SILENT_FRAME, 0
            behind = not frames  # nothing at or after k yet
            while frames and frames[0][0] <= k:
                idx, ulaw, lost_samples = frames.popleft()
                if ulaw == DISCONTINUITY:
                    jumped.append(p)
                elif idx < k:
                    self._late(p, idx, ulaw, lost_samples)
                    behind = not frames
                else:
                    ulaw_k, lost = ulaw, lost_samples
                    behind = False
            if behind and not final:
                if p.released_from is None:
                    p.released_from = k
            else:
                self._end_late(p, k)
                if p.released_from is not None:
                    p.released.append((p.released_from, k))
                    p.released_from = None
            taken.append((ulaw_k, lost))
        for p in jumped:
            self._discontinuity(p, k)
        for p, (ulaw_k, lost) in zip(self._pipe_list, taken, strict=True):
            if p.buf_start is None:
                p.buf_start = k
            p.ulaw += ulaw_k
            p.lost.append(lost)
            self._block.append(ulaw_k)

    def _run_block(self) -> None:
        """Put the stepped frames through the VAD, then the tracker, frame by frame."""
        n_frames = len(self._block) // max(1, len(self._pipe_list))
        if not n_frames:
            return
        vad, turns = self._vad, self._turns
        assert vad is not None and turns is not None
        n_tracks = len(self._pipe_list)
        first = self._block_start
        pcm = np.frombuffer(audio.ulaw_to_pcm16(b"".join(self._block)), dtype=np.int16)
        # frames were appended track by track per frame: (n, tracks, 160) → (tracks, n, F)
        feats = frame_features(pcm.reshape(n_frames * n_tracks, audio.FRAME_SAMPLES))
        feats = feats.reshape(n_frames, n_tracks, N_FEATURES).transpose(1, 0, 2)
        # in frame order, inbound before outbound at the same frame (the VAD lists them track
        # by track)
        decisions = sorted(
            vad.step_block(first, np.ascontiguousarray(feats)), key=lambda d: (d[2], d[0])
        )
        self._block = []
        self._block_start = first + n_frames
        i = 0
        for j in range(first, first + n_frames):
            closed: list[Turn] = []
            while i < len(decisions) and decisions[i][2] == j:
                ti, (kind, frame), _ = decisions[i]
                track = self._pipe_list[ti].track
                if kind == "start":
                    closed += turns.on_start(track, frame, j)
                else:
                    closed += turns.on_end(track, frame, j)
                i += 1
            closed += turns.tick(j)
            self._last_tick = j
            self._close_all(closed)
            for p in self._pipe_list:
                # (the cheap test first: nothing can be dropped before this much is buffered)
                if p.buf_start is not None and j - p.buf_start >= _TRIM_FROM_FRAMES:
                    self._trim(p, j)

    def _discontinuity(self, pipe: _TrackPipe, k: int) -> None:
        self._run_block()  # the VAD and the tracker catch up to frame k first
        vad, turns = self._vad, self._turns
        assert vad is not None and turns is not None
        ended = vad.reset_speech(self._pipe_list.index(pipe))
        if ended is not None:
            self._close_all(turns.on_end(pipe.track, ended[1], k))
        self._output.append(
            Notice(
                "discontinuity",
                f"{pipe.track} timestamps jumped more than {self._max_gap_ms} ms; not filled",
            )
        )

    # -- audio that came after its time ----------------------------------------------------

    def _late(self, pipe: _TrackPipe, idx: int, ulaw: bytes, lost_samples: int) -> None:
        """A frame of ``pipe`` for a position already analysed (it lagged beyond the skew
        bound). Filled gaps are silence and only counted lost; audio is analysed by the
        track's late VAD and its turns join the tracker."""
        filled = lost_samples == audio.FRAME_SAMPLES
        if pipe.late_vad is None:
            if filled:
                return
            pipe.late_vad = BandVad(1, self._vad_params, self._vad_model)
            pipe.late_next = idx
            self._output.append(
                Notice(
                    "late_media",
                    f"{pipe.track} audio arrived more than {self._skew_ms} ms after the other "
                    "track's; analysed late, cross-track fields around it are partial",
                )
            )
        if idx != pipe.late_next:
            # not contiguous with the late audio so far (a discontinuity in between)
            self._end_late(pipe, idx)
            pipe.late_vad = BandVad(1, self._vad_params, self._vad_model)
        vad, turns = pipe.late_vad, self._turns
        assert vad is not None and turns is not None
        if pipe.buf_start is not None and pipe.buf_start <= idx:
            at = (idx - pipe.buf_start) * _FRAME_BYTES
            pipe.ulaw[at : at + _FRAME_BYTES] = ulaw  # the turn's audio is the real audio
        pcm = audio.ulaw_to_pcm16(ulaw)
        feats = frame_features(np.frombuffer(pcm, dtype=np.int16).reshape(1, -1))
        now = self._last_tick if self._last_tick is not None else idx
        for _, (kind, frame), _ in vad.step_block(idx, feats[None]):
            if kind == "start":
                self._close_all(turns.on_start(pipe.track, frame, now), late=True)
            else:
                self._close_all(turns.on_end(pipe.track, frame, now), late=True)
        pipe.late_next = idx + 1

    def _end_late(self, pipe: _TrackPipe, now: int) -> None:
        """The track caught up (or the stream ended): end speech its late VAD left open."""
        vad = pipe.late_vad
        if vad is None:
            return
        pipe.late_vad = None
        turns = self._turns
        assert turns is not None
        tick = self._last_tick if self._last_tick is not None else now
        for _, (_, frame) in vad.flush():
            self._close_all(turns.on_end(pipe.track, frame, tick), late=True)

    # -- turns out -------------------------------------------------------------------------

    def _trim(self, pipe: _TrackPipe, k: int) -> None:
        """Drop buffered audio no open or future turn can need (bounded memory per track)."""
        assert self._turns is not None and pipe.buf_start is not None
        keep_from = self._turns.open_turn_start(pipe.track)
        if keep_from is None:
            keep_from = k - _KEEP_BEHIND_FRAMES
        drop = min(keep_from, k - _KEEP_BEHIND_FRAMES) - pipe.buf_start
        if drop >= _TRIM_BLOCK_FRAMES:
            del pipe.ulaw[: drop * _FRAME_BYTES]
            del pipe.lost[:drop]
            pipe.buf_start += drop

    def _close_all(self, turns: list[Turn], *, late: bool = False) -> None:
        for turn in turns:
            pipe = self._pipes[turn.track]
            assert pipe.buf_start is not None
            lo = max(0, turn.start_frame - pipe.buf_start)
            hi = max(lo, turn.end_frame - pipe.buf_start)
            pcm = audio.ulaw_to_pcm16(bytes(pipe.ulaw[lo * _FRAME_BYTES : hi * _FRAME_BYTES]))
            partial = late or self._released_during(turn)
            self._output.append(ClosedTurn(turn, pcm, sum(pipe.lost[lo:hi]), partial))

    def _released_during(self, turn: Turn) -> bool:
        """A track (the other: its audio was missing; this one: its audio came late) was taken
        as silent by the skew bound during the turn's span."""
        if len(self._pipe_list) < 2:
            return False
        for p in self._pipe_list:
            spans = list(p.released)
            if p.released_from is not None:
                spans.append((p.released_from, turn.end_frame))
            if any(s < turn.end_frame and turn.start_frame < e for s, e in spans):
                return True
        return False
