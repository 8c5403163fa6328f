"""ConnectableFlow: publish / share / replay / cache, connect, ref_count, auto_connect.

* ``PublisherVerification`` on ``publish().auto_connect()`` and ``share()``.
* connect: once per connection, the same connection while connected, a fresh one after
  the source ended or the connection was disposed; dispose cancels the source and fails
  the subscribers with ``DisconnectedError``, serialized with the source's signals.
* ref_count: connects at ``min_subscribers``, disconnects when the count drops to 0, after
  ``grace`` on the scheduler (virtual time) unless a subscriber arrives in the grace;
  re-subscribes the source after it ended.
* auto_connect: connects once, never disconnects.
* No connection, timer or subscriber is kept reachable after it is over; concurrent
  subscribe/cancel never leaves a connection running with nobody listening.
"""

from __future__ import annotations

import gc
import itertools
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from reactive_bp import (
    UNBOUNDED,
    ConnectableFlow,
    DisconnectedError,
    Flow,
    MulticastProcessor,
    SlowSubscriberPolicy,
)
from reactive_bp.abc import Publisher, Subscriber, Subscription
from reactive_bp.schedulers import ThreadPoolScheduler, VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber
from spec_tck import PublisherVerification

clean = pytest.mark.no_undeliverable


class Boom(Exception):
    """A test failure."""


def _numbers(elements: int) -> Flow[int]:
    if elements >= UNBOUNDED - 1:
        return Flow.from_iterable(itertools.count())
    return Flow.range(elements)


class _Sources:
    """A source factory that hands out a fresh TestPublisher per subscription."""

    def __init__(self) -> None:
        self.made: list[TestPublisher[int]] = []
        self.flow: Flow[int] = Flow.defer(self._make)

    def _make(self) -> TestPublisher[int]:
        publisher: TestPublisher[int] = TestPublisher()
        self.made.append(publisher)
        return publisher

    @property
    def last(self) -> TestPublisher[int]:
        return self.made[-1]


# -- the compliance kit ----------------------------------------------------------------------------


