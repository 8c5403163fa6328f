"""interval, timer, delay, timeout: exact behaviour in virtual time, plus a few real-time checks.

``VIRTUAL_CASES`` is the virtual-time counterpart of the shared scenario matrix:
the same scenarios (one at a time, batches, unbounded, manual upstream, cancel
on subscribe, cancel mid-stream, upstream error, bad requests) with the clock
advanced between steps. ``test_retry`` and ``test_map_async`` reuse it.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    Flow,
    FlowTimeoutError,
    NonPositiveRequestError,
    Subscriber,
    Subscription,
)
from reactive_bp.schedulers import ImmediateScheduler, VirtualTimeScheduler, _timer
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.races import TraceFunction
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable

VirtualApply = Callable[[Flow[int], VirtualTimeScheduler], Flow[object]]


# -- the virtual-time scenario set ---------------------------------------------------------


@dataclass(frozen=True)
class VirtualCase:
    """A time-based operator: how to apply it on a virtual clock, and its reference model."""

    name: str
    apply: VirtualApply
    model: Callable[[list[int]], Sequence[object]]
    data: Sequence[int] = field(default_factory=lambda: list(range(12)))
    # Whether the operator subscribes its source only once (a TestPublisher can be used).
    single_subscription: bool = True
    ordered: bool = True
    step: float = 0.25

    def __repr__(self) -> str:
        return self.name

    def expected(self) -> list[object]:
        return list(self.model(list(self.data)))

    def same(self, actual: list[object]) -> bool:
        expected = self.expected()
        if self.ordered:
            return actual == expected
        return sorted(map(repr, actual)) == sorted(map(repr, expected))

    def could_continue(self, actual: list[object]) -> bool:
        expected = self.expected()
        if self.ordered:
            return actual == expected[: len(actual)]
        remaining = list(map(repr, expected))
        for item in map(repr, actual):
            if item not in remaining:
                return False
            remaining.remove(item)
        return True


def settle(vts: VirtualTimeScheduler, subscriber: TestSubscriber[object], step: float) -> None:
    """Advance the clock in steps until the subscriber terminates (or give up)."""
    for _ in range(2000):
        if subscriber.is_terminated:
            return
        vts.advance_by(step)


def v_one_at_a_time(case: VirtualCase) -> TestSubscriber[object]:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[object] = TestSubscriber(1, request_on_next=1)
    case.apply(Flow.from_iterable(case.data), vts).subscribe(subscriber)
    settle(vts, subscriber, case.step)
    assert case.same(subscriber.items), subscriber.items
    assert subscriber.completed and not subscriber.errors
    assert vts.pending == 0
    return subscriber


def v_batches(case: VirtualCase, size: int = 3) -> TestSubscriber[object]:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.apply(Flow.from_iterable(case.data), vts).subscribe(subscriber)
    for _ in range(2000):
        if subscriber.is_terminated:
            break
        before = len(subscriber.items)
        subscriber.request(size)
        for _ in range(40):
            vts.advance_by(case.step)
            if len(subscriber.items) - before >= size or subscriber.is_terminated:
                break
        assert len(subscriber.items) - before <= size, "more than requested"
    assert case.same(subscriber.items)
    assert subscriber.completed and not subscriber.errors
    return subscriber


def v_unbounded(case: VirtualCase) -> TestSubscriber[object]:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.apply(Flow.from_iterable(case.data), vts).subscribe(subscriber)
    settle(vts, subscriber, case.step)
    assert case.same(subscriber.items)
    assert subscriber.completed and not subscriber.errors
    assert vts.pending == 0
    return subscriber


def v_manual_upstream(case: VirtualCase) -> TestSubscriber[object]:
    if not case.single_subscription:
        pytest.skip("subscribes its source more than once")
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.apply(upstream, vts).subscribe(subscriber)
    data = list(case.data)
    position = 0
    for _ in range(2000):
        if subscriber.is_terminated or upstream.cancelled:
            break
        if position >= len(data):
            upstream.send_complete()
            position += 1
        if upstream.outstanding == 0 and len(subscriber.items) == subscriber.requested:
            subscriber.request(1)
        while upstream.outstanding and position < len(data):
            upstream.send_next(data[position])
            position += 1
        vts.advance_by(case.step)
    assert case.same(subscriber.items), subscriber.items
    assert subscriber.completed and not subscriber.errors
    assert not upstream.bad_requests
    assert upstream.total_requested <= max(len(data), subscriber.requested)
    return subscriber


def v_cancel_on_subscribe(case: VirtualCase) -> TestSubscriber[object]:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.apply(upstream, vts).subscribe(subscriber)
    subscriber.cancel()
    subscriber.request(5)  # Rule 3.6: a no-op now
    vts.advance_by(100)
    assert subscriber.items == [] and not subscriber.errors and not subscriber.completed
    assert upstream.cancelled
    assert vts.pending == 0
    return subscriber


def v_cancel_mid_stream(case: VirtualCase) -> TestSubscriber[object]:
    if not case.single_subscription:
        pytest.skip("subscribes its source more than once")
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.apply(upstream, vts).subscribe(subscriber)
    upstream.send_next(*case.data[:2])
    vts.advance_by(case.step)
    subscriber.cancel()
    assert upstream.cancelled
    count = len(subscriber.items)
    upstream.send_next(*case.data[2:5])  # late items (Rule 2.8) are dropped
    upstream.send_complete()
    vts.advance_by(100)
    assert len(subscriber.items) == count
    assert not subscriber.completed and not subscriber.errors
    assert vts.pending == 0, "a timer outlived the cancel"
    return subscriber


def v_upstream_error(case: VirtualCase) -> TestSubscriber[object]:
    if not case.single_subscription:
        pytest.skip("subscribes its source more than once")
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.apply(upstream, vts).subscribe(subscriber)
    error = Boom("upstream failed")
    upstream.send_error(error)
    vts.advance_by(100)
    assert subscriber.errors == [error]
    assert not subscriber.completed
    assert vts.pending == 0
    return subscriber


def v_bad_requests(case: VirtualCase) -> TestSubscriber[object]:
    subscriber: TestSubscriber[object] = TestSubscriber()
    for bad, kind in (
        (0, NonPositiveRequestError),
        (-1, NonPositiveRequestError),
        (1.5, TypeError),
    ):
        vts = VirtualTimeScheduler()
        subscriber = TestSubscriber()
        case.apply(Flow.from_iterable(case.data), vts).subscribe(subscriber)
        subscriber.request(bad)  # type: ignore[arg-type]
        vts.advance_by(100)
        assert len(subscriber.errors) == 1, (bad, subscriber)
        assert isinstance(subscriber.errors[0], kind), subscriber.errors
        assert subscriber.items == []
        assert vts.pending == 0
        subscriber.assert_clean()
    return subscriber


VIRTUAL_SCENARIOS: dict[str, Callable[[VirtualCase], TestSubscriber[object]]] = {
    "one_at_a_time": v_one_at_a_time,
    "batches": v_batches,
    "unbounded": v_unbounded,
    "manual_upstream": v_manual_upstream,
    "cancel_on_subscribe": v_cancel_on_subscribe,
    "cancel_mid_stream": v_cancel_mid_stream,
    "upstream_error": v_upstream_error,
    "bad_requests": v_bad_requests,
}


def virtual_params(cases: Sequence[VirtualCase]) -> list[object]:
    return [
        pytest.param(case, scenario, id=f"{case.name}-{name}")
        for case in cases
        for name, scenario in VIRTUAL_SCENARIOS.items()
    ]


def check_random_schedule(case: VirtualCase, steps: list[tuple[int, float]]) -> None:
    """Random (request n, advance dt) steps: never more than requested, nothing lost."""
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.apply(Flow.from_iterable(case.data), vts).subscribe(subscriber)
    for n, dt in steps:
        subscriber.request(n)
        vts.advance_by(dt)
        assert len(subscriber.items) <= subscriber.requested
        assert case.could_continue(subscriber.items)
        subscriber.assert_clean()
    subscriber.request(UNBOUNDED)
    settle(vts, subscriber, case.step)
    assert case.same(subscriber.items)
    assert subscriber.completed
    assert vts.pending == 0
    subscriber.assert_clean()


random_steps = st.lists(
    st.tuples(st.integers(1, 5), st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 3.0])),
    min_size=1,
    max_size=25,
)


# -- the time cases ----------------------------------------------------------------------------


def _timeout_then_fallback(flow: Flow[int], vts: VirtualTimeScheduler) -> Flow[object]:
    """The source stalls after 5 items; the fallback continues with the next ones."""
    return Flow.concat(flow.take(5), Flow.never()).timeout(
        1.0, fallback=flow.skip(5), scheduler=vts
    )


TIME_CASES = [
    VirtualCase("delay", lambda f, vts: f.delay(1.0, scheduler=vts), list),
    VirtualCase("delay_zero", lambda f, vts: f.delay(0.0, scheduler=vts), list),
    VirtualCase("delay_long", lambda f, vts: f.delay(7.5, scheduler=vts), list, step=1.0),
    VirtualCase("timeout_not_reached", lambda f, vts: f.timeout(0.5, scheduler=vts), list),
    VirtualCase("timeout_fallback", _timeout_then_fallback, list, single_subscription=False),
    VirtualCase(
        "delay_then_timeout",
        lambda f, vts: f.delay(0.5, scheduler=vts).timeout(0.75, scheduler=vts),
        list,
    ),
]


@pytest.mark.parametrize(("case", "scenario"), virtual_params(TIME_CASES))
def test_virtual_scenario(
    case: VirtualCase, scenario: Callable[[VirtualCase], TestSubscriber[object]]
) -> None:
    scenario(case).assert_clean()


@pytest.mark.parametrize("case", TIME_CASES, ids=repr)
@settings(max_examples=30, deadline=None)
@given(steps=random_steps)
def test_virtual_random_demand(case: VirtualCase, steps: list[tuple[int, float]]) -> None:
    check_random_schedule(case, steps)


# -- interval -----------------------------------------------------------------------------------


class TimedSubscriber(TestSubscriber[int]):
    """Records the virtual time of every item and of the completion."""

    def __init__(self, vts: VirtualTimeScheduler, initial_request: int = 0) -> None:
        super().__init__(initial_request)
        self.vts = vts
        self.times: list[tuple[float, int]] = []
        self.completed_at: float | None = None

    def on_next(self, item: int) -> None:
        self.times.append((self.vts.now(), item))
        super().on_next(item)

    def on_complete(self) -> None:
        self.completed_at = self.vts.now()
        super().on_complete()


class RaisingSubscriber(TestSubscriber[int]):
    """Its on_next records the item, then raises (Rule 2.13)."""

    def on_next(self, item: int) -> None:
        super().on_next(item)
        raise Boom("downstream")


class CancellingSubscriber(TestSubscriber[int]):
    """Cancels inside on_subscribe."""

    def on_subscribe(self, subscription: Subscription) -> None:
        super().on_subscribe(subscription)
        subscription.cancel()


def test_interval_ticks_at_exact_times_with_demand() -> None:
    vts = VirtualTimeScheduler()
    subscriber = TimedSubscriber(vts)
    Flow.interval(2.0, scheduler=vts).subscribe(subscriber)
    subscriber.request(UNBOUNDED)
    vts.advance_by(9.0)
    assert subscriber.times == [(2.0, 0), (4.0, 1), (6.0, 2), (8.0, 3)]
    subscriber.cancel()
    assert vts.pending == 0


def test_interval_initial_delay() -> None:
    vts = VirtualTimeScheduler()
    subscriber = TimedSubscriber(vts)
    Flow.interval(1.0, scheduler=vts, initial_delay=0.0).subscribe(subscriber)
    subscriber.request(3)
    vts.advance_by(5.0)
    assert subscriber.times == [(0.0, 0), (1.0, 1), (2.0, 2)]
    subscriber.cancel()


def test_interval_without_demand_coalesces_into_the_next_delivered_tick() -> None:
    vts = VirtualTimeScheduler()
    subscriber = TimedSubscriber(vts)
    Flow.interval(1.0, scheduler=vts).subscribe(subscriber)
    vts.advance_by(3.5)  # ticks 0, 1, 2 find no demand
    assert subscriber.times == []
    subscriber.request(1)  # the held tick goes at once: the newest one
    assert subscriber.times == [(3.5, 2)]
    assert subscriber.subscription.coalesced == 2  # type: ignore[attr-defined]
    subscriber.request(2)  # nothing held now: wait for the next ticks
    assert len(subscriber.times) == 1
    vts.advance_by(2.0)
    assert subscriber.times[1:] == [(4.0, 3), (5.0, 4)]
    vts.advance_by(3.0)  # ticks 5, 6, 7 without demand: 7 is held
    subscriber.request(10)
    assert subscriber.times[3:] == [(8.5, 7)]  # delivered on request, not at the tick
    assert subscriber.subscription.coalesced == 4  # type: ignore[attr-defined]
    subscriber.cancel()
    assert vts.pending == 0
    subscriber.assert_clean()


def test_interval_one_at_a_time_consumer_gets_every_tick() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
    Flow.interval(0.5, scheduler=vts).subscribe(subscriber)
    vts.advance_by(5.0)
    assert subscriber.items == list(range(10))
    subscriber.cancel()
    assert vts.pending == 0


def test_interval_take_completes_and_stops_the_clock() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.interval(1.0, scheduler=vts).take(3).subscribe(subscriber)
    vts.advance_by(10.0)
    assert subscriber.items == [0, 1, 2] and subscriber.completed
    assert vts.pending == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_interval_bad_request_is_an_error_and_stops_the_clock(bad: object) -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.interval(1.0, scheduler=vts).subscribe(subscriber)
    subscriber.request(bad)  # type: ignore[arg-type]
    assert len(subscriber.errors) == 1
    vts.advance_by(5.0)
    assert vts.pending == 0 and subscriber.items == []


def test_interval_cancel_on_subscribe_never_starts_the_clock() -> None:
    vts = VirtualTimeScheduler()
    subscriber = CancellingSubscriber()
    Flow.interval(1.0, scheduler=vts).subscribe(subscriber)
    assert vts.pending == 0


def test_interval_and_timer_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="period"):
        Flow.interval(0)
    with pytest.raises(ValueError, match="initial_delay"):
        Flow.interval(1, initial_delay=-1)
    with pytest.raises(TypeError):
        Flow.timer("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Flow.timer(float("nan"))


# -- timer ----------------------------------------------------------------------------------------


def test_timer_emits_zero_at_the_deadline_then_completes() -> None:
    vts = VirtualTimeScheduler()
    subscriber = TimedSubscriber(vts)
    Flow.timer(1.5, scheduler=vts).subscribe(subscriber)
    subscriber.request(1)
    vts.advance_by(1.4)
    assert subscriber.times == []
    vts.advance_by(0.1)
    assert subscriber.times == [(1.5, 0)] and subscriber.completed
    assert vts.pending == 0


def test_timer_holds_its_item_until_requested() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.timer(1.0, scheduler=vts).subscribe(subscriber)
    vts.advance_by(10.0)
    assert subscriber.items == [] and not subscriber.completed and not subscriber.errors
    subscriber.request(1)
    assert subscriber.items == [0] and subscriber.completed
    subscriber.assert_clean()


def test_timer_cancel_before_the_deadline_cancels_the_timer() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.timer(1.0, scheduler=vts).subscribe(subscriber)
    assert vts.pending == 1
    subscriber.cancel()
    assert vts.pending == 0
    vts.advance_by(2.0)
    assert subscriber.items == [] and not subscriber.completed


# -- delay ----------------------------------------------------------------------------------------


def test_delay_shifts_each_item_and_the_completion_exactly() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber = TimedSubscriber(vts)
    upstream.delay(1.0, scheduler=vts).subscribe(subscriber)
    subscriber.request(5)
    upstream.send_next(1)
    vts.advance_by(0.25)
    upstream.send_next(2)
    vts.advance_by(0.5)
    upstream.send_next(3)
    vts.advance_by(0.5)
    upstream.send_complete()
    vts.advance_by(5.0)
    assert subscriber.times == [(1.0, 1), (1.25, 2), (1.75, 3)]
    assert subscriber.completed_at == pytest.approx(2.25)
    subscriber.assert_clean()


def test_delay_passes_demand_one_to_one() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.delay(1.0, scheduler=vts).subscribe(subscriber)
    assert upstream.requests == []
    subscriber.request(2)
    assert upstream.requests == [2]
    upstream.send_next(1, 2)
    subscriber.request(3)
    assert upstream.requests == [2, 3]  # held items do not count twice
    vts.advance_by(1.0)
    assert subscriber.items == [1, 2]
    assert upstream.total_requested == subscriber.requested


def test_delay_errors_are_not_delayed_and_drop_held_items() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    upstream.delay(1.0, scheduler=vts).subscribe(subscriber)
    upstream.send_next(1)
    vts.advance_by(0.5)
    upstream.send_error(Boom("now"))
    assert [type(e) for e in subscriber.errors] == [Boom]
    assert subscriber.items == []
    assert vts.pending == 0


def test_delay_cancel_during_the_wait_cancels_the_timer() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(3).delay(1.0, scheduler=vts).subscribe(subscriber)
    assert vts.pending == 1  # one timer for all held items
    subscriber.cancel()
    assert vts.pending == 0
    vts.advance_by(2.0)
    assert subscriber.items == []


def test_delay_rejects_bad_durations() -> None:
    with pytest.raises(ValueError):
        Flow.range(3).delay(-1)


# -- timeout --------------------------------------------------------------------------------------


def test_timeout_fires_duration_after_subscription_and_cancels_the_source() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    upstream.timeout(2.0, scheduler=vts).subscribe(subscriber)
    vts.advance_by(1.999)
    assert subscriber.errors == []
    vts.advance_by(0.001)
    assert len(subscriber.errors) == 1
    error = subscriber.errors[0]
    assert isinstance(error, FlowTimeoutError) and isinstance(error, TimeoutError)
    assert upstream.cancelled
    assert vts.pending == 0


def test_timeout_restarts_after_each_item() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    upstream.timeout(1.0, scheduler=vts).subscribe(subscriber)
    for item in range(5):
        vts.advance_by(0.9)
        upstream.send_next(item)
    assert subscriber.items == list(range(5)) and not subscriber.errors
    vts.advance_by(0.99)
    assert not subscriber.errors
    vts.advance_by(0.01)
    assert [type(e) for e in subscriber.errors] == [FlowTimeoutError]
    assert vts.now() == pytest.approx(5.5)


def test_timeout_clock_stops_while_downstream_has_no_demand() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.timeout(1.0, scheduler=vts).subscribe(subscriber)
    vts.advance_by(10.0)  # nothing requested: a slow consumer is not a timeout
    assert not subscriber.errors and vts.pending == 0
    subscriber.request(1)
    upstream.send_next(7)
    vts.advance_by(10.0)  # demand met: the clock is stopped again
    assert subscriber.items == [7] and not subscriber.errors
    subscriber.request(1)  # now the consumer waits: the clock runs from here
    vts.advance_by(0.99)
    assert not subscriber.errors
    vts.advance_by(0.01)
    assert [type(e) for e in subscriber.errors] == [FlowTimeoutError]


def test_timeout_fallback_gets_the_outstanding_demand() -> None:
    vts = VirtualTimeScheduler()
    main: TestPublisher[int] = TestPublisher()
    fallback: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    main.timeout(1.0, fallback=fallback, scheduler=vts).subscribe(subscriber)
    main.send_next(1, 2)
    vts.advance_by(1.0)
    assert main.cancelled
    assert fallback.requests == [3]  # 5 requested - 2 delivered
    main.send_next(99)  # a late item of the cancelled source is dropped
    fallback.send_next(10, 11)
    subscriber.request(4)
    assert fallback.requests == [3, 4]
    vts.advance_by(100.0)  # the fallback is not timed
    fallback.send_next(12)
    fallback.send_complete()
    assert subscriber.items == [1, 2, 10, 11, 12] and subscriber.completed
    subscriber.assert_clean()


def test_timeout_cancel_cancels_the_timer_and_the_source() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    upstream.timeout(1.0, scheduler=vts).subscribe(subscriber)
    assert vts.pending == 1
    subscriber.cancel()
    assert upstream.cancelled and vts.pending == 0
    vts.advance_by(5.0)
    assert not subscriber.errors


def test_timeout_passes_completion_and_errors_and_stops_the_clock() -> None:
    vts = VirtualTimeScheduler()
    done: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.just(1, 2).timeout(1.0, scheduler=vts).subscribe(done)
    assert done.items == [1, 2] and done.completed and vts.pending == 0
    failed: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.error(KeyError("k")).timeout(1.0, scheduler=vts).subscribe(failed)
    assert [type(e) for e in failed.errors] == [KeyError] and vts.pending == 0


def test_timeout_downstream_on_next_raising_becomes_on_error() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber = RaisingSubscriber(UNBOUNDED)
    upstream.timeout(1.0, scheduler=vts).subscribe(subscriber)
    upstream.send_next(1)
    assert [type(e) for e in subscriber.errors] == [Boom]
    assert upstream.cancelled and vts.pending == 0


class _AnswersLater(Flow[int]):
    """A source that never emits and answers a bad request ``after`` seconds later, on the
    scheduler: legal (Rule 3.9 asks for ``on_error``, not for an immediate one), and what a
    source behind a thread hop (``publish_on`` on a busy pool) does."""

    def __init__(self, scheduler: VirtualTimeScheduler, after: float) -> None:
        self.scheduler = scheduler
        self.after = after
        self.cancelled = False

    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        source = self

        class _S:
            def request(self, n: int) -> None:
                if type(n) is not int or n <= 0:
                    error = NonPositiveRequestError(f"Rule 3.9: request({n})")
                    source.scheduler.schedule_after(
                        source.after, lambda: subscriber.on_error(error)
                    )

            def cancel(self) -> None:
                source.cancelled = True

        subscriber.on_subscribe(_S())


def test_timeout_a_bad_request_stops_the_clock_so_the_rule_3_9_answer_ends_the_stream() -> None:
    """Before: the timer fired first; the stream ended with FlowTimeoutError and the
    source's Rule 3.9 answer went to the undeliverable hook."""
    vts = VirtualTimeScheduler()
    source = _AnswersLater(vts, after=3.0)
    subscriber: TestSubscriber[int] = TestSubscriber(1)  # the clock runs: an item is awaited
    source.timeout(1.0, scheduler=vts).subscribe(subscriber)
    vts.advance_by(0.5)
    subscriber.request(0)
    vts.advance_by(5.0)  # past the timeout: it must not fire
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert vts.pending == 0
    subscriber.assert_clean()


