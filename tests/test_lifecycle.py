"""core/lifecycle.py: CallLifecycle (dedupe, reorder, nothing after terminal) and SummaryJoin."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import CALL_SID
from test_status import (
    answered_form,
    call,
    completed_form,
    initiated_form,
    parse,
    ringing_form,
    stream_form,
)

from mise_twilio.core.lifecycle import (
    CallLifecycle,
    JoinOutput,
    SharedCall,
    SummaryJoin,
    furthest_status,
)
from mise_twilio.core.records import CallStatusEvent, CallSummary, StreamStatusEvent, StreamStopped
from mise_twilio.core.status import StatusEvent


def _four() -> list[CallStatusEvent]:
    return [call(f()) for f in (initiated_form, ringing_form, answered_form, completed_form)]


def _types(events: list[StatusEvent]) -> list[str]:
    return [e.type for e in events]


def test_in_order_delivery_releases_at_once() -> None:
    lc = CallLifecycle()
    out: list[StatusEvent] = []
    for i, ev in enumerate(_four()):
        out += lc.accept(ev, now_s=float(i))
    assert _types(out) == ["call.initiated", "call.ringing", "call.answered", "call.completed"]
    assert lc.last_status(CALL_SID) == "completed"
    assert lc.take_dropped() == []


def test_out_of_order_is_held_until_the_gap_fills() -> None:
    init, ring, ans, done = _four()
    lc = CallLifecycle(reorder_window_s=2.0)
    assert lc.accept(ring, 0.0) == []
    assert lc.held_count() == 1
    assert lc.next_deadline_s() == 2.0
    assert _types(lc.accept(init, 0.5)) == ["call.initiated", "call.ringing"]
    assert lc.last_status(CALL_SID) == "ringing"
    assert lc.accept(done, 1.0) == []
    assert _types(lc.accept(ans, 1.2)) == ["call.answered", "call.completed"]


def test_a_held_status_counts_as_received_before_it_is_released() -> None:
    init, ring, ans, done = _four()
    lc = CallLifecycle(reorder_window_s=2.0)
    assert lc.furthest_status_received(CALL_SID) is None
    assert lc.accept(ans, 0.0) == [] and lc.accept(ring, 0.1) == []  # initiated went elsewhere
    assert lc.holds(ans) and lc.holds(ring) and not lc.holds(init)
    assert lc.last_status(CALL_SID) is None  # nothing released yet
    assert lc.furthest_status_received(CALL_SID) == "in-progress"  # but Twilio sent it
    assert lc.accept(ring, 0.2) == [] and lc.holds(ring)  # a duplicate changes nothing
    released = lc.poll(2.0)
    assert _types(released) == ["call.ringing", "call.answered"]
    assert not lc.holds(ans) and lc.furthest_status_received(CALL_SID) == "in-progress"
    assert _types(lc.accept(done, 2.5)) == ["call.completed"] and not lc.holds(done)
    assert lc.furthest_status_received(CALL_SID) == "completed"


def test_window_expiry_skips_the_gap_and_releases_in_order() -> None:
    init, ring, ans, done = _four()
    lc = CallLifecycle(reorder_window_s=2.0)
    assert lc.accept(done, 0.0) == []
    assert lc.accept(ring, 1.5) == []
    assert lc.poll(1.9) == []
    # completed waited 2 s: everything held up to it goes, in order; 0 and 2 are skipped
    assert _types(lc.poll(2.0)) == ["call.ringing", "call.completed"]
    assert lc.held_count() == 0
    # late arrivals after a terminal status are dropped
    assert lc.accept(init, 3.0) == []
    assert lc.accept(ans, 3.1) == []
    dropped = lc.take_dropped()
    assert [(d.event.type, d.reason) for d in dropped] == [
        ("call.initiated", "after_terminal"),
        ("call.answered", "after_terminal"),
    ]


def test_late_ringing_after_completed_is_dropped() -> None:
    init, ring, ans, done = _four()
    lc = CallLifecycle(reorder_window_s=2.0)
    out = lc.accept(init, 0.0) + lc.accept(ans, 0.1) + lc.accept(done, 0.2)
    assert out == [init]
    out += lc.poll(2.5)
    assert _types(out) == ["call.initiated", "call.answered", "call.completed"]
    assert lc.accept(ring, 5.0) == []
    assert lc.poll(10.0) == []
    assert [(d.event.type, d.reason) for d in lc.take_dropped()] == [
        ("call.ringing", "after_terminal")
    ]
    assert lc.last_status(CALL_SID) == "completed"


def test_late_non_terminal_event_is_released_when_it_arrives() -> None:
    init, ring, _, _ = _four()
    lc = CallLifecycle(reorder_window_s=1.0)
    assert lc.accept(ring, 0.0) == []
    assert lc.poll(1.0) == [ring]
    assert lc.accept(init, 1.5) == [init]  # its gap was skipped: order is best effort


def test_duplicates_dropped_by_sequence_and_by_status() -> None:
    init, ring, _, done = _four()
    lc = CallLifecycle()
    assert lc.accept(init, 0.0) == [init]
    assert lc.accept(init, 0.1) == []  # Twilio retry
    retyped = call(initiated_form(SequenceNumber="7"))  # same status, other sequence
    assert lc.accept(retyped, 0.2) == []
    assert lc.accept(done, 0.3) == []  # held (1, 2 missing)
    assert lc.accept(done, 0.4) == []  # duplicate of a held one
    assert lc.accept(ring, 0.5) == [ring]
    assert [d.reason for d in lc.take_dropped()] == [
        "duplicate_sequence",
        "duplicate_status",
        "duplicate_sequence",
    ]
    assert _types(lc.poll(3.0)) == ["call.completed"]
    assert lc.accept(done, 4.0) == []
    assert [d.reason for d in lc.take_dropped()] == ["duplicate_sequence"]


def test_events_without_sequence_number_pass_at_once() -> None:
    lc = CallLifecycle()
    ev = call({"CallSid": CALL_SID, "CallStatus": "completed"})
    assert lc.accept(ev, 0.0) == [ev]
    assert lc.accept(ev, 0.1) == []
    late = call({"CallSid": CALL_SID, "CallStatus": "ringing"})
    assert lc.accept(late, 0.2) == []
    assert [d.reason for d in lc.take_dropped()] == ["duplicate_status", "after_terminal"]


def test_stream_events_pass_through_with_dedupe() -> None:
    lc = CallLifecycle()
    started = parse(stream_form())
    bare = parse(stream_form(StreamEvent="start"))
    assert lc.accept(started, 0.0) == [started]
    assert lc.accept(bare, 0.1) == []
    assert [d.reason for d in lc.take_dropped()] == ["duplicate_id"]
    stopped = parse(stream_form(StreamEvent="stream-stopped"))
    assert lc.accept(stopped, 0.2) == [stopped]
    assert len(lc) == 0  # no call state for stream events


def _call_events(n: int) -> list[CallStatusEvent]:
    return [call(initiated_form(CallSid=f"CA{i:032x}", SequenceNumber="1")) for i in range(n)]


def test_max_calls_bounds_memory_and_eviction_releases_held_events() -> None:
    lc = CallLifecycle(max_calls=3, reorder_window_s=2.0)
    out: list[StatusEvent] = []
    events = _call_events(10)  # each waits for a missing sequence 0
    for i, ev in enumerate(events):
        out += lc.accept(ev, now_s=i * 0.01)
        assert len(lc) <= 3
    # the 7 evicted calls released their held event, oldest first; nothing was lost
    assert [e.call_sid for e in out] == [e.call_sid for e in events[:7]]
    assert lc.held_count() == 3
    assert [e.call_sid for e in lc.poll(5.0)] == [e.call_sid for e in events[7:]]
    for i in range(1000):
        lc.accept(parse(stream_form(StreamSid=f"MZ{i:032x}")), 6.0)
    assert len(lc._stream_ids) <= 3


def test_terminal_calls_are_forgotten_after_retention() -> None:
    init = call(initiated_form())
    lc = CallLifecycle(terminal_retention_s=60.0)
    lc.accept(init, 0.0)
    lc.poll(1.0)
    assert len(lc) == 1  # not terminal: kept
    lc.accept(call(initiated_form(CallStatus="completed", SequenceNumber="1")), 2.0)
    lc.poll(30.0)
    assert lc.last_status(CALL_SID) == "completed"
    lc.poll(62.0)
    assert len(lc) == 0
    assert lc.last_status(CALL_SID) is None


def test_flush_releases_everything_held() -> None:
    _, ring, _, done = _four()
    lc = CallLifecycle()
    lc.accept(done, 0.0)
    lc.accept(ring, 0.0)
    assert _types(lc.flush(0.1)) == ["call.ringing", "call.completed"]


@pytest.mark.parametrize(
    "kwargs", [{"reorder_window_s": -1.0}, {"max_calls": 0}, {"terminal_retention_s": -1.0}]
)
def test_bad_lifecycle_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CallLifecycle(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# properties


def _seq(event: StatusEvent) -> int | None:
    assert isinstance(event, CallStatusEvent)
    return event.sequence_number


ORDER = ["call.initiated", "call.ringing", "call.answered", "call.completed"]


@st.composite
def deliveries(draw: st.DrawFn, max_step_s: float) -> list[tuple[int, float]]:
    """A shuffle of sequence numbers 0..3 with random duplicates and small time steps."""
    picks = draw(st.lists(st.integers(0, 3), max_size=6))
    order = draw(st.permutations([0, 1, 2, 3, *picks]))
    steps = draw(
        st.lists(
            st.floats(0.0, max_step_s, allow_nan=False), min_size=len(order), max_size=len(order)
        )
    )
    return list(zip(order, steps, strict=True))


def _run(plan: list[tuple[int, float]], window_s: float) -> tuple[list[StatusEvent], CallLifecycle]:
    events = _four()
    lc = CallLifecycle(reorder_window_s=window_s)
    now = 0.0
    out: list[StatusEvent] = []
    for seq, step in plan:
        now += step
        out += lc.poll(now)
        out += lc.accept(events[seq], now)
    out += lc.poll(now + window_s + 1.0)  # past every deadline (no float edge)
    return out, lc


@settings(max_examples=300, deadline=None)
@given(deliveries(max_step_s=0.2))
def test_shuffled_within_window_gives_each_status_once_in_order(
    plan: list[tuple[int, float]],
) -> None:
    # 10 deliveries x 0.2 s < the 2.5 s window: every status is released, in order
    out, lc = _run(plan, window_s=2.5)
    assert _types(out) == ORDER
    assert [_seq(e) for e in out] == [0, 1, 2, 3]
    assert lc.held_count() == 0
    assert lc.last_status(CALL_SID) == "completed"


@settings(max_examples=300, deadline=None)
@given(deliveries(max_step_s=1.5))
def test_any_timing_gives_each_status_at_most_once_and_nothing_after_terminal(
    plan: list[tuple[int, float]],
) -> None:
    out, lc = _run(plan, window_s=2.0)
    types = _types(out)
    assert len(types) == len(set(types))
    assert types[-1] == "call.completed"
    released = {_seq(e) for e in out}
    dropped = lc.take_dropped()
    # every status was either released or dropped after the terminal one
    after_terminal = {_seq(d.event) for d in dropped if d.reason == "after_terminal"}
    assert released | after_terminal == {0, 1, 2, 3}
    assert not released & after_terminal
    assert all(d.reason != "duplicate_status" for d in dropped)
    assert lc.held_count() == 0


@settings(max_examples=300, deadline=None)
@given(
    seqs=st.permutations([0, 1, 2, 3]),
    plan=deliveries(max_step_s=1.5),
)
def test_nothing_is_released_after_a_terminal_status_whatever_its_sequence_number(
    seqs: list[int], plan: list[tuple[int, float]]
) -> None:
    # Sequence numbers shuffled against the statuses: a terminal status can carry a lower
    # number than a ringing or answered one (a replayed or hostile callback). Whatever the
    # numbering and timing, once the terminal status is out nothing follows it.
    events = [
        e.model_copy(update={"sequence_number": seq}) for e, seq in zip(_four(), seqs, strict=True)
    ]
    lc = CallLifecycle(reorder_window_s=2.0)
    now = 0.0
    out: list[StatusEvent] = []
    for index, step in plan:
        now += step
        out += lc.poll(now)
        out += lc.accept(events[index], now)
    out += lc.poll(now + 3.0)  # past every deadline (no float edge)
    types = _types(out)
    assert types[-1] == "call.completed"
    assert len(types) == len(set(types))
    dropped = lc.take_dropped()
    after_terminal = {d.event.type for d in dropped if d.reason == "after_terminal"}
    assert set(types) | after_terminal == set(ORDER)
    assert not set(types) & after_terminal


# ---------------------------------------------------------------------------------------------
# SummaryJoin

SUMMARY = CallSummary(
    duration_ms=1000, talk_ms={"caller": 500}, talk_ratio={"caller": 1.0}, turn_counts={"caller": 1}
)


def _stopped(last_call_status: str | None = None) -> StreamStopped:
    return StreamStopped(
        id="MZ1:stream.stopped",
        call_sid=CALL_SID,
        stream_sid="MZ1",
        reason="stop",
        summary=SUMMARY,
        last_call_status=last_call_status,
    )


def test_completed_after_the_stream_stopped_carries_its_summary() -> None:
    join = SummaryJoin()
    out = join.on_stream_stopped(_stopped(), "in-progress")
    assert [r.type for r in out.records] == ["stream.stopped"]
    assert isinstance(out.records[0], StreamStopped)
    assert out.records[0].last_call_status == "in-progress"
    completed = call(completed_form())
    out = join.on_status(completed, stream_open=False, now_s=0.0)
    assert len(out.records) == 1 and isinstance(out.records[0], CallStatusEvent)
    assert out.records[0].summary == SUMMARY
    assert out.records[0].id == completed.id  # the same id: a duplicate join dedupes


def test_completed_while_the_stream_is_open_waits_for_it() -> None:
    join = SummaryJoin(hold_s=5.0, close_grace_s=2.0)
    completed = call(completed_form())
    assert join.on_status(completed, stream_open=True, now_s=10.0).records == []
    assert join.poll(11.0).close_streams == []
    assert join.poll(12.0).close_streams == [CALL_SID]  # the grace is over: end the stream
    out = join.on_stream_stopped(_stopped(), "completed")
    assert [r.type for r in out.records] == ["stream.stopped", "call.completed"]
    held = out.records[1]
    assert isinstance(held, CallStatusEvent) and held.summary == SUMMARY
    assert join.poll(20.0).records == []  # released once, not again at the deadline


def test_a_held_completed_goes_out_without_a_summary_at_its_deadline() -> None:
    join = SummaryJoin(hold_s=5.0)
    completed = call(completed_form())
    join.on_status(completed, stream_open=True, now_s=0.0)
    assert join.poll(4.9).records == []
    out = join.poll(5.0)
    assert len(out.records) == 1 and isinstance(out.records[0], CallStatusEvent)
    assert out.records[0].summary is None


def test_other_events_pass_through_the_join() -> None:
    join = SummaryJoin()
    ringing = call(ringing_form())
    stream_event = parse(stream_form())
    assert isinstance(stream_event, StreamStatusEvent)
    for event in (ringing, stream_event):
        assert join.on_status(event, stream_open=True, now_s=0.0).records == [event]


def test_shutdown_flushes_held_events_and_the_summary_cache_is_bounded() -> None:
    join = SummaryJoin(max_calls=2)
    for n in range(3):
        stopped = _stopped().model_copy(update={"call_sid": f"CA{n}"})
        join.on_stream_stopped(stopped, None)
    completed = call(completed_form()).model_copy(update={"call_sid": "CA0"})
    out = join.on_status(completed, stream_open=False, now_s=0.0)
    assert isinstance(out.records[0], CallStatusEvent)
    assert out.records[0].summary is None  # CA0's summary was evicted (oldest of three)
    join.on_status(call(completed_form()), stream_open=True, now_s=0.0)
    assert [e.type for e in join.flush().records] == ["call.completed"]


# ---------------------------------------------------------------------------------------------
# SummaryJoin across replicas (shared mode)
#
# ``FakeHash`` has the semantics of the Redis hash in server/shared_join.py (HSETNX, HSET, read
# back in the same transaction); the real one runs in tests/e2e/test_shared_join.py.


class FakeHash:
    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def state(self) -> SharedCall:
        f = self.fields
        return SharedCall(
            summary=SUMMARY if "summary" in f else None,
            call_statuses=frozenset(k[7:] for k in f if k.startswith("status:")),
            open_streams=sum(1 for k, v in f.items() if k.startswith("stream:") and v == "open"),
            completed=COMPLETED if "completed" in f else None,
            completed_claimed="claimed" in f,
        )

    def started(self, stream_sid: str) -> None:
        self.fields.setdefault(f"stream:{stream_sid}", "open")

    def status(self, event: CallStatusEvent) -> SharedCall:
        self.fields[f"status:{event.call_status}"] = "1"
        if event.type == "call.completed":
            self.fields["completed"] = event.id
        return self.state()

    def stopped(self, stream_sid: str) -> SharedCall:
        self.fields[f"stream:{stream_sid}"] = "stopped"
        self.fields["summary"] = "…"
        return self.state()

    def claim(self, owner: str) -> tuple[bool, SharedCall]:
        won = "claimed" not in self.fields
        self.fields.setdefault("claimed", owner)
        return won, self.state()


COMPLETED = call(completed_form())


class Replica:
    """One process's SummaryJoin fed through the shared hash, claims resolved at once."""

    def __init__(self, name: str, store: FakeHash) -> None:
        self.name, self.store = name, store
        self.join = SummaryJoin(hold_s=5.0, close_grace_s=2.0, remote_hold_s=30.0)
        self.published: list[StatusEvent | StreamStopped] = []

    def settle(self, out: JoinOutput) -> None:
        self.published += out.records
        for call_sid in out.claims:
            won, state = self.store.claim(self.name)
            self.settle(self.join.on_claim(call_sid, won, state))

    def status(self, event: CallStatusEvent, now_s: float, *, stream_open: bool = False) -> None:
        shared = self.store.status(event)
        self.settle(self.join.on_status(event, stream_open=stream_open, now_s=now_s, shared=shared))

    def stop(self, last: str | None = None) -> None:
        shared = self.store.stopped("MZ1")
        self.settle(self.join.on_stream_stopped(_stopped(), last, shared))

    def poll(self, now_s: float) -> None:
        self.settle(self.join.poll(now_s))


