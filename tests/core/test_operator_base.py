"""OperatorSubscriber: the rules every operator inherits, tested on a minimal operator."""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest
from typing_extensions import override

from reactive_bp import (
    UNBOUNDED,
    Flow,
    OperatorSubscriber,
    ProtocolViolationError,
    Subscriber,
    Subscription,
)
from reactive_bp._core._operator import EmptySubscription
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber

pytestmark = pytest.mark.no_undeliverable


class _Twice(OperatorSubscriber[int, int]):
    """Emits each item twice; fails on 13; completes early on 99."""

    @override
    def hook_on_next(self, item: int) -> None:
        if item == 13:
            raise ArithmeticError("unlucky")
        if item == 99:
            self.complete()
            return
        self.emit(item)
        self.emit(item)


class _Tracking(EmptySubscription):
    def __init__(self) -> None:
        self.cancelled = False
        self.requests: list[int] = []

    @override
    def request(self, n: int) -> None:
        self.requests.append(n)

    @override
    def cancel(self) -> None:
        self.cancelled = True


def _attached() -> tuple[_Twice, _Tracking, TestSubscriber[int]]:
    downstream: TestSubscriber[int] = TestSubscriber()
    operator = _Twice(downstream)
    upstream = _Tracking()
    operator.on_subscribe(upstream)
    return operator, upstream, downstream


def test_requests_and_cancel_pass_upstream() -> None:
    operator, upstream, downstream = _attached()
    downstream.request(3)
    assert upstream.requests == [3]
    downstream.cancel()
    downstream.cancel()  # idempotent (Rule 3.7)
    assert upstream.cancelled
    operator.on_next(1)  # Rule 2.8: late items are dropped
    assert downstream.items == []


