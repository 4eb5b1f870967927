"""Paced load: concurrent two-track calls at Twilio's pace, mise_twilio against bare servers.

    .venv/bin/python bench/load.py --calls 100 --rounds 2            # ~4 min on 2 cores
    .venv/bin/python bench/load.py --calls 300 --rounds 1 --seconds 30
    .venv/bin/python bench/load.py --calls 5 --rounds 1 --seconds 5  # smoke run (the test suite)
    .venv/bin/python bench/load.py --servers mise,asgi,asgi-wsproto,asgi-websockets,starlette,ws

What runs (everything on loopback, everything started here is stopped here by PID):

- **Servers**, one fresh process per server and round, warmed up by one short call:
  ``mise``: ``mise-twilio serve`` (JSONL sink in a temp dir, logs at warning); ``ws``: a bare
  decode-only server on websockets' own asyncio server; ``asgi``: the same decode-only work as a
  raw ASGI app under uvicorn with the WebSocket stack mise_twilio uses (``websockets-sansio``,
  same limits, same event loop: uvicorn's ``auto``, uvloop when installed);
  ``asgi-asyncio`` / ``asgi-uvloop``: the same on a given event loop; ``asgi-buffered``: on
  mise_twilio's own protocol class (``server/ws_protocol.py``); ``asgi-websockets`` /
  ``asgi-wsproto``: uvicorn's other WebSocket protocols; ``starlette``: the decode-only work
  behind Starlette's ``WebSocket`` wrapper (as ``server/stream.py`` reads). Decode-only = per
  message ``json.loads``, and for media ``binascii.a2b_base64`` + ``audioop.ulaw2lin`` +
  ``audioop.rms``; ``stop`` closes.
- **Calls**: real speech, the seven AMI excerpts of ``../shared/real-speech/ami`` made into
  two-track calls by ``fixtures/real_calls.py`` (``build_call(file, "clean")``), μ-law as
  ``wire_lines`` sends it, looped past their 30 s for longer ``--seconds``; call ``i`` plays
  file ``i % 7`` from its own offset. Each call sends ``connected``, ``start``, one ``media``
  per track every 20 ms on its own schedule (starts spread over the first second, so phases
  are spread over the 20 ms), then ``stop``, and waits for the server to close. The calls run
  in ``--workers`` client processes (multiprocessing, one asyncio loop each).
- **Rounds** alternate the server order (A B C, then C B A, ...: ABBA), so slow drift in the
  shared machine's load cancels out of the ratios.

Printed per server (pooled over its rounds):

- ``µs/msg``: CPU (utime + stime of the server process tree, ``/proc``) from the first media
  message to the last record written, ÷ media messages sent; the ratios to ``asgi`` and ``ws``.
- ``cores``: that CPU ÷ the wall time of the window.
- ``RSS/call``: (the tree's highest RSS while every call streams − its RSS after warm-up) ÷
  calls, KB; in brackets the same with the peak over the whole round (the calls' ends
  included: every final turn measured at once).
- ``late p99``: how late each media message went out vs its schedule (client side: server
  back-pressure, and the client's own CPU starvation on a loaded machine), ms.
- ``turn p99`` (mise): when a turn record appeared in the JSONL file minus the turn's end,
  the stream clock mapped to wall time by the call's schedule (``end_ms`` − the first media
  timestamp after the first frame's send time). Includes the 700 ms pause that ends a turn.
  In brackets: only the turns that ended while every call was streaming (from 5 s after the
  first start to 1 s before the first stop): the calls start within one second and hang up
  within one second, so their first and last turns close in two bursts.
- ``stop→close p99``: from sending ``stop`` to the server's close, ms.

Nothing is asserted: the numbers move with whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_S = 0.020
FIRST_TIMESTAMP_MS = 120
RAMP_S = 1.0
STEADY_AFTER_S = 5.0  # turns ending this long after the first start, and 1 s before the first stop
SERVERS = (
    "mise",
    "asgi",
    "asgi-asyncio",
    "asgi-uvloop",
    "asgi-buffered",
    "asgi-websockets",
    "asgi-wsproto",
    "starlette",
    "ws",
)
DEFAULT_SERVERS = "mise,asgi,ws"
STREAM_PATH = "/v1/stream/twilio"
WS_MAX_SIZE = 1024 * 1024  # as mise_twilio.server.app.WS_HARD_MAX_BYTES

# =============================================================================================
# The bare decode-only servers (run as ``load.py --serve KIND --port N``)
# =============================================================================================


def _decode(text: str | bytes) -> bool:
    """The bare servers' whole per-message work; True once ``stop`` came."""
    msg = json.loads(text)
    event: object = msg.get("event")
    if event == "media":
        pcm = audioop.ulaw2lin(base64.b64decode(msg["media"]["payload"]), 2)
        audioop.rms(pcm, 2)
    return event == "stop"


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if _decode(text if text is not None else message.get("bytes") or b""):
            await send({"type": "websocket.close", "code": 1000})
            return


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            try:
                frame = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if frame["type"] == "websocket.disconnect":
                return
            text = frame.get("text")
            if _decode(text if text is not None else frame.get("bytes") or b""):
                await ws.close(code=1000)
                return

    return Starlette(routes=[WebSocketRoute(STREAM_PATH, endpoint)])


