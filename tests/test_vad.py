"""vad.py: the energy VAD on frame-level sequences shaped like phone audio."""

from __future__ import annotations

import numpy as np
import pytest

from mise_twilio.core.audio import SILENCE_DBFS
from mise_twilio.core.vad import EnergyVad, VadParams


def run(
    levels: list[float], other: list[float] | None = None, **kw: float
) -> list[tuple[str, int]]:
    vad = EnergyVad(VadParams(**kw))  # type: ignore[arg-type]
    out = []
    for i, level in enumerate(levels):
        t = vad.step(i, level, None if other is None else other[i])
        if t:
            out.append(t)
    end = vad.flush()
    if end:
        out.append(end)
    return out


def noise(n: int, mean: float = -60.0, seed: int = 0) -> list[float]:
    return list(mean + np.random.default_rng(seed).normal(0, 1.0, n))


def speech(n: int, mean: float = -22.0, seed: int = 1) -> list[float]:
    # syllable-rate modulation (4 Hz at 50 frames/s) with dips of ~10 dB
    t = np.arange(n)
    return list(
        mean - 5 + 5 * np.sin(2 * np.pi * t / 12.5) + np.random.default_rng(seed).normal(0, 1, n)
    )


def test_speech_over_noise_is_one_segment_with_accurate_bounds() -> None:
    levels = noise(100) + speech(150) + noise(100, seed=2)
    transitions = run(levels)
    assert transitions[0] == ("start", 100)
    assert transitions[1][0] == "end"
    assert 250 <= transitions[1][1] <= 253  # last speech frame + post-roll
    assert len(transitions) == 2


def test_clicks_are_not_speech() -> None:
    levels = noise(300)
    for i in (50, 120, 121, 200):
        levels[i] = -8.0
    assert run(levels) == []


def test_steady_hum_is_not_speech_after_warmup() -> None:
    assert run(noise(600, mean=-45.0)) == []


def test_digital_silence_never_lifts_the_floor() -> None:
    vad = EnergyVad(VadParams())
    for i in range(500):
        vad.step(i, SILENCE_DBFS)
    assert vad.noise_floor_dbfs == VadParams().initial_noise_floor_dbfs


def test_quiet_speaker_is_detected() -> None:
    levels = noise(150, mean=-65) + speech(100, mean=-42) + noise(100, mean=-65, seed=3)
    transitions = run(levels)
    assert [k for k, _ in transitions] == ["start", "end"]
    assert abs(transitions[0][1] - 150) <= 2


def test_call_opening_with_speech_is_detected() -> None:
    transitions = run(speech(100) + noise(100))
    assert transitions and transitions[0][0] == "start" and transitions[0][1] <= 2


def test_bleed_far_below_the_other_track_is_ignored_but_double_talk_counts() -> None:
    other = noise(100) + speech(150) + noise(100, seed=4)
    bleed = noise(100) + [x - 24 for x in other[100:250]] + noise(100, seed=4)
    assert run(bleed, other) == []
    double_talk = noise(100) + speech(150, mean=-25, seed=9) + noise(100, seed=5)
    assert [k for k, _ in run(double_talk, other)] == ["start", "end"]


def test_short_dips_inside_speech_do_not_split_the_segment() -> None:
    levels = noise(100) + speech(50) + noise(5, seed=6) + speech(50, seed=7) + noise(100, seed=8)
    assert [k for k, _ in run(levels)] == ["start", "end"]


def test_hysteresis_params_are_validated() -> None:
    with pytest.raises(ValueError):
        VadParams(start_margin_db=3, stop_margin_db=6)
    with pytest.raises(ValueError):
        VadParams(hangover_ms=5)


def steady(n: int, level: float) -> list[float]:
    return [level] * n


# A line whose floor sits at exactly -60 dBFS (the initial floor): every threshold below is a
# fixed number of dB above it, so each case lands on one side of one rule.
FLOOR = -60.0


def test_a_level_between_the_stop_and_start_margins_never_starts_speech() -> None:
    p = VadParams()
    between = FLOOR + (p.start_margin_db + p.stop_margin_db) / 2  # active, never loud
    assert run(steady(100, FLOOR) + steady(100, between) + steady(100, FLOOR)) == []


def test_a_level_between_the_margins_sustains_speech_that_has_started() -> None:
    p = VadParams()
    between = FLOOR + (p.start_margin_db + p.stop_margin_db) / 2
    loud = FLOOR + p.start_margin_db + 10
    levels = steady(100, FLOOR) + steady(10, loud) + steady(40, between) + steady(100, FLOOR)
    transitions = run(levels)
    assert transitions[0] == ("start", 100)
    # the end follows the last *active* frame (149), not the last loud one (109): hysteresis
    post = p.post_roll_ms // 20
    assert transitions[1] == ("end", 150 + post)


def test_pre_roll_moves_the_start_back_over_soft_onset_frames() -> None:
    p = VadParams()
    soft = FLOOR + (p.start_margin_db + p.stop_margin_db) / 2  # active but not loud
    loud = FLOOR + p.start_margin_db + 10
    pre = p.pre_roll_ms // 20
    assert pre >= 2
    # soft onset of pre_roll + 2 frames: the start moves back by exactly pre_roll, not further
    levels = steady(100, FLOOR) + steady(pre + 2, soft) + steady(20, loud) + steady(100, FLOOR)
    transitions = run(levels)
    assert transitions[0] == ("start", 100 + 2)
    # a soft onset shorter than the pre-roll is taken whole
    levels = steady(100, FLOOR) + steady(1, soft) + steady(20, loud) + steady(100, FLOOR)
    assert run(levels)[0] == ("start", 100)
    # and no pre-roll without active frames before the loud run
    assert run(steady(100, FLOOR) + steady(20, loud) + steady(100, FLOOR))[0] == ("start", 100)
