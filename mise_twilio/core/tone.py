"""Steady pure tones in a turn: the beep an answering machine plays before it records.

``find_tone`` scans a closed turn's 20 ms frames, using the Hann-windowed power spectra that
``features.measure_turn`` computes once per turn (also for the spectral tilt). A beep after a
greeting is either its own short turn to the energy VAD or the tail of the greeting turn, so a
scan of each closed turn finds it, with no state and no cost on the per-message path; it is
reported when the turn closes, which is when a bot should start speaking anyway.

A frame is a pure tone when nearly all its power lies within ±100 Hz of its spectral peak (the
main lobe of a 20 ms Hann window; ``tone_min_purity``): a generated beep reads 0.99-1.0 (0.985
20 dB above white line noise), while DTMF (two tones ≥ 268 Hz apart in ITU-T Q.23) reads ≤ 0.87
even with 8 dB of twist, and voiced speech, whose harmonics sit 60-400 Hz apart, stays lower
still (a synthetic 300 Hz vowel with its second harmonic on a narrow F1: 0.94). The frequency
is the peak bin refined by a Gaussian (parabola on log power) fit: < 1 Hz for a clean tone. A
tone is the longest run of consecutive pure frames in ``tone_min_hz..tone_max_hz`` (400-2000 Hz
nominal, ±1.25 %) whose frequency holds within ``tone_max_step`` from frame to frame, above
``tone_min_dbfs``, lasting at least ``tone_min_ms`` (answering-machine beeps are 400-2000 Hz and
last 200 ms or more). Against speech or noise the frames a tone fills only in part are not
pure, so a tone that straddles the 20 ms grid loses them: each neighbour of the run counts 10
ms more when, within ±100 Hz of the run's frequency, it holds at least ``_EDGE_MIN_SHARE`` of
the power the run's frames hold there (the tone then covers about its nearer half, 9 ms or
more) and that power is at least ``_EDGE_MIN_PURITY`` of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from mise_twilio.core._numeric import windows
from mise_twilio.core.audio import FRAME_MS, FULL_SCALE_RMS

if TYPE_CHECKING:
    from mise_twilio.core.features import FeatureParams

__all__ = ["ToneFeatures", "find_tone"]

_LOBE_HZ = 100.0
"""Half-width of the band around the peak that a pure tone's power falls in."""
_EDGE_MIN_SHARE = 0.35
"""A neighbour of the run covered by the tone in its nearer half: its power around the tone's
frequency over the run's median there. A Hann window holds half its energy in each half of
the frame and the last 45 % of it 37 %; the tone's hard edge spreads a further ~12 % outside
the band, so a tone over exactly half the frame reads 0.44, and 0.35 is about 46 %."""
_EDGE_MIN_PURITY = 0.25
"""... and over the neighbour's own power: against speech 6 dB louder than the tone, about
0.2; keeps loud speech with energy near the tone's frequency from extending a run."""


@dataclass(frozen=True, slots=True)
class ToneFeatures:
    """A steady pure tone found in a turn, on the turn's 20 ms frame grid."""

    start_frame: int
    """First pure frame, counted from the turn's first frame."""
    frames: int
    """Length of the run of pure frames (duration = ``frames`` × 20 ms)."""
    frequency_hz: float
    """Median frequency over the run."""
    level_dbfs: float
    """Median frame level over the run."""
    before_ms: int = 0
    """Of the frame before the run, what the tone covers too: 10 (its later half, at least)
    or 0. Start = ``start_frame`` × 20 ms - ``before_ms``."""
    after_ms: int = 0
    """The same for the frame after the run. Duration = ``frames`` × 20 ms + both."""

    @property
    def duration_ms(self) -> int:
        """The tone's length, to 10 ms."""
        return self.frames * FRAME_MS + self.before_ms + self.after_ms


