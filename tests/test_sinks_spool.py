"""The on-disk spool: append, peek/commit, replay after reopen, torn lines, segment deletion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from mise_twilio.server.sinks.base import Envelope
from mise_twilio.server.sinks.spool import COMMIT_FILE, Spool, decode_line, encode_line


def env(i: int, payload: str = "") -> Envelope:
    record = {"type": "turn", "id": f"r-{i}", "index": i, "text": payload}
    return Envelope(id=f"r-{i}", type="turn", json=json.dumps(record, separators=(",", ":")))


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("seg-*.jsonl"))


def opened(directory: Path, **kwargs: int) -> Spool:
    spool = Spool(directory, **kwargs)  # type: ignore[arg-type]
    spool.open()
    return spool


def test_line_round_trip_keeps_record_text_byte_for_byte() -> None:
    e = Envelope(id='a"b', type="turn", json='{"id":"a\\"b","type":"turn","x":"é\\n","y":1.50}')
    line = encode_line(e)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line) == e
    assert json.loads(line)["record"]["y"] == 1.5


def test_decode_accepts_other_key_orders_and_rejects_broken_lines() -> None:
    line = b'{"type":"turn","record":{"id":"x","type":"turn"},"id":"x"}\n'
    assert decode_line(line) == Envelope(id="x", type="turn", json='{"id":"x","type":"turn"}')
    for bad in (
        b'{"id":"x","type":"turn","record":{"id":"x"\n',
        b'{"id":"x","type":"turn"}\n',
        b"\x00\x00\x00\n",
        b"[1,2]\n",
    ):
        with pytest.raises(ValueError):
            decode_line(bad)


def test_append_peek_commit_deletes_delivered_segment(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    assert spool.is_empty and spool.peek(10) == []
    written = spool.append([env(i) for i in range(5)])
    assert spool.pending_bytes == written > 0
    assert [e.id for e in spool.peek(3)] == ["r-0", "r-1", "r-2"]
    assert [e.id for e in spool.peek(3)] == ["r-0", "r-1", "r-2"], "peek does not consume"
    spool.commit(2)
    assert [e.id for e in spool.peek(10)] == ["r-2", "r-3", "r-4"]
    spool.commit(3)
    assert spool.is_empty and spool.pending_bytes == 0
    assert segments(tmp_path) == [], "a fully delivered segment is deleted"
    spool.append([env(5)])
    assert [e.id for e in spool.peek(10)] == ["r-5"]
    with pytest.raises(ValueError):
        spool.commit(2)
    spool.close()


def test_replay_after_reopen_starts_at_committed_offset(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([env(i) for i in range(10)])
    spool.peek(4)
    spool.commit(4)
    spool.close()

    again = opened(tmp_path)
    assert [e.id for e in again.peek(100)] == [f"r-{i}" for i in range(4, 10)]
    again.append([env(10)])
    assert len(segments(tmp_path)) == 2, "appends after reopen go to a fresh segment"
    assert [e.id for e in again.peek(100)] == [f"r-{i}" for i in range(4, 11)]
    again.commit(7)
    assert segments(tmp_path) == []
    again.close()

    third = opened(tmp_path)
    assert third.is_empty and third.peek(10) == []
    third.append([env(11)])
    assert [e.id for e in third.peek(10)] == ["r-11"], "sequence numbers never go backwards"


def test_torn_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([env(i) for i in range(3)])
    spool.close()
    (seg,) = segments(tmp_path)
    with open(tmp_path / seg, "ab") as f:
        f.write(encode_line(env(3))[:25])  # what a SIGKILL mid-write leaves

    with capture_logs() as logs:
        again = opened(tmp_path)
        again.append([env(4)])
        assert [e.id for e in again.peek(100)] == ["r-0", "r-1", "r-2", "r-4"]
    assert again.skipped_lines == 1
    assert any(
        entry["event"] == "spool_line_skipped" and entry["log_level"] == "warning" for entry in logs
    )
    again.commit(4)
    assert again.is_empty and segments(tmp_path) == []


def test_corrupt_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([env(0)])
    spool.close()
    (seg,) = segments(tmp_path)
    with open(tmp_path / seg, "ab") as f:
        f.write(b"\x00\x00garbage\n")
        f.write(encode_line(env(1)))
    with capture_logs():
        again = opened(tmp_path)
        assert [e.id for e in again.peek(10)] == ["r-0", "r-1"]
    assert again.skipped_lines == 1


def test_only_junk_left_is_stepped_over(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([env(0)])
    spool.close()
    (seg,) = segments(tmp_path)
    with open(tmp_path / seg, "ab") as f:
        f.write(b'{"id":"torn')
    with capture_logs():
        again = opened(tmp_path)
        assert [e.id for e in again.peek(10)] == ["r-0"]
        again.commit(1)
        assert again.peek(10) == []
    assert again.is_empty and segments(tmp_path) == []


def test_segments_rotate_and_are_deleted_once_passed(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_max_bytes=1000)
    for i in range(20):
        spool.append([env(i, payload="x" * 200)])
    n_segments = len(segments(tmp_path))
    assert n_segments >= 4
    before = spool.pending_bytes
    got = spool.peek(7)
    spool.commit(7)
    assert [e.id for e in got] == [f"r-{i}" for i in range(7)]
    assert len(segments(tmp_path)) < n_segments
    assert spool.pending_bytes < before
    on_disk = sum((tmp_path / s).stat().st_size for s in segments(tmp_path))
    assert spool.pending_bytes <= on_disk
    assert [e.id for e in spool.peek(100)] == [f"r-{i}" for i in range(7, 20)]


def test_unreadable_commit_file_means_replay_from_the_start(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([env(i) for i in range(3)])
    spool.peek(2)
    spool.commit(2)
    spool.close()
    (tmp_path / COMMIT_FILE).write_text("{not json")
    with capture_logs() as logs:
        again = opened(tmp_path)
    assert [e.id for e in again.peek(10)] == ["r-0", "r-1", "r-2"], "re-delivery, never loss"
    assert any(entry["event"] == "spool_commit_unreadable" for entry in logs)


def test_survives_sigkill_of_the_writing_process(tmp_path: Path) -> None:
    # A real process appends in a loop and is killed mid-stream: everything it fsynced must be
    # readable, in order, and a torn tail must not break the reader.
    child = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from mise_twilio.server.sinks.base import Envelope
        from mise_twilio.server.sinks.spool import Spool
        spool = Spool(Path({str(tmp_path)!r}), segment_max_bytes=200_000)
        spool.open()
        i = 0
        while True:
            batch = []
            for _ in range(50):
                rec = json.dumps({{"type": "turn", "id": f"r-{{i}}", "pad": "p" * 300}})
                batch.append(Envelope(id=f"r-{{i}}", type="turn", json=rec))
                i += 1
            spool.append(batch)
            if i == 500:
                print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    with capture_logs():
        spool = opened(tmp_path)
        ids: list[str] = []
        while batch := spool.peek(1000):
            ids.extend(e.id for e in batch)
            spool.commit(len(batch))
    assert len(ids) >= 500
    assert ids == [f"r-{i}" for i in range(len(ids))], "a contiguous prefix, in order"
    assert spool.is_empty


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 6)),
            st.tuples(st.just("consume"), st.integers(1, 8)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=30,
    )
)
def test_spool_behaves_like_a_fifo(
    ops: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("spool")
    spool = Spool(directory, segment_max_bytes=300, fsync=False)
    spool.open()
    model: list[str] = []
    counter = 0
    for op, n in ops:
        if op == "append":
            spool.append([env(counter + k) for k in range(n)])
            model.extend(f"r-{counter + k}" for k in range(n))
            counter += n
        elif op == "consume":
            got = [e.id for e in spool.peek(n)]
            assert got == model[:n]
            spool.commit(len(got))
            del model[: len(got)]
        else:
            spool.close()
            spool = Spool(directory, segment_max_bytes=300, fsync=False)
            spool.open()
        assert spool.is_empty == (not model)
    assert [e.id for e in spool.peek(10_000)] == model
    spool.close()
