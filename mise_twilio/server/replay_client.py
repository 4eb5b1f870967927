"""Act as Twilio: send a recorded Media Stream to a live server over a real WebSocket.

Lines go out as text frames exactly as recorded (garbage included), paced by
``media.timestamp`` or flat out; the upgrade can be signed like Twilio signs it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

_YIELD_EVERY = 64  # messages between event-loop yields at --speed 0


def media_timestamp_ms(line: str) -> int | None:
    """``media.timestamp`` of a media line, or ``None`` (other events, garbage)."""
    if '"media"' not in line:
        return None
    try:
        message = json.loads(line)
        return int(message["media"]["timestamp"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class ReplayStats:
    messages_sent: int
    wall_s: float
    media_span_ms: int
    close_code: int | None


async def replay_websocket(
    lines: list[str],
    url: str,
    *,
    speed: float = 1.0,
    headers: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayStats:
    """Act as Twilio: open ``url``, send each line as a text frame, close.

    ``speed``: 1.0 paces media by ``media.timestamp`` in real time, N is N× faster, 0 sends as
    fast as possible. ``headers`` (e.g. ``X-Twilio-Signature``) go on the upgrade request.
    ``progress(messages_sent, media_ms)`` is called after each message (``media_ms``: the
    stream time sent so far, from the first media timestamp).

    Raises ``websockets.exceptions.InvalidStatus`` when the server refuses the handshake,
    ``InvalidURI`` for a URL that is not ws:// or wss://, ``OSError`` when it cannot connect.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    first_ts: int | None = None
    last_ts = 0
    sent = 0
    started = time.perf_counter()
    close_code: int | None = None
    async with connect(
        url, additional_headers=headers or {}, max_size=None, compression=None, ping_interval=None
    ) as ws:
        try:
            for line in lines:
                ts = media_timestamp_ms(line)
                if ts is not None:
                    if first_ts is None:
                        first_ts = ts
                    last_ts = max(last_ts, ts)
                    if speed > 0:
                        due = started + (ts - first_ts) / 1000.0 / speed
                        delay = due - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                await ws.send(line)
                sent += 1
                if progress is not None:
                    progress(sent, last_ts - first_ts if first_ts is not None else 0)
                if speed <= 0 and sent % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        except ConnectionClosed as exc:
            close_code = exc.rcvd.code if exc.rcvd else None
        await ws.close()
        if close_code is None and ws.close_code is not None:
            close_code = ws.close_code
    return ReplayStats(
        messages_sent=sent,
        wall_s=time.perf_counter() - started,
        media_span_ms=(last_ts - first_ts) if first_ts is not None else 0,
        close_code=close_code,
    )


def sign_websocket(url: str, auth_token: str) -> dict[str, str]:
    """``X-Twilio-Signature`` for a WebSocket upgrade to ``url`` (wss://…, empty params), as
    Twilio computes it (docs/protocol.md §6), with the twilio package's ``RequestValidator``."""
    from twilio.request_validator import RequestValidator

    return {"X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, {})}
