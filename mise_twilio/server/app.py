"""The ASGI edge: one port for the media stream, status webhooks, health and metrics.

Routes (Starlette, served by uvicorn with ``ws="websockets-sansio"``):

- ``WS  /v1/stream/twilio``   Twilio Media Streams (``<Start><Stream>`` fork or ``<Connect>``)
- ``POST|GET /v1/webhook/twilio``  call and stream status callbacks (``webhook.py``)
- ``GET /healthz``  the process is up;  ``GET /readyz``  every sink answers
- ``GET /metrics``  Prometheus text format

Each WebSocket is one ``CallSession`` (sans-I/O); this module only pumps frames into it and
records out of it, so nothing one call does can reach another call's state. Wall-clock time
enters here and only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from mise_twilio import __version__
from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.lifecycle import CallLifecycle
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import (
    AnyRecord,
    CallStatusEvent,
    CallSummary,
    Diagnostic,
    StreamStopped,
    TurnRecord,
)
from mise_twilio.server.config import Settings
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.signature import TwilioSignature
from mise_twilio.server.sinks import SinkHub, build_hub
from mise_twilio.server.turn_audio import turn_audio_path, write_turn_wav
from mise_twilio.server.webhook import make_webhook_endpoint, run_lifecycle_poller

STREAM_PATH = "/v1/stream/twilio"
WEBHOOK_PATH = "/v1/webhook/twilio"
WS_HARD_MAX_BYTES = 1024 * 1024
"""The socket-level frame cap. Frames between ``max_message_bytes`` and this become a
diagnostic in the session (the call goes on); only beyond it does the protocol close (1009)."""
_COMPLETED_HOLD_S = 5.0
_SUMMARY_CACHE = 10_000

log = structlog.get_logger("mise_twilio.server.app")


def session_params(settings: Settings) -> SessionParams:
    """``SessionParams`` from settings (the api_key check lives in the session)."""
    return SessionParams(
        max_message_bytes=settings.max_message_bytes,
        expected_api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        keep_turn_audio=settings.turn_audio != "none",
    )


@dataclass
class _Joins:
    """Joins stream summaries and call status callbacks that reach this process (bounded)."""

    summaries: OrderedDict[str, CallSummary] = field(default_factory=OrderedDict)
    held_completed: dict[str, CallStatusEvent] = field(default_factory=dict)

    def remember(self, call_sid: str, summary: CallSummary) -> None:
        self.summaries[call_sid] = summary
        self.summaries.move_to_end(call_sid)
        while len(self.summaries) > _SUMMARY_CACHE:
            self.summaries.popitem(last=False)


class Bridge:
    """Process-wide state shared by the routes: settings, sinks, metrics, open sessions."""

    def __init__(
        self, settings: Settings, *, hub: SinkHub | None = None, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.hub = hub or build_hub(settings, self.metrics)
        self.params = session_params(settings)
        token = settings.twilio_auth_token
        self.signature: TwilioSignature | None = None
        if token is not None:
            if not settings.public_url:
                raise ValueError("MISE_TWILIO_AUTH_TOKEN needs MISE_PUBLIC_URL to check signatures")
            self.signature = TwilioSignature(token.get_secret_value(), settings.public_url)
        pii_key = settings.pii_key.get_secret_value().encode() if settings.pii_key else None
        self.pii = PiiPolicy(pii_key, keep=settings.keep_pii)
        self.lifecycle = CallLifecycle()
        self.sessions: dict[int, CallSession] = {}
        self.joins = _Joins()
        self.shutting_down = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._audio_writes: set[asyncio.Task[Any]] = set()

    # -- records out ----------------------------------------------------------------------

    def publish(self, record: AnyRecord) -> None:
        """Hand one record to the sinks (never blocks), counting it in the metrics."""
        if isinstance(record, TurnRecord):
            self.metrics.turns_total.labels(speaker=record.speaker).inc()
        elif isinstance(record, Diagnostic):
            self.metrics.diagnostics_total.labels(code=record.code).inc()
        self.hub.publish(record)

    def publish_status(self, record: AnyRecord) -> None:
        """Status-callback events: join ``call.completed`` with this process's stream summary."""
        call_sid = record.call_sid
        if isinstance(record, CallStatusEvent) and call_sid and record.type == "call.completed":
            summary = self.joins.summaries.get(call_sid)
            if summary is not None:
                record = record.model_copy(update={"summary": summary})
            elif self._stream_open(call_sid):
                # The stream is still open here: hold the event until it stops (bounded).
                self.joins.held_completed[call_sid] = record
                asyncio.get_running_loop().call_later(
                    _COMPLETED_HOLD_S, self._release_completed, call_sid
                )
                self._close_after_grace(call_sid)
                return
        self.publish(record)

    def _release_completed(self, call_sid: str) -> None:
        held = self.joins.held_completed.pop(call_sid, None)
        if held is not None:
            summary = self.joins.summaries.get(call_sid)
            self.publish(held.model_copy(update={"summary": summary}) if summary else held)

    def _stream_open(self, call_sid: str) -> bool:
        return any(s.call_sid == call_sid for s in self.sessions.values())

    def _close_after_grace(self, call_sid: str) -> None:
        # Twilio sends ``stop`` before the call ends; a tunnel may swallow both it and the
        # socket close (twilio-protocol.md §7), so a completed call ends its open stream soon.
        def close() -> None:
            for session in list(self.sessions.values()):
                if session.call_sid == call_sid and session.state != "closed":
                    session.close("stop", at=time.time())
                    self.flush_session(session)

        asyncio.get_running_loop().call_later(2.0, close)

    def flush_session(self, session: CallSession) -> None:
        """Publish what the session produced; on ``stream.stopped`` record the join.

        With turn audio on, each turn record names its WAV file (``audio``), published now;
        the file is written in a thread and appears (atomically) shortly after."""
        events = session.take_events()
        pcm_by_turn = dict(session.take_turn_audio()) if self.params.keep_turn_audio else {}
        for record in events:
            if isinstance(record, TurnRecord) and record.id in pcm_by_turn:
                record = self._with_turn_audio(record, pcm_by_turn.pop(record.id))
            call_sid = record.call_sid
            if isinstance(record, StreamStopped) and call_sid:
                self.joins.remember(call_sid, record.summary)
                if record.last_call_status is None:
                    status = self.lifecycle.last_status(call_sid)
                    if status is not None:
                        record = record.model_copy(update={"last_call_status": status})
                self.publish(record)
                self._release_completed(call_sid)
                continue
            self.publish(record)

    def _with_turn_audio(self, record: TurnRecord, pcm: bytes) -> TurnRecord:
        path = turn_audio_path(self.settings.data_dir.absolute(), record)
        task = asyncio.get_running_loop().create_task(self._write_audio(path, pcm))
        self._audio_writes.add(task)
        task.add_done_callback(self._audio_writes.discard)
        return record.model_copy(update={"audio": str(path)})

    async def _write_audio(self, path: Path, pcm: bytes) -> None:
        try:
            await asyncio.to_thread(write_turn_wav, path, pcm)
        except Exception:
            log.exception("turn_audio_failed", path=str(path))

    async def wait_for_audio(self, timeout_s: float) -> bool:
        """Wait until every turn-audio file scheduled so far is written; ``False`` on timeout."""
        pending = set(self._audio_writes)
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        return not still

    # -- lifecycle ------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def startup(self) -> None:
        await self.hub.start()
        self.spawn(run_lifecycle_poller(self.lifecycle, self.publish_status))
        if self.signature is None:
            log.warning(
                "open_server",
                detail="MISE_TWILIO_AUTH_TOKEN is not set: X-Twilio-Signature is NOT checked; "
                "anyone who can reach this port can stream audio and post callbacks",
            )
        if self.pii.ephemeral_key and not self.pii.keep:
            log.warning(
                "ephemeral_pii_key",
                detail="MISE_PII_KEY is not set: phone-number hashes change on every restart",
            )
        if self.settings.api_key is None:
            log.info(
                "no_api_key", detail="MISE_API_KEY not set: customParameters.api_key unchecked"
            )
        log.info("sinks", sinks=self.hub.sink_names, version=__version__)

    async def shutdown(self) -> None:
        """SIGTERM: close every open stream (turns end as ``stream_end``), drain the sinks."""
        self.shutting_down = True
        for session in list(self.sessions.values()):
            session.close("shutdown", at=time.time())
            self.flush_session(session)
        for call_sid in list(self.joins.held_completed):
            self._release_completed(call_sid)
        for task in list(self._tasks):
            task.cancel()
        for event in self.lifecycle.flush(time.monotonic()):
            self.publish_status(event)
        deadline = time.monotonic() + self.settings.shutdown_deadline_s
        if not await self.wait_for_audio(self.settings.shutdown_deadline_s / 2):
            log.warning("turn_audio_unfinished", pending=len(self._audio_writes))
        report = await self.hub.drain(max(0.1, deadline - time.monotonic()))
        log.info("drained", report={k: str(v) for k, v in report.items()})
        await self.hub.close()

    # -- the stream -----------------------------------------------------------------------

    def _end_of_input(self, session: CallSession) -> None:
        # uvicorn's shutdown hangs up every connection (close 1012) before the lifespan
        # shutdown runs; ``ShutdownAwareWebSocket`` sets ``shutting_down`` first, so a stream
        # cut that way ends as ``shutdown``, not as the peer's ``eof``.
        if self.shutting_down:
            session.close("shutdown", at=time.time())
        else:
            session.receive_eof(at=time.time())

    async def stream(self, ws: WebSocket) -> None:
        path = ws.url.path
        if self.shutting_down:
            await ws.close(code=1013)  # try again later: another replica takes it
            return
        if self.signature is not None and not self.signature.check_websocket(
            path, ws.headers.get("x-twilio-signature")
        ):
            self.metrics.webhook_requests_total.labels(outcome="ws_forbidden").inc()
            log.warning("stream_forbidden", reason="bad or missing X-Twilio-Signature", path=path)
            await ws.close(code=1008)  # before accept: the handshake is refused with 403
            return
        await ws.accept()
        session = CallSession(self.params)
        key = id(session)
        self.sessions[key] = session
        self.metrics.active_streams.inc()
        slog = log
        last_message = time.monotonic()
        idle_s = self.settings.idle_timeout_s

        counted: Counter[str] = Counter()

        def count_messages() -> None:
            # ``mise_messages_total`` from the session's own tally, by difference: once a
            # second and at the end, so a long call shows up while it lasts at no per-message
            # cost.
            for event, count in session.messages.items():
                delta = count - counted[event]
                if delta:
                    self.metrics.messages_total.labels(event=event).inc(delta)
                    counted[event] = count

        async def watchdog() -> None:
            # One timer per stream, not one per message: ``wait_for`` on every receive would
            # cost more than the message itself. It also hangs up on a session that was closed
            # from outside the read loop (call.completed grace, shutdown): the read loop is
            # blocked in receive() and would otherwise wait for the peer.
            while True:
                await asyncio.sleep(min(1.0, idle_s / 4))
                count_messages()
                if session.state != "closed" and time.monotonic() - last_message > idle_s:
                    session.close("idle", at=time.time())
                if session.state == "closed":
                    with contextlib.suppress(Exception):
                        await ws.close(code=1000)
                    return

        guard = asyncio.get_running_loop().create_task(watchdog())
        histogram = self.metrics.message_processing_seconds
        started_at = time.monotonic()
        try:
            while session.state != "closed":
                try:
                    frame = await ws.receive()
                except (WebSocketDisconnect, RuntimeError):
                    self._end_of_input(session)
                    break
                if frame["type"] == "websocket.disconnect":
                    self._end_of_input(session)
                    break
                last_message = time.monotonic()
                text = frame.get("text")
                if text is None:
                    # Twilio only sends text frames; a binary one is tried as UTF-8 JSON.
                    text = frame.get("bytes") or b""
                t0 = time.perf_counter()
                before = session.state
                session.receive_text(text, received_at=time.time())
                histogram.observe(time.perf_counter() - t0)
                if session.rejected:
                    slog.warning("stream_rejected", reason=session.rejected)
                    await ws.close(code=1008)
                    break
                if before == "awaiting_start" and session.state == "streaming":
                    slog = log.bind(call_sid=session.call_sid, stream_sid=session.stream_sid)
                    slog.info("stream_started", tracks=session.tracks)
                self.flush_session(session)
                if last_message - started_at > self.settings.max_call_s:
                    session.close("max_duration", at=time.time())
        except Exception:
            # A bug must end only this call, with what it had so far delivered.
            slog.exception("stream_failed")
            session.close("eof", at=time.time())
        finally:
            guard.cancel()
            count_messages()
            self.flush_session(session)
            self.sessions.pop(key, None)
            self.metrics.active_streams.dec()
            if session.state == "closed" and not session.rejected:
                slog.info(
                    "stream_stopped",
                    reason=session.stop_reason,
                    turns=sum(session.summary.turn_counts.values()) if session.summary else 0,
                )
            with contextlib.suppress(Exception):
                await ws.close(code=1000)


