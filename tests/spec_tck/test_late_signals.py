"""Late violations: a signal that breaks a rule after its check returned fails that check.

The gallery's publishers signal from a timer thread 30 ms after the check that provoked
them (the JVM kit's 100 ms window catches that): whether the signal lands while the check
still runs or after it returned, the check fails on the rule. The tests of the *late* path
itself use a 250 ms delay and a longer quiet window, so that no check of a synchronous
publisher, however slow the machine, is still running when the signal comes.
"""

from __future__ import annotations

import re
import time
from typing import Any

from reactive_bp.abc import Publisher
from spec_tck import PublisherVerification, RuleResult, TestEnvironment

from . import _publishers as pubs

ON_COMPLETE_TWICE = "Rule 1.7: on_complete arrived after a terminal signal"
LATER_S = 0.25


def fast_env(**knobs: Any) -> TestEnvironment:
    return TestEnvironment(
        default_timeout_ms=250,
        no_signals_timeout_ms=30,
        poll_timeout_ms=5,
        gc_timeout_ms=200,
        **knobs,
    )


def verification_for(
    factory: Any, env: TestEnvironment | None = None
) -> PublisherVerification[int]:
    class Under(PublisherVerification[int]):
        def create_publisher(self, elements: int) -> Publisher[int]:
            return factory(elements)  # type: ignore[no-any-return]

    return Under(env or fast_env())


def by_rule(results: list[RuleResult], pattern: str) -> RuleResult:
    (result,) = [r for r in results if pattern in r.id]
    return result


class _ItemMuchLaterSubscription(pubs._OneMoreAfterCancel):
    delay_s = LATER_S


class ItemMuchLaterPublisher(pubs.SyncRangePublisher):
    """One more item 250 ms after cancel()."""

    subscription_type = _ItemMuchLaterSubscription


class _CompletesMuchLaterSubscription(pubs._CompletesAgainLater):
    delay_s = LATER_S


class CompletesMuchLaterPublisher(pubs.SyncRangePublisher):
    """A second on_complete 250 ms after the first."""

    subscription_type = _CompletesMuchLaterSubscription


def loaded_env() -> TestEnvironment:
    """``fast_env`` with a 2 s final quiet window (timers fire late on a loaded machine)."""
    return fast_env(quiet_ms=2000)


def slow_env(**knobs: Any) -> TestEnvironment:
    return fast_env(quiet_ms=600, **knobs)


# -- the gallery: the right rule, whenever the late signal lands ------------------------------


def test_a_second_on_complete_30_ms_later_fails_rules_1_5_and_1_7() -> None:
    # A quiet window far longer than 30 ms: on a loaded machine the timer thread fires late,
    # and the window ends early anyway once the timer has run (nothing reachable is left).
    results = verification_for(pubs.LateCompleteAgainPublisher, loaded_env()).run(["105", "107"])
    for pattern in ("required_spec105", "required_spec107"):
        result = by_rule(results, pattern)
        assert result.status == "failed", result
        assert ON_COMPLETE_TWICE in result.message


def test_one_item_30_ms_after_cancel_fails_the_checks_that_cancelled() -> None:
    results = verification_for(pubs.LateItemAfterCancelPublisher, loaded_env()).run(
        ["306", "307", "309"]
    )
    for pattern in ("spec306", "spec307"):
        result = by_rule(results, pattern)
        assert result.status == "failed", result
        assert "exceeds the total demand of 0" in result.message
    # Rule 3.9's subscriber ended with on_error; nothing late happened to it.
    assert by_rule(results, "required_spec309_request_zero").status == "passed"


# -- the late path -------------------------------------------------------------------------


def test_a_late_violation_names_its_rule_and_its_delay() -> None:
    results = verification_for(CompletesMuchLaterPublisher, slow_env()).run(["required_spec107"])
    (result,) = results
    assert result.status == "failed", result
    assert ON_COMPLETE_TWICE in result.message
    assert re.search(r"late: \d+ ms after on_complete", result.message), result.message


