"""ReplayProcessor: history and ttl, per-subscriber demand, pacing, endings, races, leaks."""

from __future__ import annotations

import gc
import random
import sys
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    DisconnectedError,
    Flow,
    NonPositiveRequestError,
    OfferResult,
    ProtocolViolationError,
    ReplayProcessor,
)
from reactive_bp.abc import Processor, Publisher, Subscription
from reactive_bp.processors._replay import SerializedUpstream
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber
from spec_tck import IdentityProcessorVerification, PublisherVerification, SkipCheck

FULL = OfferResult.FULL

# -- the compliance kit ---------------------------------------------------------------------


class TestReplayProcessorLiveOnly(IdentityProcessorVerification[int]):
    """``history=0``: every processor check applies, the multi-subscriber ones included.

    Coordinated: no live subscriber ever misses an item for lack of demand (the
    processor holds it for them), so the kit gives every subscriber demand.
    """

    history: int | None = 0

    def create_identity_processor(self, buffer_size: int) -> Processor[int, int]:
        return ReplayProcessor(self.history, buffer_size=buffer_size, auto_cancel=True)

    def create_element(self, index: int) -> int:
        return index

    def does_coordinated_emission(self) -> bool:
        return True

    def create_failed_publisher(self) -> Publisher[int] | None:
        processor = ReplayProcessor[int](self.history)
        processor.error(RuntimeError("failed on purpose"))
        return processor


class TestReplayProcessorAll(TestReplayProcessorLiveOnly):
    """``history=None``: everything is replayed, so a late subscriber starts at item 0."""

    history: int | None = None

    def required_spec401_must_request_from_upstream_for_elements_that_have_been_requested_long_ago(
        self,
    ) -> None:
        """Rule 4.1's check expects a late subscriber to start at the live item."""
        raise SkipCheck(
            "a replay processor replays its history to a late subscriber by design: it "
            "receives items 0 and 1 first, not the live item 2 the check expects "
            "(TestReplayProcessorLiveOnly runs this check with history=0)"
        )


class TestReplayProcessorLast3(TestReplayProcessorAll):
    """``history=3``: a bounded history, paced by the slowest live subscriber."""

    history: int | None = 3


class TestReplayProcessorAsPublisher(PublisherVerification[int]):
    """A completed processor replays every item it logged, to every subscriber."""

    def create_publisher(self, elements: int) -> Publisher[int]:
        processor = ReplayProcessor[int]()
        for i in range(elements):
            assert processor.offer(i) is OfferResult.ENQUEUED
        processor.complete()
        return processor

    def max_elements_from_publisher(self) -> int:
        return 1000

    def create_failed_publisher(self) -> Publisher[int] | None:
        processor = ReplayProcessor[int]()
        processor.error(RuntimeError("failed on purpose"))
        return processor


class TestReplayOperator(PublisherVerification[int]):
    """``Flow.replay()`` (over a ReplayProcessor), connected by its first subscriber."""

    def create_publisher(self, elements: int) -> Publisher[int]:
        return Flow.range(elements).replay().auto_connect()

    def max_elements_from_publisher(self) -> int:
        return 1000

    def create_failed_publisher(self) -> Publisher[int] | None:
        return Flow.error(RuntimeError("failed on purpose")).replay(2).auto_connect()


# -- helpers ----------------------------------------------------------------------------------


class Boom(Exception):
    """The upstream failure of these tests."""


def subscriber(initial: int = 0) -> TestSubscriber[int]:
    return TestSubscriber(initial)


def emit(upstream: TestPublisher[int], start: int, stop: int) -> int:
    """Send ``start, start + 1, ...`` while there is demand, up to ``stop``; return the next."""
    value = start
    while value < stop and upstream.outstanding > 0 and not upstream.cancelled:
        upstream.send_next(value)
        value += 1
    return value


def pushed(history: int | None, items: range, **options: object) -> ReplayProcessor[int]:
    processor: ReplayProcessor[int] = ReplayProcessor(history, **options)  # type: ignore[arg-type]
    for i in items:
        assert processor.offer(i) is OfferResult.ENQUEUED
    return processor


