"""Sources: pull-based, None-safe, lazy, and each one honours Rule 1.9."""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from reactive_bp import (
    UNBOUNDED,
    Flow,
    NoneItemError,
    NonPositiveRequestError,
    ProtocolViolationError,
    SynchronousSink,
)
from reactive_bp.abc import Publisher, Subscriber, Subscription
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _count_up(state: int, sink: SynchronousSink[int]) -> int:
    sink.next(state)
    return state + 1


ALL_SOURCES: list[Flow[int]] = [
    Flow.from_iterable([1, 2]),
    Flow.range(3),
    Flow.just(1),
    Flow.empty(),
    Flow.error(ValueError("x")),
    Flow.never(),
    Flow.defer(lambda: Flow.just(1)),
    Flow.generate(lambda: 0, _count_up),
]


@pytest.mark.parametrize("source", ALL_SOURCES, ids=repr)
def test_subscribe_none_raises_type_error(source: Flow[int]) -> None:
    with pytest.raises(TypeError, match=r"Rule 1\.9"):
        source.subscribe(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("source", ALL_SOURCES, ids=repr)
def test_on_subscribe_comes_first_and_once(source: Flow[int]) -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    source.subscribe(subscriber)
    assert subscriber.signals[0] == "on_subscribe"
    assert subscriber.signals.count("on_subscribe") == 1
    subscriber.assert_clean()


def test_from_iterable_replays_a_list_and_shares_a_generator() -> None:
    listed = Flow.from_iterable([1, 2, 3])
    assert listed.to_list() == [1, 2, 3]
    assert listed.to_list() == [1, 2, 3]
    generated = Flow.from_iterable(x for x in [1, 2, 3])
    assert generated.to_list() == [1, 2, 3]
    assert generated.to_list() == []


def test_a_none_item_fails_the_stream_naming_the_source() -> None:
    subscriber: TestSubscriber[int | None] = TestSubscriber(UNBOUNDED)
    Flow.from_iterable([1, None, 3]).subscribe(subscriber)
    assert subscriber.items == [1]
    assert len(subscriber.errors) == 1
    assert isinstance(subscriber.errors[0], NoneItemError)
    assert isinstance(subscriber.errors[0], TypeError)
    assert "from_iterable" in str(subscriber.errors[0])


def test_an_iterator_error_is_signalled_after_the_items_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise KeyError("broken source")

    subscriber: TestSubscriber[int] = TestSubscriber(10)
    Flow.from_iterable(failing()).subscribe(subscriber)
    assert subscriber.items == [1]
    assert [type(e) for e in subscriber.errors] == [KeyError]


def test_an_iter_error_is_signalled_after_on_subscribe() -> None:
    class NotIterable:
        def __iter__(self) -> Iterator[int]:
            raise OSError("cannot open")

    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.from_iterable(NotIterable()).subscribe(subscriber)
    assert subscriber.signals[0] == "on_subscribe"
    assert [type(e) for e in subscriber.errors] == [OSError]


def test_range_follows_python_semantics() -> None:
    assert Flow.range(4).to_list() == [0, 1, 2, 3]
    assert Flow.range(2, 5).to_list() == [2, 3, 4]
    assert Flow.range(10, 0, -3).to_list() == [10, 7, 4, 1]
    assert Flow.range(0).to_list() == []


def test_just() -> None:
    assert Flow.just("a", "b").to_list() == ["a", "b"]
    assert Flow.just().to_list() == []
    with pytest.raises(TypeError):
        Flow.just(1, None)


def test_empty_and_error_need_no_demand() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.empty().subscribe(subscriber)
    assert subscriber.completed
    failing: TestSubscriber[int] = TestSubscriber()
    error = ValueError("x")
    Flow.error(error).subscribe(failing)
    assert failing.errors == [error]
    with pytest.raises(TypeError):
        Flow.error("not an exception")  # type: ignore[arg-type]


def test_never_signals_nothing_but_still_validates_demand() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.never().subscribe(subscriber)
    subscriber.request(10)
    assert subscriber.signals == ["on_subscribe"]
    subscriber.request(0)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]


