"""Voice activity detection for one or two 8 kHz tracks: band SNRs, a small model, an echo check.

Frames are 20 ms (160 samples of decoded μ-law, int16). Each frame is measured once by
:func:`frame_features` (a compact per-frame vector, ``N_FEATURES`` float32, shared by both
tracks' detectors), and :class:`BandVad` steps one or both tracks of a call together with one
set of numpy calls, each track seeing the other's features at the same frame indices, in
blocks of 1-5 frames (batched numpy; decisions do not depend on the grouping). It is an energy
VAD at heart:

1. **Bands.** Log energies in ``N_BANDS`` = 6 bands over 200-3400 Hz (``BAND_EDGES_HZ``,
   roughly 2 Bark each below 1.5 kHz) from a Hann-windowed DFT of each frame (a 160 x 128 real
   DFT matrix restricted to the 200-3400 Hz bins: one matmul per block). Rumble under 200 Hz
   and hum never enter; white noise spread over 0-4 kHz meets each band with only its share.
2. **Noise floor per band** by minimum statistics (R. Martin, "Noise power spectral density
   estimation based on optimal smoothing and minimum statistics", IEEE Trans. Speech Audio
   Process. 9(5), 2001) in its sub-window form: band levels (dB) are averaged over aligned
   100 ms sub-windows (the smoothing) and the floor is the lowest sub-window mean of the last
   ``noise_floor_window_ms``. It falls at once, rises as low readings leave the window, rises
   at most ``noise_floor_rise_in_speech_db_per_s`` while speech is on, and starts capped
   (``warmup_max_rise_db`` + ``warmup_rise_db_per_s``). Digital silence (μ-law 0xFF/0x7F →
   all-zero PCM) and the ``EDGE_FRAMES`` after it never update it.
3. **Speech score.** Band SNRs ``s`` (band level over its floor, dB, clipped to [0, 40]) and
   causal summaries of them form :data:`FEATURE_NAMES`: per-band SNRs, the mean SNR now and
   over 20 frames, a causal long-term spectral divergence (mean over bands of each band's
   maximum over the last 10 frames: J. Ramírez et al., "Efficient voice activity detection
   algorithms using long-term speech information", Speech Communication 42(3-4), 2004) and the
   share of the last 10 frames above 4 dB. A logistic model (:class:`VadModel`, weights fitted
   by ``bench/fit_vad.py`` on AMI real speech under noise, leave-one-file-out cross-validated,
   in ``vad_model.py``) maps them to a logit ``z``. The per-band weighting is what a
   statistical-model VAD does with per-band likelihood ratios (J. Sohn, N. S. Kim and W. Sung,
   "A statistical model-based voice activity detector", IEEE Signal Process. Lett. 6(1), 1999),
   learnt instead of derived from a Gaussian model. Every input is relative to the line's own
   noise floor: the absolute level and the 3/5/10-frame means (collinear with the others; they
   drew negative weights that delayed onsets) are left out (weight 0), so the model judges how
   far a frame stands out of its line, whatever the call's gain. At run time it is folded into
   a few dot products over the short histories (``_Kernels``).
4. **Hysteresis and timing**: a frame is *loud* when ``z >= start_logit``, its 200-3400 Hz level
   is above ``min_level_dbfs`` and its own mean band SNR reaches ``edge_snr_db``; *active* when
   ``z >= stop_logit`` and its level is above ``min_active_level_dbfs``. Speech starts after
   ``min_speech_ms`` of loud frames. Because ``z`` also weighs the frames around one, it rises
   late and falls late, so the segment's edges are placed by the frames themselves: the start
   moves back over the run of frames whose own mean SNR reaches ``edge_snr_db`` (one quiet
   frame, a stop closure, does not break it; at most ``pre_roll_ms``), and the end comes after
   the last active frame that reaches it (plus ``post_roll_ms``). Speech ends a hangover after
   the last active frame; the hangover grows from ``hangover_ms`` to ``hangover_low_snr_ms``
   as the line's speech-to-floor ratio falls (noisy lines hide the soft parts of speech; 3GPP
   TS 26.094, the AMR VAD, also lengthens its hangover in noise). Digital silence (a lost frame
   filled by the timeline) interrupts no run.
5. **Echo / bleed check** (two tracks). An echo is a scaled, delayed copy of the other track,
   well below it; double-talk is an independent voice. A candidate frame (``z >= stop_logit``,
   at least ``echo_min_loss_db`` under the other track's loudest level over lags
   0..``echo_max_lag_ms``) is **echo** when (a) in every band that carries it
   (``ECHO_SHOW_SNR_DB`` over its floor and within 25 dB of its strongest band) it lies at
   least ``echo_min_loss_db`` below the other track's loudest level in that band over the lags
   (a per-band Geigel test: D. L. Duttweiler, "A twelve-channel digital echo canceler", IEEE
   Trans. Commun. 26(5), 1978; a frame where no band stands out of its own noise passes (a)),
   and (b) over this frame and the nine before, the other track at the best lag minus this one
   is nearly constant across the cells that show (spread <= ``echo_max_spread_db``): a scaled
   copy, as the coherence test of residual-echo detectors (e.g. WebRTC's) checks; an
   independent quiet voice under a loud one fails (b). A frame at least ``echo_sure_loss_db``
   down in every band, or within the echo lags after an onset of the other track (a rise of
   ``echo_min_loss_db``, which whole-frame lags cannot align), skips (b). Echo frames never
   start speech and are not active; inside a segment they only postpone its end by up to
   ``echo_bridge_ms``.

Sans-I/O: pure numpy + stdlib, no logging, clock, environment or randomness; deterministic.
Reductions on the per-block path are ufunc ``reduce`` calls (``np.maximum.reduce(a, axis=1)``),
not the ndarray methods (``a.max(axis=1)``, ``.sum``, ``.any``, ``.all``), which compute the same
through numpy's Python-level ``_methods`` wrappers: 1.4 % of an offline replay's
instructions (callgrind).
Memory: about 3.7 KB of numpy state per track (a 30 x 6 floor ring, short histories of SNRs and
of the other track) plus about 3 KB of folded model weights per object.

Measured on real speech by ``bench/vad_accuracy.py`` (the README's accuracy table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mise_twilio.core.audio import (
    FRAME_MS,
    FRAME_SAMPLES,
    FULL_SCALE_RMS,
    SAMPLE_RATE_HZ,
    SILENCE_DBFS,
)

SUBWIN_FRAMES = 5
"""Minimum-statistics sub-window: 5 frames = 100 ms, aligned on frame index // 5."""
EDGE_FRAMES = 3
"""Frames after digital silence kept out of the floor (partial frames, fade-ins)."""
CONTEXT_FRAMES = 20
"""Longest look-back of the model inputs (``snr_mean20``): this frame and the 19 before."""
SNR_CLIP_DB = 40.0
ACTIVE_SNR_DB = 4.0
"""A frame counts towards ``active10`` when its mean band SNR exceeds this."""
ECHO_SHOW_SNR_DB = 6.0
"""A band takes part in the echo test when it stands this far above its floor."""
ECHO_MIN_CELLS = 6
"""Fewer (frame, band) cells above the floor in the window than this: dominance decides."""
FULL_SCALE = FULL_SCALE_RMS
SILENCE_DB = SILENCE_DBFS

