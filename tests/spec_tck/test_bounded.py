"""Every check is bounded: a publisher that blocks, spins or blocks its event loop fails the
right rule in bounded time, with the stack of the stuck thread, and the run goes on.

Each run is itself bounded here (a daemon thread joined with a limit), so a regression fails
the test instead of hanging the suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reactive_bp.abc import Publisher
from spec_tck import (
    PublisherVerification,
    RuleResult,
    SubscriberBlackboxVerification,
    TestEnvironment,
    Verification,
)

from . import _publishers as pubs

LIMIT_S = 20.0  # far above what any of these runs needs; only a hang reaches it


@pytest.fixture(autouse=True)
def _release_blocked_threads() -> Iterator[None]:
    """Wake the threads the blocking publishers parked (they then stop on the kit's exception)."""
    yield
    pubs.RELEASE_BLOCKED.set()
    time.sleep(0.05)
    pubs.RELEASE_BLOCKED.clear()


def fast_env(**knobs: Any) -> TestEnvironment:
    return TestEnvironment(
        default_timeout_ms=250,
        no_signals_timeout_ms=30,
        poll_timeout_ms=5,
        gc_timeout_ms=200,
        call_timeout_ms=300,
        **knobs,
    )


def verification_for(factory: Any, *, use_asyncio: bool = False) -> PublisherVerification[int]:
    class Under(PublisherVerification[int]):
        asyncio = use_asyncio

        def create_publisher(self, elements: int) -> Publisher[int]:
            return factory(elements)  # type: ignore[no-any-return]

    return Under(fast_env())


def bounded_run(verification: Verification, rules: list[str]) -> tuple[list[RuleResult], float]:
    """Run ``rules`` on a daemon thread; fail if it does not finish within ``LIMIT_S``."""
    box: list[list[RuleResult]] = []
    worker = threading.Thread(target=lambda: box.append(verification.run(rules)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(LIMIT_S)
    assert not worker.is_alive(), f"the verification did not finish within {LIMIT_S} s"
    return box[0], time.monotonic() - started


def by_rule(results: list[RuleResult], pattern: str) -> RuleResult:
    (result,) = [r for r in results if pattern in r.id]
    return result


HANGS = [
    (pubs.BlockingSubscribePublisher, ("Rule 1.9: subscribe()", "did not return within 0.3 s")),
    (pubs.BlockingRequestPublisher, ("Rule 3.4: request(", "did not return within 0.3 s")),
]


@pytest.mark.parametrize(("factory", "text"), HANGS, ids=[factory.__name__ for factory, _ in HANGS])
def test_a_call_that_never_returns_fails_its_rule_and_the_run_goes_on(
    factory: Any, text: tuple[str, str]
) -> None:
    verification = verification_for(factory)
    results, seconds = bounded_run(verification, ["spec101", "spec102"])
    assert seconds < 10
    for result in results:  # both checks ran, each failed on its own
        assert result.status == "failed", result
        assert result.message.startswith(text[0]) and text[1] in result.message, result.message
        # The stack of the stuck thread shows where the code under test sits.
        assert "_publishers.py" in result.message
        assert "RELEASE_BLOCKED.wait()" in result.message
    assert verification.tainted is not None


def test_a_cancel_that_never_returns_fails_rule_3_5() -> None:
    verification = verification_for(pubs.BlockingCancelPublisher)
    results, seconds = bounded_run(verification, ["spec307", "required_spec309_request_zero"])
    assert seconds < 10
    blocked = by_rule(results, "spec307")
    assert blocked.status == "failed"
    assert blocked.message.startswith("Rule 3.5: cancel() did not return within 0.3 s")
    # A check that never cancels is not disturbed by the one that hung before it.
    assert by_rule(results, "required_spec309_request_zero").status == "passed"


def test_a_call_that_never_returns_on_the_event_loop_fails_its_rule() -> None:
    verification = verification_for(pubs.BlockingRequestPublisher, use_asyncio=True)
    results, seconds = bounded_run(verification, ["spec306"])
    assert seconds < 10
    (result,) = results
    assert result.status == "failed"
    assert result.message.startswith("Rule 3.4: request(1) did not return within 0.3 s")
    assert "spec_tck-asyncio-loop" in result.message  # the stack of the loop thread


def test_a_publisher_spinning_after_on_complete_is_stopped() -> None:
    verification = verification_for(pubs.SpinsAfterCompletePublisher)
    patterns = ["stochastic", "required_spec317_must_support_a_pending"]
    results, seconds = bounded_run(verification, patterns)
    assert seconds < 10
    for pattern in patterns:
        result = by_rule(results, pattern)
        assert result.status == "failed", result
        assert "Rule 1.7: on_next" in result.message
        assert "arrived after a terminal signal" in result.message


def test_a_publisher_blocking_the_event_loop_is_reported_and_stopped() -> None:
    verification = verification_for(pubs.LoopBlockingPublisher, use_asyncio=True)
    results, seconds = bounded_run(verification, ["required_spec317_must_support_a_pending"])
    assert seconds < 10
    (result,) = results
    assert result.status == "failed"
    assert result.message.startswith("the event loop was blocked for")
    assert "in _fill" in result.message  # the loop thread's stack names the culprit
    # The fix is about the loop, not the rule of the check that saw it (3.17).
    assert result.message.splitlines()[-1].startswith(
        "how to fix: never block the event loop thread"
    )
    # The loop was interrupted: nothing keeps draining (and allocating) after the check.
    loops = [t for t in threading.enumerate() if t.name == "spec_tck-asyncio-loop"]
    assert loops == []
    assert verification.tainted is not None


class _SlowCheck(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        return pubs.SyncRangePublisher(elements)

    def required_spec999_never_finishes(self) -> None:
        while True:  # kit-side progress that never ends: only the check budget stops it
            time.sleep(0.001)


def test_a_check_that_does_not_finish_is_ended_at_its_budget() -> None:
    env = TestEnvironment(
        default_timeout_ms=10, no_signals_timeout_ms=5, gc_timeout_ms=10, call_timeout_ms=100
    )
    verification = _SlowCheck(env)
    results, seconds = bounded_run(verification, ["spec999"])
    (result,) = results
    assert result.status == "failed"
    assert result.message.startswith("the check did not finish within")
    assert "in required_spec999_never_finishes" in result.message
    assert seconds < env.check_budget_s() + 5
    fix = result.message.splitlines()[-1]
    assert fix.startswith("how to fix: make the code under test progress promptly"), fix
    assert "SPEC_TCK_DEFAULT_TIMEOUT_MS" in fix


class _HangsInTheFactory(PublisherVerification[int]):
    def create_publisher(self, elements: int) -> Publisher[int]:
        pubs.RELEASE_BLOCKED.wait()  # a factory that connects and never hears back
        return pubs.SyncRangePublisher(elements)


def test_a_factory_that_never_returns_is_bounded_and_told_to_return_promptly() -> None:
    results, seconds = bounded_run(
        _HangsInTheFactory(fast_env()), ["required_spec309_request_zero"]
    )
    assert seconds < 10
    (result,) = results
    assert result.status == "failed"
    assert result.message.startswith("create_publisher() did not return within 0.3 s"), result
    fix = result.message.splitlines()[-1]
    assert fix.startswith("how to fix: return promptly from the factories"), fix


class _ParksInOnSubscribe:
    """A subscriber whose on_subscribe never returns."""

    def on_subscribe(self, subscription: Any) -> None:
        pubs.RELEASE_BLOCKED.wait()

    def on_next(self, item: int) -> None:
        pass

    def on_error(self, error: Exception) -> None:
        pass

    def on_complete(self) -> None:
        pass


class _ParkingSubscriberVerification(SubscriberBlackboxVerification[int]):
    def create_subscriber(self) -> Any:
        return _ParksInOnSubscribe()

    def create_element(self, index: int) -> int:
        return index


def test_a_subscriber_whose_on_subscribe_never_returns_fails_rule_2_13() -> None:
    # The kit's own publisher calls on_subscribe inside its subscribe(): the subscriber is
    # what hangs, so the rule is 2.13 (signals return normally), not the publisher's 1.9.
    verification = _ParkingSubscriberVerification(fast_env())
    results, seconds = bounded_run(verification, ["spec209_blackbox"])
    assert seconds < 10
    for result in results:
        assert result.status == "failed"
        assert result.message.startswith("Rule 2.13: on_subscribe() did not return within 0.3 s")
