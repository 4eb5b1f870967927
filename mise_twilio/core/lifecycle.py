"""The call lifecycle of one process (sans-I/O): status callbacks deduplicated and ordered,
and each call's stream summary joined with its final status.

- ``CallLifecycle`` deduplicates and orders call status events (Twilio: "there is no guarantee
  they will arrive in the same order",
  https://www.twilio.com/docs/voice/api/call-resource#statuscallback) and never lets a status
  through after a terminal one.
- ``SummaryJoin`` puts a stream's call summary into ``call.completed`` and the call's last
  status into ``stream.stopped``, whichever of the two comes first, in this process or,
  through a store the replicas share (``SharedCall``; the edge does the reads and writes),
  across replicas.

Nothing here reads a clock, a socket, the environment or logs: time is passed in as ``now_s``
(any monotonic seconds) and timers are deadlines the edge polls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from mise_twilio.core.records import CallStatusEvent, CallSummary, StreamStatusEvent, StreamStopped
from mise_twilio.core.status import TERMINAL_STATUSES, TERMINAL_TYPES, StatusEvent

__all__ = [
    "CallLifecycle",
    "DropReason",
    "Dropped",
    "JoinOutput",
    "SharedCall",
    "SummaryJoin",
    "furthest_status",
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
    received_statuses: set[str] = field(default_factory=set)
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

    def holds(self, event: StatusEvent) -> bool:
        """Whether ``event`` (as passed to ``accept``) waits in a reorder buffer now."""
        if not isinstance(event, CallStatusEvent) or event.sequence_number is None:
            return False
        call = self._calls.get(event.call_sid or "")
        held = call.held.get(event.sequence_number) if call is not None else None
        return held is not None and held[1] is event

    def furthest_status_received(self, call_sid: str) -> str | None:
        """The furthest ``CallStatus`` (``furthest_status``) of every event accepted for a
        remembered call, released or still held for reordering: a status ahead of a gap is
        real (Twilio sent it), only its publication waits. ``None`` for an unknown call."""
        call = self._calls.get(call_sid)
        return furthest_status(call.received_statuses) if call is not None else None

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
        call.received_statuses.add(event.call_status)

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

_STATUS_RANK: Final[Mapping[str, int]] = {
    "queued": 0,
    "initiated": 1,
    "ringing": 2,
    "in-progress": 3,
    **dict.fromkeys(TERMINAL_STATUSES, 4),
}
"""How far along its life a call is at each ``CallStatus`` (Twilio's call progress:
queued → initiated → ringing → in-progress → a terminal status). The shared join knows which
statuses any replica received, not in which order they arrived, so the furthest one is the
call's last status."""


def furthest_status(statuses: Iterable[str]) -> str | None:
    """The ``CallStatus`` furthest along the call's progress (``_STATUS_RANK``; an unknown
    status ranks below ``queued``), or ``None`` for none. Ties go to the alphabetically first,
    so every replica picks the same one."""
    ranked = sorted(statuses, key=lambda s: (-_STATUS_RANK.get(s, -1), s))
    return ranked[0] if ranked else None


@dataclass(frozen=True, slots=True)
class SharedCall:
    """One call's join state in a store every replica shares (the edge reads it right after
    writing its own half, in the same transaction).

    - ``summary``: the summary of a stream of this call that stopped on any replica (the last
      one written).
    - ``call_statuses``: every ``CallStatus`` any replica received for the call (released, or
      held for reordering).
    - ``open_streams``: streams of this call started and not yet stopped, on any replica.
    - ``completed``: the call's ``call.completed`` as released by a replica (without summary).
    - ``completed_claimed``: a replica has claimed publishing ``call.completed``; the claim is
      the one place two replicas race, and the store grants it once (``SummaryJoin.on_claim``).
    """

    summary: CallSummary | None = None
    call_statuses: frozenset[str] = frozenset()
    open_streams: int = 0
    completed: CallStatusEvent | None = None
    completed_claimed: bool = False


