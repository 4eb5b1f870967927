"""Outward records: what mise_twilio emits to sinks (schema_version 1).

Every record is a JSON object with ``type``, ``schema_version``, a stable ``id`` (the same input
always yields the same id, so any sink can deduplicate at-least-once delivery) and the call
identifiers it belongs to. Times are ms on Twilio's stream clock (``media.timestamp``: ms since the
stream started, https://www.twilio.com/docs/voice/media-streams/websocket-messages#media-message)
plus UTC ISO 8601 wall-clock times where the edge supplied a clock.

``mise-twilio schema`` prints the JSON Schema of ``Record`` (see ``json_schema()``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from mise_twilio.core.messages import MediaFormat, Track

SCHEMA_VERSION: Literal[1] = 1

Speaker = Literal["caller", "agent"]
EndReason = Literal["pause", "floor_taken", "max_duration", "stream_end"]
StopReason = Literal[
    "stop",
    "eof",
    "idle",
    "shutdown",
    "max_duration",
    "rejected",
    "upstream_unreachable",
    "upstream_closed",
    "backlog",
]
"""Why a stream ended. Proxy mode adds ``upstream_unreachable`` (the bot's WebSocket could not
be opened), ``upstream_closed`` (the bot closed or dropped it mid-call) and ``backlog`` (one
side did not keep up with the other; the relay's buffer filled)."""

SPEAKER_BY_TRACK: dict[Track, Speaker] = {"inbound": "caller", "outbound": "agent"}
"""Twilio's ``inbound`` track is the audio Twilio receives from the caller; ``outbound`` is what
Twilio plays to the caller (the agent, prompts, a dialed party). [TWIML]"""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _RecordBase(_Model):
    type: str = Field(description="Record type; subclasses narrow it to a literal.")
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(description="Stable id: the same input always gives the same id.")
    call_sid: str | None = Field(default=None, description="Twilio CallSid (CA + 32 hex).")
    stream_sid: str | None = Field(default=None, description="Twilio StreamSid (MZ + 32 hex).")
    account_sid: str | None = Field(default=None, description="Twilio AccountSid (AC + 32 hex).")


# ---------------------------------------------------------------------------------------------
# turn


class Energy(_Model):
    """Frame levels over the turn's speech frames (20 ms frames, dBFS: 0 = RMS 32768)."""

    mean_dbfs: float
    p95_dbfs: float
    peak_dbfs: float
    dynamic_range_db: float = Field(description="p95 minus p10 of frame levels, dB.")


class Pitch(_Model):
    """F0 statistics over voiced 20 ms frames (YIN, de Cheveigné & Kawahara 2002)."""

    median_hz: float | None
    iqr_semitones: float | None
    voiced_ratio: float = Field(ge=0.0, le=1.0)
    slope_semitones_per_s: float | None


Contour = Literal["rising", "falling", "level"]


class Prosody(_Model):
    """The turn against its speaker's own running baseline in this call (``core/prosody.py``).

    The baseline is the median over the speaker's earlier turns in the call with at least
    200 ms of voicing (backchannels aside); before there is one, pitch is compared with a
    population norm and loudness and speech rate are null.
    """

    pitch_semitones: float | None = Field(
        description="Median F0 re the baseline F0, semitones (null: too little voicing)."
    )
    pitch_baseline_hz: float | None = Field(
        description="The baseline F0: median of earlier turns' median F0, or for the first turn "
        "a population norm (116 Hz or 217 Hz, picked by the turn's F0 10th percentile)."
    )
    pitch_range_semitones: float | None = Field(
        description="This turn's F0 range, 10th to 90th percentile, semitones (not relative)."
    )
    loudness_db: float | None = Field(
        description="Active speech level re the baseline's, dB (null on the first turn)."
    )
    speech_rate_ratio: float | None = Field(
        description="Speech rate / the baseline's (1 = usual; null on the first turn)."
    )
    contour: Contour | None = Field(
        description="F0 movement over the last 500 ms of voicing: rising or falling by at least "
        "1.5 semitones, else level (null: under 140 ms of voicing there)."
    )
    contour_change_semitones: float | None = Field(
        description="The F0 change over that span, semitones."
    )
    baseline_turns: int = Field(
        ge=0, description="Earlier turns in the baseline (0: population norms only)."
    )


class Voice(_Model):
    """Voice quality over voiced frames, at telephone bandwidth (``core/voice.py``)."""

    jitter_local_pct: float | None = Field(
        description="Praat's jitter (local): mean |T_i - T_i-1| / mean T of glottal periods, %."
    )
    shimmer_local_db: float | None = Field(
        description="Praat's shimmer (local, dB): mean |20 log10(A_i / A_i-1)|."
    )
    hnr_db: float | None = Field(
        description="Harmonics-to-noise ratio (Boersma 1993, cross-correlation), dB."
    )
    alpha_ratio_db: float | None = Field(
        description="10 log10(E 1000-3400 Hz / E 300-1000 Hz): spectral tilt on the telephone "
        "band, not comparable with full-band eGeMAPS norms."
    )
    periods: int = Field(ge=0, description="Glottal periods analysed.")


class TurnRecord(_RecordBase):
    """One speaker turn: consecutive speech segments of one track (``docs/architecture.md``)."""

    type: Literal["turn"] = "turn"
    track: Track
    speaker: Speaker
    index: int = Field(ge=0, description="Per call, in order of start_ms (ties: inbound first).")
    start_ms: int = Field(description="Stream clock ms of the first speech frame.")
    end_ms: int = Field(description="Stream clock ms where the last speech frame ends.")
    duration_ms: int = Field(ge=0)
    speech_ms: int = Field(ge=0, description="Sum of segment durations (pauses excluded).")
    segments: list[tuple[int, int]] = Field(description="[start_ms, end_ms] speech spans.")
    started_at: datetime | None = Field(default=None, description="UTC; null without a clock.")
    ended_at: datetime | None = None
    end_reason: EndReason
    gap_before_ms: int | None = Field(
        default=None,
        description="start_ms minus the end of the other speaker's last speech before this turn "
        "(negative: started in overlap). Null when the other track is absent or silent so far.",
    )
    overlap_ms: int | None = Field(default=None, description="Time both speakers spoke, ms.")
    barge_in: bool | None = None
    interrupted: bool | None = None
    backchannel: bool | None = None
    lost_ms: int = Field(default=0, ge=0, description="Audio Twilio never sent in this span, ms.")
    cross_track_partial: bool = Field(
        default=False,
        description="The other track's audio for part of this turn was not known when it was "
        "analysed (it lagged more than MISE_MAX_TRACK_SKEW_MS, or this turn's audio did): the "
        "cross-track fields take the missing audio as silence.",
    )
    unplayed_ms: int | None = Field(
        default=None,
        ge=0,
        description="Proxy mode, agent turns: audio the bot sent for this turn that the caller "
        "never heard (dropped by a clear, or still queued when the stream ended), ms. Null "
        "outside proxy mode and for caller turns.",
    )
    energy: Energy | None = None
    pitch: Pitch | None = None
    speech_rate_hz: float | None = Field(default=None, description="Syllable nuclei per second.")
    prosody: Prosody | None = None
    voice: Voice | None = None
    arousal: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Prosodic arousal estimate (F0 level and range, spectral tilt, voicing; "
        "core/arousal.py), -1 calm .. 1 excited. Not an emotion label.",
    )
    arousal_rel: float | None = Field(
        default=None,
        description="The arousal score against the speaker's baseline in this call, z-like: 0 = "
        "their usual, +1 = one within-speaker spread above it. Null until the baseline holds "
        "one of the speaker's turns (on their first turn).",
    )
    custom_parameters: dict[str, str] = Field(default_factory=dict)
    audio: str | None = Field(default=None, description="WAV path, or base64 WAV, when enabled.")


class ToneRecord(_RecordBase):
    """A steady pure tone in a track (400-2000 Hz, at least 200 ms), e.g. the beep an
    answering machine plays before it records (``core/tone.py``). Found in a closed turn and
    emitted right after its turn record; 10 ms resolution (whole 20 ms frames, and half of
    each neighbouring frame the tone covers in part)."""

    type: Literal["tone"] = "tone"
    track: Track
    speaker: Speaker
    turn_index: int = Field(ge=0, description="The turn it was found in.")
    start_ms: int = Field(description="Stream clock ms where it starts.")
    end_ms: int
    duration_ms: int = Field(ge=0)
    frequency_hz: float
    level_dbfs: float


# ---------------------------------------------------------------------------------------------
# stream events


class StreamStarted(_RecordBase):
    """Twilio's ``start`` message, accepted."""

    type: Literal["stream.started"] = "stream.started"
    tracks: list[str]
    media_format: MediaFormat
    custom_parameters: dict[str, str] = Field(default_factory=dict)
    protocol_version: str | None = Field(default=None, description="From ``connected.version``.")
    received_at: datetime | None = None


class LatencyStats(_Model):
    """Agent response latency: agent turn start minus the caller turn end it answers, ms."""

    count: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class ArousalStats(_Model):
    """One speaker's turn arousal over the call (backchannels aside)."""

    turns: int = Field(ge=0, description="Turns with an arousal value.")
    mean: float | None
    peak: float | None
    peak_turn_index: int | None = Field(description="Index of the turn with the peak (first).")
    trend_per_min: float | None = Field(
        description="Least-squares slope of arousal against turn start, per minute (null with "
        "under 3 turns or under 30 s between the first and the last)."
    )


class CallSummary(_Model):
    """Whole-stream statistics, computed from the emitted turns."""

    duration_ms: int = Field(description="Stream clock span covered by media, ms.")
    talk_ms: dict[str, int] = Field(description="Speech ms per speaker (sum of turn speech_ms).")
    talk_ratio: dict[str, float] = Field(description="Speaker's share of all speech, 0..1.")
    turn_counts: dict[str, int]
    overlap_ms: int | None = None
    silence_ms: int | None = Field(default=None, description="Time neither speaker spoke, ms.")
    silence_incidents: int | None = Field(default=None, description="Mutual silences > 4 s.")
    interruptions: dict[str, int] | None = Field(
        default=None, description="Barge-ins by each speaker (backchannels excluded)."
    )
    response_latency: LatencyStats | None = None
    arousal: dict[str, ArousalStats] = Field(default_factory=dict, description="Per speaker.")
    escalation: int | None = Field(
        default=None,
        description="Caller turns with arousal_rel >= 1 that barged in or were the caller's first "
        "turn after an agent response slower than the call's p95 response latency: a count of "
        "frustration episodes. Null without the agent track.",
    )
    lost_ms: dict[str, int] = Field(default_factory=dict, description="Per track.")
    media_messages: dict[str, int] = Field(default_factory=dict, description="Per track.")
    diagnostics: int = 0


class StreamStopped(_RecordBase):
    """The stream ended: Twilio's ``stop``, the socket closing, an idle timeout or shutdown."""

    type: Literal["stream.stopped"] = "stream.stopped"
    reason: StopReason
    summary: CallSummary
    last_call_status: str | None = Field(
        default=None,
        description="The furthest CallStatus its status callbacks reached by the stop, as known "
        "here or, with a shared Redis, to any replica.",
    )
    stopped_at: datetime | None = None


class DtmfEvent(_RecordBase):
    """A keypress (bidirectional streams only; Twilio's ``dtmf.track`` is ``inbound_track``)."""

    type: Literal["dtmf"] = "dtmf"
    digit: str
    track: str
    sequence_number: int | None
    at_ms: int | None = Field(description="Stream clock position of the inbound track, ms.")


class MarkEvent(_RecordBase):
    """Twilio's echo of a mark: the audio before it played, or a ``clear`` dropped it (Twilio
    echoes both the same way; proxy mode tells them apart with its playback model)."""

    type: Literal["mark"] = "mark"
    name: str
    sequence_number: int | None
    at_ms: int | None = Field(description="Stream clock position of the inbound track, ms.")
    outcome: Literal["played", "cleared"] | None = Field(
        default=None,
        description="Proxy mode: played (the audio before the mark played) or cleared (a "
        "clear dropped it first). Null when the bot's messages were not seen (not proxy mode, "
        "or a mark the bot never sent).",
    )
    expected_at_ms: int | None = Field(
        default=None,
        description="Proxy mode: stream clock ms at which the playback model put the outcome "
        "(the end of the audio queued before the mark, or the clear); at_ms minus this is "
        "the model's lag behind Twilio.",
    )


class Diagnostic(_RecordBase):
    """Input that could not be used, and what was done about it. The call goes on."""

    type: Literal["diagnostic"] = "diagnostic"
    code: str = Field(description="Stable snake_case code, e.g. bad_json, wrong_stream_sid.")
    message: str
    sequence_number: int | None = None
    count: int = Field(default=1, description="How many times this code occurred (suppression).")


# ---------------------------------------------------------------------------------------------
# call lifecycle (status callbacks)

CallEventType = Literal[
    "call.queued",
    "call.initiated",
    "call.ringing",
    "call.answered",
    "call.completed",
    "call.busy",
    "call.failed",
    "call.no_answer",
    "call.canceled",
]


class CallStatusEvent(_RecordBase):
    """A call status callback (https://www.twilio.com/docs/voice/api/call-resource#statuscallback)."""

    type: CallEventType
    call_status: str = Field(description="Twilio's CallStatus as sent, e.g. in-progress.")
    sequence_number: int | None
    event_at: datetime | None = Field(description="Timestamp (RFC 2822 from Twilio) as UTC.")
    direction: str | None = None
    duration_s: int | None = Field(default=None, description="CallDuration, on completion.")
    sip_response_code: int | None = None
    from_: str | None = Field(default=None, alias="from", serialization_alias="from")
    to: str | None = None
    caller_name: str | None = None
    forwarded_from: str | None = None
    parent_call_sid: str | None = None
    answered_by: str | None = Field(
        default=None,
        description="AnsweredBy from answering machine detection: human, machine_start, "
        "machine_end_beep, machine_end_silence, machine_end_other, fax or unknown.",
    )
    machine_detection_ms: int | None = Field(
        default=None, description="MachineDetectionDuration: how long detection took, ms."
    )
    summary: CallSummary | None = Field(
        default=None,
        description="The stream's summary, when its stop was known here or, with a shared "
        "Redis, to any replica.",
    )


class StreamStatusEvent(_RecordBase):
    """A stream status callback (StreamEvent stream-started | stream-stopped | stream-error)."""

    type: Literal["stream.status"] = "stream.status"
    stream_event: str
    stream_name: str | None = None
    stream_error: str | None = None
    event_at: datetime | None = Field(description="Timestamp (ISO 8601 from Twilio) as UTC.")


AnyRecord = (
    TurnRecord
    | ToneRecord
    | StreamStarted
    | StreamStopped
    | DtmfEvent
    | MarkEvent
    | Diagnostic
    | CallStatusEvent
    | StreamStatusEvent
)
"""Any record type (for annotations)."""

Record = Annotated[AnyRecord, Field(discriminator="type")]
"""Any record, as a pydantic discriminated union on ``type`` (for validation)."""

RECORD_ADAPTER: TypeAdapter[AnyRecord] = TypeAdapter(Record)


def to_json(record: AnyRecord) -> str:
    """One record as compact JSON (field aliases such as ``from``; nulls kept for a flat schema)."""
    return record.model_dump_json(by_alias=True)


def from_json(text: str | bytes) -> AnyRecord:
    """Parse one record. Raises ``pydantic.ValidationError`` on anything not schema_version 1."""
    return RECORD_ADAPTER.validate_json(text)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of every record type, as pydantic generates it."""
    schema = RECORD_ADAPTER.json_schema(by_alias=True, mode="serialization")
    schema["$id"] = "https://github.com/mise/mise_twilio/schema/records-v1.json"
    schema["title"] = "mise_twilio record, schema_version 1"
    return schema


def json_schema_text() -> str:
    """``json_schema()`` as indented JSON text."""
    return json.dumps(json_schema(), indent=2, sort_keys=True)