def create_app(
    settings: Settings | None = None,
    *,
    hub: SinkHub | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """The ASGI app. ``hub``/``metrics`` may be injected (tests); otherwise built from settings.

    ``app.state.bridge`` is the ``Bridge``. Raises ``ValueError`` when an auth token is set
    without ``public_url``.
    """
    settings = settings or Settings()
    bridge = Bridge(settings, hub=hub, metrics=metrics)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(_: Request) -> Response:
        ready = await bridge.hub.ready()
        ok = all(ready.values()) and not bridge.shutting_down
        return JSONResponse({"ready": ok, "sinks": ready}, status_code=200 if ok else 503)

    async def metrics_endpoint(_: Request) -> Response:
        body, content_type = bridge.metrics.render()
        return Response(body, media_type=content_type)

    async def not_found(_: Request) -> Response:
        return PlainTextResponse("not found", status_code=404)

    webhook = make_webhook_endpoint(
        signature=bridge.signature,
        lifecycle=bridge.lifecycle,
        pii=bridge.pii,
        publish=bridge.publish_status,
        max_body_bytes=settings.max_webhook_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await bridge.startup()
        try:
            yield
        finally:
            await bridge.shutdown()

    app = Starlette(
        routes=[
            WebSocketRoute(STREAM_PATH, bridge.stream),
            WebSocketRoute(STREAM_PATH + "/", bridge.stream),
            Route(WEBHOOK_PATH, webhook, methods=["GET", "POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/", not_found),
        ],
        lifespan=lifespan,
    )
    app.state.bridge = bridge
    return app


def _shutdown_aware_ws_protocol(bridge: Bridge) -> type[Any]:
    """uvicorn's websockets sans-I/O protocol, telling ``bridge`` when shutdown begins.

    On SIGTERM uvicorn stops listening, calls ``shutdown()`` on every open connection (a
    WebSocket gets close 1012 and its app sees ``websocket.disconnect``), waits for them up to
    ``timeout_graceful_shutdown`` and only then runs the lifespan shutdown
    (``Bridge.shutdown``). Marking the bridge as shutting down in the first step lets the read
    loop end those streams with reason ``shutdown`` and refuse new ones, promptly."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class ShutdownAwareWebSocket(WebSocketsSansIOProtocol):
        def shutdown(self) -> None:
            bridge.shutting_down = True
            super().shutdown()

    return ShutdownAwareWebSocket


def uvicorn_config(app: Starlette, settings: Settings) -> Any:
    """A ``uvicorn.Config`` for ``app``: websockets' sans-I/O protocol, our own logging."""
    import uvicorn

    bridge = getattr(app.state, "bridge", None)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=_shutdown_aware_ws_protocol(bridge) if bridge is not None else "websockets-sansio",
        ws_max_size=WS_HARD_MAX_BYTES,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_deadline_s) + 1,
    )
