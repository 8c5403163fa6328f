"""reactivex interop: a bounded strategy in, everything requested out."""

from __future__ import annotations

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.subject import Subject

from reactive_bp import BufferOverflowError, Flow, OverflowStrategy
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def test_from_observable_buffers_drops_and_counts() -> None:
    subject: Subject[int] = Subject()
    dropped: list[int] = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.from_observable(
        subject, capacity=3, overflow=OverflowStrategy.DROP_OLDEST, on_dropped=dropped.append
    ).subscribe(subscriber)
    for i in range(10):
        subject.on_next(i)
    assert dropped == [0, 1, 2, 3, 4, 5, 6]
    subscriber.request(2)
    assert subscriber.items == [7, 8]
    subject.on_completed()
    subscriber.request(5)
    assert subscriber.items == [7, 8, 9] and subscriber.completed


def test_from_observable_error_strategy_and_dispose_on_cancel() -> None:
    subject: Subject[int] = Subject()
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.from_observable(subject, capacity=2).subscribe(subscriber)
    for i in range(3):
        subject.on_next(i)
    subscriber.request(5)
    assert subscriber.items == [0, 1]
    assert [type(e) for e in subscriber.errors] == [BufferOverflowError]
    other: Subject[int] = Subject()
    cancelling: TestSubscriber[int] = TestSubscriber(1)
    Flow.from_observable(other, capacity=2).subscribe(cancelling)
    assert other.observers
    cancelling.cancel()
    assert not other.observers  # the Observable subscription was disposed


def test_from_observable_relays_errors_and_refuses_wait() -> None:
    with pytest.raises(KeyError):
        Flow.from_observable(reactivex.throw(KeyError("k"))).to_list()
    with pytest.raises(ValueError, match="WAIT"):
        Flow.from_observable(reactivex.of(1), overflow=OverflowStrategy.WAIT)
    assert Flow.from_observable(reactivex.of(1, 2, 3)).to_list() == [1, 2, 3]


def test_to_observable_round_trip_and_dispose() -> None:
    seen: list[int] = []
    done: list[bool] = []
    observable: reactivex.Observable[int] = Flow.range(5).to_observable()
    observable.pipe(ops.skip(1)).subscribe(
        on_next=seen.append, on_completed=lambda: done.append(True)
    )
    assert seen == [1, 2, 3, 4] and done == [True]
    cancelled: list[bool] = []
    disposable = (
        Flow.never().do_on_cancel(lambda: cancelled.append(True)).to_observable().subscribe()
    )
    disposable.dispose()
    assert cancelled == [True]
    errors: list[Exception] = []
    Flow.error(LookupError("x")).to_observable().subscribe(on_error=errors.append)
    assert [type(e) for e in errors] == [LookupError]