# -- history --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "replayed"), [(None, [0, 1, 2, 3, 4]), (2, [3, 4]), (0, []), (9, [0, 1, 2, 3, 4])]
)
def test_a_new_subscriber_gets_the_history_then_live_items(
    history: int | None, replayed: list[int]
) -> None:
    processor = pushed(history, range(5))
    late = subscriber(UNBOUNDED)
    processor.subscribe(late)
    assert late.items == replayed
    processor.offer(5)
    processor.complete()
    assert late.items == [*replayed, 5] and late.completed
    late.assert_clean()


def test_each_subscriber_receives_the_history_only_against_its_own_demand() -> None:
    processor = pushed(3, range(10))
    slow, fast = subscriber(), subscriber(UNBOUNDED)
    processor.subscribe(slow)
    processor.subscribe(fast)
    assert slow.items == [] and fast.items == [7, 8, 9]
    slow.request(2)
    assert slow.items == [7, 8]
    processor.offer(10)
    assert fast.items == [7, 8, 9, 10] and slow.items == [7, 8]
    slow.request(5)
    assert slow.items == [7, 8, 9, 10]
    slow.assert_clean()
    fast.assert_clean()


def test_the_ending_is_replayed_after_the_history() -> None:
    completed = pushed(2, range(4))
    completed.complete()
    failed = pushed(2, range(4))
    failed.error(Boom("x"))
    for processor, ends in ((completed, "complete"), (failed, "error")):
        late = subscriber()
        processor.subscribe(late)
        assert late.items == [] and not late.is_terminated  # the history waits for demand
        late.request(1)
        assert late.items == [2] and not late.is_terminated
        late.request(1)
        assert late.items == [2, 3]
        assert late.completed is (ends == "complete")
        assert [type(e) for e in late.errors] == ([Boom] if ends == "error" else [])


def test_an_ending_reaches_a_subscriber_without_demand_once_nothing_is_pending() -> None:
    processor = pushed(0, range(3))
    waiting = subscriber()
    processor.subscribe(waiting)
    processor.error(Boom("now"))
    assert [type(e) for e in waiting.errors] == [Boom] and waiting.items == []


def test_an_upstream_error_follows_what_a_live_subscriber_has_not_consumed() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = ReplayProcessor[int](history=0)
    fast, slow = subscriber(UNBOUNDED), subscriber()
    processor.subscribe(fast)
    processor.subscribe(slow)
    upstream.subscribe(processor)
    upstream.send_next(0, 1)
    error = Boom("upstream")
    upstream.send_error(error)
    assert fast.items == [0, 1] and fast.errors == [error]
    assert slow.items == [] and slow.errors == []  # its two items come first
    slow.request(2)
    assert slow.items == [0, 1] and slow.errors == [error]


# -- ttl, in virtual time ---------------------------------------------------------------------


def test_items_older_than_ttl_are_not_replayed_but_live_subscribers_keep_them() -> None:
    clock = VirtualTimeScheduler()
    processor = ReplayProcessor[int](history=None, ttl=10.0, scheduler=clock)
    live = subscriber()
    processor.subscribe(live)
    processor.offer(0)
    clock.advance_by(6)
    processor.offer(1)
    clock.advance_by(4)  # item 0 is 10 s old: expired
    late = subscriber(UNBOUNDED)
    processor.subscribe(late)
    assert late.items == [1]
    clock.advance_by(6)  # item 1 is 10 s old too
    later = subscriber(UNBOUNDED)
    processor.subscribe(later)
    assert later.items == []
    live.request(UNBOUNDED)
    assert live.items == [0, 1]  # nothing is lost for a live subscriber


def test_expired_items_leave_memory_once_no_live_subscriber_needs_them() -> None:
    clock = VirtualTimeScheduler()
    processor = pushed(None, range(5), ttl=1.0, scheduler=clock)
    assert processor.retained == 5
    clock.advance_by(2)
    processor.offer(5)  # any change sweeps what expired
    assert processor.retained == 1


# -- pacing and memory ----------------------------------------------------------------------


