"""A voice bot for proxy-mode tests: a real WebSocket server that talks like a team's bot.

Two modes, run as a child process (``python tests/e2e/proxy_bot.py --log PATH [--mode M]``;
it prints ``listening PORT`` once it accepts connections):

- ``answer`` (default): greets on ``start``, then answers each caller turn with recorded
  speech (the agent's turns of ``fixtures/fork_two_track.jsonl``, espeak-ng speech cut with the
  generator's ground truth plus 150 ms of the line either side), each answer in 1 s ``media``
  messages sent at once (faster than real time, as bots do) followed by a ``mark``; when the
  caller starts speaking while an answer's mark has not come back, it sends ``clear``.
  Its VAD is a plain level gate on Twilio's inbound frames (-40 dBFS, 60 ms to start, 500 ms
  of quiet to end a turn).
- ``script``: logs every frame it receives, and after ``start`` sends the frames of
  ``--script FILE`` (a JSON list of ``{"text": ...}`` or ``{"binary": base64}``), for the
  byte-for-byte relay test.
- ``deaf``: accepts the WebSocket and never reads from it (a stuck bot: its TCP window fills
  and the relay's writer to it stops), for the back-pressure test.

The log (JSON lines, flushed per line) says what the bot saw and did, on the stream clock as
the bot sees it (``at_ms``: where the latest inbound frame it received ends):
``{"kind": "start", "custom_parameters": {...}}``, ``{"kind": "answer", "answer": N, "clip":
K, "at_ms": T, "samples": S, "mark": NAME}``, ``{"kind": "clear", "answer": N, "at_ms": T}``,
``{"kind": "echo", "name": NAME, "at_ms": T}``, ``{"kind": "recv", "text"|"binary": ...}``,
``{"kind": "closed", "code": C}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[2]
CLIP_FIXTURE = "fork_two_track"
CLIP_MARGIN_MS = 150
ANSWER_ORDER = (0, 1, 3, 2, 4)
"""Clips per answer (the greeting first): the agent turns of fork_two_track in this order make
the long answer meet the caller's barge-in (see tests/e2e/test_proxy.py)."""
SPEECH_DBFS = -40.0
START_FRAMES = 3
END_FRAMES = 25
MESSAGE_SAMPLES = 8000


def load_clips() -> list[bytes]:
    """The agent turns of ``CLIP_FIXTURE`` as μ-law clips, ``CLIP_MARGIN_MS`` either side."""
    lines = (ROOT / "fixtures" / f"{CLIP_FIXTURE}.jsonl").read_text(encoding="utf-8")
    truth = json.loads(
        (ROOT / "fixtures" / f"{CLIP_FIXTURE}.expected.json").read_text(encoding="utf-8")
    )
    first = truth["first_timestamp_ms"]
    track = bytearray()
    for line in lines.splitlines():
        if '"track":"outbound"' not in line:
            continue
        media = json.loads(line)["media"]
        at = (int(media["timestamp"]) - first) * 8
        payload = base64.b64decode(media["payload"])
        if len(track) < at:
            track += b"\xff" * (at - len(track))
        track[at : at + len(payload)] = payload
    clips = []
    for turn in truth["turns"]:
        if turn["track"] == "outbound":
            lo = (turn["start_ms"] - first - CLIP_MARGIN_MS) * 8
            hi = (turn["end_ms"] - first + CLIP_MARGIN_MS) * 8
            clips.append(bytes(track[max(0, lo) : hi]))
    return clips


def level_dbfs(ulaw: bytes) -> float:
    from mise_twilio.core.audio import rms_dbfs, ulaw_to_pcm16

    return rms_dbfs(ulaw_to_pcm16(ulaw))