def _completed(replicas: list[Replica]) -> list[CallStatusEvent]:
    return [
        r for rep in replicas for r in rep.published if isinstance(r, CallStatusEvent)
        and r.type == "call.completed"
    ]  # fmt: skip


def test_furthest_status_follows_the_call_progress() -> None:
    assert furthest_status([]) is None
    assert furthest_status({"ringing", "in-progress", "initiated"}) == "in-progress"
    assert furthest_status({"in-progress", "completed"}) == "completed"
    assert furthest_status({"bogus", "queued"}) == "queued"


def test_shared_stop_first_then_completed_elsewhere_carries_the_summary() -> None:
    store = FakeHash()
    a, b = Replica("a", store), Replica("b", store)
    store.started("MZ1")
    b.status(call(answered_form()), 0.0)
    a.stop()
    stopped = a.published[0]
    assert isinstance(stopped, StreamStopped) and stopped.last_call_status == "in-progress"
    b.status(COMPLETED, 1.0)
    done = _completed([a, b])
    assert [(e.id, e.summary) for e in done] == [(COMPLETED.id, SUMMARY)]
    assert b.published[-1] is done[0]  # b saw the second half: b published it


def test_shared_completed_while_the_stream_is_open_elsewhere_is_published_by_the_stopper() -> None:
    store = FakeHash()
    a, b = Replica("a", store), Replica("b", store)
    store.started("MZ1")
    b.status(COMPLETED, 0.0)
    assert _completed([a, b]) == []  # held: a stream of the call is open on a
    a.stop()
    stopped = a.published[0]
    assert isinstance(stopped, StreamStopped) and stopped.last_call_status == "completed"
    assert [(e.summary, e in a.published) for e in _completed([a, b])] == [(SUMMARY, True)]
    b.poll(30.0)  # b's deadline: its claim loses, nothing twice
    assert len(_completed([a, b])) == 1 and b.join.held_count() == 0


