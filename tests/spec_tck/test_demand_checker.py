"""DemandVerification: correct operators pass random schedules; broken ones are caught with
a readable, shrunk schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st

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
]


@pytest.mark.parametrize(("case", "problem"), BROKEN, ids=[str(c) for c, _ in BROKEN])
def test_broken_operators_are_caught(case: DemandVerification[Any, Any], problem: str) -> None:
    with pytest.raises(DemandViolation, match=problem) as caught:
        case.run()
    message = str(caught.value)
    assert "schedule: [" in message
    assert "trace: " in message


def test_a_failure_prints_the_schedule_readably() -> None:
    case = DemandVerification(name="off-by-one", operator=op(ops.OffByOneLink))
    with pytest.raises(DemandViolation) as caught:
        case.check_schedule([Request(2), Emit(7), Request(1), Cancel()])
    message = str(caught.value)
    assert (
        "off-by-one: the operator called request(0) upstream (Rule 3.9) (after step 3)" in message
    )
    assert "schedule: [request(2), emit(7), request(1), cancel()]" in message
    assert "down.request(1); up.request(0)" in message


def test_shrinking_finds_a_minimal_schedule() -> None:
    case = DemandVerification(name="off-by-one", operator=op(ops.OffByOneLink))
    with pytest.raises(DemandViolation) as caught:
        case.run()
    assert "schedule: [request(1)]" in str(caught.value)


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