def serve_bare(kind: str, port: int) -> None:
    if kind == "ws":
        from websockets.asyncio.server import ServerConnection, serve

        async def handler(ws: ServerConnection) -> None:
            async for text in ws:
                if _decode(text):
                    await ws.close(1000)
                    return

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = loop.create_future()
            loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
            async with serve(
                handler,
                "127.0.0.1",
                port,
                compression=None,
                max_size=WS_MAX_SIZE,
                ping_interval=20.0,
                ping_timeout=20.0,
            ):
                await stop

        asyncio.run(main())
        return
    import uvicorn

    ws_impl: Any = {"asgi-websockets": "websockets", "asgi-wsproto": "wsproto"}.get(
        kind, "websockets-sansio"
    )
    if kind == "asgi-buffered":
        # mise_twilio's protocol: reads paused only past a high-water mark (ws_protocol.py)
        from mise_twilio.server.ws_protocol import MiseWebSocketProtocol

        ws_impl = MiseWebSocketProtocol
    # "auto" is what mise_twilio's server runs on (uvloop when it is installed)
    loop = {"asgi-asyncio": "asyncio", "asgi-uvloop": "uvloop"}.get(kind, "auto")
    app = _starlette_app() if kind == "starlette" else _asgi_app
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ws=ws_impl,
            loop=loop,
            ws_max_size=WS_MAX_SIZE,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
        uvicorn.Server(config).run()


# =============================================================================================
# The calls
# =============================================================================================


@dataclass
class Audio:
    """Per AMI file, per track: each 20 ms frame's base64 μ-law payload."""

    frames: list[dict[str, list[str]]]

    @classmethod
    def build(cls) -> Audio:
        from fixtures.real_calls import FILES, TRACKS, build_call

        out = []
        for name in FILES:
            call = build_call(name, "clean")
            per_track = {}
            for t in TRACKS:
                ulaw = audioop.lin2ulaw(call.pcm[t].astype("<i2").tobytes(), 2)
                per_track[t] = [
                    base64.b64encode(ulaw[k : k + 160]).decode() for k in range(0, len(ulaw), 160)
                ]
            out.append(per_track)
        return cls(out)


def call_sids(i: int, tag: str) -> tuple[str, str, str]:
    """(account, call, stream) sids of call ``i`` of round ``tag``: 34 characters each."""
    body = f"{tag}{i:08d}".rjust(32, "0")[-32:]
    return "AC" + "a3" * 16, "CA" + body, "MZ" + body


