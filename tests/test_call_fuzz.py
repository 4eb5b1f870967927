"""CallSession never raises, whatever arrives: hostile messages inside a real call."""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import fixture_lines

from mise_twilio.call import CallSession
from mise_twilio.records import StreamStopped

LINES = fixture_lines("fork_two_track")[:600]
SID = json.loads(LINES[1])["streamSid"]

texts = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["{}", "[]", "null", '{"event":null}', '{"event":"media"}', "{" * 50]),
)
media = st.builds(
    lambda track, chunk, ts, payload, sid: json.dumps(
        {
            "event": "media",
            "sequenceNumber": "9",
            "media": {"track": track, "chunk": chunk, "timestamp": ts, "payload": payload},
            "streamSid": sid,
        }
    ),
    track=st.sampled_from(["inbound", "outbound", "inbound_track", "both", ""]),
    chunk=st.one_of(st.integers(-5, 10**9).map(str), st.just("x"), st.none()),
    ts=st.one_of(st.integers(-(10**6), 10**12).map(str), st.just("1.5"), st.just("")),
    payload=st.one_of(
        st.binary(max_size=2000).map(lambda b: base64.b64encode(b).decode()),
        st.text(max_size=20),
    ),
    sid=st.sampled_from([SID, "MZother", ""]),
)
others = st.sampled_from(
    [
        json.dumps({"event": "start", "sequenceNumber": "1", "start": {}, "streamSid": SID}),
        LINES[1],
        json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "5"}}),
        json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "x" * 1000}}),
        json.dumps({"event": "stop", "streamSid": "MZother"}),
        json.dumps({"event": "connected", "version": 7}),
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inserts=st.lists(
        st.tuples(st.integers(0, len(LINES)), st.one_of(texts, media, others)), max_size=30
    )
)
def test_hostile_messages_never_raise_and_the_call_still_ends_cleanly(
    inserts: list[tuple[int, str]],
) -> None:
    lines = list(LINES)
    for position, text in sorted(inserts, key=lambda item: -item[0]):
        lines.insert(position, text)
    session = CallSession()
    for line in lines:
        session.receive_text(line)
    session.receive_eof()
    records = session.take_events()
    assert session.state == "closed"
    assert records and isinstance(records[-1], StreamStopped)
