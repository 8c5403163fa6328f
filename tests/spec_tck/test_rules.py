"""Messages a user can act on: every failure ends with one line saying how to fix it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from reactive_bp.abc import Publisher
from spec_tck import (
    RULE_FIXES,
    RULE_TEXTS,
    IdentityProcessorVerification,
    PublisherVerification,
    RuleResult,
    SubscriberBlackboxVerification,
    SubscriberWhiteboxVerification,
    TestEnvironment,
    Verification,
    format_results,
    how_to_fix,
)
from spec_tck._rules import CONDITION_FIXES, SELF_CHECK_FIXES
from spec_tck.pytest_plugin import _collectable_class

from . import _publishers as pubs

KIT = Path(__file__).resolve().parents[2] / "spec_tck"
VERIFICATIONS: list[type[Verification]] = [
    PublisherVerification,
    SubscriberWhiteboxVerification,
    SubscriberBlackboxVerification,
    IdentityProcessorVerification,
]
OVER_DELIVERY = (
    "required_spec101_subscription_request_must_result_in_the_correct_number_of_produced_elements"
)


def test_every_rule_has_one_fix_line() -> None:
    assert set(RULE_FIXES) == set(RULE_TEXTS)
    for rule, fix in [*RULE_FIXES.items(), *SELF_CHECK_FIXES.items(), *CONDITION_FIXES.items()]:
        assert fix and "\n" not in fix and not fix.endswith("."), rule


@pytest.mark.parametrize("verification", VERIFICATIONS, ids=lambda cls: cls.__name__)
def test_every_check_that_can_fail_has_its_own_fix(verification: type[Verification]) -> None:
    generic = how_to_fix(None, "")
    for case in verification.rule_cases():
        if case.kind == "untested":
            continue  # never fails: reported with the rule's text
        if case.rule is not None:
            assert case.rule in RULE_FIXES, case.id
        else:
            assert how_to_fix(None, case.id) != generic, f"add {case.id} to SELF_CHECK_FIXES"


def test_every_rule_a_message_can_cite_has_a_fix() -> None:
    """A failure's fix follows the rule its message cites; each of those has one."""
    cited = {
        rule
        for source in KIT.glob("*.py")
        for rule in re.findall(r"\bRules? (\d\.\d+)", source.read_text())
    }
    assert cited, "no rule citations found: the pattern is stale"
    assert cited <= set(RULE_FIXES), sorted(cited - set(RULE_FIXES))


