"""A third-party ``subscribe()`` that raises: the same outcome through every operator.

Rule 1.9 says ``subscribe`` must return normally. A foreign publisher that
raises instead is adopted by ``Flow.from_publisher``, whose guard turns the
exception into ``on_subscribe`` (if the subscriber had not had one) and then
``on_error`` with that exception, exactly once. Nothing is raised out of
``Flow.subscribe``, whichever operators sit between the publisher and the
subscriber, and whichever thread the subscription runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from reactive_bp import UNBOUNDED, Flow, Publisher, Subscriber
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestSubscriber
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable


class _Subscription:
    def __init__(self) -> None:
        self.cancelled = False
        self.requested: list[int] = []

    def request(self, n: int) -> None:
        self.requested.append(n)

    def cancel(self) -> None:
        self.cancelled = True


class _RaisingPublisher:
    """Breaks Rule 1.9: ``subscribe`` raises, optionally after ``on_subscribe``."""

    def __init__(self, *, subscribe_first: bool = False) -> None:
        self.subscribe_first = subscribe_first
        self.subscription = _Subscription()
        self.error = Boom("subscribe() raised")

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        if self.subscribe_first:
            subscriber.on_subscribe(self.subscription)
        raise self.error


@dataclass(frozen=True)
class _Route:
    name: str
    build: Callable[[Publisher[int], VirtualTimeScheduler], Flow[object]]

    def __repr__(self) -> str:
        return self.name


ROUTES = [
    _Route("from_publisher", lambda p, vts: Flow.from_publisher(p)),
    _Route("map", lambda p, vts: Flow.from_publisher(p).map(lambda x: x + 1)),
    _Route("filter", lambda p, vts: Flow.from_publisher(p).filter(bool)),
    _Route("take", lambda p, vts: Flow.from_publisher(p).take(3)),
    _Route("publish_on", lambda p, vts: Flow.from_publisher(p).publish_on(vts)),
    _Route("timeout", lambda p, vts: Flow.from_publisher(p).timeout(5.0, scheduler=vts)),
    _Route("subscribe_on", lambda p, vts: Flow.from_publisher(p).subscribe_on(vts)),
    _Route("flat_map", lambda p, vts: Flow.just(1).flat_map(lambda _: p)),
    _Route("merge", lambda p, vts: Flow.merge(p, Flow.never())),
    _Route("zip", lambda p, vts: Flow.zip(p, Flow.range(3))),
    _Route("concat", lambda p, vts: Flow.concat(Flow.empty(), p)),
    _Route("defer", lambda p, vts: Flow.defer(lambda: p)),
    _Route(
        "retry",
        # KeyError is retried; the Boom the publisher raises is not: it passes through.
        lambda p, vts: Flow.from_publisher(p).retry(3, retry_on=KeyError, scheduler=vts),
    ),
]


@pytest.mark.parametrize("subscribe_first", [False, True], ids=["raises", "subscribes_then_raises"])
@pytest.mark.parametrize("route", ROUTES, ids=repr)
def test_a_raising_subscribe_becomes_on_subscribe_then_on_error(
    route: _Route, subscribe_first: bool
) -> None:
    vts = VirtualTimeScheduler()
    publisher = _RaisingPublisher(subscribe_first=subscribe_first)
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    route.build(publisher, vts).subscribe(subscriber)  # never raises (Rule 1.9)
    vts.run_ready()
    assert subscriber.signals[0] == "on_subscribe"
    assert subscriber.errors == [publisher.error]
    assert subscriber.items == [] and not subscriber.completed
    assert len(subscriber.signals) == 2
    subscriber.assert_clean()
    if subscribe_first:
        assert publisher.subscription.cancelled  # the publisher is told to stop


def test_a_subscribe_that_raises_after_completing_is_reported(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    class CompletesThenRaises:
        def subscribe(self, subscriber: Subscriber[int]) -> None:
            subscriber.on_subscribe(_Subscription())
            subscriber.on_complete()
            raise Boom("too late")

    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.from_publisher(CompletesThenRaises()).map(lambda x: x).subscribe(subscriber)
    assert subscriber.completed and subscriber.errors == []
    subscriber.assert_clean()
    assert [str(e) for e, _ in undeliverable] == ["too late"]


def test_a_raising_flow_subscribe_under_subscribe_on_fails_the_subscriber() -> None:
    """A ``Flow`` subclass whose ``_subscribe`` raises, run on a scheduler (no hang, no hook)."""

    class Broken(Flow[int]):
        def _subscribe(self, subscriber: Subscriber[int]) -> None:
            raise Boom("broken source")

    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Broken().subscribe_on(vts).subscribe(subscriber)
    vts.run_ready()
    assert subscriber.signals[0] == "on_subscribe"
    assert [str(e) for e in subscriber.errors] == ["broken source"]
    subscriber.assert_clean()
