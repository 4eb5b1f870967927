"""Fan-out of records to sinks: never blocks the read loop, never drops (docs/architecture.md).

Two modes. **Write-ahead** (``write_ahead=True``, what the server uses): every published
record is written to every sink's spool before any sink may deliver it, so a record that one
sink has delivered (or that ``mise_records_total`` counts) is on disk for all of them, and a
SIGKILL cannot lose it, however slow a sink is. ``publish()`` appends the envelope to one
hub-wide buffer; the write-ahead flusher appends the buffer to every lane's spool (one write per
lane, on the lanes' I/O threads, then one fsync each) and only then wakes the writers, which
deliver from the spools. What a SIGKILL can lose is the buffer not yet written: records
published in the last few milliseconds (one flush), which no sink has seen either. The cost:
each record is written and read back once per sink (bench/sink_outage.py).

**Memory-first** (``write_ahead=False``): the description below, where a lane that keeps up
delivers from memory and only spills to the spool when it falls behind, fails or shuts down.

Per sink ("lane") the hub keeps:

- a bounded in-memory queue (``queue_max_records``), used while the sink keeps up;
- an on-disk ``Spool`` (``spool_dir/<sink>/``), used once the queue is full, while the sink is
  failing, during shutdown, and for whatever a previous process left behind;
- one writer task that delivers batches of up to ``batch_max_records`` and retries;
- one flusher task that moves spooled envelopes from memory to disk.

``publish()`` is synchronous and O(number of sinks): it serialises the record once and appends
the envelope to each lane's queue, or to the lane's spool buffer. The spool buffer is written
and fsynced by the flusher on the lane's I/O thread, so the event loop never waits for a disk
— until the buffer exceeds ``spool_buffer_max_bytes``: then ``publish`` writes it synchronously
(without waiting for a new fsync, but after any flush already running). That is the trade-off:
memory stays bounded by ``queue_max_records`` + ``spool_buffer_max_bytes`` per sink, at the
price of stalls of the loop (tens of ms; ``bench/sink_outage.py`` saw 84 ms unpaced at 50k
records/s) when records arrive faster than the disk takes them. The spool thread also competes
for the GIL, so a few publishes wait up to one switch interval (5 ms) while it runs. If the
disk itself fails (full, read-only), the buffer is kept in memory and retried: the only way
left not to drop.

Order: per sink, records are delivered in publish order, also across restarts. The queue only
receives records while the spool is empty. The moment a lane starts spilling (queue full, a
failed delivery, shutdown), the batch in flight and the whole queue move to the spool ahead of
the new record; if that in-flight batch then succeeds, its copy at the head of the spool is
committed without re-delivery. The spool left by a previous process is replayed before anything
new. Records carry stable ids, so receivers can deduplicate (and re-sort if they must).

Delivery is at-least-once: an envelope leaves the spool only after ``deliver`` returned. A
retryable ``SinkError`` backs off exponentially with full jitter (``backoff_initial_s`` doubling
up to ``backoff_max_s``, uniform in [0, cap]), or at least ``DeliveryError.retry_after_s`` when
the receiver named a delay, and retries the same batch (so an HTTP idempotency key derived from
it repeats). A non-retryable ``SinkError`` bisects the batch until the failing records are
isolated; those go to ``spool_dir/<sink>/dead-letter.jsonl`` with the error, the rest is
delivered.

Memory lost on SIGKILL in memory-first mode: the queue, the one batch in flight and the spool
buffer not yet flushed; in write-ahead mode only the hub buffer not yet flushed (above). The
spool on disk survives. SIGTERM should call ``drain``, which delivers what it can within the
deadline and spools the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import random
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from prometheus_client import Counter

from mise_twilio.core.errors import SinkError
from mise_twilio.core.records import AnyRecord
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.sinks.base import SINK_NAME_RE, DeliveryError, Envelope, Sink
from mise_twilio.server.sinks.spool import DEAD_LETTER_FILE, Spool

log = structlog.get_logger("mise_twilio.server.sinks.hub")

_T = TypeVar("_T")

_ENVELOPE_OVERHEAD_BYTES = 48
"""Spool line bytes beyond the record JSON (``{"id":…,"type":…,"record":…}``), an estimate."""


@dataclass(frozen=True, slots=True)
class SinkStats:
    """One sink's state, for ``/metrics`` and tests.

    - ``queue_depth``: records in the in-memory queue.
    - ``spool_bytes``: undelivered spool bytes (disk plus the unflushed buffer).
    - ``spool_buffered_records``: spooled records not yet written to disk.
    - ``delivered``, ``failures`` (failed attempts), ``dead_lettered``, ``spooled``: counts
      since ``start()``.
    - ``failing``: the last delivery attempt failed.
    - ``spilling``: new records go to the spool (behind older ones still there) instead of
      the queue; cleared once the spool is empty again.
    """

    name: str
    queue_depth: int
    spool_bytes: int
    spool_buffered_records: int
    delivered: int
    failures: int
    dead_lettered: int
    spooled: int
    failing: bool
    spilling: bool


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What ``drain`` did for one sink.

    - ``delivered``: records delivered between the call and its return.
    - ``spooled``: records moved from memory to the spool when the drain ended.
    - ``spool_bytes``: undelivered bytes left on disk for the next start.
    - ``completed``: everything was delivered (nothing left in queue or spool).
    """

    delivered: int
    spooled: int
    spool_bytes: int
    completed: bool


