"""The direct paths of zip and merge/flat_map: an item paired or emitted by its own thread.

Each test targets one way a direct path could break a rule: a tuple out of
order or formed from the wrong heads, more than requested (Rule 1.1), a
signal overlapping another (Rule 1.3, caught by ``TestSubscriber``), a
signal after the end (Rule 1.7), a completion missed after a direct pairing.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator

import pytest

from reactive_bp import UNBOUNDED, Flow
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.operators.test_combining import ThreadedRange


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_zip_of_three_pairs_directly_in_order_under_every_demand() -> None:
    # The general (more than two sources) direct path builds the row from the
    # heads in source order; a wrong index or head order fails the equality.
    for demand in (1, 2, 7, UNBOUNDED):
        subscriber: TestSubscriber[tuple[object, ...]] = TestSubscriber(0)
        Flow.zip(Flow.range(50), Flow.range(100, 150), Flow.range(200, 250), prefetch=4).subscribe(
            subscriber
        )
        while not subscriber.is_terminated:
            before = len(subscriber.items)
            subscriber.request(demand)
            assert len(subscriber.items) - before <= demand  # Rule 1.1
        assert subscriber.items == [(i, 100 + i, 200 + i) for i in range(50)]
        assert subscriber.completed
        subscriber.assert_clean()


def test_zip_pairs_the_source_order_whichever_source_completes_the_row() -> None:
    # The second source's item completes some rows, the first's others: the
    # tuple must always be (first, second).
    first: TestPublisher[int] = TestPublisher()
    second: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[tuple[object, ...]] = TestSubscriber(UNBOUNDED)
    Flow.zip(first, second, prefetch=8).subscribe(subscriber)
    first.send_next(1)
    second.send_next(10)  # second completes the row
    second.send_next(20)
    first.send_next(2)  # first completes the row
    assert subscriber.items == [(1, 10), (2, 20)]
    first.send_complete()
    assert subscriber.completed  # first is done and empty: no further row
    subscriber.assert_clean()


def test_zip_source_error_during_direct_pairing_is_the_last_signal() -> None:
    first: TestPublisher[int] = TestPublisher()
    second: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[tuple[object, ...]] = TestSubscriber(UNBOUNDED)
    Flow.zip(first, second, prefetch=8).subscribe(subscriber)
    first.send_next(1, 2)
    second.send_next(10)
    second.send_error(RuntimeError("boom"))
    first.send_next(3)  # Rule 2.8: ignored after the end
    assert subscriber.items == [(1, 10)]
    assert [type(e) for e in subscriber.errors] == [RuntimeError]
    assert first.cancelled
    subscriber.assert_clean()


def test_zip_raising_subscriber_on_direct_pairing_cancels_every_source() -> None:
    first: TestPublisher[int] = TestPublisher()
    second: TestPublisher[int] = TestPublisher()
    seen: list[object] = []
    errors: list[Exception] = []

    def on_next(row: tuple[object, ...]) -> None:
        seen.append(row)
        raise KeyError("downstream")

    Flow.zip(first, second).subscribe_with(on_next, errors.append)
    first.send_next(1)
    second.send_next(2)  # paired directly; downstream raises (Rule 2.13)
    second.send_next(3)
    first.send_next(4)
    assert seen == [(1, 2)]
    assert [type(e) for e in errors] == [KeyError]
    assert first.cancelled and second.cancelled


def _hammer(
    subscriber: TestSubscriber[tuple[object, ...]], stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    while not stop.is_set() and not subscriber.is_terminated:
        subscriber.request(rng.randint(1, 4))
        stop.wait(rng.random() / 2000)


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("sources", [2, 3])
def test_zip_of_threaded_sources_with_requests_from_other_threads(sources: int) -> None:
    """Rule 1.3 (TestSubscriber detects overlap), Rule 1.1, rows in order, completion."""
    for run in range(20):
        publishers = [ThreadedRange(i * 1000, 120 + 10 * i) for i in range(sources)]
        subscriber: TestSubscriber[tuple[object, ...]] = TestSubscriber(0)
        Flow.zip(*publishers, prefetch=3).subscribe(subscriber)
        stop = threading.Event()

        threads = [
            threading.Thread(target=_hammer, args=(subscriber, stop, run * 10 + k))
            for k in range(2)
        ]
        for thread in threads:
            thread.start()
        assert subscriber.await_terminal(10), subscriber
        stop.set()
        for thread in threads:
            thread.join()
        subscriber.assert_clean()
        assert subscriber.completed and not subscriber.errors
        assert subscriber.items == [tuple(i * 1000 + k for i in range(sources)) for k in range(120)]


@pytest.mark.usefixtures("fast_switching")
def test_zip_cancel_from_another_thread_stops_direct_pairing() -> None:
    for run in range(20):
        publishers = [ThreadedRange(0, 100_000), ThreadedRange(0, 100_000)]
        subscriber: TestSubscriber[tuple[object, ...]] = TestSubscriber(UNBOUNDED)
        Flow.zip(*publishers, prefetch=4).subscribe(subscriber)
        while len(subscriber.items) < 10 * (run + 1):
            if subscriber.is_terminated:
                break
            threading.Event().wait(0.0001)
        subscriber.cancel()
        count = len(subscriber.items)
        for publisher in publishers:
            for thread in publisher.threads:
                thread.join(10)
        # Nothing after cancel returned (Rule 3.7 is on the subscriber side:
        # TestSubscriber drops nothing; an on_next in flight may still land).
        assert len(subscriber.items) <= count + 1
        assert all(s.cancel_seen.is_set() for p in publishers for s in p.subscriptions)
        subscriber.assert_clean()


@pytest.mark.usefixtures("fast_switching")
def test_merge_of_threaded_sources_emitting_directly_keeps_every_item_and_rule_1_1() -> None:
    for run in range(20):
        publishers = [ThreadedRange(i * 1000, 100) for i in range(3)]
        subscriber: TestSubscriber[int] = TestSubscriber(0)
        Flow.merge(*publishers, prefetch=3).subscribe(subscriber)
        rng = random.Random(run)
        requested = 0
        while not subscriber.is_terminated:
            n = rng.randint(1, 5)
            requested += n
            subscriber.request(n)
            assert len(subscriber.items) <= requested  # Rule 1.1
            threading.Event().wait(rng.random() / 5000)
        subscriber.assert_clean()
        assert subscriber.completed
        assert sorted(subscriber.items) == sorted(
            v for i in range(3) for v in range(i * 1000, i * 1000 + 100)
        )


def test_zip_row_completed_during_a_direct_pairing_is_delivered_when_it_lets_go() -> None:
    # Items that arrive while a thread owns the loop for a direct pairing
    # (here: sent from downstream's on_next) only announce work; the owner
    # must run a pass when it lets go, or the row they complete is stuck.
    first: TestPublisher[int] = TestPublisher()
    second: TestPublisher[int] = TestPublisher()
    rows: list[tuple[object, ...]] = []

    def on_next(row: tuple[object, ...]) -> None:
        rows.append(row)
        if len(rows) == 1:
            first.send_next(2)
            second.send_next(20)

    Flow.zip(first, second, prefetch=4).subscribe_with(on_next)
    first.send_next(1)
    second.send_next(10)  # paired directly
    assert rows == [(1, 10), (2, 20)]


def test_merge_item_queued_during_a_direct_emission_is_delivered_when_it_lets_go() -> None:
    first: TestPublisher[int] = TestPublisher()
    second: TestPublisher[int] = TestPublisher()
    seen: list[int] = []

    def on_next(item: int) -> None:
        seen.append(item)
        if item == 1:
            second.send_next(2)  # queued: the loop is owned by the first's thread

    Flow.merge(first, second, prefetch=4).subscribe_with(on_next)
    first.send_next(1)
    assert seen == [1, 2]
