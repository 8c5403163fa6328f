"""DemandVerification: correct operators pass random schedules; broken ones are caught with
a readable, shrunk schedule, a trace per step and a line saying how to fix them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st

import spec_tck._demand_checker as demand_checker
from reactive_bp.abc import Publisher
from spec_tck import (
    SAME_AS_DOWNSTREAM,
    UNBOUNDED_BY_DESIGN,
    Cancel,
    Complete,
    DemandVerification,
    DemandViolation,
    Emit,
    Fail,
    Request,
    per_output,
    verify_operator_demand,
)

from . import _operators as ops

MAX = 2**63 - 1


def op(link: Callable[..., Any], *args: Any) -> Callable[[Publisher[Any]], Publisher[Any]]:
    def build(upstream: Publisher[Any]) -> Publisher[Any]:
        return ops.Operator(upstream, lambda down: link(down, *args))

    return build


def batches(size: int) -> Callable[[list[int]], list[list[int]]]:
    return lambda xs: [xs[i : i + size] for i in range(0, len(xs), size)]


def evens(xs: list[int]) -> list[int]:
    return [x for x in xs if x % 2 == 0]


def is_even(x: int) -> bool:
    return x % 2 == 0


def clocked(link: Callable[..., Any]) -> tuple[Callable[[Publisher[Any]], Publisher[Any]], Any]:
    """An operator on a fresh ``ManualClock`` per run, and ``advance_time`` for the latest."""
    clocks: list[ops.ManualClock] = []

    def build(upstream: Publisher[Any]) -> Publisher[Any]:
        clocks.append(ops.ManualClock())
        return ops.Operator(upstream, lambda down: link(down, clocks[-1]))

    return build, lambda: clocks[-1].advance()


def drop_operator(link: Callable[..., Any]) -> Any:
    def build(upstream: Publisher[Any], on_dropped: Callable[[object], None]) -> Publisher[Any]:
        return ops.Operator(upstream, lambda down: link(down, on_dropped))

    return build


CORRECT: list[DemandVerification[Any, Any]] = [
    DemandVerification(name="pass-through", operator=op(ops.Link), model=list),
    DemandVerification(
        name="map", operator=op(ops.MapLink, lambda x: x * 2), model=lambda xs: [x * 2 for x in xs]
    ),
    DemandVerification(
        name="filter",
        operator=op(ops.FilterLink, lambda x: x % 3 != 0),
        model=lambda xs: [x for x in xs if x % 3 != 0],
        upstream_bound=SAME_AS_DOWNSTREAM,
    ),
    DemandVerification(
        name="buffer(3)",
        operator=op(ops.BufferLink, 3),
        upstream_bound=per_output(3),
        model=batches(3),
    ),
    DemandVerification(
        name="reduce",
        operator=op(ops.ReduceLink),
        upstream_bound=UNBOUNDED_BY_DESIGN,
        model=lambda xs: [sum(xs)],
    ),
    DemandVerification(
        name="drop-on-backpressure",
        lossy_operator=drop_operator(ops.DropLink),
        upstream_bound=UNBOUNDED_BY_DESIGN,
    ),
]


@pytest.mark.parametrize("case", CORRECT, ids=str)
def test_correct_operators_pass(case: DemandVerification[Any, Any]) -> None:
    case.max_examples = 150
    case.run()


BROKEN: list[tuple[DemandVerification[Any, Any], str]] = [
    (
        DemandVerification(
            name="over-requesting map", operator=op(ops.OverRequestingLink, lambda x: x)
        ),
        r"upstream demand outstanding is \d+ but the declared bound \(SAME_AS_DOWNSTREAM\)",
    ),
    (
        DemandVerification(name="losing", operator=op(ops.LosingLink), model=list),
        r"which is not a prefix of model|expected model",
    ),
    (
        DemandVerification(name="off-by-one", operator=op(ops.OffByOneLink)),
        r"the operator called request\(0\) upstream \(Rule 3.9\)",
    ),
    (
        DemandVerification(name="no-cancel", operator=op(ops.NoCancelLink)),
        r"downstream cancel\(\) did not reach upstream",
    ),
    (
        DemandVerification(name="duplicating", operator=op(ops.DuplicatingLink), model=list),
        r"requested only|not a prefix",
    ),
    (
        DemandVerification(name="swallows errors", operator=op(ops.SwallowErrorLink)),
        r"the upstream error did not reach downstream exactly once",
    ),
    (
        DemandVerification(
            name="buffer without flush",
            operator=op(ops.NoFlushBufferLink, 2),
            upstream_bound=per_output(2),
            model=batches(2),
        ),
        r"expected model\(upstream items\)",
    ),
    (
        DemandVerification(
            name="undeclared unbounded", operator=op(ops.ReduceLink), model=lambda xs: [sum(xs)]
        ),
        r"declared bound \(SAME_AS_DOWNSTREAM\) allows",
    ),
    (
        DemandVerification(
            name="silent drops",
            lossy_operator=drop_operator(ops.SilentDropLink),
            upstream_bound=UNBOUNDED_BY_DESIGN,
        ),
        r"only 0 reported through on_dropped|0 dropped != ",
    ),
    (
        DemandVerification(
            name="filter without replenish",
            operator=op(ops.NoReplenishFilterLink, is_even),
            model=evens,
        ),
        r"stall: downstream waits for \d+ more item\(s\), upstream has not ended, the operator "
        r"has no outstanding upstream request and holds nothing \(after step \d+: emit\(",
    ),
    (
        DemandVerification(
            name="cancels upstream silently", operator=op(ops.SelfCancellingLink), model=list
        ),
        r"stall: .* the operator cancelled upstream without ending downstream and holds nothing",
    ),
    (
        DemandVerification(name="pacer on a frozen clock", operator=clocked(ops.PacedLink)[0]),
        r"stall: .* no outstanding upstream request and holds nothing \(after step \d+: "
        r"request\(",
    ),
]


@pytest.mark.parametrize(("case", "problem"), BROKEN, ids=[str(c) for c, _ in BROKEN])
def test_broken_operators_are_caught(case: DemandVerification[Any, Any], problem: str) -> None:
    with pytest.raises(DemandViolation, match=problem) as caught:
        case.run()
    message = str(caught.value)
    assert "\n  schedule: [" in message
    assert re.search(
        r"\n  trace:\n    subscribe: up\.subscribe; down\.on_subscribe.*\n    step 1 ", message
    )
    *_, last = message.splitlines()
    assert last == f"  how to fix: {caught.value.fix}"
    assert caught.value.fix
    # The schedule reported is the one the failure replays with.
    with pytest.raises(DemandViolation) as replayed:
        case.check_schedule(caught.value.schedule)
    assert str(replayed.value) == message


def test_a_stall_after_cancelling_upstream_says_to_end_downstream() -> None:
    case = DemandVerification(operator=op(ops.SelfCancellingLink), model=list)
    with pytest.raises(DemandViolation, match=r"\(after step 3: emit\(2\)\)") as caught:
        case.check_schedule([Request(3), Emit(1), Emit(2)])
    assert caught.value.fix.startswith("after cancelling upstream, end downstream too")


def test_a_failure_prints_the_schedule_readably() -> None:
    case = DemandVerification(name="off-by-one", operator=op(ops.OffByOneLink))
    with pytest.raises(DemandViolation) as caught:
        case.check_schedule([Emit(7), Request(1), Cancel()])
    assert str(caught.value).splitlines() == [
        "off-by-one: the operator called request(0) upstream (Rule 3.9) (after step 2: request(1))",
        "  schedule: [emit(7), request(1), cancel()]",
        "  trace:",
        "    subscribe: up.subscribe; down.on_subscribe",
        "    step 1 emit(7): (emit(7) skipped: no upstream demand)",
        "    step 2 request(1): down.request(1); up.request(0); !! the operator called "
        "request(0) upstream (Rule 3.9)",
        "    step 3 cancel(): -",
        "  how to fix: never call request(n) upstream with n <= 0: skip the call when there is "
        "nothing to ask for (Rule 3.9)",
    ]


def test_an_under_requesting_operator_stalls() -> None:
    """request(2) became request(1) upstream: after one item downstream waits forever."""
    case = DemandVerification(name="off-by-one", operator=op(ops.OffByOneLink))
    with pytest.raises(DemandViolation, match=r"^off-by-one: stall: .*\(after step 2: emit\(7\)\)"):
        case.check_schedule([Request(2), Emit(7), Request(1), Cancel()])


def test_a_stall_is_reported_at_the_step_that_left_downstream_waiting() -> None:
    """The issue's example: a swallowed item with no replacement requested used to pass."""
    case = DemandVerification(
        name="filter without replenish",
        operator=op(ops.NoReplenishFilterLink, is_even),
        model=evens,
    )
    with pytest.raises(DemandViolation) as caught:
        case.check_schedule([Request(1), Emit(1)])
    lines = str(caught.value).splitlines()
    assert lines[0] == (
        "filter without replenish: stall: downstream waits for 1 more item(s), upstream has "
        "not ended, the operator has no outstanding upstream request and holds nothing "
        "(after step 2: emit(1))"
    )
    assert "    step 2 emit(1): up.on_next(1); !! stall: downstream waits for 1 more" in lines[5]
    assert lines[-1].startswith("  how to fix: request a replacement upstream for every item")
    # The correct filter gives the demand back, so the same schedule passes.
    DemandVerification(operator=op(ops.FilterLink, is_even), model=evens).check_schedule(
        [Request(1), Emit(1)]
    )


