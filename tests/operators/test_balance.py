"""Flow.balance: each item to exactly one output with demand, bounded upstream demand."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import assert_type

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    AlreadySubscribedError,
    Flow,
    NonPositiveRequestError,
    ProtocolViolationError,
)
from reactive_bp.abc import Subscription
from reactive_bp.testing import TestPublisher, TestSubscriber


class Boom(Exception):
    """The failure of these tests."""


def wired(
    n: int, buffer_size: int = 4
) -> tuple[TestPublisher[int], list[Flow[int]], list[TestSubscriber[int]]]:
    upstream: TestPublisher[int] = TestPublisher()
    outputs = upstream.balance(n, buffer_size)
    subs = [TestSubscriber[int]() for _ in outputs]
    for output, sub in zip(outputs, subs, strict=True):
        output.subscribe(sub)
    return upstream, outputs, subs


def emit(upstream: TestPublisher[int], start: int, stop: int) -> int:
    """Send ``start, start + 1, ...`` while there is demand, up to ``stop``; return the next."""
    value = start
    while value < stop and upstream.outstanding > 0 and not upstream.cancelled:
        upstream.send_next(value)
        value += 1
    return value


# -- distribution ------------------------------------------------------------------------------


def test_each_item_goes_to_exactly_one_output_with_demand() -> None:
    upstream, _, (a, b, c) = wired(3)
    a.request(2)
    b.request(3)
    sent = emit(upstream, 0, 100)
    # The demand plus buffer_size of prefetch, but at most 2 * buffer_size at once.
    assert sent == min(5 + 4, 2 * 4)
    assert sorted(a.items + b.items) == [0, 1, 2, 3, 4] and c.items == []
    c.request(10)
    assert sorted(a.items + b.items + c.items) == list(range(sent))
    for sub in (a, b, c):
        sub.assert_clean()


def test_items_are_dealt_round_robin_to_outputs_with_demand() -> None:
    upstream, _, (a, b) = wired(2, buffer_size=0)
    a.request(10)
    b.request(10)
    for i in range(6):
        assert emit(upstream, i, i + 1) == i + 1
    assert a.items == [0, 2, 4] and b.items == [1, 3, 5]


def test_upstream_is_subscribed_once_every_output_has_a_subscriber() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    first, second = upstream.balance(2)
    early: TestSubscriber[int] = TestSubscriber(5)
    first.subscribe(early)
    assert upstream.subscriber is None
    second.subscribe(TestSubscriber[int]())
    assert upstream.subscriber is not None and upstream.total_requested >= 5


def test_a_second_subscriber_to_an_output_gets_already_subscribed_error() -> None:
    upstream, outputs, (a, _) = wired(2)
    intruder: TestSubscriber[int] = TestSubscriber(1)
    outputs[0].subscribe(intruder)
    assert [type(e) for e in intruder.errors] == [AlreadySubscribedError]
    a.request(1)
    emit(upstream, 0, 1)
    assert a.items == [0] and intruder.items == []


def test_completion_waits_for_the_queued_items() -> None:
    upstream, _, (a, b) = wired(2)
    a.request(1)
    sent = emit(upstream, 0, 100)
    upstream.send_complete()
    assert a.items == [0] and not a.completed and not b.completed
    b.request(UNBOUNDED)
    assert sorted(a.items + b.items) == list(range(sent))
    assert a.completed and b.completed


def test_an_upstream_error_reaches_every_live_output_at_once() -> None:
    upstream, _, (a, b, c) = wired(3)
    a.request(1)
    emit(upstream, 0, 100)
    c.cancel()
    error = Boom("upstream")
    upstream.send_error(error)
    assert a.errors == [error] and b.errors == [error] and c.errors == []
    assert not a.completed and not b.completed


# -- cancellation ------------------------------------------------------------------------------


def test_an_output_that_cancels_stops_receiving_and_the_rest_continue() -> None:
    upstream, _, (a, b) = wired(2)
    a.request(2)
    b.request(2)
    emit(upstream, 0, 4)
    a.cancel()
    b.request(UNBOUNDED)
    sent = emit(upstream, 4, 20)
    upstream.send_complete()
    assert len(a.items) == 2 and not upstream.cancelled
    assert sorted(a.items + b.items) == list(range(sent)) and b.completed


class _CancelsAfter(TestSubscriber[int]):
    """Cancels inside ``on_next`` of its ``limit``-th item (mid-batch)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def on_next(self, item: int) -> None:
        super().on_next(item)
        if len(self.items) == self.limit:
            self.cancel()


def test_items_an_output_took_but_did_not_deliver_go_to_the_others() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    leaving = _CancelsAfter(2)
    staying: TestSubscriber[int] = TestSubscriber()
    first, second = upstream.balance(2, buffer_size=8)
    first.subscribe(leaving)
    second.subscribe(staying)
    sent = emit(upstream, 0, 8)  # queued: no demand yet
    leaving.request(8)  # takes all 8 in one batch, leaves after 2
    assert leaving.items == [0, 1]
    staying.request(UNBOUNDED)
    sent = emit(upstream, sent, 30)
    upstream.send_complete()
    assert staying.items == list(range(2, sent)) and staying.completed
    assert Counter(leaving.items + staying.items) == Counter(range(sent))


