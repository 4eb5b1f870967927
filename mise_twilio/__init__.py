"""mise_twilio: a Twilio Media Streams ingest bridge.

Twilio streams a call's μ-law audio over a WebSocket; mise_twilio places it on the stream clock,
cuts each track into speaker turns, measures them and emits turn records and call lifecycle
events to sinks. The core (``messages`` … ``records``) is sans-I/O; ``server``, ``sinks`` and
``cli`` are the edges.
"""

__version__ = "0.1.0"
