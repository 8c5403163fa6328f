"""retry and Backoff: exact waits in virtual time, jitter bounds, demand carry-over, cancel."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    Backoff,
    Flow,
    NonPositiveRequestError,
    RetryExhaustedError,
)
from reactive_bp.abc import Subscription
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.operators.test_time import (
    VirtualCase,
    check_random_schedule,
    random_steps,
    virtual_params,
)
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class Flaky:
    """A source factory: attempt ``k`` (1-based) emits ``items[k-1]`` then fails, unless it is
    the last listed attempt, which completes. Records the virtual time of each subscription."""

    def __init__(
        self,
        attempts: list[list[int]],
        vts: VirtualTimeScheduler | None = None,
        error: Callable[[int], Exception] = lambda k: Boom(f"attempt {k}"),
        fail_last: bool = False,
    ) -> None:
        self.attempts = attempts
        self.vts = vts
        self.error = error
        self.fail_last = fail_last
        self.subscribed_at: list[float] = []

    def __call__(self) -> Flow[int]:
        k = len(self.subscribed_at) + 1
        self.subscribed_at.append(self.vts.now() if self.vts is not None else 0.0)
        items = Flow.from_iterable(self.attempts[min(k, len(self.attempts)) - 1])
        if k >= len(self.attempts) and not self.fail_last:
            return items
        return Flow.concat(items, Flow.error(self.error(k)))

    def flow(self) -> Flow[int]:
        return Flow.defer(self)


# -- Backoff ----------------------------------------------------------------------------------


def test_exponential_ceilings_grow_then_cap() -> None:
    backoff = Backoff.exponential(base=0.1, factor=2.0, cap=1.0, jitter="none")
    assert [backoff.delay(k) for k in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(10_000) == 1.0  # no OverflowError for huge attempt numbers


def test_full_jitter_stays_within_bounds_and_is_reproducible_with_a_seed() -> None:
    first = Backoff.exponential(base=0.5, factor=3.0, cap=20.0, random=random.Random(42))
    second = Backoff.exponential(base=0.5, factor=3.0, cap=20.0, random=random.Random(42))
    waits = [first.delay(k) for k in range(200)]
    assert waits == [second.delay(k) for k in range(200)]
    for k, wait in enumerate(waits):
        assert 0.0 <= wait <= min(20.0, 0.5 * 3.0**k)
    # Full jitter spreads over the whole range, not just its top.
    capped = waits[10:]
    assert min(capped) < 5.0 and max(capped) > 15.0


def test_equal_jitter_keeps_at_least_half_the_ceiling() -> None:
    backoff = Backoff.exponential(
        base=1.0, factor=2.0, cap=8.0, jitter="equal", random=random.Random(1)
    )
    for k in range(50):
        ceiling = backoff.ceiling(k)
        assert ceiling / 2 <= backoff.delay(k) <= ceiling


def test_none_and_fixed() -> None:
    assert [Backoff.none().delay(k) for k in range(3)] == [0.0, 0.0, 0.0]
    assert [Backoff.fixed(1.5).delay(k) for k in range(3)] == [1.5, 1.5, 1.5]
    assert Backoff.fixed(2.0) == Backoff.fixed(2.0)
    assert "factor=2.0" in repr(Backoff.exponential())


@pytest.mark.parametrize(
    "build",
    [
        lambda: Backoff.exponential(base=-1.0),
        lambda: Backoff.exponential(factor=0.5),
        lambda: Backoff.exponential(cap=float("nan")),
        lambda: Backoff.exponential(jitter="half"),  # type: ignore[arg-type]
        lambda: Backoff.fixed(-0.1),
    ],
)
def test_backoff_rejects_bad_parameters(build: Callable[[], Backoff]) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()


def test_retry_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Flow.just(1).retry(0)
    with pytest.raises(TypeError):
        Flow.just(1).retry(2, backoff=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Flow.just(1).retry(2, retry_on=(KeyError, int))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Flow.just(1).retry(2, retry_on=42)  # type: ignore[arg-type]


# -- retry in virtual time ---------------------------------------------------------------------


def test_retry_waits_exactly_the_backoff_between_attempts() -> None:
    vts = VirtualTimeScheduler()
    flaky = Flaky([[1], [2], [3], [4]], vts)
    backoff = Backoff.exponential(base=1.0, factor=2.0, cap=3.0, jitter="none")
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    flaky.flow().retry(5, backoff, scheduler=vts).subscribe(subscriber)
    vts.advance_by(20.0)
    # Waits 1, 2, then capped at 3.
    assert flaky.subscribed_at == [0.0, 1.0, 3.0, 6.0]
    assert subscriber.items == [1, 2, 3, 4] and subscriber.completed
    assert vts.pending == 0


def test_retry_with_seeded_full_jitter_waits_what_the_backoff_draws() -> None:
    vts = VirtualTimeScheduler()
    flaky = Flaky([[], [], [], [], [9]], vts)
    backoff = Backoff.exponential(base=1.0, factor=2.0, cap=5.0, random=random.Random(2024))
    twin = Backoff.exponential(base=1.0, factor=2.0, cap=5.0, random=random.Random(2024))
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    flaky.flow().retry(5, backoff, scheduler=vts).subscribe(subscriber)
    vts.advance_by(100.0)
    waits = [b - a for a, b in zip(flaky.subscribed_at, flaky.subscribed_at[1:], strict=False)]
    assert waits == pytest.approx([twin.delay(k) for k in range(4)])
    for k, wait in enumerate(waits):
        assert 0.0 <= wait <= min(5.0, 2.0**k)
    assert subscriber.items == [9] and subscriber.completed


def test_retry_gives_up_with_the_attempts_and_the_last_error() -> None:
    vts = VirtualTimeScheduler()
    flaky = Flaky([[1], [2], [3]], vts, fail_last=True)
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    flaky.flow().retry(3, Backoff.fixed(0.5), scheduler=vts).subscribe(subscriber)
    vts.advance_by(10.0)
    assert subscriber.items == [1, 2, 3]
    assert len(subscriber.errors) == 1
    error = subscriber.errors[0]
    assert isinstance(error, RetryExhaustedError)
    assert error.attempts == 3
    assert isinstance(error.__cause__, Boom) and str(error.__cause__) == "attempt 3"
    assert error.last_error is error.__cause__
    assert flaky.subscribed_at == [0.0, 0.5, 1.0]


def test_retry_carries_the_outstanding_demand_across_attempts() -> None:
    vts = VirtualTimeScheduler()
    publishers: list[TestPublisher[int]] = [TestPublisher(), TestPublisher()]
    attempt = iter(publishers)
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    Flow.defer(lambda: next(attempt)).retry(2, Backoff.fixed(1.0), scheduler=vts).subscribe(
        subscriber
    )
    first, second = publishers
    assert first.requests == [5]
    first.send_next(1, 2)
    first.send_error(Boom("first"))
    assert second.subscriber is None  # waiting for the backoff
    subscriber.request(2)  # arrives during the wait: kept for the next attempt
    vts.advance_by(1.0)
    assert second.requests == [5]  # 5 + 2 requested - 2 delivered
    second.send_next(3, 4, 5, 6, 7)
    second.send_complete()
    assert subscriber.items == [1, 2, 3, 4, 5, 6, 7] and subscriber.completed
    subscriber.assert_clean()


def test_cancel_during_the_backoff_wait_cancels_the_timer() -> None:
    vts = VirtualTimeScheduler()
    flaky = Flaky([[1], [2]], vts)
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    flaky.flow().retry(3, Backoff.fixed(5.0), scheduler=vts).subscribe(subscriber)
    assert vts.pending == 1
    vts.advance_by(2.0)
    subscriber.cancel()
    assert vts.pending == 0
    vts.advance_by(10.0)
    assert flaky.subscribed_at == [0.0]  # never re-subscribed
    assert subscriber.items == [1] and not subscriber.errors and not subscriber.completed


def test_retry_on_types_and_predicates() -> None:
    def run(retry_on: object, error: Exception) -> TestSubscriber[int]:
        flaky = Flaky([[1], [2]], error=lambda k: error)
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        flaky.flow().retry(3, retry_on=retry_on).subscribe(subscriber)  # type: ignore[arg-type]
        return subscriber

    assert run(KeyError, KeyError("k")).items == [1, 2]
    assert run((ValueError, KeyError), KeyError("k")).items == [1, 2]
    assert run(lambda e: "transient" in str(e), Boom("transient")).items == [1, 2]
    refused = run(KeyError, Boom("fatal"))
    assert refused.items == [1] and [str(e) for e in refused.errors] == ["fatal"]
    assert type(refused.errors[0]) is Boom  # passed through unchanged, not wrapped


def test_a_raising_retry_predicate_is_signalled_with_the_error_as_context() -> None:
    original = Boom("source")

    def predicate(error: Exception) -> bool:
        raise ValueError("predicate broke")

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.concat(Flow.just(1), Flow.error(original)).retry(3, retry_on=predicate).subscribe(
        subscriber
    )
    assert [type(e) for e in subscriber.errors] == [ValueError]
    assert subscriber.errors[0].__context__ is original


def test_immediate_retries_of_a_synchronous_failure_do_not_grow_the_stack() -> None:
    calls = [0]

    def failing() -> Flow[int]:
        calls[0] += 1
        return Flow.error(Boom("again"))

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.defer(failing).retry(5000).subscribe(subscriber)
    assert calls[0] == 5000
    assert [type(e) for e in subscriber.errors] == [RetryExhaustedError]


def test_a_bad_request_is_never_retried() -> None:
    calls = [0]

    def source() -> Flow[int]:
        calls[0] += 1
        return Flow.range(5)

    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.defer(source).retry(3).subscribe(subscriber)
    subscriber.request(0)
    assert calls[0] == 1
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]


@pytest.mark.parametrize("bad", [-1, 0, None])
def test_a_bad_request_during_the_backoff_wait_is_answered_at_once(bad: object) -> None:
    """Rule 3.9: not after the wait, and not through one more subscription."""
    vts = VirtualTimeScheduler()
    flaky = Flaky([[1], [2], [3]], vts)
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    flaky.flow().retry(3, Backoff.fixed(5.0), scheduler=vts).subscribe(subscriber)
    assert subscriber.items == [1] and vts.pending == 1  # waiting to retry
    vts.advance_by(1.0)
    subscriber.request(bad)  # type: ignore[arg-type]
    expected = NonPositiveRequestError if bad is not None else TypeError
    assert [type(e) for e in subscriber.errors] == [expected]  # now, at t=1
    assert vts.pending == 0  # the wait was called off
    vts.advance_by(10.0)
    assert flaky.subscribed_at == [0.0]  # never re-subscribed
    assert subscriber.items == [1] and not subscriber.completed
    subscriber.assert_clean()


def test_a_bad_request_inside_on_subscribe_subscribes_nothing() -> None:
    calls = [0]

    def source() -> Flow[int]:
        calls[0] += 1
        return Flow.range(5)

    class BadAtOnce(TestSubscriber[int]):
        def on_subscribe(self, subscription: Subscription) -> None:
            super().on_subscribe(subscription)
            subscription.request(-1)

    subscriber = BadAtOnce()
    Flow.defer(source).retry(3).subscribe(subscriber)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert calls[0] == 0
    subscriber.assert_clean()


def test_an_attempt_failing_with_its_own_error_while_a_bad_request_is_pending_reports_it(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """Before: the attempt's own error was thrown away (neither delivered nor reported).

    Deterministic form of the race "request(0) on one thread, the source fails on
    another": the attempt's error comes before its answer to the bad request (which,
    once it has failed, it never sends: Rule 3.6)."""
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.retry(3, retry_on=KeyError).subscribe(subscriber)
    subscriber.request(0)  # recorded as pending and handed to the attempt ...
    boom = Boom("non-retryable upstream failure")
    upstream.send_error(boom)  # ... which fails with an error of its own first
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]  # Rule 3.9 wins
    assert [e for e, _ in undeliverable] == [boom]  # and the real failure is not lost
    subscriber.assert_clean()


def test_an_attempts_own_rule_3_9_answer_is_not_reported_twice(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """The attempt's answer to the bad request is the same error: delivered once, no report."""
    for bad in (0, -3, None):
        subscriber: TestSubscriber[int] = TestSubscriber()
        Flow.range(5).retry(3).subscribe(subscriber)
        subscriber.request(bad)  # type: ignore[arg-type]
        expected = NonPositiveRequestError if bad is not None else TypeError
        assert [type(e) for e in subscriber.errors] == [expected]
        subscriber.assert_clean()
    assert undeliverable == []


