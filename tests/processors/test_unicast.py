"""UnicastProcessor: one subscriber, a bounded PushBuffer, upstream demand = the buffer's room."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import weakref
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    AlreadySubscribedError,
    BufferOverflowError,
    NonPositiveRequestError,
    OfferResult,
    OverflowStrategy,
    ProtocolViolationError,
    UnicastProcessor,
)
from reactive_bp.abc import Processor, Publisher
from reactive_bp.testing import TestPublisher, TestSubscriber
from spec_tck import IdentityProcessorVerification, SkipCheck

# -- the compliance kit ---------------------------------------------------------------------


class TestUnicastProcessor(IdentityProcessorVerification[int]):
    def create_identity_processor(self, buffer_size: int) -> Processor[int, int]:
        return UnicastProcessor(buffer_size)

    def create_element(self, index: int) -> int:
        return index

    def max_supported_subscribers(self) -> int:
        return 1

    def create_failed_publisher(self) -> Publisher[int] | None:
        processor = UnicastProcessor[int]()
        processor.error(RuntimeError("failed on purpose"))
        return processor


class TestUnicastProcessorUnboundedBuffer(TestUnicastProcessor):
    """``UNBOUNDED_BUFFER``: the upstream is asked for everything once (Reactor's choice)."""

    def create_identity_processor(self, buffer_size: int) -> Processor[int, int]:
        return UnicastProcessor(buffer_size, OverflowStrategy.UNBOUNDED_BUFFER)

    def required_spec308_request_must_register_given_number_elements_to_be_produced(
        self,
    ) -> None:
        """The check wants a new upstream request after each downstream one."""
        raise SkipCheck(
            "with UNBOUNDED_BUFFER the processor requests 2**63-1 upstream once, on "
            "subscribe: there is never a later request to see (TestUnicastProcessor runs "
            "this check with a bounded buffer)"
        )


# -- one subscriber -------------------------------------------------------------------------


class Boom(Exception):
    """The failure of these tests."""


def test_items_wait_for_the_subscriber_and_the_ending_follows_them() -> None:
    processor = UnicastProcessor[int](capacity=8)
    for i in range(5):
        assert processor.offer(i) is OfferResult.ENQUEUED
    processor.complete()
    sub: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(sub)
    assert sub.items == [] and not sub.completed
    sub.request(2)
    assert sub.items == [0, 1]
    sub.request(10)
    assert sub.items == [0, 1, 2, 3, 4] and sub.completed
    sub.assert_clean()


@pytest.mark.parametrize("first_leaves", [False, True], ids=["first-active", "first-cancelled"])
def test_a_second_subscriber_gets_already_subscribed_error(first_leaves: bool) -> None:
    processor = UnicastProcessor[int]()
    first: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    processor.subscribe(first)
    if first_leaves:
        first.cancel()
    second: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(second)
    assert [type(e) for e in second.errors] == [AlreadySubscribedError]
    assert "only one subscriber" in str(second.errors[0])
    second.assert_clean()
    if not first_leaves:
        processor.offer(1)
        assert first.items == [1] and first.errors == []


def test_concurrent_subscribers_exactly_one_wins() -> None:
    for _ in range(50):
        processor = UnicastProcessor[int]()
        subs = [TestSubscriber[int](1) for _ in range(4)]
        threads = [threading.Thread(target=processor.subscribe, args=(s,)) for s in subs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        refused = [s for s in subs if s.errors]
        assert len(refused) == 3
        assert all(type(s.errors[0]) is AlreadySubscribedError for s in refused)


# -- overflow strategies ----------------------------------------------------------------------


def test_wait_answers_full_and_takes_nothing() -> None:
    processor = UnicastProcessor[int](capacity=2)
    assert [processor.offer(i) for i in range(3)] == [
        OfferResult.ENQUEUED,
        OfferResult.ENQUEUED,
        OfferResult.FULL,
    ]
    assert processor.stats.refused == 1 and processor.desired_size == 0
    sub: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(sub)
    assert processor.offer(2) is OfferResult.ENQUEUED
    sub.request(5)
    assert sub.items == [0, 1, 2]


@pytest.mark.parametrize(
    ("overflow", "result", "kept", "dropped"),
    [
        (OverflowStrategy.DROP_NEWEST, OfferResult.DROPPED, [0, 1], [2, 3]),
        (OverflowStrategy.DROP_OLDEST, OfferResult.ENQUEUED, [2, 3], [0, 1]),
        (OverflowStrategy.LATEST, OfferResult.ENQUEUED, [0, 3], [1, 2]),
    ],
)
def test_dropping_strategies_report_every_drop(
    overflow: OverflowStrategy, result: OfferResult, kept: list[int], dropped: list[int]
) -> None:
    seen: list[int] = []
    processor = UnicastProcessor[int](2, overflow, on_dropped=seen.append)
    results = [processor.offer(i) for i in range(4)]
    assert results[2:] == [result, result]
    processor.complete()
    assert processor.to_list() == kept
    assert seen == dropped and processor.stats.dropped == 2


def test_error_strategy_fails_after_the_buffered_items() -> None:
    processor = UnicastProcessor[int](2, OverflowStrategy.ERROR)
    assert [processor.offer(i) for i in range(3)][2] is OfferResult.FAILED
    assert processor.offer(9) is OfferResult.CLOSED
    sub: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    processor.subscribe(sub)
    assert sub.items == [0, 1] and [type(e) for e in sub.errors] == [BufferOverflowError]


def test_unbounded_buffer_never_refuses() -> None:
    processor = UnicastProcessor[int](1, OverflowStrategy.UNBOUNDED_BUFFER)
    assert {processor.offer(i) for i in range(1000)} == {OfferResult.ENQUEUED}
    processor.complete()
    assert processor.to_list() == list(range(1000))


def test_offer_blocking_waits_for_room_and_loses_nothing() -> None:
    processor = UnicastProcessor[int](capacity=4)
    sub: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(sub)

    def produce() -> None:
        for i in range(200):
            assert processor.offer_blocking(i, timeout=5) is OfferResult.ENQUEUED
        processor.complete()

    producer = threading.Thread(target=produce)
    producer.start()
    while not sub.await_terminal(0.001):
        sub.request(3)
    producer.join(5)
    assert sub.items == list(range(200)) and sub.completed
    sub.assert_clean()


def test_offer_wait_awaits_room() -> None:
    async def main() -> list[int]:
        processor = UnicastProcessor[int](capacity=2)

        async def produce() -> None:
            for i in range(20):
                assert await processor.offer_wait(i) is OfferResult.ENQUEUED
            processor.complete()

        task = asyncio.ensure_future(produce())
        items = await processor.to_list_async()
        await task
        return items

    assert asyncio.run(main()) == list(range(20))


# -- the upstream side --------------------------------------------------------------------------


def test_unbounded_buffer_requests_everything_once() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](4, OverflowStrategy.UNBOUNDED_BUFFER)
    upstream.subscribe(processor)
    upstream.send_next(*range(100))
    processor.on_complete()
    assert upstream.requests == [UNBOUNDED] and processor.to_list() == list(range(100))


def test_capacity_is_requested_upstream_before_anyone_subscribes() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](capacity=4)
    upstream.subscribe(processor)
    assert upstream.requests == [4]
    upstream.send_next(0, 1, 2, 3)
    sub: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(sub)
    sub.request(3)
    assert sub.items == [0, 1, 2]
    assert upstream.total_requested - 4 == 3  # replenished exactly what left the buffer


