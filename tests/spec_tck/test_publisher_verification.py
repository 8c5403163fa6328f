"""PublisherVerification: reference publishers pass (one pytest test per check, via the
plugin); each broken publisher fails the check of the rule it breaks."""

from __future__ import annotations

from typing import Any

import pytest

from reactive_bp.abc import Publisher
from spec_tck import PublisherVerification, RuleResult, TestEnvironment

from . import _publishers as pubs

MAX = 2**63 - 1


def fast_env() -> TestEnvironment:
    """Short timeouts: these runs are expected to fail, and failures wait out timeouts."""
    return TestEnvironment(
        default_timeout_ms=250, no_signals_timeout_ms=30, poll_timeout_ms=5, gc_timeout_ms=200
    )


# -- collected by the plugin: one test per check --------------------------------------------


class TestSyncRangePublisher(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return pubs.SyncRangePublisher(elements)

    def create_failed_publisher(self) -> Publisher[int] | None:
        return pubs.FailedPublisher()


class TestThreadedRangePublisher(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return pubs.ThreadedRangePublisher(elements)

    def create_failed_publisher(self) -> Publisher[int] | None:
        return pubs.FailedPublisher()


class TestAsyncioRangePublisher(PublisherVerification[int]):
    asyncio = True

    def create_publisher(self, elements: int) -> Publisher[int]:
        return pubs.AsyncioRangePublisher(elements)


class TestInfinitePublisher(PublisherVerification[int]):
    """max_elements_from_publisher() == 2**63-1: checks needing on_complete are skipped."""

    def create_publisher(self, elements: int) -> Publisher[int]:
        return pubs.SyncRangePublisher(MAX)

    def max_elements_from_publisher(self) -> int:
        return MAX


# -- helpers -------------------------------------------------------------------------------


def passing_env() -> TestEnvironment:
    """For publishers expected to pass: waits that end as soon as the check is satisfied
    (a reference dropped, a signal seen) may take long on a loaded machine without slowing
    a passing run, so they are generous."""
    return TestEnvironment(
        default_timeout_ms=2000, no_signals_timeout_ms=30, poll_timeout_ms=5, gc_timeout_ms=3000
    )


def verification_for(
    factory: Any,
    failed: Any = None,
    *,
    use_asyncio: bool = False,
    env: TestEnvironment | None = None,
) -> PublisherVerification[int]:
    class Under(PublisherVerification[int]):
        asyncio = use_asyncio

        def create_publisher(self, elements: int) -> Publisher[int]:
            return factory(elements)  # type: ignore[no-any-return]

        def create_failed_publisher(self) -> Publisher[int] | None:
            return None if failed is None else failed()

    return Under(fast_env() if env is None else env)


def by_id(results: list[RuleResult]) -> dict[str, RuleResult]:
    return {result.id: result for result in results}


def failed_ids(results: list[RuleResult]) -> list[str]:
    return [result.id for result in results if result.status == "failed"]


# -- the catalogue ---------------------------------------------------------------------------


def test_publisher_catalogue_matches_the_jvm_kit() -> None:
    """The JVM kit's 38 checks, plus two optional companions of relaxed required checks
    (Rule 1.9's TypeError, Rule 3.17's item count: see the deviations table)."""
    cases = PublisherVerification.rule_cases()
    kinds = [case.kind for case in cases]
    assert len(cases) == 38 + 2
    assert kinds.count("required") == 22
    assert kinds.count("optional") == 8 + 2
    assert kinds.count("stochastic") == 1
    assert kinds.count("untested") == 7
    assert len({case.id for case in cases}) == 40
    assert sum(case.rule == "3.17" for case in cases) == 3 + 1
    assert sum(case.rule == "1.9" for case in cases) == 4 + 1


# -- reference publishers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "use_asyncio"),
    [
        (pubs.SyncRangePublisher, False),
        (pubs.ThreadedRangePublisher, False),
        (pubs.AsyncioRangePublisher, True),
    ],
    ids=["sync", "threaded", "asyncio"],
)
def test_reference_publishers_pass_every_required_check(factory: Any, use_asyncio: bool) -> None:
    verification = verification_for(
        factory, pubs.FailedPublisher, use_asyncio=use_asyncio, env=passing_env()
    )
    results = verification.run()
    assert failed_ids(results) == []
    statuses = {result.status for result in results}
    assert statuses <= {"passed", "untested"}, [r for r in results if r.status == "skipped"]


def test_a_synchronous_publisher_needs_no_quiet_window() -> None:
    verification = verification_for(pubs.SyncRangePublisher)
    verification.run()
    assert verification._saw_foreign_signal is False
    assert verification.env.quiet_window_s() == 0.0


def test_a_threaded_publisher_gets_the_quiet_window() -> None:
    verification = verification_for(pubs.ThreadedRangePublisher)
    verification.run(["101"])
    assert verification._saw_foreign_signal is True


def test_the_failed_publisher_checks_skip_without_a_factory() -> None:
    results = by_id(verification_for(pubs.SyncRangePublisher).run(["104", "spec109_may"]))
    assert {r.status for r in results.values()} == {"skipped"}
    assert all("create_failed_publisher() returned None" in r.message for r in results.values())


def test_untested_rules_report_their_text() -> None:
    (result,) = verification_for(pubs.SyncRangePublisher).run(["untested_spec304"])
    assert result.status == "untested"
    assert "Rule 3.4" in result.message and "Not verified" in result.message


def test_knob_validation_fails_bad_values() -> None:
    class BadKnobs(PublisherVerification[int]):
        def create_publisher(self, elements: int) -> Publisher[int]:
            return pubs.SyncRangePublisher(elements)

        def max_elements_from_publisher(self) -> int:
            return -1

        def bounded_depth_of_on_next_and_request_recursion(self) -> int:
            return 0

    results = by_id(BadKnobs(fast_env()).run(["validate"]))
    assert {r.status for r in results.values()} == {"failed"}


def test_stochastic_checks_can_be_turned_off() -> None:
    class NoStochastic(PublisherVerification[int]):
        def create_publisher(self, elements: int) -> Publisher[int]:
            return pubs.OverlappingSignalsPublisher(elements)

        def skip_stochastic_tests(self) -> bool:
            return True

    (result,) = NoStochastic(fast_env()).run(["stochastic_"])
    assert result.status == "skipped"


def test_bounded_publishers_skip_checks_needing_more_elements() -> None:
    class Small(PublisherVerification[int]):
        def create_publisher(self, elements: int) -> Publisher[int]:
            return pubs.SyncRangePublisher(elements)

        def max_elements_from_publisher(self) -> int:
            return 3

    results = by_id(Small(fast_env()).run())
    assert failed_ids(list(results.values())) == []
    skipped = results["required_spec312_cancel_must_make_the_publisher_eventually_stop_signalling"]
    assert skipped.status == "skipped"
    assert "max_elements_from_publisher() is 3" in skipped.message


# -- broken publishers: each fails the check for the rule it breaks -------------------------

BROKEN = [
    (
        pubs.OverDeliveringPublisher,
        "required_spec101_subscription_request_must_result_in_the_correct_number_of_produced_elements",
        "Rule 1.1: on_next #2 exceeds the total demand of 1",
    ),
    (
        pubs.ThreadedOverDeliveringPublisher,
        "required_spec101_subscription_request_must_result_in_the_correct_number_of_produced_elements",
        "Rule 1.1",
    ),
    (
        pubs.SignalAfterCompletePublisher,
        "required_spec107_must_not_emit_further_signals_once_on_complete_has_been_signalled",
        "Rule 1.7: on_complete arrived after a terminal signal",
    ),
    (
        pubs.SignalAfterCancelPublisher,
        "required_spec306_after_subscription_is_cancelled_request_must_be_nops",
        "Rule 3.6",
    ),
    (
        pubs.OnNextBeforeOnSubscribePublisher,
        "required_spec109_must_issue_on_subscribe_for_non_none_subscriber",
        "before on_subscribe",
    ),
    (
        pubs.RaisingRequestPublisher,
        "required_spec309_request_zero_must_signal_value_error",
        "request(0) raised BadRequestError",
    ),
    (
        pubs.IgnoringBadRequestPublisher,
        "required_spec309_request_zero_must_signal_value_error",
        "expected on_error(ValueError)",
    ),
    (
        pubs.UnboundedRecursionPublisher,
        "required_spec303_must_not_allow_unbounded_recursion",
        "Rule 3.3: on_next was re-entered at synchronous depth 2",
    ),
    (
        pubs.OverlappingSignalsPublisher,
        "stochastic_spec103_must_signal_on_methods_sequentially",
        "Rule 1.3",
    ),
    (
        pubs.KeepsSubscriberPublisher,
        "required_spec313_cancel_must_make_the_publisher_eventually_drop_all_references_to_the_subscriber",
        "list in KeepsSubscriberPublisher",
    ),
    (
        pubs.OverflowErrorPublisher,
        "required_spec317_must_not_signal_on_error_when_pending_above_unbounded",
        "Rule 3.17: on_error(OverflowError",
    ),
    (
        pubs.NeverCompletesPublisher,
        "required_spec105_must_signal_on_complete_when_finite_stream_terminates",
        "expected on_complete",
    ),
    (
        pubs.AcceptsNoneSubscriberPublisher,
        "required_spec109_subscribe_must_raise_on_none_subscriber",
        "subscribe(None) returned normally",
    ),
]


@pytest.mark.parametrize(
    ("factory", "check", "text"), BROKEN, ids=[f.__name__ for f, _, _ in BROKEN]
)
def test_broken_publisher_fails_the_right_check(factory: Any, check: str, text: str) -> None:
    verification = verification_for(factory, pubs.FailedPublisher)
    # Every check runs (not only the target), except the slow stochastic one when it is
    # not the target: the point is that the right check fails among all of them.
    patterns = None if check.startswith("stochastic") else ["required_", "optional_"]
    results = by_id(verification.run(patterns))
    result = results[check]
    assert result.status == "failed", result
    assert text in result.message
    # The failure names a rule and shows the signals that led there.
    assert "Rule " in result.message


def test_signal_log_is_in_the_failure_message() -> None:
    (result,) = verification_for(pubs.OverDeliveringPublisher).run(["101"])
    assert "signal log of subscriber: on_subscribe [spec_tck-check], request(1), on_next(0)" in (
        result.message
    )


def test_ignored_cancel_is_stopped_and_reported() -> None:
    (result,) = verification_for(pubs.SignalAfterCancelPublisher).run(["spec317_must_not"])
    assert result.status == "failed"
    assert "Rule 3.12" in result.message and "after cancel()" in result.message


def test_a_failed_publisher_that_raises_from_subscribe() -> None:
    results = by_id(
        verification_for(pubs.SyncRangePublisher, pubs.RaisingFailedPublisher).run(["104", "109"])
    )
    reject = results[
        "required_spec109_may_reject_calls_to_subscribe_if_publisher_is_unable_or_unwilling_"
        "to_serve_them_rejection_must_trigger_on_error_after_on_subscribe"
    ]
    assert reject.status == "failed"
    assert "subscribe() raised RuntimeError" in reject.message
    optional = results["optional_spec104_must_signal_on_error_when_fails"]
    assert optional.status == "skipped"
    assert optional.message.startswith("optional rule not met")


def test_an_optional_failure_is_a_skip_not_a_failure() -> None:
    class TerseErrors(PublisherVerification[int]):
        def create_publisher(self, elements: int) -> Publisher[int]:
            return _TerseErrorPublisher(elements)

    results = by_id(TerseErrors(fast_env()).run(["309"]))
    message_check = results[
        "optional_spec309_request_negative_number_may_signal_value_error_with_specific_message"
    ]
    assert message_check.status == "skipped"
    assert "should cite Rule 3.9" in message_check.message
    assert results["required_spec309_request_zero_must_signal_value_error"].status == "passed"


class _TerseSubscription(pubs.SyncSubscription):
    def bad_request(self, error: Exception) -> None:
        self.error = ValueError("bad")


class _TerseErrorPublisher(pubs.SyncRangePublisher):
    subscription_type = _TerseSubscription


# -- JVM parity: what the relaxed checks accept, and what their optional companions say ------

NONE_REQUIRED = "required_spec109_subscribe_must_raise_on_none_subscriber"
NONE_OPTIONAL = "optional_spec109_subscribe_should_raise_type_error_on_none_subscriber"
OVERFLOW_REQUIRED = "required_spec317_must_not_signal_on_error_when_pending_above_unbounded"
OVERFLOW_OPTIONAL = "optional_spec317_should_keep_delivering_when_pending_above_unbounded"


@pytest.mark.parametrize(
    ("factory", "required", "optional", "text"),
    [
        (pubs.SyncRangePublisher, "passed", "passed", ""),
        (
            pubs.AttributeErrorOnNoneSubscriberPublisher,
            "passed",
            "skipped",
            "raised AttributeError",
        ),
        (pubs.AcceptsNoneSubscriberPublisher, "failed", "skipped", "returned normally"),
    ],
    ids=["type-error", "attribute-error", "returns"],
)
def test_rule_1_9_takes_any_exception_and_recommends_type_error(
    factory: Any, required: str, optional: str, text: str
) -> None:
    results = by_id(verification_for(factory).run(["spec109_subscribe"]))
    assert results[NONE_REQUIRED].status == required, results[NONE_REQUIRED]
    assert results[NONE_OPTIONAL].status == optional, results[NONE_OPTIONAL]
    assert text in results[NONE_OPTIONAL].message


@pytest.mark.parametrize(
    ("factory", "required", "optional", "text"),
    [
        (pubs.SyncRangePublisher, "passed", "passed", ""),
        (pubs.StallsPastUnboundedPublisher, "passed", "skipped", "expected 11 items"),
        (pubs.OverflowErrorPublisher, "failed", "skipped", "on_error(OverflowError"),
    ],
    ids=["saturates", "stalls", "errors"],
)
def test_rule_3_17_overflow_is_no_on_error_and_the_item_count_is_optional(
    factory: Any, required: str, optional: str, text: str
) -> None:
    results = by_id(verification_for(factory).run(["spec317_must_not", "spec317_should"]))
    assert results[OVERFLOW_REQUIRED].status == required, results[OVERFLOW_REQUIRED]
    assert results[OVERFLOW_OPTIONAL].status == optional, results[OVERFLOW_OPTIONAL]
    assert text in results[OVERFLOW_OPTIONAL].message


def test_multicast_one_by_one_uses_the_jvm_kits_staggered_demand() -> None:
    """A lock-step multicast passes rounds of request(1) each, not the JVM's staggered demand."""
    results = by_id(verification_for(pubs.LockStepMulticastPublisher).run(["multicast"]))
    prefix = "optional_spec111_multicast_must_produce_the_same_elements_in_the_same_sequence_"
    one_by_one = results[prefix + "to_all_of_its_subscribers_when_requesting_one_by_one"]
    assert one_by_one.status == "skipped", one_by_one
    assert "(multicast, staggered demand): subscriber 1 after request(1)" in one_by_one.message
    upfront = results[prefix + "to_all_of_its_subscribers_when_requesting_many_upfront"]
    assert upfront.status == "passed", upfront
    # Independent per-subscriber sequences (the reference publisher) pass the schedule.
    (reference,) = verification_for(pubs.SyncRangePublisher).run(["one_by_one"])
    assert reference.status == "passed", reference
