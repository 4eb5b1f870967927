"""Redis Streams sink against a real redis-server, including a 5 s outage mid-call."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

from conftest_redis import CallRecordsFactory, RedisServer
from redis.asyncio import Redis
from support import ROOT

from mise_twilio.core.records import from_json
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.sinks.base import Envelope
from mise_twilio.server.sinks.hub import SinkHub
from mise_twilio.server.sinks.redis import RedisStreamSink

OUTAGE_S = 5.0


async def read_stream(url: str, stream: str) -> list[dict[bytes, bytes]]:
    client = Redis.from_url(url)
    try:
        entries = await client.xrange(stream, "-", "+")
    finally:
        await client.aclose()
    # redis-py types every decode mode (and nil entries); this client's XRANGE gives bytes
    return [fields for _, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", entries)]


async def test_xadd_fields_and_ready(
    redis_server: RedisServer, make_call_records: CallRecordsFactory
) -> None:
    sink = RedisStreamSink(redis_server.url, stream="t:events", maxlen_approx=10_000)
    await sink.open()
    assert await sink.ready()
    records = make_call_records(3)
    await sink.deliver([Envelope.of(r) for r in records])
    entries = await read_stream(redis_server.url, "t:events")
    assert [e[b"id"].decode() for e in entries] == [r.id for r in records]
    assert [e[b"type"].decode() for e in entries] == [r.type for r in records]
    assert [from_json(e[b"record"]) for e in entries] == records
    redis_server.kill()
    assert not await sink.ready()
    await sink.close()


async def test_wrong_type_key_is_not_retryable(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    await client.set("not-a-stream", "x")
    await client.aclose()
    sink = RedisStreamSink(redis_server.url, stream="not-a-stream")
    await sink.open()
    try:
        await sink.deliver([Envelope(id="a", type="turn", json='{"id":"a","type":"turn"}')])
    except Exception as exc:
        assert getattr(exc, "retryable", None) is False
        assert getattr(exc, "reason", None) == "redis_response"
    else:
        raise AssertionError("XADD to a string key must fail")
    finally:
        await sink.close()


async def test_outage_mid_call_loses_nothing(
    redis_server: RedisServer, make_call_records: CallRecordsFactory, tmp_path: Path
) -> None:
    records = make_call_records(295)  # 300 records
    assert len(records) == 300
    metrics = Metrics()
    sink = RedisStreamSink(redis_server.url, stream="mise:events", socket_connect_timeout_s=0.5)
    hub = SinkHub(
        [sink],
        queue_max_records=50,
        batch_max_records=20,
        spool_dir=tmp_path / "spool",
        metrics=metrics,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )
    await hub.start()
    pace_s = 0.025  # 300 records over 7.5 s: a busy call's turn + event rate, compressed
    stop_at, restart_at = 60, 60 + int(OUTAGE_S / pace_s)
    peak_spool_bytes = 0
    for i, record in enumerate(records):
        if i == stop_at:
            redis_server.stop()
            t_stop = time.monotonic()
        if i == restart_at:
            await asyncio.to_thread(redis_server.start)
            outage_s = time.monotonic() - t_stop
        hub.publish(record)
        await asyncio.sleep(pace_s)
        peak_spool_bytes = max(peak_spool_bytes, hub.stats()["redis"].spool_bytes)
    assert outage_s >= OUTAGE_S - 0.5
    stats_before_drain = hub.stats()["redis"]
    reports = await hub.drain(10.0)
    await hub.close()

    assert stats_before_drain.failures > 0, "the outage was noticed"
    assert peak_spool_bytes > 10_000, "records waited on disk through the outage"
    assert reports["redis"].completed
    entries = await read_stream(redis_server.url, "mise:events")
    ids = [e[b"id"].decode() for e in entries]
    counts = collections.Counter(ids)
    missing = {r.id for r in records} - set(counts)
    duplicates = sum(c - 1 for c in counts.values())
    print(
        f"redis outage: {len(entries)} entries for {len(records)} records, "
        f"duplicates={duplicates}, failures={stats_before_drain.failures}, "
        f"spooled={stats_before_drain.spooled}"
    )
    assert not missing, f"{len(missing)} records never reached the stream"
    assert all(json.loads(e[b"record"])["id"] == e[b"id"].decode() for e in entries)


def documented_consumer() -> str:
    """The redis-py consumer of docs/operations.md §6, verbatim."""
    text = (ROOT / "docs" / "operations.md").read_text()
    blocks: list[str] = re.findall(r"```python\n(.*?)```", text, re.S)
    (block,) = [b for b in blocks if "xreadgroup" in b]
    return block


def test_documented_consumer_survives_an_idle_stream(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # redis-py's default socket_timeout (5 s) is not longer than the documented BLOCK 5000:
    # once the stream is idle for a block, the read raised TimeoutError and the worker died.
    import redis

    script = tmp_path / "consumer.py"
    script.write_text(
        "def handle(record):\n    print(record['id'], flush=True)\n\n"
        + documented_consumer().replace("redis://localhost:6379/0", redis_server.url)
    )
    client = redis.Redis.from_url(redis_server.url)
    worker = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def add(record_id: str) -> None:
        record = json.dumps({"id": record_id})
        client.xadd("mise:events", {"record": record, "type": "turn", "id": record_id})

    try:
        assert worker.stdout is not None
        add("r-1")
        assert worker.stdout.readline() == "r-1\n"
        time.sleep(7.0)  # idle for longer than one BLOCK and the default timeout
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        for record_id in ("r-2", "r-1", "r-3"):
            add(record_id)
        lines = [worker.stdout.readline() for _ in range(2)]
        assert lines == ["r-2\n", "r-3\n"]  # the repeat of r-1 is skipped
    finally:
        worker.kill()
        worker.wait(10)
        client.close()
