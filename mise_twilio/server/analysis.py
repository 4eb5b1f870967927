"""Proxy mode's analysis, in a child process: the relay's event loop only relays.

A proxied frame's trip through the relay must not wait for analysis. The analysis of a call
(parsing, the playback model, VAD, turns: tens of µs per frame; a turn's features: milliseconds
at its end) cannot share the loop's thread without delaying the frames queued behind it, nor
another thread of the process (the GIL hands the loop back only every switch interval:
measured, it made the relay's p99 worse, not better). So every proxied call's ``CallSession``
lives in one child process per server process, ``python -m mise_twilio.server.analysis``,
fed over a socketpair:

- the parent queues each call's inputs as operations (a frame with its ``received_at_s``, the
  bot's messages, ``eof``, ``close``, a diagnostic to report) and writes what one loop
  iteration queued as one batch: one pickle, one ``send``;
- the child applies them in order to the call's ``CallSession`` and answers, per call, what
  changed: records, turn audio, the session's state (sids, rejection, close expected, close
  code), and on ``sync`` the message counts and per-frame processing times;
- ``RemoteSession`` is the parent's view of one such session: the ``CallSession`` methods the
  edge uses, state as last reported, and ``synced()`` to wait until the child has applied
  everything sent so far. Records are the core's own, so they are byte-identical to an
  in-process session's.

Wire format, both ways: a 4-byte big-endian length, then a pickle of a list (operations
parent → child, ``_Output`` tuples child → parent). Both ends are this package's code, from
the same installation; nothing else can reach the socketpair.

Capacity: the child is one core. Analysis costs about 50 µs per relayed frame (both tracks),
so a few hundred proxied calls per server process (docs/scaling.md). It runs at nice
``proxy_analysis_nice`` (19 by default), so that where it shares a core with the relay, a frame
that wakes the relay does not wait for a turn's features to finish their time slice.

Failures: when the child is behind by more than ``backlog_max_bytes`` of unsent operations, new
frames are relayed but not analysed, and each call that lost some gets an ``analysis_backlog``
diagnostic (with the count) once the backlog is back under half; the relay never waits for
the analysis. When the child dies, each open proxied call gets an ``analysis_lost``
diagnostic (written by the parent: the session died with the child) and is ended (Twilio's
side closed 1011, as for any failure of the proxy); the next call starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import structlog

from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import AnyRecord, Diagnostic, StopReason

__all__ = ["AnalysisProcess", "RemoteSession"]

_HEADER = struct.Struct("!I")
_READ_CHUNK_BYTES = 1 << 20
START_TIMEOUT_S = 60.0
"""``start()`` waits this long for the child's hello (its imports done) before giving up."""
STOP_TIMEOUT_S = 5.0
"""``stop()`` waits this long for the child to exit after its input is closed, then kills it."""

log = structlog.get_logger("mise_twilio.server")


class _State(NamedTuple):
    """What the parent mirrors of a ``CallSession``."""

    stream_sid: str | None = None
    call_sid: str | None = None
    account_sid: str | None = None
    rejection: str | None = None
    close_expected: bool = False
    close_code: int = 1000


class _Output(NamedTuple):
    """The child's answer for one call after one batch."""

    key: int
    applied: int  # operations applied for this call so far
    events: list[AnyRecord]
    turn_audio: list[tuple[str, bytes]]
    state: _State
    counts: Counter[str] | None  # message counts since the last sync (on ``sync`` only)
    processing_s: list[float] | None  # per-frame ``receive_text`` times (on ``sync`` only)
    error: str | None  # a traceback: the session raised (a bug), the call should end
    final: bool  # the session was dropped: nothing more comes for this key


# ---------------------------------------------------------------------------------------------
# the parent