class Conversation:
    """One call in ``answer`` mode."""

    def __init__(self, ws: ServerConnection, clips: list[bytes], log: TextIO) -> None:
        self.ws = ws
        self.clips = clips
        self.logfile = log
        self.stream_sid: str | None = None
        self.at_ms = 0
        self.answers = 0
        self.loud_run = 0
        self.quiet_run = 0
        self.caller_speaking = False
        self.caller_spoke = False
        self.unechoed: dict[str, int] = {}  # mark name -> answer index

    def log(self, **record: Any) -> None:
        self.logfile.write(json.dumps(record) + "\n")
        self.logfile.flush()

    async def answer(self) -> None:
        index = self.answers
        self.answers += 1
        clip = self.clips[ANSWER_ORDER[index % len(ANSWER_ORDER)]]
        name = f"answer-{index}"
        self.log(
            kind="answer",
            answer=index,
            clip=ANSWER_ORDER[index % len(ANSWER_ORDER)],
            at_ms=self.at_ms,
            samples=len(clip),
            mark=name,
        )
        for i in range(0, len(clip), MESSAGE_SAMPLES):
            payload = base64.b64encode(clip[i : i + MESSAGE_SAMPLES]).decode()
            await self.send({"event": "media", "media": {"payload": payload}})
        await self.send({"event": "mark", "mark": {"name": name}})
        self.unechoed[name] = index

    async def send(self, body: dict[str, Any]) -> None:
        await self.ws.send(
            json.dumps({"event": body["event"], "streamSid": self.stream_sid, **body})
        )

    async def on_message(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "start":
            self.stream_sid = message["streamSid"]
            self.log(kind="start", custom_parameters=message["start"].get("customParameters"))
            await self.answer()  # the greeting
        elif event == "media":
            media = message["media"]
            self.at_ms = int(media["timestamp"]) + len(base64.b64decode(media["payload"])) // 8
            await self.hear(level_dbfs(base64.b64decode(media["payload"])) > SPEECH_DBFS)
        elif event == "mark":
            name = message["mark"]["name"]
            self.log(kind="echo", name=name, at_ms=self.at_ms)
            self.unechoed.pop(name, None)

    async def hear(self, loud: bool) -> None:
        if not self.caller_speaking:
            self.loud_run = self.loud_run + 1 if loud else 0
            if self.loud_run >= START_FRAMES:
                self.caller_speaking, self.caller_spoke, self.quiet_run = True, True, 0
                if self.unechoed:  # the caller barged in on an answer still playing
                    answer = max(self.unechoed.values())
                    self.log(kind="clear", answer=answer, at_ms=self.at_ms)
                    await self.send({"event": "clear"})
            return
        self.quiet_run = 0 if loud else self.quiet_run + 1
        if self.quiet_run >= END_FRAMES:
            self.caller_speaking, self.loud_run = False, 0
            await self.answer()


async def answer_mode(ws: ServerConnection, clips: list[bytes], log: TextIO) -> None:
    talk = Conversation(ws, clips, log)
    try:
        async for text in ws:
            if isinstance(text, str):
                await talk.on_message(json.loads(text))
    except ConnectionClosed:
        pass
    talk.log(kind="closed", code=ws.close_code)


async def script_mode(ws: ServerConnection, script: list[dict[str, str]], log: TextIO) -> None:
    def write(record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    pending = list(script)
    try:
        async for message in ws:
            if isinstance(message, str):
                write({"kind": "recv", "text": message})
                if '"event":"start"' in message:
                    frames, pending = pending, []
                    for frame in frames:
                        if "text" in frame:
                            await ws.send(frame["text"])
                        else:
                            await ws.send(base64.b64decode(frame["binary"]))
            else:
                write({"kind": "recv", "binary": base64.b64encode(message).decode()})
    except ConnectionClosed:
        pass
    write({"kind": "closed", "code": ws.close_code})


async def main_async(args: argparse.Namespace, log: TextIO) -> None:
    clips = load_clips() if args.mode == "answer" else []
    script = json.loads(args.script.read_text()) if args.script else []

    async def handler(ws: ServerConnection) -> None:
        log.write(
            json.dumps(
                {
                    "kind": "connection",
                    "path": ws.request.path if ws.request else None,
                    "headers": dict(ws.request.headers) if ws.request else {},
                }
            )
            + "\n"
        )
        log.flush()
        if args.mode == "answer":
            await answer_mode(ws, clips, log)
        elif args.mode == "script":
            await script_mode(ws, script, log)
        else:
            await ws.wait_closed()

    max_queue = 1 if args.mode == "deaf" else 16
    async with serve(
        handler, "127.0.0.1", args.port, max_size=None, compression=None, max_queue=max_queue
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.Future()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="a voice bot for proxy-mode tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--mode", choices=["answer", "script", "deaf"], default="answer")
    parser.add_argument("--script", type=Path)
    args = parser.parse_args(argv)
    with open(args.log, "a", encoding="utf-8") as log:
        asyncio.run(main_async(args, log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
