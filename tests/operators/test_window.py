"""``window`` and ``window_timeout``: boundaries, demand bounds, endings, timers, races, leaks.

The demand contract under test (see ``Flow.window``): a window's items are
asked for only when the outer has demand for it, so upstream is never more
than ``max_size`` items ahead; a window holds at most ``max_size`` items; a
window nobody consumes fills up and closes without stopping the next one.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    AlreadySubscribedError,
    Flow,
    NonPositiveRequestError,
    ProtocolViolationError,
    RejectedExecutionError,
)
from reactive_bp.abc import Subscriber, Subscription
from reactive_bp.schedulers import Cancellable, VirtualTimeScheduler
from reactive_bp.schedulers._base import Rejectable
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable

Window = Flow[int]


def _setup(
    count: int = 3, *, outer_request: int = 0
) -> tuple[TestPublisher[int], TestSubscriber[Window]]:
    up: TestPublisher[int] = TestPublisher()
    outer: TestSubscriber[Window] = TestSubscriber(outer_request)
    up.window(count).subscribe(outer)
    return up, outer


def _timed(
    max_size: int = 3, max_time: float = 1.0, *, outer_request: int = 0
) -> tuple[TestPublisher[int], TestSubscriber[Window], VirtualTimeScheduler]:
    vts = VirtualTimeScheduler()
    up: TestPublisher[int] = TestPublisher()
    outer: TestSubscriber[Window] = TestSubscriber(outer_request)
    up.window_timeout(max_size, max_time, vts).subscribe(outer)
    return up, outer, vts


def _consume(window: Window, initial: int = 0) -> TestSubscriber[int]:
    subscriber: TestSubscriber[int] = TestSubscriber(initial)
    window.subscribe(subscriber)
    return subscriber


def _queued(window: Window) -> int:
    return len(window._inner._queue)  # type: ignore[attr-defined]


# -- boundaries -------------------------------------------------------------------------------


def test_windows_are_consecutive_and_the_last_may_be_shorter() -> None:
    out = Flow.range(7).window(3).concat_map(lambda w: w.buffer(10)).to_list(timeout=5)
    assert out == [[0, 1, 2], [3, 4, 5], [6]]


def test_no_empty_windows() -> None:
    assert Flow.empty().window(3).to_list(timeout=5) == []
    assert len(Flow.range(6).window(3).to_list(timeout=5)) == 2


def test_on_next_none_is_refused_rule_2_13() -> None:
    up, _ = _setup(outer_request=1)
    assert up.subscriber is not None
    with pytest.raises(TypeError, match=r"2\.13"):
        up.subscriber.on_next(None)  # type: ignore[arg-type]


# -- demand -----------------------------------------------------------------------------------


def test_a_window_is_requested_only_with_outer_demand() -> None:
    up, outer = _setup(3)
    assert up.requests == []
    outer.request(1)
    assert up.requests == [3]
    up.send_next(0, 1, 2)
    assert len(outer.items) == 1
    assert up.outstanding == 0 and up.requests == [3]  # no outer demand for the next window
    outer.request(1)
    assert up.requests == [3, 3]


def test_a_window_nobody_consumes_fills_up_closes_and_does_not_stop_the_next() -> None:
    up, outer = _setup(3, outer_request=3)
    up.emit_all_requested()  # three windows, nobody subscribed
    assert up.total_requested == 9 and len(outer.items) == 3
    assert up.peak_outstanding <= 3
    assert [_queued(w) for w in outer.items] == [3, 3, 3]
    subscribers = [_consume(w, 10) for w in outer.items]
    assert [s.items for s in subscribers] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert all(s.completed for s in subscribers)


def test_window_items_wait_for_the_window_subscribers_demand() -> None:
    up, outer = _setup(4, outer_request=1)
    up.send_next(0)
    sub = _consume(outer.items[0], 1)
    up.send_next(1, 2)
    assert sub.items == [0] and _queued(outer.items[0]) == 2
    sub.request(5)
    up.send_next(3)
    assert sub.items == [0, 1, 2, 3] and sub.completed


# -- single subscriber, cancellation ----------------------------------------------------------


def test_a_second_subscriber_to_a_window_gets_an_error() -> None:
    up, outer = _setup(outer_request=1)
    up.send_next(0)
    first = _consume(outer.items[0], 5)
    second = _consume(outer.items[0], 5)
    [error] = second.errors
    assert isinstance(error, AlreadySubscribedError) and "window #1" in str(error)
    up.send_next(1)
    assert first.items == [0, 1]


def test_a_cancelled_window_keeps_its_boundaries() -> None:
    up, outer = _setup(3, outer_request=2)
    up.send_next(0)
    first = _consume(outer.items[0], 1)
    first.cancel()
    up.send_next(1, 2)  # still window 1's items: dropped
    assert len(outer.items) == 1
    up.send_next(3)
    second = _consume(outer.items[1], 10)
    assert first.items == [0] and second.items == [3]


def test_outer_cancel_lets_a_subscribed_window_run_to_its_end() -> None:
    up, outer = _setup(3, outer_request=5)
    up.send_next(0)
    sub = _consume(outer.items[0], 10)
    outer.cancel()
    assert not up.cancelled
    up.send_next(1, 2)
    assert sub.items == [0, 1, 2] and sub.completed
    assert up.cancelled


def test_outer_cancel_then_window_cancel_cancels_upstream() -> None:
    up, outer = _setup(3, outer_request=5)
    up.send_next(0)
    sub = _consume(outer.items[0], 10)
    outer.cancel()
    sub.cancel()
    assert up.cancelled


def test_outer_cancel_drops_a_window_nobody_subscribed_to() -> None:
    up, outer = _setup(3, outer_request=5)
    up.send_next(0)
    outer.cancel()
    assert up.cancelled
    late = _consume(outer.items[0], 10)
    [error] = late.errors
    assert isinstance(error, AlreadySubscribedError) and "dropped" in str(error)


# -- errors and completion --------------------------------------------------------------------


def test_upstream_error_reaches_the_outer_and_the_open_window_only() -> None:
    up, outer = _setup(2, outer_request=5)
    up.send_next(0, 1, 2, 3, 4)
    closed = [_consume(w) for w in outer.items[:2]]
    open_ = _consume(outer.items[2])
    boom = Boom("upstream")
    up.send_error(boom)
    assert outer.errors == [boom] and open_.errors == [boom]
    for sub in closed:  # complete: their items are all there
        sub.request(10)
        assert sub.completed and not sub.errors
    assert [s.items for s in closed] == [[0, 1], [2, 3]] and open_.items == []


def test_upstream_completion_closes_the_open_window_after_its_items() -> None:
    up, outer = _setup(3, outer_request=5)
    up.send_next(0, 1)
    sub = _consume(outer.items[0], 1)
    up.send_complete()
    assert outer.completed and not sub.completed
    sub.request(1)
    assert sub.items == [0, 1] and sub.completed


def test_bad_request_on_a_window_fails_only_that_window_rule_3_9() -> None:
    up, outer = _setup(2, outer_request=5)
    up.send_next(0)
    bad = _consume(outer.items[0])
    bad.request(0)
    [error] = bad.errors
    assert isinstance(error, NonPositiveRequestError)
    up.send_next(1, 2)
    good = _consume(outer.items[1], 5)
    assert good.items == [2] and not outer.errors


def test_upstream_sending_more_than_requested_fails_rule_1_1() -> None:
    up: TestPublisher[int] = TestPublisher(strict=False)
    outer: TestSubscriber[Window] = TestSubscriber()
    up.window(2).subscribe(outer)
    up.send_next(1)
    [error] = outer.errors
    assert isinstance(error, ProtocolViolationError) and "1.1" in str(error)
    assert up.cancelled


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="count"):
        Flow.range(3).window(0)
    with pytest.raises(ValueError, match="max_size"):
        Flow.range(3).window_timeout(0, 1.0)
    with pytest.raises(ValueError, match="max_time"):
        Flow.range(3).window_timeout(3, 0.0)


# -- window_timeout in virtual time -----------------------------------------------------------


def test_window_timeout_closes_a_window_max_time_after_it_opened() -> None:
    up, outer, vts = _timed(3, 1.0, outer_request=5)
    vts.advance_by(5)  # no item, no window: windows are never empty
    assert outer.items == []
    up.send_next(0)
    vts.advance_by(0.5)
    up.send_next(1)
    first = _consume(outer.items[0], 10)
    vts.advance_by(0.5)
    assert first.items == [0, 1] and first.completed
    assert vts.pending == 0
    up.send_next(2)
    second = _consume(outer.items[1], 10)
    vts.advance_by(0.99)
    assert not second.completed
    vts.advance_by(0.01)
    assert second.items == [2] and second.completed


def test_window_timeout_closes_on_size_first_and_cancels_the_timer() -> None:
    up, outer, vts = _timed(2, 1.0, outer_request=5)
    up.send_next(0, 1)
    assert vts.pending == 0
    sub = _consume(outer.items[0], 5)
    assert sub.items == [0, 1] and sub.completed


def test_window_timeout_items_requested_before_a_time_close_wait_for_outer_demand() -> None:
    up, outer, vts = _timed(3, 1.0, outer_request=1)
    assert up.requests == [3]
    up.send_next(0)
    vts.advance_by(1.0)  # window 1 closes with one item; two are still outstanding
    up.send_next(1, 2)  # they open window 2, which waits: the outer has no demand
    assert len(outer.items) == 1 and up.requests == [3]
    vts.advance_by(0.5)  # window 2's clock runs while it waits
    outer.request(1)
    assert len(outer.items) == 2
    assert up.requests == [3, 1]  # window 2 is topped up to max_size
    sub = _consume(outer.items[1], 5)
    assert sub.items == [1, 2] and not sub.completed
    vts.advance_by(0.5)
    assert sub.completed


def test_window_timeout_outer_cancel_keeps_the_clock_of_a_subscribed_window() -> None:
    up, outer, vts = _timed(3, 1.0, outer_request=5)
    up.send_next(0)
    sub = _consume(outer.items[0], 5)
    outer.cancel()
    assert not up.cancelled and vts.pending == 1
    vts.advance_by(1.0)
    assert sub.completed and up.cancelled and vts.pending == 0


@pytest.mark.parametrize("how", ["outer_cancel", "window_and_outer_cancel", "complete", "error"])
def test_window_timeout_leaves_no_timer_behind(how: str) -> None:
    up, outer, vts = _timed(3, 1.0, outer_request=5)
    up.send_next(0)
    sub = _consume(outer.items[0], 5)
    assert vts.pending == 1
    if how == "outer_cancel":
        sub.cancel()
        outer.cancel()
    elif how == "window_and_outer_cancel":
        outer.cancel()
        sub.cancel()
    elif how == "complete":
        up.send_complete()
    else:
        up.send_error(Boom("x"))
    assert vts.pending == 0


def test_window_timeout_on_the_default_scheduler_leaves_no_timer_thread() -> None:
    """Timers are cancelled on size and on completion: the shared timer thread can exit."""
    out = Flow.range(7).window_timeout(3, 30.0).concat_map(lambda w: w.buffer(3)).to_list(timeout=5)
    assert out == [[0, 1, 2], [3, 4, 5], [6]]  # (the conftest fails a test that leaks a thread)


class _RejectingScheduler(VirtualTimeScheduler):
    """Keeps every delayed action; ``reject_all`` is what a pool that shut down does."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.kept: list[Rejectable] = []

    def schedule_after(self, delay: float, action: Callable[[], object]) -> Cancellable:
        if self.refuse:
            raise RejectedExecutionError("refused on purpose")
        assert isinstance(action, Rejectable)
        self.kept.append(action)
        return super().schedule_after(delay, action)

    def reject_all(self) -> None:
        for action in self.kept:
            action.on_rejected(RejectedExecutionError("dropped on purpose"))


