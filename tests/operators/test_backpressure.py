"""on_backpressure_*: what each strategy keeps and loses, ttl, water marks, and the invariants.

Invariants shown for every operator under random schedules (Hypothesis):
produced == delivered + dropped + depth after every step; depth never above
the declared capacity; delivered items in upstream order; delivered <=
requested; upstream asked for exactly what the operator declares.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    BackpressureMeter,
    BufferOverflowError,
    BufferStats,
    Emitter,
    Flow,
    OverflowStrategy,
    WaterMarks,
)
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _drive(
    apply: Callable[[Flow[int]], Flow[int]], sent: int, request: int = 0
) -> tuple[TestSubscriber[int], TestPublisher[int]]:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(request)
    apply(upstream).subscribe(subscriber)
    upstream.send_next(*range(sent))
    return subscriber, upstream


# -- what each strategy keeps -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overflow", "kept", "lost"),
    [
        (OverflowStrategy.DROP_NEWEST, [0, 1, 2], [3, 4, 5, 6]),
        (OverflowStrategy.DROP_OLDEST, [4, 5, 6], [0, 1, 2, 3]),
        (OverflowStrategy.LATEST, [0, 1, 6], [2, 3, 4, 5]),
    ],
)
def test_dropping_buffer_keeps_and_reports_the_item_that_left(
    overflow: OverflowStrategy, kept: list[int], lost: list[int]
) -> None:
    dropped: list[int] = []
    meter = BackpressureMeter("t")
    subscriber, upstream = _drive(
        lambda f: f.on_backpressure_buffer(3, overflow, dropped.append, meter=meter), 7
    )
    assert upstream.requests == [UNBOUNDED]
    assert subscriber.items == [] and dropped == lost
    upstream.send_complete()
    subscriber.request(10)
    assert subscriber.items == kept and subscriber.completed
    stats = meter.stats
    assert stats is not None
    assert (stats.produced, stats.delivered, stats.dropped, stats.depth) == (7, 3, 4, 0)
    assert stats.peak_depth == 3


def test_error_overflow_arrives_after_the_buffered_items_and_cancels_upstream() -> None:
    dropped: list[int] = []
    subscriber, upstream = _drive(
        lambda f: f.on_backpressure_buffer(2, on_dropped=dropped.append), 3
    )
    assert upstream.cancelled and dropped == [2]
    assert not subscriber.errors  # the buffered items come first (Reactor's behaviour)
    subscriber.request(1)
    assert subscriber.items == [0] and not subscriber.errors
    subscriber.request(1)
    assert subscriber.items == [0, 1]
    assert [type(e) for e in subscriber.errors] == [BufferOverflowError]


def test_error_ahead_cuts_in_front_of_the_buffered_items() -> None:
    dropped: list[int] = []
    subscriber, _upstream = _drive(
        lambda f: f.on_backpressure_buffer(2, on_dropped=dropped.append, error_ahead=True), 3
    )
    assert [type(e) for e in subscriber.errors] == [BufferOverflowError]
    assert subscriber.items == [] and sorted(dropped) == [0, 1, 2]


def test_upstream_error_follows_the_buffer_unless_error_ahead() -> None:
    subscriber, upstream = _drive(lambda f: f.on_backpressure_buffer(5), 2)
    upstream.send_error(KeyError("late"))
    assert not subscriber.errors
    subscriber.request(5)
    assert subscriber.items == [0, 1] and isinstance(subscriber.errors[0], KeyError)


def test_capacity_is_required_and_unbounded_has_its_own_name() -> None:
    with pytest.raises(TypeError):
        Flow.range(3).on_backpressure_buffer()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="on_backpressure_buffer_unbounded"):
        Flow.range(3).on_backpressure_buffer(4, OverflowStrategy.UNBOUNDED_BUFFER)
    with pytest.raises(ValueError, match="limit_rate"):
        Flow.range(3).on_backpressure_buffer(4, OverflowStrategy.WAIT)
    with pytest.raises(ValueError, match="capacity"):
        Flow.range(3).on_backpressure_buffer(0)
    with pytest.raises(ValueError, match="ttl"):
        Flow.range(3).on_backpressure_buffer(4, ttl=0)
    doc = Flow.on_backpressure_buffer_unbounded.__doc__ or ""
    assert "Warning" in doc and "memory" in doc


def test_unbounded_buffer_loses_nothing() -> None:
    subscriber, upstream = _drive(lambda f: f.on_backpressure_buffer_unbounded(), 1000)
    upstream.send_complete()
    subscriber.request(UNBOUNDED)
    assert subscriber.items == list(range(1000)) and subscriber.completed


def test_raising_on_dropped_fails_the_stream_and_cancels_upstream() -> None:
    def explode(item: int) -> None:
        raise RuntimeError(f"cannot drop {item}")

    subscriber, upstream = _drive(
        lambda f: f.on_backpressure_buffer(1, OverflowStrategy.DROP_NEWEST, explode), 3
    )
    assert upstream.cancelled
    assert [str(e) for e in subscriber.errors] == ["cannot drop 1"]


# -- drop / latest / error / reduce ---------------------------------------------------------


def test_drop_delivers_only_within_demand() -> None:
    dropped: list[int] = []
    subscriber, upstream = _drive(lambda f: f.on_backpressure_drop(dropped.append), 3, request=1)
    subscriber.request(2)
    upstream.send_next(10, 11, 12)
    assert subscriber.items == [0, 10, 11] and dropped == [1, 2, 12]


def test_latest_keeps_the_newest_waiting_item() -> None:
    dropped: list[int] = []
    subscriber, _upstream = _drive(lambda f: f.on_backpressure_latest(dropped.append), 5, request=1)
    assert subscriber.items == [0] and dropped == [1, 2, 3]
    subscriber.request(5)
    assert subscriber.items == [0, 4]


def test_error_strategy_fails_on_the_first_unrequested_item() -> None:
    subscriber, upstream = _drive(lambda f: f.on_backpressure_error(), 3, request=2)
    assert subscriber.items == [0, 1] and upstream.cancelled
    assert [type(e) for e in subscriber.errors] == [BufferOverflowError]


def test_reduce_folds_while_downstream_is_not_asking() -> None:
    meter = BackpressureMeter("r")
    subscriber, upstream = _drive(
        lambda f: f.on_backpressure_reduce(lambda a, b: a + b, meter=meter), 4, request=1
    )
    assert subscriber.items == [0]
    subscriber.request(1)
    assert subscriber.items == [0, 1 + 2 + 3]
    upstream.send_next(7)
    subscriber.request(1)
    upstream.send_complete()
    assert subscriber.items == [0, 6, 7] and subscriber.completed
    stats = meter.stats
    assert stats is not None and stats.dropped_by_reason == {"reduced": 2}


def test_reduce_with_a_seed_factory_changes_the_type() -> None:
    subscriber: TestSubscriber[list[int]] = TestSubscriber()
    upstream: TestPublisher[int] = TestPublisher()
    upstream.on_backpressure_reduce(lambda acc, x: [*acc, x], list).subscribe(subscriber)
    upstream.send_next(1, 2, 3)
    subscriber.request(1)
    upstream.send_next(4)
    subscriber.request(1)
    assert subscriber.items == [[1, 2, 3], [4]]
    with pytest.raises(TypeError, match="factory"):
        Flow.range(3).on_backpressure_reduce(lambda a, x: a, [])  # type: ignore[call-overload]


def test_raising_fold_fails_the_stream() -> None:
    def fold(a: int, b: int) -> int:
        raise ArithmeticError("no")

    subscriber, upstream = _drive(lambda f: f.on_backpressure_reduce(fold), 3)
    assert upstream.cancelled and isinstance(subscriber.errors[0], ArithmeticError)


# -- ttl (virtual time) -----------------------------------------------------------------------


def test_ttl_drops_items_that_waited_too_long() -> None:
    vts = VirtualTimeScheduler()
    dropped: list[int] = []
    meter = BackpressureMeter("ttl")
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.on_backpressure_buffer(
        10, on_dropped=dropped.append, ttl=2.0, scheduler=vts, meter=meter
    ).subscribe(subscriber)
    upstream.send_next(0, 1)
    vts.advance_by(1.0)
    upstream.send_next(2)
    vts.advance_by(0.999)
    assert dropped == []
    vts.advance_by(0.001)  # 0 and 1 are now 2 s old
    assert dropped == [0, 1]
    stats = meter.stats
    assert stats is not None and stats.dropped_by_reason == {"ttl": 2} and stats.depth == 1
    subscriber.request(5)
    assert subscriber.items == [2]
    vts.advance_by(10)
    assert dropped == [0, 1] and vts.pending == 0


def test_ttl_never_delivers_an_expired_item_even_before_the_sweep() -> None:
    now = [0.0]

    class Clock(VirtualTimeScheduler):
        def now(self) -> float:
            return now[0]

    clock = Clock()
    subscriber, upstream = _drive(
        lambda f: f.on_backpressure_buffer(10, ttl=1.0, scheduler=clock), 3
    )
    now[0] = 5.0  # the clock moved; the sweep has not run
    subscriber.request(5)
    assert subscriber.items == []
    upstream.send_next(9)
    assert subscriber.items == [9]


def test_ttl_completion_waits_for_expiry_or_delivery() -> None:
    vts = VirtualTimeScheduler()
    subscriber, upstream = _drive(lambda f: f.on_backpressure_buffer(4, ttl=1.0, scheduler=vts), 2)
    upstream.send_complete()
    assert not subscriber.completed
    vts.advance_by(1.0)
    assert subscriber.completed and subscriber.items == []


# -- water marks --------------------------------------------------------------------------------


def test_water_marks_signal_once_per_spell() -> None:
    transitions: list[bool] = []
    marks = WaterMarks(high=4, low=1, on_change=transitions.append)
    subscriber, upstream = _drive(lambda f: f.on_backpressure_buffer(8, water_marks=marks), 3)
    assert transitions == [] and not marks.pressured
    upstream.send_next(3, 4, 5)
    assert transitions == [True] and marks.pressured
    subscriber.request(3)  # depth 6 -> 3: still above the low mark
    assert transitions == [True]
    subscriber.request(2)  # depth 1
    assert transitions == [True, False] and not marks.pressured
    upstream.send_next(6)
    assert transitions == [True, False]
    subscriber.cancel()
    assert marks.depth == 0


def test_water_marks_validate_and_report_raising_listeners(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    with pytest.raises(ValueError):
        WaterMarks(high=2, low=2)
    marks = WaterMarks(high=1, low=0)

    def bad(state: bool) -> None:
        raise RuntimeError("listener")

    marks.add_listener(bad)
    marks.observe(1)
    assert marks.pressured and isinstance(undeliverable[0][0], RuntimeError)
    marks.remove_listener(bad)
    marks.observe(0)
    assert len(undeliverable) == 1


# -- invariants under random schedules ------------------------------------------------------------

BUFFER_OPS: dict[str, tuple[Callable[[Flow[int], BackpressureMeter], Flow[int]], int]] = {
    "buffer_error": (lambda f, m: f.on_backpressure_buffer(4, meter=m), 4),
    "buffer_error_ahead": (lambda f, m: f.on_backpressure_buffer(4, error_ahead=True, meter=m), 4),
    "buffer_drop_newest": (
        lambda f, m: f.on_backpressure_buffer(4, OverflowStrategy.DROP_NEWEST, meter=m),
        4,
    ),
    "buffer_drop_oldest": (
        lambda f, m: f.on_backpressure_buffer(3, OverflowStrategy.DROP_OLDEST, meter=m),
        3,
    ),
    "buffer_latest": (
        lambda f, m: f.on_backpressure_buffer(2, OverflowStrategy.LATEST, meter=m),
        2,
    ),
    "drop": (lambda f, m: f.on_backpressure_drop(meter=m), 0),
    "latest": (lambda f, m: f.on_backpressure_latest(meter=m), 1),
    "error": (lambda f, m: f.on_backpressure_error(meter=m), 0),
    "reduce_latest": (lambda f, m: f.on_backpressure_reduce(lambda a, b: b, meter=m), 1),
}

actions = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 6)),
        st.tuples(st.just("request"), st.integers(1, 5)),
        st.tuples(st.sampled_from(["complete", "cancel"]), st.just(0)),
    ),
    max_size=40,
)


@pytest.mark.parametrize("name", sorted(BUFFER_OPS))
@settings(max_examples=60, deadline=None)
@given(steps=actions)
def test_accounting_order_and_bounds_hold_at_every_step(
    name: str, steps: list[tuple[str, int]]
) -> None:
    apply, capacity = BUFFER_OPS[name]
    meter = BackpressureMeter(name)
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[int] = TestSubscriber()
    apply(upstream, meter).subscribe(subscriber)
    assert upstream.requests == [UNBOUNDED]  # declared: unbounded-in
    stats = meter.stats
    assert stats is not None
    sent = 0
    for action, n in steps:
        if action == "send" and not upstream.cancelled:
            upstream.send_next(*range(sent, sent + n))
            sent += n
        elif action == "request":
            subscriber.request(n)
        elif action == "complete" and not upstream.cancelled:
            upstream.send_complete()
            break
        elif action == "cancel":
            subscriber.cancel()
        assert stats.produced == stats.delivered + stats.dropped + stats.depth
        assert stats.depth <= capacity + 1 if name == "error" else stats.depth <= capacity
        assert stats.delivered == len(subscriber.items) <= subscriber.requested
        assert subscriber.items == sorted(set(subscriber.items))  # upstream order, no repeats
        subscriber.assert_clean()
    assert stats.peak_depth <= max(capacity, 1)


# -- real time -----------------------------------------------------------------------------------


def test_real_time_smoke_thread_producer_slow_consumer() -> None:
    """A thread producer against a slow consumer: bounded, accounted, finishes."""
    meter = BackpressureMeter("smoke")

    def producer(emitter: Emitter[int]) -> None:
        def run() -> None:
            for i in range(3000):
                emitter.emit(i)
            emitter.complete()

        threading.Thread(target=run).start()

    flow = Flow.create(producer, capacity=16, overflow=OverflowStrategy.WAIT)
    items = list(
        flow.on_backpressure_buffer(
            32, OverflowStrategy.DROP_OLDEST, ttl=0.5, meter=meter
        ).blocking_iter(prefetch=8, timeout=10)
    )
    stats = meter.stats
    assert stats is not None
    assert items == sorted(items) and 0 < len(items) <= 3000
    assert stats.produced == 3000 == stats.delivered + stats.dropped
    assert stats.peak_depth <= 32


# -- saturation: the paths benchmarks/strategies.py measures ---------------------------------


def _expected_at_saturation(kept: Callable[[list[int], int], list[int]], n: int) -> list[int]:
    """What a reference model delivers when one item is granted per two produced."""
    held: list[int] = []
    delivered: list[int] = []
    demand = 0
    for i in range(0, n, 2):
        for item in (i, i + 1):
            if demand and not held:
                demand -= 1
                delivered.append(item)
            else:
                held = kept(held, item)
            if item == i:
                demand += 1
                while demand and held:
                    demand -= 1
                    delivered.append(held.pop(0))
    return delivered


@pytest.mark.parametrize(
    ("apply", "kept"),
    [
        (
            lambda f, m: f.on_backpressure_buffer(4, OverflowStrategy.DROP_OLDEST, meter=m),
            lambda held, item: [*held, item][-4:],
        ),
        (lambda f, m: f.on_backpressure_latest(meter=m), lambda held, item: [item]),
        (lambda f, m: f.on_backpressure_drop(meter=m), lambda held, item: held),
    ],
    ids=["buffer_drop_oldest", "latest", "drop"],
)
def test_saturated_strategies_deliver_in_order_and_count_every_item(
    apply: Callable[[Flow[int], BackpressureMeter], Flow[int]],
    kept: Callable[[list[int], int], list[int]],
) -> None:
    # Direct hand-off when there is demand and nothing queued, and no pass when
    # there is nothing to deliver, must not change what is delivered or counted.
    meter = BackpressureMeter("saturated")
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    apply(upstream, meter).subscribe(subscriber)
    n = 200
    for i in range(0, n, 2):
        upstream.send_next(i)
        subscriber.request(1)
        upstream.send_next(i + 1)
    assert subscriber.items == _expected_at_saturation(kept, n)
    subscriber.assert_clean()
    stats = meter.stats
    assert stats is not None
    assert stats.produced == n
    assert stats.delivered == len(subscriber.items)
    assert stats.produced == stats.delivered + stats.dropped + stats.depth


_HOLDING: list[tuple[str, Callable[[Flow[int]], Flow[int]]]] = [
    ("on_backpressure_buffer", lambda f: f.on_backpressure_buffer(8)),
    ("on_backpressure_drop", lambda f: f.on_backpressure_drop()),
    ("on_backpressure_latest", lambda f: f.on_backpressure_latest()),
    ("sample_adaptive", lambda f: f.sample_adaptive(1.0, 0.1, 0.5, 8, random.Random(0))),
]


@pytest.mark.parametrize(("name", "apply"), _HOLDING, ids=[name for name, _ in _HOLDING])
def test_cancel_releases_the_subscriber(name: str, apply: Callable[[Flow[int]], Flow[int]]) -> None:
    """Rule 3.13: after cancel, a held subscription no longer keeps the subscriber alive."""
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    apply(upstream).subscribe(subscriber)
    upstream.send_next(1)
    subscription = subscriber.subscription
    subscriber.cancel()
    gone = weakref.ref(subscriber)
    del subscriber
    gc.collect()
    assert gone() is None, f"{name} keeps the subscriber reachable after cancel"
    assert subscription is not None


# -- the fast paths: hand-off, inline overflow, lazy counters, under races -------------------

_STRATEGIES: list[tuple[str, Callable[[Flow[int]], Flow[int]], int | None]] = [
    ("buffer_drop_oldest", lambda f: f.on_backpressure_buffer(4, OverflowStrategy.DROP_OLDEST), 4),
    ("buffer_latest", lambda f: f.on_backpressure_buffer(3, OverflowStrategy.LATEST), 3),
    ("buffer_drop_newest", lambda f: f.on_backpressure_buffer(4, OverflowStrategy.DROP_NEWEST), 4),
    ("latest", lambda f: f.on_backpressure_latest(), 1),
    ("drop", lambda f: f.on_backpressure_drop(), 0),
    ("unbounded", lambda f: f.on_backpressure_buffer_unbounded(), None),
]
_STRATEGY_IDS = [name for name, _, _ in _STRATEGIES]


def _stats_of(subscriber: TestSubscriber[int]) -> BufferStats:
    """The operator's stats without a meter: the operator is the subscription."""
    stats = getattr(subscriber.subscription, "stats", None)
    assert isinstance(stats, BufferStats)
    return stats