def test_held_items_are_not_a_stall() -> None:
    """No upstream demand and downstream waiting is fine while the operator holds output."""
    build, _ = clocked(ops.HoldUntilTickLink)
    DemandVerification(operator=build, model=list).check_schedule(
        [Request(2), Emit(1), Emit(2), Cancel()]
    )
    # buffer(3): a partial batch is held output (model([1, 2]) == [[1, 2]]).
    DemandVerification(
        operator=op(ops.BufferLink, 3), upstream_bound=per_output(3), model=batches(3)
    ).check_schedule([Request(1), Emit(1), Emit(2), Cancel()])


def test_a_time_driven_operator_declares_advance_time() -> None:
    build, advance = clocked(ops.PacedLink)
    DemandVerification(
        name="pacer", operator=build, model=list, advance_time=advance, max_examples=40
    ).run()
    with pytest.raises(DemandViolation, match=r"stall: .*\(after step 1: request\(1\)\)"):
        DemandVerification(operator=build, model=list).check_schedule([Request(1)])


def test_the_final_drain_lets_time_pass() -> None:
    build, advance = clocked(ops.HoldUntilTickLink)
    DemandVerification(
        name="delay", operator=build, model=list, advance_time=advance, max_examples=40
    ).run()
    with pytest.raises(DemandViolation, match="upstream completed but downstream got no terminal"):
        DemandVerification(operator=build, model=list).check_schedule([Request(1), Emit(1)])


