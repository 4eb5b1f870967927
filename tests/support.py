"""Shared test helpers: fixture files, ground truth, and record comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mise_twilio.core.records import AnyRecord

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FIXTURE_NAMES = sorted(p.name.removesuffix(".jsonl") for p in FIXTURES.glob("*.jsonl"))
REAL_CAPTURE = ROOT.parent / "shared" / "real-captures" / "jremi-hello-world.jsonl"

# Fields that carry the edge's wall clock: they differ between an offline replay (no clock)
# and a live one, and nothing else may.
WALL_CLOCK_FIELDS = ("started_at", "ended_at", "received_at", "stopped_at")


def fixture_lines(name: str) -> list[str]:
    from mise_twilio.replay import read_fixture

    return read_fixture(FIXTURES / f"{name}.jsonl")


def expected(name: str) -> dict[str, Any]:
    with open(FIXTURES / f"{name}.expected.json", encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def comparable(record: AnyRecord | dict[str, Any]) -> dict[str, Any]:
    """A record as a dict without wall-clock fields (for offline vs live comparisons)."""
    data = record if isinstance(record, dict) else json.loads(record.model_dump_json(by_alias=True))
    return {k: v for k, v in data.items() if k not in WALL_CLOCK_FIELDS}


# A status callback with every field of the real ``initiated`` one in docs/protocol.md §5
# (outbound-api, a US caller to an Indian number); values are fakes of the right shape.
CALL_SID = "CA0123456789abcdef0123456789abcdef"
ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
FROM = "+14155550123"
TO = "+919876543210"


def status_form(**overrides: str) -> dict[str, str]:
    """The real ``initiated`` status callback's form fields; keyword arguments replace fields."""
    form = {
        "Called": TO,
        "ToState": "",
        "CallerCountry": "US",
        "Direction": "outbound-api",
        "Timestamp": "Thu, 12 Feb 2026 11:48:25 +0000",
        "CallbackSource": "call-progress-events",
        "CallerState": "CA",
        "ToZip": "",
        "SequenceNumber": "0",
        "CallSid": CALL_SID,
        "To": TO,
        "CallerZip": "",
        "ToCountry": "IN",
        "CalledZip": "",
        "ApiVersion": "2010-04-01",
        "CalledCity": "",
        "CallStatus": "initiated",
        "From": FROM,
        "AccountSid": ACCOUNT_SID,
        "CalledCountry": "IN",
        "CallerCity": "",
        "ToCity": "",
        "FromCountry": "US",
        "Caller": FROM,
        "FromCity": "",
        "CalledState": "",
        "FromZip": "",
        "FromState": "CA",
    }
    form.update(overrides)
    return form


def scripted_call_lines(
    speech_ms: dict[str, list[tuple[int, int]]],
    duration_ms: int,
    *,
    first_timestamp_ms: int = 120,
    stream_sid: str = "MZ" + "5" * 32,
    seed: int = 0,
) -> list[str]:
    """A Twilio-wire call (connected, start, media per 20 ms tick, stop) in which each track
    carries loud noise bursts (about -20 dBFS, speech-like 4 Hz envelope) over its
    ``speech_ms`` spans (stream ms from the first media frame) and -60 dBFS line noise
    elsewhere. For summary and turn rules that need a known timeline, not realistic speech."""
    import base64

    import numpy as np

    rng = np.random.default_rng(seed)
    n = duration_ms * 8
    tracks = list(speech_ms)
    ulaw = {track: speechlike_ulaw(spans, duration_ms, rng) for track, spans in speech_ms.items()}
    call = "CA" + "5" * 32
    account = "AC" + "5" * 32
    lines = [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})]
    lines.append(
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": account,
                    "streamSid": stream_sid,
                    "callSid": call,
                    "tracks": tracks,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {},
                },
                "streamSid": stream_sid,
            }
        )
    )
    seq = 1
    for k in range(n // 160):
        for track in tracks:
            seq += 1
            payload = base64.b64encode(ulaw[track][k * 160 : (k + 1) * 160]).decode()
            media = {
                "track": track,
                "chunk": str(k + 1),
                "timestamp": str(first_timestamp_ms + 20 * k),
                "payload": payload,
            }
            lines.append(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": str(seq),
                        "media": media,
                        "streamSid": stream_sid,
                    }
                )
            )
    stop = {"accountSid": account, "callSid": call}
    lines.append(
        json.dumps(
            {"event": "stop", "sequenceNumber": str(seq + 1), "streamSid": stream_sid, "stop": stop}
        )
    )
    return lines


def status_callback(status: str, seq: int, **overrides: str) -> dict[str, str]:
    """``status_form`` as Twilio sends it for ``CallStatus=status`` with ``SequenceNumber=seq``:
    the event's own Timestamp (one second per step), and ``CallDuration``/``Duration`` on
    ``completed``. Keyword arguments replace fields (``CallSid=...``)."""
    fields = {
        "CallStatus": status,
        "SequenceNumber": str(seq),
        "Timestamp": f"Thu, 12 Feb 2026 11:48:{25 + seq:02d} +0000",
    }
    if status == "completed":
        fields |= {"CallDuration": "41", "Duration": "1"}
    return status_form(**(fields | overrides))


def audio_call_lines(tracks: dict[str, Any], *, name: str = "audio-call") -> list[str]:
    """A Twilio-wire call carrying the given int16 8 kHz audio per track (``inbound`` alone is
    a ``<Connect>`` stream), μ-law encoded in 20 ms media messages by the fixture generator's
    encoder, with stable fake SIDs from ``name``."""
    import numpy as np

    from fixtures import make_fixtures

    n = max(len(x) for x in tracks.values())
    n -= n % 160
    ulaw = {
        track: make_fixtures.to_ulaw(np.pad(np.asarray(x), (0, max(0, n - len(x))))[:n])
        for track, x in tracks.items()
    }
    lines, _ = make_fixtures.encode_messages(
        ulaw, first_timestamp_ms=120, custom_parameters=None, **make_fixtures.sids(name)
    )
    return lines


def speechlike_ulaw(spans: list[tuple[int, int]], duration_ms: int, rng: Any) -> bytes:
    """``duration_ms`` of 8 kHz μ-law: loud noise bursts (about -20 dBFS, speech-like 4 Hz
    envelope) over ``spans`` (ms from the start), -60 dBFS line noise elsewhere. ``rng``: a
    ``numpy.random.Generator``."""
    import numpy as np

    from mise_twilio.core.audio import pcm16_to_ulaw

    n = duration_ms * 8
    x = rng.normal(0.0, 32768 * 10 ** (-60 / 20), n)
    t = np.arange(n) / 8000.0
    for start, end in spans:
        seg = slice(start * 8, end * 8)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t[seg])
        x[seg] += rng.normal(0.0, 32768 * 10 ** (-20 / 20), end * 8 - start * 8) * envelope
    pcm = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
    return pcm16_to_ulaw(pcm)
