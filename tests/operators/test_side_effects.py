"""The do_* family: when each action runs, what a raising action does, exactly-once do_finally.

The shared matrix (tests/operators/test_matrix.py), the demand checker
(tests/test_operator_demand.py) and the compliance kit (spec_tck/components.py) run
these operators with no-op actions; this module checks the actions themselves:
the order against the downstream signals, that they do not run when they should not,
the fault handling of each, and do_finally's exactly-once under a cancel/terminal race.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn, assert_type

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import (
    UNBOUNDED,
    Flow,
    NonPositiveRequestError,
    ProtocolViolationError,
    SignalType,
)
from reactive_bp.abc import Subscription
from reactive_bp.testing import TestPublisher, TestSubscriber, capture_undeliverable
from tests.races import PAUSE_LINES, PausePlan, PauseWhere, Preemption, Trace

pytestmark = pytest.mark.no_undeliverable


class Boom(Exception):
    """What a raising action throws."""


def boom(*_: object) -> NoReturn:
    raise Boom("action failed")


class LoggedSubscriber(TestSubscriber[int]):
    """A TestSubscriber that also writes its signals into a log shared with the actions."""

    __slots__ = ("log",)

    def __init__(self, log: list[str], initial_request: int = UNBOUNDED) -> None:
        super().__init__(initial_request)
        self.log = log

    def on_subscribe(self, subscription: Subscription) -> None:
        self.log.append("downstream:on_subscribe")
        super().on_subscribe(subscription)

    def on_next(self, item: int) -> None:
        self.log.append(f"downstream:on_next({item})")
        super().on_next(item)

    def on_error(self, error: Exception) -> None:
        self.log.append(f"downstream:on_error({type(error).__name__})")
        super().on_error(error)

    def on_complete(self) -> None:
        self.log.append("downstream:on_complete")
        super().on_complete()


def _attach(
    apply: Callable[[Flow[int]], Flow[int]], log: list[str], initial_request: int = UNBOUNDED
) -> tuple[TestPublisher[int], LoggedSubscriber]:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber = LoggedSubscriber(log, initial_request)
    apply(upstream).subscribe(subscriber)
    return upstream, subscriber


# -- typing -----------------------------------------------------------------------------------


def test_the_family_keeps_the_item_type_with_lambdas() -> None:
    flow = Flow.range(3)
    assert_type(flow.do_on_subscribe(lambda s: s.cancel()), Flow[int])
    assert_type(flow.do_on_error(lambda e: e.args), Flow[int])
    assert_type(flow.do_on_complete(lambda: None), Flow[int])
    assert_type(flow.do_on_terminate(lambda: None), Flow[int])
    assert_type(flow.do_finally(lambda signal: signal.name), Flow[int])
    signals: list[SignalType] = []
    assert flow.do_finally(signals.append).to_list() == [0, 1, 2]
    assert signals == [SignalType.ON_COMPLETE]


# -- do_on_error --------------------------------------------------------------------------------


def test_do_on_error_sees_the_error_before_downstream_does() -> None:
    log: list[str] = []
    seen: list[Exception] = []

    def action(error: Exception) -> None:
        seen.append(error)
        log.append("action")

    upstream, subscriber = _attach(lambda f: f.do_on_error(action), log)
    upstream.send_next(1)
    error = KeyError("k")
    upstream.send_error(error)
    assert seen == [error] and subscriber.errors == [error]
    assert log[-2:] == ["action", "downstream:on_error(KeyError)"]
    subscriber.assert_clean()


def test_do_on_error_does_not_run_on_completion_or_cancel() -> None:
    calls: list[Exception] = []
    upstream, subscriber = _attach(lambda f: f.do_on_error(calls.append), [])
    upstream.send_complete()
    assert subscriber.completed and calls == []

    upstream, subscriber = _attach(lambda f: f.do_on_error(calls.append), [])
    subscriber.cancel()
    assert upstream.cancelled and calls == []


def test_do_on_error_sees_a_bad_request_as_the_error_it_becomes() -> None:
    calls: list[Exception] = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    Flow.range(5).do_on_error(calls.append).subscribe(subscriber)
    subscriber.request(0)
    assert len(calls) == 1 and isinstance(calls[0], NonPositiveRequestError)
    assert subscriber.errors == calls


def test_a_raising_do_on_error_replaces_the_error_and_keeps_it_as_context() -> None:
    upstream, subscriber = _attach(lambda f: f.do_on_error(boom), [])
    original = KeyError("k")
    upstream.send_error(original)
    assert len(subscriber.errors) == 1 and isinstance(subscriber.errors[0], Boom)
    assert subscriber.errors[0].__context__ is original
    assert not subscriber.completed
    subscriber.assert_clean()


# -- do_on_complete ------------------------------------------------------------------------------


def test_do_on_complete_runs_before_downstream_completes_and_only_then() -> None:
    log: list[str] = []
    upstream, subscriber = _attach(lambda f: f.do_on_complete(lambda: log.append("action")), log)
    upstream.send_next(1, 2)
    upstream.send_complete()
    assert log[-2:] == ["action", "downstream:on_complete"]
    assert log.count("action") == 1

    for end in ("error", "cancel"):
        quiet: list[str] = []

        def watched(f: Flow[int], quiet: list[str] = quiet) -> Flow[int]:
            return f.do_on_complete(lambda: quiet.append("x"))

        upstream, subscriber = _attach(watched, [])
        if end == "error":
            upstream.send_error(KeyError("k"))
        else:
            subscriber.cancel()
            upstream.send_complete()  # after cancel: dropped, and the action stays silent
        assert quiet == [], end


def test_a_raising_do_on_complete_becomes_on_error_instead_of_completion() -> None:
    upstream, subscriber = _attach(lambda f: f.do_on_complete(boom), [])
    upstream.send_next(1)
    upstream.send_complete()
    assert subscriber.items == [1]
    assert not subscriber.completed
    assert len(subscriber.errors) == 1 and isinstance(subscriber.errors[0], Boom)
    subscriber.assert_clean()


# -- do_on_terminate -------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["complete", "error"])
def test_do_on_terminate_runs_once_before_either_terminal_signal(end: str) -> None:
    log: list[str] = []
    upstream, _ = _attach(lambda f: f.do_on_terminate(lambda: log.append("action")), log)
    if end == "complete":
        upstream.send_complete()
        assert log[-2:] == ["action", "downstream:on_complete"]
    else:
        upstream.send_error(KeyError("k"))
        assert log[-2:] == ["action", "downstream:on_error(KeyError)"]
    assert log.count("action") == 1


def test_do_on_terminate_does_not_run_on_cancel() -> None:
    calls: list[str] = []
    upstream, subscriber = _attach(lambda f: f.do_on_terminate(lambda: calls.append("x")), [])
    subscriber.cancel()
    assert upstream.cancelled and calls == []


def test_a_raising_do_on_terminate_replaces_the_terminal_signal() -> None:
    upstream, subscriber = _attach(lambda f: f.do_on_terminate(boom), [])
    upstream.send_complete()
    assert not subscriber.completed and isinstance(subscriber.errors[0], Boom)

    upstream, subscriber = _attach(lambda f: f.do_on_terminate(boom), [])
    original = KeyError("k")
    upstream.send_error(original)
    assert len(subscriber.errors) == 1 and isinstance(subscriber.errors[0], Boom)
    assert subscriber.errors[0].__context__ is original
    subscriber.assert_clean()


# -- do_on_subscribe -------------------------------------------------------------------------------


def test_do_on_subscribe_gets_upstreams_subscription_before_downstream_gets_one() -> None:
    log: list[str] = []
    received: list[Subscription] = []

    def action(subscription: Subscription) -> None:
        received.append(subscription)
        log.append("action")

    upstream, subscriber = _attach(lambda f: f.do_on_subscribe(action), log, initial_request=2)
    assert log == ["action", "downstream:on_subscribe"]
    assert len(received) == 1
    # A view of upstream's subscription: demand is downstream's alone (Rule 1.1).
    assert upstream.requests == [2]
    with pytest.raises(ProtocolViolationError, match="must not request"):
        received[0].request(3)
    assert upstream.requests == [2]
    upstream.send_next(1, 2)
    upstream.send_complete()
    assert subscriber.items == [1, 2] and subscriber.completed
    subscriber.assert_clean()


def test_a_do_on_subscribe_action_that_requests_fails_instead_of_overflowing_downstream() -> None:
    """Before, ``lambda s: s.request(2)`` let two items reach a downstream that had
    requested nothing, before its on_subscribe (Rules 1.1 and 1.9)."""
    log: list[str] = []
    subscriber = LoggedSubscriber(log, 0)
    Flow.range(3).do_on_subscribe(lambda s: s.request(2)).subscribe(subscriber)
    assert log == ["downstream:on_subscribe", "downstream:on_error(ProtocolViolationError)"]
    assert subscriber.items == []


def test_a_do_on_subscribe_action_may_cancel() -> None:
    log: list[str] = []
    cancelled: list[bool] = []
    subscriber = LoggedSubscriber(log, UNBOUNDED)
    Flow.range(3).do_on_cancel(lambda: cancelled.append(True)).do_on_subscribe(
        lambda s: s.cancel()
    ).subscribe(subscriber)
    assert cancelled == [True]
    assert log == ["downstream:on_subscribe"]  # nothing flows from a cancelled upstream


def test_do_on_subscribe_runs_before_any_item_flows() -> None:
    """A synchronous source would emit inside downstream's on_subscribe: the action is earlier."""
    log: list[str] = []
    subscriber = LoggedSubscriber(log, UNBOUNDED)
    Flow.range(2).do_on_subscribe(lambda s: log.append("action")).subscribe(subscriber)
    assert log == [
        "action",
        "downstream:on_subscribe",
        "downstream:on_next(0)",
        "downstream:on_next(1)",
        "downstream:on_complete",
    ]


