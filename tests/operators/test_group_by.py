"""``group_by``: routing, demand bounds, the documented hang, limits, endings, races, leaks.

The demand contract under test (see ``Flow.group_by``): for every open group,
queued + outstanding upstream <= ``group_buffer``; nothing is requested
before the outer's first request, nor while a new group waits for outer
demand; a group that is not consumed pauses the source once full.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    AlreadySubscribedError,
    Flow,
    GroupedFlow,
    NonPositiveRequestError,
    ProtocolViolationError,
    TooManyGroupsError,
)
from reactive_bp.abc import Subscriber
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable

Group = GroupedFlow[int, int]


def _setup(
    key_count: int = 2, *, max_groups: int = 16, group_buffer: int = 4, outer_request: int = 0
) -> tuple[TestPublisher[int], TestSubscriber[Group]]:
    up: TestPublisher[int] = TestPublisher()
    outer: TestSubscriber[Group] = TestSubscriber(outer_request)
    up.group_by(
        lambda x: x % key_count, max_groups=max_groups, group_buffer=group_buffer
    ).subscribe(outer)
    return up, outer


def _consume(group: Group, initial: int = 0) -> TestSubscriber[int]:
    subscriber: TestSubscriber[int] = TestSubscriber(initial)
    group.subscribe(subscriber)
    return subscriber


# -- routing -------------------------------------------------------------------------------


def test_items_are_routed_by_key_in_upstream_order() -> None:
    out = (
        Flow.range(20)
        .group_by(lambda x: x % 3)
        .flat_map(lambda g: g.map(lambda x: (g.key, x)))
        .to_list(timeout=5)
    )
    for key in range(3):
        assert [x for k, x in out if k == key] == [x for x in range(20) if x % 3 == key]
    assert sorted(x for _, x in out) == list(range(20))


def test_groups_are_emitted_in_order_of_first_appearance_with_their_key() -> None:
    up, outer = _setup(3, outer_request=10)
    up.send_next(5, 3, 4, 6, 2)
    assert [g.key for g in outer.items] == [2, 0, 1]
    assert all(isinstance(g, GroupedFlow) for g in outer.items)
    assert repr(outer.items[0]) == "GroupedFlow(key=2)"


def test_none_is_a_valid_key() -> None:
    out = (
        Flow.range(4)
        .group_by(lambda x: None if x % 2 else "even")
        .flat_map(lambda g: g.buffer(10).map(lambda xs: (g.key, xs)))
        .to_list(timeout=5)
    )
    assert sorted(out, key=repr) == sorted([("even", [0, 2]), (None, [1, 3])], key=repr)


def test_on_next_none_is_refused_rule_2_13() -> None:
    up, _ = _setup(outer_request=1)
    with pytest.raises(TypeError, match=r"2\.13"):
        assert up.subscriber is not None
        up.subscriber.on_next(None)  # type: ignore[arg-type]


# -- demand ------------------------------------------------------------------------------------


def test_nothing_is_requested_before_the_outer_asks() -> None:
    up, outer = _setup()
    assert up.requests == []
    outer.request(1)
    assert up.requests == [4]  # group_buffer


def test_a_new_group_waits_for_outer_demand_and_upstream_pauses() -> None:
    up, outer = _setup(group_buffer=4, outer_request=1)
    up.send_next(0)  # group 0 takes the only outer demand
    g0 = _consume(outer.items[0], UNBOUNDED)
    up.send_next(1)  # a new key: group 1 waits, nothing more is requested meanwhile
    assert len(outer.items) == 1
    up.send_next(2, 4)  # still-outstanding items go on to the open group
    assert g0.items == [0, 2, 4]
    assert up.outstanding == 0 and up.requests == [4]
    outer.request(1)
    assert [g.key for g in outer.items] == [0, 1]
    assert up.outstanding > 0  # the gate opened
    g1 = _consume(outer.items[1], UNBOUNDED)
    assert g1.items == [1]


def test_an_unconsumed_group_pauses_the_source_once_its_buffer_is_full() -> None:
    up, outer = _setup(group_buffer=3, outer_request=2)
    up.send_next(0, 1)
    ignored, consumed = outer.items  # keys 0 and 1; key 0 is never consumed
    s1 = _consume(consumed, UNBOUNDED)
    up.emit_all_requested(2)
    assert up.outstanding == 0
    # group 0 holds group_buffer items: upstream is not asked for more, however
    # much the consumed group wants (the documented groupBy hang).
    assert len(ignored._inner._queue) == 3
    assert up.total_requested == 5
    s1.request(100)
    assert up.outstanding == 0
    # Consuming the full group resumes the source.
    s0 = _consume(ignored, 2)
    assert s0.items == [0, 2]
    assert up.outstanding > 0


def test_upstream_is_bounded_by_the_fullest_group() -> None:
    up, outer = _setup(group_buffer=4, outer_request=UNBOUNDED)
    up.send_next(0)
    g0 = _consume(outer.items[0])
    up.send_next(2)  # group 0 now holds 2: at most 2 more may be outstanding
    assert up.outstanding == 2
    g0.request(2)  # consumed: room again (requests come in batches of 75%)
    assert up.outstanding + len(outer.items[0]._inner._queue) <= 4
    assert up.peak_outstanding <= 4


def test_groups_whose_consumers_take_part_of_them_do_not_hang() -> None:
    """A group cancelled with buffered items gives their room back (RxJava #6894, Reactor #2675)."""
    out = (
        Flow.just(0, 1, 2, 3)
        .group_by(lambda x: x // 2, group_buffer=1)
        .flat_map(lambda g: g.take(1))
    )
    # Each take(1) cancels its group; the next item of that key opens a new one.
    assert out.to_list(timeout=5) == [0, 1, 2, 3]
    out = (
        Flow.just(0, 1, 2, 0, 1, 2)
        .group_by(lambda x: x, group_buffer=1)
        .flat_map(lambda g: g.skip(1).take(1))
    )
    assert out.to_list(timeout=5) == [0, 1, 2]


def test_many_groups_with_enough_concurrency_complete() -> None:
    counts = (
        Flow.range(5000)
        .group_by(lambda x: x % 50, group_buffer=8)
        .flat_map(lambda g: g.reduce(lambda n, _: n + 1, 0), max_concurrency=50)
        .to_list(timeout=10)
    )
    assert counts == [100] * 50


# -- single subscriber, limits -------------------------------------------------------------


def test_a_second_subscriber_to_a_group_gets_an_error_and_the_first_goes_on() -> None:
    up, outer = _setup(outer_request=1)
    up.send_next(0)
    first = _consume(outer.items[0], 5)
    second = _consume(outer.items[0], 5)
    assert second.signals[0] == "on_subscribe"
    [error] = second.errors
    assert isinstance(error, AlreadySubscribedError)
    up.send_next(2)
    assert first.items == [0, 2] and not first.errors


def test_max_groups_exceeded_fails_everything_and_cancels_upstream() -> None:
    up, outer = _setup(5, max_groups=2, outer_request=10)
    up.send_next(0, 1)
    g0, g1 = (_consume(g, 10) for g in outer.items)
    up.send_next(2)
    for subscriber in (outer, g0, g1):
        [error] = subscriber.errors
        assert isinstance(error, TooManyGroupsError)
    assert "max_groups=2" in str(outer.errors[0])
    assert up.cancelled


def test_a_cancelled_group_frees_a_slot_for_max_groups() -> None:
    up, outer = _setup(5, max_groups=2, outer_request=10)
    up.send_next(0, 1)
    g0 = _consume(outer.items[0], 10)
    g0.cancel()
    up.send_next(2)
    assert [g.key for g in outer.items] == [0, 1, 2] and not outer.errors


# -- cancellation -------------------------------------------------------------------------


def test_a_cancelled_group_is_removed_and_its_key_opens_a_new_group() -> None:
    up, outer = _setup(outer_request=10)
    up.send_next(0, 2)
    first = _consume(outer.items[0], 1)
    first.cancel()
    up.send_next(4)
    assert [g.key for g in outer.items] == [0, 0]
    second = _consume(outer.items[1], 10)
    assert first.items == [0] and second.items == [4]


def test_outer_cancel_keeps_subscribed_groups_running_until_they_cancel() -> None:
    up, outer = _setup(3, outer_request=10)
    up.send_next(0, 1)
    g0, g1 = (_consume(g, 10) for g in outer.items)
    outer.cancel()
    assert not up.cancelled
    up.send_next(3, 4, 5)  # 5 has a new key: nobody can receive its group, it is dropped
    assert g0.items == [0, 3] and g1.items == [1, 4]
    assert len(outer.items) == 2
    g0.cancel()
    assert not up.cancelled
    g1.cancel()
    assert up.cancelled


def test_outer_cancel_drops_groups_nobody_subscribed_to_and_cancels_upstream() -> None:
    """A group left in a cancelled consumer's queue must not keep the source alive (Rule 3.12)."""
    up, outer = _setup(3, outer_request=1)
    up.send_next(0)
    up.send_next(1)  # waits for outer demand
    outer.cancel()
    assert up.cancelled
    late = _consume(outer.items[0], 10)
    [error] = late.errors
    assert isinstance(error, AlreadySubscribedError) and "dropped" in str(error)


def test_group_subscribed_after_outer_cancel_keeps_upstream_while_another_group_runs() -> None:
    up, outer = _setup(3, outer_request=2)
    up.send_next(0, 1)
    g0 = _consume(outer.items[0], 10)
    outer.cancel()
    g1 = _consume(outer.items[1], 10)  # subscribed late, while group 0 still runs
    up.send_next(4)
    assert g1.items == [1, 4] and g0.items == [0]
    g0.cancel()
    g1.cancel()
    assert up.cancelled


def test_upstream_is_requested_again_when_the_last_active_group_cancels() -> None:
    up, outer = _setup(outer_request=10, group_buffer=2)
    up.send_next(0, 2)
    g0 = _consume(outer.items[0])
    assert up.outstanding == 0
    g0.cancel()  # its two queued items are dropped: room again
    assert up.outstanding == 2


# -- errors and completion --------------------------------------------------------------------


def test_upstream_error_reaches_the_outer_and_every_open_group_ahead_of_queued_items() -> None:
    up, outer = _setup(3, outer_request=10)
    up.send_next(0, 1, 3)
    g0 = _consume(outer.items[0], 1)
    g1 = _consume(outer.items[1])
    boom = Boom("upstream")
    up.send_error(boom)
    for subscriber in (outer, g0, g1):
        assert subscriber.errors == [boom] and not subscriber.completed
    assert g0.items == [0] and g1.items == []  # 3 was queued: the error cut ahead


def test_upstream_completion_reaches_every_group_after_its_items() -> None:
    up, outer = _setup(3, outer_request=1)
    up.send_next(0, 1, 3)  # group 1 waits for outer demand
    g0 = _consume(outer.items[0])
    up.send_complete()
    assert not outer.completed  # group 1 is still to be emitted
    outer.request(1)
    assert outer.completed and [g.key for g in outer.items] == [0, 1]
    g1 = _consume(outer.items[1], 10)
    assert g1.items == [1] and g1.completed
    assert not g0.completed
    g0.request(10)
    assert g0.items == [0, 3] and g0.completed


def test_a_raising_key_function_fails_everything_and_cancels_upstream() -> None:
    up: TestPublisher[int] = TestPublisher()
    outer: TestSubscriber[GroupedFlow[int, int]] = TestSubscriber(10)

    def key(x: int) -> int:
        if x == 3:
            raise Boom("key")
        return x % 2

    up.group_by(key).subscribe(outer)
    up.send_next(0)
    g0 = _consume(outer.items[0], 10)
    up.send_next(3)
    assert isinstance(outer.errors[0], Boom) and isinstance(g0.errors[0], Boom)
    assert up.cancelled


def test_an_unhashable_key_fails_the_stream() -> None:
    out: TestSubscriber[object] = TestSubscriber(10)
    Flow.range(3).group_by(lambda x: [x]).subscribe(out)
    [error] = out.errors
    assert isinstance(error, TypeError)


def test_upstream_sending_more_than_requested_fails_rule_1_1() -> None:
    up: TestPublisher[int] = TestPublisher(strict=False)
    outer: TestSubscriber[Group] = TestSubscriber()
    up.group_by(lambda x: x).subscribe(outer)
    up.send_next(1)  # nothing was requested
    [error] = outer.errors
    assert isinstance(error, ProtocolViolationError) and "1.1" in str(error)
    assert up.cancelled


def test_bad_request_on_a_group_fails_only_that_group_rule_3_9() -> None:
    up, outer = _setup(outer_request=10)
    up.send_next(0, 1)
    g0, g1 = (_consume(g) for g in outer.items)
    g0.request(0)
    [error] = g0.errors
    assert isinstance(error, NonPositiveRequestError)
    g1.request(5)
    up.send_next(3, 2)  # 2 opens a new group for key 0
    assert g1.items == [1, 3] and not g1.errors and not outer.errors
    assert [g.key for g in outer.items] == [0, 1, 0]


def test_bad_request_on_the_outer_fails_the_outer_only_rule_3_9() -> None:
    up, outer = _setup(outer_request=10)
    up.send_next(0)
    g0 = _consume(outer.items[0], 10)
    outer.request(-1)
    [error] = outer.errors
    assert isinstance(error, NonPositiveRequestError)
    up.send_next(2)
    assert g0.items == [0, 2] and not up.cancelled
    g0.cancel()
    assert up.cancelled


def test_a_group_subscriber_that_raises_fails_that_group_only() -> None:
    class Raising(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            raise Boom("on_next")

    up, outer = _setup(outer_request=10)
    up.send_next(0, 1)
    bad = Raising(10)
    outer.items[0].subscribe(bad)
    g1 = _consume(outer.items[1], 10)
    assert isinstance(bad.errors[0], Boom)
    up.send_next(3)
    assert g1.items == [1, 3] and not outer.errors


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="max_groups"):
        Flow.range(3).group_by(lambda x: x, max_groups=0)
    with pytest.raises(ValueError, match="group_buffer"):
        Flow.range(3).group_by(lambda x: x, group_buffer=0)
    with pytest.raises(TypeError, match="callable"):
        Flow.range(3).group_by(3)  # type: ignore[arg-type]


# -- references ----------------------------------------------------------------------------------


def test_cancel_releases_subscribers_rule_3_13() -> None:
    up, outer = _setup(outer_request=10)
    up.send_next(0, 1)
    groups = [_consume(g, 1) for g in outer.items]
    refs: list[weakref.ref[TestSubscriber[Group]] | weakref.ref[TestSubscriber[int]]] = [
        weakref.ref(outer),
        *(weakref.ref(sub) for sub in groups),
    ]
    outer.cancel()
    for group in groups:
        group.cancel()
    assert up.cancelled
    del outer, groups, group
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_completion_releases_subscribers_rule_3_13() -> None:
    up, outer = _setup(outer_request=10)
    up.send_next(0, 1)
    groups = [_consume(g, 10) for g in outer.items]
    up.send_complete()
    assert outer.completed and all(sub.completed for sub in groups)
    refs: list[weakref.ref[TestSubscriber[Group]] | weakref.ref[TestSubscriber[int]]] = [
        weakref.ref(outer),
        *(weakref.ref(sub) for sub in groups),
    ]
    del outer, groups
    gc.collect()
    assert all(ref() is None for ref in refs)


# -- random schedules ---------------------------------------------------------------------------

KEYS = 3
BUFFER = 3

_step = st.one_of(
    st.tuples(st.just("emit"), st.integers(0, KEYS - 1)),
    st.tuples(st.just("emit"), st.integers(0, KEYS - 1)),
    st.tuples(st.just("outer"), st.integers(1, 3)),
    st.tuples(st.just("subscribe"), st.integers(0, 7)),
    st.tuples(st.just("request"), st.integers(0, 7), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("outer_cancel")),
)


class _Schedule:
    """Plays one schedule against ``group_by`` and checks the invariants after every step."""

    def __init__(self) -> None:
        self.up: TestPublisher[int] = TestPublisher()
        self.outer: TestSubscriber[Group] = TestSubscriber()
        self.subs: dict[int, TestSubscriber[int]] = {}
        self.emitted: list[int] = []
        self.seq = 0
        self.up.group_by(lambda x: x % KEYS, max_groups=KEYS, group_buffer=BUFFER).subscribe(
            self.outer
        )

    def play(self, step: tuple[object, ...]) -> None:
        kind = step[0]
        groups = self.outer.items
        if kind == "emit":
            if self.up.outstanding > 0 and not self.up.cancelled:
                item = self.seq * KEYS + int(step[1])  # type: ignore[call-overload]
                self.seq += 1
                self.emitted.append(item)
                self.up.send_next(item)
        elif kind == "outer":
            self.outer.request(int(step[1]))  # type: ignore[call-overload]
        elif kind == "outer_cancel":
            self.outer.cancel()
        elif groups:
            index = int(step[1]) % len(groups)  # type: ignore[call-overload]
            sub = self.subs.get(index)
            if kind == "subscribe" and sub is None:
                self.subs[index] = _consume(groups[index])
            elif kind == "request" and sub is not None:
                sub.request(int(step[2]))  # type: ignore[call-overload]
            elif kind == "cancel" and sub is not None:
                sub.cancel()
        self.check()

    def check(self) -> None:
        up = self.up
        if not self.outer.requested:
            assert up.requests == [], "upstream asked before the outer asked"
        assert up.outstanding <= BUFFER
        for index, group in enumerate(self.outer.items):
            sub = self.subs.get(index)
            if sub is not None and (sub.cancelled or sub.is_terminated):
                continue
            queued = len(group._inner._queue)
            assert queued + up.outstanding <= BUFFER, (index, queued, up.outstanding)
        self.outer.assert_clean()
        for sub in self.subs.values():
            sub.assert_clean()
        delivered = [x for sub in self.subs.values() for x in sub.items]
        assert len(delivered) == len(set(delivered)), "an item was delivered twice"
        for index, sub in self.subs.items():
            key = self.outer.items[index].key
            assert all(x % KEYS == key for x in sub.items)
            assert sub.items == sorted(sub.items), "order within a group"

    def finish(self, ending: str) -> None:
        if not self.up.cancelled:
            if ending == "error":
                self.up.send_error(Boom("end"))
            else:
                self.up.send_complete()
        self.outer.request(UNBOUNDED)
        for index, group in enumerate(self.outer.items):
            if index not in self.subs:
                self.subs[index] = _consume(group)
            if not self.subs[index].cancelled:
                self.subs[index].request(UNBOUNDED)
        self.check()
        for index, sub in self.subs.items():
            if not sub.cancelled:
                assert sub.is_terminated, f"group {index} never ended"
                if ending == "error" and sub.errors:
                    assert isinstance(sub.errors[0], Boom | AlreadySubscribedError)
        # Every incarnation of a key got a contiguous run of that key's items, in order;
        # one that was never cancelled got everything from its first item on, until the
        # next incarnation (opened only after it was cancelled).
        dropped_groups = False
        for key in range(KEYS):
            items = [x for x in self.emitted if x % KEYS == key]
            runs = [
                (index, self.subs[index])
                for index, group in enumerate(self.outer.items)
                if group.key == key
            ]
            for position, (_, sub) in enumerate(runs):
                later = runs[position + 1 :]
                if later:
                    assert sub.cancelled, "a new group opened while the old one was open"
                if sub.errors and isinstance(sub.errors[0], AlreadySubscribedError):
                    dropped_groups = True
                    continue
                if not sub.items:
                    continue
                start = items.index(sub.items[0])
                stop = len(items)
                for _, next_sub in later:
                    if next_sub.items:
                        stop = items.index(next_sub.items[0])
                        break
                run = items[start:stop]
                if sub.cancelled or sub.errors:  # an error cuts ahead of queued items
                    assert sub.items == run[: len(sub.items)]
                else:
                    assert sub.items == run and sub.completed
        everyone_stayed = not self.outer.cancelled and not any(
            sub.cancelled for sub in self.subs.values()
        )
        if ending == "complete" and everyone_stayed:  # an error cuts ahead of queued items
            delivered = sorted(x for sub in self.subs.values() for x in sub.items)
            assert delivered == sorted(self.emitted), "items lost"
            assert not dropped_groups


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(_step, max_size=40),
    ending=st.sampled_from(["complete", "error"]),
)
def test_random_schedules_keep_demand_bounds_and_lose_nothing(
    steps: list[tuple[object, ...]], ending: str
) -> None:
    from reactive_bp.testing import capture_undeliverable

    with capture_undeliverable() as reported:  # an error after everything was cancelled
        schedule = _Schedule()
        for step in steps:
            schedule.play(step)
        schedule.finish(ending)
    assert all(isinstance(error, Boom) for error, _ in reported)


# -- races ----------------------------------------------------------------------------------------


@pytest.fixture
def _fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class _RaceUpstream(Flow[int]):
    """A thread-safe manual upstream that records overlapping request calls (Rule 2.7)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_call = threading.Lock()
        self.outstanding = 0
        self.cancelled = False
        self.overlaps = 0
        self.subscriber: Subscriber[int] | None = None

    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        self.subscriber = subscriber
        subscriber.on_subscribe(_RaceSubscription(self))

    def emit_requested(self, start: int, limit: int) -> int:
        assert self.subscriber is not None
        value = start
        while value < limit:
            with self.lock:
                if self.outstanding == 0 or self.cancelled:
                    return value
                self.outstanding -= 1
            self.subscriber.on_next(value)
            value += 1
        return value


class _RaceSubscription:
    def __init__(self, upstream: _RaceUpstream) -> None:
        self._upstream = upstream

    def request(self, n: int) -> None:
        upstream = self._upstream
        if not upstream.in_call.acquire(blocking=False):
            upstream.overlaps += 1  # another thread is inside request(): Rule 2.7 broken
            with upstream.lock:
                upstream.outstanding += n
            return
        try:
            with upstream.lock:
                upstream.outstanding += n
            for _ in range(300):  # stay inside the call a little: overlaps become likely
                pass
        finally:
            upstream.in_call.release()

    def cancel(self) -> None:
        self._upstream.cancelled = True


RACE_RUNS = 300


def _run_threads(*targets: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"


def _error_race_once(run: int, rng: random.Random) -> None:
    """Upstream fails on one thread while two threads request and cancel groups."""
    up = _RaceUpstream()
    outer: TestSubscriber[Group] = TestSubscriber(UNBOUNDED)
    up.group_by(lambda x: x % 4, group_buffer=4).subscribe(outer)
    sent = up.emit_requested(0, 4)  # four groups
    subs = [_consume(g, 1) for g in outer.items]
    boom = Boom(f"run {run}")
    cancel_at = {i: rng.randrange(6) for i in range(4) if rng.random() < 0.3}
    outer_cancel_at = rng.randrange(6) if rng.random() < 0.2 else -1
    barrier = threading.Barrier(3)

    def source() -> None:
        barrier.wait()
        value = sent
        for _ in range(4):
            value = up.emit_requested(value, value + 6)
        assert up.subscriber is not None
        up.subscriber.on_error(boom)

    def consumer(indices: tuple[int, ...]) -> None:
        barrier.wait()
        for round_ in range(6):
            if round_ == outer_cancel_at and indices[0] == 0:
                outer.cancel()
            for i in indices:
                if cancel_at.get(i) == round_:
                    subs[i].cancel()
                else:
                    subs[i].request(1)

    _run_threads(source, lambda: consumer((0, 1)), lambda: consumer((2, 3)))
    assert up.overlaps == 0, f"run {run}: concurrent request() calls (Rule 2.7)"
    if not outer.cancelled:
        assert outer.errors == [boom] and not outer.completed, f"run {run}: {outer!r}"
    for i, sub in enumerate(subs):
        sub.assert_clean()
        assert not sub.completed, f"run {run}: group {i} completed"
        if sub.cancelled:
            assert sub.errors in ([], [boom])
        else:
            assert sub.errors == [boom], f"run {run}: group {i}: {sub!r}"


@pytest.mark.usefixtures("_fast_switching")
def test_upstream_error_races_group_requests_and_cancels(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """Every open group and the outer end with the upstream error exactly once, never completed."""
    rng = random.Random(11)
    for run in range(RACE_RUNS):
        _error_race_once(run, rng)
    assert all(type(error) is Boom for error, _ in undeliverable)


def _request_race_once(run: int) -> None:
    """Four groups consumed one item at a time from two threads while upstream emits."""
    up = _RaceUpstream()
    outer: TestSubscriber[Group] = TestSubscriber(UNBOUNDED)
    up.group_by(lambda x: x % 4, group_buffer=2).subscribe(outer)
    total = 300
    sent = up.emit_requested(0, 4)
    subs = [_consume(g) for g in outer.items]

    def source() -> None:
        value = sent
        while value < total:
            before, value = value, up.emit_requested(value, total)
            if value == before:
                time.sleep(0)  # no demand yet: let the consumers run (a yield, not a wait)
        assert up.subscriber is not None
        up.subscriber.on_complete()

    def consumer(indices: tuple[int, ...]) -> None:
        while not all(subs[i].is_terminated for i in indices):
            asked = False
            for i in indices:
                if len(subs[i].items) == subs[i].requested:
                    subs[i].request(1)
                    asked = True
            if not asked:
                time.sleep(0)  # a yield, not a wait

    _run_threads(source, lambda: consumer((0, 1)), lambda: consumer((2, 3)))
    assert up.overlaps == 0, f"run {run}: concurrent request() calls (Rule 2.7)"
    assert sorted(x for sub in subs for x in sub.items) == list(range(total))


@pytest.mark.usefixtures("_fast_switching")
def test_requests_from_groups_on_many_threads_reach_upstream_one_at_a_time() -> None:
    """Every group's loop asks upstream for more, from its own thread: never at once (Rule 2.7)."""
    for run in range(30):
        _request_race_once(run)