class RemoteSession:
    """The parent's face of a ``CallSession`` in the analysis process: the methods the edge
    calls on a session (``receive_text``, ``receive_playback``, ``receive_eof``, ``report``,
    ``close``, ``take_events``, ``take_turn_audio``, ``take_message_counts``, ``close_expected``,
    ``close_code``), each an operation sent in order; state (``stream_sid``, ``call_sid``,
    ``rejection``, ``close_expected()``) as the child last reported it, except that ``close()``
    counts at once. ``on_output`` is called (on the loop) after each answer from the child."""

    def __init__(self, process: AnalysisProcess, key: int) -> None:
        self._process = process
        self.key = key
        self.on_output: Callable[[], None] = _nothing
        self.state = _State()
        self.error: str | None = None
        self._processing_s: list[float] = []
        self._sent = 0
        self._applied = 0
        self._closing = False
        self._events: list[AnyRecord] = []
        self._turn_audio: list[tuple[str, bytes]] = []
        self._counts: Counter[str] = Counter()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._skipped = 0
        self.lost = False

    # -- what the edge calls --------------------------------------------------------------

    @property
    def stream_sid(self) -> str | None:
        return self.state.stream_sid

    @property
    def call_sid(self) -> str | None:
        return self.state.call_sid

    @property
    def rejection(self) -> str | None:
        return self.state.rejection

    def close_expected(self) -> bool:
        return self._closing or self.lost or self.state.close_expected

    def close_code(self) -> int:
        return 1011 if self.lost else self.state.close_code

    def receive_text(self, text: str | bytes, *, received_at_s: float | None = None) -> None:
        """A frame from Twilio (see ``_send_frame``)."""
        self._send_frame(("text", self.key, text, received_at_s))

    def receive_playback(self, frame: str | bytes) -> None:
        """A message from the bot toward Twilio (see ``_send_frame``)."""
        self._send_frame(("play", self.key, frame))

    def receive_eof(self, *, at_s: float | None = None) -> None:
        self._report_skipped(force=True)
        self._send(("eof", self.key, at_s))

    def report(self, code: str, message: str) -> None:
        self._send(("report", self.key, code, message))

    def close(self, reason: StopReason, *, at_s: float | None = None) -> None:
        self._closing = True
        self._report_skipped(force=True)
        self._send(("close", self.key, reason, at_s))

    def take_events(self) -> list[AnyRecord]:
        events, self._events = self._events, []
        return events

    def take_turn_audio(self) -> list[tuple[str, bytes]]:
        out, self._turn_audio = self._turn_audio, []
        return out

    def take_message_counts(self) -> Counter[str]:
        counts, self._counts = self._counts, Counter()
        return counts

    def take_processing_s(self) -> list[float]:
        """Seconds per ``receive_text`` in the child, as of the last sync."""
        out, self._processing_s = self._processing_s, []
        return out

    def request_sync(self) -> None:
        """Ask for the counts and timings (and the state) without waiting for them."""
        self._send(("sync", self.key))

    async def synced(self, timeout_s: float) -> bool:
        """Wait until the child has applied every operation sent so far (and its answer is
        in: records, counts, state). ``False`` on timeout or when the child is gone."""
        if self.lost:
            return False
        self.request_sync()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((self._sent, future))
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return False
        return not self.lost

    def release(self) -> None:
        """The call is over: the child forgets the session once it has applied what was sent
        (its last records still come back, through ``on_output``), and then so does the
        parent."""
        if self.lost:
            self._process.forget(self.key)
        else:
            self._send(("drop", self.key))

    # -- from the process -----------------------------------------------------------------

    def _send(self, op: tuple[Any, ...]) -> None:
        if self.lost:
            return
        self._sent += 1
        self._process.send(op)

    def _send_frame(self, op: tuple[Any, ...]) -> None:
        """A relayed frame for the child; not analysed, only counted for ``analysis_backlog``,
        while the child is too far behind."""
        if self._process.behind():
            self._skipped += 1
            return
        self._report_skipped()
        self._send(op)

    def _report_skipped(self, *, force: bool = False) -> None:
        if self._skipped and (force or not self._process.behind()):
            skipped, self._skipped = self._skipped, 0
            self._send(
                (
                    "report",
                    self.key,
                    "analysis_backlog",
                    f"{skipped} frames were relayed but not analysed: the analysis process "
                    "fell behind (its turns, playback and summary miss them)",
                )
            )

    def apply(self, out: _Output) -> None:
        if out.final:
            self._process.forget(self.key)
        self._applied = out.applied
        self._events.extend(out.events)
        self._turn_audio.extend(out.turn_audio)
        self.state = out.state
        if out.counts:
            self._counts.update(out.counts)
        if out.processing_s:
            self._processing_s.extend(out.processing_s)
        if out.error is not None and self.error is None:
            self.error = out.error
        self._wake()
        self.on_output()

    def die(self, why: str) -> None:
        """The child exited: what it had of this call is gone. A diagnostic says so."""
        if self.lost:
            return
        self.lost = True
        state = self.state
        self._events.append(
            Diagnostic(
                id=f"{state.stream_sid or f'unstarted-{self.key}'}:diag:analysis_lost",
                call_sid=state.call_sid,
                stream_sid=state.stream_sid,
                account_sid=state.account_sid,
                code="analysis_lost",
                message=f"the analysis process exited ({why}): this call's turns and summary "
                "since its last records are lost; the relay went on until the call was ended",
            )
        )
        self._wake()
        self.on_output()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for need, future in waiters:
            if self.lost or self._applied >= need:
                if not future.done():
                    future.set_result(None)
            else:
                self._waiters.append((need, future))


