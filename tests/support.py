"""Shared test helpers: fixture files, ground truth, and record comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mise_twilio.records import AnyRecord

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


# A status callback with every field of the real ``initiated`` one in twilio-protocol.md §5
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
