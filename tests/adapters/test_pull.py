"""Consumer-side adapters: async for, blocking iteration, awaitable sinks."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager, nullcontext

import pytest
from typing_extensions import override

from reactive_bp import EmptyFlowError, Flow
from reactive_bp.abc import Subscriber
from reactive_bp.adapters._pull import _AsyncBridge
from reactive_bp.schedulers import ThreadPoolScheduler
from reactive_bp.testing import TestPublisher, capture_undeliverable

pytestmark = pytest.mark.no_undeliverable


def _tracked(count: int) -> tuple[Flow[int], list[int], list[bool]]:
    requests: list[int] = []
    cancelled: list[bool] = []
    flow = (
        Flow.range(count)
        .do_on_request(requests.append)
        .do_on_cancel(lambda: cancelled.append(True))
    )
    return flow, requests, cancelled


def test_async_for_gets_everything_with_bounded_demand() -> None:
    flow, requests, _ = _tracked(1000)

    async def main() -> list[int]:
        return [item async for item in flow.aiter(prefetch=64)]

    assert asyncio.run(main()) == list(range(1000))
    assert requests[0] == 64
    assert set(requests[1:]) == {48}  # the 75% replenish rule


def test_plain_async_for_works() -> None:
    async def main() -> list[int]:
        return [item async for item in Flow.range(5)]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_break_cancels_upstream() -> None:
    flow, _, cancelled = _tracked(1_000_000)

    async def main() -> None:
        async with aclosing(flow.aiter(prefetch=8)) as items:
            async for item in items:
                if item == 3:
                    break
        assert cancelled == [True]

    asyncio.run(main())


def test_break_without_aclosing_cancels_soon() -> None:
    flow, _, cancelled = _tracked(1_000_000)

    async def main() -> None:
        async for item in flow.aiter(prefetch=8):
            if item == 3:
                break
        gc.collect()
        for _ in range(10):
            await asyncio.sleep(0)
        assert cancelled == [True]

    asyncio.run(main())


def test_an_exception_in_the_body_cancels_upstream() -> None:
    flow, _, cancelled = _tracked(1_000_000)

    async def main() -> None:
        async with aclosing(flow.aiter()) as items:
            async for item in items:
                if item == 2:
                    raise KeyError("body failed")

    with pytest.raises(KeyError):
        asyncio.run(main())
    assert cancelled == [True]


def test_task_cancellation_cancels_upstream() -> None:
    upstream: TestPublisher[int] = TestPublisher()

    async def consume() -> None:
        async for _ in upstream:
            pass

    async def main() -> None:
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        upstream.send_next(1)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert upstream.cancelled


def test_errors_are_raised_from_the_loop() -> None:
    async def main() -> list[int]:
        return [x async for x in Flow.concat(Flow.just(1), Flow.error(LookupError("x")))]

    with pytest.raises(LookupError):
        asyncio.run(main())


def test_items_from_another_thread_wake_the_consumer() -> None:
    upstream: TestPublisher[int] = TestPublisher()

    def produce() -> None:
        value = 0
        while value < 500 and not upstream.cancelled:
            if upstream.outstanding:
                upstream.send_next(value)
                value += 1
        upstream.send_complete()

    async def main() -> list[int]:
        producer = threading.Thread(target=produce)
        items: list[int] = []
        iterator = upstream.aiter(prefetch=16)
        producer.start()
        async for item in iterator:
            items.append(item)
            assert upstream.outstanding <= 16
        producer.join()
        return items

    assert asyncio.run(main()) == list(range(500))
    assert upstream.peak_outstanding <= 16


def test_awaitable_sinks() -> None:
    flow, requests, cancelled = _tracked(100)

    async def main() -> tuple[list[int], int, int]:
        return (
            await Flow.range(5).to_list_async(),
            await flow.first_async(),
            await Flow.range(7).last_async(),
        )

    assert asyncio.run(main()) == ([0, 1, 2, 3, 4], 0, 6)
    assert requests == [1] and cancelled == [True]

    async def empty() -> int:
        return await Flow.empty().first_async()

    with pytest.raises(EmptyFlowError):
        asyncio.run(empty())


def test_no_task_is_left_pending() -> None:
    async def main() -> int:
        async with aclosing(Flow.range(10**6).aiter()) as items:
            async for item in items:
                if item > 10:
                    break
        current = asyncio.current_task()
        return len([t for t in asyncio.all_tasks() if t is not current])

    assert asyncio.run(main()) == 0


def test_blocking_iter_bounds_demand_and_cancels_on_close() -> None:
    flow, requests, cancelled = _tracked(10_000)
    iterator = flow.blocking_iter(prefetch=32)
    assert [next(iterator) for _ in range(100)] == list(range(100))
    assert requests[0] == 32 and set(requests[1:]) == {24}
    iterator.close()
    assert cancelled == [True]


def test_blocking_iter_cancels_on_break_and_garbage_collection() -> None:
    flow, _, cancelled = _tracked(10_000)
    for item in flow.blocking_iter():
        if item == 5:
            break
    gc.collect()
    assert cancelled == [True]


def test_blocking_iter_from_a_producer_thread_and_timeout() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    iterator = upstream.blocking_iter(prefetch=4, timeout=5)

    def produce() -> None:
        for value in range(100):
            while not upstream.outstanding:
                pass
            upstream.send_next(value)
        upstream.send_complete()

    producer = threading.Thread(target=produce)
    producer.start()
    assert list(iterator) == list(range(100))
    producer.join()
    assert upstream.peak_outstanding <= 4
    with pytest.raises(TimeoutError):
        next(Flow.never().blocking_iter(timeout=0.02))
    with pytest.raises(ValueError):
        next(Flow.range(3).blocking_iter(prefetch=0))


# -- giving up before on_subscribe arrives ---------------------------------------------------


class _RecordingSubscription:
    """What a subscriber did with a subscription it received late."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.cancelled = threading.Event()

    def request(self, n: int) -> None:
        self.requests.append(n)

    def cancel(self) -> None:
        self.cancelled.set()


