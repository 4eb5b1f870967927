"""Proxy mode: relay a Twilio Media Stream to the team's own bot, and hear the agent as played.

``WS /v1/stream/twilio/proxy/{name}``: Twilio connects here (``<Connect><Stream>``), the relay
opens the WebSocket of the bot configured as ``name`` (``MISE_UPSTREAMS``; never a URL from the
request) and copies every message both ways, unchanged and in order: text as text, binary as
binary, Twilio's ``start`` with its ``customParameters`` as sent (``api_key`` included: the bot
sees what it would see from Twilio; records never carry it). The bot's messages feed the
session's playback model (``CallSession.receive_playback``), which rebuilds the agent's track.

Relay first, analyse after. A reader queues each frame for the other side's writer and hands
the session's work on it to the ``Analyst``, one task per event loop that runs every proxied
session's per-frame work (parsing, the playback model, VAD, turns) in arrival order, in slices
of at most ``ANALYSIS_SLICE_MAX_S`` with the loop's socket polling between them, so a frame
waiting to be relayed waits for at most one slice; a turn's features (milliseconds of numpy)
are measured in such a slice too, as the core measures every stream's. Until
Twilio's ``start`` is admitted the caller's side is judged first: the session checks ``start``
(the api_key) before the bot may see it.

Authentication is the stream endpoint's: ``X-Twilio-Signature`` on the upgrade (against
``MISE_PUBLIC_URL`` + this path), ``customParameters.api_key`` against ``MISE_API_KEY``. An
unknown ``name`` is refused at the handshake (404) once the signature holds, so names cannot
be probed. The bot's WebSocket is opened as soon as the Twilio side is authenticated: at
accept when the signature was checked (or nothing is configured), at ``start`` when the
api_key is the only check, so an unauthenticated client never makes us dial the bot.

Failures end the call on both sides and leave its records final:

- the bot cannot be reached: a log line, a ``diagnostic`` (``upstream_unreachable``), Twilio's
  side closed (1011: Twilio then runs the TwiML after ``<Connect>``, a fallback);
- the bot closes (normally: the conversation is over) or drops (``upstream_closed``
  diagnostic): Twilio's side closed, the session closed (``upstream_closed``), open turns
  final;
- Twilio drops: the session ends as ``eof``, the bot's socket is closed after it was sent what
  Twilio had sent;
- one side does not keep up: frames wait for it in a buffer bounded by
  ``MISE_PROXY_BACKLOG_BYTES``; past that the call ends (``backlog``). The other side is never
  blocked by it.

A bad frame from either side is relayed and becomes a diagnostic; nothing one call does reaches
another call's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import structlog
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from mise_twilio import __version__
from mise_twilio.core.call import CallSession
from mise_twilio.core.records import (
    StopReason,
    StreamStarted,
    StreamStopped,
)

if TYPE_CHECKING:
    from mise_twilio.server.app import Bridge

__all__ = ["PROXY_PATH", "UPSTREAM_MAX_MESSAGE_BYTES", "proxy_routes"]

PROXY_PATH = "/v1/stream/twilio/proxy"
UPSTREAM_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest message accepted from a bot (a bot may send a whole utterance in one ``media``:
4 MiB of base64 is about six minutes of audio)."""
START_GRACE_S = 1.0
"""When the bot cannot be reached before Twilio's ``start`` has come, wait this long for it, so
the diagnostic names the call (Twilio sends ``start`` right after the upgrade)."""
DRAIN_S = 2.0
"""At the end, frames still queued toward a side get this long to go out."""
ANALYSIS_SLICE_MAX_S = 0.001
"""The analysis works at most this long at a time before the loop's I/O gets its turn."""

log = structlog.get_logger("mise_twilio.server")


def proxy_routes(bridge: Bridge) -> list[WebSocketRoute]:
    """The proxy endpoint's routes (with and without a trailing ``/``)."""

    async def endpoint(ws: WebSocket) -> None:
        await serve_proxy(bridge, ws)

    return [
        WebSocketRoute(PROXY_PATH + "/{name}", endpoint),
        WebSocketRoute(PROXY_PATH + "/{name}/", endpoint),
    ]


