"""``mise-twilio consume``: one JSON document per finished call, from the Redis records stream.

A consumer-group worker (redis-py) and a template for your own: copy it, replace ``Output``
with your database. Run as many workers as you like in one group (``--group``): Redis hands
each entry to one of them, and they share the per-call state below, so a call whose records
were spread over several workers (and several replicas) still becomes one document.

Per batch (``XREADGROUP … COUNT n BLOCK ms``, and first ``XAUTOCLAIM`` of entries another
worker left pending longer than ``--claim-idle-s``, e.g. because it was killed):

1. **store** every record in its call's hash, keyed by record ``id``, in one ``MULTI``. That is
   the deduplication: a record delivered twice (the bridge is at-least-once, and so is this
   worker) lands on the same field. The first copy wins, except that a ``call.completed``
   carrying a stream summary replaces one without (the cross-replica join's fallback can
   publish both, with the same id);
2. **write** the document of every call the batch touched that is now complete: a terminal
   status (``call.completed``, ``call.busy`` …) and, for every stream of the call, its
   ``stream.started``, its ``stream.stopped`` and as many ``turn`` records as that summary's
   ``turn_counts`` say;
3. **acknowledge** the entries (``XACK``) only then.

A worker killed anywhere in 1-3 leaves its entries pending; another worker claims them and
repeats 1-3, which changes nothing already stored and writes the same document again (folder
output replaces the file; stdout prints it again: deduplicate documents on ``call_sid``).
Calls that never complete (a replica was SIGKILLed with the stream open, no status callbacks
configured) are written with ``"complete": false`` once nothing arrived for them for
``--stale-after-s``.

Redis keys (``<stream>:consume:<group>:``-prefixed, expiring ``--state-ttl-s`` after the last
write): ``records:<CallSid>`` (id → ``<entry id> <record JSON>``), ``expect:<CallSid>``
(``turns:<StreamSid>`` → the turn count its summary announced, ``terminal`` → the status type,
``written`` → records in the last document written), ``active`` (a sorted set of unfinished
calls by last activity, ms).

redis-py's ``socket_timeout`` is set above the ``BLOCK`` time: with the default (5 s, equal
to a 5 s block) an idle stream makes every read time out and the worker crash.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import redis

__all__ = ["ConsumeStats", "Consumer", "Output", "assemble", "is_complete"]

TERMINAL_TYPES = frozenset(
    {"call.completed", "call.busy", "call.failed", "call.no_answer", "call.canceled"}
)
STREAM_EVENT_TYPES = frozenset({"dtmf", "mark", "diagnostic"})


# ---------------------------------------------------------------------------------------------
# the document (pure functions over a call's stored records)


def is_complete(ids: Iterable[str], expect: Mapping[str, str]) -> bool:
    """Whether a call's stored record ``ids`` are all there is: a terminal status, and for every
    stream with any record, its ``stream.started``, its ``stream.stopped`` and as many turns as
    that summary counted (``expect`` holds ``terminal`` and ``turns:<StreamSid>`` → the count).
    Stream-scoped ids are ``<StreamSid>:stream.started``, ``<StreamSid>:turn:<n>`` …"""
    if "terminal" not in expect:
        return False
    streams: set[str] = set()
    started: set[str] = set()
    turns: dict[str, int] = {}
    for record_id in ids:
        sid, _, kind = record_id.partition(":")
        if kind in ("stream.started", "stream.stopped") or kind.startswith("turn:"):
            streams.add(sid)
        if kind == "stream.started":
            started.add(sid)
        elif kind.startswith("turn:"):
            turns[sid] = turns.get(sid, 0) + 1
    return streams <= started and all(
        turns.get(sid, 0) == int(expect.get(f"turns:{sid}", -1)) for sid in streams
    )


def _lifecycle_key(record: Mapping[str, Any]) -> tuple[int, str, str]:
    seq = record.get("sequence_number")
    return (seq if isinstance(seq, int) else 1 << 31, record.get("event_at") or "", record["id"])


def assemble(call_sid: str, stored: Mapping[str, str], *, complete: bool) -> dict[str, Any]:
    """A call's document from its stored values (``<entry id> <record JSON>``).

    ``{"call_sid", "account_sid", "complete", "records", "summary", "lifecycle": [call.* and
    stream.status records by SequenceNumber], "streams": [{"stream_sid", "started",
    "stopped", "turns": [by start_ms, track], "events": [dtmf, mark, diagnostic in stream
    order]}]}`` with streams in the order they started. ``summary`` is ``call.completed``'s
    (the join) or else the last stream's."""
    entries = sorted(_split(value) for value in stored.values())
    lifecycle: list[dict[str, Any]] = []
    streams: dict[str, dict[str, Any]] = {}
    account_sid = None
    for _, record in entries:
        account_sid = account_sid or record.get("account_sid")
        kind = record["type"]
        if kind.startswith("call.") or kind == "stream.status":
            lifecycle.append(record)
            continue
        sid = record.get("stream_sid") or ""
        stream = streams.setdefault(
            sid, {"stream_sid": sid, "started": None, "stopped": None, "turns": [], "events": []}
        )
        if kind == "stream.started":
            stream["started"] = record
        elif kind == "stream.stopped":
            stream["stopped"] = record
        elif kind == "turn":
            stream["turns"].append(record)
        else:
            stream["events"].append(record)
    for stream in streams.values():
        stream["turns"].sort(key=lambda t: (t["start_ms"], t["track"], t["index"]))
    lifecycle.sort(key=_lifecycle_key)
    completed = next((r for r in lifecycle if r["type"] == "call.completed"), None)
    stopped = [s["stopped"] for s in streams.values() if s["stopped"] is not None]
    summary = completed.get("summary") if completed else None
    if summary is None and stopped:
        summary = stopped[-1]["summary"]
    return {
        "call_sid": call_sid,
        "account_sid": account_sid,
        "complete": complete,
        "records": len(entries),
        "summary": summary,
        "lifecycle": lifecycle,
        "streams": list(streams.values()),
    }