@dataclass(frozen=True, slots=True)
class JoinOutput:
    """What ``SummaryJoin`` hands back: ``records`` to publish now, in order;
    ``close_streams``: call sids whose open streams the edge should end now (reason ``stop``);
    ``claims``: call sids whose ``call.completed`` the edge should claim in the shared store,
    then report with ``SummaryJoin.on_claim`` (shared mode only)."""

    records: list[StatusEvent | StreamStopped] = field(default_factory=list)
    close_streams: list[str] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Held:
    deadline_s: float
    event: CallStatusEvent
    shared: bool  # released through a claim (shared mode), not published directly


class SummaryJoin:
    """Joins ``call.completed`` with the summary of the call's stream, and ``stream.stopped``
    with the call's last status.

    Twilio sends the stream's ``stop`` before the call's ``completed`` callback, but they
    travel separately and either can come first, to the same process or, behind a load
    balancer, to different replicas.

    **In-process** (no shared store, or the store failed for this event):

    - ``stream.stopped`` first (the usual case): its summary is remembered (the last
      ``max_calls`` calls) and a later ``call.completed`` carries it.
    - ``call.completed`` while the stream is still open here: the event is held up to
      ``hold_s`` for the stream to stop, then published with the summary or without it. A
      tunnel may swallow both ``stop`` and the socket close (``docs/protocol.md`` §7), so after
      ``close_grace_s`` the join asks the edge to end the still-open stream.
    - otherwise ``call.completed`` goes out at once, without a summary.

    **Shared** (the edge passes the ``SharedCall`` it read after writing its half): each
    replica writes what it saw (stream open/stopped with its summary, every released status,
    ``call.completed``) and decides from the whole state:

    - ``call.completed`` with a summary known (here or shared), or with no stream open
      anywhere: claim it now. With a stream open here: hold ``hold_s`` (and end the stream
      after ``close_grace_s``) as in-process; open on another replica only: hold
      ``remote_hold_s`` (longer than that replica's idle timeout, so a stream whose ``stop``
      was lost still ends and joins). At the deadline: claim.
    - ``stream.stopped``: ``last_call_status`` is the furthest status any replica saw; if the
      call's ``call.completed`` is in the store and unclaimed (it arrived while this stream was
      open), claim it.
    - ``on_claim``: the replica that wins publishes ``call.completed`` with the summary the
      store holds; a loser publishes nothing. If the store failed, publish anyway: a record
      is never dropped, at worst it is published twice with the same id.

    Record ids never change, so any duplicate is deduplicated downstream on ``id``.
    """

    def __init__(
        self,
        *,
        hold_s: float = 5.0,
        close_grace_s: float = 2.0,
        max_calls: int = 10_000,
        remote_hold_s: float = 30.0,
    ) -> None:
        if hold_s < 0 or close_grace_s < 0 or remote_hold_s < 0 or max_calls < 1:
            raise ValueError("hold_s, close_grace_s, remote_hold_s must be >= 0, max_calls >= 1")
        self.hold_s = hold_s
        self.close_grace_s = close_grace_s
        self.remote_hold_s = remote_hold_s
        self.max_calls = max_calls
        self._summaries: OrderedDict[str, CallSummary] = OrderedDict()
        self._held: dict[str, _Held] = {}
        self._close_at: dict[str, float] = {}
        self._claiming: dict[str, CallStatusEvent] = {}

    def held_count(self) -> int:
        """``call.completed`` events held or waiting for a claim."""
        return len(self._held) + len(self._claiming)

    def on_status(
        self,
        event: StatusEvent,
        *,
        stream_open: bool,
        now_s: float,
        shared: SharedCall | None = None,
    ) -> JoinOutput:
        """A released status event. ``stream_open``: a stream of this call is open here.
        ``shared``: the call's shared state after this event was written (shared mode)."""
        call_sid = event.call_sid
        if not isinstance(event, CallStatusEvent) or event.type != "call.completed" or not call_sid:
            return JoinOutput([event])
        summary = self._summaries.get(call_sid)
        if shared is None:
            if summary is not None:
                return JoinOutput([event.model_copy(update={"summary": summary})])
            if stream_open:
                self._hold(call_sid, event, now_s + self.hold_s, shared=False)
                self._close_at[call_sid] = now_s + self.close_grace_s
                return JoinOutput()
            return JoinOutput([event])
        if shared.completed_claimed:
            return JoinOutput()  # a duplicate: another replica has published it
        if summary is None and shared.summary is None:
            if stream_open:
                self._hold(call_sid, event, now_s + self.hold_s, shared=True)
                self._close_at[call_sid] = now_s + self.close_grace_s
                return JoinOutput()
            if shared.open_streams > 0:
                self._hold(call_sid, event, now_s + self.remote_hold_s, shared=True)
                return JoinOutput()
        return self._claim(call_sid, event)

    def on_stream_stopped(
        self,
        record: StreamStopped,
        last_call_status: str | None,
        shared: SharedCall | None = None,
    ) -> JoinOutput:
        """A stream ended here: remember its summary, fill in the status (``last_call_status``
        as this process knows it, and what ``shared`` holds), release a held
        ``call.completed`` (in-process) or claim it (shared)."""
        call_sid = record.call_sid
        if not call_sid:
            return JoinOutput([record])
        self._summaries[call_sid] = record.summary
        self._summaries.move_to_end(call_sid)
        while len(self._summaries) > self.max_calls:
            self._summaries.popitem(last=False)
        self._close_at.pop(call_sid, None)
        known = {last_call_status} if last_call_status is not None else set()
        if shared is not None:
            known |= shared.call_statuses
        status = furthest_status(known)
        if record.last_call_status is None and status is not None:
            record = record.model_copy(update={"last_call_status": status})
        out = JoinOutput([record])
        held = self._held.pop(call_sid, None)
        if shared is None:
            if held is not None:
                out.records.append(held.event.model_copy(update={"summary": record.summary}))
            return out
        pending = held.event if held is not None else None
        if pending is None and shared.completed is not None and not shared.completed_claimed:
            pending = shared.completed  # it reached another replica while we streamed
        if pending is not None:
            out.claims.extend(self._claim(call_sid, pending).claims)
        return out

    def on_claim(self, call_sid: str, won: bool | None, shared: SharedCall | None) -> JoinOutput:
        """The result of a claim the join asked for: ``won`` ``True`` (publish, with the
        summary ``shared`` or this process knows), ``False`` (another replica publishes it),
        ``None`` (the store failed: publish anyway, a possible duplicate with the same id)."""
        event = self._claiming.pop(call_sid, None)
        if event is None or won is False:
            return JoinOutput()
        summary = shared.summary if shared is not None else None
        if summary is None:
            summary = self._summaries.get(call_sid, event.summary)
        return JoinOutput([event.model_copy(update={"summary": summary})])

    def poll(self, now_s: float) -> JoinOutput:
        """Deadlines that passed: held events released without a summary (in-process) or
        claimed (shared), streams to end."""
        close = [sid for sid, at in self._close_at.items() if at <= now_s]
        for sid in close:
            del self._close_at[sid]
        out = JoinOutput(close_streams=close)
        for sid in [sid for sid, held in self._held.items() if held.deadline_s <= now_s]:
            self._release(sid, out)
        return out

    def flush(self) -> JoinOutput:
        """Shutdown: every held event now, without a summary (in-process) or claimed (shared:
        the store may hold a summary by now)."""
        out = JoinOutput()
        for sid in list(self._held):
            self._release(sid, out)
        self._close_at.clear()
        return out

    def next_deadline_s(self) -> float | None:
        """The earliest ``now_s`` at which ``poll`` will release something, or ``None``."""
        deadlines = [h.deadline_s for h in self._held.values()] + list(self._close_at.values())
        return min(deadlines) if deadlines else None

    # -- internals -------------------------------------------------------------------------

    def _hold(
        self, call_sid: str, event: CallStatusEvent, deadline_s: float, *, shared: bool
    ) -> None:
        self._held[call_sid] = _Held(deadline_s, event, shared)

    def _claim(self, call_sid: str, event: CallStatusEvent) -> JoinOutput:
        self._claiming[call_sid] = event
        return JoinOutput(claims=[call_sid])

    def _release(self, call_sid: str, out: JoinOutput) -> None:
        held = self._held.pop(call_sid)
        if held.shared:
            out.claims.extend(self._claim(call_sid, held.event).claims)
        else:
            out.records.append(held.event)