def test_shared_remote_hold_ends_without_a_summary_when_the_stream_never_stops() -> None:
    store = FakeHash()
    a, b = Replica("a", store), Replica("b", store)
    store.started("MZ1")  # a dies with the stream open (SIGKILL): its stop never comes
    b.status(COMPLETED, 0.0)
    b.poll(29.9)
    assert _completed([a, b]) == []
    b.poll(30.0)
    assert [e.summary for e in _completed([a, b])] == [None]
    a.stop()  # ... or it comes after all: call.completed was claimed, not published again
    assert len(_completed([a, b])) == 1


def test_shared_no_stream_anywhere_publishes_at_once_and_duplicates_are_dropped() -> None:
    store = FakeHash()
    a, b = Replica("a", store), Replica("b", store)
    a.status(COMPLETED, 0.0)
    b.status(COMPLETED, 0.0)  # Twilio's retry reached the other replica
    assert [e.summary for e in _completed([a, b])] == [None]


def test_shared_every_interleaving_publishes_call_completed_once_with_the_summary() -> None:
    # stop on a, completed on b, both deadlines: in any order (the deadlines last), one
    # call.completed, joined whenever the stop came before the remote hold ran out.
    import itertools

    steps = ["stop", "completed"]
    for order in itertools.permutations(steps):
        store = FakeHash()
        a, b = Replica("a", store), Replica("b", store)
        store.started("MZ1")
        for step in order:
            if step == "stop":
                a.stop()
            else:
                b.status(COMPLETED, 0.0)
        a.poll(100.0)
        b.poll(100.0)
        done = _completed([a, b])
        assert [e.summary for e in done] == [SUMMARY], order


