"""A real mise-twilio server (uvicorn, websockets-sansio) on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette

from mise_twilio.config import Settings
from mise_twilio.server import STREAM_PATH, create_app, uvicorn_config


@dataclass
class LiveServer:
    http_url: str
    ws_url: str
    app: Starlette
    settings: Settings

    def records(self) -> list[dict[str, Any]]:
        path = self.settings.resolved_jsonl_path
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[LiveServer]:
    """Serve ``create_app(settings)`` until the block ends, then shut down (drains sinks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    port = sock.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield LiveServer(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}{STREAM_PATH}", app, settings
        )
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


async def wait_for_streams_to_close(app: Starlette, timeout_s: float = 10.0) -> None:
    bridge = app.state.bridge
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while bridge.sessions and loop.time() < deadline:  # noqa: ASYNC110 - polls a plain dict
        await asyncio.sleep(0.02)
