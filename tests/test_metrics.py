"""BackpressureMeter (how users read an operator's stats) and the Prometheus exporter."""

from __future__ import annotations

import pytest

from reactive_bp import BackpressureMeter, BufferStats, Flow, OverflowStrategy
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _run_once(meter: BackpressureMeter, request: int) -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(request)
    Flow.range(10).on_backpressure_buffer(4, OverflowStrategy.DROP_OLDEST, meter=meter).subscribe(
        subscriber
    )


def test_meter_follows_each_subscription_and_sums_them() -> None:
    meter = BackpressureMeter("m")
    assert meter.stats is None
    _run_once(meter, 0)
    first = meter.stats
    assert first is not None and (first.produced, first.dropped, first.depth) == (10, 6, 4)
    _run_once(meter, 100)
    assert meter.stats is not first and len(meter.all()) == 2
    totals = meter.totals()
    assert totals["produced"] == 20 and totals["delivered"] == 10
    assert totals["dropped_by_reason"] == {"drop_oldest": 6} and totals["subscriptions"] == 2
    assert totals["depth"] == 4 and totals["peak_depth"] == 4


def test_meter_folds_old_subscriptions_into_the_totals() -> None:
    meter = BackpressureMeter("m", keep=2)
    for _ in range(5):
        _run_once(meter, 100)
    assert len(meter.all()) == 2
    totals = meter.totals()
    assert totals["produced"] == 50 and totals["delivered"] == 50 and totals["subscriptions"] == 5
    with pytest.raises(ValueError):
        BackpressureMeter("bad", keep=0)


def test_stats_are_plain_attributes() -> None:
    stats = BufferStats(3)
    stats.count_drop("ttl", 2)
    stats.pressure_started(1.0)
    stats.pressure_ended(3.5)
    stats.pressure_ended(9.0)  # not running: no effect
    assert stats.snapshot()["dropped_by_reason"] == {"ttl": 2}
    assert stats.backpressured_seconds == 2.5


def test_prometheus_export() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from reactive_bp.metrics import register_prometheus

    registry = prometheus_client.CollectorRegistry()
    meter = BackpressureMeter("ingest")
    collector = register_prometheus(meter, registry=registry)
    _run_once(meter, 0)
    text = prometheus_client.generate_latest(registry).decode()
    assert 'reactive_bp_produced_total{stream="ingest"} 10.0' in text
    assert 'reactive_bp_dropped_total{reason="drop_oldest",stream="ingest"} 6.0' in text
    assert 'reactive_bp_queue_depth{stream="ingest"} 4.0' in text
    other = BackpressureMeter("other")
    collector.add(other)
    assert 'stream="other"' in prometheus_client.generate_latest(registry).decode()
    value = registry.get_sample_value("reactive_bp_delivered_total", {"stream": "ingest"})
    assert value == 0.0
