"""Push sources: Flow.create and SourceQueue, every overflow strategy, every loss counted."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    BufferOverflowError,
    Emitter,
    Flow,
    NonPositiveRequestError,
    OfferResult,
    OverflowStrategy,
    ProtocolViolationError,
    SourceQueue,
    WaterMarks,
)
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _burst(
    overflow: OverflowStrategy, count: int = 10, capacity: int = 4
) -> tuple[TestSubscriber[int], list[int], list[Emitter[int]]]:
    dropped: list[int] = []
    emitters: list[Emitter[int]] = []

    def producer(emitter: Emitter[int]) -> None:
        emitters.append(emitter)
        for i in range(count):
            emitter.emit(i)
        emitter.complete()

    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.create(
        producer, capacity=capacity, overflow=overflow, on_dropped=dropped.append
    ).subscribe(subscriber)
    return subscriber, dropped, emitters


@pytest.mark.parametrize(
    ("overflow", "kept", "lost"),
    [
        (OverflowStrategy.DROP_NEWEST, [0, 1, 2, 3], [4, 5, 6, 7, 8, 9]),
        (OverflowStrategy.DROP_OLDEST, [6, 7, 8, 9], [0, 1, 2, 3, 4, 5]),
        (OverflowStrategy.LATEST, [0, 1, 2, 9], [3, 4, 5, 6, 7, 8]),
        (OverflowStrategy.UNBOUNDED_BUFFER, list(range(10)), []),
    ],
)
def test_dropping_strategies_keep_and_report_the_right_items(
    overflow: OverflowStrategy, kept: list[int], lost: list[int]
) -> None:
    subscriber, dropped, (emitter,) = _burst(overflow)
    assert subscriber.items == []  # nothing without demand
    assert dropped == lost  # the callback got the items that actually left
    stats = emitter.stats
    assert stats.produced == 10 and stats.dropped == len(lost) and stats.depth == len(kept)
    subscriber.request(100)
    assert subscriber.items == kept and subscriber.completed
    assert stats.delivered == len(kept)
    assert stats.produced == stats.delivered + stats.dropped + stats.depth
    assert stats.peak_depth == (10 if overflow is OverflowStrategy.UNBOUNDED_BUFFER else 4)


def test_error_strategy_fails_after_the_buffered_items() -> None:
    subscriber, dropped, (emitter,) = _burst(OverflowStrategy.ERROR)
    assert dropped == [4]
    subscriber.request(2)
    assert subscriber.items == [0, 1] and not subscriber.errors
    subscriber.request(10)
    assert subscriber.items == [0, 1, 2, 3]
    assert [type(e) for e in subscriber.errors] == [BufferOverflowError]
    assert emitter.stats.produced == 5  # later emits were refused as CLOSED


def test_items_within_demand_never_overflow() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(100)
    results: list[OfferResult] = []

    def producer(emitter: Emitter[int]) -> None:
        results.extend(emitter.emit(i) for i in range(50))
        emitter.complete()

    Flow.create(producer, capacity=1).subscribe(subscriber)
    assert subscriber.items == list(range(50)) and subscriber.completed
    assert set(results) == {OfferResult.ENQUEUED}


def test_wait_holds_a_thread_producer_and_loses_nothing() -> None:
    depths: list[int] = []

    def producer(emitter: Emitter[int]) -> None:
        def run() -> None:
            for i in range(2000):
                emitter.emit(i)
                depths.append(emitter.stats.depth)
            emitter.complete()

        threading.Thread(target=run).start()

    flow = Flow.create(producer, capacity=8, overflow=OverflowStrategy.WAIT)
    items = list(flow.blocking_iter(prefetch=4, timeout=10))
    assert items == list(range(2000))
    assert max(depths) <= 8


def test_wait_beyond_demand_on_the_subscribers_thread_fails_loudly() -> None:
    def producer(emitter: Emitter[int]) -> None:
        emitter.on_request(lambda n: [emitter.emit(i) for i in range(n + 10)])

    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.create(producer, capacity=2, overflow=OverflowStrategy.WAIT).subscribe(subscriber)
    subscriber.request(1)  # the producer's emit raises instead of hanging ...
    subscriber.request(5)
    assert subscriber.items == [0, 1, 2]  # 0 met demand at once; 1 and 2 filled the buffer
    assert [type(e) for e in subscriber.errors] == [RuntimeError]  # ... and the stream fails
    assert "wait forever" in str(subscriber.errors[0])


def test_coroutine_producer_awaits_room() -> None:
    sent: list[int] = []

    async def producer(emitter: Emitter[int]) -> None:
        for i in range(300):
            await emitter.send(i)
            sent.append(i)
        emitter.complete()

    async def main() -> list[int]:
        flow = Flow.create(producer, capacity=4, overflow=OverflowStrategy.WAIT)
        items: list[int] = []
        async for item in flow.aiter(prefetch=2):
            items.append(item)
            assert len(sent) - len(items) <= 4 + 2  # buffer + prefetch, never more
            await asyncio.sleep(0)
        return items

    assert asyncio.run(main()) == list(range(300))


def test_cancel_stops_a_coroutine_producer() -> None:
    cancelled = threading.Event()

    async def producer(emitter: Emitter[int]) -> None:
        emitter.on_cancel(cancelled.set)
        try:
            i = 0
            while True:
                await emitter.send(i)
                i += 1
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        flow = Flow.create(producer, capacity=4, overflow=OverflowStrategy.WAIT)
        async with aclosing(flow.aiter(prefetch=2)) as items:
            async for item in items:
                if item == 10:
                    break
        await asyncio.sleep(0.01)
        current = asyncio.current_task()
        assert [t for t in asyncio.all_tasks() if t is not current] == []

    asyncio.run(main())
    assert cancelled.is_set()


def test_emitter_sees_demand_and_cancel() -> None:
    seen: list[int] = []
    emitters: list[Emitter[int]] = []

    def producer(emitter: Emitter[int]) -> None:
        emitters.append(emitter)
        emitter.on_request(seen.append)

    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.create(producer).subscribe(subscriber)
    (emitter,) = emitters
    subscriber.request(3)
    assert seen == [3] and emitter.requested == 3
    emitter.emit(1)
    assert emitter.requested == 2
    subscriber.cancel()
    assert emitter.is_cancelled
    assert emitter.emit(2) is OfferResult.CLOSED


def test_bad_request_fails_and_notifies_the_producer() -> None:
    cancelled: list[bool] = []

    def producer(emitter: Emitter[int]) -> None:
        emitter.on_cancel(lambda: cancelled.append(True))

    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.create(producer).subscribe(subscriber)
    subscriber.request(0)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert cancelled == [True]


def test_raising_producer_and_loopless_coroutine_fail_the_stream() -> None:
    def raising(emitter: Emitter[int]) -> None:
        raise OSError("socket closed")

    with pytest.raises(OSError):
        Flow.create(raising).to_list()

    async def coroutine(emitter: Emitter[int]) -> None:
        emitter.complete()

    with pytest.raises(TypeError, match="running event loop"):
        Flow.create(coroutine).to_list()


def test_create_validates_arguments() -> None:
    with pytest.raises(ValueError):
        Flow.create(lambda e: None, capacity=0)
    with pytest.raises(TypeError):
        Flow.create(lambda e: None, overflow="drop")  # type: ignore[arg-type]


# -- SourceQueue -----------------------------------------------------------------------------


def test_source_queue_offer_results() -> None:
    queue: SourceQueue[int] = SourceQueue(2)
    assert queue.desired_size == 2
    assert [queue.offer(i) for i in range(3)] == [
        OfferResult.ENQUEUED,
        OfferResult.ENQUEUED,
        OfferResult.FULL,
    ]
    assert queue.desired_size == 0
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    queue.flow.subscribe(subscriber)
    assert subscriber.items == [0]
    assert queue.desired_size == 1
    queue.complete()
    assert queue.offer(5) is OfferResult.CLOSED
    subscriber.request(5)
    assert subscriber.items == [0, 1] and subscriber.completed


def test_source_queue_has_one_subscriber() -> None:
    queue: SourceQueue[int] = SourceQueue(2)
    queue.flow.subscribe(TestSubscriber())
    second: TestSubscriber[int] = TestSubscriber()
    queue.flow.subscribe(second)
    assert [type(e) for e in second.errors] == [ProtocolViolationError]


def test_source_queue_ready_and_offer_wait() -> None:
    async def main() -> list[int]:
        queue: SourceQueue[int] = SourceQueue(3)
        received: list[int] = []

        async def produce() -> None:
            for i in range(100):
                await queue.ready()
                assert queue.desired_size > 0
                assert queue.offer(i) is OfferResult.ENQUEUED
            for i in range(100, 120):
                assert await queue.offer_wait(i) is OfferResult.ENQUEUED
            queue.complete()

        producer = asyncio.create_task(produce())
        async for item in queue.flow.aiter(prefetch=2):
            received.append(item)
            assert queue.stats.depth <= 3
            await asyncio.sleep(0)
        await producer
        return received

    assert asyncio.run(main()) == list(range(120))


def test_source_queue_with_many_producer_threads() -> None:
    queue: SourceQueue[int] = SourceQueue(16)

    def produce(base: int) -> None:
        for i in range(500):
            assert queue.offer_blocking(base + i, timeout=10) is OfferResult.ENQUEUED

    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    received: list[int] = []
    iterator = queue.flow.blocking_iter(prefetch=8, timeout=10)
    while len(received) < 2000:
        received.append(next(iterator))
    for thread in threads:
        thread.join()
    queue.complete()
    assert list(iterator) == []
    assert sorted(received) == sorted(k * 1000 + i for k in range(4) for i in range(500))
    for k in range(4):  # each producer's items stay in order
        mine = [x for x in received if k * 1000 <= x < (k + 1) * 1000]
        assert mine == sorted(mine)
    assert queue.stats.peak_depth <= 16


# -- invariants under random schedules ---------------------------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(1, 6)),
        st.tuples(st.just("request"), st.integers(1, 5)),
        st.tuples(st.just("cancel"), st.just(0)),
        st.tuples(st.just("complete"), st.just(0)),
    ),
    max_size=40,
)
lossy = [
    OverflowStrategy.DROP_NEWEST,
    OverflowStrategy.DROP_OLDEST,
    OverflowStrategy.LATEST,
    OverflowStrategy.ERROR,
]


@settings(max_examples=200, deadline=None)
@given(schedule=steps, overflow=st.sampled_from(lossy), capacity=st.integers(1, 5))
def test_nothing_vanishes_unaccounted(
    schedule: list[tuple[str, int]], overflow: OverflowStrategy, capacity: int
) -> None:
    dropped: list[int] = []
    emitters: list[Emitter[int]] = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.create(
        emitters.append, capacity=capacity, overflow=overflow, on_dropped=dropped.append
    ).subscribe(subscriber)
    (emitter,) = emitters
    produced = 0
    for action, n in schedule:
        if action == "emit":
            for _ in range(n):
                if emitter.emit(produced) is not OfferResult.CLOSED:
                    produced += 1
        elif action == "request":
            subscriber.request(n)
        elif action == "cancel":
            subscriber.cancel()
        else:
            emitter.complete()
        stats = emitter.stats
        assert stats.produced == produced
        assert stats.produced == stats.delivered + stats.dropped + stats.depth
        assert stats.depth <= capacity
        assert stats.delivered == len(subscriber.items) <= subscriber.requested
        assert sorted(subscriber.items) == subscriber.items  # order preserved
        assert sorted(dropped + subscriber.items) == sorted(set(dropped + subscriber.items))
        assert len(dropped) == stats.dropped
        subscriber.assert_clean()


def test_water_marks_on_source_queue_and_create() -> None:
    changes: list[bool] = []
    marks = WaterMarks(high=4, low=1, on_change=changes.append)
    queue: SourceQueue[int] = SourceQueue(8, water_marks=marks)
    for i in range(5):
        queue.offer(i)
    assert marks.pressured and changes == [True]
    subscriber: TestSubscriber[int] = TestSubscriber()
    queue.flow.subscribe(subscriber)
    subscriber.request(2)
    assert marks.pressured  # depth 3: still above the low mark (hysteresis)
    subscriber.request(2)
    assert not marks.pressured and changes == [True, False]

    created = WaterMarks(high=2, low=0)
    emitters: list[Emitter[int]] = []
    late: TestSubscriber[int] = TestSubscriber()
    Flow.create(emitters.append, capacity=4, water_marks=created).subscribe(late)
    emitters[0].emit(1)
    emitters[0].emit(2)
    assert created.pressured
    late.request(2)
    assert not created.pressured
