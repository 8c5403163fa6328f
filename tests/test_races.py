"""Concurrent terminal races for every operator of the matrix and every registered source.

The machinery and the invariants are in ``tests/races.py``. Here:

* every ``CASES`` entry of the scenario matrix, plus ``EXTRA_OPERATORS``
  (the operators whose matrix case runs on an immediate or virtual scheduler,
  here on real threads and real time), races an upstream error and,
  separately, an upstream completion against request/cancel;
* every ``PUBLISHERS`` entry of the compliance registry races
  request/cancel against its own drain loop up to its completion;
* ``FAILING_SOURCES`` (sources that can fail or be ended from outside) race
  an error or completion injected from another thread.

``RACE_RUNS`` sets the runs per case (default 200, within a time budget per
case, ``RACE_SECONDS``); a case fails with the share of runs that broke an
invariant and the signal trace of the first ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import pytest
from reactivex.subject import Subject

from reactive_bp import (
    Emitter,
    Flow,
    FlowTimeoutError,
    OfferResult,
    OverflowStrategy,
    SourceQueue,
    SynchronousSink,
)
from reactive_bp.abc import Publisher
from reactive_bp.processors import SlowSubscriberPolicy
from reactive_bp.schedulers import ThreadPoolScheduler
from tests.operators.test_matrix import CASES
from tests.races import (
    COMPLETE,
    ContentCheck,
    Crew,
    Ending,
    Mode,
    Outcome,
    OwnEnd,
    Preemption,
    Producer,
    PushProducer,
    RaceSubscriber,
    RaceUpstream,
    RunPlan,
    ScriptedSource,
    Trace,
    expect_count,
    expect_model,
    judge,
    new_error,
    run_once,
    runs,
)
from tests.registry import PUBLISHERS, PublisherEntry
from tests.scenarios import OperatorCase

pytestmark = pytest.mark.race

MODES: tuple[Mode, ...] = ("error", "complete")


@pytest.fixture(autouse=True)
def _fast_switching() -> Iterator[None]:
    """Switch threads every microsecond so a narrow window between two lines is hit."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.fixture
def crew() -> Iterator[Crew]:
    workers = Crew(3)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def pool() -> Iterator[ThreadPoolScheduler]:
    scheduler = ThreadPoolScheduler(2, thread_name_prefix="race-pool")
    try:
        yield scheduler
    finally:
        scheduler.shutdown()


def _rng(name: str, mode: str) -> random.Random:
    """The plans of a case come from one generator seeded by its name: same plans every time."""
    return random.Random(zlib.crc32(f"{name}/{mode}".encode()))


def _settle_and_judge(
    name: str,
    outcomes: list[Outcome],
    reported: list[tuple[BaseException, str]],
    own_end: OwnEnd | None,
    content: ContentCheck | None,
    pool: ThreadPoolScheduler | None = None,
) -> None:
    # Late signals (from a pool or the timer thread) are part of what is judged.
    if pool is not None:
        pool.shutdown()
    time.sleep(0.005)
    report = judge(name, outcomes, list(reported), own_end, content)
    if report is not None:
        pytest.fail(report, pytrace=False)


def _hung(outcomes: list[Outcome]) -> bool:
    """Stop a case early once two runs ended without a terminal signal (each waited 2 s)."""
    hung = [o for o in outcomes if not o.subscriber.terminals and o.subscriber.cancel_seq is None]
    return len(hung) >= 2


# -- operators ----------------------------------------------------------------------------

ApplyRace = Callable[[Flow[int], ThreadPoolScheduler], Flow[object]]


@dataclass(frozen=True)
class OperatorRace:
    """One operator in the race: how to apply it, what it may deliver, how it may end."""

    name: str
    apply: ApplyRace
    content: ContentCheck | None
    own_end: OwnEnd | None = None
    data: Sequence[int] = tuple(range(20))

    def __repr__(self) -> str:
        return self.name


def _completes_after(items: int) -> OwnEnd:
    """The operator completes by itself once it delivered ``items`` items."""
    return lambda e: e.terminal is COMPLETE and len(e.items) == items


def _completes_once_sent(predicate: Callable[[list[int]], bool]) -> OwnEnd:
    """The operator completes by itself once upstream sent items matching ``predicate``."""
    return lambda e: e.terminal is COMPLETE and predicate(e.sent)


