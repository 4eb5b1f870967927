"""mise_twilio: a Twilio Media Streams ingest bridge.

Twilio streams a call's μ-law audio over a WebSocket; mise_twilio places it on the stream clock,
cuts each track into speaker turns, measures them and emits turn records and call lifecycle
events to sinks. ``mise_twilio.core`` is sans-I/O (feed it messages, drain records);
``mise_twilio.server`` is the asyncio edge (ASGI app, webhooks, sinks); ``replay`` and ``cli``
are tools on top. ``docs/architecture.md`` draws the data flow.

The names below are the public API. Each is imported on first use (PEP 562), so ``import
mise_twilio`` costs nothing until a name is used, offline analysis never loads the server
stack, and the command line answers Ctrl-C while it is still importing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
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
    "CallSession": "mise_twilio.core.call",
    "SessionParams": "mise_twilio.core.call",
    "State": "mise_twilio.core.call",
    "ConfigError": "mise_twilio.core.errors",
    "DeliveryError": "mise_twilio.core.errors",
    "MiseError": "mise_twilio.core.errors",
    "ProtocolError": "mise_twilio.core.errors",
    "SinkError": "mise_twilio.core.errors",
    "WebhookError": "mise_twilio.core.errors",
    "FeatureParams": "mise_twilio.core.features",
    "CallLifecycle": "mise_twilio.core.lifecycle",
    "SummaryJoin": "mise_twilio.core.lifecycle",
    "parse_message": "mise_twilio.core.messages",
    "SCHEMA_VERSION": "mise_twilio.core.records",
    "AnyRecord": "mise_twilio.core.records",
    "CallStatusEvent": "mise_twilio.core.records",
    "CallSummary": "mise_twilio.core.records",
    "Diagnostic": "mise_twilio.core.records",
    "DtmfEvent": "mise_twilio.core.records",
    "MarkEvent": "mise_twilio.core.records",
    "StreamStarted": "mise_twilio.core.records",
    "StreamStatusEvent": "mise_twilio.core.records",
    "StreamStopped": "mise_twilio.core.records",
    "ToneRecord": "mise_twilio.core.records",
    "TurnRecord": "mise_twilio.core.records",
    "from_json": "mise_twilio.core.records",
    "json_schema": "mise_twilio.core.records",
    "to_json": "mise_twilio.core.records",
    "parse_status_callback": "mise_twilio.core.status",
    "TurnParams": "mise_twilio.core.turns",
    "VadParams": "mise_twilio.core.vad",
    "iter_fixture": "mise_twilio.replay",
    "iter_replay": "mise_twilio.replay",
    "read_fixture": "mise_twilio.replay",
    "replay_offline": "mise_twilio.replay",
    "create_app": "mise_twilio.server.app",
    "Settings": "mise_twilio.server.config",
}
"""Where each public name lives: imported on first use (PEP 562)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mise_twilio' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
