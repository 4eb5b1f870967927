"""CallSession: the sans-I/O state machine of one Twilio Media Stream.

Modelled on websockets' sans-I/O ``Protocol``: feed it what arrived (``receive_text``,
``receive_eof``, ``close``), then drain ``take_events()``. It opens no sockets, reads no clock
(wall-clock times come in as arguments) and logs nothing; every problem becomes a ``diagnostic``
record and the call goes on.

Pipeline per media message: parse → demultiplex on ``media.track`` → ``TrackTimeline`` (place by
timestamp, fill gaps) → 20 ms frames. Frames of both tracks are then processed in lockstep on the
shared grid: frame ``k`` of every track is decoded (``audioop.ulaw2lin``), measured
(``audioop.rms``) and fed to its ``EnergyVad`` with the other track's level (bleed check), and the
``TurnTracker`` cuts turns. A track that falls more than ``max_track_skew_ms`` behind the other is
treated as silent for the frames it has not delivered, so one stalled track cannot hold the other
back. A closed turn is measured once (``features.measure_turn``, numpy) and becomes a record.
"""

from __future__ import annotations

import hmac
import itertools
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from mise_twilio.core import audio, features
from mise_twilio.core.errors import ProtocolError
from mise_twilio.core.messages import (
    AnyInbound,
    ConnectedMessage,
    DtmfMessage,
    MarkMessage,
    MediaMessage,
    StartMessage,
    StopMessage,
    UnknownMessage,
    decode_payload,
    parse_message,
)
from mise_twilio.core.records import (
    SPEAKER_BY_TRACK,
    AnyRecord,
    CallSummary,
    Diagnostic,
    DtmfEvent,
    Energy,
    LatencyStats,
    MarkEvent,
    MediaFormat,
    Pitch,
    StopReason,
    StreamStarted,
    StreamStopped,
    TurnRecord,
)
from mise_twilio.core.timeline import DISCONTINUITY, TrackTimeline
from mise_twilio.core.turns import Turn, TurnTracker
from mise_twilio.core.vad import EnergyVad, VadParams

TRACKS = ("inbound", "outbound")
_SILENT_PCM = bytes(audio.FRAME_SAMPLES * audio.SAMPLE_WIDTH_BYTES)
_FRAME_BYTES = audio.FRAME_SAMPLES * audio.SAMPLE_WIDTH_BYTES
_SILENCE_INCIDENT_MS = 4000


@dataclass(frozen=True, slots=True)
class SessionParams:
    """Per-stream limits and behaviour (built from ``config.Settings`` at the edge).

    - ``max_message_bytes``: a larger text frame is dropped unparsed (``message_too_large``);
      the server enforces the same limit on the socket.
    - ``max_chunk_ms``: one media payload longer than this is dropped (``chunk_too_long``):
      Twilio sends 20 ms chunks, and a huge one would shift the whole timeline.
    - ``max_timestamp_ms``: ``media.timestamp`` outside ``[0, this]`` is rejected
      (``bad_timestamp``): no Twilio call streams for six hours, and a wild value must not
      become the call's clock origin.
    - ``max_gap_ms``: a timestamp jump above this is a discontinuity, not filled with silence.
    - ``max_track_skew_ms``: how far one track may run ahead of a silent one before the silent
      one is taken as silence (bounds how late a turn record can be).
    - ``max_diagnostics_per_code``: diagnostics of one code beyond this are only counted, and
      one summary diagnostic is emitted at the end.
    - ``max_custom_parameters``: Twilio allows 99 (REST); more are dropped with a diagnostic.
    - ``expected_api_key``: when set, ``start.customParameters.api_key`` must equal it
      (constant-time compare); otherwise the session is rejected and emits nothing.
    - ``measure_features``: compute energy/pitch/rate per turn (numpy, once per turn).
    - ``keep_turn_audio``: keep each turn's PCM for ``take_turn_audio()``.
    """

    vad: VadParams = field(default_factory=VadParams)
    max_message_bytes: int = 64 * 1024
    max_chunk_ms: int = 1000
    max_gap_ms: int = 5000
    max_timestamp_ms: int = 6 * 3600 * 1000
    max_track_skew_ms: int = 1000
    max_diagnostics_per_code: int = 10
    max_custom_parameters: int = 99
    expected_api_key: str | None = None
    measure_features: bool = True
    keep_turn_audio: bool = False