@dataclass
class WorkerResult:
    media_sent: int = 0
    lateness_s: array[float] = field(default_factory=lambda: array("f"))
    stop_close_s: array[float] = field(default_factory=lambda: array("f"))
    failed: int = 0


async def _one_call(
    url: str,
    i: int,
    tag: str,
    audio: Audio,
    n_frames: int,
    start_offset_s: float,
    schedule: dict[str, float],
    ready: asyncio.Event,
    go: asyncio.Event,
    result: WorkerResult,
) -> None:
    """One call: connect, wait for ``go``, stream on the schedule (``schedule["t0"]`` epoch s
    plus ``start_offset_s``), ``stop``, wait for the close."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    account, call, stream = call_sids(i, tag)
    tracks = audio.frames[i % len(audio.frames)]
    total = len(tracks["inbound"])
    offset = (i * 7919) % total
    prefix = '{"event":"media","sequenceNumber":"'
    suffix = f'"}},"streamSid":"{stream}"}}'
    try:
        async with connect(
            # no permessage-deflate offered (every server here would accept it; base64 μ-law
            # compresses little, and per-message zlib would dominate what is measured)
            url,
            compression=None,
            max_size=WS_MAX_SIZE,
            ping_interval=None,
            open_timeout=30,
        ) as ws:
            ready.set()
            await go.wait()
            loop = asyncio.get_running_loop()
            # wall-clock schedule → this loop's monotonic clock
            t0 = loop.time() + (schedule["t0"] + start_offset_s - time.time())
            await asyncio.sleep(max(0.0, t0 - loop.time()))
            await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            start = {
                "accountSid": account,
                "streamSid": stream,
                "callSid": call,
                "tracks": ["inbound", "outbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"bench": "load"},
            }
            await ws.send(
                json.dumps(
                    {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": stream},
                    separators=(",", ":"),
                )
            )
            seq = 1
            late = result.lateness_s
            for k in range(n_frames):
                due = t0 + k * FRAME_S
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                late.append(now - due)
                ts = FIRST_TIMESTAMP_MS + 20 * k
                j = (offset + k) % total
                for track in ("inbound", "outbound"):
                    seq += 1
                    await ws.send(
                        f'{prefix}{seq}","media":{{"track":"{track}","chunk":"{k + 1}",'
                        f'"timestamp":"{ts}","payload":"{tracks[track][j]}{suffix}'
                    )
                result.media_sent += 2
            stop = {"accountSid": account, "callSid": call}
            t_stop = time.perf_counter()
            await ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": str(seq + 1),
                        "streamSid": stream,
                        "stop": stop,
                    },
                    separators=(",", ":"),
                )
            )
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(30):
                    async for _ in ws:
                        pass
            result.stop_close_s.append(time.perf_counter() - t_stop)
    except (OSError, ConnectionClosed, TimeoutError) as exc:
        print(f"call {i} failed: {exc!r}", file=sys.stderr)
        result.failed += 1
        ready.set()


def _worker(
    url: str,
    indices: list[int],
    tag: str,
    audio: Audio,
    n_frames: int,
    offsets: dict[int, float],
    conn: Any,
) -> None:
    """Client process: connect every call, say ``ready``, take the start epoch, run them."""

    async def main() -> WorkerResult:
        result = WorkerResult()
        go = asyncio.Event()
        schedule: dict[str, float] = {}
        readies = [asyncio.Event() for _ in indices]
        tasks = [
            asyncio.create_task(
                _one_call(url, i, tag, audio, n_frames, offsets[i], schedule, r, go, result)
            )
            for i, r in zip(indices, readies, strict=True)
        ]
        async with asyncio.timeout(120):
            await asyncio.gather(*(r.wait() for r in readies))
        conn.send("ready")
        schedule["t0"] = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        go.set()
        # bounded: the calls' length, the ramp, and time to close
        async with asyncio.timeout(n_frames * FRAME_S + RAMP_S + 90):
            await asyncio.gather(*tasks)
        return result

    result = asyncio.run(main())
    conn.send(
        (
            result.media_sent,
            result.lateness_s.tobytes(),
            result.stop_close_s.tobytes(),
            result.failed,
            time.process_time(),
        )
    )
    conn.close()


# =============================================================================================
# Measuring the server
# =============================================================================================


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_s(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def tree_rss_kb(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path | None


@contextlib.contextmanager
def start_server(kind: str, seconds_hint: float) -> Iterator[Server]:
    port = free_port()
    tmp = tempfile.TemporaryDirectory(prefix="mise-load-")
    data_dir = Path(tmp.name)
    if kind == "mise":
        env = dict(
            os.environ,
            MISE_PORT=str(port),
            MISE_DATA_DIR=str(data_dir),
            MISE_LOG_LEVEL="warning",
            MISE_MAX_CALL_S=str(int(seconds_hint) + 600),
        )
        cmd = [sys.executable, "-m", "mise_twilio.cli", "serve"]
    else:
        env = dict(os.environ)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{kind} server exited ({proc.returncode}): {err[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not listen within 30 s")
            time.sleep(0.05)
        path = STREAM_PATH
        yield Server(
            kind, proc, f"ws://127.0.0.1:{port}{path}", data_dir if kind == "mise" else None
        )
    finally:
        if proc.poll() is None:
            proc.terminate()  # by PID (Popen): SIGTERM, a graceful drain
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        tmp.cleanup()


class JsonlTail:
    """New records of the server's JSONL file, with the wall time they were first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""
        self.turns: list[tuple[float, str, int]] = []  # (seen at, stream_sid, end_ms)
        self.stopped = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        now = time.time()
        self._pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if b'"type":"turn"' in line:
                rec = json.loads(line)
                self.turns.append((now, rec["stream_sid"], rec["end_ms"]))
            elif b'"type":"stream.stopped"' in line:
                self.stopped += 1


