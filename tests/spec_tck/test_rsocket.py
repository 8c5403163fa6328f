"""The kit on a real third-party library: rsocket-py's publishers, every verdict pinned.

Three publishers of rsocket-py 0.4.20 (the ``dev`` extra pins it) run the whole
``PublisherVerification``:

* ``StreamFromGenerator`` and ``StreamFromAsyncGenerator`` in process, on the kit's asyncio
  driver (they need a running loop);
* ``request_stream`` between an ``RSocketClient`` and an ``RSocketServer`` over TCP on
  127.0.0.1 (``tests/spec_tck/_rsocket.py``).

Each check's verdict is pinned below. Every expected failure is a real rsocket-py
violation, named in its ``why`` with the code that causes it (read in
``rsocket/streams/stream_from_generator.py``, ``rsocket/helpers.py``,
``reactivestreams/publisher.py``, ``rsocket/handlers/request_stream_requester.py``,
``rsocket/streams/stream_handler.py``). A kit change that flips a verdict fails
``test_verdicts``; the assertion prints the whole actual table, ready to paste.

Where the verdict depends on which of two threads is first (the kit's thread calling
``request``/``cancel``/``subscribe`` and the event loop delivering items), the entry lists
both outcomes and says why; each outcome is still a real one, never a flake of the kit.
These are marked ``RACE`` below.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from rsocket.payload import Payload

from reactive_bp.abc import Publisher
from spec_tck import PublisherVerification, RuleResult, TestEnvironment, format_results

from . import _publishers as pubs
from . import _rsocket as rs

RSOCKET_VERSION = "0.4.20"


class Expect(NamedTuple):
    """The outcomes a check may have (``"passed"``, ``"failed: Rule 1.1"``, ...), and why."""

    outcomes: frozenset[str]
    why: str = ""


def passed() -> Expect:
    return Expect(frozenset({"passed"}))


def untested() -> Expect:
    return Expect(frozenset({"untested"}))


def skipped(why: str) -> Expect:
    return Expect(frozenset({"skipped"}), why)


def failed(rule: str, why: str) -> Expect:
    return Expect(frozenset({f"failed: {rule}"}), why)


def race(outcomes: set[str], why: str) -> Expect:
    return Expect(frozenset(outcomes), f"RACE: {why}")


def outcome(result: RuleResult) -> str:
    """``passed``, ``skipped``, ``untested``, or ``failed: Rule X.Y`` (the rule cited first)."""
    if result.status != "failed":
        return result.status
    match = re.search(r"Rule \d+\.\d+", result.message)
    return f"failed: {match.group(0) if match else '?'}"


# -- why rsocket-py fails -------------------------------------------------------------------

NO_REQUEST_VALIDATION = (
    "StreamFromGenerator.request(n) never validates n: it queues n, and _generate_next_n "
    "runs async_range(n), which is empty for n <= 0, so request(0) and request(-n) are "
    "ignored instead of answered with on_error"
)
CANCEL_BEFORE_REQUEST = (
    "StreamFromGenerator.cancel() reads self._generator, an attribute only "
    "_start_generator() creates, in the task that the first request() starts: cancel() "
    "before any request() raises AttributeError"
)
KEEPS_SUBSCRIBER = (
    "cancel() never clears self._subscriber (set by reactivestreams' DefaultPublisher."
    "subscribe); the publisher is its own subscription, so whoever holds either keeps the "
    "subscriber reachable"
)
RETARGETS_STREAM = (
    "a publisher object carries one stream: a second subscribe() overwrites "
    "self._subscriber (DefaultPublisher.subscribe), so items requested by subscriber 1 are "
    "delivered to the newest subscriber, which requested none"
)
NONE_SUBSCRIBER = (
    "subscribe(None) fails on None.on_subscribe(self) in DefaultPublisherSubscription."
    "subscribe: an AttributeError, not the recommended TypeError"
)
PUSHES_BEFORE_REQUEST = (
    "RequestStreamRequester.subscribe() sends REQUEST_STREAM with initial_request_n = "
    "MAX_REQUEST_N (StreamHandler.__init__), so the server pushes the items before any "
    "request(n); request(n) only adds a REQUEST_N frame on top"
)
RETARGETS_OR_PUSHES = f"{RETARGETS_STREAM}; {PUSHES_BEFORE_REQUEST}"
REJECTS_REPEAT = (
    "a second subscribe() on one requester re-sends REQUEST_STREAM on the same stream id "
    "(RequestStreamRequester.subscribe), which the server answers with an ERROR (REJECTED) that "
    "the requester hands to the newest subscriber"
)
KEEPS_SUBSCRIBER_TCP = (
    "RequestStreamRequester.cancel() sends CANCEL and finishes the stream but keeps "
    "self._subscriber, so the publisher the check holds keeps the subscriber reachable; "
    f"and before that, {PUSHES_BEFORE_REQUEST}"
)
TIMING_PUSH = (
    f"{PUSHES_BEFORE_REQUEST}. Failed when a pushed item reaches the client before the kit's "
    "request()/cancel() does; passed when the kit is first (the network round trip takes "
    "several loop iterations, so the kit nearly always is)"
)
TIMING_MULTI = (
    f"{RETARGETS_STREAM}. Failed when the first item reaches the newest subscriber before "
    "the kit's request() for it does; skipped (subscriber 1 gets nothing) when the request "
    "is first"
)

UNTESTED = [case.id for case in PublisherVerification.rule_cases() if case.kind == "untested"]
MULTICAST = "optional_spec111_multicast_must_produce_the_same_elements_in_the_same_sequence_"
ONE_BY_ONE = MULTICAST + "to_all_of_its_subscribers_when_requesting_one_by_one"
UPFRONT = MULTICAST + "to_all_of_its_subscribers_when_requesting_many_upfront"
UPFRONT_COMPLETE = UPFRONT + "_and_complete_as_expected"
REJECT = (
    "required_spec109_may_reject_calls_to_subscribe_if_publisher_is_unable_or_unwilling_to_"
    "serve_them_rejection_must_trigger_on_error_after_on_subscribe"
)
NO_FAILED_PUBLISHER = (
    "no failed publisher: a generator stream that fails does so on its first request(), "
    "not at subscribe (create_failed_publisher() returns None)"
)

# StreamFromGenerator and StreamFromAsyncGenerator: the second subclasses the first and
# overrides only how the generator is started, advanced and closed, so they share verdicts.
GENERATOR: dict[str, Expect] = {
    "required_create_publisher1_must_produce_a_stream_of_exactly_1_element": passed(),
    "required_create_publisher3_must_produce_a_stream_of_exactly_3_elements": passed(),
    "required_validate_max_elements_from_publisher": passed(),
    "required_validate_bounded_depth_of_on_next_and_request_recursion": passed(),
    "required_spec101_subscription_request_must_result_in_the_correct_number_of_produced_"
    "elements": passed(),
    "required_spec102_may_signal_less_than_requested_and_terminate_subscription": passed(),
    "required_spec105_must_signal_on_complete_when_finite_stream_terminates": passed(),
    "required_spec107_must_not_emit_further_signals_once_on_complete_has_been_signalled": (
        passed()
    ),
    "required_spec109_subscribe_must_raise_on_none_subscriber": passed(),
    "optional_spec109_subscribe_should_raise_type_error_on_none_subscriber": skipped(
        NONE_SUBSCRIBER
    ),
    "required_spec109_must_issue_on_subscribe_for_non_none_subscriber": passed(),
    REJECT: skipped(NO_FAILED_PUBLISHER),
    "required_spec302_must_allow_synchronous_request_calls_from_on_next_and_on_subscribe": (
        passed()
    ),
    "required_spec303_must_not_allow_unbounded_recursion": passed(),
    "required_spec306_after_subscription_is_cancelled_request_must_be_nops": failed(
        "Rule 3.15", CANCEL_BEFORE_REQUEST
    ),
    "required_spec307_after_subscription_is_cancelled_additional_cancellations_must_be_nops": (
        failed("Rule 3.15", CANCEL_BEFORE_REQUEST)
    ),
    "required_spec309_request_zero_must_signal_value_error": failed(
        "Rule 3.9", NO_REQUEST_VALIDATION
    ),
    "required_spec309_request_negative_number_must_signal_value_error": failed(
        "Rule 3.9", NO_REQUEST_VALIDATION
    ),
    "required_spec312_cancel_must_make_the_publisher_eventually_stop_signalling": passed(),
    "required_spec313_cancel_must_make_the_publisher_eventually_drop_all_references_to_the_"
    "subscriber": failed("Rule 3.13", KEEPS_SUBSCRIBER),
    "required_spec317_must_support_a_pending_element_count_up_to_unbounded": passed(),
    "required_spec317_must_support_a_cumulative_pending_element_count_up_to_unbounded": (passed()),
    "required_spec317_must_not_signal_on_error_when_pending_above_unbounded": passed(),
    "optional_spec317_should_keep_delivering_when_pending_above_unbounded": passed(),
    "optional_spec104_must_signal_on_error_when_fails": skipped(NO_FAILED_PUBLISHER),
    "optional_spec105_empty_stream_must_terminate_by_signalling_on_complete": passed(),
    "optional_spec111_may_support_multi_subscribe": passed(),
    "optional_spec111_registered_subscribers_must_receive_on_next_or_on_complete_signals": (
        race({"skipped", "failed: Rule 1.1"}, TIMING_MULTI)
    ),
    # Subscriber 1 asks first and waits for its item, which goes to subscriber 3: always.
    ONE_BY_ONE: failed("Rule 1.1", RETARGETS_STREAM),
    UPFRONT: race({"skipped", "failed: Rule 1.1"}, TIMING_MULTI),
    UPFRONT_COMPLETE: race({"skipped", "failed: Rule 1.1"}, TIMING_MULTI),
    "optional_spec309_request_negative_number_may_signal_value_error_with_specific_message": (
        skipped(NO_REQUEST_VALIDATION)
    ),
    "stochastic_spec103_must_signal_on_methods_sequentially": passed(),
    **{case: untested() for case in UNTESTED},
}

# request_stream over TCP. The server side is the same StreamFromGenerator, behind rsocket-py's
# responder; what the kit sees is the requester's behaviour.
TCP: dict[str, Expect] = {
    **GENERATOR,
    "required_create_publisher1_must_produce_a_stream_of_exactly_1_element": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    # Items 2 and 3 come right behind item 1, before the kit has seen item 1 and asked again
    # (in practice always; both outcomes listed since it is a matter of scheduling).
    "required_create_publisher3_must_produce_a_stream_of_exactly_3_elements": race(
        {"failed: Rule 1.1", "passed"}, TIMING_PUSH
    ),
    # 5 items pushed, 4 ever requested: the fifth always exceeds the demand.
    "required_spec101_subscription_request_must_result_in_the_correct_number_of_produced_"
    "elements": failed("Rule 1.1", PUSHES_BEFORE_REQUEST),
    "required_spec102_may_signal_less_than_requested_and_terminate_subscription": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    "required_spec105_must_signal_on_complete_when_finite_stream_terminates": race(
        {"failed: Rule 1.1", "passed"}, TIMING_PUSH
    ),
    "required_spec107_must_not_emit_further_signals_once_on_complete_has_been_signalled": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    # The failed publisher: the server's handler raises, the requester gets an ERROR frame.
    REJECT: passed(),
    "optional_spec104_must_signal_on_error_when_fails": passed(),
    "required_spec303_must_not_allow_unbounded_recursion": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    # The requester's cancel() needs no prior request (unlike StreamFromGenerator's).
    "required_spec306_after_subscription_is_cancelled_request_must_be_nops": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    "required_spec307_after_subscription_is_cancelled_additional_cancellations_must_be_nops": (
        race({"passed", "failed: Rule 1.1"}, TIMING_PUSH)
    ),
    # Nothing is ever requested (request(0), request(-n)) while the pushed items arrive.
    # Rule 1.1 is what the kit sees first; Rule 3.9 is broken too (request_n is not
    # validated by the requester or by the server's StreamFromGenerator).
    "required_spec309_request_zero_must_signal_value_error": failed(
        "Rule 1.1", f"{PUSHES_BEFORE_REQUEST}; and {NO_REQUEST_VALIDATION}"
    ),
    "required_spec309_request_negative_number_must_signal_value_error": failed(
        "Rule 1.1", f"{PUSHES_BEFORE_REQUEST}; and {NO_REQUEST_VALIDATION}"
    ),
    "optional_spec309_request_negative_number_may_signal_value_error_with_specific_message": (
        failed("Rule 1.1", PUSHES_BEFORE_REQUEST)
    ),
    # 20 items pushed, 15 requested, cancel() after the first arrived.
    "required_spec312_cancel_must_make_the_publisher_eventually_stop_signalling": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    # Fails either way: pushed items beyond request(1) before cancel() lands (Rule 1.1),
    # or the requester still holds the subscriber after cancel() (Rule 3.13).
    "required_spec313_cancel_must_make_the_publisher_eventually_drop_all_references_to_the_"
    "subscriber": Expect(
        frozenset({"failed: Rule 1.1", "failed: Rule 3.13"}), f"RACE: {KEEPS_SUBSCRIBER_TCP}"
    ),
    "required_spec317_must_support_a_pending_element_count_up_to_unbounded": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    "required_spec317_must_support_a_cumulative_pending_element_count_up_to_unbounded": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    "required_spec317_must_not_signal_on_error_when_pending_above_unbounded": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    "optional_spec317_should_keep_delivering_when_pending_above_unbounded": race(
        {"passed", "failed: Rule 1.1"}, TIMING_PUSH
    ),
    # Several subscribers on one requester: the second subscribe() re-sends REQUEST_STREAM
    # on the same stream id and re-targets the stream; what arrives where is timing.
    # The server also rejects the repeated REQUEST_STREAM (REJECTED): an on_error to the newest
    # subscriber that no check asked for makes the optional check a skip.
    "optional_spec111_may_support_multi_subscribe": race(
        {"passed", "failed: Rule 1.1", "skipped"}, f"{RETARGETS_OR_PUSHES}; {REJECTS_REPEAT}"
    ),
    "optional_spec111_registered_subscribers_must_receive_on_next_or_on_complete_signals": (
        race({"skipped", "failed: Rule 1.1"}, RETARGETS_OR_PUSHES)
    ),
    ONE_BY_ONE: race({"skipped", "failed: Rule 1.1"}, RETARGETS_OR_PUSHES),
    UPFRONT: race({"skipped", "failed: Rule 1.1"}, RETARGETS_OR_PUSHES),
    UPFRONT_COMPLETE: race({"skipped", "failed: Rule 1.1"}, RETARGETS_OR_PUSHES),
}


def fast_env() -> TestEnvironment:
    """Half the default timeout: the waits that expire are for signals rsocket-py never sends."""
    return TestEnvironment(default_timeout_ms=500, gc_timeout_ms=300)


# -- the verifications -------------------------------------------------------------------------


class StreamFromGeneratorVerification(PublisherVerification[Payload]):
    """rsocket-py's ``StreamFromGenerator`` (not ``Test*``: run by ``test_verdicts``)."""

    asyncio = True

    def create_publisher(self, elements: int) -> Publisher[Payload]:
        return rs.RSocketPublisher(rs.stream_from_generator(elements))