def test_upstream_is_paced_by_the_slowest_live_subscriber_beyond_the_window() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = ReplayProcessor[int](history=2, buffer_size=3)
    stalled, fast = subscriber(), subscriber(UNBOUNDED)
    processor.subscribe(stalled)
    processor.subscribe(fast)
    upstream.subscribe(processor)
    emit(upstream, 0, 100)
    # The fast one ran ahead by history + buffer_size, then waits for the stalled one.
    assert fast.items == list(range(5)) and upstream.outstanding == 0
    assert processor.retained == 5
    stalled.request(3)
    assert stalled.items == [0, 1, 2] and upstream.outstanding > 0
    emit(upstream, 5, 100)
    assert fast.items == list(range(8)) and processor.retained <= 2 + 3
    assert upstream.peak_outstanding <= 3


def test_without_a_bound_on_history_no_subscriber_waits_for_another() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = ReplayProcessor[int](history=None, buffer_size=4)
    stalled, fast = subscriber(), subscriber(UNBOUNDED)
    processor.subscribe(stalled)
    processor.subscribe(fast)
    upstream.subscribe(processor)
    assert emit(upstream, 0, 100) == 100
    assert fast.items == list(range(100)) and processor.retained == 100
    assert upstream.peak_outstanding <= 4


def test_nothing_is_requested_upstream_without_a_live_subscriber() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = ReplayProcessor[int](history=4)
    upstream.subscribe(processor)
    assert upstream.requests == []
    idle = subscriber()
    processor.subscribe(idle)
    assert upstream.requests == []  # a subscriber without demand asks for nothing
    idle.request(2)
    assert upstream.total_requested == 2


def test_offer_answers_full_when_a_live_subscriber_is_too_far_behind() -> None:
    processor = ReplayProcessor[int](history=1, buffer_size=2)
    stalled = subscriber()
    processor.subscribe(stalled)
    results = [processor.offer(i) for i in range(4)]
    assert results == [OfferResult.ENQUEUED, OfferResult.ENQUEUED, OfferResult.ENQUEUED, FULL]
    stalled.request(1)
    assert processor.offer(3) is OfferResult.ENQUEUED
    processor.complete()
    assert processor.offer(4) is OfferResult.CLOSED
    stalled.request(UNBOUNDED)
    assert stalled.items == [0, 1, 2, 3] and stalled.completed


# -- per-subscriber failures -------------------------------------------------------------------


def test_a_bad_request_fails_only_that_subscriber() -> None:
    processor = pushed(4, range(3))
    bad, good = subscriber(), subscriber(1)
    processor.subscribe(bad)
    processor.subscribe(good)
    bad.request(0)
    assert [type(e) for e in bad.errors] == [NonPositiveRequestError] and bad.items == []
    assert "Rule 3.9" in str(bad.errors[0])
    good.request(10)
    processor.complete()
    assert good.items == [0, 1, 2] and good.completed
    assert processor.subscriber_count == 0


class _Raising(TestSubscriber[int]):
    def on_next(self, item: int) -> None:
        super().on_next(item)
        if item == 1:
            raise Boom("subscriber failed")


def test_a_raising_subscriber_is_cancelled_and_receives_its_error_the_others_go_on() -> None:
    processor = ReplayProcessor[int](history=0)
    raising, other = _Raising(UNBOUNDED), subscriber(UNBOUNDED)
    processor.subscribe(raising)
    processor.subscribe(other)
    for i in range(4):
        processor.offer(i)
    assert raising.items == [0, 1] and [type(e) for e in raising.errors] == [Boom]
    assert other.items == [0, 1, 2, 3] and other.errors == []