class OverDelivering(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return pubs.OverDeliveringPublisher(elements)


def _fast_env() -> TestEnvironment:
    return TestEnvironment(default_timeout_ms=250, no_signals_timeout_ms=30, poll_timeout_ms=5)


ONE_ONE_FIX = "how to fix (Rule 1.1): count demand per subscription and stop emitting at zero"


def test_a_failed_result_ends_with_its_fix_everywhere_it_is_reported() -> None:
    (result,) = OverDelivering(_fast_env()).run([OVER_DELIVERY])
    assert result.status == "failed"
    assert result.message.startswith("Rule 1.1: ")
    assert result.message.splitlines()[-1] == ONE_ONE_FIX
    assert result.fix == RULE_FIXES["1.1"]
    assert result.to_json()["fix"] == RULE_FIXES["1.1"]
    assert format_results([result]).splitlines()[-1] == f"    {ONE_ONE_FIX}"


def test_the_pytest_plugin_shows_the_fix() -> None:
    collected: Any = _collectable_class(OverDelivering)
    with pytest.raises(pytest.fail.Exception) as failed:
        getattr(collected(), f"test_{OVER_DELIVERY}")()
    assert str(failed.value).splitlines()[-1] == ONE_ONE_FIX


def result(status: Any, message: str, rule: str | None = "3.17", check: str = "") -> RuleResult:
    return RuleResult(
        id=check or "required_check_under_test",
        kind="required",
        rule=rule,
        status=status,
        message=message,
        duration_s=0.0,
    )


def test_the_fix_follows_the_rule_the_failure_is_about() -> None:
    # A Rule 3.17 check failing because the publisher over-delivers: fix Rule 1.1.
    other = result("failed", "Rule 1.1: on_next #2 exceeds the total demand of 1\n  log")
    assert other.message.splitlines()[-1] == ONE_ONE_FIX
    # Citing its own rule too, the check's rule wins.
    own = result(
        "failed",
        "Rule 1.1: on_next #1 exceeds the total demand of 0 (request() after cancel() adds no "
        "demand: Rule 3.6)",
        rule="3.6",
    )
    assert own.fix == RULE_FIXES["3.6"]
    # Citing none (an unexpected exception): the check's rule.
    bare = result("failed", "unexpected KeyError: 'x' (at pub.py:3)", rule="3.9")
    assert bare.message.endswith(f"how to fix (Rule 3.9): {RULE_FIXES['3.9']}")


def test_a_self_check_gets_its_own_fix() -> None:
    knob = result(
        "failed",
        "max_elements_from_publisher() must be an int >= 0, got -1",
        rule=None,
        check="required_validate_max_elements_from_publisher",
    )
    assert knob.message.splitlines()[-1] == (
        "how to fix: return an int >= 0 from max_elements_from_publisher() "
        "(2**63 - 1: never completes)"
    )


def test_only_failures_get_a_fix_and_only_once() -> None:
    for status in ("passed", "skipped", "untested"):
        untouched = result(status, "Rule 3.17: whatever")
        assert untouched.message == "Rule 3.17: whatever"
        assert untouched.fix == ""
    failed = result("failed", "Rule 3.17: on_error after request(2**63 - 1)")
    again = dataclasses.replace(failed, duration_s=1.0)
    assert again.message == failed.message
    assert again.message.count("how to fix") == 1


# -- failures about a condition, not a rule -----------------------------------------------

# The first line of each as the kit writes it (_env, _verification, _isolate); the tests in
# test_bounded.py and test_cli.py provoke the real ones and check their last line too.
CONDITIONS = [
    (
        "the event loop was blocked for 1.2 s while waiting for on_next: a callback of the code "
        "under test does not return, so nothing else can run on the loop",
        "never block the event loop thread: run blocking work in a thread (asyncio.to_thread) "
        "and keep queues bounded",
    ),
    ("the check did not finish within 31.0 s", "SPEC_TCK_DEFAULT_TIMEOUT_MS"),
    (
        "the check did not finish within 9.0 s, even counting the kit's own watchdog; the "
        "process running it was killed",
        "SPEC_TCK_DEFAULT_TIMEOUT_MS",
    ),
    (
        "the memory of the process running the check grew past 150 MB (170 MB): the code under "
        "test keeps allocating; the process was killed",
        "--max-memory-mb",
    ),
    ("the process running the check ended unexpectedly (exit status 3)", "os._exit"),
    (
        "create_publisher() did not return within 0.5 s (the kit cannot go on until it returns)",
        "return promptly from the factories",
    ),
]


@pytest.mark.parametrize(
    ("message", "fix"),
    CONDITIONS,
    ids=["blocked-loop", "check-budget", "check-budget-cli", "memory", "died", "hung-factory"],
)
def test_a_failure_about_a_condition_gets_that_conditions_fix_not_the_checks_rule(
    message: str, fix: str
) -> None:
    failed = result("failed", f"{message}\n  stack of thread 'spec_tck-check':", rule="3.3")
    last = failed.message.splitlines()[-1]
    assert last.startswith("how to fix: "), last  # no rule: the condition is the problem
    assert fix in last
    assert RULE_FIXES["3.3"] not in failed.message
    assert failed.to_json()["fix"] == last.removeprefix("how to fix: ")


def test_a_condition_after_a_cited_rule_keeps_the_rules_fix() -> None:
    # A violation flopped first, then the hang: the violation is what the first line says.
    failed = result(
        "failed",
        "Rule 1.1: on_next #2 exceeds the total demand of 1\n  then: the check did not finish "
        "within 31.0 s",
        rule="3.3",
    )
    assert failed.message.splitlines()[-1] == ONE_ONE_FIX
    # A hung call that names its rule is about that rule.
    hung = result("failed", "Rule 3.4: request(1) did not return within 0.3 s (...)", rule="1.1")
    assert hung.fix == RULE_FIXES["3.4"]


def test_every_condition_is_one_the_kit_reports() -> None:
    """A reworded message would silently fall back to the check's rule: keep them in step."""
    sources = "\n".join(source.read_text() for source in KIT.glob("*.py"))
    phrases = [
        "the event loop was blocked for",
        "the check did not finish within",
        "the memory of the process running the check grew past",
        "the process running the check ended unexpectedly",
        "the kit cannot go on until it returns",
    ]
    for phrase in phrases:
        assert phrase in sources, phrase
    for pattern in CONDITION_FIXES:
        assert any(re.search(pattern, message) for message, _ in CONDITIONS), pattern