@pytest.mark.usefixtures("fast_switching")
def test_a_bad_request_racing_the_end_of_the_backoff_is_signalled_once() -> None:
    """The requesting thread and the timer's re-subscription both see the bad request."""
    for _ in range(300):
        vts = VirtualTimeScheduler()
        flaky = Flaky([[1], [2]], vts)
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        flaky.flow().retry(3, Backoff.fixed(1.0), scheduler=vts).subscribe(subscriber)
        start = threading.Barrier(2)

        def bad(start: threading.Barrier = start, s: TestSubscriber[int] = subscriber) -> None:
            start.wait()
            s.request(-1)

        thread = threading.Thread(target=bad)
        thread.start()
        start.wait()
        vts.advance_by(1.0)
        thread.join(5)
        assert subscriber.await_terminal(5)
        # Either the error came first, or the second attempt completed first
        # (then the late bad request is a no-op, Rule 3.6).
        if subscriber.errors:
            assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
        else:
            assert subscriber.items == [1, 2] and subscriber.completed
        subscriber.assert_clean()


def test_retry_default_scheduler_in_real_time() -> None:
    flaky = Flaky([[1], [2], [3]])
    result = flaky.flow().retry(3, Backoff.exponential(base=0.005, cap=0.02)).to_list(timeout=5)
    assert result == [1, 2, 3]


