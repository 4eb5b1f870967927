"""Prometheus metrics, one ``Metrics`` object per server.

Each ``Metrics`` owns its own ``CollectorRegistry`` instead of using prometheus-client's global
one: several servers (and sink hubs) run in one test process, and the global registry refuses a
second metric of the same name. Every metric is named ``mise_*``; ``render()`` produces the
text exposition format for ``GET /metrics``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

MESSAGE_PROCESSING_BUCKETS_S: tuple[float, ...] = (
    1e-6,
    2e-6,
    5e-6,
    1e-5,
    2e-5,
    5e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    2e-3,
    5e-3,
    1e-2,
)
"""Histogram buckets for one Twilio message's processing time, seconds: 1 µs … 10 ms (1-2-5).

A 20 ms media frame must be handled in a small fraction of its duration for one event loop to
carry many calls, so the interesting range sits well below 10 ms; slower ones land in +Inf."""


class LoopHistogram(Collector):
    """A Prometheus histogram for one event loop's hot path: ``observe()`` is a bisect and two
    additions (~0.1 µs), where prometheus-client's ``Histogram.observe`` takes a lock and walks
    the buckets in Python (~0.5 µs, on every Twilio message). No lock: observe it from the
    event loop's thread only. Exposed exactly as a ``Histogram`` (``_bucket{le}`` cumulative,
    ``_sum``, ``_count``)."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = sorted(float(b) for b in buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum_s = 0.0
        registry.register(self)

    def observe(self, seconds: float) -> None:
        """Count one observation (seconds; a value equal to a bound falls in that bucket)."""
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum_s += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip([*self._bounds, float("inf")], self._counts, strict=True):
            total += count
            cumulative.append((str(floatToGoString(bound)), total))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            self._name, self._doc, buckets=cumulative, sum_value=self._sum_s
        )


class Metrics:
    """All of mise_twilio's metrics, registered on a private ``CollectorRegistry``.

    Attributes are the prometheus-client metric objects; label names are given per metric.
    Counters are exposed with the ``_total`` suffix (e.g. ``mise_messages_total``).

    - ``active_streams``: Gauge, open Twilio media streams.
    - ``messages_total{event}``: Counter, Twilio WebSocket messages by ``event`` (media, start…).
    - ``turns_total{speaker}``: Counter, turn records emitted by speaker (caller, agent).
    - ``records_total{type}``: Counter, records published to the sink hub, by record ``type``
      (incremented by ``SinkHub.publish``; nobody else should count them).
    - ``diagnostics_total{code}``: Counter, diagnostics by ``code``.
    - ``sink_queue_depth{sink}``: Gauge, records waiting in the sink's in-memory queue.
    - ``sink_spool_bytes{sink}``: Gauge, bytes in the sink's spool not yet delivered (on disk
      plus the in-memory spool buffer awaiting its fsync).
    - ``sink_spooled_total{sink}``: Counter, records diverted to the spool (queue full, sink
      failing, shutdown).
    - ``sink_delivered_total{sink}``: Counter, records the sink acknowledged.
    - ``sink_delivery_failures_total{sink,reason}``: Counter, failed delivery attempts (one per
      attempt, not per record); ``reason`` is a short code such as ``connect``, ``timeout``,
      ``http_503``, ``http_429``, ``http_400``, ``redis``, ``os_error``, ``unexpected``.
    - ``sink_dead_letter_total{sink}``: Counter, records written to the dead-letter file.
    - ``message_processing_seconds``: histogram (``LoopHistogram``: observed on every message
      at no measurable cost), time to process one Twilio message, seconds (buckets
      ``MESSAGE_PROCESSING_BUCKETS_S``).
    - ``webhook_requests_total{outcome}``: Counter, status callbacks by outcome (accepted,
      rejected, forbidden…).
    - ``join_fallback_total{op}``: Counter, completed/summary join steps that fell back to the
      in-process join because the shared Redis store failed (``op``: ``stream_started``,
      ``status``, ``stream_stopped``, ``claim``).
    - ``draining``: Gauge, 1 from SIGTERM until exit (``/readyz`` answers 503 meanwhile).
    - ``relay_seconds{direction}``: Histogram, proxy mode: a frame's time inside the relay,
      from being read off one socket to being written to the other (``to_bot``,
      ``to_twilio``), seconds (buckets ``MESSAGE_PROCESSING_BUCKETS_S``).
    - ``upstream_failures_total{upstream,reason}``: Counter, proxied calls a bot failed:
      ``unreachable`` (its WebSocket did not open), ``dropped`` (it went away mid-call),
      ``backlog`` (a side did not keep up).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active_streams = Gauge("mise_active_streams", "Open Twilio media streams.", registry=r)
        self.messages_total = Counter(
            "mise_messages_total", "Twilio stream messages received.", ["event"], registry=r
        )
        self.turns_total = Counter(
            "mise_turns_total", "Turn records emitted.", ["speaker"], registry=r
        )
        self.records_total = Counter(
            "mise_records_total", "Records published to the sinks.", ["type"], registry=r
        )
        self.diagnostics_total = Counter(
            "mise_diagnostics_total", "Diagnostics emitted.", ["code"], registry=r
        )
        self.sink_queue_depth = Gauge(
            "mise_sink_queue_depth", "Records in the sink's in-memory queue.", ["sink"], registry=r
        )
        self.sink_spool_bytes = Gauge(
            "mise_sink_spool_bytes",
            "Undelivered bytes in the sink's spool (disk plus unflushed buffer).",
            ["sink"],
            registry=r,
        )
        self.sink_spooled_total = Counter(
            "mise_sink_spooled_total", "Records diverted to the spool.", ["sink"], registry=r
        )
        self.sink_delivered_total = Counter(
            "mise_sink_delivered_total", "Records delivered by the sink.", ["sink"], registry=r
        )
        self.sink_delivery_failures_total = Counter(
            "mise_sink_delivery_failures_total",
            "Failed delivery attempts.",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_dead_letter_total = Counter(
            "mise_sink_dead_letter_total",
            "Records written to the dead-letter file.",
            ["sink"],
            registry=r,
        )
        self.message_processing_seconds = LoopHistogram(
            "mise_message_processing_seconds",
            "Time to process one Twilio message, seconds.",
            MESSAGE_PROCESSING_BUCKETS_S,
            registry=r,
        )
        self.webhook_requests_total = Counter(
            "mise_webhook_requests_total", "Status callbacks by outcome.", ["outcome"], registry=r
        )
        self.relay_seconds = Histogram(
            "mise_relay_seconds",
            "Proxy mode: a frame's time from one socket to the other, seconds.",
            ["direction"],
            buckets=MESSAGE_PROCESSING_BUCKETS_S,
            registry=r,
        )
        self.upstream_failures_total = Counter(
            "mise_upstream_failures_total",
            "Proxied calls failed by their bot.",
            ["upstream", "reason"],
            registry=r,
        )

        self.join_fallback_total = Counter(
            "mise_join_fallback_total",
            "Join steps done in-process because the shared Redis store failed.",
            ["op"],
            registry=r,
        )
        self.draining = Gauge(
            "mise_draining", "1 while the server drains after SIGTERM.", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition: ``(body, content_type)`` (text format 0.0.4, UTF-8)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
