"""Proxy mode: relay a Twilio Media Stream to the team's own bot, and hear the agent as played.

``WS /v1/stream/twilio/proxy/{name}``: Twilio connects here (``<Connect><Stream>``), the relay
opens the WebSocket of the bot configured as ``name`` (``MISE_UPSTREAMS``; never a URL from the
request) and copies every message both ways, unchanged and in order: text as text, binary as
binary, Twilio's ``start`` with its ``customParameters`` as sent (``api_key`` included: the bot
sees what it would see from Twilio; records never carry it). The bot's messages feed the
session's playback model (``CallSession.receive_playback``), which rebuilds the agent's track.

Relay first, analyse elsewhere. A reader queues each frame for the other side's writer and
sends a copy to the call's session, which lives in the analysis process
(``server/analysis.py``: parsing, the playback model, VAD, turns and their features, off this
event loop and its GIL); its records come back and are published here. Until Twilio's
``start`` is admitted the caller's side is judged first, by a session in this process that
checks ``start`` (the api_key) before the bot may see it, so admitting a call never waits for
the analysis process.

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
- the analysis process dies (``server/analysis.py``): an ``analysis_lost`` diagnostic, Twilio's
  side closed (1011); a stalled one delays no frame (past its backlog, frames are relayed and
  not analysed: ``analysis_backlog``);
- one side does not keep up: frames wait for it in a buffer bounded by
  ``MISE_PROXY_BACKLOG_BYTES``; past that the call ends (``backlog``). The other side is never
  blocked by it.

A bad frame from either side is relayed and becomes a diagnostic; nothing one call does reaches
another call's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from mise_twilio import __version__
from mise_twilio.core.call import CallSession
from mise_twilio.core.records import StopReason
from mise_twilio.server.stream import StreamLog, registered

if TYPE_CHECKING:
    from mise_twilio.server.analysis import RemoteSession
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
    try:
        session = await bridge.open_proxied_session()
    except OSError as exc:
        log.error("analysis_unavailable", upstream=name, error=f"{type(exc).__name__}: {exc}")
        await ws.close(code=1011)
        return
    await ws.accept()
    signed = bridge.signature is not None
    dial_at_start = not signed and bridge.params.expected_api_key is not None
    call = ProxiedCall(bridge, ws, session, name, url, headers, dial_at_start=dial_at_start)
    await call.run()


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


class ProxiedCall:
    """One proxied stream: Twilio's accepted WebSocket, the bot's, a session in the analysis
    process fed from both, two pumps and a watchdog. ``run()`` returns when the call is over on
    both sides."""

    def __init__(
        self,
        bridge: Bridge,
        ws: WebSocket,
        session: RemoteSession,
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
        self.session = session
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
        self.events = StreamLog(log.bind(upstream=name), proxied=True)
        self._loop = asyncio.get_running_loop()
        self._readers: list[asyncio.Task[Any]] = []  # they end the call
        self._writers: list[asyncio.Task[Any]] = []  # they drain at the end
        self._closing: asyncio.Task[None] | None = None

    # -- the call --------------------------------------------------------------------------

    @property
    def log(self) -> Any:
        """The call's logger (bound to its sids once the stream started)."""
        return self.events.log

    async def run(self) -> None:
        with registered(self.bridge, self.session):
            await self._run()

    async def _run(self) -> None:
        self.session.on_output = self._settle
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
            self.events.log_stopped()

    def end(
        self,
        reason: StopReason | None = None,
        *,
        code: int | None = None,
        problem: tuple[str, str] | None = None,
    ) -> None:
        """End the call. ``reason``: close the session so (after the frames relayed so far),
        with ``problem`` (code, message) as a diagnostic before it, and hang up once the
        analysis has answered; ``code``: Twilio's close code. ``run()`` then hangs up both
        sides."""
        if code is not None and not self.ending:
            self.twilio_close_code = code
        if self.ending:
            return
        self.ending = True
        if reason is None:
            self._finish()
            return
        session = self.session
        if problem is not None:
            session.report(*problem)
        session.close(reason, at_s=time.time())
        self._closing = self._loop.create_task(self._finish_when_analysed())

    async def _finish_when_analysed(self) -> None:
        await self.session.synced(DRAIN_S)
        self._finish()

    def _finish(self) -> None:
        self.ending = True
        self.drain()
        self.started.set()
        self.done.set()

    def drain(self) -> None:
        """Publish what the session has produced."""
        self.events.note(self.bridge.flush_session(self.session))

    # -- the analysis --------------------------------------------------------------------

    def _settle(self) -> None:
        """The analysis answered: publish, and end the call if the session ended (``stop``,
        eof, a refused start, the analysis process gone) or failed. After the call, only
        publish (an analysis that was behind still delivers the call's last records)."""
        self.drain()
        if self.done.is_set():
            return
        session = self.session
        if session.error is not None and not self.ending:
            self.log.error("proxy_analysis_failed", error=session.error)
            self.end("eof", code=1011)
        elif session.close_expected():
            self.end(code=session.close_code())

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
        # Until ``start`` is admitted, a session here judges each frame too (the api_key), so
        # admitting a call never waits for the analysis process; its records are dropped (the
        # analysis process's session, fed the same frames, makes them).
        judge: CallSession | None = CallSession(self.bridge.params)
        while not self.done.is_set():
            try:
                frame = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                frame = {"type": "websocket.disconnect"}
            if frame["type"] == "websocket.disconnect":
                # After the frames read before it: their analysis is queued ahead.
                self.bridge.end_of_input(session)
                return
            self.last_message = time.monotonic()
            data: str | bytes | None = frame.get("text")
            if data is None:
                data = frame.get("bytes") or b""
            received_at_s = time.time()
            if judge is None:
                if not self._relay_to_bot(data):
                    return
                session.receive_text(data, received_at_s=received_at_s)
                continue
            # Not started: judged first (``start``'s api_key); the bot sees the frame only if
            # it was not refused.
            judge.receive_text(data, received_at_s=received_at_s)
            session.receive_text(data, received_at_s=received_at_s)
            if judge.rejection is not None:
                self.log.warning(
                    "stream_rejected",
                    reason=judge.rejection,
                    call_sid=judge.call_sid,
                    stream_sid=judge.stream_sid,
                )
                self.end(code=judge.close_code())
                return
            if not self._relay_to_bot(data):
                return
            if judge.stream_sid is not None:
                judge = None
                self.started.set()

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
        try:
            while True:
                message = await bot.recv()
                if self.ending:
                    return
                if not self.to_twilio.put(message):
                    self._backlog("Twilio is not reading: the bot's frames are piling up")
                    return
                receive_playback(message)
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
        ending_since: float | None = None
        while not self.done.is_set():
            await asyncio.sleep(min(1.0, idle_s / 4))
            self._count_messages()
            session.request_sync()  # the counts and timings for the next tick
            now = time.monotonic()
            if self.ending:
                # The analysis has the close; if it never answers, hang up anyway.
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
        if self._closing is not None:
            self._closing.cancel()
        session = self.session
        if not session.close_expected():
            session.close("eof", at_s=time.time())
        if not await session.synced(DRAIN_S):
            self.log.error("analysis_unfinished", detail="the call's last records are missing")
        self._count_messages()
        self.drain()
        session.release()

    def _count_messages(self) -> None:
        metrics = self.bridge.metrics
        for event, count in self.session.take_message_counts().items():
            metrics.messages_total.labels(event=event).inc(count)
        observe = metrics.message_processing_seconds.observe
        for seconds in self.session.take_processing_s():
            observe(seconds)


def _redacted(url: str) -> str:
    """``url`` without userinfo, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
