"""``mise-twilio serve``: check the settings, bind the port, start the bridge, serve.

Everything a user can get wrong is found before anything starts and raised as one
``ConfigError`` (the CLI prints it as one line, exit 2): an auth token without a public URL
(``create_app``), an unwritable JSONL file, data or spool directory (``check_sink_paths``), a
port that is taken or not ours to bind. The bridge is started and stopped here, around
uvicorn (whose lifespan is off), so a sink that cannot start is our error message, not a
traceback from inside the ASGI lifespan. ``listening`` is logged once the port is bound and
the sinks run, with the port actually bound (``MISE_PORT=0`` picks a free one).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket

import structlog
import uvicorn

from mise_twilio import __version__
from mise_twilio.core.errors import ConfigError
from mise_twilio.server.app import STREAM_PATH, WEBHOOK_PATH, Bridge, create_app
from mise_twilio.server.config import Settings
from mise_twilio.server.drain import DrainingServer
from mise_twilio.server.sinks import check_sink_paths

__all__ = ["bind_socket", "serve"]

log = structlog.get_logger("mise_twilio.server")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` has a colon), with
    ``SO_REUSEADDR`` as uvicorn sets it. Raises ``ConfigError`` naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} (MISE_HOST/MISE_PORT): "
            f"{os.strerror(exc.errno) if exc.errno else exc}"
        ) from None


class _Server(DrainingServer):
    """The draining server (SIGTERM: unready, drain, then stop) that logs ``listening`` once
    it accepts connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not sockets:
            return
        host, port = sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "listening",
            url=f"http://{shown}:{port}",
            stream_path=STREAM_PATH,
            webhook_path=WEBHOOK_PATH,
            version=__version__,
        )


async def _serve(server: uvicorn.Server, bridge: Bridge, sock: socket.socket) -> None:
    async with bridge.running():
        await server.serve(sockets=[sock])


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT (then: streams end as ``shutdown``, sinks drain).

    Raises ``ConfigError`` for settings that cannot work (see the module docstring)."""
    check_sink_paths(settings)
    app = create_app(settings)
    bridge: Bridge = app.state.bridge
    sock = bind_socket(settings.host, settings.port)
    server = _Server(app, settings, lifespan="off")  # the bridge runs around it: _serve
    # uvicorn re-raises the signal that stopped it once its own graceful shutdown is over,
    # before the bridge's (streams closed, sinks drained) has run: with the default actions the
    # process would die "killed by SIGTERM" (143) or raise KeyboardInterrupt out of the loop
    # and skip the drain. No-op handlers make that re-raise harmless (uvicorn installs its own
    # while it serves, so these only see the re-raise), and the exit status is 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    # What imports and start-up made (pydantic schemas, numpy, the app) lives for the whole
    # process: frozen, it leaves the collector's generations, and a full collection, which
    # stops every call on the event loop, walks only the calls' own objects.
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(_serve(server, bridge, sock))
    finally:
        sock.close()
