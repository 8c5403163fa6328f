"""publish_on / subscribe_on: bounded queues across threads, no leaked threads."""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from reactive_bp import (
    UNBOUNDED,
    Flow,
    NonPositiveRequestError,
    RejectedExecutionError,
    SourceQueue,
)
from reactive_bp.abc import Subscription
from reactive_bp.schedulers import Cancellable, ThreadPoolScheduler, VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def test_publish_on_moves_delivery_to_the_scheduler_with_bounded_demand() -> None:
    requests: list[int] = []
    threads: set[str] = set()
    with ThreadPoolScheduler(2, thread_name_prefix="pool") as pool:
        items = (
            Flow.range(5000)
            .do_on_request(requests.append)
            .publish_on(pool, prefetch=64)
            .do_on_next(lambda _: threads.add(threading.current_thread().name))
            .to_list(timeout=10)
        )
    assert items == list(range(5000))
    assert requests[0] == 64 and set(requests[1:]) == {48}
    assert all(name.startswith("pool") for name in threads)


def test_publish_on_in_virtual_time_delivers_only_when_the_scheduler_runs() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(10).publish_on(vts, prefetch=4).subscribe(subscriber)
    assert subscriber.items == []
    vts.run_ready()
    assert subscriber.items == list(range(10)) and subscriber.completed
    subscriber.assert_clean()


def test_publish_on_errors_bad_requests_and_cancel() -> None:
    vts = VirtualTimeScheduler()
    failing: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.concat(Flow.just(1, 2), Flow.error(KeyError("k"))).publish_on(vts).subscribe(failing)
    vts.run_ready()
    assert failing.items == [1, 2] and [type(e) for e in failing.errors] == [KeyError]
    bad: TestSubscriber[int] = TestSubscriber()
    Flow.range(10).publish_on(vts).subscribe(bad)
    bad.request(0)
    vts.run_ready()
    assert [type(e) for e in bad.errors] == [NonPositiveRequestError]
    cancelled: list[bool] = []
    stopped: TestSubscriber[int] = TestSubscriber(3)
    Flow.never().do_on_cancel(lambda: cancelled.append(True)).publish_on(vts).subscribe(stopped)
    stopped.cancel()
    vts.run_ready()
    assert cancelled == [True] and not stopped.errors


def test_publish_on_keeps_memory_flat_for_a_fast_producer_and_slow_consumer() -> None:
    """The job reactivex's observe_on fails (it queues everything)."""
    produced = [0]

    def numbers() -> Iterator[int]:
        while True:
            produced[0] += 1
            yield produced[0]

    received: list[int] = []
    tracemalloc.start()
    try:
        with ThreadPoolScheduler(1) as pool:
            iterator = (
                Flow.from_iterable(numbers())
                .publish_on(pool, prefetch=32)
                .blocking_iter(prefetch=8)
            )
            for item in iterator:
                received.append(item)
                if len(received) % 100 == 0:
                    time.sleep(0.001)  # a slow consumer
                if len(received) == 2000:
                    break
            iterator.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == list(range(1, 2001))
    assert produced[0] <= 2000 + 32 + 8  # never more than the bounded queues ahead
    assert peak < 5_000_000


def test_subscribe_on_runs_the_source_on_the_scheduler() -> None:
    where: set[str] = set()
    with ThreadPoolScheduler(1, thread_name_prefix="sub") as pool:
        items = (
            Flow.range(100)
            .do_on_next(lambda _: where.add(threading.current_thread().name))
            .subscribe_on(pool)
            .to_list(timeout=10)
        )
    assert items == list(range(100))
    assert all(name.startswith("sub") for name in where)


def test_no_threads_leak() -> None:
    before = {t.ident for t in threading.enumerate()}
    with ThreadPoolScheduler(2) as pool:
        Flow.range(100).publish_on(pool).to_list(timeout=10)
    after = [t for t in threading.enumerate() if t.ident not in before]
    assert [t for t in after if t.is_alive() and t.name != "reactive_bp-timer"] == []


def test_subscribe_on_hands_requests_over_serially_and_after_on_subscribe() -> None:
    """Rule 2.7 towards upstream and Rule 1.3 towards downstream, on a 4-thread pool."""
    for _ in range(20):
        seen: list[int] = []
        with ThreadPoolScheduler(4) as pool:
            subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
            Flow.range(300).do_on_request(seen.append).subscribe_on(pool).subscribe(subscriber)
            assert subscriber.await_terminal(10) or len(subscriber.items) == 300
        assert subscriber.items == list(range(300))
        subscriber.assert_clean()


# -- a pool that shuts down under a stream: on_error naming it, never silence --------------


