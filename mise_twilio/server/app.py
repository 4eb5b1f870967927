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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from mise_twilio import __version__
from mise_twilio.core.call import CallSession
from mise_twilio.core.errors import ConfigError
from mise_twilio.core.lifecycle import CallLifecycle, JoinOutput, SummaryJoin
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import AnyRecord, Diagnostic, StreamStopped, TurnRecord
from mise_twilio.core.status import StatusEvent
from mise_twilio.server.config import Settings, session_params
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.signature import TwilioSignature
from mise_twilio.server.sinks import SinkHub, build_hub
from mise_twilio.server.stream import run_stream
from mise_twilio.server.turn_audio import turn_audio_path, write_turn_wav
from mise_twilio.server.webhook import make_webhook_endpoint, run_lifecycle_poller

STREAM_PATH = "/v1/stream/twilio"
WEBHOOK_PATH = "/v1/webhook/twilio"
WS_HARD_MAX_BYTES = 1024 * 1024
"""The socket-level frame cap. Frames between ``max_message_bytes`` and this become a
diagnostic in the session (the call goes on); only beyond it does the protocol close (1009)."""
_TIMER_INTERVAL_S = 0.25

log = structlog.get_logger("mise_twilio.server")


class Bridge:
    """Process-wide state shared by the routes: settings, sinks, metrics, open sessions, the
    call lifecycle and the completed/summary join."""

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
                raise ConfigError(
                    "MISE_TWILIO_AUTH_TOKEN needs MISE_PUBLIC_URL (the https URL Twilio uses) "
                    "to check signatures"
                )
            self.signature = TwilioSignature(token.get_secret_value(), settings.public_url)
        pii_key = settings.pii_key.get_secret_value().encode() if settings.pii_key else None
        self.pii = PiiPolicy(pii_key, keep=settings.keep_pii)
        life = settings.lifecycle
        self.lifecycle = CallLifecycle(
            reorder_window_s=life.reorder_window_s,
            max_calls=life.max_calls,
            terminal_retention_s=life.terminal_retention_s,
        )
        self.join = SummaryJoin(
            hold_s=life.completed_hold_s,
            close_grace_s=life.completed_close_grace_s,
            max_calls=life.max_calls,
        )
        self.sessions: dict[int, CallSession] = {}
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

    def publish_status(self, record: StatusEvent) -> None:
        """A released status-callback event, through the completed/summary join."""
        call_sid = record.call_sid
        stream_open = call_sid is not None and self._stream_open(call_sid)
        self._apply(self.join.on_status(record, stream_open=stream_open, now_s=time.monotonic()))

    def _apply(self, out: JoinOutput) -> None:
        for record in out.records:
            self.publish(record)
        for call_sid in out.close_streams:
            # Twilio sends ``stop`` before the call ends; a tunnel may swallow both it and the
            # socket close (docs/protocol.md §7), so a completed call ends its open stream.
            for session in list(self.sessions.values()):
                if session.call_sid == call_sid and not session.close_expected():
                    session.close("stop", at_s=time.time())
                    self.flush_session(session)

    def _stream_open(self, call_sid: str) -> bool:
        return any(s.call_sid == call_sid for s in self.sessions.values())

    def flush_session(self, session: CallSession) -> list[AnyRecord]:
        """Publish what the session produced (``stream.stopped`` through the join) and return
        it. With turn audio on, each turn record names its WAV file (``audio``), published
        now; the file is written in a thread and appears (atomically) shortly after."""
        events = session.take_events()
        pcm_by_turn = dict(session.take_turn_audio()) if self.params.keep_turn_audio else {}
        for i, record in enumerate(events):
            if isinstance(record, TurnRecord) and record.id in pcm_by_turn:
                events[i] = record = self._with_turn_audio(record, pcm_by_turn.pop(record.id))
            if isinstance(record, StreamStopped):
                last = self.lifecycle.last_status(record.call_sid) if record.call_sid else None
                self._apply(self.join.on_stream_stopped(record, last))
            else:
                self.publish(record)
        return events

    def end_of_input(self, session: CallSession) -> None:
        """The socket closed under the session."""
        # uvicorn's shutdown hangs up every connection (close 1012) before the lifespan
        # shutdown runs; ``ShutdownAwareWebSocket`` sets ``shutting_down`` first, so a stream
        # cut that way ends as ``shutdown``, not as the peer's ``eof``.
        if self.shutting_down:
            session.close("shutdown", at_s=time.time())
        else:
            session.receive_eof(at_s=time.time())

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

    async def _join_timers(self) -> None:
        while True:
            await asyncio.sleep(_TIMER_INTERVAL_S)
            try:
                self._apply(self.join.poll(time.monotonic()))
            except Exception:
                log.exception("join_poll_failed")

    async def startup(self) -> None:
        await self.hub.start()
        self.spawn(run_lifecycle_poller(self.lifecycle, self.publish_status))
        self.spawn(self._join_timers())
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
            session.close("shutdown", at_s=time.time())
            self.flush_session(session)
        for task in list(self._tasks):
            task.cancel()
        for event in self.lifecycle.flush(time.monotonic()):
            self.publish_status(event)
        for held in self.join.flush():
            self.publish(held)
        deadline = time.monotonic() + self.settings.shutdown_deadline_s
        if not await self.wait_for_audio(self.settings.shutdown_deadline_s / 2):
            log.warning("turn_audio_unfinished", pending=len(self._audio_writes))
        report = await self.hub.drain(max(0.1, deadline - time.monotonic()))
        log.info("drained", report={k: str(v) for k, v in report.items()})
        await self.hub.close()

    # -- the stream -----------------------------------------------------------------------

    async def stream(self, ws: WebSocket, receive: Receive | None = None) -> None:
        """Serve one Media Stream. ``receive``: the server's ASGI receive, to read frames with
        (``ws.receive`` when ``None``); see ``StreamEndpoint``."""
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
        await run_stream(self, ws, receive or ws.receive)


