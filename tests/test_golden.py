"""Golden records: every committed fixture replayed offline gives these records, byte for byte.

``tests/golden/NAME.jsonl`` holds ``to_json`` of every record of ``replay_offline`` on
``fixtures/NAME.jsonl`` (default parameters, features on). A change to the core that moves a
single number shows up here. When a change is *meant* to change records (a better VAD, a new
field), regenerate them and review the diff like code::

    .venv/bin/python tests/test_golden.py --write
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import FIXTURE_NAMES, ROOT, fixture_lines

from mise_twilio.core.records import AnyRecord, to_json

GOLDEN = ROOT / "tests" / "golden"


def render(records: list[AnyRecord]) -> str:
    return "".join(to_json(r) + "\n" for r in records)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_records_are_byte_identical_to_the_golden_ones(
    name: str, offline_records: dict[str, list[AnyRecord]]
) -> None:
    golden = (GOLDEN / f"{name}.jsonl").read_text(encoding="utf-8")
    got = render(offline_records[name])
    if got != golden:
        for i, (a, b) in enumerate(zip(got.splitlines(), golden.splitlines(), strict=False)):
            assert a == b, f"{name}: record {i} differs"
        assert got.count("\n") == golden.count("\n"), f"{name}: record count differs"


def test_the_readme_turn_is_the_golden_one() -> None:
    """The README's example turn is the golden record (ids abbreviated, wall clock filled in
    as a server fills it): a change that moves a number must move the README too."""
    import json
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r'```json\n(\{"type": "turn".*?)```', readme, re.S)
    assert block is not None
    shown = json.loads(block.group(1))
    golden = next(
        r
        for line in (GOLDEN / "fork_two_track.jsonl").read_text(encoding="utf-8").splitlines()
        if (r := json.loads(line))["id"] == shown["id"]
    )
    assert shown.keys() == golden.keys()
    for key in ("call_sid", "stream_sid", "account_sid"):
        assert shown[key].endswith("…") and golden[key].startswith(shown[key][:-1]), key
    assert golden["started_at"] is None and golden["ended_at"] is None
    wall = {"call_sid", "stream_sid", "account_sid", "started_at", "ended_at"}
    assert {k: v for k, v in shown.items() if k not in wall} == {
        k: v for k, v in golden.items() if k not in wall
    }


def main(argv: list[str]) -> int:
    from mise_twilio.replay import replay_offline

    if argv != ["--write"]:
        print(__doc__)
        return 2
    GOLDEN.mkdir(exist_ok=True)
    for name in FIXTURE_NAMES:
        (GOLDEN / f"{name}.jsonl").write_text(
            render(replay_offline(fixture_lines(name))), encoding="utf-8"
        )
        print(f"wrote {GOLDEN / name}.jsonl")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main(sys.argv[1:]))
