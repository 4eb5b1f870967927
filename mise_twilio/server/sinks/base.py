"""What a sink is: the ``Sink`` protocol, the ``Envelope`` it receives and its error type.

A record is serialised once, when it is published (``records.to_json``); every sink, spool and
dead-letter file then carries that same JSON text, so nothing re-serialises per sink.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mise_twilio.core.errors import DeliveryError, SinkError

__all__ = ["SINK_NAME_RE", "DeliveryError", "Envelope", "Sink", "SinkError"]
from mise_twilio.core.records import AnyRecord, to_json

SINK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Sink names become directory names under the spool dir, so they are kept filesystem-safe."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One record on its way to a sink.

    - ``id``: the record's stable id (``record.id``).
    - ``type``: the record's type (``record.type``, e.g. ``turn``).
    - ``json``: the record as one line of compact JSON, without the trailing newline.
    """

    id: str
    type: str
    json: str

    @classmethod
    def of(cls, record: AnyRecord) -> Envelope:
        """Serialise ``record`` (``records.to_json``) into an envelope."""
        return cls(id=record.id, type=record.type, json=to_json(record))

    @classmethod
    def from_json(cls, text: str) -> Envelope:
        """An envelope from a record's JSON text (reads ``id`` and ``type`` from it).

        Raises ``ValueError`` when ``text`` is not a JSON object with string ``id`` and ``type``.
        """
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("record JSON is not an object")
        record_id, record_type = obj.get("id"), obj.get("type")
        if not isinstance(record_id, str) or not isinstance(record_type, str):
            raise ValueError("record JSON lacks a string id or type")
        return cls(id=record_id, type=record_type, json=text)


@runtime_checkable
class Sink(Protocol):
    """A destination for records. The hub calls one method at a time per sink (never two
    ``deliver`` calls concurrently), so implementations need no locking of their own.

    - ``name``: unique, filesystem-safe (``SINK_NAME_RE``); names the spool directory and the
      ``sink`` metric label.
    - ``open()``: acquire resources (files, clients). Must not require the remote end to be up:
      the hub spools while a sink is down. Raises ``SinkError`` when the sink cannot work at all.
    - ``deliver(batch)``: deliver every envelope of ``batch`` (1…``batch_max_records``, in
      publish order) or raise ``SinkError``: ``retryable=True`` means the whole batch will be
      delivered again later (so delivery must tolerate duplicates: at-least-once; records carry
      stable ids for deduplication), ``retryable=False`` means this batch can never be accepted
      (the hub bisects it and dead-letters the records that still fail alone).
    - ``ready()``: cheap health answer for readiness probes; never raises.
    - ``close()``: release resources; idempotent.
    """

    name: str

    async def open(self) -> None: ...

    async def deliver(self, batch: list[Envelope]) -> None: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...
