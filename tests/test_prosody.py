"""core/prosody.py: each turn against its speaker's running baseline; arousal_rel does not
care about the line's gain (a property test on calls of speech-shaped turns)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from fixtures import signals
from mise_twilio.core.arousal import AROUSAL_MODEL
from mise_twilio.core.features import TurnAcoustics, turn_acoustics
from mise_twilio.core.prosody import (
    POPULATION_F0_HZ,
    PRIOR_TURNS,
    CallProsody,
    RelativeProsody,
    SpeakerBaseline,
)


def acoustics(pcm: NDArray[np.int16]) -> TurnAcoustics:
    return turn_acoustics(pcm, ((0, pcm.shape[0] // 160),), 0)


def vowel(
    f0: float, seconds: float = 1.0, seed: int = 0, level_dbfs: float = -24.0
) -> TurnAcoustics:
    return acoustics(signals.to_pcm(signals.pulse_train(f0, seconds, seed=seed)[0], level_dbfs))


def test_first_turn_is_compared_with_the_population_norm() -> None:
    for f0, norm in ((116.0, POPULATION_F0_HZ[0]), (217.0, POPULATION_F0_HZ[1])):
        rel = CallProsody().observe("caller", vowel(f0)).prosody
        assert rel.baseline_turns == 0 and rel.pitch_baseline_hz == norm
        assert rel.pitch_semitones is not None and abs(rel.pitch_semitones) < 0.2
        assert rel.loudness_db is None and rel.speech_rate_ratio is None


def test_an_excited_low_voice_is_still_compared_with_the_low_norm() -> None:
    # A man's voice raised to a 180 Hz median keeps its floor near 120 Hz: the 10th percentile
    # picks the norm, so the turn reads as high for him, not as low for a woman.
    low = signals.pulse_train(118.0, 0.5, seed=1)[0]
    high = signals.pulse_train(185.0, 1.2, seed=2)[0]
    rel = CallProsody().observe("caller", acoustics(signals.to_pcm(np.concatenate([low, high]))))
    assert rel.prosody.pitch_baseline_hz == POPULATION_F0_HZ[0]
    assert rel.prosody.pitch_semitones is not None and rel.prosody.pitch_semitones > 5.0


def test_later_turns_are_compared_with_the_speakers_own_turns() -> None:
    call = CallProsody()
    rels = [
        call.observe("caller", vowel(f0, seed=i, level_dbfs=level))
        for i, (f0, level) in enumerate(
            ((150.0, -24.0), (150.0, -24.0), (150.0, -24.0), (178.0, -18.0))
        )
    ]
    assert [r.prosody.baseline_turns for r in rels] == [0, 1, 2, 3]
    assert rels[1].prosody.pitch_baseline_hz == pytest.approx(150.0, abs=0.5)
    last = rels[3].prosody
    assert last.pitch_semitones is not None
    assert last.pitch_semitones == pytest.approx(12 * math.log2(178 / 150), abs=0.1)
    assert last.loudness_db == pytest.approx(6.0, abs=0.3)
    assert rels[2].prosody.loudness_db == pytest.approx(0.0, abs=0.2)


def test_speakers_have_baselines_of_their_own() -> None:
    call = CallProsody()
    call.observe("caller", vowel(220.0))
    agent = call.observe("agent", vowel(110.0)).prosody
    assert agent.baseline_turns == 0 and agent.pitch_baseline_hz == POPULATION_F0_HZ[0]


def test_backchannels_and_short_turns_are_compared_but_not_added() -> None:
    call = CallProsody()
    call.observe("caller", vowel(150.0))
    call.observe("caller", vowel(300.0), include=False)  # a backchannel
    call.observe("caller", vowel(300.0, seconds=0.1))  # ~5 voiced frames: too little voicing
    rel = call.observe("caller", vowel(150.0, seed=3)).prosody
    assert rel.baseline_turns == 1
    assert rel.pitch_semitones is not None and abs(rel.pitch_semitones) < 0.2


def test_arousal_rel_is_a_z_like_score_against_the_speaker() -> None:
    call = CallProsody()
    first, then = vowel(150.0), vowel(150.0, seed=1)
    assert call.observe("caller", first).arousal_rel is None  # no usual yet
    second = call.observe("caller", then).arousal_rel
    usual, score = first.arousal_score, then.arousal_score
    assert usual is not None and score is not None
    # one turn in the baseline: its score is the usual, the prior alone the spread
    spread = AROUSAL_MODEL.within_speaker_sd * math.sqrt(PRIOR_TURNS / (PRIOR_TURNS + 1.0))
    assert second == pytest.approx((score - usual) / spread, abs=0.01)
    same = [call.observe("caller", vowel(150.0, seed=i)).arousal_rel for i in range(2, 5)]
    assert all(r is not None and abs(r) < 0.3 for r in same)
    raised = call.observe("caller", vowel(240.0, seed=9)).arousal_rel  # 8 semitones up
    assert raised is not None and raised > 1.0


def test_speech_rate_ratio_is_this_turn_over_the_speakers_usual() -> None:
    call = CallProsody()
    for seed in range(3):
        slow = signals.utterance(150.0, syllables=9, rate_hz=3.0, seed=seed)
        call.observe("caller", acoustics(signals.to_pcm(slow, -24.0)))
    fast = acoustics(signals.to_pcm(signals.utterance(150.0, syllables=18, rate_hz=6.0), -24.0))
    ratio = call.observe("caller", fast).prosody.speech_rate_ratio
    assert ratio is not None and ratio == pytest.approx(2.0, abs=0.2)


def test_arousal_rel_is_in_units_of_the_speakers_own_spread() -> None:
    """Once a speaker has many turns their own spread outweighs the prior: after 20 turns
    whose scores spread ±0.5 around their median, a turn 0.5 above it reads about +1."""
    baseline = SpeakerBaseline()
    features = vowel(150.0).features
    for i in range(20):
        baseline.observe(features, 0.5 if i % 2 else -0.5)
    rel = baseline.observe(features, 0.5, include=False).arousal_rel
    assert rel is not None and 0.9 <= rel <= 1.15, rel


def test_unvoiced_turns_have_no_pitch_or_arousal_rel() -> None:
    noise = acoustics(signals.to_pcm(signals.band_noise(8000, seed=2)))
    rel = CallProsody().observe("caller", noise)
    assert isinstance(rel, RelativeProsody)
    assert rel.prosody.pitch_semitones is None and rel.arousal_rel is None


@st.composite
def calls(draw: st.DrawFn) -> list[NDArray[np.float64]]:
    """One speaker's turns in a call: speech-shaped phrases around a voice of their own, with
    F0, range, tempo and effort varying from turn to turn, at -32 to -26 dBFS (so that 12 dB
    more does not clip the peaks) plus line noise."""
    f0 = draw(st.floats(90.0, 240.0))
    turns = []
    for k in range(draw(st.integers(3, 6))):
        seed = draw(st.integers(0, 10_000))
        x = signals.utterance(
            f0 * 2 ** (draw(st.floats(-2.0, 5.0)) / 12.0),
            syllables=draw(st.integers(3, 8)),
            rate_hz=draw(st.floats(3.0, 6.0)),
            f0_range_semitones=draw(st.floats(1.0, 8.0)),
            effort_db=draw(st.floats(-4.0, 6.0)),
            seed=seed + k,
        )
        x = x / math.sqrt(float(np.mean(x**2))) * 10 ** (draw(st.floats(-32.0, -26.0)) / 20.0)
        line = signals.band_noise(x.shape[0] + 1600, seed=seed) * 10 ** (-62.0 / 20.0)
        line[800 : 800 + x.shape[0]] += x
        turns.append(line)
    return turns


def relative(turns: list[NDArray[np.float64]], gain_db: float) -> list[RelativeProsody]:
    call = CallProsody()
    out = []
    for x in turns:
        pcm = signals.to_pcm(x, None, gain_db=gain_db)
        out.append(call.observe("caller", turn_acoustics(pcm, ((2, pcm.shape[0] // 160 - 2),), 0)))
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls(), st.floats(-12.0, 12.0))
def test_arousal_rel_is_invariant_to_a_constant_gain(
    turns: list[NDArray[np.float64]], gain_db: float
) -> None:
    # The same call on a line up to 12 dB louder or quieter (speech from -44 to -14 dBFS):
    # every input is a ratio, a difference of levels or a frequency, so nothing moves beyond
    # μ-law's rounding of the quiet frames, and YIN's voicing of the quietest ones (its
    # absolute -65 dBFS floor): a frame or two more or less moves a median F0 by up to 0.3
    # semitones (measured over 60 random calls: 2 % of turns above 0.1).
    ref, got = relative(turns, 0.0), relative(turns, gain_db)
    for a, b in zip(ref, got, strict=True):
        assert (a.arousal_rel is None) == (b.arousal_rel is None)
        if a.arousal_rel is not None and b.arousal_rel is not None:
            assert abs(a.arousal_rel - b.arousal_rel) < 0.15, (a, b)
        pa, pb = a.prosody, b.prosody
        assert pa.baseline_turns == pb.baseline_turns
        if pa.pitch_semitones is not None and pb.pitch_semitones is not None:
            assert abs(pa.pitch_semitones - pb.pitch_semitones) < 0.5
        if pa.loudness_db is not None and pb.loudness_db is not None:
            assert abs(pa.loudness_db - pb.loudness_db) < 0.3
