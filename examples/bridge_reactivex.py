"""A reactivex Observable cannot be slowed: bound it with an explicit strategy."""

# supports: --quick

from __future__ import annotations

import sys

from reactivex.subject import Subject

from reactive_bp import Flow, OverflowStrategy
from reactive_bp.testing import TestSubscriber


def main(quick: bool) -> None:
    ticks: Subject[int] = Subject()
    dropped: list[int] = []
    consumer: TestSubscriber[int] = TestSubscriber()
    Flow.from_observable(
        ticks, capacity=100, overflow=OverflowStrategy.DROP_OLDEST, on_dropped=dropped.append
    ).subscribe(consumer)
    burst = 1_000 if quick else 10_000
    for i in range(burst):  # the Observable pushes; nobody has asked for anything yet
        ticks.on_next(i)
    consumer.request(10)
    ticks.on_completed()
    consumer.request(1000)
    print(f"pushed {burst}, kept the newest {len(consumer.items)}, dropped {len(dropped)}")
    print(f"first kept: {consumer.items[0]}, last kept: {consumer.items[-1]}")
    assert len(consumer.items) + len(dropped) == burst
    assert consumer.items == list(range(burst - 100, burst))

    numbers = Flow.range(5).map(lambda x: x * x).to_observable()
    squares: list[int] = []
    numbers.subscribe(on_next=squares.append)
    print(f"and back out as an Observable: {squares}")


if __name__ == "__main__":
    main("--quick" in sys.argv)