def _nothing() -> None:
    return None


class _Wire(asyncio.Protocol):
    """The parent's end of the socketpair: frames in, decoded, to ``AnalysisProcess``."""

    def __init__(self, process: AnalysisProcess) -> None:
        self._process = process
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            (length,) = _HEADER.unpack_from(buffer, offset)
            if size - offset - 4 < length:
                break
            payload = bytes(buffer[offset + 4 : offset + 4 + length])
            offset += 4 + length
            self._process.received(pickle.loads(payload))
        if offset:
            del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._process.child_gone(exc)


class AnalysisProcess:
    """The analysis child of one server process. ``start()`` (idempotent, and again after the
    child died) before ``open()``; ``stop()`` at shutdown, after the sessions were synced.

    ``backlog_max_bytes``: operations written but not yet taken by the child beyond which
    frames are no longer analysed (see the module docstring). ``nice``: the child's nice value
    (0-19; it never runs at a higher priority than this process)."""

    def __init__(self, *, backlog_max_bytes: int, nice: int = 0) -> None:
        self.backlog_max_bytes = backlog_max_bytes
        self.nice = nice
        self._sessions: dict[int, RemoteSession] = {}
        self._keys = itertools.count(1)
        self._ops: list[tuple[Any, ...]] = []
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Lock | None = None
        self._stopping = False
        self._behind = False
        self._ready: asyncio.Future[None] | None = None

    @property
    def running(self) -> bool:
        return self._transport is not None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None and self.running else None

    async def start(self) -> None:
        """Start the child unless it runs. Raises ``OSError`` when it cannot be started."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            ours, theirs = socket.socketpair()
            try:
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "mise_twilio.server.analysis",
                    str(theirs.fileno()),
                    str(self.nice),
                    pass_fds=(theirs.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self._ready = loop.create_future()
            transport, _ = await loop.create_unix_connection(lambda: _Wire(self), sock=ours)
            self._child = child
            self._transport = transport
            self._stopping = False
            # The child says hello once its imports are done: a call admitted before that
            # would wait for them at its ``start``.
            try:
                await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
            except TimeoutError:
                await self.stop()
                raise OSError(
                    f"the analysis process sent no hello in {START_TIMEOUT_S} s"
                ) from None
            if self._transport is None:
                raise OSError("the analysis process exited as it started")
            log.info("analysis_process_started", pid=child.pid)

    def open(self, params: SessionParams) -> RemoteSession:
        """A new session in the child. Raises ``RuntimeError`` unless ``start()`` ran."""
        if self._transport is None:
            raise RuntimeError("AnalysisProcess.open() before start()")
        key = next(self._keys)
        session = RemoteSession(self, key)
        self._sessions[key] = session
        self.send(("open", key, params))
        return session

    def send(self, op: tuple[Any, ...]) -> None:
        """Queue one operation; what one loop iteration queued goes out as one batch."""
        self._ops.append(op)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def behind(self) -> bool:
        """The child is more than ``backlog_max_bytes`` behind (until it is back under half)."""
        transport = self._transport
        if transport is None:
            return False
        queued = transport.get_write_buffer_size()
        if self._behind:
            self._behind = queued > self.backlog_max_bytes // 2
        else:
            self._behind = queued > self.backlog_max_bytes
        return self._behind

    def forget(self, key: int) -> None:
        self._sessions.pop(key, None)

    async def sync_all(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every open session's operations are applied."""
        sessions = list(self._sessions.values())
        if sessions:
            await asyncio.gather(*(s.synced(timeout_s) for s in sessions))

    async def stop(self) -> None:
        """Close the child's input and wait for it to exit (killed after ``STOP_TIMEOUT_S``)."""
        self._flush()
        self._stopping = True
        transport, child = self._transport, self._child
        if transport is not None:
            transport.close()
        if child is None:
            return
        try:
            await asyncio.wait_for(child.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()

    # -- the wire -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        ops, self._ops = self._ops, []
        transport = self._transport
        if not ops or transport is None:
            return
        payload = pickle.dumps(ops, protocol=pickle.HIGHEST_PROTOCOL)
        transport.write(_HEADER.pack(len(payload)) + payload)

    def received(self, outputs: list[_Output]) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)  # the hello (an empty list) or a first answer
        for out in outputs:
            session = self._sessions.get(out.key)
            if session is not None:
                session.apply(out)

    def child_gone(self, exc: Exception | None) -> None:
        """The socketpair closed: at ``stop()``, or the child died."""
        self._transport = None
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)
        self._ops.clear()
        if self._stopping:
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "its socket closed"
        child = self._child
        log.error(
            "analysis_process_died",
            pid=child.pid if child else None,
            open_calls=len(self._sessions),
            error=why,
        )
        for session in list(self._sessions.values()):
            session.die(why)


