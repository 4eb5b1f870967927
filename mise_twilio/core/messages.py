"""Twilio Media Streams wire schema and ``parse_message()``.

Source: https://www.twilio.com/docs/voice/media-streams/websocket-messages ([WSM]) and real
captures (``docs/protocol.md`` §1, §2, §9). Facts the models encode:

- Every numeric-looking field Twilio sends (``sequenceNumber``, ``media.chunk``,
  ``media.timestamp``) is a JSON *string*; pydantic's lax mode turns ``"99"`` into ``99``.
- ``connected`` has no ``sequenceNumber`` and no ``streamSid``.
- ``start.customParameters`` may be ``{}`` or absent; values are strings.
- ``dtmf.track`` is ``inbound_track`` (not ``inbound``).
- There is no ``close`` event: ``stop`` is the last message.

Unknown events parse as ``UnknownMessage`` (kept, not an error): Twilio may add events, and one
new event must not end a call. Field names are Twilio's (camelCase) as aliases of snake_case
attributes.

Every check at the boundary lives here too: ``read_media`` turns a media message into a chunk
the timeline can place (track, timestamp and payload limits) and ``admit_start`` decides what
a ``start`` message opens (media format, api_key, custom parameters, tracks). Both raise or
report ``ProtocolError`` codes that become ``diagnostic`` records.
"""

from __future__ import annotations

import binascii
import hmac
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from mise_twilio.core.audio import SAMPLES_PER_MS
from mise_twilio.core.errors import ProtocolError

KNOWN_EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})

Track = Literal["inbound", "outbound"]
"""``inbound``: the audio Twilio receives from the caller; ``outbound``: what Twilio plays to
the caller (the agent, prompts, a dialed party). [TWIML]"""
TRACKS: Final[tuple[Track, ...]] = ("inbound", "outbound")
"""Both tracks, in the order the bridge always handles them."""


def normalise_track(name: str) -> str:
    """``inbound_track`` → ``inbound`` (TwiML and ``dtmf.track`` spell tracks with the suffix)."""
    return name[:-6] if name.endswith("_track") else name


def as_track(name: str) -> Track | None:
    """The ``Track`` a wire track name means (``_track`` suffix allowed), or ``None``."""
    if name == "inbound":  # the plain names first: this runs for every media message
        return "inbound"
    if name == "outbound":
        return "outbound"
    norm = normalise_track(name)
    if norm == "inbound":
        return "inbound"
    if norm == "outbound":
        return "outbound"
    return None


class _Wire(BaseModel):
    # extra="ignore": Twilio adds fields over time; a new field must not break parsing.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


# ---------------------------------------------------------------------------------------------
# Twilio -> us


class ConnectedMessage(_Wire):
    """``{"event":"connected","protocol":"Call","version":"1.0.0"}`` (2019 captures: 0.2.0)."""

    event: Literal["connected"]
    protocol: str | None = None
    version: str | None = None


class MediaFormat(BaseModel):
    """Always ``audio/x-mulaw``, 8000 Hz, 1 channel per [WSM]; checked, not assumed.

    One type for the wire (``sampleRate``) and the records (``sample_rate_hz``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    encoding: str
    sample_rate_hz: int = Field(validation_alias=AliasChoices("sampleRate", "sample_rate_hz"))
    channels: int


class StartPayload(_Wire):
    account_sid: str
    stream_sid: str
    call_sid: str
    tracks: list[str]
    media_format: MediaFormat
    custom_parameters: dict[str, str] = Field(default_factory=dict)


class StartMessage(_Wire):
    event: Literal["start"]
    sequence_number: int | None = None
    start: StartPayload
    stream_sid: str


class MediaPayload(_Wire):
    """One chunk: ``track`` (inbound|outbound), per-track ``chunk`` from 1, ``timestamp`` in ms
    since stream start (not starting at 0), ``payload`` base64 μ-law."""

    track: str
    chunk: int | None = None
    timestamp: int
    payload: str


class MediaMessage(_Wire):
    event: Literal["media"]
    sequence_number: int | None = None
    media: MediaPayload
    stream_sid: str


class DtmfPayload(_Wire):
    track: str = "inbound_track"
    digit: str


class DtmfMessage(_Wire):
    event: Literal["dtmf"]
    sequence_number: int | None = None
    dtmf: DtmfPayload
    stream_sid: str


class MarkPayload(_Wire):
    name: str


class MarkMessage(_Wire):
    """Twilio's echo of a mark we sent (bidirectional streams), after playback or a clear."""

    event: Literal["mark"]
    sequence_number: int | None = None
    mark: MarkPayload
    stream_sid: str