class StreamEndpoint:
    """``WS /v1/stream/twilio`` as a raw ASGI app: Starlette's ``WebSocket`` does the handshake
    and the close, while frames are read with the server's own ``receive``. Starlette's
    ``WebSocket.receive`` adds its state checks and a coroutine to every Twilio message
    (``bench/load.py``: ``starlette`` against ``asgi``)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.bridge.stream(WebSocket(scope, receive=receive, send=send), receive)


def create_app(
    settings: Settings | None = None,
    *,
    hub: SinkHub | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """The ASGI app. ``hub``/``metrics`` may be injected (tests); otherwise built from settings.

    ``app.state.bridge`` is the ``Bridge``. Raises ``ConfigError`` when an auth token is set
    without ``public_url``, or ``public_url`` is not an http(s) URL.
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
            WebSocketRoute(STREAM_PATH, StreamEndpoint(bridge)),
            WebSocketRoute(STREAM_PATH + "/", StreamEndpoint(bridge)),
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
    """uvicorn's websockets sans-I/O protocol (reads paused only past a high-water mark:
    ``ws_protocol.py``), telling ``bridge`` when shutdown begins.

    On SIGTERM uvicorn stops listening, calls ``shutdown()`` on every open connection (a
    WebSocket gets close 1012 and its app sees ``websocket.disconnect``), waits for them up to
    ``timeout_graceful_shutdown`` and only then runs the lifespan shutdown
    (``Bridge.shutdown``). Marking the bridge as shutting down in the first step lets the read
    loop end those streams with reason ``shutdown`` and refuse new ones, promptly."""
    from mise_twilio.server.ws_protocol import BufferedWebSocketsSansIO

    class ShutdownAwareWebSocket(BufferedWebSocketsSansIO):
        def shutdown(self) -> None:
            bridge.shutting_down = True
            super().shutdown()

    return ShutdownAwareWebSocket


def _buffered_ws_protocol() -> type[Any]:
    from mise_twilio.server.ws_protocol import BufferedWebSocketsSansIO

    return BufferedWebSocketsSansIO


def uvicorn_config(app: Starlette, settings: Settings) -> Any:
    """A ``uvicorn.Config`` for ``app``: websockets' sans-I/O protocol (``ws_protocol.py``),
    uvicorn's ``auto`` event loop (uvloop, a dependency where it builds), our own logging."""
    import uvicorn

    bridge = getattr(app.state, "bridge", None)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=_shutdown_aware_ws_protocol(bridge) if bridge is not None else _buffered_ws_protocol(),
        ws_max_size=WS_HARD_MAX_BYTES,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_deadline_s) + 1,
    )