class StreamFromAsyncGeneratorVerification(PublisherVerification[Payload]):
    """rsocket-py's ``StreamFromAsyncGenerator``."""

    asyncio = True

    def create_publisher(self, elements: int) -> Publisher[Payload]:
        return rs.RSocketPublisher(rs.stream_from_async_generator(elements))


class RequestStreamOverTcpVerification(PublisherVerification[Payload]):
    """``request_stream`` from an ``RSocketClient`` to an ``RSocketServer`` over TCP.

    Every publisher is a new connection (a check may break one: ``request(2**63-1)`` makes the
    client's sender task die on ``struct.error``, as REQUEST_N is a 31-bit field), and the
    connections of a check are closed when it returns, which also stops server streams whose
    CANCEL never got out.
    """

    def __init__(self, loopback: rs.RSocketLoopback, env: TestEnvironment) -> None:
        super().__init__(env)
        self.loopback = loopback

    def create_publisher(self, elements: int) -> Publisher[Payload]:
        return self.loopback.stream(str(elements).encode())

    def create_failed_publisher(self) -> Publisher[Payload] | None:
        return self.loopback.stream(rs.FAIL)

    def iterations_per_stochastic_test(self) -> int:
        return 10  # a TCP connection each

    def run_rule(self, rule_id: str) -> RuleResult:
        try:
            return super().run_rule(rule_id)
        finally:
            self.loopback.close_connections()


