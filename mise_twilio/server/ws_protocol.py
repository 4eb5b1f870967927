"""uvicorn's websockets sans-I/O protocol, pausing reads only when the app falls behind.

uvicorn's ``WebSocketsSansIOProtocol`` pauses the transport after queueing every message and
resumes it when the app takes it: two event-loop reader changes (``epoll_ctl`` on Linux) per
Twilio media message, 50 times a second per track, about a tenth of a bare server's CPU per
message (``bench/load.py``, ``asgi`` against ``asgi-buffered``). Here reads pause once
``READ_HIGH_WATER_MESSAGES`` messages wait for the app, and resume when it has taken them all
(uvicorn's own resume rule): back-pressure is kept, bounded by that many frames per stream.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

READ_HIGH_WATER_MESSAGES = 16
"""Messages queued for the app before the socket stops being read (at most this many frames
of ``ws_max_size`` each wait in memory per stream)."""


class BufferedWebSocketsSansIO(WebSocketsSansIOProtocol):
    """``WebSocketsSansIOProtocol`` with read flow control by a high-water mark."""

    def send_receive_event_to_app(self) -> None:
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
