"""Voice quality of one turn at telephone bandwidth: jitter, shimmer, HNR and spectral tilt.

Called by ``features.measure_turn`` with what it has already computed (the YIN F0 track, the
periodicity of each voiced pitch frame, the summed power spectrum of the voiced frames), so
nothing here frames the signal a second time. Sans-I/O, numpy only, once per finished turn.

Methods and sources:

* **Glottal periods** (for jitter and shimmer), pitch-synchronous and vectorised over every
  period of the turn: the F0 track places one mark per expected period (its phase integrated
  over each pitch frame); the turn is inverse-filtered with an LPC polynomial (autocorrelation
  method, Levinson-Durbin) fitted to its voiced samples and smoothed with a 5-tap binomial, which
  leaves one broad pulse per glottal excitation and removes the formant ringing that smears
  adjacent periods at high F0; each mark moves to a quarter period before the largest residual
  peak in its period; a period's length is the lag, within ``_LAG_SEARCH`` of the track's
  period, that maximises the normalised cross-correlation of the residual over that period
  with the next (parabolic interpolation). Only consecutive periods of one voiced run are
  compared, and only when they differ by at most ``max_period_factor`` (length) and
  ``max_amplitude_factor`` (amplitude): Praat's "maximum period factor" 1.3 and "maximum
  amplitude factor" 1.6.
* **Jitter (local)**: mean |T_i - T_{i-1}| / mean T, in % (Boersma & Weenink, Praat manual,
  "Voice 2. Jitter").
* **Shimmer (local, dB)**: mean |20 log10(A_i / A_{i-1})| (Praat manual, "Voice 3. Shimmer"),
  with A the RMS of the residual over the period: at 8 kHz a sampled peak moves with the
  sub-sample position of the pulse and reads 0.1-0.2 dB of shimmer on perfectly steady pulses.
* **HNR**: per voiced pitch frame, 10 log10(r / (1 - r)) with r the normalised
  cross-correlation of the frame with itself one period later, taken from YIN's difference
  function at the refined period (``r = 1 - d(T) / (E_0 + E_T)``, the energies of the two
  overlapping parts); the turn's value is the mean over voiced frames. This is the
  cross-correlation HNR of Boersma (1993), "Accurate short-term analysis of the fundamental
  frequency and the harmonics-to-noise ratio of a sampled sound", IFA Proceedings 17, 97-110,
  over a 30 ms window. μ-law quantisation alone caps it near 30-35 dB.
* **Alpha ratio** (spectral tilt), 10 log10(E[1000-3400 Hz] / E[300-1000 Hz]) of the voiced
  frames' summed power spectrum: after Eyben et al. (2016), "The Geneva Minimalistic Acoustic
  Parameter Set (GeMAPS) for voice research and affective computing", IEEE Trans. Affective
  Computing 7(2), 190-202, but on the **300-3400 Hz telephone band**, so its values are not
  comparable with full-band eGeMAPS norms (50-1000 vs 1000-5000 Hz there). Larger (less
  negative) = flatter spectrum = more vocal effort.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from mise_twilio.core._numeric import mean, median, windows

if TYPE_CHECKING:
    from mise_twilio.core.features import FeatureParams

__all__ = ["VoiceFeatures", "alpha_ratio_db", "measure_voice"]

_LAG_SEARCH = 0.08
"""Periods are searched within ±8 % of the F0 track's period (at least 2, at most
``_MAX_SEARCH`` samples): wider than any real cycle-to-cycle change once
``max_period_factor`` applies after."""
_MAX_SEARCH = 10
_LPC_ORDER_PER_KHZ = 1.0
"""LPC order 8 at 8 kHz (one pole pair per formant below 4 kHz); orders 6, 10 and 14 matched
periods worse on synthetic vowels at 200-260 Hz."""
_CYCLE_BLOCK = 256
"""Periods matched per batch: keeps the gathered work arrays cache-sized."""
_SMOOTH = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_FIR_BLOCK = 4096
"""Samples per block of the inverse filter: its (taps, block) products stay cache-sized."""
_ALPHA_LOW_HZ = (300.0, 1000.0)
_ALPHA_HIGH_HZ = (1000.0, 3400.0)
_HNR_MAX_R = 0.9999
"""r is clipped to [0.01, 0.9999]: HNR in [-20, 40] dB."""


@dataclass(frozen=True, slots=True)
class VoiceFeatures:
    """Voice quality over a turn's voiced frames (see the module docstring for methods)."""

    jitter_local_pct: float | None
    """Jitter (local), %; ``None`` with fewer than ``min_period_pairs`` comparable pairs."""
    shimmer_local_db: float | None
    """Shimmer (local), dB; ``None`` with fewer than ``min_period_pairs`` comparable pairs."""
    hnr_db: float | None
    """Harmonics-to-noise ratio, dB; ``None`` with fewer than ``min_hnr_frames`` voiced frames."""
    alpha_ratio_db: float | None
    """Alpha ratio on the 300-3400 Hz band, dB; ``None`` without voiced frames."""
    periods: int
    """Glottal periods analysed (0 when unvoiced)."""