@pytest.fixture
def loopback() -> Iterator[rs.RSocketLoopback]:
    """An rsocket-py server on 127.0.0.1 (ephemeral port); every connection closed after."""
    endpoints = rs.RSocketLoopback()
    endpoints.start()
    try:
        yield endpoints
    finally:
        endpoints.stop()


@pytest.fixture(autouse=True)
def _quiet_rsocket_logs() -> Iterator[None]:
    """rsocket-py logs every failure it meets at ERROR, with a traceback; keep the output short."""
    logger = logging.getLogger("pyrsocket")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def mismatches(results: list[RuleResult], table: dict[str, Expect]) -> list[str]:
    lines = []
    for result in results:
        expect = table.get(result.id)
        if expect is None:
            lines.append(f"{result.id}: not in the pinned table, got {outcome(result)}")
        elif outcome(result) not in expect.outcomes:
            wanted = " or ".join(sorted(expect.outcomes))
            lines.append(f"{result.id}: pinned {wanted}, got {outcome(result)}")
    missing = set(table) - {result.id for result in results}
    lines.extend(f"{check}: pinned, but the kit has no such check" for check in sorted(missing))
    return lines


def check_verdicts(results: list[RuleResult], table: dict[str, Expect]) -> None:
    wrong = mismatches(results, table)
    assert not wrong, "\n".join([*wrong, "", "actual results:", format_results(results)])


