"""core/tone.py through features.measure_turn: answering-machine beeps are found in speech
and line noise with their frequency and duration; DTMF digits, sustained vowels and real
speech are not tones."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from support import ROOT

from fixtures import signals
from mise_twilio.core.features import FeatureParams, measure_turn
from mise_twilio.core.tone import ToneFeatures

REAL_SPEECH = ROOT.parent / "shared" / "real-speech"
needs_real_speech = pytest.mark.skipif(
    not REAL_SPEECH.is_dir(), reason=f"real speech not present: {REAL_SPEECH}"
)


def tone_of(pcm: NDArray[np.int16]) -> ToneFeatures | None:
    return measure_turn(pcm).tone


def read_wav(path: Path) -> NDArray[np.int16]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).copy()


def speech(seconds: float, seed: int) -> NDArray[np.float64]:
    """Synthetic speech at RMS 0.05 of full scale (-26 dBFS)."""
    x = signals.utterance(130.0 + 40 * seed, syllables=round(4 * seconds), seed=seed)
    return x * (0.05 / math.sqrt(float(np.mean(x**2))))


def around(
    tone: NDArray[np.float64], before: NDArray[np.float64], gap_s: float
) -> tuple[NDArray[np.int16], float]:
    gap = np.zeros(round(gap_s * 8000) + 37)  # not on the 20 ms grid
    x = np.concatenate([before, gap, tone, gap, speech(1.0, 9)])
    return signals.to_pcm(x, None), (before.shape[0] + gap.shape[0]) / 8000 * 1000.0


@pytest.mark.parametrize(
    ("freq", "dur_s"), [(1000.0, 0.3), (1000.0, 0.2), (440.0, 0.25), (440.0, 1.0)]
)
def test_beep_after_a_greeting_is_found(freq: float, dur_s: float) -> None:
    pcm, at_ms = around(signals.tone(freq, dur_s, 0.2), speech(2.0, 1), 0.1)
    tone = tone_of(pcm)
    assert tone is not None
    assert abs(tone.frequency_hz - freq) < 1.0
    assert abs(tone.frames * 20 - dur_s * 1000.0) <= 20
    assert abs(tone.start_frame * 20 - at_ms) <= 20


@needs_real_speech
@pytest.mark.parametrize("freq", [1000.0, 440.0])
def test_beep_after_real_speech_is_found(freq: float) -> None:
    greeting = read_wav(REAL_SPEECH / "emotion" / "06.wav").astype(np.float64) / 32768.0 * 0.5
    pcm, at_ms = around(signals.tone(freq, 0.3, 0.2), greeting, 0.1)
    tone = tone_of(pcm)
    assert tone is not None and abs(tone.frequency_hz - freq) < 1.0
    assert abs(tone.start_frame * 20 - at_ms) <= 20


def test_beep_right_against_speech_loses_only_its_edge_frames() -> None:
    sp = speech(1.0, 2)
    pcm = signals.to_pcm(np.concatenate([sp, signals.tone(1000.0, 0.3, 0.2), sp]), None)
    tone = tone_of(pcm)
    assert tone is not None and 260 <= tone.frames * 20 <= 300


@pytest.mark.parametrize("freq", [400.0, 1000.0, 2000.0])
def test_beep_in_line_noise_20_db_down(freq: float) -> None:
    x = np.concatenate([np.zeros(800), signals.tone(freq, 0.5), np.zeros(800)])
    tone = tone_of(signals.to_pcm(signals.add_noise(x, 20.0), None))
    assert tone is not None and abs(tone.frequency_hz - freq) < 2.0
    assert tone.level_dbfs == pytest.approx(20 * math.log10(0.3 / math.sqrt(2)), abs=0.5)


@pytest.mark.parametrize(("dur_s", "found"), [(0.18, False), (0.2, True)])
def test_the_shortest_tone_between_noise(dur_s: float, found: bool) -> None:
    """On the 20 ms grid, between line noise: 200 ms is 10 pure frames and passes, 180 ms is
    9 and does not (a run must be longer than ``tone_min_ms`` less one frame)."""
    noise = [signals.band_noise(8000, seed=s) for s in (1, 2)]
    noise = [n * (0.05 / math.sqrt(float(np.mean(n**2)))) for n in noise]
    pcm = signals.to_pcm(
        np.concatenate([noise[0], signals.tone(1000.0, dur_s, 0.2), noise[1]]), None
    )
    tone = tone_of(pcm)
    assert (tone is not None) == found, tone
    if tone is not None:
        assert tone.frames == 10 and tone.start_frame == 50


@pytest.mark.parametrize("offset_ms", [1, 5, 10, 15, 19])
@pytest.mark.parametrize("between", ["speech", "noise"])
def test_200_ms_tone_straddling_the_grid_is_found(offset_ms: int, between: str) -> None:
    """Off the 20 ms grid against speech or noise a 200 ms tone fills 9 frames and parts of
    two more; the part covering at least half a frame counts 10 ms. 180 ms is still too short
    at every offset."""
    if between == "speech":
        before, after = speech(1.2, 4), speech(1.0, 5)
    else:
        before, after = (
            n * (0.05 / math.sqrt(float(np.mean(n**2))))
            for n in (signals.band_noise(9600, seed=s) for s in (3, 4))
        )
    before = before[: 8000 + offset_ms * 8]
    for dur_s, found in ((0.2, True), (0.18, False)):
        x = np.concatenate([before, signals.tone(1000.0, dur_s, 0.05), after])
        tone = tone_of(signals.to_pcm(x, None))
        assert (tone is not None) == found, (dur_s, tone)
        if tone is not None:
            assert abs(tone.frequency_hz - 1000.0) < 1.0
            assert 190 <= tone.duration_ms <= 210
            start_ms = tone.start_frame * 20 - tone.before_ms
            assert abs(start_ms - before.shape[0] / 8) <= 10


def test_short_tone_is_not_reported() -> None:
    pcm, _ = around(signals.tone(1000.0, 0.15, 0.2), speech(1.0, 3), 0.1)
    assert tone_of(pcm) is None


def test_tone_outside_400_to_2000_hz_is_not_reported() -> None:
    assert tone_of(signals.to_pcm(signals.tone(300.0, 0.5), None)) is None
    assert tone_of(signals.to_pcm(signals.tone(2600.0, 0.5), None)) is None


def test_quiet_tone_is_not_reported() -> None:
    assert tone_of(signals.to_pcm(signals.tone(1000.0, 0.5, 10 ** (-56 / 20)), None)) is None


def test_settings_change_what_counts() -> None:
    pcm = signals.to_pcm(signals.tone(1000.0, 0.5), None)
    assert measure_turn(pcm, params=FeatureParams(tone_min_ms=600.0)).tone is None
    assert measure_turn(pcm, params=FeatureParams(tone_max_hz=900.0)).tone is None


@pytest.mark.parametrize("digit", list("123A456B789C*0#D"))
@pytest.mark.parametrize("twist_db", [-4.0, 0.0, 4.0, 8.0])
def test_dtmf_digits_are_not_tones(digit: str, twist_db: float) -> None:
    assert tone_of(signals.to_pcm(signals.dtmf(digit, 0.5, twist_db=twist_db), None)) is None


@pytest.mark.parametrize("f0", [80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0])
def test_sustained_vowels_are_not_tones(f0: float) -> None:
    for vowel in ("schwa", "u", "i", "o"):
        x = signals.pulse_train(f0, 1.5, jitter_sd=0.003, formants=signals.VOWELS[vowel])[0]
        assert tone_of(signals.to_pcm(x)) is None, vowel
    assert tone_of(signals.to_pcm(signals.steady_harmonics(f0, 1.5))) is None


@needs_real_speech
def test_real_speech_holds_no_tone() -> None:
    files = sorted((REAL_SPEECH / "emotion").glob("*.wav")) + sorted(
        (REAL_SPEECH / "ami").glob("*.wav")
    )
    assert len(files) >= 30
    for f in files:
        assert tone_of(signals.mulaw_round_trip(read_wav(f))) is None, f.name
