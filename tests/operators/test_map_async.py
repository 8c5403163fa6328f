"""map_async: the work-in-progress limiter on manual, virtual, thread and asyncio schedulers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, Flow, NoneItemError
from reactive_bp.schedulers import (
    AsyncioScheduler,
    Cancellable,
    ImmediateScheduler,
    ThreadPoolScheduler,
)
from reactive_bp.schedulers._base import Action, CancellableAction
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.operators.test_time import (
    VirtualCase,
    check_random_schedule,
    random_steps,
    virtual_params,
)
from tests.scenarios import Boom, boom

pytestmark = pytest.mark.no_undeliverable


class ManualScheduler:
    """``schedule`` only queues; the test runs the queued calls in whatever order it likes."""

    def __init__(self) -> None:
        self.queue: list[CancellableAction] = []

    def now(self) -> float:
        return 0.0

    def schedule(self, action: Action) -> Cancellable:
        handle = CancellableAction(action)
        self.queue.append(handle)
        return handle

    def schedule_after(self, delay: float, action: Action) -> Cancellable:
        raise NotImplementedError

    def schedule_periodic(
        self, period: float, action: Action, initial_delay: float | None = None
    ) -> Cancellable:
        raise NotImplementedError

    def live(self) -> list[CancellableAction]:
        return [handle for handle in self.queue if not handle.cancelled]

    def run(self, index: int = 0) -> None:
        """Run the ``index``-th live call."""
        handle = self.live()[index]
        self.queue.remove(handle)
        handle.run()

    def run_all(self) -> None:
        while self.live():
            self.run(0)


class Concurrency:
    """Counts calls running at the same moment (threads or tasks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def exit(self) -> None:
        with self._lock:
            self.running -= 1


async def assert_no_pending_tasks() -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


def _double(x: int) -> int:
    return x * 2


# -- demand and ordering on a manual scheduler --------------------------------------------------


def test_upstream_is_asked_for_at_most_max_concurrency_ahead() -> None:
    manual = ManualScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.map_async(_double, 3, scheduler=manual).subscribe(subscriber)
    assert upstream.requests == [3]
    upstream.send_next(1, 2, 3)
    assert len(manual.live()) == 3
    manual.run_all()  # finished results wait for downstream demand
    assert subscriber.items == [] and upstream.requests == [3]
    subscriber.request(1)
    assert subscriber.items == [2] and upstream.requests == [3, 1]
    upstream.send_next(4)
    subscriber.request(10)
    assert subscriber.items == [2, 4, 6]  # 8 is still running
    assert upstream.requests == [3, 1, 2]
    manual.run_all()
    assert subscriber.items == [2, 4, 6, 8]
    upstream.send_complete()
    assert subscriber.completed
    assert upstream.peak_outstanding <= 3
    subscriber.assert_clean()


def test_ordered_keeps_input_order_whatever_the_completion_order() -> None:
    manual = ManualScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(1, 5).map_async(_double, 4, scheduler=manual).subscribe(subscriber)
    manual.run(3)
    manual.run(2)
    manual.run(1)
    assert subscriber.items == []  # waiting for the first
    manual.run(0)
    assert subscriber.items == [2, 4, 6, 8] and subscriber.completed


def test_unordered_emits_in_completion_order() -> None:
    manual = ManualScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(1, 5).map_async(_double, 4, ordered=False, scheduler=manual).subscribe(subscriber)
    manual.run(3)
    manual.run(1)
    assert subscriber.items == [8, 4]
    manual.run_all()
    assert subscriber.items == [8, 4, 2, 6] and subscriber.completed


def test_a_raising_function_cancels_upstream_and_the_other_calls_once() -> None:
    manual = ManualScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)

    def fn(x: int) -> int:
        if x == 2:
            raise Boom("fn")
        return x

    upstream.map_async(fn, 3, scheduler=manual).subscribe(subscriber)
    upstream.send_next(1, 2, 3)
    manual.run(1)
    assert [type(e) for e in subscriber.errors] == [Boom]
    assert upstream.cancelled
    assert manual.live() == []  # calls not started never start
    assert subscriber.items == []
    subscriber.assert_clean()


def test_cancel_cancels_the_calls_not_started() -> None:
    manual = ManualScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(10).map_async(_double, 3, scheduler=manual).subscribe(subscriber)
    assert len(manual.live()) == 3
    subscriber.cancel()
    assert manual.live() == []
    assert subscriber.items == [] and not subscriber.errors


