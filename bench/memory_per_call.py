"""Server memory per open call: RSS of ``mise-twilio serve`` with N streams open mid-call.

    .venv/bin/python bench/memory_per_call.py [--calls 50] [--seconds 20]

``mise-twilio serve`` runs in a subprocess (JSONL sink in a temp dir). One call is replayed
whole first, so imports, numpy and the sink are warm; then N copies of
``fixtures/fork_two_track.jsonl`` (two tracks, each with its own CallSid/StreamSid) send their
first ``--seconds`` of audio flat out and stay open. Once the server has handled every message
(``mise_message_processing_seconds_count``), its VmRSS (``/proc/PID/status``) is read and
compared with the warm baseline → MiB per open two-track call (the session, both timelines
and VADs, the open turns' PCM, the WebSocket and its buffers). Then the streams end and RSS is
read again. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect

from mise_twilio.replay import read_fixture
from mise_twilio.server.replay_client import media_timestamp_ms, replay_websocket

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "fork_two_track.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match is not None
    return int(match.group(1)) / 1024


def processed(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("mise_message_processing_seconds_count"):
                return float(line.split()[-1])
    return 0.0


def copy_of(lines: list[str], i: int) -> list[str]:
    start = json.loads(lines[1])["start"]
    call_sid, stream_sid = f"CA{i:032x}", f"MZ{i:032x}"
    return [
        line.replace(start["callSid"], call_sid).replace(start["streamSid"], stream_sid)
        for line in lines
    ]


def start_server(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
    env |= {"MISE_PORT": str(port), "MISE_DATA_DIR": data_dir, "MISE_LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mise_twilio.cli", "serve"], env=env, stderr=subprocess.DEVNULL
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("the server did not start")


async def measure(pid: int, port: int, calls: int, seconds: float) -> tuple[float, float, float]:
    lines = read_fixture(FIXTURE)
    base = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/v1/stream/twilio"
    await replay_websocket(copy_of(lines, 10_000), ws_url, speed=0)  # warm up
    await asyncio.sleep(1.0)
    baseline = rss_mib(pid)
    done = await asyncio.to_thread(processed, base)
    first = media_timestamp_ms(next(x for x in lines if '"media"' in x)) or 0
    head = [
        x for x in lines if (ts := media_timestamp_ms(x)) is None or ts - first < seconds * 1000
    ]
    head = [x for x in head if '"event":"stop"' not in x]
    sockets = []
    for i in range(calls):
        ws = await connect(ws_url, max_size=None, compression=None, ping_interval=None)
        for line in copy_of(head, i):
            await ws.send(line)
        sockets.append(ws)
    want = done + calls * len(head)
    for _ in range(3000):
        if await asyncio.to_thread(processed, base) >= want:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)
    loaded = rss_mib(pid)
    for ws in sockets:
        await ws.close()
    await asyncio.sleep(2.0)
    return baseline, loaded, rss_mib(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(port, tmp)
        try:
            baseline, loaded, after = asyncio.run(
                measure(server.pid, port, args.calls, args.seconds)
            )
        finally:
            server.terminate()
            server.wait(20)
    per_call = (loaded - baseline) / args.calls
    print(
        f"{args.calls} open two-track calls, {args.seconds:.0f} s into each: RSS "
        f"{baseline:.1f} → {loaded:.1f} MiB = {per_call:.2f} MiB per call; after they ended "
        f"{after:.1f} MiB"
    )


if __name__ == "__main__":
    main()