def test_upstream_demand_follows_each_request_of_the_subscriber() -> None:
    """The kit's Rule 3.8 check: a request after the buffer drained reaches upstream."""
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](capacity=16)
    sub: TestSubscriber[int] = TestSubscriber(2)
    processor.subscribe(sub)
    upstream.subscribe(processor)
    upstream.send_next(0, 1)
    before = len(upstream.requests)
    sub.request(3)
    assert len(upstream.requests) == before + 1 and upstream.outstanding == 16


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 6),
    plan=st.lists(
        st.one_of(st.just("emit"), st.just("emit"), st.integers(1, 5), st.just("subscribe")),
        max_size=50,
    ),
)
def test_requested_but_unsent_plus_buffered_never_exceeds_capacity(
    capacity: int, plan: list[object]
) -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](capacity=capacity)
    upstream.subscribe(processor)
    sub: TestSubscriber[int] = TestSubscriber()
    sent = 0
    subscribed = False
    for step in plan:
        if step == "emit" and upstream.outstanding:
            upstream.send_next(sent)
            sent += 1
        elif step == "subscribe" and not subscribed:
            processor.subscribe(sub)
            subscribed = True
        elif isinstance(step, int) and subscribed:
            sub.request(step)
        buffered = processor.stats.depth
        assert upstream.outstanding + buffered <= capacity
        assert sub.items == list(range(len(sub.items)))
        sub.assert_clean()
        # No stall: the subscriber waits for more, nothing is buffered, so upstream was asked.
        if subscribed and sub.requested > len(sub.items) and buffered == 0:
            assert upstream.outstanding > 0
    if not subscribed:
        processor.subscribe(sub)
    upstream.send_complete()
    sub.request(UNBOUNDED)
    assert sub.items == list(range(sent)) and sub.completed


