"""A small mutation check: does the test suite notice one-line bugs in the core?

Each mutant replaces one exact piece of source text (it must occur exactly once) in a copy of
the repository's tracked files, then runs pytest there: first the test modules most likely to
notice (``-x``, fast), and, if they all pass, the whole suite. A mutant is *killed* when some
test fails, and *survives* when the whole suite passes with the bug in place: a survivor is a
behaviour no test pins down. The list is hand-written (one plausible slip per rule that
matters), not generated: a few dozen meaningful mutants say more than thousands of ``<`` to
``<=`` flips. Not part of ``.ci/run``; each mutant costs up to one suite run (about a minute).

Run: ``.venv/bin/python bench/mutants.py [--only NAME ...] [--full] [--list]``
(``--full`` always runs the whole suite, to list every test that kills a mutant).
Prints one line per mutant and the survivors; exit status 1 if any survived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
        ("tests/test_turns.py",),
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
        "p10, p95 = _quantiles(levels, (0.10, 0.95))",
        "p10, p95 = _quantiles(levels, (0.10, 0.90))",
        ("tests/test_features.py",),
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


def run(mutant: Mutant, *, full: bool) -> tuple[bool, str]:
    source = (ROOT / mutant.path).read_text(encoding="utf-8")
    count = source.count(mutant.old)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the text to replace occurs {count} times, not once")
    with tempfile.TemporaryDirectory(prefix="mise-mutant-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        (tree / mutant.path).write_text(source.replace(mutant.old, mutant.new), encoding="utf-8")
        if not full:
            passed, failure = pytest(tree, list(mutant.tests))
            if not passed:
                return True, failure
        passed, failure = pytest(tree, [])
        return not passed, failure


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
    survivors = []
    for m in chosen:
        t0 = time.monotonic()
        killed, failure = run(m, full=args.full)
        verdict = "killed  " if killed else "SURVIVED"
        print(f"{verdict} {m.name:42} {time.monotonic() - t0:5.1f} s  {failure}", flush=True)
        if not killed:
            survivors.append(m.name)
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} killed")
    for name in survivors:
        print(f"survivor: {name}")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