def _timed_out(e: Ending) -> bool:
    return isinstance(e.terminal, FlowTimeoutError)


def _fell_back(e: Ending) -> bool:
    # Completed by the fallback, or timed out (the source cancelled by the operator)
    # and then cancelled downstream before the fallback delivered: a source's error
    # that lost the race against the timeout is then a late signal, reported.
    if e.terminal is None:
        return e.upstream_cancelled_first
    return e.terminal is COMPLETE and e.items[-1:] == [-1]


# Operators of the matrix that end the stream by themselves: the only cases where
# an upstream error (or completion) may lose to the operator's own completion.
OWN_END: dict[str, OwnEnd] = {
    "take": _completes_after(7),
    "take_while": _completes_once_sent(lambda sent: any(x >= 12 for x in sent)),
    "take_filter": _completes_once_sent(lambda sent: len(sent) >= 15),
    "filter_take": _completes_after(4),
    "take_while_distinct": _completes_once_sent(lambda sent: any(x // 3 >= 5 for x in sent)),
}

# Matrix cases whose model describes a whole run on a virtual clock that never
# moves here, so it says nothing about a prefix of the input: their items are
# not compared (their terminal signals are).
NO_MODEL: dict[str, str] = {
    "throttle_latest": "its model is the first and last item of a whole input",
}


def _from_matrix(case: OperatorCase) -> OperatorRace:
    def apply(flow: Flow[int], _: ThreadPoolScheduler) -> Flow[object]:
        return case.apply(flow)

    content = None if case.name in NO_MODEL else expect_model(case.model, case.ordered)
    return OperatorRace(case.name, apply, content, OWN_END.get(case.name), tuple(case.data))


def _times5(x: int) -> int:
    return x * 5


def _chunks(items: list[int], size: int) -> list[object]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _flattened(check: ContentCheck) -> ContentCheck:
    """``check`` applied to the delivered lists joined (``on_backpressure_reduce`` folds)."""

    def flat(ending: Ending) -> str | None:
        joined: list[object] = []
        for batch in ending.items:
            assert isinstance(batch, list)
            joined.extend(batch)
        return check(dataclasses.replace(ending, items=joined))

    return flat


# The cross-thread paths the matrix runs on an immediate or virtual scheduler,
# here on a real pool and real time (tiny periods, so timers fire within a run).
EXTRA_OPERATORS: list[OperatorRace] = [
    OperatorRace(
        "publish_on_pool",
        lambda f, pool: f.publish_on(pool, prefetch=4),
        expect_model(list),
    ),
    OperatorRace(
        "publish_on_pool_prefetch_1",
        lambda f, pool: f.publish_on(pool, prefetch=1),
        expect_model(list),
    ),
    OperatorRace("subscribe_on_pool", lambda f, pool: f.subscribe_on(pool), expect_model(list)),
    OperatorRace(
        "map_async_pool",
        lambda f, pool: f.map_async(_times5, 3, scheduler=pool),
        expect_model(lambda xs: [x * 5 for x in xs]),
    ),
    OperatorRace(
        "map_async_pool_unordered",
        lambda f, pool: f.map_async(_times5, 3, ordered=False, scheduler=pool),
        expect_model(lambda xs: [x * 5 for x in xs], ordered=False),
    ),
    OperatorRace(
        "map_async_private_pool",
        lambda f, _: f.map_async(_times5, 2),
        expect_model(lambda xs: [x * 5 for x in xs]),
    ),
    OperatorRace("delay_real", lambda f, _: f.delay(0.0002), expect_model(list)),
    OperatorRace("timeout_real_not_reached", lambda f, _: f.timeout(30.0), expect_model(list)),
    OperatorRace(
        "timeout_real_short",
        lambda f, _: f.timeout(0.0005),
        None,  # a timeout cuts the items short at any point
        own_end=_timed_out,
    ),
    OperatorRace(
        "timeout_real_short_fallback",
        lambda f, _: f.timeout(0.0005, Flow.just(-1)),
        None,
        own_end=_fell_back,
    ),
    OperatorRace(
        "sample_real",
        lambda f, _: f.sample(0.0002).on_backpressure_buffer_unbounded(),
        None,  # lossy by design
    ),
    OperatorRace(
        "throttle_first_real",
        lambda f, _: f.throttle_first(0.0002).on_backpressure_buffer_unbounded(),
        None,
    ),
    OperatorRace(
        "throttle_latest_real",
        lambda f, _: f.throttle_latest(0.0002).on_backpressure_buffer_unbounded(),
        None,
    ),
    OperatorRace(
        "debounce_real",
        lambda f, _: f.debounce(0.0002).on_backpressure_buffer_unbounded(),
        None,
    ),
    OperatorRace(
        "buffer_timeout_real",
        lambda f, _: f.buffer_timeout(4, 0.0003),
        None,  # batch boundaries depend on the clock
    ),
    OperatorRace(
        "throttle_shape_real",
        lambda f, _: f.throttle(20_000, per=1.0, burst=4),
        expect_model(list),
    ),
    OperatorRace(
        "on_backpressure_buffer_ttl_real",
        lambda f, _: f.on_backpressure_buffer(32, ttl=0.0005),
        None,  # expired items are dropped by design
    ),
    OperatorRace(
        "on_backpressure_buffer_drop_oldest",
        lambda f, _: f.on_backpressure_buffer(4, overflow=OverflowStrategy.DROP_OLDEST),
        None,  # drops by design
    ),
    OperatorRace(
        "on_backpressure_reduce_alone",
        lambda f, _: f.map(lambda x: [x]).on_backpressure_reduce(lambda a, b: a + b),
        _flattened(expect_model(list)),
    ),
    OperatorRace("from_publisher", lambda f, _: Flow.from_publisher(f), expect_model(list)),
    OperatorRace(
        "buffer_3_publish_on",
        lambda f, pool: f.buffer(3).publish_on(pool, prefetch=2),
        expect_model(lambda xs: _chunks(xs, 3)),
    ),
    # -- hot streams and fan-out (issue 11): a processor or splitter in the middle
    OperatorRace("share", lambda f, _: f.share(), expect_model(list)),
    OperatorRace(
        "publish_drop_ref_count",
        lambda f, _: f.publish(8, SlowSubscriberPolicy.DROP).ref_count(),
        None,  # drops by design
    ),
    OperatorRace("replay_4_ref_count", lambda f, _: f.replay(4).ref_count(), expect_model(list)),
    OperatorRace(
        "balance_2_merged",
        lambda f, _: Flow.merge(*f.balance(2, buffer_size=4)),
        expect_model(list, ordered=False),
    ),
    OperatorRace(
        "group_by_flat",
        lambda f, _: f.group_by(lambda x: x % 3, group_buffer=2).flat_map(
            lambda g: g, max_concurrency=3
        ),
        expect_model(list, ordered=False),
    ),
    OperatorRace(
        "window_concat", lambda f, _: f.window(3).concat_map(lambda w: w), expect_model(list)
    ),
    OperatorRace(
        "window_timeout_concat",
        lambda f, _: f.window_timeout(3, 0.0003).concat_map(lambda w: w),
        expect_model(list),
    ),
]

OPERATOR_RACES: list[OperatorRace] = [_from_matrix(case) for case in CASES] + EXTRA_OPERATORS


def test_every_matrix_case_races() -> None:
    names = [race.name for race in OPERATOR_RACES]
    assert len(names) == len(set(names)), "race case names must be unique"
    assert {case.name for case in CASES} <= set(names)
    assert set(OWN_END) <= {case.name for case in CASES}, "OWN_END names a case that is gone"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("race", OPERATOR_RACES, ids=repr)
def test_operator_terminal_race(
    race: OperatorRace,
    mode: Mode,
    crew: Crew,
    pool: ThreadPoolScheduler,
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """Upstream ends on one thread while items drain and request/cancel arrive on others."""
    outcomes: list[Outcome] = []
    rng = _rng(race.name, mode)
    for run in runs():
        plan = RunPlan.draw(rng, len(race.data))
        trace = Trace()
        preemption = Preemption(plan.pause, trace)
        error = new_error(run) if mode == "error" else None
        upstream = RaceUpstream(race.data, error, plan, trace, preemption)
        subscriber = RaceSubscriber(trace, plan.initial, plan.request_in_on_next, preemption)
        flow = race.apply(upstream, pool)
        mark = len(undeliverable)
        subscribe = partial(flow.subscribe, subscriber)
        failures = run_once(crew, plan, subscriber, upstream, preemption, subscribe)
        outcomes.append(Outcome(run, plan, mode, error, subscriber, upstream, failures, mark))
        if _hung(outcomes):
            break
    name = f"{race.name}/{mode}"
    _settle_and_judge(name, outcomes, undeliverable, race.own_end, race.content, pool)


# -- registered sources -------------------------------------------------------------------


class LoopThread:
    """An asyncio event loop on its own thread, for the asyncio-kind sources."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="race-loop")
        self._thread.start()

    def call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop (inside a task) and wait for it."""

        async def job() -> None:
            action()

        asyncio.run_coroutine_threadsafe(job(), self.loop).result(5)

    def close(self) -> None:
        async def finish() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.close()


def _elements(entry: PublisherEntry) -> int:
    # Entries on real time (interval, timer, delay) cost a period per item.
    return min(entry.max_elements, 4 if entry.kind == "thread" else 12)


@pytest.mark.parametrize("entry", PUBLISHERS, ids=repr)
def test_registered_source_request_cancel_race(
    entry: PublisherEntry,
    crew: Crew,
    request: pytest.FixtureRequest,
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """request(n) and cancel() from several threads against the source's own drain loop."""
    loop = request.getfixturevalue("loop_thread") if entry.kind == "asyncio" else None
    elements = _elements(entry)
    outcomes: list[Outcome] = []
    rng = _rng(entry.name, "complete")
    for run in runs():
        plan = RunPlan.draw(rng, elements, racing=False)
        trace = Trace()
        preemption = Preemption(plan.pause, trace)
        subscriber = RaceSubscriber(trace, plan.initial, plan.request_in_on_next, preemption)

        def subscribe(subscriber: RaceSubscriber = subscriber) -> None:
            entry.create(elements).subscribe(subscriber)

        start = subscribe if loop is None else (lambda s=subscribe: loop.call(s))
        mark = len(undeliverable)
        failures = run_once(crew, plan, subscriber, None, preemption, start)
        outcomes.append(Outcome(run, plan, "complete", None, subscriber, None, failures, mark))
        if _hung(outcomes):
            break
    _settle_and_judge(entry.name, outcomes, undeliverable, None, expect_count(elements))


# -- sources that fail or are ended from outside ------------------------------------------

Setup = Callable[
    [RunPlan, Trace, Preemption, Exception | None, Sequence[int]],
    tuple[Publisher[object], Producer | None],
]


@dataclass(frozen=True)
class SourceRace:
    """A source whose error (or completion) comes from another thread, or from its own loop."""

    name: str
    setup: Setup
    modes: tuple[Mode, ...] = MODES
    on_loop: bool = False
    racing: bool = True  # ended from another thread (else it fails inside its own loop)
    data: Sequence[int] = tuple(range(20))

    def __repr__(self) -> str:
        return self.name


def _create(
    plan: RunPlan,
    trace: Trace,
    preemption: Preemption,
    error: Exception | None,
    data: Sequence[int],
) -> tuple[Publisher[object], Producer | None]:
    producer = PushProducer(data, plan, trace, preemption)

    def start(emitter: Emitter[int]) -> None:
        producer.attach(
            push=lambda item: emitter.emit(item) is OfferResult.ENQUEUED,
            end=(lambda: emitter.complete()) if error is None else (lambda: emitter.error(error)),
        )
        emitter.on_cancel(producer.upstream_cancelled)

    flow: Flow[int] = Flow.create(start, capacity=64, overflow=OverflowStrategy.ERROR)
    return flow, producer


def _source_queue(
    plan: RunPlan,
    trace: Trace,
    preemption: Preemption,
    error: Exception | None,
    data: Sequence[int],
) -> tuple[Publisher[object], Producer | None]:
    queue: SourceQueue[int] = SourceQueue(64, OverflowStrategy.ERROR)
    producer = PushProducer(data, plan, trace, preemption)
    producer.attach(
        push=lambda item: queue.offer(item) is OfferResult.ENQUEUED,
        end=queue.complete if error is None else (lambda: queue.error(error)),
    )
    return queue.flow, producer


def _observable(
    plan: RunPlan,
    trace: Trace,
    preemption: Preemption,
    error: Exception | None,
    data: Sequence[int],
) -> tuple[Publisher[object], Producer | None]:
    subject: Subject[int] = Subject()
    lock = threading.Lock()  # the Observable contract: calls into the subject are serial
    ended = [False]  # guarded by lock: a stopped subject ignores what follows

    def push(item: int) -> bool:
        with lock:
            if ended[0]:
                return False
            subject.on_next(item)
        return True

    def end() -> None:
        with lock:
            ended[0] = True
            if error is None:
                subject.on_completed()
            else:
                subject.on_error(error)

    producer = PushProducer(data, plan, trace, preemption)
    producer.attach(push=push, end=end)
    return Flow.from_observable(subject, capacity=64), producer


def _iterable_raising(
    plan: RunPlan,
    trace: Trace,
    preemption: Preemption,
    error: Exception | None,
    data: Sequence[int],
) -> tuple[Publisher[object], Producer | None]:
    assert error is not None

    def items() -> Iterator[int]:
        yield from data[: plan.end_at]
        raise error

    return Flow.from_iterable(items()), ScriptedSource(data[: plan.end_at])


def _generate_failing(
    plan: RunPlan,
    trace: Trace,
    preemption: Preemption,
    error: Exception | None,
    data: Sequence[int],
) -> tuple[Publisher[object], Producer | None]:
    assert error is not None

    def step(state: int, sink: SynchronousSink[int]) -> int:
        if state >= plan.end_at:
            sink.error(error)
        else:
            sink.next(data[state])
        return state + 1

    flow: Flow[int] = Flow.generate(lambda: 0, step)
    return flow, ScriptedSource(data[: plan.end_at])


def _async_iterable_raising(
    plan: RunPlan,
    trace: Trace,
    preemption: Preemption,
    error: Exception | None,
    data: Sequence[int],
) -> tuple[Publisher[object], Producer | None]:
    assert error is not None

    async def items() -> AsyncIterator[int]:
        for item in data[: plan.end_at]:
            yield item
        raise error

    return Flow.from_async_iterable(items()), ScriptedSource(data[: plan.end_at])


FAILING_SOURCES: list[SourceRace] = [
    SourceRace("create", _create),
    SourceRace("source_queue", _source_queue),
    SourceRace("from_observable_subject", _observable),
    SourceRace("from_iterable_raising", _iterable_raising, ("error",), racing=False),
    SourceRace("generate_sink_error", _generate_failing, ("error",), racing=False),
    SourceRace(
        "from_async_iterable_raising",
        _async_iterable_raising,
        ("error",),
        on_loop=True,
        racing=False,
    ),
]


@pytest.mark.parametrize(
    ("race", "mode"),
    [pytest.param(r, m, id=f"{r.name}-{m}") for r in FAILING_SOURCES for m in r.modes],
)
def test_source_terminal_race(
    race: SourceRace,
    mode: Mode,
    crew: Crew,
    request: pytest.FixtureRequest,
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """A source ended from another thread (or failing in its own loop) while request/cancel race."""
    loop = request.getfixturevalue("loop_thread") if race.on_loop else None
    outcomes: list[Outcome] = []
    rng = _rng(race.name, mode)
    for run in runs():
        plan = RunPlan.draw(rng, len(race.data), racing=race.racing)
        trace = Trace()
        preemption = Preemption(plan.pause, trace)
        error = new_error(run) if mode == "error" else None
        publisher, producer = race.setup(plan, trace, preemption, error, race.data)
        subscriber = RaceSubscriber(trace, plan.initial, plan.request_in_on_next, preemption)

        def subscribe(
            publisher: Publisher[object] = publisher, subscriber: RaceSubscriber = subscriber
        ) -> None:
            publisher.subscribe(subscriber)

        start = subscribe if loop is None else (lambda s=subscribe: loop.call(s))
        mark = len(undeliverable)
        failures = run_once(crew, plan, subscriber, producer, preemption, start)
        outcomes.append(Outcome(run, plan, mode, error, subscriber, producer, failures, mark))
        if _hung(outcomes):
            break
    # A source's error follows what it buffered: all that was sent arrives first.
    content = expect_model(list, whole_before_error=True)
    _settle_and_judge(f"{race.name}/{mode}", outcomes, undeliverable, None, content)
