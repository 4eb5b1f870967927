"""replay.py: offline replay, whole or streamed."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import FIXTURE_NAMES, FIXTURES

from mise_twilio.core.records import to_json
from mise_twilio.replay import iter_fixture, iter_replay, read_fixture, replay_offline


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_streamed_replay_gives_the_records_of_the_whole_one(name: str) -> None:
    path = FIXTURES / f"{name}.jsonl"
    assert list(iter_fixture(path)) == read_fixture(path)
    streamed = [to_json(r) for r in iter_replay(iter_fixture(path))]
    assert streamed == [to_json(r) for r in replay_offline(read_fixture(path))]


def test_iter_fixture_reads_as_it_is_consumed(tmp_path: Path) -> None:
    path = tmp_path / "call.jsonl"
    path.write_text('{"event":"connected"}\n\n  \n{"event":"stop"}\r\n', encoding="utf-8")
    lines = iter_fixture(path)
    assert next(lines) == '{"event":"connected"}'
    # the rest is still to read: a line appended now is seen
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"event":"mark"}\n')
    assert list(lines) == ['{"event":"stop"}', '{"event":"mark"}']


def test_iter_fixture_raises_for_a_missing_file_when_called(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        iter_fixture(tmp_path / "missing.jsonl")
