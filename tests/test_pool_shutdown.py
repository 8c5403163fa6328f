"""A scheduler that stops running work never leaves a subscriber waiting.

Every operator and source that waits for a scheduled action -- a blocking
``map_async`` call, a ``delay``/``timeout``/``timer`` deadline, a ``retry``
backoff, an ``interval`` tick, a ``sample`` tick, a ``buffer_timeout``,
``debounce`` or ``throttle_*`` timer, an ``on_backpressure_buffer`` ttl sweep
-- schedules a ``RejectableAction``. When a
``ThreadPoolScheduler`` shuts down with that action still queued, or a delayed
action comes due after the shutdown (rejected on the timer thread), the stream
ends with ``on_error(RejectedExecutionError)`` naming the pool. Before, the
pool could only report the lost action to the undeliverable hook, and the
subscriber waited forever. A scheduler that refuses an action outright (a
closed event loop) fails the stream the same way, never by raising out of
``request``, ``subscribe`` or an upstream signal.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from reactive_bp import UNBOUNDED, Backoff, Flow, RejectedExecutionError
from reactive_bp.schedulers import AsyncioScheduler, Scheduler, ThreadPoolScheduler
from reactive_bp.testing import TestSubscriber
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable

# Long enough that the pool is shut down well before the deadline comes due.
_DUE = 0.05


def _assert_rejected_by(subscriber: TestSubscriber[object], name: str) -> None:
    assert subscriber.await_terminal(5), "the subscriber was left waiting"
    assert subscriber.signals[0] == "on_subscribe"
    [error] = subscriber.errors
    assert isinstance(error, RejectedExecutionError), repr(error)
    assert "ThreadPoolScheduler" in str(error) and repr(name) in str(error)
    assert not subscriber.completed
    subscriber.assert_clean()


@dataclass(frozen=True)
class _Timed:
    name: str
    build: Callable[[Scheduler], Flow[object]]

    def __repr__(self) -> str:
        return self.name


TIMED = [
    _Timed("delay", lambda s: Flow.just(1).delay(_DUE, scheduler=s)),
    # Completion is recorded while the items are held: the rejection cuts ahead of it.
    _Timed("delay_completed_upstream", lambda s: Flow.range(3).delay(_DUE, scheduler=s)),
    _Timed("timeout", lambda s: Flow.never().timeout(_DUE, scheduler=s)),
    _Timed(
        "timeout_with_fallback",
        lambda s: Flow.never().timeout(_DUE, fallback=Flow.just(9), scheduler=s),
    ),
    _Timed(
        "retry_backoff",
        lambda s: Flow.error(Boom("x")).retry(3, backoff=Backoff.fixed(_DUE), scheduler=s),
    ),
    _Timed("interval", lambda s: Flow.interval(_DUE, scheduler=s)),
    _Timed("timer", lambda s: Flow.timer(_DUE, scheduler=s)),
]


@pytest.mark.parametrize("case", TIMED, ids=repr)
def test_a_deadline_that_comes_due_after_the_pool_shut_down_fails_the_stream(
    case: _Timed,
) -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix=f"due-{case.name}")
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.build(pool).subscribe(subscriber)
    pool.shutdown()  # the deadline is still pending on the timer thread
    _assert_rejected_by(subscriber, f"due-{case.name}")


def test_an_interval_tick_after_the_pool_shut_down_fails_the_stream_after_its_items() -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix="ticking")
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    Flow.interval(0.01, scheduler=pool).subscribe(subscriber)
    subscriber_got_two = threading.Event()
    while not subscriber_got_two.wait(0.005):
        if len(subscriber.items) >= 2:
            subscriber_got_two.set()
    pool.shutdown()
    _assert_rejected_by(subscriber, "ticking")
    assert subscriber.items[:2] == [0, 1]


@pytest.fixture
def blocked_pool() -> Iterator[tuple[ThreadPoolScheduler, threading.Event]]:
    """A one-worker pool whose worker is busy until the event is set."""
    pool = ThreadPoolScheduler(1, thread_name_prefix="blocked")
    release = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    pool.schedule(block)
    assert started.wait(5)
    try:
        yield pool, release
    finally:
        release.set()
        pool.shutdown()


def test_map_async_calls_dropped_by_a_pool_shutdown_fail_the_stream(
    blocked_pool: tuple[ThreadPoolScheduler, threading.Event],
) -> None:
    pool, release = blocked_pool
    called: list[int] = []

    def fn(x: int) -> int:
        called.append(x)
        return x

    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    Flow.range(4).map_async(fn, 2, scheduler=pool).subscribe(subscriber)
    assert subscriber.signals == ["on_subscribe"]  # both calls wait behind the busy worker
    pool.shutdown(wait=False)  # drops them: each is rejected
    _assert_rejected_by(subscriber, "blocked")
    release.set()
    assert called == []


def test_map_async_a_call_dropped_while_another_runs_fails_the_stream() -> None:
    """The reviewer's case: call 0 runs (holding the only worker), call 1 is queued."""
    gate = threading.Event()
    running = threading.Event()

    def fn(x: int) -> int:
        if x == 0:
            running.set()
            gate.wait(5)
        return x

    pool = ThreadPoolScheduler(1, thread_name_prefix="one-running")
    try:
        subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
        Flow.range(2).map_async(fn, 2, scheduler=pool).subscribe(subscriber)
        assert running.wait(5)
        pool.shutdown(wait=False)
        gate.set()
        _assert_rejected_by(subscriber, "one-running")
    finally:
        gate.set()
        pool.shutdown()