class _TrackPipe:
    """Timeline, VAD and the recent decoded audio of one track."""

    __slots__ = (
        "buf_start",
        "lost",
        "lost_frames_total",
        "media_messages",
        "pcm",
        "recent_levels",
        "timeline",
        "track",
        "vad",
    )

    def __init__(self, track: str, origin: int, params: SessionParams) -> None:
        self.track = track
        self.timeline = TrackTimeline(origin, max_gap_ms=params.max_gap_ms)
        self.vad = EnergyVad(params.vad)
        self.pcm = bytearray()  # decoded 16-bit PCM from frame ``buf_start`` on
        self.lost = array("H")  # lost samples per buffered frame
        self.buf_start: int | None = None
        # this track's last few frame levels: the other track's bleed reference (VadParams)
        self.recent_levels: deque[float] = deque(
            [audio.FLOOR_DBFS], maxlen=max(1, params.vad.bleed_lag_ms // audio.FRAME_MS + 1)
        )
        self.media_messages = 0
        self.lost_frames_total = 0


@dataclass(slots=True)
class _TurnStat:
    speaker: str
    start_ms: int
    end_ms: int
    speech_ms: int
    barge_in: bool | None
    backchannel: bool | None
    overlap_ms: int | None


class CallSession:
    """One Twilio Media Stream, from ``connected`` to ``stop``.

    Usage::

        session = CallSession(SessionParams())
        session.receive_text(frame_text, received_at=time.time())
        for record in session.take_events(): ...
        session.receive_eof()   # socket closed without ``stop``

    ``state`` is ``awaiting_start``, ``streaming`` or ``closed``; ``rejected`` holds the reason
    when the stream was refused (bad api_key): then nothing is emitted and the edge should close
    the socket with 1008.
    """

    def __init__(self, params: SessionParams | None = None) -> None:
        self.params = params or SessionParams()
        self.state = "awaiting_start"
        self.rejected: str | None = None
        self.stop_reason: StopReason | None = None
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.account_sid: str | None = None
        self.tracks: list[str] = []
        self.custom_parameters: dict[str, str] = {}
        self.protocol_version: str | None = None
        self.last_call_status: str | None = None
        self.summary: CallSummary | None = None
        self._events: list[AnyRecord] = []
        self._turn_audio: list[tuple[str, bytes]] = []
        self._started_wall: float | None = None
        self._pipes: dict[str, _TrackPipe] = {}
        self._pipe_list: list[_TrackPipe] = []
        self._origin: int | None = None
        self._origin_ms = 0
        self._cursor: int | None = None
        self._first_frame: int | None = None
        self._turns: TurnTracker | None = None
        self._skew_frames = max(1, self.params.max_track_skew_ms // audio.FRAME_MS)
        self._diag_counts: Counter[str] = Counter()
        self._unnumbered: Counter[str] = Counter()
        self._diag_emitted = 0
        self._turn_stats: list[_TurnStat] = []
        self._segments_ms: dict[str, list[tuple[int, int]]] = {}
        self.messages: Counter[str] = Counter()

    # -- input -----------------------------------------------------------------------------

    def receive_text(self, text: str | bytes, *, received_at: float | None = None) -> None:
        """Feed one WebSocket text frame. ``received_at``: epoch seconds (edge clock) or None."""
        if self.state == "closed":
            return
        if len(text) > self.params.max_message_bytes:
            self.messages["invalid"] += 1
            self._diag(
                "message_too_large",
                f"{len(text)} byte message over the {self.params.max_message_bytes} byte limit; "
                "dropped",
                None,
            )
            return
        try:
            message = parse_message(text)
        except ProtocolError as exc:
            self.messages["invalid"] += 1
            self._diag(exc.code, exc.message, exc.sequence_number)
            return
        self.receive_message(message, received_at=received_at)

    def receive_message(self, message: AnyInbound, *, received_at: float | None = None) -> None:
        """Feed one already-parsed message (``messages.parse_message``)."""
        if self.state == "closed":
            return
        self.messages[message.event if not isinstance(message, UnknownMessage) else "unknown"] += 1
        try:
            if isinstance(message, MediaMessage):
                self._on_media(message)
            elif isinstance(message, StartMessage):
                self._on_start(message, received_at)
            elif isinstance(message, ConnectedMessage):
                self.protocol_version = message.version
            elif isinstance(message, StopMessage):
                self._require_started("stop", message.sequence_number)
                if self._check_stream(message.stream_sid, message.sequence_number):
                    self.close("stop", at=received_at)
            elif isinstance(message, DtmfMessage):
                self._on_dtmf(message)
            elif isinstance(message, MarkMessage):
                self._on_mark(message)
            else:
                self._diag(
                    "unknown_event",
                    f"unknown event {message.event!r} ignored",
                    message.sequence_number,
                )
        except ProtocolError as exc:
            self._diag(exc.code, exc.message, exc.sequence_number)

    def receive_eof(self, *, at: float | None = None) -> None:
        """The socket closed. Without a prior ``stop`` this ends the stream (reason ``eof``)."""
        self.close("eof", at=at)

    def close(self, reason: StopReason, *, at: float | None = None) -> None:
        """End the stream: flush both tracks, close open turns (``stream_end``), emit
        ``stream.stopped`` with the call summary. Idempotent."""
        if self.state == "closed":
            return
        was_streaming = self.state == "streaming"
        self.state = "closed"
        self.stop_reason = reason
        if not was_streaming or self.rejected:
            return
        for pipe in self._pipe_list:
            code = pipe.timeline.finish()
            if code:
                self._diag(code, "a timestamp jump was never confirmed; chunk dropped", None)
        self._advance(final=True)
        if self._turns is not None and self._cursor is not None:
            for turn in self._turns.flush(self._cursor):
                self._emit_turn(turn)
        for code, count in sorted(self._diag_counts.items()):
            if count > self.params.max_diagnostics_per_code:
                self._emit_diag(
                    code,
                    f"{count - self.params.max_diagnostics_per_code} more {code} not reported",
                    None,
                    count,
                )
        self.summary = self._summary()
        self._events.append(
            StreamStopped(
                id=f"{self.stream_sid}:stream.stopped",
                **self._ids(),
                reason=reason,
                summary=self.summary,
                last_call_status=self.last_call_status,
                stopped_at=_utc(at),
            )
        )

    # -- output ----------------------------------------------------------------------------

    def take_events(self) -> list[AnyRecord]:
        """Records produced since the last call, in order. Empty for a rejected stream."""
        events, self._events = self._events, []
        return [] if self.rejected else events

    def take_turn_audio(self) -> list[tuple[str, bytes]]:
        """(turn id, 16-bit 8 kHz mono PCM) per closed turn, with ``keep_turn_audio``."""
        out, self._turn_audio = self._turn_audio, []
        return out

    @property
    def position_ms(self) -> int | None:
        """Stream clock ms up to which both tracks have been analysed."""
        if self._cursor is None:
            return None
        return self._origin_ms + self._cursor * audio.FRAME_MS

    # -- message handlers ------------------------------------------------------------------

    def _on_start(self, message: StartMessage, received_at: float | None) -> None:
        if self.state != "awaiting_start":
            self._diag("duplicate_start", "second start message ignored", message.sequence_number)
            return
        start = message.start
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate, fmt.channels) != ("audio/x-mulaw", 8000, 1):
            self._diag(
                "unsupported_media_format",
                f"expected audio/x-mulaw 8000 Hz mono, got {fmt.encoding} {fmt.sample_rate} Hz "
                f"x{fmt.channels}; media will be ignored",
                message.sequence_number,
            )
        params = dict(start.custom_parameters)
        expected = self.params.expected_api_key
        if expected is not None:
            given = params.get("api_key", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                self.rejected = "api_key"
                self.state = "closed"
                self.stop_reason = "rejected"
                self.stream_sid, self.call_sid = message.stream_sid, start.call_sid
                return
        params.pop("api_key", None)  # a secret: never forwarded into records
        if len(params) > self.params.max_custom_parameters:
            self._diag(
                "too_many_custom_parameters",
                f"{len(params)} custom parameters; kept the first "
                f"{self.params.max_custom_parameters}",
                message.sequence_number,
            )
            params = dict(list(params.items())[: self.params.max_custom_parameters])
        self.stream_sid = message.stream_sid
        self.call_sid = start.call_sid
        self.account_sid = start.account_sid
        self.custom_parameters = params
        tracks = []
        for name in start.tracks:
            norm = _normalise_track(name)
            if norm in TRACKS and norm not in tracks:
                tracks.append(norm)
            else:
                self._diag("unknown_track", f"track {name!r} ignored", message.sequence_number)
        self.tracks = tracks or ["inbound"]
        self._media_ok = fmt.encoding == "audio/x-mulaw" and fmt.sample_rate == 8000
        self._started_wall = received_at
        self.state = "streaming"
        self._events.append(
            StreamStarted(
                id=f"{self.stream_sid}:stream.started",
                **self._ids(),
                tracks=list(start.tracks),
                media_format=MediaFormat(
                    encoding=fmt.encoding, sample_rate_hz=fmt.sample_rate, channels=fmt.channels
                ),
                custom_parameters=params,
                protocol_version=self.protocol_version,
                received_at=_utc(received_at),
            )
        )

    def _require_started(self, event: str, seq: int | None) -> None:
        """Raise ``{event}_before_start`` unless ``start`` was accepted.

        Before ``start`` the session has no ``streamSid`` to check a message against, so a
        stray ``stop`` (or media, mark, dtmf) from anywhere would otherwise act on this stream:
        a ``stop`` closed it and the whole call was lost."""
        if self.state != "streaming":
            raise ProtocolError(
                f"{event}_before_start", f"{event} before start ignored", sequence_number=seq
            )

    def _on_media(self, message: MediaMessage) -> None:
        seq = message.sequence_number
        self._require_started("media", seq)
        self._check_stream_or_raise(message.stream_sid, seq)
        if not self._media_ok:
            return
        media = message.media
        track = _normalise_track(media.track)
        pipe = self._pipes.get(track)
        if pipe is None:
            self._admit_track(track, seq)
        if not 0 <= media.timestamp <= self.params.max_timestamp_ms:
            raise ProtocolError(
                "bad_timestamp",
                f"media.timestamp {media.timestamp} outside 0..{self.params.max_timestamp_ms} ms",
                sequence_number=seq,
            )
        payload = decode_payload(media.payload)
        if not payload:
            raise ProtocolError("empty_payload", "media.payload is empty", sequence_number=seq)
        if len(payload) > self.params.max_chunk_ms * audio.SAMPLES_PER_MS:
            raise ProtocolError(
                "chunk_too_long",
                f"{len(payload)} byte media chunk is over {self.params.max_chunk_ms} ms; dropped",
                sequence_number=seq,
            )
        if self._origin is None:
            # The first valid chunk anchors the call's frame grid; pipes are made only now,
            # so every timeline is built on it.
            self._origin = media.timestamp * audio.SAMPLES_PER_MS
            self._origin_ms = media.timestamp
        if pipe is None:
            pipe = self._new_pipe(track)
        pipe.media_messages += 1
        verdict = pipe.timeline.push(media.timestamp, payload, media.chunk)
        if verdict is not None:
            self._diag(verdict, _VERDICTS[verdict].format(track=track, ts=media.timestamp), seq)
        self._advance(final=False)

    def _on_dtmf(self, message: DtmfMessage) -> None:
        self._require_started("dtmf", message.sequence_number)
        self._check_stream_or_raise(message.stream_sid, message.sequence_number)
        seq = message.sequence_number
        self._events.append(
            DtmfEvent(
                id=self._event_id("dtmf", seq),
                **self._ids(),
                digit=message.dtmf.digit,
                track=message.dtmf.track,
                sequence_number=seq,
                at_ms=self._track_position_ms("inbound"),
            )
        )

    def _on_mark(self, message: MarkMessage) -> None:
        self._require_started("mark", message.sequence_number)
        self._check_stream_or_raise(message.stream_sid, message.sequence_number)
        seq = message.sequence_number
        self._events.append(
            MarkEvent(
                id=self._event_id("mark", seq),
                **self._ids(),
                name=message.mark.name,
                sequence_number=seq,
                at_ms=self._track_position_ms("inbound"),
            )
        )

    # -- lockstep analysis -------------------------------------------------------------------

    def _admit_track(self, track: str, seq: int | None) -> None:
        """Check that media on a track with no pipe yet may start one; raises otherwise."""
        if track not in TRACKS:
            raise ProtocolError(
                "unknown_track", f"media on unknown track {track!r}", sequence_number=seq
            )
        if self._turns is not None:
            # Analysis has started with a fixed set of tracks (the turn tracker's); a track
            # appearing mid-call cannot join it, and must not take the call down either.
            raise ProtocolError(
                "unlisted_track",
                f"media on {track!r}, not listed in start.tracks, after the call began; dropped",
                sequence_number=seq,
            )
        if track not in self.tracks:
            self._diag("unlisted_track", f"media on {track!r}, not listed in start.tracks", seq)
            self.tracks.append(track)

    def _new_pipe(self, track: str) -> _TrackPipe:
        assert self._origin is not None
        pipe = _TrackPipe(track, self._origin, self.params)
        self._pipes[track] = pipe
        self._pipe_list = [self._pipes[t] for t in TRACKS if t in self._pipes]
        return pipe

    def _start_analysis(self) -> None:
        """Once, at the first frames: a pipe for every listed track, and the turn tracker."""
        for track in self.tracks:
            if track not in self._pipes:
                self._new_pipe(track)
        self._turns = TurnTracker(
            [p.track for p in self._pipe_list],
            self.params.vad,
            cross_track=len(self._pipe_list) == 2,
        )

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
            level = audio.FLOOR_DBFS
            pcm = _SILENT_PCM
            lost = 0
            while frames and frames[0][0] <= k:
                idx, ulaw, lost_samples = frames.popleft()
                if ulaw == DISCONTINUITY:
                    self._discontinuity(p, k)
                    continue
                if idx < k:
                    p.lost_frames_total += 1
                    self._diag(
                        "late_media", f"{p.track} audio arrived after its time; dropped", None
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
            self._emit_turn(turn)
        for p in pipes:
            self._trim(p, k)

    def _discontinuity(self, pipe: _TrackPipe, k: int) -> None:
        turns = self._turns
        assert turns is not None
        transition = pipe.vad.reset_speech()
        if transition is not None:
            for turn in turns.on_end(pipe.track, transition[1], k):
                self._emit_turn(turn)
        self._diag(
            "discontinuity",
            f"{pipe.track} timestamps jumped more than {self.params.max_gap_ms} ms; not filled",
            None,
        )

    def _trim(self, pipe: _TrackPipe, k: int) -> None:
        """Drop buffered audio no open or future turn can need (bounded memory per track)."""
        assert self._turns is not None and pipe.buf_start is not None
        keep_from = self._turns.open_turn_start(pipe.track)
        if keep_from is None:
            keep_from = k - 32  # VAD confirmation + pre-roll look back at most a few frames
        drop = keep_from - pipe.buf_start
        if drop >= 64:  # trim in blocks: del on a bytearray moves memory
            del pipe.pcm[: drop * _FRAME_BYTES]
            del pipe.lost[:drop]
            pipe.buf_start += drop

    # -- records ---------------------------------------------------------------------------

    def _emit_turn(self, turn: Turn) -> None:
        pipe = self._pipes[turn.track]
        frame_ms = audio.FRAME_MS
        start_ms = self._origin_ms + turn.start_frame * frame_ms
        end_ms = self._origin_ms + turn.end_frame * frame_ms
        segments = [
            (self._origin_ms + s * frame_ms, self._origin_ms + e * frame_ms)
            for s, e in turn.segments
        ]
        speech_ms = turn.speech_frames * frame_ms
        assert pipe.buf_start is not None
        lo = max(0, turn.start_frame - pipe.buf_start)
        hi = max(lo, turn.end_frame - pipe.buf_start)
        pcm = bytes(pipe.pcm[lo * _FRAME_BYTES : hi * _FRAME_BYTES])
        lost_ms = sum(pipe.lost[lo:hi]) // audio.SAMPLES_PER_MS
        energy = pitch = None
        rate = None
        if self.params.measure_features and pcm:
            samples = np.frombuffer(pcm, dtype=np.int16)
            mask = np.zeros(len(samples) // audio.FRAME_SAMPLES, dtype=np.bool_)
            for s, e in turn.segments:
                mask[max(0, s - turn.start_frame) : max(0, e - turn.start_frame)] = True
            measured = features.measure_turn(samples, mask)
            energy = Energy(
                mean_dbfs=round(measured.energy.mean_dbfs, 2),
                p95_dbfs=round(measured.energy.p95_dbfs, 2),
                peak_dbfs=round(measured.energy.peak_dbfs, 2),
                dynamic_range_db=round(measured.energy.dynamic_range_db, 2),
            )
            mp = measured.pitch
            pitch = Pitch(
                median_hz=_round(mp.median_hz, 1),
                iqr_semitones=_round(mp.iqr_semitones, 2),
                voiced_ratio=round(mp.voiced_ratio, 3),
                slope_semitones_per_s=_round(mp.slope_semitones_per_s, 2),
            )
            rate = _round(measured.speech_rate_hz, 2)
        record = TurnRecord(
            id=f"{self.stream_sid}:turn:{turn.index}",
            **self._ids(),
            track=turn.track,
            speaker=SPEAKER_BY_TRACK[turn.track],
            index=turn.index,
            start_ms=start_ms,
            end_ms=end_ms,
            duration_ms=end_ms - start_ms,
            speech_ms=speech_ms,
            segments=segments,
            started_at=self._wall(start_ms),
            ended_at=self._wall(end_ms),
            end_reason=turn.end_reason,
            gap_before_ms=_ms(turn.gap_before_frames),
            overlap_ms=_ms(turn.overlap_frames),
            barge_in=turn.barge_in,
            interrupted=turn.interrupted,
            backchannel=turn.backchannel,
            lost_ms=lost_ms,
            energy=energy,
            pitch=pitch,
            speech_rate_hz=rate,
            custom_parameters=self.custom_parameters,
        )
        self._events.append(record)
        if self.params.keep_turn_audio:
            self._turn_audio.append((record.id, pcm))
        self._turn_stats.append(
            _TurnStat(
                record.speaker,
                start_ms,
                end_ms,
                speech_ms,
                turn.barge_in,
                turn.backchannel,
                record.overlap_ms,
            )
        )
        self._segments_ms.setdefault(record.speaker, []).extend(segments)

    def _summary(self) -> CallSummary:
        speakers = [SPEAKER_BY_TRACK[t] for t in self.tracks]
        stats = self._turn_stats
        talk = {s: sum(t.speech_ms for t in stats if t.speaker == s) for s in speakers}
        total_talk = sum(talk.values())
        counts = {s: sum(1 for t in stats if t.speaker == s) for s in speakers}
        first = self._first_frame
        span_ms = 0
        if first is not None and self._cursor is not None:
            span_ms = (self._cursor - first) * audio.FRAME_MS
        cross = len(self._pipe_list) == 2
        union = _union([seg for segs in self._segments_ms.values() for seg in segs])
        silence_ms = max(0, span_ms - sum(e - s for s, e in union))
        incidents = sum(
            1 for (_, e1), (s2, _) in itertools.pairwise(union) if s2 - e1 > _SILENCE_INCIDENT_MS
        )
        return CallSummary(
            duration_ms=span_ms,
            talk_ms=talk,
            talk_ratio={
                s: (round(v / total_talk, 4) if total_talk else 0.0) for s, v in talk.items()
            },
            turn_counts=counts,
            overlap_ms=(
                sum(t.overlap_ms or 0 for t in stats if t.speaker == "caller") if cross else None
            ),
            silence_ms=silence_ms,
            silence_incidents=incidents,
            interruptions=(
                {s: sum(1 for t in stats if t.speaker == s and t.barge_in) for s in speakers}
                if cross
                else None
            ),
            response_latency=_latency(stats) if cross else None,
            lost_ms={
                p.track: p.timeline.lost_samples // audio.SAMPLES_PER_MS
                + p.lost_frames_total * audio.FRAME_MS
                for p in self._pipe_list
            },
            media_messages={p.track: p.media_messages for p in self._pipe_list},
            diagnostics=sum(self._diag_counts.values()),
        )

    # -- helpers ---------------------------------------------------------------------------

    def _ids(self) -> dict[str, str | None]:
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "account_sid": self.account_sid,
        }

    def _wall(self, stream_ms: int) -> datetime | None:
        # Stream time 0 is taken as the arrival of Twilio's ``start`` (the closest edge clock).
        if self._started_wall is None:
            return None
        return datetime.fromtimestamp(self._started_wall + stream_ms / 1000.0, tz=UTC)

    def _track_position_ms(self, track: str) -> int | None:
        pipe = self._pipes.get(track)
        if pipe is None or pipe.timeline.end_frame is None:
            return self.position_ms
        return self._origin_ms + pipe.timeline.end_frame * audio.FRAME_MS

    def _check_stream(self, stream_sid: str | None, seq: int | None) -> bool:
        try:
            self._check_stream_or_raise(stream_sid, seq)
        except ProtocolError as exc:
            self._diag(exc.code, exc.message, seq)
            return False
        return True

    def _check_stream_or_raise(self, stream_sid: str | None, seq: int | None) -> None:
        if self.stream_sid is not None and stream_sid != self.stream_sid:
            raise ProtocolError(
                "wrong_stream_sid",
                f"streamSid {stream_sid!r} does not match this stream; message ignored",
                sequence_number=seq,
            )

    def _event_id(self, kind: str, seq: int | None) -> str:
        """``MZ…:dtmf:SEQ``; a message without ``sequenceNumber`` gets ``MZ…:dtmf:u1``, ``u2``,
        … counted per kind over the whole stream (never reused, never a number Twilio uses)."""
        if seq is not None:
            return f"{self.stream_sid}:{kind}:{seq}"
        self._unnumbered[kind] += 1
        return f"{self.stream_sid}:{kind}:u{self._unnumbered[kind]}"

    def _diag(self, code: str, message: str, seq: int | None) -> None:
        self._diag_counts[code] += 1
        if self._diag_counts[code] <= self.params.max_diagnostics_per_code:
            self._emit_diag(code, message, seq, 1)

    def _emit_diag(self, code: str, message: str, seq: int | None, count: int) -> None:
        self._diag_emitted += 1
        self._events.append(
            Diagnostic(
                id=f"{self.stream_sid or 'unstarted'}:diag:{self._diag_emitted}",
                **self._ids(),
                code=code,
                message=message,
                sequence_number=seq,
                count=count,
            )
        )


_VERDICTS = {
    "duplicate_media": "{track} chunk repeated (timestamp {ts}); dropped",
    "timestamp_behind": "{track} timestamp {ts} is behind audio already placed; dropped",
    "timestamp_outlier": "{track} timestamp jump not confirmed by the next chunk; dropped",
}


def _normalise_track(name: str) -> str:
    return name[:-6] if name.endswith("_track") else name


def _ms(frames: int | None) -> int | None:
    return None if frames is None else frames * audio.FRAME_MS


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _utc(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, tz=UTC)


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _latency(stats: list[_TurnStat]) -> LatencyStats:
    """Agent turn start minus the end of the caller turn it answers (DESIGN.md §4).

    An agent turn answers the latest caller turn (backchannels aside) that ended before the
    agent turn began, if no other agent turn began in between; barge-ins are not answers.
    """
    ordered = sorted(stats, key=lambda t: t.start_ms)
    latencies: list[float] = []
    pending_caller_end: int | None = None
    for t in ordered:
        if t.backchannel:
            continue
        if t.speaker == "caller":
            pending_caller_end = t.end_ms
        elif pending_caller_end is not None:
            if t.start_ms >= pending_caller_end:
                latencies.append(float(t.start_ms - pending_caller_end))
            pending_caller_end = None
    if not latencies:
        return LatencyStats(count=0, p50_ms=None, p95_ms=None, max_ms=None)
    arr = np.asarray(latencies)
    return LatencyStats(
        count=len(latencies),
        p50_ms=float(np.percentile(arr, 50)),
        p95_ms=float(np.percentile(arr, 95)),
        max_ms=float(arr.max()),
    )
