"""CPU cost of the per-turn features per second of turn audio, against the code before them.

``measure_turn`` now computes energy, pitch, speech rate, the turn's prosody (pitch range,
final contour, level), voice quality (jitter, shimmer, HNR, alpha ratio) and the tone search;
``turn_acoustics`` adds the arousal score and the rounding for the record, and
``CallProsody.observe`` compares the turn with its speaker's baseline (``prosody``,
``arousal_rel``; here against a full baseline of ``prosody.MAX_TURNS`` earlier turns, the
costliest). Each turn is timed through both. The anchor is
``measure_turn`` as it was before (energy, pitch at a 10 ms hop, speech rate; git revision
``BEFORE``, loaded from git into this process), timed in the same run on the same turns, so
the ratio holds whatever else loads the machine.

Turns: a 120 Hz harmonic complex at telephone quality (voiced throughout, the worst case:
every pitch frame and every glottal period is analysed), the same with a VAD mask marking
every other 200 ms as pause, white noise, and a speech-shaped phrase (``signals.utterance``).
Each is timed with ``time.process_time`` over many calls, taking turns with the anchor within
each repeat; the best of several repeats is reported (the least disturbed by other load), with
the median of the repeats beside it, and the ratio to the anchor is the median of each
repeat's own ratio.
Then whole calls replayed with and without features, call by call in turns (the committed
fixtures, and the seven AMI real-speech calls of ``fixtures/real_calls.py`` when ``../shared``
is there), over the turn lengths real calls have: the CPU the features add per second of turn
audio (everything they bring, as the difference of two timings: the verdict's figure), and
beside it their own computation's CPU (``turn_acoustics`` and ``CallProsody.observe``, timed
around each call the session makes: the stable part). Each length and each mix is printed
against issue 15's target (``TARGET_US_PER_S``), and the short turns of each mix again in a
loop, one by one and joined several at a time into one turn (``batching_bound``: what
batching turns could save at most). No assertions.

Run: ``.venv/bin/python bench/features_speed.py`` (``--quick``: fewer repeats)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vad_scoring import mask_to_spans  # noqa: E402
from pitch_accuracy import phone_line  # noqa: E402

from fixtures import signals  # noqa: E402
from fixtures.signals import harmonic_complex  # noqa: E402
from mise_twilio.core.audio import FRAME_SAMPLES, SAMPLE_RATE_HZ  # noqa: E402
from mise_twilio.core.call import SessionParams  # noqa: E402
from mise_twilio.core.features import speech_mask, turn_acoustics  # noqa: E402
from mise_twilio.core.prosody import MAX_TURNS, CallProsody  # noqa: E402
from mise_twilio.core.records import TurnRecord  # noqa: E402
from mise_twilio.replay import read_fixture, replay_offline  # noqa: E402

BEFORE = "a8559e6"
"""The last revision before issue 15's features (energy, pitch at 10 ms, speech rate)."""
DURATIONS_S = (0.5, 1.0, 3.0, 10.0, 30.0)
BUDGET_S = 0.3  # CPU per repeat
TARGET_US_PER_S = 1000.0
"""Issue 15's cost target: every per-turn feature together, CPU per second of turn audio."""
SHORT_TURN_S = 1.0
"""Whole calls: the turns under this long are also reported on their own."""


def load_before() -> ModuleType | None:
    """``core/features.py`` at ``BEFORE``, imported under another name (None without git)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:mise_twilio/core/features.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "features_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("features_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["features_before"] = module
    spec.loader.exec_module(module)
    return module


def cpu_per_call(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """CPU seconds per call of each of ``fns`` in each of ``repeats`` repeats, the functions
    taking turns within each repeat (so a slow spell of the machine falls on all of them, not
    on one: the ratio of two in the same repeat holds even when the absolute figures drift)."""
    counts = []
    for fn in fns:
        fn()  # warm up
        start = time.process_time()
        calls = 0
        while time.process_time() - start < 0.05:
            fn()
            calls += 1
        counts.append(max(3, int(BUDGET_S * calls / (time.process_time() - start))))
    results: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, n, out in zip(fns, counts, results, strict=True):
            t0 = time.process_time()
            for _ in range(n):
                fn()
            out.append((time.process_time() - t0) / n)
    return results


class ReplayCost(NamedTuple):
    """What the features cost over whole calls, µs CPU per second of turn audio."""

    added_best: float
    """Replays with features minus replays without, each call's least disturbed pass of
    each kind, summed over the calls."""
    added_median: float
    """The same with each call's median pass."""
    own_best: float
    """The features' own computation: ``turn_acoustics`` and ``CallProsody.observe``, timed
    around each call the session makes, each turn's least disturbed repeat, summed over the
    turns."""
    own_median: float
    short_own_best: float | None
    """``own_best`` over the turns whose audio is under ``SHORT_TURN_S`` (None without
    any): what short turns cost inside a call, after the per-frame work between them, which
    makes a turn dearer than a loop over it shows (bench/README.md)."""
    short_turns: int
    durations_s: list[float]
    """Each turn's duration."""
    short_inputs: list[TurnInput]
    """What ``turn_acoustics`` was given for each turn under ``SHORT_TURN_S``."""


