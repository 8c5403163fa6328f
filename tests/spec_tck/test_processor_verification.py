"""IdentityProcessorVerification: the publisher and whitebox suites plus its own checks."""

from __future__ import annotations

from typing import Any

import pytest

from reactive_bp.abc import Processor
from spec_tck import IdentityProcessorVerification, TestEnvironment

from . import _subscribers as subs


class TestIdentityProcessor(IdentityProcessorVerification[int]):
    def create_identity_processor(self, buffer_size: int) -> Processor[int, int]:
        return subs.IdentityProcessor()

    def create_element(self, index: int) -> int:
        return index

    def max_supported_subscribers(self) -> int:
        return 1


class TestIdentityProcessorOnAsyncio(TestIdentityProcessor):
    asyncio = True


def processor(factory: Any) -> IdentityProcessorVerification[int]:
    class Under(IdentityProcessorVerification[int]):
        def create_identity_processor(self, buffer_size: int) -> Processor[int, int]:
            return factory()  # type: ignore[no-any-return]

        def create_element(self, index: int) -> int:
            return index

        def max_supported_subscribers(self) -> int:
            return 1

    return Under(TestEnvironment(default_timeout_ms=250, no_signals_timeout_ms=30))


def test_processor_catalogue_is_both_suites_plus_three() -> None:
    cases = IdentityProcessorVerification.rule_cases()
    assert len(cases) == 38 + 27 + 3
    assert len({c.id for c in cases}) == len(cases)


def test_single_subscriber_processor_skips_the_multi_subscriber_checks() -> None:
    results = {r.id: r for r in processor(subs.IdentityProcessor).run(["401", "spec104_must_call"])}
    assert {r.status for r in results.values()} == {"skipped"}
    assert all("max_supported_subscribers() is 1" in r.message for r in results.values())


BROKEN = [
    (
        subs.SwallowsErrorsProcessor,
        "required_spec402_must_immediately_pass_on_on_error_events_received_from_its_upstream_"
        "to_its_downstream",
        "Rule 4.2: the upstream error must be passed on",
    ),
    (
        subs.KeepsUpstreamOnCancelProcessor,
        "required_exercise_whitebox_happy_path",
        "expected the subscriber to call cancel()",
    ),
    (
        subs.KeepsUpstreamOnCancelProcessor,
        "required_spec317_must_not_signal_on_error_when_pending_above_unbounded",
        "never cancelled its upstream",
    ),
]


@pytest.mark.parametrize(
    ("factory", "check", "text"), BROKEN, ids=["swallows-errors", "no-cancel", "no-cancel-317"]
)
def test_broken_processor_fails_the_right_check(factory: Any, check: str, text: str) -> None:
    (result,) = processor(factory).run([check])
    assert result.status == "failed", result
    assert text in result.message
