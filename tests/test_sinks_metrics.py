"""Metrics: the exposition parses and the sink counters match the hub's own counts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mise_twilio.core.errors import SinkError
from mise_twilio.server.metrics import Metrics
from mise_twilio.server.sinks.base import DeliveryError, Envelope
from mise_twilio.server.sinks.hub import SinkHub


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class FlakySink:
    """Fails its first ``failures`` attempts (retryable), rejects ids ending in -poison."""

    def __init__(self, failures: int) -> None:
        self.name = "flaky"
        self.failures = failures
        self.delivered: list[str] = []

    async def open(self) -> None: ...

    async def deliver(self, batch: list[Envelope]) -> None:
        if self.failures:
            self.failures -= 1
            raise DeliveryError("503", reason="http_503", status_code=503)
        if any(e.id.endswith("-poison") for e in batch):
            raise SinkError("bad record", retryable=False)
        self.delivered.extend(e.id for e in batch)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None: ...


def test_all_metrics_are_exposed_with_mise_names() -> None:
    metrics = Metrics()
    metrics.active_streams.inc()
    metrics.messages_total.labels("media").inc(3)
    metrics.turns_total.labels("caller").inc()
    metrics.diagnostics_total.labels("bad_json").inc()
    metrics.webhook_requests_total.labels("accepted").inc()
    metrics.message_processing_seconds.observe(3e-6)
    got = samples(metrics)
    assert got[("mise_active_streams", ())] == 1
    assert got[("mise_messages_total", (("event", "media"),))] == 3
    assert got[("mise_turns_total", (("speaker", "caller"),))] == 1
    assert got[("mise_diagnostics_total", (("code", "bad_json"),))] == 1
    assert got[("mise_webhook_requests_total", (("outcome", "accepted"),))] == 1
    assert got[("mise_message_processing_seconds_bucket", (("le", "1e-06"),))] == 0
    assert got[("mise_message_processing_seconds_bucket", (("le", "5e-06"),))] == 1
    assert got[("mise_message_processing_seconds_bucket", (("le", "0.01"),))] == 1
    assert all(name.startswith("mise_") for name, _ in got)
    # Two instances coexist: no global registry.
    Metrics().active_streams.set(5)
    assert samples(metrics)[("mise_active_streams", ())] == 1


@pytest.mark.parametrize("write_ahead", [True, False])
async def test_sink_counters_match_hub_stats(tmp_path: Path, write_ahead: bool) -> None:
    metrics = Metrics()
    sink = FlakySink(failures=2)
    hub = SinkHub(
        [sink],
        queue_max_records=100,
        batch_max_records=4,
        spool_dir=tmp_path,
        metrics=metrics,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        write_ahead=write_ahead,
    )
    await hub.start()
    ids = [f"r-{i}" for i in range(10)] + ["r-10-poison"]
    for i in ids:
        hub.publish_envelope(
            Envelope(id=i, type="turn", json=json.dumps({"id": i, "type": "turn"}))
        )
    hub.publish_envelope(Envelope(id="s-1", type="stream.started", json='{"id":"s-1"}'))
    for _ in range(500):
        if len(sink.delivered) == 11:
            break
        await asyncio.sleep(0.01)
    await hub.drain(2.0)
    got = samples(metrics)
    stats = hub.stats()["flaky"]
    label = (("sink", "flaky"),)
    assert stats.delivered == len(sink.delivered) == 11
    assert got[("mise_sink_delivered_total", label)] == 11
    assert got[("mise_sink_dead_letter_total", label)] == stats.dead_lettered == 1
    assert (
        got[("mise_sink_delivery_failures_total", (("reason", "http_503"), ("sink", "flaky")))] == 2
    )
    # The poison batch bisects: [r-8 r-9 r-10-poison s-1] rejected → [r-8 r-9] ok,
    # [r-10-poison s-1] rejected → [r-10-poison] rejected, [s-1] ok: three rejections.
    assert (
        got[("mise_sink_delivery_failures_total", (("reason", "rejected"), ("sink", "flaky")))] == 3
    )
    # Diversions to the spool: memory-first spills on failure; write-ahead always writes it.
    assert got[("mise_sink_spooled_total", label)] == stats.spooled
    assert (stats.spooled > 0) is not write_ahead
    assert got[("mise_sink_queue_depth", label)] == 0
    assert got[("mise_sink_spool_bytes", label)] == 0
    assert got[("mise_records_total", (("type", "turn"),))] == 11
    assert got[("mise_records_total", (("type", "stream.started"),))] == 1
    await hub.close()