def _split(value: str) -> tuple[tuple[int, int], dict[str, Any]]:
    entry_id, _, text = value.partition(" ")
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0)), json.loads(text)


# ---------------------------------------------------------------------------------------------
# output


class Output:
    """Where documents go: ``DIR/<CallSid>.json`` (written to a temporary file, fsynced,
    renamed: a reader sees the whole document or the previous one) or, for ``None``, one JSON
    line per document on ``stream``. Replace this class with your own store.

    Raises ``OSError`` when ``folder`` cannot be created or a file cannot be made in it (tried
    with an empty temporary file, removed again), before any entry is read."""

    def __init__(self, folder: Path | None, stream: TextIO = sys.stdout) -> None:
        self.folder = folder
        self.stream = stream
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)

    def write(self, document: Mapping[str, Any]) -> None:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        if self.folder is None:
            self.stream.write(text + "\n")
            self.stream.flush()
            return
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in document["call_sid"])
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.folder / f"{name}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------------------------
# the worker


@dataclass(slots=True)
class ConsumeStats:
    """What a worker did: entries ``read`` (new) and ``claimed`` (from another worker),
    ``records`` stored, ``documents`` written (``incomplete`` of them stale), entries
    ``unusable`` (not a record: acknowledged and logged) and ``unattributed`` (a record with
    no ``call_sid``, e.g. a diagnostic before Twilio's ``start``: acknowledged, in no
    document), ``calls`` seen."""

    read: int = 0
    claimed: int = 0
    records: int = 0
    documents: int = 0
    incomplete: int = 0
    unusable: int = 0
    unattributed: int = 0
    calls: set[str] = field(default_factory=set)


