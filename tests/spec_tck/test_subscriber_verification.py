"""Subscriber verifications: reference subscribers pass, broken ones fail the right check."""

from __future__ import annotations

from typing import Any

import pytest

from reactive_bp.abc import Subscriber
from spec_tck import (
    SubscriberBlackboxVerification,
    SubscriberWhiteboxVerification,
    TestEnvironment,
    WhiteboxSubscriberProbe,
)

from . import _subscribers as subs


def fast_env() -> TestEnvironment:
    return TestEnvironment(default_timeout_ms=250, no_signals_timeout_ms=30, poll_timeout_ms=5)


# -- collected by the plugin -----------------------------------------------------------------


class TestBatchingSubscriberBlackbox(SubscriberBlackboxVerification[int]):
    def create_subscriber(self) -> Subscriber[int]:
        return subs.BatchingSubscriber()

    def create_element(self, index: int) -> int:
        return index


class TestProbedSubscriberWhitebox(SubscriberWhiteboxVerification[int]):
    def create_subscriber(self, probe: WhiteboxSubscriberProbe[int]) -> Subscriber[int]:
        return subs.ProbedSubscriber(probe)

    def create_element(self, index: int) -> int:
        return index


class TestProbedSubscriberOnAsyncio(SubscriberWhiteboxVerification[int]):
    asyncio = True

    def create_subscriber(self, probe: WhiteboxSubscriberProbe[int]) -> Subscriber[int]:
        return subs.ProbedSubscriber(probe)

    def create_element(self, index: int) -> int:
        return index


# -- helpers ---------------------------------------------------------------------------------


def blackbox(factory: Any) -> SubscriberBlackboxVerification[int]:
    class Under(SubscriberBlackboxVerification[int]):
        def create_subscriber(self) -> Subscriber[int]:
            return factory()  # type: ignore[no-any-return]

        def create_element(self, index: int) -> int:
            return index

    return Under(fast_env())


def whitebox(factory: Any) -> SubscriberWhiteboxVerification[int]:
    class Under(SubscriberWhiteboxVerification[int]):
        def create_subscriber(self, probe: WhiteboxSubscriberProbe[int]) -> Subscriber[int]:
            return factory(probe)  # type: ignore[no-any-return]

        def create_element(self, index: int) -> int:
            return index

    return Under(fast_env())


def test_catalogues_match_the_jvm_kit() -> None:
    white = SubscriberWhiteboxVerification.rule_cases()
    black = SubscriberBlackboxVerification.rule_cases()
    assert (len(white), sum(c.kind == "required" for c in white)) == (27, 14)
    assert (len(black), sum(c.kind == "required" for c in black)) == (26, 11)


def test_reference_subscribers_pass() -> None:
    for verification in (blackbox(subs.BatchingSubscriber), whitebox(subs.ProbedSubscriber)):
        results = verification.run()
        assert [r for r in results if r.status not in ("passed", "untested")] == []


BLACKBOX_BROKEN = [
    (
        subs.RequestsInOnComplete,
        "required_spec203_blackbox_must_not_call_methods_on_subscription_or_publisher_in_on_complete",
        "Rule 2.3: the subscriber called request(1) from within on_complete",
    ),
    (
        subs.CancelsInOnError,
        "required_spec203_blackbox_must_not_call_methods_on_subscription_or_publisher_in_on_error",
        "Rule 2.3: the subscriber called cancel() from within on_error",
    ),
    (
        subs.KeepsSecondSubscription,
        "required_spec205_blackbox_must_call_subscription_cancel_if_it_already_has_an_"
        "subscription_and_receives_another_on_subscribe_signal",
        "Rule 2.5",
    ),
    (
        subs.NeverRequests,
        "required_spec201_blackbox_must_signal_demand_via_subscription_request",
        "expected the subscriber to call request(n)",
    ),
    (
        subs.AcceptsNoneItem,
        "required_spec213_blackbox_on_next_must_raise_type_error_when_parameters_are_none",
        "on_next(None) returned normally",
    ),
    (
        subs.HundredItemBuffer,
        "required_spec201_blackbox_must_signal_demand_via_subscription_request",
        "Rule 2.13: on_next(100) raised OverflowError",
    ),
    (
        subs.RaisesInOnError,
        "required_spec210_blackbox_must_be_prepared_to_receive_an_on_error_signal_without_"
        "preceding_request_call",
        "Rule 2.13: on_error(...) raised RuntimeError",
    ),
]


@pytest.mark.parametrize(
    ("factory", "check", "text"), BLACKBOX_BROKEN, ids=[f.__name__ for f, _, _ in BLACKBOX_BROKEN]
)
def test_broken_subscriber_fails_the_right_blackbox_check(
    factory: Any, check: str, text: str
) -> None:
    results = {r.id: r for r in blackbox(factory).run()}
    assert results[check].status == "failed", results[check]
    assert text in results[check].message


WHITEBOX_BROKEN = [
    (
        subs.UnderRequestingProbedSubscriber,
        "required_spec308_request_must_register_given_number_elements_to_be_produced",
        "the second of trigger_request(2)",
    ),
    (
        subs.ForgetsToReportOnSubscribe,
        "required_exercise_whitebox_happy_path",
        "did not call probe.register_on_subscribe(puppet)",
    ),
]


@pytest.mark.parametrize(
    ("factory", "check", "text"), WHITEBOX_BROKEN, ids=[f.__name__ for f, _, _ in WHITEBOX_BROKEN]
)
def test_broken_subscriber_fails_the_right_whitebox_check(
    factory: Any, check: str, text: str
) -> None:
    results = {r.id: r for r in whitebox(factory).run()}
    assert results[check].status == "failed", results[check]
    assert text in results[check].message


def test_whitebox_rule_2_3_uses_marker_frames_not_names() -> None:
    """A subscriber whose own helper is *named* on_complete must not be flagged."""

    class NamedLikeASignal(subs.ProbedSubscriber):
        def on_complete(self) -> None:
            def on_complete() -> None:  # a generic name on the stack
                self.probe.register_on_complete()

            on_complete()

        def on_next(self, item: object) -> None:
            super().on_next(item)
            self.subscription.request(1)

    results = whitebox(NamedLikeASignal).run(["203", "happy"])
    assert {r.status for r in results} == {"passed"}


def test_blackbox_2_1_stops_sending_when_the_subscriber_cancels() -> None:
    made: list[subs.CancelsAfterFive] = []

    def factory() -> subs.CancelsAfterFive:
        made.append(subs.CancelsAfterFive())
        return made[-1]

    (result,) = blackbox(factory).run(["spec201_blackbox"])
    assert result.status == "passed", result
    assert (len(made[0].items), made[0].after_cancel) == (5, 0)