class _LatePublisher(Flow[int]):
    """Delivers ``on_subscribe`` from another thread, only once ``deliver()`` is called."""

    def __init__(self) -> None:
        self.subscription = _RecordingSubscription()
        self._release = threading.Event()
        self._thread: threading.Thread | None = None

    @override
    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        def later() -> None:
            self._release.wait(10)
            subscriber.on_subscribe(self.subscription)

        self._thread = threading.Thread(target=later)
        self._thread.start()

    def deliver(self) -> None:
        self._release.set()
        assert self._thread is not None
        self._thread.join(10)

    def assert_cancelled_never_requested(self) -> None:
        assert self.subscription.cancelled.is_set()
        assert self.subscription.requests == []


def _wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


@contextmanager
def _busy_single_worker() -> Iterator[tuple[ThreadPoolScheduler, threading.Event]]:
    """A one-worker pool whose worker is busy until the event is set."""
    gate = threading.Event()
    pool = ThreadPoolScheduler(1)
    try:
        pool.schedule(lambda: gate.wait(10))
        yield pool, gate
    finally:
        gate.set()
        pool.shutdown()


def test_blocking_iter_timeout_cancels_a_subscription_that_arrives_later() -> None:
    late = _LatePublisher()
    with pytest.raises(TimeoutError):
        next(late.blocking_iter(timeout=0.05))
    late.deliver()
    late.assert_cancelled_never_requested()


def test_blocking_iter_timeout_through_subscribe_on_a_busy_pool() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    with _busy_single_worker() as (pool, gate):
        with pytest.raises(TimeoutError):
            next(upstream.subscribe_on(pool).blocking_iter(timeout=0.05))
        gate.set()
        _wait_until(lambda: upstream.cancelled)
    assert upstream.requests == []


def test_cancelled_aiter_task_cancels_a_subscription_that_arrives_later() -> None:
    late = _LatePublisher()

    async def consume() -> None:
        async for _ in late.aiter():
            pass

    async def main() -> None:
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)  # subscribed, waiting for on_subscribe
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    late.deliver()
    late.assert_cancelled_never_requested()