def _assert_accounted(
    snapshot: dict[str, object], capacity: int | None, requested: int = 0
) -> None:
    produced, delivered, dropped, depth = (
        snapshot["produced"],
        snapshot["delivered"],
        snapshot["dropped"],
        snapshot["depth"],
    )
    assert isinstance(produced, int) and isinstance(delivered, int)
    assert isinstance(dropped, int) and isinstance(depth, int)
    assert produced == delivered + dropped + depth, snapshot
    by_reason = snapshot["dropped_by_reason"]
    assert isinstance(by_reason, dict) and sum(by_reason.values()) == dropped, snapshot
    if capacity is not None:  # beyond capacity only while a running loop owes demand
        assert depth <= max(capacity, requested), snapshot


@pytest.mark.parametrize(("name", "apply", "capacity"), _STRATEGIES, ids=_STRATEGY_IDS)
def test_saturation_without_a_meter_counts_exactly_at_every_read(
    name: str, apply: Callable[[Flow[int]], Flow[int]], capacity: int | None
) -> None:
    # Overflow drops are only counted aside on this path; every read must fold
    # them in (a stale read would break produced == delivered + dropped + depth).
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    apply(upstream).subscribe(subscriber)
    stats = _stats_of(subscriber)
    for i in range(0, 60, 3):
        upstream.send_next(i, i + 1)
        assert stats.produced == i + 2  # a read of one counter is exact too
        _assert_accounted(stats.snapshot(), capacity)
        subscriber.request(1)
        upstream.send_next(i + 2)
        _assert_accounted(stats.snapshot(), capacity)
    assert stats.delivered == len(subscriber.items) == 20
    assert subscriber.items == sorted(set(subscriber.items))
    assert stats.peak_depth == (40 if capacity is None else capacity)
    upstream.send_complete()
    subscriber.request(UNBOUNDED)
    assert subscriber.completed
    _assert_accounted(stats.snapshot(), capacity)
    subscriber.assert_clean()


