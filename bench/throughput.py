"""Throughput: offline replay speed (× real time) and server CPU µs per media message.

    .venv/bin/python bench/throughput.py [--calls 20] [--rounds 3]

1. Offline: every fixture through ``CallSession`` in this process; CPU time (process_time)
   against the audio duration → × real time, and µs per message. Also split out the parse
   cost alone (``messages.match_media``, else ``parse_message``, as the session parses) so the
   session's own share is visible; and the same on the AMI real-speech calls
   (``fixtures/real_calls.py``, clean), the load bench's payload.
2. Server: ``mise-twilio serve`` in a subprocess (JSONL sink to a temp dir); N concurrent
   calls replayed into it as fast as possible; the server's CPU (utime+stime from
   /proc/PID/stat) ÷ media messages it received. Prints ratios, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mise_twilio.core.messages import match_media, parse_message
from mise_twilio.replay import read_fixture, replay_offline
from mise_twilio.server.replay_client import media_timestamp_ms, replay_websocket

ROOT = Path(__file__).resolve().parent.parent

FIXTURES = sorted((ROOT / "fixtures").glob("*.jsonl"))


def media_count(lines: list[str]) -> int:
    return sum('"event":"media"' in line for line in lines)


def audio_seconds(lines: list[str]) -> float:
    stamps = [ts for line in lines if (ts := media_timestamp_ms(line)) is not None]
    return (max(stamps) - min(stamps) + 20) / 1000 if stamps else 0.0


def best_replay_cpu_s(lines: list[str], rounds: int) -> float:
    """CPU seconds of ``replay_offline(lines)``, the best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        replay_offline(lines)
        best = min(best, time.process_time() - t0)
    return best


def offline(rounds: int) -> dict[str, float]:
    total_cpu = total_audio = total_msgs = parse_cpu = 0.0
    for path in FIXTURES:
        lines = read_fixture(path)
        best = best_replay_cpu_s(lines, rounds)
        t0 = time.process_time()
        for line in lines:
            # as the session parses: the media fast path, the models for everything else
            if match_media(line) is None:
                with contextlib.suppress(Exception):
                    parse_message(line)
        parse_cpu += time.process_time() - t0
        total_cpu += best
        total_audio += audio_seconds(lines)
        total_msgs += len(lines)
        print(
            f"  {path.stem:<18} {audio_seconds(lines):6.1f} s audio  {best * 1000:7.1f} ms CPU  "
            f"{audio_seconds(lines) / best:7.0f}× real time  {best / len(lines) * 1e6:5.1f} µs/msg"
        )
    return {
        "x_realtime": total_audio / total_cpu,
        "us_per_message": total_cpu / total_msgs * 1e6,
        "parse_us_per_message": parse_cpu / total_msgs * 1e6,
    }


def offline_real_speech(rounds: int) -> dict[str, float]:
    """The seven AMI calls (30 s, two tracks, clean) through ``replay_offline``, best of
    ``rounds`` each: × real time per two-track call and µs per message."""
    sys.path.insert(0, str(ROOT))
    from fixtures.real_calls import FILES, build_call, wire_lines

    cpu = audio = msgs = 0.0
    for name in FILES:
        call = build_call(name, "clean")
        lines = wire_lines(call)
        cpu += best_replay_cpu_s(lines, rounds)
        audio += call.n_frames * 0.020
        msgs += len(lines)
    return {"x_realtime": audio / cpu, "us_per_message": cpu / msgs * 1e6}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_call(lines: list[str], n: int) -> list[str]:
    start = json.loads(next(line for line in lines if '"event":"start"' in line))
    sid, call = start["streamSid"], start["start"]["callSid"]
    return [
        line.replace(sid, sid[:-4] + f"{n:04d}").replace(call, call[:-4] + f"{n:04d}")
        for line in lines
    ]


async def _replay_all(url: str, payloads: list[list[str]]) -> None:
    await asyncio.gather(*(replay_websocket(p, url, speed=0) for p in payloads))


def server(calls: int) -> dict[str, float]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, MISE_PORT=str(port), MISE_DATA_DIR=data, MISE_LOG_LEVEL="warning")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mise_twilio.cli", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.2)
                    break
                except OSError:
                    time.sleep(0.05)
            fork = read_fixture(ROOT / "fixtures" / "fork_two_track.jsonl")
            payloads = [_as_call(fork, i) for i in range(calls)]
            url = f"ws://127.0.0.1:{port}/v1/stream/twilio"
            asyncio.run(_replay_all(url, [_as_call(fork, 9999)]))  # warm-up
            time.sleep(0.5)
            cpu0, wall0 = _cpu_seconds(proc.pid), time.perf_counter()
            asyncio.run(_replay_all(url, payloads))
            time.sleep(1.0)  # let the server finish the last frames
            cpu = _cpu_seconds(proc.pid) - cpu0
            wall = time.perf_counter() - wall0 - 1.0
            messages = sum(media_count(p) for p in payloads)
            audio = sum(audio_seconds(p) for p in payloads)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "calls": calls,
        "media_messages": messages,
        "server_cpu_s": cpu,
        "server_us_per_media_message": cpu / messages * 1e6,
        "server_x_realtime_per_core": audio / cpu,
        "concurrent_calls_per_core_at_100_msgs_per_s": 1e6 / (cpu / messages * 1e6) / 100,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="0: offline only")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("offline (CallSession, features on):")
    off = offline(args.rounds)
    print(
        f"  overall: {off['x_realtime']:.0f}× real time, {off['us_per_message']:.1f} µs/message "
        f"(of which JSON parse + validation {off['parse_us_per_message']:.1f} µs)"
    )
    real = offline_real_speech(args.rounds)
    print(
        f"  AMI real speech (7 two-track calls, clean): {real['x_realtime']:.0f}× real time per "
        f"call, {real['us_per_message']:.1f} µs/message"
    )
    if args.calls <= 0:
        return
    print(f"server ({args.calls} concurrent two-track calls, mise-twilio serve subprocess):")
    srv = server(args.calls)
    print(
        f"  {srv['media_messages']} media messages, server CPU {srv['server_cpu_s']:.2f} s → "
        f"{srv['server_us_per_media_message']:.1f} µs CPU per media message "
        f"(WebSocket + session + sinks); {srv['server_x_realtime_per_core']:.0f}× real time "
        f"per core ≈ {srv['concurrent_calls_per_core_at_100_msgs_per_s']:.0f} two-track "
        f"calls per core at 100 msg/s (50 per track)"
    )


if __name__ == "__main__":
    main()