class StopPayload(_Wire):
    account_sid: str | None = None
    call_sid: str | None = None


class StopMessage(_Wire):
    event: Literal["stop"]
    sequence_number: int | None = None
    stream_sid: str
    stop: StopPayload = Field(default_factory=StopPayload)


class UnknownMessage(_Wire):
    """A JSON object with an ``event`` we do not know. Kept so the session can report it."""

    model_config = ConfigDict(extra="allow")
    event: str
    sequence_number: int | None = None
    stream_sid: str | None = None


def _event_tag(value: Any) -> str:
    event = value.get("event") if isinstance(value, dict) else getattr(value, "event", None)
    if isinstance(event, str) and event in KNOWN_EVENTS:
        return event
    return "unknown"


InboundMessage = Annotated[
    Annotated[ConnectedMessage, Tag("connected")]
    | Annotated[StartMessage, Tag("start")]
    | Annotated[MediaMessage, Tag("media")]
    | Annotated[DtmfMessage, Tag("dtmf")]
    | Annotated[MarkMessage, Tag("mark")]
    | Annotated[StopMessage, Tag("stop")]
    | Annotated[UnknownMessage, Tag("unknown")],
    Discriminator(_event_tag),
]
"""Any message Twilio sends, discriminated on ``event``."""

AnyInbound = (
    ConnectedMessage
    | StartMessage
    | MediaMessage
    | DtmfMessage
    | MarkMessage
    | StopMessage
    | UnknownMessage
)

_INBOUND: TypeAdapter[AnyInbound] = TypeAdapter(InboundMessage)


def parse_message(text: str | bytes) -> AnyInbound:
    """Parse one WebSocket text frame from Twilio.

    Returns the typed message (``UnknownMessage`` for an unknown ``event``).
    Raises ``ProtocolError`` with code ``bad_json`` (not JSON, or not an object),
    ``missing_event`` (no string ``event``) or ``bad_message`` (a known event with missing or
    wrongly typed fields; the pydantic error text is in the message).
    """
    try:
        return _INBOUND.validate_json(text)
    except ValidationError as exc:
        raise _classify(exc) from None


def _classify(exc: ValidationError) -> ProtocolError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"type": "", "msg": str(exc), "loc": ()}
    kind = str(first.get("type", ""))
    if kind.startswith("json_") or kind in {"model_type", "model_attributes_type"}:
        if kind == "json_invalid":
            return ProtocolError("bad_json", f"not valid JSON: {first.get('msg')}")
        return ProtocolError("bad_json", "a Twilio message must be a JSON object")
    loc = tuple(first.get("loc", ()))
    if kind in {"union_tag_invalid", "union_tag_not_found"} or loc == ("unknown", "event"):
        return ProtocolError("missing_event", "message has no string 'event' field")
    where = ".".join(str(part) for part in loc[1:])
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return ProtocolError("bad_message", f"{where}: {first.get('msg')}{more}")


def decode_payload(payload: str) -> bytes:
    """Base64 μ-law payload to bytes. Raises ``ProtocolError('bad_payload')`` on invalid base64."""
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("bad_payload", f"media.payload is not valid base64: {exc}") from None


@dataclass(frozen=True, slots=True)
class MediaChunk:
    """A media message checked at the boundary: ready for ``TrackTimeline.push``."""

    track: Track
    timestamp_ms: int
    payload: bytes
    """μ-law bytes, one per 8 kHz sample, at least one."""
    chunk: int | None
    sequence_number: int | None


def read_media(message: MediaMessage, *, max_timestamp_ms: int, max_chunk_ms: int) -> MediaChunk:
    """Check one media message and decode its payload.

    Raises ``ProtocolError``: ``unknown_track`` (not inbound/outbound, ``_track`` suffix
    allowed), ``bad_timestamp`` (outside ``0..max_timestamp_ms``: a wild value must not become
    the call's clock origin), ``bad_payload`` (not base64), ``empty_payload``,
    ``chunk_too_long`` (over ``max_chunk_ms`` of audio: Twilio sends 20 ms chunks, and a huge
    one would shift the whole timeline).
    """
    media = message.media
    seq = message.sequence_number
    track, payload = check_media(
        media.track,
        media.timestamp,
        media.payload,
        seq,
        max_timestamp_ms=max_timestamp_ms,
        max_chunk_ms=max_chunk_ms,
    )
    return MediaChunk(track, media.timestamp, payload, media.chunk, seq)


