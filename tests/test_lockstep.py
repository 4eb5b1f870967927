"""core/lockstep.py: both tracks on one grid; results independent of how chunks arrive."""

from __future__ import annotations

import base64
import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import comparable, fixture_lines

from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import AnyRecord, Diagnostic, StreamStopped, TurnRecord
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
        for start_ts, run in track_runs:
            pos = 0
            while pos < len(run):
                size = rng.randint(1, max_bytes)
                out.append((start_ts + pos // 8, track, pos, bytes(run[pos : pos + size])))
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


# -- interleaving ----------------------------------------------------------------------------


def interleave(lines: list[str], arrival: str, max_skew_ms: int = 0, seed: int = 0) -> list[str]:
    """The same call with its two tracks' media messages interleaved another way: ``tight``
    (frame by frame), ``skew`` (the outbound track late or early by a smoothly wandering delay
    up to ``max_skew_ms``), ``inbound_first`` / ``outbound_first`` (one track wholly before
    the other). Each track's own messages keep their order; nothing else changes."""
    head: list[str] = []
    media: dict[str, list[tuple[int, str]]] = {"inbound": [], "outbound": []}
    tail: list[str] = []
    for line in lines:
        if '"event":"media"' in line:
            msg = json.loads(line)
            media[msg["media"]["track"]].append((int(msg["media"]["timestamp"]), line))
        elif media["inbound"] or media["outbound"]:
            tail.append(line)
        else:
            head.append(line)
    rng = random.Random(seed)
    delay = 0.0
    timed: list[tuple[float, int, int, str]] = []
    for ti, track in enumerate(("inbound", "outbound")):
        last = -1e18
        for n, (ts, line) in enumerate(media[track]):
            if arrival == "skew" and track == "outbound":
                delay = max(-max_skew_ms, min(max_skew_ms, delay + rng.gauss(0.0, 60.0)))
                at = max(last, ts + delay)  # a track's own order never changes
            elif arrival in ("inbound_first", "outbound_first"):
                first = "inbound" if arrival == "inbound_first" else "outbound"
                at = float(n if track == first else 10**9 + n)
            else:
                at = float(ts)
            last = at
            timed.append((at, ti, n, line))
    timed.sort()
    return head + [line for *_, line in timed] + tail


ARRIVALS = st.one_of(
    st.just(("tight", 0)),
    st.just(("inbound_first", 0)),
    st.just(("outbound_first", 0)),
    st.tuples(st.just("skew"), st.integers(100, 5000)),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["fork_two_track", "lossy_3pct", "bleed_two_track"]),
    arrival=ARRIVALS,
    seed=st.integers(0, 2**16),
)
def test_records_do_not_depend_on_how_the_tracks_interleave(
    name: str, arrival: tuple[str, int], seed: int
) -> None:
    lines = fixture_lines(name)
    expected = [r.model_dump_json() for r in replay_offline(lines)]
    got = [r.model_dump_json() for r in replay_offline(interleave(lines, *arrival, seed=seed))]
    assert got == expected


def test_real_speech_call_is_the_same_whichever_track_comes_first() -> None:
    from fixtures import real_calls as rc

    call = rc.build_call("trn05", "clean")
    tight = replay_offline(rc.wire_lines(call))
    assert sum(isinstance(r, TurnRecord) for r in tight) >= 4
    for arrival, skew in (("sequential", 0), ("skew", 5000)):
        other = replay_offline(rc.wire_lines(call, arrival=arrival, max_skew_ms=skew, seed=3))
        assert [r.model_dump_json() for r in other] == [r.model_dump_json() for r in tight]


def _session_records(lines: list[str], **params: object) -> list[AnyRecord]:
    session = CallSession(SessionParams(**params))  # type: ignore[arg-type]
    out: list[AnyRecord] = []
    for line in lines:
        session.receive_text(line)
        out += session.take_events()
    session.receive_eof()
    return out + session.take_events()


def test_a_skew_within_the_bound_changes_nothing_live() -> None:
    lines = fixture_lines("fork_two_track")
    offline = [r.model_dump_json() for r in replay_offline(lines)]
    skewed = interleave(lines, "skew", 4500, seed=11)
    live = _session_records(skewed, max_track_skew_ms=5000)
    assert [r.model_dump_json() for r in live] == offline
    assert not [r for r in live if isinstance(r, Diagnostic)]


def test_beyond_the_bound_late_audio_is_still_analysed_and_flagged() -> None:
    lines = fixture_lines("fork_two_track")
    offline = [r for r in replay_offline(lines) if isinstance(r, TurnRecord)]
    late = interleave(lines, "outbound_first", seed=0)  # the caller track 40 s late
    live = _session_records(late, max_track_skew_ms=1000)
    turns = [r for r in live if isinstance(r, TurnRecord)]
    codes = {r.code for r in live if isinstance(r, Diagnostic)}
    assert "late_media" in codes
    stopped = live[-1]
    assert isinstance(stopped, StreamStopped)
    assert stopped.summary.lost_ms == {"inbound": 0, "outbound": 0}  # nothing dropped
    # every caller turn is still found (analysed late, without waiting for it), flagged
    caller = [t for t in turns if t.track == "inbound"]
    assert len(caller) == sum(1 for t in offline if t.track == "inbound")
    assert all(t.cross_track_partial for t in caller)
    for got, want in zip(caller, [t for t in offline if t.track == "inbound"], strict=True):
        assert abs(got.start_ms - want.start_ms) <= 100 and abs(got.end_ms - want.end_ms) <= 100
    # the agent's turns went on without the caller: their cross-track fields are flagged
    assert all(t.cross_track_partial for t in turns if t.track == "outbound")
