"""A Hypothesis state machine over a subscription: any order of requests and cancels."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from reactive_bp import UNBOUNDED, Flow, NonPositiveRequestError
from reactive_bp.testing import TestSubscriber

SIZE = 40

PIPELINES = {
    "source": lambda f: f,
    "map_filter": lambda f: f.map(lambda x: x * 2).filter(lambda x: x % 3 != 0),
    "take": lambda f: f.take(25),
    "skip_buffer": lambda f: f.skip(2).buffer(3),
}


def _model(name: str) -> list[object]:
    data = list(range(SIZE))
    if name == "map_filter":
        return [x * 2 for x in data if (x * 2) % 3 != 0]
    if name == "take":
        return list(data[:25])
    if name == "skip_buffer":
        rest = data[2:]
        return [rest[i : i + 3] for i in range(0, len(rest), 3)]
    return list(data)


class SubscriptionMachine(RuleBasedStateMachine):
    """Tracks what a correct subscription must have delivered after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.subscriber: TestSubscriber[object] = TestSubscriber()
        self.expected: list[object] = []
        self.requested = 0
        self.cancelled = False
        self.failed = False

    @precondition(lambda self: not self.name)
    @rule(name=st.sampled_from(sorted(PIPELINES)))
    def subscribe(self, name: str) -> None:
        self.name = name
        self.expected = _model(name)
        PIPELINES[name](Flow.range(SIZE)).subscribe(self.subscriber)

    @precondition(lambda self: bool(self.name))
    @rule(n=st.integers(min_value=1, max_value=12) | st.just(UNBOUNDED))
    def request(self, n: int) -> None:
        self.subscriber.request(n)
        if not (self.cancelled or self.failed):
            self.requested = min(self.requested + n, UNBOUNDED)

    @precondition(lambda self: bool(self.name))
    @rule(n=st.sampled_from([0, -1, -(2**63)]))
    def bad_request(self, n: int) -> None:
        before = len(self.subscriber.errors)
        self.subscriber.request(n)
        if not (self.cancelled or self.failed or self.subscriber.completed):
            assert len(self.subscriber.errors) == before + 1
            assert isinstance(self.subscriber.errors[-1], NonPositiveRequestError)
            self.failed = True

    @precondition(lambda self: bool(self.name))
    @rule()
    def cancel(self) -> None:
        self.subscriber.cancel()
        self.cancelled = True

    @invariant()
    def delivered_exactly_what_was_possible(self) -> None:
        items = self.subscriber.items
        assert len(items) <= self.requested  # Rule 1.1
        assert items == self.expected[: len(items)]  # no loss, no duplicate, in order
        if not (self.cancelled or self.failed):
            # Synchronous source: everything requested and available has arrived.
            assert len(items) == min(self.requested, len(self.expected))
        terminals = int(self.subscriber.completed) + len(self.subscriber.errors)
        assert terminals <= 1  # Rule 1.7
        if self.subscriber.completed:
            assert items == self.expected
        self.subscriber.assert_clean()


SubscriptionMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=25)
test_subscription_state_machine = pytest.mark.no_undeliverable(SubscriptionMachine.TestCase)