@pytest.mark.parametrize("refuse", [False, True])
def test_window_timeout_fails_when_its_clock_cannot_run(refuse: bool) -> None:
    scheduler = _RejectingScheduler(refuse)
    up: TestPublisher[int] = TestPublisher()
    outer: TestSubscriber[Window] = TestSubscriber(5)
    up.window_timeout(3, 1.0, scheduler).subscribe(outer)
    up.send_next(0)
    if refuse:  # the clock failed as the window opened: it is never emitted
        assert outer.items == []
    else:
        sub = _consume(outer.items[0], 5)
        scheduler.reject_all()
        assert isinstance(sub.errors[0], RejectedExecutionError)
    assert isinstance(outer.errors[0], RejectedExecutionError)
    assert up.cancelled


# -- references -------------------------------------------------------------------------------


def test_cancel_releases_subscribers_and_timers_rule_3_13() -> None:
    up, outer, vts = _timed(3, 1.0, outer_request=5)
    up.send_next(0)
    sub = _consume(outer.items[0], 1)
    refs: list[weakref.ref[TestSubscriber[Window]] | weakref.ref[TestSubscriber[int]]] = [
        weakref.ref(outer),
        weakref.ref(sub),
    ]
    sub.cancel()
    outer.cancel()
    assert up.cancelled and vts.pending == 0
    del outer, sub
    gc.collect()
    assert all(ref() is None for ref in refs)


