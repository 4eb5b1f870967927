"""Tests for mise_twilio.core.features: per-turn energy, pitch, voicing and speech rate.

Signals are built to look like what arrives from Twilio: harmonic complexes with vibrato and
jitter, band-passed to the 300-3400 Hz telephone band (which removes the fundamental of low
voices), scaled to a speech-like level and sent through a μ-law encode/decode round trip.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from fixtures import signals
from fixtures.signals import harmonic_complex as _harmonic_complex
from mise_twilio.core.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE_HZ,
    SILENCE_DBFS,
    pcm16_to_ulaw,
    resample,
    ulaw_to_pcm16,
)
from mise_twilio.core.features import (
    FeatureParams,
    TurnFeatures,
    _smooth_track,
    measure_turn,
    pitch_track,
)

SR = SAMPLE_RATE_HZ


# --- signal helpers -------------------------------------------------------------------------


def harmonic_complex(
    f0: float,
    duration_s: float = 1.0,
    *,
    f0_end: float | None = None,
    harmonics: int = 10,
    seed: int = 0,
    sr: int = SR,
) -> NDArray[np.float64]:
    return _harmonic_complex(
        f0, duration_s, f0_end_hz=f0_end, harmonics=harmonics, seed=seed, sample_rate_hz=sr
    )


def telephone_band(x: NDArray[np.float64], sr: int = SR) -> NDArray[np.float64]:
    """Zero-phase FFT band-pass, 300-3400 Hz with 200 Hz raised-cosine skirts."""
    n = x.shape[0]
    nfft = 1 << max(n - 1, 1).bit_length()
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    rise = np.sin(0.5 * np.pi * np.clip((f - 200.0) / 200.0, 0.0, 1.0)) ** 2
    fall = np.sin(0.5 * np.pi * np.clip((3500.0 - f) / 200.0, 0.0, 1.0)) ** 2
    out: NDArray[np.float64] = np.fft.irfft(np.fft.rfft(x, nfft) * rise * fall, nfft)[:n]
    return out


def to_int16(x: NDArray[np.float64], level_dbfs: float) -> NDArray[np.int16]:
    """Scale to an RMS of ``level_dbfs`` (0 dBFS = RMS 32768) and round to int16."""
    rms = math.sqrt(float(np.mean(x**2))) or 1.0
    y = x / rms * 32768.0 * 10 ** (level_dbfs / 20)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def ulaw_round_trip(pcm: NDArray[np.int16]) -> NDArray[np.int16]:
    return np.frombuffer(ulaw_to_pcm16(pcm16_to_ulaw(pcm.tobytes())), dtype=np.int16)


def phone_line(
    x: NDArray[np.float64], *, level_dbfs: float = -20.0, snr_db: float | None = None, seed: int = 0
) -> NDArray[np.int16]:
    """Telephone band, optional white noise at ``snr_db``, speech level, μ-law round trip."""
    y = telephone_band(x)
    if snr_db is not None:
        noise = np.random.default_rng(seed + 1000).standard_normal(y.shape[0])
        noise *= math.sqrt(float(np.mean(y**2)) / float(np.mean(noise**2))) * 10 ** (-snr_db / 20)
        y = y + noise
    return ulaw_round_trip(to_int16(y, level_dbfs))


def semitones(a: float, b: float) -> float:
    return 12.0 * math.log2(a / b)


def assert_all_finite(f: TurnFeatures) -> None:
    values = [
        f.energy.mean_dbfs,
        f.energy.p95_dbfs,
        f.energy.peak_dbfs,
        f.energy.dynamic_range_db,
        f.pitch.median_hz,
        f.pitch.iqr_semitones,
        f.pitch.voiced_ratio,
        f.pitch.slope_semitones_per_s,
        f.speech_rate_hz,
        f.prosody.f0_p10_hz,
        f.prosody.pitch_range_semitones,
        f.prosody.contour_change_semitones,
        f.prosody.level_dbfs,
        f.voice.jitter_local_pct,
        f.voice.shimmer_local_db,
        f.voice.hnr_db,
        f.voice.alpha_ratio_db,
        None if f.tone is None else f.tone.frequency_hz,
        None if f.tone is None else f.tone.level_dbfs,
    ]
    for v in values:
        assert v is None or (isinstance(v, float) and math.isfinite(v)), f
    assert f.prosody.contour in (None, "rising", "falling", "level")
    assert (f.prosody.contour is None) == (f.prosody.contour_change_semitones is None)
    assert f.voice.periods >= 0 and f.prosody.voiced_frames >= 0
    assert 0.0 <= f.pitch.voiced_ratio <= 1.0
    assert f.energy.mean_dbfs >= SILENCE_DBFS
    assert f.energy.peak_dbfs <= 0.1  # a full-scale square wave is 0 dBFS


# --- pitch ----------------------------------------------------------------------------------

F0S = [80.0, 100.0, 120.0, 150.0, 200.0, 250.0, 300.0, 350.0]


@pytest.mark.parametrize("f0", F0S)
@pytest.mark.parametrize("snr_db", [None, 20.0])
def test_harmonic_complex_median_f0_within_a_semitone(f0: float, snr_db: float | None) -> None:
    pcm = phone_line(harmonic_complex(f0, seed=int(f0)), snr_db=snr_db, seed=int(f0))
    pitch = measure_turn(pcm).pitch
    assert pitch.median_hz is not None
    assert abs(semitones(pitch.median_hz, f0)) < 1.0, pitch
    assert pitch.voiced_ratio > 0.9, pitch
    # ±1 % vibrato spans ~0.35 semitones; an octave error in a quarter of frames would not fit.
    assert pitch.iqr_semitones is not None and pitch.iqr_semitones < 1.0, pitch


@pytest.mark.parametrize("f0", [80.0, 100.0, 120.0])
def test_low_voices_without_fundamental_have_no_octave_errors(f0: float) -> None:
    """Below 300 Hz the phone band removes the fundamental (and at 80 Hz the 2nd and 3rd
    harmonics too); YIN must still report F0, not a harmonic."""
    x = harmonic_complex(f0, 2.0, harmonics=40, seed=3)
    spectrum = np.abs(np.fft.rfft(telephone_band(x)))
    freqs = np.fft.rfftfreq(x.shape[0], 1.0 / SR)
    assert spectrum[np.abs(freqs - f0) < 5].max() < 1e-2 * spectrum.max()  # fundamental -40 dB
    pitch = measure_turn(phone_line(x)).pitch
    assert pitch.median_hz is not None
    assert abs(semitones(pitch.median_hz, f0)) < 0.5, pitch


def _smooth_track_reference(f0: list[float], lo_hz: float, hi_hz: float) -> list[float]:
    """``features._smooth_track`` as its docstring states it, frame by frame."""
    if sum(not math.isnan(v) for v in f0) < 3:
        return f0
    st = [12.0 * math.log2(v) for v in f0]
    n = len(st)
    if any(abs(st[i + 1] - st[i]) > 6.0 for i in range(n - 1)):
        folded = st[:]
        for i in range(n):
            near = [st[j] for j in range(i - 3, i + 4) if j != i and 0 <= j < n]
            near = sorted(v for v in near if not math.isnan(v))
            if math.isnan(st[i]) or not near:
                continue
            m = len(near)
            delta = st[i] - 0.5 * (near[(m - 1) // 2] + near[m // 2])
            for octave in (12.0, -12.0):
                moved = st[i] - octave
                if abs(delta - octave) <= 3.0 and 12 * math.log2(lo_hz) <= moved <= 12 * math.log2(
                    hi_hz
                ):
                    folded[i] = moved
        st = folded
    out = st[:]
    for i in range(1, n - 1):
        trio = st[i - 1 : i + 2]
        if not any(math.isnan(v) for v in trio):
            out[i] = sorted(trio)[1]
    return [2.0 ** (v / 12.0) for v in out]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.just(math.nan), st.floats(60.0, 400.0)), min_size=0, max_size=40).map(
        lambda v: [x * 2.0 if i % 5 == 1 and x < 200.0 else x for i, x in enumerate(v)]
    )
)
def test_f0_track_smoothing_folds_octave_jumps_as_documented(f0: list[float]) -> None:
    """Octave-off frames fold toward the median of their voiced neighbours within ±3 frames,
    then a 3-point median; checked against a frame-by-frame reading of the docstring."""
    got = _smooth_track(np.asarray(f0, dtype=np.float64), 60.0, 400.0)
    np.testing.assert_allclose(got, _smooth_track_reference(f0, 60.0, 400.0), rtol=1e-12)


def test_f0_track_smoothing_folds_a_frame_read_an_octave_up() -> None:
    f0 = np.array([120.0, 121.0, 240.0, 122.0, 123.0, np.nan, 124.0, 250.0, np.nan])
    got = _smooth_track(f0, 60.0, 400.0)
    # Frame 2 folds to 120 and the 3-point median then evens frames 1-2; frame 7's voiced
    # neighbours (123, 124) fold it to 125; unvoiced frames stay unvoiced.
    np.testing.assert_allclose(
        got, [120.0, 120.0, 121.0, 122.0, 123.0, np.nan, 124.0, 125.0, np.nan], rtol=1e-12
    )


def test_front_vowel_at_300_hz_is_not_read_as_200_hz() -> None:
    """An /i/-like spectrum (energy at 2.1-3 kHz only) at F0 = 300 Hz: the dip of the
    difference function at the 26.7-sample period is narrower than a sample, so an integer
    lag grid misses it and picks 1.5 periods (200 Hz). The half-sample grid must not."""
    rng = np.random.default_rng(7)
    n = SR
    t = np.arange(n) / SR
    phase = 2.0 * np.pi * np.cumsum(300.0 * (1.0 + 0.01 * np.sin(2 * np.pi * 5 * t))) / SR
    x = np.zeros(n)
    for k in range(1, 13):
        fk = 300.0 * k
        gain = sum(1.0 / math.hypot(1.0, (fk - fc) / bw) for fc, bw in ((2290, 100), (3010, 120)))
        x += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / math.sqrt(k)
    pitch = measure_turn(phone_line(x, snr_db=20.0)).pitch
    assert pitch.median_hz is not None
    assert abs(semitones(pitch.median_hz, 300.0)) < 0.5, pitch


def test_white_noise_is_unvoiced() -> None:
    rng = np.random.default_rng(11)
    for pcm in (
        to_int16(rng.standard_normal(2 * SR), -20.0),
        phone_line(rng.standard_normal(2 * SR)),
    ):
        pitch = measure_turn(pcm).pitch
        assert pitch.voiced_ratio < 0.05, pitch
        assert pitch.median_hz is None, pitch


def test_glide_slope_matches_semitones_per_second() -> None:
    true_slope = semitones(200.0, 120.0) / 1.0  # 8.84 st/s, exponential glide over 1 s
    pcm = phone_line(harmonic_complex(120.0, 1.0, f0_end=200.0))
    pitch = measure_turn(pcm).pitch
    assert pitch.slope_semitones_per_s is not None
    assert pitch.slope_semitones_per_s == pytest.approx(true_slope, rel=0.1), pitch
    assert pitch.median_hz is not None
    assert abs(semitones(pitch.median_hz, math.sqrt(120.0 * 200.0))) < 0.5
    # Uniform in semitones over 8.84 st: the IQR is half of that.
    assert pitch.iqr_semitones == pytest.approx(true_slope / 2, rel=0.15)


def test_falling_glide_has_negative_slope() -> None:
    pitch = measure_turn(phone_line(harmonic_complex(220.0, 1.5, f0_end=140.0))).pitch
    assert pitch.slope_semitones_per_s is not None
    assert pitch.slope_semitones_per_s == pytest.approx(semitones(140.0, 220.0) / 1.5, rel=0.1)


def test_steady_tone_slope_near_zero() -> None:
    pitch = measure_turn(phone_line(harmonic_complex(150.0, 2.0))).pitch
    assert pitch.slope_semitones_per_s is not None
    assert abs(pitch.slope_semitones_per_s) < 0.3


def test_16k_input_is_measured_at_its_rate() -> None:
    x = harmonic_complex(180.0, 1.0, harmonics=20, sr=16000)
    pcm = ulaw_round_trip(to_int16(x, -20.0))
    f = measure_turn(pcm, sample_rate_hz=16000)
    assert f.pitch.median_hz is not None
    assert abs(semitones(f.pitch.median_hz, 180.0)) < 0.5
    assert f.voice.jitter_local_pct is not None and f.voice.hnr_db is not None
    assert_all_finite(f)


# --- the turn's own prosody -----------------------------------------------------------------


def glide_turn(f_start: float, f_end: float, *, level_s: float = 0.8) -> NDArray[np.int16]:
    """A level stretch at ``f_start``, then a 0.5 s glide to ``f_end``: the final contour."""
    level = signals.pulse_train(f_start, level_s, jitter_sd=0.003, seed=1)[0][:-480]
    glide = signals.pulse_train(f_start, 0.5, f0_end_hz=f_end, jitter_sd=0.003, seed=2)[0][480:]
    return signals.to_pcm(np.concatenate([level, glide]))


@pytest.mark.parametrize(
    ("f_start", "f_end", "contour"),
    [
        (120.0, 160.0, "rising"),  # +5 semitones
        (200.0, 260.0, "rising"),
        (180.0, 130.0, "falling"),  # -5.6 semitones
        (110.0, 90.0, "falling"),
        (140.0, 142.0, "level"),  # +0.25
        (150.0, 158.9, "level"),  # +1.0: under the 1.5 semitone threshold
        (150.0, 141.6, "level"),  # -1.0
        (230.0, 226.0, "level"),
    ],
)
def test_final_contour_of_glides(f_start: float, f_end: float, contour: str) -> None:
    prosody = measure_turn(glide_turn(f_start, f_end)).prosody
    assert prosody.contour == contour, prosody
    assert prosody.contour_change_semitones is not None
    # The span examined is the last 500 ms of voicing, which holds the whole glide.
    assert prosody.contour_change_semitones == pytest.approx(semitones(f_end, f_start), abs=0.8)


def test_contour_of_a_question_rise_harmonic_complex() -> None:
    pcm = phone_line(
        np.concatenate([harmonic_complex(150.0, 1.0), harmonic_complex(150.0, 0.4, f0_end=210.0)])
    )
    assert measure_turn(pcm).prosody.contour == "rising"


def test_contour_needs_voicing_at_the_end() -> None:
    short = signals.to_pcm(signals.pulse_train(150.0, 0.06)[0])  # ~100 ms voiced: < 140
    prosody = measure_turn(short).prosody
    assert prosody.contour is None and prosody.contour_change_semitones is None


def test_pitch_range_of_a_glide() -> None:
    x = signals.pulse_train(100.0, 2.0, f0_end_hz=150.0, seed=1)[0]  # 7 semitones, linear
    prosody = measure_turn(signals.to_pcm(x)).prosody
    assert prosody.pitch_range_semitones is not None
    assert abs(prosody.pitch_range_semitones - 0.8 * semitones(150, 100)) < 0.5  # p10 to p90
    p10_hz = 100 * 1.5**0.1
    assert prosody.f0_p10_hz is not None and abs(semitones(prosody.f0_p10_hz, p10_hz)) < 0.5


def test_pitch_range_ignores_a_syllable_read_an_octave_up() -> None:
    # Two thirds of the turn at 150-170 Hz, a third at twice that (YIN's octave error through
    # the phone band): measured modulo the octave, the range is that of the true F0.
    a = signals.pulse_train(150.0, 1.0, f0_end_hz=170.0, seed=1)[0]
    b = signals.pulse_train(300.0, 0.5, f0_end_hz=320.0, seed=2)[0]
    prosody = measure_turn(signals.to_pcm(np.concatenate([a, b]))).prosody
    assert prosody.pitch_range_semitones is not None and prosody.pitch_range_semitones < 3.0


def _loud_then_quiet(quiet_db: float) -> NDArray[np.int16]:
    """1 s of a 150 Hz vowel, then 0.6 s of a 100 Hz one ``quiet_db`` under it (RMS)."""
    a = signals.pulse_train(150.0, 1.0, seed=1)[0]
    b = signals.pulse_train(100.0, 0.6, seed=2)[0]
    b *= math.sqrt(float(np.mean(a**2)) / float(np.mean(b**2))) * 10 ** (quiet_db / 20)
    return signals.to_pcm(np.concatenate([a, b]))


def test_pitch_range_leaves_out_frames_far_under_the_loudest() -> None:
    # A 150 Hz vowel, then a 100 Hz one 28 dB quieter (a trailing mumble, still voiced):
    # pitch range counts voiced frames within 20 dB of the loudest, so it is the loud one's.
    prosody = measure_turn(_loud_then_quiet(-28.0)).prosody
    assert prosody.voiced_frames >= 75  # both vowels voiced
    assert prosody.pitch_range_semitones is not None and prosody.pitch_range_semitones < 1.0


def test_voiced_frames_far_under_the_loudest_carry_no_f0_but_count_in_voicing() -> None:
    # The quiet vowel 36 dB under the loud one: past f0_range_db (30), inside
    # voicing_range_db (45). Its frames stay voiced for the voicing share, but give no F0.
    pcm = _loud_then_quiet(-36.0)
    track = pitch_track(pcm)
    loud, quiet = track[5:50], track[58:78]
    assert np.count_nonzero(~np.isnan(loud)) >= 40 and np.nanmedian(loud) == pytest.approx(
        150, rel=0.03
    )
    assert np.isnan(quiet).all()
    ungated = FeatureParams(f0_range_db=math.inf)
    quiet_ungated = pitch_track(pcm, params=ungated)[58:78]
    assert np.nanmedian(quiet_ungated) == pytest.approx(100, rel=0.03)  # voiced when asked
    gated, every = measure_turn(pcm), measure_turn(pcm, params=ungated)
    assert gated.prosody.voicing == every.prosody.voicing
    assert gated.prosody.voicing > 0.9
    assert gated.pitch.voiced_ratio < every.pitch.voiced_ratio - 0.3
    # 28 dB under: inside the gate, F0 kept.
    assert np.nanmedian(pitch_track(_loud_then_quiet(-28.0))[58:78]) == pytest.approx(100, rel=0.03)


def test_pitch_track_is_the_track_measure_turn_summarises() -> None:
    pcm = signals.to_pcm(signals.pulse_train(120.0, 1.2, f0_end_hz=160.0, seed=5)[0])
    mask = np.ones(pcm.shape[0] // 160, dtype=np.bool_)
    mask[20:25] = False
    track = pitch_track(pcm, mask)
    assert track.shape == mask.shape and track.dtype == np.float64
    assert np.isnan(track[20:25]).all()  # outside speech: unvoiced
    pitch = measure_turn(pcm, mask).pitch
    voiced = track[~np.isnan(track)]
    assert pitch.voiced_ratio == pytest.approx(voiced.shape[0] / np.count_nonzero(mask))
    st = np.sort(12 * np.log2(voiced))
    assert pitch.median_hz == pytest.approx(2 ** (np.median(st) / 12))
    assert np.isnan(pitch_track(np.zeros(800, dtype=np.int16))).all()
    assert pitch_track(np.zeros(100, dtype=np.int16)).shape == (0,)
    with pytest.raises(ValueError, match="speech_mask"):
        pitch_track(pcm, mask[:-1])


def test_f0_level_is_not_pulled_by_a_fifth_of_the_turn_elsewhere() -> None:
    # 1.5 s at 120 Hz, then 0.4 s at 180 Hz (+7 semitones: not an octave error): the level is
    # an interquartile mean, so the top fifth of frames does not move it (a mean: +1.5).
    x = phone_line(np.concatenate([harmonic_complex(120.0, 1.5), harmonic_complex(180.0, 0.4)]))
    level = measure_turn(x).prosody.f0_level_hz
    assert level is not None and abs(semitones(level, 120.0)) < 0.3, level


def test_level_is_the_active_speech_level() -> None:
    x = phone_line(harmonic_complex(150.0, 2.0), level_dbfs=-26.0)
    with_loss = x.copy()
    with_loss[8000:10400] = 0  # 300 ms Twilio never sent, zero-filled, inside speech
    a, b = measure_turn(x).prosody, measure_turn(with_loss).prosody
    assert a.level_dbfs == pytest.approx(-26.0, abs=0.5)
    assert b.level_dbfs == pytest.approx(-26.0 + 10 * math.log10(1 - 0.15), abs=0.5)


# --- speech mask ----------------------------------------------------------------------------


def test_speech_mask_limits_statistics_to_speech_frames() -> None:
    loud = to_int16(np.sin(2 * np.pi * 437.0 * np.arange(SR) / SR), -10.0)
    quiet = phone_line(harmonic_complex(200.0, 1.0), level_dbfs=-35.0)
    pcm = np.concatenate([loud, quiet])
    mask = np.zeros(pcm.shape[0] // FRAME_SAMPLES, dtype=np.bool_)
    mask[mask.shape[0] // 2 :] = True
    f = measure_turn(pcm, mask)
    assert f.energy.peak_dbfs == pytest.approx(-35.0, abs=1.5)
    assert f.pitch.median_hz is not None
    assert abs(semitones(f.pitch.median_hz, 200.0)) < 0.5
    assert f.pitch.voiced_ratio > 0.9  # of the speech frames only
    # Without the mask the loud sine (periodic at 437 Hz, outside the F0 range) dominates levels.
    assert measure_turn(pcm).energy.peak_dbfs == pytest.approx(-10.0, abs=0.5)


def test_pitch_outside_speech_is_unvoiced() -> None:
    pcm = phone_line(harmonic_complex(150.0, 2.0))
    mask = np.zeros(pcm.shape[0] // FRAME_SAMPLES, dtype=np.bool_)
    mask[:10] = True  # 200 ms of speech, the rest (still voiced audio) is not speech
    f = measure_turn(pcm, mask)
    assert f.pitch.voiced_ratio > 0.8
    assert f.pitch.slope_semitones_per_s is not None  # 200 ms span
    assert f.speech_rate_hz is not None
    full = measure_turn(pcm)
    assert full.speech_rate_hz is not None
    # Per second of speech: the same single nucleus over 0.2 s instead of 2 s.
    assert f.speech_rate_hz > full.speech_rate_hz


def test_no_speech_frames() -> None:
    pcm = phone_line(harmonic_complex(150.0, 1.0))
    f = measure_turn(pcm, np.zeros(pcm.shape[0] // FRAME_SAMPLES, dtype=np.bool_))
    assert f.energy.mean_dbfs == SILENCE_DBFS
    assert f.energy.dynamic_range_db == 0.0
    assert f.pitch.median_hz is None and f.pitch.voiced_ratio == 0.0
    assert f.speech_rate_hz is None


# --- energy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("level_dbfs", [-3.0, -20.0, -45.0])
@pytest.mark.parametrize("freq", [437.0, 1000.0, 2875.0])
def test_sine_level(level_dbfs: float, freq: float) -> None:
    amplitude = 32768.0 * 10 ** (level_dbfs / 20) * math.sqrt(2.0)
    t = np.arange(2 * SR) / SR
    pcm = np.round(amplitude * np.sin(2 * np.pi * freq * t + 0.3)).astype(np.int16)
    e = measure_turn(pcm).energy
    assert e.mean_dbfs == pytest.approx(level_dbfs, abs=0.5)
    assert e.p95_dbfs >= e.mean_dbfs - 1e-9  # equal up to rounding for a steady sine
    assert e.peak_dbfs >= e.p95_dbfs
    assert 0.0 <= e.dynamic_range_db < 0.5


def test_energy_percentiles_follow_frame_levels() -> None:
    """Four 0.5 s steps at -40, -30, -20, -10 dBFS."""
    t = np.arange(SR // 2) / SR
    steps = [
        to_int16(np.sin(2 * np.pi * 500.0 * t), level) for level in (-40.0, -30.0, -20.0, -10.0)
    ]
    e = measure_turn(np.concatenate(steps)).energy
    assert e.mean_dbfs == pytest.approx(-25.0, abs=0.3)
    assert e.peak_dbfs == pytest.approx(-10.0, abs=0.3)
    assert e.p95_dbfs == pytest.approx(-10.0, abs=0.3)
    assert e.dynamic_range_db == pytest.approx(30.0, abs=0.5)


def test_energy_quantiles_are_p10_and_p95_of_frame_levels() -> None:
    """41 frames stepping from -50 to -10 dBFS, 1 dB apart: known p10 / p95 by interpolation."""
    frame = np.arange(SR // 50) / SR
    levels = np.arange(-50.0, -9.0, 1.0)
    pcm = np.concatenate([to_int16(np.sin(2 * np.pi * 500.0 * frame), lv) for lv in levels])
    e = measure_turn(pcm).energy
    p10, p95 = np.quantile(levels, [0.10, 0.95])
    assert e.p95_dbfs == pytest.approx(p95, abs=0.1)
    assert e.dynamic_range_db == pytest.approx(p95 - p10, abs=0.1)


def test_digital_silence() -> None:
    for pcm in (np.zeros(SR, dtype=np.int16), ulaw_round_trip(np.zeros(SR, dtype=np.int16))):
        f = measure_turn(pcm)
        assert_all_finite(f)
        assert f.energy.mean_dbfs == SILENCE_DBFS
        assert f.energy.peak_dbfs == SILENCE_DBFS
        assert f.energy.dynamic_range_db == 0.0
        assert f.pitch.median_hz is None and f.pitch.voiced_ratio == 0.0
        assert f.speech_rate_hz == 0.0


def test_silence_with_a_short_burst_of_voice() -> None:
    pcm = np.zeros(2 * SR, dtype=np.int16)
    pcm[SR : SR + 2400] = phone_line(harmonic_complex(130.0, 0.3))
    f = measure_turn(pcm)
    assert_all_finite(f)
    assert f.energy.peak_dbfs > -25.0
    assert f.energy.dynamic_range_db > 50.0
    assert f.pitch.median_hz is not None
    assert abs(semitones(f.pitch.median_hz, 130.0)) < 0.5


# --- speech rate ----------------------------------------------------------------------------


def bursts(
    rate_hz: float, duration_s: float, f0: float = 140.0, duty: float = 0.6
) -> NDArray[np.int16]:
    """Harmonic complex gated into ``rate_hz`` syllable-like bursts (sin^2 envelope over
    ``duty`` of each period, silence in between)."""
    x = harmonic_complex(f0, duration_s, seed=5)
    phase = (np.arange(x.shape[0]) / SR * rate_hz) % 1.0
    env = np.where(phase < duty, np.sin(np.pi * phase / duty) ** 2, 0.0)
    return phone_line(x * env)


@pytest.mark.parametrize("rate_hz", [2.5, 4.0, 6.0])
def test_speech_rate_of_syllable_bursts(rate_hz: float) -> None:
    f = measure_turn(bursts(rate_hz, 3.0))
    assert f.speech_rate_hz is not None
    assert f.speech_rate_hz == pytest.approx(rate_hz, rel=0.2)
    assert f.pitch.median_hz is not None and abs(semitones(f.pitch.median_hz, 140.0)) < 0.5


def test_speech_rate_counts_shallow_modulation_once() -> None:
    """±0.5 dB wobble at 4 Hz is below the 2 dB dip criterion: one nucleus, not twelve."""
    x = harmonic_complex(140.0, 3.0, seed=6)
    t = np.arange(x.shape[0]) / SR
    wobble = 10 ** (0.5 * np.sin(2 * np.pi * 4.0 * t) / 20)
    f = measure_turn(phone_line(x * wobble))
    assert f.speech_rate_hz is not None
    assert f.speech_rate_hz < 1.0


def test_speech_rate_needs_voicing() -> None:
    """Noise bursts at 4 Hz have intensity peaks but no voiced nuclei."""
    rng = np.random.default_rng(8)
    noise = rng.standard_normal(3 * SR)
    phase = (np.arange(noise.shape[0]) / SR * 4.0) % 1.0
    env = np.where(phase < 0.6, np.sin(np.pi * phase / 0.6) ** 2, 0.0)
    f = measure_turn(phone_line(noise * env))
    assert f.speech_rate_hz == 0.0


# --- espeak-ng ------------------------------------------------------------------------------

ESPEAK = shutil.which("espeak-ng")


@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed")
def test_espeak_pitch_setting_orders_median_f0(tmp_path: Path) -> None:
    assert ESPEAK is not None
    text = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."
    medians = []
    for p in (20, 50, 80):
        path = tmp_path / f"p{p}.wav"
        subprocess.run([ESPEAK, "-p", str(p), "-w", str(path), text], check=True, timeout=60)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        pcm = phone_line(resample(raw, rate, SR).astype(np.float64), level_dbfs=-22.0)
        f = measure_turn(pcm)
        pitch = f.pitch
        assert pitch.median_hz is not None
        assert 60.0 < pitch.median_hz < 300.0
        # Sentence intonation spans a few semitones; locking onto formant lags would not.
        assert pitch.iqr_semitones is not None and pitch.iqr_semitones < 6.0, pitch
        assert pitch.voiced_ratio > 0.2
        assert f.speech_rate_hz is not None and 1.5 < f.speech_rate_hz < 8.0
        medians.append(pitch.median_hz)
    assert medians[0] < medians[1] < medians[2], medians
    assert semitones(medians[2], medians[0]) > 3.0


# --- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pcm",
    [
        np.zeros(1600, dtype=np.float32),
        np.zeros(1600, dtype=np.int32),
        np.zeros(1600, dtype=np.uint8),
        np.zeros((2, 800), dtype=np.int16),
        [0] * 1600,
    ],
)
def test_rejects_bad_pcm(pcm: object) -> None:
    with pytest.raises(ValueError, match="pcm must be a 1-D numpy array of dtype int16"):
        measure_turn(pcm)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mask",
    [
        np.ones(9, dtype=np.bool_),
        np.ones(11, dtype=np.bool_),
        np.ones(10, dtype=np.int8),
        np.ones((10, 1), dtype=np.bool_),
        [True] * 10,
    ],
)
def test_rejects_bad_mask(mask: object) -> None:
    pcm = np.zeros(1600 + 100, dtype=np.int16)  # 10 whole frames and a partial one
    with pytest.raises(ValueError, match=r"speech_mask must be a bool array of shape \(10,\)"):
        measure_turn(pcm, mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [0, 11025, 22050, 44100, 48000])
def test_rejects_unsupported_sample_rate(rate: int) -> None:
    with pytest.raises(ValueError, match="unsupported sample_rate_hz"):
        measure_turn(np.zeros(1600, dtype=np.int16), sample_rate_hz=rate)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"f0_min_hz": 400.0, "f0_max_hz": 60.0},
        {"f0_min_hz": 0.0},
        {"yin_threshold": 0.0},
        {"voicing_threshold": 1.5},
        {"yin_window_ms": 0.0},
        {"nucleus_min_dip_db": -1.0},
        {"min_voiced_frames": 1},
    ],
)
def test_rejects_bad_params(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FeatureParams(**kwargs)  # type: ignore[arg-type]


def test_rejects_f0_max_beyond_what_the_rate_resolves() -> None:
    with pytest.raises(ValueError, match="too high"):
        measure_turn(np.zeros(1600, dtype=np.int16), params=FeatureParams(f0_max_hz=5000.0))


# --- properties -----------------------------------------------------------------------------


@st.composite
def turns(draw: st.DrawFn) -> tuple[NDArray[np.int16], NDArray[np.bool_] | None]:
    n = draw(st.integers(0, 3 * SR))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "gauss", "tone", "sparse", "clipped", "constant"]))
    if kind == "uniform":
        pcm = rng.integers(-32768, 32768, n).astype(np.int16)
    elif kind == "gauss":
        scale = 10 ** draw(st.floats(0.0, 4.5))
        pcm = np.clip(rng.standard_normal(n) * scale, -32768, 32767).astype(np.int16)
    elif kind == "tone" and n > 0:
        f0 = draw(st.floats(40.0, 1000.0))
        x = harmonic_complex(f0, n / SR, seed=int(f0))
        pcm = ulaw_round_trip(to_int16(x, draw(st.floats(-90.0, 0.0))))
    elif kind == "sparse":
        pcm = np.zeros(n, dtype=np.int16)
        hits = rng.integers(0, max(n, 1), size=min(n, 20))
        if n:
            pcm[hits] = rng.integers(-32768, 32768, hits.shape[0]).astype(np.int16)
    elif kind == "clipped":
        pcm = np.where(rng.standard_normal(n) > 0, 32767, -32768).astype(np.int16)
    else:
        pcm = np.full(n, draw(st.integers(-32768, 32767)), dtype=np.int16)
    mask: NDArray[np.bool_] | None = None
    if draw(st.booleans()):
        mask = rng.random(n // FRAME_SAMPLES) < draw(st.floats(0.0, 1.0))
    return pcm, mask


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns())
def test_never_raises_and_values_are_finite_or_none(
    turn: tuple[NDArray[np.int16], NDArray[np.bool_] | None],
) -> None:
    pcm, mask = turn
    f = measure_turn(pcm, mask)
    assert_all_finite(f)
    e = f.energy
    assert e.peak_dbfs >= e.p95_dbfs >= SILENCE_DBFS
    assert e.dynamic_range_db >= 0.0
    if f.pitch.median_hz is not None:
        assert 55.0 <= f.pitch.median_hz <= 420.0
        assert f.pitch.iqr_semitones is not None and f.pitch.iqr_semitones >= 0.0
    if f.speech_rate_hz is not None:
        assert f.speech_rate_hz >= 0.0


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 2**32 - 1))
def test_short_turns(n: int, seed: int) -> None:
    pcm = np.random.default_rng(seed).integers(-3000, 3000, n).astype(np.int16)
    assert_all_finite(measure_turn(pcm))


def test_threads_measuring_turns_at_once_get_what_one_thread_gets() -> None:
    """``measure_turn`` keeps its YIN work buffers from turn to turn, one set per thread
    (numpy releases the GIL inside the FFTs): turns of different lengths measured by four
    threads at once read exactly as when measured one after another."""
    from concurrent.futures import ThreadPoolExecutor

    turns = [
        phone_line(harmonic_complex(f0, duration_s, seed=seed), snr_db=20.0, seed=seed)
        for seed, (f0, duration_s) in enumerate(
            [(110.0, 0.5), (180.0, 1.7), (240.0, 3.1), (95.0, 0.3)] * 3
        )
    ]
    alone = [repr(measure_turn(pcm)) for pcm in turns]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda pcm: repr(measure_turn(pcm)), turns)) == alone
