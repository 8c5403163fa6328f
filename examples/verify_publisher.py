"""Check a hand-written publisher against the Reactive Streams rules with spec_tck.

Two publishers of ``0 .. n-1``: a correct one, and one with a classic bug (it hands out one
item more than was requested). The kit passes the first and names the rule the second
breaks. Then the demand checker runs over a tiny ``map`` operator. Exits 0 when the kit
judged all three as expected.

Run: ``python examples/verify_publisher.py``
"""

from __future__ import annotations

import sys
import threading

from reactive_bp.abc import Publisher, Subscriber
from spec_tck import (
    DemandVerification,
    PublisherVerification,
    RuleResult,
    TestEnvironment,
)

UNBOUNDED = 2**63 - 1


class RangeSubscription:
    """Emits on the caller's thread; nested request() calls only add demand (Rule 3.3)."""

    def __init__(self, subscriber: Subscriber[int], count: int, *, sloppy: bool) -> None:
        self._lock = threading.Lock()
        self._subscriber: Subscriber[int] | None = subscriber
        self._count = count
        self._next = 0
        self._demand = 0
        self._emitting = False
        self._error: Exception | None = None
        self._sloppy = sloppy

    def request(self, n: int) -> None:
        with self._lock:
            if self._subscriber is None:
                return
            if n <= 0:  # Rule 3.9: signalled, never raised
                self._error = ValueError(f"Rule 3.9: request({n}) is non-positive")
            else:
                extra = 1 if self._sloppy else 0  # the bug: one more than asked
                self._demand = min(UNBOUNDED, self._demand + n + extra)  # Rule 3.17
        self._drain()

    def cancel(self) -> None:
        with self._lock:
            self._subscriber = None  # Rules 3.12, 3.13

    def _drain(self) -> None:
        with self._lock:
            if self._emitting:
                return
            self._emitting = True
        while True:
            with self._lock:
                subscriber = self._subscriber
                if subscriber is None:
                    self._emitting = False
                    return
                error, done = self._error, self._next >= self._count
                if error is not None or done:
                    self._subscriber = None
                    self._emitting = False
                elif self._demand == 0:
                    self._emitting = False
                    return
                else:
                    item, self._next = self._next, self._next + 1
                    self._demand -= 0 if self._demand == UNBOUNDED else 1
            if error is not None:
                subscriber.on_error(error)
                return
            if done:
                subscriber.on_complete()
                return
            subscriber.on_next(item)


class RangePublisher:
    """Publishes ``0 .. count-1``; ``sloppy=True`` adds the over-delivery bug."""

    def __init__(self, count: int, *, sloppy: bool = False) -> None:
        self._count = count
        self._sloppy = sloppy

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None): Rule 1.9")
        subscription = RangeSubscription(subscriber, self._count, sloppy=self._sloppy)
        subscriber.on_subscribe(subscription)
        if self._count == 0:
            subscription._drain()  # an empty stream completes at once


class VerifyRange(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return RangePublisher(elements)


class VerifySloppyRange(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return RangePublisher(elements, sloppy=True)


class MapOperator:
    """``map`` as the smallest possible operator: demand and cancel pass straight up."""

    def __init__(self, upstream: Publisher[int]) -> None:
        self._upstream = upstream

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        self._upstream.subscribe(_MapSubscriber(subscriber))


class _MapSubscriber:
    def __init__(self, downstream: Subscriber[int]) -> None:
        self._downstream = downstream

    def on_subscribe(self, subscription: object) -> None:
        self._downstream.on_subscribe(subscription)  # type: ignore[arg-type]

    def on_next(self, item: int) -> None:
        self._downstream.on_next(item * 10)

    def on_error(self, error: Exception) -> None:
        self._downstream.on_error(error)

    def on_complete(self) -> None:
        self._downstream.on_complete()


def report(title: str, results: list[RuleResult]) -> int:
    counts = dict.fromkeys(("passed", "failed", "skipped", "untested"), 0)
    for result in results:
        counts[result.status] += 1
    print(f"{title}: " + " ".join(f"{status}={n}" for status, n in counts.items()))
    for result in results:
        if result.status == "failed":
            print(f"  FAILED {result.id}")
            print("    " + result.message.replace("\n", "\n    "))
    return counts["failed"]


def main() -> int:
    env = TestEnvironment(default_timeout_ms=500)
    good = report("RangePublisher", VerifyRange(env).run())
    sloppy_results = VerifySloppyRange(env).run(["spec101", "spec102"])
    bad = report("RangePublisher(sloppy=True), Rules 1.1/1.2 only", sloppy_results)

    DemandVerification(
        name="map(x * 10)",
        operator=MapOperator,
        model=lambda xs: [x * 10 for x in xs],
        max_examples=50,
    ).run()
    print("map(x * 10): demand checker passed 50 random request/emit/cancel schedules")

    as_expected = good == 0 and bad > 0
    print(
        "Verdict: "
        + (
            "the kit passed the correct publisher and caught the over-delivering one."
            if as_expected
            else "UNEXPECTED - see above."
        )
    )
    return 0 if as_expected else 1


if __name__ == "__main__":
    sys.exit(main())
