"""Push sources: Flow.create and SourceQueue, every overflow strategy, every loss counted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import threading
import time
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    BackpressureMeter,
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
from reactive_bp._core._push import PushBuffer
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable

R = TypeVar("R")


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


# -- WAIT on a thread the consumer needs ------------------------------------------------------


def _within(seconds: float, action: Callable[[], R]) -> R:
    """Run ``action`` on a daemon thread; fail (instead of hanging) if it takes too long."""
    outcome: list[R] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(action())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"hung for {seconds} s (a deadlock)"
    if failure:
        raise failure[0]
    return outcome[0]


def _sync_wait_producer(raised: list[BaseException]) -> Callable[[Emitter[int]], None]:
    """Emits 100 items on whatever thread runs it, recording what ``emit`` raised."""

    def producer(emitter: Emitter[int]) -> None:
        try:
            for i in range(100):
                emitter.emit(i)
        except RuntimeError as error:
            raised.append(error)
            raise
        emitter.complete()

    return producer


def test_wait_producer_inside_subscribe_of_blocking_iter_fails_instead_of_hanging() -> None:
    raised: list[BaseException] = []
    flow = Flow.create(_sync_wait_producer(raised), capacity=4, overflow=OverflowStrategy.WAIT)
    items: list[int] = []

    def consume() -> None:
        for item in flow.blocking_iter(prefetch=2, timeout=5):
            items.append(item)

    with pytest.raises(RuntimeError, match=r"inside subscribe\(\)") as caught:
        _within(5, consume)
    assert items == list(range(6))  # 2 requested + 4 buffered: nothing lost before the error
    assert raised == [caught.value]  # the producer was told too, with the same error
    assert "another thread" in str(caught.value) and "emitter.send" in str(caught.value)


def test_wait_producer_inside_subscribe_of_aiter_fails_instead_of_freezing_the_loop() -> None:
    raised: list[BaseException] = []
    flow = Flow.create(_sync_wait_producer(raised), capacity=4, overflow=OverflowStrategy.WAIT)

    async def main() -> list[int]:
        items: list[int] = []
        with pytest.raises(RuntimeError, match=r"inside subscribe\(\)") as caught:
            async for item in flow.aiter(prefetch=2):
                items.append(item)
        assert raised == [caught.value]
        return items

    assert _within(5, lambda: asyncio.run(main())) == list(range(6))


def test_wait_emit_on_the_loop_thread_outside_subscribe_fails_instead_of_freezing_it() -> None:
    raised: list[BaseException] = []

    def producer(emitter: Emitter[int]) -> None:
        # Produces later, from a loop callback: on the loop's thread, outside subscribe().
        loop = asyncio.get_running_loop()
        loop.call_soon(_swallowing(_sync_wait_producer(raised)), emitter)

    flow = Flow.create(producer, capacity=4, overflow=OverflowStrategy.WAIT)

    async def main() -> list[int]:
        items: list[int] = []
        with pytest.raises(RuntimeError, match="would block the running event loop") as caught:
            async for item in flow.aiter(prefetch=2):
                items.append(item)
        assert raised == [caught.value]  # the producer swallowed it: the stream failed anyway
        assert "emitter.send" in str(caught.value)
        return items

    assert _within(5, lambda: asyncio.run(main())) == list(range(6))


def _swallowing(producer: Callable[[Emitter[int]], None]) -> Callable[[Emitter[int]], None]:
    def run(emitter: Emitter[int]) -> None:
        with contextlib.suppress(RuntimeError):
            producer(emitter)

    return run


def test_wait_producer_on_its_own_thread_still_waits() -> None:
    def producer(emitter: Emitter[int]) -> None:
        def run() -> None:
            for i in range(50):
                emitter.emit(i)
            emitter.complete()

        threading.Thread(target=run).start()

    async def main() -> list[int]:
        flow = Flow.create(producer, capacity=2, overflow=OverflowStrategy.WAIT)
        return [item async for item in flow.aiter(prefetch=2)]

    assert _within(10, lambda: asyncio.run(main())) == list(range(50))


def test_wait_emit_within_room_inside_subscribe_is_fine() -> None:
    flow = Flow.create(_sync_wait_producer([]), capacity=100, overflow=OverflowStrategy.WAIT)
    assert list(flow.blocking_iter(prefetch=2, timeout=5)) == list(range(100))


# -- SourceQueue: refused offers are counted ----------------------------------------------------


def test_source_queue_counts_refused_offers() -> None:
    queue: SourceQueue[int] = SourceQueue(2)  # WAIT by default
    assert [queue.offer(i) for i in range(5)] == [OfferResult.ENQUEUED] * 2 + [OfferResult.FULL] * 3
    assert queue.offer_blocking(9, timeout=0.01) is OfferResult.FULL
    stats = queue.stats
    assert (stats.refused, stats.produced, stats.dropped, stats.depth) == (4, 2, 0, 2)
    assert stats.snapshot()["refused"] == 4
    assert stats.produced == stats.delivered + stats.dropped + stats.depth  # refused stand apart


def test_waiting_offers_are_not_counted_as_refused() -> None:
    queue: SourceQueue[int] = SourceQueue(1)
    subscriber: TestSubscriber[int] = TestSubscriber()
    queue.flow.subscribe(subscriber)
    queue.offer(0)

    def produce() -> None:
        for i in range(1, 20):
            assert queue.offer_blocking(i, timeout=10) is OfferResult.ENQUEUED

    producer = threading.Thread(target=produce)
    producer.start()
    while len(subscriber.items) < 20:
        subscriber.request(1)
        time.sleep(0.001)
    producer.join()
    assert queue.stats.refused == 0  # offer_blocking waited (retrying); it was never refused

    async def main() -> None:
        waiting: SourceQueue[int] = SourceQueue(1)
        waiting.offer(0)
        sending = asyncio.create_task(waiting.offer_wait(1))
        await asyncio.sleep(0.01)
        waiting.flow.subscribe(TestSubscriber(2))
        assert await sending is OfferResult.ENQUEUED
        assert waiting.stats.refused == 0

    asyncio.run(main())


def test_refused_offers_reach_the_meter_and_prometheus() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from reactive_bp.metrics import register_prometheus

    meter = BackpressureMeter("queue")
    queue: SourceQueue[int] = SourceQueue(1, meter=meter)
    for i in range(4):
        queue.offer(i)
    assert meter.stats is queue.stats and meter.totals()["refused"] == 3
    registry = prometheus_client.CollectorRegistry()
    register_prometheus(meter, registry=registry)
    assert registry.get_sample_value("reactive_bp_refused_total", {"stream": "queue"}) == 3.0
    text = prometheus_client.generate_latest(registry).decode()
    assert "# TYPE reactive_bp_refused_total counter" in text


def test_the_docs_state_the_default_strategies_the_code_uses() -> None:
    # The code: Flow.create fails on overflow by default, SourceQueue holds producers back.
    default: TestSubscriber[int] = TestSubscriber()
    Flow.create(_sync_wait_producer([]), capacity=4).subscribe(default)
    default.request(100)
    assert [type(e) for e in default.errors] == [BufferOverflowError]
    queue: SourceQueue[int] = SourceQueue(1)
    queue.offer(0)
    assert queue.offer(1) is OfferResult.FULL
    # The docs say the same.
    text = (Path(__file__).parents[2] / "docs" / "bridging-push-and-pull.md").read_text()
    rows = {row.split()[1]: row for row in text.splitlines() if row.startswith("| `")}
    assert "default" in rows["`ERROR`"] and "`Flow.create`" in rows["`ERROR`"]
    assert "`SourceQueue`" not in rows["`ERROR`"]
    assert "default" in rows["`WAIT`"] and "`SourceQueue`" in rows["`WAIT`"]


# -- the terminal state ---------------------------------------------------------------------------


def test_a_bad_request_cutting_ahead_of_a_pending_error_reports_that_error(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    emitters: list[Emitter[int]] = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.create(emitters.append, capacity=4).subscribe(subscriber)
    (emitter,) = emitters
    emitter.emit(1)
    pending = LookupError("waits behind the queued item")
    emitter.error(pending)
    subscriber.request(0)  # Rule 3.9 is eager: it cuts ahead of the item and of the error
    assert subscriber.items == []
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert [error for error, _ in undeliverable] == [pending]  # displaced, not swallowed
    subscriber.assert_clean()


def test_an_error_ahead_supersedes_a_completion_still_behind_items() -> None:
    buffer: PushBuffer[int] = PushBuffer(
        None, 4, OverflowStrategy.DROP_NEWEST, name="test", error_ahead=True
    )
    subscriber: TestSubscriber[int] = TestSubscriber()
    buffer.attach(subscriber)
    buffer.offer(1)
    buffer.offer(2)
    buffer.complete()  # not delivered yet: two items are ahead of it
    failure = LookupError("e.g. a raising on_dropped")
    buffer.error(failure, supersede=True)
    subscriber.request(10)
    assert subscriber.items == [] and subscriber.errors == [failure]
    assert not subscriber.completed
    assert buffer.stats.dropped_by_reason == {"error_ahead": 2}
    subscriber.assert_clean()


# -- the terminal state under races ------------------------------------------------------------


def test_an_upstream_error_never_turns_into_completion_under_racing_requests(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """Producer thread, two requesting threads and sometimes a cancel, switching every µs."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    late: list[Exception] = []
    try:
        for run in range(300):
            late.extend(_race_once(run))
    finally:
        sys.setswitchinterval(previous)
    # Only an error that came after the cancel is reported (Rule 1.7), once. One recorded
    # just before the cancel, still waiting behind queued items, is dropped with them.
    reported = [error for error, _ in undeliverable]
    assert all(any(error is mine for mine in late) for error in reported)
    assert len({id(error) for error in reported}) == len(reported)


