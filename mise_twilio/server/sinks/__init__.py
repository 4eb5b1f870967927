"""Sinks: where records go. ``SinkHub`` fans records out to ``Sink`` implementations (JSONL
file, HTTP, Redis Streams) with bounded queues, an on-disk spool and retries
(``docs/architecture.md``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mise_twilio.core.errors import ConfigError
from mise_twilio.server.config import Settings
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.sinks.base import DeliveryError, Envelope, Sink
from mise_twilio.server.sinks.http import HttpSink
from mise_twilio.server.sinks.hub import DrainReport, SinkHub, SinkStats
from mise_twilio.server.sinks.jsonl import JsonlSink
from mise_twilio.server.sinks.redis import RedisStreamSink
from mise_twilio.server.sinks.spool import Spool

__all__ = [
    "DeliveryError",
    "DrainReport",
    "Envelope",
    "HttpSink",
    "JsonlSink",
    "RedisStreamSink",
    "Sink",
    "SinkHub",
    "SinkStats",
    "Spool",
    "build_hub",
    "build_sinks",
    "check_sink_paths",
]


def _jsonl_off(settings: Settings) -> bool:
    return settings.jsonl_path is not None and str(settings.jsonl_path).lower() == "off"


def check_sink_paths(settings: Settings, *, data_dir_setting: str = "MISE_DATA_DIR") -> None:
    """Create and try every local path the sinks will write: the JSONL file (opened for
    appending), the spool directory and, with turn audio on, the audio directory. Raises
    ``ConfigError`` naming the setting (``data_dir_setting`` for a path under the data
    directory: the flag a command took it from) and the OS error; writes nothing into a file."""

    def fail(setting: str, path: Path, exc: OSError) -> ConfigError:
        return ConfigError(f"{setting}={path}: {exc.strerror or exc}")

    if settings.jsonl_enabled and not _jsonl_off(settings):
        path = settings.resolved_jsonl_path
        setting = "MISE_JSONL_PATH" if settings.jsonl_path is not None else data_dir_setting
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab"):
                pass
        except OSError as exc:
            raise fail(setting, path, exc) from None
    dirs = [
        ("MISE_SPOOL_DIR" if settings.spool_dir else data_dir_setting, settings.resolved_spool_dir)
    ]
    if settings.turn_audio != "none":
        dirs.append((data_dir_setting, settings.data_dir / "audio"))
    for setting, directory in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise fail(setting, directory, exc) from None


def build_sinks(settings: Settings) -> list[Sink]:
    """The sinks ``settings`` enable, in this order: JSONL (``jsonl_enabled`` and a
    ``jsonl_path`` other than ``off``; default ``DATA_DIR/events.jsonl``), HTTP (``http_url``,
    ``http_token``), Redis Streams (``redis_url``, ``redis_stream``, ``redis_maxlen``).
    May be empty."""
    sinks: list[Sink] = []
    if settings.jsonl_enabled and not _jsonl_off(settings):
        sinks.append(JsonlSink(settings.resolved_jsonl_path))
    if settings.http_url:
        token = settings.http_token.get_secret_value() if settings.http_token else None
        sinks.append(HttpSink(settings.http_url, bearer_token=token))
    if settings.redis_url:
        sinks.append(
            RedisStreamSink(
                settings.redis_url,
                stream=settings.redis_stream,
                maxlen_approx=settings.redis_maxlen,
            )
        )
    return sinks


def build_hub(settings: Settings, metrics: Metrics | None = None) -> SinkHub:
    """A ``SinkHub`` over ``build_sinks(settings)`` with the queue, batch and spool settings.
    Call ``await hub.start()`` before publishing; on shutdown ``await
    hub.drain(settings.shutdown_deadline_s)`` then ``await hub.close()``."""
    return SinkHub(
        build_sinks(settings),
        queue_max_records=settings.sink_queue_max,
        batch_max_records=settings.sink_batch_max,
        spool_dir=settings.resolved_spool_dir,
        metrics=metrics,
        write_ahead=settings.sink_write_ahead,
    )