def test_defer_calls_the_factory_per_subscriber() -> None:
    calls: list[int] = []

    def factory() -> Flow[int]:
        calls.append(1)
        return Flow.just(len(calls))

    deferred = Flow.defer(factory)
    assert calls == []
    assert deferred.to_list() == [1]
    assert deferred.to_list() == [2]


def test_defer_turns_a_failing_or_none_factory_into_on_error() -> None:
    def raising() -> Flow[int]:
        raise LookupError("no source")

    with pytest.raises(LookupError):
        Flow.defer(raising).to_list()
    with pytest.raises(TypeError, match="returned None"):
        Flow.defer(lambda: None).to_list()  # type: ignore[arg-type, return-value]


def _counter(limit: int, calls: list[int]) -> Flow[int]:
    def step(state: int, sink: SynchronousSink[int]) -> int:
        calls.append(state)
        sink.next(state)
        if state == limit - 1:
            sink.complete()
        return state + 1

    return Flow.generate(lambda: 0, step)


def test_generate_calls_the_function_once_per_requested_item() -> None:
    calls: list[int] = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    _counter(100, calls).subscribe(subscriber)
    assert calls == []
    subscriber.request(3)
    assert calls == [0, 1, 2]
    assert subscriber.items == [0, 1, 2]


def test_generate_completes_and_disposes_the_state() -> None:
    disposed: list[int] = []

    def step(state: int, sink: SynchronousSink[int]) -> int:
        sink.next(state)
        if state == 2:
            sink.complete()
        return state + 1

    assert Flow.generate(lambda: 0, step, disposed.append).to_list() == [0, 1, 2]
    assert disposed == [3]


def test_generate_disposes_on_cancel() -> None:
    disposed: list[int] = []
    subscriber: TestSubscriber[int] = TestSubscriber(2)
    Flow.generate(lambda: 0, _count_up, disposed.append).subscribe(subscriber)
    subscriber.cancel()
    assert disposed == [2]


def test_generate_errors() -> None:
    def raising(state: int, sink: SynchronousSink[int]) -> int:
        raise ArithmeticError("bad step")

    with pytest.raises(ArithmeticError):
        Flow.generate(lambda: 0, raising).to_list()

    def silent(state: int, sink: SynchronousSink[int]) -> int:
        return state

    with pytest.raises(RuntimeError, match="neither emitted nor ended"):
        Flow.generate(lambda: 0, silent).to_list()

    def twice(state: int, sink: SynchronousSink[int]) -> int:
        sink.next(1)
        sink.next(2)
        return state

    with pytest.raises(RuntimeError, match="at most once"):
        Flow.generate(lambda: 0, twice).to_list()

    def signalled(state: int, sink: SynchronousSink[int]) -> int:
        sink.next(7)
        sink.error(KeyError("done badly"))
        return state

    subscriber: TestSubscriber[int] = TestSubscriber(10)
    Flow.generate(lambda: 0, signalled).subscribe(subscriber)
    assert subscriber.items == [7]
    assert [type(e) for e in subscriber.errors] == [KeyError]


# -- from_publisher: third-party publishers behind the strict guard ----------------------


class _ThirdParty:
    """A duck-typed publisher that does not import reactive_bp; its behaviour is scripted."""

    def __init__(self, script: str, count: int = 3) -> None:
        self.script = script
        self.count = count
        self.cancelled = False
        self.requested: list[int] = []
        self.rejected: Exception | None = None
        self.subscriber: Subscriber[int | None] | None = None

    def subscribe(self, subscriber: Subscriber[int | None]) -> None:
        self.subscriber = subscriber
        if self.script == "next_before_subscribe":
            subscriber.on_next(1)
        subscriber.on_subscribe(self._Subscription(self))

    class _Subscription:
        def __init__(self, owner: _ThirdParty) -> None:
            self.owner = owner
            self.sent = 0

        def request(self, n: int) -> None:
            owner = self.owner
            if n <= 0 and owner.script == "raises_on_bad_request":
                raise ValueError("this publisher raises instead of signalling")
            if owner.script == "request_raises":
                raise RuntimeError("request blew up")
            owner.requested.append(n)
            subscriber = owner.subscriber
            assert subscriber is not None
            if owner.script == "over_delivers":
                for i in range(n + 2):
                    subscriber.on_next(i)
                return
            if owner.script == "emits_none":
                try:
                    subscriber.on_next(None)
                except TypeError as rejected:  # Rule 2.13: raised to the caller
                    owner.rejected = rejected
                return
            while self.sent < min(n, owner.count):
                self.sent += 1
                subscriber.on_next(self.sent)
            if owner.script == "signals_after_complete" or self.sent >= owner.count:
                subscriber.on_complete()
                if owner.script == "signals_after_complete":
                    subscriber.on_next(99)
                    subscriber.on_error(RuntimeError("late"))

        def cancel(self) -> None:
            self.owner.cancelled = True


