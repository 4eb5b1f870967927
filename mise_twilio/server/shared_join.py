"""The completed/summary join across replicas: ``SummaryJoin``'s shared state in Redis.

Behind a load balancer a call's media stream (replica A) and its status callbacks (replica B,
or several) reach different processes. Each replica writes the half it saw into one small hash
per call and reads the whole hash back in the same ``MULTI``; the core (``SummaryJoin``)
decides from that state who publishes what. The hash, ``<MISE_REDIS_STREAM>:join:<CallSid>``::

    stream:<StreamSid>   open | stopped   HSETNX at start, HSET at stop (so order never matters)
    summary              the CallSummary JSON of the last stream that stopped
    status:<CallStatus>  1                every status any replica received (released, or held
                                          for reordering: it still counts for stream.stopped)
    completed            the call.completed record JSON (as released, without summary)
    claimed              <replica>        HSETNX: the one replica that publishes call.completed

Every write refreshes a TTL (``MISE_LIFECYCLE__SHARED_JOIN_TTL_S``). Reads and writes are
bounded by ``op_timeout_s``; when Redis fails, the event goes through the in-process join
instead (``join_fallback`` log line, ``mise_join_fallback_total{op}``): a record is never held
back or dropped because Redis is down, at worst ``call.completed`` is published by two
replicas with the same id (consumers deduplicate on ``id``).

Only the edge talks to Redis; the decisions stay in ``mise_twilio.core.lifecycle``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from pydantic import ValidationError
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mise_twilio.core.lifecycle import JoinOutput, SharedCall, SummaryJoin
from mise_twilio.core.records import CallStatusEvent, CallSummary, StreamStarted, StreamStopped
from mise_twilio.core.status import StatusEvent
from mise_twilio.server.metrics import Metrics

__all__ = ["JoinStoreError", "RedisJoinStore", "SharedJoinEdge", "replica_name"]

log = structlog.get_logger("mise_twilio.server.shared_join")


class JoinStoreError(Exception):
    """The shared store could not be read or written (connection, timeout, bad content)."""


def replica_name() -> str:
    """``host:pid``: who claimed a ``call.completed`` (for people reading the hash)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class RedisJoinStore:
    """The per-call join hashes in Redis (redis-py asyncio). Every method raises
    ``JoinStoreError``; none retries (the caller falls back at once).

    - ``url``: ``redis://``, ``rediss://`` or ``unix://``.
    - ``key_prefix``: hash key prefix, e.g. ``mise:events:join:``.
    - ``ttl_s``: each write sets the hash to expire this long after it (seconds, >= 1).
    - ``op_timeout_s``: bound on one operation (connect, round trip), seconds.
    """

    def __init__(self, url: str, key_prefix: str, *, ttl_s: float, op_timeout_s: float = 1.0):
        if ttl_s < 1 or op_timeout_s <= 0:
            raise ValueError("ttl_s must be >= 1 and op_timeout_s > 0")
        self.url = url
        self.key_prefix = key_prefix
        self.ttl_s = int(ttl_s)
        self.op_timeout_s = op_timeout_s
        self._client: Redis | None = None

    def key(self, call_sid: str) -> str:
        return self.key_prefix + call_sid

    async def open(self) -> None:
        """Create the client; connections are made lazily (Redis may be down at start)."""
        if self._client is None:
            self._client = Redis.from_url(
                self.url,
                socket_connect_timeout=self.op_timeout_s,
                socket_timeout=self.op_timeout_s,
                retry=Retry(NoBackoff(), 0),
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def stream_started(self, call_sid: str, stream_sid: str) -> None:
        """Mark the stream open (unless its stop was written first)."""
        key = self.key(call_sid)
        await self._run(
            lambda p: p.hsetnx(key, f"stream:{stream_sid}", "open").expire(key, self.ttl_s)
        )

    async def status_received(self, event: CallStatusEvent) -> None:
        """Record a status this replica holds for reordering (it publishes it later)."""
        key = self.key(event.call_sid or "")
        field = f"status:{event.call_status}"
        await self._run(lambda p: p.hset(key, field, "1").expire(key, self.ttl_s))

    async def status_released(self, event: CallStatusEvent) -> SharedCall:
        """Record a released status (and ``call.completed`` itself); the state after it."""
        key = self.key(event.call_sid or "")
        mapping = {f"status:{event.call_status}": "1"}
        if event.type == "call.completed":
            mapping["completed"] = event.model_dump_json(by_alias=True)
        return self._parse(
            await self._run(
                lambda p: p.hset(key, mapping=mapping).expire(key, self.ttl_s).hgetall(key)
            )
        )

    async def stream_stopped(self, record: StreamStopped) -> SharedCall:
        """Record the stream's stop and summary; the state after it."""
        key = self.key(record.call_sid or "")
        mapping = {
            f"stream:{record.stream_sid}": "stopped",
            "summary": record.summary.model_dump_json(),
        }
        return self._parse(
            await self._run(
                lambda p: p.hset(key, mapping=mapping).expire(key, self.ttl_s).hgetall(key)
            )
        )

    async def claim_completed(self, call_sid: str, owner: str) -> tuple[bool, SharedCall]:
        """Claim publishing ``call.completed``: ``(won, state)``. Redis runs ``HSETNX`` once per
        field, so of two replicas claiming at the same instant exactly one wins."""
        key = self.key(call_sid)
        results = await self._run_all(
            lambda p: p.hsetnx(key, "claimed", owner).expire(key, self.ttl_s).hgetall(key)
        )
        return bool(results[0]), self._parse(results[-1])

    async def _run(self, build: Callable[[Any], Any]) -> Any:
        return (await self._run_all(build))[-1]

    async def _run_all(self, build: Callable[[Any], Any]) -> list[Any]:
        if self._client is None:
            raise JoinStoreError("the join store is not open")
        pipe = self._client.pipeline(transaction=True)
        build(pipe)
        try:
            async with asyncio.timeout(self.op_timeout_s * 2):
                results: list[Any] = await pipe.execute()
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            raise JoinStoreError(f"{type(exc).__name__}: {exc}") from exc
        return results

    @staticmethod
    def _parse(fields: dict[bytes, bytes]) -> SharedCall:
        try:
            summary = fields.get(b"summary")
            completed = fields.get(b"completed")
            return SharedCall(
                summary=CallSummary.model_validate_json(summary) if summary else None,
                call_statuses=frozenset(k[7:].decode() for k in fields if k.startswith(b"status:")),
                open_streams=sum(
                    1 for k, v in fields.items() if k.startswith(b"stream:") and v == b"open"
                ),
                completed=CallStatusEvent.model_validate_json(completed) if completed else None,
                completed_claimed=b"claimed" in fields,
            )
        except (ValidationError, UnicodeDecodeError) as exc:
            raise JoinStoreError(f"unreadable join state: {exc}") from exc


class SharedJoinEdge:
    """Pumps ``SummaryJoin`` through ``RedisJoinStore``: the Redis round trips run as tasks,
    so the read loop and the webhook never wait for Redis.

    - ``join``: the process's ``SummaryJoin``.
    - ``store``: an opened ``RedisJoinStore``.
    - ``apply``: publishes a ``JoinOutput``'s records and ends its ``close_streams`` (the
      ``Bridge``); its ``claims`` come back here through ``claim``.
    - ``stream_open``: whether a stream of a call is open in this process.
    - ``clock``: monotonic seconds (the join's ``now_s``).

    Status events other than ``call.completed`` are published at once, in the order
    ``CallLifecycle`` released them; their write to Redis follows in the background.
    ``stream.stopped`` and ``call.completed`` are published after their round trip (one or
    two, well under a millisecond on a LAN; at most ``op_timeout_s`` each when Redis hangs).
    """

    def __init__(
        self,
        join: SummaryJoin,
        store: RedisJoinStore,
        *,
        apply: Callable[[JoinOutput], None],
        stream_open: Callable[[str], bool],
        metrics: Metrics,
        clock: Callable[[], float],
        owner: str | None = None,
    ) -> None:
        self.join = join
        self.store = store
        self._apply = apply
        self._stream_open = stream_open
        self._metrics = metrics
        self._clock = clock
        self.owner = owner or replica_name()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- events from the bridge -------------------------------------------------------------

    def stream_started(self, record: StreamStarted) -> None:
        if record.call_sid and record.stream_sid:
            call_sid, stream_sid = record.call_sid, record.stream_sid
            self._spawn(
                self._write(
                    "stream_started", call_sid, self.store.stream_started(call_sid, stream_sid)
                )
            )

    def status(self, event: StatusEvent) -> None:
        call_sid = event.call_sid
        if not isinstance(event, CallStatusEvent) or not call_sid:
            self._apply(self.join.on_status(event, stream_open=False, now_s=self._clock()))
            return
        if event.type != "call.completed":
            # Published now (the join passes it through); Redis learns the status behind it.
            self._apply(self.join.on_status(event, stream_open=False, now_s=self._clock()))
            self._spawn(self._write("status", call_sid, self.store.status_released(event)))
            return
        self._spawn(self._completed(event, call_sid))

    def status_held(self, event: StatusEvent) -> None:
        """A status callback the lifecycle holds for reordering: other replicas learn its
        status now, so a stream that stops there before it is released still carries it."""
        if isinstance(event, CallStatusEvent) and event.call_sid:
            call_sid = event.call_sid
            self._spawn(self._write("status", call_sid, self.store.status_received(event)))

    def stream_stopped(self, record: StreamStopped, last_call_status: str | None) -> None:
        if not record.call_sid:
            self._apply(self.join.on_stream_stopped(record, last_call_status))
            return
        self._spawn(self._stopped(record, record.call_sid, last_call_status))

    def claim(self, call_sids: list[str]) -> None:
        for call_sid in call_sids:
            self._spawn(self._claim(call_sid))

    async def wait(self, timeout_s: float) -> bool:
        """Wait for every round trip started so far (and those they start); ``False`` on
        timeout. Each is bounded by the store's timeout, so this ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    # -- round trips --------------------------------------------------------------------------

    async def _completed(self, event: CallStatusEvent, call_sid: str) -> None:
        stream_open = self._stream_open(call_sid)
        try:
            shared: SharedCall | None = await self.store.status_released(event)
        except JoinStoreError as exc:
            self._fallback("status", call_sid, exc)
            shared = None
        self._apply(
            self.join.on_status(event, stream_open=stream_open, now_s=self._clock(), shared=shared)
        )

    async def _stopped(self, record: StreamStopped, call_sid: str, last: str | None) -> None:
        try:
            shared: SharedCall | None = await self.store.stream_stopped(record)
        except JoinStoreError as exc:
            self._fallback("stream_stopped", call_sid, exc)
            shared = None
        self._apply(self.join.on_stream_stopped(record, last, shared))

    async def _claim(self, call_sid: str) -> None:
        won: bool | None
        try:
            won, shared = await self.store.claim_completed(call_sid, self.owner)
        except JoinStoreError as exc:
            self._fallback("claim", call_sid, exc)
            won, shared = None, None
        self._apply(self.join.on_claim(call_sid, won, shared))

    async def _write(self, op: str, call_sid: str, write: Coroutine[Any, Any, Any]) -> None:
        try:
            await write
        except JoinStoreError as exc:
            self._fallback(op, call_sid, exc)

    def _fallback(self, op: str, call_sid: str, exc: Exception) -> None:
        self._metrics.join_fallback_total.labels(op=op).inc()
        log.warning(
            "join_fallback",
            op=op,
            call_sid=call_sid,
            error=str(exc),
            detail="Redis unavailable: this event joins in-process only",
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:  # a bug here must not take a record with it silently
            log.exception("shared_join_failed")