class _Source(enum.Enum):
    QUEUE = "queue"
    SPOOL = "spool"


class _Lane:
    """Everything the hub keeps for one sink."""

    def __init__(self, sink: Sink, spool: Spool) -> None:
        self.sink = sink
        self.name = sink.name
        self.spool = spool
        self.queue: deque[Envelope] = deque()
        self.buffer: deque[Envelope] = deque()  # spooled, not yet on disk
        self.buffer_bytes = 0
        self.flushing_records = 0  # taken from the buffer, being written right now
        self.spilling = False  # new records go to the spool (it is not empty)
        self.failing = False
        self.held: list[Envelope] | None = None  # the queue batch in flight
        self.held_spooled = False  # ... and a copy of it heads the spool (spilling started)
        self.spool_skip = 0  # records at the spool's head already delivered (from held)
        self.retry_n: int | None = None  # retry exactly this many spool records (same batch)
        self.handled: set[int] = set()  # positions of the current batch already done
        self.attempt = 0
        self.kick = asyncio.Event()  # there may be work for the writer
        self.flush_needed = asyncio.Event()
        self.flush_lock = asyncio.Lock()
        # One thread per lane: spool appends, reads and commits run in submission order, so the
        # synchronous overflow write in publish() can never overtake a flush already started.
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mise-spool-{self.name}")
        self.writer_task: asyncio.Task[None] | None = None
        self.flusher_task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failures = 0
        self.dead_lettered = 0
        self.spooled = 0