def check_media(
    track_name: str,
    timestamp_ms: int,
    payload_b64: str,
    sequence_number: int | None,
    *,
    max_timestamp_ms: int,
    max_chunk_ms: int,
) -> tuple[Track, bytes]:
    """``read_media``'s checks on the fields themselves: the track and the decoded μ-law
    payload. Raises the same ``ProtocolError`` codes, in the same order."""
    track = as_track(track_name)
    if track is None:
        raise ProtocolError(
            "unknown_track",
            f"media on unknown track {normalise_track(track_name)!r}",
            sequence_number=sequence_number,
        )
    if not 0 <= timestamp_ms <= max_timestamp_ms:
        raise ProtocolError(
            "bad_timestamp",
            f"media.timestamp {timestamp_ms} outside 0..{max_timestamp_ms} ms",
            sequence_number=sequence_number,
        )
    payload = decode_payload(payload_b64)
    if not payload:
        raise ProtocolError(
            "empty_payload", "media.payload is empty", sequence_number=sequence_number
        )
    if len(payload) > max_chunk_ms * SAMPLES_PER_MS:
        raise ProtocolError(
            "chunk_too_long",
            f"{len(payload)} byte media chunk is over {max_chunk_ms} ms; dropped",
            sequence_number=sequence_number,
        )
    return track, payload


# Twilio's own media frame, exactly as it sends it (the keys in this order, every number a
# string of digits, compact or with json.dumps' single spaces). Nothing this matches can hold
# an escape, a duplicate key or a value of another type, so it means exactly what
# ``parse_message`` would make of it; anything else goes through the models.
_MEDIA_FRAME = re.compile(
    r'\{"event": ?"media", ?"sequenceNumber": ?"([0-9]{1,18})", ?'
    r'"media": ?\{"track": ?"([a-z_]{1,32})", ?"chunk": ?"([0-9]{1,18})", ?'
    r'"timestamp": ?"([0-9]{1,18})", ?"payload": ?"([A-Za-z0-9+/=]*)"\}, ?'
    r'"streamSid": ?"([A-Za-z0-9]{1,64})"\}'
)

MediaFields = tuple[str, int, str, int, int, str]
"""``(stream_sid, sequence_number, track, timestamp_ms, chunk, payload_b64)``."""


def match_media(text: str) -> MediaFields | None:
    """The fields of a media frame in Twilio's exact wire form, without building a model
    (the per-message fast path: one C regex, ~1 µs), or ``None`` for anything else (then
    ``parse_message`` decides, with its diagnostics). ``track`` and ``payload_b64`` are not
    checked yet (``check_media``)."""
    m = _MEDIA_FRAME.fullmatch(text)
    if m is None:
        return None
    seq, track, chunk, timestamp, payload, stream_sid = m.groups()
    return stream_sid, int(seq), track, int(timestamp), int(chunk), payload


@dataclass(frozen=True, slots=True)
class StartAdmission:
    """What a ``start`` message opens: ``rejected`` is ``"api_key"`` when the shared secret
    did not match (then nothing else applies), else ``None``. ``problems`` are the
    ``ProtocolError``s to report, in order; ``media_ok`` is False for a media format other
    than μ-law 8 kHz (its media is then ignored)."""

    rejected: str | None
    tracks: list[Track]
    custom_parameters: dict[str, str]
    media_ok: bool
    problems: list[ProtocolError]


def admit_start(
    message: StartMessage, *, expected_api_key: str | None, max_custom_parameters: int
) -> StartAdmission:
    """Check a ``start`` message.

    - ``mediaFormat`` must be ``audio/x-mulaw`` at 8000 Hz (``unsupported_media_format``).
    - With ``expected_api_key`` set, ``customParameters.api_key`` must equal it (constant-time
      compare), otherwise the stream is rejected. ``api_key`` is a secret: it never reaches a
      record.
    - More than ``max_custom_parameters`` (Twilio allows 99) keeps the first ones
      (``too_many_custom_parameters``).
    - Unknown or repeated tracks are dropped (``unknown_track``); none left means inbound.
    """
    seq = message.sequence_number
    start = message.start
    fmt = start.media_format
    problems: list[ProtocolError] = []
    media_ok = (fmt.encoding, fmt.sample_rate_hz, fmt.channels) == ("audio/x-mulaw", 8000, 1)
    if not media_ok:
        problems.append(
            ProtocolError(
                "unsupported_media_format",
                f"expected audio/x-mulaw 8000 Hz mono, got {fmt.encoding} {fmt.sample_rate_hz} "
                f"Hz x{fmt.channels}; media will be ignored",
                sequence_number=seq,
            )
        )
    params = dict(start.custom_parameters)
    if expected_api_key is not None:
        given = params.get("api_key", "")
        if not hmac.compare_digest(given.encode(), expected_api_key.encode()):
            return StartAdmission("api_key", [], {}, False, problems)
    params.pop("api_key", None)
    if len(params) > max_custom_parameters:
        problems.append(
            ProtocolError(
                "too_many_custom_parameters",
                f"{len(params)} custom parameters; kept the first {max_custom_parameters}",
                sequence_number=seq,
            )
        )
        params = dict(list(params.items())[:max_custom_parameters])
    tracks: list[Track] = []
    for name in start.tracks:
        track = as_track(name)
        if track is not None and track not in tracks:
            tracks.append(track)
        else:
            problems.append(
                ProtocolError("unknown_track", f"track {name!r} ignored", sequence_number=seq)
            )
    return StartAdmission(None, tracks or ["inbound"], params, media_ok, problems)


