"""Per-turn acoustics: energy, pitch (F0), voicing, speech rate, the turn's own prosody (pitch
range, final contour, level), voice quality and steady tones.

Everything here runs once per finished turn, vectorised with numpy over the whole turn; nothing
is computed per media message. The module is sans-I/O: no logging, clocks or environment.
``voice`` (jitter, shimmer, HNR, tilt) and ``tone`` (answering-machine beeps) work on what
``measure_turn`` computes here, so the turn is framed, windowed and pitch-tracked once.

Time grids used below (at 8 kHz):

* **level frames**: 20 ms, 160 samples, frame ``k`` = samples ``[160k, 160k + 160)``; this is
  the VAD's grid, so ``speech_mask[k]`` applies to level frame ``k``. A trailing partial frame
  (< 20 ms) is ignored everywhere.
* **pitch frames**: the same 20 ms grid; pitch frame ``k`` is centred on the middle of level
  frame ``k``. A 20 ms hop reads the median F0 of ``bench/pitch_accuracy.py``'s harmonic
  complexes as closely as a 10 ms hop did (median error 0.008 semitones at both) for half
  the YIN work.
* **intensity blocks**: 10 ms, two per level frame, for the syllable-nucleus envelope.
* **frame spectra**: the power spectrum of each level frame under a Hann window (50 Hz bins),
  shared by the spectral tilt and the tone detector.

Methods:

* Pitch: YIN, de Cheveigné & Kawahara (2002), "YIN, a fundamental frequency estimator for
  speech and music", JASA 111(4), 1917-1930: difference function (computed for batches of
  frames from FFT autocorrelations and running energies, on a half-sample lag grid),
  cumulative mean normalised difference, absolute threshold, local-minimum descent and
  parabolic interpolation. Frames that never dip under the threshold are re-picked near the
  turn's confident F0 (see ``FeatureParams.guide_range_semitones``). A local octave-jump fold
  and a 3-point median smooth the track afterwards (an F0 cannot halve or double within
  40 ms; telephone band-limiting removes the fundamental of low voices, which is what
  provokes such jumps). Voiced frames more than ``f0_range_db`` under the turn's loudest keep
  their voicing but carry no F0 (the phone band's 300 Hz edge rings in breath and line noise).
  The difference function at the period also gives each voiced frame's
  periodicity (its normalised cross-correlation one period later), from which ``voice``
  derives the HNR.
* Speech rate: syllable nuclei after de Jong & Wempe (2009), "Praat script to detect syllable
  nuclei and measure speech rate automatically", Behavior Research Methods 41(2), 385-390:
  peaks of a smoothed intensity envelope that lie above a threshold relative to the turn's
  loud level, are separated from neighbouring peaks by dips of at least ``min_dip_db``, and
  are voiced.
* Pitch range: F0 10th to 90th percentile, in semitones, over the voiced frames within
  ``pitch_range_level_db`` of the turn's loudest voiced frame (the quiet edges of voicing carry
  most octave errors, and come and go with the line's gain), after octave errors are undone
  (``_octave_corrected``).
* Final contour (the "tone" of a turn's end, e.g. a question's rise): the Theil-Sen slope
  (median of pairwise slopes, robust to an octave error or two at a phrase end) of F0 in
  semitones (octave errors undone, as for the pitch range) over the voiced frames in the last
  ``contour_window_ms`` of voicing, times the
  time they span; at least ``contour_threshold_semitones`` of rise or fall is ``rising`` or
  ``falling``, less is ``level``. 1.5 semitones is well above the tracker's noise and
  micro-prosody, and above the glissando threshold for 0.5 s ('t Hart 1976: 0.16 / T² st/s,
  about 0.3 semitones here).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
from numpy.typing import NDArray

from mise_twilio.core import arousal as _arousal
from mise_twilio.core._numeric import mean, median, sorted_median, strided_frames, windows
from mise_twilio.core.audio import FRAME_MS, FULL_SCALE_RMS, SAMPLE_RATE_HZ, SILENCE_DBFS
from mise_twilio.core.records import Energy, Pitch, Voice
from mise_twilio.core.tone import ToneFeatures, find_tone
from mise_twilio.core.voice import NO_VOICE, VoiceFeatures, measure_voice

__all__ = [
    "SUPPORTED_SAMPLE_RATES_HZ",
    "Contour",
    "EnergyFeatures",
    "FeatureParams",
    "PitchFeatures",
    "ProsodyFeatures",
    "TurnAcoustics",
    "TurnFeatures",
    "arousal_inputs",
    "measure_turn",
    "pitch_track",
    "speech_mask",
    "turn_acoustics",
]

SUPPORTED_SAMPLE_RATES_HZ: tuple[int, ...] = (SAMPLE_RATE_HZ, 16000)
"""Rates ``measure_turn`` accepts: Twilio's 8 kHz, and 16 kHz for wide-band sources."""
_YIN_CHUNK_FRAMES = 64
"""Pitch frames per YIN batch: keeps the FFT work arrays cache-sized (~0.3 MB)."""

Contour = Literal["rising", "falling", "level"]