def test_none_is_not_an_item() -> None:
    processor = ReplayProcessor[int]()
    with pytest.raises(TypeError):
        processor.on_next(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        processor.offer(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        processor.on_error(None)  # type: ignore[arg-type]


def test_a_second_upstream_is_cancelled(undeliverable: list[tuple[BaseException, str]]) -> None:
    processor = ReplayProcessor[int]()
    first, second = TestPublisher[int](), TestPublisher[int]()
    first.subscribe(processor)
    second.subscribe(processor)
    assert second.cancelled and not first.cancelled
    assert any("Rule 2.5" in str(error) for error, _ in undeliverable)


def test_an_upstream_sending_beyond_demand_ends_the_stream() -> None:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    processor = ReplayProcessor[int]()
    watcher = subscriber(1)
    processor.subscribe(watcher)
    upstream.subscribe(processor)
    upstream.send_next(0, 1)
    assert watcher.items == [0]
    assert [type(e) for e in watcher.errors] == [ProtocolViolationError]
    assert "Rule 1.1" in str(watcher.errors[0]) and upstream.cancelled


# -- cancellation --------------------------------------------------------------------------------


def test_auto_cancel_cancels_upstream_when_the_last_subscriber_leaves() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = ReplayProcessor[int](history=2, auto_cancel=True)
    one, two = subscriber(UNBOUNDED), subscriber(UNBOUNDED)
    processor.subscribe(one)
    processor.subscribe(two)
    upstream.subscribe(processor)
    upstream.send_next(0, 1, 2)
    one.cancel()
    assert not upstream.cancelled
    two.cancel()
    assert upstream.cancelled
    late = subscriber(UNBOUNDED)
    processor.subscribe(late)
    assert late.items == [1, 2] and [type(e) for e in late.errors] == [DisconnectedError]


def test_by_default_the_upstream_stays_connected_when_subscribers_leave() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = ReplayProcessor[int](history=2)
    one = subscriber(UNBOUNDED)
    processor.subscribe(one)
    upstream.subscribe(processor)
    upstream.send_next(0, 1, 2)
    one.cancel()
    assert not upstream.cancelled
    again = subscriber(UNBOUNDED)
    processor.subscribe(again)
    emit(upstream, 3, 6)
    upstream.send_complete()
    assert again.items == [1, 2, 3, 4, 5] and again.completed


def test_a_cancelled_subscriber_is_released() -> None:
    processor = pushed(3, range(3))
    held = subscriber(1)
    processor.subscribe(held)
    subscription: Subscription = held.subscription
    ref = weakref.ref(held)
    held.cancel()
    del held
    gc.collect()
    assert ref() is None, "the processor (or its subscription) still holds the subscriber"
    subscription.request(1)  # Rule 3.6: a no-op
    assert processor.subscriber_count == 0


class _Item:
    __slots__ = ("__weakref__", "value")

    def __init__(self, value: int) -> None:
        self.value = value


def test_items_that_left_the_history_are_released() -> None:
    processor = ReplayProcessor[_Item](history=2)
    refs = []
    for i in range(200):
        item = _Item(i)
        refs.append(weakref.ref(item))
        processor.offer(item)
        del item
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 2
    assert processor.retained == 2


# -- SerializedUpstream ------------------------------------------------------------------------


class _Recording:
    def __init__(self, upstream: SerializedUpstream) -> None:
        self.calls: list[object] = []
        self.upstream = upstream
        self.depth = 0
        self.max_depth = 0

    def request(self, n: int) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        self.calls.append(n)
        if len(self.calls) < 5:
            self.upstream.request(1)  # re-entrant, as an upstream signalling inside request()
        self.depth -= 1

    def cancel(self) -> None:
        self.calls.append("cancel")


def test_serialized_upstream_keeps_demand_until_attached_and_never_nests() -> None:
    link = SerializedUpstream()
    link.request(3)
    link.request(UNBOUNDED)
    recording = _Recording(link)
    assert link.attach(recording)
    assert recording.calls[0] == UNBOUNDED and recording.max_depth == 1
    link.cancel()
    link.request(1)
    assert recording.calls[-1] == "cancel" and recording.calls.count("cancel") == 1


def test_serialized_upstream_cancels_a_late_arrival() -> None:
    link = SerializedUpstream()
    link.cancel()
    recording = _Recording(link)
    link.attach(recording)
    assert recording.calls == ["cancel"]


# -- Hypothesis: the history window, demand and ttl ------------------------------------------------


@dataclass
class _Model:
    """One subscriber as the model sees it: where it started and what it must receive."""

    sub: TestSubscriber[int]
    start: int
    live: bool = True
    requested: int = 0

    @property
    def cursor(self) -> int:
        return self.start + len(self.sub.items)


@dataclass
class _Log:
    values: list[int] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)

    def window(self, history: int | None, ttl: float | None, now: float) -> int:
        """Where a subscriber arriving now starts."""
        start = 0 if history is None else max(0, len(self.values) - history)
        while ttl is not None and start < len(self.values) and self.stamps[start] <= now - ttl:
            start += 1
        return start


steps = st.lists(
    st.one_of(
        st.just(("offer",)),
        st.just(("offer",)),
        st.just(("subscribe",)),
        st.tuples(st.just("request"), st.integers(0, 5), st.integers(1, 4)),
        st.tuples(st.just("cancel"), st.integers(0, 5)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    history=st.one_of(st.none(), st.integers(0, 4)),
    ttl=st.one_of(st.none(), st.sampled_from([2.0, 5.0])),
    buffer_size=st.integers(1, 4),
    plan=steps,
    ending=st.sampled_from(["complete", "error"]),
)
def test_every_subscriber_gets_its_window_then_everything_never_beyond_demand(
    history: int | None,
    ttl: float | None,
    buffer_size: int,
    plan: list[tuple[object, ...]],
    ending: str,
) -> None:
    clock = VirtualTimeScheduler()
    processor = ReplayProcessor[int](history, ttl, clock, buffer_size=buffer_size)
    log = _Log()
    subs: list[_Model] = []

    def expected(model: _Model) -> list[int]:
        return log.values[model.start :]

    for step in plan:
        kind = step[0]
        live = [m for m in subs if m.live]
        if kind == "offer":
            value = len(log.values)
            full = (
                history is not None
                and bool(live)
                and value + 1 > min(m.cursor for m in live) + history + buffer_size
            )
            result = processor.offer(value)
            assert result is (OfferResult.FULL if full else OfferResult.ENQUEUED)
            if not full:
                log.values.append(value)
                log.stamps.append(clock.now())
        elif kind == "subscribe":
            model = _Model(subscriber(), log.window(history, ttl, clock.now()))
            subs.append(model)
            processor.subscribe(model.sub)
        elif kind == "request" and subs:
            model = subs[int(step[1]) % len(subs)]  # type: ignore[call-overload]
            model.sub.request(int(step[2]))  # type: ignore[call-overload]
            model.requested += int(step[2])  # type: ignore[call-overload]
        elif kind == "cancel" and subs:
            model = subs[int(step[1]) % len(subs)]  # type: ignore[call-overload]
            model.sub.cancel()
            model.live = False
        elif kind == "advance":
            clock.advance_by(float(step[1]))  # type: ignore[arg-type]
        for model in subs:
            model.sub.assert_clean()  # Rules 1.1, 1.3, 1.7
            want = expected(model)
            assert model.sub.items == want[: len(model.sub.items)]
            if model.live:  # synchronous: whatever is logged and requested has arrived
                assert len(model.sub.items) == min(model.requested, len(want))
        if history is not None:
            assert processor.retained <= history + buffer_size
    error = Boom("end")
    if ending == "complete":
        processor.complete()
    else:
        processor.error(error)
    late = _Model(subscriber(), log.window(history, ttl, clock.now()))
    subs.append(late)
    processor.subscribe(late.sub)
    for model in subs:
        if model.live:
            model.sub.request(UNBOUNDED)
            assert model.sub.items == expected(model)
            assert model.sub.completed is (ending == "complete")
            assert model.sub.errors == ([error] if ending == "error" else [])
        model.sub.assert_clean()


@settings(max_examples=120, deadline=None)
@given(
    history=st.one_of(st.none(), st.integers(0, 4)),
    buffer_size=st.integers(1, 4),
    plan=st.lists(
        st.one_of(
            st.just(("emit",)),
            st.just(("emit",)),
            st.just(("subscribe",)),
            st.tuples(st.just("request"), st.integers(0, 5), st.integers(1, 4)),
            st.tuples(st.just("cancel"), st.integers(0, 5)),
        ),
        max_size=40,
    ),
)
def test_upstream_demand_follows_subscribers_within_the_window(
    history: int | None, buffer_size: int, plan: list[tuple[object, ...]]
) -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor = ReplayProcessor[int](history, buffer_size=buffer_size)
    upstream.subscribe(processor)
    subs: list[_Model] = []
    sent = 0
    for step in plan:
        kind = step[0]
        if kind == "emit" and upstream.outstanding:
            upstream.send_next(sent)
            sent += 1
        elif kind == "subscribe":
            start = 0 if history is None else max(0, sent - history)
            model = _Model(subscriber(), start)
            subs.append(model)
            processor.subscribe(model.sub)
        elif kind == "request" and subs:
            model = subs[int(step[1]) % len(subs)]  # type: ignore[call-overload]
            model.sub.request(int(step[2]))  # type: ignore[call-overload]
            model.requested += int(step[2])  # type: ignore[call-overload]
        elif kind == "cancel" and subs:
            model = subs[int(step[1]) % len(subs)]  # type: ignore[call-overload]
            model.sub.cancel()
            model.live = False
        live = [m for m in subs if m.live]
        for model in subs:
            model.sub.assert_clean()
            assert model.sub.items == list(range(model.start, model.cursor))
        outstanding = upstream.outstanding
        assert outstanding <= buffer_size
        if history is not None:
            assert processor.retained <= history + buffer_size
        if live:
            slowest = min(m.cursor for m in live)
            limit = sent + buffer_size
            if history is not None:
                limit = min(limit, slowest + history + buffer_size)
                assert sent + outstanding <= slowest + history + buffer_size
            want = max(m.start + m.requested for m in live)
            # No stall: someone wants an item beyond what was sent and the window allows
            # it, so it has been asked for.
            if min(want, limit) > sent:
                assert outstanding > 0
        elif not subs:
            assert upstream.requests == []


# -- races -------------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _error_race(run: int, cancels: set[int]) -> None:
    """One run: upstream items then an error on one thread, requests and cancels on three."""
    processor = ReplayProcessor[int](history=2, buffer_size=4)
    upstream: TestPublisher[int] = TestPublisher()
    subs = [subscriber() for _ in range(3)]
    for sub in subs:
        processor.subscribe(sub)
    upstream.subscribe(processor)
    error = Boom(f"run {run}")
    start = threading.Barrier(4)

    def produce() -> None:
        start.wait()
        sent = 0
        for _ in range(200):
            sent = emit(upstream, sent, 20)
        upstream.send_error(error)

    def consume(index: int, sub: TestSubscriber[int]) -> None:
        start.wait()
        for k in range(6):
            sub.request(1 + k % 2)
            if index in cancels and k == 3:
                sub.cancel()
                return

    threads = [threading.Thread(target=produce)]
    threads += [threading.Thread(target=consume, args=(i, s)) for i, s in enumerate(subs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    for index, sub in enumerate(subs):
        if index not in cancels:
            sub.request(UNBOUNDED)  # what is pending comes first, then the error
            assert sub.errors == [error], (run, index, sub)
        else:
            assert sub.errors in ([], [error]), (run, index, sub)
        assert not sub.completed
        assert sub.items == list(range(len(sub.items)))
        sub.assert_clean()


@pytest.mark.usefixtures("fast_switching")
def test_an_upstream_error_races_requests_and_cancels(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    rng = random.Random(11)
    for run in range(300):
        _error_race(run, {i for i in range(3) if rng.random() < 0.3})
    # A cancel racing the ending may leave the run's error with nowhere to go: reported.
    assert all(isinstance(reported, Boom) for reported, _ in undeliverable)


def _delivery_race() -> None:
    """One run: an upstream on one thread, three subscribers requesting on three others."""
    processor = ReplayProcessor[int](history=3, buffer_size=2)
    upstream: TestPublisher[int] = TestPublisher()
    subs = [subscriber() for _ in range(3)]
    for sub in subs:
        processor.subscribe(sub)
    upstream.subscribe(processor)
    done = threading.Event()

    def produce() -> None:
        sent = 0
        while sent < 30 and not done.is_set():
            sent = emit(upstream, sent, 30)
        upstream.send_complete()

    def consume(sub: TestSubscriber[int]) -> None:
        for _ in range(40):
            sub.request(1)

    threads = [threading.Thread(target=consume, args=(s,)) for s in subs]
    threads.append(threading.Thread(target=produce))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    done.set()  # only a safety net: a producer that never finishes fails the run
    for sub in subs:
        assert sub.await_terminal(5)
        assert sub.items == list(range(30)) and sub.completed
        sub.assert_clean()


@pytest.mark.usefixtures("fast_switching")
def test_subscribers_on_several_threads_each_get_everything_in_order() -> None:
    for _ in range(100):
        _delivery_race()
