"""Offline replay: a recorded Media Stream through one ``CallSession``, records out.

A fixture is a text file with one Twilio Media Streams message per line, exactly as on the wire
(``fixtures/README.md``). Lines are fed as they are, garbage included: that is the point. The
same lines sent to a live server as Twilio would: ``mise_twilio.server.replay_client``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import AnyRecord


def iter_fixture(path: str | Path) -> Iterator[str]:
    """The fixture's lines one at a time (newline stripped, blank lines skipped), read as they
    are consumed: a 1-hour two-track call is ~145 MB of text, and a replay needs one line at a
    time. The file is opened now (raises ``OSError`` here, not at the first line) and closed
    when the iterator is exhausted or garbage-collected."""
    handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed below

    def lines() -> Iterator[str]:
        with handle:
            for line in handle:
                if line.strip():
                    yield line.rstrip("\r\n")

    return lines()


def read_fixture(path: str | Path) -> list[str]:
    """The fixture's lines (newline stripped, blank lines skipped), all at once. Raises
    ``OSError``. For a long call prefer ``iter_fixture``."""
    return list(iter_fixture(path))


def iter_replay(lines: Iterable[str], params: SessionParams | None = None) -> Iterator[AnyRecord]:
    """``replay_offline`` as it goes: each record as soon as the session emits it, so neither
    the input nor the output is ever held whole (``lines`` may be ``iter_fixture(path)``)."""
    session = CallSession(dataclasses.replace(params or SessionParams(), max_track_skew_ms=None))
    for line in lines:
        session.receive_text(line)
        yield from session.take_events()
    session.receive_eof()
    yield from session.take_events()


def replay_offline(lines: Iterable[str], params: SessionParams | None = None) -> list[AnyRecord]:
    """Feed ``lines`` through one ``CallSession`` (no clock: wall-clock fields stay null) and
    return every record, ending with ``stream.stopped``.

    Offline there is no reason to go on without a lagging track, so ``max_track_skew_ms`` is
    ``None`` (wait for everything): the records do not depend on how the two tracks' messages
    interleave in the file, even one track wholly before the other."""
    return list(iter_replay(lines, params))