BAND_EDGES_HZ: tuple[float, ...] = (200.0, 450.0, 700.0, 1000.0, 1500.0, 2200.0, 3400.0)
"""Band edges (Hz): six bands, ~2 Bark each below 1.5 kHz, wider above."""
N_BANDS = len(BAND_EDGES_HZ) - 1

# Per-frame feature vector (``frame_features``), float32, shape (N_FEATURES,):
F_BANDS = slice(0, N_BANDS)
"""Band log energies, dB re full scale (power of the band in the frame; -100 for silence)."""
F_LEVEL = N_BANDS
"""200-3400 Hz level, dB re full scale."""
F_SILENT = N_BANDS + 1
"""1.0 when the frame is digital silence (all-zero PCM), else 0.0."""
F_PURITY = N_BANDS + 2
"""Share of the 200-3400 Hz power within ±100 Hz (the 20 ms Hann window's main lobe) of the
strongest bin in 400-2000 Hz: about 1 for a pure tone such as an answering machine's beep, at
most ~0.9 for DTMF and noise. Loud voiced frames where one harmonic dominates reach 0.95 too
(6 % of AMI's frames, at -22 dBFS median): speech either way. Computed only for frames that
could reach ``TONE_PURITY`` (two adjacent bands hold ``TONE_GATE`` of the power: the lobe, 5
bins, never spans more than two bands); 0 for the others."""
N_FEATURES = N_BANDS + 3
TONE_PURITY = 0.95
"""A frame this pure is a tone: speech for the VAD (a beep must be a turn for the per-turn tone
detector, ``tone.py``, to report it; the model, fitted on speech, does not call one speech)."""
TONE_HZ = (400.0, 2000.0)
TONE_GATE = 0.94
"""Share of the power in the strongest pair of adjacent bands under which a frame's purity is
not computed (below ``TONE_PURITY``, with a margin for float32 rounding)."""

FEATURE_NAMES: tuple[str, ...] = (
    *(f"snr_b{b}" for b in range(N_BANDS)),
    "snr_mean",
    "snr_mean3",
    "snr_mean5",
    "snr_mean10",
    "snr_mean20",
    "ltsd10",
    "active10",
    "level",
)
"""Model inputs, in order. With ``s[t, b]`` = clip(band dB - floor dB, 0, 40) and ``m[t]`` its
mean over bands: ``snr_b*`` = s[t, b]; ``snr_mean`` = m[t]; ``snr_meanN`` = mean of m over the
last N frames (this one included); ``ltsd10`` = mean over bands of the max over the last 10
frames of s (a causal long-term spectral divergence, Ramírez et al. 2004); ``active10`` =
share of the last 10 frames
with m > ``ACTIVE_SNR_DB``; ``level`` = clip(F_LEVEL + 60, -20, 40)."""
N_INPUTS = len(FEATURE_NAMES)
LTSD_FRAMES = 10

Transition = tuple[str, int]
FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------------------------------
# Per-frame features (computed once per frame per track, shared with the other track's VAD)
# ---------------------------------------------------------------------------------------------


def _analysis_tables() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Hann-windowed real DFT matrix for the 200-3400 Hz bins, the band-summing matrix and the
    purity gate's (adjacent band pairs, ``TONE_GATE`` of the total)."""
    n = FRAME_SAMPLES
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(n) + 0.5) / n)
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
    bins = np.flatnonzero((freqs >= BAND_EDGES_HZ[0]) & (freqs < BAND_EDGES_HZ[-1]))
    arg = 2.0 * np.pi * np.outer(np.arange(n), bins) / n
    dft = np.hstack([np.cos(arg), np.sin(arg)]) * window[:, None]
    # one-sided periodogram → mean-square power of the frame, normalised to full scale
    norm = 2.0 / (n * float(np.sum(window**2)) * FULL_SCALE**2)
    f = freqs[bins]
    summing = np.zeros((2 * bins.size, N_BANDS + 1))
    for b in range(N_BANDS):
        sel = np.flatnonzero((f >= BAND_EDGES_HZ[b]) & (f < BAND_EDGES_HZ[b + 1]))
        summing[sel, b] = norm
        summing[sel + bins.size, b] = norm  # the sine half of the same bins
    summing[:, N_BANDS] = norm
    # the gate: each pair of adjacent bands, and TONE_GATE of the whole
    pairs = np.zeros((2 * bins.size, N_BANDS))
    pairs[:, : N_BANDS - 1] = summing[:, : N_BANDS - 1] + summing[:, 1:N_BANDS]
    pairs[:, N_BANDS - 1] = TONE_GATE * summing[:, N_BANDS]
    return dft.astype(np.float32), summing.astype(np.float32), pairs.astype(np.float32)


_DFT, _SUMMING, _PAIRS = _analysis_tables()
_N_BINS = _DFT.shape[1] // 2
_BIN_HZ = SAMPLE_RATE_HZ / FRAME_SAMPLES
_BIN0 = round(BAND_EDGES_HZ[0] / _BIN_HZ)
_TONE_LO = round(TONE_HZ[0] / _BIN_HZ) - _BIN0
_TONE_HI = round(TONE_HZ[1] / _BIN_HZ) - _BIN0 + 1
_LOBE_BINS = 2  # ±100 Hz