_FULL_SCALE_POWER = FULL_SCALE_RMS * FULL_SCALE_RMS
_SILENCE_POWER = _FULL_SCALE_POWER * 10.0 ** (SILENCE_DBFS / 10.0)
_DIGITAL_SILENCE_DBFS = -90.0
"""Frames below this are digital silence (audio Twilio never sent, zero-filled), not quiet
speech: μ-law's smallest non-zero step reads about -78 dBFS."""


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """Tuning for ``measure_turn``; the defaults suit 8 kHz μ-law telephone speech.

    Pitch (YIN):

    * ``f0_min_hz`` / ``f0_max_hz``: F0 search range in Hz (lag range of the YIN search).
    * ``yin_threshold``: YIN's absolute threshold on the cumulative mean normalised difference
      (d', 0..~1): the first dip below it, followed down to its local minimum, gives the
      period; when d' never goes below it, the global minimum in the lag range is used
      (as in the paper). 0.1-0.15 in the paper.
    * ``voicing_threshold``: a frame is voiced when d' at the chosen period is below this.
      Kept separate from ``yin_threshold`` because μ-law and the telephone band raise d' on
      real voices (typically 0.1-0.4) while white or band-passed noise stays above ~0.7; a
      single high threshold would pick formant-driven dips at short lags (octave-up errors).
    * ``yin_window_ms``: YIN integration window. The analysis frame is this plus the longest
      lag (1 / ``f0_min_hz``), about 47 ms with the defaults.
    * ``guide_range_semitones``: a frame whose d' never dips under ``yin_threshold`` but is
      under ``voicing_threshold`` takes its best dip within this many semitones of the median
      F0 of the turn's confident frames (those that did dip under ``yin_threshold``), when
      there are at least ``min_voiced_frames`` of them; its global minimum otherwise. Without
      this, low voices through the telephone band often lock onto a formant lag near
      ``f0_max_hz`` in weakly periodic frames.
    * ``voicing_ramp``: the span of d' around ``voicing_threshold`` over which a frame counts
      partly voiced in ``ProsodyFeatures.voicing`` (0: counted 0 or 1).
    * ``octave_check_ratio``: after YIN's pick, a frame takes twice the period when its
      normalised difference ``1 - r`` there is under this times the one at the pick (0
      disables it; see ``_octave_down``). On the rated clips, without it, 6 dB of line gain
      moved one clip's arousal by 0.56 (a syllable read an octave up at one gain only).
    * ``voicing_min_dbfs``: pitch frames whose level (over the integration window) is below
      this are unvoiced.
    * ``voicing_range_db``: pitch frames more than this many dB below the turn's loudest pitch
      frame inside speech are unvoiced.
    * ``f0_range_db``: voiced pitch frames more than this many dB below the loudest carry no F0
      (they still count in ``ProsodyFeatures.voicing``). Through a telephone band's 300 Hz
      edge, breath and line noise ring near 300 Hz (and read 150 Hz an octave down): on the
      real speech of ``bench/praat_reference.py`` (AMI calls and rated clips through the
      bridge, 12,559 speech frames), with only ``voicing_range_db`` (45 dB) 21.5 % of them
      disagreed with Praat on voicing, and of the 1487 that only this tracker voiced, 584 lay
      at 280-320 Hz; at 30 dB, 14.3 %, 83 of 504, with 98.5 % of the frames both voiced kept.
      30 dB is also Praat's own silence threshold (0.03 of the peak amplitude). Applying it
      to ``voicing`` too lowered the arousal model's cross-validated ρ from 0.86 to 0.77.
    * ``min_voiced_run_ms``: voiced runs shorter than this are dropped as unvoiced.
    * ``min_voiced_frames``: fewer voiced 20 ms pitch frames than this gives ``median_hz`` /
      ``iqr_semitones`` / ``slope_semitones_per_s`` (and the pitch range) of ``None``.
    * ``min_slope_span_ms``: the F0 slope needs voiced frames spanning at least this long.

    Speech rate (syllable nuclei):

    * ``intensity_smoothing_ms``: length of the Hann window smoothing the intensity envelope.
    * ``nucleus_min_rel_db``: peaks more than this below the 99th percentile of the envelope
      over speech are ignored (de Jong & Wempe's "silence threshold", -25 dB).
    * ``nucleus_min_dip_db``: a peak counts only if the envelope dips by at least this many dB
      between it and its neighbouring peak (de Jong & Wempe's ``mindip``, 2 dB).

    Prosody of the turn (see the module docstring):

    * ``pitch_range_level_db``: the pitch range uses voiced frames within this of the loudest.
    * ``contour_window_ms``: the final contour looks at the voiced frames in this last span.
    * ``contour_min_voiced_ms``: with less voicing than this in that span the contour is
      ``None``.
    * ``contour_threshold_semitones``: the F0 change over the span that is a rise or a fall.

    Voice quality (``voice``; Praat's defaults for the two factors):

    * ``max_period_factor``: consecutive periods whose lengths differ by a larger ratio are
      not compared (jitter).
    * ``max_amplitude_factor``: the same for amplitudes (shimmer).
    * ``min_period_pairs``: fewer comparable consecutive period pairs give ``None`` jitter
      and shimmer.
    * ``min_hnr_frames``: fewer voiced pitch frames give ``None`` HNR.

    Steady tones (``tone``; answering-machine beeps):

    * ``tone_min_hz`` / ``tone_max_hz``: accepted frequencies (400-2000 Hz nominal, ±1.25 %
      for oscillator tolerance and estimation error).
    * ``tone_min_ms``: the shortest tone reported.
    * ``tone_min_purity``: share of a frame's power within ±100 Hz of its spectral peak for the
      frame to be a pure tone (0.97 passes a tone 20 dB above white line noise and rejects
      DTMF and sustained vowels).
    * ``tone_max_step``: the tone's frequency may change by this fraction between frames
      (generated beeps hold it within 0.1 %; voices drift more).
    * ``tone_min_dbfs``: quieter frames are not tones.
    """

    f0_min_hz: float = field(default=60.0, metadata={"doc": "lowest F0 searched"})
    f0_max_hz: float = field(default=400.0, metadata={"doc": "highest F0 searched"})
    yin_threshold: float = field(default=0.15, metadata={"doc": "YIN absolute threshold on d'"})
    voicing_threshold: float = field(
        default=0.4, metadata={"doc": "voiced when d' at the period is below this"}
    )
    yin_window_ms: float = field(default=30.0, metadata={"doc": "YIN integration window"})
    voicing_min_dbfs: float = field(
        default=-65.0, metadata={"doc": "quieter pitch frames are unvoiced"}
    )
    voicing_range_db: float = field(
        default=45.0, metadata={"doc": "pitch frames this far under the loudest are unvoiced"}
    )
    f0_range_db: float = field(
        default=30.0, metadata={"doc": "voiced frames this far under the loudest carry no F0"}
    )
    min_voiced_run_ms: float = field(
        default=30.0, metadata={"doc": "shorter voiced runs are dropped"}
    )
    min_voiced_frames: int = field(
        default=3, metadata={"doc": "fewer voiced 20 ms frames: no pitch statistics"}
    )
    min_slope_span_ms: float = field(
        default=100.0, metadata={"doc": "voiced span the F0 slope needs"}
    )
    guide_range_semitones: float = field(
        default=10.0, metadata={"doc": "weak frames re-picked within this of the turn's F0"}
    )
    voicing_ramp: float = field(
        default=0.1, metadata={"doc": "d' span around voicing_threshold graded in voicing"}
    )
    octave_check_ratio: float = field(
        default=0.5, metadata={"doc": "period doubled where 1 - r there is under this times"}
    )
    intensity_smoothing_ms: float = field(
        default=50.0, metadata={"doc": "Hann window of the intensity envelope"}
    )
    nucleus_min_rel_db: float = field(
        default=25.0, metadata={"doc": "syllable peaks this far under the loudest are ignored"}
    )
    nucleus_min_dip_db: float = field(
        default=2.0, metadata={"doc": "dip that separates two syllable peaks"}
    )
    pitch_range_level_db: float = field(
        default=20.0, metadata={"doc": "pitch range over voiced frames this close to the loudest"}
    )
    contour_window_ms: float = field(
        default=500.0, metadata={"doc": "final contour: the last span of voicing examined"}
    )
    contour_min_voiced_ms: float = field(
        default=140.0, metadata={"doc": "voicing in that span the contour needs"}
    )
    contour_threshold_semitones: float = field(
        default=1.5, metadata={"doc": "F0 change over that span that is a rise or a fall"}
    )
    max_period_factor: float = field(
        default=1.3, metadata={"doc": "jitter: consecutive periods compared up to this ratio"}
    )
    max_amplitude_factor: float = field(
        default=1.6, metadata={"doc": "shimmer: consecutive amplitudes compared up to this ratio"}
    )
    min_period_pairs: int = field(
        default=10, metadata={"doc": "fewer comparable period pairs: no jitter or shimmer"}
    )
    min_hnr_frames: int = field(default=5, metadata={"doc": "fewer voiced 20 ms frames: no HNR"})
    tone_min_hz: float = field(default=395.0, metadata={"doc": "lowest steady tone reported"})
    tone_max_hz: float = field(default=2025.0, metadata={"doc": "highest steady tone reported"})
    tone_min_ms: float = field(default=200.0, metadata={"doc": "shortest steady tone reported"})
    tone_min_purity: float = field(
        default=0.97, metadata={"doc": "share of frame power near the peak for a pure tone"}
    )
    tone_max_step: float = field(
        default=0.005, metadata={"doc": "relative frequency change allowed between frames"}
    )
    tone_min_dbfs: float = field(default=-50.0, metadata={"doc": "quieter frames are not tones"})

    def __post_init__(self) -> None:
        if not 0.0 < self.f0_min_hz < self.f0_max_hz:
            raise ValueError(
                f"need 0 < f0_min_hz < f0_max_hz, got {self.f0_min_hz} and {self.f0_max_hz}"
            )
        for name in ("yin_threshold", "voicing_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("yin_window_ms", "intensity_smoothing_ms", "contour_window_ms"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "voicing_range_db",
            "f0_range_db",
            "min_voiced_run_ms",
            "min_slope_span_ms",
            "guide_range_semitones",
            "nucleus_min_rel_db",
            "nucleus_min_dip_db",
            "pitch_range_level_db",
            "contour_min_voiced_ms",
            "contour_threshold_semitones",
            "tone_min_ms",
            "tone_max_step",
        ):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_voiced_frames < 2:
            raise ValueError(f"min_voiced_frames must be >= 2, got {self.min_voiced_frames}")
        for name in ("max_period_factor", "max_amplitude_factor"):
            if not getattr(self, name) > 1.0:
                raise ValueError(f"{name} must be > 1, got {getattr(self, name)}")
        for name in ("min_period_pairs", "min_hnr_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.tone_min_hz < self.tone_max_hz:
            raise ValueError(
                f"need 0 < tone_min_hz < tone_max_hz, got {self.tone_min_hz} and {self.tone_max_hz}"
            )
        if not 0.0 < self.tone_min_purity <= 1.0:
            raise ValueError(f"tone_min_purity must be in (0, 1], got {self.tone_min_purity}")


@dataclass(frozen=True, slots=True)
class EnergyFeatures:
    """Levels of the turn's 20 ms frames over speech frames, in dBFS (0 dBFS = RMS 32768).

    Frames of digital silence read ``SILENCE_DBFS`` (-100); with no speech frames at all every
    field is ``SILENCE_DBFS`` except ``dynamic_range_db``, which is 0.
    """

    mean_dbfs: float
    """Mean of the frame levels (a mean of dB values, not of power)."""
    p95_dbfs: float
    """95th percentile of the frame levels."""
    peak_dbfs: float
    """Loudest frame level."""
    dynamic_range_db: float
    """95th minus 10th percentile of the frame levels, in dB."""


@dataclass(frozen=True, slots=True)
class PitchFeatures:
    """F0 statistics over the voiced 20 ms pitch frames of the turn (YIN)."""

    median_hz: float | None
    """Median F0 in Hz; ``None`` with fewer than ``min_voiced_frames`` voiced frames."""
    iqr_semitones: float | None
    """Interquartile range of F0 in semitones (12 * log2(q75 / q25))."""
    voiced_ratio: float
    """Voiced pitch frames / pitch frames inside speech, 0..1 (0 when there is no speech)."""
    slope_semitones_per_s: float | None
    """Least-squares slope of F0 in semitones against time in seconds; ``None`` with too few
    voiced frames or when they span less than ``min_slope_span_ms``."""


@dataclass(frozen=True, slots=True)
class ProsodyFeatures:
    """The turn's own prosody, before any comparison with its speaker (``core/prosody.py``)."""

    voiced_frames: int
    """Voiced 20 ms pitch frames."""
    f0_level_hz: float | None
    """The turn's F0 level, Hz: the interquartile mean (the mean of the middle half of the
    voiced frames, in semitones) of F0 with octave errors undone (``_octave_corrected``); what
    the speaker baseline and the arousal model compare (``pitch.median_hz`` is YIN's plain
    median). Not the median: a turn whose frames split evenly between two pitch levels (one
    phrase high, one low) has its median in the gap, where one frame more or less voiced moves
    it by the whole gap (measured: 1-2 semitones for a dB of line gain); the interquartile
    mean moves by a fraction of a semitone."""
    f0_p10_hz: float | None
    """10th percentile of F0 over the pitch-range frames, Hz (``None``: too few voiced)."""
    pitch_range_semitones: float | None
    """12 log2(p90 / p10) of F0 over the voiced frames within ``pitch_range_level_db`` of the
    loudest voiced frame, >= 0."""
    contour: Contour | None
    """Final contour; ``None`` with too little voicing at the end (see the module docstring)."""
    contour_change_semitones: float | None
    """F0 change over the final contour span (Theil-Sen slope times the span), semitones."""
    level_dbfs: float | None
    """Active speech level: the mean *power* of the speech frames, in dBFS (``None`` when all of
    them are digital silence). Dominated by the loud frames, so a constant gain moves it by
    exactly the gain (a mean of dB values also moves with the quiet frames μ-law distorts)."""
    level_range_db: float | None
    """Energy dynamics: p95 minus p10 of the speech frames' levels, dB, leaving out frames of
    digital silence (audio Twilio never sent, zero-filled, which ``energy.dynamic_range_db``
    counts as -100 dBFS speech); ``None`` when there are none."""
    voicing: float
    """Graded voiced share of the speech, 0..1: each speech pitch frame YIN analysed counts by
    how clearly its d' at the chosen period passed ``voicing_threshold`` (1 at or under it
    minus ``voicing_ramp / 2``, 0 at or over it plus that, linear between), over the speech
    pitch frames. ``pitch.voiced_ratio`` counts frames 0 or 1, so at the threshold a few
    hundredths of d' (μ-law's rounding of a syllable's end at another line gain) move it by a
    whole frame; this moves by a fraction of one. It ignores the track's run rules (short runs
    dropped), so it is not ``voiced_ratio`` smoothed, but a measure of its own."""


@dataclass(frozen=True, slots=True)
class TurnFeatures:
    """Everything ``measure_turn`` reports for one turn."""

    energy: EnergyFeatures
    pitch: PitchFeatures
    speech_rate_hz: float | None
    """Voiced syllable nuclei per second of speech time; ``None`` when there is no speech."""
    prosody: ProsodyFeatures
    voice: VoiceFeatures
    tone: ToneFeatures | None
    """The longest steady pure tone of at least ``tone_min_ms`` in the turn (any frame, speech
    or not), or ``None``."""


_NO_PROSODY = ProsodyFeatures(0, None, None, None, None, None, None, None, 0.0)
_EMPTY_TURN = TurnFeatures(
    EnergyFeatures(SILENCE_DBFS, SILENCE_DBFS, SILENCE_DBFS, 0.0),
    PitchFeatures(None, None, 0.0, None),
    None,
    _NO_PROSODY,
    NO_VOICE,
    None,
)


def measure_turn(
    pcm: NDArray[np.int16],
    speech_mask: NDArray[np.bool_] | None = None,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    params: FeatureParams = FeatureParams(),
) -> TurnFeatures:
    """Measure one turn: energy, pitch, voicing, speech rate, prosody, voice quality, tones.

    Args:
        pcm: shape ``(n,)``, dtype ``int16``: the turn's linear PCM (μ-law decoded) at
            ``sample_rate_hz``, from turn start to turn end, pauses included. ``n`` may be 0.
        speech_mask: shape ``(n // frame,)``, dtype ``bool``, where ``frame`` is 20 ms of
            samples (160 at 8 kHz): True where the VAD found speech. Statistics then use only
            speech frames, and pitch frames outside speech count as unvoiced. ``None`` treats
            every whole 20 ms frame as speech. The tone search uses every frame.
        sample_rate_hz: one of ``SUPPORTED_SAMPLE_RATES_HZ``.
        params: analysis settings.

    Returns:
        The turn's features; every float is finite.

    Raises:
        ValueError: ``pcm`` is not a 1-D int16 array, ``speech_mask`` is not a bool array of
            shape ``(n // frame,)``, ``sample_rate_hz`` is unsupported, or ``params`` asks
            for an F0 range the sample rate cannot resolve.
    """
    frame, n_frames, speech = _checked(pcm, speech_mask, sample_rate_hz)
    block = frame // 2
    yin = _yin_geometry(sample_rate_hz, frame, params)
    if n_frames == 0:
        return _EMPTY_TURN

    padded, sq = _padded_squares(pcm, n_frames, frame, yin)
    edges = sq[yin.left : yin.left + 2 * n_frames * block + 1 : block]
    block_energy = edges[1:] - edges[:-1]
    frame_power = (edges[2::2] - edges[:-2:2]) / frame
    frame_db = _power_db(frame_power)
    speech_power = frame_power[speech]
    speech_db = frame_db[speech]
    levels = np.sort(speech_db)  # the speech frames' levels, dBFS, ascending
    energy = _energy(speech_db, levels)
    x16 = pcm[: n_frames * frame]
    spectra = _frame_spectra(x16, frame)
    tone = None
    if (n_frames + 1) * FRAME_MS >= params.tone_min_ms:  # else no tone fits
        tone = find_tone(spectra, frame_power, sample_rate_hz, params)

    n_speech = speech_power.shape[0]
    if n_speech == 0:
        no_pitch = PitchFeatures(None, None, 0.0, None)
        return TurnFeatures(energy, no_pitch, None, _NO_PROSODY, NO_VOICE, tone)

    hop_s = frame / sample_rate_hz
    f0, voiced, periodicity, aperiodicity = _f0_track(
        padded, sq, yin, n_frames, frame, speech, sample_rate_hz, params
    )
    at = voiced.nonzero()[0]  # the voiced frames, shared by the statistics below
    n_voiced = at.shape[0]
    st = 12.0 * np.log2(f0[at])  # their F0 in semitones re 1 Hz
    st_sorted = np.sort(st)
    t = cast("NDArray[np.float64]", at * hop_s)  # their centres' times re the turn's first, s
    pitch = _pitch_stats(st, st_sorted, t, n_voiced, n_speech, params)
    nuclei = _count_nuclei(
        block_energy / block, voiced.repeat(2), speech.repeat(2), 0.5 * hop_s, params
    )
    voicing = _voicing(aperiodicity[speech], params)
    prosody = _prosody(at, st, st_sorted, t, frame_db, levels, speech_power, hop_s, params, voicing)
    voice = NO_VOICE
    if n_voiced:
        ltas = spectra[at].sum(axis=0, dtype=np.float64)
        voice = measure_voice(x16, f0, at, periodicity, ltas, frame, sample_rate_hz, params)
    rate = nuclei / (n_speech * FRAME_MS / 1000.0)
    return TurnFeatures(energy, pitch, rate, prosody, voice, tone)


def pitch_track(
    pcm: NDArray[np.int16],
    speech_mask: NDArray[np.bool_] | None = None,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    params: FeatureParams = FeatureParams(),
) -> NDArray[np.float64]:
    """The F0 track ``measure_turn`` computes its pitch, prosody and voice quality from.

    Arguments as ``measure_turn``'s. Returns shape ``(n // frame,)``, float64: F0 in Hz per
    20 ms frame (frame ``j`` centred on sample ``j * frame + frame / 2``), NaN where unvoiced.
    For comparing trackers (``bench/praat_reference.py``); a turn record carries statistics of
    it, not the track. Raises ``ValueError`` as ``measure_turn``.
    """
    frame, n_frames, speech = _checked(pcm, speech_mask, sample_rate_hz)
    yin = _yin_geometry(sample_rate_hz, frame, params)
    if not np.logical_or.reduce(speech, initial=False):
        return np.full(n_frames, np.nan)
    padded, sq = _padded_squares(pcm, n_frames, frame, yin)
    return _f0_track(padded, sq, yin, n_frames, frame, speech, sample_rate_hz, params)[0]


def _checked(
    pcm: NDArray[np.int16], speech_mask: NDArray[np.bool_] | None, sample_rate_hz: int
) -> tuple[int, int, NDArray[np.bool_]]:
    """``measure_turn``'s argument checks: (samples per 20 ms frame, whole frames, the speech
    mask, all True for ``None``)."""
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ValueError("pcm must be a 1-D numpy array of dtype int16, got " + _describe(pcm))
    if sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
        raise ValueError(
            f"unsupported sample_rate_hz {sample_rate_hz}; supported: {SUPPORTED_SAMPLE_RATES_HZ}"
        )
    frame = sample_rate_hz * FRAME_MS // 1000
    n_frames = pcm.shape[0] // frame
    if speech_mask is None:
        return frame, n_frames, np.ones(n_frames, dtype=np.bool_)
    if (
        not isinstance(speech_mask, np.ndarray)
        or speech_mask.dtype != np.bool_
        or speech_mask.shape != (n_frames,)
    ):
        raise ValueError(
            f"speech_mask must be a bool array of shape ({n_frames},) (one per "
            f"{FRAME_MS} ms frame of {pcm.shape[0]} samples), got " + _describe(speech_mask)
        )
    return frame, n_frames, speech_mask


def _padded_squares(
    pcm: NDArray[np.int16], n_frames: int, frame: int, yin: _YinGeometry
) -> tuple[NDArray[np.int16], NDArray[np.int64]]:
    """Shared framing: the turn zero-padded for YIN's centred frames, and the running sum of
    its squared samples (exact in int64, one longer), from which the 10 ms block energies, the
    20 ms frame powers and YIN's per-lag energies are all differences."""
    total = (n_frames - 1) * frame + yin.size
    take = min(pcm.shape[0], total - yin.left)
    padded = np.zeros(total, dtype=np.int16)
    padded[yin.left : yin.left + take] = pcm[:take]
    sq = np.zeros(total + 1, dtype=np.int64)
    np.multiply(padded, padded, out=sq[1:], dtype=np.int64)
    sq.cumsum(out=sq)
    return padded, sq


def arousal_inputs(features: TurnFeatures) -> dict[str, float | None]:
    """A turn's candidate arousal inputs by the names ``arousal.ArousalModel`` uses (the model
    picks its own few; ``bench/arousal_accuracy.py`` ranks them all)."""
    level = features.prosody.f0_level_hz
    return {
        "f0_level_semitones": None if level is None else 12.0 * math.log2(level / 100.0),
        "pitch_range_semitones": features.prosody.pitch_range_semitones,
        "iqr_semitones": features.pitch.iqr_semitones,
        "alpha_ratio_db": features.voice.alpha_ratio_db,
        "speech_rate_hz": features.speech_rate_hz,
        "level_range_db": features.prosody.level_range_db,
        "dynamic_range_db": features.energy.dynamic_range_db,
        "voicing": features.prosody.voicing,
        "hnr_db": features.voice.hnr_db,
        "jitter_local_pct": features.voice.jitter_local_pct,
        "shimmer_local_db": features.voice.shimmer_local_db,
    }


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"array of dtype {a.dtype} and shape {a.shape}"
    return type(a).__name__


def _power_db(power: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean square to dBFS, clamped at ``SILENCE_DBFS``."""
    db: NDArray[np.float64] = 10.0 * np.log10(np.maximum(power, _SILENCE_POWER) / _FULL_SCALE_POWER)
    return db


def _quantiles(values: NDArray[np.float64], qs: tuple[float, ...]) -> list[float]:
    """Quantiles (0..1) with linear interpolation, as ``np.quantile``'s default, for ``size >= 1``.

    A sort plus index arithmetic: ``np.percentile`` costs ~30 µs of overhead per call.
    """
    return _sorted_quantiles(np.sort(values), qs)


def _sorted_quantiles(v: NDArray[np.float64], qs: tuple[float, ...]) -> list[float]:
    """``_quantiles`` of ``v``, which is sorted ascending."""
    last = v.shape[0] - 1
    out: list[float] = []
    for q in qs:
        pos = q * last
        i = min(int(pos), last)
        j = min(i + 1, last)
        frac = pos - i
        out.append(float(v[i] + (v[j] - v[i]) * frac))
    return out


def _energy(levels: NDArray[np.float64], ordered: NDArray[np.float64]) -> EnergyFeatures:
    """From the speech frames' levels (dBFS), in frame order and sorted."""
    if levels.size == 0:
        return EnergyFeatures(SILENCE_DBFS, SILENCE_DBFS, SILENCE_DBFS, 0.0)
    p10, p95 = _sorted_quantiles(ordered, (0.10, 0.95))
    peak = float(ordered[-1])
    return EnergyFeatures(
        mean_dbfs=min(mean(levels), peak),  # rounding could put it above
        p95_dbfs=p95,
        peak_dbfs=peak,
        dynamic_range_db=p95 - p10,
    )


@dataclass(frozen=True, slots=True)
class _YinGeometry:
    """YIN's frame layout for one rate, hop and parameter set (see ``_f0_track``)."""

    tau_min: int
    tau_max: int
    size: int
    """Samples per analysis frame: the integration window plus the longest lag."""
    nfft: int
    left: int
    """Zero samples before the turn, so that frame ``j`` is centred on ``j*hop + hop/2``."""


@functools.lru_cache(maxsize=16)
def _yin_geometry(sample_rate_hz: int, hop: int, params: FeatureParams) -> _YinGeometry:
    tau_min = math.floor(sample_rate_hz / params.f0_max_hz)
    tau_max = math.ceil(sample_rate_hz / params.f0_min_hz)
    if tau_min < 2:
        raise ValueError(f"f0_max_hz {params.f0_max_hz} is too high for {sample_rate_hz} Hz audio")
    window = max(round(params.yin_window_ms * sample_rate_hz / 1000.0), 2)
    size = window + tau_max + 1
    n_int = tau_max + 2  # integer lags 0..tau_max+1, so every candidate has a right neighbour
    nfft = _fft_size(size + n_int - 1)  # no negative lag wraps onto lags <= tau_max + 1
    return _YinGeometry(tau_min, tau_max, size, nfft, size // 2 - hop // 2)


def _f0_track(
    padded: NDArray[np.int16],
    sq: NDArray[np.int64],
    geometry: _YinGeometry,
    n_pitch: int,
    hop: int,
    in_speech: NDArray[np.bool_],
    sample_rate_hz: int,
    params: FeatureParams,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]:
    """YIN F0 per pitch frame, which are voiced, each voiced frame's periodicity, and each
    analysed frame's d'.

    ``padded``: the turn with ``geometry.left`` zeros before it and zeros after, shape
    ``((n_pitch - 1) * hop + size,)``; ``sq``: the running sum of its squares, ``sq[i]`` =
    sum of the first ``i`` (int64, one longer); ``in_speech``: shape ``(n_pitch,)``, at least
    one True.

    Returns four arrays of shape ``(n_pitch,)``: F0 in Hz (NaN where unvoiced), True where it
    is not NaN, the normalised cross-correlation
    ``r = 1 - d(T) / (E_0 + E_T)`` of the frame with itself one period ``T`` later (``d`` the
    difference function at its interpolated minimum, ``E`` the energies of the overlapping
    parts), NaN where unvoiced; and d' at the chosen period of every frame YIN analysed
    (inside speech and over the level gate, voiced or not), NaN for the others.

    Pitch frame ``j`` is ``size = window + tau_max + 1`` samples centred on sample
    ``j*hop + hop/2`` (the signal is zero-padded at both ends). Only frames inside speech and
    above the level gate are analysed. The difference function at lag ``t`` sums over the
    ``size - t`` overlapping pairs and is divided by that count, so every lag sees at least
    ``window`` pairs; its cross term is the frame's autocorrelation (one forward and one
    inverse FFT per frame). Lags are evaluated on a half-sample grid: the inverse FFT of the
    zero-padded power spectrum interpolates the autocorrelation band-limitedly and the energy
    terms are interpolated linearly. At 8 kHz a period of 26.7 samples (300 Hz) falls between
    integer lags, and when the energy sits at 2-3 kHz (a front vowel through a phone line) the
    dip at the true period is narrower than one sample; the finer grid keeps it under the
    threshold.
    """
    size = geometry.size
    # run[j, m] = sum of the first m squares of frame j (a strided view, no copy).
    run = strided_frames(sq, size + 1, hop, n_pitch)
    level_db = _power_db((run[:, size] - run[:, 0]) / size)
    loudest = float(np.maximum.reduce(level_db[in_speech]))
    gate = max(params.voicing_min_dbfs, loudest - params.voicing_range_db)
    rows = (in_speech & (level_db >= gate)).nonzero()[0]
    f0 = np.empty(n_pitch)
    f0.fill(np.nan)
    periodicity = f0.copy()
    aperiodicity_out = f0.copy()
    m = rows.shape[0]
    if m == 0:
        return f0, np.zeros(n_pitch, dtype=np.bool_), periodicity, aperiodicity_out
    # First pass: YIN per frame. Frames with a dip under yin_threshold are confident; frames
    # that only reach the voicing threshold at their global minimum keep their d' rows for
    # the second pass.
    # Per chunk: each frame's period, d and energy there (_refine), and d' there.
    parts: list[tuple[NDArray[np.float64], ...]] = []
    found_parts: list[NDArray[np.bool_]] = []
    # Per chunk with weak frames: (its first row, the weak rows in it, its d, d' and energy).
    weak_chunks: list[
        tuple[int, NDArray[np.intp], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]
    ] = []
    all_frames = strided_frames(padded, size, hop, n_pitch)
    contiguous = int(rows[-1]) - int(rows[0]) + 1 == m  # usual: every speech frame passes
    yin = _take_yin(geometry)  # its buffers are this turn's until given back
    lo, hi, row_index, half_lags = yin.lo, yin.hi, yin.row_index, yin.lag_index  # constants
    try:
        for c in range(0, m, _YIN_CHUNK_FRAMES):
            chunk = rows[c : c + _YIN_CHUNK_FRAMES]
            b = chunk.shape[0]
            if contiguous:  # views, not copies
                rs = slice(int(chunk[0]), int(chunk[0]) + b)
                d, dn, e = yin(all_frames[rs], run[rs])
            else:
                d, dn, e = yin(all_frames[chunk], run[chunk])
            j, found = _first_dip(dn, params.yin_threshold)
            if params.octave_check_ratio > 0.0:
                j = _octave_down(d, e, j, lo, hi, params.octave_check_ratio)
            ap = dn.reshape(-1)[row_index[:b] * dn.shape[1] + j]
            parts.append((*_refine(d, e, row_index[:b], j + lo), ap))
            found_parts.append(found)
            weak = ((ap < params.voicing_threshold) > found).nonzero()[0]  # under it, no dip
            if weak.shape[0]:
                weak_chunks.append((c, weak, d, dn, e))
    finally:
        _give_back_yin(geometry, yin)
    if len(parts) == 1:
        (period, d_min, energy_at, aperiodicity), confident = parts[0], found_parts[0]
    else:
        period, d_min, energy_at, aperiodicity = (
            np.concatenate(p) for p in zip(*parts, strict=True)
        )
        confident = np.concatenate(found_parts)

    # Second pass: a weak frame's global minimum is often a formant's ringing (a lag near
    # 1/F1) or an octave off, not the period; re-pick its best dip within
    # ±guide_range_semitones of the turn's median F0 over confident frames.
    voiced = aperiodicity < params.voicing_threshold
    if weak_chunks and np.count_nonzero(confident) >= params.min_voiced_frames:
        ref_lag = 2.0 * median(period[confident])  # on the half-lag grid
        ratio = 2.0 ** (params.guide_range_semitones / 12.0)
        outside = (half_lags < ref_lag / ratio) | (half_lags > ref_lag * ratio)
        for c, weak, d, dn, e in weak_chunks:
            dn_weak = dn[weak]  # a copy: the chunk's d' is not needed after this
            dn_weak[:, outside] = np.inf
            j = dn_weak.argmin(axis=1)
            ap = dn_weak[row_index[: weak.shape[0]], j]
            at = weak + c
            period[at], d_min[at], energy_at[at] = _refine(d, e, weak, j + lo)
            voiced[at] = ap < params.voicing_threshold
            aperiodicity[at] = ap

    # Frames far under the loudest keep their d' (voicing) but carry no F0: see f0_range_db.
    has_f0 = voiced & (level_db[rows] >= loudest - params.f0_range_db)
    f0[rows] = np.where(has_f0, sample_rate_hz / period, np.nan)
    periodicity[rows] = np.where(voiced, 1.0 - d_min / np.maximum(energy_at, 1e-30), np.nan)
    min_run = math.ceil(params.min_voiced_run_ms * sample_rate_hz / (1000.0 * hop))
    _drop_short_runs(f0, min_run)
    f0 = _smooth_track(f0, params.f0_min_hz, params.f0_max_hz)
    unvoiced = np.isnan(f0)
    periodicity[unvoiced] = np.nan
    aperiodicity_out[rows] = aperiodicity
    return f0, ~unvoiced, periodicity, aperiodicity_out


_SPARE_YIN: dict[_YinGeometry, list[_Yin]] = {}
"""``_Yin`` work buffers not in use, per geometry: a turn takes one and gives it back, so
turns measured one after another reuse them (allocating them cost a short turn several µs and
a long one ~0.3 ms of zeroed pages), and turns measured at once in several threads (numpy
releases the GIL in the FFTs) each hold their own. ``list.pop`` and ``list.append`` are
atomic; at most ``_SPARE_YIN_MAX`` are kept per geometry."""
_SPARE_YIN_MAX = 4


def _take_yin(geometry: _YinGeometry) -> _Yin:
    try:
        return _SPARE_YIN.setdefault(geometry, []).pop()
    except IndexError:
        return _Yin(
            geometry.size, geometry.tau_min, geometry.tau_max, geometry.nfft, _YIN_CHUNK_FRAMES
        )


def _give_back_yin(geometry: _YinGeometry, yin: _Yin) -> None:
    spare = _SPARE_YIN.setdefault(geometry, [])
    if len(spare) < _SPARE_YIN_MAX:
        spare.append(yin)


class _Yin:
    """YIN steps 2-3 on a batch of frames, with FFT buffers reused across batches and turns.

    Call with ``frames`` of shape ``(b, size)`` (int16 samples) and ``run`` of shape
    ``(b, size + 1)`` (int64 running sums of squares of the same frames, ``run[:, 0]`` being
    the sum before the frame), ``b <= capacity``. Returns float32 arrays: the difference
    function per pair ``d`` of shape ``(b, 2*tau_max + 3)`` on the half-lag grid (column ``i``
    is lag ``i/2``), d' of shape ``(b, hi - lo + 1)`` over the searched half-lags ``lo..hi``
    (``lo = 2*tau_min``, ``hi = 2*tau_max``), and the energy of the overlapping parts per pair
    (``(E_0 + E_t) / (size - t)``) on the same grid as ``d``.
    """

    def __init__(self, size: int, tau_min: int, tau_max: int, nfft: int, capacity: int) -> None:
        self.size = size
        self.n_int = tau_max + 2  # integer lags 0..tau_max+1: every candidate has a right side
        self.n_half = 2 * self.n_int - 1  # lags 0, 0.5, ..., tau_max + 1
        self.lo, self.hi = 2 * tau_min, 2 * tau_max
        # Frames zero-padded to nfft, and power spectra zero-padded to a 2*nfft-point signal's
        # (numpy's float64 rfft and complex64 irfft are its fastest pair at these sizes).
        self.frames = np.zeros((capacity, nfft), dtype=np.float64)
        self.spec = np.empty((capacity, nfft // 2 + 1), dtype=np.complex128)
        self.power = np.zeros((capacity, nfft + 1), dtype=np.complex64)
        self.per_pair, self.per_pair_4, self.lag_index = _yin_weights(
            size, self.n_half, self.lo, self.hi
        )
        self.row_index = np.arange(capacity)

    def __call__(
        self, frames: NDArray[np.int16], run: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        b = frames.shape[0]
        size, n_int, n_half, lo, hi = self.size, self.n_int, self.n_half, self.lo, self.hi
        buf = self.frames[:b]
        buf[:, :size] = frames
        spec = np.fft.rfft(buf, axis=1, out=self.spec[:b])
        power = self.power[:b]
        bins = power[:, : spec.shape[1]]
        bins[...] = spec
        bins *= bins.conj()  # |X|^2, imaginary part 0
        acf2 = np.fft.irfft(power, axis=1)[:, :n_half]  # half the autocorrelation, half-lags

        # Energies of the overlapping parts: head(t) = sum_{i < size-t} x_i^2, tail(t) =
        # sum_{i >= t} x_i^2, exact at integer lags (int64), linearly interpolated between.
        # head + tail = (run[size - t] - run[t]) + (run[size] - run[0]).
        energy = np.empty((b, n_half), dtype=np.float32)
        inner = run[:, size - n_int + 1 :][:, ::-1] - run[:, :n_int]
        np.add(inner, run[:, size:] - run[:, :1], out=energy[:, 0::2], casting="unsafe")
        np.add(energy[:, 0:-1:2], energy[:, 2::2], out=energy[:, 1::2])  # halved below
        energy *= self.per_pair

        # Difference function (YIN step 2) per pair, and its cumulative mean normalisation
        # (step 3) over the searched lags only; the tiny offset maps 0/0 (silence) to 1.
        acf2 *= self.per_pair_4
        d = (energy - acf2).astype(np.float32, copy=False)  # float32 already: no copy
        np.maximum(d, 0.0, out=d)
        running = d[:, 1 : hi + 1].cumsum(axis=1)[:, lo - 1 :]
        tiny = np.float32(1e-30)
        dn = d[:, lo : hi + 1] * self.lag_index
        dn += tiny
        running += tiny
        dn /= running
        return d, dn, energy


@functools.lru_cache(maxsize=16)
def _yin_weights(
    size: int, n_half: int, lo: int, hi: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """``_Yin``'s constant rows (read-only): 1 / pairs per half-lag, halved at the half-lags
    (whose energies are sums of their two neighbours', to be averaged: halving a float32 is
    exact, so this rounds as averaging first did), 4 / pairs (``acf2`` is half the
    autocorrelation), and the searched half-lags ``lo..hi``."""
    pairs = size - 0.5 * np.arange(n_half)
    per_pair = (1.0 / pairs).astype(np.float32)
    per_pair[1::2] *= np.float32(0.5)
    out = (
        per_pair,
        (4.0 / pairs).astype(np.float32),
        np.arange(lo, hi + 1, dtype=np.float32),
    )
    for a in out:
        a.flags.writeable = False
    return out


def _first_dip(
    dn: NDArray[np.float32], threshold: float
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """YIN step 4 per row of ``dn`` (shape ``(b, lags)``): column of the first dip under
    ``threshold``, followed down to its local minimum, or of the global minimum when there is
    none; and whether there was one. Both of shape ``(b,)``.
    """
    # Every lag from the first under the threshold down to that dip's minimum is under it,
    # and none before is, so the wanted lag is the first local minimum under it.
    at_min = dn < threshold
    found: NDArray[np.bool_] = np.logical_or.reduce(at_min, axis=1)
    at_min[:, :-1] &= dn[:, 1:] >= dn[:, :-1]
    j: NDArray[np.intp] = np.where(found, at_min.argmax(axis=1), dn.argmin(axis=1))
    return j, found


_OCTAVE_CHECK_MIN = 0.05
"""``_octave_down`` leaves picks whose normalised difference is under this (the octave-up
frames of phone-band speech sit at 0.09-0.13, interquartile; clean periodic frames under 0.02)."""


def _octave_down(
    d: NDArray[np.float32],
    energy: NDArray[np.float32],
    j: NDArray[np.intp],
    lo: int,
    hi: int,
    ratio: float,
) -> NDArray[np.intp]:
    """The chosen columns ``j`` (of d' over half-lags ``lo..hi``, shape ``(b,)``), each moved to
    twice its lag where the frame repeats better there: where the normalised difference
    ``d / energy`` (``1 - r``, on ``_Yin``'s half-lag grid, shape ``(b, n)``) at the best of the
    three half-lags around twice the lag is under ``ratio`` times its value at the chosen lag.

    YIN's first dip under the threshold is an octave up when a phone line has removed the
    fundamental and one harmonic dominates (F1 near 2 F0): the waveform then nearly repeats
    after half a period, but repeats clearly better after a whole one. A true period also dips
    at twice itself, but no deeper (jitter and decay make it shallower), so the ratio keeps
    true periods where they are. A pick that already repeats within ``_OCTAVE_CHECK_MIN`` is
    kept: on clean harmonic complexes both values are a few thousandths and their ratio is
    noise (a 250 Hz one moved a quarter of its frames an octave down without this).
    """
    b, n = d.shape
    k = j + lo
    k2 = 2 * k
    # Flat positions of column k and of the three half-lags around 2k (clipped to hi; 2k - 1
    # >= lo as k >= lo >= 1) in each row: one gather from d and one from the energies.
    at = np.empty((b, 4), dtype=np.intp)
    at[:, 0] = k
    np.minimum(k2[:, None] + _AROUND, hi, out=at[:, 1:])
    at += (np.arange(b) * n)[:, None]
    q = d.reshape(-1)[at] / np.maximum(energy.reshape(-1)[at], 1e-30)
    at_k = q[:, 0]
    best = q[:, 1:].argmin(axis=1)
    move = (k2 <= hi) & (at_k >= _OCTAVE_CHECK_MIN) & (q[:, 1:].min(axis=1) < ratio * at_k)
    if not np.logical_or.reduce(move):
        return j  # the usual case
    out: NDArray[np.intp] = np.where(move, np.minimum(k2 - 1 + best, hi) - lo, j)
    return out


def _refine(
    d: NDArray[np.float32],
    energy: NDArray[np.float32],
    rows: NDArray[np.intp],
    k: NDArray[np.intp],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """YIN step 5: parabolic interpolation of ``d`` (half-lag grid, C-contiguous, shape
    ``(b, n)``) around column ``k[i]`` of row ``rows[i]``, ``0 < k[i] < n - 1``. Returns the
    period in samples, ``d`` at it and ``energy`` (same grid and layout) at column ``k``, each
    of shape ``rows.shape``.
    """
    at = rows * d.shape[1] + k  # flat positions: one row gather, no 2-D index array
    near = windows(d, 3)[at - 1].astype(np.float64)
    d_l, d_c, d_r = near[:, 0], near[:, 1], near[:, 2]
    curv = d_l - 2.0 * d_c + d_r
    slope = d_l - d_r
    shift = np.zeros(k.shape[0])
    np.divide(slope, 2.0 * curv, out=shift, where=curv > 0.0)
    np.minimum(np.maximum(shift, -0.5, out=shift), 0.5, out=shift)  # np.clip: ~1 µs more
    value = np.maximum(d_c - 0.25 * slope * shift, 0.0)
    return 0.5 * (k + shift), value, energy.reshape(-1)[at].astype(np.float64)


_AROUND = np.arange(-1, 2)


@functools.lru_cache(maxsize=64)
def _fft_size(n: int) -> int:
    """Smallest 5-smooth integer >= ``n`` (sizes pocketfft handles fastest)."""
    m = n
    while True:
        r = m
        for f in (2, 3, 5):
            while r % f == 0:
                r //= f
        if r == 1:
            return m
        m += 1


def _drop_short_runs(f0: NDArray[np.float64], min_len: int) -> None:
    """Set voiced (non-NaN) runs of ``f0`` shorter than ``min_len`` frames to NaN, in place."""
    if min_len <= 1:
        return
    voiced = np.zeros(f0.shape[0] + 2, dtype=np.bool_)
    voiced[1:-1] = ~np.isnan(f0)
    edges = (voiced[1:] != voiced[:-1]).nonzero()[0].tolist()  # run starts and ends, alternating
    for s, e in zip(edges[0::2], edges[1::2], strict=True):
        if e - s < min_len:
            f0[s:e] = np.nan


def _neighbour_median(st: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per frame of a track (semitones, NaN where unvoiced, shape ``(n,)``), the median of the
    voiced among its six neighbours within ±3 frames; ``inf`` where none is voiced."""
    n = st.shape[0]
    padded = np.empty(n + 6)
    padded.fill(np.inf)  # unvoiced and out of range sort last and are not counted
    padded[3 : n + 3] = st
    padded[np.isnan(padded)] = np.inf
    around = windows(padded, 7)[:, _NEIGHBOURS]  # frames i-3..i-1 and i+1..i+3
    count = np.count_nonzero(around < np.inf, axis=1)
    around.sort(axis=1)
    at = np.arange(n) * _NEIGHBOURS.shape[0]
    flat = around.reshape(-1)
    lo = flat[at + np.maximum(count - 1, 0) // 2]
    hi = flat[at + np.minimum(count // 2, _NEIGHBOURS.shape[0] - 1)]
    out: NDArray[np.float64] = 0.5 * (lo + hi)  # inf + inf where none is voiced
    return out


_NEIGHBOURS = np.array([0, 1, 2, 4, 5, 6])


def _smooth_track(f0: NDArray[np.float64], lo_hz: float, hi_hz: float) -> NDArray[np.float64]:
    """Fold local octave jumps, then a 3-point median where both neighbours are voiced.

    Only when some consecutive voiced frames differ by more than 6 semitones: a frame whose F0
    sits an octave (±3 semitones) away from the median of its voiced neighbours within ±3
    frames is moved by that octave, if the result stays inside ``[lo_hz, hi_hz]`` (so runs of
    up to three octave-off frames inside a syllable fold back; with ±2, three did not).
    """
    voiced = ~np.isnan(f0)
    if np.count_nonzero(voiced) < 3:
        return f0
    st = 12.0 * np.log2(f0)  # NaN stays NaN
    steps = np.abs(st[1:] - st[:-1])
    if (steps > 6.0).any():  # NaN compares False
        delta = st - _neighbour_median(st)  # NaN or -inf where no neighbour is voiced
        lo_st, hi_st = 12.0 * math.log2(lo_hz), 12.0 * math.log2(hi_hz)
        folded = st.copy()
        for octave in (12.0, -12.0):
            moved = st - octave
            fix = (np.abs(delta - octave) <= 3.0) & (moved >= lo_st) & (moved <= hi_st)
            folded[fix] = moved[fix]
        st = folded
    # Each inner frame's median with its two neighbours (NaN if any is NaN: then kept as is);
    # the first and last frames have one neighbour and stay.
    a, b, c = st[:-2], st[1:-1], st[2:]
    med = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    st[1:-1] = np.where(np.isnan(med), b, med)  # st is this function's own array
    out: NDArray[np.float64] = 2.0 ** (st / 12.0)
    return out


def _voicing(aperiodicity: NDArray[np.float64], params: FeatureParams) -> float:
    """``ProsodyFeatures.voicing`` from the speech pitch frames' d' (NaN: not analysed)."""
    if aperiodicity.shape[0] == 0:
        return 0.0
    half = 0.5 * params.voicing_ramp
    if half <= 0.0:
        passed = int(np.count_nonzero(aperiodicity < params.voicing_threshold))
        return passed / int(aperiodicity.shape[0])
    weight = (params.voicing_threshold + half - aperiodicity) / (2.0 * half)
    np.minimum(np.fmax(weight, 0.0, out=weight), 1.0, out=weight)  # NaN (not analysed) -> 0
    return mean(weight)


def _pitch_stats(
    st: NDArray[np.float64],
    st_sorted: NDArray[np.float64],
    t: NDArray[np.float64],
    n_voiced: int,
    n_speech_pitch: int,
    params: FeatureParams,
) -> PitchFeatures:
    """``st``, ``t``: the voiced frames' F0 (semitones) and times (s), shape ``(n_voiced,)``;
    ``st_sorted``: ``st`` ascending."""
    ratio = min(1.0, n_voiced / n_speech_pitch)
    if n_voiced < params.min_voiced_frames:
        return PitchFeatures(None, None, ratio, None)
    q25, q50, q75 = _sorted_quantiles(st_sorted, (0.25, 0.5, 0.75))
    slope: float | None = None
    if (t[-1] - t[0]) * 1000.0 >= params.min_slope_span_ms:
        tc = t - mean(t)
        slope = float(np.dot(tc, st - mean(st)) / np.dot(tc, tc))
    return PitchFeatures(
        median_hz=2.0 ** (q50 / 12.0),
        iqr_semitones=q75 - q25,
        voiced_ratio=ratio,
        slope_semitones_per_s=slope,
    )


def _count_nuclei(
    block_power: NDArray[np.float64],
    voiced: NDArray[np.bool_],
    in_speech: NDArray[np.bool_],
    block_s: float,
    params: FeatureParams,
) -> int:
    """Syllable nuclei (de Jong & Wempe 2009) on the 10 ms intensity envelope.

    All three arrays share the 10 ms block grid (shape ``(n,)``).
    """
    n = block_power.shape[0]
    if n < 3:
        return 0
    taps = max(3, round(params.intensity_smoothing_ms / (1000.0 * block_s)) | 1)
    smooth = np.convolve(block_power, _smoothing_kernel(taps))[taps // 2 : taps // 2 + n]
    env = _power_db(smooth)
    env[~in_speech] = SILENCE_DBFS  # pauses inside the turn separate nuclei and hold none
    (loud,) = _quantiles(env[in_speech], (0.99,))
    peak_min_db = loud - params.nucleus_min_rel_db

    inner = env[1:-1]
    peaks = ((inner > env[:-2]) & (inner >= env[2:]) & (inner >= peak_min_db)).nonzero()[0] + 1
    if peaks.shape[0] == 0:
        return 0
    # Greedy merge left to right: a peak not separated from the last kept peak by a dip of
    # min_dip_db on both sides replaces it if louder, else is dropped. The dip between the
    # kept peak and the next is the running minimum of the envelope between consecutive
    # peaks (one reduceat), so the loop is linear in the number of peaks.
    between = np.minimum.reduceat(env, peaks)[:-1].tolist()  # min over [peak i, peak i+1)
    levels = env[peaks].tolist()
    min_dip = params.nucleus_min_dip_db
    kept = [0]
    dip = math.inf
    for i in range(1, len(levels)):
        dip = min(dip, between[i - 1])
        q = kept[-1]
        if levels[q] - dip >= min_dip and levels[i] - dip >= min_dip:
            kept.append(i)
            dip = math.inf
        elif levels[i] > levels[q]:
            kept[-1] = i
            dip = math.inf
    idx = peaks[np.asarray(kept, dtype=np.intp)]
    return int(np.count_nonzero(voiced[idx] & in_speech[idx]))


@functools.lru_cache(maxsize=8)
def _smoothing_kernel(taps: int) -> NDArray[np.float64]:
    """A ``taps``-point Hann window without its zero ends, normalised to sum 1 (read-only)."""
    window = np.hanning(taps + 2)[1:-1]
    kernel: NDArray[np.float64] = window / window.sum()
    kernel.flags.writeable = False
    return kernel


def _prosody(
    at: NDArray[np.intp],
    st_yin: NDArray[np.float64],
    st_sorted: NDArray[np.float64],
    t: NDArray[np.float64],
    frame_db: NDArray[np.float64],
    levels: NDArray[np.float64],
    speech_power: NDArray[np.float64],
    hop_s: float,
    params: FeatureParams,
    voicing: float,
) -> ProsodyFeatures:
    """``at``: the voiced frames; ``st_yin``, ``t``: their F0 (semitones, as YIN read it) and
    times (s), ``st_sorted``: ``st_yin`` ascending; ``frame_db``: every frame's level,
    ``levels``: the speech frames', sorted."""
    n_voiced = at.shape[0]
    heard = levels[np.searchsorted(levels, _DIGITAL_SILENCE_DBFS, side="right") :]
    level_dbfs: float | None = None
    level_range: float | None = None
    if heard.shape[0]:
        q10, q95 = _sorted_quantiles(heard, (0.10, 0.95))
        level_range = q95 - q10
        level_dbfs = float(_power_db(np.asarray([mean(speech_power)]))[0])
    if n_voiced < params.min_voiced_frames:
        return ProsodyFeatures(
            n_voiced, None, None, None, None, None, level_dbfs, level_range, voicing
        )
    st = _octave_corrected(st_yin, sorted_median(st_sorted))
    if st is not st_yin:  # some frames folded
        st_sorted = np.sort(st)
    lv = frame_db[at]
    loud = lv >= float(lv.max()) - params.pitch_range_level_db
    p10, p90 = _quantiles(st[loud], (0.10, 0.90))
    change: float | None = None
    contour: Contour | None = None
    # The frames in the contour window: a suffix, as t increases.
    tail = int(np.searchsorted(t, t[-1] - params.contour_window_ms / 1000.0 + 0.5 * hop_s))
    if (t.shape[0] - tail) * hop_s * 1000.0 >= params.contour_min_voiced_ms:
        tt = t[tail:]
        change = _theil_sen(tt, st[tail:]) * float(tt[-1] - tt[0])
        if change >= params.contour_threshold_semitones:
            contour = "rising"
        elif change <= -params.contour_threshold_semitones:
            contour = "falling"
        else:
            contour = "level"
    return ProsodyFeatures(
        voiced_frames=n_voiced,
        f0_level_hz=2.0 ** (_interquartile_mean(st_sorted) / 12.0),
        f0_p10_hz=2.0 ** (p10 / 12.0),
        pitch_range_semitones=p90 - p10,
        contour=contour,
        contour_change_semitones=change,
        level_dbfs=level_dbfs,
        level_range_db=level_range,
        voicing=voicing,
    )


def _interquartile_mean(v: NDArray[np.float64]) -> float:
    """Mean of the middle half of a non-empty 1-D array sorted ascending (``n // 4`` values
    dropped at each end; all of them under four)."""
    cut = v.shape[0] // 4
    return mean(v[cut : v.shape[0] - cut])


_OCTAVE_FOLD_SEMITONES = 9.0


def _octave_corrected(st: NDArray[np.float64], st_median: float) -> NDArray[np.float64]:
    """A turn's F0 in semitones with octave errors undone: every voiced frame more than 9
    semitones from the turn's median is moved by whole octaves toward it.

    YIN through the phone band (no fundamental below 300 Hz) reads whole syllables an octave
    off, and which ones changes with a few dB of line gain; ``_smooth_track`` only folds
    isolated frames. On the rated clips a pitch range over uncorrected F0 jumped between 2 and
    12 semitones with 6 dB of gain. Excited speech reaches 7-10 semitones under its median
    (a man at a 180 Hz median keeps a floor near 110 Hz), so the threshold is 9; an octave
    error split evenly with the true F0 (the median between them) is left as it is. Frame by
    frame against the median, not step by step along the track: one odd frame cannot shift
    the rest of the turn."""
    d = st - st_median
    far = np.maximum(np.abs(d) - _OCTAVE_FOLD_SEMITONES, 0.0)
    if not np.logical_or.reduce(far > 0.0):
        return st  # the usual case: nothing to fold (st itself, which callers do not modify)
    octaves = np.sign(d) * np.ceil(far / 12.0)
    out: NDArray[np.float64] = st - 12.0 * octaves
    return out


def _theil_sen(t: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Median of pairwise slopes (Theil 1950, Sen 1968); ``t`` strictly increasing."""
    i, j = _pairs(t.shape[0])
    return median((y[j] - y[i]) / (t[j] - t[i]))


@functools.lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Index pairs ``i < j`` of ``n`` points (the contour span holds at most a few dozen)."""
    i, j = np.triu_indices(n, k=1)
    i.setflags(write=False)
    j.setflags(write=False)
    return i, j


def _frame_spectra(x: NDArray[np.int16], frame: int) -> NDArray[np.float32]:
    """Power spectrum of each whole frame under a Hann window: shape ``(n // frame,
    frame // 2 + 1)``, float32 (50 Hz bins for 20 ms frames; single precision is plenty for a
    share of power or a sum over frames, and halves the work)."""
    frames = x.reshape(-1, frame) * _HANN[frame]
    spec = np.fft.rfft(frames, axis=1)
    power: NDArray[np.float32] = (spec.real**2 + spec.imag**2).astype(np.float32, copy=False)
    return power


_HANN: dict[int, NDArray[np.float32]] = {
    rate * FRAME_MS // 1000: np.hanning(rate * FRAME_MS // 1000 + 2)[1:-1].astype(np.float32)
    for rate in SUPPORTED_SAMPLE_RATES_HZ
}
"""Hann windows of one level frame per supported rate, without the zero end points."""


@dataclass(frozen=True, slots=True)
class TurnAcoustics:
    """A turn's acoustics for its record: ``measure_turn``'s result rounded to the precision
    the measurements carry (energy and tilt to 0.01 dB, F0 to 0.1 Hz, semitone figures to
    0.01, ratios to 0.001, speech rate to 0.01 Hz, jitter to 0.001 %, shimmer to 0.001 dB,
    arousal to 0.001), which also keeps the JSON stable; plus the unrounded measurements, which
    the speaker baseline (``core/prosody.py``) compares."""

    energy: Energy
    pitch: Pitch
    speech_rate_hz: float | None
    voice: Voice
    arousal: float | None
    """Prosodic arousal estimate in [-1, 1] (``arousal.AROUSAL_MODEL``), rounded."""
    arousal_score: float | None
    """The model's linear score before tanh, unrounded."""
    features: TurnFeatures


def speech_mask(
    n_frames: int, segments: tuple[tuple[int, int], ...], start_frame: int
) -> NDArray[np.bool_]:
    """A turn's speech mask: shape ``(n_frames,)``, True inside ``segments`` (``[start, end)``
    frame indices on the call's 20 ms grid) counted from the turn's first frame
    ``start_frame``."""
    mask = np.zeros(n_frames, dtype=np.bool_)
    for s, e in segments:
        mask[max(0, s - start_frame) : max(0, e - start_frame)] = True
    return mask


def turn_acoustics(
    pcm: NDArray[np.int16],
    segments: tuple[tuple[int, int], ...],
    start_frame: int,
    *,
    params: FeatureParams = FeatureParams(),
) -> TurnAcoustics:
    """Measure a turn for its record.

    ``pcm``: shape ``(n,)``, int16, 8 kHz, the turn's audio from ``start_frame`` on;
    ``segments``: the turn's speech spans as ``[start, end)`` frame indices on the same grid
    (20 ms frames), which become the speech mask. Raises ``ValueError`` as ``measure_turn``.
    """
    mask = speech_mask(pcm.shape[0] // (SAMPLE_RATE_HZ * FRAME_MS // 1000), segments, start_frame)
    measured = measure_turn(pcm, mask, params=params)
    m = measured.energy
    p = measured.pitch
    v = measured.voice
    score = _arousal.AROUSAL_MODEL.score(arousal_inputs(measured))
    return TurnAcoustics(
        energy=Energy(
            mean_dbfs=round(m.mean_dbfs, 2),
            p95_dbfs=round(m.p95_dbfs, 2),
            peak_dbfs=round(m.peak_dbfs, 2),
            dynamic_range_db=round(m.dynamic_range_db, 2),
        ),
        pitch=Pitch(
            median_hz=_round(p.median_hz, 1),
            iqr_semitones=_round(p.iqr_semitones, 2),
            voiced_ratio=round(p.voiced_ratio, 3),
            slope_semitones_per_s=_round(p.slope_semitones_per_s, 2),
        ),
        speech_rate_hz=_round(measured.speech_rate_hz, 2),
        voice=Voice(
            jitter_local_pct=_round(v.jitter_local_pct, 3),
            shimmer_local_db=_round(v.shimmer_local_db, 3),
            hnr_db=_round(v.hnr_db, 2),
            alpha_ratio_db=_round(v.alpha_ratio_db, 2),
            periods=v.periods,
        ),
        arousal=None if score is None else round(_arousal.arousal(score), 3),
        arousal_score=score,
        features=measured,
    )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
