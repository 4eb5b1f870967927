"""Twilio Media Streams wire schema and ``parse_message()``.

Source: https://www.twilio.com/docs/voice/media-streams/websocket-messages ([WSM]) and real
captures (``../shared/twilio-protocol.md`` §1, §2, §9). Facts the models encode:

- Every numeric-looking field Twilio sends (``sequenceNumber``, ``media.chunk``,
  ``media.timestamp``) is a JSON *string*; pydantic's lax mode turns ``"99"`` into ``99``.
- ``connected`` has no ``sequenceNumber`` and no ``streamSid``.
- ``start.customParameters`` may be ``{}`` or absent; values are strings.
- ``dtmf.track`` is ``inbound_track`` (not ``inbound``).
- There is no ``close`` event: ``stop`` is the last message.

Unknown events parse as ``UnknownMessage`` (kept, not an error): Twilio may add events, and one
new event must not end a call. Field names are Twilio's (camelCase) as aliases of snake_case
attributes.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from mise_twilio.core.errors import ProtocolError

KNOWN_EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})


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


class MediaFormat(_Wire):
    """Always ``audio/x-mulaw``, 8000 Hz, 1 channel per [WSM]; checked, not assumed."""

    encoding: str
    sample_rate: int
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


# ---------------------------------------------------------------------------------------------
# us -> Twilio (bidirectional <Connect><Stream> only; never on a <Start> fork, error 31924)


class OutboundMedia(BaseModel):
    payload: str = Field(description="base64 μ-law 8 kHz, no WAV header; any size.")


class OutboundMediaMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    event: Literal["media"] = "media"
    stream_sid: str = Field(alias="streamSid")
    media: OutboundMedia


class OutboundMarkMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    event: Literal["mark"] = "mark"
    stream_sid: str = Field(alias="streamSid")
    mark: MarkPayload


class OutboundClearMessage(BaseModel):
    """Empties Twilio's playback buffer; every pending mark is then echoed back."""

    model_config = ConfigDict(populate_by_name=True)
    event: Literal["clear"] = "clear"
    stream_sid: str = Field(alias="streamSid")


def encode_outbound(
    message: OutboundMediaMessage | OutboundMarkMessage | OutboundClearMessage,
) -> str:
    """Serialize a message for Twilio: a text frame, ``streamSid`` spelled exactly (31951)."""
    return message.model_dump_json(by_alias=True)