def test_timeout_a_bad_request_before_any_demand_arms_no_clock() -> None:
    vts = VirtualTimeScheduler()
    source = _AnswersLater(vts, after=3.0)
    subscriber: TestSubscriber[int] = TestSubscriber()
    source.timeout(1.0, scheduler=vts).subscribe(subscriber)
    subscriber.request(-1)
    subscriber.request(5)  # Rule 3.6 after the bad request: no clock either
    vts.advance_by(5.0)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    subscriber.assert_clean()


# -- real time: few and tolerant -----------------------------------------------------------------


def _timer_thread_gone(within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(t.name == "reactive_bp-timer" for t in threading.enumerate()):
            return True
        time.sleep(0.01)
    return False


def test_real_time_defaults_use_the_self_stopping_timer_thread() -> None:
    started = time.monotonic()
    assert Flow.interval(0.01).take(3).to_list(timeout=5) == [0, 1, 2]
    assert Flow.timer(0.02).to_list(timeout=5) == [0]
    assert Flow.range(3).delay(0.01).to_list(timeout=5) == [0, 1, 2]
    assert time.monotonic() - started >= 0.02
    with pytest.raises(FlowTimeoutError):
        Flow.never().timeout(0.02).to_list(timeout=5)
    assert _timer_thread_gone()


class _SilentPublisher:
    """Keeps its subscriber and calls nothing until the test says so."""

    def __init__(self) -> None:
        self.subscriber: Subscriber[int] | None = None

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        self.subscriber = subscriber


def test_timeout_counts_from_subscription_even_if_the_source_never_answers() -> None:
    vts = VirtualTimeScheduler()
    silent = _SilentPublisher()
    fallback: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(2)
    Flow.from_publisher(silent).timeout(1.0, fallback, scheduler=vts).subscribe(subscriber)
    vts.advance_by(1.0)
    assert fallback.requests == [2]
    late: TestPublisher[int] = TestPublisher()
    assert silent.subscriber is not None
    late.subscribe(silent.subscriber)  # the source finally answers: too late, it is cancelled
    assert late.cancelled and late.requests == []
    fallback.send_next(5)
    assert subscriber.items == [5]
    subscriber.assert_clean()


def test_timeout_firing_while_the_source_attaches_keeps_the_fallback_current() -> None:
    """The timer fires inside the source's on_subscribe, after its checks and before
    its subscription is made current (CI saw this with a 0.5 ms real-time timeout):
    the source, stale by then, is cancelled; the fallback keeps every later demand.
    A version that made the source current over the fallback sent the later requests
    to the cancelled source, and the stream hung."""
    from reactive_bp.operators._timing import _TimeoutSubscriber

    code = _TimeoutSubscriber.on_subscribe.__code__
    lines, first = inspect.getsourcelines(code)
    window = first + next(i for i, line in enumerate(lines) if "set_upstream(" in line)
    vts = VirtualTimeScheduler()
    silent = _SilentPublisher()
    fallback: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(2)
    Flow.from_publisher(silent).timeout(1.0, fallback, scheduler=vts).subscribe(subscriber)
    fired: list[int] = []

    def local(frame: FrameType, event: str, _: object) -> TraceFunction:
        if event == "line" and frame.f_lineno == window and not fired:
            fired.append(frame.f_lineno)
            vts.advance_by(1.0)  # the timeout switches to the fallback right here
        return local

    def calls(frame: FrameType, event: str, _: object) -> TraceFunction | None:
        return local if event == "call" and frame.f_code is code else None

    late: TestPublisher[int] = TestPublisher()
    assert silent.subscriber is not None
    sys.settrace(calls)
    try:
        late.subscribe(silent.subscriber)
    finally:
        sys.settrace(None)
    assert fired, "the trace never reached the set_upstream line of on_subscribe"
    assert late.cancelled and fallback.requests == [2]
    subscriber.request(3)
    assert fallback.requests == [2, 3] and late.requests == []
    fallback.send_next(7)
    fallback.send_complete()
    assert subscriber.items == [7] and subscriber.completed
    subscriber.assert_clean()


@pytest.mark.parametrize("name", ["timeout", "debounce"])
def test_a_timer_per_item_leaves_no_cancelled_timers_behind(name: str) -> None:
    """Each item re-arms a 30 s timer and cancels the previous one.

    The issue: 200,000 items through ``timeout(30)`` left 200,000 cancelled
    entries (about 100 MiB) on the shared timer thread while an earlier timer
    was pending, because only the first entry was ever looked at. 10,000
    items show the same linear growth (about 5 MiB before the purge).
    """
    count = 10_000
    # Due before every 30 s timer: it stays first in the heap for the whole run.
    earlier = ImmediateScheduler().schedule_after(25.0, lambda: None)
    flow = Flow.range(count)
    timed = flow.timeout(30.0) if name == "timeout" else flow.debounce(30.0)
    counted = timed.reduce(lambda n, _: n + 1, 0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = counted.last(timeout=20)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        earlier.cancel()
    assert result == (count if name == "timeout" else 1)
    assert grown < 1 << 20, f"{grown / (1 << 20):.1f} MiB still held after the stream ended"
    assert len(_timer._TIMER._queue) <= _timer._PURGE_MIN + 1
    assert _timer_thread_gone()