def frame_features(pcm: NDArray[np.int16]) -> NDArray[np.float32]:
    """Per-frame features of a block of frames (Hann window, DFT of the 200-3400 Hz bins).

    ``pcm``: int16, shape ``(n, 160)`` (n frames of decoded μ-law, 8 kHz; one track's frames or
    both tracks' stacked: rows are independent). Returns float32, shape ``(n, N_FEATURES)``:
    band log energies (dB re full scale, ``F_BANDS``), the 200-3400 Hz level (dB, ``F_LEVEL``)
    and a digital-silence flag (``F_SILENT``).
    """
    y = pcm.astype(np.float32) @ _DFT
    y *= y
    out = np.empty((pcm.shape[0], N_FEATURES), dtype=np.float32)
    out[:, : N_BANDS + 1] = np.log10(y @ _SUMMING + np.float32(1e-10))
    out[:, : N_BANDS + 1] *= 10.0
    out[:, F_SILENT] = ~np.logical_or.reduce(pcm, axis=1)
    out[:, F_PURITY] = 0.0
    gate = y @ _PAIRS
    rows = (np.maximum.reduce(gate[:, : N_BANDS - 1], axis=1) >= gate[:, N_BANDS - 1]).nonzero()[0]
    if rows.size:  # rare: speech and noise spread their power wider
        out[rows, F_PURITY] = _purity(y[rows])
    return out


def _purity(y: NDArray[np.float32]) -> NDArray[np.float32]:
    """``F_PURITY`` of frames given their squared DFT halves (``frame_features``' ``y``)."""
    per_bin = y[:, :_N_BINS] + y[:, _N_BINS:]
    cum = per_bin.cumsum(axis=1)
    peak = per_bin[:, _TONE_LO:_TONE_HI].argmax(axis=1) + _TONE_LO
    rows = np.arange(y.shape[0])
    hi = np.minimum(peak + _LOBE_BINS, _N_BINS - 1)
    lo = peak - _LOBE_BINS - 1
    lobe = cum[rows, hi] - np.where(lo >= 0, cum[rows, np.maximum(lo, 0)], 0.0)
    result: NDArray[np.float32] = lobe / (cum[:, -1] + np.float32(1e-20))
    return result


