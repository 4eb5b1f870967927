"""Redis cost per record: the Streams sink, the cross-replica join, the consumer.

    .venv/bin/python bench/redis_records.py [--records 100000] [--calls 2000]

Starts its own ``redis-server`` (no persistence) on a free loopback port and measures, with the
server's CPU time from /proc/PID/stat (utime+stime) and wall time:

1. **sink**: ``RedisStreamSink.deliver`` in batches of 500 (what the hub sends), synthetic
   records of the size the bridge publishes (a turn record is about 840 B) → records/s from
   one replica and Redis CPU µs per record;
2. **redis-benchmark**: the same ``XADD`` (pipelined 50 deep) through ``redis-benchmark``,
   for a reference that excludes Python;
3. **join**: what one call costs the shared join (``RedisJoinStore``: stream started,
   initiated/ringing/in-progress/completed, stream stopped, one claim) → Redis CPU µs and
   round trips per call;
4. **consume**: ``mise_twilio.consume.Consumer`` (one worker, batches of 100) over the records
   of the sink run grouped in calls of 40 records → records/s and Redis CPU µs per record.

Prints numbers, asserts nothing. The Redis CPU per record sets how many calls one Redis core
carries (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from mise_twilio.consume import Consumer, Output
from mise_twilio.core.records import CallStatusEvent, CallSummary, StreamStopped
from mise_twilio.server.shared_join import RedisJoinStore
from mise_twilio.server.sinks.base import Envelope
from mise_twilio.server.sinks.redis import RedisStreamSink

STREAM = "bench:events"
BATCH = 500
RECORDS_PER_CALL = 40
TURN_BYTES = 840


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record_json(call: int, n: int) -> str:
    """A turn-shaped record of about ``TURN_BYTES`` bytes."""
    base = {
        "type": "turn",
        "schema_version": 1,
        "id": f"MZ{call:032x}:turn:{n}",
        "call_sid": f"CA{call:032x}",
        "stream_sid": f"MZ{call:032x}",
        "account_sid": "AC" + "1" * 32,
        "track": "inbound",
        "speaker": "caller",
        "index": n,
        "start_ms": 1000 * n,
        "end_ms": 1000 * n + 900,
    }
    text = json.dumps(base)
    return text[:-1] + ', "pad": "' + "x" * (TURN_BYTES - len(text) - 11) + '"}'


async def bench_sink(url: str, pid: int, n: int) -> dict[str, float]:
    sink = RedisStreamSink(url, stream=STREAM, maxlen_approx=10 * n)
    await sink.open()
    batches = []
    for start in range(0, n, BATCH):
        batch = []
        for i in range(start, min(n, start + BATCH)):
            call, k = divmod(i, RECORDS_PER_CALL)
            batch.append(
                Envelope(id=f"MZ{call:032x}:turn:{k}", type="turn", json=record_json(call, k))
            )
        batches.append(batch)
    c0, t0 = cpu_s(pid), time.perf_counter()
    for batch in batches:
        await sink.deliver(batch)
    wall = time.perf_counter() - t0
    redis_cpu = cpu_s(pid) - c0
    await sink.close()
    return {"records_per_s": n / wall, "redis_cpu_us_per_record": redis_cpu / n * 1e6}


def bench_redis_benchmark(port: int, pid: int, n: int) -> dict[str, float] | None:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    payload = "x" * TURN_BYTES
    c0 = cpu_s(pid)
    out = subprocess.run(
        [exe, "-p", str(port), "-n", str(n), "-P", "50", "-q", "--csv",
         "XADD", "bench:rb", "MAXLEN", "~", str(10 * n), "*",
         "record", payload, "type", "turn", "id", "MZ:turn:1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    redis_cpu = cpu_s(pid) - c0
    rps = float(out.stdout.strip().splitlines()[-1].split(",")[1].strip('"'))
    return {"records_per_s": rps, "redis_cpu_us_per_record": redis_cpu / n * 1e6}


async def bench_join(url: str, pid: int, calls: int) -> dict[str, float]:
    store = RedisJoinStore(url, "bench:join:", ttl_s=3600)
    await store.open()
    summary = CallSummary(
        duration_ms=60_000,
        talk_ms={"caller": 20_000, "agent": 25_000},
        talk_ratio={"caller": 0.44, "agent": 0.56},
        turn_counts={"caller": 12, "agent": 12},
        overlap_ms=1_800,
        silence_ms=15_000,
        lost_ms={"inbound": 0, "outbound": 0},
        media_messages={"inbound": 3000, "outbound": 3000},
    )
    c0, t0 = cpu_s(pid), time.perf_counter()
    round_trips = 0
    for i in range(calls):
        call_sid, stream_sid = f"CA{i:032x}", f"MZ{i:032x}"
        await store.stream_started(call_sid, stream_sid)
        for seq, status in enumerate(["initiated", "ringing", "in-progress", "completed"]):
            kind = {"in-progress": "call.answered"}.get(status, f"call.{status}")
            event = CallStatusEvent(
                id=f"{call_sid}:{kind}",
                type=kind,
                call_sid=call_sid,
                call_status=status,
                sequence_number=seq,
                event_at=None,
            )
            await store.status_released(event)
            if status == "in-progress":
                stopped = StreamStopped(
                    id=f"{stream_sid}:stream.stopped",
                    call_sid=call_sid,
                    stream_sid=stream_sid,
                    reason="stop",
                    summary=summary,
                )
                await store.stream_stopped(stopped)
        await store.claim_completed(call_sid, "bench")
        round_trips += 7
    wall = time.perf_counter() - t0
    redis_cpu = cpu_s(pid) - c0
    await store.close()
    return {
        "round_trips_per_call": round_trips / calls,
        "redis_cpu_us_per_call": redis_cpu / calls * 1e6,
        "ms_per_round_trip": wall / round_trips * 1e3,
    }


def bench_consume(url: str, pid: int, n: int) -> dict[str, float]:
    client = Consumer.connect(url, 100)
    # Each call: stream.started, turns, stream.stopped, call.completed, so documents get written.
    calls = n // RECORDS_PER_CALL
    pipe = client.pipeline(transaction=False)
    for call in range(calls):
        call_sid, stream_sid = f"CA{call:032x}", f"MZ{call:032x}"
        ids = {"call_sid": call_sid, "stream_sid": stream_sid}
        turns = RECORDS_PER_CALL - 3
        records: list[dict[str, Any]] = [
            {"type": "stream.started", "id": f"{stream_sid}:stream.started", **ids}
        ]
        records += [json.loads(record_json(call, k)) for k in range(turns)]
        records.append(
            {"type": "stream.stopped", "id": f"{stream_sid}:stream.stopped", **ids,
             "summary": {"turn_counts": {"caller": turns}}}
        )  # fmt: skip
        records.append({"type": "call.completed", "id": f"{call_sid}:call.completed", **ids})
        for r in records:
            pipe.xadd("bench:consume", {"record": json.dumps(r), "type": r["type"], "id": r["id"]})
    pipe.execute()
    with tempfile.TemporaryDirectory() as out:
        worker = Consumer(
            client, Output(Path(out)), stream="bench:consume", block_ms=100, log=io.StringIO()
        )
        c0, t0 = cpu_s(pid), time.perf_counter()
        stats = worker.run(exit_when_idle_s=0.3)
        wall = time.perf_counter() - t0 - 0.3
        redis_cpu = cpu_s(pid) - c0
    client.close()
    return {
        "records_per_s": stats.records / wall,
        "redis_cpu_us_per_record": redis_cpu / stats.records * 1e6,
        "documents": stats.documents,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=2_000)
    args = parser.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"redis://127.0.0.1:{port}/0"
            client = redis.Redis.from_url(url)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            results = {
                "sink": asyncio.run(bench_sink(url, server.pid, args.records)),
                "redis-benchmark XADD": bench_redis_benchmark(port, server.pid, args.records),
                "join (per call)": asyncio.run(bench_join(url, server.pid, args.calls)),
                "consume": bench_consume(url, server.pid, args.records),
            }
            info = client.info("memory")
            join_key = "bench:join:CA" + f"{0:032x}"
            stream_bytes, join_bytes = client.memory_usage(STREAM), client.memory_usage(join_key)
            assert stream_bytes is not None and join_bytes is not None  # both keys exist
            results["memory"] = {
                "stream_bytes_per_record": stream_bytes / client.xlen(STREAM),
                "join_hash_bytes_per_call": join_bytes,
                "used_memory_mb": info["used_memory"] / 2**20,
            }
            client.close()
        finally:
            server.terminate()
            server.wait(10)
    for name, values in results.items():
        if values is None:
            print(f"{name:22} (not installed)")
            continue
        text = ", ".join(f"{k} {v:,.1f}" for k, v in values.items())
        print(f"{name:22} {text}")


if __name__ == "__main__":
    main()
