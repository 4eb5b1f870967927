"""server/ws_protocol.py: reads pause only once the app falls behind, and nothing is lost."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState
from websockets.asyncio.client import connect

from mise_twilio.server.ws_protocol import READ_HIGH_WATER_MESSAGES, MiseWebSocketProtocol


async def test_reads_pause_past_the_high_water_mark_and_every_message_arrives_in_order() -> None:
    n = 5 * READ_HIGH_WATER_MESSAGES
    go = asyncio.Event()
    got: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()  # a slow app: the messages pile up meanwhile
        while len(got) < n:
            message = await receive()
            got.append(message["text"])
        await send({"type": "websocket.close", "code": 1000})

    config = uvicorn.Config(app, ws=MiseWebSocketProtocol, lifespan="off", log_level="error")
    config.load()
    state = ServerState()
    protocols: list[MiseWebSocketProtocol] = []

    def factory() -> MiseWebSocketProtocol:
        proto = MiseWebSocketProtocol(config=config, server_state=state, app_state={})
        protocols.append(proto)
        return proto

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            # one message at a time, each read on its own: under the mark reads stay on
            for i in range(READ_HIGH_WATER_MESSAGES - 1):
                await ws.send(f"m{i}")
                await asyncio.sleep(0.005)
            (proto,) = protocols
            assert proto.queue.qsize() == READ_HIGH_WATER_MESSAGES - 1
            assert not proto.read_paused
            for i in range(READ_HIGH_WATER_MESSAGES - 1, n):
                await ws.send(f"m{i}")
            for _ in range(200):
                if proto.read_paused:
                    break
                await asyncio.sleep(0.005)
            assert proto.read_paused  # the app is behind: the socket is no longer read
            go.set()
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        assert got == [f"m{i}" for i in range(n)]
        assert not proto.read_paused
    finally:
        server.close()
        await server.wait_closed()