class _ReentrantSubscriber(TestSubscriber[int]):
    """Sends the next upstream item from inside ``on_next`` (the loop owner's thread)."""

    def __init__(self, upstream: TestPublisher[int], last: int) -> None:
        super().__init__(UNBOUNDED)
        self.upstream = upstream
        self.last = last
        self.depth = 0
        self.max_depth = 0

    def on_next(self, item: int) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        super().on_next(item)
        if item < self.last:
            self.upstream.send_next(item + 1)  # an offer while this thread owns the loop
        self.depth -= 1


@pytest.mark.parametrize(("name", "apply", "capacity"), _STRATEGIES, ids=_STRATEGY_IDS)
def test_an_offer_from_inside_a_hand_off_is_queued_not_nested(
    name: str, apply: Callable[[Flow[int]], Flow[int]], capacity: int | None
) -> None:
    """Rule 1.3 / 3.3: the hand-off owns the loop; a nested offer waits for it to return."""
    upstream: TestPublisher[int] = TestPublisher()
    subscriber = _ReentrantSubscriber(upstream, 50)
    apply(upstream).subscribe(subscriber)
    upstream.send_next(0)
    assert subscriber.items == list(range(51))
    assert subscriber.max_depth == 1
    _assert_accounted(_stats_of(subscriber).snapshot(), capacity)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class _SerialCheckingSubscriber(TestSubscriber[int]):
    """Records an overlap of ``on_next`` calls (Rule 1.3) instead of relying on luck."""

    def __init__(self) -> None:
        super().__init__(0)
        self.inside = False
        self.overlaps = 0

    def on_next(self, item: int) -> None:
        if self.inside:
            self.overlaps += 1
        self.inside = True
        super().on_next(item)
        self.inside = False