class TestPublishAutoConnect(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return _numbers(elements).publish(4).auto_connect()

    def create_failed_publisher(self) -> Publisher[int] | None:
        return Flow.error(Boom("failed on purpose")).publish().auto_connect()


class TestShare(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return _numbers(elements).share()

    def create_failed_publisher(self) -> Publisher[int] | None:
        return Flow.error(Boom("failed on purpose")).share()


class TestPublishRefCountWithGrace(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return _numbers(elements).publish(2).ref_count(grace=0.001)

    def create_failed_publisher(self) -> Publisher[int] | None:
        return Flow.error(Boom("failed on purpose")).publish().ref_count(grace=0.001)


# -- connect and dispose ---------------------------------------------------------------------------


@clean
def test_nothing_is_requested_before_connect_and_connect_is_idempotent() -> None:
    sources = _Sources()
    flow = sources.flow.publish(4)
    assert isinstance(flow, ConnectableFlow)
    subscriber: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(subscriber)
    assert sources.made == []
    connection = flow.connect()
    assert flow.connect() is connection and len(sources.made) == 1
    assert sources.last.requests == [4]
    sources.last.send_next(1, 2)
    assert subscriber.items == [1, 2]
    assert not connection.is_disposed


@clean
def test_dispose_cancels_the_source_and_fails_the_subscribers() -> None:
    sources = _Sources()
    flow = sources.flow.publish(4)
    subscriber: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(subscriber)
    connection = flow.connect()
    sources.last.send_next(1)
    connection.dispose()
    assert sources.last.cancelled and connection.is_disposed
    (error,) = subscriber.errors
    assert isinstance(error, DisconnectedError) and subscriber.items == [1]
    connection.dispose()  # idempotent
    # Later subscribers join a fresh connection and wait for connect().
    late: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(late)
    assert late.errors == [] and len(sources.made) == 1
    assert flow.connect() is not connection and len(sources.made) == 2
    sources.last.send_next(5)
    assert late.items == [5]


@clean
def test_after_the_source_ended_late_subscribers_get_the_ending_until_connect() -> None:
    sources = _Sources()
    flow = sources.flow.publish(4)
    first: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(first)
    connection = flow.connect()
    sources.last.send_next(1)
    sources.last.send_complete()
    assert first.completed and connection.is_disposed
    late: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(late)
    assert late.completed and late.items == []  # RxJava 3: the ended connection answers
    fresh = flow.connect()  # a new run of the source
    assert fresh is not connection and len(sources.made) == 2
    again: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(again)
    sources.last.send_next(7)
    assert again.items == [7]


@clean
def test_a_source_error_reaches_every_subscriber_and_later_ones() -> None:
    sources = _Sources()
    flow = sources.flow.publish(4)
    subscribers = [TestSubscriber[int](1) for _ in range(2)]
    for subscriber in subscribers:
        flow.subscribe(subscriber)
    flow.connect()
    error = Boom("failed")
    sources.last.send_error(error)
    late: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(late)
    assert [s.errors for s in [*subscribers, late]] == [[error]] * 3


class _LateSource:
    """A publisher that calls ``on_subscribe`` only when the test says so."""

    def __init__(self) -> None:
        self.subscriber: Subscriber[int] | None = None
        self.upstream: TestPublisher[int] = TestPublisher()

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        self.subscriber = subscriber

    def call_back(self) -> None:
        assert self.subscriber is not None
        self.upstream.subscribe(self.subscriber)


@clean
def test_dispose_before_the_source_called_back() -> None:
    source = _LateSource()
    flow = Flow.from_publisher(source).publish(4)
    subscriber: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(subscriber)
    connection = flow.connect()
    connection.dispose()
    (error,) = subscriber.errors  # the processor got on_subscribe first (Rule 1.9)
    assert isinstance(error, DisconnectedError)
    source.call_back()
    assert source.upstream.cancelled and source.upstream.requests == []


@clean
def test_the_processor_is_a_multicast_processor_with_the_given_policy() -> None:
    dropped: list[tuple[int, int]] = []
    sources = _Sources()
    flow = sources.flow.publish(
        8, SlowSubscriberPolicy.DROP, on_dropped=lambda i, x: dropped.append((i, x))
    )
    fast, slow = TestSubscriber[int](10), TestSubscriber[int](1)
    flow.subscribe(fast)
    flow.subscribe(slow)
    flow.connect()
    assert sources.last.requests == [8]
    sources.last.send_next(1, 2, 3)
    assert fast.items == [1, 2, 3] and slow.items == [1]
    assert dropped == [(1, 2), (1, 3)]
    processor = flow._joinable().processor
    assert isinstance(processor, MulticastProcessor)
    assert processor.policy is SlowSubscriberPolicy.DROP


@clean
def test_bad_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError):
        Flow.range(3).publish(0)
    with pytest.raises(TypeError):
        Flow.range(3).publish(4, "drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Flow.range(3).replay(-1)
    flow = Flow.range(3).publish()
    with pytest.raises(ValueError):
        flow.ref_count(0)
    with pytest.raises(ValueError):
        flow.ref_count(grace=-1.0)
    with pytest.raises(ValueError):
        flow.auto_connect(-1)
    with pytest.raises(TypeError):
        ConnectableFlow(Flow.range(3), 42)  # type: ignore[arg-type]


class _StrictProcessor(MulticastProcessor[int]):
    """A MulticastProcessor that records every rule its upstream (the connection) breaks."""

    __slots__ = ("_busy", "_ended", "violations")

    def __init__(self) -> None:
        super().__init__(64)
        self._busy = threading.Lock()
        self._ended = False
        self.violations: list[str] = []

    def _signal(self, name: str, deliver: Callable[[], None]) -> None:
        if not self._busy.acquire(blocking=False):
            self.violations.append(f"Rule 1.3: {name} overlapped another signal")
            deliver()
            return
        try:
            if self._ended:
                self.violations.append(f"Rule 1.7: {name} after the terminal signal")
            deliver()
        finally:
            self._busy.release()

    def on_next(self, item: int) -> None:
        self._signal("on_next", lambda: super(_StrictProcessor, self).on_next(item))

    def on_error(self, error: Exception) -> None:
        def deliver() -> None:
            self._ended = True
            super(_StrictProcessor, self).on_error(error)

        self._signal("on_error", deliver)


def _dispose_race(run: int) -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processors: list[_StrictProcessor] = []

    def factory() -> _StrictProcessor:
        processors.append(_StrictProcessor())
        return processors[-1]

    flow: ConnectableFlow[int] = ConnectableFlow(upstream, factory)
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    flow.subscribe(subscriber)
    connection = flow.connect()
    rng = random.Random(run)
    count = rng.randrange(2, 40)
    after = rng.randrange(count)  # dispose once this many items arrived: mid-stream

    def emit() -> None:
        for i in range(count):
            upstream.send_next(i)

    def dispose() -> None:
        deadline = time.monotonic() + 5
        while len(subscriber.items) < after and time.monotonic() < deadline:
            pass
        connection.dispose()

    failures = _run_threads(emit, dispose)
    assert not failures, failures
    assert processors[-1].violations == [], run  # the connection serialized its signals
    subscriber.assert_clean()
    (error,) = subscriber.errors
    assert isinstance(error, DisconnectedError), run
    assert subscriber.items == list(range(len(subscriber.items)))


@clean
def test_dispose_is_serialized_with_an_item_in_flight(fast_switching: None) -> None:
    """The processor never gets on_error while on_next runs on another thread."""
    for run in range(200):
        _dispose_race(run)


# -- ref_count -------------------------------------------------------------------------------------


@clean
def test_ref_count_connects_at_min_subscribers_and_disconnects_when_all_left() -> None:
    sources = _Sources()
    shared = sources.flow.publish(4).ref_count(2)
    first, second = TestSubscriber[int](10), TestSubscriber[int](10)
    shared.subscribe(first)
    assert sources.made == []
    shared.subscribe(second)
    assert len(sources.made) == 1
    sources.last.send_next(1)
    assert first.items == second.items == [1]
    first.cancel()
    assert not sources.last.cancelled
    second.cancel()
    assert sources.last.cancelled
    assert first.errors == second.errors == []  # the disconnect reaches nobody
    third: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(third)  # 1 < 2: waits on a fresh connection
    assert len(sources.made) == 1 and third.errors == []


@pytest.mark.parametrize("grace", [0.0, 1.0], ids=["no-grace", "grace-over"])
def test_a_subscriber_arriving_as_the_last_one_leaves_gets_a_fresh_connection(
    monkeypatch: pytest.MonkeyPatch, grace: float
) -> None:
    # The window between "the last subscriber left" and the connection's dispose():
    # a subscriber arriving there must not join the connection about to be disposed
    # (it got DisconnectedError without ever cancelling).
    from reactive_bp.processors import _connectable

    sources = _Sources()
    vts = VirtualTimeScheduler()
    shared = sources.flow.publish(4).ref_count(grace=grace, scheduler=vts)
    first: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(first)
    late: TestSubscriber[int] = TestSubscriber(10)
    original_dispose = _connectable._Connection.dispose
    original_detach = _connectable.ConnectableFlow._detach
    arrived: list[bool] = []
    assert isinstance(shared, _connectable._RefCountFlow)

    def arrive() -> None:
        # A subscriber from "another thread", at the first point after the last one left
        # where ref_count's lock is free.
        if not arrived:
            arrived.append(True)
            shared.subscribe(late)

    def detach(self: ConnectableFlow[int], connection: _connectable._Connection[int]) -> None:
        if not shared._lock.locked():
            arrive()
        original_detach(self, connection)

    def dispose(self: _connectable._Connection[int]) -> None:
        arrive()
        original_dispose(self)

    monkeypatch.setattr(_connectable.ConnectableFlow, "_detach", detach)
    monkeypatch.setattr(_connectable._Connection, "dispose", dispose)
    first.cancel()
    vts.advance_by(2.0)
    assert arrived
    assert late.errors == [], late.errors
    assert len(sources.made) == 2 and sources.made[0].cancelled
    assert not sources.made[1].cancelled  # the late subscriber's own, running connection
    sources.last.send_next(7)
    assert late.items == [7]


@clean
def test_ref_count_grace_keeps_the_connection_for_a_subscriber_arriving_in_time() -> None:
    vts = VirtualTimeScheduler()
    sources = _Sources()
    shared = sources.flow.publish(4).ref_count(grace=2.0, scheduler=vts)
    first: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(first)
    first.cancel()
    assert not sources.last.cancelled and vts.pending == 1
    vts.advance_by(1.5)
    second: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(second)  # within the grace: same connection, timer called off
    assert vts.pending == 0 and len(sources.made) == 1
    sources.last.send_next(7)
    assert second.items == [7]
    vts.advance_by(5)
    assert not sources.last.cancelled
    second.cancel()
    vts.advance_by(1.9)
    assert not sources.last.cancelled
    vts.advance_by(0.1)
    assert sources.last.cancelled and vts.pending == 0
    third: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(third)  # after the grace: the source is subscribed afresh
    assert len(sources.made) == 2


@clean
def test_ref_count_subscribes_the_source_again_after_it_ended() -> None:
    sources = _Sources()
    shared = sources.flow.share()
    first: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(first)
    sources.last.send_next(1)
    sources.last.send_complete()
    assert first.completed
    second: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(second)
    assert len(sources.made) == 2 and not second.completed
    sources.last.send_next(2)
    assert second.items == [2]


@clean
def test_ref_count_disconnects_at_once_when_the_scheduler_drops_the_grace_timer() -> None:
    pool = ThreadPoolScheduler(1)
    pool.shutdown()
    sources = _Sources()
    shared = sources.flow.publish(4).ref_count(grace=0.001, scheduler=pool)
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    shared.subscribe(subscriber)
    subscriber.cancel()
    deadline = time.monotonic() + 5
    while not sources.last.cancelled and time.monotonic() < deadline:
        time.sleep(0.001)  # waits for the rejection, not for a duration
    assert sources.last.cancelled


@clean
def test_share_shares_one_subscription() -> None:
    sources = _Sources()
    shared = sources.flow.share()
    a, b = TestSubscriber[int](10), TestSubscriber[int](1)
    shared.subscribe(a)
    shared.subscribe(b)
    assert len(sources.made) == 1
    sources.last.send_next(1, 2)
    assert a.items == [1] and b.items == [1]  # WAIT: paced by the slower one
    b.request(5)
    assert a.items == b.items == [1, 2]


# -- auto_connect ----------------------------------------------------------------------------------


@clean
def test_auto_connect_connects_once_and_never_disconnects() -> None:
    sources = _Sources()
    flow = sources.flow.publish(4).auto_connect(2)
    first, second = TestSubscriber[int](10), TestSubscriber[int](10)
    flow.subscribe(first)
    assert sources.made == []
    flow.subscribe(second)
    assert len(sources.made) == 1
    first.cancel()
    second.cancel()
    assert not sources.last.cancelled
    third: TestSubscriber[int] = TestSubscriber(10)
    flow.subscribe(third)
    sources.last.send_next(3)
    assert third.items == [3] and len(sources.made) == 1


@clean
def test_auto_connect_zero_connects_at_once() -> None:
    sources = _Sources()
    sources.flow.publish(4).auto_connect(0)
    assert len(sources.made) == 1 and sources.last.requests == [4]


# -- replay and cache ------------------------------------------------------------------------------


@clean
def test_cache_subscribes_once_and_replays_everything() -> None:
    sources = _Sources()
    cached = sources.flow.cache()
    first: TestSubscriber[int] = TestSubscriber(10)
    cached.subscribe(first)
    sources.last.send_next(1, 2)
    sources.last.send_complete()
    late: TestSubscriber[int] = TestSubscriber(10)
    cached.subscribe(late)
    assert late.items == [1, 2] and late.completed and len(sources.made) == 1


@clean
def test_replay_keeps_the_last_history_items() -> None:
    flow = Flow.range(5).replay(2)
    flow.connect()
    assert flow.to_list() == [0, 1, 2, 3, 4]
    assert flow.to_list() == [3, 4]


# -- references and races --------------------------------------------------------------------------


@clean
def test_a_disconnected_connection_and_its_subscribers_are_not_kept_reachable() -> None:
    vts = VirtualTimeScheduler()
    sources = _Sources()
    connectable = sources.flow.publish(4)
    shared = connectable.ref_count(grace=1.0, scheduler=vts)
    subscriber: TestSubscriber[int] = TestSubscriber(10)
    shared.subscribe(subscriber)
    processor = weakref.ref(connectable._joinable().processor)
    subscriber_ref = weakref.ref(subscriber)
    subscriber.cancel()
    del subscriber
    vts.advance_by(1.0)
    assert vts.pending == 0 and sources.last.cancelled
    gc.collect()
    assert processor() is None and subscriber_ref() is None


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _run_threads(*tasks: Callable[[], None]) -> list[BaseException]:
    barrier = threading.Barrier(len(tasks))
    failures: list[BaseException] = []

    def wrap(task: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(5)
                task()
            except BaseException as error:
                failures.append(error)

        return run

    threads = [
        threading.Thread(target=wrap(task), name=f"race-{i}") for i, task in enumerate(tasks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    return failures


class _CountingSource:
    """A never-ending source that counts the subscriptions still open (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribed = 0
        self.open = 0

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        with self.lock:
            self.subscribed += 1
            self.open += 1
        subscriber.on_subscribe(_CountingSubscription(self))


class _CountingSubscription:
    def __init__(self, source: _CountingSource) -> None:
        self._source = source
        self._cancelled = False

    def request(self, n: int) -> None:
        """Never emits."""

    def cancel(self) -> None:
        with self._source.lock:
            if not self._cancelled:
                self._cancelled = True
                self._source.open -= 1


def _churn_race(run: int, grace: float) -> None:
    source = _CountingSource()
    vts = VirtualTimeScheduler()
    shared = Flow.from_publisher(source).publish(4).ref_count(grace=grace, scheduler=vts)
    rng = random.Random(run)
    plans = [[rng.random() < 0.5 for _ in range(6)] for _ in range(3)]

    def churn(plan: list[bool]) -> Callable[[], None]:
        def task() -> None:
            held: list[Subscription] = []
            for keep in plan:
                subscriber: TestSubscriber[int] = TestSubscriber(1)
                shared.subscribe(subscriber)
                if keep:
                    held.append(subscriber.subscription)
                else:
                    subscriber.cancel()
            for subscription in held:
                subscription.cancel()

        return task

    failures = _run_threads(*(churn(plan) for plan in plans))
    assert not failures, failures
    vts.advance_by(grace + 1)
    assert source.open == 0, (run, source.subscribed)
    assert vts.pending == 0


@clean
@pytest.mark.parametrize("grace", [0.0, 0.5])
def test_race_subscribe_and_cancel_never_leave_a_connection_without_subscribers(
    grace: float, fast_switching: None
) -> None:
    for run in range(150):
        _churn_race(run, grace)
