"""JsonlSink: records are on disk once deliver returns; hub → JSONL end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest_redis import synthetic_call

from mise_twilio.core.records import from_json
from mise_twilio.server.config import Settings
from mise_twilio.server.sinks import HttpSink, JsonlSink, RedisStreamSink, build_hub, build_sinks
from mise_twilio.server.sinks.base import Envelope


async def test_deliver_appends_lines_durably(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "events.jsonl"
    sink = JsonlSink(path)
    await sink.open()
    assert await sink.ready()
    records = synthetic_call(3)
    await sink.deliver([Envelope.of(r) for r in records[:2]])
    # Read through a separate descriptor: the bytes are in the file, not in a Python buffer.
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    lines = data.decode().splitlines()
    assert [from_json(line).id for line in lines] == [r.id for r in records[:2]]
    await sink.deliver([Envelope.of(r) for r in records[2:]])
    await sink.close()
    await sink.close()
    assert not await sink.ready()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r.id for r in records]


async def test_torn_last_line_is_terminated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"id":"a","type":"turn"}\n{"id":"b","ty')
    sink = JsonlSink(path)
    await sink.open()
    await sink.deliver([Envelope(id="c", type="turn", json='{"id":"c","type":"turn"}')])
    await sink.close()
    assert path.read_text().splitlines() == [
        '{"id":"a","type":"turn"}',
        '{"id":"b","ty',
        '{"id":"c","type":"turn"}',
    ]


async def test_hub_to_jsonl_from_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, sink_queue_max=50, sink_batch_max=20)
    hub = build_hub(settings)
    await hub.start()
    records = synthetic_call(120)
    for r in records:
        hub.publish(r)
    reports = await hub.drain(settings.shutdown_deadline_s)
    await hub.close()
    assert reports["jsonl"].completed
    lines = settings.resolved_jsonl_path.read_text().splitlines()
    assert [from_json(line) for line in lines] == records


def test_build_sinks_from_settings(tmp_path: Path) -> None:
    assert [s.name for s in build_sinks(Settings(data_dir=tmp_path))] == ["jsonl"]
    settings = Settings(
        data_dir=tmp_path,
        jsonl_enabled=False,
        http_url="http://127.0.0.1:9/ingest",
        http_token="s3cret",
        redis_url="redis://127.0.0.1:9/0",
        redis_stream="calls",
        redis_maxlen=1000,
    )
    sinks = build_sinks(settings)
    assert [s.name for s in sinks] == ["http", "redis"]
    http, redis = sinks
    assert isinstance(http, HttpSink) and isinstance(redis, RedisStreamSink)
    assert redis.stream == "calls" and redis.maxlen_approx == 1000
    assert build_sinks(Settings(data_dir=tmp_path, jsonl_path=Path("off"))) == []
