"""The report page in a real browser: Debian's headless Chromium (installed by .ci/run) renders
``mise-twilio report`` output from a committed fixture; the screenshot is not blank (both
speakers' turn colours are on it) and the page's own DOM, after its script ran, draws every
turn of the records, and only the turns of a zoomed window."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import FIXTURES, ROOT, fixture_lines

from mise_twilio.report import build_report, records_from_capture

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    return path


def browse(chromium: str, profile: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a fresh profile."""
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def drawn_turns(dom: str) -> list[str]:
    return re.findall(r'<g class="turn" data-turn-id="([^"]+)"', dom)


@pytest.fixture(scope="module")
def fork_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """``mise-twilio report`` of the two-track fixture, run as a user runs it."""
    out = tmp_path_factory.mktemp("report") / "call.html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mise_twilio.cli",
            "report",
            str(FIXTURES / "fork_two_track.jsonl"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    records = records_from_capture(fixture_lines("fork_two_track"))
    turn_ids = [
        r["id"] for r in sorted(records, key=lambda r: r.get("start_ms", 0)) if r["type"] == "turn"
    ]
    return out, turn_ids


def test_every_turn_is_drawn(
    chromium: str, fork_page: tuple[Path, list[str]], tmp_path: Path
) -> None:
    page, turn_ids = fork_page
    result = browse(chromium, tmp_path / "profile", page.as_uri(), "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert f'data-rendered="{len(turn_ids)}"' in dom, "the renderer did not finish"
    assert sorted(drawn_turns(dom)) == sorted(turn_ids)
    assert len(re.findall(r'<g class="level" data-track="(inbound|outbound)"', dom)) == 2
    assert 'class="overlap"' in dom  # the fixture's barge-in and backchannel overlap


def test_a_zoomed_window_draws_only_its_turns(
    chromium: str, fork_page: tuple[Path, list[str]], tmp_path: Path
) -> None:
    page, _ = fork_page
    records = records_from_capture(fixture_lines("fork_two_track"))
    in_window = sorted(
        r["id"]
        for r in records
        if r["type"] == "turn" and r["end_ms"] >= 10_000 and r["start_ms"] <= 16_000
    )
    result = browse(chromium, tmp_path / "profile", page.as_uri() + "#t=10-16", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(drawn_turns(result.stdout)) == in_window
    # Zoomed in past one frame per pixel, each level trace is a line through every 20 ms frame
    # of the window (6 s: 300 frames), not a scatter of unconnected points.
    traces = re.findall(r'<path d="([^"]*)"[^>]*class="trace"', result.stdout)
    assert len(traces) == 2
    assert all(d.count("L") >= 290 for d in traces), [d.count("L") for d in traces]
    assert 0 < len(in_window) < len(records_from_capture(fixture_lines("fork_two_track"))) // 2


def colour_share(png: Path) -> tuple[float, float, float]:
    """Shares of the screenshot's pixels that are the caller's blue, the agent's orange, and
    not white."""
    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    blue = np.mean((b > 150) & (b - r > 60) & (b - g > 20))
    orange = np.mean((r > 180) & (r - b > 90) & (g > 80))
    ink = np.mean(r + g + b < 720)
    return float(blue), float(orange), float(ink)


def test_screenshot_is_not_blank(
    chromium: str, fork_page: tuple[Path, list[str]], tmp_path: Path
) -> None:
    page, _ = fork_page
    png = tmp_path / "call.png"
    result = browse(
        chromium,
        tmp_path / "profile",
        page.as_uri(),
        "--window-size=1280,800",
        f"--screenshot={png}",
    )
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
    blue, orange, ink = colour_share(png)
    assert blue > 0.01 and orange > 0.01, (blue, orange)  # both speakers' turns and levels
    assert ink > 0.05, ink


def test_records_only_page_with_arousal(chromium: str, tmp_path: Path) -> None:
    records = records_from_capture(fixture_lines("fork_two_track"))
    turns = [r for r in records if r["type"] == "turn"]
    for n, turn in enumerate(turns):
        turn["arousal"] = round(0.2 + 0.07 * n, 2)
    page = tmp_path / "records.html"
    page.write_text(build_report(records), encoding="utf-8")
    result = browse(chromium, tmp_path / "profile", page.as_uri(), "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(drawn_turns(result.stdout)) == sorted(t["id"] for t in turns)
    assert result.stdout.count('<g class="arousal">') == len(turns)
