"""The ASGI edge: one port for the media stream, status webhooks, health and metrics.

Routes (Starlette, served by uvicorn with ``ws="websockets-sansio"``):

- ``WS  /v1/stream/twilio``   Twilio Media Streams (``<Start><Stream>`` fork or ``<Connect>``)
- ``WS  /v1/stream/twilio/proxy/{name}``   proxy mode: relayed to the bot ``name`` (``proxy.py``)
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
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from mise_twilio import __version__
from mise_twilio.core.call import CallSession
from mise_twilio.core.errors import ConfigError, SinkError
from mise_twilio.core.lifecycle import CallLifecycle, JoinOutput, SummaryJoin
from mise_twilio.core.pii import PiiPolicy
from mise_twilio.core.records import (
    AnyRecord,
    Diagnostic,
    StreamStarted,
    StreamStopped,
    TurnRecord,
)
from mise_twilio.core.status import StatusEvent
from mise_twilio.server.analysis import AnalysisProcess, RemoteSession
from mise_twilio.server.config import Settings, session_params
from mise_twilio.server.limits import MAX_HEADER_BYTES, RequestLimits
from mise_twilio.server.logs import uvicorn_log_config
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.proxy import PROXY_PATH, proxy_routes
from mise_twilio.server.shared_join import RedisJoinStore, SharedJoinEdge
from mise_twilio.server.signature import TwilioSignature
from mise_twilio.server.sinks import SinkHub, build_hub
from mise_twilio.server.stream import run_stream
from mise_twilio.server.turn_audio import turn_audio_path, write_turn_wav
from mise_twilio.server.webhook import make_webhook_endpoint, run_lifecycle_poller
from mise_twilio.server.ws_protocol import MiseWebSocketProtocol, register_shutdown_listener

STREAM_PATH = "/v1/stream/twilio"
WEBHOOK_PATH = "/v1/webhook/twilio"
WS_HARD_MAX_BYTES = 1024 * 1024
"""The socket-level frame cap. Frames between ``max_message_bytes`` and this become a
diagnostic in the session (the call goes on); only beyond it does the protocol close (1009)."""
_TIMER_INTERVAL_S = 0.25
_SHARED_WAIT_S = 10.0
"""Shutdown waits this long for the shared join's Redis round trips (each is bounded by the
store's own timeout, so this only guards against a bug)."""

log = structlog.get_logger("mise_twilio.server")