# ---------------------------------------------------------------------------------------------
# the child


def child_main(fd: int, nice: int = 0) -> None:
    """Apply batches from the parent until its end of the socket closes. ``nice``: the nice
    value to run at (raised to it, never lowered below the parent's)."""
    # The parent decides when the analysis ends: Ctrl-C or SIGTERM to the process group must
    # not kill the child before the parent has synced and published every call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _lower_priority(nice)
    gc.collect()
    gc.freeze()
    sock = socket.socket(fileno=fd)
    reader = sock.makefile("rb", buffering=_READ_CHUNK_BYTES)
    worker = _Worker()
    hello = pickle.dumps([], protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(hello)) + hello)
    while True:
        header = reader.read(4)
        if len(header) < 4:
            return
        (length,) = _HEADER.unpack(header)
        payload = reader.read(length)
        if len(payload) < length:
            return
        outputs = worker.apply(pickle.loads(payload))
        if outputs:
            data = pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)
            sock.sendall(_HEADER.pack(len(data)) + data)


def _lower_priority(nice: int) -> None:
    # Where the relay and its analysis share a core, a frame that wakes the relay while the
    # analysis runs a turn's features would wait out the scheduler's wake-up granularity
    # (milliseconds) at equal priority; at nice 19 it preempts the analysis at once, and the
    # analysis still has every cycle the relay leaves idle. Measured with bench/relay_latency.py
    # --pin: p99 added at 100 calls +3.2 / +4.4 ms at nice 0, -0.4 / +0.8 ms at nice 19.
    if nice <= 0 or not hasattr(os, "setpriority"):  # POSIX only
        return
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, max(current, nice)))


class _Worker:
    """The child's sessions and the bookkeeping of what to answer."""

    def __init__(self) -> None:
        self.sessions: dict[int, CallSession] = {}
        self.applied: Counter[int] = Counter()
        self.states: dict[int, _State] = {}
        self.processing_s: defaultdict[int, list[float]] = defaultdict(list)

    def apply(self, ops: list[tuple[Any, ...]]) -> list[_Output]:
        touched: dict[int, bool] = {}  # key -> a sync was asked for
        errors: dict[int, str] = {}
        dropped: dict[int, CallSession] = {}
        sessions, applied = self.sessions, self.applied
        clock = time.perf_counter
        for op in ops:
            kind, key = op[0], op[1]
            if kind == "open":
                sessions[key] = CallSession(op[2])
                continue
            session = sessions.get(key)
            if session is None:
                continue
            applied[key] += 1
            if kind == "drop":
                dropped[key] = sessions.pop(key)
                touched[key] = True
                continue
            touched[key] = touched.get(key, False) or kind == "sync"
            if key in errors:
                continue
            try:
                if kind == "text":
                    t0 = clock()
                    session.receive_text(op[2], received_at_s=op[3])
                    self.processing_s[key].append(clock() - t0)
                elif kind == "play":
                    session.receive_playback(op[2])
                elif kind == "eof":
                    session.receive_eof(at_s=op[2])
                elif kind == "close":
                    session.close(op[2], at_s=op[3])
                elif kind == "report":
                    session.report(op[2], op[3])
            except Exception:
                errors[key] = traceback.format_exc()
        outputs = []
        for key, sync in touched.items():
            final = key in dropped
            session = dropped[key] if final else sessions[key]
            events: list[AnyRecord] = []
            turn_audio: list[tuple[str, bytes]] = []
            if key not in errors:
                try:
                    events = session.take_events()
                    turn_audio = session.take_turn_audio()
                except Exception:
                    errors[key] = traceback.format_exc()
            state = _State(
                session.stream_sid,
                session.call_sid,
                session.account_sid,
                session.rejection,
                session.close_expected(),
                session.close_code(),
            )
            error = errors.get(key)
            if not (sync or events or turn_audio or error) and state == self.states.get(key):
                continue
            self.states[key] = state
            counts = processing = None
            if sync:
                counts = session.take_message_counts()
                processing = self.processing_s.pop(key, None)
            outputs.append(
                _Output(
                    key, applied[key], events, turn_audio, state, counts, processing, error, final
                )
            )
            if final:
                del applied[key], self.states[key]
                self.processing_s.pop(key, None)
        return outputs


if __name__ == "__main__":
    # Through the package's own module, so what the child pickles names
    # ``mise_twilio.server.analysis`` (as the parent knows it), not ``__main__``.
    from mise_twilio.server.analysis import child_main

    child_main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
