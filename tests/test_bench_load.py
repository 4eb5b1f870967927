"""bench/load.py still works: a 5-call smoke run against every default server (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import ROOT


def test_the_paced_load_bench_runs_and_counts_every_message(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            *("--calls", "5", "--rounds", "1", "--seconds", "4", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    servers = json.loads(out.read_text())["servers"]
    assert set(servers) == {"mise", "asgi", "ws"}
    for kind, figures in servers.items():
        assert figures["failed"] == 0, kind
        assert figures["media_messages"] == 5 * 2 * 200, kind  # 4 s × 50 msg/s × two tracks
        assert figures["stop_close_p99_s"] is not None, kind
    mise = servers["mise"]
    assert mise["turn_records"] > 0  # real speech: turns closed and reached the JSONL file
    assert mise["turn_latency_p99_s"] is not None
    for kind in ("mise", "asgi", "ws"):
        assert f"| {kind} |" in run.stdout