def test_an_asynchronous_operator_gets_a_grace_period_before_a_stall() -> None:
    """The replacement is requested 0.3 s later from a timer thread."""
    filtered = op(ops.LateReplenishFilterLink, is_even)
    slow = DemandVerification(
        operator=filtered, model=evens, asynchronous=True, settle_ms=2, stall_grace_ms=5000
    )
    slow.check_schedule([Request(1), Emit(1), Emit(2), Cancel()])
    impatient = DemandVerification(
        operator=filtered, model=evens, asynchronous=True, settle_ms=2, stall_grace_ms=0
    )
    with pytest.raises(DemandViolation, match=r"stall: .*\(after step 2: emit\(1\)\)"):
        impatient.check_schedule([Request(1), Emit(1), Emit(2), Cancel()])


def test_run_shrinks_then_replays_the_shrunk_schedule_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = DemandVerification(name="off-by-one", operator=op(ops.OffByOneLink))
    played: list[list[Any]] = []
    check = case.check_schedule

    def recording(steps: Any) -> None:
        played.append(list(steps))
        check(steps)

    monkeypatch.setattr(case, "check_schedule", recording)
    with pytest.raises(DemandViolation) as caught:
        case.run()
    assert "schedule: [request(1)]" in str(caught.value)
    assert played[-1] == caught.value.schedule == played[-2] == [Request(1)]
    assert "Falsifying example" not in str(caught.value)


