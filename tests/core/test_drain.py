"""The serialized drain loop (PullSubscription) through the pull sources.

Each test breaks if its rule is broken: depth > 1 recursion, overlapping
signals, over-delivery, signals after cancel, kept references, swallowed errors.
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Iterator

import pytest

from reactive_bp import UNBOUNDED, Flow, NonPositiveRequestError
from reactive_bp.abc import Subscription
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


class _DepthSubscriber(TestSubscriber[int]):
    """Requests one more from inside on_next and records the nesting depth (Rule 3.3)."""

    __slots__ = ("depth", "max_depth", "max_stack")

    def __init__(self) -> None:
        super().__init__(1)
        self.depth = 0
        self.max_depth = 0
        self.max_stack = 0

    def on_next(self, item: int) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        if item % 100_000 == 0:
            frame = sys._getframe()
            stack = 0
            while frame is not None:
                stack += 1
                frame = frame.f_back  # type: ignore[assignment]
            self.max_stack = max(self.max_stack, stack)
        self.items.append(item)
        self.request(1)
        self.depth -= 1


def test_request_from_on_next_never_recurses_even_for_a_million_items() -> None:
    subscriber = _DepthSubscriber()
    Flow.range(1_000_000).subscribe(subscriber)
    assert len(subscriber.items) == 1_000_000
    assert subscriber.completed
    assert subscriber.max_depth == 1  # Rule 3.3, depth 1
    assert subscriber.max_stack < 100


def test_items_are_pulled_only_while_there_is_demand() -> None:
    pulled: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(100):
            pulled.append(i)
            yield i

    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.from_iterable(numbers()).subscribe(subscriber)
    assert pulled == []
    subscriber.request(3)
    assert pulled == [0, 1, 2]
    assert subscriber.items == [0, 1, 2]
    subscriber.request(2)
    assert len(pulled) == 5
    subscriber.assert_clean()


def test_requests_add_up_and_saturate() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(10).subscribe(subscriber)
    subscriber.request(2)
    subscriber.request(3)
    assert subscriber.items == [0, 1, 2, 3, 4]
    subscriber.request(2**62)
    subscriber.request(2**62)  # past 2**63-1: unbounded, never an error (Rule 3.17)
    assert subscriber.items == list(range(10))
    assert subscriber.completed and not subscriber.errors


def test_request_above_unbounded_on_an_infinite_source_is_no_error() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(cancel_after=1000)

    def forever() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    Flow.from_iterable(forever()).subscribe(subscriber)
    subscriber.request(UNBOUNDED)
    subscriber.request(UNBOUNDED)
    assert len(subscriber.items) == 1000
    assert not subscriber.errors


@pytest.mark.parametrize("bad", [0, -1, -(2**63)])
def test_non_positive_request_signals_value_error_citing_rule_3_9(bad: int) -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(10).subscribe(subscriber)
    subscriber.request(bad)  # must not raise
    assert len(subscriber.errors) == 1
    error = subscriber.errors[0]
    assert isinstance(error, NonPositiveRequestError) and isinstance(error, ValueError)
    assert "Rule 3.9" in str(error)
    subscriber.request(5)  # after the error: a no-op (Rule 3.6)
    assert subscriber.items == []
    subscriber.assert_clean()


@pytest.mark.parametrize("bad", [1.0, "3", None, True])
def test_non_int_request_signals_type_error(bad: object) -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(10).subscribe(subscriber)
    subscriber.request(bad)  # type: ignore[arg-type]
    assert [type(e) for e in subscriber.errors] == [TypeError]
    assert subscriber.items == []


def test_bad_request_from_on_next_is_signalled_after_the_current_item() -> None:
    class Bad(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            if item == 2:
                self.request(0)

    subscriber = Bad(UNBOUNDED)
    Flow.range(10).subscribe(subscriber)
    assert subscriber.items == [0, 1, 2]
    assert len(subscriber.errors) == 1 and not subscriber.completed
    subscriber.assert_clean()


def test_cancel_stops_signals_and_is_idempotent() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(cancel_after=3)
    Flow.range(100).subscribe(subscriber)
    subscriber.request(10)
    assert subscriber.items == [0, 1, 2]
    subscriber.cancel()
    subscriber.cancel()  # Rule 3.7
    subscriber.request(10)  # Rule 3.6
    assert subscriber.items == [0, 1, 2]
    assert not subscriber.completed and not subscriber.errors


def test_cancel_closes_the_iterator() -> None:
    closed: list[bool] = []

    def numbers() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    subscriber: TestSubscriber[int] = TestSubscriber(2)
    Flow.from_iterable(numbers()).subscribe(subscriber)
    subscriber.cancel()
    assert closed == [True]


def test_cancel_drops_the_reference_to_the_subscriber() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.range(10).subscribe(subscriber)
    subscription = subscriber.subscription
    subscription.cancel()
    subscriber.subscription = _Nothing()
    ref = weakref.ref(subscriber)
    del subscriber
    gc.collect()
    assert ref() is None  # Rule 3.13, while the subscription itself is still alive
    assert subscription is not None


class _Nothing:
    def request(self, n: int) -> None:
        pass

    def cancel(self) -> None:
        pass


def test_a_raising_on_next_cancels_the_source_and_becomes_on_error() -> None:
    closed: list[bool] = []

    def numbers() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    boom = RuntimeError("subscriber failed")

    class Raising(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            if item == 1:
                raise boom

    subscriber = Raising(10)
    Flow.from_iterable(numbers()).subscribe(subscriber)
    assert subscriber.items == [0, 1]
    assert subscriber.errors == [boom]
    assert closed == [True]


def test_a_raising_on_subscribe_becomes_on_error() -> None:
    boom = RuntimeError("on_subscribe failed")

    class Raising(TestSubscriber[int]):
        def on_subscribe(self, subscription: Subscription) -> None:
            super().on_subscribe(subscription)
            raise boom

    subscriber = Raising()
    Flow.range(3).subscribe(subscriber)
    assert subscriber.errors == [boom]


def test_a_raising_on_error_goes_to_the_undeliverable_hook(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    class Raising(TestSubscriber[int]):
        def on_error(self, error: Exception) -> None:
            raise RuntimeError("on_error failed")

    Flow.error(ValueError("source failed")).subscribe(Raising())
    assert len(undeliverable) == 1
    reported = undeliverable[0][0]
    assert isinstance(reported, RuntimeError)
    assert isinstance(reported.__context__, ValueError)


def test_requests_from_many_threads_never_overlap_or_over_deliver() -> None:
    total = 20_000
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(total).subscribe(subscriber)
    start = threading.Barrier(4)

    def spam() -> None:
        start.wait()
        for _ in range(total // 4):
            subscriber.request(1)

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert subscriber.items == list(range(total))
    # An iterator's end is seen only when one more item is pulled (Rule 1.2
    # allows completing lazily), so completion needs one more request.
    subscriber.request(1)
    assert subscriber.completed
    subscriber.assert_clean()  # Rules 1.1, 1.3, 1.7


def test_cancel_from_another_thread_stops_an_unbounded_stream() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    started = threading.Event()

    def forever() -> Iterator[int]:
        i = 0
        while True:
            if i == 1000:
                started.set()
            yield i
            i += 1

    Flow.from_iterable(forever()).subscribe(subscriber)
    emitter = threading.Thread(target=subscriber.request, args=(UNBOUNDED,))
    emitter.start()
    assert started.wait(5)
    subscriber.cancel()
    emitter.join(5)
    assert not emitter.is_alive()  # Rule 3.12: the publisher eventually stops
    count = len(subscriber.items)
    subscriber.request(10)
    assert len(subscriber.items) == count
    assert not subscriber.completed and not subscriber.errors


def test_a_bad_request_from_another_thread_is_delivered_once_without_overlap() -> None:
    for _ in range(20):
        subscriber: TestSubscriber[int] = TestSubscriber()
        Flow.range(50_000).subscribe(subscriber)
        emitter = threading.Thread(target=subscriber.request, args=(UNBOUNDED,))
        emitter.start()
        subscriber.request(-1)
        emitter.join(5)
        assert subscriber.completed != bool(subscriber.errors)  # exactly one terminal
        subscriber.assert_clean()
