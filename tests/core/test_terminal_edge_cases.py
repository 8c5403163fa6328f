"""Edge cases around terminal signals, cancel and accounting (each once a real bug)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from reactive_bp import Flow, OfferResult, OverflowStrategy, SourceQueue
from reactive_bp._core._push import PushBuffer
from reactive_bp.abc import Subscriber
from reactive_bp.testing import TestSubscriber


class _RaisingOnComplete(TestSubscriber[int]):
    def on_complete(self) -> None:
        super().on_complete()
        raise RuntimeError("on_complete failed")


class _RaisingOnError(TestSubscriber[int]):
    def on_error(self, error: Exception) -> None:
        super().on_error(error)
        raise RuntimeError("on_error failed")


@pytest.mark.parametrize(
    "chain",
    [lambda f: f.map(lambda x: x * 10), lambda f: f.filter(bool), lambda f: f.buffer(2)],
    ids=["map", "filter", "buffer"],
)
def test_a_raising_terminal_handler_gets_no_second_terminal(
    chain: Callable[[Flow[int]], Flow[int]], undeliverable: list[tuple[BaseException, str]]
) -> None:
    apply = chain
    completing = _RaisingOnComplete(10)
    apply(Flow.from_iterable([1, 2])).subscribe(completing)
    assert completing.completed and not completing.errors  # Rule 1.7
    completing.assert_clean()
    failing = _RaisingOnError(10)
    apply(Flow.error(ValueError("x"))).subscribe(failing)
    assert len(failing.errors) == 1
    failing.assert_clean()
    assert len(undeliverable) == 2  # both handler failures were reported, not swallowed


def test_reduce_emits_nothing_after_cancel() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.from_iterable([1, 2, 3]).reduce(lambda a, b: a + b).subscribe(subscriber)
    subscriber.cancel()
    subscriber.request(1)
    assert subscriber.items == [] and not subscriber.completed


def test_reduce_signals_one_error_only() -> None:
    def failing(a: int, b: int) -> int:
        raise ValueError("accumulator failed")

    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.from_iterable([1, 2, 3]).reduce(failing).subscribe(subscriber)
    subscriber.request(0)
    assert [type(e) for e in subscriber.errors] == [ValueError]
    subscriber.assert_clean()


def test_push_buffer_counts_what_a_cancel_mid_batch_kept_from_delivery() -> None:
    dropped: list[int] = []
    buffer: PushBuffer[int] = PushBuffer(None, 16, OverflowStrategy.DROP_NEWEST, dropped.append)
    for i in range(10):
        buffer.offer(i)

    class CancelAtFirst(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            self.cancel()

    subscriber = CancelAtFirst()
    buffer.attach(subscriber)
    subscriber.request(10)
    stats = buffer.stats
    assert subscriber.items == [0]
    assert (stats.delivered, stats.dropped, stats.depth) == (1, 9, 0)
    assert dropped == list(range(1, 10))
    assert stats.produced == stats.delivered + stats.dropped + stats.depth


def test_waiting_producers_wake_when_the_queue_closes() -> None:
    async def main() -> tuple[OfferResult, bool]:
        queue: SourceQueue[int] = SourceQueue(1)
        queue.offer(1)
        ready = asyncio.create_task(queue.ready())
        offered = asyncio.create_task(queue.offer_wait(2))
        await asyncio.sleep(0.01)
        queue.error(RuntimeError("gave up"))
        result = await asyncio.wait_for(offered, 2)
        await asyncio.wait_for(ready, 2)
        return result, ready.done()

    assert asyncio.run(main()) == (OfferResult.CLOSED, True)
    queue: SourceQueue[int] = SourceQueue(1)
    queue.offer(1)
    threading.Timer(0.05, queue.complete).start()
    started = time.monotonic()
    assert queue.offer_blocking(2, timeout=5) is OfferResult.CLOSED
    assert time.monotonic() - started < 2


def test_from_publisher_gives_on_subscribe_before_an_early_terminal(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    class Rejecting:
        def subscribe(self, subscriber: Subscriber[int]) -> None:
            subscriber.on_error(RuntimeError("rejected"))

    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.from_publisher(Rejecting()).map(lambda x: x).subscribe(subscriber)
    assert subscriber.signals[0] == "on_subscribe"
    assert [str(e) for e in subscriber.errors] == ["rejected"]
    subscriber.assert_clean()
    assert any("Rule 1.9" in str(e) for e, _ in undeliverable)


def test_from_async_iterable_ends_when_the_iterator_is_cancelled_from_elsewhere() -> None:
    async def main() -> TestSubscriber[int]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def numbers() -> AsyncIterator[int]:
            yield 1
            await future
            yield 2

        subscriber: TestSubscriber[int] = TestSubscriber(5)
        Flow.from_async_iterable(numbers()).subscribe(subscriber)
        await asyncio.sleep(0.02)
        future.cancel()
        for _ in range(50):
            if subscriber.is_terminated:
                break
            await asyncio.sleep(0.01)
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [1]
    assert [type(e) for e in subscriber.errors] == [RuntimeError]
