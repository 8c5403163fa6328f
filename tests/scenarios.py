"""The scenario matrix every operator test reuses.

An ``OperatorCase`` says how to apply an operator to a ``Flow[int]``, what it
should produce from a given input list (a reference model), and optionally a
variant whose user callback raises. ``run_*`` functions drive one scenario and
return the ``TestSubscriber`` for assertions; ``SCENARIOS`` lists them so a
test module can parametrize over cases x scenarios.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from reactive_bp import UNBOUNDED, Flow, NonPositiveRequestError
from reactive_bp.testing import TestPublisher, TestSubscriber

Model = Callable[[list[int]], Sequence[object]]
Apply = Callable[[Flow[int]], Flow[object]]


class Boom(Exception):
    """The error a raising callback throws in the matrix."""


def boom(*_: object) -> NoReturn:
    """A user callback that always raises ``Boom``."""
    raise Boom("callback failed")


@dataclass(frozen=True)
class OperatorCase:
    """One operator under test."""

    name: str
    apply: Apply
    model: Model
    raising: Apply | None = None
    # The input the scenarios feed; operators needing special input set it.
    data: Sequence[int] = field(default_factory=lambda: list(range(20)))
    # Whether a downstream cancel must reach upstream immediately.
    propagates_cancel: bool = True
    # Whether the output order is defined (flat_map and merge interleave).
    ordered: bool = True

    def __repr__(self) -> str:
        return self.name


def _expected(case: OperatorCase) -> list[object]:
    return list(case.model(list(case.data)))


def same_items(case: OperatorCase, actual: list[object], expected: list[object]) -> bool:
    """Equal lists, or equal multisets when the operator does not define an order."""
    if case.ordered:
        return actual == expected
    return sorted(map(repr, actual)) == sorted(map(repr, expected))


def could_continue(case: OperatorCase, actual: list[object], expected: list[object]) -> bool:
    """``actual`` is a prefix of ``expected`` (or a sub-multiset when unordered)."""
    if case.ordered:
        return actual == expected[: len(actual)]
    remaining = list(map(repr, expected))
    for item in map(repr, actual):
        if item not in remaining:
            return False
        remaining.remove(item)
    return True


def run_one_at_a_time(case: OperatorCase) -> TestSubscriber[object]:
    """Request 1 in on_subscribe and 1 more after each item."""
    subscriber: TestSubscriber[object] = TestSubscriber(1, request_on_next=1)
    case.apply(Flow.from_iterable(case.data)).subscribe(subscriber)
    assert subscriber.await_terminal(5), "no terminal signal"
    assert same_items(case, subscriber.items, _expected(case))
    assert subscriber.completed and not subscriber.errors
    return subscriber


def run_batches(case: OperatorCase, size: int = 3) -> TestSubscriber[object]:
    """Request ``size`` at a time, whenever the previous batch has arrived."""
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.apply(Flow.from_iterable(case.data)).subscribe(subscriber)
    for _ in range(1000):
        if subscriber.is_terminated:
            break
        before = len(subscriber.items)
        subscriber.request(size)
        assert len(subscriber.items) - before <= size, "more than requested"
    assert same_items(case, subscriber.items, _expected(case))
    assert subscriber.completed and not subscriber.errors
    return subscriber


def run_unbounded(case: OperatorCase) -> TestSubscriber[object]:
    """Request everything at once."""
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.apply(Flow.from_iterable(case.data)).subscribe(subscriber)
    assert subscriber.await_terminal(5)
    assert same_items(case, subscriber.items, _expected(case))
    assert subscriber.completed and not subscriber.errors
    return subscriber


def run_manual_upstream(case: OperatorCase) -> TestSubscriber[object]:
    """Drive a non-conditional TestPublisher: emit exactly what the operator asked for."""
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.apply(upstream).subscribe(subscriber)
    data = list(case.data)
    position = 0
    for _ in range(10_000):
        if subscriber.is_terminated or position >= len(data):
            break
        if upstream.outstanding == 0:
            subscriber.request(1)
        while upstream.outstanding and position < len(data) and not upstream.cancelled:
            upstream.send_next(data[position])
            position += 1
        if upstream.cancelled:
            break
    if not subscriber.is_terminated and not upstream.cancelled:
        upstream.send_complete()
        while not subscriber.is_terminated:
            subscriber.request(1)
    assert same_items(case, subscriber.items, _expected(case))
    assert subscriber.completed and not subscriber.errors
    assert not upstream.bad_requests
    return subscriber


def run_cancel_on_subscribe(case: OperatorCase) -> TestSubscriber[object]:
    """Cancel before any request: nothing arrives and upstream is cancelled."""
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[object] = TestSubscriber()
    case.apply(upstream).subscribe(subscriber)
    subscriber.cancel()
    subscriber.request(5)  # Rule 3.6: a no-op now
    assert subscriber.items == [] and not subscriber.errors
    if case.propagates_cancel:
        assert upstream.cancelled
    return subscriber


def run_cancel_mid_stream(case: OperatorCase) -> TestSubscriber[object]:
    """Cancel after two upstream items: upstream is cancelled, nothing follows."""
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    case.apply(upstream).subscribe(subscriber)
    upstream.send_next(*case.data[:2])
    subscriber.cancel()
    if case.propagates_cancel:
        assert upstream.cancelled
    count = len(subscriber.items)
    upstream.send_next(*case.data[2:5])  # late items (Rule 2.8) are dropped
    upstream.send_complete()
    assert len(subscriber.items) == count
    assert not subscriber.completed and not subscriber.errors
    return subscriber


def run_upstream_error(case: OperatorCase) -> TestSubscriber[object]:
    """An upstream error reaches downstream exactly once, after what was emitted."""
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.apply(upstream).subscribe(subscriber)
    error = Boom("upstream failed")
    upstream.send_error(error)
    assert subscriber.errors == [error]
    assert not subscriber.completed
    return subscriber


def run_raising_callback(case: OperatorCase) -> TestSubscriber[object]:
    """A raising user callback cancels upstream and becomes on_error."""
    assert case.raising is not None
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[object] = TestSubscriber(UNBOUNDED)
    case.raising(upstream).subscribe(subscriber)
    for item in case.data:
        if upstream.cancelled or subscriber.is_terminated:
            break
        upstream.send_next(item)
    if not subscriber.is_terminated:
        upstream.send_complete()
    assert len(subscriber.errors) == 1 and isinstance(subscriber.errors[0], Boom)
    assert not subscriber.completed
    assert upstream.cancelled or not case.propagates_cancel
    return subscriber


def run_bad_requests(case: OperatorCase) -> TestSubscriber[object]:
    """request(0), request(-1) and request(1.5) become on_error, never an exception."""
    for bad, kind in (
        (0, NonPositiveRequestError),
        (-1, NonPositiveRequestError),
        (1.5, TypeError),
    ):
        subscriber: TestSubscriber[object] = TestSubscriber()
        case.apply(Flow.from_iterable(case.data)).subscribe(subscriber)
        subscriber.request(bad)  # type: ignore[arg-type]
        assert len(subscriber.errors) == 1, (bad, subscriber)
        assert isinstance(subscriber.errors[0], kind), subscriber.errors
        if kind is NonPositiveRequestError:
            assert "Rule 3.9" in str(subscriber.errors[0])
        assert subscriber.items == []
        subscriber.assert_clean()
    return subscriber


SCENARIOS: dict[str, Callable[[OperatorCase], TestSubscriber[object]]] = {
    "one_at_a_time": run_one_at_a_time,
    "batches": run_batches,
    "unbounded": run_unbounded,
    "manual_upstream": run_manual_upstream,
    "cancel_on_subscribe": run_cancel_on_subscribe,
    "cancel_mid_stream": run_cancel_mid_stream,
    "upstream_error": run_upstream_error,
    "raising_callback": run_raising_callback,
    "bad_requests": run_bad_requests,
}
