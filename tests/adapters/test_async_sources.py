"""from_async_iterable and from_queue: pulled only while there is demand."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from reactive_bp import Flow, NoneItemError, NonPositiveRequestError
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_anext_is_called_only_for_requested_items() -> None:
    pulled: list[int] = []
    closed: list[bool] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in range(100):
                pulled.append(i)
                yield i
        finally:
            closed.append(True)

    async def main() -> TestSubscriber[int]:
        subscriber: TestSubscriber[int] = TestSubscriber()
        Flow.from_async_iterable(numbers()).subscribe(subscriber)
        await _settle()
        assert pulled == []
        subscriber.request(3)
        await _settle()
        assert subscriber.items == [0, 1, 2] and pulled == [0, 1, 2]
        subscriber.cancel()
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert closed == [True]
    subscriber.assert_clean()


def test_requests_from_another_thread_and_completion() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(50):
            await asyncio.sleep(0)
            yield i

    async def main() -> TestSubscriber[int]:
        subscriber: TestSubscriber[int] = TestSubscriber()
        Flow.from_async_iterable(numbers()).subscribe(subscriber)

        def request_one_by_one() -> None:
            for _ in range(60):
                subscriber.request(1)

        requester = threading.Thread(target=request_one_by_one)
        requester.start()
        while not subscriber.is_terminated:
            await asyncio.sleep(0.001)
        requester.join()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == list(range(50)) and subscriber.completed
    subscriber.assert_clean()


def test_errors_none_and_bad_requests() -> None:
    async def failing() -> AsyncIterator[int | None]:
        yield 1
        yield None

    async def main() -> tuple[TestSubscriber[int | None], TestSubscriber[int]]:
        first: TestSubscriber[int | None] = TestSubscriber(10)
        Flow.from_async_iterable(failing()).subscribe(first)
        second: TestSubscriber[int] = TestSubscriber()

        async def forever() -> AsyncIterator[int]:
            while True:
                yield 1

        Flow.from_async_iterable(forever()).subscribe(second)
        second.request(-1)
        await _settle()
        return first, second

    first, second = asyncio.run(main())
    assert first.items == [1] and [type(e) for e in first.errors] == [NoneItemError]
    assert [type(e) for e in second.errors] == [NonPositiveRequestError]


def test_subscribing_without_a_loop_fails_cleanly() -> None:
    async def numbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(RuntimeError, match="event loop"):
        Flow.from_async_iterable(numbers()).to_list()


def test_from_queue_holds_producers_back() -> None:
    async def main() -> list[int]:
        queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=4)

        async def produce() -> None:
            for i in range(200):
                await queue.put(i)
            await queue.put(None)

        producer = asyncio.create_task(produce())
        items: list[int] = []
        async for item in Flow.from_queue(queue).aiter(prefetch=2):
            items.append(item)
            assert queue.qsize() <= 4
        await producer
        return items

    assert asyncio.run(main()) == list(range(200))


def test_aiter_of_a_plain_source_raises_its_error_itself_and_closes_it() -> None:
    failure = KeyError("from the source")
    log: list[str] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            yield 1
            raise failure
        finally:
            log.append("closed")

    async def main() -> list[int]:
        items: list[int] = []
        with pytest.raises(KeyError) as raised:
            async for item in Flow.from_async_iterable(numbers()):
                items.append(item)
        assert raised.value is failure
        return items

    assert asyncio.run(main()) == [1]
    assert log == ["closed"]


def test_aiter_of_from_queue_reads_the_queue_in_place() -> None:
    async def main() -> tuple[list[int], int]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        for i in range(5):
            queue.put_nowait(i)
        queue.put_nowait(None)
        items: list[int] = []
        async for item in Flow.from_queue(queue).aiter(prefetch=256):
            items.append(item)
            if item == 2:
                # Consumer fusion takes one item per item consumed, not a prefetch.
                assert queue.qsize() == 3
        return items, queue.qsize()

    assert asyncio.run(main()) == ([0, 1, 2, 3, 4], 0)


def test_a_source_is_subscribable_while_being_iterated_by_aiter() -> None:
    class Numbers:
        def __aiter__(self) -> AsyncIterator[int]:
            return self._numbers()

        async def _numbers(self) -> AsyncIterator[int]:
            for i in range(3):
                yield i

    async def main() -> tuple[list[int], list[int]]:
        flow = Flow.from_async_iterable(Numbers())
        subscriber: TestSubscriber[int] = TestSubscriber(10)
        iterated: list[int] = []
        async for item in flow:
            if item == 1:
                flow.subscribe(subscriber)  # the same flow, an independent pull
                await _settle()
            iterated.append(item)
        return iterated, subscriber.items

    assert asyncio.run(main()) == ([0, 1, 2], [0, 1, 2])