def find_tone(
    power: NDArray[np.float32],
    frame_power: NDArray[np.float64],
    sample_rate_hz: int,
    params: FeatureParams,
) -> ToneFeatures | None:
    """The longest steady pure tone in a turn, if it lasts ``tone_min_ms``.

    Args:
        power: shape ``(k, nfft // 2 + 1)``, float32: the power spectrum of each 20 ms frame
            (Hann window, ``nfft`` = samples per frame: 50 Hz bins).
        frame_power: shape ``(k,)``, each frame's mean square (int16 scale).
        sample_rate_hz: the frames' rate.
        params: the ``tone_*`` settings.
    """
    k, bins = power.shape
    if k == 0 or bins < 5:
        return None
    bin_hz = sample_rate_hz / (2 * (bins - 1))
    lobe = max(1, round(_LOBE_HZ / bin_hz))
    peak = power[:, 1:-1].argmax(axis=1) + 1
    # The main lobe's bins, peak - lobe .. peak + lobe, from a copy of the spectra with lobe
    # zero bins at both ends: one row gather of a flat view (bins past the band edges add 0).
    wide = bins + 2 * lobe
    margined = np.zeros((k, wide), dtype=power.dtype)
    margined[:, lobe : lobe + bins] = power
    lobe_power = windows(margined, 2 * lobe + 1)[np.arange(k) * wide + peak].sum(axis=1)
    total = np.maximum(power.sum(axis=1), 1e-30)
    purity = lobe_power / total
    min_power = FULL_SCALE_RMS**2 * 10.0 ** (params.tone_min_dbfs / 10.0)
    pure = (purity >= params.tone_min_purity) & (frame_power >= min_power)
    if not pure.any():  # speech: the frequency is not needed
        return None
    rows = np.arange(k)[:, None]
    lp = np.log(np.maximum(power[rows, peak[:, None] + np.arange(-1, 2)], 1e-30))
    curv = lp[:, 0] - 2.0 * lp[:, 1] + lp[:, 2]
    shift = np.zeros(k)
    np.divide(0.5 * (lp[:, 0] - lp[:, 2]), curv, out=shift, where=curv < 0.0)
    freq = (peak + np.clip(shift, -0.5, 0.5)) * bin_hz
    pure &= (freq >= params.tone_min_hz) & (freq <= params.tone_max_hz)
    if not pure.any():
        return None
    # Runs of pure frames whose frequency holds from one frame to the next.
    link = pure[1:] & pure[:-1] & (np.abs(freq[1:] - freq[:-1]) <= params.tone_max_step * freq[1:])
    breaks = (~np.concatenate(([False], link)) & pure).nonzero()[0]  # run starts
    ends = (pure & ~np.concatenate((link, [False]))).nonzero()[0] + 1  # run ends
    lengths = ends - breaks
    best = int(np.argmax(lengths))
    a, b = int(breaks[best]), int(ends[best])
    # Neighbours the tone covers in their nearer half (the module docstring) add 10 ms each.
    # Without them a run must be longer than tone_min_ms less one frame (10 frames for 200
    # ms): after a pause a frame the tone fills only in part is still pure (the rest is
    # silence), so there a tone about one frame shorter passes too.
    centre = int(np.median(peak[a:b]))  # margined[:, centre + lobe] is that bin
    full = float(np.median(lobe_power[a:b]))
    edges_ms = [0, 0]
    for side, e in enumerate((a - 1, b)):
        if 0 <= e < k:
            near = float(margined[e, centre : centre + 2 * lobe + 1].sum())
            if near >= _EDGE_MIN_SHARE * full and near >= _EDGE_MIN_PURITY * float(total[e]):
                edges_ms[side] = FRAME_MS // 2
    if (b - a) * FRAME_MS + sum(edges_ms) <= params.tone_min_ms - FRAME_MS:
        return None
    level = 10.0 * math.log10(max(float(np.median(frame_power[a:b])), 1e-10) / FULL_SCALE_RMS**2)
    return ToneFeatures(a, b - a, float(np.median(freq[a:b])), level, edges_ms[0], edges_ms[1])