def _blocked_pool(name: str) -> tuple[ThreadPoolScheduler, threading.Event]:
    """A one-worker pool whose worker is busy until the returned event is set."""
    pool = ThreadPoolScheduler(1, thread_name_prefix=name)
    release = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    pool.schedule(block)
    assert started.wait(5)
    return pool, release


def _assert_rejected_by(subscriber: TestSubscriber[int], name: str) -> None:
    assert subscriber.await_terminal(5), "the subscriber was left waiting"
    assert subscriber.signals[0] == "on_subscribe"
    [error] = subscriber.errors
    assert isinstance(error, RejectedExecutionError)
    assert "ThreadPoolScheduler" in str(error) and repr(name) in str(error)
    assert not subscriber.completed
    subscriber.assert_clean()


def test_publish_on_fails_when_the_pool_drops_its_queued_drain() -> None:
    pool, release = _blocked_pool("drained")
    try:
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        Flow.range(10).publish_on(pool, prefetch=4).subscribe(subscriber)
        assert subscriber.items == []  # the drain waits behind the blocked worker
        pool.shutdown(wait=False)
        _assert_rejected_by(subscriber, "drained")
        assert subscriber.items == []
    finally:
        release.set()
        pool.shutdown()


def test_publish_on_fails_when_the_pool_is_already_shut_down() -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix="closed")
    pool.shutdown()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(10).publish_on(pool).subscribe(subscriber)
    _assert_rejected_by(subscriber, "closed")


def test_subscribe_on_fails_when_the_pool_drops_the_subscribe() -> None:
    pool, release = _blocked_pool("unsubscribed")
    try:
        subscribed: list[bool] = []

        def factory() -> Flow[int]:
            subscribed.append(True)
            return Flow.range(10)

        subscriber: TestSubscriber[int] = TestSubscriber(5)
        Flow.defer(factory).subscribe_on(pool).subscribe(subscriber)
        assert subscriber.signals == []
        pool.shutdown(wait=False)
        _assert_rejected_by(subscriber, "unsubscribed")
        assert subscribed == []  # the source was never subscribed
    finally:
        release.set()
        pool.shutdown()


def test_subscribe_on_fails_when_the_pool_drops_a_request() -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix="dropped")
    release = threading.Event()
    cancelled: list[bool] = []
    try:
        subscriber: TestSubscriber[int] = TestSubscriber(2)
        Flow.range(10).do_on_cancel(lambda: cancelled.append(True)).subscribe_on(pool).subscribe(
            subscriber
        )
        deadline = time.monotonic() + 5
        while len(subscriber.items) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert subscriber.items == [0, 1]
        busy = threading.Event()

        def block() -> None:
            busy.set()
            release.wait(10)

        pool.schedule(block)  # the worker is busy ...
        assert busy.wait(5)
        subscriber.request(3)  # ... so this request waits behind it
        pool.shutdown(wait=False)
        _assert_rejected_by(subscriber, "dropped")
        assert subscriber.items == [0, 1]
        assert cancelled == [True]  # the source is told to stop
    finally:
        release.set()
        pool.shutdown()


def test_subscribe_on_fails_on_a_pool_that_is_already_shut_down() -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix="closed")
    pool.shutdown()
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    Flow.range(10).subscribe_on(pool).subscribe(subscriber)
    _assert_rejected_by(subscriber, "closed")


def test_subscribe_on_request_on_a_pool_shut_down_meanwhile_fails_the_stream() -> None:
    """Before: the request ran the source on the requesting thread instead."""
    with ThreadPoolScheduler(1, thread_name_prefix="meanwhile") as pool:
        subscriber: TestSubscriber[int] = TestSubscriber(1)
        Flow.range(10).subscribe_on(pool).subscribe(subscriber)
        deadline = time.monotonic() + 5
        while not subscriber.items and time.monotonic() < deadline:
            time.sleep(0.001)
    subscriber.request(5)
    _assert_rejected_by(subscriber, "meanwhile")
    assert subscriber.items == [0]


# -- subscribe_on demand -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 0, -1, 1.5, "3"])
def test_subscribe_on_answers_an_invalid_request_with_on_error(bad: object) -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(10).subscribe_on(vts).subscribe(subscriber)
    vts.run_ready()
    subscriber.request(bad)  # type: ignore[arg-type]
    vts.run_ready()
    expected = NonPositiveRequestError if type(bad) is int else TypeError
    assert [type(e) for e in subscriber.errors] == [expected]
    assert subscriber.items == []
    subscriber.assert_clean()


def test_subscribe_on_a_bad_request_after_good_ones_still_fails() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(10).subscribe_on(vts).subscribe(subscriber)
    vts.run_ready()
    subscriber.request(2)
    subscriber.request(None)  # type: ignore[arg-type]
    subscriber.request(3)
    vts.run_ready()
    assert [type(e) for e in subscriber.errors] == [TypeError]
    subscriber.assert_clean()