async def serve_proxy(bridge: Bridge, ws: WebSocket) -> None:
    """Admit one proxied Media Stream and relay it until either side ends it."""
    if await bridge.refuse_upgrade(ws):  # shutting down, or the signature does not match
        return
    name = str(ws.path_params.get("name", ""))
    upstream = bridge.settings.upstream(name)
    if upstream is None:
        log.warning("unknown_upstream", upstream=name, path=ws.url.path)
        try:
            await ws.send_denial_response(PlainTextResponse("unknown upstream", status_code=404))
        except RuntimeError:  # a server without the denial-response extension: 403
            await ws.close(code=1008)
        return
    url, headers = upstream
    await ws.accept()
    signed = bridge.signature is not None
    dial_at_start = not signed and bridge.params.expected_api_key is not None
    await ProxiedCall(bridge, ws, name, url, headers, dial_at_start=dial_at_start).run()


class _Pump:
    """One direction of the relay: frames queued by a reader, written in order by ``run()``.

    ``put`` never waits: it refuses a frame (returns ``False``) when the frames queued and not
    yet written would exceed ``max_bytes`` (one frame is always taken, whatever its size).
    ``observe`` gets each frame's time from ``put`` to written, seconds."""

    def __init__(
        self,
        send: Callable[[str | bytes], Awaitable[None]],
        max_bytes: int,
        observe: Callable[[float], None],
    ) -> None:
        self._send = send
        self._max = max_bytes
        self._observe = observe
        # A deque and one future, not an asyncio.Queue: a frame costs an append, and the
        # writer is woken only when it was waiting.
        self._frames: deque[tuple[str | bytes, float] | None] = deque()
        self._waiting: asyncio.Future[None] | None = None
        self.queued_bytes = 0

    def put(self, frame: str | bytes) -> bool:
        size = len(frame)
        if self.queued_bytes and self.queued_bytes + size > self._max:
            return False
        self.queued_bytes += size
        self._frames.append((frame, time.perf_counter()))
        self._wake()
        return True

    def close(self) -> None:
        """``run()`` returns once what is queued now is written."""
        self._frames.append(None)
        self._wake()

    def _wake(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def run(self) -> None:
        """Write frames until ``close()``; a failed write ends it (the reader of that side
        sees the connection go)."""
        frames = self._frames
        while True:
            if not frames:
                self._waiting = asyncio.get_running_loop().create_future()
                await self._waiting
                continue
            item = frames.popleft()
            if item is None:
                return
            frame, queued_at = item
            try:
                await self._send(frame)
            finally:
                self.queued_bytes -= len(frame)
            self._observe(time.perf_counter() - queued_at)


class Analyst:
    """The sessions' work on one event loop, off the relay's path: jobs run in submission
    order, in slices with the loop's I/O between them. A slice takes the jobs that were waiting
    when it began (so the analysis keeps pace with the relay: each loop iteration analyses what
    the one before relayed), for at most ``ANALYSIS_SLICE_MAX_S``; the rest waits one iteration.
    ``Analyst.for_loop()`` starts the running loop's on first use."""

    _by_loop: ClassVar[dict[int, Analyst]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: deque[tuple[Callable[[], None], float]] = deque()
        self._after: dict[int, Callable[[], None]] = {}
        self._idle: asyncio.Future[None] | None = None
        self._task = loop.create_task(self._run())

    @classmethod
    def for_loop(cls) -> Analyst:
        loop = asyncio.get_running_loop()
        for key, other in list(cls._by_loop.items()):
            if other.loop.is_closed():  # a closed loop's (tests run one loop each)
                del cls._by_loop[key]
        analyst = cls._by_loop.get(id(loop))
        if analyst is None or analyst.loop is not loop:
            analyst = cls._by_loop[id(loop)] = cls(loop)
        return analyst

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def after_slice(self, key: object, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the current slice ends, once per ``key`` (a call publishes
        once per slice, not once per frame)."""
        self._after[id(key)] = callback

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.append((job, time.perf_counter()))
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def _run(self) -> None:
        jobs = self._jobs
        clock = time.perf_counter
        while True:
            if not jobs:
                self._idle = self._loop.create_future()
                await self._idle
                continue
            began = clock()
            until = began + ANALYSIS_SLICE_MAX_S
            while jobs and jobs[0][1] <= began:
                job, _ = jobs.popleft()
                try:
                    job()
                except Exception:  # a job guards itself; this is the last line
                    log.exception("analysis_failed")
                if clock() > until:
                    break
            after, self._after = self._after, {}
            for callback in after.values():
                try:
                    callback()
                except Exception:
                    log.exception("analysis_failed")
            await asyncio.sleep(0)  # the loop's I/O (the relay) goes first


class ProxiedCall:
    """One proxied stream: Twilio's accepted WebSocket, the bot's, a ``CallSession`` fed from
    both through the ``Analyst``, two pumps and a watchdog. ``run()`` returns when the call is
    over on both sides."""

    def __init__(
        self,
        bridge: Bridge,
        ws: WebSocket,
        name: str,
        url: str,
        headers: dict[str, str],
        *,
        dial_at_start: bool,
    ) -> None:
        self.bridge = bridge
        self.ws = ws
        self.name = name
        self.url = url
        self.headers = headers
        self.dial_at_start = dial_at_start
        # Turn features are measured in the core, as on every stream: the speaker baselines,
        # arousal and the call summary need each turn's in order (the Analyst's slices keep
        # that work off the relay's path).
        self.session = CallSession(dataclasses.replace(bridge.params, proxied=True))
        self.analyst = Analyst.for_loop()
        limit = bridge.settings.proxy_backlog_bytes
        relay = bridge.metrics.relay_seconds
        self.to_bot = _Pump(self._send_bot, limit, relay.labels(direction="to_bot").observe)
        self.to_twilio = _Pump(
            self._send_twilio, limit, relay.labels(direction="to_twilio").observe
        )
        self.bot: ClientConnection | None = None
        self.started = asyncio.Event()  # start admitted, refused, or the stream is over
        self.done = asyncio.Event()
        self.ending = False
        self.twilio_close_code = 1000
        self.opened_at = self.last_message = time.monotonic()
        self.log = log.bind(upstream=name)
        self.stopped: StreamStopped | None = None
        self._loop = asyncio.get_running_loop()
        self._readers: list[asyncio.Task[Any]] = []  # they end the call
        self._writers: list[asyncio.Task[Any]] = []  # they drain at the end

    # -- the call --------------------------------------------------------------------------

    async def run(self) -> None:
        bridge, session = self.bridge, self.session
        key = id(session)
        bridge.sessions[key] = session
        bridge.metrics.active_streams.inc()
        loop = self._loop
        self._readers = [
            loop.create_task(self._guard(self._read_twilio())),
            loop.create_task(self._guard(self._dial_and_read_bot())),
            loop.create_task(self._guard(self._watchdog())),
        ]
        self._writers = [loop.create_task(self.to_twilio.run())]
        try:
            await self.done.wait()
        finally:
            await self._hang_up()
            bridge.sessions.pop(key, None)
            bridge.metrics.active_streams.dec()
            if self.stopped is not None:
                self.log.info(
                    "stream_stopped",
                    reason=self.stopped.reason,
                    turns=sum(self.stopped.summary.turn_counts.values()),
                )

    def end(
        self,
        reason: StopReason | None = None,
        *,
        code: int | None = None,
        problem: tuple[str, str] | None = None,
    ) -> None:
        """End the call. ``reason``: close the session so, after the work already handed to
        the ``Analyst`` (the frames relayed so far are analysed first), with ``problem``
        (code, message) as a diagnostic before it; ``code``: Twilio's close code. ``run()``
        then hangs up both sides."""
        if code is not None and not self.ending:
            self.twilio_close_code = code
        if self.ending:
            return
        self.ending = True
        if reason is None:
            self._finish()
            return
        session = self.session

        def close() -> None:
            if problem is not None:
                session.report(*problem)
            session.close(reason, at_s=time.time())

        self._submit(close, then=self._finish)

    def _finish(self) -> None:
        self.ending = True
        self.drain()
        self.started.set()
        self.done.set()

    def drain(self) -> None:
        """Publish what the session has produced."""
        for record in self.bridge.flush_session(self.session):
            if isinstance(record, StreamStarted):
                self.log = self.log.bind(call_sid=record.call_sid, stream_sid=record.stream_sid)
                self.log.info("stream_started", tracks=record.tracks, proxied=True)
            elif isinstance(record, StreamStopped):
                self.stopped = record

    # -- the analysis --------------------------------------------------------------------

    def _submit(self, work: Callable[[], None], *, then: Callable[[], None] | None = None) -> None:
        """Run ``work`` through the ``Analyst``, publish what it produced, then ``then``."""

        def job() -> None:
            if self.done.is_set():
                return
            try:
                work()
            except Exception:
                self.log.exception("proxy_analysis_failed")
                self.end("eof", code=1011)
                return
            if then is not None:
                self.drain()
                then()
            else:
                self.analyst.after_slice(self, self._settle)

        self.analyst.submit(job)

    def _settle(self) -> None:
        """After a slice of this call's analysis: publish, and end if the session ended."""
        if self.done.is_set():
            return
        self.drain()
        if self.session.close_expected():  # ``stop``, eof, or a refused start
            self.end(code=self.session.close_code())

    async def _guard(self, work: Awaitable[None]) -> None:
        # A bug in one call's relay must end only that call, with what it had so far.
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("proxy_failed")
            self.end("eof", code=1011)

    # -- Twilio -> bot ---------------------------------------------------------------------

    async def _read_twilio(self) -> None:
        session, ws = self.session, self.ws
        histogram = self.bridge.metrics.message_processing_seconds
        while not self.done.is_set():
            try:
                frame = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                frame = {"type": "websocket.disconnect"}
            if frame["type"] == "websocket.disconnect":
                # After the frames read before it: their analysis is queued ahead.
                self._submit(lambda: self.bridge.end_of_input(session))
                return
            self.last_message = time.monotonic()
            data: str | bytes | None = frame.get("text")
            if data is None:
                data = frame.get("bytes") or b""
            received_at_s = time.time()
            if session.stream_sid is not None:
                if not self._relay_to_bot(data):
                    return
                self._submit(self._analysis_of(data, received_at_s, histogram.observe))
                continue
            # Not started: the session judges first (``start``'s api_key), and the bot sees
            # the frame only if it was not refused.
            session.receive_text(data, received_at_s=received_at_s)
            if session.rejection is not None:
                self.log.warning(
                    "stream_rejected",
                    reason=session.rejection,
                    call_sid=session.call_sid,
                    stream_sid=session.stream_sid,
                )
                self.end(code=session.close_code())
                return
            self.drain()
            if not self._relay_to_bot(data):
                return
            if session.stream_sid is not None:
                self.started.set()

    def _analysis_of(
        self, data: str | bytes, received_at_s: float, observe: Callable[[float], None]
    ) -> Callable[[], None]:
        session = self.session

        def analyse() -> None:
            t0 = time.perf_counter()
            session.receive_text(data, received_at_s=received_at_s)
            observe(time.perf_counter() - t0)

        return analyse

    def _relay_to_bot(self, data: str | bytes) -> bool:
        if self.to_bot.put(data):
            return True
        self._backlog("the bot is not reading: Twilio's frames are piling up")
        return False

    async def _send_bot(self, frame: str | bytes) -> None:
        assert self.bot is not None
        await self.bot.send(frame)

    # -- bot -> Twilio ---------------------------------------------------------------------

    async def _dial_and_read_bot(self) -> None:
        if self.dial_at_start:
            await self.started.wait()
            if self.done.is_set():
                return
        try:
            bot = await connect(
                self.url,
                additional_headers=self.headers,
                open_timeout=self.bridge.settings.upstream_open_timeout_s,
                max_size=UPSTREAM_MAX_MESSAGE_BYTES,
                compression=None,
                user_agent_header=f"mise-twilio/{__version__}",
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            await self._unreachable(exc)
            return
        if self.ending:
            await bot.close()
            return
        self.bot = bot
        self.log.info("upstream_connected", url=_redacted(self.url))
        self._writers.append(self._loop.create_task(self.to_bot.run()))
        receive_playback = self.session.receive_playback
        submit = self._submit
        try:
            while True:
                message = await bot.recv()
                if self.ending:
                    return
                if not self.to_twilio.put(message):
                    self._backlog("Twilio is not reading: the bot's frames are piling up")
                    return
                submit(functools.partial(receive_playback, message))
        except ConnectionClosed as exc:
            if not self.ending:
                self._bot_closed(exc)

    async def _send_twilio(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            await self.ws.send_text(frame)
        else:
            await self.ws.send_bytes(frame)

    # -- failures --------------------------------------------------------------------------

    async def _unreachable(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.log.error("upstream_unreachable", url=_redacted(self.url), error=error)
        self.bridge.metrics.upstream_failures_total.labels(
            upstream=self.name, reason="unreachable"
        ).inc()
        # Name the call in the diagnostic: Twilio's ``start`` is normally already here.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.started.wait(), START_GRACE_S)
        problem = ("upstream_unreachable", f"could not open upstream {self.name!r}: {error}")
        self.end("upstream_unreachable", code=1011, problem=problem)

    def _bot_closed(self, exc: ConnectionClosed) -> None:
        received = exc.rcvd
        clean = received is not None and received.code in (1000, 1001)
        code = received.code if received is not None else 1006
        problem = None
        if clean:
            self.log.info("upstream_closed", code=code)
        else:
            self.log.warning("upstream_dropped", code=code, error=str(exc))
            self.bridge.metrics.upstream_failures_total.labels(
                upstream=self.name, reason="dropped"
            ).inc()
            message = f"upstream {self.name!r} went away mid-call (close code {code}): {exc}"
            problem = ("upstream_closed", message)
        self.end("upstream_closed", code=1000 if clean else 1011, problem=problem)

    def _backlog(self, what: str) -> None:
        self.log.warning(
            "proxy_backlog",
            detail=what,
            to_bot_bytes=self.to_bot.queued_bytes,
            to_twilio_bytes=self.to_twilio.queued_bytes,
        )
        self.bridge.metrics.upstream_failures_total.labels(
            upstream=self.name, reason="backlog"
        ).inc()
        limit = self.bridge.settings.proxy_backlog_bytes
        problem = ("backlog", f"{what} (over {limit} bytes queued); call ended")
        self.end("backlog", code=1011, problem=problem)

    # -- watchdog and hang-up --------------------------------------------------------------

    async def _watchdog(self) -> None:
        session = self.session
        settings = self.bridge.settings
        idle_s = settings.idle_timeout_s
        metrics = self.bridge.metrics
        ending_since: float | None = None
        while not self.done.is_set():
            await asyncio.sleep(min(1.0, idle_s / 4))
            for event, count in session.take_message_counts().items():
                metrics.messages_total.labels(event=event).inc(count)
            now = time.monotonic()
            if self.ending:
                # The analyst has the close; if it never gets to it, hang up anyway.
                ending_since = ending_since or now
                if now - ending_since > DRAIN_S:
                    self._finish()
            elif session.close_expected():  # closed from outside: shutdown, call.completed
                self.end()
            elif now - self.last_message > idle_s:
                self.end("idle")
            elif now - self.opened_at > settings.max_call_s:
                self.end("max_duration")

    async def _hang_up(self) -> None:
        """Both sides closed, what was queued for each sent first (within ``DRAIN_S``)."""
        for task in self._readers:
            task.cancel()
        self.to_bot.close()
        self.to_twilio.close()
        _, late = await asyncio.wait(self._writers, timeout=DRAIN_S)
        for task in late:
            task.cancel()
        if self.bot is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bot.close(), DRAIN_S)
        with contextlib.suppress(Exception):
            await self.ws.close(code=self.twilio_close_code)
        await asyncio.gather(*self._readers, *self._writers, return_exceptions=True)
        session = self.session
        if not session.close_expected():
            session.close("eof", at_s=time.time())
        for event, count in session.take_message_counts().items():
            self.bridge.metrics.messages_total.labels(event=event).inc(count)
        self.drain()


def _redacted(url: str) -> str:
    """``url`` without userinfo, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
