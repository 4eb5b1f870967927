"""A real mise_twilio server on a loopback port, for end-to-end tests.

``running_server(settings)`` binds a free ``127.0.0.1`` socket, serves ``create_app(settings)``
with uvicorn in-process (an asyncio task, the way ``mise-twilio demo`` does) and yields
``(base_http_url, base_ws_url, app)``. Leaving the block stops the server: the lifespan shutdown
closes open streams and drains the sinks, so the JSONL file is complete afterwards
(``read_jsonl(settings.resolved_jsonl_path)``).

    async with running_server(settings) as (http_url, ws_url, app):
        await replay_websocket(lines, ws_url + STREAM_PATH, speed=0)
    records = read_jsonl(settings.resolved_jsonl_path)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from mise_twilio.server.app import create_app, uvicorn_config
from mise_twilio.server.config import Settings

__all__ = ["read_jsonl", "running_server", "wait_until"]

START_TIMEOUT_S = 10.0


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, **create_kwargs: Any
) -> AsyncIterator[tuple[str, str, Starlette]]:
    """Serve ``create_app(settings, **create_kwargs)`` on a free loopback port.

    Yields ``("http://127.0.0.1:PORT", "ws://127.0.0.1:PORT", app)``; ``app.state.bridge`` is
    the ``Bridge``. On exit: ``should_exit``, then the server's shutdown (sinks drained) is
    awaited. Raises whatever the server raised while starting.
    """
    app = create_app(settings, **create_kwargs)
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, settings))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not server.started:
            if serving.done():
                serving.result()  # raises the startup error
                raise RuntimeError("uvicorn exited before it started")
            if loop.time() > deadline:
                raise TimeoutError("uvicorn did not start")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(serving, timeout=settings.shutdown_deadline_s + 5.0)
        finally:
            sock.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object line of ``path`` (``[]`` when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


async def wait_until(predicate: Any, timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate()`` every 10 ms until true; ``AssertionError`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, f"{what} not met within {timeout_s} s"
        await asyncio.sleep(0.01)