# -- random schedules -------------------------------------------------------------------------

SIZE = 3

_step = st.one_of(
    st.just(("emit",)),
    st.just(("emit",)),
    st.tuples(st.just("outer"), st.integers(1, 3)),
    st.tuples(st.just("subscribe"), st.integers(0, 7)),
    st.tuples(st.just("request"), st.integers(0, 7), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.just(("outer_cancel",)),
    st.tuples(st.just("advance"), st.sampled_from([0.4, 1.0])),
)


class _Schedule:
    """Plays one schedule against ``window`` (or ``window_timeout``) and checks invariants."""

    def __init__(self, timed: bool) -> None:
        self.timed = timed
        self.vts = VirtualTimeScheduler()
        self.up: TestPublisher[int] = TestPublisher()
        self.outer: TestSubscriber[Window] = TestSubscriber()
        self.subs: dict[int, TestSubscriber[int]] = {}
        self.emitted: list[int] = []
        flow = self.up.window_timeout(SIZE, 1.0, self.vts) if timed else self.up.window(SIZE)
        flow.subscribe(self.outer)

    def play(self, step: tuple[object, ...]) -> None:
        kind = step[0]
        windows = self.outer.items
        if kind == "emit":
            if self.up.outstanding > 0 and not self.up.cancelled:
                self.emitted.append(len(self.emitted))
                self.up.send_next(self.emitted[-1])
        elif kind == "outer":
            self.outer.request(int(step[1]))  # type: ignore[call-overload]
        elif kind == "outer_cancel":
            self.outer.cancel()
        elif kind == "advance":
            self.vts.advance_by(float(step[1]))  # type: ignore[arg-type]
        elif windows:
            index = int(step[1]) % len(windows)  # type: ignore[call-overload]
            sub = self.subs.get(index)
            if kind == "subscribe" and sub is None:
                self.subs[index] = _consume(windows[index])
            elif kind == "request" and sub is not None:
                sub.request(int(step[2]))  # type: ignore[call-overload]
            elif kind == "cancel" and sub is not None:
                sub.cancel()
        self.check()

    def check(self) -> None:
        assert self.up.outstanding <= SIZE
        if not self.outer.requested:
            assert self.up.requests == []
        self.outer.assert_clean()
        for index, window in enumerate(self.outer.items):
            sub = self.subs.get(index)
            delivered = len(sub.items) if sub is not None else 0
            assert _queued(window) + delivered <= SIZE
            if sub is not None:
                sub.assert_clean()

    def finish(self, ending: str) -> None:
        if not self.up.cancelled:
            if ending == "error":
                self.up.send_error(Boom("end"))
            else:
                self.up.send_complete()
        self.outer.request(UNBOUNDED)
        for index, window in enumerate(self.outer.items):
            if index not in self.subs:
                self.subs[index] = _consume(window)
            if not self.subs[index].cancelled:
                self.subs[index].request(UNBOUNDED)
        self.check()
        assert self.vts.pending == 0, "a timer outlived the stream"
        # Windows are consecutive runs of the upstream items, none empty, none above SIZE;
        # a window that nobody cancelled and that did not fail got its whole run.
        position = 0
        subs = [self.subs[index] for index in range(len(self.outer.items))]
        for index, sub in enumerate(subs):
            if not sub.items:
                assert sub.cancelled or sub.errors, f"window {index} is empty"
                continue
            start = self.emitted.index(sub.items[0])
            assert start >= position, "windows overlap or are out of order"
            assert sub.items == self.emitted[start : start + len(sub.items)]
            assert len(sub.items) <= SIZE
            if not self.timed and not sub.cancelled:
                assert start % SIZE == 0, "window boundaries moved"
            if sub.completed and index + 1 < len(subs) and subs[index + 1].items:
                following = self.emitted.index(subs[index + 1].items[0])
                assert sub.items == self.emitted[start:following], "items lost between windows"
            position = start + len(sub.items)
        untouched = not self.outer.cancelled and not any(sub.cancelled for sub in subs)
        if ending == "complete" and untouched:
            assert [x for sub in subs for x in sub.items] == self.emitted
            assert self.outer.completed and all(sub.completed for sub in subs)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(_step, max_size=40),
    ending=st.sampled_from(["complete", "error"]),
    timed=st.booleans(),
)
def test_random_schedules_keep_demand_bounds_and_boundaries(
    steps: list[tuple[object, ...]], ending: str, timed: bool
) -> None:
    from reactive_bp.testing import capture_undeliverable

    with capture_undeliverable() as reported:  # an error after everything was cancelled
        schedule = _Schedule(timed)
        for step in steps:
            schedule.play(step)
        schedule.finish(ending)
    assert all(isinstance(error, Boom) for error, _ in reported)


