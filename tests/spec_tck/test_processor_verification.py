"""IdentityProcessorVerification: the publisher and whitebox suites plus its own checks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from reactive_bp.abc import Processor, Publisher
from spec_tck import (
    IdentityProcessorVerification,
    PublisherVerification,
    TestEnvironment,
    format_results,
)
from spec_tck._processor import HelperPool, HelperPublisher

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
    assert len(cases) == 40 + 27 + 3
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
        subs.PassesOnOnlyWhenRequestedProcessor,
        "required_spec101_subscription_request_must_result_in_the_correct_number_of_produced_"
        "elements",
        "Rule 1.1: after request(1)",
    ),
]


@pytest.mark.parametrize(
    ("factory", "check", "text"),
    BROKEN,
    ids=["swallows-errors", "no-cancel", "assumes-synchronous-upstream"],
)
def test_broken_processor_fails_the_right_check(factory: Any, check: str, text: str) -> None:
    (result,) = processor(factory).run([check])
    assert result.status == "failed", result
    assert text in result.message


def test_the_helper_publisher_is_asynchronous_like_the_jvm_kits() -> None:
    """The processor is fed from other threads; a processor that assumes its upstream
    signals inside request() passes only with a synchronous helper."""
    verification = processor(subs.IdentityProcessor)
    assert verification.run(["required_spec101"])[0].status == "passed"
    assert verification._saw_foreign_signal is True

    class SynchronousUpstream(IdentityProcessorVerification[int]):
        def create_identity_processor(self, buffer_size: int) -> Processor[int, int]:
            return subs.PassesOnOnlyWhenRequestedProcessor()

        def create_element(self, index: int) -> int:
            return index

        def create_helper_publisher(self, elements: int) -> Publisher[int]:
            return HelperPublisher(elements, self.create_element)

    env = TestEnvironment(default_timeout_ms=250, no_signals_timeout_ms=30)
    selection = ["required_create_publisher3", "required_spec101", "required_spec105"]
    with_sync = SynchronousUpstream(env).run(selection)
    assert [r for r in with_sync if r.status == "failed"] == [], format_results(with_sync)
    results = processor(subs.PassesOnOnlyWhenRequestedProcessor).run(selection)
    assert {r.status for r in results} == {"failed"}, format_results(results)


def test_a_processor_that_never_cancels_upstream_leaves_no_helper_running() -> None:
    """The helper stops when the check returns (its threads too: the autouse fixture checks)."""
    (result,) = processor(subs.KeepsUpstreamOnCancelProcessor).run(
        ["required_spec317_must_not_signal_on_error_when_pending_above_unbounded"]
    )
    assert result.status == "passed", result


class _Pooled(PublisherVerification[int]):
    """The helper publisher itself, checked as a publisher in both modes."""

    pool: HelperPool | None = None

    def create_publisher(self, elements: int) -> Publisher[int]:
        execute = None if self.pool is None else self.pool.execute
        return HelperPublisher(elements, lambda index: index, execute=execute)


@pytest.mark.parametrize("pooled", [True, False], ids=["pool", "synchronous"])
def test_the_helper_publisher_passes_the_publisher_checks(pooled: bool) -> None:
    verification = _Pooled(TestEnvironment(default_timeout_ms=500, no_signals_timeout_ms=30))
    pool = HelperPool() if pooled else None
    verification.pool = pool
    try:
        results = verification.run()
    finally:
        if pool is not None:
            assert pool.shutdown(1.0)
    others = [r for r in results if r.status not in ("passed", "untested")]
    assert all("create_failed_publisher() returned None" in r.message for r in others), others


# -- Rule 1.3 under racing: both sides of the processor --------------------------------------


@pytest.fixture
def racing() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so a 1 % race shows up."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("racing")
def test_the_reference_processor_holds_items_until_on_subscribe_returned() -> None:
    """Rule 1.3, once a flake of ``TestIdentityProcessor::test_stochastic_spec103``: the kit's
    subscriber requests inside ``on_subscribe``; the processor forwards that upstream, and the
    asynchronous helper answers with ``on_next`` on a pool thread, which the processor passed
    on at once, while ``on_subscribe`` was still running on the check's thread."""
    for _ in range(5):
        (result,) = processor(subs.IdentityProcessor).run(["stochastic_spec103"])
        assert result.status == "passed", result.message


@pytest.mark.usefixtures("racing")
def test_the_helper_publisher_signals_serially_when_raced() -> None:
    """The kit's helper obeys Rule 1.3 itself: requests from on_subscribe and on_next, pool
    threads taking over between batches."""
    for _ in range(3):
        verification = _Pooled(TestEnvironment(default_timeout_ms=1000, no_signals_timeout_ms=30))
        verification.pool = HelperPool()
        try:
            results = verification.run(["stochastic_spec103", "required_spec303", "spec317"])
        finally:
            assert verification.pool.shutdown(1.0)
        assert [r for r in results if r.status != "passed"] == [], format_results(results)
