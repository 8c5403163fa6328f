"""on_error_resume and on_error_return: matrix, demand carry-over, error routing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, Flow, NonPositiveRequestError
from reactive_bp.abc import Publisher
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.scenarios import SCENARIOS, Boom, OperatorCase

pytestmark = pytest.mark.no_undeliverable


def _resume_with(error: Exception) -> Publisher[int]:
    return Flow.just(-1)


CASES: list[OperatorCase] = [
    OperatorCase("on_error_resume", lambda f: f.on_error_resume(_resume_with), lambda xs: xs),
    OperatorCase("on_error_return", lambda f: f.on_error_return(-1), lambda xs: xs),
    OperatorCase(
        "on_error_return_after_failure",
        lambda f: f.map(lambda x: 1 // (x - 10)).on_error_return(-1, ZeroDivisionError),
        lambda xs: [1 // (x - 10) for x in xs[:10]] + [-1],
    ),
]


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        for name, scenario in SCENARIOS.items():
            if name in ("raising_callback", "upstream_error"):
                continue  # both recover here; tested below
            if case.name.endswith("after_failure") and name == "manual_upstream":
                continue  # the scenario stops requesting once upstream is cancelled
            params.append(pytest.param(case, scenario, id=f"{case.name}-{name}"))
    return params


@pytest.mark.parametrize(("case", "scenario"), _params())
def test_scenario(
    case: OperatorCase, scenario: Callable[[OperatorCase], TestSubscriber[object]]
) -> None:
    scenario(case).assert_clean()


def test_outstanding_demand_carries_over_to_the_fallback() -> None:
    source: TestPublisher[int] = TestPublisher()
    fallback: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(5)
    source.on_error_resume(lambda _: fallback).subscribe(subscriber)
    assert source.requests == [5]
    source.send_next(1, 2)
    source.send_error(Boom("source"))
    assert fallback.requests == [3]
    subscriber.request(2)
    assert fallback.requests == [3, 2]
    fallback.send_next(3, 4, 5, 6, 7)
    fallback.send_complete()
    assert subscriber.items == [1, 2, 3, 4, 5, 6, 7] and subscriber.completed
    subscriber.assert_clean()


def test_the_fallback_receives_the_error() -> None:
    seen: list[Exception] = []
    error = Boom("source")

    def fallback(e: Exception) -> Publisher[int]:
        seen.append(e)
        return Flow.just(1)

    assert Flow.error(error).on_error_resume(fallback).to_list() == [1]
    assert seen == [error]


def test_a_non_matching_error_passes_through_without_calling_the_fallback() -> None:
    called: list[Exception] = []

    def fallback(e: Exception) -> Publisher[int]:
        called.append(e)
        return Flow.just(1)

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.error(KeyError("k")).on_error_resume(fallback, (ValueError, TypeError)).subscribe(
        subscriber
    )
    assert [type(e) for e in subscriber.errors] == [KeyError] and called == []


def test_an_error_from_the_fallback_is_not_resumed_again() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.error(Boom("first")).on_error_resume(lambda _: Flow.error(Boom("second"))).subscribe(
        subscriber
    )
    assert [str(e) for e in subscriber.errors] == ["second"]


def test_a_raising_fallback_is_signalled_with_the_original_error_as_context() -> None:
    original = Boom("source")

    def fallback(_: Exception) -> Publisher[int]:
        raise RuntimeError("fallback failed")

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.error(original).on_error_resume(fallback).subscribe(subscriber)
    assert [type(e) for e in subscriber.errors] == [RuntimeError]
    assert subscriber.errors[0].__context__ is original


def test_a_fallback_returning_none_is_a_type_error() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.error(Boom("x")).on_error_resume(lambda _: None).subscribe(subscriber)  # type: ignore[arg-type,return-value]
    assert [type(e) for e in subscriber.errors] == [TypeError]


def test_a_bad_request_is_not_recovered_from() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.never().on_error_resume(lambda _: Flow.just(1)).subscribe(subscriber)
    subscriber.request(0)
    assert [type(e) for e in subscriber.errors] == [NonPositiveRequestError]
    assert subscriber.items == []


def test_cancel_reaches_the_source_and_later_the_fallback() -> None:
    source: TestPublisher[int] = TestPublisher()
    fallback: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    source.on_error_resume(lambda _: fallback).subscribe(subscriber)
    source.send_error(Boom("x"))
    assert not source.cancelled
    subscriber.cancel()
    assert fallback.cancelled
    fallback.send_next(1)  # late (Rule 2.8): dropped
    assert subscriber.items == [] and not subscriber.is_terminated

    other: TestPublisher[int] = TestPublisher()
    second: TestSubscriber[int] = TestSubscriber(1)
    other.on_error_resume(lambda _: Flow.just(1)).subscribe(second)
    second.cancel()
    assert other.cancelled


def test_on_error_return_waits_for_demand() -> None:
    source: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    source.on_error_return(99).subscribe(subscriber)
    source.send_next(1)
    source.send_error(Boom("x"))
    assert subscriber.items == [1] and not subscriber.is_terminated
    subscriber.request(2)
    assert subscriber.items == [1, 99] and subscriber.completed
    subscriber.assert_clean()


def test_on_error_return_none_raises_type_error_eagerly() -> None:
    with pytest.raises(TypeError):
        Flow.range(3).on_error_return(None)


@pytest.mark.parametrize("when", [int, (ValueError, str), "ValueError"])
def test_when_must_name_exception_types(when: object) -> None:
    with pytest.raises(TypeError):
        Flow.range(3).on_error_resume(lambda _: Flow.just(1), when)  # type: ignore[arg-type]


def test_a_raising_downstream_on_next_is_not_resumed() -> None:
    class Raising(TestSubscriber[int]):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            raise Boom("downstream")

    source: TestPublisher[int] = TestPublisher()
    subscriber = Raising(5)
    source.on_error_resume(lambda _: Flow.just(1)).subscribe(subscriber)
    source.send_next(1)
    assert source.cancelled
    assert [str(e) for e in subscriber.errors] == ["downstream"]


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=20),
    fail_at=st.integers(min_value=0, max_value=10),
)
def test_random_demand_across_the_switch(schedule: list[int], fail_at: int) -> None:
    expected = [*range(fail_at), *range(100, 108)]
    flow = Flow.concat(Flow.range(fail_at), Flow.error(Boom("x"))).on_error_resume(
        lambda _: Flow.range(100, 108)
    )
    subscriber: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(subscriber)
    for n in schedule:
        subscriber.request(n)
        assert len(subscriber.items) <= subscriber.requested
        assert subscriber.items == expected[: len(subscriber.items)]
    subscriber.assert_clean()
    if subscriber.requested > len(expected):
        assert subscriber.completed and subscriber.items == expected


def test_a_passed_through_error_does_not_cancel_the_terminated_source() -> None:
    source: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber(1)
    source.on_error_resume(lambda _: Flow.just(1), KeyError).subscribe(subscriber)
    source.send_error(Boom("x"))
    assert [type(e) for e in subscriber.errors] == [Boom]
    assert not source.cancelled  # it terminated; cancelling it would be noise
