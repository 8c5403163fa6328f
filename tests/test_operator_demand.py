"""Every operator under spec_tck's DemandVerification: random request/cancel schedules.

``DEMAND_CASES`` declares, for each operator, how much it may request upstream
and what it should emit; the checker drives an instrumented upstream and
checks both after every step. ``test_every_operator_has_a_demand_case`` keeps
the list complete.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

import pytest

from reactive_bp import BufferStats, Flow, OverflowStrategy, SlowSubscriberPolicy
from reactive_bp.abc import Publisher
from reactive_bp.metrics import BackpressureMeter
from reactive_bp.schedulers import ImmediateScheduler, VirtualTimeScheduler
from spec_tck import UNBOUNDED_BY_DESIGN, DemandVerification, per_output
from tests.registry import EXEMPT

Op = Callable[[Publisher[int]], Publisher[object]]


def lossless(
    name: str,
    operator: Callable[[Flow[int]], Flow[object]],
    model: Callable[[list[int]], Sequence[object]],
    **options: object,
) -> DemandVerification[int, object]:
    """A case for an operator that loses nothing."""
    return DemandVerification(
        name=name,
        operator=lambda up: operator(Flow.from_publisher(up)),
        model=model,
        max_examples=60,
        **options,  # type: ignore[arg-type]
    )


def _chunks(xs: list[int], size: int) -> list[object]:
    return [xs[i : i + size] for i in range(0, len(xs), size)]


def _dedupe(xs: list[int]) -> list[object]:
    return [key for key, _ in itertools.groupby(xs)]


def _balance_with_one_left(flow: Flow[int]) -> Flow[int]:
    first, second = flow.balance(2, buffer_size=4)
    second.subscribe_with().dispose()  # subscribed (so the upstream can start), then gone
    return first


_immediate = ImmediateScheduler()

DEMAND_CASES: list[DemandVerification[int, object]] = [
    lossless("map", lambda f: f.map(lambda x: x * 2), lambda xs: [x * 2 for x in xs]),
    lossless(
        "filter", lambda f: f.filter(lambda x: x % 2 == 0), lambda xs: [x for x in xs if x % 2 == 0]
    ),
    lossless("take", lambda f: f.take(5), lambda xs: xs[:5]),
    lossless("skip", lambda f: f.skip(3), lambda xs: xs[3:]),
    lossless(
        "take_while",
        lambda f: f.take_while(lambda x: x < 50),
        lambda xs: list(itertools.takewhile(lambda x: x < 50, xs)),
    ),
    lossless(
        "skip_while",
        lambda f: f.skip_while(lambda x: x < 50),
        lambda xs: list(itertools.dropwhile(lambda x: x < 50, xs)),
    ),
    lossless("distinct_until_changed", lambda f: f.distinct_until_changed(), _dedupe),
    lossless(
        "scan", lambda f: f.scan(lambda a, x: a + x), lambda xs: list(itertools.accumulate(xs))
    ),
    lossless(
        "scan_seed",
        lambda f: f.scan(lambda a, x: a + x, 7),
        lambda xs: list(itertools.accumulate(xs, initial=7)),
    ),
    lossless(
        "reduce",
        lambda f: f.reduce(lambda a, x: a + x),
        lambda xs: [sum(xs)] if xs else [],
        upstream_bound=UNBOUNDED_BY_DESIGN,
    ),
    lossless(
        "buffer", lambda f: f.buffer(3), lambda xs: _chunks(xs, 3), upstream_bound=per_output(3)
    ),
    lossless("do_on_next", lambda f: f.do_on_next(lambda x: None), list),
    lossless("do_on_request", lambda f: f.do_on_request(lambda n: None), list),
    lossless("do_on_cancel", lambda f: f.do_on_cancel(lambda: None), list),
    lossless("do_on_subscribe", lambda f: f.do_on_subscribe(lambda s: None), list),
    lossless("do_on_error", lambda f: f.do_on_error(lambda error: None), list),
    lossless("do_on_complete", lambda f: f.do_on_complete(lambda: None), list),
    lossless("do_on_terminate", lambda f: f.do_on_terminate(lambda: None), list),
    lossless("do_finally", lambda f: f.do_finally(lambda signal: None), list),
    lossless("lift_pipe", lambda f: f.pipe(lambda g: g.map(lambda x: x)), list),
    lossless(
        "flat_map",
        lambda f: f.flat_map(lambda x: Flow.just(x, -x), max_concurrency=1, prefetch=2),
        lambda xs: [y for x in xs for y in (x, -x)],
        upstream_bound=1,
    ),
    lossless(
        "concat_map",
        lambda f: f.concat_map(lambda x: Flow.just(x, -x), prefetch=2),
        lambda xs: [y for x in xs for y in (x, -x)],
        upstream_bound=2,
    ),
    lossless("merge", lambda f: Flow.merge(f, Flow.empty(), prefetch=4), list, upstream_bound=4),
    lossless("concat", lambda f: Flow.concat(f, Flow.just(-1)), lambda xs: [*xs, -1]),
    lossless(
        "merge_with", lambda f: f.merge_with(Flow.empty(), prefetch=4), list, upstream_bound=4
    ),
    lossless("concat_with", lambda f: f.concat_with(Flow.just(-1)), lambda xs: [*xs, -1]),
    lossless(
        "zip_with",
        lambda f: f.zip_with(Flow.range(10**6), prefetch=4),
        lambda xs: list(zip(xs, range(len(xs)), strict=False)),
        upstream_bound=4,
    ),
    lossless(
        "zip",
        lambda f: Flow.zip(f, Flow.range(10**6), prefetch=4),
        lambda xs: list(zip(xs, range(len(xs)), strict=False)),
        upstream_bound=4,
    ),
    # One output: upstream demand is the output's demand plus the prefetch.
    lossless(
        "balance",
        lambda f: f.balance(1, buffer_size=4)[0],
        list,
        upstream_bound=per_output(1, extra=4),
    ),
    # Two outputs, one of which left before the start: everything goes to the other.
    lossless(
        "balance_one_left",
        lambda f: _balance_with_one_left(f),
        list,
        upstream_bound=per_output(1, extra=4),
    ),
    lossless(
        "on_error_resume",
        lambda f: f.on_error_resume(lambda error: Flow.empty()),
        list,
        propagates_errors=False,
    ),
    # The checker's upstream error is not a KeyError: it must pass through untouched.
    lossless("on_error_return", lambda f: f.on_error_return(-1, when=KeyError), list),
    lossless("limit_rate", lambda f: f.limit_rate(4), list, upstream_bound=4),
    lossless("publish_on", lambda f: f.publish_on(_immediate, prefetch=8), list, upstream_bound=8),
    lossless("subscribe_on", lambda f: f.subscribe_on(_immediate), list),
    lossless("timeout", lambda f: f.timeout(60), list),
    lossless("retry", lambda f: f.retry(3, retry_on=KeyError), list),
    lossless(
        "map_async",
        lambda f: f.map_async(lambda x: x + 1, max_concurrency=2, scheduler=_immediate),
        lambda xs: [x + 1 for x in xs],
        upstream_bound=2,
    ),
]


def _by_first_seen_key(xs: list[int], keys: int = 3) -> list[object]:
    """Items grouped by ``x % keys``, groups in order of first appearance (concat of groups)."""
    order = list(dict.fromkeys(x % keys for x in xs))
    return [x for key in order for x in xs if x % keys == key]


# Splitting operators, flattened back. concat_map subscribes one group at a time, so the
# groups behind it are not consumed: their items wait (at most group_buffer each) and pause
# the source, which the bound of 2 checks; nothing is lost once upstream completes.
DEMAND_CASES += [
    lossless(
        "group_by",
        lambda f: f.group_by(lambda x: x % 3, group_buffer=2).concat_map(lambda g: g, prefetch=1),
        _by_first_seen_key,
        upstream_bound=2,
    ),
    lossless(
        "group_by_flat_map",
        lambda f: f.group_by(lambda x: 0, group_buffer=3).flat_map(lambda g: g),
        list,
        upstream_bound=3,
    ),
    lossless("window", lambda f: f.window(3).concat_map(lambda w: w), list, upstream_bound=3),
    lossless(
        "window_timeout",
        lambda f: f.window_timeout(3, 60.0, scheduler=VirtualTimeScheduler()).concat_map(
            lambda w: w
        ),
        list,
        upstream_bound=3,
    ),
]


def lossy(
    name: str,
    operator: Callable[[Flow[int], Callable[[object], None]], Flow[object]],
    **options: object,
) -> DemandVerification[int, object]:
    """A case for an operator that may drop items and reports each through ``on_dropped``."""
    return DemandVerification(
        name=name,
        lossy_operator=lambda up, on_dropped: operator(Flow.from_publisher(up), on_dropped),
        model=list,
        upstream_bound=UNBOUNDED_BY_DESIGN,
        max_examples=60,
        **options,  # type: ignore[arg-type]
    )


_frozen_time = VirtualTimeScheduler()  # never advanced: only size and completion matter

DEMAND_CASES += [
    # Strategies for producers that cannot be slowed: upstream is asked for everything by
    # design, and every item that does not reach downstream is reported.
    lossy(
        "on_backpressure_buffer",
        lambda f, dropped: f.on_backpressure_buffer(
            3, OverflowStrategy.DROP_OLDEST, on_dropped=dropped
        ),
    ),
    lossy(
        "on_backpressure_buffer_newest",
        lambda f, dropped: f.on_backpressure_buffer(
            2, OverflowStrategy.DROP_NEWEST, on_dropped=dropped
        ),
    ),
    lossy("on_backpressure_drop", lambda f, dropped: f.on_backpressure_drop(dropped)),
    lossy("on_backpressure_latest", lambda f, dropped: f.on_backpressure_latest(dropped)),
    lossy(
        "sample_adaptive",
        lambda f, dropped: f.sample_adaptive(
            1.0, 0.2, 0.5, 4, random=random.Random(7), on_dropped=dropped
        ),
    ),
    lossless(
        "on_backpressure_buffer_unbounded",
        lambda f: f.on_backpressure_buffer_unbounded(),
        list,
        upstream_bound=UNBOUNDED_BY_DESIGN,
    ),
    # Size- and rate-driven operators, configured so that time never has to pass.
    lossless(
        "buffer_timeout",
        lambda f: f.buffer_timeout(3, 60.0, scheduler=_frozen_time),
        lambda xs: _chunks(xs, 3),
        upstream_bound=3,
    ),
    lossless(
        "throttle",
        lambda f: f.throttle(1000, 1.0, burst=1000, scheduler=_frozen_time),
        list,
        upstream_bound=1000,
    ),
    lossless("sample_every", lambda f: f.sample_every(1), list),
]


class _CountingMeter(BackpressureMeter):
    """Turns an operator's counted drops into ``on_dropped`` calls for the checker.

    The time-driven samplers count what they drop in ``BufferStats`` rather than
    passing each item to a callback; the checker only needs to know how many
    items were dropped, so each counted drop is reported as one placeholder.
    """

    def __init__(self, on_dropped: Callable[[object], None]) -> None:
        super().__init__("demand-check")
        self._on_dropped = on_dropped

    def attach(self, stats: BufferStats) -> None:
        on_dropped = self._on_dropped

        class Reporting(BufferStats):
            __slots__ = ()

            def count_drop(self, reason: str, n: int = 1) -> None:
                super().count_drop(reason, n)
                for _ in range(n):
                    on_dropped(f"<dropped: {reason}>")

        stats.__class__ = Reporting
        super().attach(stats)


def counted(
    name: str, operator: Callable[[Flow[int], BackpressureMeter], Flow[object]]
) -> DemandVerification[int, object]:
    """A lossy case whose operator counts its drops in a meter."""
    return lossy(name, lambda f, dropped: operator(f, _CountingMeter(dropped)))


DEMAND_CASES += [
    counted("sample", lambda f, m: f.sample(1.0, scheduler=_frozen_time, meter=m)),
    counted("throttle_first", lambda f, m: f.throttle_first(1.0, scheduler=_frozen_time, meter=m)),
    counted(
        "throttle_latest", lambda f, m: f.throttle_latest(1.0, scheduler=_frozen_time, meter=m)
    ),
    counted("debounce", lambda f, m: f.debounce(1.0, scheduler=_frozen_time, meter=m)),
    counted(
        "on_backpressure_reduce",
        lambda f, m: f.on_backpressure_reduce(lambda held, newer: newer, meter=m),
    ),
    counted("sample_every_3", lambda f, m: f.sample_every(3, meter=m)),
]

# Hot sources behind ref_count, so a downstream cancel disconnects (cancels upstream).
# WAIT prefetches buffer_size; DROP requests in batches of it and reports each drop.
DEMAND_CASES += [
    lossless("share", lambda f: f.share(), list, upstream_bound=256),
    lossless("publish", lambda f: f.publish(4).ref_count(), list, upstream_bound=4),
    DemandVerification(
        name="publish_drop",
        lossy_operator=lambda up, dropped: (
            Flow.from_publisher(up)
            .publish(4, SlowSubscriberPolicy.DROP, on_dropped=lambda ident, item: dropped(item))
            .ref_count()
        ),
        model=list,
        upstream_bound=4,
        max_examples=60,
    ),
    lossless("replay", lambda f: f.replay(4).ref_count(), list, upstream_bound=256),
]

# Flow members that are sources (verified as publishers, tests/test_self_verification.py),
# or time-driven operators verified in virtual time in their own tests.
NOT_OPERATORS = {
    "from_iterable",
    "range",
    "just",
    "empty",
    "error",
    "never",
    "defer",
    "generate",
    "from_publisher",
    "from_async_iterable",
    "from_queue",
    "from_observable",
    "create",
    "interval",
    "timer",
    "lift",
    "pipe",
}


def test_every_operator_has_a_demand_case() -> None:
    names = {case.name for case in DEMAND_CASES} | {"lift", "pipe"}
    operators = {
        name
        for name in dir(Flow)
        if not name.startswith("_") and callable(getattr(Flow, name, None))
    }
    missing = operators - names - NOT_OPERATORS - set(EXEMPT) - TIME_DRIVEN - set(NEVER_CANCELS)
    assert not missing, f"add DemandVerification cases for: {sorted(missing)}"


# delay needs time to pass (it is checked in virtual time in tests/operators/test_time.py);
# on_backpressure_error fails the stream on purpose when items outrun demand, which the
# checker's model cannot express (tests/operators/test_backpressure.py checks it).
TIME_DRIVEN = {"delay", "on_backpressure_error"}

# Hot sources that keep their upstream when downstream cancels, by design, which the
# checker (a downstream cancel must reach upstream) cannot express.
NEVER_CANCELS = {
    "cache": "replay().auto_connect(): never disconnects; tests/processors/test_connectable.py",
}


@pytest.mark.parametrize("case", DEMAND_CASES, ids=str)
def test_operator_demand(case: DemandVerification[int, object]) -> None:
    case.run()
