"""messages.py: Twilio's wire shapes, as documented and as captured."""

from __future__ import annotations

import json

import pytest

from mise_twilio.core.errors import ProtocolError
from mise_twilio.core.messages import (
    AnyOutbound,
    ConnectedMessage,
    DtmfMessage,
    MarkMessage,
    MediaMessage,
    OutboundClearMessage,
    OutboundMarkMessage,
    OutboundMedia,
    OutboundMediaMessage,
    StartMessage,
    StopMessage,
    UnknownMessage,
    decode_payload,
    encode_outbound,
    parse_message,
    parse_outbound,
)

# Verbatim from docs/protocol.md §1.2 / §1.3 (real capture, jremi fixture).
REAL_START = (
    '{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC437bfe093bc08b7c0e971c080618c83e",'
    '"streamSid":"MZ726559aad844c8e924c9d32545e4e46f","callSid":"CAc17e4a124d5375ccacd5f673ac6764b4",'
    '"customParameters":{"StateName":"IRS","IsScoutCall":"no"},"tracks":["inbound"],'
    '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},'
    '"streamSid":"MZ726559aad844c8e924c9d32545e4e46f"}'
)
REAL_MEDIA = (
    '{"event":"media","sequenceNumber":"2","media":{"track":"inbound","chunk":"1","timestamp":"99",'
    '"payload":"///////+/35+/31+ff///////v///35+fn5+fn7///////9+fX5+fX1+fn7+//9+fv////////7//////'
    "/9+fX5+fv///////////33/////////fn7/fv/////+//9+fv9+fv////////////////9+fn5+fn1+fX1+fv//////"
    '/////v////7+//9+fn5+/35+fn7//31+fX5+fn5+fg=="},"streamSid":"MZ726559aad844c8e924c9d32545e4e46f"}'
)


def test_connected_old_and_new_versions() -> None:
    for version in ("0.2.0", "1.0.0", "9.9.9"):
        msg = parse_message(
            json.dumps({"event": "connected", "protocol": "Call", "version": version})
        )
        assert isinstance(msg, ConnectedMessage)
        assert msg.version == version


def test_real_start_message() -> None:
    msg = parse_message(REAL_START)
    assert isinstance(msg, StartMessage)
    assert msg.sequence_number == 1
    assert msg.start.call_sid == "CAc17e4a124d5375ccacd5f673ac6764b4"
    assert msg.start.tracks == ["inbound"]
    assert msg.start.media_format.sample_rate_hz == 8000
    assert msg.start.custom_parameters == {"StateName": "IRS", "IsScoutCall": "no"}


@pytest.mark.parametrize("params", [None, {}])
def test_start_custom_parameters_absent_or_empty(params: dict[str, str] | None) -> None:
    data = json.loads(REAL_START)
    if params is None:
        del data["start"]["customParameters"]
    else:
        data["start"]["customParameters"] = params
    msg = parse_message(json.dumps(data))
    assert isinstance(msg, StartMessage)
    assert msg.start.custom_parameters == {}


def test_real_media_numbers_are_strings_on_the_wire() -> None:
    msg = parse_message(REAL_MEDIA)
    assert isinstance(msg, MediaMessage)
    assert (msg.media.chunk, msg.media.timestamp, msg.sequence_number) == (1, 99, 2)
    assert len(decode_payload(msg.media.payload)) == 160


def test_dtmf_mark_stop_doc_examples() -> None:
    dtmf = parse_message(
        '{ "event": "dtmf", "streamSid":"MZX", "sequenceNumber":"5",'
        ' "dtmf": { "track":"inbound_track", "digit": "1" } }'
    )
    assert isinstance(dtmf, DtmfMessage) and dtmf.dtmf.digit == "1"
    assert dtmf.dtmf.track == "inbound_track"
    mark = parse_message(
        '{ "event": "mark", "sequenceNumber": "4", "streamSid": "MZX",'
        ' "mark": { "name": "my label" } }'
    )
    assert isinstance(mark, MarkMessage) and mark.mark.name == "my label"
    stop = parse_message(
        '{ "event": "stop", "sequenceNumber": "5",'
        ' "stop": { "accountSid": "ACX", "callSid": "CAX" }, "streamSid": "MZX" }'
    )
    assert isinstance(stop, StopMessage) and stop.stop.call_sid == "CAX"


def test_unknown_event_is_kept_not_an_error() -> None:
    msg = parse_message('{"event":"heartbeat","sequenceNumber":"7","streamSid":"MZX","x":1}')
    assert isinstance(msg, UnknownMessage)
    assert (msg.event, msg.sequence_number) == ("heartbeat", 7)


