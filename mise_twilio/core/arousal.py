"""Prosodic arousal: how activated a turn's voice sounds, as one number in [-1, 1].

A small standardised linear model of four cues from the arousal literature, none a level
(Juslin & Laukka 2003, "Communication of emotions in vocal expression and music performance",
Psychological Bulletin 129(5), 770-814; Eyben et al. 2016, eGeMAPS): F0 level, F0 range,
spectral tilt (vocal effort) and voicing (the graded voiced share of the speech; see
``AROUSAL_MODEL``). ``score = intercept + Σ w_i clip((x_i - mean_i) / scale_i, ±3)``,
``arousal = tanh(score)``. It is an estimate of
arousal from prosody, **not an emotion label**, and says nothing about valence (an excited
caller may be delighted or furious). The F0 level is absolute (semitones re 100 Hz), so
across speakers it carries the voice as well as its activation: a voice an octave higher
scores ``12 * weight / scale`` of that cue more (the README gives the figure).
``prosody.SpeakerBaseline``'s ``arousal_rel`` compares a speaker with themselves.

The weights are fitted by ``bench/arousal_accuracy.py`` on human-rated clips passed through
the bridge as calls; ``AROUSAL_MODEL`` below is a copy of what it wrote to
``bench/arousal_model.json`` (with the data's provenance; a test keeps the two equal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["AROUSAL_MODEL", "ArousalModel", "arousal"]

_Z_CLIP = 3.0
"""Standardised inputs are clipped to ±3 so one odd or very short turn cannot saturate it."""


@dataclass(frozen=True, slots=True)
class ArousalModel:
    """A standardised linear arousal model (see the module docstring).

    ``inputs`` name values of ``features.arousal_inputs``; ``mean`` and ``scale`` standardise
    them (the training set's mean and SD); ``weights`` and ``intercept`` give the score.
    ``required`` inputs must be present for a score; a missing other input counts as its mean
    (contributes 0). ``within_speaker_sd``: the spread of one speaker's scores across turns
    that ``prosody.SpeakerBaseline`` assumes before it has seen enough of the speaker (a prior,
    not fitted: the rated clips are one utterance per speaker).
    """

    inputs: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    required: tuple[str, ...]
    within_speaker_sd: float

    def __post_init__(self) -> None:
        n = len(self.inputs)
        if not (len(self.mean) == len(self.scale) == len(self.weights) == n):
            raise ValueError("inputs, mean, scale and weights must have one entry per input")
        if any(s <= 0.0 for s in self.scale) or self.within_speaker_sd <= 0.0:
            raise ValueError("scales and within_speaker_sd must be > 0")
        if not set(self.required) <= set(self.inputs):
            raise ValueError("required inputs must be model inputs")

    def score(self, values: Mapping[str, float | None]) -> float | None:
        """The linear score of one turn's inputs (``features.arousal_inputs``), or ``None``
        when a required input is missing."""
        if any(values.get(name) is None for name in self.required):
            return None
        s = self.intercept
        for name, mean, scale, weight in zip(
            self.inputs, self.mean, self.scale, self.weights, strict=True
        ):
            v = values.get(name)
            if v is not None:
                s += weight * min(max((v - mean) / scale, -_Z_CLIP), _Z_CLIP)
        return s


def arousal(score: float) -> float:
    """The score on the [-1, 1] rating scale."""
    return math.tanh(score)


AROUSAL_MODEL = ArousalModel(
    inputs=(
        "f0_level_semitones",
        "pitch_range_semitones",
        "alpha_ratio_db",
        "voicing",
    ),
    mean=(13.0013, 6.3937, -6.7514, 0.5541),
    scale=(6.5038, 3.3529, 6.24, 0.174),
    weights=(0.2224, 0.2224, 0.2224, 0.2224),
    intercept=0.1908,
    required=("f0_level_semitones",),
    within_speaker_sd=0.35,
)
"""Fitted by ``bench/arousal_accuracy.py --write`` (``bench/arousal_model.json`` holds the same
numbers with their provenance) on the 24 rated clips of ``../shared/real-speech/emotion``
(pyAudioAnalysis ``data/speechEmotion``, Apache-2.0) passed through ``CallSession`` as
``<Connect>`` calls: Spearman's ρ with the ratings 0.844 nested leave-one-out (weights and
penalty fitted without the held-out clip), the same when the cues too are chosen inside each
fold (3-6 of eleven candidates; all 24 folds chose these four), 0.862 in-sample. The penalty
chosen (10⁶) shrinks the weights to the prior's: equal weights on the standardised cues.

Inputs (``features.arousal_inputs``): F0 level (the interquartile mean, octave errors undone)
in semitones re 100 Hz, pitch range (p10-p90, semitones, octave errors undone), alpha ratio
(dB, 300-3400 Hz) and voicing (the voiced share of the turn's speech, each pitch frame graded
by how clearly it passed the voicing threshold: ``features.ProsodyFeatures.voicing``). The
level replaced the median F0 and voicing the voiced ratio: the median jumps between two pitch
levels a turn splits evenly between, the voiced ratio by a whole frame at a syllable's end,
and both moved ``arousal_rel`` with a few dB of line gain (``bench/gain_invariance.py``).
Speech rate (voiced syllable nuclei per second), the fourth cue before the voiced ratio, gave
0.71 nested; energy dynamics is left out: its low percentiles move with the line's gain
(μ-law's coarse steps at low levels, the VAD's absolute onset threshold), see
``bench/arousal_accuracy.py``. Voicing falls with line noise that masks the weak ends of
voicing, so compare ``arousal`` across calls on similar lines; ``arousal_rel`` (against the
speaker in the same call) is not moved by a steady line."""