def test_when_every_output_cancels_upstream_is_cancelled() -> None:
    upstream, _, (a, b) = wired(2)
    a.request(1)
    emit(upstream, 0, 100)
    a.cancel()
    assert not upstream.cancelled
    b.cancel()
    assert upstream.cancelled


class _CancelsAtOnce(TestSubscriber[int]):
    def on_subscribe(self, subscription: Subscription) -> None:
        super().on_subscribe(subscription)
        self.cancel()


def test_outputs_that_all_left_before_the_start_never_subscribe_upstream() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    first, second = upstream.balance(2)
    first.subscribe_with().dispose()
    second.subscribe(_CancelsAtOnce())
    assert upstream.subscriber is None


def test_a_cancelled_output_releases_its_subscriber() -> None:
    upstream, _, subs = wired(2)
    a = subs.pop(0)
    a.request(1)
    emit(upstream, 0, 3)
    ref = weakref.ref(a)
    a.cancel()
    del a
    gc.collect()
    assert ref() is None


# -- failures of one output -----------------------------------------------------------------------


def test_a_bad_request_fails_only_that_output() -> None:
    upstream, _, (a, b) = wired(2)
    a.request(0)
    assert [type(e) for e in a.errors] == [NonPositiveRequestError]
    b.request(3)
    assert emit(upstream, 0, 3) == 3
    assert b.items == [0, 1, 2] and not upstream.cancelled


def test_a_raising_output_fails_alone_and_its_batch_goes_to_the_others() -> None:
    class Raising(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            raise Boom("subscriber failed")

    upstream: TestPublisher[int] = TestPublisher()
    first, second = upstream.balance(2, buffer_size=4)
    raising, other = Raising(), TestSubscriber[int]()
    first.subscribe(raising)
    second.subscribe(other)
    sent = emit(upstream, 0, 4)
    raising.request(4)
    assert raising.items == [0] and [type(e) for e in raising.errors] == [Boom]
    other.request(UNBOUNDED)
    sent = emit(upstream, sent, 10)
    assert other.items == list(range(1, sent))


def test_an_upstream_sending_beyond_demand_fails_every_output() -> None:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    outputs = upstream.balance(2, buffer_size=0)
    subs = [TestSubscriber[int](), TestSubscriber[int]()]
    for output, sub in zip(outputs, subs, strict=True):
        output.subscribe(sub)
    subs[0].request(1)
    upstream.send_next(0, 1)
    assert subs[0].items == [0]
    assert all(type(s.errors[0]) is ProtocolViolationError for s in subs)
    assert upstream.cancelled


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError):
        Flow.range(3).balance(0)
    with pytest.raises(ValueError):
        Flow.range(3).balance(2, buffer_size=-1)


# -- Hypothesis: random per-output demand and cancels ----------------------------------------


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(1, 4),
    buffer_size=st.integers(0, 4),
    plan=st.lists(
        st.one_of(
            st.just(("emit",)),
            st.just(("emit",)),
            st.tuples(st.just("request"), st.integers(0, 3), st.integers(1, 4)),
            st.tuples(st.just("request"), st.integers(0, 3), st.just(UNBOUNDED)),
            st.tuples(st.just("cancel"), st.integers(0, 3)),
        ),
        max_size=50,
    ),
)
def test_nothing_is_lost_or_duplicated_and_demand_is_bounded(
    n: int, buffer_size: int, plan: list[tuple[object, ...]]
) -> None:
    upstream, _, subs = wired(n, buffer_size)
    requested = [0] * n
    total_requested = 0
    cancelled: set[int] = set()
    sent = 0
    for step in plan:
        kind = step[0]
        if kind == "emit" and upstream.outstanding:
            upstream.send_next(sent)
            sent += 1
        elif kind == "request":
            index = int(step[1]) % n  # type: ignore[call-overload]
            k = int(step[2])  # type: ignore[call-overload]
            subs[index].request(k)
            if index not in cancelled:
                requested[index] = min(requested[index] + k, UNBOUNDED)
                total_requested = min(total_requested + k, UNBOUNDED)
        elif kind == "cancel":
            index = int(step[1]) % n  # type: ignore[call-overload]
            subs[index].cancel()
            cancelled.add(index)
        delivered = [item for sub in subs for item in sub.items]
        assert len(delivered) == len(set(delivered)), "an item reached two outputs"
        assert set(delivered) <= set(range(sent))
        for sub in subs:
            sub.assert_clean()  # never beyond its demand (Rule 1.1), serial, nothing after the end
            assert sub.items == sorted(sub.items)
        # Upstream demand: within what outputs asked for plus buffer_size, in total, and
        # (while no output has withdrawn its demand by cancelling) at every step.
        assert upstream.total_requested <= min(total_requested + buffer_size, UNBOUNDED)
        if not cancelled:
            outstanding = sum(r - len(s.items) for r, s in zip(requested, subs, strict=True))
            assert upstream.outstanding <= outstanding + buffer_size
        assert upstream.outstanding <= max(2 * buffer_size, 1)
        # No stall: a live output waits for more, nothing is queued for it, so upstream was asked.
        waiting = any(
            i not in cancelled and requested[i] > len(s.items) for i, s in enumerate(subs)
        )
        queued = sent - len(delivered)
        if waiting and queued == 0 and not upstream.cancelled:
            assert upstream.outstanding > 0
    live = [sub for i, sub in enumerate(subs) if i not in cancelled]
    for sub in live:
        sub.request(UNBOUNDED)
    sent = emit(upstream, sent, sent + 20)
    upstream.send_complete()
    delivered = [item for sub in subs for item in sub.items]
    if live:
        assert sorted(delivered) == list(range(sent)), "an item was lost"
        assert all(sub.completed for sub in live)
    else:
        assert upstream.cancelled
    assert len(delivered) == len(set(delivered))