def test_shared_local_stream_holds_and_asks_to_close_it() -> None:
    store = FakeHash()
    a = Replica("a", store)
    store.started("MZ1")
    a.status(COMPLETED, 10.0, stream_open=True)
    assert a.join.poll(12.0).close_streams == [CALL_SID]
    a.stop()
    assert [e.summary for e in _completed([a])] == [SUMMARY]


def test_store_failure_falls_back_and_never_drops() -> None:
    join = SummaryJoin()
    # the claim's round trip failed: publish anyway (another replica may too: same id)
    out = join.on_status(COMPLETED, stream_open=False, now_s=0.0, shared=SharedCall())
    assert out.claims == [CALL_SID] and out.records == []
    out = join.on_claim(CALL_SID, None, None)
    assert [(r.id, getattr(r, "summary", 0)) for r in out.records] == [(COMPLETED.id, None)]
    # a shared hold, then the stop's round trip fails: the in-process path releases it
    join = SummaryJoin()
    join.on_status(COMPLETED, stream_open=True, now_s=0.0, shared=SharedCall(open_streams=1))
    out = join.on_stream_stopped(_stopped(), "in-progress", None)
    assert [r.type for r in out.records] == ["stream.stopped", "call.completed"]
    assert isinstance(out.records[1], CallStatusEvent) and out.records[1].summary == SUMMARY


def test_shutdown_claims_shared_holds() -> None:
    join = SummaryJoin()
    join.on_status(COMPLETED, stream_open=False, now_s=0.0, shared=SharedCall(open_streams=1))
    out = join.flush()
    assert out.records == [] and out.claims == [CALL_SID]
    won = join.on_claim(CALL_SID, True, SharedCall(summary=SUMMARY))
    assert isinstance(won.records[0], CallStatusEvent) and won.records[0].summary == SUMMARY
