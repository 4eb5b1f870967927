"""Each turn against its speaker's own running baseline in the call: the turn record's
``prosody`` object and ``arousal_rel``.

``CallProsody`` is per-call state (one ``SpeakerBaseline`` per speaker) that ``CallSession``
owns and feeds each turn as it emits it, in turn order. A turn is compared with the baseline
*before* it, then added to it. Pure data, no I/O.

* **Pitch**: the turn's F0 level (the interquartile mean of its F0, octave errors undone:
  ``features.ProsodyFeatures.f0_level_hz``) in semitones re the median of the speaker's
  earlier turns' levels. The first turn has no such baseline and is compared
  with a population norm: the mean speaking F0 of adult men (116 Hz) or women (217 Hz)
  (Titze 1994, "Principles of Voice Production"), picked by the turn's own F0 **10th
  percentile** (below ``LOW_VOICE_P10_HZ``: the low norm). The floor of the range is the cue
  because arousal raises a speaker's median and top F0 by several semitones but the floor
  much less: an excited man at a 180 Hz median still has a 10th percentile near 100-120 Hz,
  a calm woman's sits near 150-180 Hz. From the second voiced turn on, the call's own median
  replaces the norm.
* **Loudness**: the turn's active speech level minus the median of earlier turns' (dB), and
  **speech rate** as a ratio to the median of earlier turns'; both null on the first turn (a
  population loudness norm would only measure the phone line).
* **arousal_rel**: (score - median of earlier scores) / spread, where the spread shrinks the
  speaker's own spread of scores toward the model's within-speaker prior
  (``ArousalModel.within_speaker_sd``) worth ``PRIOR_TURNS`` turns:
  ``sqrt((k sd0² + Σ dev²) / (k + n))``. 0 = the speaker's usual, +1 = one spread above it.
  Null until the baseline holds a turn of the speaker's, as loudness and speech rate are:
  against the rated clips' mean score (the model's intercept) a first turn read the speaker's
  voice and line more than their state (the AMI calls' 14 first turns, calm meeting speech,
  read -3.5 to +1.4 that way, a man's voice alone about -1).

Every input is a ratio, a dB difference or a gain-robust score, so a constant gain on the line
leaves all of it unchanged. Turns with less than ``MIN_VOICED_FRAMES`` of voicing (clicks,
most backchannels) are compared but not added; the session does not add backchannels at all.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

from mise_twilio.core.arousal import AROUSAL_MODEL, ArousalModel
from mise_twilio.core.features import TurnAcoustics, TurnFeatures
from mise_twilio.core.records import Prosody

__all__ = [
    "LOW_VOICE_P10_HZ",
    "POPULATION_F0_HZ",
    "CallProsody",
    "RelativeProsody",
    "SpeakerBaseline",
    "population_f0_hz",
]

POPULATION_F0_HZ: tuple[float, float] = (116.0, 217.0)
"""Mean speaking F0 of adult men and women, Hz (Titze 1994)."""
LOW_VOICE_P10_HZ = 135.0
"""A first turn whose F0 10th percentile is below this is compared with the low norm."""
MIN_VOICED_FRAMES = 10
"""Turns with fewer voiced 20 ms frames (200 ms) are not added to the baseline."""
PRIOR_TURNS = 3.0
"""Weight, in turns, of the within-speaker spread prior in ``arousal_rel``'s denominator."""
MAX_TURNS = 200
"""The baseline keeps the speaker's most recent turns, at most this many."""


def population_f0_hz(f0_p10_hz: float) -> float:
    """The population F0 norm for a voice whose F0 10th percentile is ``f0_p10_hz``."""
    return POPULATION_F0_HZ[0] if f0_p10_hz < LOW_VOICE_P10_HZ else POPULATION_F0_HZ[1]


@dataclass(frozen=True, slots=True)
class RelativeProsody:
    """What ``SpeakerBaseline.observe`` returns: the record's ``prosody`` and ``arousal_rel``."""

    prosody: Prosody
    arousal_rel: float | None


