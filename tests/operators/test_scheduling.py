"""publish_on / subscribe_on: bounded queues across threads, no leaked threads."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from reactive_bp import UNBOUNDED, Flow, NonPositiveRequestError
from reactive_bp.schedulers import ThreadPoolScheduler, VirtualTimeScheduler
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def test_publish_on_moves_delivery_to_the_scheduler_with_bounded_demand() -> None:
    requests: list[int] = []
    threads: set[str] = set()
    with ThreadPoolScheduler(2, thread_name_prefix="pool") as pool:
        items = (
            Flow.range(5000)
            .do_on_request(requests.append)
            .publish_on(pool, prefetch=64)
            .do_on_next(lambda _: threads.add(threading.current_thread().name))
            .to_list(timeout=10)
        )
    assert items == list(range(5000))
    assert requests[0] == 64 and set(requests[1:]) == {48}
    assert all(name.startswith("pool") for name in threads)


def test_publish_on_in_virtual_time_delivers_only_when_the_scheduler_runs() -> None:
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(10).publish_on(vts, prefetch=4).subscribe(subscriber)
    assert subscriber.items == []
    vts.run_ready()
    assert subscriber.items == list(range(10)) and subscriber.completed
    subscriber.assert_clean()


def test_publish_on_errors_bad_requests_and_cancel() -> None:
    vts = VirtualTimeScheduler()
    failing: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.concat(Flow.just(1, 2), Flow.error(KeyError("k"))).publish_on(vts).subscribe(failing)
    vts.run_ready()
    assert failing.items == [1, 2] and [type(e) for e in failing.errors] == [KeyError]
    bad: TestSubscriber[int] = TestSubscriber()
    Flow.range(10).publish_on(vts).subscribe(bad)
    bad.request(0)
    vts.run_ready()
    assert [type(e) for e in bad.errors] == [NonPositiveRequestError]
    cancelled: list[bool] = []
    stopped: TestSubscriber[int] = TestSubscriber(3)
    Flow.never().do_on_cancel(lambda: cancelled.append(True)).publish_on(vts).subscribe(stopped)
    stopped.cancel()
    vts.run_ready()
    assert cancelled == [True] and not stopped.errors


def test_publish_on_keeps_memory_flat_for_a_fast_producer_and_slow_consumer() -> None:
    """The job reactivex's observe_on fails (it queues everything)."""
    produced = [0]

    def numbers() -> Iterator[int]:
        while True:
            produced[0] += 1
            yield produced[0]

    received: list[int] = []
    tracemalloc.start()
    try:
        with ThreadPoolScheduler(1) as pool:
            iterator = (
                Flow.from_iterable(numbers())
                .publish_on(pool, prefetch=32)
                .blocking_iter(prefetch=8)
            )
            for item in iterator:
                received.append(item)
                if len(received) % 100 == 0:
                    time.sleep(0.001)  # a slow consumer
                if len(received) == 2000:
                    break
            iterator.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == list(range(1, 2001))
    assert produced[0] <= 2000 + 32 + 8  # never more than the bounded queues ahead
    assert peak < 5_000_000


def test_subscribe_on_runs_the_source_on_the_scheduler() -> None:
    where: set[str] = set()
    with ThreadPoolScheduler(1, thread_name_prefix="sub") as pool:
        items = (
            Flow.range(100)
            .do_on_next(lambda _: where.add(threading.current_thread().name))
            .subscribe_on(pool)
            .to_list(timeout=10)
        )
    assert items == list(range(100))
    assert all(name.startswith("sub") for name in where)


def test_no_threads_leak() -> None:
    before = {t.ident for t in threading.enumerate()}
    with ThreadPoolScheduler(2) as pool:
        Flow.range(100).publish_on(pool).to_list(timeout=10)
    after = [t for t in threading.enumerate() if t.ident not in before]
    assert [t for t in after if t.is_alive() and t.name != "reactive_bp-timer"] == []


def test_subscribe_on_hands_requests_over_serially_and_after_on_subscribe() -> None:
    """Rule 2.7 towards upstream and Rule 1.3 towards downstream, on a 4-thread pool."""
    for _ in range(20):
        seen: list[int] = []
        with ThreadPoolScheduler(4) as pool:
            subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
            Flow.range(300).do_on_request(seen.append).subscribe_on(pool).subscribe(subscriber)
            assert subscriber.await_terminal(10) or len(subscriber.items) == 300
        assert subscriber.items == list(range(300))
        subscriber.assert_clean()
