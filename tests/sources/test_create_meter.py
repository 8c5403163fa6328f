"""``Flow.create(..., meter=)``: the emitter's stats, read from outside the producer."""

from __future__ import annotations

import pytest

from reactive_bp import BackpressureMeter, Emitter, Flow, OverflowStrategy
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _burst(emitter: Emitter[int]) -> None:
    for i in range(10):
        emitter.emit(i)
    emitter.complete()


def test_the_meter_follows_each_subscription_from_its_first_emit() -> None:
    meter = BackpressureMeter("burst")
    flow = Flow.create(_burst, 4, OverflowStrategy.DROP_NEWEST, meter=meter)
    assert meter.stats is None  # nothing subscribed yet
    subscriber: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(subscriber)
    stats = meter.stats
    assert stats is not None
    assert (stats.produced, stats.dropped, stats.depth) == (10, 6, 4)
    assert stats.dropped_by_reason == {"drop_newest": 6}
    subscriber.request(10)
    assert subscriber.items == [0, 1, 2, 3] and subscriber.completed
    assert stats.delivered == 4 and stats.depth == 0
    assert flow.to_list() == list(range(10))  # a second subscription, with demand: no drop
    assert meter.stats is not stats and meter.stats.dropped == 0
    totals = meter.totals()
    assert totals["subscriptions"] == 2 and totals["dropped"] == 6 and totals["delivered"] == 14


def test_without_a_meter_nothing_changes() -> None:
    assert Flow.create(_burst, 4, OverflowStrategy.DROP_OLDEST).to_list() == list(range(10))
