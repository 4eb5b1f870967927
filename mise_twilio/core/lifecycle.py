"""The call lifecycle of one process (sans-I/O): status callbacks deduplicated and ordered,
and each call's stream summary joined with its final status.

- ``CallLifecycle`` deduplicates and orders call status events (Twilio: "there is no guarantee
  they will arrive in the same order",
  https://www.twilio.com/docs/voice/api/call-resource#statuscallback) and never lets a status
  through after a terminal one.
- ``SummaryJoin`` puts a stream's call summary into ``call.completed`` and the call's last
  status into ``stream.stopped``, whichever of the two reaches this process first.

Nothing here reads a clock, a socket, the environment or logs: time is passed in as ``now_s``
(any monotonic seconds) and timers are deadlines the edge polls.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from mise_twilio.core.records import CallStatusEvent, CallSummary, StreamStatusEvent, StreamStopped
from mise_twilio.core.status import TERMINAL_TYPES, StatusEvent

__all__ = [
    "CallLifecycle",
    "DropReason",
    "Dropped",
    "JoinOutput",
    "SummaryJoin",
]

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
        if event.type in TERMINAL_TYPES:
            call.terminal_at_s = now_s
        return [event]


# ---------------------------------------------------------------------------------------------
# the completed / summary join


@dataclass(frozen=True, slots=True)
class JoinOutput:
    """What ``SummaryJoin`` hands back: ``records`` to publish now, in order, and
    ``close_streams``: call sids whose open streams the edge should end now (reason ``stop``)."""

    records: list[StatusEvent | StreamStopped] = field(default_factory=list)
    close_streams: list[str] = field(default_factory=list)


class SummaryJoin:
    """Joins ``call.completed`` with the summary of the call's stream, and ``stream.stopped``
    with the call's last status, for the streams and callbacks this process sees.

    Twilio sends the stream's ``stop`` before the call's ``completed`` callback, but they
    travel separately and either can come first:

    - ``stream.stopped`` first (the usual case): its summary is remembered (the last
      ``max_calls`` calls) and a later ``call.completed`` carries it.
    - ``call.completed`` while the stream is still open here: the event is held up to
      ``hold_s`` for the stream to stop, then published with the summary or without it. A
      tunnel may swallow both ``stop`` and the socket close (``docs/protocol.md`` §7), so after
      ``close_grace_s`` the join asks the edge to end the still-open stream.
    - otherwise ``call.completed`` goes out at once, without a summary.

    ``stream.stopped`` gets ``last_call_status`` from the ``CallLifecycle`` status the edge
    passes in. Record ids do not change, so a duplicate join is deduplicated downstream.
    """

    def __init__(
        self, *, hold_s: float = 5.0, close_grace_s: float = 2.0, max_calls: int = 10_000
    ) -> None:
        if hold_s < 0 or close_grace_s < 0 or max_calls < 1:
            raise ValueError("hold_s and close_grace_s must be >= 0, max_calls >= 1")
        self.hold_s = hold_s
        self.close_grace_s = close_grace_s
        self.max_calls = max_calls
        self._summaries: OrderedDict[str, CallSummary] = OrderedDict()
        self._held: dict[str, tuple[float, CallStatusEvent]] = {}
        self._close_at: dict[str, float] = {}

    def on_status(self, event: StatusEvent, *, stream_open: bool, now_s: float) -> JoinOutput:
        """A released status event. ``stream_open``: a stream of this call is open here."""
        call_sid = event.call_sid
        if not isinstance(event, CallStatusEvent) or event.type != "call.completed" or not call_sid:
            return JoinOutput([event])
        summary = self._summaries.get(call_sid)
        if summary is not None:
            return JoinOutput([event.model_copy(update={"summary": summary})])
        if stream_open:
            self._held[call_sid] = (now_s + self.hold_s, event)
            self._close_at[call_sid] = now_s + self.close_grace_s
            return JoinOutput()
        return JoinOutput([event])

    def on_stream_stopped(self, record: StreamStopped, last_call_status: str | None) -> JoinOutput:
        """A stream ended here: remember its summary, fill in the status, release a held
        ``call.completed``."""
        call_sid = record.call_sid
        if not call_sid:
            return JoinOutput([record])
        self._summaries[call_sid] = record.summary
        self._summaries.move_to_end(call_sid)
        while len(self._summaries) > self.max_calls:
            self._summaries.popitem(last=False)
        self._close_at.pop(call_sid, None)
        if record.last_call_status is None and last_call_status is not None:
            record = record.model_copy(update={"last_call_status": last_call_status})
        out: list[StatusEvent | StreamStopped] = [record]
        held = self._held.pop(call_sid, None)
        if held is not None:
            out.append(held[1].model_copy(update={"summary": record.summary}))
        return JoinOutput(out)

    def poll(self, now_s: float) -> JoinOutput:
        """Deadlines that passed: held events released without a summary, streams to end."""
        close = [sid for sid, at in self._close_at.items() if at <= now_s]
        for sid in close:
            del self._close_at[sid]
        due = [sid for sid, (at, _) in self._held.items() if at <= now_s]
        return JoinOutput([self._held.pop(sid)[1] for sid in due], close)

    def flush(self) -> list[CallStatusEvent]:
        """Shutdown: every held event, now, without a summary."""
        held = [event for _, event in self._held.values()]
        self._held.clear()
        self._close_at.clear()
        return held
