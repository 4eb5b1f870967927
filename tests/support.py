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