def test_none_arguments_raise_type_error() -> None:
    operator, _, _ = _attached()
    with pytest.raises(TypeError):
        operator.on_subscribe(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        operator.on_next(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        operator.try_on_next(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        operator.on_error(None)  # type: ignore[arg-type]


def test_a_second_subscription_is_cancelled_and_reported(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    operator, first, _ = _attached()
    second = _Tracking()
    operator.on_subscribe(second)
    assert second.cancelled and not first.cancelled  # Rule 2.5
    assert isinstance(undeliverable[0][0], ProtocolViolationError)


def test_a_raising_hook_cancels_upstream_and_errors_once(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    operator, upstream, downstream = _attached()
    downstream.request(10)
    operator.on_next(1)
    operator.on_next(13)
    assert downstream.items == [1, 1]
    assert [type(e) for e in downstream.errors] == [ArithmeticError]
    assert upstream.cancelled
    operator.on_error(KeyError("late"))  # Rule 1.7: not delivered, but reported
    operator.on_complete()
    assert len(downstream.errors) == 1 and not downstream.completed
    assert [type(e) for e, _ in undeliverable] == [KeyError]
    downstream.assert_clean()


def test_try_on_next_reports_a_failure_as_consumed() -> None:
    operator, upstream, downstream = _attached()
    downstream.request(10)
    assert operator.try_on_next(2) is True
    assert operator.try_on_next(13) is True
    assert upstream.cancelled and [type(e) for e in downstream.errors] == [ArithmeticError]
    assert operator.try_on_next(3) is True  # after terminal: dropped, counted as consumed


def test_complete_from_a_hook_cancels_upstream() -> None:
    operator, upstream, downstream = _attached()
    downstream.request(10)
    operator.on_next(99)
    assert upstream.cancelled and downstream.completed
    operator.on_next(1)
    assert downstream.items == []


def test_a_raising_downstream_on_subscribe_becomes_on_error() -> None:
    class Raising(TestSubscriber[int]):
        @override
        def on_subscribe(self, subscription: Subscription) -> None:
            super().on_subscribe(subscription)
            raise RuntimeError("downstream broke")

    downstream = Raising()
    upstream = _Tracking()
    _Twice(downstream).on_subscribe(upstream)
    assert upstream.cancelled
    assert [type(e) for e in downstream.errors] == [RuntimeError]


def test_lift_reports_a_failing_or_none_factory() -> None:
    def failing(actual: Subscriber[int]) -> Subscriber[int]:
        raise LookupError("no operator")

    with pytest.raises(LookupError):
        Flow.range(3).lift(failing).to_list()
    with pytest.raises(TypeError, match="returned None"):
        Flow.range(3).lift(lambda actual: None).to_list()  # type: ignore[arg-type, return-value]


def test_a_lifted_operator_runs_in_a_pipeline() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    upstream.lift(_Twice).subscribe(subscriber)
    upstream.send_next(1, 2)
    upstream.send_complete()
    assert subscriber.items == [1, 1, 2, 2] and subscriber.completed


# -- Rule 3.13: a cancelled subscription lets its subscriber go ------------------------------

HELD_AFTER_CANCEL: dict[str, Callable[[Flow[int]], Flow[object]]] = {
    "map": lambda f: f.map(lambda x: x + 1),
    "filter": lambda f: f.filter(lambda x: x % 2 == 0),
    "take": lambda f: f.take(50),
    "skip": lambda f: f.skip(1),
    "take_while": lambda f: f.take_while(lambda x: x < 50),
    "skip_while": lambda f: f.skip_while(lambda x: x < 1),
    "distinct_until_changed": lambda f: f.distinct_until_changed(),
    "scan": lambda f: f.scan(lambda a, x: a + x),
    "buffer": lambda f: f.buffer(2),
    "do_on_next": lambda f: f.do_on_next(lambda x: None),
    "do_on_request": lambda f: f.do_on_request(lambda n: None),
    "do_on_cancel": lambda f: f.do_on_cancel(lambda: None),
    "do_on_subscribe": lambda f: f.do_on_subscribe(lambda s: None),
    "do_on_error": lambda f: f.do_on_error(lambda e: None),
    "do_on_complete": lambda f: f.do_on_complete(lambda: None),
    "do_on_terminate": lambda f: f.do_on_terminate(lambda: None),
    "do_finally": lambda f: f.do_finally(lambda s: None),
    "sample_every": lambda f: f.sample_every(2),
    "reduce": lambda f: f.reduce(lambda a, x: a + x),
    "lift": lambda f: f.lift(_Twice),
    "map.filter": lambda f: f.map(lambda x: x + 1).filter(lambda x: x % 2 == 0),
}


@pytest.mark.parametrize("name", list(HELD_AFTER_CANCEL))
def test_a_held_subscription_does_not_keep_the_subscriber_after_cancel(name: str) -> None:
    for source in (Flow.range(100), Flow.never()):
        subscriber: TestSubscriber[object] = TestSubscriber(2)
        HELD_AFTER_CANCEL[name](source).subscribe(subscriber)
        subscription = subscriber.subscription  # what a caller may hold on to
        subscription.cancel()
        ref = weakref.ref(subscriber)
        del subscriber
        gc.collect()
        assert ref() is None, f"{name}: the subscription still reaches the subscriber"
        subscription.request(1)  # still usable: a no-op (Rule 3.6)
        subscription.cancel()  # idempotent (Rule 3.7)


def test_subscribe_on_does_not_keep_the_subscriber_after_cancel() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(2)
    Flow.range(100).subscribe_on(vts).subscribe(subscriber)
    vts.run_ready()
    assert subscriber.items == [0, 1]
    subscription = subscriber.subscription
    subscription.cancel()
    ref = weakref.ref(subscriber)
    del subscriber
    gc.collect()
    assert ref() is None
    subscription.request(1)
    vts.run_ready()


def test_signals_after_cancel_reach_nobody_and_a_late_error_is_reported(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    operator, _, downstream = _attached()
    downstream.request(5)
    downstream.cancel()
    assert operator.try_on_next(1) is True  # the conditional path after cancel
    operator.on_next(2)
    operator.on_complete()
    operator.on_error(KeyError("late"))
    assert downstream.items == [] and not downstream.completed and not downstream.errors
    assert [type(e) for e, _ in undeliverable] == [KeyError]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


RACED: dict[str, Callable[[Flow[int]], Flow[object]]] = {
    "map": HELD_AFTER_CANCEL["map"],
    "filter": HELD_AFTER_CANCEL["filter"],
    "map.filter": HELD_AFTER_CANCEL["map.filter"],
    "take": lambda f: f.take(900_000),
    "do_on_next": HELD_AFTER_CANCEL["do_on_next"],
    "take.map": lambda f: f.take(900_000).map(lambda x: x * 2),
}


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("name", list(RACED))
def test_cancel_racing_the_hot_path_never_crashes(name: str) -> None:
    """An item in flight on one thread while another cancels (and drops the subscriber)."""
    for run in range(200):
        subscriber: TestSubscriber[object] = TestSubscriber()
        RACED[name](Flow.range(1_000_000)).subscribe(subscriber)
        start = threading.Barrier(2)

        def pull(start: threading.Barrier = start, s: TestSubscriber[object] = subscriber) -> None:
            start.wait()
            s.request(UNBOUNDED)

        thread = threading.Thread(target=pull)
        thread.start()
        start.wait()
        for _ in range(run % 7):
            time.sleep(0)
        subscriber.cancel()
        thread.join(10)
        assert not thread.is_alive()
        count = len(subscriber.items)
        subscriber.request(10)
        assert len(subscriber.items) == count  # nothing after cancel returned
        assert not subscriber.errors and not subscriber.completed, subscriber.errors
        subscriber.assert_clean()