class SpeakerBaseline:
    """One speaker's running baseline in one call (see the module docstring)."""

    def __init__(self, model: ArousalModel = AROUSAL_MODEL) -> None:
        self._model = model
        self._pitch_st: deque[float] = deque(maxlen=MAX_TURNS)
        self._level_db: deque[float] = deque(maxlen=MAX_TURNS)
        self._rate_hz: deque[float] = deque(maxlen=MAX_TURNS)
        self._score: deque[float] = deque(maxlen=MAX_TURNS)
        self._turns = 0

    @property
    def turns(self) -> int:
        """Turns added so far."""
        return self._turns

    def observe(
        self, features: TurnFeatures, score: float | None, *, include: bool = True
    ) -> RelativeProsody:
        """Compare one turn (``measure_turn``'s result and its arousal score) with the
        baseline, then add it when ``include`` and it has enough voicing. Values are rounded
        as the record carries them (semitones and dB to 0.01, ratios to 0.001, F0 to 0.1 Hz)."""
        prosody = features.prosody
        level = prosody.f0_level_hz
        base_hz: float | None = None
        if self._pitch_st:
            base_hz = 2.0 ** (_median(self._pitch_st) / 12.0)
        elif prosody.f0_p10_hz is not None:
            base_hz = population_f0_hz(prosody.f0_p10_hz)
        pitch_st = None
        if level is not None and base_hz is not None:
            pitch_st = 12.0 * math.log2(level / base_hz)
        loudness: float | None = None
        if self._level_db and prosody.level_dbfs is not None:
            loudness = prosody.level_dbfs - _median(self._level_db)
        rate_ratio: float | None = None
        if self._rate_hz and features.speech_rate_hz is not None:
            usual = _median(self._rate_hz)
            rate_ratio = features.speech_rate_hz / usual if usual > 0.0 else None
        rel = None if score is None else self._arousal_rel(score)
        out = RelativeProsody(
            Prosody(
                pitch_semitones=_round(pitch_st, 2),
                pitch_baseline_hz=_round(base_hz, 1),
                pitch_range_semitones=_round(prosody.pitch_range_semitones, 2),
                loudness_db=_round(loudness, 2),
                speech_rate_ratio=_round(rate_ratio, 3),
                contour=prosody.contour,
                contour_change_semitones=_round(prosody.contour_change_semitones, 2),
                baseline_turns=len(self._pitch_st),
            ),
            _round(rel, 2),
        )
        if include and level is not None and prosody.voiced_frames >= MIN_VOICED_FRAMES:
            self._add(12.0 * math.log2(level), prosody.level_dbfs, features.speech_rate_hz, score)
        return out

    def _arousal_rel(self, score: float) -> float | None:
        if not self._score:
            return None  # no usual yet
        sd0 = self._model.within_speaker_sd
        usual = _median(self._score)
        dev = np.fromiter(self._score, dtype=np.float64, count=len(self._score)) - usual
        k = PRIOR_TURNS
        spread = math.sqrt((k * sd0 * sd0 + float(np.dot(dev, dev))) / (k + dev.shape[0]))
        return (score - usual) / spread

    def _add(
        self, pitch_st: float, level_dbfs: float | None, rate_hz: float | None, score: float | None
    ) -> None:
        self._turns += 1
        self._pitch_st.append(pitch_st)
        if level_dbfs is not None:
            self._level_db.append(level_dbfs)
        if rate_hz is not None:
            self._rate_hz.append(rate_hz)
        if score is not None:
            self._score.append(score)


class CallProsody:
    """The speaker baselines of one call, by speaker (``caller``, ``agent``)."""

    def __init__(self, model: ArousalModel = AROUSAL_MODEL) -> None:
        self._model = model
        self._speakers: dict[str, SpeakerBaseline] = {}

    def observe(
        self, speaker: str, acoustics: TurnAcoustics, *, include: bool = True
    ) -> RelativeProsody:
        """``SpeakerBaseline.observe`` for ``speaker``'s baseline (created on first use)."""
        baseline = self._speakers.get(speaker)
        if baseline is None:
            baseline = self._speakers[speaker] = SpeakerBaseline(self._model)
        return baseline.observe(acoustics.features, acoustics.arousal_score, include=include)


def _median(values: deque[float]) -> float:
    """``np.median``'s value (the middle of the sorted values, or the mean of the two middle
    ones). A turn takes up to four, and ``np.median`` spends ~8 µs per call before any
    arithmetic: this costs a tenth to a fortieth of that on the few dozen values of a usual
    baseline, a third on the ``MAX_TURNS`` it holds at most."""
    return statistics.median(values)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
