"""Checks on the committed synthetic Twilio fixtures (fixtures/*.jsonl + *.expected.json)."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import make_fixtures

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NAMES = [
    "fork_two_track",
    "connect_inbound",
    "lossy_3pct",
    "garbage_lines",
    "bleed_two_track",
    "quiet_caller",
    "clicks_hum",
]
MAX_LINE_BYTES = 64 * 1024
KNOWN_EVENTS = {"connected", "start", "media", "dtmf", "mark", "stop"}
TAGS = {"barge_in", "interrupted", "backchannel"}


def _expected(name: str) -> dict[str, Any]:
    expected: dict[str, Any] = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    return expected


def _lines(name: str) -> list[str]:
    return (FIXTURES / f"{name}.jsonl").read_text().splitlines()


def _garbage(exp: dict[str, Any]) -> set[int]:
    return {g["line"] for g in exp["garbage_lines"]}


def _valid_messages(name: str) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, message) for every line not listed as garbage."""
    exp = _expected(name)
    bad = _garbage(exp)
    return [(i, json.loads(ln)) for i, ln in enumerate(_lines(name), 1) if i not in bad]


def _problem(line: str, stream_sid: str, seen_start: bool) -> str | None:
    """Why a line is not an acceptable Twilio message for this stream, or None."""
    if len(line.encode()) > MAX_LINE_BYTES:
        return "oversized"
    try:
        m = json.loads(line)
    except json.JSONDecodeError:
        return "truncated_json" if line.startswith('{"event"') else "not_json"
    if not isinstance(m, dict):
        return "json_array"
    ev = m.get("event")
    if ev not in KNOWN_EVENTS:
        return "unknown_event"
    if ev == "start" and seen_start:
        return "duplicate_start"
    if ev != "connected" and m.get("streamSid") != stream_sid:
        return "wrong_stream_sid"
    if ev == "media":
        med = m.get("media", {})
        if "timestamp" not in med:
            return "missing_timestamp"
        try:
            if len(base64.b64decode(med["payload"], validate=True)) != 160:
                return "bad_payload_size"
        except (binascii.Error, ValueError):
            return "invalid_base64"
    return None


def test_all_fixtures_present_and_small() -> None:
    for name in NAMES:
        assert (FIXTURES / f"{name}.jsonl").is_file(), name
        assert (FIXTURES / f"{name}.expected.json").is_file(), name
    total = sum(p.stat().st_size for p in FIXTURES.glob("*.json*"))
    assert total < 6_000_000


