"""The mise-twilio command line, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import FIXTURES, REAL_CAPTURE

from mise_twilio.core.records import StreamStopped, TurnRecord, from_json


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mise_twilio.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not REAL_CAPTURE.exists(), reason=f"real capture not present: {REAL_CAPTURE}")
def test_real_capture_gives_caller_turns_over_the_speech_only() -> None:
    """jremi hello-world: speech spans ~1.3-2.5 s (levels -46..-12 dBFS); a one-frame click at
    0.4 s and line noise at -74 dBFS elsewhere; digital silence after 6.3 s."""
    result = cli("replay", str(REAL_CAPTURE), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [from_json(line) for line in result.stdout.splitlines()]
    turns = [r for r in records if isinstance(r, TurnRecord)]
    assert 1 <= len(turns) <= 2
    assert all(t.speaker == "caller" for t in turns)
    first, last = turns[0], turns[-1]
    assert 1200 <= first.start_ms <= 1360  # the onset at 1.30 s (-45.6 dBFS)
    assert 2400 <= last.end_ms <= 2700  # the decay under -50 dBFS by 2.5 s
    assert all(t.end_ms <= 3000 for t in turns)  # nothing in the silence after


def test_replay_table_and_jsonl_agree() -> None:
    path = str(FIXTURES / "fork_two_track.jsonl")
    table = cli("replay", path)
    jsonl = cli("replay", path, "--format", "jsonl")
    assert table.returncode == jsonl.returncode == 0
    turns = [json.loads(line) for line in jsonl.stdout.splitlines() if '"type":"turn"' in line]
    rows = [
        line for line in table.stdout.splitlines() if line.split()[:1] and line.split()[0].isdigit()
    ]
    assert len(rows) == len(turns) == 10
    assert "barge" in table.stdout.splitlines()[0]


def test_twiml_fork_and_connect() -> None:
    fork = cli(
        "twiml",
        "--url",
        "wss://ingest.example.com/v1/stream/twilio",
        "--api-key",
        "k1",
        "--status-callback",
        "https://ingest.example.com/v1/webhook/twilio",
    )
    assert fork.returncode == 0
    assert (
        '<Start><Stream statusCallback="https://ingest.example.com/v1/webhook/twilio"'
        in fork.stdout
    )
    assert 'track="both_tracks"' in fork.stdout
    assert '<Parameter name="api_key" value="k1"' in fork.stdout
    connect = cli(
        "twiml", "--url", "wss://ingest.example.com/v1/stream/twilio", "--mode", "connect"
    )
    assert "<Connect><Stream" in connect.stdout and "both_tracks" not in connect.stdout
    bad = cli("twiml", "--url", "wss://x/v1/stream/twilio?api_key=1")
    assert bad.returncode == 2 and "query" in bad.stderr
    for args, expected in (
        (("--url", "wss://"), "--url 'wss://': Input should be a valid URL, empty host"),
        (
            ("--url", "wss://x/v1/stream/twilio", "--status-callback", "status"),
            "--status-callback 'status': Input should be a valid URL",
        ),
        (
            ("--url", "wss://x/v1/stream/twilio", "--status-callback", "ftp://x/s"),
            "--status-callback 'ftp://x/s': URL scheme should be 'http' or 'https'",
        ),
    ):
        bad = cli("twiml", *args)
        assert bad.returncode == 2 and bad.stdout == "", bad
        lines = bad.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mise-twilio: error: {expected}"), lines


def test_schema_is_json_schema_of_every_record_type() -> None:
    result = cli("schema")
    schema = json.loads(result.stdout)
    text = json.dumps(schema)
    for record_type in (
        "turn",
        "stream.started",
        "stream.stopped",
        "dtmf",
        "mark",
        "diagnostic",
        "call.completed",
        "stream.status",
        "tone",
    ):
        assert f'"{record_type}"' in text


SPEAKERS = ("caller", "agent")


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = cli("demo", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "barge" in result.stdout
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert sum('"type":"turn"' in line for line in lines) == 10
    assert str(tmp_path / "events.jsonl") in result.stdout
    # each turn's row ends with how it sounded, as its record has it
    table = [r.split() for r in result.stdout.splitlines()]
    rows = {int(r[0]): r for r in table if len(r) > 1 and r[0].isdigit() and r[1] in SPEAKERS}
    turns = [t for t in map(from_json, lines) if isinstance(t, TurnRecord)]
    assert sorted(rows) == sorted(t.index for t in turns)
    for t in turns:
        assert t.prosody is not None and t.arousal is not None
        rel = "-" if t.arousal_rel is None else f"{t.arousal_rel:.1f}"  # none on a first turn
        assert rows[t.index][-3:] == [t.prosody.contour or "-", f"{t.arousal:.2f}", rel]
    assert sum(t.arousal_rel is not None for t in turns) == len(turns) - 2
    # the call's arousal per speaker as its summary has it: a backchannel (the caller's
    # "yes" at 30.45 s, the loudest-sounding turn) is not its peak
    summary = next(r for r in map(from_json, lines) if isinstance(r, StreamStopped)).summary
    line = next(r for r in result.stdout.splitlines() if r.startswith("arousal"))
    peak = {}
    for speaker in SPEAKERS:
        a = summary.arousal[speaker]
        assert a.mean is not None and a.peak is not None
        assert f"{speaker} mean {a.mean:.2f} peak {a.peak:.2f} (turn {a.peak_turn_index})" in line
        assert not next(t for t in turns if t.index == a.peak_turn_index).backchannel
        peak[speaker] = a.peak
    assert any(t.backchannel and (t.arousal or 0.0) > peak[t.speaker] for t in turns)
    assert line.startswith("arousal (backchannels aside): ")
    assert line.endswith("; escalation 0")


def test_twiml_proxy_streams_to_the_named_upstream() -> None:
    proxy = cli(
        "twiml",
        "--url",
        "wss://ingest.example.com/v1/stream/twilio",
        "--mode",
        "proxy",
        "--upstream",
        "support",
    )
    assert proxy.returncode == 0
    assert (
        '<Connect><Stream url="wss://ingest.example.com/v1/stream/twilio/proxy/support"'
        in proxy.stdout
    )
    assert "both_tracks" not in proxy.stdout
    for args in (("--mode", "proxy"), ("--mode", "proxy", "--upstream", "Bad/Name")):
        bad = cli("twiml", "--url", "wss://ingest.example.com/v1/stream/twilio", *args)
        assert bad.returncode == 2 and "--upstream" in bad.stderr
    stray = cli("twiml", "--url", "wss://x/v1/stream/twilio", "--upstream", "support")
    assert stray.returncode == 2


def test_replay_table_shows_a_voicemail_beep(tmp_path: Path) -> None:
    from test_call import voicemail_greeting_then_beep

    lines, beep_ms = voicemail_greeting_then_beep()
    path = tmp_path / "voicemail.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("replay", str(path))
    assert result.returncode == 0, result.stderr
    (tone,) = [r.split() for r in result.stdout.splitlines() if r.startswith("tone:")]
    # tone: 1000 Hz for 400 ms at 3.22 s (caller, turn 0)
    assert tone[1:3] == ["1000", "Hz"] and abs(int(tone[4]) - 400) <= 40
    assert abs(float(tone[7]) * 1000 - beep_ms) <= 20 and tone[9:] == ["(caller,", "turn", "0)"]


def test_config_prints_each_type_in_words_in_aligned_columns() -> None:
    result = cli("config")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert len(rows) == len(result.stdout.splitlines())  # one row per variable
    assert "0x" not in result.stdout and "Annotated" not in result.stdout  # no validator repr
    kinds = {
        "MISE_PUBLIC_URL": "http(s) URL | None",
        "MISE_REDIS_URL": "redis URL | None",
        "MISE_API_KEY": "secret | None",
        "MISE_LOG_LEVEL": "debug|info|warning|error|critical",
        "MISE_TURN_AUDIO": "none|wav",
        "MISE_UPSTREAMS": "dict[str, ws(s) URL]",
        "MISE_VAD__HANGOVER_MS": "int",
    }
    type_column = {rows[env].index(kind) for env, kind in kinds.items()}
    assert len(type_column) == 1  # every type starts in one column
    markdown = cli("config", "--format", "markdown").stdout.splitlines()
    assert "| `MISE_PUBLIC_URL` | http(s) URL \\| None | `-` |  | Public base URL" in "\n".join(
        markdown
    )
