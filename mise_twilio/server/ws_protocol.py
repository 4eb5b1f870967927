"""uvicorn's websockets sans-I/O protocol with what the bridge needs from it.

``MiseWebSocketProtocol`` is ``uvicorn.protocols.websockets.websockets_sansio_impl.
WebSocketsSansIOProtocol`` (websockets' ``ServerProtocol`` under uvicorn's asyncio transport)
with five changes:

- **Shutdown is announced first.** On SIGTERM uvicorn stops listening, calls ``shutdown()`` on
  every open connection (a WebSocket gets close 1012 and its app sees ``websocket.disconnect``),
  waits for them up to ``timeout_graceful_shutdown``, and only then runs the lifespan shutdown.
  The protocol marks the bridges as shutting down in that first step, so the read loop ends
  those streams with reason ``shutdown`` (not the peer's ``eof``) and refuses new ones.
- **A refused handshake is answered.** websockets refuses a request line or header line over
  8 KiB (414, 431) or more than 128 headers (431; ``websockets.http11.MAX_LINE_LENGTH`` /
  ``MAX_NUM_HEADERS``) by queueing the response in ``data_to_send()`` without an event;
  uvicorn (≤ 0.54) only writes on events, so the client waited forever. Here the response is
  sent and the connection closed.
- **Messages before a fatal frame are kept.** A frame over ``ws_max_size`` fails the
  connection (1009); uvicorn also dropped every message that arrived in the same read before
  it. Here they reach the app first, so the call keeps what was said before the bad frame.
- **Reads pause only when the app falls behind.** uvicorn pauses the transport after queueing
  every message and resumes it when the app takes it: two event-loop reader changes
  (``epoll_ctl`` on Linux) per Twilio media message, 50 times a second per track, about a
  tenth of a bare server's CPU per message (``bench/load.py``, ``asgi`` against
  ``asgi-buffered``). Here reads pause once ``READ_HIGH_WATER_MESSAGES`` messages wait for
  the app and resume when it has taken them all (uvicorn's own resume rule): back-pressure
  is kept, bounded by that many frames per stream.
- **A text frame that is not UTF-8 is a bad message, not a crash.** uvicorn logs a traceback
  and closes 1007. Here it reaches the app as a binary message: the session reports it as a
  ``diagnostic`` (``invalid_json``) and the call goes on, as for any other malformed message
  (a garbled frame must not end a call, docs/architecture.md).

Hosts that embed the bridge run uvicorn with it: ``uvicorn host:app --ws
mise_twilio.server.ws_protocol:MiseWebSocketProtocol`` (docs/embedding.md).
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import structlog
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = [
    "READ_HIGH_WATER_MESSAGES",
    "MiseWebSocketProtocol",
    "ShutdownListener",
    "register_shutdown_listener",
]

READ_HIGH_WATER_MESSAGES = 16
"""Messages queued for the app before the socket stops being read (at most this many frames
of ``ws_max_size`` each wait in memory per stream)."""

log = structlog.get_logger("mise_twilio.server")


class ShutdownListener(Protocol):
    def begin_shutdown(self) -> None: ...


_listeners: weakref.WeakSet[ShutdownListener] = weakref.WeakSet()


def register_shutdown_listener(listener: ShutdownListener) -> None:
    """Have ``listener.begin_shutdown()`` called when a ``MiseWebSocketProtocol`` connection
    is told the server shuts down (held weakly; a started ``Bridge`` registers itself)."""
    _listeners.add(listener)


class MiseWebSocketProtocol(WebSocketsSansIOProtocol):
    """``WebSocketsSansIOProtocol`` with the changes in the module docstring. Pass the class as
    ``uvicorn.Config(ws=...)``."""

    def notify_shutdown(self) -> None:
        """Tell the bridges shutdown began (every registered one; ``uvicorn_config`` binds a
        subclass to its own bridge)."""
        for listener in list(_listeners):
            listener.begin_shutdown()

    def shutdown(self) -> None:
        self.notify_shutdown()
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        # Frames parsed before a protocol error (a frame over ``ws_max_size``: 1009) are the
        # peer's messages all the same; uvicorn drops them when they share a read with it.
        self.handle_events()
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()
            return
        if (
            not self.handshake_initiated
            and self.conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            log.warning("stream_handshake_refused", reason=str(self.conn.handshake_exc)[:200])
            self.handshake_complete = True
            self.close_sent = True
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # The denial response is on the wire: without this uvicorn logs "ASGI callable
            # returned without completing handshake" for every 404/503 (uvicorn PR #3138).
            self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            if not data.isascii():  # Twilio's JSON is ASCII: the full check only for the rest
                try:
                    data.decode()
                except UnicodeDecodeError:
                    self.curr_msg_data_type = "bytes"  # to the app as bytes: a diagnostic there
        if self.read_paused:
            super().send_receive_event_to_app()
            return
        # ``read_paused`` set around the call keeps the parent from pausing after this message
        self.read_paused = True
        super().send_receive_event_to_app()
        if self.queue.qsize() >= READ_HIGH_WATER_MESSAGES:
            self.transport.pause_reading()  # resumed by receive() once the queue is empty
        else:
            self.read_paused = False
