"""Proxy mode: a model of Twilio's playback buffer, rebuilding what the caller hears of the bot.

In proxy mode (``server/proxy.py``) a bot's messages reach Twilio through mise_twilio, and
Twilio plays them by these documented rules ([WSM]; docs/protocol.md §2 and §8):

- ``media``: μ-law at 8 kHz, one byte per sample, any size, "buffered and played in the order
  received": a payload starts when it arrives, or when the audio queued before it ends.
- ``mark``: echoed "when the audio ends (or if there is no audio buffered)", i.e. once the
  audio queued before it has played.
- ``clear``: "empties all buffered audio and causes any mark messages to be sent back". A
  cleared mark's echo looks exactly like a played one's, so only a model of the buffer can
  tell them apart (pitfall §8.2): each echo is matched to the oldest mark of that name.

``PlaybackModel`` turns those messages into the outbound track: one 160-byte μ-law frame per
20 ms on the call's grid, the bot's audio where it plays and digital silence where nothing
does, each frame released once the stream clock has passed it (from then on no ``clear`` can
change it).

**The clock** is the stream clock, Twilio's ``media.timestamp``, the one every turn is on;
the model reads no other. "Now" is where the latest inbound audio ends (its timestamp plus
its duration), and a bot message is taken to reach Twilio at that instant. What that costs:

- A bot message arriving between two inbound frames is placed at the end of the earlier one,
  early by the time since it arrived: 0-20 ms while Twilio delivers a frame every 20 ms. A bot
  answering an inbound frame at once is placed within the relay's latency of it.
- The relay's hop to Twilio and Twilio's hop back make every placement early by the
  proxy-Twilio round trip (a few ms in-region). The stream does not show it; a ``mark``
  record's ``at_ms`` (the echo's arrival) minus ``expected_at_ms`` (the model) measures it.
- Twilio sometimes delivers inbound audio in bursts (gaps of 233 ms measured,
  docs/protocol.md §1.3); "now" stands still in the gap, and a bot message in it is placed
  early by up to the gap.
- Bot audio that arrives before the first inbound media is placed at that first chunk's
  timestamp, the grid's origin (Twilio may have started it earlier, by at most that
  timestamp: 99-155 ms in real captures).

A forward timestamp jump over ``max_gap_ms`` moves the clock only once the next inbound chunk
confirms it (the rule of ``timeline.py``), so one wild ``media.timestamp`` cannot play out
minutes of queued audio at once.

Positions inside are samples since the grid's origin (8 per ms); the outputs are stream-clock ms.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from mise_twilio.core.audio import FRAME_SAMPLES, MULAW_SILENCE_BYTE, SAMPLES_PER_MS

MarkOutcomeName = Literal["played", "cleared"]

_SILENCE = bytes([MULAW_SILENCE_BYTE])
_SILENT_FRAME = _SILENCE * FRAME_SAMPLES
_COMPACT_BYTES = 64 * 1024  # drop consumed audio in blocks, not 160 bytes at a time


@dataclass(frozen=True, slots=True)
class MarkOutcome:
    """What became of a mark, by the model: ``played`` when the audio queued before it had
    played, ``cleared`` when a ``clear`` dropped that audio first. ``at_ms``: stream-clock
    ms of that moment (the end of the audio before it, or the ``clear``)."""

    outcome: MarkOutcomeName
    at_ms: int | None
    """``None`` before the first inbound chunk (the stream clock has no position yet)."""


@dataclass(frozen=True, slots=True)
class Cut:
    """Audio the bot sent that never played: dropped by a ``clear`` (``by_clear``), or
    still queued when the stream ended. ``at_ms``: stream-clock ms where playback stopped;
    ``unplayed_samples``: how much was dropped (8 per ms)."""

    at_ms: int
    unplayed_samples: int
    by_clear: bool


class _Mark:
    __slots__ = ("cleared_at", "due", "echoed", "name")

    def __init__(self, name: str, due: int) -> None:
        self.name = name
        self.due = due  # samples since the origin: when the audio before it has played
        self.cleared_at: int | None = None
        self.echoed = False


class PlaybackModel:
    """Twilio's playback buffer for one stream, driven by the stream clock.

    Usage: ``media()``, ``mark()``, ``clear()`` for each message the bot sends (in relay
    order); ``on_inbound()`` for each inbound media chunk, which returns the outbound frames
    now final; ``echo()`` for each mark Twilio echoes; ``finish()`` at the stream's end.
    ``claim()`` hands the cuts that fall in an agent turn to that turn.

    ``max_queued_ms``: audio queued ahead of "now" beyond this is not modelled (the payload's
    excess is dropped here, never in the relay; ``media()`` says how much). Twilio's own
    limit is not documented.
    ``max_gap_ms``: a larger inbound timestamp jump needs the next chunk to confirm it.
    ``max_marks``: marks waiting for their echo beyond this forget the oldest.
    """

    def __init__(
        self, *, max_queued_ms: int = 600_000, max_gap_ms: int = 5000, max_marks: int = 4096
    ) -> None:
        self._max_queued = max_queued_ms * SAMPLES_PER_MS
        self._max_gap = max_gap_ms * SAMPLES_PER_MS
        self._max_marks = max_marks
        self._origin: int | None = None  # stream-clock samples of position 0
        self._now = 0
        self._suspect_end: int | None = None
        self._emitted = 0  # frames before this position were handed out (multiple of 160)
        self._buf = bytearray()  # what plays from ``_emitted`` on, from ``_buf[_off]``
        self._off = 0
        self._pending: deque[_Mark] = deque()  # not yet due, in due order
        self._waiting: dict[str, deque[_Mark]] = {}  # by name, not yet echoed
        self._waiting_count = 0
        self._cuts: deque[tuple[int, int, bool]] = deque()  # (position, unplayed, by_clear)
        self.media_messages = 0
        """Bot ``media`` messages modelled (for the call summary)."""

    # -- the bot's messages ----------------------------------------------------------------

    def media(self, payload: bytes) -> int:
        """Queue one ``media`` payload (μ-law bytes, any length). Returns the samples not
        modelled because the queue would exceed ``max_queued_ms`` (normally 0)."""
        self.media_messages += 1
        start = max(self._now, self._queue_end)
        room = self._max_queued - (start - self._now)
        dropped = max(0, len(payload) - max(0, room))
        if dropped:
            payload = payload[: len(payload) - dropped]
        if payload:
            gap = start - self._queue_end
            if gap:
                self._buf += _SILENCE * gap
            self._buf += payload
        return dropped

    def mark(self, name: str) -> None:
        """Queue a mark: due when the audio queued so far has played (now, when none is)."""
        mark = _Mark(name, max(self._now, self._queue_end))
        if mark.due > self._now:
            self._pending.append(mark)
        self._waiting.setdefault(name, deque()).append(mark)
        self._waiting_count += 1
        if self._waiting_count > self._max_marks:
            self._forget_oldest_mark()

    def clear(self) -> int:
        """Drop every queued sample not yet played and clear every mark not yet due.
        Returns the samples dropped."""
        now = self._now
        unplayed = max(0, self._queue_end - now)
        if unplayed:
            keep = now - self._emitted
            del self._buf[self._off + keep :]
        for mark in self._pending:
            if not mark.echoed and mark.due > now:
                mark.cleared_at = now
        self._pending.clear()
        self._cuts.append((now, unplayed, True))
        return unplayed

    # -- Twilio's side ---------------------------------------------------------------------

    def on_inbound(self, timestamp_ms: int, samples: int) -> list[tuple[int, bytes]]:
        """An inbound media chunk (``timestamp_ms``, ``samples`` long) moves the clock.

        Returns the outbound frames it made final, in order: ``(timestamp_ms, 160 μ-law
        bytes)`` on the grid anchored at the first chunk's timestamp. A chunk behind "now"
        (a duplicate, a late one) returns nothing; so does an unconfirmed jump.
        """
        position = timestamp_ms * SAMPLES_PER_MS
        if self._origin is None:
            self._origin = position
        start = position - self._origin
        end = start + samples
        if end <= self._now:
            return []
        if start - self._now > self._max_gap:
            confirmed = (
                self._suspect_end is not None and abs(start - self._suspect_end) <= FRAME_SAMPLES
            )
            if not confirmed:
                self._suspect_end = end
                return []
        self._suspect_end = None
        self._now = end
        while self._pending and (self._pending[0].due <= end or self._pending[0].echoed):
            self._pending.popleft()
        return self._emit()

    def echo(self, name: str) -> MarkOutcome | None:
        """Twilio echoed mark ``name``: the oldest mark of that name not yet echoed, with what
        the model says became of it, or ``None`` when no such mark was sent. An echo before
        the model's due time means Twilio played it sooner: ``played``."""
        marks = self._waiting.get(name)
        if not marks:
            return None
        mark = marks.popleft()
        if not marks:
            del self._waiting[name]
        self._waiting_count -= 1
        mark.echoed = True
        cleared = mark.cleared_at is not None
        at = mark.cleared_at if mark.cleared_at is not None else mark.due
        at_ms = self._ms(at) if self._origin is not None else None
        return MarkOutcome("cleared" if cleared else "played", at_ms)

    def finish(self) -> None:
        """End of stream: audio still queued beyond "now" never played (a ``Cut``)."""
        unplayed = max(0, self._queue_end - self._now)
        if unplayed:
            self._cuts.append((self._now, unplayed, False))

    # -- turns -----------------------------------------------------------------------------

    def claim(self, start_ms: int, last_ms: int) -> list[Cut]:
        """The cuts at ``start_ms`` ≤ ``at_ms`` ≤ ``last_ms``, taken out of the model (each
        goes to one turn). Cuts before ``start_ms`` fell outside every agent turn claimed so
        far and are discarded. Call in turn order."""
        cuts = self._cuts
        while cuts and self._ms(cuts[0][0]) < start_ms:
            cuts.popleft()
        taken: list[Cut] = []
        while cuts and self._ms(cuts[0][0]) <= last_ms:
            position, unplayed, by_clear = cuts.popleft()
            taken.append(Cut(self._ms(position), unplayed, by_clear))
        return taken

    # -- internals -------------------------------------------------------------------------

    @property
    def _queue_end(self) -> int:
        return self._emitted + len(self._buf) - self._off

    def _ms(self, samples: int) -> int:
        """Stream-clock ms of a position (after the first inbound chunk)."""
        return ((self._origin or 0) + samples) // SAMPLES_PER_MS

    def _emit(self) -> list[tuple[int, bytes]]:
        frames: list[tuple[int, bytes]] = []
        assert self._origin is not None
        origin_ms = self._origin // SAMPLES_PER_MS
        buf = self._buf
        while self._emitted + FRAME_SAMPLES <= self._now:
            off = self._off
            queued = len(buf) - off
            if queued >= FRAME_SAMPLES:
                frame = bytes(buf[off : off + FRAME_SAMPLES])
                self._off = off + FRAME_SAMPLES
            elif queued > 0:
                frame = bytes(buf[off:]) + _SILENCE * (FRAME_SAMPLES - queued)
                self._off = len(buf)
            else:
                frame = _SILENT_FRAME
            frames.append((origin_ms + self._emitted // SAMPLES_PER_MS, frame))
            self._emitted += FRAME_SAMPLES
        if self._off >= _COMPACT_BYTES or (self._off and self._off == len(buf)):
            del buf[: self._off]
            self._off = 0
        return frames

    def _forget_oldest_mark(self) -> None:
        oldest_name = min(self._waiting, key=lambda n: self._waiting[n][0].due)
        self.echo(oldest_name)
