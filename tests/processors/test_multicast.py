"""MulticastProcessor: the compliance kit, each slow-subscriber policy, and its invariants.

* ``IdentityProcessorVerification`` for every policy (multi-subscriber checks on,
  coordinated emission for ``WAIT``); the publisher view only under ``WAIT``, where
  nothing is lost by design.
* A reference model of the processor, driven by random schedules (Hypothesis) of
  offers, per-subscriber requests, cancels, late subscribes and endings: every
  subscriber's items, drops, ending and counters must equal the model's after every
  step, and ``produced == delivered + dropped + buffered`` must hold throughout.
* With a real upstream: ``WAIT`` never requests more than ``buffer_size`` ahead of the
  slowest subscriber (a stalled one bounds memory), the other policies request in
  batches, and nobody stalls while someone has demand.
* Races on real threads with a 1 µs switch interval: an upstream error against
  requests and cancels, offers from three producers.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    BackpressureMeter,
    BufferOverflowError,
    DisconnectedError,
    Flow,
    MulticastProcessor,
    NonPositiveRequestError,
    OfferResult,
    ProtocolViolationError,
    SlowSubscriberPolicy,
    SubscriberStats,
)
from reactive_bp.abc import Processor, Publisher, Subscription
from reactive_bp.processors import MulticastSubscription
from reactive_bp.testing import TestPublisher, TestSubscriber, capture_undeliverable
from spec_tck import IdentityProcessorVerification
from spec_tck._env import SkipCheck

WAIT = SlowSubscriberPolicy.WAIT
DROP = SlowSubscriberPolicy.DROP
LATEST = SlowSubscriberPolicy.LATEST
ERROR = SlowSubscriberPolicy.ERROR
POLICIES = list(SlowSubscriberPolicy)

clean = pytest.mark.no_undeliverable


class Boom(Exception):
    """A test failure."""


def _stats(subscriber: TestSubscriber[int]) -> SubscriberStats:
    subscription = subscriber.subscription
    assert isinstance(subscription, MulticastSubscription)
    return subscription.stats


def _balanced(stats: SubscriberStats) -> bool:
    return stats.produced == stats.delivered + stats.dropped + stats.buffered


class _RaisingSubscriber:
    """Requests everything; its on_next raises (Rule 2.13 broken on purpose)."""

    def __init__(self, fault: Exception) -> None:
        self.fault = fault
        self.items: list[int] = []
        self.errors: list[Exception] = []

    def on_subscribe(self, subscription: Subscription) -> None:
        subscription.request(UNBOUNDED)

    def on_next(self, item: int) -> None:
        self.items.append(item)
        raise self.fault

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)

    def on_complete(self) -> None:
        raise AssertionError("on_complete after a failed on_next")


# -- the compliance kit ----------------------------------------------------------------------------


class _MulticastVerification(IdentityProcessorVerification[int]):
    """A MulticastProcessor under the kit; subclasses pick the policy."""

    policy = WAIT

    def create_identity_processor(self, buffer_size: int) -> Processor[int, int]:
        return MulticastProcessor(buffer_size, self.policy)

    def create_element(self, index: int) -> int:
        return index

    def processor_buffer_size(self) -> int:
        # The kit's Rule 3.8 check expects a downstream request(3), made after two items
        # were consumed, to show up upstream. A 75%-replenishing prefetch asks again
        # after 75% of buffer_size items: with 2 that is after 2 items.
        return 2

    def does_coordinated_emission(self) -> bool:
        return self.policy is WAIT

    def create_failed_publisher(self) -> Publisher[int] | None:
        processor: MulticastProcessor[int] = MulticastProcessor(4, self.policy)
        processor.error(RuntimeError("failed on purpose"))
        return processor


class _LossyVerification(_MulticastVerification):
    """DROP, LATEST and ERROR lose (or fail on) items a subscriber has no demand for."""

    def create_publisher(self, elements: int) -> Publisher[int]:
        raise SkipCheck(
            f"{self.policy}: items that arrive before a subscriber, or beyond its demand, "
            "are dropped (or fail it) by design; the publisher view is verified under WAIT"
        )


class TestMulticastWait(_MulticastVerification):
    policy = WAIT


class TestMulticastWaitOnAsyncio(_MulticastVerification):
    policy = WAIT
    asyncio = True


class TestMulticastDrop(_LossyVerification):
    policy = DROP

    def required_spec401_must_request_from_upstream_for_elements_that_have_been_requested_long_ago(
        self,
    ) -> None:
        raise SkipCheck(
            "DROP: the late subscriber had no demand when the item came, so it missed it by "
            "design (LATEST and ERROR keep it and pass this check)"
        )


class TestMulticastLatest(_LossyVerification):
    policy = LATEST


class TestMulticastError(_LossyVerification):
    policy = ERROR


# -- a reference model, and random schedules -------------------------------------------------------


@dataclass
class _ModelSub:
    ident: int
    requested: int = 0
    queue: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    produced: int = 0
    ending: str | None = None  # "complete", "error", "overflow", "disconnected", "cancel"

    @property
    def active(self) -> bool:
        return self.ending is None


class _Model:
    """What a MulticastProcessor must do, single-threaded and synchronous."""

    def __init__(self, policy: SlowSubscriberPolicy, size: int, auto_cancel: bool) -> None:
        self.policy = policy
        self.size = size
        self.auto_cancel = auto_cancel
        self.queue: list[int] = []  # WAIT
        self.subs: list[_ModelSub] = []
        self.ending: str | None = None
        self.eager = False

    def live(self) -> list[_ModelSub]:
        return [s for s in self.subs if s.active]

    def subscribe(self) -> _ModelSub:
        sub = _ModelSub(len(self.subs))
        if self.policy is WAIT:
            sub.produced = len(self.queue)
        self.subs.append(sub)
        self.drain()
        return sub

    def _leave(self, sub: _ModelSub, ending: str) -> None:
        held = self.queue if self.policy is WAIT else sub.queue
        sub.dropped += held
        if self.policy is not WAIT:
            sub.queue = []
        sub.ending = ending
        leaving = ending in ("cancel", "overflow")
        if leaving and self.auto_cancel and not self.live() and self.ending is None:
            self.ending, self.eager = "disconnected", True
            self.queue = []

    def offer(self, item: int) -> OfferResult:
        if self.ending is not None:
            return OfferResult.CLOSED
        if self.policy is WAIT:
            if len(self.queue) >= self.size:
                return OfferResult.FULL
            self.queue.append(item)
            for sub in self.live():
                sub.produced += 1
            self.drain()
            return OfferResult.ENQUEUED
        taken = failed = False
        for sub in self.live():
            sub.produced += 1
            if len(sub.queue) < sub.requested:
                sub.queue.append(item)
                taken = True
            elif self.policy is DROP:
                sub.dropped.append(item)
            elif self.policy is LATEST:
                if len(sub.queue) > sub.requested:
                    sub.dropped.append(sub.queue.pop())
                sub.queue.append(item)
                taken = True
            elif len(sub.queue) - sub.requested < self.size:
                sub.queue.append(item)
                taken = True
            else:
                sub.dropped.append(item)
                self._leave(sub, "overflow")
                failed = True
        self.drain()
        if taken:
            return OfferResult.ENQUEUED
        return OfferResult.FAILED if failed else OfferResult.DROPPED

    def request(self, sub: _ModelSub, n: int) -> None:
        if sub.active:
            sub.requested += n
            self.drain()

    def cancel(self, sub: _ModelSub) -> None:
        if sub.active:
            self._leave(sub, "cancel")
            self.drain()

    def end(self, how: str) -> None:
        if self.ending is None:
            self.ending = how
            self.eager = how == "error" and self.policy is not WAIT
            self.drain()

    def drain(self) -> None:
        live = self.live()
        if self.ending is not None and self.eager:
            for sub in live:
                self._leave(sub, self.ending)
            return
        if self.policy is WAIT:
            if live and self.queue:
                n = min(min(s.requested for s in live), len(self.queue))
                batch, self.queue = self.queue[:n], self.queue[n:]
                for sub in live:
                    sub.items += batch
                    sub.requested -= n
            if self.ending is not None and not self.queue:
                for sub in live:
                    sub.ending = self.ending
            return
        for sub in live:
            n = min(sub.requested, len(sub.queue))
            sub.items += sub.queue[:n]
            del sub.queue[:n]
            sub.requested -= n
            if self.ending is not None and not sub.queue:
                sub.ending = self.ending


def _ending_of(subscriber: TestSubscriber[int], cancelled: bool) -> str | None:
    if subscriber.completed:
        return "complete"
    if subscriber.errors:
        (error,) = subscriber.errors
        if isinstance(error, BufferOverflowError):
            return "overflow"
        if isinstance(error, DisconnectedError):
            return "disconnected"
        assert isinstance(error, Boom)
        return "error"
    return "cancel" if cancelled else None


Step = tuple[str, int, int]

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("subscribe"), st.just(0), st.just(0)),
        st.tuples(st.just("offer"), st.integers(1, 6), st.just(0)),
        st.tuples(st.just("request"), st.integers(0, 5), st.integers(1, 4)),
        st.tuples(st.just("cancel"), st.integers(0, 5), st.just(0)),
        st.tuples(st.sampled_from(["complete", "error"]), st.just(0), st.just(0)),
    ),
    max_size=30,
)


def _check_against_model(
    model: _Model,
    processor: MulticastProcessor[int],
    subscribers: list[TestSubscriber[int]],
    cancelled: set[int],
    dropped: dict[int, list[int]],
) -> None:
    for sub, subscriber in zip(model.subs, subscribers, strict=True):
        subscriber.assert_clean()  # Rules 1.1, 1.3, 1.7 (never more than requested)
        assert subscriber.items == sub.items, (sub.ident, subscriber.items, sub.items)
        assert _ending_of(subscriber, sub.ident in cancelled) == sub.ending, sub.ident
        stats = _stats(subscriber)
        assert _balanced(stats), stats
        assert stats.delivered == len(sub.items)
        assert stats.dropped == len(sub.dropped), (stats, sub.dropped)
        assert stats.produced == sub.produced, (stats, sub.produced)
        assert dropped.get(sub.ident, []) == sub.dropped
        assert stats.active == sub.active
    assert processor.stats.depth == len(model.queue) <= model.size
    assert set(processor.subscriber_stats()) == {s.ident for s in model.live()}


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
@settings(max_examples=120, deadline=None)
@given(steps=STEPS, size=st.integers(1, 4), auto_cancel=st.booleans())
def test_every_subscriber_matches_the_model(
    policy: SlowSubscriberPolicy, steps: list[Step], size: int, auto_cancel: bool
) -> None:
    """Items, drops, endings and counters per subscriber equal the reference model's.

    Catches: more than requested (Rule 1.1), lost, duplicated or reordered items, a
    wrong policy decision (who drops, who keeps the latest, who overflows), a late
    subscriber seeing too much or too little (under WAIT: what was still queued),
    counters that do not add up, WAIT memory above buffer_size, a missing or wrong
    ending, auto_cancel not shutting down (or shutting down too early).
    """
    dropped: dict[int, list[int]] = {}
    processor: MulticastProcessor[int] = MulticastProcessor(
        size, policy, auto_cancel, lambda ident, item: dropped.setdefault(ident, []).append(item)
    )
    model = _Model(policy, size, auto_cancel)
    subscribers: list[TestSubscriber[int]] = []
    cancelled: set[int] = set()
    counter = 0
    for kind, a, b in steps:
        if kind == "subscribe":
            model.subscribe()
            subscriber: TestSubscriber[int] = TestSubscriber()
            subscribers.append(subscriber)
            processor.subscribe(subscriber)
        elif kind == "offer":
            for _ in range(a):
                expected = model.offer(counter)
                assert processor.offer(counter) is expected
                counter += 1
        elif kind in ("request", "cancel") and subscribers:
            index = a % len(subscribers)
            if kind == "request":
                model.request(model.subs[index], b)
                subscribers[index].request(b)
            else:
                if model.subs[index].active:
                    cancelled.add(index)
                model.cancel(model.subs[index])
                subscribers[index].cancel()
        elif kind == "complete":
            model.end("complete")
            processor.complete()
        elif kind == "error":
            late = model.ending is not None
            model.end("error")
            error = Boom("source failed")
            with capture_undeliverable() as reported:
                processor.error(error)
            assert reported == ([(error, reported[0][1])] if late else [])  # Rule 1.7
        _check_against_model(model, processor, subscribers, cancelled, dropped)
    # Settle: end the source, let everyone ask for everything.
    if model.ending is None:
        model.end("complete")
        processor.complete()
    for index, sub in enumerate(model.subs):
        model.request(sub, 10**6)
        subscribers[index].request(10**6)
    _check_against_model(model, processor, subscribers, cancelled, dropped)
    assert all(not sub.active for sub in model.subs)
    assert processor.subscriber_count == 0


# -- with a real upstream: demand ------------------------------------------------------------------

UPSTREAM_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(1, 8), st.just(0)),
        st.tuples(st.just("request"), st.integers(0, 2), st.integers(1, 5)),
        st.tuples(st.just("cancel"), st.integers(1, 2), st.just(0)),
    ),
    max_size=40,
)


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
@settings(max_examples=80, deadline=None)
@given(steps=UPSTREAM_STEPS, size=st.integers(1, 6), stalled=st.booleans())
def test_upstream_demand_is_bounded_and_never_stalls(
    policy: SlowSubscriberPolicy, steps: list[Step], size: int, stalled: bool
) -> None:
    """Upstream is never asked for more than buffer_size items it has not sent, under WAIT
    never more than buffer_size ahead of what was emitted to the slowest subscriber (with a
    subscriber that never requests: never more than buffer_size in total), and it always
    has demand while a subscriber waits for items nobody holds.

    Catches: an unbounded hidden buffer (requesting everything), WAIT running ahead of a
    slow subscriber, a replenishment that forgets to ask again (a stall).
    """
    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(size, policy, auto_cancel=False)
    upstream.subscribe(processor)
    subscribers = [TestSubscriber[int]() for _ in range(3)]
    for subscriber in subscribers:
        processor.subscribe(subscriber)
    sent = 0
    for kind, a, b in steps:
        if kind == "emit":
            for _ in range(a):
                if upstream.outstanding <= 0:
                    break
                upstream.send_next(sent)
                sent += 1
        elif kind == "request":
            if not (stalled and a == 0):
                subscribers[a].request(b)
        elif kind == "cancel":
            subscribers[a].cancel()
        for subscriber in subscribers:
            subscriber.assert_clean()
            assert _balanced(_stats(subscriber))
        assert 0 <= upstream.outstanding <= size
        stats = processor.stats
        if policy is WAIT:
            # Requested from upstream and not yet emitted to every subscriber.
            assert upstream.total_requested - stats.delivered <= size
            assert stats.depth + upstream.outstanding <= size
            if stalled:
                assert upstream.total_requested <= size
        live = [s for s in subscribers if not s.cancelled]
        waiting = [s for s in live if len(s.items) < s.requested]
        if policy is WAIT:
            starving = bool(live) and len(waiting) == len(live) and stats.depth == 0
        else:
            starving = bool(waiting)
        if starving:
            assert upstream.outstanding > 0, "a subscriber waits and nobody asks upstream"
    assert not upstream.cancelled


# -- each policy, by example -----------------------------------------------------------------------


@clean
def test_wait_paces_the_source_by_the_slowest_subscriber() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    upstream.subscribe(processor)
    fast, slow = TestSubscriber[int](100), TestSubscriber[int](1)
    processor.subscribe(fast)
    processor.subscribe(slow)
    assert upstream.requests == [4]
    upstream.send_next(0, 1, 2, 3)
    assert fast.items == slow.items == [0]  # coordinated: the slow one holds the rest
    assert upstream.outstanding == 0  # and nothing more is asked for
    slow.request(2)
    assert fast.items == slow.items == [0, 1, 2]
    assert upstream.requests == [4, 3]  # 75% of 4 left: replenished
    assert _stats(slow) == SubscriberStats(1, 4, 3, 0, 1, 0, True)


@clean
def test_wait_buffers_before_the_first_subscriber_and_a_late_one_gets_what_is_queued() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(3)
    assert [processor.offer(i) for i in range(4)] == [OfferResult.ENQUEUED] * 3 + [OfferResult.FULL]
    assert processor.stats.refused == 1 and processor.desired_size == 0
    early: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(early)
    assert early.items == [0]
    late: TestSubscriber[int] = TestSubscriber(10)
    processor.subscribe(late)  # 1 and 2 are still queued (nobody got them): due to it too
    early.request(10)
    processor.offer(7)
    processor.complete()
    assert early.items == [0, 1, 2, 7] and early.completed
    assert late.items == [1, 2, 7] and late.completed
    assert _stats(late).produced == 3


@clean
@pytest.mark.parametrize("policy", [DROP, LATEST, ERROR], ids=str)
def test_lossy_policies_drop_and_count_items_before_any_subscriber(
    policy: SlowSubscriberPolicy,
) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(2, policy)
    assert processor.offer(1) is OfferResult.DROPPED
    assert processor.stats.dropped_by_reason == {"no_subscriber": 1}
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    processor.subscribe(subscriber)
    processor.offer(2)
    assert subscriber.items == [2]


@clean
def test_drop_reports_each_missed_item_with_the_subscriber_id() -> None:
    dropped: list[tuple[int, int]] = []
    processor: MulticastProcessor[int] = MulticastProcessor(
        8, DROP, on_dropped=lambda ident, item: dropped.append((ident, item))
    )
    fast, slow = TestSubscriber[int](10), TestSubscriber[int](1)
    processor.subscribe(fast)
    processor.subscribe(slow)
    results = [processor.offer(i) for i in range(4)]
    assert results == [OfferResult.ENQUEUED] * 4
    assert fast.items == [0, 1, 2, 3] and slow.items == [0]
    slow_id = _stats(slow).subscriber_id
    assert slow_id == 1 and dropped == [(1, 1), (1, 2), (1, 3)]
    slow.request(1)
    processor.offer(4)
    assert slow.items == [0, 4]  # nothing was kept for it
    fast.cancel()
    assert processor.offer(5) is OfferResult.DROPPED  # nobody with demand: dropped for all
    assert processor.stats.dropped_by_reason == {"no_demand": 1}


@clean
def test_latest_keeps_only_the_newest_item_for_a_slow_subscriber() -> None:
    dropped: list[tuple[int, int]] = []
    processor: MulticastProcessor[int] = MulticastProcessor(
        8, LATEST, on_dropped=lambda ident, item: dropped.append((ident, item))
    )
    fast, slow = TestSubscriber[int](10), TestSubscriber[int](1)
    processor.subscribe(fast)
    processor.subscribe(slow)
    for i in range(5):
        processor.offer(i)
    assert slow.items == [0]
    assert _stats(slow).buffered == 1  # only the newest is held
    slow.request(1)
    assert slow.items == [0, 4]
    assert dropped == [(1, 1), (1, 2), (1, 3)]
    assert fast.items == [0, 1, 2, 3, 4]


@clean
def test_error_fails_only_the_slow_subscriber_once_its_buffer_is_full() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(2, ERROR)
    fast, slow = TestSubscriber[int](10), TestSubscriber[int](1)
    processor.subscribe(fast)
    processor.subscribe(slow)
    assert [processor.offer(i) for i in range(3)] == [OfferResult.ENQUEUED] * 3
    assert slow.items == [0] and not slow.errors  # 1 and 2 fill its buffer of 2
    assert processor.offer(3) is OfferResult.ENQUEUED  # the fast one took it
    (error,) = slow.errors
    assert isinstance(error, BufferOverflowError)
    assert _stats(slow) == SubscriberStats(1, 4, 1, 3, 0, 0, False)  # 1, 2, 3 lost to it
    processor.offer(4)
    processor.complete()
    assert fast.items == [0, 1, 2, 3, 4] and fast.completed and not fast.errors
    assert slow.items == [0]


@clean
def test_error_answers_failed_when_nobody_took_the_item() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(1, ERROR, auto_cancel=False)
    slow: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(slow)
    assert processor.offer(0) is OfferResult.ENQUEUED
    assert processor.offer(1) is OfferResult.FAILED
    assert isinstance(slow.errors[0], BufferOverflowError)
    assert processor.offer(2) is OfferResult.DROPPED  # no subscriber left; still open


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_completion_follows_each_subscribers_buffered_items(policy: SlowSubscriberPolicy) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4, policy)
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    other: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(subscriber)
    processor.subscribe(other)
    processor.offer(0)
    processor.offer(1)  # queued under WAIT, ERROR; held as latest under LATEST
    processor.complete()
    if policy is DROP:
        assert subscriber.completed  # it had nothing left
        return
    assert not subscriber.completed
    subscriber.request(5)
    other.request(5)
    assert subscriber.items == [0, 1] and subscriber.completed


@clean
def test_an_upstream_error_waits_behind_the_shared_queue_under_wait() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    subscriber: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(subscriber)
    processor.offer(0)
    error = Boom("failed")
    processor.error(error)
    assert subscriber.errors == []
    subscriber.request(1)
    assert subscriber.items == [0] and subscriber.errors == [error]


@clean
@pytest.mark.parametrize("policy", [DROP, LATEST, ERROR], ids=str)
def test_an_upstream_error_cuts_ahead_of_held_items_under_lossy_policies(
    policy: SlowSubscriberPolicy,
) -> None:
    """Rule 4.2: a subscriber without demand hears of the failure at once."""
    dropped: list[tuple[int, int]] = []
    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(
        4, policy, on_dropped=lambda i, x: dropped.append((i, x))
    )
    upstream.subscribe(processor)
    subscriber: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(subscriber)
    upstream.send_next(7)
    error = Boom("failed")
    upstream.send_error(error)
    assert subscriber.errors == [error] and subscriber.items == []
    assert dropped == [(0, 7)]
    stats = _stats(subscriber)
    assert _balanced(stats) and stats.dropped == 1


# -- auto_cancel, endings, late subscribers --------------------------------------------------------


@clean
def test_auto_cancel_shuts_down_when_the_last_subscriber_leaves() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    upstream.subscribe(processor)
    first, second = TestSubscriber[int](1), TestSubscriber[int](1)
    processor.subscribe(first)
    processor.subscribe(second)
    first.cancel()
    assert not upstream.cancelled  # one is left
    second.cancel()
    assert upstream.cancelled
    assert processor.offer(1) is OfferResult.CLOSED and processor.is_closed
    late: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(late)
    (error,) = late.errors
    assert isinstance(error, DisconnectedError)


@clean
def test_without_auto_cancel_the_processor_outlives_its_subscribers() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(4, auto_cancel=False)
    upstream.subscribe(processor)
    first: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(first)
    first.cancel()
    assert not upstream.cancelled
    upstream.send_next(1, 2)
    late: TestSubscriber[int] = TestSubscriber(5)
    processor.subscribe(late)
    assert late.items == [1, 2]  # still queued under WAIT


@clean
def test_a_processor_never_subscribed_to_does_not_auto_cancel() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    upstream.subscribe(processor)
    assert not upstream.cancelled and processor.offer(1) is not OfferResult.CLOSED


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_a_subscriber_after_the_end_gets_the_ending(policy: SlowSubscriberPolicy) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4, policy)
    processor.complete()
    late: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(late)
    assert late.completed
    failed: MulticastProcessor[int] = MulticastProcessor(4, policy)
    error = Boom("failed")
    failed.error(error)
    late = TestSubscriber()
    failed.subscribe(late)
    assert late.errors == [error]


@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_offer_after_the_end_is_closed_and_a_second_error_is_reported(
    policy: SlowSubscriberPolicy, undeliverable: list[tuple[BaseException, str]]
) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4, policy)
    processor.complete()
    assert processor.offer(1) is OfferResult.CLOSED
    processor.complete()  # ignored
    late = Boom("late")
    processor.error(late)
    assert [error for error, _ in undeliverable] == [late]


@clean
def test_complete_cancels_an_attached_upstream() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    upstream.subscribe(processor)
    processor.complete()
    assert upstream.cancelled


# -- the rules, per subscriber ---------------------------------------------------------------------


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize("bad", [0, -1])
def test_a_bad_request_fails_only_that_subscriber(policy: SlowSubscriberPolicy, bad: int) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4, policy)
    good, wrong = TestSubscriber[int](10), TestSubscriber[int](1)
    processor.subscribe(good)
    processor.subscribe(wrong)
    processor.offer(0)
    processor.offer(1)
    wrong.request(bad)
    (error,) = wrong.errors
    assert isinstance(error, NonPositiveRequestError) and "3.9" in str(error)
    processor.offer(2)
    processor.complete()
    assert good.items == [0, 1, 2] and good.completed
    assert _balanced(_stats(wrong))


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_a_raising_on_next_fails_that_subscriber_with_its_error(
    policy: SlowSubscriberPolicy,
) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4, policy)
    fault = Boom("subscriber failed")
    raising = _RaisingSubscriber(fault)
    processor.subscribe(raising)
    other: TestSubscriber[int] = TestSubscriber(10)
    processor.subscribe(other)
    processor.offer(0)
    processor.offer(1)
    processor.complete()
    assert raising.errors == [fault] and raising.items == [0]
    assert other.items == [0, 1] and other.completed


def test_rule_2_5_a_second_upstream_is_cancelled(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    first, second = TestPublisher[int](), TestPublisher[int]()
    first.subscribe(processor)
    second.subscribe(processor)
    assert second.cancelled and not first.cancelled
    assert isinstance(undeliverable[0][0], ProtocolViolationError)


@clean
def test_rule_2_13_none_raises_type_error() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    with pytest.raises(TypeError):
        processor.on_next(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        processor.offer(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        processor.on_error(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        processor.on_subscribe(None)  # type: ignore[arg-type]


@clean
def test_an_upstream_sending_beyond_demand_fails_the_processor() -> None:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    processor: MulticastProcessor[int] = MulticastProcessor(1)
    upstream.subscribe(processor)
    subscriber: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(subscriber)
    assert upstream.requests == [1]
    upstream.send_next(0, 1)  # the second one was never requested (Rule 1.1)
    (error,) = subscriber.errors
    assert isinstance(error, ProtocolViolationError) and "Rule 1.1" in str(error)
    assert upstream.cancelled


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_items_nobody_requested_fail_the_processor(policy: SlowSubscriberPolicy) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4, policy)
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    processor.subscribe(subscriber)
    processor.on_next(1)  # no upstream ever asked for it (Rule 1.1)
    (error,) = subscriber.errors
    assert isinstance(error, ProtocolViolationError)
    assert processor.offer(2) is OfferResult.CLOSED


@clean
def test_a_raising_on_dropped_fails_the_processor_and_cancels_upstream() -> None:
    fault = Boom("on_dropped failed")

    def on_dropped(ident: int, item: int) -> None:
        raise fault

    upstream: TestPublisher[int] = TestPublisher()
    processor: MulticastProcessor[int] = MulticastProcessor(4, DROP, on_dropped=on_dropped)
    upstream.subscribe(processor)
    fast, slow = TestSubscriber[int](10), TestSubscriber[int]()
    processor.subscribe(fast)
    processor.subscribe(slow)
    upstream.send_next(0)
    assert fast.errors == [fault] and slow.errors == [fault]
    assert fast.items == [] and _stats(fast).dropped == 1  # the failure cut ahead of it
    assert upstream.cancelled


@clean
def test_invalid_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError):
        MulticastProcessor(0)
    with pytest.raises(TypeError):
        MulticastProcessor(4, "wait")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MulticastProcessor(4, on_dropped=3)  # type: ignore[arg-type]


# -- the push side ---------------------------------------------------------------------------------


def test_offer_blocking_times_out_full_and_refuses_on_the_delivering_thread() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(1)
    processor.offer(0)
    assert processor.offer_blocking(1, timeout=0.01) is OfferResult.FULL
    assert processor.stats.refused == 1
    raised: list[BaseException] = []

    def on_next(item: int) -> None:
        try:
            processor.offer_blocking(5)  # room for one: taken
            processor.offer_blocking(6)  # full, and this thread is the one to make room
        except RuntimeError as error:
            raised.append(error)

    subscriber: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(subscriber)
    other = processor.subscribe_with(on_next)  # unbounded, but WAIT waits for `subscriber`
    subscriber.request(1)  # delivers 0 to both, on this thread
    assert len(raised) == 1 and "offer()" in str(raised[0])
    other.dispose()


def test_offer_blocking_inside_on_subscribe_refuses_instead_of_waiting_forever() -> None:
    # Under WAIT with the buffer full, only the subscriber still in on_subscribe could
    # make room, and it joins the loop after on_subscribe returns (review finding).
    processor: MulticastProcessor[int] = MulticastProcessor(2)
    processor.offer(0)
    processor.offer(1)
    outcome: list[object] = []

    class Hostile:
        def on_subscribe(self, subscription: Subscription) -> None:
            subscription.request(10)
            try:
                outcome.append(processor.offer_blocking(3, timeout=5.0))
            except RuntimeError as error:
                outcome.append(error)

        def on_next(self, item: int) -> None:
            outcome.append(item)

        def on_error(self, error: Exception) -> None:
            outcome.append(error)

        def on_complete(self) -> None:
            outcome.append("done")

    started = time.monotonic()
    processor.subscribe(Hostile())
    assert time.monotonic() - started < 2.0  # refused at once, not after the timeout
    assert isinstance(outcome[0], RuntimeError) and "on_subscribe" in str(outcome[0])
    assert outcome[1:] == [0, 1]  # it joined afterwards and got what was queued
    assert processor.offer_blocking(3, timeout=1.0) is OfferResult.ENQUEUED
    assert outcome[-1] == 3


def test_offer_blocking_wakes_when_room_is_made() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(1)
    subscriber: TestSubscriber[int] = TestSubscriber()
    processor.subscribe(subscriber)
    processor.offer(0)
    results: list[OfferResult] = []
    producer = threading.Thread(target=lambda: results.append(processor.offer_blocking(1, 5.0)))
    producer.start()
    deadline = time.monotonic() + 5
    while processor._waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.001)  # wait until it sleeps (not timing logic: a precondition)
    subscriber.request(2)
    producer.join(5)
    assert results == [OfferResult.ENQUEUED]
    assert subscriber.items == [0, 1]


def test_offer_wait_and_ready_resume_when_a_subscriber_requests() -> None:
    async def scenario() -> list[int]:
        processor: MulticastProcessor[int] = MulticastProcessor(1)
        subscriber: TestSubscriber[int] = TestSubscriber()
        processor.subscribe(subscriber)
        processor.offer(0)
        ready = asyncio.ensure_future(processor.ready())
        offered = asyncio.ensure_future(processor.offer_wait(1))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not ready.done() and not offered.done()
        subscriber.request(5)
        assert await offered is OfferResult.ENQUEUED
        await ready
        processor.complete()
        return subscriber.items

    assert asyncio.run(scenario()) == [0, 1]


@clean
def test_stats_meter_and_introspection() -> None:
    meter = BackpressureMeter("hub")
    processor: MulticastProcessor[int] = MulticastProcessor(4, DROP, meter=meter)
    assert meter.stats is processor.stats
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(subscriber)
    processor.offer(0)
    processor.offer(1)
    assert processor.stats.produced == 2 and processor.stats.delivered == 1
    assert processor.stats.dropped == 1
    assert processor.policy is DROP and processor.buffer_size == 4
    assert processor.desired_size == 4 and processor.subscriber_count == 1
    (stats,) = processor.subscriber_stats().values()
    assert stats == SubscriberStats(0, 2, 1, 1, 0, 0, True)
    assert "DROP" in repr(processor)


@clean
def test_operators_chain_on_the_processor() -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(8)
    doubled: list[int] = []
    processor.map(lambda x: x * 2).filter(lambda x: x > 0).subscribe_with(doubled.append)
    Flow.range(4).subscribe(processor)
    assert doubled == [2, 4, 6]


# -- references ------------------------------------------------------------------------------------


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize("how", ["cancel", "complete"])
def test_a_subscriber_that_left_is_not_kept_reachable(
    policy: SlowSubscriberPolicy, how: str
) -> None:
    """Rule 3.13: the processor drops the subscriber (and its buffered items)."""
    processor: MulticastProcessor[int] = MulticastProcessor(4, policy, auto_cancel=False)
    keeper: TestSubscriber[int] = TestSubscriber(10)
    processor.subscribe(keeper)
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    processor.subscribe(subscriber)
    processor.offer(0)
    processor.offer(1)
    ref = weakref.ref(subscriber)
    if how == "cancel":
        subscriber.cancel()
    else:
        subscriber.request(5)
        processor.complete()
        assert subscriber.completed
    del subscriber
    gc.collect()
    assert ref() is None
    assert processor.subscriber_count == (1 if how == "cancel" else 0)


# -- races -----------------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


RUNS = 150


def _run_threads(*tasks: Callable[[], None]) -> list[BaseException]:
    barrier = threading.Barrier(len(tasks))
    failures: list[BaseException] = []

    def wrap(task: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(5)
                task()
            except BaseException as error:
                failures.append(error)

        return run

    threads = [
        threading.Thread(target=wrap(task), name=f"race-{i}") for i, task in enumerate(tasks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    return failures


def _error_race(policy: SlowSubscriberPolicy, run: int) -> None:
    rng = random.Random(run)
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    processor: MulticastProcessor[int] = MulticastProcessor(
        rng.choice([1, 2, 4]), policy, auto_cancel=False
    )
    upstream.subscribe(processor)
    subscribers = [TestSubscriber[int](rng.randrange(3)) for _ in range(3)]
    for subscriber in subscribers:
        processor.subscribe(subscriber)
    error = Boom(f"upstream failed (run {run})")
    bursts = [rng.randrange(1, 8) for _ in range(rng.randrange(1, 6))]
    plans = [[rng.randrange(1, 4) for _ in range(12)] for _ in range(2)]
    cancels = [rng.randrange(30) for _ in range(2)]  # only subscribers 1 and 2 cancel

    def emitter() -> None:
        sent = 0
        for burst in bursts:  # never beyond the demand granted (the others keep asking)
            for _ in range(burst):
                if upstream.outstanding <= 0:
                    break
                upstream.send_next(sent)
                sent += 1
        upstream.send_error(error)

    def requester(which: int) -> Callable[[], None]:
        def task() -> None:
            for k, n in enumerate(plans[which]):
                subscribers[which].request(n)
                subscribers[2].request(n)
                if k == cancels[which]:
                    subscribers[which + 1].cancel()

        return task

    failures = _run_threads(emitter, requester(0), requester(1))
    assert not failures, failures
    for subscriber in subscribers:
        if not subscriber.cancelled:
            subscriber.request(UNBOUNDED)  # settle: under WAIT the error follows the queue
    for index, subscriber in enumerate(subscribers):
        subscriber.assert_clean()  # never more than requested, serial, nothing after the end
        assert not subscriber.completed, (run, index)
        ended = subscriber.errors
        if policy is ERROR and ended and isinstance(ended[0], BufferOverflowError):
            assert len(ended) == 1, (run, index, ended)  # it was the slow one: failed alone
        elif subscriber.cancelled:
            assert ended in ([], [error]), (run, index, ended)
        else:
            assert len(ended) == 1 and ended[0] is error, (run, index, ended)
        assert _balanced(_stats(subscriber)), (run, index)


@clean
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_race_upstream_error_against_requests_and_cancels(
    policy: SlowSubscriberPolicy, fast_switching: None
) -> None:
    """Every subscriber that stays ends with that error exactly once, never on_complete,
    nothing beyond its demand; one that cancels gets at most that error; counters balance."""
    for run in range(RUNS):
        _error_race(policy, run)


def _offers_race(run: int, per_producer: int = 30) -> None:
    processor: MulticastProcessor[int] = MulticastProcessor(4)
    subscribers = [TestSubscriber[int](2, request_on_next=1) for _ in range(2)]
    for subscriber in subscribers:
        processor.subscribe(subscriber)

    def producer(p: int) -> Callable[[], None]:
        def task() -> None:
            for i in range(per_producer):
                result = processor.offer_blocking(p * 1000 + i, timeout=5)
                assert result is OfferResult.ENQUEUED, result

        return task

    failures = _run_threads(producer(0), producer(1), producer(2))
    assert not failures, failures
    processor.complete()
    expected = sorted(p * 1000 + i for p in range(3) for i in range(per_producer))
    for subscriber in subscribers:
        assert subscriber.await_terminal(5), run
        subscriber.assert_clean()
        assert subscriber.completed
        assert sorted(subscriber.items) == expected, run
        for p in range(3):  # each producer's items in its order
            mine = [x for x in subscriber.items if x // 1000 == p]
            assert mine == sorted(mine)
    assert subscribers[0].items == subscribers[1].items  # coordinated: one sequence


@clean
def test_race_offers_from_three_threads_lose_nothing_under_wait(fast_switching: None) -> None:
    for run in range(60):
        _offers_race(run)