# -- tests ------------------------------------------------------------------------------------


def test_the_pinned_rsocket_version_is_installed() -> None:
    assert importlib.metadata.version("rsocket") == RSOCKET_VERSION, (
        "the verdicts below are pinned for rsocket-py " + RSOCKET_VERSION
    )


def test_every_pinned_failure_says_why() -> None:
    for table in (GENERATOR, TCP):
        for check, expect in table.items():
            if any(o.startswith("failed") or o == "skipped" for o in expect.outcomes):
                assert expect.why, check


def test_stream_from_generator_verdicts() -> None:
    check_verdicts(StreamFromGeneratorVerification(fast_env()).run(), GENERATOR)


def test_stream_from_async_generator_verdicts() -> None:
    check_verdicts(StreamFromAsyncGeneratorVerification(fast_env()).run(), GENERATOR)


def test_request_stream_over_tcp_verdicts(loopback: rs.RSocketLoopback) -> None:
    check_verdicts(RequestStreamOverTcpVerification(loopback, fast_env()).run(), TCP)


# -- the adapter hides nothing: controls --------------------------------------------------------


class _Adapted(PublisherVerification[int]):
    """A kit reference publisher behind ``RSocketPublisher``: the adapter must change nothing."""

    factory: type[pubs.SyncRangePublisher] = pubs.SyncRangePublisher

    def create_publisher(self, elements: int) -> Publisher[int]:
        return rs.RSocketPublisher[int](self.factory(elements))