def test_a_failure_that_does_not_replay_says_so() -> None:
    case = DemandVerification(name="map", operator=op(ops.Link), model=list)
    shrunk = DemandViolation(
        "map: something (after step 1: request(1))\n  schedule: [request(1)]\n  how to fix: x",
        schedule=[Request(1)],
        fix="x",
    )
    message = str(case._replayed(shrunk))
    assert "note: replaying this schedule once more passed" in message
    assert message.endswith("\n  how to fix: x")


def test_without_hypothesis_run_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demand_checker, "_hypothesis_installed", lambda: False)
    case = DemandVerification(name="map", operator=op(ops.Link), model=list)
    with pytest.raises(ModuleNotFoundError) as caught:
        case.run()
    assert str(caught.value) == (
        "spec_tck: DemandVerification.run() generates schedules with Hypothesis, which is not "
        "installed: pip install 'reactive-bp[tck]'"
    )
    case.check_schedule([Request(1), Emit(1), Complete()])  # replaying needs no Hypothesis


def test_step_reprs() -> None:
    steps = [Request(3), Request(MAX), Emit("a"), Complete(), Fail(), Cancel()]
    assert (
        repr(steps) == "[request(3), request(UNBOUNDED), emit('a'), complete(), error(), cancel()]"
    )


def test_deterministic_schedules_for_a_correct_operator() -> None:
    case = DemandVerification(
        name="buffer(2)",
        operator=op(ops.BufferLink, 2),
        upstream_bound=per_output(2),
        model=batches(2),
    )
    case.check_schedule([Request(1), Emit(1), Emit(2), Emit(3), Complete(), Request(1)])
    case.check_schedule([Request(MAX), Emit(1), Fail()])
    case.check_schedule([Emit(1), Cancel(), Emit(2), Request(5)])


def test_custom_elements_and_shorthand() -> None:
    verify_operator_demand(
        op(ops.MapLink, str.upper),
        model=lambda xs: [x.upper() for x in xs],
        elements=st.text(min_size=1, max_size=3),
        max_examples=30,
    )


def test_declaration_is_validated() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        DemandVerification()
    with pytest.raises(ValueError, match="upstream_bound"):
        DemandVerification(operator=op(ops.Link), upstream_bound=-1)
    with pytest.raises(ValueError):
        per_output(0)


def test_int_bound_for_a_prefetching_operator() -> None:
    """An operator that prefetches 4 upstream regardless of downstream (limit_rate style)."""

    class Prefetch4(ops.Link):
        def on_subscribe(self, subscription: Any) -> None:
            super().on_subscribe(subscription)
            self.pending: list[Any] = []
            self.demand = 0
            self.received = 0
            subscription.request(4)

        def request(self, n: int) -> None:
            self.demand = min(MAX, self.demand + n)
            self.drain()

        def on_next(self, item: Any) -> None:
            self.pending.append(item)
            self.received += 1
            if self.received % 4 == 0:
                self.upstream.request(4)
            self.drain()

        def on_complete(self) -> None:
            self.completed = True
            self.drain()

        def drain(self) -> None:
            while self.pending and self.demand > 0 and not self.done:
                self.demand -= 1
                self.downstream.on_next(self.pending.pop(0))
            if getattr(self, "completed", False) and not self.pending and not self.done:
                self.done = True
                self.downstream.on_complete()

    DemandVerification(
        name="prefetch(4)", operator=op(Prefetch4), upstream_bound=4, model=list
    ).run()
    with pytest.raises(DemandViolation, match=r"declared bound \(2\) allows 2"):
        DemandVerification(operator=op(Prefetch4), upstream_bound=2).run()
