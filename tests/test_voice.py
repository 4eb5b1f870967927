"""core/voice.py through features.measure_turn: jitter, shimmer, HNR and the alpha ratio on
synthetic signals whose values are known by construction, sent through μ-law like Twilio's.

Tolerances (stated, and what the method reaches on these signals):

* jitter: within 20 % of the pulse train's own jitter at F0 100-150 Hz, 30 % at 220 Hz (the
  LPC-residual period matching reads 10-30 % high above 200 Hz, where a period is 36 samples);
* shimmer: the same relative tolerance plus 0.03 dB;
* perfectly periodic pulses: jitter < 0.12 %, shimmer < 0.15 dB (integer-length windows);
* HNR of a steady harmonic complex plus noise in the same band: within 1 dB of the SNR for
  5-20 dB (the noise is the only aperiodic part, so HNR = SNR by construction), above 25 dB at
  30 dB (μ-law quantisation noise alone sits near 35 dB).
"""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import signals
from mise_twilio.core.features import measure_turn

JITTER_CASES = [(100.0, 0.2), (150.0, 0.2), (220.0, 0.3)]


@pytest.mark.parametrize(("f0", "tol"), JITTER_CASES)
@pytest.mark.parametrize("jitter_sd", [0.005, 0.01])
def test_jitter_matches_the_pulse_train(f0: float, tol: float, jitter_sd: float) -> None:
    x, times, _ = signals.pulse_train(f0, 2.0, jitter_sd=jitter_sd, seed=3)
    got = measure_turn(signals.to_pcm(x)).voice.jitter_local_pct
    want = signals.expected_jitter_pct(times)
    assert got is not None
    assert abs(got - want) <= tol * want, (got, want)


@pytest.mark.parametrize(("f0", "tol"), JITTER_CASES)
@pytest.mark.parametrize("shimmer_sd", [0.03, 0.06])
def test_shimmer_matches_the_pulse_train(f0: float, tol: float, shimmer_sd: float) -> None:
    x, _, amps = signals.pulse_train(f0, 2.0, jitter_sd=0.003, shimmer_sd=shimmer_sd, seed=4)
    got = measure_turn(signals.to_pcm(x)).voice.shimmer_local_db
    want = signals.expected_shimmer_db(amps)
    assert got is not None
    assert abs(got - want) <= tol * want + 0.03, (got, want)


@pytest.mark.parametrize("f0", [100.0, 150.0, 220.0])
def test_perfectly_periodic_pulses_have_no_jitter_or_shimmer(f0: float) -> None:
    x, _, _ = signals.pulse_train(f0, 1.5)
    voice = measure_turn(signals.to_pcm(x)).voice
    assert voice.jitter_local_pct is not None and voice.jitter_local_pct < 0.12
    assert voice.shimmer_local_db is not None and voice.shimmer_local_db < 0.15
    assert voice.hnr_db is not None and voice.hnr_db > 25.0
    assert voice.periods > 0.9 * 1.5 * f0


@pytest.mark.parametrize("f0", [110.0, 220.0])
@pytest.mark.parametrize("snr_db", [5.0, 10.0, 15.0, 20.0])
def test_hnr_reads_the_snr_of_harmonics_plus_noise(f0: float, snr_db: float) -> None:
    x = signals.add_noise(signals.steady_harmonics(f0, 2.0, seed=1), snr_db, seed=5)
    hnr = measure_turn(signals.to_pcm(x)).voice.hnr_db
    assert hnr is not None
    assert abs(hnr - snr_db) <= 1.0, hnr


def test_hnr_at_high_snr_is_limited_by_mu_law_only() -> None:
    x = signals.add_noise(signals.steady_harmonics(110.0, 2.0, seed=1), 30.0, seed=5)
    hnr = measure_turn(signals.to_pcm(x)).voice.hnr_db
    assert hnr is not None and hnr > 25.0


def test_more_jitter_reads_more_jitter_and_less_hnr() -> None:
    values = []
    for sd in (0.002, 0.01, 0.03):
        x, _, _ = signals.pulse_train(140.0, 2.0, jitter_sd=sd, seed=7)
        values.append(measure_turn(signals.to_pcm(x)).voice)
    jitters = [v.jitter_local_pct for v in values]
    hnrs = [v.hnr_db for v in values]
    assert None not in jitters and None not in hnrs
    assert jitters == sorted(jitters)  # type: ignore[type-var]
    assert hnrs == sorted(hnrs, reverse=True)  # type: ignore[type-var]


def test_alpha_ratio_is_higher_for_a_brighter_voice() -> None:
    dull = signals.pulse_train(120.0, 1.0, formants=((500.0, 150.0), (1000.0, 200.0)))[0]
    bright = signals.pulse_train(
        120.0, 1.0, formants=((700.0, 80.0), (1800.0, 90.0), (2600.0, 100.0))
    )[0]
    a = measure_turn(signals.to_pcm(dull)).voice.alpha_ratio_db
    b = measure_turn(signals.to_pcm(bright)).voice.alpha_ratio_db
    assert a is not None and b is not None and b > a + 6.0


