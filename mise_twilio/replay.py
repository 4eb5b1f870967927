"""Offline replay: a recorded Media Stream through one ``CallSession``, records out.

A fixture is a text file with one Twilio Media Streams message per line, exactly as on the wire
(``fixtures/README.md``). Lines are fed as they are, garbage included: that is the point. The
same lines sent to a live server as Twilio would: ``mise_twilio.server.replay_client``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import AnyRecord


def read_fixture(path: str | Path) -> list[str]:
    """The fixture's lines (newline stripped, blank lines skipped). Raises ``OSError``."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return [line.rstrip("\r\n") for line in handle if line.strip()]


def replay_offline(lines: list[str], params: SessionParams | None = None) -> list[AnyRecord]:
    """Feed ``lines`` through one ``CallSession`` (no clock: wall-clock fields stay null) and
    return every record, ending with ``stream.stopped``.

    Offline there is no reason to go on without a lagging track, so ``max_track_skew_ms`` is
    ``None`` (wait for everything): the records do not depend on how the two tracks' messages
    interleave in the file, even one track wholly before the other."""
    session = CallSession(dataclasses.replace(params or SessionParams(), max_track_skew_ms=None))
    records: list[AnyRecord] = []
    for line in lines:
        session.receive_text(line)
        records += session.take_events()
    session.receive_eof()
    records += session.take_events()
    return records