class SinkHub:
    """Fan-out of published records to ``sinks`` (each ``Sink`` with a unique ``name``).

    - ``queue_max_records``: in-memory queue bound per sink (records).
    - ``batch_max_records``: most records per ``deliver`` call.
    - ``spool_dir``: root of the per-sink spools (``spool_dir/<sink>/``).
    - ``metrics``: updated in place when given (``records_total`` is counted here).
    - ``backoff_initial_s``, ``backoff_max_s``: retry backoff (full jitter), seconds.
    - ``spool_buffer_max_bytes``: spooled bytes kept in memory per sink before ``publish``
      writes them synchronously (see the module docstring for the trade-off).
    - ``spool_segment_max_bytes``, ``spool_fsync``: passed to each ``Spool``.
    - ``ready_timeout_s``: per-sink bound on ``ready()``.
    - ``write_ahead``: every record reaches every spool before any sink delivers it (the
      module docstring); ``False`` delivers from memory while a sink keeps up.

    Lifecycle: ``await start()``, ``publish(...)`` any number of times from the event loop's
    thread, ``await drain(deadline_s)`` on shutdown, ``await close()``. Raises ``ValueError``
    for duplicate or unsafe sink names.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        queue_max_records: int,
        batch_max_records: int,
        spool_dir: Path,
        metrics: Metrics | None = None,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        spool_buffer_max_bytes: int = 8 * 1024 * 1024,
        spool_segment_max_bytes: int = 64 * 1024 * 1024,
        spool_fsync: bool = True,
        ready_timeout_s: float = 2.0,
        write_ahead: bool = True,
    ) -> None:
        if queue_max_records < 1 or batch_max_records < 1:
            raise ValueError("queue_max_records and batch_max_records must be >= 1")
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate sink names: {names}")
        for name in names:
            if not SINK_NAME_RE.match(name):
                raise ValueError(f"unsafe sink name {name!r} (must match {SINK_NAME_RE.pattern})")
        self.spool_dir = Path(spool_dir)
        self.queue_max_records = queue_max_records
        self.batch_max_records = batch_max_records
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.spool_buffer_max_bytes = spool_buffer_max_bytes
        self.ready_timeout_s = ready_timeout_s
        self._metrics = metrics
        self._lanes = [
            _Lane(
                s,
                Spool(
                    self.spool_dir / s.name,
                    segment_max_bytes=spool_segment_max_bytes,
                    fsync=spool_fsync,
                ),
            )
            for s in sinks
        ]
        self._record_counters: dict[str, Counter] = {}
        self._started = False
        self.write_ahead = write_ahead
        # Write-ahead: published, not yet on any spool; flushed by one task for all lanes.
        self._wal: deque[Envelope] = deque()
        self._wal_bytes = 0
        self._wal_writing = 0
        self._wal_needed = asyncio.Event()
        self._wal_lock = asyncio.Lock()
        self._wal_task: asyncio.Task[None] | None = None
        self._draining = False
        self._drain_event = asyncio.Event()
        self._closed = False

    @property
    def sink_names(self) -> list[str]:
        return [lane.name for lane in self._lanes]

    # ---------------------------------------------------------------------------------------
    # lifecycle

    async def start(self) -> None:
        """Open every spool and sink, then start the writers. A spool left by a previous
        process is delivered before anything published from now on. Raises what a sink's
        ``open()`` raises (``SinkError``) or ``OSError`` when a spool directory is unusable."""
        if self._started:
            return
        self._started = True
        for lane in self._lanes:
            await self._io(lane, lane.spool.open)
            lane.spilling = not lane.spool.is_empty
            await lane.sink.open()
            self._bind_metrics(lane)
        if self.write_ahead:
            self._wal_task = asyncio.create_task(self._run_wal_flusher(), name="mise-sink-wal")
        for lane in self._lanes:
            lane.writer_task = asyncio.create_task(
                self._run_writer(lane), name=f"mise-sink-writer-{lane.name}"
            )
            lane.flusher_task = asyncio.create_task(
                self._run_flusher(lane), name=f"mise-sink-flusher-{lane.name}"
            )

    async def drain(self, deadline_s: float) -> dict[str, DrainReport]:
        """Deliver what is queued (and spooled) within ``deadline_s`` seconds, then persist
        whatever remains in memory to the spools (fsynced). A failing sink is not retried
        during a drain. Records published afterwards go straight to the spool. Returns a
        ``DrainReport`` per sink name."""
        self._draining = True
        self._drain_event.set()
        if self.write_ahead:
            await self._flush_wal()
        delivered_before = {lane.name: lane.delivered for lane in self._lanes}
        for lane in self._lanes:
            lane.kick.set()
        tasks = [
            lane.writer_task
            for lane in self._lanes
            if lane.writer_task is not None and not lane.writer_task.done()
        ]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(deadline_s, 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.write_ahead:
            await self._flush_wal()  # what was published while the writers drained
        reports: dict[str, DrainReport] = {}
        for lane in self._lanes:
            spooled = await self._persist(lane)
            reports[lane.name] = DrainReport(
                delivered=lane.delivered - delivered_before[lane.name],
                spooled=spooled,
                spool_bytes=lane.spool.pending_bytes,
                completed=lane.spool.is_empty,
            )
        log.info("sinks_drained", reports={k: asdict(v) for k, v in reports.items()})
        return reports

    async def close(self) -> None:
        """Persist anything left in memory (drains with a zero deadline if ``drain`` was not
        called), stop the tasks and close spools and sinks. Idempotent."""
        if self._closed:
            return
        if self._started:
            writers_running = any(
                lane.writer_task is not None and not lane.writer_task.done() for lane in self._lanes
            )
            if writers_running or not self._draining:
                await self.drain(0.0)
            else:
                for lane in self._lanes:
                    await self._persist(lane)
        self._closed = True
        if self._wal_task is not None:
            self._wal_task.cancel()
            await asyncio.gather(self._wal_task, return_exceptions=True)
        if self._wal:
            await self._flush_wal()
        for lane in self._lanes:
            if lane.flusher_task is not None:
                lane.flusher_task.cancel()
                await asyncio.gather(lane.flusher_task, return_exceptions=True)
            if self._started:
                await self._io(lane, lane.spool.close)
            lane.io.shutdown(wait=True)
            try:
                await lane.sink.close()
            except Exception:
                log.exception("sink_close_failed", sink=lane.name)

    # ---------------------------------------------------------------------------------------
    # publishing

    def publish(self, record: AnyRecord) -> None:
        """Hand ``record`` to every sink. Synchronous, never waits for a sink, never raises on
        sink trouble (only ``RuntimeError`` after ``close()``). Call from the loop's thread."""
        self.publish_envelope(Envelope.of(record))

    def publish_envelope(self, envelope: Envelope) -> None:
        """``publish`` for an already serialised record."""
        if self._closed:
            raise RuntimeError("SinkHub is closed")
        if self.write_ahead:
            self._wal.append(envelope)
            self._wal_bytes += len(envelope.json) + _ENVELOPE_OVERHEAD_BYTES
            if self._wal_bytes > self.spool_buffer_max_bytes:
                self._flush_wal_sync()
            else:
                self._wal_needed.set()
            return
        self._count_published((envelope,))
        for lane in self._lanes:
            if lane.spilling or self._draining or len(lane.queue) >= self.queue_max_records:
                self._spill(lane, (envelope,))
            else:
                lane.queue.append(envelope)
                lane.kick.set()

    def _count_published(self, envelopes: Sequence[Envelope]) -> None:
        if self._metrics is None:
            return
        for envelope in envelopes:
            counter = self._record_counters.get(envelope.type)
            if counter is None:
                counter = self._metrics.records_total.labels(envelope.type)
                self._record_counters[envelope.type] = counter
            counter.inc()

    # ---------------------------------------------------------------------------------------
    # write-ahead

    async def _run_wal_flusher(self) -> None:
        while True:
            await self._wal_needed.wait()
            self._wal_needed.clear()
            try:
                await self._flush_wal()
            except Exception:
                log.exception("sink_wal_flush_error")
                await asyncio.sleep(1.0)
                self._wal_needed.set()

    def _take_wal(self) -> list[Envelope]:
        items = list(self._wal)
        self._wal.clear()
        self._wal_bytes = 0
        return items

    async def _flush_wal(self) -> None:
        """Append the hub buffer to every lane's spool (fsynced), count the records as
        published, then wake the writers. A lane whose disk refuses keeps the records in its
        own spool buffer (retried by its flusher; in memory until then)."""
        async with self._wal_lock:
            items = self._take_wal()
            if not items:
                return
            self._wal_writing = len(items)
            try:
                direct = [
                    lane for lane in self._lanes if not (lane.buffer or lane.flushing_records)
                ]
                results = await asyncio.gather(
                    *(self._io(lane, lane.spool.append, items) for lane in direct),
                    return_exceptions=True,
                )
            finally:
                self._wal_writing = 0
            for lane, result in zip(direct, results, strict=True):
                if isinstance(result, BaseException):
                    log.error(
                        "spool_write_failed", sink=lane.name, error=str(result), records=len(items)
                    )
                    self._to_lane_buffer(lane, items)
                else:
                    lane.kick.set()
            for lane in self._lanes:
                if lane not in direct:  # older records wait in its buffer: keep the order
                    self._to_lane_buffer(lane, items)
            self._count_published(items)

    def _flush_wal_sync(self) -> None:
        """The hub buffer over ``spool_buffer_max_bytes``: write it from the loop's thread to
        every lane (no fsync: the next flush does it), after any write already running."""
        items = self._take_wal()
        for lane in self._lanes:
            if lane.buffer or lane.flushing_records:
                self._to_lane_buffer(lane, items)
                continue
            try:
                lane.io.submit(lane.spool.append, items, sync=False).result()
            except OSError as exc:
                log.error("spool_write_failed", sink=lane.name, error=str(exc), records=len(items))
                self._to_lane_buffer(lane, items)
            lane.flush_needed.set()
            lane.kick.set()
        self._count_published(items)

    def _to_lane_buffer(self, lane: _Lane, items: list[Envelope]) -> None:
        lane.buffer.extend(items)
        lane.buffer_bytes += sum(len(e.json) + _ENVELOPE_OVERHEAD_BYTES for e in items)
        lane.spilling = True
        lane.flush_needed.set()

    def _spill(self, lane: _Lane, envelopes: Sequence[Envelope]) -> None:
        """Divert ``envelopes`` to the lane's spool buffer. When the lane was not spilling yet,
        the batch in flight and the queue (all older) go first, so the spool is in order."""
        if not lane.spilling:
            lane.spilling = True
            older: list[Envelope] = []
            if lane.held is not None and not lane.held_spooled:
                older.extend(lane.held)
                lane.held_spooled = True
            older.extend(lane.queue)
            lane.queue.clear()
            envelopes = [*older, *envelopes]
        size = sum(len(e.json) + _ENVELOPE_OVERHEAD_BYTES for e in envelopes)
        lane.buffer.extend(envelopes)
        lane.buffer_bytes += size
        lane.spooled += len(envelopes)
        if self._metrics is not None:
            self._metrics.sink_spooled_total.labels(lane.name).inc(len(envelopes))
        if lane.buffer_bytes > self.spool_buffer_max_bytes:
            self._flush_sync(lane)
        else:
            lane.flush_needed.set()

    def _flush_sync(self, lane: _Lane) -> None:
        """Write the spool buffer from the loop's thread (memory cap reached). Waits for any
        flush already running on the lane's I/O thread, so order on disk is publish order."""
        items = list(lane.buffer)
        lane.buffer.clear()
        lane.buffer_bytes = 0
        try:
            # No fsync here: the flusher fsyncs it next, off the loop.
            lane.io.submit(lane.spool.append, items, sync=False).result()
        except OSError as exc:
            self._restore_buffer(lane, items)
            log.error("spool_write_failed", sink=lane.name, error=str(exc), records=len(items))
        lane.flush_needed.set()

    def _restore_buffer(self, lane: _Lane, items: list[Envelope]) -> None:
        lane.buffer.extendleft(reversed(items))
        lane.buffer_bytes += sum(len(e.json) + _ENVELOPE_OVERHEAD_BYTES for e in items)

    # ---------------------------------------------------------------------------------------
    # state

    def stats(self) -> dict[str, SinkStats]:
        """Per sink name, the current ``SinkStats``."""
        return {
            lane.name: SinkStats(
                name=lane.name,
                queue_depth=len(lane.queue),
                spool_bytes=lane.spool.pending_bytes + lane.buffer_bytes + self._wal_bytes,
                spool_buffered_records=len(lane.buffer) + len(self._wal) + self._wal_writing,
                delivered=lane.delivered,
                failures=lane.failures,
                dead_lettered=lane.dead_lettered,
                spooled=lane.spooled,
                failing=lane.failing,
                spilling=lane.spilling,
            )
            for lane in self._lanes
        }

    async def ready(self) -> dict[str, bool]:
        """Per sink name, the sink's own ``ready()`` (False on error or after
        ``ready_timeout_s``). Sinks are asked concurrently."""

        async def one(lane: _Lane) -> bool:
            try:
                return await asyncio.wait_for(lane.sink.ready(), self.ready_timeout_s)
            except Exception:
                return False

        results = await asyncio.gather(*(one(lane) for lane in self._lanes))
        return {lane.name: ok for lane, ok in zip(self._lanes, results, strict=True)}

    def _bind_metrics(self, lane: _Lane) -> None:
        if self._metrics is None:
            return
        # Gauges read at scrape time: publish() pays nothing for them.
        self._metrics.sink_queue_depth.labels(lane.name).set_function(lambda: len(lane.queue))
        self._metrics.sink_spool_bytes.labels(lane.name).set_function(
            lambda: lane.spool.pending_bytes + lane.buffer_bytes + self._wal_bytes
        )
        # Touch the counters so every sink shows up at 0 before its first event.
        self._metrics.sink_delivered_total.labels(lane.name)
        self._metrics.sink_dead_letter_total.labels(lane.name)
        self._metrics.sink_spooled_total.labels(lane.name)

    # ---------------------------------------------------------------------------------------
    # the writer

    async def _run_writer(self, lane: _Lane) -> None:
        while True:
            try:
                done = await self._writer_step(lane)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug or a disk error in the hub itself: keep the lane alive, try again later.
                log.exception("sink_writer_error", sink=lane.name)
                if self._draining:
                    return
                await self._sleep_unless_draining(self.backoff_max_s)
                continue
            if done:
                return

    async def _writer_step(self, lane: _Lane) -> bool:
        """Deliver one batch (or wait for work). True when the lane is finished (draining)."""
        batch, source = await self._next_batch(lane)
        if batch is None or source is None:
            return True
        try:
            await self._deliver(lane, batch)
        except SinkError as exc:
            self._count_failure(lane, exc)
            lane.failing = True
            if source is _Source.QUEUE:
                if not lane.held_spooled:
                    self._spill(lane, ())  # the batch and the queue behind it, in order
                lane.held = None
                lane.held_spooled = False
            # The retry reads exactly this batch back from the head of the spool.
            lane.retry_n = len(batch)
            log.warning(
                "sink_delivery_failed",
                sink=lane.name,
                records=len(batch),
                attempt=lane.attempt + 1,
                error=str(exc),
            )
            if self._draining:
                return True
            await self._backoff(lane, exc)
            return False
        if lane.failing:
            log.info("sink_recovered", sink=lane.name, after_attempts=lane.attempt)
        lane.failing = False
        lane.attempt = 0
        lane.handled.clear()
        if source is _Source.SPOOL:
            await self._io(lane, lane.spool.commit, len(batch))
            lane.retry_n = None
        else:
            if lane.held_spooled:
                lane.spool_skip += len(batch)
            lane.held = None
            lane.held_spooled = False
        return False

    async def _next_batch(self, lane: _Lane) -> tuple[list[Envelope] | None, _Source | None]:
        while True:
            if lane.queue:
                n = min(self.batch_max_records, len(lane.queue))
                batch = [lane.queue.popleft() for _ in range(n)]
                # Held while in flight: spilling or a drain that cancels the delivery spools it.
                lane.held = batch
                lane.held_spooled = False
                return batch, _Source.QUEUE
            if lane.buffer or lane.flushing_records:
                await self._flush(lane)
                if lane.buffer and not lane.flushing_records and lane.spool.is_empty:
                    # The disk refused the buffer; do not spin on it.
                    await self._sleep_unless_draining(self.backoff_max_s)
                    if self._draining:
                        return None, None
                continue
            if lane.spool_skip and not lane.spool.is_empty:
                skipped = await self._io(lane, lane.spool.peek, lane.spool_skip)
                await self._io(lane, lane.spool.commit, len(skipped))
                lane.spool_skip -= len(skipped)
                if not skipped:
                    lane.spool_skip = 0
                continue
            if not lane.spool.is_empty:
                batch = await self._io(
                    lane, lane.spool.peek, lane.retry_n or self.batch_max_records
                )
                if batch:
                    return batch, _Source.SPOOL
                continue  # only torn lines were left; peek stepped over them
            if self._wal or self._wal_writing:
                await self._flush_wal()  # published, on its way to the spools: wait for it
                continue
            # Nothing anywhere: new records may use the queue again.
            lane.spilling = False
            lane.spool_skip = 0
            if self._draining:
                return None, None
            lane.kick.clear()
            await lane.kick.wait()

    async def _deliver(self, lane: _Lane, batch: list[Envelope]) -> None:
        """Deliver ``batch``, bisecting around non-retryable failures and dead-lettering the
        records that fail alone. Raises a retryable ``SinkError``; positions already delivered
        or dead-lettered (``lane.handled``) are skipped when the same batch is retried."""
        parts: deque[list[int]] = deque([[i for i in range(len(batch)) if i not in lane.handled]])
        while parts:
            part = parts[0]
            if not part:
                parts.popleft()
                continue
            try:
                await lane.sink.deliver([batch[i] for i in part])
            except SinkError as exc:
                if exc.retryable:
                    raise
                self._count_failure(lane, exc)
                parts.popleft()
                if len(part) > 1:
                    mid = len(part) // 2
                    parts.appendleft(part[mid:])
                    parts.appendleft(part[:mid])
                else:
                    await self._dead_letter(lane, batch[part[0]], exc)
                    lane.handled.add(part[0])
                continue
            except Exception as exc:
                log.exception("sink_deliver_unexpected_error", sink=lane.name)
                raise DeliveryError(
                    f"{type(exc).__name__}: {exc}", retryable=True, reason="unexpected"
                ) from exc
            parts.popleft()
            lane.handled.update(part)
            lane.delivered += len(part)
            if self._metrics is not None:
                self._metrics.sink_delivered_total.labels(lane.name).inc(len(part))

    def _count_failure(self, lane: _Lane, exc: SinkError) -> None:
        lane.failures += 1
        if self._metrics is not None:
            if isinstance(exc, DeliveryError):
                reason = exc.reason
            else:
                reason = "error" if exc.retryable else "rejected"
            self._metrics.sink_delivery_failures_total.labels(lane.name, reason).inc()

    async def _backoff(self, lane: _Lane, exc: SinkError) -> None:
        cap_s = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(lane.attempt, 62)))
        delay_s = random.uniform(0.0, cap_s)
        hint_s = exc.retry_after_s if isinstance(exc, DeliveryError) else None
        if hint_s is not None:
            delay_s = max(delay_s, hint_s)
        lane.attempt += 1
        await self._sleep_unless_draining(delay_s)

    async def _sleep_unless_draining(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain_event.wait(), delay_s)

    async def _dead_letter(self, lane: _Lane, envelope: Envelope, exc: SinkError) -> None:
        meta: dict[str, Any] = {
            "failed_at": datetime.now(UTC).isoformat(),
            "sink": lane.name,
            "error": str(exc),
            "reason": exc.reason if isinstance(exc, DeliveryError) else None,
            "status_code": exc.status_code if isinstance(exc, DeliveryError) else None,
            "id": envelope.id,
            "type": envelope.type,
        }
        line = json.dumps(meta)[:-1] + ',"record":' + envelope.json + "}\n"
        await self._io(lane, _append_fsync, lane.spool.directory / DEAD_LETTER_FILE, line)
        lane.dead_lettered += 1
        if self._metrics is not None:
            self._metrics.sink_dead_letter_total.labels(lane.name).inc()
        log.error(
            "sink_record_dead_lettered",
            sink=lane.name,
            record_id=envelope.id,
            record_type=envelope.type,
            error=str(exc),
        )

    # ---------------------------------------------------------------------------------------
    # the flusher

    async def _run_flusher(self, lane: _Lane) -> None:
        while True:
            await lane.flush_needed.wait()
            lane.flush_needed.clear()
            if not await self._flush(lane):
                await asyncio.sleep(1.0)  # the disk refused; try again, keep the records
                lane.flush_needed.set()

    async def _flush(self, lane: _Lane) -> bool:
        """Write the spool buffer to disk (one append, one fsync). False on a disk error."""
        async with lane.flush_lock:
            if not lane.buffer:
                if lane.spool.dirty:
                    try:
                        await self._io(lane, lane.spool.sync)
                    except OSError as exc:
                        log.error("spool_sync_failed", sink=lane.name, error=str(exc))
                        return False
                return True
            items = list(lane.buffer)
            lane.buffer.clear()
            lane.buffer_bytes = 0
            lane.flushing_records = len(items)
            try:
                await self._io(lane, lane.spool.append, items)
            except OSError as exc:
                self._restore_buffer(lane, items)
                log.error("spool_write_failed", sink=lane.name, error=str(exc), records=len(items))
                return False
            finally:
                lane.flushing_records = 0
            lane.kick.set()
            return True

    async def _persist(self, lane: _Lane) -> int:
        """Move the batch in flight, the queue and the spool buffer to disk, in that order.
        (When the lane is spilling the first two are already in the buffer.)"""
        items: list[Envelope] = []
        if lane.held is not None and not lane.held_spooled:
            items.extend(e for i, e in enumerate(lane.held) if i not in lane.handled)
        lane.held = None
        lane.held_spooled = False
        lane.handled.clear()
        lane.retry_n = None
        if lane.queue:
            items.extend(lane.queue)
            lane.queue.clear()
        moved_from_memory = len(items)
        if moved_from_memory:
            lane.spooled += moved_from_memory
            if self._metrics is not None:
                self._metrics.sink_spooled_total.labels(lane.name).inc(moved_from_memory)
        async with lane.flush_lock:
            items.extend(lane.buffer)
            lane.buffer.clear()
            lane.buffer_bytes = 0
            if items:
                lane.spilling = True
                try:
                    await self._io(lane, lane.spool.append, items)
                except OSError as exc:
                    self._restore_buffer(lane, items)
                    log.error("spool_persist_failed", sink=lane.name, error=str(exc))
        return len(items)

    async def _io(self, lane: _Lane, fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking spool/file work on the lane's own I/O thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(lane.io, fn, *args)


def _append_fsync(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