@dataclass
class RoundResult:
    kind: str
    calls: int
    media: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    rss_per_call_kb: float = 0.0
    peak_rss_per_call_kb: float = 0.0
    lateness_s: list[float] = field(default_factory=list)
    stop_close_s: list[float] = field(default_factory=list)
    turn_latency_s: list[float] = field(default_factory=list)
    turn_latency_steady_s: list[float] = field(default_factory=list)
    failed: int = 0
    client_cpu_s: float = 0.0
    turns: int = 0


def _warm_up(url: str, audio: Audio, n_frames: int) -> None:
    """One short call before measuring (imports, first numpy calls, the first turn)."""

    async def go() -> None:
        result = WorkerResult()
        ready, go = asyncio.Event(), asyncio.Event()
        go.set()
        await _one_call(url, 0, "w", audio, n_frames, 0.0, {"t0": time.time()}, ready, go, result)

    asyncio.run(go())


def run_round(kind: str, args: argparse.Namespace, audio: Audio, tag: str) -> RoundResult:
    n_frames = round(args.seconds / FRAME_S)
    out = RoundResult(kind, args.calls)
    with start_server(kind, args.seconds) as server:
        _warm_up(server.url, audio, 150 if args.seconds >= 20 else 50)
        time.sleep(0.5 if args.seconds >= 20 else 0.1)
        pid = server.proc.pid
        rss0 = tree_rss_kb(pid)
        tail = JsonlTail(server.data_dir / "events.jsonl") if server.data_dir else None
        if tail is not None:
            tail.poll()  # skip the warm-up call's records
            tail.turns.clear()
            tail.stopped = 0
        ctx = mp.get_context("fork")
        n_workers = max(1, min(args.workers, args.calls))
        groups = [list(range(w, args.calls, n_workers)) for w in range(n_workers)]
        # each call's start, relative to t0 (fixed once every call is connected)
        ramp_s = min(RAMP_S, args.seconds / 4)
        offsets = {i: i * ramp_s / max(1, args.calls) for i in range(args.calls)}
        pipes, procs = [], []
        for g in groups:
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker,
                args=(server.url, g, tag, audio, n_frames, offsets, child),
                daemon=True,
            )
            p.start()
            child.close()
            pipes.append(parent)
            procs.append(p)
        try:
            deadline = time.monotonic() + 120
            for conn in pipes:
                if not conn.poll(max(0.1, deadline - time.monotonic())):
                    raise RuntimeError(f"{kind}: clients did not connect within 120 s")
                conn.recv()
            t0 = time.time() + 0.3
            starts = {i: t0 + offsets[i] for i in range(args.calls)}
            cpu0, wall0 = tree_cpu_s(pid), time.perf_counter()
            for conn in pipes:
                conn.send(t0)
            peak = during = rss0
            calls_end = time.monotonic() + 0.3 + args.seconds  # the first stop goes out then
            next_rss = 0.0
            results: list[Any] = [None] * len(pipes)
            end_by = time.monotonic() + args.seconds + RAMP_S + 150
            while any(r is None for r in results) and time.monotonic() < end_by:
                for w, conn in enumerate(pipes):
                    if results[w] is None and conn.poll():
                        results[w] = conn.recv()
                if tail is not None:
                    tail.poll()
                if time.monotonic() >= next_rss:
                    rss = tree_rss_kb(pid)
                    peak = max(peak, rss)
                    if time.monotonic() < calls_end:
                        during = max(during, rss)
                    next_rss = time.monotonic() + 0.25
                time.sleep(0.02)
            if tail is not None:
                drain_by = time.monotonic() + 15
                while tail.stopped < args.calls and time.monotonic() < drain_by:
                    tail.poll()
                    time.sleep(0.02)
            out.cpu_s = tree_cpu_s(pid) - cpu0
            out.wall_s = time.perf_counter() - wall0
            out.rss_per_call_kb = (during - rss0) / max(1, args.calls)
            out.peak_rss_per_call_kb = (peak - rss0) / max(1, args.calls)
            for r in results:
                if r is None:
                    out.failed += 1
                    continue
                media, late, stop_close, failed, cpu = r
                out.media += media
                out.lateness_s += array("f", late).tolist()
                out.stop_close_s += array("f", stop_close).tolist()
                out.failed += failed
                out.client_cpu_s += cpu
            if tail is not None:
                out.turns = len(tail.turns)
                for seen, sid, end_ms in tail.turns:
                    i = _call_index(sid, tag)
                    if i is None:
                        continue
                    ended = starts[i] + (end_ms - FIRST_TIMESTAMP_MS) / 1000.0
                    out.turn_latency_s.append(seen - ended)
                    if t0 + STEADY_AFTER_S <= ended and ended + 1.0 <= t0 + args.seconds:
                        out.turn_latency_steady_s.append(seen - ended)
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()  # by PID
                    p.join(timeout=5)
            for conn in pipes:
                conn.close()
    return out


