"""flat_map, concat_map, merge, concat, zip: matrix, demand bounds, cancel, errors, threads."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, Flow, NonPositiveRequestError, ProtocolViolationError
from reactive_bp._core._demand import add_cap, check_request
from reactive_bp.abc import Publisher, Subscriber
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.scenarios import SCENARIOS, Boom, OperatorCase, boom

pytestmark = pytest.mark.no_undeliverable


def _pairs(xs: list[int]) -> list[object]:
    return [item for x in xs for item in (x, x + 1000)]


CASES: list[OperatorCase] = [
    # The matrix checks exact order; with one inner at a time flat_map keeps it.
    OperatorCase(
        "flat_map",
        lambda f: f.flat_map(lambda x: Flow.just(x, x + 1000), max_concurrency=1),
        _pairs,
        lambda f: f.flat_map(boom),
    ),
    OperatorCase(
        "flat_map_concurrency_1_prefetch_1",
        lambda f: f.flat_map(lambda x: Flow.just(x, x + 1000), max_concurrency=1, prefetch=1),
        _pairs,
    ),
    OperatorCase(
        "concat_map",
        lambda f: f.concat_map(lambda x: Flow.just(x, x + 1000)),
        _pairs,
        lambda f: f.concat_map(boom),
    ),
    OperatorCase(
        "concat_map_with_empty_inners",
        lambda f: f.concat_map(lambda x: Flow.just(x) if x % 3 else Flow.empty(), prefetch=1),
        lambda xs: [x for x in xs if x % 3],
    ),
    OperatorCase("merge", lambda f: Flow.merge(f, Flow.empty()), lambda xs: list(xs)),
    OperatorCase("concat", lambda f: Flow.concat(f, Flow.just(-1, -2)), lambda xs: [*xs, -1, -2]),
    OperatorCase(
        "zip",
        lambda f: Flow.zip(f, Flow.range(100, 10_000), prefetch=4),
        lambda xs: [(x, 100 + i) for i, x in enumerate(xs)],
    ),
]


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        for name, scenario in SCENARIOS.items():
            marks = []
            if name == "raising_callback" and case.raising is None:
                marks.append(pytest.mark.skip(reason="no user callback"))
            params.append(pytest.param(case, scenario, id=f"{case.name}-{name}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "scenario"), _params())
def test_scenario(
    case: OperatorCase, scenario: Callable[[OperatorCase], TestSubscriber[object]]
) -> None:
    scenario(case).assert_clean()


# -- argument validation ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_invalid_concurrency_and_prefetch_raise_value_error_eagerly(bad: object) -> None:
    source = Flow.range(3)
    with pytest.raises(ValueError):
        source.flat_map(Flow.just, max_concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        source.flat_map(Flow.just, prefetch=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        source.concat_map(Flow.just, prefetch=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Flow.merge(source, prefetch=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Flow.zip(source, source, prefetch=bad)  # type: ignore[call-overload]


def test_a_non_publisher_source_raises_type_error_eagerly() -> None:
    with pytest.raises(TypeError):
        Flow.concat(Flow.range(3), 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Flow.zip(Flow.range(3), "abc")  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "flow",
    [Flow.merge(), Flow.concat(), Flow.zip()],
    ids=["merge", "concat", "zip"],
)
def test_combining_nothing_completes_at_once(flow: Flow[object]) -> None:
    subscriber: TestSubscriber[object] = TestSubscriber()
    flow.subscribe(subscriber)
    assert subscriber.completed and subscriber.items == []


# -- flat_map -----------------------------------------------------------------------------------


def _flat_map_over(
    inners: list[TestPublisher[int]], max_concurrency: int = 256, prefetch: int = 8
) -> tuple[TestPublisher[int], TestSubscriber[int]]:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.flat_map(
        lambda i: inners[i], max_concurrency=max_concurrency, prefetch=prefetch
    ).subscribe(subscriber)
    return upstream, subscriber


def test_flat_map_emits_only_against_downstream_demand() -> None:
    inners = [TestPublisher[int]() for _ in range(2)]
    upstream, subscriber = _flat_map_over(inners)
    upstream.send_next(0, 1)
    inners[0].send_next(1, 2, 3)
    inners[1].send_next(4, 5)
    assert subscriber.items == []  # queued, nothing requested
    subscriber.request(3)
    assert len(subscriber.items) == 3
    subscriber.request(10)
    assert sorted(subscriber.items) == [1, 2, 3, 4, 5]
    subscriber.assert_clean()


def test_flat_map_prefetches_per_inner_and_refills_at_75_percent() -> None:
    inners = [TestPublisher[int]()]
    upstream, subscriber = _flat_map_over(inners, prefetch=8)
    upstream.send_next(0)
    assert inners[0].requests == [8]
    inners[0].send_next(*range(8))
    subscriber.request(5)
    assert inners[0].requests == [8]  # 5 consumed < limit 6
    subscriber.request(1)
    assert inners[0].requests == [8, 6]
    assert inners[0].peak_outstanding <= 8
    subscriber.assert_clean()


def test_flat_map_keeps_at_most_max_concurrency_inners_and_replaces_finished_ones() -> None:
    inners = [TestPublisher[int]() for _ in range(5)]
    upstream, subscriber = _flat_map_over(inners, max_concurrency=2)
    assert upstream.requests == [2]
    upstream.send_next(0, 1)
    assert inners[0].subscriber is not None and inners[1].subscriber is not None
    subscriber.request(UNBOUNDED)
    inners[0].send_next(10)
    inners[0].send_complete()
    assert upstream.requests == [2, 1]  # one new inner for the finished one
    upstream.send_next(2)
    assert inners[2].subscriber is not None and inners[3].subscriber is None
    assert upstream.peak_outstanding <= 2
    for inner in (inners[1], inners[2]):
        inner.send_complete()
    upstream.send_complete()
    assert subscriber.completed and subscriber.items == [10]
    subscriber.assert_clean()


def test_flat_map_completes_only_after_every_inner_and_queue_is_done() -> None:
    inners = [TestPublisher[int]()]
    upstream, subscriber = _flat_map_over(inners)
    upstream.send_next(0)
    upstream.send_complete()
    inners[0].send_next(7)
    inners[0].send_complete()
    assert not subscriber.completed  # 7 still queued
    subscriber.request(1)
    assert subscriber.items == [7] and subscriber.completed


def test_flat_map_cancel_reaches_upstream_and_every_inner() -> None:
    inners = [TestPublisher[int]() for _ in range(3)]
    upstream, subscriber = _flat_map_over(inners)
    upstream.send_next(0, 1, 2)
    inners[1].send_next(5)
    subscriber.cancel()
    assert upstream.cancelled
    assert all(inner.cancelled for inner in inners)
    inners[2].send_next(6)  # late (Rule 2.8): dropped
    subscriber.request(5)  # Rule 3.6
    assert subscriber.items == [] and not subscriber.completed and not subscriber.errors


def test_flat_map_inner_error_cuts_ahead_and_cancels_everything() -> None:
    inners = [TestPublisher[int](strict=False) for _ in range(2)]
    upstream, subscriber = _flat_map_over(inners)
    upstream.send_next(0, 1)
    inners[0].send_next(1, 2)
    inners[1].send_error(Boom("inner"))
    assert [type(e) for e in subscriber.errors] == [Boom]
    assert subscriber.items == []  # queued items were dropped: the error cut ahead
    assert upstream.cancelled and inners[0].cancelled
    subscriber.assert_clean()


def test_flat_map_second_error_is_reported_not_delivered(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    inners = [TestPublisher[int](strict=False) for _ in range(2)]
    upstream, subscriber = _flat_map_over(inners)
    upstream.send_next(0, 1)
    inners[0].send_error(Boom("first"))
    inners[1].send_error(Boom("second"))
    assert [str(e) for e in subscriber.errors] == ["first"]
    assert [str(e) for e, _ in undeliverable] == ["second"]


def test_flat_map_upstream_error_cancels_active_inners() -> None:
    inners = [TestPublisher[int]()]
    upstream, subscriber = _flat_map_over(inners)
    upstream.send_next(0)
    upstream.send_error(Boom("upstream"))
    assert inners[0].cancelled
    assert [type(e) for e in subscriber.errors] == [Boom]


def test_flat_map_raising_mapper_cancels_upstream_and_inners() -> None:
    inner: TestPublisher[int] = TestPublisher()
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)

    def mapper(i: int) -> Publisher[int]:
        if i == 1:
            raise Boom("mapper")
        return inner

    upstream.flat_map(mapper).subscribe(subscriber)
    upstream.send_next(0, 1)
    assert upstream.cancelled and inner.cancelled
    assert [type(e) for e in subscriber.errors] == [Boom]


def test_flat_map_mapper_returning_none_is_a_type_error() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(3).flat_map(lambda _: None).subscribe(subscriber)  # type: ignore[arg-type,return-value]
    assert [type(e) for e in subscriber.errors] == [TypeError]


def test_flat_map_over_delivering_inner_fails_with_protocol_violation() -> None:
    inner: TestPublisher[int] = TestPublisher(strict=False)
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.flat_map(lambda _: inner, prefetch=2).subscribe(subscriber)
    upstream.send_next(0)
    inner.send_next(1, 2, 3)  # 3 > prefetch 2: Rule 1.1 broken by the inner
    assert [type(e) for e in subscriber.errors] == [ProtocolViolationError]
    assert inner.cancelled


def test_flat_map_request_from_on_next_does_not_recurse() -> None:
    depth = 0
    max_depth = 0

    class Deep(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            nonlocal depth, max_depth
            depth += 1
            max_depth = max(max_depth, depth)
            super().on_next(item)
            self.request(1)
            depth -= 1

    subscriber = Deep(1)
    Flow.range(2000).flat_map(lambda x: Flow.just(x, x), prefetch=1).subscribe(subscriber)
    assert len(subscriber.items) == 4000 and subscriber.completed
    assert max_depth == 1  # Rule 3.3
    subscriber.assert_clean()


# -- merge -------------------------------------------------------------------------------------


def test_merge_interleaves_as_items_arrive_and_prefetches_each_source() -> None:
    a: TestPublisher[int] = TestPublisher()
    b: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.merge(a, b, prefetch=4).subscribe(subscriber)
    assert a.requests == [4] and b.requests == [4]
    a.send_next(1)
    b.send_next(2)
    a.send_next(3)
    assert subscriber.items == [1, 2, 3]
    a.send_complete()
    assert not subscriber.completed
    b.send_complete()
    assert subscriber.completed


def test_merge_cancel_reaches_every_source() -> None:
    sources = [TestPublisher[int]() for _ in range(3)]
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.merge(*sources).subscribe(subscriber)
    subscriber.cancel()
    assert all(source.cancelled for source in sources)


# -- concat --------------------------------------------------------------------------------------


def test_concat_carries_outstanding_demand_to_the_next_source() -> None:
    a: TestPublisher[int] = TestPublisher()
    b: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    Flow.concat(a, b).subscribe(subscriber)
    assert b.subscriber is None  # not subscribed before a completes
    a.send_next(1, 2)
    a.send_complete()
    assert b.requests == [3]
    subscriber.request(4)
    assert b.requests == [3, 4]
    b.send_next(3, 4, 5)
    b.send_complete()
    assert subscriber.items == [1, 2, 3, 4, 5] and subscriber.completed
    subscriber.assert_clean()


def test_concat_of_100_000_empty_sources_does_not_recurse() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.concat(*[Flow.empty() for _ in range(100_000)], Flow.just(1)).subscribe(subscriber)
    assert not subscriber.completed  # the last source waits for demand
    subscriber.request(2)
    assert subscriber.items == [1] and subscriber.completed


def test_concat_of_many_synchronous_sources_one_at_a_time() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
    Flow.concat(*[Flow.just(i) for i in range(20_000)]).subscribe(subscriber)
    assert subscriber.items == list(range(20_000)) and subscriber.completed
    subscriber.assert_clean()


def test_scan_seed_waits_for_demand() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(1, 4).scan(lambda a, x: a + x, 0).subscribe(subscriber)
    assert subscriber.items == []
    subscriber.request(1)
    assert subscriber.items == [0]
    subscriber.request(10)
    assert subscriber.items == [0, 1, 3, 6] and subscriber.completed


def test_concat_error_stops_before_later_sources() -> None:
    later: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.concat(Flow.just(1), Flow.error(Boom("x")), later).subscribe(subscriber)
    assert subscriber.items == [1] and [type(e) for e in subscriber.errors] == [Boom]
    assert later.subscriber is None


def test_concat_cancel_reaches_current_source_and_skips_later_ones() -> None:
    current: TestPublisher[int] = TestPublisher()
    later: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.concat(current, later).subscribe(subscriber)
    subscriber.cancel()
    assert current.cancelled and later.subscriber is None


def test_concat_bad_request_is_signalled_by_the_current_source() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.concat(Flow.never(), Flow.just(1)).subscribe(subscriber)
    subscriber.request(-1)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert "Rule 3.9" in str(subscriber.errors[0])


def test_concat_bad_request_before_any_source_is_forwarded_to_the_first() -> None:
    class BadOnSubscribe(TestSubscriber[int]):
        def on_subscribe(self, subscription: object) -> None:
            super().on_subscribe(subscription)  # type: ignore[arg-type]
            self.request(0)

    subscriber = BadOnSubscribe()
    Flow.concat(Flow.just(1), Flow.just(2)).subscribe(subscriber)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert subscriber.items == []


# -- concat_map --------------------------------------------------------------------------------


def test_concat_map_runs_one_inner_at_a_time_and_carries_demand() -> None:
    inners = [TestPublisher[int]() for _ in range(3)]
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    upstream.concat_map(lambda i: inners[i], prefetch=2).subscribe(subscriber)
    assert upstream.requests == [2]
    upstream.send_next(0, 1)
    assert inners[0].requests == [5] and inners[1].subscriber is None
    inners[0].send_next(10, 11)
    inners[0].send_complete()
    assert inners[1].requests == [3]  # 5 requested - 2 delivered
    assert upstream.requests == [2, 2]  # refilled once 2 (75% of 2) were taken
    inners[1].send_next(12, 13, 14)
    inners[1].send_complete()
    upstream.send_complete()
    assert subscriber.completed and subscriber.items == [10, 11, 12, 13, 14]
    subscriber.assert_clean()


def test_concat_map_upstream_error_cancels_the_active_inner_immediately() -> None:
    inner: TestPublisher[int] = TestPublisher()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(3)
    upstream.concat_map(lambda _: inner).subscribe(subscriber)
    upstream.send_next(0)
    inner.send_next(1)
    upstream.send_error(Boom("upstream"))
    assert inner.cancelled
    assert subscriber.items == [1] and [type(e) for e in subscriber.errors] == [Boom]
    inner.send_next(2)  # late: dropped
    assert subscriber.items == [1]
    subscriber.assert_clean()


def test_concat_map_inner_error_cancels_upstream() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(3)
    upstream.concat_map(lambda _: Flow.error(Boom("inner"))).subscribe(subscriber)
    upstream.send_next(0)
    assert upstream.cancelled and [type(e) for e in subscriber.errors] == [Boom]


def test_concat_map_cancel_reaches_upstream_and_inner() -> None:
    inner: TestPublisher[int] = TestPublisher()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(3)
    upstream.concat_map(lambda _: inner).subscribe(subscriber)
    upstream.send_next(0)
    subscriber.cancel()
    assert upstream.cancelled and inner.cancelled


def test_concat_map_bad_request_while_an_inner_is_active() -> None:
    inner: TestPublisher[int] = TestPublisher()
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    upstream.concat_map(lambda _: inner).subscribe(subscriber)
    upstream.send_next(0)
    subscriber.request(0)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert inner.cancelled and upstream.cancelled


# -- zip ------------------------------------------------------------------------------------------


def test_zip_emits_tuples_only_against_demand_and_refills() -> None:
    a: TestPublisher[int] = TestPublisher()
    b: TestPublisher[str] = TestPublisher()
    subscriber: TestSubscriber[tuple[int, str]] = TestSubscriber()
    Flow.zip(a, b, prefetch=4).subscribe(subscriber)
    assert a.requests == [4] and b.requests == [4]
    a.send_next(1, 2, 3, 4)
    b.send_next("x", "y", "z")
    assert subscriber.items == []
    subscriber.request(2)
    assert subscriber.items == [(1, "x"), (2, "y")]
    subscriber.request(5)
    assert subscriber.items == [(1, "x"), (2, "y"), (3, "z")]
    assert a.requests == [4, 3] and b.requests == [4, 3]  # 3 = 75% of 4 consumed
    assert a.peak_outstanding <= 4 and b.peak_outstanding <= 4
    subscriber.assert_clean()


def test_zip_completes_when_a_source_is_done_and_empty_and_cancels_the_others() -> None:
    a: TestPublisher[int] = TestPublisher()
    b: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[tuple[int, int]] = TestSubscriber()
    Flow.zip(a, b).subscribe(subscriber)
    a.send_next(1)
    a.send_complete()
    b.send_next(10, 20)
    assert not subscriber.completed  # (1, 10) still possible
    subscriber.request(5)
    assert subscriber.items == [(1, 10)] and subscriber.completed
    assert b.cancelled


def test_zip_completes_without_demand_when_a_source_is_empty() -> None:
    b: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[tuple[int, int]] = TestSubscriber()
    Flow.zip(Flow.empty(), b).subscribe(subscriber)
    assert subscriber.completed
    assert b.subscriber is None or b.cancelled


def test_zip_error_cuts_ahead_and_cancels_the_others() -> None:
    a: TestPublisher[int] = TestPublisher()
    b: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[tuple[int, int]] = TestSubscriber()
    Flow.zip(a, b).subscribe(subscriber)
    a.send_next(1)
    b.send_next(2)
    b.send_error(Boom("b"))
    assert subscriber.items == [] and [type(e) for e in subscriber.errors] == [Boom]
    assert a.cancelled


def test_zip_cancel_reaches_every_source() -> None:
    sources = [TestPublisher[int]() for _ in range(3)]
    subscriber: TestSubscriber[tuple[int, ...]] = TestSubscriber(1)
    Flow.zip(*sources).subscribe(subscriber)
    subscriber.cancel()
    assert all(source.cancelled for source in sources)


# -- random demand schedules --------------------------------------------------------------------

schedules = st.lists(
    st.one_of(st.integers(min_value=1, max_value=9), st.just("cancel")), min_size=1, max_size=25
)

DATA = list(range(30))

RANDOM_CASES: dict[str, tuple[Callable[[], Flow[object]], list[object], bool]] = {
    # name: (flow factory, expected, ordered)
    "flat_map": (
        lambda: Flow.from_iterable(DATA).flat_map(
            lambda x: Flow.just(x, -x - 1), max_concurrency=3, prefetch=1
        ),
        [y for x in DATA for y in (x, -x - 1)],
        False,
    ),
    "merge": (
        lambda: Flow.merge(Flow.range(10), Flow.range(100, 110), prefetch=3),
        [*range(10), *range(100, 110)],
        False,
    ),
    "concat": (
        lambda: Flow.concat(Flow.range(5), Flow.empty(), Flow.range(5, 12), Flow.just(99)),
        [*range(12), 99],
        True,
    ),
    "concat_map": (
        lambda: Flow.range(10).concat_map(lambda x: Flow.range(x)),
        [y for x in range(10) for y in range(x)],
        True,
    ),
    "zip": (
        lambda: Flow.zip(Flow.range(20), Flow.range(100, 125), prefetch=3),
        [(i, 100 + i) for i in range(20)],
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(RANDOM_CASES))
@settings(max_examples=60, deadline=None)
@given(schedule=schedules)
def test_random_demand_schedules(name: str, schedule: list[int | str]) -> None:
    """Delivered <= requested at every instant; ordered output is a prefix; nothing lost."""
    factory, expected, ordered = RANDOM_CASES[name]
    subscriber: TestSubscriber[object] = TestSubscriber()
    factory().subscribe(subscriber)
    cancelled = False
    for step in schedule:
        if step == "cancel":
            subscriber.cancel()
            cancelled = True
            count = len(subscriber.items)
            terminated = subscriber.is_terminated
            continue
        assert isinstance(step, int)
        subscriber.request(step)
        assert len(subscriber.items) <= subscriber.requested
        if ordered:
            assert subscriber.items == expected[: len(subscriber.items)]
        else:
            assert set(subscriber.items) <= set(expected)
            assert len(set(subscriber.items)) == len(subscriber.items)
        if cancelled:
            assert len(subscriber.items) == count
            assert subscriber.is_terminated == terminated
    subscriber.assert_clean()
    if not cancelled and subscriber.requested > len(expected):
        # Synchronous sources: more demand than items means everything arrived and the
        # sources found their end (no loss, no stall).
        assert subscriber.completed
    if subscriber.completed:
        assert sorted(map(repr, subscriber.items)) == sorted(map(repr, expected))


# -- threads -----------------------------------------------------------------------------


class _ThreadedSubscription:
    """Emits ``start .. start+count-1`` from its own thread, honouring demand."""

    __slots__ = ("_cancelled", "_condition", "_error", "_requested", "cancel_seen")

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._requested = 0
        self._cancelled = False
        self._error: Exception | None = None
        self.cancel_seen = threading.Event()

    def request(self, n: int) -> None:
        error = check_request(n)
        with self._condition:
            if error is None:
                self._requested = add_cap(self._requested, n)
            elif self._error is None:
                self._error = error
            self._condition.notify()

    def cancel(self) -> None:
        with self._condition:
            self._cancelled = True
            self._condition.notify()
        self.cancel_seen.set()

    def run(self, subscriber: Subscriber[int], start: int, count: int) -> None:
        for value in range(start, start + count):
            with self._condition:
                while not (self._requested or self._cancelled or self._error):
                    self._condition.wait(1.0)
                if self._cancelled:
                    return
                if self._error is not None:
                    subscriber.on_error(self._error)
                    return
                if self._requested != UNBOUNDED:
                    self._requested -= 1
            subscriber.on_next(value)
        subscriber.on_complete()


class ThreadedRange(Flow[int]):
    """A publisher that signals from a thread of its own (records its subscriptions)."""

    __slots__ = ("_count", "_start", "subscriptions", "threads")

    def __init__(self, start: int, count: int) -> None:
        self._start = start
        self._count = count
        self.subscriptions: list[_ThreadedSubscription] = []
        self.threads: list[threading.Thread] = []

    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        subscription = _ThreadedSubscription()
        self.subscriptions.append(subscription)
        subscriber.on_subscribe(subscription)
        thread = threading.Thread(
            target=subscription.run, args=(subscriber, self._start, self._count), daemon=True
        )
        self.threads.append(thread)
        thread.start()


def _hammer(subscriber: TestSubscriber[int], stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set() and not subscriber.is_terminated:
        subscriber.request(rng.randint(1, 5))
        # Never over 1 ms: keeps the test fast while letting inner threads interleave.
        stop.wait(rng.random() / 1000)


@pytest.mark.parametrize("operator", ["flat_map", "merge", "concat_map"])
def test_threaded_inners_with_requests_from_other_threads(operator: str) -> None:
    """Rule 1.3 (no overlapping signals, detected by TestSubscriber) and no over-delivery."""
    publishers = [ThreadedRange(i * 1000, 150) for i in range(6)]
    flow: Flow[int]
    if operator == "flat_map":
        flow = Flow.range(6).flat_map(lambda i: publishers[i], max_concurrency=3, prefetch=4)
    elif operator == "merge":
        flow = Flow.merge(*publishers, prefetch=2)
    else:
        flow = Flow.range(6).concat_map(lambda i: publishers[i])
    subscriber: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(subscriber)
    stop = threading.Event()
    hammers = [threading.Thread(target=_hammer, args=(subscriber, stop, seed)) for seed in range(3)]
    for thread in hammers:
        thread.start()
    assert subscriber.await_terminal(10), subscriber
    stop.set()
    for thread in hammers:
        thread.join()
    subscriber.assert_clean()
    assert subscriber.completed and not subscriber.errors
    assert sorted(subscriber.items) == sorted(
        v for i in range(6) for v in range(i * 1000, i * 1000 + 150)
    )
    for i in range(6):  # each inner's own order is kept
        mine = [v for v in subscriber.items if v // 1000 == i]
        assert mine == sorted(mine)
    if operator == "concat_map":
        assert subscriber.items == sorted(subscriber.items)


@pytest.mark.parametrize("operator", ["flat_map", "concat_map"])
def test_threaded_cancel_reaches_every_active_inner(operator: str) -> None:
    publishers = [ThreadedRange(i * 1000, 10_000) for i in range(4)]
    flow: Flow[int]
    if operator == "flat_map":
        flow = Flow.range(4).flat_map(lambda i: publishers[i], prefetch=4)
    else:
        flow = Flow.range(4).concat_map(lambda i: publishers[i])
    subscriber: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(subscriber)
    stop = threading.Event()
    hammer = threading.Thread(target=_hammer, args=(subscriber, stop, 7))
    hammer.start()
    while len(subscriber.items) < 50:
        stop.wait(0.001)
    canceller = threading.Thread(target=subscriber.cancel)
    canceller.start()
    canceller.join()
    stop.set()
    hammer.join()
    subscribed = [s for p in publishers for s in p.subscriptions]
    assert subscribed
    assert all(s.cancel_seen.wait(2) for s in subscribed)
    for publisher in publishers:
        for thread in publisher.threads:
            thread.join(2)
    count = len(subscriber.items)
    assert count <= subscriber.requested
    assert not subscriber.completed and not subscriber.errors
    subscriber.assert_clean()


class _NestingSubscriber(TestSubscriber[int]):
    """Records a terminal signal that arrives while on_next is still running (Rule 1.3)."""

    __slots__ = ("action", "inside", "nested")

    def __init__(self, action: Callable[[_NestingSubscriber, int], None]) -> None:
        super().__init__(UNBOUNDED)
        self.action = action
        self.inside = False
        self.nested: list[str] = []

    def on_next(self, item: int) -> None:
        self.inside = True
        super().on_next(item)
        self.action(self, item)
        self.inside = False

    def on_error(self, error: Exception) -> None:
        if self.inside:
            self.nested.append(f"on_error({error!r})")
        super().on_error(error)


def test_concat_map_signals_a_bad_request_from_on_next_after_it_returns() -> None:
    def bad_at_2(subscriber: _NestingSubscriber, item: int) -> None:
        if item == 2:
            subscriber.request(0)

    subscriber = _NestingSubscriber(bad_at_2)
    Flow.just(1).concat_map(lambda _: Flow.range(10)).subscribe(subscriber)
    assert subscriber.items == [0, 1, 2]
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert subscriber.nested == []


def test_concat_map_signals_an_upstream_error_raised_during_on_next_after_it_returns() -> None:
    upstream: TestPublisher[int] = TestPublisher()

    def fail_upstream_at_1(subscriber: _NestingSubscriber, item: int) -> None:
        if item == 1:
            upstream.send_error(Boom("upstream"))

    subscriber = _NestingSubscriber(fail_upstream_at_1)
    upstream.concat_map(lambda _: Flow.range(10)).subscribe(subscriber)
    upstream.send_next(0)
    assert subscriber.items == [0, 1]
    assert [type(e) for e in subscriber.errors] == [Boom]
    assert subscriber.nested == []


def test_concat_error_does_not_cancel_the_terminated_source() -> None:
    source: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.concat(source, Flow.just(1)).subscribe(subscriber)
    source.send_error(Boom("x"))
    assert [type(e) for e in subscriber.errors] == [Boom]
    assert not source.cancelled


# -- known inners: Flow.just / Flow.empty / a tuple / a range are not subscribed -------------

# The same matrix over inners of every kind: subscribed ones (a list is not a
# known inner), known ones at full concurrency (their FIFO keeps the order),
# and a mix of known, empty and subscribed inners.
INNER_KIND_CASES: list[OperatorCase] = [
    OperatorCase(
        "flat_map_subscribed_inners",
        lambda f: f.flat_map(lambda x: Flow.from_iterable([x, x + 1000]), max_concurrency=1),
        _pairs,
    ),
    OperatorCase(
        "flat_map_known_inners_full_concurrency",
        lambda f: f.flat_map(lambda x: Flow.just(x, x + 1000)),
        _pairs,
    ),
    OperatorCase(
        "flat_map_mixed_inners",
        lambda f: f.flat_map(
            lambda x: (
                Flow.empty()
                if x % 3 == 0
                else Flow.range(x, x + 1)
                if x % 3 == 1
                else Flow.from_iterable([x])
            ),
            max_concurrency=1,
        ),
        lambda xs: [x for x in xs if x % 3],
    ),
    OperatorCase(
        "concat_map_subscribed_inners",
        lambda f: f.concat_map(lambda x: Flow.from_iterable([x, x + 1000])),
        _pairs,
    ),
    OperatorCase(
        "concat_map_known_inners_prefetch_1",
        lambda f: f.concat_map(lambda x: Flow.just(x, x + 1000), prefetch=1),
        _pairs,
    ),
]


@pytest.mark.parametrize(
    ("case", "scenario"),
    [
        pytest.param(case, scenario, id=f"{case.name}-{name}")
        for case in INNER_KIND_CASES
        for name, scenario in SCENARIOS.items()
        if name != "raising_callback"
    ],
)
def test_scenario_over_every_kind_of_inner(
    case: OperatorCase, scenario: Callable[[OperatorCase], TestSubscriber[object]]
) -> None:
    scenario(case).assert_clean()


def test_flat_map_known_inner_with_none_fails_after_its_items_as_when_subscribed() -> None:
    from reactive_bp.sources._iterable import NoneItemError

    subscriber: TestSubscriber[int | None] = TestSubscriber(UNBOUNDED)
    Flow.just(1).flat_map(lambda x: Flow.from_iterable((x, None))).subscribe(subscriber)
    assert subscriber.items == [1]
    assert len(subscriber.errors) == 1 and isinstance(subscriber.errors[0], NoneItemError)
    subscriber.assert_clean()


def test_flat_map_known_inner_is_delivered_in_parts_against_demand() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.range(2).flat_map(lambda x: Flow.just(x, x + 10, x + 20)).subscribe(subscriber)
    assert subscriber.items == [0]
    subscriber.request(2)
    assert subscriber.items == [0, 10, 20]
    assert not subscriber.completed
    subscriber.request(10)
    assert subscriber.items == [0, 10, 20, 1, 11, 21]
    assert subscriber.completed
    subscriber.assert_clean()


def test_flat_map_known_inners_hold_their_slot_until_delivered() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.flat_map(Flow.just, max_concurrency=4).subscribe(subscriber)
    upstream.emit_all_requested()
    assert upstream.total_requested == 4  # nothing delivered: no slot is free
    subscriber.request(2)
    assert subscriber.items == [0, 1]
    # Upstream had nothing outstanding, so the two free slots go back at once.
    assert upstream.total_requested == 6
    assert upstream.peak_outstanding <= 4
    upstream.emit_all_requested(4)
    subscriber.request(UNBOUNDED)
    assert subscriber.items == [0, 1, 2, 3, 4, 5]
    upstream.send_complete()
    assert subscriber.completed
    subscriber.assert_clean()


def test_flat_map_empty_inners_give_their_slot_back_at_once() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.flat_map(lambda _: Flow.empty(), max_concurrency=2).subscribe(subscriber)
    # The strict publisher fails the test if a slot is not given back in time.
    upstream.send_next(0, 1, 2, 3, 4, 5)
    assert upstream.peak_outstanding <= 2
    upstream.send_complete()
    assert subscriber.completed and subscriber.items == []
    subscriber.assert_clean()


def test_flat_map_batched_slots_never_starve_upstream_behind_a_long_inner() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(10).flat_map(
        lambda x: Flow.never() if x == 0 else Flow.just(x), max_concurrency=2
    ).subscribe(subscriber)
    assert subscriber.items == list(range(1, 10))
    assert not subscriber.is_terminated
    subscriber.cancel()
    subscriber.assert_clean()


def test_flat_map_cancel_from_on_next_stops_direct_emission() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(100, cancel_after=5)
    Flow.range(50).flat_map(Flow.just).subscribe(subscriber)
    assert subscriber.items == [0, 1, 2, 3, 4]
    assert not subscriber.is_terminated
    subscriber.assert_clean()


def test_merge_cancel_from_on_next_stops_direct_emission() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(100, cancel_after=5)
    Flow.merge(Flow.range(50), Flow.range(100, 150)).subscribe(subscriber)
    assert len(subscriber.items) == 5
    assert not subscriber.is_terminated
    subscriber.assert_clean()


def test_zip_pairs_directly_under_one_by_one_demand() -> None:
    subscriber: TestSubscriber[tuple[int, int]] = TestSubscriber(1, request_on_next=1)
    Flow.zip(Flow.range(100), Flow.range(100, 250), prefetch=3).subscribe(subscriber)
    assert subscriber.items == [(i, 100 + i) for i in range(100)]
    assert subscriber.completed
    subscriber.assert_clean()


def test_zip_queues_quietly_until_every_source_has_an_item() -> None:
    first: TestPublisher[int] = TestPublisher()
    second: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[tuple[int, int]] = TestSubscriber(UNBOUNDED)
    Flow.zip(first, second, prefetch=4).subscribe(subscriber)
    first.send_next(1, 2, 3)
    assert subscriber.items == []
    second.send_next(10)
    assert subscriber.items == [(1, 10)]
    second.send_next(20, 30, 40)
    assert subscriber.items == [(1, 10), (2, 20), (3, 30)]
    first.send_complete()
    assert subscriber.completed
    assert second.cancelled
    subscriber.assert_clean()


def test_concat_map_known_inner_larger_than_demand_waits_for_demand() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    Flow.range(2).concat_map(lambda x: Flow.just(x, x + 10, x + 20)).subscribe(subscriber)
    assert subscriber.items == [0]
    subscriber.request(4)
    assert subscriber.items == [0, 10, 20, 1, 11]
    subscriber.request(1)
    assert subscriber.items == [0, 10, 20, 1, 11, 21]
    subscriber.request(1)  # a subscribed inner learns it is exhausted on the next request
    assert subscriber.completed
    subscriber.assert_clean()


@pytest.mark.parametrize(
    "build",
    [
        lambda f: f.flat_map(Flow.just),
        lambda f: f.flat_map(lambda x: Flow.just(x) if x % 2 else Flow.from_iterable([x])),
        lambda f: f.concat_map(Flow.just),
    ],
    ids=["flat_map_known", "flat_map_mixed", "concat_map_known"],
)
def test_known_inners_with_demand_from_another_thread_keep_every_item(
    build: Callable[[Flow[int]], Flow[int]],
) -> None:
    n = 5000
    subscriber: TestSubscriber[int] = TestSubscriber()
    build(Flow.range(n)).subscribe(subscriber)
    rng = random.Random(7)

    def requester() -> None:
        for _ in range(n):
            subscriber.request(rng.randint(1, 8))
            if subscriber.is_terminated:
                return

    threads = [threading.Thread(target=requester) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    subscriber.request(UNBOUNDED)
    assert subscriber.await_terminal()
    assert sorted(subscriber.items) == list(range(n))
    subscriber.assert_clean()


def test_flat_map_known_inners_take_turns_with_a_subscribed_inner() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscribed: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.flat_map(
        lambda i: subscribed if i == 0 else Flow.just(i * 10, i * 10 + 1), prefetch=4
    ).subscribe(subscriber)
    upstream.send_next(0)
    subscribed.send_next(100, 101, 102)
    upstream.send_next(1, 2)
    for _ in range(4):
        subscriber.request(1)  # one pass per request, each starting one turn later
    assert 100 in subscriber.items and 10 in subscriber.items
    subscriber.request(UNBOUNDED)
    assert sorted(subscriber.items) == [10, 11, 20, 21, 100, 101, 102]
    subscribed.send_complete()
    upstream.send_complete()
    assert subscriber.completed
    subscriber.assert_clean()


def test_flat_map_a_range_inner_larger_than_prefetch_delivers_everything() -> None:
    # Longer than prefetch, it is not taken as known values (it could hold
    # its turn for long): it is subscribed, prefetched and refilled.
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.just(0).flat_map(lambda _: Flow.range(100), prefetch=8).subscribe(subscriber)
    assert subscriber.items == list(range(100))
    assert subscriber.completed
    subscriber.assert_clean()


def test_zip_completes_when_a_finished_source_s_last_head_is_paired_directly() -> None:
    # The shorter source completes while its items wait; its last head is
    # taken by a direct pairing, which must then complete the stream.
    for n in (1, 3, 4, 5, 20):
        subscriber: TestSubscriber[tuple[int, int]] = TestSubscriber(UNBOUNDED)
        Flow.zip(Flow.from_iterable(list(range(n))), Flow.range(100, 10_000), prefetch=4).subscribe(
            subscriber
        )
        assert subscriber.items == [(i, 100 + i) for i in range(n)]
        assert subscriber.completed
        subscriber.assert_clean()


class _RaisingAfterRace:
    """Records signals; its first on_next lets another thread end the stream, then raises."""

    def __init__(self, end: Callable[[], None]) -> None:
        self.signals: list[object] = []
        self._end = end
        self.subscription: object = None

    def on_subscribe(self, subscription: object) -> None:
        self.subscription = subscription
        subscription.request(5)  # type: ignore[attr-defined]

    def on_next(self, item: object) -> None:
        self.signals.append(item)
        thread = threading.Thread(target=self._end)  # ends the stream while we hold the gate
        thread.start()
        thread.join()
        raise RuntimeError("subscriber on_next raised")

    def on_error(self, error: Exception) -> None:
        self.signals.append(error)

    def on_complete(self) -> None:
        self.signals.append("complete")


@pytest.mark.parametrize("ending", ["upstream error", "bad request"])
def test_concat_map_delivers_an_ending_recorded_while_a_raising_on_next_held_the_gate(
    ending: str, undeliverable: list[tuple[BaseException, str]]
) -> None:
    """Regression: the recorded ending was never delivered and the stream hung."""
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    failure = Boom("upstream failed")

    def end() -> None:
        if ending == "upstream error":
            upstream.send_error(failure)
        else:
            subscriber.subscription.request(0)  # type: ignore[attr-defined]

    subscriber = _RaisingAfterRace(end)
    upstream.concat_map(Flow.just).subscribe(subscriber)
    upstream.send_next(1)
    assert len(subscriber.signals) == 2, subscriber.signals
    last = subscriber.signals[1]
    if ending == "upstream error":
        assert last is failure
    else:
        assert isinstance(last, NonPositiveRequestError)
    assert [type(error) for error, _ in undeliverable] == [RuntimeError]


def test_concat_map_bad_request_after_completion_is_a_no_op(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """Rule 3.6: a request(0) after the terminal signal is neither signalled nor reported."""
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(0, 2).concat_map(Flow.just).subscribe(subscriber)
    subscriber.request(10)
    assert subscriber.completed
    subscriber.request(0)
    assert subscriber.items == [0, 1] and not subscriber.errors
    assert undeliverable == []


# -- the instance forms, and the static factories refusing an instance --------------------------


def test_the_instance_forms_include_the_flow_they_are_called_on() -> None:
    assert sorted(Flow.range(3).merge_with(Flow.range(10, 12)).to_list()) == [0, 1, 2, 10, 11]
    assert Flow.range(2).concat_with(Flow.just(5), Flow.just(6)).to_list() == [0, 1, 5, 6]
    assert Flow.just("a", "b", "c").zip_with(Flow.range(2)).to_list() == [("a", 0), ("b", 1)]


@pytest.mark.parametrize("name", ["merge", "concat", "zip"])
def test_a_static_combinator_called_through_an_instance_refuses_instead_of_dropping_it(
    name: str,
) -> None:
    """``a.merge(b)`` used to be ``Flow.merge(b)``: ``a`` silently left out."""
    a, b = Flow.range(2), Flow.range(10, 12)
    with pytest.raises(TypeError, match=rf"{name}_with"):
        getattr(a, name)(b)
    assert getattr(Flow, name)(a, b).to_list()  # the class form still works, with both
