"""A per-sink, append-only, on-disk spool of envelopes (blocking file I/O; run it off the loop).

Layout of ``directory`` (one per sink, ``spool_dir/<sink>/``)::

    seg-00000000000000000001.jsonl   segments: one envelope per line, oldest first
    seg-00000000000000000002.jsonl
    committed.json                   {"segment": 2, "offset": 81920}: all before is delivered
    dead-letter.jsonl                written by the hub, ignored here

Each line is ``{"id":"…","type":"…","record":{…}}`` where ``record`` is the record's JSON text
exactly as published (spliced in, not re-serialised).

Reading never removes anything: ``peek(n)`` returns the oldest undelivered envelopes and
``commit(n)`` moves the committed offset past them once the sink has acknowledged them
(at-least-once: a crash between the two re-delivers them). A segment file is deleted once the
committed offset has passed its end. ``append`` fsyncs once per call, so callers batch.

Crash safety (SIGKILL, power loss): every segment present at ``open()`` is sealed and new
appends go to a fresh segment, so a torn last line left by a killed writer is never glued to a
later line; readers skip a line without its newline, or that is not valid JSON, with a warning.
A lost or stale ``committed.json`` (it is replaced atomically but not fsynced) only means
re-delivery, never loss.

The spool is bounded only by the disk. It is thread-safe (one lock); the hub runs all of one
spool's calls on a single worker thread, so the lock is never contended in practice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import structlog

from mise_twilio.server.sinks.base import Envelope

log = structlog.get_logger("mise_twilio.server.sinks.spool")

SEGMENT_RE = re.compile(r"^seg-(\d{20})\.jsonl$")
COMMIT_FILE = "committed.json"
DEAD_LETTER_FILE = "dead-letter.jsonl"
DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024


def encode_line(envelope: Envelope) -> bytes:
    """One spool line (UTF-8, with its newline) for ``envelope``."""
    head = f'{{"id":{json.dumps(envelope.id)},"type":{json.dumps(envelope.type)},"record":'
    return (head + envelope.json + "}\n").encode()


_DECODER = json.JSONDecoder()


def decode_line(line: bytes) -> Envelope:
    """The envelope stored in one spool line (with or without its newline).

    Lines in ``encode_line``'s exact shape are split without parsing the record (replay runs on
    a worker thread, and parsing every record would hold the GIL against the event loop); the
    record's braces are checked, its inside is the receiver's to validate. Other lines are
    parsed in full. Raises ``ValueError`` (``json.JSONDecodeError`` is one) when the line is
    not a complete spool entry.
    """
    text = line.decode()
    fast = _decode_fast(text)
    if fast is not None:
        return fast
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("spool line is not an object")
    record_id, record_type, record = obj.get("id"), obj.get("type"), obj.get("record")
    if not isinstance(record_id, str) or not isinstance(record_type, str) or record is None:
        raise ValueError("spool line lacks id, type or record")
    head = f'{{"id":{json.dumps(record_id)},"type":{json.dumps(record_type)},"record":'
    text = text.rstrip("\n")
    if text.startswith(head) and text.endswith("}"):
        # Keep the record's text byte for byte as it was published.
        raw = text[len(head) : -1]
    else:
        raw = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return Envelope(id=record_id, type=record_type, json=raw)


def _decode_fast(text: str) -> Envelope | None:
    if not text.startswith('{"id":"'):
        return None
    try:
        record_id, end = _DECODER.raw_decode(text, 6)
        if text[end : end + 8] != ',"type":':
            return None
        record_type, end = _DECODER.raw_decode(text, end + 8)
    except ValueError:
        return None
    if not isinstance(record_id, str) or not isinstance(record_type, str):
        return None
    if text[end : end + 10] != ',"record":':
        return None
    body = text[end + 10 :].rstrip("\n")
    if len(body) < 3 or body[0] != "{" or body[-2:] != "}}":
        return None
    return Envelope(id=record_id, type=record_type, json=body[:-1])


def _segment_name(seq: int) -> str:
    return f"seg-{seq:020d}.jsonl"


class Spool:
    """The spool of one sink in ``directory`` (created if missing).

    - ``segment_max_bytes``: start a new segment file once the current one reaches this size.
    - ``fsync``: fsync appends (turn off only in tests or benchmarks that measure without it).

    Call ``open()`` first. Errors are ``OSError`` from the filesystem.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.segment_max_bytes = segment_max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._segments: list[int] = []  # sequence numbers of existing segment files, ascending
        self._sizes: dict[int, int] = {}
        self._committed: tuple[int, int] = (0, 0)  # (segment seq, byte offset)
        self._active: int | None = None  # the segment this process appends to
        self._writer: BinaryIO | None = None
        self._next_seq = 1
        self._pending_bytes = 0
        self._peeked_ends: list[tuple[int, int]] = []
        self._dirty = False
        self.skipped_lines = 0
        """Torn or corrupt lines skipped since ``open()``."""

    # ---------------------------------------------------------------------------------------
    # state

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk not yet committed (delivered). Readable from any thread."""
        return self._pending_bytes

    @property
    def is_empty(self) -> bool:
        """True when nothing undelivered is on disk."""
        return self._pending_bytes == 0

    # ---------------------------------------------------------------------------------------
    # lifecycle

    def open(self) -> None:
        """Create the directory, read the committed offset, seal existing segments and delete
        the ones already delivered. Everything after the committed offset will be replayed by
        ``peek``."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._committed = self._read_commit()
            self._segments = []
            self._sizes = {}
            for entry in os.scandir(self.directory):
                m = SEGMENT_RE.match(entry.name)
                if m and entry.is_file():
                    seq = int(m.group(1))
                    self._segments.append(seq)
                    self._sizes[seq] = entry.stat().st_size
            self._segments.sort()
            self._active = None
            self._next_seq = max([*self._segments, self._committed[0]]) + 1
            self._normalise()
            self._recount()
            if self._pending_bytes:
                log.info(
                    "spool_replay",
                    directory=str(self.directory),
                    segments=len(self._segments),
                    pending_bytes=self._pending_bytes,
                )

    def close(self) -> None:
        """fsync and close the open segment. Idempotent."""
        with self._lock:
            if self._writer is not None:
                if self._dirty and self.fsync:
                    os.fsync(self._writer.fileno())
                self._writer.close()
                self._writer = None
            self._dirty = False
            self._active = None

    # ---------------------------------------------------------------------------------------
    # writing

    def append(self, envelopes: Sequence[Envelope], *, sync: bool = True) -> int:
        """Append ``envelopes`` in order, then flush and (``sync``) fsync once. Returns bytes
        written. With ``sync=False`` the data reaches the OS (it survives SIGKILL, not a power
        cut) and the next ``append`` or ``sync()`` fsyncs it."""
        if not envelopes:
            return 0
        data = b"".join(encode_line(e) for e in envelopes)
        with self._lock:
            writer = self._writer_for_append()
            writer.write(data)
            writer.flush()
            if self.fsync and sync:
                os.fsync(writer.fileno())
                self._dirty = False
            else:
                self._dirty = True
            assert self._active is not None
            self._sizes[self._active] += len(data)
            self._pending_bytes += len(data)
        return len(data)

    def sync(self) -> None:
        """fsync data written by ``append(sync=False)``; a no-op when there is none."""
        with self._lock:
            if self._dirty and self._writer is not None and self.fsync:
                os.fsync(self._writer.fileno())
            self._dirty = False

    @property
    def dirty(self) -> bool:
        """Appended data not fsynced yet."""
        return self._dirty

    def _writer_for_append(self) -> BinaryIO:
        if (
            self._writer is not None
            and self._active is not None
            and self._sizes[self._active] < self.segment_max_bytes
        ):
            return self._writer
        if self._writer is not None:
            if self._dirty and self.fsync:
                os.fsync(self._writer.fileno())
                self._dirty = False
            self._writer.close()
        seq = self._next_seq
        self._next_seq += 1
        self._writer = open(self.directory / _segment_name(seq), "ab")  # noqa: SIM115
        self._active = seq
        self._segments.append(seq)
        self._sizes[seq] = 0
        if not self._pending_bytes and self._committed < (seq, 0):
            # Nothing undelivered precedes this segment: the committed offset moves to its start.
            self._committed = (seq, 0)
        if self.fsync:
            # The new file's name must survive a power cut too, not only its contents.
            self._fsync_dir()
        return self._writer

    # ---------------------------------------------------------------------------------------
    # reading

    def peek(self, max_records: int) -> list[Envelope]:
        """Up to ``max_records`` of the oldest undelivered envelopes, in append order.

        Peeking does not consume: the same call returns the same envelopes until ``commit``.
        Torn or corrupt lines are skipped with a warning (and committed past once nothing valid
        precedes them).
        """
        with self._lock:
            out: list[Envelope] = []
            ends: list[tuple[int, int]] = []
            last_pos = self._committed
            seq, offset = self._committed
            for s in [x for x in self._segments if x >= seq]:
                start = offset if s == seq else 0
                if start >= self._sizes[s]:
                    last_pos = (s, self._sizes[s])
                    continue
                with open(self.directory / _segment_name(s), "rb") as f:
                    f.seek(start)
                    pos = start
                    while len(out) < max_records:
                        line = f.readline()
                        if not line:
                            break
                        pos += len(line)
                        last_pos = (s, pos)
                        if not line.endswith(b"\n"):
                            self._skip(s, pos, "torn last line (writer killed mid-write?)")
                            continue
                        try:
                            env = decode_line(line)
                        except ValueError as exc:
                            self._skip(s, pos, f"corrupt line: {exc}")
                            continue
                        out.append(env)
                        ends.append((s, pos))
                if len(out) >= max_records:
                    break
            self._peeked_ends = ends
            if not out and last_pos > self._committed:
                # Only junk between the committed offset and the end: step over it for good.
                self._commit_to(last_pos)
            return out

    def _skip(self, seq: int, end: int, why: str) -> None:
        self.skipped_lines += 1
        log.warning(
            "spool_line_skipped",
            directory=str(self.directory),
            segment=_segment_name(seq),
            end_offset=end,
            reason=why,
        )

    def commit(self, n_records: int) -> None:
        """Mark the first ``n_records`` envelopes returned by the last ``peek`` as delivered.

        Deletes segment files the committed offset has passed. Raises ``ValueError`` when
        ``n_records`` exceeds what the last ``peek`` returned.
        """
        if n_records <= 0:
            return
        with self._lock:
            if n_records > len(self._peeked_ends):
                raise ValueError(f"commit({n_records}) after a peek of {len(self._peeked_ends)}")
            self._commit_to(self._peeked_ends[n_records - 1])
            self._peeked_ends = []

    def _commit_to(self, pos: tuple[int, int]) -> None:
        self._committed = pos
        self._normalise()
        self._recount()
        self._write_commit()

    # ---------------------------------------------------------------------------------------
    # internals (lock held)

    def _normalise(self) -> None:
        """Delete fully delivered segments; keep ``_committed`` inside the first remaining one."""
        while self._segments:
            first = self._segments[0]
            c_seq, c_off = self._committed
            done = first < c_seq or (first == c_seq and c_off >= self._sizes[first])
            if not done:
                break
            if first == self._active:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                self._active = None
            self._segments.pop(0)
            del self._sizes[first]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / _segment_name(first))
            if first >= c_seq:
                self._committed = (first + 1, 0)
        if self._segments and self._segments[0] > self._committed[0]:
            self._committed = (self._segments[0], 0)

    def _recount(self) -> None:
        total = sum(self._sizes[s] for s in self._segments)
        if self._segments and self._segments[0] == self._committed[0]:
            total -= self._committed[1]
        self._pending_bytes = max(total, 0)

    def _read_commit(self) -> tuple[int, int]:
        path = self.directory / COMMIT_FILE
        try:
            obj = json.loads(path.read_text())
            seq, offset = int(obj["segment"]), int(obj["offset"])
        except FileNotFoundError:
            return (0, 0)
        except (ValueError, KeyError, TypeError) as exc:
            # Re-delivering from the oldest segment is safe (at-least-once); refusing to start
            # would not be.
            log.warning("spool_commit_unreadable", path=str(path), error=str(exc))
            return (0, 0)
        return (seq, offset)

    def _write_commit(self) -> None:
        path = self.directory / COMMIT_FILE
        tmp = path.with_suffix(".tmp")
        seq, offset = self._committed
        tmp.write_text(json.dumps({"segment": seq, "offset": offset}))
        # No fsync: a stale commit after a power cut means re-delivery, which is allowed.
        os.replace(tmp, path)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
