"""docs/embedding.md for real: its ``host.py`` (a FastAPI app with mise_twilio mounted under
``/mise``) runs under ``uvicorn`` as a child process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from server_harness import read_jsonl
from support import ROOT, fixture_lines, status_callback
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mise_twilio.server.replay_client import replay_websocket, sign_websocket

PUBLIC = "https://ingest.example.com"
TOKEN = "0123456789abcdef0123456789abcdef"
PREFIX = "/mise"
HANG_GUARD_S = 60.0


def host_source() -> str:
    """The ``host.py`` block of docs/embedding.md."""
    text = (ROOT / "docs" / "embedding.md").read_text()
    blocks: list[str] = re.findall(r"```python\n(.*?)```", text, re.S)
    (source,) = [b for b in blocks if b.startswith("# host.py")]
    return source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Host:
    def __init__(self, tmp_path: Path, source: str) -> None:
        (tmp_path / "host.py").write_text(source)
        self.port = free_port()
        self.data_dir = tmp_path / "data"
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}{PREFIX}/v1/stream/twilio"
        self.log_path = tmp_path / "host.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
        env |= {
            "MISE_DATA_DIR": str(self.data_dir),
            "MISE_PUBLIC_URL": PUBLIC,
            "MISE_TWILIO_AUTH_TOKEN": TOKEN,
            "MISE_SHUTDOWN_DEADLINE_S": "5",
            "PYTHONPATH": str(tmp_path) + os.pathsep + str(ROOT),
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "host:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--ws",
                    "mise_twilio.server.ws_protocol:MiseWebSocketProtocol",
                ],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def started(self) -> None:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as client:
            while True:
                assert self.process.poll() is None, self.log()
                try:
                    if (await client.get(self.http + "/hello")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, self.log()
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@asynccontextmanager
async def host(tmp_path: Path, source: str) -> AsyncIterator[Host]:
    h = Host(tmp_path, source)
    try:
        await h.started()
        yield h
    finally:
        h.stop()


def signed_ws_headers(path: str) -> dict[str, str]:
    return sign_websocket(PUBLIC.replace("https", "wss") + path, TOKEN)


def signed_form(path: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(PUBLIC + path, form)}


async def test_mounted_app_records_checks_signatures_and_shuts_down(tmp_path: Path) -> None:
    lines = fixture_lines("fork_two_track")
    stream_path = PREFIX + "/v1/stream/twilio"
    webhook_path = PREFIX + "/v1/webhook/twilio"
    async with host(tmp_path, host_source()) as h:
        async with httpx.AsyncClient(base_url=h.http) as client:
            assert (await client.get(PREFIX + "/readyz")).json()["started"] is True
            # Signed for the URL under the prefix: accepted. Signed for the unprefixed URL
            # (what a host that forgot the mount would compute): refused.
            form = status_callback("initiated", 0)
            ok = await client.post(webhook_path, data=form, headers=signed_form(webhook_path, form))
            assert ok.status_code == 204, ok.text
            form = status_callback("ringing", 1)
            wrong = await client.post(
                webhook_path, data=form, headers=signed_form("/v1/webhook/twilio", form)
            )
            assert wrong.status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            await replay_websocket(lines, h.ws, headers=signed_ws_headers("/v1/stream/twilio"))
        assert refused.value.response.status_code == 403

        # A whole call through the prefix.
        stats = await replay_websocket(lines, h.ws, speed=0, headers=signed_ws_headers(stream_path))
        assert stats.close_code == 1000

        # A second call, cut by SIGTERM half-way: it ends as ``shutdown``.
        head = lines[: len(lines) // 2]
        async with connect(h.ws, additional_headers=signed_ws_headers(stream_path)) as ws:
            for line in head:
                await ws.send(line)
            await asyncio.sleep(1.0)  # let the server read what was sent
            h.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(ws.wait_closed(), HANG_GUARD_S)
            assert ws.close_code == 1012
        await asyncio.to_thread(h.process.wait, HANG_GUARD_S)

    records = read_jsonl(h.data_dir / "events.jsonl")
    stopped = [r for r in records if r["type"] == "stream.stopped"]
    assert [s["reason"] for s in stopped] == ["stop", "shutdown"], h.log()
    assert len([r for r in records if r["type"] == "turn"]) >= 10
    assert [r["type"] for r in records if r["type"].startswith("call.")] == ["call.initiated"]
    assert "Traceback" not in h.log()


async def test_mounted_without_its_lifespan_refuses_loudly(tmp_path: Path) -> None:
    source = host_source().replace(
        "async with mise.state.bridge.running():  # sinks start here, drain on shutdown\n"
        "        yield",
        "yield  # forgot to start the bridge",
    )
    assert "forgot" in source
    lines = fixture_lines("connect_inbound")
    async with host(tmp_path, source) as h:
        with pytest.raises(InvalidStatus) as refused:
            await replay_websocket(
                lines, h.ws, headers=signed_ws_headers(PREFIX + "/v1/stream/twilio")
            )
        assert refused.value.response.status_code == 503
        async with httpx.AsyncClient(base_url=h.http) as client:
            path = PREFIX + "/v1/webhook/twilio"
            form = status_callback("initiated", 0)
            response = await client.post(path, data=form, headers=signed_form(path, form))
            assert response.status_code == 503
            assert "docs/embedding.md" in response.text
            ready = await client.get(PREFIX + "/readyz")
            assert ready.status_code == 503 and ready.json()["started"] is False
        h.stop()
    # structlog's default console rendering (the host did not configure logging)
    errors = [line for line in h.log().splitlines() if "not_started" in line]
    assert len(errors) == 2 and all("error" in line for line in errors), h.log()
    assert read_jsonl(h.data_dir / "events.jsonl") == []


async def test_mounted_at_the_root_next_to_host_routes(tmp_path: Path) -> None:
    """The page's other claim: mounted at ``/`` after the host's own routes, the bridge serves
    its paths unprefixed and the host's routes still answer (in-process, over ASGI)."""
    from fastapi import FastAPI

    from mise_twilio.server.app import WEBHOOK_PATH, create_app
    from mise_twilio.server.config import Settings

    mise = create_app(Settings(data_dir=tmp_path / "data"))
    host = FastAPI()

    @host.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    host.mount("/", mise)
    transport = httpx.ASGITransport(app=host)
    async with (
        mise.state.bridge.running(),
        httpx.AsyncClient(transport=transport, base_url="http://host") as client,
    ):
        assert (await client.get("/hello")).json() == {"hello": "world"}
        assert (await client.get("/readyz")).json()["started"] is True
        response = await client.post(WEBHOOK_PATH, data=status_callback("initiated", 0))
        assert response.status_code == 204
    records = read_jsonl(tmp_path / "data" / "events.jsonl")
    assert [r["type"] for r in records] == ["call.initiated"]