def _race_once(run: int) -> list[Exception]:
    """One race; returns the error the subscriber cancelled before, if any."""
    rng = random.Random(run)
    emitters: list[Emitter[int]] = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    overflow = rng.choice([OverflowStrategy.DROP_OLDEST, OverflowStrategy.WAIT])
    Flow.create(emitters.append, capacity=4, overflow=overflow).subscribe(subscriber)
    (emitter,) = emitters
    error = LookupError(f"run {run}")
    fails = run % 2 == 0
    cancels = run % 5 == 0
    start = threading.Barrier(3)

    def produce() -> None:
        start.wait()
        for i in range(30):
            if emitter.emit(i) is OfferResult.CLOSED:
                break
        if fails:
            emitter.error(error)
        else:
            emitter.complete()

    def consume(stop_at: int | None) -> None:
        start.wait()
        for step in range(40):
            if step == stop_at:
                subscriber.cancel()
            subscriber.request(1)

    threads = [
        threading.Thread(target=produce),
        threading.Thread(target=consume, args=(rng.randrange(40) if cancels else None,)),
        threading.Thread(target=consume, args=(None,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), run
    if not subscriber.cancelled:
        subscriber.request(UNBOUNDED)
        assert subscriber.await_terminal(5)
        if fails:
            assert subscriber.errors == [error] and not subscriber.completed, run
        else:
            assert subscriber.completed and not subscriber.errors, run
    subscriber.assert_clean()  # Rules 1.1, 1.3, 1.7
    assert subscriber.items == sorted(subscriber.items)
    stats = emitter.stats
    assert stats.produced == stats.delivered + stats.dropped + stats.depth
    assert stats.delivered == len(subscriber.items)
    cancelled_first = subscriber.cancelled and fails and not subscriber.errors
    return [error] if cancelled_first else []


class _Reentrant:
    """Emits the next item from inside ``on_next`` and records the nesting depth."""

    def __init__(self, emitters: list[Emitter[int]], last: int) -> None:
        self._emitters = emitters
        self._last = last
        self.items: list[int] = []
        self.depth = 0
        self.max_depth = 0
        self.completed = False

    def on_subscribe(self, subscription: object) -> None:
        subscription.request(self._last + 1)  # type: ignore[attr-defined]

    def on_next(self, item: int) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        self.items.append(item)
        if item < self._last:
            self._emitters[0].emit(item + 1)
        self.depth -= 1

    def on_error(self, error: Exception) -> None:
        raise AssertionError(error)

    def on_complete(self) -> None:
        self.completed = True


def test_an_offer_from_inside_a_direct_delivery_follows_it_in_order() -> None:
    # The fast path hands an item straight to the subscriber; an offer made
    # from inside that on_next is queued and delivered after it returns, by the
    # same loop owner (Rule 1.3), never nested (Rule 3.3).
    emitters: list[Emitter[int]] = []
    subscriber = _Reentrant(emitters, last=9)
    Flow.create(emitters.append, capacity=1).subscribe(subscriber)
    emitters[0].emit(0)
    emitters[0].complete()
    assert subscriber.items == list(range(10))
    assert subscriber.max_depth == 1
    assert subscriber.completed
    stats = emitters[0].stats
    assert (stats.produced, stats.delivered, stats.dropped, stats.depth) == (10, 10, 0, 0)


def test_cancel_inside_a_direct_delivery_releases_the_subscriber() -> None:
    emitters: list[Emitter[int]] = []
    subscriber: TestSubscriber[int] = TestSubscriber(5, cancel_after=1)
    Flow.create(emitters.append, capacity=4, overflow=OverflowStrategy.DROP_NEWEST).subscribe(
        subscriber
    )
    (emitter,) = emitters
    assert emitter.emit(1) is OfferResult.ENQUEUED  # delivered directly, then cancelled
    assert emitter.emit(2) is OfferResult.CLOSED
    assert subscriber.items == [1] and subscriber.cancelled
    assert emitter._buffer._actual is None  # Rule 3.13
    stats = emitter.stats
    assert stats.produced == stats.delivered + stats.dropped + stats.depth == 1
    subscriber.assert_clean()


def test_a_raising_on_next_in_a_direct_delivery_fails_the_stream() -> None:
    fault = ValueError("subscriber broke")
    errors: list[Exception] = []

    def boom(item: int) -> None:
        raise fault

    emitters: list[Emitter[int]] = []
    Flow.create(emitters.append, capacity=4).subscribe_with(boom, errors.append)
    (emitter,) = emitters
    assert emitter.emit(1) is OfferResult.ENQUEUED
    assert errors == [fault]  # Rule 2.13
    assert emitter.is_cancelled
    assert emitter.emit(2) is OfferResult.CLOSED
    assert emitter.stats.delivered == 1


def test_demand_without_items_is_taken_by_the_next_offer() -> None:
    # request() with nothing queued runs no pass; the demand is kept and the
    # next offer (from another thread here) delivers at once.
    source: SourceQueue[int] = SourceQueue(4)
    subscriber: TestSubscriber[int] = TestSubscriber()
    source.flow.subscribe(subscriber)
    subscriber.request(2)
    producer = threading.Thread(target=lambda: [source.offer(i) for i in range(3)])
    producer.start()
    producer.join(5)
    assert subscriber.items == [0, 1]
    assert source.stats.depth == 1
    subscriber.request(1)
    assert subscriber.items == [0, 1, 2]
    subscriber.assert_clean()


def test_a_producer_error_after_complete_is_reported_and_the_completion_stands(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """Rule 1.7: even with error_ahead, a producer's late error never replaces its completion."""
    buffer: PushBuffer[int] = PushBuffer(
        None, 4, OverflowStrategy.DROP_NEWEST, name="test", error_ahead=True
    )
    subscriber: TestSubscriber[int] = TestSubscriber()
    buffer.attach(subscriber)
    buffer.offer(1)
    buffer.complete()
    late = LookupError("late")
    buffer.error(late)
    subscriber.request(10)
    assert subscriber.items == [1] and subscriber.completed and not subscriber.errors
    assert [error for error, _ in undeliverable] == [late]


def test_an_upstream_error_waiting_behind_items_is_reported_when_on_next_raises(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """A raising on_next supersedes the waiting error: reported, never silently lost."""
    buffer: PushBuffer[int] = PushBuffer(None, 4, OverflowStrategy.DROP_NEWEST, name="test")
    fault = RuntimeError("subscriber bug")
    received: list[object] = []

    class Raising(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            raise fault

        def on_error(self, error: Exception) -> None:
            received.append(error)

    subscriber = Raising()
    buffer.attach(subscriber)
    buffer.offer(1)
    waiting = LookupError("upstream failed")
    buffer.error(waiting)
    subscriber.request(1)
    assert received == [fault]
    assert [error for error, _ in undeliverable] == [waiting]


# -- the saturated paths: inline overflow, counts folded in when read ------------------------

_QUIET = [
    (OverflowStrategy.DROP_OLDEST, [6, 7, 8, 9]),
    (OverflowStrategy.LATEST, [0, 1, 2, 9]),
    (OverflowStrategy.DROP_NEWEST, [0, 1, 2, 3]),
]


@pytest.mark.parametrize(("overflow", "kept"), _QUIET, ids=[o.name for o, _ in _QUIET])
def test_overflow_without_on_dropped_is_counted_exactly_at_every_read(
    overflow: OverflowStrategy, kept: list[int]
) -> None:
    # Without on_dropped or water marks an overflow is one inline step whose drop
    # is only counted aside: every read of the stats must fold it in.
    queue: SourceQueue[int] = SourceQueue(4, overflow)
    stats = queue.stats
    for i in range(10):
        queue.offer(i)
        assert stats.produced == i + 1
        assert stats.dropped == max(0, i - 3) == sum(stats.dropped_by_reason.values())
        assert stats.depth == min(4, i + 1)
        snapshot = stats.snapshot()
        assert snapshot["produced"] == i + 1 == stats.delivered + stats.dropped + stats.depth
    assert stats.dropped_by_reason == {overflow.value: 6}
    assert stats.peak_depth == 4 and stats.backpressured_seconds == 0.0
    subscriber: TestSubscriber[int] = TestSubscriber()
    queue.flow.subscribe(subscriber)
    subscriber.request(10)
    assert subscriber.items == kept
    assert (stats.produced, stats.delivered, stats.dropped, stats.depth) == (10, 4, 6, 0)
    assert stats.backpressured_seconds > 0  # timed: a source's stats are public
    assert "'dropped': 6" in repr(queue)


def _race_producers(overflow: OverflowStrategy, grants: list[int]) -> None:
    """Two producer threads, a requesting thread and a stats reader, raced once."""
    queue: SourceQueue[int] = SourceQueue(8, overflow)
    received: list[int] = []
    inside = [False]
    overlaps = [0]

    class Serial(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            if inside[0]:
                overlaps[0] += 1
            inside[0] = True
            received.append(item)
            super().on_next(item)
            inside[0] = False

    subscriber = Serial(0)
    queue.flow.subscribe(subscriber)
    stats = queue.stats
    snapshots: list[dict[str, object]] = []
    done = threading.Event()
    start = threading.Barrier(4)

    def produce(base: int) -> None:
        start.wait()
        for i in range(150):
            queue.offer(base + i)

    def grant() -> None:
        start.wait()
        for n in grants:
            subscriber.request(n)

    def read() -> None:
        start.wait()
        while not done.is_set():
            snapshots.append(stats.snapshot())

    workers = [
        threading.Thread(target=produce, args=(0,)),
        threading.Thread(target=produce, args=(1000,)),
        threading.Thread(target=grant),
    ]
    reader = threading.Thread(target=read)
    for thread in [*workers, reader]:
        thread.start()
    for thread in workers:
        thread.join(10)
    done.set()
    reader.join(10)
    assert overlaps[0] == 0, "overlapping on_next (Rule 1.3)"
    assert len(received) <= sum(grants), "beyond demand (Rule 1.1)"
    for base in (0, 1000):  # each producer's items stay in order
        mine = [x for x in received if base <= x < base + 1000]
        assert mine == sorted(set(mine))
    final = stats.snapshot()
    for snapshot in [*snapshots, final]:
        produced, delivered = snapshot["produced"], snapshot["delivered"]
        dropped, depth = snapshot["dropped"], snapshot["depth"]
        assert isinstance(produced, int) and isinstance(delivered, int)
        assert isinstance(dropped, int) and isinstance(depth, int)
        assert produced == delivered + dropped + depth, snapshot
        assert depth <= max(8, sum(grants)), snapshot  # beyond capacity only if requested
    assert final["produced"] == 300 and final["delivered"] == len(received)
    if len(received) < sum(grants):
        assert final["depth"] == 0, "an item waits while demand is outstanding"
    subscriber.assert_clean()


@pytest.mark.parametrize("overflow", [o for o, _ in _QUIET], ids=[o.name for o, _ in _QUIET])
def test_concurrent_producers_racing_requests_keep_order_demand_and_accounting(
    overflow: OverflowStrategy,
) -> None:
    """What a broken fast path does here: an offer during another producer's hand-off
    lost (missed work), a hand-off overlapping a running loop, or a read that sees
    the inline overflow counts half folded."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    rng = random.Random(overflow.name)
    try:
        for _ in range(60):
            _race_producers(overflow, [rng.randint(1, 3) for _ in range(60)])
    finally:
        sys.setswitchinterval(previous)
