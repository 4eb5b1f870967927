"""Status callbacks → lifecycle records, and the per-process call lifecycle (sans-I/O).

Two kinds of form-encoded webhook reach ``/v1/webhook/twilio``:

* **Call status callbacks** (https://www.twilio.com/docs/voice/api/call-resource#statuscallback,
  CallStatus values: https://www.twilio.com/docs/voice/twiml#callstatus-values): ``CallSid``,
  ``CallStatus``, ``SequenceNumber`` (from 0, per call), ``Timestamp`` (RFC 2822, e.g.
  ``Thu, 12 Feb 2026 11:48:25 +0000``), ``CallDuration`` (s, on completed), ``Duration`` (billed
  minutes, ignored), ``SipResponseCode``, ``Direction``, ``From``/``To``/``CallerName``/
  ``ForwardedFrom`` (redacted by a ``PiiPolicy``), ``ParentCallSid``, ``AccountSid``.
* **Stream status callbacks** (https://www.twilio.com/docs/voice/twiml/stream#statuscallback):
  ``StreamSid``, ``StreamEvent`` (``stream-started|stream-stopped|stream-error``), ``StreamName``,
  ``StreamError``, ``Timestamp`` (ISO 8601), ``CallSid``, ``AccountSid``.

``parse_status_callback`` turns one form into a record; ``CallLifecycle`` deduplicates and orders
call events (Twilio: "there is no guarantee they will arrive in the same order") and never lets a
status through after a terminal one. Nothing here reads a clock, a socket, the environment or logs:
time is passed in as ``now_s`` (any monotonic seconds).

Record ids (stable, so sinks can deduplicate at-least-once delivery, also across replicas):

* call:   ``f"{CallSid}:{type}"``, e.g. ``CA…:call.answered`` (one record per status per call);
* stream: ``f"{StreamSid}:status:{stream_event}"``, e.g. ``MZ…:status:stream-started``, with
  ``stream_event`` normalised to the ``stream-*`` spelling.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal

from mise_twilio.core.errors import WebhookError
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import CallEventType, CallStatusEvent, StreamStatusEvent

__all__ = [
    "CALL_STATUS_TYPES",
    "STREAM_EVENTS",
    "TERMINAL_STATUSES",
    "USED_FIELDS",
    "CallLifecycle",
    "DropReason",
    "Dropped",
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

_TERMINAL_TYPES: Final[frozenset[str]] = frozenset(CALL_STATUS_TYPES[s] for s in TERMINAL_STATUSES)

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

USED_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "AccountSid", "CallSid", "CallStatus", "SequenceNumber", "Timestamp", "Direction",
        "CallDuration", "SipResponseCode", "From", "To", "CallerName", "ForwardedFrom",
        "ParentCallSid", "StreamSid", "StreamEvent", "StreamName", "StreamError",
    }
)  # fmt: skip
"""Form fields ``parse_status_callback`` reads (the edge rejects these when repeated)."""

_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UINT = re.compile(r"[0-9]{1,10}")
_MAX_SHOWN = 40


def _show(value: str) -> str:
    """A bounded, quoted rendering of an attacker-controlled value for error messages."""
    if len(value) > _MAX_SHOWN:
        value = value[:_MAX_SHOWN] + "…"
    return repr(value)


def _opt(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    return value if value else None


def _sid(params: Mapping[str, str], name: str, *, required: bool) -> str | None:
    value = _opt(params, name)
    if value is None:
        if required:
            raise WebhookError(f"missing {name}")
        return None
    if _SID.fullmatch(value) is None:
        raise WebhookError(f"{name} is not a Twilio SID: {_show(value)}")
    return value


def _uint(params: Mapping[str, str], name: str) -> int | None:
    value = _opt(params, name)
    if value is None:
        return None
    if _UINT.fullmatch(value) is None:
        raise WebhookError(f"{name} is not a non-negative integer: {_show(value)}")
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
    raise WebhookError(f"Timestamp is not {expected}: {_show(value)}")


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
    ``caller_name``/``forwarded_from`` through ``pii.redact``. Id ``f"{CallSid}:{type}"``.

    Stream: ``stream_event`` normalised via ``STREAM_EVENTS``; ``event_at`` from the ISO 8601
    ``Timestamp`` as aware UTC (RFC 2822 accepted as a fallback). Id
    ``f"{StreamSid}:status:{stream_event}"``.

    Raises ``WebhookError`` (status 400) with a message naming the field: missing ``CallSid``
    (call) or ``StreamSid`` (stream), a SID that is not ``[A-Za-z0-9_-]{1,64}``, unknown
    ``CallStatus`` or ``StreamEvent``, unparseable ``Timestamp``, a ``SequenceNumber``/
    ``CallDuration``/``SipResponseCode`` that is not a non-negative integer, or neither
    ``CallStatus`` nor ``StreamEvent``. Messages never contain From/To values.
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
        raise WebhookError(f"unknown CallStatus {_show(call_status)} (expected one of {known})")
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
    )


def _parse_stream(params: Mapping[str, str], raw_event: str) -> StreamStatusEvent:
    stream_event = STREAM_EVENTS.get(raw_event)
    if stream_event is None:
        raise WebhookError(
            f"unknown StreamEvent {_show(raw_event)} "
            "(expected stream-started, stream-stopped or stream-error)"
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


# ---------------------------------------------------------------------------------------------
# lifecycle

DropReason = Literal["duplicate_sequence", "duplicate_status", "after_terminal", "duplicate_id"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """An event ``CallLifecycle`` refused, and why (for the edge to log; never published).

    ``duplicate_sequence``: (CallSid, SequenceNumber) seen before; ``duplicate_status``:
    (CallSid, type) seen before; ``after_terminal``: the call already released a terminal
    status; ``duplicate_id``: a stream status id seen before.
    """

    event: StatusEvent
    reason: DropReason


@dataclass(slots=True)
class _Call:
    next_seq: int = 0
    seen_seqs: set[int] = field(default_factory=set)
    seen_types: set[str] = field(default_factory=set)
    held: dict[int, tuple[float, CallStatusEvent]] = field(default_factory=dict)
    last_status: str | None = None
    terminal_at_s: float | None = None


class CallLifecycle:
    """Per-process call lifecycle: dedupe, reorder by ``SequenceNumber``, stop at terminal.

    Feed every parsed event with ``accept(event, now_s)``; it returns the events ready to
    publish, in order. Call ``poll(now_s)`` periodically (e.g. every 0.25 s) to release events
    whose reorder window expired. ``take_dropped()`` drains what was refused, with reasons.
    ``now_s`` is any monotonic clock in seconds, non-decreasing across calls.

    Rules for call events (``CallStatusEvent``):

    * duplicates are dropped: same (CallSid, SequenceNumber), or same (CallSid, type), whether
      the first copy was released or is still held;
    * SequenceNumber starts at 0 per call. The next expected number is released at once, with
      any held successors; an event ahead of it is held until the gap fills or until it has
      waited ``reorder_window_s``, then everything held up to it is released in order and the
      gap is skipped. An event behind the released ones (its gap was skipped) is released when
      it arrives: order is guaranteed only within ``reorder_window_s``. Events without a
      SequenceNumber are released at once;
    * once a terminal status (completed, busy, failed, no-answer, canceled) has been released,
      every later event of that call is dropped (``after_terminal``): never ``ringing`` after
      ``completed``.

    Stream events (``StreamStatusEvent``) pass straight through, deduplicated on ``id``.

    Memory: at most ``max_calls`` calls (least recently used evicted first; an evicted call's
    held events are released in order, not lost) and ``max_calls`` stream ids. A call that
    released a terminal status is forgotten ``terminal_retention_s`` after it (its duplicates are
    dropped until then), at the next ``poll``.

    Raises ``ValueError`` for a negative window, ``max_calls < 1`` or negative retention.
    """

    def __init__(
        self,
        *,
        reorder_window_s: float = 2.0,
        max_calls: int = 10_000,
        terminal_retention_s: float = 600.0,
    ) -> None:
        if reorder_window_s < 0:
            raise ValueError("reorder_window_s must be >= 0")
        if max_calls < 1:
            raise ValueError("max_calls must be >= 1")
        if terminal_retention_s < 0:
            raise ValueError("terminal_retention_s must be >= 0")
        self.reorder_window_s = reorder_window_s
        self.max_calls = max_calls
        self.terminal_retention_s = terminal_retention_s
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._stream_ids: OrderedDict[str, None] = OrderedDict()
        self._dropped: list[Dropped] = []

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Calls currently remembered."""
        return len(self._calls)

    def last_status(self, call_sid: str) -> str | None:
        """The latest released Twilio ``CallStatus`` (e.g. ``in-progress``) of a remembered call."""
        call = self._calls.get(call_sid)
        return call.last_status if call is not None else None

    def held_count(self) -> int:
        """Events currently held in reorder buffers."""
        return sum(len(c.held) for c in self._calls.values())

    def next_deadline_s(self) -> float | None:
        """The earliest ``now_s`` at which ``poll`` will release something, or ``None``."""
        deadlines = [
            t + self.reorder_window_s for c in self._calls.values() for t, _ in c.held.values()
        ]
        return min(deadlines) if deadlines else None

    def take_dropped(self) -> list[Dropped]:
        """Events refused since the last call, oldest first (the list is cleared)."""
        dropped, self._dropped = self._dropped, []
        return dropped

    # -- feeding ---------------------------------------------------------------------------

    def accept(self, event: StatusEvent, now_s: float) -> list[StatusEvent]:
        """Take one parsed event; return the events now ready to publish, in order.

        The result may be empty (held or dropped), contain this event, and/or events it
        unblocked (held successors, or held events of an evicted call).
        """
        if isinstance(event, StreamStatusEvent):
            if event.id in self._stream_ids:
                self._stream_ids.move_to_end(event.id)
                self._dropped.append(Dropped(event, "duplicate_id"))
                return []
            self._stream_ids[event.id] = None
            while len(self._stream_ids) > self.max_calls:
                self._stream_ids.popitem(last=False)
            return [event]

        out: list[StatusEvent] = []
        call_sid = event.call_sid or ""
        call = self._calls.get(call_sid)
        if call is None:
            call = _Call()
            self._calls[call_sid] = call
            while len(self._calls) > self.max_calls:
                _, evicted = self._calls.popitem(last=False)
                out.extend(self._flush(evicted, now_s))
        else:
            self._calls.move_to_end(call_sid)

        seq = event.sequence_number
        if seq is not None and seq in call.seen_seqs:
            self._dropped.append(Dropped(event, "duplicate_sequence"))
            return out
        if event.type in call.seen_types:
            self._dropped.append(Dropped(event, "duplicate_status"))
            return out
        if call.terminal_at_s is not None:
            self._dropped.append(Dropped(event, "after_terminal"))
            return out
        call.seen_types.add(event.type)

        if seq is None or seq < call.next_seq:
            # No order information, or its gap was already skipped: release as it comes.
            if seq is not None:
                call.seen_seqs.add(seq)
            out.extend(self._release(call, event, now_s))
            return out
        call.seen_seqs.add(seq)
        call.held[seq] = (now_s, event)
        out.extend(self._release_ready(call, now_s))
        return out

    def poll(self, now_s: float) -> list[StatusEvent]:
        """Release held events whose reorder window expired (in SequenceNumber order, skipping
        gaps) and forget terminal calls older than ``terminal_retention_s``."""
        out: list[StatusEvent] = []
        forget: list[str] = []
        for call_sid, call in self._calls.items():
            if call.held:
                expired = [
                    seq
                    for seq, (held_at_s, _) in call.held.items()
                    if now_s - held_at_s >= self.reorder_window_s
                ]
                if expired:
                    last = max(expired)
                    for seq in sorted(s for s in call.held if s <= last):
                        _, ev = call.held.pop(seq)
                        call.next_seq = seq + 1
                        out.extend(self._release(call, ev, now_s))
                    out.extend(self._release_ready(call, now_s))
            if (
                call.terminal_at_s is not None
                and not call.held
                and now_s - call.terminal_at_s >= self.terminal_retention_s
            ):
                forget.append(call_sid)
        for call_sid in forget:
            del self._calls[call_sid]
        return out

    def flush(self, now_s: float) -> list[StatusEvent]:
        """Release every held event now, in order (e.g. on shutdown)."""
        out: list[StatusEvent] = []
        for call in self._calls.values():
            out.extend(self._flush(call, now_s))
        return out

    # -- internals -------------------------------------------------------------------------

    def _flush(self, call: _Call, now_s: float) -> list[StatusEvent]:
        out: list[StatusEvent] = []
        for seq in sorted(call.held):
            _, ev = call.held.pop(seq)
            call.next_seq = seq + 1
            out.extend(self._release(call, ev, now_s))
        return out

    def _release_ready(self, call: _Call, now_s: float) -> list[StatusEvent]:
        out: list[StatusEvent] = []
        while call.next_seq in call.held:
            _, ev = call.held.pop(call.next_seq)
            call.next_seq += 1
            out.extend(self._release(call, ev, now_s))
        return out

    def _release(self, call: _Call, event: CallStatusEvent, now_s: float) -> list[StatusEvent]:
        if call.terminal_at_s is not None:
            self._dropped.append(Dropped(event, "after_terminal"))
            return []
        call.last_status = event.call_status
        if event.type in _TERMINAL_TYPES:
            call.terminal_at_s = now_s
        return [event]
