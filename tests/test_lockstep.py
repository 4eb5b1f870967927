"""core/lockstep.py: both tracks on one grid; results independent of how chunks arrive."""

from __future__ import annotations

import base64
import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import comparable, fixture_lines

from mise_twilio.core.records import TurnRecord
from mise_twilio.replay import replay_offline


def rechunk(lines: list[str], seed: int, max_bytes: int) -> list[str]:
    """Re-cut each track's contiguous audio runs into 1..max_bytes payloads, stamped with the
    whole-ms timestamp of their first sample (as Twilio stamps), interleaved by timestamp."""
    head = [
        line for line in lines if '"event":"media"' not in line and '"event":"stop"' not in line
    ]
    stop = [line for line in lines if '"event":"stop"' in line]
    runs: dict[str, list[tuple[int, bytearray]]] = {}
    sid = ""
    for line in lines:
        if '"event":"media"' not in line:
            continue
        msg = json.loads(line)
        sid = msg["streamSid"]
        media = msg["media"]
        ts, data = int(media["timestamp"]), base64.b64decode(media["payload"])
        track_runs = runs.setdefault(media["track"], [])
        if track_runs and track_runs[-1][0] + len(track_runs[-1][1]) // 8 == ts:
            track_runs[-1][1].extend(data)
        else:
            track_runs.append((ts, bytearray(data)))
    rng = random.Random(seed)
    out: list[tuple[int, str, int, bytes]] = []
    for track, track_runs in runs.items():
        for start_ts, data in track_runs:
            pos = 0
            while pos < len(data):
                size = rng.randint(1, max_bytes)
                out.append((start_ts + pos // 8, track, pos, bytes(data[pos : pos + size])))
                pos += size
    out.sort(key=lambda item: (item[0], item[1]))
    chunks: dict[str, int] = {}
    media_lines = []
    for seq, (ts, track, _, payload) in enumerate(out, start=2):
        chunks[track] = chunks.get(track, 0) + 1
        media_lines.append(
            json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": str(seq),
                    "media": {
                        "track": track,
                        "chunk": str(chunks[track]),
                        "timestamp": str(ts),
                        "payload": base64.b64encode(payload).decode(),
                    },
                    "streamSid": sid,
                },
                separators=(",", ":"),
            )
        )
    return head + media_lines + stop


def turns(lines: list[str]) -> list[dict[str, object]]:
    return [comparable(r) for r in replay_offline(lines) if isinstance(r, TurnRecord)]


CONNECT = fixture_lines("connect_inbound")
# The first 7 s (one whole turn and its pause): short enough for 1-byte payloads.
CONNECT_7S = (
    CONNECT[:2] + [line for line in CONNECT if '"event":"media"' in line][:350] + CONNECT[-1:]
)
LOSSY = fixture_lines("lossy_3pct")
REFERENCE = {"connect": turns(CONNECT), "connect_7s": turns(CONNECT_7S), "lossy": turns(LOSSY)}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), max_bytes=st.integers(1, 480))
def test_rechunked_payloads_of_1_to_480_bytes_give_identical_turns(
    seed: int, max_bytes: int
) -> None:
    assert REFERENCE["connect_7s"]
    assert turns(rechunk(CONNECT_7S, seed, max_bytes)) == REFERENCE["connect_7s"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), max_bytes=st.integers(40, 480))
def test_rechunked_whole_call_gives_identical_turns(seed: int, max_bytes: int) -> None:
    assert turns(rechunk(CONNECT, seed, max_bytes)) == REFERENCE["connect"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), max_bytes=st.integers(40, 480))
def test_rechunked_two_track_lossy_call_gives_identical_turns(seed: int, max_bytes: int) -> None:
    assert turns(rechunk(LOSSY, seed, max_bytes)) == REFERENCE["lossy"]
