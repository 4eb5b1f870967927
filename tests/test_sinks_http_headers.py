"""HttpSink's pure parts: Retry-After parsing and the per-batch idempotency key."""

from __future__ import annotations

from datetime import UTC, datetime

from mise_twilio.server.sinks.base import Envelope
from mise_twilio.server.sinks.http import RETRY_AFTER_MAX_S, idempotency_key, parse_retry_after

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:30 GMT", now=NOW) == 30.0
    assert parse_retry_after("Sat, 01 Mar 2025 11:59:00 GMT", now=NOW) == 0.0, "past date"
    assert parse_retry_after("Sat, 01 Mar 2099 12:00:00 GMT", now=NOW) == RETRY_AFTER_MAX_S
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


def test_idempotency_key_depends_on_ids_and_order_only() -> None:
    a = Envelope(id="a", type="turn", json='{"id":"a"}')
    b = Envelope(id="b", type="turn", json='{"id":"b"}')
    b2 = Envelope(id="b", type="turn", json='{"id":"b","x":1}')
    key = idempotency_key([a, b])
    assert len(key) == 64 and int(key, 16) >= 0
    assert idempotency_key([a, b2]) == key
    assert idempotency_key([b, a]) != key
    assert idempotency_key([a]) != key
    # No ambiguity from concatenation: ["ab"] differs from ["a", "b"].
    ab = Envelope(id="ab", type="turn", json="{}")
    assert idempotency_key([ab]) != key
