"""Fused chains over iterable sources behave exactly like the unfused operators.

``Flow.from_iterable(xs).map(f).filter(p)...`` is fused into one source
(``reactive_bp/operators/_fusion.py``). The reference here is the same chain
over ``Flow.defer(...)``, which is not fusable, so every operator is lifted as
before. Both runs share one event log -- every pull from the source, every
call of a user function, every signal -- and the logs must be equal after
every step of a random demand schedule: same items, same errors, same
completion timing, same pulls, same side effects.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, Flow, NoneItemError
from reactive_bp.abc import Subscriber, Subscription
from reactive_bp.operators._fusion import FusedIterableFlow
from reactive_bp.testing import TestSubscriber
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable

Log = list[str]


def _counting(items: Sequence[int | None], log: Log) -> Iterator[int]:
    """The source: logs each pull and its close (``None`` is passed on as an item)."""
    try:
        for item in items:
            log.append(f"pull {item!r}")
            yield item  # type: ignore[misc]
        log.append("source exhausted")
    finally:
        log.append("source closed")


@dataclass(frozen=True)
class Stage:
    """One operator of a random chain; ``fail_at`` makes its function raise or return None."""

    kind: str  # map, filter, skip, take, take_while, skip_while
    param: int
    fail_at: int | None = None
    fail_with: str = "raise"  # raise | none | stop | stop_async

    def apply(self, flow: Flow[int], index: int, log: Log) -> Flow[int]:
        """Apply this stage to ``flow``; its function logs every call."""
        kind, param = self.kind, self.param

        def call(x: int) -> int:
            log.append(f"{kind}#{index}({x!r})")
            if x == self.fail_at:
                if self.fail_with == "none":
                    return None  # type: ignore[return-value]
                if self.fail_with == "stop":
                    raise StopIteration(f"stop at {x}")
                if self.fail_with == "stop_async":
                    raise StopAsyncIteration(f"stop at {x}")
                raise Boom(f"{kind}#{index} failed at {x}")
            return x

        if kind == "map":
            return flow.map(lambda x: call(x) * param + 1)
        if kind == "filter":
            return flow.filter(lambda x: call(x) % param != 0)
        if kind == "take_while":
            return flow.take_while(lambda x: call(x) < param)
        if kind == "skip_while":
            return flow.skip_while(lambda x: call(x) < param)
        if kind == "take":
            return flow.take(param)
        return flow.skip(param)


stages = st.builds(
    Stage,
    kind=st.sampled_from(["map", "map", "filter", "skip", "take", "take_while", "skip_while"]),
    param=st.integers(1, 6),
    fail_at=st.none() | st.integers(0, 40),
    fail_with=st.sampled_from(["raise", "none", "stop"]),
)
# What sits after the chain: nothing (a plain subscriber), or a lifted
# operator, so the fused source also serves a conditional subscriber.
tails = st.sampled_from(["none", "do_on_next", "distinct_until_changed", "unfusable_filter"])


def _build(source: Flow[int], chain: list[Stage], tail: str, log: Log) -> Flow[int]:
    flow = source
    for index, stage in enumerate(chain):
        flow = stage.apply(flow, index, log)
    if tail == "do_on_next":
        flow = flow.do_on_next(lambda x: log.append(f"tail({x!r})"))
    elif tail == "distinct_until_changed":
        flow = flow.distinct_until_changed(lambda x: x // 3)
    elif tail == "unfusable_filter":
        probe: Callable[[Subscriber[int]], Subscriber[int]] = _IdentityProbe
        flow = flow.lift(probe).filter(lambda x: x % 2 == 0)
    return flow


class _IdentityProbe:
    """A hand-written pass-through subscriber: makes what follows it unfusable."""

    def __init__(self, actual: Subscriber[int]) -> None:
        self._actual = actual

    def on_subscribe(self, subscription: Subscription) -> None:
        self._actual.on_subscribe(subscription)

    def on_next(self, item: int) -> None:
        self._actual.on_next(item)

    def on_error(self, error: Exception) -> None:
        self._actual.on_error(error)

    def on_complete(self) -> None:
        self._actual.on_complete()


def _logged(log: Log, name: str) -> Callable[[int], int]:
    def call(x: int) -> int:
        log.append(f"{name}({x})")
        return x

    return call


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _drive(
    flow: Flow[int], log: Log, schedule: list[int], cancel_at: int | None
) -> TestSubscriber[int]:
    subscriber: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(subscriber)
    for step, n in enumerate(schedule):
        if step == cancel_at:
            subscriber.cancel()
            log.append("cancel")
        subscriber.request(n)
        log.append(
            f"request({n}) -> items={subscriber.items} completed={subscriber.completed} "
            f"errors={[_describe(e) for e in subscriber.errors]}"
        )
    subscriber.assert_clean()
    return subscriber


def _run_both(
    data: list[int | None],
    chain: list[Stage],
    tail: str,
    schedule: list[int],
    cancel_at: int | None,
) -> tuple[Log, Log, Flow[int]]:
    fused_log: Log = []
    fused = _build(Flow.from_iterable(_counting(data, fused_log)), chain, tail, fused_log)
    _drive(fused, fused_log, schedule, cancel_at)
    plain_log: Log = []
    unfusable: Flow[int] = Flow.defer(lambda: Flow.from_iterable(_counting(data, plain_log)))
    plain = _build(unfusable, chain, tail, plain_log)
    _drive(plain, plain_log, schedule, cancel_at)
    return fused_log, plain_log, fused


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.integers(0, 40), max_size=25),
    none_at=st.none() | st.integers(0, 30),
    chain=st.lists(stages, min_size=1, max_size=5),
    tail=tails,
    schedule=st.lists(st.integers(1, 6) | st.just(UNBOUNDED), min_size=1, max_size=12),
    cancel_at=st.none() | st.integers(0, 12),
)
def test_fused_equals_unfused_on_random_chains_and_demand(
    data: list[int],
    none_at: int | None,
    chain: list[Stage],
    tail: str,
    schedule: list[int],
    cancel_at: int | None,
) -> None:
    """Same pulls, same user calls, same signals, after every request."""
    items: list[int | None] = list(data)
    if none_at is not None and none_at <= len(items):
        items.insert(none_at, None)
    fused_log, plain_log, _ = _run_both(items, chain, tail, schedule, cancel_at)
    assert fused_log == plain_log


def test_the_chains_under_test_are_really_fused() -> None:
    log: Log = []
    flow = _build(
        Flow.range(10), [Stage("map", 2), Stage("filter", 3), Stage("take", 4)], "none", log
    )
    assert isinstance(flow, FusedIterableFlow)
    assert isinstance(Flow.just(1, 2).skip(1).skip_while(bool).take_while(bool), FusedIterableFlow)
    assert not isinstance(Flow.defer(lambda: Flow.range(3)).map(str), FusedIterableFlow)
    # Only map fuses after a take (the take is counted at the end).
    assert isinstance(Flow.range(9).take(3).map(str), FusedIterableFlow)
    assert not isinstance(Flow.range(9).take(3).filter(bool), FusedIterableFlow)
    assert not isinstance(Flow.range(9).take(0), FusedIterableFlow)


def test_the_repr_is_the_unfused_one() -> None:
    assert repr(Flow.range(3).map(str).take(2)) == "Flow.range(range(0, 3)).map(...).take(...)"


def test_the_original_flow_still_works_and_fused_flows_resubscribe() -> None:
    numbers = Flow.from_iterable([1, 2, 3, 4])
    doubled = numbers.map(lambda x: x * 2)
    evens = doubled.filter(lambda x: x % 4 == 0)
    assert evens.to_list() == [4, 8]
    assert evens.to_list() == [4, 8]  # a list replays for each subscriber
    assert doubled.to_list() == [2, 4, 6, 8]  # the intermediate flow is unchanged
    assert numbers.to_list() == [1, 2, 3, 4]
    assert doubled.take(1).to_list() == [2]
    assert doubled.to_list() == [2, 4, 6, 8]


def test_nothing_is_pulled_beyond_demand() -> None:
    log: Log = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    source = Flow.from_iterable(_counting(list(range(100)), log))
    source.map(lambda x: x + 1).take(5).subscribe(subscriber)
    assert log == []
    subscriber.request(2)
    assert log == ["pull 0", "pull 1"]
    subscriber.request(UNBOUNDED)  # the take caps it at 3 more
    assert subscriber.items == [1, 2, 3, 4, 5]
    assert subscriber.completed  # at the 5th item, without a further request
    assert log == [f"pull {i}" for i in range(5)] + ["source closed"]


def test_filter_pulls_until_an_item_passes_and_no_further() -> None:
    log: Log = []
    subscriber: TestSubscriber[int] = TestSubscriber()
    source = Flow.from_iterable(_counting([1, 3, 5, 6, 7, 8], log))
    source.filter(lambda x: x % 2 == 0).subscribe(subscriber)
    subscriber.request(1)
    assert subscriber.items == [6]
    assert log == ["pull 1", "pull 3", "pull 5", "pull 6"]


def test_a_raising_mapper_signals_its_own_error_and_closes_the_source() -> None:
    log: Log = []
    error = Boom("mapper failed")

    def mapper(x: int) -> int:
        if x == 2:
            raise error
        return x

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    source = Flow.from_iterable(_counting([0, 1, 2, 3], log))
    source.map(mapper).filter(lambda x: True).subscribe(subscriber)
    assert subscriber.items == [0, 1]
    assert subscriber.errors == [error]  # the very object
    assert log == ["pull 0", "pull 1", "pull 2", "source closed"]


def test_a_stop_iteration_from_a_mapper_is_signalled_as_itself() -> None:
    stop = StopIteration("from the mapper")

    def mapper(x: int) -> int:
        raise stop

    subscriber: TestSubscriber[str] = TestSubscriber(UNBOUNDED)
    Flow.range(3).map(mapper).map(str).subscribe(subscriber)
    assert subscriber.errors == [stop]


def test_none_from_a_mapper_fails_before_the_next_stage_sees_it() -> None:
    seen: Log = []
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)

    def mapper(x: int) -> int:
        return None if x == 3 else x  # type: ignore[return-value]

    logged = _logged(seen, "filter")
    Flow.range(5).map(mapper).filter(lambda x: logged(x) >= 0).subscribe(subscriber)
    assert subscriber.items == [0, 1, 2]
    assert seen == ["filter(0)", "filter(1)", "filter(2)"]
    [error] = subscriber.errors
    assert type(error) is NoneItemError
    assert "returned None for 3" in str(error)


def test_none_from_the_source_names_the_source() -> None:
    calls: Log = []
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.from_iterable(_counting([1, None, 3], [])).map(_logged(calls, "map")).subscribe(subscriber)
    assert subscriber.items == [1]
    assert calls == ["map(1)"]
    [error] = subscriber.errors
    assert isinstance(error, NoneItemError)
    assert "from_iterable" in str(error)


@pytest.mark.parametrize(("count", "expected"), [(1, [0]), (3, [0, 1, 2]), (5, [0, 1, 2, 3, 4])])
def test_take_and_skip_boundaries(count: int, expected: list[int]) -> None:
    assert Flow.range(5).take(count).to_list() == expected
    assert Flow.range(5).skip(count).to_list() == list(range(5))[count:]
    assert Flow.range(5).take(count).take(2).to_list() == expected[:2]
    assert Flow.range(5).skip(0).to_list() == [0, 1, 2, 3, 4]
    assert Flow.range(5).take(count).map(lambda x: -x).to_list() == [-x for x in expected]


def test_cancel_mid_batch_stops_pulling_at_once() -> None:
    log: Log = []
    subscriber: TestSubscriber[int] = TestSubscriber(10, cancel_after=3)
    Flow.from_iterable(_counting(list(range(20)), log)).map(_logged(log, "map")).subscribe(
        subscriber
    )
    assert subscriber.items == [0, 1, 2]
    assert not subscriber.completed and not subscriber.errors
    assert log == ["pull 0", "map(0)", "pull 1", "map(1)", "pull 2", "map(2)", "source closed"]


def test_one_at_a_time_demand() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber(1, request_on_next=1)
    Flow.range(50).map(lambda x: x * 2).filter(lambda x: x % 3 == 0).skip(2).subscribe(subscriber)
    assert subscriber.items == [x * 2 for x in range(50) if x * 2 % 3 == 0][2:]
    assert subscriber.completed
    subscriber.assert_clean()


def test_ten_chained_maps() -> None:
    flow: Flow[int] = Flow.range(100)
    for _ in range(10):
        flow = flow.map(lambda x: x + 1)
    assert isinstance(flow, FusedIterableFlow)
    assert flow.to_list() == list(range(10, 110))


def test_cancel_drops_the_subscriber_rule_3_13() -> None:
    class Conditional(TestSubscriber[int]):
        def try_on_next(self, item: int) -> bool:
            self.on_next(item)
            return True

    for flow in (Flow.range(10), Flow.range(10).map(str), Flow.range(10).take(5)):
        subscriber = Conditional(1)
        flow.subscribe(subscriber)  # type: ignore[arg-type]
        subscription = subscriber.subscription
        ref = weakref.ref(subscriber)
        subscriber.cancel()
        del subscriber
        gc.collect()
        assert ref() is None, subscription