Session = CallSession | RemoteSession
"""A stream's session: in this process, or a proxied call's in the analysis process."""


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
            remote_hold_s=life.completed_remote_hold_s,
        )
        # With Redis, the join spans replicas (server/shared_join.py); without, one process.
        self.shared: SharedJoinEdge | None = None
        if settings.redis_url and life.shared_join:
            store = RedisJoinStore(
                settings.redis_url, f"{settings.redis_stream}:join:", ttl_s=life.shared_join_ttl_s
            )
            self.shared = SharedJoinEdge(
                self.join,
                store,
                apply=self._apply,
                stream_open=self._stream_open,
                metrics=self.metrics,
                clock=time.monotonic,
            )
        self.sessions: dict[int, Session] = {}
        # Proxied calls are analysed in a child process (server/analysis.py), started with the
        # bridge when upstreams are configured.
        self.analysis = AnalysisProcess(
            backlog_max_bytes=settings.proxy_analysis_backlog_bytes,
            nice=settings.proxy_analysis_nice,
        )
        self.draining = False  # SIGTERM seen: /readyz 503, still serving (server/drain.py)
        self.started = False
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
        if self.shared is not None:
            self.shared.status(record)
            return
        call_sid = record.call_sid
        stream_open = call_sid is not None and self._stream_open(call_sid)
        self._apply(self.join.on_status(record, stream_open=stream_open, now_s=time.monotonic()))

    def status_held(self, event: StatusEvent) -> None:
        """An accepted status callback the lifecycle holds for reordering (webhook.py)."""
        if self.shared is not None:
            self.shared.status_held(event)

    def _apply(self, out: JoinOutput) -> None:
        for record in out.records:
            self.publish(record)
        if out.claims and self.shared is not None:
            self.shared.claim(out.claims)
        for call_sid in out.close_streams:
            # Twilio sends ``stop`` before the call ends; a tunnel may swallow both it and the
            # socket close (docs/protocol.md §7), so a completed call ends its open stream.
            for session in list(self.sessions.values()):
                if session.call_sid == call_sid and not session.close_expected():
                    session.close("stop", at_s=time.time())
                    self.flush_session(session)

    def _stream_open(self, call_sid: str) -> bool:
        return any(s.call_sid == call_sid for s in self.sessions.values())

    async def open_proxied_session(self) -> RemoteSession:
        """A proxied call's session, in the analysis process (restarted if it died). Raises
        ``OSError`` when the process cannot be started."""
        await self.analysis.start()
        return self.analysis.open(dataclasses.replace(self.params, proxied=True))

    def flush_session(self, session: Session) -> list[AnyRecord]:
        """Publish what the session produced (``stream.stopped`` through the join) and return
        it. With turn audio on, each turn record names its WAV file (``audio``), published
        now; the file is written in a thread and appears (atomically) shortly after."""
        events = session.take_events()
        pcm_by_turn = dict(session.take_turn_audio()) if self.params.keep_turn_audio else {}
        for i, record in enumerate(events):
            if isinstance(record, TurnRecord) and record.id in pcm_by_turn:
                events[i] = record = self._with_turn_audio(record, pcm_by_turn.pop(record.id))
            if isinstance(record, StreamStopped):
                # what this replica received, held for reordering included
                call_sid = record.call_sid
                last = self.lifecycle.furthest_status_received(call_sid) if call_sid else None
                if self.shared is not None:
                    self.shared.stream_stopped(record, last)
                else:
                    self._apply(self.join.on_stream_stopped(record, last))
            else:
                self.publish(record)
                if isinstance(record, StreamStarted) and self.shared is not None:
                    self.shared.stream_started(record)
        return events

    def end_of_input(self, session: Session) -> None:
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

    def begin_drain(self) -> None:
        """SIGTERM with a drain configured (``server/drain.py``): ``/readyz`` answers 503 from
        now on so the load balancer stops routing here; streams and webhooks are still served."""
        if not self.draining:
            self.draining = True
            self.metrics.draining.set(1)
            log.info("draining", open_streams=len(self.sessions))

    def begin_shutdown(self) -> None:
        """The server began to shut down: new streams are refused, open ones end as
        ``shutdown`` (called by ``MiseWebSocketProtocol`` before connections are closed)."""
        self.shutting_down = True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Bridge]:
        """``startup()`` on entry, ``shutdown()`` on exit: the app's lifespan, for a host that
        mounts the app (Starlette does not run a mounted app's lifespan; docs/embedding.md)."""
        await self.startup()
        try:
            yield self
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Start the sinks (replaying their spools) and the lifecycle timers. Raises
        ``ConfigError`` when a sink cannot work at all (an unwritable JSONL file or spool)."""
        try:
            await self.hub.start()
        except (SinkError, OSError) as exc:
            raise ConfigError(f"the sinks cannot start: {exc}") from exc
        if self.settings.upstreams:
            try:
                await self.analysis.start()
            except OSError as exc:
                raise ConfigError(f"the analysis process cannot start: {exc}") from exc
        self.started = True
        register_shutdown_listener(self)
        if self.shared is not None:
            await self.shared.store.open()
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
        if self.analysis.running:
            # Proxied calls' last records come back from the analysis process.
            await self.analysis.sync_all(_SHARED_WAIT_S)
            for session in list(self.sessions.values()):
                self.flush_session(session)
            await self.analysis.stop()
        for task in list(self._tasks):
            task.cancel()
        self.metrics.draining.set(1)
        for event in self.lifecycle.flush(time.monotonic()):
            self.publish_status(event)
        if self.shared is not None:
            # Every Redis round trip is bounded (server/shared_join.py), so this ends; the
            # held call.completed events are then claimed, with whatever summary Redis has.
            await self.shared.wait(_SHARED_WAIT_S)
        self._apply(self.join.flush())
        if self.shared is not None:
            if not await self.shared.wait(_SHARED_WAIT_S):
                log.warning("shared_join_unfinished")
            await self.shared.store.close()
        deadline = time.monotonic() + self.settings.shutdown_deadline_s
        if not await self.wait_for_audio(self.settings.shutdown_deadline_s / 2):
            log.warning("turn_audio_unfinished", pending=len(self._audio_writes))
        report = await self.hub.drain(max(0.1, deadline - time.monotonic()))
        log.info("drained", report={k: str(v) for k, v in report.items()})
        await self.hub.close()

    # -- the stream -----------------------------------------------------------------------

    def not_started(self) -> str | None:
        """Why nothing can be recorded yet (the app's lifespan never ran), or ``None``."""
        if self.started:
            return None
        return (
            "mise_twilio's app was never started, so no sink runs and records would be lost: "
            "a host that mounts create_app() must run `async with app.state.bridge.running()` "
            "in its own lifespan (docs/embedding.md)"
        )

    async def stream(self, ws: WebSocket, receive: Receive | None = None) -> None:
        """Serve one Media Stream. ``receive``: the server's ASGI receive, to read frames with
        (``ws.receive`` when ``None``); see ``StreamEndpoint``."""
        if await self.refuse_upgrade(ws):
            return
        await ws.accept()
        await run_stream(self, ws, receive or ws.receive)

    async def refuse_upgrade(self, ws: WebSocket) -> bool:
        """Refuse a Media Stream upgrade before accept, and say so: the app was never started
        (503), it is shutting down (1013, try another replica), or ``X-Twilio-Signature`` does
        not match (403). True when refused."""
        path = ws.url.path
        if (problem := self.not_started()) is not None:
            log.error("not_started", detail=problem, path=path)
            await ws.send_denial_response(PlainTextResponse(problem, status_code=503))
            return True
        if self.shutting_down:
            await ws.close(code=1013)  # try again later: another replica takes it
            return True
        if self.signature is not None and not self.signature.check_websocket(
            path, ws.headers.get("x-twilio-signature")
        ):
            self.metrics.webhook_requests_total.labels(outcome="ws_forbidden").inc()
            log.warning("stream_forbidden", reason="bad or missing X-Twilio-Signature", path=path)
            await ws.close(code=1008)  # before accept: the handshake is refused with 403
            return True
        return False


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
        ok = (
            bridge.started and all(ready.values()) and not (bridge.draining or bridge.shutting_down)
        )
        body = {"ready": ok, "started": bridge.started, "sinks": ready}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(_: Request) -> Response:
        body, content_type = bridge.metrics.render()
        return Response(body, media_type=content_type)

    async def not_found(_: Request) -> Response:
        return PlainTextResponse("not found", status_code=404)

    async def needs_websocket(_: Request) -> Response:
        # A plain HTTP request to a stream path (a browser or curl checking the URL): 426 and
        # the Upgrade header (RFC 9110 §15.5.22), not a 404 that reads as a wrong path.
        return PlainTextResponse(
            "a Twilio Media Streams WebSocket endpoint: Twilio connects here with wss:// "
            "(<Stream url=...>); plain HTTP cannot stream\n",
            status_code=426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )

    async def ws_not_found(ws: WebSocket) -> None:
        # Starlette closes an unrouted WebSocket before accepting it, which the server answers
        # with 403: it reads as a signature failure. A wrong path is a 404.
        await ws.send_denial_response(PlainTextResponse("not found", status_code=404))

    webhook_endpoint = make_webhook_endpoint(
        signature=bridge.signature,
        lifecycle=bridge.lifecycle,
        pii=bridge.pii,
        publish=bridge.publish_status,
        on_held=bridge.status_held,
        max_body_bytes=settings.max_webhook_bytes,
        count=lambda outcome: bridge.metrics.webhook_requests_total.labels(outcome=outcome).inc(),
    )

    async def webhook(request: Request) -> Response:
        if (problem := bridge.not_started()) is not None:
            log.error("not_started", detail=problem, path=request.url.path)
            return PlainTextResponse(problem, status_code=503)
        return await webhook_endpoint(request)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with bridge.running():
            yield

    app = Starlette(
        routes=[
            WebSocketRoute(STREAM_PATH, StreamEndpoint(bridge)),
            WebSocketRoute(STREAM_PATH + "/", StreamEndpoint(bridge)),
            *proxy_routes(bridge),
            *(
                Route(path, needs_websocket, methods=["GET", "HEAD", "POST"])
                for stream_path in (STREAM_PATH, PROXY_PATH + "/{name}")
                for path in (stream_path, stream_path + "/")
            ),
            Route(WEBHOOK_PATH, webhook, methods=["GET", "POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/", not_found),
            WebSocketRoute("/{path:path}", ws_not_found),
        ],
        middleware=[Middleware(RequestLimits)],
        lifespan=lifespan,
    )
    app.state.bridge = bridge
    return app


def _ws_protocol_for(bridge: Bridge) -> type[MiseWebSocketProtocol]:
    """``MiseWebSocketProtocol`` announcing shutdown to ``bridge`` alone (several servers can
    share one process: tests, ``demo``)."""

    class BridgeWebSocketProtocol(MiseWebSocketProtocol):
        def notify_shutdown(self) -> None:
            bridge.begin_shutdown()

    return BridgeWebSocketProtocol


def uvicorn_config(
    app: Starlette, settings: Settings, *, lifespan: Literal["on", "off"] = "on"
) -> Any:
    """A ``uvicorn.Config`` for ``app``: h11 with a cap on the request head, websockets'
    sans-I/O protocol (``MiseWebSocketProtocol``), uvicorn's ``auto`` event loop (uvloop, a
    dependency where it builds), our own logging. ``lifespan="off"`` when
    the caller runs ``Bridge.running()`` around the server itself (``serve.py``)."""
    import uvicorn

    bridge = getattr(app.state, "bridge", None)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="h11",
        # h11 refuses a request head that grows past this before it is complete (the rest is
        # RequestLimits' job: h11 does not measure a head that arrives in one read).
        h11_max_incomplete_event_size=MAX_HEADER_BYTES + 4096,
        ws=_ws_protocol_for(bridge) if bridge is not None else MiseWebSocketProtocol,
        ws_max_size=WS_HARD_MAX_BYTES,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan=lifespan,
        log_level="warning",
        log_config=uvicorn_log_config(settings.log_format),
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_deadline_s) + 1,
    )
