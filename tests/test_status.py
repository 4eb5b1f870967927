"""core/status.py: status-callback forms (the real field sets of docs/protocol.md §5) → records."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support import ACCOUNT_SID, CALL_SID, FROM, TO, status_form

from mise_twilio.core.errors import WebhookError
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import CallStatusEvent, StreamStatusEvent, from_json, to_json
from mise_twilio.core.status import parse_status_callback

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
        (initiated_form(CallSid="XX" + CALL_SID[2:]), "CallSid is not a Twilio SID (CA and 32"),
        (initiated_form(CallSid=CALL_SID + "0"), "CallSid is not a Twilio SID"),
        (initiated_form(CallSid="CA" + "g" * 32), "CallSid is not a Twilio SID"),
        (initiated_form(AccountSid=CALL_SID), "AccountSid is not a Twilio SID (AC and 32"),
        (initiated_form(ParentCallSid=FROM), "ParentCallSid is not a Twilio SID"),
        (initiated_form(CallStatus="answered"), "unknown CallStatus (expected one of"),
        (initiated_form(CallStatus="x" * 500), "unknown CallStatus"),
        (initiated_form(CallStatus=FROM), "unknown CallStatus"),
        (initiated_form(Timestamp="yesterday"), "Timestamp is not RFC 2822"),
        (initiated_form(Timestamp=FROM), "Timestamp is not RFC 2822"),
        (initiated_form(Timestamp="Thu, 99 Feb 2026 11:48:25 +0000"), "Timestamp is not"),
        (initiated_form(SequenceNumber="-1"), "SequenceNumber is not a non-negative integer"),
        (initiated_form(SequenceNumber="one"), "SequenceNumber is not a non-negative integer"),
        (initiated_form(CallDuration="1.5"), "CallDuration is not"),
        (initiated_form(SipResponseCode=FROM), "SipResponseCode is not"),
        ({"CallSid": CALL_SID, "From": FROM}, "neither CallStatus nor StreamEvent"),
        ({}, "neither CallStatus nor StreamEvent"),
        (stream_form(StreamEvent="stream-paused"), "unknown StreamEvent (expected"),
        (stream_form(StreamSid=""), "missing StreamSid"),
        (stream_form(StreamSid=CALL_SID), "StreamSid is not a Twilio SID (MZ and 32"),
        (stream_form(Timestamp="12/02/2026"), "Timestamp is not ISO 8601"),
    ],
)
def test_malformed_callbacks_raise_clear_errors(form: dict[str, str], message: str) -> None:
    with pytest.raises(WebhookError) as info:
        parse(form)
    assert info.value.status_code == 400
    assert message in info.value.message
    assert len(info.value.message) < 300
    # The reason (the 400 body and the log line) never repeats a form value: it may be a
    # phone number in any field.
    assert not [v for v in form.values() if len(v) > 2 and v in info.value.message]


# ---------------------------------------------------------------------------------------------
# answering machine detection (https://www.twilio.com/docs/voice/answering-machine-detection)


@pytest.mark.parametrize(
    "answered_by",
    [
        "human",
        "machine_start",
        "machine_end_beep",
        "machine_end_silence",
        "machine_end_other",
        "fax",
        "unknown",
    ],
)
def test_answered_by_is_carried_into_the_lifecycle_event(answered_by: str) -> None:
    form = answered_form()
    form.update(AnsweredBy=answered_by, MachineDetectionDuration="2400")
    event = call(form)
    assert event.answered_by == answered_by
    assert event.machine_detection_ms == 2400
    assert from_json(to_json(event)) == event


def test_answered_by_is_absent_without_machine_detection() -> None:
    event = call(completed_form())
    assert event.answered_by is None and event.machine_detection_ms is None


def test_a_new_answered_by_token_is_kept_not_refused() -> None:
    # Older AMD sent "machine"; a value Twilio adds later must not cost the status event.
    form = completed_form()
    form["AnsweredBy"] = "machine"
    assert call(form).answered_by == "machine"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("AnsweredBy", "Human Being", "AnsweredBy is not a token"),
        ("AnsweredBy", "x" * 40, "AnsweredBy is not a token"),
        ("MachineDetectionDuration", "2.4s", "MachineDetectionDuration is not a non-negative"),
    ],
)
def test_malformed_detection_fields_raise_clear_errors(
    field: str, value: str, message: str
) -> None:
    form = completed_form()
    form[field] = value
    with pytest.raises(WebhookError, match=message):
        parse(form)
