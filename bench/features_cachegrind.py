"""Where a short turn's CPU goes: the per-turn features against the code before them, counted
by cachegrind (instructions, simulated instruction- and data-cache misses, mispredicted
branches) instead of timed.

The counts are the same on any machine and in any run, so they compare versions and Python
builds where ``features_speed.py``'s timings drift with the VM. Each version runs in its own
process under ``valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes`` (with
``OPENBLAS_NUM_THREADS=1``, so that idle BLAS threads' spinning is not counted): once with no
turns measured and once with ``--turns`` of them after three warm-up turns; the difference,
divided by the turns, is one turn's cost without the start-up. The turn is the speech-shaped
phrase of ``features_speed.py`` (``--seconds`` long, 0.5 by default), measured as a session
measures it (``features_speed.every_feature``), against ``measure_turn`` at ``BEFORE``.

Cachegrind's machine (32 KB first-level caches) is a model, and this VM has no hardware
counters to check it against, so the cycle figure is a rough model too: instructions at three
per cycle, 12 cycles per instruction-cache miss and 15 per mispredicted branch. Its ratio to
the anchor is what to compare with ``features_speed.py``'s timed ratio for the same case.

Run: ``.venv/bin/python bench/features_cachegrind.py [--seconds 0.5] [--turns 30]`` (needs
valgrind: ``apt-get install valgrind``; ~1.5 min at 0.5 s on two cores)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VERSIONS = ("now", "before")
SHOWN = (
    ("Ir", "instructions"),
    ("I1mr", "I1 misses"),
    ("D1mr", "D1 read misses"),
    ("D1mw", "D1 write misses"),
    ("Bcm", "cond. mispredicts"),
    ("Bim", "indirect mispredicts"),
)
WARM_UP_TURNS = 3


def workload(version: str, seconds: float, turns: int) -> None:
    """Measure the phrase ``WARM_UP_TURNS + turns`` times with ``version``'s code."""
    from features_speed import BEFORE, DURATIONS_S, every_feature, full_baseline, load_before

    from fixtures import signals
    from mise_twilio.core.audio import FRAME_SAMPLES, SAMPLE_RATE_HZ

    n = int(seconds * SAMPLE_RATE_HZ)
    # features_speed.py's speech-shaped phrase, cut to the turn's length as it cuts it
    phrase = signals.utterance(140.0, syllables=int(max(DURATIONS_S) * 4), seed=1)
    pcm = signals.to_pcm(phrase, -24.0)[:n]
    if version == "before":
        before = load_before()
        if before is None:
            raise SystemExit(f"error: needs git to load revision {BEFORE}")

        def measure() -> object:
            return before.measure_turn(pcm, None)
    else:
        baseline = full_baseline()
        segments = ((0, n // FRAME_SAMPLES),)

        def measure() -> object:
            return every_feature(baseline, pcm, segments)

    for _ in range(WARM_UP_TURNS + turns):
        measure()


def counts(version: str, seconds: float, turns: int, out_dir: Path) -> dict[str, int]:
    """Cachegrind's totals for one process of ``workload``."""
    out = out_dir / f"{version}.{turns}"
    cmd = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=yes",
        "--branch-sim=yes",
        f"--cachegrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        version,
        "--seconds",
        str(seconds),
        "--turns",
        str(turns),
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True)
    events: list[str] = []
    totals: list[int] = []
    for line in out.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            totals = [int(v) for v in line.split()[1:]]
    return dict(zip(events, totals, strict=True))


def stall_cycles(per_turn: dict[str, float]) -> float:
    """The cycle model's instruction-cache misses and mispredicts (the module docstring)."""
    return 12.0 * per_turn["I1mr"] + 15.0 * (per_turn["Bcm"] + per_turn["Bim"])


def cycles(per_turn: dict[str, float]) -> float:
    """The rough cycle model of the module docstring."""
    return per_turn["Ir"] / 3.0 + stall_cycles(per_turn)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="turn length (default 0.5)")
    ap.add_argument("--turns", type=int, default=30, help="turns counted (default 30)")
    ap.add_argument("--child", choices=VERSIONS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workload(args.child, args.seconds, args.turns)
        return 0
    if not 0.1 <= args.seconds <= 30.0 or args.turns < 1:
        print("error: need 0.1 <= --seconds <= 30 and --turns >= 1", file=sys.stderr)
        return 2
    if shutil.which("valgrind") is None:
        print("error: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    jobs = [(v, t) for v in VERSIONS for t in (0, args.turns)]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: counts(job[0], args.seconds, job[1], Path(tmp)), jobs))
    by_job = dict(zip(jobs, results, strict=True))
    per_turn = {
        v: {
            e: (by_job[(v, args.turns)][e] - by_job[(v, 0)][e]) / args.turns for e in by_job[(v, 0)]
        }
        for v in VERSIONS
    }
    print(
        f"per {args.seconds:g} s speech-shaped turn, {args.turns} turns after "
        f"{WARM_UP_TURNS} warm-up ({sys.version.split()[0]}, numpy {numpy_version()})"
    )
    print(f"{'':<22}{'now':>12}{'before':>12}{'ratio':>8}")
    for event, label in SHOWN:
        now, was = per_turn["now"][event], per_turn["before"][event]
        print(f"{label:<22}{now:>12,.0f}{was:>12,.0f}{now / max(was, 1.0):>8.2f}")
    now_c, was_c = cycles(per_turn["now"]), cycles(per_turn["before"])
    print(f"{'cycle model':<22}{now_c:>12,.0f}{was_c:>12,.0f}{now_c / was_c:>8.2f}")
    fetch = stall_cycles(per_turn["now"])
    print(f"share of the model's cycles in I1 misses and mispredicts (now): {fetch / now_c:.0%}")
    return 0


def numpy_version() -> str:
    import numpy

    return numpy.__version__


if __name__ == "__main__":
    raise SystemExit(main())