def test_from_publisher_returns_a_flow_unchanged() -> None:
    flow = Flow.range(3)
    assert Flow.from_publisher(flow) is flow


def test_from_publisher_relays_a_well_behaved_publisher() -> None:
    assert Flow.from_publisher(_ThirdParty("good")).to_list() == [1, 2, 3]


def test_from_publisher_turns_over_delivery_into_on_error() -> None:
    upstream = _ThirdParty("over_delivers")
    subscriber: TestSubscriber[int | None] = TestSubscriber(2)
    Flow.from_publisher(upstream).subscribe(subscriber)
    assert subscriber.items == [0, 1]
    assert len(subscriber.errors) == 1
    assert isinstance(subscriber.errors[0], ProtocolViolationError)
    assert "Rule 1.1" in str(subscriber.errors[0])
    assert upstream.cancelled
    subscriber.assert_clean()


def test_from_publisher_turns_a_none_item_into_on_error_and_raises_to_the_publisher() -> None:
    upstream = _ThirdParty("emits_none")
    subscriber: TestSubscriber[int | None] = TestSubscriber(2)
    Flow.from_publisher(upstream).subscribe(subscriber)
    assert [type(e) for e in subscriber.errors] == [NoneItemError]
    assert isinstance(upstream.rejected, TypeError)
    assert upstream.cancelled