def test_cancelled_aiter_task_through_subscribe_on_a_busy_pool() -> None:
    upstream: TestPublisher[int] = TestPublisher()

    async def consume(flow: Flow[int]) -> None:
        async for _ in flow.aiter():
            pass

    async def main(pool: ThreadPoolScheduler) -> None:
        task = asyncio.create_task(consume(upstream.subscribe_on(pool)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with _busy_single_worker() as (pool, gate):
        asyncio.run(main(pool))
        gate.set()
        _wait_until(lambda: upstream.cancelled)
    assert upstream.requests == []


def test_to_list_timeout_cancels_a_late_subscription_without_a_false_rule_2_5() -> None:
    late = _LatePublisher()
    with pytest.raises(TimeoutError):
        late.to_list(timeout=0.05)
    late.deliver()
    late.assert_cancelled_never_requested()  # and nothing reported (no_undeliverable)


# -- blocking sinks inside a running event loop ------------------------------------------


def test_blocking_iter_refuses_to_block_a_running_event_loop() -> None:
    async def numbers() -> AsyncIterator[int]:
        yield 1

    async def main() -> None:
        iterator = Flow.from_async_iterable(numbers()).blocking_iter(timeout=1)
        with pytest.raises(RuntimeError, match="would block the running event loop") as raised:
            next(iterator)
        assert "aiter()" in str(raised.value)
        # A source that would not need the loop is refused too: predictable.
        with pytest.raises(RuntimeError, match="would block the running event loop"):
            next(Flow.range(3).blocking_iter())

    asyncio.run(main())


def test_blocking_iter_made_on_the_loop_may_be_consumed_in_a_worker_thread() -> None:
    async def main() -> list[int]:
        return await asyncio.to_thread(list, Flow.range(5).blocking_iter())

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


# -- the terminal state ----------------------------------------------------------------------


def _produce_then_end(upstream: TestPublisher[int], error: Exception | None) -> None:
    _wait_until(lambda: upstream.outstanding > 0)
    upstream.send_next(1, 2)
    if error is None:
        upstream.send_complete()
    else:
        upstream.send_error(error)


def test_an_error_is_never_seen_as_done_under_a_racing_consumer() -> None:
    """The consumer polls while the publisher ends the stream on another thread."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for run in range(300):
            upstream: TestPublisher[int] = TestPublisher()
            iterator = upstream.blocking_iter(prefetch=4, timeout=10)
            error = LookupError(f"run {run}") if run % 2 else None
            producer = threading.Thread(target=_produce_then_end, args=(upstream, error))
            producer.start()
            items: list[int] = []
            with pytest.raises(LookupError) if error else nullcontext():
                for item in iterator:
                    items.append(item)
            producer.join()
            assert items == [1, 2]
    finally:
        sys.setswitchinterval(previous)


def test_a_signal_racing_the_loop_closing_wakes_nobody_and_is_not_an_error() -> None:
    """The async bridge's consumer sleeps on a future of its loop; the loop closes; a
    producer thread's next item then finds nobody to wake. The loop may close between
    the bridge's look at it and its ``call_soon_threadsafe`` (simulated: ``is_closed``
    still says no): that refusal is neither the producer's error nor an undeliverable
    one."""
    loop = asyncio.new_event_loop()
    bridge: _AsyncBridge[int] = _AsyncBridge(4, loop)
    upstream = TestPublisher[int]()
    upstream.subscribe(bridge)
    bridge._sleep_on(loop.create_future())  # the consumer is asleep, waiting for an item
    loop.close()
    loop.is_closed = lambda: False  # type: ignore[method-assign]  # the check-then-call race
    try:
        with capture_undeliverable() as reported:
            upstream.send_next(1)  # on the producer's thread: must neither raise nor report
    finally:
        del loop.is_closed  # the loop's own again (its finalizer asks it)
    assert reported == []