def test_a_raising_do_on_subscribe_cancels_upstream_and_fails_downstream(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    log: list[str] = []
    upstream, subscriber = _attach(lambda f: f.do_on_subscribe(boom), log, initial_request=5)
    assert upstream.cancelled
    assert log == ["downstream:on_subscribe", "downstream:on_error(Boom)"]
    assert isinstance(subscriber.errors[0], Boom)
    # Downstream's subscription has nothing behind it: its request never reaches upstream.
    subscriber.request(3)
    assert upstream.requests == []
    # Late upstream signals (Rule 2.8) are dropped; a late error is reported, not swallowed.
    upstream.send_next(1)
    late = KeyError("late")
    upstream.send_error(late)
    assert subscriber.items == [] and len(subscriber.errors) == 1
    assert [error for error, _ in undeliverable] == [late]
    subscriber.assert_clean()


def test_a_second_subscription_is_rejected_without_running_do_on_subscribe_again(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    calls: list[Subscription] = []
    gate: list[object] = []
    subscriber: TestSubscriber[int] = TestSubscriber()

    class Twice(Flow[int]):
        def _subscribe(self, operator: object) -> None:
            gate.append(operator)

    Twice().do_on_subscribe(calls.append).subscribe(subscriber)
    first: TestPublisher[int] = TestPublisher()
    second: TestPublisher[int] = TestPublisher()
    operator = gate[0]
    first.subscribe(operator)  # type: ignore[arg-type]
    second.subscribe(operator)  # type: ignore[arg-type]
    assert len(calls) == 1
    assert second.cancelled and not first.cancelled
    assert len(undeliverable) == 1 and "Rule 2.5" in str(undeliverable[0][0])


# -- do_finally --------------------------------------------------------------------------------


def _finally_log(log: list[str]) -> Callable[[SignalType], None]:
    def action(signal: SignalType) -> None:
        log.append(f"finally:{signal.name}")

    return action


@pytest.mark.parametrize(
    ("end", "delivered", "signal"),
    [
        ("complete", "downstream:on_complete", "finally:ON_COMPLETE"),
        ("error", "downstream:on_error(KeyError)", "finally:ON_ERROR"),
    ],
)
def test_do_finally_runs_after_the_terminal_signal_reached_downstream(
    end: str, delivered: str, signal: str
) -> None:
    log: list[str] = []
    upstream, subscriber = _attach(lambda f: f.do_finally(_finally_log(log)), log)
    upstream.send_next(1)
    assert "finally" not in " ".join(log)
    if end == "complete":
        upstream.send_complete()
    else:
        upstream.send_error(KeyError("k"))
    assert log[-2:] == [delivered, signal]
    subscriber.cancel()  # after the end: no second run
    assert sum(entry.startswith("finally") for entry in log) == 1
    subscriber.assert_clean()


def test_do_finally_runs_after_the_cancel_reached_upstream_and_only_once(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    seen: list[tuple[SignalType, bool]] = []
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    upstream.do_finally(lambda signal: seen.append((signal, upstream.cancelled))).subscribe(
        subscriber
    )
    upstream.send_next(1)
    subscriber.cancel()
    assert seen == [(SignalType.CANCEL, True)]
    subscriber.cancel()  # Rule 3.7: idempotent
    upstream.send_complete()  # late terminal signals (Rule 2.8) do not run it again
    late = KeyError("late")
    upstream.send_error(late)
    assert seen == [(SignalType.CANCEL, True)]
    assert not subscriber.completed and not subscriber.errors
    assert [error for error, _ in undeliverable] == [late]


def test_do_finally_sees_a_downstream_take_as_a_cancel() -> None:
    signals: list[SignalType] = []
    assert Flow.range(100).do_finally(signals.append).take(3).to_list() == [0, 1, 2]
    assert signals == [SignalType.CANCEL]


def test_a_cancel_from_inside_on_complete_does_not_run_do_finally_twice() -> None:
    signals: list[SignalType] = []

    class CancelsOnComplete(TestSubscriber[int]):
        def on_complete(self) -> None:
            super().on_complete()
            self.cancel()

    subscriber = CancelsOnComplete(UNBOUNDED)
    Flow.range(2).do_finally(signals.append).subscribe(subscriber)
    assert subscriber.completed and signals == [SignalType.ON_COMPLETE]


def test_a_raising_do_finally_goes_to_the_undeliverable_hook(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    upstream, subscriber = _attach(lambda f: f.do_finally(boom), [])
    upstream.send_next(1)
    upstream.send_complete()
    assert subscriber.completed and not subscriber.errors  # the stream was already over
    assert len(undeliverable) == 1 and isinstance(undeliverable[0][0], Boom)
    assert "do_finally" in undeliverable[0][1]
    subscriber.assert_clean()


def test_a_downstream_that_raises_from_on_next_ends_the_stream_with_on_error_then_finally(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    log: list[str] = []

    class Raises(LoggedSubscriber):
        def on_next(self, item: int) -> None:
            super().on_next(item)
            raise Boom("downstream broke Rule 2.13")

    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber = Raises(log)
    upstream.do_finally(_finally_log(log)).subscribe(subscriber)
    upstream.send_next(1, 2)
    assert upstream.cancelled
    assert log == [
        "downstream:on_subscribe",
        "downstream:on_next(1)",
        "downstream:on_error(Boom)",
        "finally:ON_ERROR",
    ]
    assert undeliverable == []


def test_a_downstream_that_raises_from_on_subscribe_still_runs_do_finally() -> None:
    signals: list[SignalType] = []

    class Raises(TestSubscriber[int]):
        def on_subscribe(self, subscription: Subscription) -> None:
            super().on_subscribe(subscription)
            raise Boom("downstream broke Rule 2.13")

    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber = Raises()
    upstream.do_finally(signals.append).subscribe(subscriber)
    assert upstream.cancelled and isinstance(subscriber.errors[0], Boom)
    assert signals == [SignalType.ON_ERROR]


_EVENTS = st.lists(st.sampled_from(["item", "complete", "error", "cancel", "request"]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(events=_EVENTS)
def test_do_finally_runs_once_iff_the_stream_ended_and_after_its_end(events: list[str]) -> None:
    """Any serial order of upstream signals and downstream request/cancel."""
    log: list[str] = []
    late: list[BaseException] = []
    with capture_undeliverable() as reported:
        upstream, subscriber = _attach(lambda f: f.do_finally(_finally_log(log)), log, 0)
        for event in events:
            if event == "item" and upstream.outstanding and not subscriber.is_terminated:
                upstream.send_next(len(log))
            elif event == "request":
                subscriber.request(2)
            elif event == "complete":
                upstream.send_complete()
            elif event == "error":
                error = KeyError("k")
                late.append(error)
                upstream.send_error(error)
            elif event == "cancel":
                subscriber.cancel()
    runs = [entry for entry in log if entry.startswith("finally")]
    ended = subscriber.completed or bool(subscriber.errors) or subscriber.cancelled
    assert len(runs) == (1 if ended else 0), log
    if runs:
        assert log[-1] == runs[0], "something reached downstream after do_finally ran"
        first_end = next(e for e in events if e in ("complete", "error", "cancel"))
        expected = {"complete": "ON_COMPLETE", "error": "ON_ERROR", "cancel": "CANCEL"}
        assert runs[0] == f"finally:{expected[first_end]}"
    # Every error after the end is reported; the one that ended the stream is delivered.
    assert len(reported) + len(subscriber.errors) == len(late)
    subscriber.assert_clean()


# -- do_finally: a cancel racing a terminal signal on another thread ---------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# Where a run stops one thread (see tests/races.py, Preemption): ``None`` is a free race;
# ("end", k) stops the terminal call at its k-th traced library line until the cancel ran;
# ("cancel", k) stops the cancel until the terminal signal was sent. Enumerating k puts the
# other thread into every gap, narrow ones included (the base's unlocked done flag), which
# a free race alone reaches too rarely to catch an implementation that relies on that flag.
_PAUSES: list[tuple[PauseWhere, int] | None] = [
    *((where, at) for where in ("end", "cancel") for at in range(1, PAUSE_LINES + 1)),
    *([None] * 200),
]


def _race_once(
    end: str, pause: tuple[PauseWhere, int] | None, run: int
) -> tuple[TestSubscriber[int], list[tuple[SignalType, bool, bool]], Trace]:
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    runs: list[tuple[SignalType, bool, bool]] = []

    def action(signal: SignalType) -> None:
        runs.append((signal, subscriber.is_terminated, upstream.cancelled))

    upstream.do_finally(action).subscribe(subscriber)
    upstream.send_next(1)
    trace = Trace()
    preemption = Preemption(None if pause is None else PausePlan(*pause), trace)

    def terminate() -> None:
        if end == "complete":
            upstream.send_complete()
        else:
            upstream.send_error(KeyError("k"))

    start = threading.Barrier(2)

    def ender() -> None:
        start.wait()
        if pause is not None and pause[0] == "cancel":
            if not preemption.serve(terminate):
                terminate()  # the cancel ended before its k-th line: end after it
        else:
            preemption.run(terminate, preemption.line("end"))

    thread = threading.Thread(target=ender)
    thread.start()
    start.wait()
    if pause is None:
        for _ in range(run % 8):  # stagger the cancel so that either side can come first
            time.sleep(0)
        subscriber.cancel()
    elif pause[0] == "end":
        if not preemption.serve(subscriber.cancel):
            subscriber.cancel()  # the terminal call ended before its k-th line
    else:
        preemption.run(subscriber.cancel, preemption.line("cancel"))
    thread.join(10)
    assert not thread.is_alive()
    return subscriber, runs, trace


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("end", ["complete", "error"])
def test_do_finally_runs_exactly_once_when_cancel_races_the_terminal_signal(
    end: str, undeliverable: list[tuple[BaseException, str]]
) -> None:
    outcomes = {"terminal": 0, "cancel": 0}
    for run, pause in enumerate(_PAUSES):
        subscriber, runs, trace = _race_once(end, pause, run)
        where = f"run {run}, pause {pause}:\n{trace.render()}"
        assert len(runs) == 1, f"do_finally ran {len(runs)} times: {runs}; {where}"
        signal, terminated_before, cancelled_before = runs[0]
        if signal is SignalType.CANCEL:
            outcomes["cancel"] += 1
            assert cancelled_before, f"do_finally(CANCEL) before upstream was cancelled; {where}"
            # The terminal lost: it is not delivered (an error goes to the hook).
            assert not subscriber.completed and not subscriber.errors, where
        else:
            outcomes["terminal"] += 1
            expected = SignalType.ON_COMPLETE if end == "complete" else SignalType.ON_ERROR
            assert signal is expected, where
            assert terminated_before, f"do_finally before the terminal reached downstream; {where}"
        subscriber.assert_clean()
    # Both orders happened (otherwise this test raced nothing).
    assert outcomes["cancel"] and outcomes["terminal"], outcomes
    if end == "error":
        assert len(undeliverable) == outcomes["cancel"]


# -- fusion: the conditional fast path goes through every one of them --------------------------

PASS_THROUGH: dict[str, Callable[[Flow[int]], Flow[int]]] = {
    "do_on_next": lambda f: f.do_on_next(lambda x: None),
    "do_on_request": lambda f: f.do_on_request(lambda n: None),
    "do_on_cancel": lambda f: f.do_on_cancel(lambda: None),
    "do_on_subscribe": lambda f: f.do_on_subscribe(lambda s: None),
    "do_on_error": lambda f: f.do_on_error(lambda e: None),
    "do_on_complete": lambda f: f.do_on_complete(lambda: None),
    "do_on_terminate": lambda f: f.do_on_terminate(lambda: None),
    "do_finally": lambda f: f.do_finally(lambda s: None),
}


@pytest.mark.parametrize("name", list(PASS_THROUGH))
def test_a_filter_below_returns_its_demand_through_the_conditional_path(name: str) -> None:
    """A dropped item costs no request(1) round trip: the operator passes try_on_next on."""
    requests: list[int] = []
    subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
    flow = PASS_THROUGH[name](Flow.range(20).do_on_request(requests.append))
    flow.filter(lambda x: x % 5 == 0).subscribe(subscriber)
    assert subscriber.items == [0, 5, 10, 15] and subscriber.completed
    # One request per delivered item plus the first: no extra request(1) per dropped item.
    assert requests == [1] * 5
    subscriber.assert_clean()
