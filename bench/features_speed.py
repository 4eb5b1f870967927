"""CPU cost of ``measure_turn`` per second of turn audio.

Turns: a 120 Hz harmonic complex at telephone quality (voiced throughout, the worst case: every
pitch frame is analysed), the same with a VAD mask marking every other 200 ms as pause, and
white noise. Each is timed with ``time.process_time`` over many calls; the best of several
repeats is reported (the least disturbed by other load on the machine), with the median of the
repeats beside it. Prints µs of CPU per second of audio and the ratio to real time. No
assertions.

Run: ``.venv/bin/python bench/features_speed.py``
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pitch_accuracy import harmonic_complex, phone_line

from mise_twilio.core.audio import FRAME_SAMPLES, SAMPLE_RATE_HZ
from mise_twilio.core.features import measure_turn

DURATIONS_S = (0.5, 1.0, 3.0, 10.0, 30.0)
REPEATS = 7
BUDGET_S = 0.3  # CPU per repeat


def cpu_per_call(pcm: NDArray[np.int16], mask: NDArray[np.bool_] | None) -> tuple[float, float]:
    """(best, median) CPU seconds per call over ``REPEATS`` repeats."""
    measure_turn(pcm, mask)  # warm up
    start = time.process_time()
    calls = 0
    while time.process_time() - start < 0.05:
        measure_turn(pcm, mask)
        calls += 1
    per_call = (time.process_time() - start) / calls
    n = max(3, int(BUDGET_S / per_call))
    results = []
    for _ in range(REPEATS):
        t0 = time.process_time()
        for _ in range(n):
            measure_turn(pcm, mask)
        results.append((time.process_time() - t0) / n)
    return min(results), statistics.median(results)


def main() -> None:
    longest = max(DURATIONS_S)
    voiced = phone_line(harmonic_complex(120.0, longest))
    noise_src = np.random.default_rng(0).standard_normal(int(longest * SAMPLE_RATE_HZ))
    noise = phone_line(noise_src)
    cases = ("voiced, no mask", "voiced, half pause mask", "white noise, no mask")
    print(f"{'turn':<26}{'audio s':>8}{'best µs/s':>11}{'median µs/s':>13}{'x real time':>13}")
    for duration in DURATIONS_S:
        n = int(duration * SAMPLE_RATE_HZ)
        n_frames = n // FRAME_SAMPLES
        half_mask = (np.arange(n_frames) // 10) % 2 == 0
        inputs: list[tuple[NDArray[np.int16], NDArray[np.bool_] | None]] = [
            (voiced[:n], None),
            (voiced[:n], half_mask),
            (noise[:n], None),
        ]
        for name, (pcm, mask) in zip(cases, inputs, strict=True):
            best, med = cpu_per_call(pcm, mask)
            per_s_best = best / duration * 1e6
            per_s_med = med / duration * 1e6
            ratio = duration / best
            print(f"{name:<26}{duration:>8.1f}{per_s_best:>11.0f}{per_s_med:>13.0f}{ratio:>12.0f}x")


if __name__ == "__main__":
    main()
