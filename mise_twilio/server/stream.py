"""The Media Stream pump: one WebSocket in, one ``CallSession`` fed, records out.

Read a frame, feed it to the session, drain the session's records into the bridge, repeat; a
watchdog ends the stream when no message came for ``idle_timeout_s`` (tunnels can swallow both
``stop`` and the socket close) and hangs up once the session expects the close. No protocol
decision is taken here: the session says when the stream has ended and with which close code.
Wall-clock time enters here (``received_at_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from starlette.types import Receive
from starlette.websockets import WebSocket, WebSocketDisconnect

from mise_twilio.core.call import CallSession
from mise_twilio.core.records import StreamStarted, StreamStopped

if TYPE_CHECKING:
    from mise_twilio.server.app import Bridge, Session

log = structlog.get_logger("mise_twilio.server")


async def run_stream(bridge: Bridge, ws: WebSocket, receive: Receive | None = None) -> None:
    """Serve one accepted Media Stream WebSocket until the stream ends. ``receive``: what to
    read frames with (the server's ASGI receive; ``ws.receive`` when ``None``)."""
    read = receive or ws.receive
    session = CallSession(bridge.params)
    with registered(bridge, session):
        await _pump(bridge, ws, read, session)


async def _pump(bridge: Bridge, ws: WebSocket, read: Receive, session: CallSession) -> None:
    state = StreamLog(log)
    last_message = time.monotonic()
    idle_s = bridge.settings.idle_timeout_s

    def count_messages() -> None:
        # ``mise_messages_total`` from the session's own tally: once a second and at the end,
        # so a long call shows up while it lasts at no per-message cost.
        for event, count in session.take_message_counts().items():
            bridge.metrics.messages_total.labels(event=event).inc(count)

    def drain() -> None:
        state.note(bridge.flush_session(session))

    async def watchdog() -> None:
        # One timer per stream, not one per message: ``wait_for`` on every receive would cost
        # more than the message itself. It also hangs up on a session that was closed from
        # outside the read loop (call.completed grace, shutdown): the read loop is blocked in
        # receive() and would otherwise wait for the peer.
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            count_messages()
            if not session.close_expected() and time.monotonic() - last_message > idle_s:
                session.close("idle", at_s=time.time())
                drain()
            if session.close_expected():
                with contextlib.suppress(Exception):
                    await ws.close(code=session.close_code())
                return

    guard = asyncio.get_running_loop().create_task(watchdog())
    histogram = bridge.metrics.message_processing_seconds
    started_at = time.monotonic()
    try:
        while not session.close_expected():
            try:
                frame = await read()
            except (WebSocketDisconnect, RuntimeError):
                bridge.end_of_input(session)
                break
            if frame["type"] == "websocket.disconnect":
                bridge.end_of_input(session)
                break
            last_message = time.monotonic()
            text = frame.get("text")
            if text is None:
                # Twilio only sends text frames; a binary one is tried as UTF-8 JSON.
                text = frame.get("bytes") or b""
            t0 = time.perf_counter()
            session.receive_text(text, received_at_s=time.time())
            histogram.observe(time.perf_counter() - t0)
            if session.rejection is not None:
                state.log.warning(
                    "stream_rejected",
                    reason=session.rejection,
                    call_sid=session.call_sid,
                    stream_sid=session.stream_sid,
                )
                break
            if session.close_expected():
                break  # ``stop``: hang up first (below), then take the stream's last records
            if session.events_pending:
                drain()
            if last_message - started_at > bridge.settings.max_call_s:
                session.close("max_duration", at_s=time.time())
    except Exception:
        # A bug must end only this call, with what it had so far delivered.
        state.log.exception("stream_failed")
        session.close("eof", at_s=time.time())
    finally:
        guard.cancel()
        count_messages()
        if session.close_expected():
            with contextlib.suppress(Exception):
                await ws.close(code=session.close_code())
        drain()
        state.log_stopped()
        with contextlib.suppress(Exception):
            await ws.close(code=session.close_code())


@contextlib.contextmanager
def registered(bridge: Bridge, session: Session) -> Iterator[None]:
    """``session`` in ``bridge.sessions`` (where shutdown and the call webhooks find it) and
    counted in ``mise_active_streams`` for as long as the block runs."""
    key = id(session)
    bridge.sessions[key] = session
    bridge.metrics.active_streams.inc()
    try:
        yield
    finally:
        bridge.sessions.pop(key, None)
        bridge.metrics.active_streams.dec()


class StreamLog:
    """A stream's log lines: ``stream_started`` (then every line bound to the call's sids) and
    ``stream_stopped``, from the records the stream published. ``context``: extra fields of
    ``stream_started``."""

    def __init__(self, logger: Any, **context: object) -> None:
        self.log = logger
        self.context = context
        self.stopped: StreamStopped | None = None

    def note(self, published: Sequence[object]) -> None:
        """Look at records just published."""
        for record in published:
            if isinstance(record, StreamStarted):
                self.log = self.log.bind(call_sid=record.call_sid, stream_sid=record.stream_sid)
                self.log.info("stream_started", tracks=record.tracks, **self.context)
            elif isinstance(record, StreamStopped):
                self.stopped = record

    def log_stopped(self) -> None:
        """``stream_stopped`` with the reason and turn count, once the stream published its
        ``stream.stopped`` record."""
        if self.stopped is not None:
            self.log.info(
                "stream_stopped",
                reason=self.stopped.reason,
                turns=sum(self.stopped.summary.turn_counts.values()),
            )