# -- matrix and random demand in virtual time ---------------------------------------------------


def _flaky_retry(flow: Flow[int], vts: VirtualTimeScheduler) -> Flow[object]:
    """The first attempt fails after 4 items; the second continues where it stopped."""
    attempts = [0]

    def source() -> Flow[int]:
        attempts[0] += 1
        if attempts[0] == 1:
            return Flow.concat(flow.take(4), Flow.error(Boom("transient")))
        return flow.skip(4)

    return Flow.defer(source).retry(3, Backoff.fixed(0.75), scheduler=vts)


RETRY_CASES = [
    # Boom is not retried (retry_on=KeyError), so the source is subscribed once.
    VirtualCase(
        "retry_passthrough",
        lambda f, vts: f.retry(3, Backoff.fixed(1.0), retry_on=KeyError, scheduler=vts),
        list,
    ),
    VirtualCase("retry_after_backoff", _flaky_retry, list, single_subscription=False),
]


@pytest.mark.parametrize(("case", "scenario"), virtual_params(RETRY_CASES))
def test_virtual_scenario(
    case: VirtualCase, scenario: Callable[[VirtualCase], TestSubscriber[object]]
) -> None:
    scenario(case).assert_clean()


@pytest.mark.parametrize("case", RETRY_CASES, ids=repr)
@settings(max_examples=30, deadline=None)
@given(steps=random_steps)
def test_virtual_random_demand(case: VirtualCase, steps: list[tuple[int, float]]) -> None:
    check_random_schedule(case, steps)


