"""Every operator through the shared scenario matrix, plus random demand schedules."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reactive_bp import Flow
from reactive_bp.schedulers import ImmediateScheduler, TrampolineScheduler, VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber
from tests.scenarios import SCENARIOS, OperatorCase, boom, could_continue, same_items

pytestmark = pytest.mark.no_undeliverable


def _chunks(items: list[int], size: int) -> list[object]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _scan(items: list[int]) -> list[object]:
    return list(itertools.accumulate(items))


def _below_12(x: int) -> bool:
    return x < 12


def _dedupe(items: list[int]) -> list[object]:
    return [key for key, _ in itertools.groupby(items)]


def _even(x: int) -> bool:
    return x % 2 == 0


CASES: list[OperatorCase] = [
    OperatorCase(
        "map",
        lambda f: f.map(lambda x: x * 3),
        lambda xs: [x * 3 for x in xs],
        lambda f: f.map(boom),
    ),
    OperatorCase(
        "filter",
        lambda f: f.filter(lambda x: x % 3 == 0),
        lambda xs: [x for x in xs if x % 3 == 0],
        lambda f: f.filter(boom),
    ),
    OperatorCase("take", lambda f: f.take(7), lambda xs: list(xs[:7])),
    OperatorCase("take_more_than_available", lambda f: f.take(100), lambda xs: list(xs)),
    OperatorCase("skip", lambda f: f.skip(5), lambda xs: list(xs[5:])),
    OperatorCase(
        "take_while",
        lambda f: f.take_while(lambda x: x < 12),
        lambda xs: list(itertools.takewhile(_below_12, xs)),
        lambda f: f.take_while(boom),
    ),
    OperatorCase(
        "skip_while",
        lambda f: f.skip_while(lambda x: x < 12),
        lambda xs: list(itertools.dropwhile(_below_12, xs)),
        lambda f: f.skip_while(boom),
    ),
    OperatorCase("scan", lambda f: f.scan(lambda a, x: a + x), _scan, lambda f: f.scan(boom)),
    OperatorCase(
        "scan_seed",
        lambda f: f.scan(lambda a, x: a + x, 100),
        lambda xs: list(itertools.accumulate(xs, initial=100)),
        lambda f: f.scan(boom, 100),
        # The source is subscribed once the seed was requested (concat).
        propagates_cancel=False,
    ),
    OperatorCase(
        "reduce",
        lambda f: f.reduce(lambda a, x: a + x),
        lambda xs: [sum(xs)],
        lambda f: f.reduce(boom),
    ),
    OperatorCase(
        "reduce_seed", lambda f: f.reduce(lambda a, x: [*a, x], [-1]), lambda xs: [[-1, *xs]]
    ),
    OperatorCase(
        "distinct_until_changed",
        lambda f: f.distinct_until_changed(),
        _dedupe,
        lambda f: f.distinct_until_changed(boom),
        data=[1, 1, 2, 2, 2, 3, 1, 1, 5, 5, 6, 6, 6, 6, 7],
    ),
    OperatorCase("buffer", lambda f: f.buffer(3), lambda xs: _chunks(xs, 3)),
    OperatorCase(
        "do_on_next",
        lambda f: f.do_on_next(lambda x: None),
        lambda xs: list(xs),
        lambda f: f.do_on_next(boom),
    ),
    OperatorCase("do_on_request", lambda f: f.do_on_request(lambda n: None), lambda xs: list(xs)),
    OperatorCase("do_on_cancel", lambda f: f.do_on_cancel(lambda: None), lambda xs: list(xs)),
    OperatorCase(
        "do_on_subscribe",
        lambda f: f.do_on_subscribe(lambda s: None),
        lambda xs: list(xs),
        lambda f: f.do_on_subscribe(boom),
    ),
    # A raising do_on_error/do_on_complete/do_on_terminate/do_finally action
    # runs after upstream ended, so there is no upstream to cancel: checked in
    # tests/operators/test_side_effects.py, not by the matrix's raising scenario.
    OperatorCase("do_on_error", lambda f: f.do_on_error(lambda e: None), lambda xs: list(xs)),
    OperatorCase("do_on_complete", lambda f: f.do_on_complete(lambda: None), lambda xs: list(xs)),
    OperatorCase("do_on_terminate", lambda f: f.do_on_terminate(lambda: None), lambda xs: list(xs)),
    OperatorCase("do_finally", lambda f: f.do_finally(lambda s: None), lambda xs: list(xs)),
    OperatorCase(
        "lift_and_pipe",
        lambda f: f.pipe(lambda g: g.map(lambda x: x + 1)),
        lambda xs: [x + 1 for x in xs],
    ),
    # Combining, error-recovery, rate and boundary operators.
    OperatorCase(
        "flat_map",
        lambda f: f.flat_map(lambda x: Flow.just(x, x + 100)),
        lambda xs: [y for x in xs for y in (x, x + 100)],
        lambda f: f.flat_map(boom),
        ordered=False,
    ),
    OperatorCase(
        "flat_map_concurrency_1",
        lambda f: f.flat_map(lambda x: Flow.range(x % 3), max_concurrency=1, prefetch=1),
        lambda xs: [y for x in xs for y in range(x % 3)],
    ),
    OperatorCase(
        "concat_map",
        lambda f: f.concat_map(lambda x: Flow.just(x, -x)),
        lambda xs: [y for x in xs for y in (x, -x)],
        lambda f: f.concat_map(boom),
    ),
    OperatorCase("merge", lambda f: Flow.merge(f, Flow.empty()), lambda xs: list(xs)),
    OperatorCase("concat", lambda f: Flow.concat(f, Flow.just(-1, -2)), lambda xs: [*xs, -1, -2]),
    OperatorCase(
        "zip",
        lambda f: Flow.zip(f, Flow.range(1000)).map(lambda pair: pair[0] * 1000 + pair[1]),
        lambda xs: [x * 1000 + i for i, x in enumerate(xs)],
    ),
    OperatorCase("limit_rate", lambda f: f.limit_rate(4), lambda xs: list(xs)),
    OperatorCase(
        "on_error_resume",
        lambda f: f.on_error_resume(lambda e: Flow.just(-1), when=KeyError),
        lambda xs: list(xs),
    ),
    OperatorCase(
        "on_error_return", lambda f: f.on_error_return(-1, when=KeyError), lambda xs: list(xs)
    ),
    OperatorCase(
        "publish_on_immediate",
        lambda f: f.publish_on(ImmediateScheduler(), prefetch=4),
        lambda xs: list(xs),
    ),
    # Chains that mix the conditional fast path with the plain on_next path.
    OperatorCase(
        "take_filter",
        lambda f: f.take(15).filter(_even),
        lambda xs: [x for x in xs[:15] if _even(x)],
    ),
    OperatorCase(
        "skip_filter", lambda f: f.skip(3).filter(_even), lambda xs: [x for x in xs[3:] if _even(x)]
    ),
    OperatorCase(
        "filter_take", lambda f: f.filter(_even).take(4), lambda xs: [x for x in xs if _even(x)][:4]
    ),
    OperatorCase(
        "do_on_next_filter",
        lambda f: f.do_on_next(lambda x: None).filter(_even),
        lambda xs: [x for x in xs if _even(x)],
    ),
    OperatorCase(
        "do_finally_filter",
        lambda f: f.do_finally(lambda s: None).filter(_even),
        lambda xs: [x for x in xs if _even(x)],
    ),
    OperatorCase(
        "take_while_distinct",
        lambda f: f.map(lambda x: x // 3).take_while(lambda x: x < 5).distinct_until_changed(),
        lambda xs: sorted({x // 3 for x in xs if x // 3 < 5}),
    ),
    OperatorCase(
        "map_filter_chain",
        lambda f: f.map(lambda x: x + 1).filter(lambda x: x % 2 == 0).map(str),
        lambda xs: [str(x + 1) for x in xs if (x + 1) % 2 == 0],
    ),
    # Time, retry and concurrency operators where no clock has to move (the
    # time-driven scenarios are in test_time.py, on a virtual clock).
    OperatorCase(
        "timeout_not_reached",
        lambda f: f.timeout(60.0, scheduler=VirtualTimeScheduler()),
        lambda xs: list(xs),
    ),
    OperatorCase(
        "timeout_with_fallback_not_reached",
        lambda f: f.timeout(60.0, Flow.just(-1), scheduler=VirtualTimeScheduler()),
        lambda xs: list(xs),
    ),
    # retry_on=KeyError: the matrix's Boom passes through, the source is subscribed once.
    OperatorCase(
        "retry_without_errors", lambda f: f.retry(3, retry_on=KeyError), lambda xs: list(xs)
    ),
    OperatorCase(
        "map_async_immediate",
        lambda f: f.map_async(lambda x: x * 5, 3, scheduler=ImmediateScheduler()),
        lambda xs: [x * 5 for x in xs],
        lambda f: f.map_async(boom, 3, scheduler=ImmediateScheduler()),
    ),
    OperatorCase(
        "map_async_unordered_trampoline",
        lambda f: f.map_async(lambda x: -x, 2, ordered=False, scheduler=TrampolineScheduler()),
        lambda xs: [-x for x in xs],
        lambda f: f.map_async(boom, 2, ordered=False, scheduler=TrampolineScheduler()),
        ordered=False,
    ),
    # Backpressure strategies. Lossless settings run directly; the lossy ones
    # run with an unbounded buffer after them (so what they keep does not depend
    # on the scenario's demand) -- their losses are tested in test_backpressure.py
    # and test_sampling.py.
    OperatorCase("on_backpressure_buffer", lambda f: f.on_backpressure_buffer(32), list),
    OperatorCase(
        "on_backpressure_buffer_ttl",
        lambda f: f.on_backpressure_buffer(32, ttl=60.0, scheduler=VirtualTimeScheduler()),
        list,
    ),
    OperatorCase(
        "on_backpressure_buffer_unbounded", lambda f: f.on_backpressure_buffer_unbounded(), list
    ),
    OperatorCase(
        "on_backpressure_drop",
        lambda f: f.on_backpressure_drop().on_backpressure_buffer_unbounded(),
        list,
    ),
    OperatorCase(
        "on_backpressure_latest",
        lambda f: f.on_backpressure_latest().on_backpressure_buffer_unbounded(),
        list,
    ),
    OperatorCase(
        "on_backpressure_error",
        lambda f: f.on_backpressure_error().on_backpressure_buffer_unbounded(),
        list,
    ),
    OperatorCase(
        "on_backpressure_reduce",
        lambda f: (
            f.map(lambda x: [x])
            .on_backpressure_reduce(lambda a, b: a + b)
            .concat_map(Flow.from_iterable)
        ),
        list,
    ),
    OperatorCase(
        "sample",
        lambda f: f.sample(
            1.0, scheduler=VirtualTimeScheduler()
        ).on_backpressure_buffer_unbounded(),
        lambda xs: xs[-1:],
    ),
    OperatorCase(
        "throttle_first",
        lambda f: f.throttle_first(1.0, VirtualTimeScheduler()).on_backpressure_buffer_unbounded(),
        lambda xs: xs[:1],
    ),
    OperatorCase(
        "throttle_latest",
        lambda f: f.throttle_latest(1.0, VirtualTimeScheduler()).on_backpressure_buffer_unbounded(),
        lambda xs: [xs[0], xs[-1]],
    ),
    OperatorCase(
        "debounce",
        lambda f: f.debounce(1.0, VirtualTimeScheduler()).on_backpressure_buffer_unbounded(),
        lambda xs: xs[-1:],
    ),
    OperatorCase(
        "throttle_shape",
        lambda f: f.throttle(1000, per=1.0, burst=64, scheduler=VirtualTimeScheduler()),
        list,
    ),
    OperatorCase(
        "buffer_timeout",
        lambda f: f.buffer_timeout(5, 1.0, VirtualTimeScheduler()),
        lambda xs: _chunks(xs, 5),
    ),
    OperatorCase("sample_every", lambda f: f.sample_every(3), lambda xs: xs[2::3]),
    OperatorCase(
        "sample_adaptive",
        lambda f: f.sample_adaptive(1.0, 0.1, 0.5, 64, random.Random(0)),
        list,
    ),
]


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        for name, scenario in SCENARIOS.items():
            marks = []
            if name == "raising_callback" and case.raising is None:
                marks.append(pytest.mark.skip(reason="no user callback"))
            params.append(pytest.param(case, scenario, id=f"{case.name}-{name}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "scenario"), _params())
def test_scenario(
    case: OperatorCase, scenario: Callable[[OperatorCase], TestSubscriber[object]]
) -> None:
    subscriber = scenario(case)
    subscriber.assert_clean()


schedules = st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=30)


@pytest.mark.parametrize("case", CASES, ids=repr)
@settings(max_examples=40, deadline=None)
@given(schedule=schedules, manual=st.booleans(), cancel_at=st.none() | st.integers(0, 30))
def test_random_demand_schedules(
    case: OperatorCase, schedule: list[int], manual: bool, cancel_at: int | None
) -> None:
    """Delivered <= requested at every step; output is a prefix of the model's."""
    expected = list(case.model(list(case.data)))
    subscriber: TestSubscriber[object] = TestSubscriber()
    upstream: TestPublisher[int] = TestPublisher()
    source: Flow[int] = upstream if manual else Flow.from_iterable(case.data)
    case.apply(source).subscribe(subscriber)
    position = 0
    for step, n in enumerate(schedule):
        if step == cancel_at:
            subscriber.cancel()
        subscriber.request(n)
        if manual:
            while upstream.outstanding and position < len(case.data) and not upstream.cancelled:
                upstream.send_next(case.data[position])
                position += 1
            if position == len(case.data) and not upstream.cancelled:
                upstream.send_complete()
                position += 1
        assert len(subscriber.items) <= subscriber.requested
        assert could_continue(case, subscriber.items, expected)
        subscriber.assert_clean()
    if subscriber.completed:
        assert same_items(case, subscriber.items, expected)
    if manual:
        assert not upstream.bad_requests