def test_new_fields_from_twilio_are_ignored() -> None:
    data = json.loads(REAL_MEDIA)
    data["media"]["futureField"] = "x"
    data["somethingNew"] = {"a": 1}
    assert isinstance(parse_message(json.dumps(data)), MediaMessage)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_json"),
        ('{"event":"media"', "bad_json"),
        ("[1,2]", "bad_json"),
        ('"media"', "bad_json"),
        ('{"x":1}', "missing_event"),
        ('{"event":5}', "missing_event"),
        (
            '{"event":"media","media":{"track":"inbound","payload":"AA=="},"streamSid":"MZ"}',
            "bad_message",
        ),
        (
            '{"event":"media","media":{"track":"inbound","timestamp":"abc","payload":"x"},"streamSid":"MZ"}',
            "bad_message",
        ),
        ('{"event":"start","sequenceNumber":"1","start":{}}', "bad_message"),
    ],
)
def test_bad_messages_raise_protocol_error_with_code(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(text)
    assert info.value.code == code
    assert info.value.message


@pytest.mark.parametrize(
    "payload",
    [
        "not*base64!",
        "////" + "!" + "////",  # one stray character inside valid base64: not silently skipped
        "//// ////",
        "/w==/w==",  # data after padding
    ],
)
def test_bad_base64_payload(payload: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_payload(payload)
    assert info.value.code == "bad_payload"


def test_outbound_messages_use_twilio_field_names() -> None:
    media = json.loads(
        encode_outbound(OutboundMediaMessage(stream_sid="MZ1", media=OutboundMedia(payload="AAA=")))
    )
    assert media == {"event": "media", "streamSid": "MZ1", "media": {"payload": "AAA="}}
    mark = json.loads(encode_outbound(OutboundMarkMessage(stream_sid="MZ1", mark={"name": "n"})))
    assert mark == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "n"}}
    clear = json.loads(encode_outbound(OutboundClearMessage(stream_sid="MZ1")))
    assert clear == {"event": "clear", "streamSid": "MZ1"}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{nope", "bad_json"),
        ("[1]", "bad_json"),
        ('{"streamSid":"MZ1"}', "unknown_event"),
        ('{"event":"stop","streamSid":"MZ1"}', "unknown_event"),
        ('{"event":"mark","streamSid":"MZ1"}', "bad_message"),  # the mark object is required
        ('{"event":"clear","streamSid":"MZ1","extra":1}', "bad_message"),  # 31951: extra field
        (
            '{"event":"media","streamSid":"MZ1","media":{"payload":"AA==","track":"x"}}',
            "bad_message",
        ),
        ('{"event":"media","stream_sid":"MZ1","media":{"payload":"AA=="}}', "bad_message"),
    ],
)
def test_parse_outbound_refuses_what_twilio_ignores(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_outbound(text)
    assert info.value.code == code


def test_parse_outbound_round_trips_encode_outbound() -> None:
    messages: list[AnyOutbound] = [
        OutboundMediaMessage(stream_sid="MZ1", media=OutboundMedia(payload="AAA=")),
        OutboundMarkMessage(stream_sid="MZ1", mark={"name": "n"}),
        OutboundClearMessage(stream_sid="MZ1"),
    ]
    for message in messages:
        assert parse_outbound(encode_outbound(message)) == message


# -- the media fast path ----------------------------------------------------------------------

_MEDIA_VARIANTS = [
    REAL_MEDIA,
    json.dumps(json.loads(REAL_MEDIA)),  # json.dumps' default separators
    REAL_MEDIA.replace('"timestamp":"99"', '"timestamp":"0099"'),  # leading zeros
    REAL_MEDIA.replace('"track":"inbound"', '"track":"outbound_track"'),
    REAL_MEDIA.replace('"track":"inbound"', '"track":"sideways"'),
    REAL_MEDIA.replace('"payload":"///', '"payload":"'),  # still base64-shaped
    REAL_MEDIA.replace('"payload":"///', '"payload":"=//'),  # not valid base64
    REAL_MEDIA.split('"payload":"')[0] + '"payload":""},"streamSid":"MZ1"}',
]


@pytest.mark.parametrize("text", _MEDIA_VARIANTS)
def test_match_media_reads_what_the_models_read(text: str) -> None:
    from mise_twilio.core.messages import match_media

    fields = match_media(text)
    assert fields is not None
    msg = parse_message(text)
    assert isinstance(msg, MediaMessage)
    media = msg.media
    assert fields == (
        msg.stream_sid,
        msg.sequence_number,
        media.track,
        media.timestamp,
        media.chunk,
        media.payload,
    )


@pytest.mark.parametrize(
    "text",
    [
        REAL_MEDIA.replace('"chunk":"1"', '"chunk":1'),  # a JSON number: the models decide
        REAL_MEDIA.replace('"chunk":"1",', ""),  # no chunk
        REAL_MEDIA.replace('"event":"media",', '"event":"media","extra":1,'),
        REAL_MEDIA.replace('"payload":"///', '"payload":"\\u002f//'),  # an escape
        REAL_MEDIA.replace('"timestamp":"99"', '"timestamp":"-99"'),
        REAL_MEDIA.replace('"timestamp":"99"', '"timestamp":"1' + "0" * 20 + '"'),
        REAL_MEDIA + "\n",
        REAL_MEDIA.replace('"sequenceNumber":"2"', '"sequenceNumber":"2","sequenceNumber":"3"'),
    ],
)
def test_match_media_leaves_anything_unusual_to_the_models(text: str) -> None:
    from mise_twilio.core.messages import match_media

    assert match_media(text) is None
