"""One track's timeline: Twilio ``media.timestamp`` → sample clock → 20 ms frames.

Rules (``docs/architecture.md``, "Timeline"; ``docs/protocol.md`` §1.3, §10):

- Position of a chunk = ``timestamp_ms * 8`` samples on the stream clock. The first timestamp
  is not 0 (99-155 ms in real captures) and arrival order is bursty, so audio is placed by
  timestamp, never by arrival time.
- Frames are cut on a grid shared by both tracks: frame ``k`` covers samples
  ``[origin + 160k, origin + 160(k+1))`` where ``origin`` is the call's first media position.
  Inbound frame ``k`` and outbound frame ``k`` are the same 20 ms of the call.
- A forward jump is a gap (audio Twilio discarded, warning 31930): filled with μ-law silence
  and counted in ``lost_samples``. A jump over ``max_gap_ms`` is a *discontinuity*: not filled
  with thousands of silent frames; it must be confirmed by the next chunk continuing from it,
  otherwise the jumping chunk is dropped as an outlier (one bad timestamp must not throw away the
  rest of the call).
- A chunk whose ``chunk`` number is not above the last one is a duplicate and is dropped.
- A timestamp behind the expected position by less than one frame (20 ms) is appended where
  the audio ends: Twilio timestamps are whole ms and chunks are not always 160 bytes (Deepgram's
  Twilio mixer notes both). Further behind is dropped with a diagnostic.
"""

from __future__ import annotations

from collections import deque

from mise_twilio.core.audio import FRAME_SAMPLES, MULAW_SILENCE_BYTE, SAMPLES_PER_MS

SILENT_FRAME = bytes([MULAW_SILENCE_BYTE]) * FRAME_SAMPLES
"""One frame of μ-law digital silence, shared (never copied) by every filled frame."""
DISCONTINUITY = b""
"""Frame payload that marks a discontinuity before the frame index it carries."""

Frame = tuple[int, bytes, int]
"""(frame index on the call grid, 160 μ-law bytes or ``DISCONTINUITY``, lost samples in it)."""

_MS_TOLERANCE_SAMPLES = SAMPLES_PER_MS  # whole-ms timestamps: under 1 ms forward is not a gap


