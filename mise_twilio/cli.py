"""``mise-twilio``: serve | demo | replay | report | consume | twiml | schema | config.

Settings come from ``MISE_*`` environment variables (``config.Settings``); flags override them.

A user error (a bad setting, a file that cannot be read, a server that cannot be reached) is
one line on stderr, ``mise-twilio: error: …``, and exit status 2, as argparse does for bad
flags; Ctrl-C is ``mise-twilio: interrupted`` and 130 (128 + SIGINT, what a shell reports for a
command it interrupted); a reader that closes the pipe early (``mise-twilio config | head``) ends
the command quietly. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mise_twilio import __version__

if TYPE_CHECKING:
    from mise_twilio.core.records import AnyRecord

PROG = "mise-twilio"
EXIT_USAGE = 2
"""A user error: bad flags, settings, input files or addresses (argparse's own status)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C: 128 + SIGINT."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away: 128 + SIGPIPE, as a program killed by it reports."""


class UsageError(Exception):
    """A user error the command reports as one line (exit ``EXIT_USAGE``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mise-twilio`` console script; returns the exit status.

    Everything past the standard library is imported in here, so that Ctrl-C while a command
    is still starting (numpy, pydantic and the server stack take most of a second to import)
    is ``interrupted`` and 130 too, not Python's traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # --help, --version and bad flags end here, before any import
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    from pydantic import ValidationError

    from mise_twilio.core.errors import ConfigError
    from mise_twilio.server.config import validation_error_lines

    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except (UsageError, ConfigError) as exc:
        return _error(str(exc))
    except ValidationError as exc:
        for line in validation_error_lines(exc):
            _error(line)
        return EXIT_USAGE
    except BrokenPipeError:
        # Python's recipe (docs: "Note on SIGPIPE"): point stdout at /dev/null so the flush at
        # exit does not raise again, and end quietly: the reader has all it wanted.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return result


def _os_reason(exc: BaseException) -> str:
    """An ``OSError``'s plain reason ("Connection refused"), without the address asyncio and
    socket add to the text."""
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int):
        return os.strerror(errno)
    return str(exc) or type(exc).__name__


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


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
    import structlog

    from mise_twilio.server.config import unknown_environment
    from mise_twilio.server.logs import configure_logging
    from mise_twilio.server.serve import serve

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("mise_twilio.server")
    for line in unknown_environment():
        log.warning("unknown_setting", detail=line)
    serve(settings)
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

    from mise_twilio.core.records import TurnRecord
    from mise_twilio.replay import read_fixture
    from mise_twilio.server.app import STREAM_PATH, create_app, uvicorn_config
    from mise_twilio.server.config import Settings
    from mise_twilio.server.logs import configure_logging
    from mise_twilio.server.replay_client import replay_websocket
    from mise_twilio.server.sinks import check_sink_paths

    configure_logging("warning", "console")
    settings = Settings(host="127.0.0.1", port=0, data_dir=args.data_dir or Path("./mise-data"))
    check_sink_paths(settings, data_dir_setting="--data-dir")  # one line, not uvicorn's traceback
    if args.fixture is not None:
        fixture: Any = args.fixture
        lines = list(_open_capture(args.fixture))  # UsageError for what is no capture
    else:
        fixture = resources.files("mise_twilio") / "data/demo_fork_two_track.jsonl"
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


def _open_capture(path: Path, *, records_hint: str = "") -> Iterator[str]:
    """The capture's lines, read as they are consumed; ``UsageError`` when it cannot be read
    or holds no Twilio ``start`` message in its first 1000 lines (not a Media Streams
    capture: a binary, …); a file of this project's records is named as such, followed by
    ``records_hint`` (what the command takes them as)."""
    from mise_twilio.core.errors import ProtocolError
    from mise_twilio.core.messages import StartMessage, parse_message
    from mise_twilio.replay import iter_fixture

    try:
        lines = iter_fixture(path)
        head = list(itertools.islice(lines, 1000))
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a capture file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    for line in head:
        with contextlib.suppress(ProtocolError):
            if isinstance(parse_message(line), StartMessage):
                return itertools.chain(head, lines)
    if any(_is_record(line) for line in head):
        raise UsageError(
            f"{path} holds mise_twilio records (a sink's JSONL), not a capture of "
            f"Twilio's messages{records_hint}"
        )
    raise UsageError(
        f"{path}: no Twilio Media Streams 'start' message in its first {len(head)} "
        "lines; a capture has one JSON message per line, as Twilio sent it (fixtures/README.md)"
    )


def _is_record(line: str) -> bool:
    """Whether ``line`` is one of this project's records (``core.records.from_json``)."""
    from mise_twilio.core.records import from_json

    try:
        from_json(line)
    except ValueError:
        return False
    return True


async def _replay_to(
    lines: list[str], args: argparse.Namespace, headers: dict[str, str]
) -> dict[str, Any]:
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    from mise_twilio.server.replay_client import media_timestamp_ms, replay_websocket

    stamps = [ts for line in lines if (ts := media_timestamp_ms(line)) is not None]
    span_ms = max(stamps) - stamps[0] if stamps else 0
    progress = None if args.quiet else _Progress(span_ms, tty=sys.stderr.isatty())
    try:
        stats = await replay_websocket(
            lines,
            args.to,
            speed=args.speed,
            headers=headers,
            progress=progress.update if progress else None,
        )
    except InvalidURI:
        raise UsageError(f"--to {args.to}: not a ws:// or wss:// URL") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = {
            403: " (a missing or wrong --auth-token or MISE_TWILIO_AUTH_TOKEN, or --sign-url "
            "not the URL Twilio signs?)",
            404: " (the stream is at /v1/stream/twilio)",
        }.get(status, "")
        message = f"{args.to} refused the WebSocket handshake: HTTP {status}{hint}"
        raise UsageError(message) from None
    except InvalidHandshake as exc:
        raise UsageError(f"{args.to}: WebSocket handshake failed: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"cannot connect to {args.to}: {_os_reason(exc)}") from None
    finally:
        if progress is not None:
            progress.close()
    return {
        "messages_sent": stats.messages_sent,
        "wall_s": round(stats.wall_s, 3),
        "media_span_ms": stats.media_span_ms,
        "speed_x_realtime": round(stats.media_span_ms / 1000 / stats.wall_s, 1)
        if stats.wall_s > 0
        else None,
        "close_code": stats.close_code,
    }


class _Progress:
    """Replay progress on stderr: a tqdm bar on a terminal, else a line every ``every_s``."""

    def __init__(self, span_ms: int, *, tty: bool, every_s: float = 10.0) -> None:
        self.span_s = span_ms / 1000
        self.every_s = every_s
        self.last_line = time.monotonic()
        self.messages = 0
        self.done_s = 0.0
        self.tenths = 0
        self.bar: Any = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=round(self.span_s, 1),
                unit="s",
                desc="replay",
                file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
                "[{elapsed}<{remaining}]",
            )

    def update(self, messages_sent: int, media_ms: int) -> None:
        self.messages = messages_sent
        done_s = media_ms / 1000
        if self.bar is not None:
            tenths = media_ms // 100  # the bar moves in 0.1 s steps of audio
            if tenths > self.tenths:
                self.bar.update((tenths - self.tenths) / 10)
                self.tenths = tenths
            return
        self.done_s = done_s
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self._line()

    def _line(self) -> None:
        share = f" ({100 * self.done_s / self.span_s:.0f} %)" if self.span_s else ""
        print(
            f"replay: {self.done_s:.1f} of {self.span_s:.1f} s of call audio sent{share}, "
            f"{self.messages} messages",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_replay(args: argparse.Namespace) -> int:
    from mise_twilio.core.records import to_json
    from mise_twilio.replay import iter_replay
    from mise_twilio.server.config import twilio_auth_token_from_environment
    from mise_twilio.server.replay_client import sign_websocket

    hint = ": replay takes a capture (mise-twilio report --events draws records)"
    lines = _open_capture(args.path, records_hint=hint)
    if args.to:
        headers: dict[str, str] = {}
        token = args.auth_token or twilio_auth_token_from_environment()
        if token:
            signed_url = args.sign_url or args.to
            headers = sign_websocket(signed_url, token)
        summary = asyncio.run(_replay_to(list(lines), args, headers))
        print(json.dumps(summary))
        return 0
    # offline: the file is read line by line and records go out as they come
    records = iter_replay(lines)
    if args.format == "jsonl":
        out = sys.stdout
        for record in records:
            out.write(to_json(record))
            out.write("\n")
    else:
        _print_table(list(records), sys.stdout)
    return 0


def _fmt(value: object, width: int, digits: int = 1) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else ""
    elif isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return text.rjust(width)


def _print_table(records: Iterable[AnyRecord], out: Any) -> None:
    from mise_twilio.core.records import StreamStopped, ToneRecord, TurnRecord

    turns = sorted((r for r in records if isinstance(r, TurnRecord)), key=lambda t: t.start_ms)
    header = (
        f"{'#':>3} {'speaker':<7} {'start_s':>8} {'end_s':>8} {'dur_ms':>7} {'speech':>7} "
        f"{'end_reason':<12} {'gap_ms':>7} {'ovl_ms':>6} {'barge':>5} {'intr':>5} {'bchan':>5} "
        f"{'f0_hz':>6} {'dBFS':>6} {'rate':>5} {'contour':>7} {'arousal':>7} {'ar_rel':>6}"
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
            f"{_fmt(t.speech_rate_hz, 5)} {_fmt(t.prosody.contour if t.prosody else None, 7)} "
            f"{_fmt(t.arousal, 7, 2)} {_fmt(t.arousal_rel, 6, 1)}\n"
        )
    others = [r for r in records if not isinstance(r, TurnRecord)]
    diagnostics = [r for r in others if r.type == "diagnostic"]
    for d in diagnostics:
        out.write(f"diagnostic {getattr(d, 'code', '')}: {getattr(d, 'message', '')}\n")
    for r in others:
        if isinstance(r, ToneRecord):
            out.write(
                f"tone: {r.frequency_hz:.0f} Hz for {r.duration_ms} ms at "
                f"{r.start_ms / 1000:.2f} s ({r.speaker}, turn {r.turn_index})\n"
            )
    for r in others:
        if isinstance(r, StreamStopped):
            s = r.summary
            out.write(
                f"stream stopped ({r.reason}): {s.duration_ms / 1000:.1f} s, talk {s.talk_ms}, "
                f"turns {s.turn_counts}, overlap {s.overlap_ms} ms, "
                f"interruptions {s.interruptions}, lost {s.lost_ms} ms\n"
            )
            peaks = ", ".join(
                f"{speaker} mean {a.mean:.2f} peak {a.peak:.2f} (turn {a.peak_turn_index})"
                for speaker, a in s.arousal.items()
                if a.mean is not None and a.peak is not None
            )
            if peaks or s.escalation is not None:
                out.write(
                    f"arousal (backchannels aside): {peaks or '-'}; "
                    f"escalation {_fmt(s.escalation, 0)}\n"
                )


# -- consume ----------------------------------------------------------------------------------


def cmd_consume(args: argparse.Namespace) -> int:
    import redis

    from mise_twilio.consume import Output, run_cli
    from mise_twilio.server.config import Settings, unknown_environment

    settings = Settings()
    for line in unknown_environment():
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    url = args.redis_url or settings.redis_url
    if not url:
        raise UsageError("give --redis-url or set MISE_REDIS_URL")
    try:
        output = Output(None if args.out == "-" else Path(args.out))
    except OSError as exc:
        raise UsageError(f"--out {args.out}: {exc.strerror or exc}") from None
    try:
        stats = run_cli(
            url=url,
            stream=args.stream or settings.redis_stream,
            group=args.group,
            name=args.consumer,
            output=output,
            count=args.count,
            block_ms=args.block_ms,
            claim_idle_s=args.claim_idle_s,
            stale_after_s=args.stale_after_s,
            start_id=args.start,
            exit_when_idle_s=args.exit_when_idle_s,
        )
    except redis.RedisError as exc:  # the service, not the command line: exit 1
        print(f"{PROG}: error: redis at {url}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a document write failed; its entries stay for the next worker
        print(f"{PROG}: error: writing to --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "read": stats.read,
                "claimed": stats.claimed,
                "records": stats.records,
                "calls": len(stats.calls),
                "documents": stats.documents,
                "incomplete": stats.incomplete,
                "unusable": stats.unusable,
                "unattributed": stats.unattributed,
            }
        ),
        file=sys.stderr,
    )
    return 0


# -- report -----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from mise_twilio.report import (
        build_report,
        levels_from_capture,
        records_from_capture,
        records_of_call,
    )

    if (args.capture is None) == (args.events is None):
        raise UsageError("give a capture file or --events EVENTS.jsonl (one of them)")
    levels = None
    if args.capture is not None:
        lines = list(_open_capture(args.capture, records_hint=": give it with --events"))
        records: list[dict[str, Any]] = records_from_capture(lines)
        levels = levels_from_capture(lines)
    else:
        records = _read_record_file(args.events)
    try:
        chosen = records_of_call(records, args.call, args.stream)
    except ValueError as exc:
        raise UsageError(f"{args.capture or args.events}: {exc}") from None
    page = build_report(chosen, levels)
    try:
        args.output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    turns = sum(1 for r in chosen if r.get("type") == "turn")
    print(f"wrote {args.output} ({turns} turns)", file=sys.stderr)
    return 0


