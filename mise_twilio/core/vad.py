"""Energy voice activity detection on 20 ms frames, with an adaptive noise floor.

One ``EnergyVad`` per track, stepped once per frame with the frame's level in dBFS. Pure and
cheap (a handful of float compares per frame: the per-message path). Method:

- **Noise floor** by minimum statistics (Martin 2001, "Noise power spectral density estimation
  based on optimal smoothing and minimum statistics", IEEE TSAP 9(5)), reduced to broadband
  frame levels: frame power is first smoothed (first-order, ``noise_floor_smoothing_ms``) so
  that one freak quiet frame cannot drag the floor down, and the floor candidate is the minimum
  smoothed level over the last ``noise_floor_window_ms`` (block minima, O(1) per frame). The floor
  falls to a lower candidate at once; it rises only as low readings leave the window, so
  speech, which always dips between phrases within a few seconds, does not lift it.
  Digital silence (μ-law 0xFF/0x7F decodes to 0: level ``SILENCE_DBFS``) never updates it: it
  says nothing about the line's noise; nor do the few frames after it (partial, or a fade-in).
- **Hysteresis**: a frame is *loud* above ``noise floor + start_margin_db`` (and above the absolute
  ``min_level_dbfs``), *active* above ``noise floor + stop_margin_db``. Speech starts after
  ``min_speech_ms`` of consecutive loud frames; its start is moved back over the active frames
  just before (at most ``pre_roll_ms``) so soft onsets are kept. Speech ends once
  ``hangover_ms`` pass with no active frame; the segment ends after its last active frame.
- **Cross-track dominance** (bleed): when the caller's voice leaks into the agent's track (echo,
  crosstalk) it arrives 20-30 dB below the original. A frame whose level is more than
  ``bleed_margin_db`` below the other track's level at the same instant is treated as not loud.
  True double-talk keeps both tracks within a few dB, so it still counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mise_twilio.core.audio import FRAME_MS, SILENCE_DBFS


@dataclass(frozen=True, slots=True)
class VadParams:
    """Energy VAD parameters (durations in ms, levels in dBFS, level differences in dB).

    Defaults were tuned with ``bench/vad_accuracy.py`` on the project's espeak-ng fixtures
    (``fixtures/``: speech at -20 to -26 dBFS over -55..-60 dBFS line noise, plus quiet-speaker,
    hum/click and bleed variants) with white and babble noise at 20 and 10 dB SNR and 3% frame
    loss, and checked on a real capture. Against the first values (9/5 dB margins, 200 ms
    hangover, 12 dB warm-up, 15 dB bleed margin), mean frame F1 went 0.929 → 0.955 and
    turn-onset F1 0.913 → 0.986; 10 dB white noise 0.837 → 0.918.

    - ``start_margin_db`` 10 / ``stop_margin_db`` 6: a 4 dB hysteresis band. Syllable troughs
      stay above noise floor + 6 dB in running speech; babble peaks mostly stay under + 10.
    - ``min_level_dbfs`` -55: no speech below this, whatever the noise floor (PSTN idle noise
      is about -65 to -55 dBFS; quiet talkers measured -42 dBFS).
    - ``min_speech_ms`` 60: three loud frames. Clicks (5-10 ms) light one or two frames.
    - ``hangover_ms`` 240: bridges stop consonants and the dips that 10 dB noise opens inside
      words (200 ms split segments there).
    - ``pre_roll_ms`` 60: soft onsets (fricatives, breathy vowels) sit between the thresholds.
    - ``post_roll_ms`` 40: word-final decays fall under the stop threshold before they are
      inaudible; without it segment ends were 25 ms early (median) and up to 128 ms early.
    - ``noise_floor_window_ms`` 3000: a few seconds of speech always hold a dip to the noise
      floor (Martin 2001 uses ~1.5 s; 1.5 s cost 0.02-0.04 F1 here, 5 s tracked noise changes
      late).
    - ``noise_floor_smoothing_ms`` 100: power smoothing before the minimum. Without it a single
      quiet frame (a fade, the edge of digital silence) set the noise floor 20 dB under the line
      noise and the noise then read as speech for seconds (seen on the fork fixture).
    - ``noise_floor_rise_in_speech_db_per_s`` 8: while speech is on, the noise floor rises at
      most this fast. Unlimited, a 3.9 s TTS utterance (longer than the window) lifted the
      floor into its own troughs when the window filled and its last word lost 80 ms
      (gap_before off by 90 ms); 1-3 dB/s fixed that but let a mis-started floor linger under
      10 dB noise (frame F1 0.86-0.90); 8 keeps both (gap error <= 60 ms, white 10 dB F1 0.92).
    - ``initial_noise_floor_dbfs`` -60: a typical PSTN noise floor, used until frames arrive;
      in the first window the floor may jump up to ``warmup_max_rise_db`` (24) above it at
      once, so a line with -33 dBFS noise (10 dB SNR) is not speech from frame 0, while a
      stream that opens in the middle of a -23 dBFS turn still detects it at once (30 lost
      660 ms there).
    - ``bleed_margin_db`` 20: leaked speech measured 20-30 dB under its source; double-talk
      within ~10 dB. 15 dB cut the soft parts of real double-talk (overlap recall 0.95 → 0.98
      at 20); 0 disables the check.
    - ``bleed_lag_ms`` 60: the leak arrives up to this late (echo path, jitter buffers), so the
      other track's loudest frame over the last 60 ms is the reference. Comparing same-frame
      levels let the delayed tail of each agent syllable through and a 0.5 s backchannel grew
      to 1.5 s on the bleed fixture.

    Raises ``ValueError`` when ``stop_margin_db`` exceeds ``start_margin_db`` or a duration is
    shorter than one 20 ms frame.
    """

    start_margin_db: float = field(
        default=10.0, metadata={"doc": "speech starts this far above the noise floor, dB"}
    )
    stop_margin_db: float = field(
        default=6.0, metadata={"doc": "speech goes on while this far above the noise floor, dB"}
    )
    min_level_dbfs: float = field(
        default=-55.0, metadata={"doc": "no speech below this level, whatever the noise floor"}
    )
    min_speech_ms: int = field(default=60, metadata={"doc": "loud run that confirms speech"})
    hangover_ms: int = field(default=240, metadata={"doc": "quiet time that ends speech"})
    pre_roll_ms: int = field(default=60, metadata={"doc": "soft onset kept before speech"})
    post_roll_ms: int = field(default=40, metadata={"doc": "decay kept after speech"})
    noise_floor_window_ms: int = field(
        default=3000, metadata={"doc": "minimum-statistics window of the noise floor"}
    )
    noise_floor_smoothing_ms: int = field(
        default=100, metadata={"doc": "power smoothing before the noise-floor minimum"}
    )
    noise_floor_rise_in_speech_db_per_s: float = field(
        default=8.0, metadata={"doc": "fastest noise-floor rise while speech is on"}
    )
    initial_noise_floor_dbfs: float = field(
        default=-60.0, metadata={"doc": "noise floor assumed before any frame"}
    )
    warmup_max_rise_db: float = field(
        default=24.0, metadata={"doc": "noise-floor jump allowed in the first window"}
    )
    bleed_margin_db: float = field(
        default=20.0,
        metadata={"doc": "a frame this far under the other track is its leak; 0 = off"},
    )
    bleed_lag_ms: int = field(
        default=60, metadata={"doc": "echo delay covered by the bleed comparison"}
    )

    def __post_init__(self) -> None:
        if self.stop_margin_db > self.start_margin_db:
            raise ValueError("stop_margin_db must not exceed start_margin_db (hysteresis)")
        for name in ("min_speech_ms", "hangover_ms", "noise_floor_window_ms"):
            if getattr(self, name) < FRAME_MS:
                raise ValueError(f"{name} must be at least one {FRAME_MS} ms frame")

    @property
    def lookback_frames(self) -> int:
        """How far back a reported speech start can lie behind the frame that confirmed it
        (confirmation run plus pre-roll), in frames."""
        return max(0, self.min_speech_ms // FRAME_MS - 1) + self.pre_roll_ms // FRAME_MS


_BLOCK_FRAMES = 25  # 500 ms blocks for the running minimum
_EDGE_FRAMES = 3  # frames after digital silence kept out of the floor estimate


class EnergyVad:
    """Per-track VAD state machine; ``step()`` once per 20 ms frame, in frame order.

    Frame indices are the caller's (any integer grid); ``step`` returns ``None`` or a transition:
    ``("start", first_frame)`` when speech is confirmed (first_frame includes pre-roll), or
    ``("end", end_frame)`` when it ended (``end_frame`` is exclusive: one past the last active
    frame). ``flush()`` ends open speech at the stream's end.
    """

    __slots__ = (
        "_after_silence",
        "_alpha",
        "_block_min",
        "_block_n",
        "_blocks",
        "_hang_frames",
        "_in_speech",
        "_last_active",
        "_loud_run",
        "_min_frames",
        "_n_blocks",
        "_noise_floor",
        "_p",
        "_post_frames",
        "_power",
        "_pre_frames",
        "_recent_active_from",
        "_speech_rise_per_frame",
    )

    def __init__(self, params: VadParams) -> None:
        self._p = params
        self._noise_floor = params.initial_noise_floor_dbfs
        self._min_frames = max(1, params.min_speech_ms // FRAME_MS)
        self._hang_frames = max(1, params.hangover_ms // FRAME_MS)
        self._pre_frames = max(0, params.pre_roll_ms // FRAME_MS)
        # The tail kept after the last active frame; never beyond the hangover (the frames it
        # covers must already have been seen when the end is reported).
        self._post_frames = min(self._hang_frames, max(0, params.post_roll_ms // FRAME_MS))
        self._n_blocks = max(1, params.noise_floor_window_ms // (FRAME_MS * _BLOCK_FRAMES))
        self._speech_rise_per_frame = params.noise_floor_rise_in_speech_db_per_s * FRAME_MS / 1000.0
        self._after_silence = 0
        self._alpha = min(1.0, FRAME_MS / max(FRAME_MS, params.noise_floor_smoothing_ms))
        self._power = 0.0
        self._blocks: list[float] = []
        self._block_min = float("inf")
        self._block_n = 0
        self._loud_run = 0
        self._recent_active_from: int | None = None  # start of the current run of active frames
        self._last_active = -1
        self._in_speech = False

    @property
    def in_speech(self) -> bool:
        """Speech has started and not yet ended."""
        return self._in_speech

    @property
    def noise_floor_dbfs(self) -> float:
        """Current noise-floor estimate, dBFS."""
        return self._noise_floor

    def step(
        self, frame: int, level_dbfs: float, other_level_dbfs: float | None = None
    ) -> tuple[str, int] | None:
        """Advance one frame (``level_dbfs``: this frame's RMS level).

        ``other_level_dbfs``: the other track's loudest level over the last ``bleed_lag_ms``
        (the caller keeps that short history), or ``None`` with one track.
        """
        p = self._p
        if level_dbfs <= SILENCE_DBFS:
            self._after_silence = _EDGE_FRAMES
        elif self._after_silence:
            # Frames right after digital silence are partly silent (or a fade-in): far below
            # the line's real noise. They must not set the floor.
            self._after_silence -= 1
        else:
            self._update_noise_floor(level_dbfs)
        noise_floor = self._noise_floor
        active = level_dbfs > noise_floor + p.stop_margin_db and level_dbfs > p.min_level_dbfs - 6.0
        loud = (
            active
            and level_dbfs > noise_floor + p.start_margin_db
            and level_dbfs > p.min_level_dbfs
        )
        if (
            active
            and other_level_dbfs is not None
            and p.bleed_margin_db > 0
            and level_dbfs < other_level_dbfs - p.bleed_margin_db
        ):
            # Far below the other track: its leak, not this speaker. Neither starts nor
            # sustains speech (sustaining is how leaks stretched real turns).
            loud = False
            active = False
        if active:
            if self._recent_active_from is None:
                self._recent_active_from = frame
            self._last_active = frame
        else:
            self._recent_active_from = None

        if self._in_speech:
            if frame - self._last_active >= self._hang_frames:
                self._in_speech = False
                self._loud_run = 0
                return ("end", self._last_active + 1 + self._post_frames)
            return None

        self._loud_run = self._loud_run + 1 if loud else 0
        if self._loud_run >= self._min_frames:
            self._in_speech = True
            self._loud_run = 0
            run_start = frame - self._min_frames + 1
            active_from = (
                self._recent_active_from if self._recent_active_from is not None else frame
            )
            start = max(min(run_start, active_from), run_start - self._pre_frames)
            return ("start", start)
        return None

    def flush(self) -> tuple[str, int] | None:
        """End open speech (stream end); returns ``("end", end_frame)`` or ``None``."""
        if not self._in_speech:
            return None
        self._in_speech = False
        self._loud_run = 0
        return ("end", self._last_active + 1)  # at the stream's end there is no tail to keep

    def reset_speech(self) -> tuple[str, int] | None:
        """A discontinuity: end open speech, forget runs, keep the noise floor."""
        ended = self.flush()
        self._recent_active_from = None
        self._loud_run = 0
        return ended

    def _update_noise_floor(self, frame_dbfs: float) -> None:
        power = 10.0 ** (frame_dbfs / 10.0)
        if self._power <= 0.0:
            self._power = power
        else:
            self._power += self._alpha * (power - self._power)
        level_dbfs = 10.0 * math.log10(self._power)
        if level_dbfs < self._block_min:
            self._block_min = level_dbfs
        self._block_n += 1
        if self._block_n >= _BLOCK_FRAMES:
            self._blocks.append(self._block_min)
            if len(self._blocks) > self._n_blocks:
                del self._blocks[0]
            self._block_min = float("inf")
            self._block_n = 0
        candidate = min(self._block_min, min(self._blocks)) if self._blocks else self._block_min
        if candidate < self._noise_floor:
            self._noise_floor = candidate  # falls at once
        elif self._in_speech:
            # A monologue longer than the window (TTS agents talk for seconds without a
            # breath) would lift the minimum into its own troughs and cut soft word endings;
            # during speech the floor only creeps up (a line that really got noisier is still
            # followed, slowly).
            self._noise_floor = min(candidate, self._noise_floor + self._speech_rise_per_frame)
        elif len(self._blocks) >= self._n_blocks:
            # Outside speech, once a whole window has been seen, the floor *is* the window's
            # minimum, so a freak low reading is forgotten after floor_window_ms.
            self._noise_floor = candidate
        else:
            # Warm-up (less than one window seen): a noisy line must not read as speech for
            # seconds, so jump to the candidate, but no higher than initial + warm-up cap, so
            # a call that opens with speech still detects it.
            cap = self._p.initial_noise_floor_dbfs + self._p.warmup_max_rise_db
            self._noise_floor = max(self._noise_floor, min(candidate, cap))
