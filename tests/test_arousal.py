"""core/arousal.py: the shipped weights are the fitted ones, and arousal hardly moves with the
line's gain on speech-shaped turns (a property test)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ROOT

from fixtures import signals
from mise_twilio.core.arousal import AROUSAL_MODEL, ArousalModel, arousal
from mise_twilio.core.features import arousal_inputs, measure_turn, turn_acoustics

MODEL_JSON = ROOT / "bench" / "arousal_model.json"


def test_the_shipped_weights_are_the_fitted_ones() -> None:
    fitted = json.loads(MODEL_JSON.read_text())
    assert list(AROUSAL_MODEL.inputs) == fitted["inputs"]
    for key in ("mean", "scale", "weights"):
        assert list(getattr(AROUSAL_MODEL, key)) == fitted[key], key
    assert AROUSAL_MODEL.intercept == fitted["intercept"]
    assert list(AROUSAL_MODEL.required) == fitted["required"]
    assert AROUSAL_MODEL.within_speaker_sd == fitted["within_speaker_sd"]
    assert "Apache-2.0" in fitted["provenance"]["data"]


def test_every_model_input_is_measured() -> None:
    inputs = arousal_inputs(measure_turn(signals.to_pcm(signals.utterance(140.0, seed=1), -24)))
    for name in AROUSAL_MODEL.inputs:
        assert inputs[name] is not None, name


def test_score_standardises_clips_and_fills_missing_inputs() -> None:
    model = ArousalModel(
        inputs=("a", "b"),
        mean=(1.0, 10.0),
        scale=(2.0, 5.0),
        weights=(0.5, 0.25),
        intercept=0.1,
        required=("a",),
        within_speaker_sd=0.3,
    )
    assert model.score({"a": 3.0, "b": 20.0}) == pytest.approx(0.1 + 0.5 * 1.0 + 0.25 * 2.0)
    assert model.score({"a": 3.0, "b": None}) == pytest.approx(0.6)  # missing: the mean
    assert model.score({"a": 1.0e9, "b": 10.0}) == pytest.approx(0.1 + 0.5 * 3.0)  # z clipped
    assert model.score({"a": None, "b": 20.0}) is None  # required
    assert arousal(model.score({"a": 1.0e9, "b": 1.0e9}) or 0.0) < 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mean": (1.0,)},
        {"scale": (0.0, 1.0)},
        {"within_speaker_sd": 0.0},
        {"required": ("c",)},
    ],
)
def test_bad_models_are_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "inputs": ("a", "b"),
        "mean": (0.0, 0.0),
        "scale": (1.0, 1.0),
        "weights": (1.0, 1.0),
        "intercept": 0.0,
        "required": (),
        "within_speaker_sd": 0.3,
    }
    with pytest.raises(ValueError):
        ArousalModel(**{**base, **kwargs})  # type: ignore[arg-type]


def test_excited_speech_scores_above_calm_speech() -> None:
    calm = signals.utterance(105.0, f0_range_semitones=2.0, effort_db=-4.0, rate_hz=3.0, seed=3)
    excited = signals.utterance(190.0, f0_range_semitones=9.0, effort_db=6.0, rate_hz=5.5, seed=3)
    a = turn_acoustics(signals.to_pcm(calm, -30.0), ((0, 10_000),), 0).arousal
    b = turn_acoustics(signals.to_pcm(excited, -20.0), ((0, 10_000),), 0).arousal
    assert a is not None and b is not None and b > a + 0.3


@st.composite
def speech_turns(draw: st.DrawFn) -> np.ndarray:
    """A speech-shaped turn of one or two phrases (``signals.utterance``) at -26 dBFS."""
    seed = draw(st.integers(0, 10_000))
    x = signals.utterance(
        draw(st.floats(85.0, 260.0)),
        syllables=draw(st.integers(3, 10)),
        rate_hz=draw(st.floats(2.5, 6.5)),
        f0_range_semitones=draw(st.floats(1.0, 10.0)),
        final_semitones=draw(st.floats(-5.0, 5.0)),
        effort_db=draw(st.floats(-6.0, 8.0)),
        seed=seed,
    )
    x = x / math.sqrt(float(np.mean(x**2))) * 10 ** (-26.0 / 20.0)
    noise = signals.band_noise(x.shape[0] + 1600, seed=seed) * 10 ** (-62.0 / 20.0)
    noise[800 : 800 + x.shape[0]] += x
    return signals.to_pcm(noise, None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(speech_turns(), st.floats(-6.0, 6.0))
def test_arousal_moves_less_than_0_1_for_6_db_of_gain(pcm: np.ndarray, gain_db: float) -> None:
    # The same turn (the same speech mask, as the VAD cut it once) on a line 6 dB louder or
    # quieter: every input is a level difference, a ratio or a frequency.
    segments = ((2, pcm.shape[0] // 160 - 2),)
    ref = turn_acoustics(pcm, segments, 0).arousal_score
    got = turn_acoustics(signals.gained(pcm, gain_db), segments, 0).arousal_score
    assert ref is not None and got is not None
    assert abs(math.tanh(got) - math.tanh(ref)) < 0.1


def test_the_readme_states_what_an_octave_of_voice_adds() -> None:
    """The README's figures for the absolute F0 level (what a voice an octave higher, and a
    typical woman's voice against a man's, add to the score) are the shipped model's."""
    import re

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    found = re.search(
        r"an octave higher adds ([\d.]+) to the score \(12 / ([\d.]+) × ([\d.]+)\), and typical "
        r"men's and women's voices \(116 and 217 Hz\) differ by ([\d.]+)",
        readme,
    )
    assert found is not None
    octave, scale, weight, norms = (float(v) for v in found.groups())
    i = AROUSAL_MODEL.inputs.index("f0_level_semitones")
    per_semitone = AROUSAL_MODEL.weights[i] / AROUSAL_MODEL.scale[i]
    assert (scale, weight) == (round(AROUSAL_MODEL.scale[i], 2), round(AROUSAL_MODEL.weights[i], 3))
    assert octave == round(12.0 * per_semitone, 2)
    assert norms == round(12.0 * math.log2(217.0 / 116.0) * per_semitone, 2)
