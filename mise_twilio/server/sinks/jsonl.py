"""The JSONL sink: one record per line appended to a local file (the default sink)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import BinaryIO

from mise_twilio.core.errors import SinkError
from mise_twilio.server.sinks.base import DeliveryError, Envelope


class JsonlSink:
    """Appends each record's JSON (``Envelope.json``) plus ``\\n`` to ``path``.

    - ``path``: the file; parent directories are created by ``open()``.
    - ``fsync``: fsync after every batch (default), so a record is on disk once ``deliver``
      returns — a turn is durable as soon as it has been emitted and delivered.
    - ``name``: sink name (spool directory, metric label).

    File I/O runs in ``asyncio.to_thread``, never on the event loop. ``deliver`` raises a
    retryable ``DeliveryError`` (reason ``os_error``) when the write fails (disk full, …): the
    hub spools and retries, so a re-delivered batch may appear twice in the file
    (at-least-once; deduplicate by ``id``).
    """

    def __init__(self, path: Path, *, fsync: bool = True, name: str = "jsonl") -> None:
        self.name = name
        self.path = Path(path)
        self.fsync = fsync
        self._file: BinaryIO | None = None

    async def open(self) -> None:
        """Create parent directories and open the file for appending. Raises ``SinkError``
        (not retryable) when that is impossible."""
        try:
            self._file = await asyncio.to_thread(self._open_sync)
        except OSError as exc:
            raise SinkError(f"cannot open {self.path}: {exc}", retryable=False) from exc

    def _open_sync(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "ab+")  # noqa: SIM115 - kept open for the sink's lifetime
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                # A previous process died mid-line: end that torn line so the next record
                # starts on a line of its own (readers skip the torn one).
                f.write(b"\n")
        return f

    async def deliver(self, batch: list[Envelope]) -> None:
        """Append ``batch`` (one write, one flush, one fsync). Raises ``DeliveryError``."""
        if self._file is None:
            raise DeliveryError("jsonl sink is not open", reason="not_open")
        data = "".join(e.json + "\n" for e in batch).encode()
        try:
            await asyncio.to_thread(self._write_sync, self._file, data)
        except OSError as exc:
            raise DeliveryError(f"write to {self.path} failed: {exc}", reason="os_error") from exc

    def _write_sync(self, f: BinaryIO, data: bytes) -> None:
        f.write(data)
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())

    async def ready(self) -> bool:
        """True while the file is open and its directory is writable."""
        return self._file is not None and os.access(self.path.parent, os.W_OK)

    async def close(self) -> None:
        """Close the file. Idempotent."""
        f, self._file = self._file, None
        if f is not None:
            await asyncio.to_thread(f.close)