NO_VOICE = VoiceFeatures(None, None, None, None, 0)


def measure_voice(
    pcm: NDArray[np.int16],
    f0_hz: NDArray[np.float64],
    voiced: NDArray[np.intp],
    periodicity: NDArray[np.float64],
    ltas: NDArray[np.float64],
    hop: int,
    sample_rate_hz: int,
    params: FeatureParams,
) -> VoiceFeatures:
    """Jitter, shimmer, HNR and alpha ratio of one turn.

    Args:
        pcm: shape ``(n,)``, int16, the turn's samples.
        f0_hz: shape ``(k,)``, the F0 track (Hz, NaN where unvoiced); pitch frame ``j`` covers
            samples ``[j*hop, (j+1)*hop)``.
        voiced: the voiced pitch frames (where ``f0_hz`` is not NaN), increasing.
        periodicity: shape ``(k,)``, the normalised cross-correlation at the period of each
            voiced frame (NaN where unvoiced).
        ltas: shape ``(hop // 2 + 1,)``, the Hann-windowed power spectra of the voiced pitch
            frames, summed: the alpha ratio's spectrum, and (its inverse FFT) the
            autocorrelation the LPC inverse filter is fitted to.
        hop: samples per pitch frame (one 20 ms frame).
        sample_rate_hz: the rate of ``pcm``.
        params: ``min_period_pairs``, ``min_hnr_frames``, ``max_period_factor``,
            ``max_amplitude_factor``.
    """
    n_voiced = voiced.shape[0]
    alpha = alpha_ratio_db(ltas, sample_rate_hz)
    if n_voiced == 0:
        return VoiceFeatures(None, None, None, alpha, 0)
    hnr: float | None = None
    if n_voiced >= params.min_hnr_frames:
        r = np.minimum(np.maximum(periodicity[voiced], 0.01), _HNR_MAX_R)
        hnr = mean(10.0 * np.log10(r / (1.0 - r)))
    jitter, shimmer, periods = _jitter_shimmer(
        pcm, f0_hz, voiced, ltas, hop, sample_rate_hz, params
    )
    return VoiceFeatures(jitter, shimmer, hnr, alpha, periods)