def test_subscribe_on_a_bad_request_is_not_lost_when_upstream_ends_before_the_hand_over() -> None:
    """Before: ``request(0)`` waited for a scheduled hand-over; upstream completed first,
    the hand-over reached an ended upstream (a Rule 3.6 no-op) and the stream ended with
    ``on_complete``: the Rule 3.9 error was neither delivered nor reported."""
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.subscribe_on(vts).subscribe(subscriber)
    vts.run_ready()  # subscribed; nothing requested yet
    subscriber.request(0)  # the relay answers at once (Rule 3.9) ...
    upstream.send_complete()  # ... so upstream ending before any hand-over changes nothing
    vts.run_ready()
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert not subscriber.completed
    assert upstream.cancelled  # and upstream was told to stop
    subscriber.assert_clean()


def test_subscribe_on_a_bad_request_after_the_end_is_a_no_op() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(3).subscribe_on(vts).subscribe(subscriber)
    vts.run_ready()
    assert subscriber.items == [0, 1, 2] and subscriber.completed
    subscriber.request(0)  # Rule 3.6
    vts.run_ready()
    assert subscriber.errors == []
    subscriber.assert_clean()


def test_subscribe_on_a_bad_request_inside_on_subscribe_follows_it() -> None:
    """Rule 1.3: the error is delivered after ``on_subscribe`` returns, never inside it."""
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()

    class BadInOnSubscribe(TestSubscriber[int]):
        def on_subscribe(self, subscription: Subscription) -> None:
            super().on_subscribe(subscription)
            subscription.request(-1)
            assert self.errors == []  # not yet: on_subscribe is still running

    subscriber = BadInOnSubscribe()
    upstream.subscribe_on(vts).subscribe(subscriber)
    vts.run_ready()
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert upstream.cancelled
    subscriber.assert_clean()


# -- racing a pool shutdown against the relayed signals ------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("fast_switching")
def test_subscribe_on_shutdown_racing_items_from_another_thread_never_overlaps() -> None:
    """An error injected by the shutdown while items flow from a foreign thread (Rule 1.3)."""
    for run in range(300):
        source: SourceQueue[int] = SourceQueue(64)
        pool = ThreadPoolScheduler(1, thread_name_prefix=f"race{run}")
        subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
        source.flow.subscribe_on(pool).subscribe(subscriber)
        stop = threading.Event()

        def produce(source: SourceQueue[int] = source, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                source.offer(i)
                i += 1

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(0.0005 * (run % 4))
        pool.shutdown()
        stop.set()
        producer.join(10)
        # Either the error arrived, or nothing was queued on the pool when it shut down
        # (then the next request is refused, which fails the stream just the same).
        subscriber.request(1)
        assert subscriber.await_terminal(5), f"run {run}: left waiting"
        assert [type(e) for e in subscriber.errors] == [RejectedExecutionError]
        subscriber.assert_clean()


class _DroppingScheduler(VirtualTimeScheduler):
    """A virtual scheduler whose ``drop_all`` rejects what it queued, as a pool shutdown does."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[object] = []

    def schedule(self, action: Callable[[], object]) -> Cancellable:
        self.queued.append(action)
        return super().schedule(action)

    def drop_all(self, error: Exception) -> None:
        queued, self.queued = self.queued, []
        for action in queued:
            getattr(action, "on_rejected")(error)  # noqa: B009 - the duck-typed hook


@pytest.mark.usefixtures("fast_switching")
def test_subscribe_on_a_dropped_request_racing_items_is_delivered_once_and_alone() -> None:
    """The error from the rejecting thread never overlaps an item in flight (Rule 1.3)."""
    for run in range(300):
        scheduler = _DroppingScheduler()
        upstream: TestPublisher[int] = TestPublisher()
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        upstream.subscribe_on(scheduler).subscribe(subscriber)
        scheduler.run_ready()  # subscribe and hand the demand over
        scheduler.queued.clear()
        start = threading.Barrier(2)

        def produce(
            start: threading.Barrier = start, upstream: TestPublisher[int] = upstream
        ) -> None:
            start.wait()
            for i in range(300):
                upstream.send_next(i)

        producer = threading.Thread(target=produce)
        producer.start()
        start.wait()
        for _ in range(run % 5):
            time.sleep(0)
        subscriber.request(1)  # a flush task ...
        error = RejectedExecutionError(f"run {run}")
        # ... that the scheduler drops: the error is delivered here, or (in about
        # half the runs) by the producer's thread as its item in flight leaves.
        scheduler.drop_all(error)
        producer.join(10)
        assert subscriber.await_terminal(5), f"run {run}: the error was lost"
        assert subscriber.errors == [error]
        assert upstream.cancelled
        assert subscriber.signals[-1].startswith("on_error")
        subscriber.assert_clean()
