"""``mise-twilio``: serve | demo | replay | twiml | schema | config.

Settings come from ``MISE_*`` environment variables (``config.Settings``); flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mise_twilio import __version__
from mise_twilio.core.records import AnyRecord, StreamStopped, TurnRecord, json_schema_text, to_json


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mise-twilio`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


# -- serve ------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Any:
    from mise_twilio.server.config import Settings

    overrides = {
        key: value
        for key in ("host", "port", "public_url", "data_dir", "log_level", "log_format")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mise_twilio.server.app import create_app, uvicorn_config
    from mise_twilio.server.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    print(
        f"mise-twilio {__version__} listening on http://{settings.host}:{settings.port} "
        f"(stream: /v1/stream/twilio, webhooks: /v1/webhook/twilio)",
        file=sys.stderr,
    )
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is over; with
    # SIGTERM's default action the process would then die "killed by SIGTERM" (143) after a
    # clean drain. A no-op handler makes that re-raise harmless (uvicorn installs its own
    # handlers on start, so this one only ever sees the re-raise), and the exit status is 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    return 0


# -- demo -------------------------------------------------------------------------------------


def _free_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


async def _demo(args: argparse.Namespace) -> int:
    import uvicorn

    from mise_twilio.replay import read_fixture
    from mise_twilio.server.app import STREAM_PATH, create_app, uvicorn_config
    from mise_twilio.server.config import Settings
    from mise_twilio.server.logs import configure_logging
    from mise_twilio.server.replay_client import replay_websocket

    configure_logging("warning", "console")
    settings = Settings(host="127.0.0.1", port=0, data_dir=args.data_dir or Path("./mise-data"))
    fixture = args.fixture or resources.files("mise_twilio") / "data/demo_fork_two_track.jsonl"
    lines = read_fixture(str(fixture))
    sock = _free_socket(settings.host)
    port = sock.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    url = f"ws://127.0.0.1:{port}{STREAM_PATH}"
    print(f"server on http://127.0.0.1:{port}; replaying {Path(str(fixture)).name} to {url}")
    stats = await replay_websocket(lines, url, speed=args.speed)
    print(
        f"sent {stats.messages_sent} messages ({stats.media_span_ms / 1000:.1f} s of call audio) "
        f"in {stats.wall_s:.2f} s"
    )
    # Let the server finish the stream, then stop it: shutdown drains the sinks.
    bridge = app.state.bridge
    for _ in range(200):
        if not bridge.sessions:
            break
        await asyncio.sleep(0.05)
    server.should_exit = True
    await serving
    sock.close()
    path = settings.resolved_jsonl_path
    stream_sid = _stream_sid(lines)
    records = [r for r in _read_records(path) if r.stream_sid == stream_sid]
    print()
    _print_table(records, sys.stdout)
    print(f"\n{len(records)} records of this call appended to {path.resolve()}")
    return 0 if any(isinstance(r, TurnRecord) for r in records) else 1


def _stream_sid(lines: list[str]) -> str | None:
    for line in lines[:5]:
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("event") == "start":
                sid = message.get("streamSid")
                return sid if isinstance(sid, str) else None
    return None


def _read_records(path: Path) -> list[AnyRecord]:
    from mise_twilio.core.records import from_json

    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                records.append(from_json(line))
    return records


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


# -- replay -----------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from mise_twilio.replay import iter_fixture, iter_replay, read_fixture
    from mise_twilio.server.replay_client import replay_websocket, sign_websocket

    if args.to:
        lines = read_fixture(args.path)
        headers: dict[str, str] = {}
        if args.auth_token:
            signed_url = args.sign_url or args.to
            headers = sign_websocket(signed_url, args.auth_token)
        stats = asyncio.run(replay_websocket(lines, args.to, speed=args.speed, headers=headers))
        print(
            json.dumps(
                {
                    "messages_sent": stats.messages_sent,
                    "wall_s": round(stats.wall_s, 3),
                    "media_span_ms": stats.media_span_ms,
                    "speed_x_realtime": round(stats.media_span_ms / 1000 / stats.wall_s, 1)
                    if stats.wall_s > 0
                    else None,
                    "close_code": stats.close_code,
                }
            )
        )
        return 0
    # offline: the file is read line by line and records go out as they come
    records = iter_replay(iter_fixture(args.path))
    if args.format == "jsonl":
        out = sys.stdout
        for record in records:
            out.write(to_json(record))
            out.write("\n")
    else:
        _print_table(list(records), sys.stdout)
    return 0


def _fmt(value: object, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else ""
    elif isinstance(value, float):
        text = f"{value:.1f}"
    else:
        text = str(value)
    return text.rjust(width)


def _print_table(records: Iterable[AnyRecord], out: Any) -> None:
    turns = sorted((r for r in records if isinstance(r, TurnRecord)), key=lambda t: t.start_ms)
    header = (
        f"{'#':>3} {'speaker':<7} {'start_s':>8} {'end_s':>8} {'dur_ms':>7} {'speech':>7} "
        f"{'end_reason':<12} {'gap_ms':>7} {'ovl_ms':>6} {'barge':>5} {'intr':>5} {'bchan':>5} "
        f"{'f0_hz':>6} {'dBFS':>6} {'rate':>5}"
    )
    out.write(header + "\n")
    for t in turns:
        out.write(
            f"{t.index:>3} {t.speaker:<7} {t.start_ms / 1000:>8.2f} {t.end_ms / 1000:>8.2f} "
            f"{t.duration_ms:>7} {t.speech_ms:>7} {t.end_reason:<12} "
            f"{_fmt(t.gap_before_ms, 7)} {_fmt(t.overlap_ms, 6)} {_fmt(t.barge_in, 5)} "
            f"{_fmt(t.interrupted, 5)} {_fmt(t.backchannel, 5)} "
            f"{_fmt(t.pitch.median_hz if t.pitch else None, 6)} "
            f"{_fmt(t.energy.mean_dbfs if t.energy else None, 6)} "
            f"{_fmt(t.speech_rate_hz, 5)}\n"
        )
    others = [r for r in records if not isinstance(r, TurnRecord)]
    diagnostics = [r for r in others if r.type == "diagnostic"]
    for d in diagnostics:
        out.write(f"diagnostic {getattr(d, 'code', '')}: {getattr(d, 'message', '')}\n")
    for r in others:
        if isinstance(r, StreamStopped):
            s = r.summary
            out.write(
                f"stream stopped ({r.reason}): {s.duration_ms / 1000:.1f} s, talk {s.talk_ms}, "
                f"turns {s.turn_counts}, overlap {s.overlap_ms} ms, "
                f"interruptions {s.interruptions}, lost {s.lost_ms} ms\n"
            )


# -- twiml ------------------------------------------------------------------------------------


def cmd_twiml(args: argparse.Namespace) -> int:
    from twilio.twiml.voice_response import Connect, Start, VoiceResponse

    if not args.url.startswith("wss://"):
        print("error: --url must be wss:// (Twilio error 31922)", file=sys.stderr)
        return 2
    if "?" in args.url:
        print("error: Twilio drops query strings from stream URLs; use --api-key", file=sys.stderr)
        return 2
    response = VoiceResponse()
    stream_kwargs: dict[str, str] = {"url": args.url}
    if args.status_callback:
        stream_kwargs["status_callback"] = args.status_callback
        stream_kwargs["status_callback_method"] = "POST"
    if args.name:
        stream_kwargs["name"] = args.name
    if args.mode == "fork":
        verb = Start()
        stream = verb.stream(track="both_tracks", **stream_kwargs)
    else:
        verb = Connect()
        stream = verb.stream(**stream_kwargs)  # <Connect> takes the inbound track only
    if args.api_key:
        stream.parameter(name="api_key", value=args.api_key)
    response.append(verb)
    print(str(response))
    if args.mode == "fork":
        print(
            "<!-- <Start> does not block: put your existing call flow after it, or the call "
            "ends here. -->"
        )
    return 0


# -- schema -----------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    from mise_twilio.server.config import describe_settings

    rows = describe_settings()
    if args.format == "markdown":
        print("| variable | type | default | unit | meaning |")
        print("|---|---|---|---|---|")
        for r in rows:
            default = r.default.replace("|", "\\|")
            kind = r.type.replace("|", "\\|")
            print(f"| `{r.env}` | {kind} | `{default}` | {r.unit} | {r.description} |")
        return 0
    width = max(len(r.env) for r in rows)
    for r in rows:
        print(f"{r.env:<{width}}  {r.type:<20}  {r.default:>14} {r.unit:<9} {r.description}")
    return 0


def cmd_schema(_: argparse.Namespace) -> int:
    print(json_schema_text())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mise-twilio", description="Twilio Media Streams ingest bridge."
    )
    parser.add_argument("--version", action="version", version=f"mise-twilio {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the server (stream, webhooks, health, metrics)")
    serve.add_argument("--host", help="bind address (MISE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (MISE_PORT, default 8080)")
    serve.add_argument("--public-url", help="public https base URL (MISE_PUBLIC_URL)")
    serve.add_argument("--data-dir", type=Path, help="JSONL + spool dir (MISE_DATA_DIR)")
    serve.add_argument("--log-level", help="MISE_LOG_LEVEL, default info")
    serve.add_argument("--log-format", choices=["json", "console"], help="MISE_LOG_FORMAT")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="serve on a free port and replay a two-track call into it")
    demo.add_argument("--data-dir", type=Path, help="where the JSONL goes (default ./mise-data)")
    demo.add_argument("--fixture", type=Path, help="another fixture to replay")
    demo.add_argument("--speed", type=float, default=0.0, help="× real time; 0 = flat out")
    demo.set_defaults(func=cmd_demo)

    replay = sub.add_parser("replay", help="replay a fixture offline or to a live server")
    replay.add_argument("path", type=Path)
    replay.add_argument("--format", choices=["table", "jsonl"], default="table")
    replay.add_argument("--to", help="ws://HOST:PORT/v1/stream/twilio: act as Twilio")
    replay.add_argument("--speed", type=float, default=1.0, help="× real time; 0 = flat out")
    replay.add_argument("--auth-token", help="sign the upgrade with this Twilio auth token")
    replay.add_argument("--sign-url", help="URL to sign (the public wss:// URL); default --to")
    replay.set_defaults(func=cmd_replay)

    twiml = sub.add_parser("twiml", help="print TwiML that streams a call to mise-twilio")
    twiml.add_argument("--url", required=True, help="wss://HOST/v1/stream/twilio")
    twiml.add_argument("--mode", choices=["fork", "connect"], default="fork")
    twiml.add_argument("--status-callback", help="https://HOST/v1/webhook/twilio")
    twiml.add_argument("--api-key", help="shared secret sent as <Parameter name='api_key'>")
    twiml.add_argument("--name", help="stream name (lets you stop a fork by name)")
    twiml.set_defaults(func=cmd_twiml)

    schema = sub.add_parser("schema", help="print the JSON Schema of the records")
    schema.set_defaults(func=cmd_schema)

    config = sub.add_parser(
        "config", help="print every setting: environment variable, type, default, unit"
    )
    config.add_argument("--format", choices=["text", "markdown"], default="text")
    config.set_defaults(func=cmd_config)
    return parser


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
