"""limit_rate: upstream demand bounded by ``high``, replenished by ``low``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, Flow
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.scenarios import SCENARIOS, Boom, OperatorCase

pytestmark = pytest.mark.no_undeliverable

CASES: list[OperatorCase] = [
    OperatorCase("limit_rate", lambda f: f.limit_rate(4), lambda xs: xs),
    OperatorCase("limit_rate_1", lambda f: f.limit_rate(1), lambda xs: xs),
    OperatorCase("limit_rate_high_low", lambda f: f.limit_rate(7, 2), lambda xs: xs),
]


def _params() -> list[object]:
    return [
        pytest.param(case, scenario, id=f"{case.name}-{name}")
        for case in CASES
        for name, scenario in SCENARIOS.items()
        if name != "raising_callback"
    ]


@pytest.mark.parametrize(("case", "scenario"), _params())
def test_scenario(
    case: OperatorCase, scenario: Callable[[OperatorCase], TestSubscriber[object]]
) -> None:
    scenario(case).assert_clean()


@pytest.mark.parametrize(
    ("high", "low"), [(0, None), (-1, None), (1.5, None), (4, 0), (4, 5), (4, 1.0), (True, None)]
)
def test_invalid_arguments_raise_value_error_eagerly(high: object, low: object) -> None:
    with pytest.raises(ValueError):
        Flow.range(3).limit_rate(high, low)  # type: ignore[arg-type]


def test_requests_high_then_low_each_time_low_items_were_delivered() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.limit_rate(8).subscribe(subscriber)  # low = 8 - 2 = 6
    assert upstream.requests == [8]
    upstream.send_next(*range(8))
    subscriber.request(5)
    assert upstream.requests == [8]  # 5 delivered < low
    subscriber.request(1)
    assert upstream.requests == [8, 6]
    subscriber.request(UNBOUNDED)
    assert subscriber.items == list(range(8))
    assert upstream.requests == [8, 6]  # 2 more delivered, not yet 6
    upstream.send_next(*range(8, 14))
    assert upstream.requests == [8, 6, 6]
    assert upstream.peak_outstanding <= 8
    subscriber.assert_clean()


def test_an_unbounded_downstream_never_reaches_upstream() -> None:
    requests: list[int] = []
    items = Flow.range(1000).do_on_request(requests.append).limit_rate(10, 4).to_list()
    assert items == list(range(1000))
    assert requests[0] == 10
    assert all(n % 4 == 0 for n in requests[1:])
    assert max(requests) <= 10 and UNBOUNDED not in requests


def test_queued_items_wait_for_demand_then_the_error_follows_them() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.limit_rate(5).subscribe(subscriber)
    upstream.send_next(1, 2, 3)
    upstream.send_error(Boom("late"))
    assert subscriber.items == [] and not subscriber.errors
    subscriber.request(2)
    assert subscriber.items == [1, 2] and not subscriber.errors
    subscriber.request(1)
    assert subscriber.items == [1, 2, 3] and [type(e) for e in subscriber.errors] == [Boom]
    subscriber.assert_clean()


def test_completion_follows_the_queued_items_without_extra_demand() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.limit_rate(5).subscribe(subscriber)
    upstream.send_next(1, 2)
    upstream.send_complete()
    assert not subscriber.completed
    subscriber.request(2)
    assert subscriber.items == [1, 2] and subscriber.completed


def test_cancel_reaches_upstream_and_drops_queued_items() -> None:
    cancelled: list[bool] = []
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.do_on_cancel(lambda: cancelled.append(True)).limit_rate(5).subscribe(subscriber)
    upstream.send_next(1, 2)
    subscriber.cancel()
    subscriber.request(2)
    assert cancelled == [True] and upstream.cancelled
    assert subscriber.items == []


@settings(max_examples=80, deadline=None)
@given(
    high=st.integers(min_value=1, max_value=10),
    low_fraction=st.floats(min_value=0, max_value=1),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("request"), st.integers(min_value=1, max_value=12)),
            st.tuples(st.just("emit"), st.integers(min_value=0, max_value=12)),
            st.tuples(st.just("cancel"), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_random_schedules_keep_upstream_demand_within_high(
    high: int, low_fraction: float, steps: list[tuple[str, int]]
) -> None:
    low = max(1, min(high, round(high * low_fraction)))
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.limit_rate(high, low).subscribe(subscriber)
    sent = 0
    for kind, n in steps:
        if kind == "request":
            subscriber.request(n)
        elif kind == "emit":
            for _ in range(min(n, upstream.outstanding)):
                upstream.send_next(sent)
                sent += 1
        else:
            subscriber.cancel()
        assert len(subscriber.items) <= subscriber.requested
        assert subscriber.items == list(range(len(subscriber.items)))
        queued = sent - len(subscriber.items)
        assert upstream.outstanding + (0 if upstream.cancelled else queued) <= high
        assert upstream.peak_outstanding <= high
        assert all(n % low == 0 for n in upstream.requests[1:])
    subscriber.assert_clean()
    if not upstream.cancelled:
        # No loss: everything sent is delivered once demand allows.
        subscriber.request(sent + 1)
        assert subscriber.items == list(range(sent))
