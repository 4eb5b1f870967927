"""Status callbacks → lifecycle records: ``parse_status_callback`` (sans-I/O).

Two kinds of form-encoded webhook reach ``/v1/webhook/twilio``:

* **Call status callbacks** (https://www.twilio.com/docs/voice/api/call-resource#statuscallback,
  CallStatus values: https://www.twilio.com/docs/voice/twiml#callstatus-values): ``CallSid``,
  ``CallStatus``, ``SequenceNumber`` (from 0, per call), ``Timestamp`` (RFC 2822, e.g.
  ``Thu, 12 Feb 2026 11:48:25 +0000``), ``CallDuration`` (s, on completed), ``Duration`` (billed
  minutes, ignored), ``SipResponseCode``, ``Direction``, ``From``/``To``/``CallerName``/
  ``ForwardedFrom`` (redacted by a ``PiiPolicy``), ``ParentCallSid``, ``AccountSid``; with
  answering machine detection on the call (``MachineDetection``,
  https://www.twilio.com/docs/voice/answering-machine-detection), ``AnsweredBy`` (``human``,
  ``machine_start``, ``machine_end_beep``, ``machine_end_silence``, ``machine_end_other``,
  ``fax``, ``unknown``) and ``MachineDetectionDuration`` (ms).
* **Stream status callbacks** (https://www.twilio.com/docs/voice/twiml/stream#statuscallback):
  ``StreamSid``, ``StreamEvent`` (``stream-started|stream-stopped|stream-error``), ``StreamName``,
  ``StreamError``, ``Timestamp`` (ISO 8601), ``CallSid``, ``AccountSid``.

``parse_status_callback`` turns one form into a record; ``lifecycle.CallLifecycle`` then
deduplicates and orders them. Nothing here reads a clock, a socket, the environment or logs.

Record ids (stable, so sinks can deduplicate at-least-once delivery, also across replicas):

* call:   ``f"{CallSid}:{type}"``, e.g. ``CA…:call.answered`` (one record per status per call);
* stream: ``f"{StreamSid}:status:{stream_event}"``, e.g. ``MZ…:status:stream-started``, with
  ``stream_event`` normalised to the ``stream-*`` spelling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from mise_twilio.core.errors import WebhookError
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import CallEventType, CallStatusEvent, StreamStatusEvent

__all__ = [
    "ANSWERED_BY_VALUES",
    "CALL_STATUS_TYPES",
    "STREAM_EVENTS",
    "TERMINAL_STATUSES",
    "TERMINAL_TYPES",
    "USED_FIELDS",
    "StatusEvent",
    "parse_status_callback",
]

StatusEvent = CallStatusEvent | StreamStatusEvent
"""What ``parse_status_callback`` returns and ``CallLifecycle`` emits."""

CALL_STATUS_TYPES: Final[Mapping[str, CallEventType]] = {
    "queued": "call.queued",
    "initiated": "call.initiated",
    "ringing": "call.ringing",
    "in-progress": "call.answered",
    "completed": "call.completed",
    "busy": "call.busy",
    "failed": "call.failed",
    "no-answer": "call.no_answer",
    "canceled": "call.canceled",
}
"""Twilio ``CallStatus`` → record ``type``."""

TERMINAL_STATUSES: Final[frozenset[str]] = frozenset(
    {"completed", "busy", "failed", "no-answer", "canceled"}
)
"""``CallStatus`` values after which a call never changes again."""

TERMINAL_TYPES: Final[frozenset[str]] = frozenset(CALL_STATUS_TYPES[s] for s in TERMINAL_STATUSES)

STREAM_EVENTS: Final[Mapping[str, str]] = {
    "stream-started": "stream-started",
    "stream-stopped": "stream-stopped",
    "stream-error": "stream-error",
    "start": "stream-started",
    "started": "stream-started",
    "stop": "stream-stopped",
    "stopped": "stream-stopped",
    "error": "stream-error",
}
"""Accepted ``StreamEvent`` spellings → the documented ``stream-*`` value (bare forms are
accepted defensively; third-party code claims Twilio sends them)."""

ANSWERED_BY_VALUES: Final[frozenset[str]] = frozenset(
    {
        "human", "machine_start", "machine_end_beep", "machine_end_silence",
        "machine_end_other", "fax", "unknown",
    }
)  # fmt: skip
"""``AnsweredBy`` values Twilio documents (``machine_end_*`` only with
``MachineDetection=DetectMessageEnd``)."""

USED_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "AccountSid", "CallSid", "CallStatus", "SequenceNumber", "Timestamp", "Direction",
        "CallDuration", "SipResponseCode", "From", "To", "CallerName", "ForwardedFrom",
        "ParentCallSid", "AnsweredBy", "MachineDetectionDuration", "StreamSid", "StreamEvent",
        "StreamName", "StreamError",
    }
)  # fmt: skip
"""Form fields ``parse_status_callback`` reads (the edge rejects these when repeated)."""

_SID_PREFIX = {"CallSid": "CA", "ParentCallSid": "CA", "AccountSid": "AC", "StreamSid": "MZ"}
"""Twilio SIDs are a two-letter type prefix and 32 hex digits
(https://www.twilio.com/docs/glossary/what-is-a-sid)."""
_SID_HEX = re.compile(r"[0-9a-fA-F]{32}")
_UINT = re.compile(r"[0-9]{1,10}")
# Error messages (the 400 body, the log line) name the field and what it must be, never the
# value: the form is unauthenticated input and may carry a phone number in any field.
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _opt(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    return value if value else None


def _sid(params: Mapping[str, str], name: str, *, required: bool) -> str | None:
    value = _opt(params, name)
    if value is None:
        if required:
            raise WebhookError(f"missing {name}")
        return None
    prefix = _SID_PREFIX[name]
    if len(value) != 34 or value[:2] != prefix or _SID_HEX.fullmatch(value, 2) is None:
        raise WebhookError(f"{name} is not a Twilio SID ({prefix} and 32 hex digits)")
    return value


def _uint(params: Mapping[str, str], name: str) -> int | None:
    value = _opt(params, name)
    if value is None:
        return None
    if _UINT.fullmatch(value) is None:
        raise WebhookError(f"{name} is not a non-negative integer")
    return int(value)


def _rfc2822(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed


def _iso8601(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _timestamp(params: Mapping[str, str], *, iso_first: bool) -> datetime | None:
    """``Timestamp`` as an aware UTC datetime; the documented format first, then the other."""
    value = _opt(params, "Timestamp")
    if value is None:
        return None
    parsers = (_iso8601, _rfc2822) if iso_first else (_rfc2822, _iso8601)
    for parse in parsers:
        parsed = parse(value)
        if parsed is not None:
            if parsed.tzinfo is None:  # RFC 2822 "-0000" or ISO without offset: UTC by contract
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    expected = "ISO 8601" if iso_first else "RFC 2822, e.g. 'Thu, 12 Feb 2026 11:48:25 +0000'"
    raise WebhookError(f"Timestamp is not {expected}")


def parse_status_callback(
    params: Mapping[str, str], *, pii: PiiPolicy
) -> CallStatusEvent | StreamStatusEvent:
    """One status-callback form → a ``CallStatusEvent`` or a ``StreamStatusEvent``.

    ``params``: the decoded form fields (POST body or GET query), Twilio's names, str values;
    empty strings count as absent. A form with a non-empty ``StreamEvent`` is a stream callback;
    otherwise ``CallStatus`` must be present.

    Call: ``type`` from ``CALL_STATUS_TYPES`` (``in-progress`` → ``call.answered``,
    ``no-answer`` → ``call.no_answer``); ``event_at`` from the RFC 2822 ``Timestamp`` as aware
    UTC (ISO 8601 accepted as a fallback); ``sequence_number`` (int ≥ 0, or ``None`` when absent);
    ``duration_s`` from ``CallDuration`` (seconds); ``sip_response_code``; ``from``/``to``/
    ``caller_name``/``forwarded_from`` through ``pii.redact``; ``answered_by`` from
    ``AnsweredBy`` (``ANSWERED_BY_VALUES``, or another lower-case token as sent) and
    ``machine_detection_ms`` from ``MachineDetectionDuration``. Id ``f"{CallSid}:{type}"``.

    Stream: ``stream_event`` normalised via ``STREAM_EVENTS``; ``event_at`` from the ISO 8601
    ``Timestamp`` as aware UTC (RFC 2822 accepted as a fallback). Id
    ``f"{StreamSid}:status:{stream_event}"``.

    Raises ``WebhookError`` (status 400) with a message naming the field: missing ``CallSid``
    (call) or ``StreamSid`` (stream), a SID without its type prefix and 32 hex digits
    (``CA…`` call, ``AC…`` account, ``MZ…`` stream), unknown ``CallStatus`` or
    ``StreamEvent``, an ``AnsweredBy`` that is not a lower-case token
    (``[a-z][a-z0-9_]{0,31}``), unparseable ``Timestamp``, a
    ``SequenceNumber``/``CallDuration``/``SipResponseCode``/``MachineDetectionDuration`` that is
    not a non-negative integer, or neither ``CallStatus`` nor ``StreamEvent``. Messages name the
    field, never its value.
    """
    stream_event_raw = _opt(params, "StreamEvent")
    if stream_event_raw is not None:
        return _parse_stream(params, stream_event_raw)
    call_status = _opt(params, "CallStatus")
    if call_status is None:
        raise WebhookError("neither CallStatus nor StreamEvent: not a Twilio status callback")
    call_sid = _sid(params, "CallSid", required=True)
    event_type = CALL_STATUS_TYPES.get(call_status)
    if event_type is None:
        known = ", ".join(CALL_STATUS_TYPES)
        raise WebhookError(f"unknown CallStatus (expected one of {known})")
    return CallStatusEvent(
        type=event_type,
        id=f"{call_sid}:{event_type}",
        call_sid=call_sid,
        account_sid=_sid(params, "AccountSid", required=False),
        call_status=call_status,
        sequence_number=_uint(params, "SequenceNumber"),
        event_at=_timestamp(params, iso_first=False),
        direction=_opt(params, "Direction"),
        duration_s=_uint(params, "CallDuration"),
        sip_response_code=_uint(params, "SipResponseCode"),
        from_=pii.redact(_opt(params, "From")),
        to=pii.redact(_opt(params, "To")),
        caller_name=pii.redact(_opt(params, "CallerName")),
        forwarded_from=pii.redact(_opt(params, "ForwardedFrom")),
        parent_call_sid=_sid(params, "ParentCallSid", required=False),
        answered_by=_answered_by(params),
        machine_detection_ms=_uint(params, "MachineDetectionDuration"),
    )


def _answered_by(params: Mapping[str, str]) -> str | None:
    """``AnsweredBy`` as sent. A value Twilio may add later (older AMD sent ``machine``) is
    kept as long as it is a plain token: refusing it would lose the status callback."""
    value = _opt(params, "AnsweredBy")
    if value is None or _TOKEN.fullmatch(value) is not None:
        return value
    known = ", ".join(sorted(ANSWERED_BY_VALUES))
    raise WebhookError(f"AnsweredBy is not a token like {known}")


def _parse_stream(params: Mapping[str, str], raw_event: str) -> StreamStatusEvent:
    stream_event = STREAM_EVENTS.get(raw_event)
    if stream_event is None:
        raise WebhookError(
            "unknown StreamEvent (expected stream-started, stream-stopped or stream-error)"
        )
    stream_sid = _sid(params, "StreamSid", required=True)
    return StreamStatusEvent(
        id=f"{stream_sid}:status:{stream_event}",
        call_sid=_sid(params, "CallSid", required=False),
        stream_sid=stream_sid,
        account_sid=_sid(params, "AccountSid", required=False),
        stream_event=stream_event,
        stream_name=_opt(params, "StreamName"),
        stream_error=_opt(params, "StreamError"),
        event_at=_timestamp(params, iso_first=True),
    )