def _race_once(
    apply: Callable[[Flow[int]], Flow[int]], capacity: int | None, grants: list[int]
) -> None:
    """One run: a producer thread, a requesting thread and a stats reader, raced."""
    upstream: TestPublisher[int] = TestPublisher()
    subscriber = _SerialCheckingSubscriber()
    apply(upstream).subscribe(subscriber)
    stats = _stats_of(subscriber)
    sent = 200
    snapshots: list[dict[str, object]] = []
    done = threading.Event()
    start = threading.Barrier(3)

    def produce() -> None:
        start.wait()
        for i in range(sent):
            upstream.send_next(i)

    def grant() -> None:
        start.wait()
        for n in grants:
            subscriber.request(n)

    def read() -> None:
        start.wait()
        while not done.is_set():
            snapshots.append(stats.snapshot())

    workers = [threading.Thread(target=produce), threading.Thread(target=grant)]
    reader = threading.Thread(target=read)
    for thread in [*workers, reader]:
        thread.start()
    for thread in workers:
        thread.join(10)
    done.set()
    reader.join(10)
    assert subscriber.overlaps == 0, "overlapping on_next (Rule 1.3)"
    items = subscriber.items
    assert items == sorted(set(items)), "out of order or repeated"
    assert len(items) <= sum(grants), "beyond demand (Rule 1.1)"
    final = stats.snapshot()
    for snapshot in [*snapshots, final]:
        _assert_accounted(snapshot, capacity, sum(grants))
    assert final["produced"] == sent and final["delivered"] == len(items)
    if len(items) < sum(grants):
        assert final["depth"] == 0, "an item waits while demand is outstanding"
    subscriber.assert_clean()


@pytest.mark.parametrize(("name", "apply", "capacity"), _STRATEGIES, ids=_STRATEGY_IDS)
def test_hand_off_racing_requests_keeps_order_demand_and_accounting(
    name: str,
    apply: Callable[[Flow[int]], Flow[int]],
    capacity: int | None,
    fast_switching: None,
) -> None:
    """What a broken fast path does here: delivers beyond demand or out of order
    (a hand-off while a loop runs), overlaps on_next (no ownership), strands a
    queued item while demand is outstanding (missed work lost), or lets a read
    see produced != delivered + dropped + depth (counts folded outside the lock).
    """
    rng = random.Random(name)
    for _ in range(60):
        _race_once(apply, capacity, [rng.randint(1, 3) for _ in range(40)])