def test_none_results_and_coroutines_from_plain_functions_are_errors() -> None:
    nothing: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    manual = ManualScheduler()
    Flow.range(3).map_async(lambda x: None, 2, scheduler=manual).subscribe(nothing)
    manual.run()
    assert [type(e) for e in nothing.errors] == [NoneItemError]  # a TypeError

    async def coro(x: int) -> int:
        return x

    manual = ManualScheduler()
    sneaky: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    Flow.range(3).map_async(lambda x: coro(x), 2, scheduler=manual).subscribe(sneaky)
    manual.run()
    assert [type(e) for e in sneaky.errors] == [TypeError]
    assert "async def" in str(sneaky.errors[0])


def test_bad_arguments() -> None:
    async def coro(x: int) -> int:
        return x

    with pytest.raises(ValueError):
        Flow.range(3).map_async(_double, 0)
    with pytest.raises(TypeError):
        Flow.range(3).map_async(42)  # type: ignore[call-overload]
    with ThreadPoolScheduler(1) as pool, pytest.raises(TypeError, match="AsyncioScheduler"):
        Flow.range(3).map_async(coro, scheduler=pool)


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    max_concurrency=st.integers(1, 5),
    ordered=st.booleans(),
    count=st.integers(0, 15),
)
def test_random_demand_and_completion_orders(
    data: st.DataObject, max_concurrency: int, ordered: bool, count: int
) -> None:
    """Delivered <= requested, in flight <= max_concurrency, ordered when asked, nothing lost."""
    manual = ManualScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream: TestPublisher[int] = TestPublisher()
    upstream.map_async(_double, max_concurrency, ordered, scheduler=manual).subscribe(subscriber)
    sent = 0
    for _ in range(60):
        action = data.draw(st.sampled_from(["request", "run", "send"]))
        if action == "request":
            subscriber.request(data.draw(st.integers(1, 4)))
        elif action == "run" and manual.live():
            manual.run(data.draw(st.integers(0, len(manual.live()) - 1)))
        elif action == "send":
            while upstream.outstanding and sent < count:
                upstream.send_next(sent)
                sent += 1
            if sent == count and not upstream.cancelled:
                upstream.send_complete()
                sent += 1
        assert len(manual.live()) <= max_concurrency
        assert len(subscriber.items) <= subscriber.requested
        assert upstream.peak_outstanding <= max_concurrency
        expected = [2 * x for x in range(count)]
        if ordered:
            assert subscriber.items == expected[: len(subscriber.items)]
        else:
            assert set(subscriber.items) <= set(expected)
        subscriber.assert_clean()
    subscriber.request(UNBOUNDED)
    while not subscriber.is_terminated:
        while upstream.outstanding and sent < count:
            upstream.send_next(sent)
            sent += 1
        if sent == count:
            upstream.send_complete()
            sent += 1
        manual.run_all()
    assert sorted(subscriber.items) == [2 * x for x in range(count)]
    if ordered:
        assert subscriber.items == [2 * x for x in range(count)]
    assert subscriber.completed


# -- virtual-time scenario set ------------------------------------------------------------------

MAP_ASYNC_CASES = [
    VirtualCase(
        "map_async_virtual",
        lambda f, vts: f.map_async(_double, 3, scheduler=vts),
        lambda xs: [2 * x for x in xs],
    ),
    VirtualCase(
        "map_async_virtual_unordered",
        lambda f, vts: f.map_async(_double, 2, ordered=False, scheduler=vts),
        lambda xs: [2 * x for x in xs],
        ordered=False,
    ),
    VirtualCase(
        "map_async_after_delay",
        lambda f, vts: f.delay(0.5, scheduler=vts).map_async(_double, 4, scheduler=vts),
        lambda xs: [2 * x for x in xs],
    ),
]


@pytest.mark.parametrize(("case", "scenario"), virtual_params(MAP_ASYNC_CASES))
def test_virtual_scenario(
    case: VirtualCase, scenario: Callable[[VirtualCase], TestSubscriber[object]]
) -> None:
    scenario(case).assert_clean()


@pytest.mark.parametrize("case", MAP_ASYNC_CASES, ids=repr)
@settings(max_examples=30, deadline=None)
@given(steps=random_steps)
def test_virtual_random_demand(case: VirtualCase, steps: list[tuple[int, float]]) -> None:
    check_random_schedule(case, steps)


# -- threads (real time: few and tolerant) --------------------------------------------------------