# ---------------------------------------------------------------------------------------------
# us -> Twilio (bidirectional <Connect><Stream> only; never on a <Start> fork, error 31924)
#
# Twilio is strict about these (error 31951, https://www.twilio.com/docs/api/errors/31951): only
# ``media``, ``mark`` and ``clear``, with exactly the documented fields ("missing required fields,
# included unexpected fields, or used the wrong object structure") and the active ``streamSid``;
# anything else is ignored. The models forbid extra fields so that ``parse_outbound`` accepts
# what Twilio accepts (proxy mode models what the caller hears from it).


class _Outbound(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class OutboundMedia(_Outbound):
    payload: str = Field(description="base64 μ-law 8 kHz, no WAV header; any size.")


class OutboundMediaMessage(_Outbound):
    event: Literal["media"] = "media"
    stream_sid: str = Field(alias="streamSid")
    media: OutboundMedia


class OutboundMark(_Outbound):
    name: str


class OutboundMarkMessage(_Outbound):
    event: Literal["mark"] = "mark"
    stream_sid: str = Field(alias="streamSid")
    mark: OutboundMark


class OutboundClearMessage(_Outbound):
    """Empties Twilio's playback buffer; every pending mark is then echoed back."""

    event: Literal["clear"] = "clear"
    stream_sid: str = Field(alias="streamSid")


AnyOutbound = OutboundMediaMessage | OutboundMarkMessage | OutboundClearMessage

OUTBOUND_EVENTS = frozenset({"media", "mark", "clear"})


def _outbound_tag(value: Any) -> str | None:
    event = value.get("event") if isinstance(value, dict) else getattr(value, "event", None)
    return event if isinstance(event, str) and event in OUTBOUND_EVENTS else None


_OUTBOUND: TypeAdapter[AnyOutbound] = TypeAdapter(
    Annotated[
        Annotated[OutboundMediaMessage, Tag("media")]
        | Annotated[OutboundMarkMessage, Tag("mark")]
        | Annotated[OutboundClearMessage, Tag("clear")],
        Discriminator(_outbound_tag),
    ]
)


def parse_outbound(text: str | bytes) -> AnyOutbound:
    """Parse one text frame a bot sends toward Twilio (``media``, ``mark`` or ``clear``).

    Raises ``ProtocolError``: ``bad_json`` (not a JSON object), ``unknown_event`` (no
    ``event``, or one Twilio does not accept from a server), ``bad_message`` (missing, extra
    or wrongly typed fields). Twilio ignores each of these (31951), so the caller hears
    nothing of them. The payload is not decoded here (``decode_payload``).
    """
    try:
        # By alias only: ``stream_sid`` is not ``streamSid`` to Twilio (31951).
        return _OUTBOUND.validate_json(text, by_alias=True, by_name=False)
    except ValidationError as exc:
        error = _classify(exc)
        if error.code != "missing_event":
            raise error from None
        found = exc.errors(include_url=False)[0].get("input")
    if not isinstance(found, dict):
        raise ProtocolError("bad_json", "a message to Twilio must be a JSON object")
    event = found.get("event")
    raise ProtocolError(
        "unknown_event",
        f"event {event!r} is not one Twilio accepts from a server (media, mark, clear)",
    )


def encode_outbound(message: AnyOutbound) -> str:
    """Serialize a message for Twilio: a text frame, ``streamSid`` spelled exactly (31951)."""
    return message.model_dump_json(by_alias=True)
