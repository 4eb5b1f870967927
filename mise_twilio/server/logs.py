"""structlog set-up: JSON lines (production) or a console renderer (humans), to stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog


class _Stderr:
    """``sys.stderr`` looked up on every write: test runners and daemons swap it after set-up,
    and a logger holding the old object would write to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", fmt: Literal["json", "console"] = "json") -> None:
    """Route structlog to stderr with ISO timestamps; ``level`` is a logging level name.

    Raises ``ValueError`` for an unknown level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def _stderr_handler() -> logging.Handler:
    return logging.StreamHandler(_Stderr())


def uvicorn_log_config(fmt: Literal["json", "console"] = "json") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's own loggers (``uvicorn.error``: bad
    requests, protocol errors), rendered like ours: one JSON object per line on stderr with
    ``level``, ``timestamp`` and ``logger``, so no log line of the server is plain text.
    uvicorn's access log is off (the routes log what matters, with sids)."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "mise": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    renderer,
                ],
                "foreign_pre_chain": [
                    structlog.stdlib.add_logger_name,
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info,
                ],
            }
        },
        "handlers": {"stderr": {"()": _stderr_handler, "formatter": "mise"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "uvicorn.error": {"level": "WARNING"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