class TrackTimeline:
    """Places one track's chunks by timestamp and appends complete frames to ``frames``.

    ``push()`` returns ``None`` when the chunk was placed, or a diagnostic code
    (``duplicate_media``, ``timestamp_behind``, ``timestamp_outlier``) when it was dropped or
    a pending outlier was discarded. ``frames`` is consumed by the caller (the call session).
    """

    __slots__ = (
        "_last_chunk",
        "_max_gap_samples",
        "_next_pos",
        "_origin",
        "_pending",
        "_pending_frame",
        "_pending_lost",
        "_suspect",
        "discontinuities",
        "frames",
        "lost_samples",
    )

    def __init__(self, origin_samples: int, *, max_gap_ms: int = 5000) -> None:
        self._origin = origin_samples
        self._max_gap_samples = max_gap_ms * SAMPLES_PER_MS
        self._next_pos: int | None = None
        self._pending = bytearray()
        self._pending_frame = 0
        self._pending_lost = 0
        self._last_chunk: int | None = None
        self._suspect: tuple[int, bytes, int | None] | None = None
        self.frames: deque[Frame] = deque()
        self.lost_samples = 0
        self.discontinuities = 0

    @property
    def end_frame(self) -> int | None:
        """One past the last complete frame cut so far; ``None`` before the first chunk."""
        return None if self._next_pos is None else self._pending_frame

    def push(self, timestamp_ms: int, ulaw: bytes, chunk: int | None = None) -> str | None:
        """Place one chunk (``ulaw``: μ-law bytes, any length ≥ 1) at ``timestamp_ms``."""
        pos = timestamp_ms * SAMPLES_PER_MS
        if self._next_pos is None:
            self._place_first(pos, ulaw, chunk)
            return None
        if chunk is not None and self._last_chunk is not None and chunk <= self._last_chunk:
            return "duplicate_media"
        verdict: str | None = None
        if self._suspect is not None:
            s_pos, s_ulaw, s_chunk = self._suspect
            self._suspect = None
            if abs(pos - (s_pos + len(s_ulaw))) < FRAME_SAMPLES:
                self._jump_to(s_pos)
                self._take(s_ulaw, s_chunk)
            else:
                verdict = "timestamp_outlier"
        delta = pos - self._next_pos
        if delta >= _MS_TOLERANCE_SAMPLES:
            if delta > self._max_gap_samples:
                self._suspect = (pos, ulaw, chunk)
                return verdict
            self._fill(delta)
        elif delta <= -FRAME_SAMPLES:
            return verdict or "timestamp_behind"
        self._take(ulaw, chunk)
        return verdict

    def finish(self) -> str | None:
        """End of stream: pad the partial frame with silence (not counted lost) and cut it.

        Returns ``timestamp_outlier`` if an unconfirmed jump was pending (it is dropped).
        """
        verdict = "timestamp_outlier" if self._suspect is not None else None
        self._suspect = None
        if self._pending:
            self._pending += SILENT_FRAME[: FRAME_SAMPLES - len(self._pending)]
            self._cut()
        return verdict

    # -- internals -----------------------------------------------------------------------

    def _place_first(self, pos: int, ulaw: bytes, chunk: int | None) -> None:
        rel = pos - self._origin
        frame = rel // FRAME_SAMPLES  # floor: may be negative for a track that starts earlier
        lead = rel - frame * FRAME_SAMPLES
        self._pending_frame = frame
        self._next_pos = pos
        if lead:
            # Leading part of the first frame: before this track existed, not lost audio.
            self._pending += SILENT_FRAME[:lead]
        self._take(ulaw, chunk)

    def _take(self, ulaw: bytes, chunk: int | None) -> None:
        n = len(ulaw)
        assert self._next_pos is not None
        self._next_pos += n
        if chunk is not None:
            self._last_chunk = chunk
        if not self._pending and n == FRAME_SAMPLES:
            # The common case: one aligned 160-byte chunk is one frame, no copy.
            self.frames.append((self._pending_frame, ulaw, 0))
            self._pending_frame += 1
            return
        self._pending += ulaw
        if len(self._pending) >= FRAME_SAMPLES:
            self._cut()

    def _fill(self, n_samples: int) -> None:
        assert self._next_pos is not None
        self._next_pos += n_samples
        self.lost_samples += n_samples
        while n_samples > 0:
            room = FRAME_SAMPLES - len(self._pending)
            take = min(room, n_samples)
            if take == FRAME_SAMPLES:
                self.frames.append((self._pending_frame, SILENT_FRAME, FRAME_SAMPLES))
                self._pending_frame += 1
            else:
                self._pending += SILENT_FRAME[:take]
                self._pending_lost += take
                if len(self._pending) >= FRAME_SAMPLES:
                    self._cut()
            n_samples -= take

    def _jump_to(self, pos: int) -> None:
        """Confirmed discontinuity: close the partial frame, restart framing at ``pos``."""
        if self._pending:
            self._pending += SILENT_FRAME[: FRAME_SAMPLES - len(self._pending)]
            self._cut()
        rel = pos - self._origin
        frame = rel // FRAME_SAMPLES
        self.discontinuities += 1
        self.frames.append((frame, DISCONTINUITY, 0))
        self._pending_frame = frame
        self._next_pos = pos
        lead = rel - frame * FRAME_SAMPLES
        if lead:
            self._pending += SILENT_FRAME[:lead]

    def _cut(self) -> None:
        pending = self._pending
        lost = self._pending_lost
        start = 0
        while len(pending) - start >= FRAME_SAMPLES:
            frame = bytes(pending[start : start + FRAME_SAMPLES])
            self.frames.append((self._pending_frame, frame, min(lost, FRAME_SAMPLES)))
            lost = max(0, lost - FRAME_SAMPLES)
            self._pending_frame += 1
            start += FRAME_SAMPLES
        del pending[:start]
        self._pending_lost = lost if pending else 0
