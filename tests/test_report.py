"""report.py: levels on the core's timeline, choosing a call's records, the page's content and
its escaping. The page rendered in a real browser: tests/e2e/test_report_browser.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from support import expected, fixture_lines

from mise_twilio.core.records import AnyRecord
from mise_twilio.report import (
    build_report,
    levels_from_capture,
    records_from_capture,
    records_of_call,
)


def as_dicts(records: list[AnyRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.model_dump_json(by_alias=True)) for r in records]


def page_data(page: str) -> dict[str, Any]:
    block = re.search(r'<script id="call-data" type="application/json">(.*?)</script>', page, re.S)
    assert block is not None
    data: dict[str, Any] = json.loads(block.group(1))
    return data


def test_levels_follow_the_speech_on_both_tracks() -> None:
    lines = fixture_lines("fork_two_track")
    records = records_from_capture(lines)
    levels = levels_from_capture(lines)
    assert set(levels) == {"inbound", "outbound"}
    stopped = next(r for r in records if r["type"] == "stream.stopped")
    for track, lv in levels.items():
        assert lv.step_ms == 20
        # one point per 20 ms frame of the call
        assert abs(len(lv.dbfs) * 20 - stopped["summary"]["duration_ms"]) <= 40
        turns = [r for r in records if r["type"] == "turn" and r["track"] == track]
        inside = [
            v
            for i, v in enumerate(lv.dbfs)
            if v is not None
            and any(s <= lv.origin_ms + 20 * i < e for t in turns for s, e in t["segments"])
        ]
        outside = [
            v
            for i, v in enumerate(lv.dbfs)
            if v is not None
            and not any(
                t["start_ms"] - 300 <= lv.origin_ms + 20 * i < t["end_ms"] + 300 for t in turns
            )
        ]
        # speech frames are far above the line noise between turns (median, dB)
        assert sorted(inside)[len(inside) // 2] > sorted(outside)[len(outside) // 2] + 20


def test_lost_audio_spans_add_up_to_the_summary() -> None:
    lines = fixture_lines("lossy_3pct")
    levels = levels_from_capture(lines)
    summary = next(r for r in records_from_capture(lines) if r["type"] == "stream.stopped")
    lost = summary["summary"]["lost_ms"]
    assert sum(lost.values()) > 0
    for track, lv in levels.items():
        assert sum(e - s for s, e in lv.lost) == lost[track]
    truth = expected("lossy_3pct")
    assert truth  # the fixture's own ground truth is there (its gaps are what is drawn)


def test_records_of_call_picks_one_stream_and_dedupes() -> None:
    fork = as_dicts_from("fork_two_track")
    other = as_dicts_from("connect_inbound")
    status = {
        "type": "call.completed",
        "id": f"{fork[0]['call_sid']}:call.completed",
        "call_sid": fork[0]["call_sid"],
        "call_status": "completed",
    }
    mixed = other + fork + fork[:5] + [status]  # a repeat, as at-least-once delivery gives
    chosen = records_of_call(mixed, fork[0]["call_sid"])
    assert [r["id"] for r in chosen] == [r["id"] for r in fork] + [status["id"]]
    assert records_of_call(mixed)[0]["call_sid"] == other[0]["call_sid"]  # the first call
    with pytest.raises(ValueError, match="no records of call"):
        records_of_call(mixed, "CA" + "0" * 32)


def as_dicts_from(name: str) -> list[dict[str, Any]]:
    return records_from_capture(fixture_lines(name))


def test_page_lists_every_turn_and_the_summary() -> None:
    lines = fixture_lines("fork_two_track")
    records = records_from_capture(lines)
    page = build_report(records, levels_from_capture(lines))
    turns = [r for r in records if r["type"] == "turn"]
    rows = re.findall(r'<tr class="turn (caller|agent)" data-turn-id="([^"]+)"', page)
    assert [i for _, i in rows] == [t["id"] for t in sorted(turns, key=lambda t: t["start_ms"])]
    data = page_data(page)
    assert [t["id"] for t in data["turns"]] == [i for _, i in rows]
    assert {t["speaker"] for t in data["turns"]} == {"caller", "agent"}
    assert any(t["barge_in"] for t in data["turns"]) and any(
        t["interrupted"] for t in data["turns"]
    )
    assert any(t["backchannel"] for t in data["turns"])
    assert len(data["levels"]["inbound"]["dbfs"]) > 1000
    assert "response latency" in page and "interruptions" in page
    # the arousal column is there because the turns carry arousal (and only then)
    assert any(t.get("arousal") is not None for t in turns)
    assert "arousal" in page.split("<script")[0]
    bare = [{k: v for k, v in r.items() if k not in ("arousal", "arousal_rel")} for r in records]
    assert "arousal" not in build_report(bare, None).split("<script")[0]


def test_page_from_records_alone_has_no_levels_but_the_turn_energy() -> None:
    records = as_dicts_from("connect_inbound")
    page = build_report(records)
    data = page_data(page)
    assert data["levels"] == {} and data["lost"] == {}
    assert all(t["mean_dbfs"] is not None for t in data["turns"])
    assert "records only" in page


def test_arousal_is_shown_when_turns_carry_it() -> None:
    records = as_dicts_from("fork_two_track")
    given: dict[str, float] = {}
    for n, r in enumerate(r for r in records if r["type"] == "turn"):
        given[r["id"]] = 0.1 * n
        r["arousal"] = {"value": 0.1 * n} if n % 2 else 0.1 * n  # either shape
    page = build_report(records)
    shown = {t["id"]: t["arousal"] for t in page_data(page)["turns"]}
    assert shown == pytest.approx(given)
    assert "<th>arousal</th>" in page


def test_page_is_self_contained_and_escapes_what_the_records_say() -> None:
    records = as_dicts_from("connect_inbound")
    hostile = "</script><script>alert(1)</script><!--{{DATA}}"
    started = next(r for r in records if r["type"] == "stream.started")
    records.append(
        {
            "type": "mark",
            "id": "m-1",
            "stream_sid": started["stream_sid"],
            "call_sid": started["call_sid"],
            "name": hostile,
            "at_ms": 1000,
        }
    )
    for r in records:
        if r["type"] == "turn":
            r["speaker"] = hostile
            break
    page = build_report(records, title=hostile)
    assert "<script>alert(1)" not in page
    assert page.count("</script>") == 2  # the data block's and the renderer's, nothing else
    assert hostile in [e["label"] for e in page_data(page)["events"]]  # intact, as data
    # nothing is loaded from anywhere: no src/href, no url() but the page's own pattern
    assert not re.search(r"\s(src|href)\s*=", page)
    assert set(re.findall(r"url\(([^)]*)\)", page)) <= {"#hatch", "#plot"}
    assert "default-src 'none'" in page  # and the CSP says so to the browser