def test_from_publisher_reports_signals_after_complete(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    subscriber: TestSubscriber[int | None] = TestSubscriber(10)
    Flow.from_publisher(_ThirdParty("signals_after_complete")).subscribe(subscriber)
    assert subscriber.items == [1, 2, 3] and subscriber.completed
    subscriber.assert_clean()
    # Neither the late item nor the late error is swallowed (Rule 1.7).
    reported = [str(e) for e, _ in undeliverable]
    assert reported == ["Rule 1.7: on_next(99) after the terminal signal", "late"]
    assert isinstance(undeliverable[0][0], ProtocolViolationError)


class _Scripted:
    """A publisher that plays a fixed list of signals from ``subscribe``."""

    def __init__(self, *script: tuple[str, object]) -> None:
        self.script = script
        self.subscription = _Counting()

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        for signal, value in self.script:
            if signal == "subscribe":
                subscriber.on_subscribe(self.subscription)
            elif signal == "next":
                subscriber.on_next(value)  # type: ignore[arg-type]
            elif signal == "error":
                subscriber.on_error(value)  # type: ignore[arg-type]
            else:
                subscriber.on_complete()


class _Counting:
    def __init__(self) -> None:
        self.cancelled = False

    def request(self, n: int) -> None:
        pass

    def cancel(self) -> None:
        self.cancelled = True


def test_from_publisher_reports_a_second_on_complete(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    publisher = _Scripted(("subscribe", None), ("next", 1), ("complete", None), ("complete", None))
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    Flow.from_publisher(publisher).subscribe(subscriber)
    assert subscriber.items == [1] and subscriber.completed
    subscriber.assert_clean()
    assert [type(e) for e, _ in undeliverable] == [ProtocolViolationError]
    assert "Rule 1.7" in str(undeliverable[0][0])


def test_from_publisher_reports_an_error_after_an_error(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    first, second = KeyError("first"), KeyError("second")
    publisher = _Scripted(("subscribe", None), ("error", first), ("error", second))
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    Flow.from_publisher(publisher).subscribe(subscriber)
    assert subscriber.errors == [first]
    subscriber.assert_clean()
    assert [e for e, _ in undeliverable] == [second]


def test_from_publisher_is_silent_about_signals_after_cancel() -> None:
    """Rule 2.8: after cancel, items and the terminal may still arrive; that is not a fault."""
    publisher = _Scripted(("subscribe", None), ("next", 1), ("next", 2), ("complete", None))
    subscriber: TestSubscriber[int] = TestSubscriber(5, cancel_after=1)
    Flow.from_publisher(publisher).subscribe(subscriber)
    assert subscriber.items == [1] and not subscriber.completed
    assert publisher.subscription.cancelled
    subscriber.assert_clean()


def test_from_publisher_drops_the_subscriber_after_cancel_and_after_the_end() -> None:
    """Rule 3.13: the guard (the subscription downstream holds) lets the subscriber go."""
    for script in [(("subscribe", None),), (("subscribe", None), ("complete", None))]:
        subscriber: TestSubscriber[int] = TestSubscriber(1)
        Flow.from_publisher(_Scripted(*script)).subscribe(subscriber)
        subscription = subscriber.subscription
        subscription.cancel()
        ref = weakref.ref(subscriber)
        del subscriber
        gc.collect()
        assert ref() is None
        subscription.request(1)  # still held, and a no-op now (Rule 3.6)


def test_from_publisher_validates_demand_itself() -> None:
    upstream = _ThirdParty("raises_on_bad_request")
    subscriber: TestSubscriber[int | None] = TestSubscriber()
    Flow.from_publisher(upstream).subscribe(subscriber)
    subscriber.request(-5)  # the publisher would raise; the guard signals instead
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert upstream.cancelled


def test_from_publisher_turns_a_raising_request_into_on_error() -> None:
    upstream = _ThirdParty("request_raises")
    subscriber: TestSubscriber[int | None] = TestSubscriber()
    Flow.from_publisher(upstream).subscribe(subscriber)
    subscriber.request(1)
    assert [type(e) for e in subscriber.errors] == [RuntimeError]


def test_from_publisher_fails_on_next_before_on_subscribe() -> None:
    upstream = _ThirdParty("next_before_subscribe")
    subscriber: TestSubscriber[int | None] = TestSubscriber(10)
    Flow.from_publisher(upstream).subscribe(subscriber)
    assert subscriber.signals[0] == "on_subscribe"  # Rule 1.9 towards downstream
    assert subscriber.items == [] and not subscriber.completed
    [error] = subscriber.errors
    assert isinstance(error, ProtocolViolationError) and "Rule 1.9" in str(error)
    assert upstream.cancelled  # its late on_subscribe was cancelled
    assert upstream.requested == []  # and never asked for anything
    subscriber.assert_clean()


class _TwoThreadPublisher:
    """Broken on purpose: two threads call on_next at the same time (Rule 1.3)."""

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        class _S:
            def request(self, n: int) -> None:
                pass

            def cancel(self) -> None:
                pass

        subscriber.on_subscribe(_S())
        barrier = threading.Barrier(2)

        def blast(offset: int) -> None:
            barrier.wait()
            for i in range(2000):
                subscriber.on_next(offset + i)

        threads = [threading.Thread(target=blast, args=(k * 10_000,)) for k in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        subscriber.on_complete()


def test_from_publisher_serializes_overlapping_signals() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.from_publisher(_TwoThreadPublisher()).subscribe(subscriber)
    assert len(subscriber.items) == 4000 and subscriber.completed
    subscriber.assert_clean()  # no Rule 1.3 overlap reached the subscriber


class _LockedPublisher:
    """Emits ``0..count-1`` on its own thread while holding its own lock, and takes that
    lock in ``request`` and ``cancel`` (a "synchronized" emitter: legal, and common). The
    guard used to hold its lock while calling out to downstream's ``on_subscribe`` and
    to ``cancel``, while the emitter waited for that lock holding its own: a deadlock."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.cond = threading.Condition(threading.Lock())
        self.demand = 0
        self.cancelled = False
        self.thread: threading.Thread | None = None
        self.first_sent = threading.Event()  # the emitter called on_next(0), lock held

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        publisher = self

        class _S:
            def request(self, n: int) -> None:
                with publisher.cond:
                    publisher.demand += n
                    publisher.cond.notify_all()

            def cancel(self) -> None:
                with publisher.cond:
                    publisher.cancelled = True
                    publisher.cond.notify_all()

        def run() -> None:
            with self.cond:
                for i in range(self.count):
                    while self.demand <= 0 and not self.cancelled:
                        self.cond.wait(0.01)
                    if self.cancelled:
                        return
                    self.demand -= 1
                    self.first_sent.set()
                    subscriber.on_next(i)  # under its own lock
                subscriber.on_complete()

        # The emitter starts before on_subscribe (also legal): its first item can
        # overlap downstream's on_subscribe, which the guard must serialize (Rule 1.3).
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        subscriber.on_subscribe(_S())


def _finish(publisher: _LockedPublisher, subscriber: TestSubscriber[int]) -> None:
    ended = subscriber.await_terminal(5)
    assert publisher.thread is not None
    publisher.thread.join(5)
    assert ended, "deadlock: no terminal signal within 5 s"
    subscriber.assert_clean()  # and never two signals at once (Rule 1.3)


def test_from_publisher_requests_inside_on_subscribe_do_not_deadlock_a_locked_emitter() -> None:
    class TwoRequests(TestSubscriber[int]):
        inside = False

        def on_subscribe(self, subscription: Subscription) -> None:
            self.inside = True
            super().on_subscribe(subscription)
            self.request(1)  # the emitter sends item 0 on its thread, lock held ...
            assert publisher.first_sent.wait(5)
            self.request(UNBOUNDED)  # ... and this needs the emitter's lock
            self.inside = False

        def on_next(self, item: int) -> None:
            if self.inside:
                self.violations.append(f"Rule 1.3: on_next({item}) during on_subscribe")
            super().on_next(item)

    for _ in range(20):
        publisher = _LockedPublisher(200)
        subscriber = TwoRequests(0)
        thread = threading.Thread(
            target=Flow.from_publisher(publisher).subscribe, args=(subscriber,), daemon=True
        )
        thread.start()
        _finish(publisher, subscriber)
        thread.join(5)
        assert subscriber.items == list(range(200)) and subscriber.completed


def test_from_publisher_a_bad_request_while_a_locked_emitter_runs_does_not_deadlock() -> None:
    for _ in range(20):
        publisher = _LockedPublisher(20_000)
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        Flow.from_publisher(publisher).subscribe(subscriber)
        deadline = time.monotonic() + 5
        while len(subscriber.items) < 50 and time.monotonic() < deadline:
            time.sleep(0.0005)
        # Rule 3.9: the guard cancels the publisher, which takes its lock. On its own
        # thread, so that a deadlock fails the test instead of hanging it.
        requester = threading.Thread(target=subscriber.request, args=(0,), daemon=True)
        requester.start()
        _finish(publisher, subscriber)
        requester.join(5)
        assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
        assert publisher.cancelled


class _EmitsInsideRequest:
    """Synchronous: ``request(n)`` emits up to ``n`` items before it returns (legal)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        publisher = self

        class _S:
            def request(self, n: int) -> None:
                for _ in range(n):
                    if publisher.sent == publisher.count:
                        subscriber.on_complete()
                        return
                    publisher.sent += 1
                    subscriber.on_next(publisher.sent)

            def cancel(self) -> None:
                pass

        subscriber.on_subscribe(_S())


def test_from_publisher_items_emitted_inside_request_from_on_next_do_not_recurse() -> None:
    """Rule 3.3: an item re-entering from ``request`` inside ``on_next`` is handed on
    after that ``on_next`` returns, so one-at-a-time demand costs no stack depth."""
    count = 5 * sys.getrecursionlimit()
    subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
    Flow.from_publisher(_EmitsInsideRequest(count)).subscribe(subscriber)
    assert subscriber.items == list(range(1, count + 1)) and subscriber.completed
    subscriber.assert_clean()


def test_from_publisher_rejects_non_publishers() -> None:
    with pytest.raises(TypeError):
        Flow.from_publisher(object())  # type: ignore[arg-type]


def _subscription_type_check(s: Subscription, p: Publisher[int]) -> None:
    """Static check: the protocols accept reactive_bp objects."""