@settings(max_examples=60, deadline=None)
@given(
    failures=st.lists(st.integers(0, 4), min_size=0, max_size=4),
    demand=st.lists(st.integers(1, 4), min_size=1, max_size=20),
    seed=st.integers(0, 2**16),
)
def test_random_failures_and_demand_never_overdeliver_or_lose_items(
    failures: list[int], demand: list[int], seed: int
) -> None:
    """Attempt k delivers ``failures[k]`` fresh items then fails; the last attempt completes."""
    vts = VirtualTimeScheduler()
    produced: list[int] = []
    attempts = [0]

    def source() -> Flow[int]:
        k = attempts[0]
        attempts[0] += 1
        start = len(produced)
        if k < len(failures):
            batch = list(range(start, start + failures[k]))
            return Flow.concat(
                Flow.from_iterable(batch).do_on_next(produced.append), Flow.error(Boom("x"))
            )
        return Flow.range(start, start + 5).do_on_next(produced.append)

    backoff = Backoff.exponential(base=0.5, cap=2.0, random=random.Random(seed))
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.defer(source).retry(len(failures) + 1, backoff, scheduler=vts).subscribe(subscriber)
    for n in demand:
        subscriber.request(n)
        vts.advance_by(0.5)
        assert len(subscriber.items) <= subscriber.requested
        subscriber.assert_clean()
    subscriber.request(UNBOUNDED)
    vts.advance_by(100.0)
    assert subscriber.completed
    assert subscriber.items == produced == list(range(len(produced)))
    assert vts.pending == 0
