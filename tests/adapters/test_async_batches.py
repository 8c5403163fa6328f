"""The batched asyncio paths: demand settled once per batch, conditional delivery, fast drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from reactive_bp import Flow, NonPositiveRequestError
from reactive_bp.abc import Subscription
from reactive_bp.adapters._pull import _DONE, _AsyncBridge
from reactive_bp.testing import TestPublisher

pytestmark = pytest.mark.no_undeliverable

UNBOUNDED = 2**63 - 1


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _counting(pulled: list[int], limit: int | None = None) -> AsyncIterator[int]:
    async def numbers() -> AsyncIterator[int]:
        i = 0
        while limit is None or i < limit:
            pulled.append(i)
            yield i
            i += 1

    return numbers()


class _EvenOnly:
    """A conditional subscriber: rejects odd items, which then cost no demand."""

    def __init__(self, requested: int) -> None:
        self.requested = requested
        self.items: list[int] = []
        self.rejected = 0
        self.errors: list[Exception] = []
        self.completed = False
        self.subscription: Subscription | None = None

    def on_subscribe(self, subscription: Subscription) -> None:
        self.subscription = subscription
        if self.requested:
            subscription.request(self.requested)

    def on_next(self, item: int) -> None:
        raise AssertionError("a source that finds try_on_next must use it")

    def try_on_next(self, item: int) -> bool:
        if item % 2:
            self.rejected += 1
            return False
        self.items.append(item)
        return True

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)

    def on_complete(self) -> None:
        self.completed = True


def test_from_async_iterable_counts_only_accepted_items_against_demand() -> None:
    pulled: list[int] = []

    async def main() -> _EvenOnly:
        subscriber = _EvenOnly(3)
        Flow.from_async_iterable(_counting(pulled)).subscribe(subscriber)
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    # 3 accepted (0, 2, 4) and the 2 rejected between them: nothing pulled beyond that.
    assert subscriber.items == [0, 2, 4] and subscriber.rejected == 2
    assert pulled == [0, 1, 2, 3, 4]
    assert not subscriber.errors and not subscriber.completed


def test_a_filter_after_from_async_iterable_needs_no_request_per_rejected_item() -> None:
    pulled: list[int] = []
    requests: list[int] = []

    async def main() -> list[int]:
        flow = (
            Flow.from_async_iterable(_counting(pulled, 1000))
            .do_on_request(requests.append)  # passes try_on_next through
            .filter(lambda x: x % 10 == 0)
        )
        return [x async for x in flow.aiter(prefetch=8)]

    assert asyncio.run(main()) == list(range(0, 1000, 10))
    assert pulled == list(range(1000))
    # Only the bridge's own requests (8, then 6 per batch): none for the 900 dropped items.
    assert requests[0] == 8 and set(requests[1:]) == {6}


def test_cancel_inside_on_next_stops_pulling_at_once() -> None:
    pulled: list[int] = []

    class CancelAtTwo(_EvenOnly):
        def try_on_next(self, item: int) -> bool:
            self.items.append(item)
            if item == 2 and self.subscription is not None:
                self.subscription.cancel()
            return True

    async def main() -> CancelAtTwo:
        subscriber = CancelAtTwo(UNBOUNDED)
        Flow.from_async_iterable(_counting(pulled)).subscribe(subscriber)
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [0, 1, 2] and pulled == [0, 1, 2]
    assert not subscriber.errors and not subscriber.completed


def test_a_bad_request_cuts_into_an_unbounded_batch() -> None:
    pulled: list[int] = []

    class BadRequestAtFive(_EvenOnly):
        def try_on_next(self, item: int) -> bool:
            self.items.append(item)
            if item == 5 and self.subscription is not None:
                self.subscription.request(0)  # Rule 3.9
            return True

    async def main() -> BadRequestAtFive:
        subscriber = BadRequestAtFive(UNBOUNDED)
        Flow.from_async_iterable(_counting(pulled)).subscribe(subscriber)
        for _ in range(100):
            if subscriber.errors:
                break
            await asyncio.sleep(0)
        return subscriber

    subscriber = asyncio.run(main())
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert len(pulled) <= 64 + 1  # the infinite source stopped within one chunk
    assert subscriber.items == pulled


def test_demand_from_several_batches_is_never_exceeded() -> None:
    pulled: list[int] = []

    async def main() -> _EvenOnly:
        subscriber = _EvenOnly(0)
        Flow.from_async_iterable(_counting(pulled)).subscribe(subscriber)
        assert subscriber.subscription is not None
        for n in (1, 2, 3):
            subscriber.subscription.request(n)
            await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [0, 2, 4, 6, 8, 10]
    assert pulled == list(range(11))


def test_aiter_drains_a_full_queue_without_waiting_and_replenishes_per_batch() -> None:
    requests: list[int] = []

    async def main() -> list[int]:
        flow = Flow.range(100).do_on_request(requests.append)
        items: list[int] = []
        async with aclosing(flow.aiter(prefetch=16)) as iterator:
            async for item in iterator:
                items.append(item)
        return items

    assert asyncio.run(main()) == list(range(100))
    assert requests[0] == 16 and set(requests[1:]) == {12}
    assert sum(requests) <= 100 + 16


def test_aiter_bridge_drops_items_after_the_ending_and_refuses_a_late_subscription() -> None:
    async def main() -> tuple[list[object], TestPublisher[int], TestPublisher[int]]:
        bridge: _AsyncBridge[int] = _AsyncBridge(4, asyncio.get_running_loop())
        upstream: TestPublisher[int] = TestPublisher()
        upstream.subscribe(bridge)
        upstream.send_next(1)
        upstream.send_complete()
        bridge.on_next(2)  # Rule 1.7: a late item is dropped
        late: TestPublisher[int] = TestPublisher()
        late.subscribe(bridge)  # after the ending: cancelled, never requested from
        signals = [await bridge.next(), await bridge.next(), await bridge.next()]
        return signals, upstream, late

    signals, upstream, late = asyncio.run(main())
    assert signals == [1, _DONE, _DONE]
    assert upstream.requests == [4]
    assert late.cancelled and late.requests == []
