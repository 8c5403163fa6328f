"""Consumer-side adapters: async for, blocking iteration, awaitable sinks."""

from __future__ import annotations

import asyncio
import gc
import threading
from contextlib import aclosing

import pytest

from reactive_bp import EmptyFlowError, Flow
from reactive_bp.testing import TestPublisher

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