def alpha_ratio_db(power: NDArray[np.float64], sample_rate_hz: int) -> float | None:
    """10 log10(E[1000-3400 Hz] / E[300-1000 Hz]) of a summed power spectrum.

    ``power``: shape ``(nfft // 2 + 1,)``, the power spectrum of ``nfft = 20 ms`` frames at
    ``sample_rate_hz`` (50 Hz bins), summed over the voiced frames. ``None`` when it is all 0.
    """
    total = float(power.sum())
    if total <= 0.0:
        return None
    nfft = 2 * (power.shape[0] - 1)
    bin_hz = sample_rate_hz / nfft
    lo = slice(math.ceil(_ALPHA_LOW_HZ[0] / bin_hz), math.ceil(_ALPHA_LOW_HZ[1] / bin_hz))
    hi = slice(math.ceil(_ALPHA_HIGH_HZ[0] / bin_hz), math.floor(_ALPHA_HIGH_HZ[1] / bin_hz) + 1)
    tiny = 1e-12 * total  # keeps a pure low tone finite
    return 10.0 * math.log10((float(power[hi].sum()) + tiny) / (float(power[lo].sum()) + tiny))


def _jitter_shimmer(
    pcm: NDArray[np.int16],
    f0_hz: NDArray[np.float64],
    voiced: NDArray[np.intp],
    ltas: NDArray[np.float64],
    hop: int,
    sample_rate_hz: int,
    params: FeatureParams,
) -> tuple[float | None, float | None, int]:
    marks = _marks(f0_hz, voiced, hop, sample_rate_hz)
    if marks is None:
        return None, None, 0
    order = max(2, round(_LPC_ORDER_PER_KHZ * sample_rate_hz / 1000.0))
    start, period0, run, run_end = marks
    n = pcm.shape[0]
    # Gathers read up to one longest period past a short one: the residual comes with zeros
    # after it, as many as the longest lag and search below can reach.
    res_p = _residual(pcm, ltas, order, 3 * int(np.rint(period0.max())) + 2 * _MAX_SEARCH + 2)
    start = _align(res_p, n, start, period0)
    # Two marks of one run less than half a period apart found the same pulse.
    keep = np.ones(start.shape[0], dtype=np.bool_)
    keep[1:] = ~((run[1:] == run[:-1]) & (start[1:] - start[:-1] < 0.5 * period0[1:]))
    start, period0, run = start[keep], period0[keep], run[keep]
    lag0 = np.rint(period0).astype(np.intp)
    search = int(min(_MAX_SEARCH, max(2, math.ceil(_LAG_SEARCH * median(period0)))))
    fits = (start >= 0) & (start + 2 * lag0 + search <= np.minimum(run_end[run] + lag0 // 2, n))
    start, lag0, run = start[fits], lag0[fits], run[fits]
    if start.shape[0] < 2:
        return None, None, 0
    energy = np.zeros(res_p.shape[0] + 1)
    np.cumsum(res_p * res_p, out=energy[1:])
    c = start.shape[0]
    period = np.empty(c)
    interior = np.empty(c, dtype=np.bool_)
    amp = np.empty(c)
    for b0 in range(0, c, _CYCLE_BLOCK):
        blk = slice(b0, b0 + _CYCLE_BLOCK)
        period[blk], interior[blk], amp[blk] = _match_periods(
            res_p, energy, start[blk], lag0[blk], search
        )

    same = (run[1:] == run[:-1]) & interior[1:] & interior[:-1]
    adjacent = np.abs(start[1:] - start[:-1] - period[:-1]) < 0.25 * period[:-1]
    pair = same & adjacent
    ratio_p = np.maximum(period[1:], period[:-1]) / np.minimum(period[1:], period[:-1])
    ok_p = pair & (ratio_p <= params.max_period_factor)
    jitter: float | None = None
    if np.count_nonzero(ok_p) >= params.min_period_pairs:
        used = np.zeros(c, dtype=np.bool_)
        used[:-1] |= ok_p
        used[1:] |= ok_p
        diffs = np.abs(period[1:] - period[:-1])[ok_p]
        jitter = 100.0 * mean(diffs) / mean(period[used])
    shimmer: float | None = None
    safe = np.maximum(amp, 1e-9)
    ratio_a = np.maximum(safe[1:], safe[:-1]) / np.minimum(safe[1:], safe[:-1])
    ok_a = pair & (ratio_a <= params.max_amplitude_factor)
    if np.count_nonzero(ok_a) >= params.min_period_pairs:
        shimmer = mean(20.0 * np.log10(ratio_a[ok_a]))
    return jitter, shimmer, int(np.count_nonzero(interior))


def _residual(
    pcm: NDArray[np.int16], ltas: NDArray[np.float64], order: int, pad: int
) -> NDArray[np.float64]:
    """``pcm`` inverse-filtered with the LPC polynomial of the voiced frames' summed power
    spectrum ``ltas`` (its inverse FFT is their average windowed autocorrelation: the
    autocorrelation method of linear prediction, Makhoul 1975), smoothed by a 5-tap binomial
    with its 2-sample delay compensated, then ``pad`` zeros. Shape ``(n + pad,)``."""
    r = _acf_rows(ltas.shape[0], order) @ ltas
    kernel = np.convolve(_levinson(r.tolist(), order), _SMOOTH)[:, None]
    # out[i] = sum_k kernel[k] x[i + 2 - k], summed over k in order: per block of samples, the
    # taps' products as one (taps, block) array (row k a view of x delayed by k) and their sum
    # down the rows (numpy adds row after row): 2.5x faster than np.convolve at these sizes.
    taps = kernel.shape[0]
    n = pcm.shape[0]
    xp = np.zeros(n + taps)
    xp[taps - 3 : taps - 3 + n] = pcm
    padded = np.zeros(n + pad)
    step = xp.itemsize
    products = np.empty((taps, min(n, _FIR_BLOCK)))
    for b0 in range(0, n, _FIR_BLOCK):
        m = min(_FIR_BLOCK, n - b0)
        delayed = np.ndarray((taps, m), xp.dtype, xp, (b0 + taps - 1) * step, (-step, step))
        np.multiply(delayed, kernel, out=products[:, :m])
        np.add.reduce(products[:, :m], axis=0, out=padded[b0 : b0 + m])
    return padded


@functools.lru_cache(maxsize=8)
def _acf_rows(bins: int, order: int) -> NDArray[np.float64]:
    """The rows of the inverse real DFT that give lags ``0..order`` of a ``2 * (bins - 1)``
    point signal from its ``bins`` half-spectrum values: ``_acf_rows(b, p) @ power`` equals
    ``np.fft.irfft(power)[: p + 1]`` (to rounding) at a quarter of its cost. Read-only."""
    n = 2 * (bins - 1)
    weight = np.full(bins, 2.0 / n)
    weight[0] = weight[-1] = 1.0 / n
    rows = weight * np.cos(2.0 * np.pi * np.arange(order + 1)[:, None] * np.arange(bins) / n)
    rows.flags.writeable = False
    return rows


def _levinson(r: list[float], order: int) -> list[float]:
    """LPC polynomial ``[1, a1, .., ap]`` from autocorrelation ``r`` (Levinson-Durbin), with a
    -40 dB white-noise floor so silence or a pure tone stays well conditioned. Plain floats: at
    order 8 a Python loop is cheaper than numpy calls."""
    a = [1.0] + [0.0] * order
    err = r[0] * 1.0001 + 1e-9
    for i in range(1, order + 1):
        acc = r[i]
        for j in range(1, i):
            acc += a[j] * r[i - j]
        k = -acc / err
        prev = a[:i]
        for j in range(1, i):
            a[j] = prev[j] + k * prev[i - j]
        a[i] = k
        err *= 1.0 - k * k
        if err <= 0.0:
            break
    return a


def _marks(
    f0_hz: NDArray[np.float64], k: NDArray[np.intp], hop: int, sample_rate_hz: int
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.intp], NDArray[np.intp]] | None:
    """One mark per expected glottal period, by integrating the F0 track's phase over each
    voiced pitch frame ``k`` (increasing; F0 constant within a frame). Returns (start sample,
    expected period in samples, voiced-run id, end sample of each run), or ``None`` without a
    mark."""
    per = sample_rate_hz / f0_hz[k]
    cycles = hop / per
    new_run = np.empty(k.shape[0] + 1, dtype=np.bool_)  # one past the end: a run ends there
    new_run[0] = new_run[-1] = True
    np.greater(k[1:] - k[:-1], 1, out=new_run[1:-1])
    run_of = new_run[:-1].cumsum() - 1
    last = new_run[1:].nonzero()[0]
    run_end = (k[last] + 1) * hop
    ph_end = cycles.cumsum()
    ph0 = ph_end - cycles
    first = np.ceil(ph0)
    count = (np.ceil(ph_end) - first).astype(np.intp)
    total = int(np.add.reduce(count))
    if total == 0:
        return None
    fi = np.arange(k.shape[0]).repeat(count)
    m = np.arange(total) - (count.cumsum() - count).repeat(count) + first[fi]
    pos = k[fi] * hop + (m - ph0[fi]) * per[fi]
    return np.rint(pos).astype(np.intp), per[fi], run_of[fi], run_end


def _align(
    res: NDArray[np.float64], n: int, start: NDArray[np.intp], period: NDArray[np.float64]
) -> NDArray[np.intp]:
    """Move each mark to a quarter period before the largest residual peak in its period
    (within the first ``n`` samples of ``res``, which has at least a longest period of zeros
    after them; ``0 <= start <= n``)."""
    width = math.ceil(float(period.max()))
    cols = np.arange(width)
    # Samples past n are res's zero padding (start <= n, width <= the padding), never the
    # first largest |res| unless the whole period is 0, when column 0 wins either way.
    win = np.abs(windows(res, width)[start])
    win *= cols < np.ceil(period)[:, None]  # past the period: 0, never above the period's peak
    peak = start + win.argmax(axis=1)
    out: NDArray[np.intp] = peak - np.rint(0.25 * period).astype(np.intp)
    return out


def _match_periods(
    res: NDArray[np.float64],
    energy: NDArray[np.float64],
    start: NDArray[np.intp],
    lag0: NDArray[np.intp],
    search: int,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
    """Each cycle's period: the lag in ``lag0 ± search`` maximising the normalised
    cross-correlation of ``res[start : start + lag0]`` with the segment one lag later
    (parabolic interpolation); whether that maximum is interior to the search; and the RMS of
    the first segment. ``energy``: the running sum of ``res²`` (``energy[i]`` = sum of the
    first ``i``). Shapes ``(c,)``."""
    c = start.shape[0]
    width = int(lag0.max())
    nb = width + 2 * search
    segments = windows(res, nb)
    a = segments[start, :width]
    a *= np.arange(width) < lag0[:, None]  # zero past each cycle's own length
    first = start + lag0 - search
    b = segments[first]
    step = b.strides
    views = np.ndarray((c, 2 * search + 1, width), b.dtype, b, 0, (step[0], step[1], step[1]))
    # einsum, not matmul: BLAS may start threads that fight other processes for the cores.
    cross = np.einsum("ik,idk->id", a, views)
    spans = windows(energy, 2 * search + 1)
    eb = spans[first + lag0] - spans[first]
    ea = energy[start + lag0] - energy[start]
    r = cross / np.sqrt(np.maximum(ea[:, None] * eb, 1e-30))
    j = r.argmax(axis=1)
    interior = (j > 0) & (j < 2 * search)
    jj = np.minimum(np.maximum(j, 1), 2 * search - 1)
    near = windows(r, 3)[np.arange(c) * (2 * search + 1) + jj - 1]
    rl, rc, rr = near[:, 0], near[:, 1], near[:, 2]
    curv = rl - 2.0 * rc + rr
    shift = np.zeros(c)
    np.divide(0.5 * (rl - rr), curv, out=shift, where=curv < 0.0)
    np.minimum(np.maximum(shift, -0.5, out=shift), 0.5, out=shift)
    period = (lag0 - search + jj).astype(np.float64) + shift
    return period, interior, np.sqrt(ea / lag0)
