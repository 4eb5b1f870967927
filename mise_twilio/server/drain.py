"""SIGTERM in the order a load balancer needs: unready first, then stop.

uvicorn on its own stops listening and closes every WebSocket (1012) the moment SIGTERM
arrives. Behind a load balancer that is too early: the balancer still routes new streams and
webhooks here until its health check has seen the replica go away, and a Twilio stream that
cannot connect is not retried (docs/protocol.md §7). ``DrainingServer`` puts two phases first:

1. **drain delay** (``MISE_DRAIN_DELAY_S``): ``/readyz`` answers 503, everything else is served
   as usual, new streams included, so the balancer's check (interval × fall count) takes the
   replica out of rotation while nothing is refused;
2. **stream grace** (``MISE_STREAM_GRACE_S``): open streams may end on their own (Twilio's
   ``stop``); it ends early once none is open;
3. then uvicorn's own shutdown: stop listening, close the streams still open (1012, records
   end with reason ``shutdown``), publish held events, drain the sinks within
   ``MISE_SHUTDOWN_DEADLINE_S`` (``Bridge.shutdown``).

A second SIGTERM, or SIGINT, skips what is left of 1 and 2. With both settings at 0 (the
default) SIGTERM goes straight to 3, as plain uvicorn does.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Literal

import structlog
import uvicorn
from starlette.applications import Starlette

from mise_twilio.server.app import Bridge, uvicorn_config
from mise_twilio.server.config import Settings

__all__ = ["DrainingServer"]

log = structlog.get_logger("mise_twilio.server")


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` for ``create_app(settings)`` whose SIGTERM drains first (module
    docstring). ``app.state.bridge`` must be the app's ``Bridge``."""

    def __init__(
        self, app: Starlette, settings: Settings, *, lifespan: Literal["on", "off"] = "on"
    ) -> None:
        """``lifespan``: uvicorn's, ``off`` when the caller runs the bridge around the server
        (``serve.py``)."""
        super().__init__(uvicorn_config(app, settings, lifespan=lifespan))
        self.bridge: Bridge = app.state.bridge
        self.drain_delay_s = settings.drain_delay_s
        self.stream_grace_s = settings.stream_grace_s
        self._sigterm_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: set a flag only (no logging, no metric locks); on_tick acts on it.
        draining = self.drain_delay_s > 0 or self.stream_grace_s > 0
        if sig == signal.SIGTERM and draining and self._sigterm_at is None:
            self._sigterm_at = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._sigterm_at is not None and not self.should_exit:
            self.bridge.begin_drain()
            elapsed_s = time.monotonic() - self._sigterm_at
            if elapsed_s >= self.drain_delay_s and (
                not self.bridge.sessions or elapsed_s >= self.drain_delay_s + self.stream_grace_s
            ):
                log.info(
                    "drain_over",
                    elapsed_s=round(elapsed_s, 2),
                    open_streams=len(self.bridge.sessions),
                )
                self.should_exit = True
        return await super().on_tick(counter)