# -- strategy timers: sample's tick, buffer_timeout, debounce, the ttl sweep ------------------

# Each holds something that only its timer can release: a subscriber that asked
# for it would wait forever if the pool dropped the timer.
STRATEGY_TIMERS = [
    _Timed("sample", lambda s: Flow.concat(Flow.just(1), Flow.never()).sample(_DUE, scheduler=s)),
    _Timed(
        "buffer_timeout",
        lambda s: Flow.concat(Flow.just(1), Flow.never()).buffer_timeout(8, _DUE, scheduler=s),
    ),
    _Timed(
        "debounce", lambda s: Flow.concat(Flow.just(1), Flow.never()).debounce(_DUE, scheduler=s)
    ),
    _Timed(
        "throttle_latest",
        lambda s: Flow.concat(Flow.range(2), Flow.never()).throttle_latest(_DUE, scheduler=s),
    ),
]


@pytest.mark.parametrize("case", STRATEGY_TIMERS, ids=repr)
def test_a_strategy_timer_dropped_by_a_pool_shutdown_fails_the_stream(case: _Timed) -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix=f"strategy-{case.name}")
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.build(pool).subscribe(subscriber)
    pool.shutdown()  # the timer is still pending on the timer thread
    _assert_rejected_by(subscriber, f"strategy-{case.name}")


def test_a_ttl_sweep_dropped_by_a_pool_shutdown_fails_the_stream_ahead_of_the_items() -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix="sweep")
    subscriber: TestSubscriber[object] = TestSubscriber(0)  # the item waits: a sweep is armed
    Flow.concat(Flow.just(1), Flow.never()).on_backpressure_buffer(
        4, ttl=_DUE, scheduler=pool
    ).subscribe(subscriber)
    pool.shutdown()
    _assert_rejected_by(subscriber, "sweep")
    assert subscriber.items == []


def test_a_strategy_timer_rejected_after_the_stream_ended_is_not_an_error() -> None:
    """A pool shut down after the end: the leftover timer's rejection is nobody's news."""
    pool = ThreadPoolScheduler(1, thread_name_prefix="after-end")
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    Flow.range(3).on_backpressure_buffer(4, ttl=_DUE, scheduler=pool).subscribe(subscriber)
    subscriber.cancel()
    pool.shutdown()
    assert subscriber.items == [0, 1, 2] and not subscriber.errors


# -- a scheduler that refuses at once (a closed event loop) ---------------------------------


@pytest.fixture
def closed_loop_scheduler() -> AsyncioScheduler:
    loop = asyncio.new_event_loop()
    loop.close()
    return AsyncioScheduler(loop)


REFUSED = [
    _Timed("delay", lambda s: Flow.just(1).delay(_DUE, scheduler=s)),
    _Timed("timeout", lambda s: Flow.never().timeout(_DUE, scheduler=s)),
    _Timed(
        "retry_backoff",
        lambda s: Flow.error(Boom("x")).retry(3, backoff=Backoff.fixed(_DUE), scheduler=s),
    ),
    _Timed("interval", lambda s: Flow.interval(_DUE, scheduler=s)),
    _Timed("timer", lambda s: Flow.timer(_DUE, scheduler=s)),
    *STRATEGY_TIMERS,
    _Timed(
        "ttl_sweep",
        lambda s: Flow.concat(Flow.just(1), Flow.never()).on_backpressure_buffer(
            4, ttl=_DUE, scheduler=s
        ),
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=repr)
def test_a_scheduler_that_refuses_the_deadline_fails_the_stream_without_raising(
    case: _Timed, closed_loop_scheduler: AsyncioScheduler
) -> None:
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.build(closed_loop_scheduler).subscribe(subscriber)  # never raises (Rule 1.9)
    subscriber.request(UNBOUNDED)  # never raises (Rule 3.16)
    assert subscriber.await_terminal(1)
    [error] = subscriber.errors
    assert isinstance(error, RuntimeError) and "closed" in str(error)
    assert not subscriber.completed
    subscriber.assert_clean()