# -- races ----------------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _delivery_race(run: int) -> None:
    """One run: an upstream on one thread, three outputs requesting on three others."""
    upstream, _, subs = wired(3, buffer_size=2)
    total = 40
    start = threading.Barrier(4)
    stop = threading.Event()

    def produce() -> None:
        start.wait()
        sent = 0
        while sent < total and not stop.is_set():
            sent = emit(upstream, sent, total)
        upstream.send_complete()

    def consume(sub: TestSubscriber[int]) -> None:
        start.wait()
        for _ in range(total):
            if sub.is_terminated:
                return
            sub.request(1)

    threads = [threading.Thread(target=consume, args=(s,)) for s in subs]
    threads.append(threading.Thread(target=produce))
    for thread in threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join(5)
    for sub in subs:
        sub.request(UNBOUNDED)  # whatever is still queued
    threads[-1].join(5)
    stop.set()  # only a safety net: a producer that never finishes fails the run
    delivered = [item for sub in subs for item in sub.items]
    assert sorted(delivered) == list(range(total)), run
    for sub in subs:
        assert sub.await_terminal(5) and sub.completed, run
        sub.assert_clean()


@pytest.mark.usefixtures("fast_switching")
def test_outputs_requesting_from_several_threads_lose_and_duplicate_nothing() -> None:
    for run in range(200):
        _delivery_race(run)


def _error_race(run: int, leaver: int) -> None:
    """One run: items then an error on one thread; three outputs request, one may cancel."""
    upstream, _, subs = wired(3, buffer_size=2)
    error = Boom(f"run {run}")
    start = threading.Barrier(4)

    def produce() -> None:
        start.wait()
        sent = 0
        for _ in range(20):
            sent = emit(upstream, sent, 15)
        upstream.send_error(error)

    def consume(index: int, sub: TestSubscriber[int]) -> None:
        start.wait()
        for k in range(6):
            sub.request(1)
            if index == leaver and k == 2:
                sub.cancel()
                return

    threads = [threading.Thread(target=consume, args=(i, s)) for i, s in enumerate(subs)]
    threads.append(threading.Thread(target=produce))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    delivered = [item for sub in subs for item in sub.items]
    assert len(delivered) == len(set(delivered)), run
    for index, sub in enumerate(subs):
        if index == leaver:
            assert sub.errors in ([], [error]), run
        else:
            assert sub.errors == [error], (run, index, sub)
        assert not sub.completed
        sub.assert_clean()


@pytest.mark.usefixtures("fast_switching")
def test_an_upstream_error_races_requests_and_cancels_of_the_outputs(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    for run in range(200):
        _error_race(run, run % 4)  # 3: nobody leaves
    assert all(isinstance(reported, Boom) for reported, _ in undeliverable)


def test_the_outputs_are_typed_flows() -> None:
    outputs = Flow.range(4).balance(2)
    assert_type(outputs, list[Flow[int]])
    labels = outputs[0].map(lambda x: f"#{x}")
    assert_type(labels, Flow[str])
    seen: list[int] = []
    outputs[1].subscribe_with(seen.append)
    got = labels.to_list()
    assert sorted(got + [f"#{x}" for x in seen]) == ["#0", "#1", "#2", "#3"]


def test_completion_waits_for_items_another_output_holds_in_flight() -> None:
    """An output must not complete while another may still hand items back."""
    upstream: TestPublisher[int] = TestPublisher()
    first, second = upstream.balance(2, buffer_size=4)
    patient: TestSubscriber[int] = TestSubscriber()

    class Leaves(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            if item == 0:
                patient.request(10)  # runs patient's loop while items 1..3 are in flight here
            else:
                self.cancel()  # hands 2 and 3 back

    leaving = Leaves()
    first.subscribe(patient)
    second.subscribe(leaving)
    assert emit(upstream, 0, 10) == 4  # the prefetch, queued
    upstream.send_complete()
    leaving.request(4)
    assert leaving.items == [0, 1]
    assert patient.items == [2, 3] and patient.completed
    patient.assert_clean()
