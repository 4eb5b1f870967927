"""mise_twilio/consume.py: the call document, completeness, and the worker against a real
redis-server (duplicates, interleaved calls, several workers, entries left by a dead one)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest_redis import CallRecordsFactory, RedisServer

from mise_twilio.consume import Consumer, Output, assemble, is_complete
from mise_twilio.core.records import AnyRecord, CallStatusEvent, StreamStopped, to_json

STREAM = "c:events"


def xadd_all(client: redis.Redis, records: list[AnyRecord]) -> None:
    for r in records:
        client.xadd(STREAM, {"record": to_json(r), "type": r.type, "id": r.id})


def consumer(client: redis.Redis, out: Path, name: str, **kw: Any) -> Consumer:
    return Consumer(client, Output(out), stream=STREAM, name=name, block_ms=100, **kw)


def documents(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def test_is_complete_needs_terminal_start_stop_and_every_turn() -> None:
    ids = ["MZ1:stream.started", "MZ1:turn:0", "MZ1:turn:1", "MZ1:stream.stopped"]
    assert is_complete(ids, {"terminal": "call.completed", "turns:MZ1": "2"})
    assert not is_complete(ids, {"turns:MZ1": "2"})  # no terminal status yet
    assert not is_complete(ids[:2] + ids[3:], {"terminal": "call.busy", "turns:MZ1": "2"})
    assert not is_complete(ids[:3], {"terminal": "call.completed"})  # not stopped
    assert not is_complete(ids[1:], {"terminal": "call.completed", "turns:MZ1": "2"})
    assert is_complete([], {"terminal": "call.no_answer"})  # never streamed


def test_assemble_orders_and_keeps_one_copy_per_id(make_call_records: CallRecordsFactory) -> None:
    records = make_call_records(6, call_index=1)
    shuffled = list(enumerate(records))
    random.Random(4).shuffle(shuffled)
    stored = {r.id: f"{1000 + i}-0 {to_json(r)}" for i, r in shuffled}
    doc = assemble(records[0].call_sid or "", stored, complete=True)
    (stream,) = doc["streams"]
    starts = [t["start_ms"] for t in stream["turns"]]
    assert starts == sorted(starts) and len(starts) == 6
    assert [e["type"] for e in stream["events"]] == ["dtmf", "diagnostic"]
    assert [e["type"] for e in doc["lifecycle"]] == ["call.completed"]
    assert doc["summary"] == stream["stopped"]["summary"]  # no joined summary: the stream's
    assert doc["records"] == len(records)


def test_worker_writes_each_call_once_complete(
    tmp_path: Path, redis_server: RedisServer, make_call_records: CallRecordsFactory
) -> None:
    client = Consumer.connect(redis_server.url, 100)
    calls = [make_call_records(n, call_index=i) for i, n in enumerate((3, 8, 5))]
    # interleaved as replicas publish them, every record twice (at-least-once)
    merged = [r for group in zip(*[c[:6] for c in calls], strict=True) for r in group]
    merged += [r for c in calls for r in c[6:]]
    xadd_all(client, merged + merged[::3])
    out = tmp_path / "docs"
    stats = consumer(client, out, "w1", count=7).run(exit_when_idle_s=0.3)
    docs = documents(out)
    assert set(docs) == {c[0].call_sid for c in calls}
    for call in calls:
        doc = docs[call[0].call_sid or ""]
        assert doc["complete"] is True
        ids = [t["id"] for s in doc["streams"] for t in s["turns"]]
        assert sorted(ids) == sorted(r.id for r in call if r.type == "turn")
        assert doc["records"] == len(call)
    assert stats.documents == 3  # duplicates after completion did not rewrite anything
    assert client.xpending(STREAM, "mise-consume")["pending"] == 0


def test_a_joined_completed_replaces_one_without_summary(
    tmp_path: Path, redis_server: RedisServer, make_call_records: CallRecordsFactory
) -> None:
    client = Consumer.connect(redis_server.url, 100)
    records = make_call_records(2)
    stopped = next(r for r in records if isinstance(r, StreamStopped))
    bare = records[-1]
    assert isinstance(bare, CallStatusEvent) and bare.summary is None
    joined = bare.model_copy(update={"summary": stopped.summary})
    xadd_all(client, [*records, joined, bare])  # both replicas published it (fallback)
    out = tmp_path / "docs"
    consumer(client, out, "w1").run(exit_when_idle_s=0.3)
    (doc,) = documents(out).values()
    (completed,) = doc["lifecycle"]
    assert completed["summary"] == stopped.summary.model_dump(mode="json")


def test_pending_entries_of_a_dead_worker_are_claimed(
    tmp_path: Path, redis_server: RedisServer, make_call_records: CallRecordsFactory
) -> None:
    client = Consumer.connect(redis_server.url, 100)
    calls = [make_call_records(4, call_index=i) for i in range(2)]
    xadd_all(client, [r for c in calls for r in c])
    client.xgroup_create(STREAM, "mise-consume", id="0")
    # a worker read half the stream and died before acknowledging it
    taken = client.xreadgroup("mise-consume", "dead", {STREAM: ">"}, count=len(calls[0]) + 3)
    assert isinstance(taken, list)  # RESP2's reply shape (RESP3 would give a dict)
    assert client.xpending(STREAM, "mise-consume")["pending"] == len(calls[0]) + 3
    out = tmp_path / "docs"
    log = io.StringIO()
    survivor = Consumer(
        client, Output(out), stream=STREAM, name="w2", block_ms=100, claim_idle_s=0, log=log
    )
    stats = survivor.run(exit_when_idle_s=0.3)
    assert stats.claimed == len(taken[0][1])
    assert stats.read == sum(len(c) for c in calls) - stats.claimed
    assert set(documents(out)) == {c[0].call_sid for c in calls}
    assert all(d["complete"] for d in documents(out).values())
    assert client.xpending(STREAM, "mise-consume")["pending"] == 0


def test_two_workers_share_a_call_and_stale_calls_are_written_incomplete(
    tmp_path: Path, redis_server: RedisServer, make_call_records: CallRecordsFactory
) -> None:
    client = Consumer.connect(redis_server.url, 100)
    call = make_call_records(6)
    xadd_all(client, call[:5])
    out = tmp_path / "docs"
    first = consumer(client, out, "w1", count=2)
    first.run(exit_when_idle_s=0.2)
    assert documents(out) == {}  # not finished: no stop, no completed
    xadd_all(client, call[5:])
    consumer(client, out, "w2", count=2).run(exit_when_idle_s=0.2)
    (doc,) = documents(out).values()
    assert doc["complete"] and doc["records"] == len(call)  # both workers' records

    lost = make_call_records(3, call_index=9)[:-2]  # a replica died: no stop, no completed
    xadd_all(client, lost)
    stale = consumer(client, out, "w3", stale_after_s=0.2)
    stats = stale.run(exit_when_idle_s=0.6)
    assert stats.incomplete == 1
    assert documents(out)[lost[0].call_sid or ""]["complete"] is False


def test_cli_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from mise_twilio.cli import main

    monkeypatch.delenv("MISE_REDIS_URL", raising=False)
    assert main(["consume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MISE_REDIS_URL" in err
    closed = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["consume", "--redis-url", closed, "--block-ms", "100"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mise-twilio: error: redis at {closed}")
    assert "Traceback" not in err
    # An --out that cannot hold files is a usage error before Redis is tried.
    (tmp_path / "plain").write_text("")
    out = str(tmp_path / "plain" / "docs")
    assert main(["consume", "--redis-url", closed, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err == f"mise-twilio: error: --out {out}: Not a directory\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_an_idle_stream_does_not_crash_the_worker(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # redis-py's default socket_timeout equal to the BLOCK time makes every idle read time out
    # (issue 10); ``Consumer.connect`` sets it above, so blocked reads on an empty stream end
    # normally, again and again.
    client = Consumer.connect(redis_server.url, 500)
    worker = Consumer(client, Output(tmp_path), stream=STREAM, name="idle", block_ms=500)
    stats = worker.run(exit_when_idle_s=1.2)  # at least two blocked reads that get nothing
    assert (stats.read, stats.documents) == (0, 0)