def test_cancel_cancels_upstream_and_closes_offers() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](capacity=4)
    upstream.subscribe(processor)
    sub: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(sub)
    sub.cancel()
    assert upstream.cancelled and processor.offer(1) is OfferResult.CLOSED


def test_a_bad_request_fails_the_subscriber_and_cancels_upstream() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](capacity=4)
    upstream.subscribe(processor)
    sub: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(sub)
    sub.request(-1)
    assert [type(e) for e in sub.errors] == [NonPositiveRequestError] and upstream.cancelled


def test_a_raising_subscriber_cancels_upstream_and_gets_its_error() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](capacity=4)
    upstream.subscribe(processor)

    class Raising(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            raise Boom("subscriber failed")

    sub = Raising(UNBOUNDED)
    processor.subscribe(sub)
    upstream.send_next(0)
    assert [type(e) for e in sub.errors] == [Boom] and upstream.cancelled


def test_an_upstream_sending_beyond_demand_fails_the_stream() -> None:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    processor = UnicastProcessor[int](capacity=2)
    upstream.subscribe(processor)
    upstream.send_next(0, 1, 2)
    sub: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    processor.subscribe(sub)
    assert sub.items == [0, 1] and [type(e) for e in sub.errors] == [ProtocolViolationError]
    assert "Rule 1.1" in str(sub.errors[0]) and upstream.cancelled


def test_a_second_upstream_is_cancelled(undeliverable: list[tuple[BaseException, str]]) -> None:
    processor = UnicastProcessor[int]()
    first, second = TestPublisher[int](), TestPublisher[int]()
    first.subscribe(processor)
    second.subscribe(processor)
    assert second.cancelled and not first.cancelled
    assert any("Rule 2.5" in str(error) for error, _ in undeliverable)


def test_none_is_not_an_item() -> None:
    processor = UnicastProcessor[int]()
    with pytest.raises(TypeError):
        processor.on_next(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        processor.offer(None)  # type: ignore[arg-type]


def test_complete_by_a_producer_cancels_the_upstream() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int]()
    upstream.subscribe(processor)
    processor.complete()
    assert upstream.cancelled
    assert processor.to_list() == []


def test_a_cancelled_subscriber_is_released() -> None:
    processor = UnicastProcessor[int]()
    sub: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(sub)
    processor.offer(1)
    ref = weakref.ref(sub)
    sub.cancel()
    del sub
    gc.collect()
    assert ref() is None


# -- races ---------------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _error_race(run: int, cancel: bool) -> None:
    """One run: items then an error from one thread, requests (and a cancel) from two."""
    upstream: TestPublisher[int] = TestPublisher()
    processor = UnicastProcessor[int](capacity=4)
    upstream.subscribe(processor)
    sub: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(sub)
    error = Boom(f"run {run}")
    start = threading.Barrier(3)

    def produce() -> None:
        start.wait()
        sent = 0
        for _ in range(30):
            while upstream.outstanding > 0 and sent < 12:
                upstream.send_next(sent)
                sent += 1
        upstream.send_error(error)

    def consume(requests: int) -> None:
        start.wait()
        for k in range(requests):
            sub.request(1)
            if cancel and k == 2:
                sub.cancel()
                return

    threads = [
        threading.Thread(target=produce),
        threading.Thread(target=consume, args=(4,)),
        threading.Thread(target=consume, args=(4,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    if not cancel:
        sub.request(UNBOUNDED)
        assert sub.errors == [error], (run, sub)
    else:
        assert sub.errors in ([], [error]), (run, sub)
    assert not sub.completed
    assert sub.items == list(range(len(sub.items)))
    sub.assert_clean()


@pytest.mark.usefixtures("fast_switching")
def test_an_upstream_error_races_requests_and_a_cancel(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    rng = random.Random(5)
    for run in range(300):
        _error_race(run, rng.random() < 0.25)
    assert all(isinstance(reported, Boom) for reported, _ in undeliverable)