def _read_record_file(path: Path) -> list[dict[str, Any]]:
    """A sink's JSONL (one record per line) as dicts; torn or foreign lines are skipped (a
    killed writer leaves a torn last line), a file with no record at all is a ``UsageError``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a JSONL file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("type"), str) and "id" in record:
                records.append(record)
    if not records:
        raise UsageError(f"{path}: no mise_twilio records in it (one JSON record per line)")
    return records


# -- twiml ------------------------------------------------------------------------------------


def _check_url(flag: str, value: str, kind: Literal["http", "websocket"]) -> None:
    """``UsageError`` unless ``value`` is an absolute URL of ``kind`` (``config.check_url``,
    the rule the server's own URL settings follow)."""
    from pydantic import ValidationError

    from mise_twilio.server.config import check_url

    try:
        check_url(value, kind)
    except ValidationError as exc:
        raise UsageError(f"{flag} {value!r}: {exc.errors()[0]['msg']}") from None


def cmd_twiml(args: argparse.Namespace) -> int:
    from twilio.twiml.voice_response import Connect, Start, VoiceResponse

    if not args.url.startswith("wss://"):
        raise UsageError("--url must be wss:// (Twilio error 31922)")
    _check_url("--url", args.url, "websocket")
    if args.status_callback:
        _check_url("--status-callback", args.status_callback, "http")
    if "?" in args.url:
        raise UsageError("Twilio drops query strings from stream URLs; use --api-key")
    url = args.url
    if args.mode == "proxy":
        from mise_twilio.server.config import UPSTREAM_NAME_RE

        if not args.upstream or not UPSTREAM_NAME_RE.fullmatch(args.upstream):
            raise UsageError("--mode proxy needs --upstream NAME, a bot named in MISE_UPSTREAMS")
        url = f"{url.rstrip('/')}/proxy/{args.upstream}"
    elif args.upstream:
        raise UsageError("--upstream is for --mode proxy")
    response = VoiceResponse()
    stream_kwargs: dict[str, str] = {"url": url}
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
    elif args.mode == "proxy":
        print(
            "<!-- Add your bot's own <Parameter>s: it sees start.customParameters as sent. "
            "TwiML after </Connect> runs when the stream ends, e.g. when the bot cannot be "
            "reached: a fallback <Say> or <Dial> goes there. -->"
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
    env_w = max(len(r.env) for r in rows)
    type_w = max(len(r.type) for r in rows)
    default_w = max(len(r.default) for r in rows)
    unit_w = max(len(r.unit) for r in rows)
    for r in rows:
        print(
            f"{r.env:<{env_w}}  {r.type:<{type_w}}  {r.default:>{default_w}}  "
            f"{r.unit:<{unit_w}}  {r.description}"
        )
    return 0


def cmd_schema(_: argparse.Namespace) -> int:
    from mise_twilio.core.records import json_schema_text

    print(json_schema_text())
    return 0


def _speed(text: str) -> float:
    """``--speed``: a finite factor of real time, 0 or more (argparse's one-line error else)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0.0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a factor of real time, 0 or more (0 = flat out)"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Twilio Media Streams ingest bridge.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
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
    demo.add_argument("--speed", type=_speed, default=0.0, help="× real time; 0 = flat out")
    demo.set_defaults(func=cmd_demo)

    replay = sub.add_parser("replay", help="replay a fixture offline or to a live server")
    replay.add_argument(
        "path", type=Path, help="a capture: one Twilio Media Streams message per line"
    )
    replay.add_argument(
        "--format",
        choices=["table", "jsonl"],
        default="table",
        help="offline: a table of turns (default) or the records, one JSON object per line",
    )
    replay.add_argument("--to", help="ws://HOST:PORT/v1/stream/twilio: act as Twilio")
    replay.add_argument(
        "--speed", type=_speed, default=1.0, help="with --to: × real time; 0 = flat out"
    )
    replay.add_argument(
        "--auth-token",
        help="sign the upgrade with this Twilio auth token (default: MISE_TWILIO_AUTH_TOKEN, "
        "which keeps it out of the process list)",
    )
    replay.add_argument("--sign-url", help="URL to sign (the public wss:// URL); default --to")
    replay.add_argument(
        "--quiet", "-q", action="store_true", help="no progress on stderr while sending (--to)"
    )
    replay.set_defaults(func=cmd_replay)

    consume = sub.add_parser(
        "consume",
        help="consumer-group worker: one JSON document per finished call from Redis Streams",
    )
    consume.add_argument("--redis-url", help="default MISE_REDIS_URL")
    consume.add_argument("--stream", help="records stream (default MISE_REDIS_STREAM)")
    consume.add_argument("--group", default="mise-consume", help="consumer group name")
    consume.add_argument("--consumer", help="this worker's name in the group (default host:pid)")
    consume.add_argument("--out", default="-", help="folder for CALLSID.json files; - = stdout")
    consume.add_argument("--count", type=int, default=100, help="entries per read")
    consume.add_argument("--block-ms", type=int, default=5000, help="how long a read waits")
    consume.add_argument(
        "--claim-idle-s",
        type=float,
        default=60.0,
        help="take over entries pending this long on another (dead) worker",
    )
    consume.add_argument(
        "--stale-after-s",
        type=float,
        default=900.0,
        help="write an unfinished call (complete: false) once idle this long",
    )
    consume.add_argument(
        "--start", default="0", help="where a new group starts: 0 (everything) or $ (new only)"
    )
    consume.add_argument(
        "--exit-when-idle-s",
        type=float,
        help="exit once nothing arrived this long and nothing is pending (batch runs, tests)",
    )
    consume.set_defaults(func=cmd_consume)
    report = sub.add_parser("report", help="draw one call as a self-contained HTML page")
    report.add_argument("capture", type=Path, nargs="?", help="a capture (Twilio's messages)")
    report.add_argument("--events", type=Path, help="or: a sink's JSONL of records")
    report.add_argument("--call", help="CallSid (default: the first call in the file)")
    report.add_argument("--stream", help="StreamSid (default: the call's first stream)")
    report.add_argument("-o", "--output", type=Path, required=True, help="the HTML file")
    report.set_defaults(func=cmd_report)

    twiml = sub.add_parser("twiml", help="print TwiML that streams a call to mise-twilio")
    twiml.add_argument(
        "--url", required=True, help="wss://HOST/v1/stream/twilio (proxy: /proxy/NAME is added)"
    )
    twiml.add_argument(
        "--mode",
        choices=["fork", "connect", "proxy"],
        default="fork",
        help="fork (default): <Start><Stream>, both tracks, your call flow goes on; connect: "
        "<Connect><Stream>, the caller's track only; proxy: <Connect><Stream> through "
        "mise_twilio to your bot (--upstream)",
    )
    twiml.add_argument("--upstream", help="--mode proxy: the bot's name in MISE_UPSTREAMS")
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
