"""What a sink outage costs the read loop: ``SinkHub.publish()`` time and memory growth.

Two runs over the same synthetic records (realistic turn / stream JSON from ``records``):

1. healthy: a ``JsonlSink`` writing to a temp file;
2. down: a ``RedisStreamSink`` pointed at a closed loopback port, so every delivery fails,
   the hub backs off and every record goes through the on-disk spool.

The hub runs write-ahead (the server's mode; ``--memory-first`` for the other). Publishing is
paced at ``--rate`` records/s (0: as fast as possible) and yields to the event
loop every ``--yield-every`` records, as a server handling Twilio messages would, so the writer
and spool flusher tasks run concurrently. Prints per-call latency (median, p99, p99.9, max,
µs), RSS growth (and, with ``--tracemalloc``, traced Python memory growth; tracing slows every
allocation, so latencies are then inflated), and the down/healthy ratios. No assertions.

    .venv/bin/python bench/sink_outage.py --records 100000 --rate 10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import socket
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mise_twilio.core.messages import MediaFormat
from mise_twilio.core.records import (
    AnyRecord,
    Energy,
    Pitch,
    StreamStarted,
    TurnRecord,
)
from mise_twilio.server.sinks.base import Envelope, Sink
from mise_twilio.server.sinks.hub import SinkHub
from mise_twilio.server.sinks.jsonl import JsonlSink
from mise_twilio.server.sinks.redis import RedisStreamSink


def synthetic_records(n: int) -> list[AnyRecord]:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    out: list[AnyRecord] = []
    for i in range(n):
        call = i // 200
        sids = {
            "call_sid": f"CA{call:032x}",
            "stream_sid": f"MZ{call:032x}",
            "account_sid": "AC" + "1" * 32,
        }
        if i % 200 == 0:
            out.append(
                StreamStarted(
                    id=f"MZ{call:032x}:stream.started",
                    tracks=["inbound", "outbound"],
                    media_format=MediaFormat(
                        encoding="audio/x-mulaw", sample_rate_hz=8000, channels=1
                    ),
                    received_at=t0,
                    **sids,
                )
            )
            continue
        start_ms = (i % 200) * 2000
        track = "inbound" if i % 2 else "outbound"
        out.append(
            TurnRecord(
                id=f"MZ{call:032x}:turn:{i % 200}",
                track=track,
                speaker="caller" if track == "inbound" else "agent",
                index=i % 200,
                start_ms=start_ms,
                end_ms=start_ms + 1500,
                duration_ms=1500,
                speech_ms=1380,
                segments=[(start_ms, start_ms + 700), (start_ms + 820, start_ms + 1500)],
                started_at=t0 + timedelta(milliseconds=start_ms),
                ended_at=t0 + timedelta(milliseconds=start_ms + 1500),
                end_reason="floor_taken",
                gap_before_ms=240,
                overlap_ms=0,
                barge_in=False,
                interrupted=False,
                backchannel=False,
                energy=Energy(
                    mean_dbfs=-27.1, p95_dbfs=-17.9, peak_dbfs=-5.5, dynamic_range_db=22.0
                ),
                pitch=Pitch(
                    median_hz=121.0, iqr_semitones=2.8, voiced_ratio=0.6, slope_semitones_per_s=-0.3
                ),
                speech_rate_hz=4.4,
                **sids,
            )
        )
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@dataclass
class Result:
    label: str
    per_call_us: list[float]
    wall_s: float
    traced_growth_bytes: int
    traced_peak_bytes: int
    rss_growth_bytes: int
    spooled: int
    spool_bytes: int
    delivered: int

    def pct(self, q: float) -> float:
        xs = sorted(self.per_call_us)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run(
    label: str,
    sink: Sink,
    records: list[AnyRecord],
    spool_dir: Path,
    *,
    yield_every: int,
    rate: float,
    trace: bool,
    write_ahead: bool,
) -> Result:
    hub = SinkHub(
        [sink],
        queue_max_records=10_000,
        batch_max_records=500,
        spool_dir=spool_dir,
        backoff_initial_s=0.2,
        backoff_max_s=5.0,
        write_ahead=write_ahead,
    )
    await hub.start()
    # Serialisation is part of publish(): time publish(record), not publish_envelope.
    gc.collect()
    if trace:
        tracemalloc.start()
    traced_before, _ = tracemalloc.get_traced_memory()
    rss_before = rss_bytes()
    per_call_us: list[float] = []
    perf = time.perf_counter
    t_start = perf()
    for i, record in enumerate(records):
        t0 = perf()
        hub.publish(record)
        per_call_us.append((perf() - t0) * 1e6)
        if i % yield_every == yield_every - 1:
            ahead_s = (t_start + (i + 1) / rate - perf()) if rate else 0.0
            await asyncio.sleep(max(ahead_s, 0.0))
    wall_s = perf() - t_start
    await asyncio.sleep(0.5)  # let the flusher / writer catch up before measuring memory
    traced_after, traced_peak = tracemalloc.get_traced_memory()
    if trace:
        tracemalloc.stop()
    rss_after = rss_bytes()
    stats = hub.stats()[sink.name]
    await hub.drain(2.0)
    await hub.close()
    return Result(
        label=label,
        per_call_us=per_call_us,
        wall_s=wall_s,
        traced_growth_bytes=traced_after - traced_before,
        traced_peak_bytes=traced_peak - traced_before,
        rss_growth_bytes=rss_after - rss_before,
        spooled=stats.spooled,
        spool_bytes=stats.spool_bytes,
        delivered=stats.delivered,
    )


def show(r: Result) -> None:
    n = len(r.per_call_us)
    print(
        f"{r.label:<8} publish µs: median {statistics.median(r.per_call_us):7.2f}  "
        f"p99 {r.pct(0.99):7.2f}  p99.9 {r.pct(0.999):8.2f}  max {max(r.per_call_us):9.1f}  "
        f"| {n / r.wall_s:9.0f} rec/s"
    )
    print(
        f"{'':<8} memory: RSS +{r.rss_growth_bytes / 2**20:6.1f} MiB, "
        f"traced +{r.traced_growth_bytes / 2**20:6.1f} MiB "
        f"(peak +{r.traced_peak_bytes / 2**20:6.1f} MiB; 0 without --tracemalloc)"
        f" | delivered {r.delivered}, spooled {r.spooled}, spool {r.spool_bytes / 2**20:.1f} MiB"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--yield-every", type=int, default=50, help="records between loop yields")
    parser.add_argument("--rate", type=float, default=10_000, help="records/s; 0 = unpaced")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python memory")
    parser.add_argument(
        "--memory-first", action="store_true", help="SinkHub(write_ahead=False), not write-ahead"
    )
    args = parser.parse_args()

    records = synthetic_records(args.records)
    # The benchmark's own records must not make every GC pass during the runs slower.
    gc.collect()
    gc.freeze()
    mean_json_bytes = statistics.mean(len(Envelope.of(r).json) for r in records[:1000])
    print(
        f"{len(records)} records, ~{mean_json_bytes:.0f} B of JSON each, "
        f"yield every {args.yield_every}"
    )

    with tempfile.TemporaryDirectory(prefix="mise-bench-") as tmp:
        root = Path(tmp)
        healthy = await run(
            "healthy",
            JsonlSink(root / "events.jsonl"),
            records,
            root / "spool-healthy",
            yield_every=args.yield_every,
            rate=args.rate,
            trace=args.tracemalloc,
            write_ahead=not args.memory_first,
        )
        show(healthy)
        down = await run(
            "down",
            RedisStreamSink(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout_s=0.2),
            records,
            root / "spool-down",
            yield_every=args.yield_every,
            rate=args.rate,
            trace=args.tracemalloc,
            write_ahead=not args.memory_first,
        )
        show(down)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 else "n/a"

    line = (
        "down/healthy: median "
        f"{ratio(statistics.median(down.per_call_us), statistics.median(healthy.per_call_us))}, "
        f"p99 {ratio(down.pct(0.99), healthy.pct(0.99))}, "
        f"p99.9 {ratio(down.pct(0.999), healthy.pct(0.999))}, "
        f"RSS growth {ratio(down.rss_growth_bytes, healthy.rss_growth_bytes)}"
    )
    if args.tracemalloc:
        line += (
            f", traced memory growth {ratio(down.traced_growth_bytes, healthy.traced_growth_bytes)}"
        )
    print(line)


if __name__ == "__main__":
    asyncio.run(main())