@pytest.mark.parametrize("name", NAMES)
def test_wire_shape(name: str) -> None:
    exp = _expected(name)
    msgs = _valid_messages(name)
    sid = exp["stream_sid"]
    assert msgs[0] == (1, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
    assert _lines(name)[0] == '{"event":"connected","protocol":"Call","version":"1.0.0"}'
    line_no, start = msgs[1]
    assert line_no == 2
    assert list(start) == ["event", "sequenceNumber", "start", "streamSid"]
    assert list(start["start"])[:5] == [
        "accountSid",
        "streamSid",
        "callSid",
        "tracks",
        "mediaFormat",
    ]
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    assert start["start"]["streamSid"] == start["streamSid"] == sid
    assert start["start"]["callSid"] == exp["call_sid"]
    assert start["start"]["accountSid"] == exp["account_sid"]
    assert start["start"]["tracks"] == exp["tracks"]
    assert start["start"].get("customParameters") == exp["custom_parameters"]
    for prefix, key in (("AC", "account_sid"), ("CA", "call_sid"), ("MZ", "stream_sid")):
        value = exp[key]
        assert value.startswith(prefix) and len(value) == 34
        assert all(c in "0123456789abcdef" for c in value[2:])
    _, stop = msgs[-1]
    assert list(stop) == ["event", "sequenceNumber", "streamSid", "stop"]
    assert stop["stop"] == {"accountSid": exp["account_sid"], "callSid": exp["call_sid"]}
    for _, m in msgs[1:]:
        assert m["streamSid"] == sid
        assert isinstance(m["sequenceNumber"], str)
        if m["event"] == "media":
            assert list(m) == ["event", "sequenceNumber", "media", "streamSid"]
            assert list(m["media"]) == ["track", "chunk", "timestamp", "payload"]
            assert m["media"]["track"] in exp["tracks"]
            assert all(isinstance(m["media"][k], str) for k in ("chunk", "timestamp"))
            assert len(base64.b64decode(m["media"]["payload"], validate=True)) == 160
    for ln in _lines(name):
        if ln.startswith("{") and len(ln) < MAX_LINE_BYTES and '"event":"media"' in ln:
            assert '", "' not in ln and '": ' not in ln  # compact separators


@pytest.mark.parametrize("name", NAMES)
def test_numbering_and_clock(name: str) -> None:
    exp = _expected(name)
    msgs = [m for _, m in _valid_messages(name)][1:]
    assert [int(m["sequenceNumber"]) for m in msgs] == list(range(1, len(msgs) + 1))
    first = exp["first_timestamp_ms"]
    assert first > 0
    media = [m["media"] for m in msgs if m["event"] == "media"]
    assert {m["track"] for m in media} == set(exp["tracks"])
    for track in exp["tracks"]:
        mine = [m for m in media if m["track"] == track]
        assert [int(m["chunk"]) for m in mine] == list(range(1, len(mine) + 1))
        ts = [int(m["timestamp"]) for m in mine]
        assert ts[0] == first
        assert all((t - first) % 20 == 0 for t in ts)
        assert all(b > a for a, b in itertools.pairwise(ts))
        assert ts[-1] + 20 == exp["end_timestamp_ms"]
        missing = (exp["end_timestamp_ms"] - first) // 20 - len(ts)
        assert missing == exp["lost_frames"][track]
        assert exp["lost_ms"][track] == 20 * missing
        assert sum(e - s for s, e in exp["lost_spans"][track]) == 20 * missing
        sent = set(ts)
        for s, e in exp["lost_spans"][track]:
            assert not sent & set(range(s, e, 20))


@pytest.mark.parametrize("name", NAMES)
def test_turns_ground_truth(name: str) -> None:
    exp = _expected(name)
    turns = exp["turns"]
    assert turns
    assert [t["start_ms"] for t in turns] == sorted(t["start_ms"] for t in turns)
    speakers = {"inbound": "caller", "outbound": "agent"}
    for t in turns:
        assert t["track"] in exp["tracks"]
        assert t["speaker"] == speakers[t["track"]]
        assert exp["first_timestamp_ms"] <= t["start_ms"] < t["end_ms"] <= exp["end_timestamp_ms"]
        segs = t["segments"]
        assert segs[0][0] == t["start_ms"] and segs[-1][1] == t["end_ms"]
        for (s1, e1), (s2, e2) in itertools.pairwise(segs):
            assert s1 < e1 and s2 - e1 >= 150 and s2 < e2
            assert s2 - e1 < 500  # longer pauses would make two turns
        assert set(t["tags"]) <= TAGS
        assert ("gap_before_ms" in t) == (len(exp["tracks"]) == 2)
    for track in exp["tracks"]:
        mine = [t for t in turns if t["track"] == track]
        for a, b in itertools.pairwise(mine):
            assert b["start_ms"] - a["end_ms"] >= 500


def test_fork_scenario_tags() -> None:
    turns = _expected("fork_two_track")["turns"]
    assert len(turns) >= 6
    assert turns[0]["track"] == "outbound"
    tags = [(t["track"], tag) for t in turns for tag in t["tags"]]
    assert ("inbound", "barge_in") in tags
    assert ("outbound", "interrupted") in tags
    assert ("inbound", "backchannel") in tags
    barge = next(t for t in turns if "barge_in" in t["tags"])
    cut = next(t for t in turns if "interrupted" in t["tags"])
    assert barge["end_ms"] - barge["start_ms"] >= 1200
    assert 250 <= cut["end_ms"] - barge["start_ms"] <= 500
    bc = next(t for t in turns if "backchannel" in t["tags"])
    host = next(
        t
        for t in turns
        if t["track"] == "outbound"
        and t["start_ms"] < bc["start_ms"]
        and bc["end_ms"] < t["end_ms"]
    )
    assert bc["end_ms"] - bc["start_ms"] <= 1000 and host["tags"] == []
    pauses = [
        s2 - e1
        for t in turns
        for (_, e1), (s2, _) in zip(t["segments"], t["segments"][1:], strict=False)
    ]
    assert any(200 <= p <= 350 for p in pauses)
    silence = _expected("fork_two_track")["digital_silence"]["outbound"]
    assert silence[0][0] == _expected("fork_two_track")["first_timestamp_ms"]
    payloads = [
        m["media"]["payload"]
        for _, m in _valid_messages("fork_two_track")
        if m["event"] == "media"
        and m["media"]["track"] == "outbound"
        and int(m["media"]["timestamp"]) + 20 <= silence[0][1]
    ]
    assert payloads and all(set(base64.b64decode(p)) == {0xFF} for p in payloads)


def test_fork_arrival_is_bursty() -> None:
    order = [
        m["media"]["track"] for _, m in _valid_messages("fork_two_track") if m["event"] == "media"
    ]
    runs, cur = [], 1
    for a, b in itertools.pairwise(order):
        if a == b:
            cur += 1
        else:
            runs.append(cur)
            cur = 1
    assert max(runs) >= 5  # one track ran ahead at least once
    assert sum(r <= 2 for r in runs) > 0.8 * len(runs)  # but mostly alternating


@pytest.mark.parametrize("name", NAMES)
def test_garbage_lines_are_exactly_the_listed_ones(name: str) -> None:
    exp = _expected(name)
    listed = {g["line"]: g["kind"] for g in exp["garbage_lines"]}
    found: dict[int, str] = {}
    seen_start = False
    for i, ln in enumerate(_lines(name), 1):
        why = _problem(ln, exp["stream_sid"], seen_start)
        if why is not None:
            found[i] = why
        elif '"event":"start"' in ln:
            seen_start = True
    assert found == listed


def test_garbage_fixture_matches_connect_inbound() -> None:
    g, c = _expected("garbage_lines"), _expected("connect_inbound")
    assert len(g["garbage_lines"]) >= 8
    assert g["stream_sid"] != c["stream_sid"] and g["call_sid"] != c["call_sid"]
    assert g["turns"] == c["turns"]
    for key in ("dtmf", "marks"):
        assert [{k: v for k, v in e.items() if k != "line"} for e in g[key]] == [
            {k: v for k, v in e.items() if k != "line"} for e in c[key]
        ]

    def strip(msgs: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        out = []
        for _, m in msgs:
            m = {k: v for k, v in m.items() if k not in ("streamSid", "start", "stop")}
            out.append(m)
        return out

    assert strip(_valid_messages("garbage_lines")) == strip(_valid_messages("connect_inbound"))
    over = next(g2["line"] for g2 in g["garbage_lines"] if g2["kind"] == "oversized")
    assert 65_000 < len(_lines("garbage_lines")[over - 1]) < 80_000


def test_connect_events() -> None:
    exp = _expected("connect_inbound")
    lines = _lines("connect_inbound")
    assert exp["custom_parameters"] == {"tenant": "acme", "api_key": "test-key"}
    (dtmf,) = exp["dtmf"]
    assert json.loads(lines[dtmf["line"] - 1]) == {
        "event": "dtmf",
        "streamSid": exp["stream_sid"],
        "sequenceNumber": dtmf["sequence_number"],
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
    (mark,) = exp["marks"]
    assert json.loads(lines[mark["line"] - 1]) == {
        "event": "mark",
        "sequenceNumber": mark["sequence_number"],
        "streamSid": exp["stream_sid"],
        "mark": {"name": "greeting-done"},
    }
    turns = exp["turns"]
    assert len(turns) == 3
    for a, b in itertools.pairwise(turns):
        assert 1500 <= b["start_ms"] - a["end_ms"] <= 3000


def test_lossy_counts() -> None:
    exp = _expected("lossy_3pct")
    for track in exp["tracks"]:
        lost = exp["lost_frames"][track]
        assert lost == round(0.03 * exp["frames_per_track"])
        lengths = [(e - s) // 20 for s, e in exp["lost_spans"][track]]
        assert sum(3 <= n <= 5 for n in lengths) >= 2 and lengths.count(1) >= 5


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [
        ("fork_two_track", -26.0, -20.0),
        ("connect_inbound", -26.0, -20.0),
        ("lossy_3pct", -26.0, -20.0),
        ("bleed_two_track", -26.0, -20.0),
        ("quiet_caller", -45.0, -39.0),
        ("clicks_hum", -26.0, -20.0),
    ],
)
def test_decoded_speech_levels(name: str, lo: float, hi: float) -> None:
    gen = make_fixtures
    exp = _expected(name)
    audio, first = gen.decode_fixture(FIXTURES / f"{name}.jsonl")
    for t in exp["turns"]:
        x = audio[t["track"]]
        speech = np.concatenate([x[(s - first) * 8 : (e - first) * 8] for s, e in t["segments"]])
        assert lo <= gen.rms_dbfs(speech) <= hi, (t["text"], gen.rms_dbfs(speech))
    if name in ("fork_two_track", "connect_inbound", "quiet_caller"):
        for track, x in audio.items():
            mask = np.ones(x.size, dtype=bool)
            for t in exp["turns"]:
                if t["track"] == track:
                    mask[
                        max(0, (t["start_ms"] - first - 200) * 8) : (t["end_ms"] - first + 200) * 8
                    ] = False
            assert gen.rms_dbfs(x[mask]) < -50.0


def test_regenerate_is_byte_identical(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed; it is needed to synthesize the fixture speech")
    gen = make_fixtures
    recorded = _expected("connect_inbound")["generator"]["espeak_ng"]
    if gen.espeak_version() != recorded:
        pytest.skip(f"espeak-ng differs from the one that made the fixtures ({recorded!r})")
    gen.generate("connect_inbound", tmp_path)
    made = (tmp_path / "connect_inbound.jsonl").read_bytes()
    assert made == (FIXTURES / "connect_inbound.jsonl").read_bytes()
    # The ground truth must match too, except the record of which numpy/soxr made it: the
    # audio is the same across their versions, their version strings are not (Python 3.13).
    made_truth = json.loads((tmp_path / "connect_inbound.expected.json").read_text())
    truth = json.loads((FIXTURES / "connect_inbound.expected.json").read_text())
    made_truth.pop("generator")
    truth.pop("generator")
    assert made_truth == truth