def test_the_adapter_keeps_a_compliant_publisher_compliant() -> None:
    results = _Adapted(fast_env()).run()
    others = [r for r in results if r.status not in ("passed", "untested")]
    assert all("create_failed_publisher() returned None" in r.message for r in others), others


@pytest.mark.parametrize(
    ("factory", "check", "rule"),
    [
        (pubs.OverDeliveringPublisher, "required_spec101", "Rule 1.1"),
        (pubs.KeepsSubscriberPublisher, "required_spec313", "Rule 3.13"),
        (pubs.IgnoringBadRequestPublisher, "required_spec309_request_zero", "Rule 3.9"),
        (pubs.SignalAfterCompletePublisher, "required_spec107", "Rule 1.7"),
    ],
    ids=["1.1", "3.13", "3.9", "1.7"],
)
def test_the_adapter_hides_no_violation(
    factory: type[pubs.SyncRangePublisher], check: str, rule: str
) -> None:
    class Broken(_Adapted):
        pass

    Broken.factory = factory
    (result,) = Broken(fast_env()).run([check])
    assert outcome(result) == f"failed: {rule}", result


def test_the_loop_bridge_keeps_an_asyncio_publisher_compliant(
    loopback: rs.RSocketLoopback,
) -> None:
    """The kit's compliant asyncio publisher, on the loopback's loop behind the same bridge."""

    async def make(elements: int) -> pubs.AsyncioRangePublisher:
        return pubs.AsyncioRangePublisher(elements)

    class Bridged(PublisherVerification[int]):
        def create_publisher(self, elements: int) -> Publisher[int]:
            target = loopback.net.run(make(elements))
            return rs.RSocketPublisher[int](target, call=loopback.net.call)

    results = Bridged(fast_env()).run()
    others = [r for r in results if r.status not in ("passed", "untested")]
    assert all("create_failed_publisher() returned None" in r.message for r in others), others
