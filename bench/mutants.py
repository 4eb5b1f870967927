"""A small mutation check: does the test suite notice one-line bugs in the core?

Each mutant replaces one exact piece of source text (it must occur exactly once) in a copy of
the repository's tracked files, then runs pytest there: first the test modules most likely to
notice (``-x``, fast), and, if they all pass, the whole suite. A mutant is *killed* when some
test fails, and *survives* when the whole suite passes with the bug in place: a survivor is a
behaviour no test pins down. The golden records (``tests/test_golden.py``, byte-identical)
run last and on their own: a mutant only they kill changed a value that no behaviour test
checks, and is listed as ``golden``. The list is hand-written (one plausible slip per rule that
matters), not generated: a few dozen meaningful mutants say more than thousands of ``<`` to
``<=`` flips. A kill counts only if the same tests pass on the unmutated copy (checked once
per test selection; the run stops if they do not). Not part of ``.ci/run``; each mutant costs
up to one suite run (about five minutes here); ``tests/test_bench_mutants.py`` checks in CI
that every mutant still applies.

Run: ``.venv/bin/python bench/mutants.py [--only NAME ...] [--full] [--list]``
(``--full`` always runs the whole suite, to list every test that kills a mutant).
Prints one line per mutant and the survivors; exit status 1 if any survived.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    """Test modules to run first (the whole suite follows if they pass)."""


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "vad_hysteresis_collapsed",
        "mise_twilio/core/vad.py",
        "(tone or (zi >= start_l and mi >= edge_db))",
        "(tone or mi >= edge_db)",
        ("tests/test_vad.py",),
    ),
    Mutant(
        "vad_pre_roll_removed",
        "mise_twilio/core/vad.py",
        "tr.seg_start = max(first, run_start - pre)",
        "tr.seg_start = run_start",
        ("tests/test_vad.py",),
    ),
    Mutant(
        "vad_hangover_longer",
        "mise_twilio/core/vad.py",
        "elif frame - tr.last_active >= tr.hang + tr.bridge:",
        "elif frame - tr.last_active >= 2 * tr.hang + tr.bridge:",
        ("tests/test_vad.py", "tests/test_call.py"),
    ),
    Mutant(
        "vad_echo_check_off",
        "mise_twilio/core/vad.py",
        "if active and echo_frame:",
        "if False:",
        ("tests/test_vad.py", "tests/test_analytics.py"),
    ),
    Mutant(
        "vad_segment_ends_on_the_model_logit",
        "mise_twilio/core/vad.py",
        "                        last = tr.last_edge if tr.last_edge >= tr.seg_start"
        " else tr.last_active\n",
        "                        last = tr.last_active\n",
        ("tests/test_vad.py", "tests/test_call.py"),
    ),
    Mutant(
        "vad_digital_silence_moves_floor",
        "mise_twilio/core/vad.py",
        "            if flag:\n",
        "            if False:\n",
        ("tests/test_vad.py",),
    ),
    Mutant(
        "turns_backchannel_limit_doubled",
        "mise_twilio/core/turns.py",
        "if end - start <= self._bc_max:",
        "if end - start <= 2 * self._bc_max:",
        ("tests/test_turns.py",),
    ),
    Mutant(
        "turns_barge_in_minimum_halved",
        "mise_twilio/core/turns.py",
        "end - start >= self._int_min",
        "end - start >= self._int_min // 2",
        ("tests/test_turns.py", "tests/test_analytics.py"),
    ),
    Mutant(
        "turns_yield_window_doubled",
        "mise_twilio/core/turns.py",
        "end - o_start <= self._yield",
        "end - o_start <= 2 * self._yield",
        ("tests/test_turns.py", "tests/test_analytics.py"),
    ),
    Mutant(
        "turns_pause_doubled",
        "mise_twilio/core/turns.py",
        "if now - turn.last_end >= self._pause + self._lookback:",
        "if now - turn.last_end >= 2 * self._pause + self._lookback:",
        ("tests/test_turns.py", "tests/test_call.py"),  # only delays the close: on_start splits
    ),
    Mutant(
        "track_gap_not_counted_lost",
        "mise_twilio/core/timeline.py",
        "        self.lost_samples += n_samples\n",
        "",
        ("tests/test_timeline.py", "tests/test_call.py"),
    ),
    Mutant(
        "track_repeated_chunk_accepted",
        "mise_twilio/core/timeline.py",
        "chunk <= self._last_chunk",
        "chunk < self._last_chunk",
        ("tests/test_timeline.py",),
    ),
    Mutant(
        "turn_lost_ms_halved",
        "mise_twilio/core/call.py",
        "lost_ms=closed.lost_samples // audio.SAMPLES_PER_MS,",
        "lost_ms=closed.lost_samples // (2 * audio.SAMPLES_PER_MS),",
        ("tests/test_call.py",),
    ),
    Mutant(
        "call_stop_before_start_closes",
        "mise_twilio/core/call.py",
        'State.AWAITING_START: frozenset({"connected", "start"}),',
        'State.AWAITING_START: frozenset({"connected", "start", "stop"}),',
        ("tests/test_call_fuzz.py",),
    ),
    Mutant(
        "messages_api_key_forwarded",
        "mise_twilio/core/messages.py",
        'params.pop("api_key", None)',
        "None",
        ("tests/test_call.py", "tests/e2e/test_secure_server.py"),
    ),
    Mutant(
        "summary_silence_incident_threshold_doubled",
        "mise_twilio/core/summary.py",
        "if s2 - e1 > SILENCE_INCIDENT_MS",
        "if s2 - e1 > 2 * SILENCE_INCIDENT_MS",
        ("tests/test_call.py",),
    ),
    Mutant(
        "status_released_after_terminal",
        "mise_twilio/core/lifecycle.py",
        "    def _release(self, call: _Call, event: CallStatusEvent, now_s: float)"
        " -> list[StatusEvent]:\n"
        "        if call.terminal_at_s is not None:\n",
        "    def _release(self, call: _Call, event: CallStatusEvent, now_s: float)"
        " -> list[StatusEvent]:\n"
        "        if False:\n",
        ("tests/test_lifecycle.py",),
    ),
    Mutant(
        "status_duplicate_sequence_accepted",
        "mise_twilio/core/lifecycle.py",
        "if seq is not None and seq in call.seen_seqs:",
        "if False:",
        ("tests/test_lifecycle.py",),
    ),
    Mutant(
        "hub_in_flight_batch_redelivered",
        "mise_twilio/server/sinks/hub.py",
        "            if lane.held_spooled:\n                lane.spool_skip += len(batch)\n",
        "",
        ("tests/test_sinks_hub.py",),
    ),
    Mutant(
        "messages_lax_base64",
        "mise_twilio/core/messages.py",
        "strict_mode=True",
        "strict_mode=False",
        ("tests/test_messages.py", "tests/test_call.py"),
    ),
    Mutant(
        "features_dynamic_range_from_p90",
        "mise_twilio/core/features.py",
        "p10, p95 = _sorted_quantiles(ordered, (0.10, 0.95))",
        "p10, p95 = _sorted_quantiles(ordered, (0.10, 0.90))",
        ("tests/test_features.py",),
    ),
    Mutant(
        "voice_period_factor_ignored",
        "mise_twilio/core/voice.py",
        "ok_p = pair & (ratio_p <= params.max_period_factor)",
        "ok_p = pair",
        ("tests/test_voice.py",),
    ),
    Mutant(
        "voice_amplitude_factor_ignored",
        "mise_twilio/core/voice.py",
        "ok_a = pair & (ratio_a <= params.max_amplitude_factor)",
        "ok_a = pair",
        ("tests/test_voice.py",),
    ),
    Mutant(
        "voice_shimmer_in_power_db",
        "mise_twilio/core/voice.py",
        "shimmer = mean(20.0 * np.log10(ratio_a[ok_a]))",
        "shimmer = mean(10.0 * np.log10(ratio_a[ok_a]))",
        ("tests/test_voice.py",),
    ),
    Mutant(
        "voice_jitter_over_every_period",
        "mise_twilio/core/voice.py",
        "jitter = 100.0 * mean(diffs) / mean(period[used])",
        "jitter = 100.0 * mean(diffs) / mean(period)",
        ("tests/test_voice.py",),
    ),
    Mutant(
        "voice_alpha_low_band_full",
        "mise_twilio/core/voice.py",
        "_ALPHA_LOW_HZ = (300.0, 1000.0)",
        "_ALPHA_LOW_HZ = (0.0, 1000.0)",
        ("tests/test_voice.py",),
    ),
    Mutant(
        "features_contour_threshold_halved",
        "mise_twilio/core/features.py",
        "if change >= params.contour_threshold_semitones:",
        "if change >= 0.5 * params.contour_threshold_semitones:",
        ("tests/test_prosody.py", "tests/test_features.py"),
    ),
    Mutant(
        "features_f0_level_plain_mean",
        "mise_twilio/core/features.py",
        "cut = v.shape[0] // 4",
        "cut = 0",
        ("tests/test_prosody.py", "tests/test_features.py"),
    ),
    Mutant(
        "features_octave_fold_at_an_octave",
        "mise_twilio/core/features.py",
        "_OCTAVE_FOLD_SEMITONES = 9.0",
        "_OCTAVE_FOLD_SEMITONES = 12.0",
        ("tests/test_prosody.py", "tests/test_features.py"),
    ),
    Mutant(
        "features_f0_on_voiced_frames_far_under_the_loudest",
        "mise_twilio/core/features.py",
        "has_f0 = voiced & (level_db[rows] >= loudest - params.f0_range_db)",
        "has_f0 = voiced",
        ("tests/test_features.py",),
    ),
    Mutant(
        "features_track_fold_neighbours_within_2",
        "mise_twilio/core/features.py",
        "_NEIGHBOURS = np.array([0, 1, 2, 4, 5, 6])",
        "_NEIGHBOURS = np.array([1, 2, 4, 5])",
        ("tests/test_features.py",),
    ),
    Mutant(
        "features_pitch_range_not_level_gated",
        "mise_twilio/core/features.py",
        "loud = lv >= float(lv.max()) - params.pitch_range_level_db",
        "loud = lv >= -np.inf",
        ("tests/test_prosody.py", "tests/test_features.py"),
    ),
    Mutant(
        "prosody_backchannels_join_baseline",
        "mise_twilio/core/prosody.py",
        "if include and level is not None and prosody.voiced_frames >= MIN_VOICED_FRAMES:",
        "if level is not None and prosody.voiced_frames >= MIN_VOICED_FRAMES:",
        ("tests/test_prosody.py", "tests/test_call.py"),
    ),
    Mutant(
        "prosody_rate_ratio_inverted",
        "mise_twilio/core/prosody.py",
        "features.speech_rate_hz / usual if usual > 0.0 else None",
        "usual / features.speech_rate_hz if features.speech_rate_hz > 0.0 else None",
        ("tests/test_prosody.py",),
    ),
    Mutant(
        "prosody_first_turn_against_the_model_mean",
        "mise_twilio/core/prosody.py",
        "return None  # no usual yet",
        "return (score - self._model.intercept) / self._model.within_speaker_sd",
        ("tests/test_prosody.py", "tests/test_call.py"),
    ),
    Mutant(
        "prosody_spread_without_prior",
        "mise_twilio/core/prosody.py",
        "/ (k + dev.shape[0]))",
        "/ (k + 1.0))",
        ("tests/test_prosody.py",),
    ),
    Mutant(
        "arousal_inputs_not_clipped",
        "mise_twilio/core/arousal.py",
        "s += weight * min(max((v - mean) / scale, -_Z_CLIP), _Z_CLIP)",
        "s += weight * (v - mean) / scale",
        ("tests/test_arousal.py", "tests/test_prosody.py"),
    ),
    Mutant(
        "summary_escalation_boundary_exclusive",
        "mise_twilio/core/summary.py",
        "and t.arousal_rel >= ESCALATION_AROUSAL_REL",
        "and t.arousal_rel > ESCALATION_AROUSAL_REL",
        ("tests/test_summary.py",),
    ),
    Mutant(
        "summary_escalation_slow_answer_never_forgotten",
        "mise_twilio/core/summary.py",
        "after_slow, waiting = waiting, False",
        "after_slow = waiting",
        ("tests/test_summary.py",),
    ),
    Mutant(
        "summary_escalation_ignores_slow_answers",
        "mise_twilio/core/summary.py",
        "and (t.barge_in or after_slow)",
        "and t.barge_in",
        ("tests/test_summary.py",),
    ),
    Mutant(
        "summary_peak_index_within_rated",
        "mise_twilio/core/summary.py",
        "peak_turn_index=rated[peak_at].index",
        "peak_turn_index=peak_at",
        ("tests/test_summary.py",),
    ),
    Mutant(
        "summary_trend_per_second",
        "mise_twilio/core/summary.py",
        "minutes = np.asarray([t.start_ms for t in rated], dtype=np.float64) / 60_000.0",
        "minutes = np.asarray([t.start_ms for t in rated], dtype=np.float64) / 1_000.0",
        ("tests/test_summary.py",),
    ),
    Mutant(
        "tone_glide_counts_as_tone",
        "mise_twilio/core/tone.py",
        "& (np.abs(freq[1:] - freq[:-1]) <= params.tone_max_step * freq[1:])",
        "",
        ("tests/test_tone.py",),
    ),
    Mutant(
        "tone_min_length_one_frame_shorter",
        "mise_twilio/core/tone.py",
        "if (b - a) * FRAME_MS + sum(edges_ms) <= params.tone_min_ms - FRAME_MS:",
        "if (b - a) * FRAME_MS + sum(edges_ms) <= params.tone_min_ms - 2 * FRAME_MS:",
        ("tests/test_tone.py",),
    ),
    Mutant(
        "tone_partial_edges_ignored",
        "mise_twilio/core/tone.py",
        "                edges_ms[side] = FRAME_MS // 2",
        "                edges_ms[side] = 0",
        ("tests/test_tone.py",),
    ),
    Mutant(
        "status_answered_by_dropped",
        "mise_twilio/core/status.py",
        "answered_by=_answered_by(params),",
        "answered_by=None if _answered_by(params) else None,",
        ("tests/test_status.py", "tests/test_lifecycle.py"),
    ),
    Mutant(
        "lifecycle_held_status_not_received",
        "mise_twilio/core/lifecycle.py",
        "        call.received_statuses.add(event.call_status)\n",
        "        if seq is None or seq < call.next_seq:\n"
        "            call.received_statuses.add(event.call_status)\n",
        ("tests/test_lifecycle.py",),
    ),
)


def copy_tree(dest: Path) -> None:
    """The tracked files (and uncommitted edits to them) of the repository, into ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def pytest(tree: Path, args: list[str]) -> tuple[bool, str]:
    """Run pytest in ``tree``, its own ``mise_twilio`` first on the path: (passed, failure)."""
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    failed = [ln for ln in done.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return done.returncode == 0, failed[0] if failed else ""


@contextlib.contextmanager
def work_tree() -> Iterator[Path]:
    """A copy of the tracked files in a temporary directory, with ``../shared`` beside it
    (a link to the one beside the repository): the tests read real speech from there, and
    without it they fail whatever the mutant."""
    with tempfile.TemporaryDirectory(prefix="mise-mutant-") as tmp:
        tree = Path(tmp) / ROOT.name
        copy_tree(tree)
        if (ROOT.parent / "shared").exists():
            (Path(tmp) / "shared").symlink_to(ROOT.parent / "shared")
        yield tree


_UNMUTATED: dict[tuple[str, ...], tuple[bool, str]] = {}
"""pytest's verdict on the unmutated tree, per argument list (each run once, when a mutant is
first killed by it)."""


def check_unmutated(args: tuple[str, ...]) -> None:
    """Exit if the tests that killed a mutant fail without it too: the kill then says nothing
    about the mutant (a missing ../shared, a broken test, a service that is not there)."""
    if args not in _UNMUTATED:
        with work_tree() as tree:
            _UNMUTATED[args] = pytest(tree, list(args))
    passed, failure = _UNMUTATED[args]
    if not passed:
        what = " ".join(args) or "the whole suite"
        raise SystemExit(f"{what} fails without any mutant: {failure}")


GOLDEN = "tests/test_golden.py"
"""Byte-identical records: they fail on almost any change to a value, so a mutant only they
kill is reported as such (``golden``), not as a behaviour some test pins down."""


SELF_TEST = "tests/test_bench_mutants.py"
"""Checks that each mutant's text is in the tree: in a mutated tree it fails by design."""


def run(mutant: Mutant, *, full: bool) -> tuple[str, str]:
    """The verdict (``killed``, ``golden``: killed only by the golden records, ``SURVIVED``)
    and the first failing test."""
    source = (ROOT / mutant.path).read_text(encoding="utf-8")
    count = source.count(mutant.old)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the text to replace occurs {count} times, not once")
    with work_tree() as tree:
        (tree / mutant.path).write_text(source.replace(mutant.old, mutant.new), encoding="utf-8")
        if not full:
            passed, failure = pytest(tree, list(mutant.tests))
            if not passed:
                check_unmutated(mutant.tests)
                return "killed", failure
        rest = ("--ignore", GOLDEN, "--ignore", SELF_TEST)
        passed, failure = pytest(tree, list(rest))
        if not passed:
            check_unmutated(rest)
            return "killed", failure
        passed, failure = pytest(tree, [GOLDEN])
    if not passed:
        check_unmutated((GOLDEN,))
        return "golden", failure
    return "SURVIVED", ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutant names to run")
    parser.add_argument("--full", action="store_true", help="always run the whole suite")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:42} {m.path}")
        return 0
    verdicts: dict[str, list[str]] = {"killed": [], "golden": [], "SURVIVED": []}
    for m in chosen:
        t0 = time.monotonic()
        verdict, failure = run(m, full=args.full)
        print(f"{verdict:8} {m.name:42} {time.monotonic() - t0:5.1f} s  {failure}", flush=True)
        verdicts[verdict].append(m.name)
    print(
        f"\n{len(verdicts['killed'])} of {len(chosen)} killed by a behaviour test, "
        f"{len(verdicts['golden'])} only by the golden records, "
        f"{len(verdicts['SURVIVED'])} survived"
    )
    for verdict, label in (("golden", "golden only"), ("SURVIVED", "survivor")):
        for name in verdicts[verdict]:
            print(f"{label}: {name}")
    return 1 if verdicts["SURVIVED"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