class _WithASlowCheck(PublisherVerification[int]):
    """A check that outlasts the delay, so the late signal arrives while it runs."""

    def create_publisher(self, elements: int) -> Publisher[int]:
        return ItemMuchLaterPublisher(elements)

    def required_spec999_waits_long_enough_for_a_late_signal(self) -> None:
        time.sleep(2 * LATER_S)


def test_a_late_violation_is_not_blamed_on_the_check_running_when_it_arrives() -> None:
    results = _WithASlowCheck(slow_env()).run(["306", "spec999"])
    assert by_rule(results, "spec999").status == "passed", by_rule(results, "spec999")
    late = by_rule(results, "spec306")
    assert late.status == "failed"
    assert re.search(r"late: \d+ ms after cancel\(\)", late.message), late.message


def test_the_final_quiet_window_catches_a_violation_after_the_last_check() -> None:
    (caught,) = verification_for(CompletesMuchLaterPublisher, slow_env()).run(["required_spec107"])
    assert caught.status == "failed" and ON_COMPLETE_TWICE in caught.message
    # With a window shorter than the delay the run ends first: the window is what catches it.
    short = verification_for(CompletesMuchLaterPublisher, fast_env(quiet_ms=50))
    (missed,) = short.run(["required_spec107"])
    assert missed.status == "passed", missed


def test_finish_reports_what_turned_failed_after_run_rule_returned() -> None:
    verification = verification_for(ItemMuchLaterPublisher, slow_env())
    (case,) = verification.select(["spec306"])
    first = verification.run_rule(case.id)
    assert first.status == "passed"  # the item comes 250 ms later
    (late,) = verification.finish()
    assert late.id == case.id and late.status == "failed"
    assert verification.finish() == []  # each change is reported once


def test_the_late_failure_report_names_the_checks_for_a_per_check_runner() -> None:
    verification = verification_for(ItemMuchLaterPublisher, slow_env())
    for case in verification.select(["spec306", "required_spec309_request_zero"]):
        verification.run_rule(case.id)
    report = verification.late_failure_report()
    assert report is not None and "spec306" in report and "spec309" not in report
    assert verification.late_failure_report() is None  # reported once


# -- what counts as failed ---------------------------------------------------------------


def test_a_required_rule_broken_during_an_optional_check_is_not_a_skip() -> None:
    # The empty stream completes at once; the next request(1) completes it again (Rule 1.7).
    (result,) = verification_for(pubs.SignalAfterCompletePublisher).run(["optional_spec105"])
    assert result.status == "failed", result
    assert ON_COMPLETE_TWICE in result.message


# -- the fast path -------------------------------------------------------------------------


def test_a_synchronous_publisher_needs_no_final_window() -> None:
    verification = verification_for(pubs.SyncRangePublisher)
    results = verification.run()
    assert [r.id for r in results if r.status == "failed"] == []
    # No subscriber is reachable once its check returned: nothing can signal it late.
    assert verification._final_window_s() == 0.0


_HELD: list[Any] = []


class _HoldsSubscribers(pubs.SyncRangePublisher):
    """Parks every subscriber where something outside the check can still reach it."""

    def subscribe(self, subscriber: Any) -> None:
        _HELD.append(subscriber)
        super().subscribe(subscriber)


def test_a_subscriber_still_reachable_after_its_check_gets_the_final_window() -> None:
    verification = verification_for(_HoldsSubscribers, fast_env(quiet_ms=2000))
    try:
        verification.run_rule(verification.select(["required_spec107"])[0].id)
        # It could still be signalled: a window is due (a loaded machine may have used
        # some of the 2 s since the check ended; a reachable-nothing check gets 0.0).
        assert 0.0 < verification._final_window_s() <= 2.0
    finally:
        _HELD.clear()