class Consumer:
    """One worker of consumer group ``group`` on the records stream ``stream``.

    - ``client``: a ``redis.Redis`` whose ``socket_timeout`` exceeds ``block_ms``
      (``Consumer.connect`` builds one).
    - ``name``: this worker's name in the group (unique per worker; ``host:pid`` by default).
    - ``count``: entries per read; ``block_ms``: how long one read waits for new entries.
    - ``claim_idle_s``: take over entries pending on another worker for longer than this.
    - ``stale_after_s``: write an incomplete call once nothing arrived for it this long.
    - ``state_ttl_s``: the per-call state expires this long after its last write.
    - ``start_id``: where a new group starts: ``0`` (the whole stream) or ``$`` (new only).
    """

    def __init__(
        self,
        client: redis.Redis,
        output: Output,
        *,
        stream: str = "mise:events",
        group: str = "mise-consume",
        name: str | None = None,
        count: int = 100,
        block_ms: int = 5_000,
        claim_idle_s: float = 60.0,
        stale_after_s: float = 900.0,
        state_ttl_s: float = 7 * 86_400.0,
        start_id: str = "0",
        log: TextIO = sys.stderr,
    ) -> None:
        if count < 1 or block_ms < 1 or claim_idle_s < 0 or stale_after_s <= 0:
            raise ValueError("count, block_ms must be >= 1; claim_idle_s >= 0; stale_after_s > 0")
        self.client = client
        self.output = output
        self.stream = stream
        self.group = group
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.stale_after_ms = int(stale_after_s * 1000)
        self.state_ttl_s = int(state_ttl_s)
        self.start_id = start_id
        self.prefix = f"{stream}:consume:{group}:"
        self.stats = ConsumeStats()
        self._log = log
        self._stop = False

    @staticmethod
    def connect(url: str, block_ms: int) -> redis.Redis:
        """A client for ``url`` whose socket timeout outlasts a blocked read by 10 s."""
        return redis.Redis.from_url(
            url, socket_timeout=block_ms / 1000 + 10.0, socket_connect_timeout=5.0
        )

    def stop(self, *_: Any) -> None:
        """Finish the batch in hand, then return from ``run`` (a SIGTERM/SIGINT handler)."""
        self._stop = True

    def run(self, *, exit_when_idle_s: float | None = None) -> ConsumeStats:
        """Read, store, write, acknowledge until ``stop()``; with ``exit_when_idle_s``, also
        return once nothing arrived for that long and no entry of the group is pending."""
        self._ensure_group()
        idle_since = time.monotonic()
        last_sweep = 0.0
        while not self._stop:
            handled = self._claim_pending()
            reply: Any = self.client.xreadgroup(
                self.group, self.name, {self.stream: ">"}, count=self.count, block=self.block_ms
            )
            for _, entries in reply or []:
                self.stats.read += len(entries)
                handled += len(entries)
                self._handle(entries)
            now = time.monotonic()
            if now - last_sweep >= min(60.0, self.stale_after_ms / 1000 / 4):
                self._sweep_stale()
                last_sweep = now
            if handled:
                idle_since = now
            elif (
                exit_when_idle_s is not None
                and now - idle_since >= exit_when_idle_s
                and not self._pending()
            ):
                break
        return self.stats

    # -- steps --------------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists: carry on where it is
                raise

    def _claim_pending(self) -> int:
        """Take over entries idle longer than ``claim_idle_s`` on any worker, and handle them."""
        claimed = 0
        cursor = "0-0"
        while True:
            reply: Any = self.client.xautoclaim(
                self.stream, self.group, self.name, self.claim_idle_ms, cursor, count=self.count
            )
            cursor_b, entries, deleted = reply
            if deleted:  # trimmed from the stream (MAXLEN) before anyone handled them: gone
                self._say(f"{len(deleted)} pending entries were trimmed before being handled")
            entries = [e for e in entries if e[1] is not None]
            if entries:
                claimed += len(entries)
                self._handle(entries)
            cursor = _text(cursor_b)
            if cursor == "0-0":
                break
        self.stats.claimed += claimed
        return claimed

    def _handle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        records: list[tuple[str, dict[str, Any], str]] = []
        for entry_id, fields in entries:
            try:
                text = fields[b"record"].decode()
                record = json.loads(text)
                if not isinstance(record, dict) or "id" not in record or "type" not in record:
                    raise ValueError("not a record")
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                self.stats.unusable += 1
                self._say(f"entry {entry_id.decode()} is not a record ({exc}); acknowledged")
                continue
            if record.get("call_sid"):
                records.append((entry_id.decode(), record, text))
            else:
                self.stats.unattributed += 1
        touched = self._store(records)
        for call_sid in sorted(touched):
            self._write_if_complete(call_sid)
        if entries:
            self.client.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])

    def _store(self, records: list[tuple[str, dict[str, Any], str]]) -> set[str]:
        """Step 1: every record into its call's state, in one transaction (idempotent)."""
        touched: set[str] = set()
        if not records:
            return touched
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=True)
        for entry_id, record, text in records:
            call_sid = record["call_sid"]
            touched.add(call_sid)
            key, expect = self._keys(call_sid)
            value = f"{entry_id} {text}"
            if record["type"] == "call.completed" and record.get("summary") is not None:
                pipe.hset(key, record["id"], value)  # the joined copy replaces one without
            else:
                pipe.hsetnx(key, record["id"], value)
            if record["type"] == "stream.stopped":
                turns = sum(record["summary"]["turn_counts"].values())
                pipe.hset(expect, f"turns:{record['stream_sid']}", turns)
            elif record["type"] in TERMINAL_TYPES:
                pipe.hset(expect, "terminal", record["type"])
        for call_sid in touched:
            key, expect = self._keys(call_sid)
            pipe.expire(key, self.state_ttl_s)
            pipe.expire(expect, self.state_ttl_s)
            pipe.zadd(self.prefix + "active", {call_sid: now_ms})
        pipe.execute()
        self.stats.records += len(records)
        self.stats.calls |= touched
        return touched

    def _write_if_complete(self, call_sid: str) -> None:
        """Step 2: the call's document, once complete, and again when a new record joins it."""
        key, expect_key = self._keys(call_sid)
        ids, expect = self._read(key, expect_key)
        if not is_complete(ids, expect) or expect.get("written") == str(len(ids)):
            return
        self._write(call_sid, complete=True)

    def _write(self, call_sid: str, *, complete: bool) -> None:
        key, expect_key = self._keys(call_sid)
        raw: Any = self.client.hgetall(key)
        stored = {_text(k): _text(v) for k, v in raw.items()}
        if not stored:
            self.client.zrem(self.prefix + "active", call_sid)
            return
        self.output.write(assemble(call_sid, stored, complete=complete))
        self.stats.documents += 1
        self.stats.incomplete += not complete
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(expect_key, "written", len(stored))
        pipe.zrem(self.prefix + "active", call_sid)
        pipe.execute()

    def _sweep_stale(self) -> None:
        """Calls nothing arrived for in ``stale_after_s``: written as they are (incomplete)."""
        cutoff = int(time.time() * 1000) - self.stale_after_ms
        stale: Any = self.client.zrangebyscore(self.prefix + "active", "-inf", cutoff)
        for raw in stale:
            call_sid = _text(raw)
            key, expect_key = self._keys(call_sid)
            ids, expect = self._read(key, expect_key)
            self._write(call_sid, complete=is_complete(ids, expect))

    def _read(self, key: str, expect_key: str) -> tuple[list[str], dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hkeys(key)
        pipe.hgetall(expect_key)
        raw_ids, raw_expect = pipe.execute()
        return [_text(k) for k in raw_ids], {_text(k): _text(v) for k, v in raw_expect.items()}

    def _pending(self) -> int:
        info: Any = self.client.xpending(self.stream, self.group)
        return int(info["pending"])

    def _keys(self, call_sid: str) -> tuple[str, str]:
        return f"{self.prefix}records:{call_sid}", f"{self.prefix}expect:{call_sid}"

    def _say(self, text: str) -> None:
        self._log.write(f"mise-twilio consume: {text}\n")
        self._log.flush()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run_cli(
    *,
    url: str,
    stream: str,
    group: str,
    name: str | None,
    output: Output,
    count: int,
    block_ms: int,
    claim_idle_s: float,
    stale_after_s: float,
    start_id: str,
    exit_when_idle_s: float | None,
) -> ConsumeStats:
    """``mise-twilio consume``: SIGTERM and SIGINT finish the batch in hand, then exit."""
    consumer = Consumer(
        Consumer.connect(url, block_ms),
        output,
        stream=stream,
        group=group,
        name=name,
        count=count,
        block_ms=block_ms,
        claim_idle_s=claim_idle_s,
        stale_after_s=stale_after_s,
        start_id=start_id,
    )

    def stop(sig: int, frame: FrameType | None) -> None:
        consumer.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return consumer.run(exit_when_idle_s=exit_when_idle_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        consumer.client.close()
