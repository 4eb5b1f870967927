"""Status callbacks: parsing (real field sets from twilio-protocol.md §5) and CallLifecycle."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ACCOUNT_SID, CALL_SID, FROM, TO, status_form

from mise_twilio.core.errors import WebhookError
from mise_twilio.core.lifecycle import CallLifecycle
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import CallStatusEvent, StreamStatusEvent, from_json, to_json
from mise_twilio.core.status import StatusEvent, parse_status_callback

PII = PiiPolicy(b"test-pii-key", keep=False)
STREAM_SID = "MZ0123456789abcdef0123456789abcdef"


def initiated_form(**overrides: str) -> dict[str, str]:
    """Every field of the real `initiated` callback (protocol §5), outbound-api, to India."""
    return status_form(**overrides)


def ringing_form() -> dict[str, str]:
    return initiated_form(
        CallStatus="ringing", SequenceNumber="1", Timestamp="Thu, 12 Feb 2026 11:48:27 +0000"
    )


def answered_form() -> dict[str, str]:
    return initiated_form(
        CallStatus="in-progress", SequenceNumber="2", Timestamp="Thu, 12 Feb 2026 11:48:31 +0000"
    )


def completed_form() -> dict[str, str]:
    return initiated_form(
        CallStatus="completed",
        SequenceNumber="3",
        Timestamp="Thu, 12 Feb 2026 11:50:02 +0000",
        CallDuration="91",
        Duration="2",
        SipResponseCode="200",
    )


def stream_form(**overrides: str) -> dict[str, str]:
    form = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": CALL_SID,
        "StreamSid": STREAM_SID,
        "StreamName": "mise",
        "StreamEvent": "stream-started",
        "StreamError": "",
        "Timestamp": "2026-02-12T11:48:31.512Z",
    }
    form.update(overrides)
    return form


def parse(form: dict[str, str]) -> CallStatusEvent | StreamStatusEvent:
    return parse_status_callback(form, pii=PII)


def call(form: dict[str, str]) -> CallStatusEvent:
    event = parse(form)
    assert isinstance(event, CallStatusEvent)
    return event


# ---------------------------------------------------------------------------------------------
# parsing


def test_real_initiated_callback_parses_every_field() -> None:
    ev = call(initiated_form())
    assert ev.type == "call.initiated"
    assert ev.id == f"{CALL_SID}:call.initiated"
    assert ev.call_sid == CALL_SID
    assert ev.account_sid == ACCOUNT_SID
    assert ev.call_status == "initiated"
    assert ev.sequence_number == 0
    assert ev.event_at == datetime(2026, 2, 12, 11, 48, 25, tzinfo=UTC)
    assert ev.event_at is not None and ev.event_at.utcoffset() is not None
    assert ev.direction == "outbound-api"
    assert ev.duration_s is None
    assert ev.sip_response_code is None
    assert ev.from_ == PII.redact(FROM)
    assert ev.from_ is not None and ev.from_.startswith("+1~")
    assert ev.to is not None and ev.to.startswith("+91~")
    assert ev.caller_name is None
    assert ev.forwarded_from is None
    assert ev.parent_call_sid is None
    text = to_json(ev)
    assert FROM not in text and TO not in text
    assert from_json(text) == ev


def test_lifecycle_statuses_and_completed_extras() -> None:
    assert call(ringing_form()).type == "call.ringing"
    answered = call(answered_form())
    assert answered.type == "call.answered"
    assert answered.call_status == "in-progress"
    assert answered.id == f"{CALL_SID}:call.answered"
    done = call(completed_form())
    assert done.type == "call.completed"
    assert done.sequence_number == 3
    assert done.duration_s == 91
    assert done.sip_response_code == 200
    assert done.event_at == datetime(2026, 2, 12, 11, 50, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        ("queued", "call.queued"),
        ("busy", "call.busy"),
        ("failed", "call.failed"),
        ("no-answer", "call.no_answer"),
        ("canceled", "call.canceled"),
    ],
)
def test_other_statuses(status: str, type_: str) -> None:
    ev = call(initiated_form(CallStatus=status, SipResponseCode="487"))
    assert ev.type == type_
    assert ev.sip_response_code == 487


def test_optional_identity_fields_and_other_timezones() -> None:
    ev = call(
        initiated_form(
            From="client:alice",
            To="sip:bob@example.com",
            CallerName="JOHN SMITH",
            ForwardedFrom="+442071838750",
            ParentCallSid="CAfedcba9876543210fedcba9876543210",
            Direction="outbound-dial",
            Timestamp="Thu, 12 Feb 2026 06:48:25 -0500",
        )
    )
    assert ev.from_ is not None and ev.from_.startswith("client:~")
    assert ev.to is not None and ev.to.startswith("sip:~")
    assert ev.caller_name is not None and ev.caller_name.startswith("~")
    assert ev.forwarded_from is not None and ev.forwarded_from.startswith("+44~")
    assert ev.parent_call_sid == "CAfedcba9876543210fedcba9876543210"
    assert ev.event_at == datetime(2026, 2, 12, 11, 48, 25, tzinfo=UTC)
    assert call(initiated_form(From="anonymous")).from_ == "anonymous"
    kept = parse_status_callback(initiated_form(), pii=PiiPolicy(None, keep=True))
    assert isinstance(kept, CallStatusEvent) and kept.from_ == FROM


def test_minimal_inbound_completed_callback() -> None:
    ev = call({"CallSid": CALL_SID, "CallStatus": "completed", "CallDuration": "0"})
    assert ev.sequence_number is None
    assert ev.event_at is None
    assert ev.duration_s == 0


def test_stream_started_and_error_callbacks() -> None:
    started = parse(stream_form())
    assert isinstance(started, StreamStatusEvent)
    assert started.type == "stream.status"
    assert started.id == f"{STREAM_SID}:status:stream-started"
    assert started.stream_event == "stream-started"
    assert started.stream_name == "mise"
    assert started.stream_error is None
    assert started.call_sid == CALL_SID
    assert started.account_sid == ACCOUNT_SID
    assert started.event_at == datetime(2026, 2, 12, 11, 48, 31, 512000, tzinfo=UTC)

    error = parse(
        stream_form(
            StreamEvent="stream-error",
            StreamError="Stream - WebSocket - Connection Broken Pipe",
            Timestamp="2026-02-12T11:49:00+01:00",
        )
    )
    assert isinstance(error, StreamStatusEvent)
    assert error.stream_event == "stream-error"
    assert error.stream_error == "Stream - WebSocket - Connection Broken Pipe"
    assert error.event_at == datetime(2026, 2, 12, 10, 49, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("start", "stream-started"), ("stop", "stream-stopped"), ("error", "stream-error")],
)
def test_bare_stream_events_are_accepted(raw: str, normal: str) -> None:
    ev = parse(stream_form(StreamEvent=raw, Timestamp="2026-02-12T11:48:31"))
    assert isinstance(ev, StreamStatusEvent)
    assert ev.stream_event == normal
    assert ev.id == f"{STREAM_SID}:status:{normal}"
    assert ev.event_at == datetime(2026, 2, 12, 11, 48, 31, tzinfo=UTC)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({k: v for k, v in initiated_form().items() if k != "CallSid"}, "missing CallSid"),
        (initiated_form(CallSid=""), "missing CallSid"),
        (initiated_form(CallSid="CA<script>"), "CallSid is not a Twilio SID"),
        (initiated_form(CallStatus="answered"), "unknown CallStatus 'answered'"),
        (initiated_form(CallStatus="x" * 500), "unknown CallStatus"),
        (initiated_form(Timestamp="yesterday"), "Timestamp is not RFC 2822"),
        (initiated_form(Timestamp="Thu, 99 Feb 2026 11:48:25 +0000"), "Timestamp is not"),
        (initiated_form(SequenceNumber="-1"), "SequenceNumber is not a non-negative integer"),
        (initiated_form(SequenceNumber="one"), "SequenceNumber is not a non-negative integer"),
        (initiated_form(CallDuration="1.5"), "CallDuration is not"),
        (initiated_form(SipResponseCode="OK"), "SipResponseCode is not"),
        ({"CallSid": CALL_SID, "From": FROM}, "neither CallStatus nor StreamEvent"),
        ({}, "neither CallStatus nor StreamEvent"),
        (stream_form(StreamEvent="stream-paused"), "unknown StreamEvent 'stream-paused'"),
        (stream_form(StreamSid=""), "missing StreamSid"),
        (stream_form(Timestamp="12/02/2026"), "Timestamp is not ISO 8601"),
    ],
)
def test_malformed_callbacks_raise_clear_errors(form: dict[str, str], message: str) -> None:
    with pytest.raises(WebhookError) as info:
        parse(form)
    assert info.value.status_code == 400
    assert message in info.value.message
    assert len(info.value.message) < 300
    assert FROM not in info.value.message


# ---------------------------------------------------------------------------------------------
# lifecycle


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
    out += lc.poll(now + window_s)
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
    out += lc.poll(now + 2.0)
    types = _types(out)
    assert types[-1] == "call.completed"
    assert len(types) == len(set(types))
    dropped = lc.take_dropped()
    after_terminal = {d.event.type for d in dropped if d.reason == "after_terminal"}
    assert set(types) | after_terminal == set(ORDER)
    assert not set(types) & after_terminal