def test_alpha_ratio_of_known_band_energies() -> None:
    # A 100 Hz harmonic complex whose harmonics 4-9 (400-900 Hz) carry as much power as 11-33
    # (1100-3300 Hz), then the high ones 10 dB down: 0 and -10 dB. Each harmonic sits on a 50 Hz
    # bin and its Hann leakage stays inside its band, but neighbouring harmonics (two bins
    # apart) interfere in the bin between them by their relative phase: ±0.5 dB. Then 0 dB
    # again with a 200 Hz harmonic as strong as the whole low band: power under 300 Hz is in
    # neither band (counted as low, it would read -3 dB).
    t = np.arange(16000) / 8000
    rng = np.random.default_rng(2)
    for high_db, below_300_hz in ((0.0, 0.0), (-10.0, 0.0), (0.0, 1.0)):
        low = [(k, 1.0 / np.sqrt(6)) for k in range(4, 10)]
        high = [(k, 10 ** (high_db / 20) / np.sqrt(23)) for k in range(11, 34)]
        x = sum(a * np.sin(2 * np.pi * 100 * k * t + rng.uniform(0, 6.3)) for k, a in low + high)
        x = x + below_300_hz * np.sin(2 * np.pi * 200 * t)
        got = measure_turn(signals.to_pcm(np.asarray(x))).voice.alpha_ratio_db
        assert got is not None and abs(got - high_db) < 0.6, (high_db, below_300_hz, got)


def test_alpha_ratio_ignores_gain() -> None:
    x = signals.pulse_train(150.0, 1.0, seed=2)[0]
    a = measure_turn(signals.to_pcm(x, -20.0)).voice.alpha_ratio_db
    b = measure_turn(signals.to_pcm(x, -32.0)).voice.alpha_ratio_db
    assert a is not None and b is not None and abs(a - b) < 0.2


def test_unvoiced_and_silent_turns_have_no_voice_quality() -> None:
    for pcm in (np.zeros(1600, np.int16), np.zeros(100, np.int16)):
        voice = measure_turn(pcm).voice
        assert voice.periods == 0 and voice.jitter_local_pct is None and voice.hnr_db is None
    noise = measure_turn(signals.to_pcm(signals.band_noise(8000, seed=1))).voice
    assert noise.jitter_local_pct is None and noise.hnr_db is None


def test_too_few_periods_give_no_jitter() -> None:
    x, _, _ = signals.pulse_train(100.0, 0.08, lead_s=0.02)  # 8 periods: under 10 pairs
    voice = measure_turn(signals.to_pcm(x)).voice
    assert voice.jitter_local_pct is None and voice.shimmer_local_db is None


def test_jitter_skips_pairs_over_the_maximum_period_factor() -> None:
    """Praat's "maximum period factor" (1.3): consecutive periods whose lengths differ by more
    are not compared. A voice stepping between 150 and 107 Hz every 30 periods (ratio 1.4)
    reads the jitter of the periods within each step (0.57 %); the steps compared too would
    read 1.2 %."""
    x, times, _ = signals.pulse_train(
        150.0, 2.0, jitter_sd=0.005, seed=3, period_cycle=(1.0,) * 30 + (1.4,) * 30
    )
    got = measure_turn(signals.to_pcm(x)).voice.jitter_local_pct
    p = np.diff(times)
    within = np.maximum(p[1:], p[:-1]) / np.minimum(p[1:], p[:-1]) <= 1.3
    want = 100.0 * float(np.mean(np.abs(np.diff(p))[within])) / float(np.mean(p))
    assert got is not None
    assert abs(got - want) <= 0.2 * want, (got, want)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_periods_never_compared_stay_out_of_the_mean_period(seed: int) -> None:
    """Jitter's mean period is over the periods it compared (Praat divides by the mean period
    under the same period factor: ``PointProcess_getJitter_local`` in VoiceAnalysis.cpp). A
    steady 150 Hz stretch with 0.5 % jitter followed by 2 s of a voice alternating periods
    1 : 1.35 (every consecutive pair over the factor 1.3, so none of them compared) reads the
    jitter of the steady stretch alone within 8 % (it reads within 2.5 %; averaging over every
    matched period too reads 15-21 % low)."""
    steady, _, _ = signals.pulse_train(150.0, 1.0, jitter_sd=0.005, seed=seed)
    alternating, _, _ = signals.pulse_train(100.0, 2.0, seed=seed + 10, period_cycle=(1.0, 1.35))
    alone = measure_turn(signals.to_pcm(steady)).voice
    both = measure_turn(signals.to_pcm(np.concatenate([steady, alternating]))).voice
    assert alone.jitter_local_pct is not None and both.jitter_local_pct is not None
    assert both.periods > alone.periods + 30, (both, alone)  # the alternating periods matched
    assert abs(both.jitter_local_pct / alone.jitter_local_pct - 1.0) <= 0.08, (both, alone)


def test_shimmer_skips_pairs_over_the_maximum_amplitude_factor() -> None:
    """Praat's "maximum amplitude factor" (1.6): consecutive periods whose amplitudes differ
    by more are not compared. A voice alternating 1 : 1.5 every period reads its 3.5 dB; one
    alternating 1 : 2 (every pair over the factor) has no comparable pair, so no shimmer,
    while its periods still give jitter. At 100 Hz; at 150 Hz and above YIN reads such a
    voice at its true repetition period, two pulses, an octave down."""
    x, _, amps = signals.pulse_train(100.0, 1.5, amplitude_cycle=(1.0, 1.5))
    moderate = measure_turn(signals.to_pcm(x)).voice
    want = signals.expected_shimmer_db(amps)
    assert moderate.shimmer_local_db is not None
    assert abs(moderate.shimmer_local_db - want) <= 0.2 * want + 0.03, (moderate, want)
    x, _, _ = signals.pulse_train(100.0, 1.5, amplitude_cycle=(1.0, 2.0))
    strong = measure_turn(signals.to_pcm(x)).voice
    assert strong.shimmer_local_db is None, strong
    assert strong.jitter_local_pct is not None and strong.jitter_local_pct < 0.12
