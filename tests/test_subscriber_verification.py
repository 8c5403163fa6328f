"""reactive_bp's built-in subscribers and sinks under spec_tck's blackbox subscriber checks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from reactive_bp import BaseSubscriber, Flow, LambdaSubscriber, RequestPolicy, Subscriber
from reactive_bp.adapters._pull import _AsyncBridge, _BlockingBridge
from reactive_bp.subscribers._blocking import _Collector
from spec_tck import RuleResult, SubscriberBlackboxVerification, format_results

SUBSCRIBERS: dict[str, Callable[[], Subscriber[int]]] = {
    "BaseSubscriber(unbounded)": lambda: BaseSubscriber(),
    "BaseSubscriber(batch(4))": lambda: BaseSubscriber(RequestPolicy.batch(4)),
    "BaseSubscriber(one_by_one)": lambda: BaseSubscriber(RequestPolicy.one_by_one()),
    "subscribe_with (LambdaSubscriber)": lambda: LambdaSubscriber(
        lambda item: None, lambda error: None, lambda: None, RequestPolicy.batch(8)
    ),
    "to_list / first / last (collector)": lambda: _Collector(None),
    "first (collector of one)": lambda: _Collector(1),
    "blocking_iter (bridge)": lambda: _BlockingBridge(16),
    "aiter (bridge)": lambda: _AsyncBridge(16, asyncio.new_event_loop()),
}


def verification_for(factory: Callable[[], Subscriber[int]]) -> SubscriberBlackboxVerification[int]:
    """A blackbox verification whose subscriber comes from ``factory``."""

    class Verification(SubscriberBlackboxVerification[int]):
        def create_subscriber(self) -> Subscriber[int]:
            return factory()

        def create_element(self, element: int) -> int:
            return element

    return Verification()


@pytest.mark.parametrize("name", sorted(SUBSCRIBERS))
def test_every_required_rule_holds(name: str) -> None:
    results: list[RuleResult] = verification_for(SUBSCRIBERS[name]).run()
    failed = [result for result in results if result.status == "failed"]
    assert not failed, f"{name}:\n{format_results(failed)}"
    assert any(result.status == "passed" for result in results)


def test_a_flow_is_a_publisher_to_these_subscribers() -> None:
    assert Flow.range(3).to_list() == [0, 1, 2]
