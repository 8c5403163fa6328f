"""QueueDrain / QueueDrainSubscriber (the buffering base) and SubscriptionArbiter.

A small operator built on the base is exercised rule by rule; each test
breaks if the base stops upholding its rule.
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Callable

import pytest
from typing_extensions import override

from reactive_bp import UNBOUNDED, Flow, NonPositiveRequestError, ProtocolViolationError
from reactive_bp._core._arbiter import SubscriptionArbiter
from reactive_bp._core._queue_drain import QueueDrainSubscriber, replenish_limit
from reactive_bp.abc import Subscriber
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable


class _Buffer(QueueDrainSubscriber[int]):
    """Default hooks: request ``capacity`` once, fail on overflow, never replenish."""

    __slots__ = ()


class _Refill(QueueDrainSubscriber[int]):
    """Requests as many as were delivered (a 1-for-1 refilling buffer)."""

    __slots__ = ()

    @override
    def hook_on_emitted(self, count: int) -> None:
        self.request_upstream(count)


class _DropOldest(QueueDrainSubscriber[int]):
    """An overflow policy: unbounded upstream, keep only the newest ``capacity``."""

    __slots__ = ()

    @override
    def hook_on_subscribe(self) -> None:
        self.request_upstream(UNBOUNDED)

    @override
    def hook_on_overflow(self, item: int) -> None:
        self._queue.popleft()
        self._queue.append(item)


class _Eager(_Buffer):
    """Errors cut ahead of queued items."""

    __slots__ = ()
    delay_error = False


def _lifted(
    kind: type[QueueDrainSubscriber[int]], capacity: int
) -> Callable[[Subscriber[int]], Subscriber[int]]:
    def make(actual: Subscriber[int]) -> Subscriber[int]:
        return kind(actual, capacity)

    return make


def _attach(
    kind: type[QueueDrainSubscriber[int]], capacity: int = 4, initial: int = 0
) -> tuple[TestPublisher[int], TestSubscriber[int]]:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[int] = TestSubscriber(initial)
    upstream.lift(_lifted(kind, capacity)).subscribe(subscriber)
    return upstream, subscriber


def test_replenish_limit_is_75_percent() -> None:
    assert [replenish_limit(n) for n in (1, 2, 3, 4, 8, 32, 256)] == [1, 2, 3, 3, 6, 24, 192]


def test_capacity_must_be_positive() -> None:
    sink: TestSubscriber[int] = TestSubscriber()
    with pytest.raises(ValueError):
        _Buffer(sink, 0)


def test_items_are_queued_and_delivered_only_against_demand() -> None:
    upstream, subscriber = _attach(_Buffer)
    assert upstream.requests == [4]
    upstream.send_next(1, 2, 3)
    assert subscriber.items == []
    subscriber.request(2)
    assert subscriber.items == [1, 2]
    upstream.send_complete()
    assert not subscriber.completed  # 3 is still queued
    subscriber.request(1)
    assert subscriber.items == [1, 2, 3] and subscriber.completed
    subscriber.assert_clean()


def test_a_delayed_error_follows_the_queued_items() -> None:
    upstream, subscriber = _attach(_Buffer)
    upstream.send_next(1, 2)
    upstream.send_error(Boom("x"))
    assert not subscriber.errors
    subscriber.request(5)
    assert subscriber.items == [1, 2] and [type(e) for e in subscriber.errors] == [Boom]


def test_an_eager_error_cuts_ahead_of_the_queued_items() -> None:
    upstream, subscriber = _attach(_Eager)
    upstream.send_next(1, 2)
    upstream.send_error(Boom("x"))
    assert subscriber.items == [] and [type(e) for e in subscriber.errors] == [Boom]
    subscriber.request(5)
    assert subscriber.items == []
    subscriber.assert_clean()


def test_the_default_overflow_policy_fails_with_rule_1_1() -> None:
    upstream, subscriber = _attach(_Buffer, capacity=2)
    upstream.send_next(1, 2, 3)
    assert [type(e) for e in subscriber.errors] == [ProtocolViolationError]
    assert "Rule 1.1" in str(subscriber.errors[0])
    assert upstream.cancelled and subscriber.items == []


def test_an_overflow_hook_can_drop_the_oldest() -> None:
    upstream, subscriber = _attach(_DropOldest, capacity=2)
    assert upstream.requests == [UNBOUNDED]
    upstream.send_next(1, 2, 3, 4)
    subscriber.request(5)
    assert subscriber.items == [3, 4] and not subscriber.errors


@pytest.mark.parametrize(
    ("bad", "kind"), [(0, NonPositiveRequestError), (-5, NonPositiveRequestError), (1.5, TypeError)]
)
def test_a_bad_request_cancels_upstream_and_signals_once(bad: object, kind: type) -> None:
    upstream, subscriber = _attach(_Buffer)
    upstream.send_next(1)
    subscriber.request(bad)  # type: ignore[arg-type]
    subscriber.request(bad)  # type: ignore[arg-type]
    subscriber.request(3)  # after the error: a no-op
    assert [type(e) for e in subscriber.errors] == [kind]
    if kind is NonPositiveRequestError:
        assert "Rule 3.9" in str(subscriber.errors[0])
    assert upstream.cancelled and subscriber.items == []
    assert not upstream.bad_requests  # validated here, never passed upstream
    subscriber.assert_clean()


def test_a_bad_request_from_on_next_follows_the_current_item() -> None:
    class Bad(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            if item == 2:
                self.request(0)

    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber = Bad(UNBOUNDED)
    upstream.lift(_lifted(_Buffer, 8)).subscribe(subscriber)
    upstream.send_next(1, 2, 3, 4)
    assert subscriber.items == [1, 2] and len(subscriber.errors) == 1
    subscriber.assert_clean()


def test_request_from_on_next_recurses_at_most_once_over_many_items() -> None:
    depth = 0
    max_depth = 0
    max_stack = 0

    class Deep(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            nonlocal depth, max_depth, max_stack
            depth += 1
            max_depth = max(max_depth, depth)
            if item % 50_000 == 0:
                max_stack = max(max_stack, len(_stack()))
            self.items.append(item)
            self.requested += 1
            self.subscription.request(1)
            depth -= 1

    subscriber = Deep(1)
    Flow.range(200_000).lift(_lifted(_Refill, 16)).subscribe(subscriber)
    assert len(subscriber.items) == 200_000 and subscriber.completed
    assert max_depth == 1  # Rule 3.3
    assert max_stack < 100


def _stack() -> list[object]:
    frames: list[object] = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return frames


def test_cancel_is_idempotent_clears_the_queue_and_drops_the_subscriber() -> None:
    upstream, subscriber = _attach(_Buffer)
    upstream.send_next(1, 2, 3)
    subscription = subscriber.subscription
    assert isinstance(subscription, _Buffer)
    subscription.cancel()
    subscription.cancel()  # Rule 3.7
    subscription.request(5)  # Rule 3.6
    assert upstream.cancelled
    assert len(subscription._queue) == 0
    assert subscriber.items == [] and not subscriber.is_terminated
    ref = weakref.ref(subscriber)
    del subscriber
    upstream.subscriber = None
    gc.collect()
    assert ref() is None  # Rule 3.13


def test_a_raising_downstream_on_next_cancels_upstream_and_becomes_on_error() -> None:
    class Raising(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            raise Boom("downstream")

    upstream: TestPublisher[int] = TestPublisher()
    subscriber = Raising(5)
    upstream.lift(_lifted(_Buffer, 4)).subscribe(subscriber)
    upstream.send_next(1)
    assert upstream.cancelled
    assert subscriber.items == [1] and [str(e) for e in subscriber.errors] == ["downstream"]


def test_a_raising_hook_cancels_upstream_and_becomes_on_error() -> None:
    class Failing(_Buffer):
        __slots__ = ()

        @override
        def hook_on_emitted(self, count: int) -> None:
            raise Boom("hook")

    upstream, subscriber = _attach(Failing, initial=5)
    upstream.send_next(1, 2)
    assert upstream.cancelled
    assert subscriber.items == [1] and [str(e) for e in subscriber.errors] == ["hook"]


def test_an_error_after_the_terminal_signal_is_reported(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    upstream, subscriber = _attach(_Buffer, initial=1)
    upstream.send_complete()
    upstream.send_error(Boom("late"))
    assert subscriber.completed and not subscriber.errors
    assert [str(e) for e, _ in undeliverable] == ["late"]


def test_a_second_subscription_is_cancelled_and_reported(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    upstream, _ = _attach(_Buffer)
    second: TestPublisher[int] = TestPublisher()
    buffer = upstream.subscriber
    assert buffer is not None
    second.subscribe(buffer)
    assert second.cancelled
    assert [type(e) for e, _ in undeliverable] == [ProtocolViolationError]


def test_concurrent_producer_and_requesters_never_overlap_or_over_deliver() -> None:
    """Rule 1.3 and Rule 1.1 with items and requests arriving on several threads."""
    subscriber: TestSubscriber[int] = TestSubscriber()
    buffer = _DropOldest(subscriber, 100_000)
    count = 20_000
    sink: Subscriber[int] = buffer
    sink.on_subscribe(_NoUpstream())

    def produce() -> None:
        for i in range(count):
            sink.on_next(i)
        sink.on_complete()

    def demand() -> None:
        for _ in range(count // 50):
            subscriber.request(20)

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=demand) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    subscriber.request(UNBOUNDED)
    assert subscriber.await_terminal(5)
    subscriber.assert_clean()
    assert subscriber.items == list(range(count)) and subscriber.completed


class _NoUpstream:
    __slots__ = ()

    def request(self, n: int) -> None:
        pass

    def cancel(self) -> None:
        pass


# -- SubscriptionArbiter ---------------------------------------------------------------------


class _Recorder:
    __slots__ = ("cancelled", "requests")

    def __init__(self) -> None:
        self.requests: list[object] = []
        self.cancelled = False

    def request(self, n: int) -> None:
        self.requests.append(n)

    def cancel(self) -> None:
        self.cancelled = True


def test_arbiter_carries_outstanding_demand_to_the_next_upstream() -> None:
    arbiter = SubscriptionArbiter()
    arbiter.request(3)
    arbiter.request(2)
    first, second = _Recorder(), _Recorder()
    arbiter.set_upstream(first)
    assert first.requests == [5]
    arbiter.request(1)
    assert first.requests == [5, 1]
    arbiter.produced(4)
    arbiter.clear_upstream()
    arbiter.request(1)  # between upstreams: remembered
    arbiter.set_upstream(second)
    assert second.requests == [3] and first.requests == [5, 1]


def test_arbiter_cancels_a_stale_upstream_instead_of_replacing_its_successor() -> None:
    arbiter = SubscriptionArbiter()
    arbiter.request(2)
    epoch = arbiter.epoch  # read when the first upstream was subscribed
    arbiter.clear_upstream()  # the owner moved on before that upstream attached
    successor, stale = _Recorder(), _Recorder()
    arbiter.set_upstream(successor)
    arbiter.set_upstream(stale, epoch=epoch)
    assert stale.cancelled and stale.requests == []
    arbiter.request(1)
    assert successor.requests == [2, 1] and not successor.cancelled
    current = _Recorder()
    arbiter.clear_upstream()
    arbiter.set_upstream(current, epoch=arbiter.epoch)  # not stale: made current
    assert current.requests == [3] and not current.cancelled


def test_arbiter_demand_never_goes_negative_and_unbounded_stays_unbounded() -> None:
    arbiter = SubscriptionArbiter()
    arbiter.request(2)
    arbiter.produced(5)  # a broken upstream over-delivered
    assert arbiter.requested == 0
    arbiter.request(UNBOUNDED)
    arbiter.request(UNBOUNDED)
    arbiter.produced(10)
    assert arbiter.requested == UNBOUNDED


def test_arbiter_cancel_cancels_current_and_later_upstreams() -> None:
    cancelled: list[bool] = []

    class Owner(SubscriptionArbiter):
        __slots__ = ()

        @override
        def hook_on_cancel(self) -> None:
            cancelled.append(True)

    arbiter = Owner()
    first, second = _Recorder(), _Recorder()
    arbiter.set_upstream(first)
    arbiter.cancel()
    arbiter.cancel()  # Rule 3.7
    arbiter.request(3)  # Rule 3.6
    arbiter.set_upstream(second)
    assert first.cancelled and second.cancelled
    assert first.requests == [] and second.requests == []
    assert cancelled == [True]


def test_arbiter_forwards_a_bad_request_to_the_current_or_next_upstream() -> None:
    arbiter = SubscriptionArbiter()
    current = _Recorder()
    arbiter.set_upstream(current)
    arbiter.request(0)
    assert current.requests == [0]  # the upstream signals Rule 3.9 in order
    assert isinstance(arbiter.pending_error, NonPositiveRequestError)
    arbiter.request(5)  # nothing more is asked after a bad request
    assert current.requests == [0]

    between = SubscriptionArbiter()
    between.request(2)
    between.request(-1)
    later = _Recorder()
    between.set_upstream(later)
    assert later.requests == [-1]  # not the demand: the bad request