def _sleepy(counter: Concurrency) -> Callable[[int], int]:
    def fn(x: int) -> int:
        counter.enter()
        try:
            time.sleep(0.005)
            return x * 2
        finally:
            counter.exit()

    return fn


@pytest.mark.parametrize("ordered", [True, False])
def test_private_pool_never_exceeds_max_concurrency_and_is_shut_down(ordered: bool) -> None:
    counter = Concurrency()
    result = Flow.range(40).map_async(_sleepy(counter), 3, ordered).to_list(timeout=10)
    assert sorted(result) == [2 * x for x in range(40)]
    if ordered:
        assert result == [2 * x for x in range(40)]
    assert 1 <= counter.peak <= 3
    # The autouse thread check of conftest fails the test if a pool thread survives.


def test_thread_pool_scheduler_with_more_workers_than_max_concurrency() -> None:
    counter = Concurrency()
    with ThreadPoolScheduler(8) as pool:
        result = Flow.range(40).map_async(_sleepy(counter), 3, scheduler=pool).to_list(timeout=10)
    assert result == [2 * x for x in range(40)]
    assert 1 <= counter.peak <= 3


def test_cancel_shuts_the_private_pool_down() -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def fn(x: int) -> int:
        started.release()
        release.wait(5)
        return x

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(100).map_async(fn, 2).subscribe(subscriber)
    assert started.acquire(timeout=5) and started.acquire(timeout=5)
    subscriber.cancel()
    release.set()  # the two running calls finish; nothing else starts
    time.sleep(0.05)
    assert subscriber.items == [] and not subscriber.errors


# -- asyncio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False])
def test_coroutines_run_on_the_running_loop_within_max_concurrency(ordered: bool) -> None:
    counter = Concurrency()

    async def fn(x: int) -> int:
        counter.enter()
        try:
            await asyncio.sleep(0.001 * (x % 4))
            return x * 10
        finally:
            counter.exit()

    async def main() -> list[int]:
        result = await Flow.range(30).map_async(fn, 4, ordered).to_list_async()
        await assert_no_pending_tasks()
        return result

    result = asyncio.run(main())
    assert sorted(result) == [x * 10 for x in range(30)]
    if ordered:
        assert result == [x * 10 for x in range(30)]
    assert 1 <= counter.peak <= 4


def test_cancel_cancels_running_tasks() -> None:
    cancelled: list[int] = []

    async def fn(x: int) -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def main() -> None:
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        Flow.range(10).map_async(fn, 3).subscribe(subscriber)
        await asyncio.sleep(0.01)
        subscriber.cancel()
        await assert_no_pending_tasks()
        assert sorted(cancelled) == [0, 1, 2]
        assert subscriber.items == [] and not subscriber.errors

    asyncio.run(main())


def test_a_raising_coroutine_fails_the_stream_and_cancels_the_others() -> None:
    async def fn(x: int) -> int:
        if x == 1:
            raise Boom("coroutine")
        await asyncio.sleep(60)
        return x

    async def main() -> None:
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        Flow.range(10).map_async(fn, 3).subscribe(subscriber)
        await asyncio.sleep(0.01)
        assert [type(e) for e in subscriber.errors] == [Boom]
        await assert_no_pending_tasks()

    asyncio.run(main())


def test_coroutines_without_a_running_loop_are_an_error() -> None:
    async def fn(x: int) -> int:
        return x

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(3).map_async(fn).subscribe(subscriber)
    assert [type(e) for e in subscriber.errors] == [RuntimeError]


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop")
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_coroutines_on_an_asyncio_scheduler_from_another_thread(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    async def fn(x: int) -> int:
        assert asyncio.get_running_loop() is loop_thread
        await asyncio.sleep(0.001)
        return x + 1

    scheduler = AsyncioScheduler(loop_thread)
    assert Flow.range(20).map_async(fn, 5, scheduler=scheduler).to_list(timeout=5) == list(
        range(1, 21)
    )

    async def pending() -> set[asyncio.Task[object]]:
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run_coroutine_threadsafe(pending(), loop_thread).result(5) == set()


def test_a_raising_callback_on_the_immediate_path() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    upstream: TestPublisher[int] = TestPublisher()
    upstream.map_async(boom, 2, scheduler=ImmediateScheduler()).subscribe(subscriber)
    upstream.send_next(1)
    assert [type(e) for e in subscriber.errors] == [Boom] and upstream.cancelled
