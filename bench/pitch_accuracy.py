"""Pitch accuracy of ``measure_turn`` on telephone-quality harmonic complexes.

For each true F0 (80..350 Hz) and several seeds, synthesises 1 s of a 10-harmonic complex with
1/k amplitudes, 5 Hz vibrato of ±1 % and slight random jitter, band-passes it to 300-3400 Hz
like a phone line (which removes the fundamental below 300 Hz), scales it to -20 dBFS, and
sends it through μ-law encode/decode. Conditions: clean, and white noise added before μ-law at
20 dB and 10 dB SNR. Prints the median and max absolute error of ``median_hz`` in semitones per
F0 and condition, the mean voiced ratio, and overall figures. No assertions.

Run: ``.venv/bin/python bench/pitch_accuracy.py``
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures.signals import harmonic_complex
from mise_twilio.core.audio import SAMPLE_RATE_HZ, pcm16_to_ulaw, ulaw_to_pcm16
from mise_twilio.core.features import measure_turn

F0S_HZ = (80.0, 100.0, 120.0, 150.0, 200.0, 250.0, 300.0, 350.0)
CONDITIONS: tuple[tuple[str, float | None], ...] = (
    ("clean", None),
    ("20 dB", 20.0),
    ("10 dB", 10.0),
)
SEEDS = range(8)


def telephone_band(
    x: NDArray[np.float64], lo_hz: float = 300.0, hi_hz: float = 3400.0
) -> NDArray[np.float64]:
    """Zero-phase FFT band-pass with 200 Hz raised-cosine skirts centred on ``lo_hz``/``hi_hz``."""
    n = x.shape[0]
    nfft = 1 << max(n - 1, 1).bit_length()
    freqs = np.fft.rfftfreq(nfft, 1.0 / SAMPLE_RATE_HZ)
    rise = np.sin(0.5 * np.pi * np.clip((freqs - (lo_hz - 100.0)) / 200.0, 0.0, 1.0)) ** 2
    fall = np.sin(0.5 * np.pi * np.clip(((hi_hz + 100.0) - freqs) / 200.0, 0.0, 1.0)) ** 2
    out: NDArray[np.float64] = np.fft.irfft(np.fft.rfft(x, nfft) * rise * fall, nfft)[:n]
    return out


def phone_line(
    x: NDArray[np.float64], *, level_dbfs: float = -20.0, snr_db: float | None = None, seed: int = 0
) -> NDArray[np.int16]:
    """Band-limit, add white noise at ``snr_db``, scale to ``level_dbfs`` RMS, μ-law round trip."""
    y = telephone_band(x)
    if snr_db is not None:
        noise = np.random.default_rng(seed + 10_000).standard_normal(y.shape[0])
        noise *= math.sqrt(float(np.mean(y**2)) / float(np.mean(noise**2))) * 10 ** (-snr_db / 20)
        y = y + noise
    rms = math.sqrt(float(np.mean(y**2))) or 1.0
    y = y / rms * 32768.0 * 10 ** (level_dbfs / 20)
    pcm = np.clip(np.round(y), -32768, 32767).astype(np.int16)
    return np.frombuffer(ulaw_to_pcm16(pcm16_to_ulaw(pcm.tobytes())), dtype=np.int16)


def main() -> None:
    header = f"{'F0 Hz':>6}"
    for name, _ in CONDITIONS:
        header += f" | {name + ' med st':>12} {'max st':>7} {'voiced':>6}"
    print(header)
    print("-" * len(header))
    overall: dict[str, list[float]] = {name: [] for name, _ in CONDITIONS}
    failures: dict[str, int] = {name: 0 for name, _ in CONDITIONS}
    for f0 in F0S_HZ:
        row = f"{f0:6.0f}"
        for name, snr in CONDITIONS:
            errors: list[float] = []
            voiced: list[float] = []
            for seed in SEEDS:
                pcm = phone_line(harmonic_complex(f0, seed=seed), snr_db=snr, seed=seed)
                pitch = measure_turn(pcm).pitch
                voiced.append(pitch.voiced_ratio)
                if pitch.median_hz is None:
                    failures[name] += 1
                    continue
                errors.append(abs(12.0 * math.log2(pitch.median_hz / f0)))
            overall[name].extend(errors)
            med = float(np.median(errors)) if errors else float("nan")
            worst = max(errors) if errors else float("nan")
            row += f" | {med:12.3f} {worst:7.3f} {np.mean(voiced):6.2f}"
        print(row)
    print()
    for name, _ in CONDITIONS:
        errs = overall[name]
        print(
            f"{name:>6}: overall median |error| {np.median(errs):.3f} st, max {max(errs):.3f} st, "
            f"no-F0 turns {failures[name]}/{len(F0S_HZ) * len(SEEDS)}"
        )


if __name__ == "__main__":
    main()
