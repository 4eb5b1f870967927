"""mise_twilio: a Twilio Media Streams ingest bridge.

Twilio streams a call's μ-law audio over a WebSocket; mise_twilio places it on the stream clock,
cuts each track into speaker turns, measures them and emits turn records and call lifecycle
events to sinks. ``mise_twilio.core`` is sans-I/O (feed it messages, drain records);
``mise_twilio.server`` is the asyncio edge (ASGI app, webhooks, sinks); ``replay`` and ``cli``
are tools on top. ``docs/architecture.md`` draws the data flow.

The names below are the public API. The edge's names (``create_app``, ``Settings``) are
imported on first use, so ``import mise_twilio`` for offline analysis does not load the
server stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from mise_twilio.core.call import CallSession, SessionParams, State
from mise_twilio.core.errors import (
    ConfigError,
    DeliveryError,
    MiseError,
    ProtocolError,
    SinkError,
    WebhookError,
)
from mise_twilio.core.features import FeatureParams
from mise_twilio.core.lifecycle import CallLifecycle, SummaryJoin
from mise_twilio.core.messages import parse_message
from mise_twilio.core.records import (
    SCHEMA_VERSION,
    AnyRecord,
    CallStatusEvent,
    CallSummary,
    Diagnostic,
    DtmfEvent,
    MarkEvent,
    StreamStarted,
    StreamStatusEvent,
    StreamStopped,
    ToneRecord,
    TurnRecord,
    from_json,
    json_schema,
    to_json,
)
from mise_twilio.core.status import parse_status_callback
from mise_twilio.core.turns import TurnParams
from mise_twilio.core.vad import VadParams
from mise_twilio.replay import iter_fixture, iter_replay, read_fixture, replay_offline

if TYPE_CHECKING:
    from mise_twilio.server.app import create_app
    from mise_twilio.server.config import Settings

__all__ = [
    "SCHEMA_VERSION",
    "AnyRecord",
    "CallLifecycle",
    "CallSession",
    "CallStatusEvent",
    "CallSummary",
    "ConfigError",
    "DeliveryError",
    "Diagnostic",
    "DtmfEvent",
    "FeatureParams",
    "MarkEvent",
    "MiseError",
    "ProtocolError",
    "SessionParams",
    "Settings",
    "SinkError",
    "State",
    "StreamStarted",
    "StreamStatusEvent",
    "StreamStopped",
    "SummaryJoin",
    "ToneRecord",
    "TurnParams",
    "TurnRecord",
    "VadParams",
    "WebhookError",
    "__version__",
    "create_app",
    "from_json",
    "iter_fixture",
    "iter_replay",
    "json_schema",
    "parse_message",
    "parse_status_callback",
    "read_fixture",
    "replay_offline",
    "to_json",
]

_LAZY = {
    "create_app": "mise_twilio.server.app",
    "Settings": "mise_twilio.server.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mise_twilio' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