# ---------------------------------------------------------------------------------------------
# Parameters and model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VadParams:
    """VAD parameters (durations in ms, levels in dBFS, level differences in dB; logits are the
    model's). Tuned with ``bench/fit_vad.py`` and ``bench/vad_accuracy.py`` on real speech (AMI
    two-track calls under white, pink, babble and low-frequency noise, bleed and loss).

    - ``start_logit`` 0.5 / ``stop_logit`` -0.5: hysteresis on the model's logit (0 = p 0.5).
      Chosen with the weights (grid 0.5/1/1.5 x -0.5/0, end-to-end frame F1 + ½ onset F1, on
      each fold's training files): starting needs a surer frame than sustaining.
    - ``min_level_dbfs`` -60: no speech starts below this 200-3400 Hz level whatever the noise
      floor (PSTN idle noise is -65..-55 dBFS; a quiet caller's soft frames sit near -55);
      ``min_active_level_dbfs`` -70: no frame below it is speech at all (on a real capture
      with -74 dBFS line noise, close to μ-law's resolution, the floor read low and a turn ran
      2.3 s past the speech).
    - ``min_speech_ms`` 60, ``post_roll_ms`` 40: three loud frames confirm (clicks light one or
      two); word-final decays fall under the thresholds and are kept.
    - ``edge_snr_db`` 4 and ``pre_roll_ms`` 100: the frames that place a segment's edges stand
      this far out of the noise (mean band SNR). With the model's logit alone, starts on the
      espeak-ng fixtures came 40-420 ms late and ends 90-220 ms late; with edges on the frames
      themselves and a 100 ms pre-roll, within 40 ms and 50 ms (200 ms gained nothing more and
      made turn records later: the turn tracker waits out the pre-roll).
    - ``hangover_ms`` 240 growing to ``hangover_low_snr_ms`` 560 as the line's speech-to-floor
      ratio falls from ``hangover_high_snr_db`` 30 to ``hangover_low_snr_db`` 15 (the decaying
      peak of the mean band SNR, ``peak_decay_db_per_s`` 5): in noise the soft parts of speech
      sink under the floor and the gaps in detection are mostly inside words and phrases (3GPP
      TS 26.094, the AMR VAD, also lengthens its hangover in noise). A fixed 240 ms cost
      0.02-0.04 frame F1 at 10/5 dB SNR; a fixed 560 ms made clean segments swallow 500 ms
      pauses. Must stay under the 700 ms turn pause.
    - ``noise_floor_window_ms`` 3000: the minimum-statistics window (Martin 2001 uses ~1.5 s;
      speech in conversation always dips to the floor within a few seconds).
    - ``noise_floor_rise_in_speech_db_per_s`` 8: while speech is on, the noise floor creeps up
      at most this fast (a monologue longer than the window must not lift it into its troughs).
    - ``initial_noise_floor_dbfs`` -60 (a typical PSTN noise floor, spread over the bands by
      bandwidth), ``warmup_max_rise_db`` 24 and ``warmup_rise_db_per_s`` 20: in the first window
      the floor may at once rise 24 dB above the initial floor and then 20 dB/s more, so a call
      that opens mid-speech keeps its first words while a line with -20 dBFS of noise (5 dB SNR)
      is followed within about a second (a fixed 24 dB cap read such a line as speech for 3 s:
      white 5 dB frame F1 0.74 → 0.83).
    - ``echo_min_loss_db`` 15: echo lies at least this far below the other track in every band
      where it shows. Echo return loss on calls is 20 dB and more after the network's
      cancellers (ITU-T G.168); double-talk and crosstalk sit within ~10 dB.
    - ``echo_max_lag_ms`` 200: echo path and jitter-buffer delay covered.
    - ``echo_max_spread_db`` 8: a copy's level difference to its source varies little across
      bands and frames (μ-law, line noise and framing keep it at 2-6 dB); 6 let -24 dB echo
      open turns, 10 or more (or no copy test) cut 2-8 % of double-talk frames.
    - ``echo_sure_loss_db`` 30: a frame this far below the other track in every band that
      carries it is echo without the copy test (near its own floor the copy test is blurred by
      line noise; double-talk is never 30 dB down).
    - ``echo_bridge_ms`` 240: echo frames inside a segment postpone its end by this much more
      (a short pause of this speaker filled by the other's echo stays inside the segment).

    Raises ``ValueError`` for a stop logit above the start logit, a duration under one frame,
    a low-SNR hangover shorter than the clean one, or a high SNR not above the low one.
    """

    start_logit: float = field(default=0.5, metadata={"doc": "model logit that starts speech"})
    stop_logit: float = field(default=-0.5, metadata={"doc": "model logit that sustains speech"})
    min_level_dbfs: float = field(
        default=-60.0, metadata={"doc": "no speech starts below this 200-3400 Hz level"}
    )
    min_active_level_dbfs: float = field(
        default=-70.0, metadata={"doc": "no speech at all below this 200-3400 Hz level"}
    )
    min_speech_ms: int = field(default=60, metadata={"doc": "loud run that confirms speech"})
    hangover_ms: int = field(default=240, metadata={"doc": "quiet time that ends speech (clean)"})
    hangover_low_snr_ms: int = field(
        default=560, metadata={"doc": "quiet time that ends speech on a noisy line"}
    )
    hangover_high_snr_db: float = field(
        default=30.0, metadata={"doc": "line speech-to-floor ratio of the clean hangover"}
    )
    hangover_low_snr_db: float = field(
        default=15.0, metadata={"doc": "line speech-to-floor ratio of the noisy hangover"}
    )
    peak_decay_db_per_s: float = field(
        default=5.0, metadata={"doc": "decay of the line's speech-to-floor peak"}
    )
    pre_roll_ms: int = field(
        default=100, metadata={"doc": "onset frames kept before speech (they stand out)"}
    )
    post_roll_ms: int = field(default=40, metadata={"doc": "decay kept after speech"})
    edge_snr_db: float = field(
        default=4.0, metadata={"doc": "a segment's edge frames stand this far out of the noise"}
    )
    noise_floor_window_ms: int = field(
        default=3000, metadata={"doc": "minimum-statistics window of the noise floor"}
    )
    noise_floor_rise_in_speech_db_per_s: float = field(
        default=8.0, metadata={"doc": "fastest noise-floor rise while speech is on"}
    )
    initial_noise_floor_dbfs: float = field(
        default=-60.0, metadata={"doc": "noise floor assumed before any frame"}
    )
    warmup_max_rise_db: float = field(
        default=24.0, metadata={"doc": "noise-floor jump allowed at once in the first window"}
    )
    warmup_rise_db_per_s: float = field(
        default=20.0, metadata={"doc": "further noise-floor rise allowed in the first window"}
    )
    echo_min_loss_db: float = field(
        default=15.0, metadata={"doc": "echo lies at least this far below the other track"}
    )
    echo_max_lag_ms: int = field(default=200, metadata={"doc": "echo delay covered"})
    echo_bridge_ms: int = field(
        default=240, metadata={"doc": "echo inside a segment postpones its end this much"}
    )
    echo_max_spread_db: float = field(
        default=8.0, metadata={"doc": "level spread of a copy across bands and frames"}
    )
    echo_sure_loss_db: float = field(
        default=30.0, metadata={"doc": "this far below the other track is echo outright"}
    )

    def __post_init__(self) -> None:
        if self.stop_logit > self.start_logit:
            raise ValueError("stop_logit must not exceed start_logit (hysteresis)")
        for name in ("min_speech_ms", "hangover_ms", "noise_floor_window_ms"):
            if getattr(self, name) < FRAME_MS:
                raise ValueError(f"{name} must be at least one {FRAME_MS} ms frame")
        if self.hangover_low_snr_ms < self.hangover_ms:
            raise ValueError("hangover_low_snr_ms must not be shorter than hangover_ms")
        if self.hangover_high_snr_db <= self.hangover_low_snr_db:
            raise ValueError("hangover_high_snr_db must be above hangover_low_snr_db")
        if self.noise_floor_window_ms < SUBWIN_FRAMES * FRAME_MS:
            raise ValueError("noise_floor_window_ms must cover at least one 100 ms sub-window")

    @property
    def lookback_frames(self) -> int:
        """How far back a reported speech start can lie behind the frame that confirmed it
        (confirmation run plus pre-roll), in frames."""
        return max(0, self.min_speech_ms // FRAME_MS - 1) + self.pre_roll_ms // FRAME_MS


@dataclass(frozen=True, slots=True)
class VadModel:
    """Logistic model over ``FEATURE_NAMES``: ``z = weights · ((x - mean) / scale) + bias``.

    ``mean`` and ``scale`` standardise the inputs (fitted with the weights); all tuples have
    ``N_INPUTS`` entries. ``z`` is a logit: p(speech) = 1 / (1 + exp(-z)).
    """

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("weights", "mean", "scale"):
            if len(getattr(self, name)) != N_INPUTS:
                raise ValueError(f"Model.{name} needs {N_INPUTS} values")

    def folded(self) -> tuple[FloatArray, float]:
        """Weights and bias with the standardisation folded in (``z = x @ w + b``)."""
        w = np.asarray(self.weights, dtype=np.float64) / np.asarray(self.scale)
        b = self.bias - float(np.dot(w, np.asarray(self.mean)))
        return w, b


def default_model() -> VadModel:
    """The committed model (``vad_model.py``, written by ``bench/fit_vad.py``)."""
    from mise_twilio.core.vad_model import BIAS, MEAN, SCALE, WEIGHTS

    return VadModel(WEIGHTS, BIAS, MEAN, SCALE)


def _initial_floor(level_dbfs: float) -> FloatArray:
    """A level spread over the bands in proportion to their width (flat-spectrum line noise)."""
    edges = np.asarray(BAND_EDGES_HZ)
    share = np.diff(edges) / (edges[-1] - edges[0])
    return np.asarray(level_dbfs + 10.0 * np.log10(share), dtype=np.float64)


class _Kernels:
    """The model folded into a few products over the recent history (the fast path).

    The per-band SNR weights act on the frame itself (``band``); every ``snr_mean*`` weight
    becomes a time kernel on the history of m (``mean[n]``, one matrix per block length n);
    ``active10`` a box
    kernel on the history of m > ``ACTIVE_SNR_DB`` (``active[n]``).
    """

    __slots__ = ("active", "band", "bias", "level", "ltsd", "mean")

    def __init__(self, model: VadModel) -> None:
        w, self.bias = model.folded()
        ix = {name: i for i, name in enumerate(FEATURE_NAMES)}
        band = np.zeros((N_BANDS, 2))
        for b in range(N_BANDS):
            band[b, 0] = w[ix[f"snr_b{b}"]]
        band[:, 1] = 1.0 / N_BANDS  # second column: m itself
        self.band = band
        taps = np.zeros(CONTEXT_FRAMES)  # taps[j]: weight of m[t - j]
        for name, n in (
            ("snr_mean", 1),
            ("snr_mean3", 3),
            ("snr_mean5", 5),
            ("snr_mean10", 10),
            ("snr_mean20", 20),
        ):
            taps[:n] += w[ix[name]] / n
        act_taps = np.full(LTSD_FRAMES, w[ix["active10"]] / LTSD_FRAMES)
        self.mean = [_toeplitz(taps, n) for n in range(SUBWIN_FRAMES + 1)]
        self.active = [_toeplitz(act_taps, n) for n in range(SUBWIN_FRAMES + 1)]
        self.ltsd = float(w[ix["ltsd10"]]) / N_BANDS
        self.level = float(w[ix["level"]])


def _toeplitz(taps: FloatArray, n: int) -> FloatArray:
    """``(len(taps) - 1 + n, n)``: column i applies ``taps`` (taps[0] = newest) ending at row
    ``len(taps) - 1 + i`` of a history whose last n rows are the block."""
    h = taps.size - 1
    k = np.zeros((h + n, n))
    for i in range(n):
        k[i : i + h + 1, i] = taps[::-1]
    return k


class _Track:
    """Python-level state machine of one track (runs, hangover, pre/post-roll)."""

    __slots__ = (
        "after_silence",
        "bridge",
        "edge_gap",
        "hang",
        "in_speech",
        "last_active",
        "last_edge",
        "loud_run",
        "peak",
        "recent_active_from",
        "recent_edge_from",
        "seg_start",
    )

    def __init__(self, hang: int) -> None:
        self.in_speech = False
        self.loud_run = 0
        self.recent_active_from: int | None = None
        self.recent_edge_from: int | None = None
        self.edge_gap = 0
        self.last_active = -1
        self.last_edge = -1
        self.seg_start = 0
        self.hang = hang
        self.peak = 0.0
        self.after_silence = 0
        self.bridge = 0


class _Core:
    """The detector for ``n_tracks`` (1 or 2) tracks stepped together; all numpy state has a
    leading track axis, so two tracks cost little more than one (``BandVadPair``)."""

    def __init__(self, n_tracks: int, params: VadParams, model: VadModel) -> None:
        p = params
        t = n_tracks
        self.p = p
        self.n_tracks = t
        self.k = _Kernels(model)
        self.min_frames = max(1, p.min_speech_ms // FRAME_MS)
        self.hang_lo = max(1, p.hangover_ms // FRAME_MS)
        self.hang_hi = max(self.hang_lo, p.hangover_low_snr_ms // FRAME_MS)
        self.snr_hi, self.snr_lo = p.hangover_high_snr_db, p.hangover_low_snr_db
        self.decay = p.peak_decay_db_per_s * FRAME_MS / 1000.0
        self.pre = max(0, p.pre_roll_ms // FRAME_MS)
        self.bridge = max(0, p.echo_bridge_ms // FRAME_MS)
        self.post = min(self.hang_lo, max(0, p.post_roll_ms // FRAME_MS))
        self.n_sub = max(1, p.noise_floor_window_ms // (FRAME_MS * SUBWIN_FRAMES))
        self.rise = p.noise_floor_rise_in_speech_db_per_s * FRAME_MS * SUBWIN_FRAMES / 1000.0
        init = _initial_floor(p.initial_noise_floor_dbfs)
        self.floor = np.tile(init, (t, 1))
        self.cap = self.floor + p.warmup_max_rise_db
        self.cap_step = p.warmup_rise_db_per_s * FRAME_MS * SUBWIN_FRAMES / 1000.0
        self.ring = np.full((t, self.n_sub, N_BANDS), np.inf)
        self.ring_pos = 0
        self.n_valid = [0] * t
        self.ring_valid = [[False] * self.n_sub for _ in range(t)]
        self.valid_in_window = [0] * t
        self.sub_sum = np.zeros((t, N_BANDS))
        self.sub_count = [0] * t
        self.lag = max(0, p.echo_max_lag_ms // FRAME_MS)
        self.win = LTSD_FRAMES
        self.s_hist = np.zeros((t, LTSD_FRAMES - 1, N_BANDS))
        self.s_block = self.s_hist  # s history + the current block (set by _logits)
        self.m_hist = np.zeros((t, CONTEXT_FRAMES - 1))
        # the other track's [band dB | level dB], lag + window - 1 frames back
        self.o_hist = np.full((t, self.lag + self.win - 1, N_BANDS + 1), SILENCE_DB)
        self.tracks = [_Track(self.hang_hi) for _ in range(t)]
        self.next_frame: int | None = None
        self.last_logits: FloatArray = np.zeros((t, 0))
        self.trace: list[list[FloatArray]] | None = None

    # -- one block ---------------------------------------------------------------------------

    def step_block(
        self, k0: int, own: NDArray[np.float32], other: NDArray[np.float32] | None
    ) -> list[tuple[int, Transition, int]]:
        """``own``/``other``: ``(n_tracks, n, N_FEATURES)``. Returns (track, transition,
        frame where it was decided), in decision order."""
        if self.next_frame is not None and k0 != self.next_frame:
            raise ValueError(f"expected frame {self.next_frame}, got {k0}")
        n = own.shape[1]
        self.next_frame = k0 + n
        out: list[tuple[int, Transition, int]] = []
        parts: list[FloatArray] = []
        i = 0
        while i < n:
            # split at sub-window boundaries so the floor update order is block-independent
            k = k0 + i
            j = min(n, i + SUBWIN_FRAMES - (k % SUBWIN_FRAMES))
            parts.append(
                self._segment(k, own[:, i:j], None if other is None else other[:, i:j], out)
            )
            i = j
        self.last_logits = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return out

    def _segment(
        self,
        k0: int,
        own: NDArray[np.float32],
        other: NDArray[np.float32] | None,
        out: list[tuple[int, Transition, int]],
    ) -> FloatArray:
        p = self.p
        n = own.shape[1]
        x = own.astype(np.float64)
        bands = x[:, :, F_BANDS]
        silent_rows = x[:, :, F_SILENT].tolist()
        silent_flags = [[v > 0.5 for v in row] for row in silent_rows]
        use_rows = [self._use_flags(ti, silent_flags[ti]) for ti in range(self.n_tracks)]
        floors = None if all(self.n_valid) else self._first_floor(bands, use_rows)
        s = bands - (self.floor[:, None, :] if floors is None else floors)
        # np.maximum/np.minimum: np.clip's exact result without its Python-level dispatch
        np.minimum(np.maximum(s, 0.0, out=s), SNR_CLIP_DB, out=s)
        level = x[:, :, F_LEVEL]
        z = self._logits(s, x)
        z_rows = z.tolist()
        m_rows = self.m_hist[:, -n:].tolist()
        # per-frame flags compared in Python on one list: fewer numpy calls per block
        level_rows = level.tolist()
        purity_rows = x[:, :, F_PURITY].tolist()
        echo = None if other is None else self._echo(bands, s, level, other, z, floors)
        start_l, stop_l, decay, edge_db = p.start_logit, p.stop_logit, self.decay, p.edge_snr_db
        min_level, min_active_level = p.min_level_dbfs, p.min_active_level_dbfs
        min_frames, pre, bridge_max = self.min_frames, self.pre, self.bridge
        for ti, tr in enumerate(self.tracks):
            zr, mr, lr = z_rows[ti], m_rows[ti], level_rows[ti]
            sr = silent_flags[ti]
            okr = [v > min_level for v in lr]
            # under the active level a frame is no speech at all: the floor of a line whose
            # noise sits near μ-law's resolution reads low, and its noise frames stand a few
            # dB over it
            dr = [v <= min_active_level for v in lr]
            tn = [v >= TONE_PURITY for v in purity_rows[ti]]
            er = None if echo is None else echo[ti]
            peak = tr.peak
            for i in range(n):
                frame = k0 + i
                zi = zr[i]
                mi = mr[i]
                peak = mi if mi > peak - decay else peak - decay
                if sr[i] and not tr.in_speech:
                    # digital silence (a lost frame filled by the timeline, or Twilio's own)
                    # tells nothing: a run of speech frames it interrupts goes on
                    continue
                echo_frame = er is not None and er[i]
                tone = tn[i] and okr[i] and not echo_frame
                active = (zi >= stop_l or tone) and not dr[i]
                if active and echo_frame:
                    # echo: never starts speech and is not speech; inside a segment it only
                    # postpones the end (a pause filled by the other's echo is still a pause
                    # of this speaker, bridged up to echo_bridge frames more)
                    active = False
                    if tr.in_speech and tr.bridge < bridge_max:
                        tr.bridge += 1
                if active:
                    if tr.recent_active_from is None:
                        tr.recent_active_from = frame
                    tr.last_active = frame
                else:
                    tr.recent_active_from = None
                # Segment edges go where the frame itself stands out of the noise: the model's
                # logit also weighs the frames around it, so it rises late and falls late. A
                # start moves back over the run of such frames before it (at most the
                # pre-roll); an end comes after the last active one.
                if (mi >= edge_db or tone) and not dr[i] and not echo_frame:
                    if tr.recent_edge_from is None:
                        tr.recent_edge_from = frame
                    tr.edge_gap = 0
                    if active:
                        tr.last_edge = frame
                else:
                    tr.edge_gap += 1
                    if tr.edge_gap > 1:  # one quiet frame (a stop closure) keeps the run
                        tr.recent_edge_from = None
                if tr.in_speech:
                    if active:
                        tr.bridge = 0
                    elif frame - tr.last_active >= tr.hang + tr.bridge:
                        tr.in_speech = False
                        tr.loud_run = 0
                        tr.bridge = 0
                        last = tr.last_edge if tr.last_edge >= tr.seg_start else tr.last_active
                        out.append((ti, ("end", last + 1 + self.post), frame))
                    continue
                if active and okr[i] and (tone or (zi >= start_l and mi >= edge_db)):
                    tr.loud_run += 1
                    if tr.loud_run >= min_frames:
                        tr.in_speech = True
                        tr.loud_run = 0
                        tr.hang = self._hangover(peak)
                        run_start = frame - min_frames + 1
                        af = tr.recent_active_from
                        ef = tr.recent_edge_from
                        first = min(
                            run_start,
                            af if af is not None else frame,
                            ef if ef is not None else frame,
                        )
                        tr.seg_start = max(first, run_start - pre)
                        out.append((ti, ("start", tr.seg_start), frame))
                else:
                    tr.loud_run = 0
            tr.peak = peak
        self._accumulate(bands, use_rows)
        if (k0 + n) % SUBWIN_FRAMES == 0:
            # the hangover follows the peak once per sub-window (and from the frame speech
            # starts), whatever the block size
            for tr in self.tracks:
                if tr.in_speech:
                    tr.hang = self._hangover(tr.peak)
            self._close_subwindow()
        return z

    def _hangover(self, peak: float) -> int:
        """Hangover frames (``hang_lo``..``hang_hi``) for the speech-to-floor peak (dB)."""
        frac = (peak - self.snr_lo) / (self.snr_hi - self.snr_lo)
        frac = 0.0 if frac < 0.0 else 1.0 if frac > 1.0 else frac
        return round(self.hang_hi + (self.hang_lo - self.hang_hi) * frac)

    def _logits(self, s: FloatArray, x: FloatArray) -> FloatArray:
        """Model logits ``(n_tracks, n)`` (folded kernels over the short histories)."""
        t, n = s.shape[0], s.shape[1]
        k = self.k
        hist = np.concatenate([self.s_hist, s], axis=1)  # (t, 9 + n, B), contiguous
        self.s_hist = hist[:, n:]
        self.s_block = hist
        zm = s @ k.band  # (t, n, 2): per-band term, m
        m_all = np.concatenate([self.m_hist, zm[:, :, 1]], axis=1)  # (t, 19 + n)
        self.m_hist = m_all[:, n:]
        st = hist.strides
        win = np.ndarray(
            (t, n, LTSD_FRAMES, N_BANDS), np.float64, hist, 0, (st[0], st[1], st[1], st[2])
        )
        z = zm[:, :, 0] + m_all @ k.mean[n]
        z += (m_all[:, CONTEXT_FRAMES - LTSD_FRAMES :] > ACTIVE_SNR_DB) @ k.active[n]
        z += k.ltsd * np.add.reduce(np.maximum.reduce(win, axis=2), axis=2)
        lv = x[:, :, F_LEVEL] + 60.0
        z += k.level * np.minimum(np.maximum(lv, -20.0, out=lv), 40.0, out=lv)
        z += k.bias
        if self.trace is not None:
            self.trace.append([self._explicit(win, m_all, s, x, i) for i in range(t)])
        return z

    @staticmethod
    def _explicit(
        win: NDArray[np.float64],
        m_all: FloatArray,
        s: FloatArray,
        x: FloatArray,
        ti: int,
    ) -> FloatArray:
        """``(n, N_INPUTS)`` model inputs of track ``ti`` in ``FEATURE_NAMES`` order (slow
        path, for fitting; ``inputs @ folded weights + bias`` equals the fast path)."""
        n = s.shape[1]
        mw = np.lib.stride_tricks.sliding_window_view(m_all[ti], CONTEXT_FRAMES)[-n:]
        cols = [
            *(s[ti, :, b] for b in range(N_BANDS)),
            mw[:, -1],
            mw[:, -3:].mean(axis=1),
            mw[:, -5:].mean(axis=1),
            mw[:, -10:].mean(axis=1),
            mw.mean(axis=1),
            win[ti].max(axis=1).mean(axis=1),
            (mw[:, -LTSD_FRAMES:] > ACTIVE_SNR_DB).mean(axis=1),
            np.clip(x[ti, :, F_LEVEL] + 60.0, -20.0, 40.0),
        ]
        return np.stack(cols, axis=1)

    def _echo(
        self,
        bands: FloatArray,
        s: FloatArray,
        level: FloatArray,
        other: NDArray[np.float32],
        z: FloatArray,
        floors: FloatArray | None,
    ) -> list[list[bool]] | None:
        """Per track and frame: is this candidate frame an echo of the other track?
        ``floors``: the per-frame floors of a first sub-window (``_first_floor``), or None."""
        p = self.p
        t, n = s.shape[0], s.shape[1]
        lag, win = self.lag, self.win
        hist = np.concatenate([self.o_hist, other[:, :, : N_BANDS + 1]], axis=1)
        self.o_hist = hist[:, n:]
        if float(np.maximum.reduce(z, axis=None)) < p.stop_logit:
            return None  # no candidate frame in the block
        st = hist.strides
        # (t, n, lag + 1, B + 1): the other track over lags 0..lag for each of the n frames
        lagged = np.ndarray(
            (t, n, lag + 1, N_BANDS + 1),
            np.float64,
            hist,
            st[1] * (win - 1),
            (st[0], st[1], st[1], st[2]),
        )
        omax = np.maximum.reduce(lagged, axis=2)  # (t, n, B + 1)
        cand = (z >= p.stop_logit) & (omax[:, :, N_BANDS] - level >= p.echo_min_loss_db)
        if not np.logical_or.reduce(cand, axis=None):
            return None
        # bands that carry this frame: above the floor and within 25 dB of its strongest band
        shows = (s > ECHO_SHOW_SNR_DB) & (
            bands > np.maximum.reduce(bands, axis=2, keepdims=True) - 25.0
        )
        below = (omax[:, :, :N_BANDS] - bands >= p.echo_min_loss_db) | ~shows
        # (a frame where no band stands out of its own noise carries nothing of its own)
        dominated = cand & np.logical_and.reduce(below, axis=2)
        result: list[list[bool]] = dominated.tolist()
        if p.echo_max_spread_db <= 0.0 or not np.logical_or.reduce(dominated, axis=None):
            return result
        # so far below the other track that no double-talk explains it: no copy test needed
        margin = np.minimum.reduce(np.where(shows, omax[:, :, :N_BANDS] - bands, np.inf), axis=2)
        unsure = dominated & (margin < p.echo_sure_loss_db)
        for ti, i in zip(*unsure.nonzero(), strict=True):
            # a copy: over this frame and the 9 before, the other track (at the best lag) minus
            # this one is nearly constant across the cells where this one shows
            own_s = self.s_block[ti, i : i + win]  # (win, B)
            mask = own_s > ECHO_SHOW_SNR_DB
            cnt = int(mask.sum())
            if cnt < ECHO_MIN_CELLS:
                continue  # too little to judge: keep the dominance verdict
            end = lag + win + int(i)  # one past this frame's row in hist
            levels = hist[ti, end - win - lag : end, N_BANDS]
            if float(levels[-lag - 1 :].max() - levels[: -lag - 1].min()) >= p.echo_min_loss_db:
                # the other track just started (an onset within the echo lags): the copy test
                # cannot align a delay that is not a whole number of frames on a fast rise, and
                # a quiet voice starting with the other's onset, that far under it, is echo
                continue
            o = np.lib.stride_tricks.sliding_window_view(
                hist[ti, end - win - lag : end, :N_BANDS], win, axis=0
            )  # (lag + 1, B, win): the other track at lags lag..0
            floor = self.floor[ti] if floors is None else floors[ti, i]
            d = (o - (own_s + floor).T) * mask.T
            mean = d.sum(axis=(1, 2)) / cnt
            var = (d * d).sum(axis=(1, 2)) / cnt - mean * mean
            if float(var.min()) > p.echo_max_spread_db**2:
                result[int(ti)][int(i)] = False  # dominated, but not a copy: a quiet voice
        return result

    # -- noise floor -------------------------------------------------------------------------

    def _use_flags(self, ti: int, silent: list[bool]) -> list[bool]:
        """Frames of this segment that may update track ``ti``'s floor: not digital silence
        and not among the ``EDGE_FRAMES`` after it."""
        tr = self.tracks[ti]
        use = []
        for flag in silent:
            if flag:
                tr.after_silence = EDGE_FRAMES
                use.append(False)
            elif tr.after_silence:
                tr.after_silence -= 1
                use.append(False)
            else:
                use.append(True)
        return use

    def _accumulate(self, bands: FloatArray, use_rows: list[list[bool]]) -> None:
        """Sum the usable frames' band levels (dB) into the open sub-window."""
        for ti, use in enumerate(use_rows):
            self.sub_count[ti] += sum(use)
        if all(all(r) for r in use_rows):
            self.sub_sum += np.add.reduce(bands, axis=1)
        else:
            used = np.asarray(use_rows, dtype=np.float64)[:, :, None]
            self.sub_sum += np.add.reduce(bands * used, axis=1)

    def _first_floor(self, bands: FloatArray, use_rows: list[list[bool]]) -> FloatArray:
        """Per-frame floors ``(n_tracks, n, N_BANDS)`` for a segment before a track's first
        sub-window closes: each frame's floor is the mean of the usable frames up to and
        including it, capped as in warm-up (without it the first 100 ms of a line with
        -50 dBFS of hum read 10 dB over the -60 dBFS initial floor, as speech). Frame by frame,
        so a block of five frames decides exactly as five blocks of one. ``self.floor`` ends
        at the last frame's."""
        n = bands.shape[1]
        floors = np.repeat(self.floor[:, None, :], n, axis=1)
        for ti in range(self.n_tracks):
            if self.n_valid[ti]:
                continue
            count = self.sub_count[ti]
            total = self.sub_sum[ti].copy()
            floor = self.floor[ti]
            for i, use in enumerate(use_rows[ti]):
                if use:
                    count += 1
                    total += bands[ti, i]
                if count:
                    floor = np.minimum(total / count, np.maximum(floor, self.cap[ti]))
                floors[ti, i] = floor
            self.floor[ti] = floor
        return floors

    def _close_subwindow(self) -> None:
        """Push the sub-window's mean band levels; the floor follows the window minimum."""
        t = self.n_tracks
        pos = self.ring_pos
        valid = [c >= 3 for c in self.sub_count]
        if all(valid):
            div = float(self.sub_count[0]) if t == 1 or len(set(self.sub_count)) == 1 else None
            if div is not None:
                self.ring[:, pos] = self.sub_sum / div
            else:
                self.ring[:, pos] = self.sub_sum / np.asarray(self.sub_count, float)[:, None]
        else:
            for ti in range(t):
                c = self.sub_count[ti]
                self.ring[ti, pos] = self.sub_sum[ti] / c if valid[ti] else np.inf
        for ti in range(t):
            self.n_valid[ti] += valid[ti]
            self.valid_in_window[ti] += valid[ti] - self.ring_valid[ti][pos]
            self.ring_valid[ti][pos] = valid[ti]
        self.ring_pos = (pos + 1) % self.n_sub
        cand = np.minimum.reduce(self.ring, axis=1)  # (t, B)
        warm = [nv < self.n_sub for nv in self.n_valid]
        speech = [tr.in_speech for tr in self.tracks]
        if not any(warm) and all(self.valid_in_window):
            if not any(speech):
                self.floor = cand
            elif all(speech):
                self.floor = np.minimum(cand, self.floor + self.rise)
            else:
                for ti in range(t):
                    self.floor[ti] = (
                        np.minimum(cand[ti], self.floor[ti] + self.rise) if speech[ti] else cand[ti]
                    )
        else:
            for ti in range(t):
                if not self.valid_in_window[ti]:
                    continue  # only digital silence in the window: keep the floor
                if warm[ti]:
                    # warm-up: follow the candidate, but no higher than the (rising) cap
                    self.floor[ti] = np.minimum(cand[ti], np.maximum(self.floor[ti], self.cap[ti]))
                    if valid[ti]:
                        self.cap[ti] += self.cap_step
                elif speech[ti]:
                    self.floor[ti] = np.minimum(cand[ti], self.floor[ti] + self.rise)
                else:
                    self.floor[ti] = cand[ti]
        self.sub_sum = np.zeros((t, N_BANDS))
        self.sub_count = [0] * t

    def flush_track(self, ti: int) -> Transition | None:
        tr = self.tracks[ti]
        if not tr.in_speech:
            return None
        tr.in_speech = False
        tr.loud_run = 0
        last = tr.last_edge if tr.last_edge >= tr.seg_start else tr.last_active
        return ("end", last + 1)

    def reset_track(self, ti: int) -> Transition | None:
        ended = self.flush_track(ti)
        tr = self.tracks[ti]
        tr.recent_active_from = None
        tr.recent_edge_from = None
        tr.loud_run = 0
        self.s_hist[ti] = 0.0
        self.m_hist[ti] = 0.0
        self.o_hist[ti] = SILENCE_DB
        return ended


# ---------------------------------------------------------------------------------------------
# Public detectors
# ---------------------------------------------------------------------------------------------


class BandVad:
    """The VAD of one call: one or two tracks stepped together (index 0 = inbound/caller,
    1 = outbound/agent); with two, each track's echo check sees the other's features.

    ``step_block(first_frame, feats)`` advances over the consecutive frames ``first_frame ..
    first_frame + n - 1`` (n = 1..5 in practice; any n works and the decisions do not depend on
    it). ``feats``: float32, shape ``(n_tracks, n, N_FEATURES)``, each track's
    ``frame_features`` for those frames (a track with no audio for a frame gets the features of
    digital silence). Returns ``(track, transition, decided_at)`` in order: ``("start",
    first)`` (``first`` includes pre-roll) or ``("end", end)`` (``end`` exclusive, includes
    post-roll), and the frame at which it was decided (feed a ``TurnTracker`` frame by frame
    with it). Frames must come in order without gaps (the timeline fills gaps with silence);
    ``ValueError`` otherwise. ``flush()`` ends open speech; ``reset_speech(track)`` also
    forgets that track's runs and short histories (a discontinuity), keeping its noise floor.
    """

    __slots__ = ("_core",)

    def __init__(
        self, n_tracks: int, params: VadParams | None = None, model: VadModel | None = None
    ) -> None:
        if n_tracks not in (1, 2):
            raise ValueError("a call has one or two tracks")
        self._core = _Core(n_tracks, params or VadParams(), model or default_model())

    @property
    def n_tracks(self) -> int:
        return self._core.n_tracks

    def in_speech(self, track: int) -> bool:
        """Speech is on in ``track``."""
        return self._core.tracks[track].in_speech

    def noise_floor_db(self, track: int) -> FloatArray:
        """``track``'s noise floor per band, dB re full scale, shape ``(N_BANDS,)``."""
        return np.array(self._core.floor[track], dtype=np.float64)

    @property
    def last_logits(self) -> FloatArray:
        """Model logits of the frames of the last block, ``(n_tracks, n)`` (diagnostics)."""
        return self._core.last_logits

    def start_trace(self) -> None:
        """Collect the model inputs of every frame from now on (``bench/fit_vad.py``)."""
        self._core.trace = []

    @property
    def trace(self) -> list[list[FloatArray]] | None:
        """Per block, per track: ``(n, N_INPUTS)`` model inputs when tracing, else ``None``."""
        return self._core.trace

    def step_block(
        self, first_frame: int, feats: NDArray[np.float32]
    ) -> list[tuple[int, Transition, int]]:
        other = feats[::-1] if self._core.n_tracks == 2 else None
        return self._core.step_block(first_frame, feats, other)

    def flush(self) -> list[tuple[int, Transition]]:
        """End open speech on every track (stream end): ``(track, ("end", frame))`` pairs."""
        out = []
        for ti in range(self._core.n_tracks):
            ended = self._core.flush_track(ti)
            if ended is not None:
                out.append((ti, ended))
        return out

    def reset_speech(self, track: int) -> Transition | None:
        """A discontinuity on one track: its open speech ends (returned), its runs and short
        histories are forgotten, its noise floor is kept."""
        return self._core.reset_track(track)


def logit(p: float) -> float:
    """``log(p / (1 - p))``: the ``start_logit``/``stop_logit`` of a probability."""
    return math.log(p / (1.0 - p))
