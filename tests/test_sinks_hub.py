"""SinkHub: write-ahead and memory-first modes, queue → spool → retry, drain, order, dead
letters, restart replay. Tests without ``write_ahead`` run the server's mode (write-ahead).

The sink here is an in-memory ``Sink`` whose behaviour each test scripts (fail, hang, slow);
the spool, threads and files are real.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest_redis import synthetic_call
from structlog.testing import capture_logs

from mise_twilio.core.errors import SinkError
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.sinks.base import DeliveryError, Envelope
from mise_twilio.server.sinks.hub import SinkHub


class ScriptedSink:
    """Records every attempt; ``fail`` (an exception or None) decides the outcome."""

    def __init__(self, name: str = "mem") -> None:
        self.name = name
        self.fail: BaseException | None = None
        self.poison_suffix: str | None = None
        self.gate: asyncio.Event | None = None  # when set to a cleared Event, deliver hangs
        self.delay_s = 0.0
        self.attempts: list[tuple[float, list[str]]] = []
        self.delivered: list[str] = []
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def deliver(self, batch: list[Envelope]) -> None:
        ids = [e.id for e in batch]
        self.attempts.append((time.monotonic(), ids))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        if self.poison_suffix and any(i.endswith(self.poison_suffix) for i in ids):
            raise DeliveryError("poison", retryable=False, reason="http_400", status_code=400)
        self.delivered.extend(ids)

    async def ready(self) -> bool:
        return self.fail is None

    async def close(self) -> None:
        self.closed = True


def envs(n: int, start: int = 0, prefix: str = "r") -> list[Envelope]:
    return [
        Envelope(
            id=f"{prefix}-{i}",
            type="turn",
            json=json.dumps({"id": f"{prefix}-{i}", "type": "turn"}),
        )
        for i in range(start, start + n)
    ]


def make_hub(sinks: list[ScriptedSink], spool_dir: Path, **kwargs: object) -> SinkHub:
    options: dict[str, object] = {
        "queue_max_records": 100,
        "batch_max_records": 10,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    options.update(kwargs)
    return SinkHub(sinks, spool_dir=spool_dir, **options)  # type: ignore[arg-type]


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_publishes_records_to_every_sink_in_order(tmp_path: Path) -> None:
    a, b = ScriptedSink("a"), ScriptedSink("b")
    hub = make_hub([a, b], tmp_path)
    await hub.start()
    records = synthetic_call(40)
    for r in records:
        hub.publish(r)
    reports = await hub.drain(5.0)
    await hub.close()
    ids = [r.id for r in records]
    assert a.delivered == ids and b.delivered == ids
    assert reports["a"].completed and reports["a"].delivered == len(ids)
    assert all(len(batch) <= 10 for _, batch in a.attempts)
    assert a.opened and a.closed


async def test_queue_full_spills_to_spool_and_order_holds(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.gate = asyncio.Event()
    hub = make_hub([sink], tmp_path, queue_max_records=20, batch_max_records=8, write_ahead=False)
    await hub.start()
    for e in envs(200):
        hub.publish_envelope(e)
    stats = hub.stats()["mem"]
    assert stats.queue_depth <= 20
    assert stats.spooled >= 200 - 20 - 8
    await wait_for(lambda: any((tmp_path / "mem").glob("seg-*.jsonl")))
    sink.gate.set()
    await hub.drain(5.0)
    await hub.close()
    assert sink.delivered == [e.id for e in envs(200)], "publish order, each exactly once"
    assert not list((tmp_path / "mem").glob("seg-*.jsonl")), "delivered segments are deleted"


async def test_a_batch_spooled_while_in_flight_that_then_succeeds_is_not_redelivered(
    tmp_path: Path,
) -> None:
    # The batch is in the sink (gate closed) when the queue overflows: spilling copies it to
    # the head of the spool. When the delivery then succeeds, that copy must be committed
    # without a second delivery.
    sink = ScriptedSink()
    sink.gate = asyncio.Event()
    hub = make_hub([sink], tmp_path, queue_max_records=10, batch_max_records=3, write_ahead=False)
    await hub.start()
    for e in envs(3):
        hub.publish_envelope(e)
    await wait_for(lambda: len(sink.attempts) == 1)  # the first batch is in flight
    for e in envs(20, start=3):
        hub.publish_envelope(e)  # 10 fit in the queue; the 11th spills everything
    assert hub.stats()["mem"].spooled > 0
    sink.gate.set()
    await hub.drain(5.0)
    await hub.close()
    assert sink.attempts[0][1] == ["r-0", "r-1", "r-2"]
    assert sink.delivered == [e.id for e in envs(23)], "publish order, each exactly once"


async def test_failing_sink_spools_then_recovers_with_same_batches(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.fail = SinkError("down", retryable=True)
    hub = make_hub([sink], tmp_path, batch_max_records=5)
    await hub.start()
    for e in envs(12):
        hub.publish_envelope(e)
    await wait_for(lambda: len(sink.attempts) >= 3)
    assert hub.stats()["mem"].failing
    assert (await hub.ready()) == {"mem": False}
    # While failing, new records go to the spool (behind the failed ones).
    for e in envs(12, start=12):
        hub.publish_envelope(e)
    assert hub.stats()["mem"].queue_depth == 0
    await wait_for(lambda: hub.stats()["mem"].spool_bytes > 0)
    first_batch = sink.attempts[0][1]
    assert all(batch == first_batch for _, batch in sink.attempts), "a retry repeats the batch"
    sink.fail = None
    await wait_for(lambda: len(sink.delivered) == 24)
    assert sink.delivered == [e.id for e in envs(24)]
    stats = hub.stats()["mem"]
    assert not stats.failing and stats.failures >= 3 and stats.delivered == 24
    # The spool empties (the last batch is committed in the lane's thread just after its
    # delivery) and the lane leaves spill mode: the queue is used again.
    await wait_for(lambda: hub.stats()["mem"].spool_bytes == 0 and not hub.stats()["mem"].spilling)
    sink.gate = asyncio.Event()
    for e in envs(3, start=24):
        hub.publish_envelope(e)
    await asyncio.sleep(0.05)
    assert hub.stats()["mem"].spooled == stats.spooled, "healthy again: nothing spooled"
    sink.gate.set()
    await hub.drain(2.0)
    await hub.close()
    assert sink.delivered == [e.id for e in envs(27)]


async def test_backoff_grows_and_respects_retry_after(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.fail = DeliveryError("slow down", reason="http_429", retry_after_s=0.3)
    hub = make_hub([sink], tmp_path, backoff_initial_s=0.001, backoff_max_s=0.002)
    await hub.start()
    hub.publish_envelope(envs(1)[0])
    await wait_for(lambda: len(sink.attempts) >= 3, timeout_s=3.0)
    sink.fail = None
    times = [t for t, _ in sink.attempts[:3]]
    assert times[1] - times[0] >= 0.29 and times[2] - times[1] >= 0.29
    await hub.drain(2.0)
    await hub.close()
    assert sink.delivered == ["r-0"]


async def test_non_retryable_bisects_and_dead_letters_only_the_poison(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.poison_suffix = "-poison"
    metrics = Metrics()
    hub = make_hub([sink], tmp_path, batch_max_records=16, metrics=metrics)
    await hub.start()
    batch = envs(16)
    batch[11] = Envelope(id="r-11-poison", type="turn", json='{"id":"r-11-poison","type":"turn"}')
    with capture_logs():
        for e in batch:
            hub.publish_envelope(e)
        await hub.drain(5.0)
    await hub.close()
    assert sink.delivered == [e.id for e in batch if e.id != "r-11-poison"]
    lines = (tmp_path / "mem" / "dead-letter.jsonl").read_text().splitlines()
    assert len(lines) == 1
    dead = json.loads(lines[0])
    assert dead["id"] == "r-11-poison" and dead["status_code"] == 400
    assert dead["record"] == {"id": "r-11-poison", "type": "turn"}
    assert "poison" in dead["error"]
    assert hub.stats()["mem"].dead_lettered == 1


async def test_unexpected_exception_is_retried(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.fail = RuntimeError("bug in a sink")
    hub = make_hub([sink], tmp_path)
    await hub.start()
    with capture_logs():
        hub.publish_envelope(envs(1)[0])
        await wait_for(lambda: len(sink.attempts) >= 2)
    sink.fail = None
    await hub.drain(2.0)
    await hub.close()
    assert sink.delivered == ["r-0"]


async def test_drain_respects_deadline_and_restart_replays_first(tmp_path: Path) -> None:
    hung = ScriptedSink()
    hung.gate = asyncio.Event()  # never set: deliver hangs like a dead TCP peer
    hub = make_hub([hung], tmp_path, queue_max_records=50)
    await hub.start()
    for e in envs(120):
        hub.publish_envelope(e)
    t0 = time.monotonic()
    reports = await hub.drain(0.3)
    # It waited for its deadline, then gave up on the hung delivery (no upper bound here: a
    # loaded machine may be slow to return; a drain that never returned would hang the test).
    assert time.monotonic() - t0 >= 0.25
    assert not reports["mem"].completed and reports["mem"].delivered == 0
    assert reports["mem"].spool_bytes > 0
    # Published after the drain: straight to the spool.
    hub.publish_envelope(envs(1, start=120)[0])
    await hub.close()
    with pytest.raises(RuntimeError):
        hub.publish_envelope(envs(1, start=999)[0])

    healthy = ScriptedSink()
    hub2 = make_hub([healthy], tmp_path)
    await hub2.start()
    for e in envs(5, start=121):
        hub2.publish_envelope(e)
    await hub2.drain(5.0)
    await hub2.close()
    assert healthy.delivered == [e.id for e in envs(126)], "replay first, then new records"
    assert not list((tmp_path / "mem").glob("seg-*.jsonl"))


async def test_drain_flushes_a_slow_but_healthy_sink(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.delay_s = 0.002
    hub = make_hub([sink], tmp_path, queue_max_records=2000, batch_max_records=50)
    await hub.start()
    for e in envs(1000):
        hub.publish_envelope(e)
    reports = await hub.drain(10.0)
    await hub.close()
    assert reports["mem"].completed and reports["mem"].spooled == 0
    assert sink.delivered == [e.id for e in envs(1000)]


async def test_memory_cap_writes_synchronously(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.fail = SinkError("down")
    hub = make_hub(
        [sink], tmp_path, spool_buffer_max_bytes=2000, backoff_initial_s=10, backoff_max_s=10
    )
    await hub.start()
    hub.publish_envelope(envs(1)[0])
    await wait_for(lambda: len(sink.attempts) >= 1)
    await asyncio.sleep(0.05)
    # The event loop does not run between these publishes: only the cap can put them on disk.
    for e in envs(200, start=1):
        hub.publish_envelope(e)
    stats = hub.stats()["mem"]
    assert stats.spool_buffered_records < 200
    on_disk = sum(p.stat().st_size for p in (tmp_path / "mem").glob("seg-*.jsonl"))
    assert on_disk > 2000
    await hub.close()
    sink.fail = None
    hub2 = make_hub([sink], tmp_path)
    await hub2.start()
    await hub2.drain(5.0)
    await hub2.close()
    assert sink.delivered == [e.id for e in envs(201)]


async def test_one_failing_sink_does_not_hold_back_another(tmp_path: Path) -> None:
    good, bad = ScriptedSink("good"), ScriptedSink("bad")
    bad.fail = SinkError("down")
    hub = make_hub([good, bad], tmp_path)
    await hub.start()
    for e in envs(300):
        hub.publish_envelope(e)
        if e.id.endswith("0"):
            await asyncio.sleep(0)
    await wait_for(lambda: len(good.delivered) == 300)
    assert hub.stats()["bad"].failing and hub.stats()["bad"].spool_bytes > 0
    assert await hub.ready() == {"good": True, "bad": False}
    reports = await hub.drain(0.5)
    await hub.close()
    assert reports["good"].completed and not reports["bad"].completed


def test_rejects_bad_sink_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_hub([ScriptedSink("a"), ScriptedSink("a")], tmp_path)
    with pytest.raises(ValueError):
        make_hub([ScriptedSink("../etc")], tmp_path)


def spooled_on_disk(directory: Path) -> set[str]:
    ids: set[str] = set()
    for path in directory.glob("seg-*.jsonl"):
        for line in path.read_bytes().splitlines():
            ids.add(json.loads(line)["id"])
    return ids


async def test_write_ahead_a_record_one_sink_delivered_is_on_every_spool(tmp_path: Path) -> None:
    # The fast sink looks at the slow sink's spool at the moment each batch reaches it: every
    # record it receives must already be on the slow sink's disk (or delivered by it), so a
    # SIGKILL at that moment could not lose it for the slow sink.
    slow = ScriptedSink("slow")
    slow.delay_s = 0.05
    seen_missing: list[str] = []

    class Watching(ScriptedSink):
        async def deliver(self, batch: list[Envelope]) -> None:
            on_disk = spooled_on_disk(tmp_path / "slow") | set(slow.delivered)
            seen_missing.extend(e.id for e in batch if e.id not in on_disk)
            await super().deliver(batch)

    fast = Watching("fast")
    metrics = Metrics()
    hub = make_hub([fast, slow], tmp_path, batch_max_records=5, metrics=metrics)
    await hub.start()
    for i in range(6):
        for e in envs(10, start=10 * i):
            hub.publish_envelope(e)
        await asyncio.sleep(0.01)
    await wait_for(lambda: len(fast.delivered) == 60)
    assert seen_missing == []
    await hub.drain(10.0)
    await hub.close()
    assert fast.delivered == slow.delivered == [e.id for e in envs(60)]


async def test_write_ahead_counts_a_record_published_once_it_is_on_disk(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.gate = asyncio.Event()  # never delivers while we look
    metrics = Metrics()
    hub = make_hub([sink], tmp_path, metrics=metrics)
    await hub.start()
    for e in envs(5):
        hub.publish_envelope(e)
    counted = metrics.records_total.labels("turn")
    assert counted._value.get() == 0  # nothing awaited yet: nothing written
    await wait_for(lambda: counted._value.get() == 5)
    assert spooled_on_disk(tmp_path / "mem") == {e.id for e in envs(5)}
    sink.gate.set()
    await hub.drain(5.0)
    await hub.close()
    assert sink.delivered == [e.id for e in envs(5)]
    assert not spooled_on_disk(tmp_path / "mem")


async def test_write_ahead_slow_sink_restart_replays_everything_counted(tmp_path: Path) -> None:
    # A sink that takes a batch and never answers; the hub is abandoned (what SIGKILL leaves:
    # its spool files), and a new hub on the same directory delivers every counted record.
    stuck = ScriptedSink()
    stuck.gate = asyncio.Event()
    metrics = Metrics()
    hub = make_hub([stuck], tmp_path, metrics=metrics)
    await hub.start()
    for e in envs(30):
        hub.publish_envelope(e)
    await wait_for(lambda: metrics.records_total.labels("turn")._value.get() == 30)
    assert len(stuck.attempts) == 1 and not stuck.delivered  # the first batch hangs in flight

    fresh = ScriptedSink()
    again = make_hub([fresh], tmp_path)
    await again.start()
    await again.drain(5.0)
    await again.close()
    assert fresh.delivered == [e.id for e in envs(30)], "in order, nothing lost"
