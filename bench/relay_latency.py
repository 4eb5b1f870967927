"""Proxy mode's relay overhead: per-frame latency direct to a bot vs through mise-twilio.

    .venv/bin/python bench/relay_latency.py [--calls 100] [--seconds 10] [--rounds 2] [--pin]

Three processes on this machine: a bot (this script, ``--role bot``: a websockets server that
timestamps every frame it receives and streams 100 ms of agent audio every 100 ms per call),
``mise-twilio serve`` with the bot as its upstream (JSONL sink, turn features on: the whole
analysis runs, in the server's analysis process), and N concurrent "Twilio" calls (this
process) streaming the connect_inbound caller in real time, 20 ms frames, and timestamping
every frame they receive.

Each round runs the calls straight to the bot (``direct``), through the proxy (``proxy``) and,
as an anchor for what any Python relay hop costs on this machine, through a bare relay
(``bare``: this script, ``--role relay``, copying frames between two ``websockets``
connections with nothing else), to the same bot in the same run; the order rotates per round. A
frame's latency is its receive time minus its send time, both ``time.monotonic_ns`` (the
system-wide CLOCK_MONOTONIC, comparable across processes), matched per call by
``sequenceNumber`` toward the bot and by order toward Twilio (the relay keeps order). The added
latency is proxy minus direct, at each percentile.

End to end, the added latency includes the operating system waking one more process per
frame, which on a machine whose cores are busy with other work costs more than the relay
itself; so the proxy's own view is printed too: ``mise_relay_seconds`` from its ``/metrics``,
each frame's time from being read off one socket to being written to the other (bucket upper
bounds). Prints numbers, asserts nothing.

``--pin`` (Linux, two or more cores) splits the machine as a deployment would: the proxy and
its analysis process (and the bare relay) on CPU 0, the harness (the calls and the bot, which
in production are Twilio and the team's bot, elsewhere) on CPU 1; without it the scheduler
places all of them on any core.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BOT_CHUNK_MS = 100
PATHS = ["direct", "proxy", "bare"]
SETUP_S = 1.0
"""Each call's first second (its bot dialled while the other calls start too) is reported
apart from the steady state."""


# ---------------------------------------------------------------------------------------------
# the bot (a child process)


def agent_track() -> bytes:
    """The outbound (agent) track of fixtures/fork_two_track.jsonl as μ-law bytes."""
    track = bytearray()
    for line in (ROOT / "fixtures" / "fork_two_track.jsonl").read_text().splitlines():
        if '"track":"outbound"' in line:
            track += base64.b64decode(json.loads(line)["media"]["payload"])
    return bytes(track)


async def bot_main(port: int, log_path: Path) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    agent = agent_track()
    chunk = BOT_CHUNK_MS * 8
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230 - the process's life

    async def stream_audio(ws: ServerConnection, sid: str, sent: list[int]) -> None:
        # The agent's side of fork_two_track (speech and its pauses), in real time.
        messages = [
            json.dumps(
                {
                    "event": "media",
                    "streamSid": sid,
                    "media": {"payload": base64.b64encode(agent[i : i + chunk]).decode()},
                }
            )
            for i in range(0, len(agent) - chunk, chunk)
        ]
        next_at = time.monotonic()
        for k in range(1 << 30):
            next_at += BOT_CHUNK_MS / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            sent.append(time.monotonic_ns())
            await ws.send(messages[k % len(messages)])

    async def handler(ws: ServerConnection) -> None:
        received: list[tuple[int, int]] = []
        sent: list[int] = []
        sid = None
        streamer = None
        try:
            async for text in ws:
                now = time.monotonic_ns()
                assert isinstance(text, str)  # the bridge relays text frames only
                if '"event":"media"' in text:
                    i = text.index('"sequenceNumber":"') + 18
                    received.append((int(text[i : text.index('"', i)]), now))
                elif '"event":"start"' in text:
                    sid = json.loads(text)["streamSid"]
                    streamer = asyncio.create_task(stream_audio(ws, sid, sent))
        except ConnectionClosed:
            pass
        finally:
            if streamer is not None:
                streamer.cancel()
            log.write(json.dumps({"sid": sid, "received": received, "sent": sent}) + "\n")
            log.flush()

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


async def relay_main(port: int, bot_port: int) -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def pipe(source: Any, sink: Any) -> None:
        try:
            async for message in source:
                await sink.send(message)
        except ConnectionClosed:
            pass
        finally:
            await sink.close()

    async def handler(twilio: ServerConnection) -> None:
        async with connect(f"ws://127.0.0.1:{bot_port}/twilio", compression=None) as bot:
            await asyncio.gather(pipe(twilio, bot), pipe(bot, twilio))

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


# ---------------------------------------------------------------------------------------------
# "Twilio"


def caller_lines(call: str, seconds: float) -> tuple[list[str], list[str]]:
    """(``connected``+``start``, media lines) of connect_inbound as stream ``call``, the media
    looped to ``seconds``, timestamps and numbers continued."""
    lines = (ROOT / "fixtures" / "connect_inbound.jsonl").read_text().splitlines()
    start = json.loads(lines[1])
    sid = start["streamSid"]
    media = [json.loads(line) for line in lines if '"event":"media"' in line]
    frames = int(seconds * 50)
    out = []
    for k in range(frames):
        m = media[k % len(media)]["media"]
        body = {
            "event": "media",
            "sequenceNumber": str(k + 2),
            "media": {
                "track": "inbound",
                "chunk": str(k + 1),
                "timestamp": str(100 + 20 * k),
                "payload": m["payload"],
            },
            "streamSid": call,
        }
        out.append(json.dumps(body, separators=(",", ":")))
    head = [lines[0], lines[1].replace(sid, call)]
    return head, out


async def one_call(url: str, call: str, seconds: float, delay_s: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    head, media = caller_lines(call, seconds)
    sent: dict[int, int] = {}
    received: list[int] = []
    await asyncio.sleep(delay_s)
    async with connect(url, compression=None, max_size=None, ping_interval=None) as ws:

        async def receive() -> None:
            try:
                async for _ in ws:
                    received.append(time.monotonic_ns())
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(receive())
        for line in head:
            await ws.send(line)
        started = time.monotonic()
        for k, line in enumerate(media):
            await asyncio.sleep(max(0.0, started + 0.02 * (k + 1) - time.monotonic()))
            sent[k + 2] = time.monotonic_ns()
            await ws.send(line)
        await ws.close()
        await reader
    return {"sid": call, "sent": sent, "received": received}


async def run_calls(url: str, calls: int, seconds: float, tag: str) -> list[dict[str, Any]]:
    # Spread the call starts over one frame time, as real calls are.
    # Calls start over one frame time and end over two seconds, as independent calls would.
    return await asyncio.gather(
        *(
            one_call(url, f"MZ{tag}{i:030x}", seconds + 2.0 * i / calls, delay_s=0.02 * i / calls)
            for i in range(calls)
        )
    )


# ---------------------------------------------------------------------------------------------
# the run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, seconds."""
    path = f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the proxy's analysis process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def latencies(
    calls: list[dict[str, Any]], bot: dict[str, Any], *, after_s: float, until_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(to-bot, to-Twilio) one-way latencies in ms of the frames sent between ``after_s`` and
    ``until_s`` into each call."""
    to_bot: list[int] = []
    to_twilio: list[int] = []
    for call in calls:
        seen = bot.get(call["sid"])
        if seen is None or not call["sent"]:
            continue
        t0 = min(call["sent"].values())
        lo, hi = t0 + after_s * 1e9, t0 + until_s * 1e9
        to_bot += [
            t - call["sent"][seq]
            for seq, t in seen["received"]
            if seq in call["sent"] and lo <= call["sent"][seq] < hi
        ]
        to_twilio += [
            r - s for s, r in zip(seen["sent"], call["received"], strict=False) if lo <= s < hi
        ]
    return np.asarray(to_bot) / 1e6, np.asarray(to_twilio) / 1e6


def relay_histogram(port: int) -> dict[str, list[tuple[float, float]]]:
    """``mise_relay_seconds`` buckets per direction: [(upper bound s, cumulative count)]."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "mise_relay_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                out.setdefault(sample.labels["direction"], []).append((bound, sample.value))
    return out


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (seconds)."""
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-features", action="store_true", help="MISE_MEASURE_FEATURES=0 on the proxy"
    )
    parser.add_argument(
        "--pin", action="store_true", help="the proxy on CPU 0, the calls and the bot on CPU 1"
    )
    parser.add_argument("--role", choices=["main", "bot", "relay"], default="main")
    parser.add_argument("--bot-port", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    if args.role == "bot":
        asyncio.run(bot_main(args.port, args.log))
        return
    if args.role == "relay":
        asyncio.run(relay_main(args.port, args.bot_port))
        return

    with tempfile.TemporaryDirectory() as tmp:
        bot_port, proxy_port, bare_port = _free_port(), _free_port(), _free_port()
        bot_log = Path(tmp) / "bot.jsonl"
        bot_args = ["--role", "bot", "--port", str(bot_port), "--log", str(bot_log)]
        bot = subprocess.Popen(
            [sys.executable, __file__, *bot_args],
            stdout=subprocess.PIPE,
            text=True,
        )
        env = dict(
            os.environ,
            MISE_PORT=str(proxy_port),
            MISE_DATA_DIR=str(Path(tmp) / "data"),
            MISE_LOG_LEVEL="warning",
            MISE_UPSTREAMS=f"bench=ws://127.0.0.1:{bot_port}/twilio",
            MISE_MEASURE_FEATURES="0" if args.no_features else "1",
        )
        proxy = subprocess.Popen(
            [sys.executable, "-m", "mise_twilio.cli", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        relay_args = ["--role", "relay", "--port", str(bare_port), "--bot-port", str(bot_port)]
        bare = subprocess.Popen(
            [sys.executable, __file__, *relay_args], stdout=subprocess.PIPE, text=True
        )
        if args.pin:
            for pid in (0, bot.pid):
                os.sched_setaffinity(pid, {1})
            for pid in (proxy.pid, bare.pid):
                os.sched_setaffinity(pid, {0})
        try:
            assert bot.stdout is not None and bot.stdout.readline().strip() == "ready"
            assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
            for _ in range(400):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/healthz", timeout=0.2)
                    break
                except OSError:
                    time.sleep(0.05)
            urls = {
                "direct": f"ws://127.0.0.1:{bot_port}/twilio",
                "proxy": f"ws://127.0.0.1:{proxy_port}/v1/stream/twilio/proxy/bench",
                "bare": f"ws://127.0.0.1:{bare_port}/",
            }
            asyncio.run(run_calls(urls["proxy"], 5, 1.0, "ff"))  # warm-up
            time.sleep(0.5)
            relay_before = relay_histogram(proxy_port)
            results: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
            cpu = {"proxy_s": 0.0, "analysis_s": 0.0, "messages": 0, "wall_s": 0.0}
            analysis = _children(proxy.pid)  # server/analysis.py's child
            if args.pin:  # started before the server's affinity was set, or after: either way
                for pid in analysis:
                    os.sched_setaffinity(pid, {0})
            harness0 = time.process_time() + _cpu_seconds(bot.pid)
            for r in range(args.rounds):
                order = PATHS[r % 3 :] + PATHS[: r % 3]
                for path in order:
                    cpu0, wall0 = _cpu_seconds(proxy.pid), time.monotonic()
                    analysis0 = sum(_cpu_seconds(pid) for pid in analysis)
                    calls = asyncio.run(
                        run_calls(urls[path], args.calls, args.seconds, f"{r:01x}{path[0]}")
                    )
                    time.sleep(1.0)  # the bot writes its log as each call closes
                    if path == "proxy":
                        cpu["wall_s"] += time.monotonic() - wall0 - 1.0
                        cpu["proxy_s"] += _cpu_seconds(proxy.pid) - cpu0
                        cpu["analysis_s"] += sum(_cpu_seconds(pid) for pid in analysis) - analysis0
                        cpu["messages"] += sum(len(c["sent"]) + len(c["received"]) for c in calls)
                    results[path] += calls
                    print(f"round {r + 1}: {path} done", flush=True)
            relay_after = relay_histogram(proxy_port)
            harness_s = time.process_time() + _cpu_seconds(bot.pid) - harness0
            load = os.getloadavg()[0]
            seen = {}
            for line in bot_log.read_text().splitlines():
                record = json.loads(line)
                seen[record["sid"]] = record
        finally:
            for process in (proxy, bare, bot):
                process.terminate()
                process.wait(30)

    print(
        f"\n{args.calls} concurrent calls, {args.seconds:.0f} s each, {args.rounds} rounds"
        + (" (pinned: the proxy on CPU 0, the calls and the bot on CPU 1)" if args.pin else "")
        + "; one-way latency per frame, ms"
    )
    spans = {
        f"after each call's first {SETUP_S:g} s": (SETUP_S, args.seconds),
        f"each call's first {SETUP_S:g} s (the bot dialled, handshakes)": (0.0, SETUP_S),
    }
    for title, (lo, hi) in spans.items():
        print(f"\n{title}")
        columns = ("frames", "p50", "p90", "p99", "max")
        print(f"{'direction':<10} {'path':<7} " + " ".join(f"{c:>7}" for c in columns))
        table: dict[tuple[str, str], np.ndarray] = {}
        for path in PATHS:
            to_bot, to_twilio = latencies(results[path], seen, after_s=lo, until_s=hi)
            table[("to bot", path)] = to_bot
            table[("to Twilio", path)] = to_twilio
        for direction in ("to bot", "to Twilio"):
            for path in PATHS:
                x = table[(direction, path)]
                p50, p90, p99 = np.percentile(x, [50, 90, 99])
                print(
                    f"{direction:<10} {path:<7} {x.size:>7} {p50:7.3f} {p90:7.3f} {p99:7.3f} "
                    f"{x.max():7.2f}"
                )
        for direction in ("to bot", "to Twilio"):
            d = table[(direction, "direct")]
            for path in ("proxy", "bare"):
                x = table[(direction, path)]
                added = np.percentile(x, [50, 99]) - np.percentile(d, [50, 99])
                print(
                    f"added by the {path:<5} {direction:<9}: p50 {added[0]:+.3f} ms, "
                    f"p99 {added[1]:+.3f} ms"
                )
    print()
    for direction, after in relay_after.items():
        before = dict(relay_before.get(direction, []))
        buckets = [(bound, count - before.get(bound, 0.0)) for bound, count in after]
        p50, p99, p999 = (bucket_quantile(buckets, q) * 1e3 for q in (0.5, 0.99, 0.999))
        print(
            f"inside the proxy, {direction}: {buckets[-1][1]:.0f} frames, p50 ≤ {p50:g} ms, "
            f"p99 ≤ {p99:g} ms, p99.9 ≤ {p999:g} ms (mise_relay_seconds buckets)"
        )
    frames, wall_s = max(1, cpu["messages"]), max(1e-9, cpu["wall_s"])
    print(
        f"proxy CPU per relayed frame ({cpu['messages']} frames): the server process "
        f"{cpu['proxy_s'] / frames * 1e6:.0f} µs ({cpu['proxy_s'] / wall_s:.0%} of a core), "
        f"its analysis process {cpu['analysis_s'] / frames * 1e6:.0f} µs "
        f"({cpu['analysis_s'] / wall_s:.0%} of a core)"
    )
    print(
        f"harness (calls + bot) CPU: {harness_s:.1f} s; {os.cpu_count()} cores, load average "
        f"{load:.2f} at the end (other work on the machine adds to the tail)"
    )


if __name__ == "__main__":
    main()
