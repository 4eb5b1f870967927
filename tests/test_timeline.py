"""track.py: placing chunks by Twilio timestamp on the shared 20 ms grid."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mise_twilio.core.timeline import DISCONTINUITY, SILENT_FRAME, TrackTimeline


def frames_of(n: int, start: int = 1) -> list[bytes]:
    """n distinct 160-byte μ-law frames (byte value encodes the frame number)."""
    return [bytes([(start + i) % 250]) * 160 for i in range(n)]


def drain(tl: TrackTimeline) -> list[tuple[int, bytes, int]]:
    out = list(tl.frames)
    tl.frames.clear()
    return out


def test_first_timestamp_is_not_zero_and_sets_frame_zero() -> None:
    tl = TrackTimeline(origin_samples=99 * 8)
    for i, f in enumerate(frames_of(3)):
        assert tl.push(99 + 20 * i, f, chunk=i + 1) is None
    got = drain(tl)
    assert [k for k, _, _ in got] == [0, 1, 2]
    assert [lost for _, _, lost in got] == [0, 0, 0]


def test_gap_is_filled_with_silence_and_counted_lost() -> None:
    tl = TrackTimeline(origin_samples=100 * 8)
    a, b = frames_of(2)
    tl.push(100, a, 1)
    tl.push(180, b, 2)  # 3 frames (60 ms) missing
    got = drain(tl)
    assert [k for k, _, _ in got] == [0, 1, 2, 3, 4]
    assert [p for _, p, _ in got][1:4] == [SILENT_FRAME] * 3
    assert [lost for _, _, lost in got] == [0, 160, 160, 160, 0]
    assert tl.lost_samples == 3 * 160


def test_duplicate_chunk_is_dropped() -> None:
    tl = TrackTimeline(origin_samples=0)
    a, b = frames_of(2)
    tl.push(0, a, 1)
    assert tl.push(0, a, 1) == "duplicate_media"
    tl.push(20, b, 2)
    assert [k for k, _, _ in drain(tl)] == [0, 1]


def test_slightly_behind_is_appended_far_behind_dropped() -> None:
    tl = TrackTimeline(origin_samples=0)
    a, b, c, d = frames_of(4)
    tl.push(0, a, 1)
    assert tl.push(15, b, 2) is None  # < 20 ms ahead: appended where the audio ends
    assert tl.push(40, c, 3) is None
    assert tl.push(0, d, 4) == "timestamp_behind"
    got = drain(tl)
    assert [(k, p) for k, p, _ in got] == [(0, a), (1, b), (2, c)]
    assert tl.lost_samples == 0


def test_non_160_chunks_are_reframed() -> None:
    tl = TrackTimeline(origin_samples=0)
    data = bytes(range(200)) * 4  # 800 bytes = 5 frames
    pos = 0
    for size in (1, 159, 320, 7, 313):
        tl.push(pos // 8, data[pos : pos + size], None)
        pos += size
    got = drain(tl)
    assert b"".join(p for _, p, _ in got) == data
    assert [k for k, _, _ in got] == [0, 1, 2, 3, 4]


def test_large_jump_confirmed_is_a_discontinuity_not_silence() -> None:
    tl = TrackTimeline(origin_samples=0, max_gap_ms=5000)
    a, b, c = frames_of(3)
    tl.push(0, a, 1)
    assert tl.push(60_000, b, 2) is None  # held until the next chunk confirms it
    tl.push(60_020, c, 3)
    got = drain(tl)
    assert got[0][0] == 0
    assert (got[1][0], got[1][1]) == (3000, DISCONTINUITY)
    assert [(k, p) for k, p, _ in got[2:]] == [(3000, b), (3001, c)]
    assert tl.lost_samples == 0
    assert tl.discontinuities == 1


def test_unconfirmed_jump_is_an_outlier_and_the_call_goes_on() -> None:
    tl = TrackTimeline(origin_samples=0, max_gap_ms=5000)
    a, bad, b = frames_of(3)
    tl.push(0, a, 1)
    tl.push(9_999_999, bad, 2)
    assert tl.push(20, b, 3) == "timestamp_outlier"
    assert [(k, p) for k, p, _ in drain(tl)] == [(0, a), (1, b)]


def test_track_starting_before_origin_gets_negative_frames() -> None:
    tl = TrackTimeline(origin_samples=105 * 8)
    tl.push(85, frames_of(1)[0], 1)
    tl.finish()
    got = drain(tl)
    assert got[0][0] == -1


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 480), min_size=1, max_size=60), first_ms=st.integers(1, 500))
def test_any_chunking_gives_the_same_frames(sizes: list[int], first_ms: int) -> None:
    """Re-cut one stream into arbitrary payload sizes with whole-ms timestamps, as Twilio
    would stamp them: the frames are byte-identical and nothing is counted lost."""
    total = sum(sizes)
    audio = bytes((i * 7) % 251 for i in range(total))
    reference = TrackTimeline(origin_samples=first_ms * 8)
    pos = 0
    while pos < total:
        reference.push(first_ms + pos // 8, audio[pos : pos + 160], None)
        pos += 160
    reference.finish()
    tl = TrackTimeline(origin_samples=first_ms * 8)
    pos = 0
    for size in sizes:
        tl.push(first_ms + pos // 8, audio[pos : pos + size], None)
        pos += size
    tl.finish()
    assert list(tl.frames) == list(reference.frames)
    assert tl.lost_samples == 0
