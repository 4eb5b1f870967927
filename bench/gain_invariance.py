"""How far ``arousal_rel`` moves when a whole call is louder or quieter (±12 dB).

The same speech-shaped calls as ``tests/test_prosody.py``'s gain property (one speaker, 3-6
turns of ``signals.utterance`` around a voice of their own at -32 to -26 dBFS, line noise at
-62 dBFS, μ-law), drawn from ``random.Random(call)`` for calls ``--first`` .. ``--first +
--calls - 1``, each measured at 0 dB and at a random gain in ±12 dB, through ``turn_acoustics``
and ``CallProsody`` as a call would be. Prints how many turns move by ``--bound`` or more
(the test's bound), the largest changes with the cue that moved most, and the distribution;
then the turns whose ``pitch_semitones`` moves by the test's 0.5 or more.
No assertions: the property test draws a few of these per CI run; this counts the rare ones.

Run: ``.venv/bin/python bench/gain_invariance.py`` (``--calls 3000`` for the README's figure;
about 90 s per 1000 calls on one core)
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures import signals  # noqa: E402
from mise_twilio.core.arousal import AROUSAL_MODEL  # noqa: E402
from mise_twilio.core.features import TurnAcoustics, arousal_inputs, turn_acoustics  # noqa: E402
from mise_twilio.core.prosody import CallProsody  # noqa: E402

PITCH_BOUND_SEMITONES = 0.5
"""The test's bound on ``prosody.pitch_semitones``."""


def call_turns(rng: random.Random) -> list[NDArray[np.float64]]:
    """One speaker's turns, as ``tests/test_prosody.py``'s ``calls`` strategy draws them."""
    f0 = rng.uniform(90.0, 240.0)
    turns = []
    for k in range(rng.randint(3, 6)):
        seed = rng.randint(0, 10_000)
        x = signals.utterance(
            f0 * 2 ** (rng.uniform(-2.0, 5.0) / 12.0),
            syllables=rng.randint(3, 8),
            rate_hz=rng.uniform(3.0, 6.0),
            f0_range_semitones=rng.uniform(1.0, 8.0),
            effort_db=rng.uniform(-4.0, 6.0),
            seed=seed + k,
        )
        x = x / math.sqrt(float(np.mean(x**2))) * 10 ** (rng.uniform(-32.0, -26.0) / 20.0)
        line = signals.band_noise(x.shape[0] + 1600, seed=seed) * 10 ** (-62.0 / 20.0)
        line[800 : 800 + x.shape[0]] += x
        turns.append(line)
    return turns


def measured(x: NDArray[np.float64], gain_db: float) -> TurnAcoustics:
    pcm = signals.to_pcm(x, None, gain_db=gain_db)
    return turn_acoustics(pcm, ((2, pcm.shape[0] // 160 - 2),), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--bound", type=float, default=0.15)
    args = ap.parse_args()
    changes: list[float] = []
    flagged: list[tuple[float, int, int, float, str]] = []
    pitch_flagged: list[tuple[float, int, int, float]] = []
    for call in range(args.first, args.first + args.calls):
        rng = random.Random(call)
        turns = call_turns(rng)
        gain_db = rng.uniform(-12.0, 12.0)
        ref, got = CallProsody(), CallProsody()
        for index, x in enumerate(turns):
            a, b = measured(x, 0.0), measured(x, gain_db)
            ra, rb = ref.observe("caller", a), got.observe("caller", b)
            pa, pb = ra.prosody.pitch_semitones, rb.prosody.pitch_semitones
            if pa is not None and pb is not None and abs(pa - pb) >= PITCH_BOUND_SEMITONES:
                pitch_flagged.append((abs(pa - pb), call, index, gain_db))
            if ra.arousal_rel is None or rb.arousal_rel is None:
                continue
            change = abs(ra.arousal_rel - rb.arousal_rel)
            changes.append(change)
            if change >= args.bound:
                ia, ib = arousal_inputs(a.features), arousal_inputs(b.features)
                moved = {
                    name: abs((ia[name] or 0.0) - (ib[name] or 0.0)) * abs(w) / s
                    for name, w, s in zip(
                        AROUSAL_MODEL.inputs,
                        AROUSAL_MODEL.weights,
                        AROUSAL_MODEL.scale,
                        strict=True,
                    )
                }
                cue = max(moved, key=lambda n: moved[n])
                why = f"{cue} {ia[cue]:.3f} -> {ib[cue]:.3f}" if moved[cue] > 0.005 else "baseline"
                flagged.append((change, call, index, gain_db, why))
    c = np.asarray(changes)
    print(f"calls {args.first}..{args.first + args.calls - 1}: {c.shape[0]} turns with arousal_rel")
    print(f"|change| median {np.median(c):.3f}, p99 {np.percentile(c, 99):.3f}, max {c.max():.2f}")
    share = 100.0 * len(flagged) / c.shape[0]
    print(f"turns moving by {args.bound} or more: {len(flagged)} ({share:.2f} %)")
    for change, call, index, gain_db, why in sorted(flagged, reverse=True)[:12]:
        print(f"  {change:5.2f}  call {call} turn {index} at {gain_db:+5.1f} dB: {why}")
    bound = PITCH_BOUND_SEMITONES
    print(f"turns whose pitch_semitones moves by {bound} or more: {len(pitch_flagged)}")
    for change, call, index, gain_db in sorted(pitch_flagged, reverse=True)[:12]:
        print(f"  {change:5.2f}  call {call} turn {index} at {gain_db:+5.1f} dB")


if __name__ == "__main__":
    main()
