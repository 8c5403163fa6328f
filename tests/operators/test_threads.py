"""Operator chains while other threads call request and cancel."""

from __future__ import annotations

import threading

import pytest

from reactive_bp import UNBOUNDED, Flow
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _chain() -> Flow[int]:
    return Flow.range(200_000).map(lambda x: x + 1).filter(lambda x: x % 3 != 0).take(60_000)


def test_concurrent_requests_through_a_chain_never_overlap_or_over_deliver() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    _chain().subscribe(subscriber)
    start = threading.Barrier(3)

    def spam(n: int) -> None:
        start.wait()
        while not subscriber.is_terminated:
            subscriber.request(n)

    threads = [threading.Thread(target=spam, args=(n,)) for n in (1, 7, 64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert subscriber.completed
    expected = [x for x in range(1, 200_001) if x % 3 != 0][:60_000]
    assert subscriber.items == expected
    subscriber.assert_clean()


def test_cancel_from_another_thread_stops_a_chain() -> None:
    for _ in range(10):
        subscriber: TestSubscriber[int] = TestSubscriber()
        _chain().subscribe(subscriber)
        emitter = threading.Thread(target=subscriber.request, args=(UNBOUNDED,))
        emitter.start()
        subscriber.cancel()
        emitter.join(10)
        assert not emitter.is_alive()
        count = len(subscriber.items)
        subscriber.request(100)
        assert len(subscriber.items) == count
        assert not subscriber.errors
        subscriber.assert_clean()