class TurnInput(NamedTuple):
    """One turn as the session hands it to ``turn_acoustics``."""

    pcm: NDArray[np.int16]
    segments: tuple[tuple[int, int], ...]
    start_frame: int


def replay_cost(calls: list[list[str]], repeats: int) -> ReplayCost:
    """The CPU the per-turn features cost when ``calls`` (Twilio messages, one per line) are
    replayed through ``replay_offline``.

    Two figures. What the features add to a whole replay: everything they bring (the turn
    records' feature fields, the speaker baselines, the caches they evict under the
    per-frame work), but the difference of two timings. And the features' own computation
    (``turn_acoustics`` and the baseline comparison): stable, but only that. Replays with and
    without features take turns call by call, so a slow spell of the machine falls on both."""
    import mise_twilio.core.call as call_module

    name = "turn_acoustics"  # as the session module imported it
    measured, observe = getattr(call_module, name), CallProsody.observe
    spent: list[float] = []  # per turn: its features, then its comparison with the baseline
    audio_s: list[float] = []  # per turn: the audio measured
    inputs: list[TurnInput] = []  # per turn: what it was measured on (an untimed replay)

    def captured(pcm: NDArray[np.int16], *args: Any, **kwargs: Any) -> Any:
        inputs.append(TurnInput(pcm.copy(), *args))
        return measured(pcm, *args, **kwargs)

    def timed(pcm: NDArray[np.int16], *args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        try:
            return measured(pcm, *args, **kwargs)
        finally:
            spent.append(time.process_time() - t0)
            audio_s.append(pcm.shape[0] / SAMPLE_RATE_HZ)

    def timed_observe(*args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        try:
            return observe(*args, **kwargs)
        finally:
            spent[-1] += time.process_time() - t0

    setattr(call_module, name, captured)
    try:
        durations = [
            r.duration_ms / 1000.0
            for lines in calls
            for r in replay_offline(lines)
            if isinstance(r, TurnRecord)
        ]
    finally:
        setattr(call_module, name, measured)
    off = SessionParams(measure_features=False)
    with_features: list[list[float]] = [[] for _ in calls]
    without: list[list[float]] = [[] for _ in calls]
    own: list[list[float]] = []
    setattr(call_module, name, timed)
    CallProsody.observe = timed_observe  # type: ignore[method-assign]
    try:
        for _ in range(repeats):
            spent.clear()
            audio_s.clear()
            for lines, on, off_times in zip(calls, with_features, without, strict=True):
                t0 = time.process_time()
                replay_offline(lines)
                on.append(time.process_time() - t0)
                t0 = time.process_time()
                replay_offline(lines, off)
                off_times.append(time.process_time() - t0)
            own.append(list(spent))
    finally:
        setattr(call_module, name, measured)
        CallProsody.observe = observe  # type: ignore[method-assign]
    per_turn = list(zip(*own, strict=True))
    scale = 1e6 / sum(durations)
    short = [(s, min(t)) for s, t in zip(audio_s, per_turn, strict=True) if s < SHORT_TURN_S]
    short_inputs = [i for i, s in zip(inputs, audio_s, strict=True) if s < SHORT_TURN_S]
    short_s = sum(s for s, _ in short)
    return ReplayCost(
        added_best=scale
        * sum(min(a) - min(b) for a, b in zip(with_features, without, strict=True)),
        added_median=scale
        * sum(
            statistics.median(a) - statistics.median(b)
            for a, b in zip(with_features, without, strict=True)
        ),
        own_best=scale * sum(min(t) for t in per_turn),
        own_median=scale * sum(statistics.median(t) for t in per_turn),
        short_own_best=1e6 * sum(c for _, c in short) / short_s if short else None,
        short_turns=len(short),
        durations_s=durations,
        short_inputs=short_inputs,
    )


BATCH_GAP_FRAMES = 3
"""Zero frames between two turns joined into one: more than a YIN frame (47 ms), so that no
frame of one turn reaches into another."""


def batching_bound(turns: list[TurnInput], sizes: tuple[int, ...], repeats: int) -> list[float]:
    """What measuring turns in batches could save at most: ``turns`` measured by
    ``turn_acoustics`` one by one (size 1), or joined ``k`` at a time (``BATCH_GAP_FRAMES`` of
    zeros between them) and each join measured as one turn: the per-turn costs that a batch
    shares (framing, FFT calls, the Python and numpy calls of every step) are then paid once
    per join. µs CPU per second of the turns' own audio, best of the repeats, per size. A
    bound, not a design: a join's statistics are not its turns' own, and a batched
    implementation would add the per-turn bookkeeping this leaves out."""
    fns: list[Callable[[], object]] = []
    for k in sizes:
        joins = [_join(turns[i : i + k]) for i in range(0, len(turns), k)]
        fns.append(partial(_measure_all, joins))
    audio_s = sum(t.pcm.shape[0] // FRAME_SAMPLES for t in turns) * FRAME_SAMPLES / SAMPLE_RATE_HZ
    return [min(t) / audio_s * 1e6 for t in cpu_per_call(fns, repeats)]


def _join(turns: list[TurnInput]) -> TurnInput:
    parts: list[NDArray[np.int16]] = []
    masks: list[NDArray[np.bool_]] = []
    gap = np.zeros(BATCH_GAP_FRAMES * FRAME_SAMPLES, dtype=np.int16)
    for turn in turns:
        n_frames = turn.pcm.shape[0] // FRAME_SAMPLES
        parts += [turn.pcm[: n_frames * FRAME_SAMPLES], gap]
        masks += [
            speech_mask(n_frames, turn.segments, turn.start_frame),  # as turn_acoustics makes it
            np.zeros(BATCH_GAP_FRAMES, dtype=np.bool_),
        ]
    return TurnInput(np.concatenate(parts), mask_to_spans(np.concatenate(masks)), 0)


def _measure_all(turns: list[TurnInput]) -> None:
    for turn in turns:
        turn_acoustics(turn.pcm, turn.segments, turn.start_frame)


def ami_calls() -> list[list[str]] | None:
    """The seven AMI real-speech calls (clean, two tracks) as wire lines; ``None`` without
    ``../shared/real-speech/ami``."""
    from fixtures.real_calls import AMI_DIR, FILES, build_call, wire_lines

    if not AMI_DIR.is_dir():
        return None
    return [wire_lines(build_call(name, "clean")) for name in FILES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    before = load_before()
    baseline = full_baseline()

    longest = max(DURATIONS_S)
    voiced = phone_line(harmonic_complex(120.0, longest))
    noise = phone_line(np.random.default_rng(0).standard_normal(int(longest * SAMPLE_RATE_HZ)))
    phrase = signals.to_pcm(signals.utterance(140.0, syllables=int(longest * 4), seed=1), -24.0)
    cases = ("voiced, no mask", "voiced, half pause mask", "white noise, no mask", "speech-shaped")
    anchor = f"before ({BEFORE}) µs/s" if before else "before: no git"
    print(f"CPU per second of turn audio: best of {repeats} (median)")
    print(f"{'turn':<25}{'audio s':>8}{anchor:>26}{'now µs/s':>18}{'ratio':>7}")
    worst: dict[float, float] = {}  # the costliest case's best figure per turn length, µs/s
    for duration in DURATIONS_S:
        n = int(duration * SAMPLE_RATE_HZ)
        n_frames = n // FRAME_SAMPLES
        half_mask = (np.arange(n_frames) // 10) % 2 == 0
        inputs: list[tuple[NDArray[np.int16], NDArray[np.bool_] | None]] = [
            (voiced[:n], None),
            (voiced[:n], half_mask),
            (noise[:n], None),
            (phrase[:n], None),
        ]
        for name, (pcm, mask) in zip(cases, inputs, strict=True):
            segments = ((0, n_frames),) if mask is None else mask_to_spans(mask)
            fns: list[Callable[[], object]] = [partial(every_feature, baseline, pcm, segments)]
            if before is not None:
                fns.append(partial(before.measure_turn, pcm, mask))
            timed = cpu_per_call(fns, repeats)
            best, med = min(timed[0]), statistics.median(timed[0])
            worst[duration] = max(worst.get(duration, 0.0), best / duration * 1e6)
            now = f"{best / duration * 1e6:.0f} ({med / duration * 1e6:.0f})"
            if before is not None:
                b_best, b_med = min(timed[1]), statistics.median(timed[1])
                was = f"{b_best / duration * 1e6:.0f} ({b_med / duration * 1e6:.0f})"
                # each repeat's ratio, then their median: a repeat's two timings ran seconds
                # apart, while the machine's slow spells here last tens of seconds
                paired = [new / old for new, old in zip(timed[0], timed[1], strict=True)]
                ratio = f"{statistics.median(paired):.2f}"
            else:
                was, ratio = "-", "-"
            print(f"{name:<25}{duration:>8.1f}{was:>26}{now:>18}{ratio:>7}")
    print(f"\ntarget: at most {TARGET_US_PER_S:.0f} µs/s (best of the repeats, costliest case)")
    for duration, us in worst.items():
        verdict = "met" if us <= TARGET_US_PER_S else "missed"
        print(f"  {duration:>4.1f} s turns: {us:.0f} µs/s, {verdict}")
    fixtures = [read_fixture(p) for p in sorted((ROOT / "fixtures").glob("*.jsonl"))]
    mixes = [("fixture calls", fixtures), ("AMI real-speech calls", ami_calls())]
    print()
    for what, calls in mixes:
        if calls is None:
            print(f"{what}: not measured (../shared/real-speech/ami is missing)")
            continue
        cost = replay_cost(calls, repeats)
        durations = cost.durations_s
        verdict = "met" if cost.added_best <= TARGET_US_PER_S else "missed"
        print(
            f"{what} ({len(durations)} turns, median {statistics.median(durations):.1f} s, "
            f"{sum(d < SHORT_TURN_S for d in durations)} under {SHORT_TURN_S:.0f} s): the "
            "features add "
            f"{cost.added_best:.0f} ({cost.added_median:.0f}) µs CPU per second of turn audio, "
            f"their own computation {cost.own_best:.0f} ({cost.own_median:.0f}); "
            f"target {verdict}"
        )
        if cost.short_own_best is not None:
            verdict = "met" if cost.short_own_best <= TARGET_US_PER_S else "missed"
            print(
                f"  its {cost.short_turns} turns under {SHORT_TURN_S:.0f} s, inside the calls: "
                f"their own computation {cost.short_own_best:.0f} µs/s; target {verdict}"
            )
            sizes = (1, 4, cost.short_turns)
            bound = batching_bound(cost.short_inputs, sizes, repeats)
            joined = [f"{us:.0f} µs/s {k} at a time" for k, us in zip(sizes, bound, strict=True)]
            print(
                "  the same turns in a loop, turn_acoustics only, joined into one turn: "
                + ", ".join(joined)
                + " (a bound on what batching could save: batching_bound)"
            )


def every_feature(
    baseline: CallProsody, pcm: NDArray[np.int16], segments: tuple[tuple[int, int], ...]
) -> object:
    """What a session computes for one turn: ``turn_acoustics``, then the comparison with the
    speaker's ``baseline`` (left as it is)."""
    return baseline.observe("caller", turn_acoustics(pcm, segments, 0), include=False)


def full_baseline() -> CallProsody:
    """A caller baseline holding ``MAX_TURNS`` earlier turns (its medians the costliest)."""
    baseline = CallProsody()
    turn = phone_line(harmonic_complex(120.0, 1.0))
    acoustics = turn_acoustics(turn, ((0, turn.shape[0] // FRAME_SAMPLES),), 0)
    for _ in range(MAX_TURNS):
        baseline.observe("caller", acoustics)
    return baseline


if __name__ == "__main__":
    main()
