"""Acceptance: two replicas behind HAProxy, a rolling restart, every call whole in Redis.

Real processes on loopback: Debian's ``haproxy`` with ``deploy/haproxy.cfg`` (the file
docker-compose.yml mounts) in front of two ``mise-twilio serve`` replicas and a real
redis-server. Twenty calls (the committed fixtures, each with its own CallSid/StreamSid) are
replayed concurrently through the load balancer while their status callbacks are posted
through it too, so a call's stream and its callbacks often reach different replicas. Halfway
through, replica A gets SIGTERM: it answers /readyz 503 (HAProxy takes it out), lets its
streams run for the stream grace, closes the rest (1012) and exits 0; it is started again
(the rolling restart) and HAProxy takes it back. Twilio never resumes a cut stream, so a cut
call's records end where its stream did.

Then ``mise-twilio consume`` runs: a first worker is SIGKILLed while it holds a batch (it blocks
writing to a pipe nobody reads), a second claims what it left pending, and the folder must
hold 20 complete call documents:

- "complete" is measured against what was delivered: each stream's turns equal, by id and
  content, the offline replay of the part of the fixture the replica received (all of it, or
  for a cut call the prefix whose media count its ``stream.stopped`` reports, closed as
  ``shutdown``);
- ``call.completed`` carries that stream's summary and ``stream.stopped`` the call's status
  (``in-progress``, posted before the stream, or ``completed``, posted as it ended),
  whichever replicas they reached;
- every record id in the Redis stream is in exactly one document, once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import httpx
import pytest
import redis
from conftest_redis import RedisServer
from server_harness import read_jsonl
from support import FIXTURE_NAMES, ROOT, comparable, fixture_lines, status_callback
from test_operations import ServerProcess, free_port

from mise_twilio.core.call import CallSession
from mise_twilio.core.records import AnyRecord, StreamStopped, TurnRecord
from mise_twilio.server.app import STREAM_PATH, WEBHOOK_PATH
from mise_twilio.server.replay_client import replay_websocket

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
CALLS = 20
SPEED = 4.0  # × real time: the calls last 3.6-10 s
START_EVERY_S = 0.25  # calls start one after another, so some start after the SIGTERM
SIGTERM_AFTER_S = 1.5
CHECK_INTER_MS = 250
# What docker-compose.yml sets, scaled to the check interval above (docs/scaling.md).
REPLICA_ENV = {
    "MISE_DRAIN_DELAY_S": "1.0",  # >= 2 failed checks × 250 ms + the check timeout
    "MISE_STREAM_GRACE_S": "1.0",
    "MISE_PII_KEY": "replicas-share-this-key",  # the same on every replica: same hashes
    "MISE_REDIS_STREAM": "e2e:events",
}
HANG_GUARD_S = 60.0
"""Bounds a wait so a broken run fails instead of hanging; not a timing check."""


# ---------------------------------------------------------------------------------------------
# the calls


@dataclass(frozen=True)
class Call:
    index: int
    fixture: str
    call_sid: str
    stream_sid: str
    account_sid: str
    lines: list[str]


def make_calls() -> list[Call]:
    """``CALLS`` calls cycling through the committed fixtures, each with its own sids."""
    calls = []
    for i in range(CALLS):
        name = FIXTURE_NAMES[i % len(FIXTURE_NAMES)]
        lines = fixture_lines(name)
        start = next(json.loads(line) for line in lines if '"event":"start"' in line)["start"]
        digest = hashlib.sha256(f"{name}/{i}".encode()).hexdigest()
        call_sid, stream_sid = "CA" + digest[:32], "MZ" + digest[32:]
        lines = [
            line.replace(start["callSid"], call_sid).replace(start["streamSid"], stream_sid)
            for line in lines
        ]
        calls.append(Call(i, name, call_sid, stream_sid, start["accountSid"], lines))
    return calls


def offline(lines: list[str], *, cut: bool) -> list[AnyRecord]:
    """The records the bridge makes of ``lines``: ended by EOF, or cut by a shutdown."""
    session = CallSession()
    records: list[AnyRecord] = []
    for line in lines:
        session.receive_text(line)
        records += session.take_events()
    if cut:
        session.close("shutdown")
    else:
        session.receive_eof()
    return records + session.take_events()


def media_count(records: list[AnyRecord]) -> dict[str, int]:
    stopped = next(r for r in records if isinstance(r, StreamStopped))
    return stopped.summary.media_messages


def delivered_prefix(call: Call, media: dict[str, int], sent: int) -> list[AnyRecord]:
    """The offline records of the shortest prefix of what was sent whose media count is the
    one the replica reported in ``stream.stopped`` (what it received before the cut)."""
    lo, hi = 0, sent  # f(n) = media messages in lines[:n], non-decreasing in n
    target = sum(media.values())
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(media_count(offline(call.lines[:mid], cut=True)).values()) < target:
            lo = mid + 1
        else:
            hi = mid
    records = offline(call.lines[:lo], cut=True)
    assert media_count(records) == media, (call.fixture, media, media_count(records))
    return records


# ---------------------------------------------------------------------------------------------
# processes


class HAProxy:
    def __init__(self, tmp_path: Path, port: int, backends: list[int]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "MISE_LB_BIND": f"127.0.0.1:{port}",
            "MISE_REPLICA_A": f"127.0.0.1:{backends[0]}",
            "MISE_REPLICA_B": f"127.0.0.1:{backends[1]}",
            "MISE_LB_CHECK_INTER": f"{CHECK_INTER_MS}ms",
        }
        self.log_path = tmp_path / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, executable: str) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [executable, "-db", "-f", str(HAPROXY_CFG)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@asynccontextmanager
async def cluster(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[HAProxy, list[Any]]]:
    executable = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if executable is None:
        pytest.skip("haproxy is not installed (CI installs it: apt-get install haproxy)")
    env = REPLICA_ENV | {"MISE_REDIS_URL": redis_url}
    replicas = [
        ServerProcess(tmp_path / name, tmp_path / f"{name}.log", **env) for name in ("a", "b")
    ]
    lb = HAProxy(tmp_path, free_port(), [r.port for r in replicas])
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        lb.start(executable)
        await wait_in_rotation(lb, replicas, {0, 1})
        yield lb, replicas
    finally:
        lb.stop()
        for r in replicas:
            r.kill()


async def wait_in_rotation(lb: HAProxy, replicas: list[Any], want: set[int]) -> None:
    """Until the LB answers and exactly the replicas ``want`` are ready, plus the "rise 2"
    checks HAProxy needs to put a replica (back) in rotation."""
    deadline = time.monotonic() + HANG_GUARD_S
    async with httpx.AsyncClient() as client:
        while True:
            try:
                up = (await client.get(lb.url + "/healthz")).status_code == 200
            except httpx.TransportError:
                up = False
            ready = set()
            for i, r in enumerate(replicas):
                try:
                    if (await client.get(r.http_url + "/readyz")).status_code == 200:
                        ready.add(i)
                except httpx.TransportError:
                    pass
            if up and ready == want:
                # HAProxy needs "rise 2" checks to put a replica back: give it those.
                await asyncio.sleep(3 * CHECK_INTER_MS / 1000)
                return
            assert time.monotonic() < deadline, f"replicas {ready} ready, want {want}"
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Twilio's side of each call


async def post_status(client: httpx.AsyncClient, call: Call, status: str, seq: int) -> None:
    form = status_callback(status, seq, CallSid=call.call_sid, AccountSid=call.account_sid)
    response = await client.post(
        WEBHOOK_PATH,
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 204, response.text


async def run_call(lb: HAProxy, call: Call) -> tuple[int, int | None]:
    """Callbacks up to in-progress, the stream through the LB, then ``completed`` (Twilio
    sends it when the call ends, after the stream's ``stop`` or after the stream was cut).
    Returns (messages sent, close code)."""
    await asyncio.sleep(call.index * START_EVERY_S)
    async with httpx.AsyncClient(base_url=lb.url) as client:
        for seq, status in enumerate(["initiated", "ringing", "in-progress"]):
            await post_status(client, call, status, seq)
        ws_url = lb.url.replace("http://", "ws://") + STREAM_PATH
        stats = await replay_websocket(call.lines, ws_url, speed=SPEED)
        await post_status(client, call, "completed", 3)
    return stats.messages_sent, stats.close_code


async def rolling_restart(replica: Any, lb: HAProxy, replicas: list[Any]) -> int:
    await asyncio.sleep(SIGTERM_AFTER_S)
    replica.signal(signal.SIGTERM)
    returncode: int = await replica.wait(HANG_GUARD_S)
    await replica.start()  # same port, same data directory
    await wait_in_rotation(lb, replicas, {0, 1})
    return returncode


# ---------------------------------------------------------------------------------------------
# consumers


def consume_cmd(redis_url: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mise_twilio.cli",
        "consume",
        "--redis-url",
        redis_url,
        "--stream",
        REPLICA_ENV["MISE_REDIS_STREAM"],
        "--block-ms",
        "200",
        *args,
    ]


def consumer_info(client: redis.Redis, name: str) -> dict[str, Any]:
    try:
        consumers = client.xinfo_consumers(REPLICA_ENV["MISE_REDIS_STREAM"], "mise-consume")
    except redis.ResponseError:  # NOGROUP: the worker has not created it yet
        consumers = []
    for info in consumers:
        if info["name"] in (name, name.encode()):
            return dict(info)
    return {"pending": 0, "idle": 0}


def spawn_doomed(redis_url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The first worker, printing documents into a pipe whose read end (returned) nobody
    reads until it is dead."""
    read_fd, write_fd = os.pipe()
    with open(tmp_path / "consume-1.log", "wb") as stderr:
        process = subprocess.Popen(
            consume_cmd(redis_url, "--consumer", "doomed", "--count", "50", "--out", "-"),
            stdout=write_fd,
            stderr=stderr,
            cwd=ROOT,
        )
    os.close(write_fd)
    return process, read_fd


async def kill_mid_batch(redis_url: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Once the pipe is full the first worker blocks holding a read batch (pending, not
    acknowledged): SIGKILL it there. Returns the documents it managed to print."""
    client = redis.Redis.from_url(redis_url)
    process, read_fd = spawn_doomed(redis_url, tmp_path)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            info = consumer_info(client, "doomed")
            if info["pending"] > 0 and info["idle"] >= 500:  # holding a batch, stuck
                break
            assert process.poll() is None, "the first consumer exited on its own"
            assert time.monotonic() < deadline, "the first consumer never blocked mid-batch"
            await asyncio.sleep(0.05)
        process.kill()
        await asyncio.to_thread(process.wait, 10)
        assert consumer_info(client, "doomed")["pending"] > 0  # killed holding entries
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):  # the writer is gone: reads end at EOF
            chunks.append(chunk)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(read_fd)
        client.close()
    # the last line may be cut mid-document: only whole lines are documents
    return [json.loads(line) for line in b"".join(chunks).decode().split("\n")[:-1]]


# ---------------------------------------------------------------------------------------------
# the test


async def test_replicas_rolling_restart_and_consumer_crash(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    calls = make_calls()
    async with cluster(tmp_path, redis_server.url) as (lb, replicas):
        outcomes = asyncio.gather(*(run_call(lb, c) for c in calls))
        restart = asyncio.create_task(rolling_restart(replicas[0], lb, replicas))
        results = await asyncio.wait_for(outcomes, HANG_GUARD_S)
        assert await restart == 0, replicas[0].log()  # SIGTERM: a clean exit
        for r in replicas:
            r.signal(signal.SIGTERM)
        assert [await r.wait(HANG_GUARD_S) for r in replicas] == [0, 0]

    # Which replica had each stream, and who got each call's status callbacks.
    served: dict[str, set[str]] = {}
    stream_on: dict[str, str] = {}
    for name in ("a", "b"):
        for record in read_jsonl(tmp_path / name / "events.jsonl"):
            if record["type"] == "stream.started":
                stream_on[record["call_sid"]] = name
            elif record["type"].startswith("call."):
                served.setdefault(record["call_sid"], set()).add(name)
    cut = {c.call_sid for c, (_, code) in zip(calls, results, strict=True) if code == 1012}
    assert cut, "the SIGTERM cut no stream: it came too late to test anything"
    assert {stream_on[sid] for sid in cut} == {"a"}
    crossed = [c for c in calls if served.get(c.call_sid, set()) - {stream_on[c.call_sid]}]
    assert crossed, "no call had its callbacks on another replica than its stream"

    printed = await kill_mid_batch(redis_server.url, tmp_path)
    finished = await asyncio.to_thread(
        subprocess.run,
        consume_cmd(
            redis_server.url,
            *("--consumer", "survivor", "--out", "-"),
            *("--claim-idle-s", "0.5", "--exit-when-idle-s", "2"),
        ),
        cwd=ROOT,
        capture_output=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr.decode()
    stats = json.loads(finished.stderr.decode().strip().splitlines()[-1])
    assert stats["claimed"] > 0  # the dead worker's batch was taken over
    survived = [json.loads(line) for line in finished.stdout.decode().splitlines()]

    # Both workers' output, deduplicated on call_sid: a document written twice (the killed
    # worker printed it but died before acknowledging) is the same document.
    documents: dict[str, dict[str, Any]] = {}
    for document in printed + survived:
        assert documents.setdefault(document["call_sid"], document) == document
    assert sorted(documents) == sorted(c.call_sid for c in calls)
    assert printed and survived  # each worker delivered part of the calls
    print(
        f"{len(cut)} streams cut by the SIGTERM, {len(crossed)} calls with callbacks on another "
        f"replica than their stream; documents: {len(printed)} printed by the killed worker, "
        f"{len(survived)} by the survivor ({stats['claimed']} entries claimed)"
    )
    for call, (sent, close_code) in zip(calls, results, strict=True):
        check_document(documents[call.call_sid], call, sent, cut=call.call_sid in cut)
        assert close_code in (1000, 1012)

    # Nothing lost: every record in the stream is in its call's document, exactly once.
    client = redis.Redis.from_url(redis_server.url)
    entries = client.xrange(REPLICA_ENV["MISE_REDIS_STREAM"], "-", "+")
    client.close()
    # redis-py types every decode mode (and nil entries); this client's XRANGE gives bytes
    in_stream = {
        json.loads(f[b"record"])["id"]
        for _, f in cast("list[tuple[bytes, dict[bytes, bytes]]]", entries)
    }
    in_documents = Counter(r["id"] for d in documents.values() for r in document_records(d))
    assert set(in_documents) == in_stream
    assert max(in_documents.values()) == 1


def document_records(document: dict[str, Any]) -> list[dict[str, Any]]:
    out = list(document["lifecycle"])
    for stream in document["streams"]:
        out += [stream["started"], stream["stopped"], *stream["turns"], *stream["events"]]
    return [r for r in out if r is not None]


def check_document(document: dict[str, Any], call: Call, sent: int, *, cut: bool) -> None:
    assert document["complete"] is True
    assert [r["type"] for r in document["lifecycle"]] == [
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.completed",
    ]
    (stream,) = document["streams"]
    stopped = stream["stopped"]
    assert stopped["reason"] == ("shutdown" if cut else "stop")
    if cut:
        expected = delivered_prefix(call, stopped["summary"]["media_messages"], sent)
    else:
        assert sent == len(call.lines)
        expected = offline(call.lines, cut=False)
    turns = sorted(
        (r for r in expected if isinstance(r, TurnRecord)),
        key=lambda t: (t.start_ms, t.track, t.index),
    )
    assert [comparable(t) for t in stream["turns"]] == [comparable(t) for t in turns]
    (expected_stop,) = [r for r in expected if isinstance(r, StreamStopped)]
    assert stopped["summary"] == expected_stop.summary.model_dump(mode="json")
    completed = document["lifecycle"][-1]
    assert completed["summary"] == stopped["summary"]  # the join, across replicas
    # in-progress was posted before the stream began, completed right after it ended: the
    # stop reached Redis before or after completed did (never None: the join found it)
    assert stopped["last_call_status"] in ("in-progress", "completed")


def test_compose_runs_the_topology_this_test_runs() -> None:
    """docker-compose.yml: two replicas with the settings above (timings scaled to its check
    interval), HAProxy with deploy/haproxy.cfg and the variables this test sets, Redis."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "mise-a", "mise-b", "haproxy"} <= set(services)
    haproxy = services["haproxy"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    lb_env = haproxy["environment"]
    assert set(lb_env) == set(HAProxy(Path("."), 0, [0, 0]).env) - set(os.environ)
    check_inter_s = float(lb_env["MISE_LB_CHECK_INTER"].removesuffix("s"))
    cfg = HAPROXY_CFG.read_text()
    assert "fall 2" in cfg and "timeout check 1s" in cfg and "/readyz" in cfg
    for name in ("mise-a", "mise-b"):
        env = services[name]["environment"]
        assert set(REPLICA_ENV) <= set(env)
        assert env["MISE_REDIS_URL"].startswith("redis://redis:")
        drain_s = float(env["MISE_DRAIN_DELAY_S"])
        # HAProxy takes a replica out after 2 failed checks (each up to the 1 s timeout)
        assert drain_s >= 2 * check_inter_s + 1.0
        budget_s = drain_s + float(env["MISE_STREAM_GRACE_S"])
        budget_s += float(env["MISE_SHUTDOWN_DEADLINE_S"])
        assert float(services[name]["stop_grace_period"].removesuffix("s")) > budget_s
    # the same proportion in this test: drain >= 2 checks + the check timeout, scaled
    assert float(REPLICA_ENV["MISE_DRAIN_DELAY_S"]) >= 3 * CHECK_INTER_MS / 1000