def _call_index(stream_sid: str, tag: str) -> int | None:
    """Call index from a stream sid of ``call_sids`` (``None`` for another round's)."""
    body = stream_sid[2:]
    head, digits = body[:-8], body[-8:]
    return int(digits) if head.endswith(tag) and digits.isdigit() else None


# =============================================================================================
# Report
# =============================================================================================


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.0f}"


def report(
    results: list[RoundResult], kinds: list[str], args: argparse.Namespace
) -> dict[str, dict[str, float | int | None]]:
    """Print the table; return its figures per server (``--json``)."""
    agg: dict[str, RoundResult] = {}
    for r in results:
        a = agg.setdefault(r.kind, RoundResult(r.kind, r.calls))
        a.media += r.media
        a.cpu_s += r.cpu_s
        a.wall_s += r.wall_s
        a.rss_per_call_kb = max(a.rss_per_call_kb, r.rss_per_call_kb)
        a.peak_rss_per_call_kb = max(a.peak_rss_per_call_kb, r.peak_rss_per_call_kb)
        a.lateness_s += r.lateness_s
        a.stop_close_s += r.stop_close_s
        a.turn_latency_s += r.turn_latency_s
        a.turn_latency_steady_s += r.turn_latency_steady_s
        a.failed += r.failed
        a.client_cpu_s += r.client_cpu_s
        a.turns += r.turns
    us = {k: a.cpu_s / a.media * 1e6 if a.media else float("nan") for k, a in agg.items()}
    print(
        f"\n{args.calls} calls × {args.seconds:g} s, two tracks at 50 msg/s each, "
        f"{args.rounds} round(s), {args.workers} client processes"
    )
    header = (
        "| server | µs/msg | ×asgi | ×ws | cores | RSS/call KB (peak) | late p99 ms | "
        "turn p99 ms | stop→close p99 ms | media msgs | failed |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for k in kinds:
        a = agg[k]
        ra = f"{us[k] / us['asgi']:.2f}" if "asgi" in us else "–"
        rw = f"{us[k] / us['ws']:.2f}" if "ws" in us else "–"
        turn = "–"
        if k == "mise":
            turn = f"{_ms(p99(a.turn_latency_s))} ({_ms(p99(a.turn_latency_steady_s))})"
        print(
            f"| {k} | {us[k]:.1f} | {ra} | {rw} | {a.cpu_s / a.wall_s:.2f} | "
            f"{a.rss_per_call_kb:.0f} ({a.peak_rss_per_call_kb:.0f}) | "
            f"{_ms(p99(a.lateness_s))} | {turn} | "
            f"{_ms(p99(a.stop_close_s))} | {a.media} | {a.failed} |"
        )
    if "mise" in agg:
        a = agg["mise"]
        print(f"mise: {a.turns} turn records; client CPU {a.client_cpu_s:.1f} s over its rounds")
    return {
        k: {
            "us_per_media_message": us[k],
            "cores": a.cpu_s / a.wall_s,
            "rss_per_call_kb": a.rss_per_call_kb,
            "peak_rss_per_call_kb": a.peak_rss_per_call_kb,
            "send_lateness_p99_s": p99(a.lateness_s),
            "turn_latency_p99_s": p99(a.turn_latency_s) if k == "mise" else None,
            "turn_latency_steady_p99_s": p99(a.turn_latency_steady_s) if k == "mise" else None,
            "stop_close_p99_s": p99(a.stop_close_s),
            "media_messages": a.media,
            "turn_records": a.turns,
            "failed": a.failed,
        }
        for k, a in ((k, agg[k]) for k in kinds)
    }


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}, "
        f"load average {load[0]:.1f} at start"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="call length")
    parser.add_argument("--servers", default=DEFAULT_SERVERS, help=f"of {','.join(SERVERS)}")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--serve", choices=[s for s in SERVERS if s != "mise"], help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_bare(args.serve, args.port)
        return 0
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SERVERS]
    if unknown or args.calls < 1 or args.rounds < 1 or args.seconds < 1:
        parser.error(f"unknown server {unknown}" if unknown else "calls, rounds, seconds ≥ 1")
    print(machine())
    audio = Audio.build()
    results = []
    for r in range(args.rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for kind in order:
            res = run_round(kind, args, audio, tag=f"r{r}")
            print(
                f"round {r + 1} {kind}: {res.cpu_s / max(1, res.media) * 1e6:.1f} µs/msg, "
                f"{res.media} media, {res.failed} failed, {res.cpu_s / res.wall_s:.2f} cores",
                flush=True,
            )
            results.append(res)
    figures = report(results, kinds, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "servers": figures}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
