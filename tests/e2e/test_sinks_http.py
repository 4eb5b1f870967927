"""HttpSink + SinkHub against a real HTTP receiver (Starlette on uvicorn, in-process).

The receiver answers 503 for its first ``OUTAGE_S`` seconds, then 200, except 400 for a batch
holding a record whose id ends in ``-poison``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from conftest_redis import CallRecordsFactory
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mise_twilio.server.metrics import Metrics
from mise_twilio.server.sinks.base import DeliveryError, Envelope
from mise_twilio.server.sinks.http import HttpSink
from mise_twilio.server.sinks.hub import SinkHub

OUTAGE_S = 10.0
TOKEN = "t0ken"


@dataclass
class Receiver:
    """What the receiver saw; ``mode`` scripts its answers."""

    mode: str = "outage"  # outage | rate_limit | ok | slow | bad_token
    started_at: float = field(default_factory=time.monotonic)
    requests: list[tuple[float, int, str, list[str]]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    auth: set[str] = field(default_factory=set)
    url: str = ""

    async def ingest(self, request: Request) -> Response:
        now = time.monotonic()
        body = json.loads(await request.body())
        ids = [r["id"] for r in body]
        key = request.headers.get("idempotency-key", "")
        self.auth.add(request.headers.get("authorization", ""))
        status = 200
        if self.mode == "outage" and now - self.started_at < OUTAGE_S:
            status = 503
        elif self.mode == "rate_limit" and not self.requests:
            status = 429
        elif self.mode == "bad_token" and request.headers.get("authorization") != f"Bearer {TOKEN}":
            status = 401
        elif self.mode == "slow":
            await asyncio.sleep(1)
        elif any(i.endswith("-poison") for i in ids):
            status = 400
        self.requests.append((now, status, key, ids))
        if status == 429:
            return PlainTextResponse("slow down", status_code=429, headers={"Retry-After": "2"})
        if status == 503:
            return PlainTextResponse("warming up", status_code=503)
        if status == 400:
            return JSONResponse({"error": "record rejected: poison"}, status_code=400)
        if status == 401:
            return JSONResponse({"error": "bad token"}, status_code=401)
        self.acked.extend(ids)
        return JSONResponse({"accepted": len(ids)})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = Starlette(routes=[Route("/ingest", state.ingest, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    state.url = f"http://127.0.0.1:{port}/ingest"
    state.started_at = time.monotonic()
    try:
        yield state
    finally:
        server.should_exit = True
        await task
        sock.close()


def make_hub(sink: HttpSink, spool_dir: Path, metrics: Metrics | None = None) -> SinkHub:
    return SinkHub(
        [sink],
        queue_max_records=100,
        batch_max_records=25,
        spool_dir=spool_dir,
        metrics=metrics,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )


async def test_outage_then_recovery_every_record_arrives_poison_dead_lettered(
    receiver: Receiver, make_call_records: CallRecordsFactory, tmp_path: Path
) -> None:
    records = make_call_records(245)
    envelopes = [Envelope.of(r) for r in records]
    poison = Envelope(
        id="CAxx:turn:999-poison", type="turn", json='{"id":"CAxx:turn:999-poison","type":"turn"}'
    )
    envelopes.insert(120, poison)
    metrics = Metrics()
    hub = make_hub(
        HttpSink(receiver.url, bearer_token=TOKEN, read_timeout_s=5.0), tmp_path, metrics
    )
    await hub.start()
    for i, e in enumerate(envelopes):
        hub.publish_envelope(e)
        if i % 10 == 0:
            await asyncio.sleep(0.05)  # ~1.3 s of publishing, all inside the outage
    assert hub.stats()["http"].failing
    for _ in range(int((OUTAGE_S + 10) / 0.05)):
        if len(set(receiver.acked)) == len(records):
            break
        await asyncio.sleep(0.05)
    reports = await hub.drain(5.0)
    await hub.close()

    expected = [r.id for r in records]
    counts = collections.Counter(receiver.acked)
    assert set(counts) == set(expected), "every record arrives"
    assert all(c == 1 for c in counts.values()), "no duplicates among 2xx-acknowledged batches"
    assert receiver.acked == expected, "and in publish order"
    assert reports["http"].completed
    assert receiver.auth == {f"Bearer {TOKEN}"}

    dead = [
        json.loads(line)
        for line in (tmp_path / "http" / "dead-letter.jsonl").read_text().splitlines()
    ]
    assert [d["id"] for d in dead] == [poison.id]
    assert dead[0]["status_code"] == 400 and "poison" in dead[0]["error"]

    # A retried batch always carries the same key, and a key always means the same batch.
    bodies_by_key: dict[str, set[tuple[str, ...]]] = collections.defaultdict(set)
    for _, _, key, ids in receiver.requests:
        bodies_by_key[key].add(tuple(ids))
    assert all(len(b) == 1 for b in bodies_by_key.values())
    outage = [r for r in receiver.requests if r[1] == 503]
    assert len(outage) > 5
    first_ok = next(r for r in receiver.requests if r[1] == 200)
    assert first_ok[2] in {r[2] for r in outage}, "the first success retried a 503'd batch"

    stats = hub.stats()["http"]
    assert stats.delivered == len(records) and stats.dead_lettered == 1
    body, _ = metrics.render()
    assert b'mise_sink_delivery_failures_total{reason="http_503",sink="http"}' in body


async def test_retry_after_is_honoured(receiver: Receiver, tmp_path: Path) -> None:
    receiver.mode = "rate_limit"
    hub = make_hub(HttpSink(receiver.url), tmp_path)
    await hub.start()
    hub.publish_envelope(Envelope(id="r-1", type="turn", json='{"id":"r-1","type":"turn"}'))
    for _ in range(200):
        if receiver.acked:
            break
        await asyncio.sleep(0.02)
    await hub.drain(1.0)
    await hub.close()
    (t_429, status_429, key_429, _), (t_ok, status_ok, key_ok, _) = receiver.requests
    assert (status_429, status_ok) == (429, 200)
    assert t_ok - t_429 >= 1.95, "waited the 2 s Retry-After despite a 50 ms backoff"
    assert key_ok == key_429
    assert receiver.auth == {""}, "no token configured: no Authorization header"


async def test_a_wrong_token_keeps_records_in_the_spool_until_it_is_fixed(
    receiver: Receiver, tmp_path: Path
) -> None:
    """401 means the configuration is wrong, not the batch: nothing is dead-lettered, and once
    the receiver accepts the token all records arrive."""
    receiver.mode = "bad_token"
    sink = HttpSink(receiver.url, bearer_token="wrong")
    hub = make_hub(sink, tmp_path)
    await hub.start()
    for i in range(30):
        hub.publish_envelope(Envelope(id=f"r-{i}", type="turn", json=f'{{"id":"r-{i}"}}'))
    for _ in range(100):
        if len(receiver.requests) >= 3:
            break
        await asyncio.sleep(0.02)
    assert receiver.requests and {status for _, status, _, _ in receiver.requests} == {401}
    receiver.mode = "ok"  # the operator fixes the token on the receiving side
    for _ in range(300):
        if len(set(receiver.acked)) == 30:
            break
        await asyncio.sleep(0.02)
    await hub.drain(2.0)
    await hub.close()
    assert set(receiver.acked) == {f"r-{i}" for i in range(30)}
    assert not (tmp_path / "http" / "dead-letter.jsonl").exists()


async def test_connect_refused_and_timeout_are_retryable(receiver: Receiver) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    batch = [Envelope(id="a", type="turn", json='{"id":"a","type":"turn"}')]
    refused = HttpSink(f"http://127.0.0.1:{closed_port}/ingest", connect_timeout_s=1.0)
    await refused.open()
    with pytest.raises(DeliveryError) as err:
        await refused.deliver(batch)
    assert err.value.retryable and err.value.reason == "connect"
    assert not await refused.ready()
    await refused.close()

    receiver.mode = "slow"
    slow = HttpSink(receiver.url, read_timeout_s=0.3)
    await slow.open()
    with pytest.raises(DeliveryError) as err:
        await slow.deliver(batch)
    assert err.value.retryable and err.value.reason == "timeout"
    await slow.close()