# -- races ------------------------------------------------------------------------------------


@pytest.fixture
def _fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class _RaceUpstream(Flow[int]):
    """A thread-safe manual upstream."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outstanding = 0
        self.cancelled = False
        self.subscriber: Subscriber[int] | None = None

    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        self.subscriber = subscriber
        subscriber.on_subscribe(_RaceSubscription(self))

    def emit_requested(self, start: int, limit: int) -> int:
        assert self.subscriber is not None
        value = start
        while value < limit:
            with self.lock:
                if self.outstanding == 0 or self.cancelled:
                    return value
                self.outstanding -= 1
            self.subscriber.on_next(value)
            value += 1
        return value


class _RaceSubscription:
    def __init__(self, upstream: _RaceUpstream) -> None:
        self._upstream = upstream

    def request(self, n: int) -> None:
        with self._upstream.lock:
            self._upstream.outstanding += n

    def cancel(self) -> None:
        self._upstream.cancelled = True


class _Opener:
    """The outer subscriber: subscribes every window as it arrives, asking for one item."""

    def __init__(self) -> None:
        self.windows: list[TestSubscriber[int]] = []
        self.outer: TestSubscriber[Window] = TestSubscriber(UNBOUNDED)

    def on_subscribe(self, subscription: Subscription) -> None:
        self.outer.on_subscribe(subscription)

    def on_next(self, window: Window) -> None:
        self.outer.on_next(window)
        self.windows.append(_consume(window, 1))

    def on_error(self, error: Exception) -> None:
        self.outer.on_error(error)

    def on_complete(self) -> None:
        self.outer.on_complete()


def _error_race_once(run: int, rng: random.Random) -> None:
    """Upstream fails on one thread while two threads request and cancel windows."""
    up = _RaceUpstream()
    opener = _Opener()
    up.window(3).subscribe(opener)
    boom = Boom(f"run {run}")
    cancel_round = rng.randrange(8) if rng.random() < 0.3 else -1
    outer_cancel_round = rng.randrange(8) if rng.random() < 0.2 else -1
    barrier = threading.Barrier(3)

    def source() -> None:
        barrier.wait()
        value = 0
        for _ in range(6):
            value = up.emit_requested(value, value + 5)
        assert up.subscriber is not None
        up.subscriber.on_error(boom)

    def consumer(parity: int) -> None:
        barrier.wait()
        for round_ in range(8):
            if round_ == outer_cancel_round and parity == 0:
                opener.outer.cancel()
            for index, sub in enumerate(list(opener.windows)):
                if index % 2 != parity:
                    continue
                if round_ == cancel_round:
                    sub.cancel()
                else:
                    sub.request(1)

    threads = [
        threading.Thread(target=t) for t in (source, lambda: consumer(0), lambda: consumer(1))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for sub in opener.windows:  # a closed window completes once its items are delivered
        if not sub.cancelled:
            sub.request(UNBOUNDED)
    outer = opener.outer
    outer.assert_clean()
    if not outer.cancelled:
        assert outer.errors == [boom] and not outer.completed, f"run {run}: {outer!r}"
    failed = 0
    for index, sub in enumerate(opener.windows):
        sub.assert_clean()
        assert not (sub.completed and sub.errors), f"run {run}: window {index}"
        if sub.errors:
            assert sub.errors == [boom], f"run {run}: window {index}: {sub!r}"
            failed += 1
        if sub.completed:
            assert len(sub.items) == 3, f"run {run}: window {index} completed early"
    assert failed <= 1, f"run {run}: {failed} windows got the error; only the open one may"
    last = opener.windows[-1] if opener.windows else None
    if last is not None and not last.cancelled and not outer.cancelled:
        assert last.is_terminated, f"run {run}: the last window never ended"


RACE_RUNS = 300


@pytest.mark.usefixtures("_fast_switching")
def test_upstream_error_races_window_requests_and_cancels(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """The outer and the open window end with the error exactly once; closed ones complete."""
    rng = random.Random(5)
    for run in range(RACE_RUNS):
        _error_race_once(run, rng)
    assert all(type(error) is Boom for error, _ in undeliverable)
