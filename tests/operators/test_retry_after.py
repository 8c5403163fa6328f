"""RetryAfter and the RetryPolicy seam of retry: exact waits in virtual time.

Each test fails attempts with chosen errors and reads the virtual times at which the
source was subscribed again: the waits the policy asked for, to the microsecond.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, Backoff, Flow, RetryExhaustedError
from reactive_bp.connectors.http import HTTPStatusError, RetryAfter, parse_retry_after
from reactive_bp.operators._retry import RetryPolicy
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestSubscriber
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable

# A whole second since the epoch: HTTP-dates have one-second resolution.
EPOCH = 1_700_000_000.0


class Attempts:
    """Attempt ``k`` (1-based) fails with ``errors[k-1]``; the one after the last succeeds."""

    def __init__(self, errors: Sequence[Exception], vts: VirtualTimeScheduler) -> None:
        self.errors = errors
        self.vts = vts
        self.subscribed_at: list[float] = []

    def __call__(self) -> Flow[str]:
        k = len(self.subscribed_at)
        self.subscribed_at.append(self.vts.now())
        if k < len(self.errors):
            return Flow.error(self.errors[k])
        return Flow.just("ok")

    def waits(self) -> list[float]:
        at = self.subscribed_at
        return [b - a for a, b in itertools.pairwise(at)]


def run(
    errors: Sequence[Exception],
    policy: RetryPolicy,
    *,
    max_attempts: int = 10,
    advance: float = 10_000.0,
) -> tuple[Attempts, TestSubscriber[str], VirtualTimeScheduler]:
    vts = VirtualTimeScheduler()
    attempts = Attempts(errors, vts)
    subscriber: TestSubscriber[str] = TestSubscriber(UNBOUNDED)
    Flow.defer(attempts).retry(max_attempts, policy, scheduler=vts).subscribe(subscriber)
    vts.advance_by(advance)
    return attempts, subscriber, vts


def shed(status: int = 503, retry_after: str | None = None) -> HTTPStatusError:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return HTTPStatusError(status, headers)


NO_JITTER = Backoff.fixed(0.25)


# -- the forms of Retry-After -------------------------------------------------------------------


def test_seconds_form_waits_exactly_what_the_server_said() -> None:
    policy = RetryAfter(cap=60.0, backoff=NO_JITTER)
    attempts, subscriber, vts = run([shed(503, "7"), shed(429, "2")], policy)
    assert attempts.waits() == [7.0, 2.0]
    assert subscriber.items == ["ok"] and subscriber.completed
    assert vts.pending == 0


def test_http_date_form_waits_until_that_date_on_the_policys_clock() -> None:
    holder: list[VirtualTimeScheduler] = []
    policy = RetryAfter(cap=600.0, backoff=NO_JITTER, clock=lambda: EPOCH + holder[0].now())
    vts = VirtualTimeScheduler()
    holder.append(vts)
    # Both dates are absolute; the second is measured from when its error arrived (t=30).
    first = shed(503, email.utils.formatdate(EPOCH + 30, usegmt=True))
    second = shed(429, email.utils.formatdate(EPOCH + 30 + 45, usegmt=True))
    attempts = Attempts([first, second], vts)
    subscriber: TestSubscriber[str] = TestSubscriber(UNBOUNDED)
    Flow.defer(attempts).retry(5, policy, scheduler=vts).subscribe(subscriber)
    vts.advance_by(1_000.0)
    assert attempts.subscribed_at == [0.0, 30.0, 75.0]
    assert subscriber.items == ["ok"]


def test_a_date_in_the_past_retries_at_once() -> None:
    policy = RetryAfter(backoff=NO_JITTER, clock=lambda: EPOCH)
    past = shed(503, email.utils.formatdate(EPOCH - 3600, usegmt=True))
    attempts, subscriber, _ = run([past], policy)
    assert attempts.waits() == [0.0] and subscriber.completed


def test_the_stated_wait_is_capped() -> None:
    policy = RetryAfter(cap=5.0, backoff=NO_JITTER, clock=lambda: EPOCH)
    date = email.utils.formatdate(EPOCH + 86_400, usegmt=True)
    attempts, subscriber, _ = run([shed(503, "3600"), shed(429, date)], policy)
    assert attempts.waits() == [5.0, 5.0]
    assert subscriber.completed


def test_without_a_usable_header_it_falls_back_to_the_backoff() -> None:
    backoff = Backoff.exponential(base=1.0, factor=2.0, cap=100.0, jitter="none")
    policy = RetryAfter(cap=60.0, backoff=backoff)
    errors = [shed(503), shed(429, "soon"), shed(503, ""), shed(503, "-1")]
    attempts, subscriber, _ = run(errors, policy)
    # Retries 0..3 of the exponential backoff: the attempt number still counts.
    assert attempts.waits() == [1.0, 2.0, 4.0, 8.0]
    assert subscriber.completed


def test_the_default_fallback_is_exponential_with_full_jitter() -> None:
    policy = RetryAfter()
    assert policy.backoff.jitter == "full" and policy.backoff.factor > 1.0
    attempts, _, _ = run([shed(503)] * 6, policy)
    for k, wait in enumerate(attempts.waits()):
        assert 0.0 <= wait <= policy.backoff.ceiling(k)


def test_other_errors_and_statuses_keep_the_normal_backoff() -> None:
    seeded = Backoff.exponential(base=1.0, cap=30.0, random=random.Random(7))
    twin = Backoff.exponential(base=1.0, cap=30.0, random=random.Random(7))
    policy = RetryAfter(cap=60.0, backoff=seeded)
    # A 500 with Retry-After is not a 429/503: the header is not honoured.
    errors: list[Exception] = [Boom("not HTTP"), shed(500, "40"), OSError("reset")]
    attempts, subscriber, _ = run(errors, policy)
    assert attempts.waits() == pytest.approx([twin.delay(k) for k in range(3)])
    assert subscriber.completed


def test_statuses_are_configurable() -> None:
    policy = RetryAfter(statuses={500, 502}, backoff=NO_JITTER)
    attempts, _, _ = run([shed(500, "9"), shed(503, "9"), shed(502, "4")], policy)
    assert attempts.waits() == [9.0, 0.25, 4.0]


def test_a_retry_after_given_without_the_header_is_used() -> None:
    policy = RetryAfter(backoff=NO_JITTER)
    made_by_hand = HTTPStatusError(429, {}, retry_after=12.0)
    attempts, _, _ = run([made_by_hand], policy)
    assert attempts.waits() == [12.0]


def test_a_non_finite_retry_after_falls_back_to_the_backoff() -> None:
    # NaN would pass every comparison and become the wait; inf is not a stated wait either.
    policy = RetryAfter(cap=30.0, backoff=NO_JITTER)
    errors = [HTTPStatusError(503, {}, value) for value in (math.nan, math.inf, -math.inf)]
    assert [policy.stated_wait(error) for error in errors] == [None, None, None]
    attempts, subscriber, _ = run(errors, policy)
    assert attempts.waits() == [0.25, 0.25, 0.25]
    assert subscriber.completed


def test_header_values_that_are_not_ascii_delta_seconds_fall_back_to_the_backoff() -> None:
    policy = RetryAfter(cap=30.0, backoff=NO_JITTER)
    hostile: list[object] = [b"5", 5, None, "1_000", "\u0663", "\uff15", "1e3", "+5", ".5", "5."]
    for value in hostile:
        error = HTTPStatusError(503, {"Retry-After": value})  # type: ignore[dict-item]
        assert policy.stated_wait(error) is None, value
        assert parse_retry_after(value) is None, value  # type: ignore[arg-type]
    assert parse_retry_after("9" * 400) is None  # all digits, but beyond a float
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after("007") == 7.0


def test_httpx_raise_for_status_errors_are_read_too() -> None:
    httpx = pytest.importorskip("httpx", reason="the http extra: pip install 'reactive-bp[http]'")
    request = httpx.Request("GET", "http://example.invalid/")
    response = httpx.Response(503, headers={"Retry-After": "6"}, request=request)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        response.raise_for_status()
    policy = RetryAfter(backoff=NO_JITTER)
    attempts, _, _ = run([caught.value], policy)
    assert attempts.waits() == [6.0]


def test_retry_gives_up_after_max_attempts_whatever_the_server_says() -> None:
    policy = RetryAfter(cap=10.0, backoff=NO_JITTER)
    attempts, subscriber, vts = run([shed(503, "1")] * 10, policy, max_attempts=3)
    assert attempts.waits() == [1.0, 1.0]
    assert len(subscriber.errors) == 1
    error = subscriber.errors[0]
    assert isinstance(error, RetryExhaustedError) and error.attempts == 3
    assert isinstance(error.last_error, HTTPStatusError)
    assert vts.pending == 0


def test_cancel_during_a_stated_wait_subscribes_nothing_more() -> None:
    vts = VirtualTimeScheduler()
    attempts = Attempts([shed(503, "30")], vts)
    subscriber: TestSubscriber[str] = TestSubscriber(UNBOUNDED)
    Flow.defer(attempts).retry(3, RetryAfter(), scheduler=vts).subscribe(subscriber)
    vts.advance_by(10.0)
    subscriber.cancel()
    vts.advance_by(100.0)
    assert attempts.subscribed_at == [0.0]
    assert vts.pending == 0 and not subscriber.is_terminated


@given(
    stated=st.integers(min_value=0, max_value=10**7),
    cap=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
)
def test_the_wait_is_the_stated_seconds_capped(stated: int, cap: float) -> None:
    policy = RetryAfter(cap=cap, backoff=NO_JITTER)
    assert policy.delay_for(0, shed(429, str(stated))) == min(float(stated), cap)


# -- the RetryPolicy seam ----------------------------------------------------------------------


def test_backoff_is_a_retry_policy_that_ignores_the_error() -> None:
    backoff = Backoff.exponential(base=1.0, jitter="none")
    assert isinstance(backoff, RetryPolicy)
    assert [backoff.delay_for(k, Boom()) for k in range(4)] == [backoff.delay(k) for k in range(4)]


def test_any_policy_object_may_choose_the_wait_from_the_error() -> None:
    class ByMessage:
        def delay_for(self, attempt: int, error: Exception) -> float:
            return float(len(str(error))) + attempt

    attempts, subscriber, _ = run([Boom("abc"), Boom("a")], ByMessage())
    assert attempts.waits() == [3.0, 2.0]
    assert subscriber.completed


@pytest.mark.parametrize("wait", [-1.0, math.nan])
def test_a_policy_returning_a_bad_wait_fails_the_stream(wait: float) -> None:
    class Broken:
        def delay_for(self, attempt: int, error: Exception) -> float:
            return wait

    attempts, subscriber, _ = run([Boom("first")], Broken())
    assert attempts.subscribed_at == [0.0]
    assert len(subscriber.errors) == 1
    error = subscriber.errors[0]
    assert isinstance(error, ValueError) and isinstance(error.__context__, Boom)


def test_a_raising_policy_fails_the_stream_with_the_error_as_context() -> None:
    class Raising:
        def delay_for(self, attempt: int, error: Exception) -> float:
            raise KeyError("policy")

    _, subscriber, _ = run([Boom("first")], Raising())
    assert len(subscriber.errors) == 1
    error = subscriber.errors[0]
    assert isinstance(error, KeyError) and isinstance(error.__context__, Boom)


def test_retry_rejects_what_is_not_a_policy() -> None:
    with pytest.raises(TypeError):
        Flow.just(1).retry(2, backoff=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryAfter(cap=-1.0),
        lambda: RetryAfter(cap=math.inf),
        lambda: RetryAfter(cap=math.nan),
        lambda: RetryAfter(cap="5"),  # type: ignore[arg-type]
        lambda: RetryAfter(backoff=1.0),  # type: ignore[arg-type]
    ],
)
def test_retry_after_rejects_bad_parameters(build: Callable[[], RetryAfter]) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()


def test_the_fluent_api_takes_a_retry_after() -> None:
    # Type-checks (mypy --strict over tests) and runs: RetryAfter where a Backoff goes.
    flow: Flow[int] = Flow.just(1).retry(3, backoff=RetryAfter(cap=1.0))
    assert flow.to_list() == [1]
