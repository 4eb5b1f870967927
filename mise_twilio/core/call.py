"""CallSession: the sans-I/O state machine of one Twilio Media Stream.

Modelled on websockets' sans-I/O ``Protocol`` and h11's ``Connection``: feed it what arrived
(``receive_text``, ``receive_eof``, ``close``), then drain ``take_events()``. It opens no
sockets, reads no clock (wall-clock times come in as arguments) and logs nothing; every problem
becomes a ``diagnostic`` record and the call goes on.

Theory of operation. A stream is in one of four states:

- ``AWAITING_START``: before Twilio's ``start``. Only ``connected`` and ``start`` mean
  anything here; any other message is reported (``stop_before_start``, ...) and changes
  nothing, whatever its ``streamSid``: before ``start`` there is no sid to check it against.
- ``STREAMING``: ``start`` was accepted. Media goes to the ``Lockstep`` analysis (both tracks
  on one grid, VAD, turns); closed turns are measured and become records. Messages for
  another ``streamSid`` are reported and ignored.
- ``CLOSED``: ``stop``, end of input, or the edge's ``close()`` (idle, shutdown, maximum
  duration) ended the stream: open turns were closed as ``stream_end`` and ``stream.stopped``
  carries the call summary. Nothing more is accepted.
- ``REJECTED``: ``start`` failed the api_key check. Nothing is emitted at all; the edge should
  close the socket with 1008.

In proxy mode (``SessionParams.proxied``) the edge also feeds what the bot sends toward Twilio
(``receive_playback``): a ``PlaybackModel`` rebuilds the ``outbound`` track from it, as Twilio
plays it, on the stream clock that the inbound track drives (``core/playback.py``).

Transitions are the table ``TRANSITIONS`` below; no other code assigns the state.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

import numpy as np

from mise_twilio.core import audio
from mise_twilio.core.errors import ProtocolError
from mise_twilio.core.features import FeatureParams, turn_acoustics
from mise_twilio.core.lockstep import ClosedTurn, Lockstep, Notice
from mise_twilio.core.messages import (
    AnyInbound,
    ConnectedMessage,
    DtmfMessage,
    MarkMessage,
    MediaMessage,
    OutboundClearMessage,
    OutboundMediaMessage,
    StartMessage,
    StopMessage,
    Track,
    UnknownMessage,
    admit_start,
    check_media,
    decode_payload,
    match_media,
    parse_message,
    parse_outbound,
)
from mise_twilio.core.playback import PlaybackModel
from mise_twilio.core.prosody import CallProsody
from mise_twilio.core.records import (
    SPEAKER_BY_TRACK,
    AnyRecord,
    Diagnostic,
    DtmfEvent,
    MarkEvent,
    StopReason,
    StreamStarted,
    StreamStopped,
    ToneRecord,
    TurnRecord,
)
from mise_twilio.core.summary import CallStats
from mise_twilio.core.turns import TurnParams
from mise_twilio.core.vad import VadParams


class State(enum.Enum):
    """Where a stream is in its life (see the module docstring)."""

    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    CLOSED = "closed"
    REJECTED = "rejected"


Input = Literal["start", "start_rejected", "close"]
"""What moves a stream from one state to another."""

TRANSITIONS: Final[dict[tuple[State, Input], State]] = {
    (State.AWAITING_START, "start"): State.STREAMING,
    (State.AWAITING_START, "start_rejected"): State.REJECTED,
    (State.AWAITING_START, "close"): State.CLOSED,
    (State.STREAMING, "close"): State.CLOSED,
}
"""(state, input) → next state. An input missing here leaves the state unchanged (a second
``start`` while streaming is a diagnostic; closing a closed stream does nothing)."""

ACCEPTS: Final[dict[State, frozenset[str]]] = {
    State.AWAITING_START: frozenset({"connected", "start"}),
    State.STREAMING: frozenset({"connected", "start", "media", "dtmf", "mark", "stop"}),
    State.CLOSED: frozenset(),
    State.REJECTED: frozenset(),
}
"""Events each state acts on. Others are reported (``EVENT_before_start`` before ``start``)
or, once the stream has ended, ignored."""


@dataclass(frozen=True, slots=True)
class SessionParams:
    """Per-stream limits and behaviour (built from ``Settings`` at the edge).

    - ``vad``, ``turns``, ``features``: the analysis parameters.
    - ``max_message_bytes``: a larger text frame is dropped unparsed (``message_too_large``);
      the server enforces the same limit on the socket.
    - ``max_chunk_ms``: one media payload longer than this is dropped (``chunk_too_long``).
    - ``max_timestamp_ms``: ``media.timestamp`` outside ``[0, this]`` is rejected
      (``bad_timestamp``): no Twilio call streams for six hours, and a wild value must not
      become the call's clock origin.
    - ``max_gap_ms``: a timestamp jump above this is a discontinuity, not filled with silence.
    - ``max_track_skew_ms``: how far one track may lag the other before the other goes on
      without it (bounds how late a turn record can be; late audio is still analysed, see
      ``lockstep.py``). ``None`` waits for everything: records are then exactly independent of
      how the tracks interleave, at the cost of holding a leading track in memory.
    - ``max_diagnostics_per_code``: diagnostics of one code beyond this are only counted, and
      one summary diagnostic is emitted at the end.
    - ``max_custom_parameters``: Twilio allows 99 (REST); more are dropped with a diagnostic.
    - ``expected_api_key``: when set, ``start.customParameters.api_key`` must equal it
      (constant-time compare); otherwise the session is rejected and emits nothing.
    - ``measure_features``: compute each turn's acoustics (energy, pitch, rate, prosody, voice
      quality, arousal) and look for steady tones (numpy, once per turn).
    - ``keep_turn_audio``: keep each turn's PCM for ``take_turn_audio()``.
    - ``proxied``: proxy mode: the stream is relayed to a bot, whose messages are fed to
      ``receive_playback``; the ``outbound`` track (speaker ``agent``) is rebuilt from them.
    - ``max_playback_queue_ms``: proxy mode: bot audio queued ahead of the stream clock
      beyond this is not modelled (``playback_queue_full``); Twilio's limit is not documented.
    """

    vad: VadParams = field(default_factory=VadParams)
    turns: TurnParams = field(default_factory=TurnParams)
    features: FeatureParams = field(default_factory=FeatureParams)
    max_message_bytes: int = 64 * 1024
    max_chunk_ms: int = 1000
    max_gap_ms: int = 5000
    max_timestamp_ms: int = 6 * 3600 * 1000
    max_track_skew_ms: int | None = 5000
    max_diagnostics_per_code: int = 10
    max_custom_parameters: int = 99
    expected_api_key: str | None = None
    measure_features: bool = True
    keep_turn_audio: bool = False
    proxied: bool = False
    max_playback_queue_ms: int = 600_000


class _Diagnostics:
    """Diagnostic records of one stream, throttled per code (``max_per_code`` emitted, the
    rest counted and summarised once at the end)."""

    def __init__(self, max_per_code: int) -> None:
        self._max = max_per_code
        self._counts: Counter[str] = Counter()
        self._emitted = 0

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def report(
        self, code: str, message: str, seq: int | None, ids: dict[str, str | None]
    ) -> Diagnostic | None:
        self._counts[code] += 1
        if self._counts[code] > self._max:
            return None
        return self._record(code, message, seq, 1, ids)

    def suppressed(self, ids: dict[str, str | None]) -> list[Diagnostic]:
        """One record per code that went over the limit, with the count."""
        return [
            self._record(code, f"{count - self._max} more {code} not reported", None, count, ids)
            for code, count in sorted(self._counts.items())
            if count > self._max
        ]

    def _record(
        self, code: str, message: str, seq: int | None, count: int, ids: dict[str, str | None]
    ) -> Diagnostic:
        self._emitted += 1
        return Diagnostic(
            id=f"{ids['stream_sid'] or 'unstarted'}:diag:{self._emitted}",
            **ids,
            code=code,
            message=message,
            sequence_number=seq,
            count=count,
        )


class CallSession:
    """One Twilio Media Stream, from ``connected`` to ``stop``.

    Usage::

        session = CallSession(SessionParams())
        session.receive_text(frame_text, received_at_s=time.time())
        for record in session.take_events(): ...
        if session.close_expected(): hang up with session.close_code()
        session.receive_eof()   # the socket closed without ``stop``

    ``call_sid``, ``stream_sid``, ``account_sid``, ``tracks`` and ``custom_parameters`` are
    known once ``start`` was accepted (``None`` / empty before).
    """

    def __init__(self, params: SessionParams | None = None) -> None:
        self.params = params or SessionParams()
        self._state = State.AWAITING_START
        self._rejection: str | None = None
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.account_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self._protocol_version: str | None = None
        self._media_ok = False
        self._started_wall_s: float | None = None
        self._lockstep: Lockstep | None = None
        self._playback: PlaybackModel | None = None
        self._played_chunks = 0
        self._closing: tuple[StopReason, float | None] | None = None  # (reason, at_s) to finish
        self._stats = CallStats()
        self._prosody = CallProsody()
        self._diagnostics = _Diagnostics(self.params.max_diagnostics_per_code)
        self._events: list[AnyRecord] = []
        self._turn_audio: list[tuple[str, bytes]] = []
        self._message_counts: Counter[str] = Counter()
        self._counts_taken: Counter[str] = Counter()
        self._unnumbered: Counter[str] = Counter()

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def _transition(self, event: Input) -> None:
        self._state = TRANSITIONS.get((self._state, event), self._state)

    def close_expected(self) -> bool:
        """The stream has ended (or was refused): the edge should close the socket."""
        return self._state in (State.CLOSED, State.REJECTED)

    def close_code(self) -> int:
        """The WebSocket close code for the edge: 1008 (policy) when refused, else 1000."""
        return 1008 if self._state is State.REJECTED else 1000

    @property
    def rejection(self) -> str | None:
        """Why ``start`` was refused (``"api_key"``), or ``None``."""
        return self._rejection

    @property
    def tracks(self) -> list[Track]:
        """The tracks being analysed (empty before ``start``)."""
        return self._lockstep.tracks if self._lockstep is not None else []

    @property
    def position_ms(self) -> int | None:
        """Stream clock ms up to which both tracks have been analysed."""
        return self._lockstep.position_ms if self._lockstep is not None else None

    # -- input -----------------------------------------------------------------------------

    def receive_text(self, text: str | bytes, *, received_at_s: float | None = None) -> None:
        """Feed one WebSocket text frame. ``received_at_s``: epoch seconds (edge clock)."""
        if self.close_expected():
            return
        if len(text) > self.params.max_message_bytes:
            self._message_counts["invalid"] += 1
            self._diag(
                "message_too_large",
                f"{len(text)} byte message over the {self.params.max_message_bytes} byte limit; "
                "dropped",
                None,
            )
            return
        fields = match_media(text) if type(text) is str else None
        if fields is not None:
            # Twilio's own media frame (nearly every message): straight to the fields, no
            # model; the same checks, counts and diagnostics as ``receive_message``.
            self._receive_media(*fields)
            return
        try:
            message = parse_message(text)
        except ProtocolError as exc:
            self._message_counts["invalid"] += 1
            self._diag(exc.code, exc.message, exc.sequence_number)
            return
        self.receive_message(message, received_at_s=received_at_s)

    def receive_message(self, message: AnyInbound, *, received_at_s: float | None = None) -> None:
        """Feed one already-parsed message (``messages.parse_message``)."""
        if self.close_expected():
            return
        known = not isinstance(message, UnknownMessage)
        self._message_counts[message.event if known else "unknown"] += 1
        seq = message.sequence_number if not isinstance(message, ConnectedMessage) else None
        try:
            if not known:
                raise ProtocolError(
                    "unknown_event", f"unknown event {message.event!r} ignored", sequence_number=seq
                )
            if message.event not in ACCEPTS[self._state]:
                raise ProtocolError(
                    f"{message.event}_before_start",
                    f"{message.event} before start ignored",
                    sequence_number=seq,
                )
            if isinstance(message, ConnectedMessage):
                self._protocol_version = message.version
            elif isinstance(message, StartMessage):
                self._on_start(message, received_at_s)
            else:
                self._check_stream(message.stream_sid, seq)
                if isinstance(message, MediaMessage):
                    self._on_media(message)
                elif isinstance(message, StopMessage):
                    self.close("stop", at_s=received_at_s)
                elif isinstance(message, DtmfMessage):
                    self._on_dtmf(message)
                elif isinstance(message, MarkMessage):
                    self._on_mark(message)
        except ProtocolError as exc:
            self._diag(exc.code, exc.message, exc.sequence_number)

    def receive_eof(self, *, at_s: float | None = None) -> None:
        """The socket closed. Without a prior ``stop`` this ends the stream (reason ``eof``)."""
        self.close("eof", at_s=at_s)

    def receive_playback(self, frame: str | bytes) -> None:
        """Proxy mode: feed one WebSocket message the bot sent toward Twilio, in relay order
        (``str``: a text frame, ``bytes``: a binary one).

        ``media`` is queued for playback, ``mark`` waits for the audio before it, ``clear``
        drops what has not played (``core/playback.py``); the played audio reaches the
        analysis as the inbound track's clock passes it. What Twilio would ignore is a
        diagnostic and plays nothing: a binary frame (31950), a message that is not a valid
        ``media``/``mark``/``clear`` or names another ``streamSid`` (31951), a message before
        ``start``. Raises ``RuntimeError`` when the session is not ``proxied``.
        """
        if not self.params.proxied:
            raise RuntimeError("receive_playback needs SessionParams(proxied=True)")
        if self.close_expected():
            return
        playback = self._playback
        try:
            if playback is None:
                raise ProtocolError(
                    "upstream_before_start", "bot message before start; Twilio ignores it"
                )
            if isinstance(frame, bytes):
                raise ProtocolError(
                    "upstream_binary_frame", "binary frame from the bot; Twilio plays none (31950)"
                )
            try:
                message = parse_outbound(frame)
            except ProtocolError as exc:
                raise ProtocolError(f"upstream_{exc.code}", exc.message) from None
            self._message_counts[f"upstream_{message.event}"] += 1
            if message.stream_sid != self.stream_sid:
                raise ProtocolError(
                    "upstream_wrong_stream_sid",
                    f"bot {message.event} for streamSid {message.stream_sid!r}; Twilio ignores it",
                )
            if isinstance(message, OutboundMediaMessage):
                try:
                    payload = decode_payload(message.media.payload)
                except ProtocolError as exc:
                    raise ProtocolError(f"upstream_{exc.code}", exc.message) from None
                dropped = playback.media(payload)
                if dropped:
                    raise ProtocolError(
                        "playback_queue_full",
                        f"{dropped // audio.SAMPLES_PER_MS} ms of bot audio beyond "
                        f"{self.params.max_playback_queue_ms} ms queued not modelled",
                    )
            elif isinstance(message, OutboundClearMessage):
                playback.clear()
            else:
                playback.mark(message.mark.name)
        except ProtocolError as exc:
            if exc.code.startswith("upstream_"):
                self._message_counts["upstream_invalid"] += 1
            self._diag(exc.code, exc.message, None)

    def report(self, code: str, message: str) -> None:
        """Record a problem the edge met with this stream as a ``diagnostic`` record (the
        proxy's ``upstream_unreachable``, ``upstream_closed``, ``backlog``). Throttled per code
        like every diagnostic; nothing once the stream was rejected."""
        self._diag(code, message, None)

    def close(self, reason: StopReason, *, at_s: float | None = None) -> None:
        """End the stream: flush both tracks, close open turns (``stream_end``), emit
        ``stream.stopped`` with the call summary. ``at_s``: epoch seconds. Idempotent.

        ``close_expected()`` is true at once; the end of the stream (its last frames, the
        open turns' features, the summary) is analysed when its records are taken
        (``take_events()``), so the edge can hang up first: that work can take a few ms per
        long turn, and hundreds of calls hanging up in the same second would otherwise
        queue every close behind all of it."""
        was = self._state
        self._transition("close")
        if was is not State.STREAMING or self._state is not State.CLOSED:
            return
        self._closing = (reason, at_s)

    def _finish(self) -> None:
        """The analysis ``close()`` left for the stream's last records (once)."""
        if self._closing is None:
            return
        reason, at_s = self._closing
        self._closing = None
        lockstep = self._lockstep
        assert lockstep is not None
        media_messages = lockstep.media_messages()
        if self._playback is not None:
            self._playback.finish()
            media_messages["outbound"] = self._playback.media_messages
        lockstep.finish()
        self._take_analysis()
        ids = self._ids()
        self._events += self._diagnostics.suppressed(ids)
        summary = self._stats.summary(
            [SPEAKER_BY_TRACK[t] for t in lockstep.tracks],
            span_ms=lockstep.span_ms,
            cross_track=lockstep.cross_track,
            lost_ms=lockstep.lost_ms(),
            media_messages=media_messages,
            diagnostics=self._diagnostics.total,
        )
        self._events.append(
            StreamStopped(
                id=f"{self.stream_sid}:stream.stopped",
                **ids,
                reason=reason,
                summary=summary,
                stopped_at=_utc(at_s),
            )
        )

    # -- output ----------------------------------------------------------------------------

    @property
    def events_pending(self) -> bool:
        """``take_events()`` would return something (cheap: the edge asks after every
        message, and most messages produce no record)."""
        pending = bool(self._events) or self._closing is not None
        return pending and self._state is not State.REJECTED

    def take_events(self) -> list[AnyRecord]:
        """Records produced since the last call, in order. Always empty once rejected."""
        self._finish()
        events, self._events = self._events, []
        return [] if self._state is State.REJECTED else events

    def take_turn_audio(self) -> list[tuple[str, bytes]]:
        """(turn id, 16-bit 8 kHz mono PCM) per closed turn, with ``keep_turn_audio``."""
        self._finish()
        out, self._turn_audio = self._turn_audio, []
        return out

    def take_message_counts(self) -> Counter[str]:
        """Messages received since the last call, by ``event`` (``invalid``: unparsable,
        ``unknown``: an unknown event). For the edge's metrics, at no per-message cost."""
        delta = self._message_counts - self._counts_taken
        self._counts_taken = self._message_counts.copy()
        return delta

    # -- message handlers ------------------------------------------------------------------

    def _on_start(self, message: StartMessage, received_at_s: float | None) -> None:
        if self._state is not State.AWAITING_START:
            raise ProtocolError(
                "duplicate_start",
                "second start message ignored",
                sequence_number=message.sequence_number,
            )
        admission = admit_start(
            message,
            expected_api_key=self.params.expected_api_key,
            max_custom_parameters=self.params.max_custom_parameters,
        )
        for problem in admission.problems:
            self._diag(problem.code, problem.message, problem.sequence_number)
        start = message.start
        self.stream_sid, self.call_sid = message.stream_sid, start.call_sid
        if admission.rejected is not None:
            self._rejection = admission.rejected
            self._transition("start_rejected")
            return
        self.account_sid = start.account_sid
        self.custom_parameters = admission.custom_parameters
        self._media_ok = admission.media_ok
        self._started_wall_s = received_at_s
        p = self.params
        tracks = admission.tracks
        if p.proxied:
            # ``<Connect>`` streams carry the caller only; the agent is rebuilt from the bot.
            tracks = ["inbound", "outbound"]
            self._playback = PlaybackModel(
                max_queued_ms=p.max_playback_queue_ms, max_gap_ms=p.max_gap_ms
            )
        self._lockstep = Lockstep(
            tracks,
            vad=p.vad,
            turns=p.turns,
            max_gap_ms=p.max_gap_ms,
            max_track_skew_ms=p.max_track_skew_ms,
        )
        self._transition("start")
        self._events.append(
            StreamStarted(
                id=f"{self.stream_sid}:stream.started",
                **self._ids(),
                tracks=list(start.tracks),
                media_format=start.media_format,
                custom_parameters=admission.custom_parameters,
                protocol_version=self._protocol_version,
                received_at=_utc(received_at_s),
            )
        )

    def _receive_media(
        self, stream_sid: str, seq: int, track: str, timestamp_ms: int, chunk: int, payload: str
    ) -> None:
        """``receive_message`` for a media message given as its fields (``match_media``)."""
        self._message_counts["media"] += 1
        try:
            if "media" not in ACCEPTS[self._state]:
                raise ProtocolError(
                    "media_before_start", "media before start ignored", sequence_number=seq
                )
            if stream_sid != self.stream_sid:
                self._check_stream(stream_sid, seq)
            self._media(track, timestamp_ms, payload, chunk, seq)
        except ProtocolError as exc:
            self._diag(exc.code, exc.message, exc.sequence_number)

    def _on_media(self, message: MediaMessage) -> None:
        media = message.media
        self._media(
            media.track, media.timestamp, media.payload, media.chunk, message.sequence_number
        )

    def _media(
        self,
        track_name: str,
        timestamp_ms: int,
        payload_b64: str,
        chunk: int | None,
        seq: int | None,
    ) -> None:
        if not self._media_ok:
            return
        p = self.params
        track, payload = check_media(
            track_name,
            timestamp_ms,
            payload_b64,
            seq,
            max_timestamp_ms=p.max_timestamp_ms,
            max_chunk_ms=p.max_chunk_ms,
        )
        lockstep = self._lockstep
        assert lockstep is not None
        playback = self._playback
        if playback is not None and track == "outbound":
            raise ProtocolError(
                "outbound_media_in_proxy",
                "Twilio sent outbound media on a proxied stream; the bot's audio is the "
                "outbound track, so it is dropped",
                sequence_number=seq,
            )
        try:
            lockstep.push(track, timestamp_ms, payload, chunk, seq)
            if playback is not None:
                for played_ms, frame in playback.on_inbound(timestamp_ms, len(payload)):
                    self._played_chunks += 1
                    lockstep.push("outbound", played_ms, frame, self._played_chunks)
        finally:
            if lockstep.has_output:
                self._take_analysis()

    def _on_dtmf(self, message: DtmfMessage) -> None:
        seq = message.sequence_number
        self._events.append(
            DtmfEvent(
                id=self._event_id("dtmf", seq),
                **self._ids(),
                digit=message.dtmf.digit,
                track=message.dtmf.track,
                sequence_number=seq,
                at_ms=self._inbound_position_ms(),
            )
        )

    def _on_mark(self, message: MarkMessage) -> None:
        seq = message.sequence_number
        name = message.mark.name
        outcome = None
        if self._playback is not None:
            outcome = self._playback.echo(name)
            if outcome is None:
                self._diag(
                    "mark_not_sent",
                    f"Twilio echoed mark {name!r}, which the bot did not send (or was echoed)",
                    seq,
                )
        self._events.append(
            MarkEvent(
                id=self._event_id("mark", seq),
                **self._ids(),
                name=name,
                sequence_number=seq,
                at_ms=self._inbound_position_ms(),
                outcome=outcome.outcome if outcome else None,
                expected_at_ms=outcome.at_ms if outcome else None,
            )
        )

    # -- records ---------------------------------------------------------------------------

    def _take_analysis(self) -> None:
        assert self._lockstep is not None
        for item in self._lockstep.take_output():
            if isinstance(item, Notice):
                self._diag(item.code, item.message, item.sequence_number)
            else:
                self._emit_turn(item)

    def _emit_turn(self, closed: ClosedTurn) -> None:
        lockstep = self._lockstep
        assert lockstep is not None
        turn = closed.turn
        origin_ms = lockstep.origin_ms
        frame_ms = audio.FRAME_MS
        start_ms = origin_ms + turn.start_frame * frame_ms
        end_ms = origin_ms + turn.end_frame * frame_ms
        speaker = SPEAKER_BY_TRACK[turn.track]
        interrupted = turn.interrupted
        unplayed_ms = None
        if self._playback is not None and turn.track == "outbound":
            # Cuts in the turn, or in its tail up to the pause that would end it.
            cuts = self._playback.claim(start_ms, end_ms + self.params.turns.turn_pause_ms)
            unplayed = sum(c.unplayed_samples for c in cuts)
            unplayed_ms = (unplayed + audio.SAMPLES_PER_MS // 2) // audio.SAMPLES_PER_MS
            if any(c.by_clear and c.unplayed_samples for c in cuts):
                interrupted = True  # the bot cut it short with ``clear``
        acoustics = relative = None
        if self.params.measure_features and closed.pcm:
            acoustics = turn_acoustics(
                np.frombuffer(closed.pcm, dtype=np.int16),
                turn.segments,
                turn.start_frame,
                params=self.params.features,
            )
            relative = self._prosody.observe(speaker, acoustics, include=not turn.backchannel)
        record = TurnRecord(
            id=f"{self.stream_sid}:turn:{turn.index}",
            **self._ids(),
            track=turn.track,
            speaker=speaker,
            index=turn.index,
            start_ms=start_ms,
            end_ms=end_ms,
            duration_ms=end_ms - start_ms,
            speech_ms=turn.speech_frames * frame_ms,
            segments=[
                (origin_ms + s * frame_ms, origin_ms + e * frame_ms) for s, e in turn.segments
            ],
            started_at=self._wall(start_ms),
            ended_at=self._wall(end_ms),
            end_reason=turn.end_reason,
            gap_before_ms=_ms(turn.gap_before_frames),
            overlap_ms=_ms(turn.overlap_frames),
            barge_in=turn.barge_in,
            interrupted=interrupted,
            backchannel=turn.backchannel,
            lost_ms=closed.lost_samples // audio.SAMPLES_PER_MS,
            cross_track_partial=closed.cross_track_partial,
            unplayed_ms=unplayed_ms,
            energy=acoustics.energy if acoustics else None,
            pitch=acoustics.pitch if acoustics else None,
            speech_rate_hz=acoustics.speech_rate_hz if acoustics else None,
            prosody=relative.prosody if relative else None,
            voice=acoustics.voice if acoustics else None,
            arousal=acoustics.arousal if acoustics else None,
            arousal_rel=relative.arousal_rel if relative else None,
            custom_parameters=self.custom_parameters,
        )
        self._events.append(record)
        tone = acoustics.features.tone if acoustics else None
        if tone is not None:
            tone_start_ms = start_ms + tone.start_frame * frame_ms - tone.before_ms
            self._events.append(
                ToneRecord(
                    id=f"{self.stream_sid}:tone:{turn.index}",
                    **self._ids(),
                    track=turn.track,
                    speaker=speaker,
                    turn_index=turn.index,
                    start_ms=tone_start_ms,
                    end_ms=tone_start_ms + tone.duration_ms,
                    duration_ms=tone.duration_ms,
                    frequency_hz=round(tone.frequency_hz, 1),
                    level_dbfs=round(tone.level_dbfs, 2),
                )
            )
        if self.params.keep_turn_audio:
            self._turn_audio.append((record.id, closed.pcm))
        self._stats.add(record)

    # -- helpers ---------------------------------------------------------------------------

    def _ids(self) -> dict[str, str | None]:
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "account_sid": self.account_sid,
        }

    def _wall(self, stream_ms: int) -> datetime | None:
        # Stream time 0 is taken as the arrival of Twilio's ``start`` (the closest edge clock).
        if self._started_wall_s is None:
            return None
        return datetime.fromtimestamp(self._started_wall_s + stream_ms / 1000.0, tz=UTC)

    def _inbound_position_ms(self) -> int | None:
        lockstep = self._lockstep
        return lockstep.track_position_ms("inbound") if lockstep is not None else None

    def _check_stream(self, stream_sid: str | None, seq: int | None) -> None:
        if stream_sid != self.stream_sid:
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
        record = self._diagnostics.report(code, message, seq, self._ids())
        if record is not None:
            self._events.append(record)


def _ms(frames: int | None) -> int | None:
    return None if frames is None else frames * audio.FRAME_MS


def _utc(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, tz=UTC)
