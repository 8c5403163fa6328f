"""Backpressure strategies at saturation, and a producer thread into a push source.

What users pay for a strategy operator, next to what they would write instead.
All contenders run in one process; after a warm-up round (which also checks
that every contender of a group delivers the same items), each ``--repeat``
round runs every contender once, the starting contender rotating from round to
round so that drift on a shared machine spreads over all of them. The table
gives the median µs per produced item (min-max) and the speed relative to each
alternative (above 1.0x: the reactive_bp row is faster).

Saturation, precisely: the producer is a plain ``for`` loop on the calling
thread that calls the operator's ``on_next`` for ``N`` ints back to back
(the operator asked upstream for ``UNBOUNDED``, so the producer never waits).
The subscriber never requests on its own: the driver grants it one item of
demand (``subscription.request(1)``) after every ``K = 2`` produced items, so
demand is the bottleneck: half of the items arrive while no demand is
outstanding and the strategy must buffer, drop or replace them. ``sample``
additionally needs its period to elapse: the driver advances a
``VirtualTimeScheduler`` by one period every 16 items and grants one item per
32, so every second sample is still waiting for demand when the next is taken.
The sink only sums and counts what it receives.

Groups and their alternatives:

* ``on_backpressure_buffer(1024, DROP_OLDEST)``, ``on_backpressure_latest()``,
  ``on_backpressure_drop()``, ``sample(period)``: against a hand-written
  minimal Reactive Streams operator with the same semantics (a lock, a demand
  counter, a ``deque`` or a slot, a serialized drain), and against the same
  logic inlined into the producer loop (no operator, no lock: the floor).
* Producer thread -> subscriber: a thread calls ``SourceQueue(1024,
  WAIT).offer_blocking`` (or ``Emitter.emit`` of ``Flow.create(capacity=1024,
  overflow=WAIT)``) ``N`` times; the subscriber, subscribed on the main thread
  with ``subscribe_with`` (unbounded demand), sums. Alternative: two threads
  around ``queue.Queue(maxsize=1024)``.

Run: ``.venv/bin/python benchmarks/backpressure_paths.py [--n N] [--repeat R] [--only GROUP]``
(part of ``make bench``). Speed is never asserted in the test suite.

Before/after in one process: ``git worktree add /tmp/old <commit>`` (or
``git archive <commit> reactive_bp | tar -x -C /tmp/old``) then ``--before
/tmp/old`` adds, under each reactive_bp row, the same pipeline on that
checkout's package (imported as ``reactive_bp_before``), interleaved with the
rest; a ``vs before`` column gives this row's speed relative to it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import queue
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from _machine import machine_summary
from typing_extensions import override

import reactive_bp
from reactive_bp import Flow, OverflowStrategy, SourceQueue
from reactive_bp.abc import Subscriber, Subscription

__all__ = ["GROUPS", "main"]

UNBOUNDED = 2**63 - 1
CAPACITY = 1024
K = 2  # produced items per item of granted demand
SAMPLE_TICK = 16  # items per sample period
SAMPLE_GRANT = 32  # items per granted item, for sample
PERIOD = 1.0

Result = tuple[int, int]  # (items delivered, their sum): equal across a group


# -- the producer side and the sink ------------------------------------------------------


def _driver_class(lib: Any) -> type[Any]:
    """``_Driver`` for the library module ``lib`` (its ``Flow`` is the base class)."""

    class _Driver(lib.Flow):  # type: ignore[misc]
        """A source whose items are pushed by the benchmark loop (it checks Rule 1.1).

        A ``Flow`` subclass, like every reactive_bp source, so the operator under
        test subscribes to it directly (``Flow.from_publisher`` would add its guard).
        """

        __slots__ = ("requested", "subscriber")

        def __init__(self) -> None:
            self.subscriber: Subscriber[int] | None = None
            self.requested = 0

        @override
        def _subscribe(self, subscriber: Subscriber[int]) -> None:
            self.subscriber = subscriber
            subscriber.on_subscribe(self)

        def request(self, n: int) -> None:
            self.requested = min(UNBOUNDED, self.requested + n)

        def cancel(self) -> None:
            pass

        def target(self) -> Subscriber[int]:
            if self.subscriber is None or self.requested != UNBOUNDED:
                raise SystemExit("the operator did not request UNBOUNDED upstream")
            return self.subscriber

    return _Driver


_Driver = _driver_class(reactive_bp)


class _Sink:
    """Sums what it receives; requests only when the driver says so."""

    def __init__(self) -> None:
        self.subscription: Subscription | None = None
        self.count = 0
        self.total = 0

    def on_subscribe(self, subscription: Subscription) -> None:
        self.subscription = subscription

    def on_next(self, item: int) -> None:
        self.count += 1
        self.total += item

    def on_error(self, error: Exception) -> None:
        raise SystemExit(f"unexpected error: {error!r}")

    def on_complete(self) -> None:
        pass

    def grant(self) -> Callable[[int], None]:
        assert self.subscription is not None
        return self.subscription.request


def _saturate(subscriber: Subscriber[int], sink: _Sink, n: int) -> Result:
    on_next = subscriber.on_next
    grant = sink.grant()
    for i in range(0, n, K):
        on_next(i)
        grant(1)
        on_next(i + 1)
    return sink.count, sink.total


def _rbp(
    build: Callable[[Flow[int], Any], Flow[int]], lib: Any = reactive_bp
) -> Callable[[int], Result]:
    driver_class = _Driver if lib is reactive_bp else _driver_class(lib)

    def run(n: int) -> Result:
        driver = driver_class()
        sink = _Sink()
        build(driver, lib).subscribe(sink)
        return _saturate(driver.target(), sink, n)

    return run


# -- minimal Reactive Streams operators (what a user would hand-write) -------------------


class _MinimalQueue:
    """Subscriber upstream, Subscription downstream: one lock, a demand count, a drain flag.

    ``hold(item)`` (under the lock) applies the strategy; the loop owner
    (``_draining``) delivers while there is demand and something held.
    """

    def __init__(self, actual: _Sink) -> None:
        self.actual = actual
        self.lock = threading.Lock()
        self.requested = 0
        self.draining = False
        self.dropped = 0
        self.upstream: Subscription | None = None

    def on_subscribe(self, subscription: Subscription) -> None:
        self.upstream = subscription
        self.actual.on_subscribe(self)
        subscription.request(UNBOUNDED)

    def on_error(self, error: Exception) -> None:
        self.actual.on_error(error)

    def on_complete(self) -> None:
        pass

    def cancel(self) -> None:
        pass

    def on_next(self, item: int) -> None:
        raise NotImplementedError

    def has_items(self) -> bool:
        raise NotImplementedError

    def take(self) -> int:
        raise NotImplementedError

    def request(self, n: int) -> None:
        with self.lock:
            self.requested += n
            if self.draining or not self.has_items():
                return
            self.draining = True
        self.drain()

    def drain(self) -> None:
        on_next = self.actual.on_next
        lock = self.lock
        while True:
            with lock:
                if not self.requested or not self.has_items():
                    self.draining = False
                    return
                self.requested -= 1
                item = self.take()
            on_next(item)


class _MinimalBuffer(_MinimalQueue):
    def __init__(self, actual: _Sink) -> None:
        super().__init__(actual)
        self.queue: deque[int] = deque()

    def has_items(self) -> bool:
        return bool(self.queue)

    def take(self) -> int:
        return self.queue.popleft()

    def on_next(self, item: int) -> None:
        with self.lock:
            q = self.queue
            if len(q) >= CAPACITY:
                q.popleft()
                self.dropped += 1
            q.append(item)
            if self.draining or not self.requested:
                return
            self.draining = True
        self.drain()


class _MinimalLatest(_MinimalQueue):
    def __init__(self, actual: _Sink) -> None:
        super().__init__(actual)
        self.slot: int | None = None

    def has_items(self) -> bool:
        return self.slot is not None

    def take(self) -> int:
        item, self.slot = self.slot, None
        assert item is not None
        return item

    def on_next(self, item: int) -> None:
        with self.lock:
            if self.slot is not None:
                self.dropped += 1
            self.slot = item
            if self.draining or not self.requested:
                return
            self.draining = True
        self.drain()


class _MinimalDrop(_MinimalQueue):
    """Holds nothing: an item with demand goes straight through (upstream is serial, Rule 1.3)."""

    def has_items(self) -> bool:
        return False

    def on_next(self, item: int) -> None:
        with self.lock:
            if not self.requested:
                self.dropped += 1
                return
            self.requested -= 1
        self.actual.on_next(item)


class _MinimalSample(_MinimalQueue):
    """Keeps the newest item; ``tick()`` makes it ready (replacing a stale ready one)."""

    def __init__(self, actual: _Sink) -> None:
        super().__init__(actual)
        self.latest: int | None = None
        self.ready: int | None = None

    def has_items(self) -> bool:
        return self.ready is not None

    def take(self) -> int:
        item, self.ready = self.ready, None
        assert item is not None
        return item

    def on_next(self, item: int) -> None:
        with self.lock:
            if self.latest is not None:
                self.dropped += 1
            self.latest = item

    def tick(self) -> None:
        with self.lock:
            if self.latest is None:
                return
            if self.ready is not None:
                self.dropped += 1
            self.ready, self.latest = self.latest, None
            if self.draining or not self.requested:
                return
            self.draining = True
        self.drain()


def _minimal(operator: Callable[[_Sink], _MinimalQueue]) -> Callable[[int], Result]:
    def run(n: int) -> Result:
        driver = _Driver()
        sink = _Sink()
        driver.subscribe(operator(sink))
        return _saturate(driver.target(), sink, n)

    return run


# -- sample: the period elapses every SAMPLE_TICK items -----------------------------------


def _sample_loop(
    on_next: Callable[[int], None], tick: Callable[[], None], sink: _Sink, n: int
) -> Result:
    grant = sink.grant()
    for start in range(0, n, SAMPLE_GRANT):
        for i in range(start, start + SAMPLE_TICK):
            on_next(i)
        tick()
        grant(1)
        for i in range(start + SAMPLE_TICK, start + SAMPLE_GRANT):
            on_next(i)
        tick()
    return sink.count, sink.total


def _rbp_sample(lib: Any = reactive_bp) -> Callable[[int], Result]:
    driver_class = _Driver if lib is reactive_bp else _driver_class(lib)
    scheduler_class = lib.schedulers.VirtualTimeScheduler

    def run(n: int) -> Result:
        scheduler = scheduler_class()
        driver = driver_class()
        sink = _Sink()
        driver.sample(PERIOD, scheduler=scheduler).subscribe(sink)

        def tick() -> None:
            scheduler.advance_by(PERIOD)

        return _sample_loop(driver.target().on_next, tick, sink, n)

    return run


def _minimal_sample(n: int) -> Result:
    driver = _Driver()
    sink = _Sink()
    operator = _MinimalSample(sink)
    driver.subscribe(operator)
    return _sample_loop(driver.target().on_next, operator.tick, sink, n)


# -- the same logic inlined into the producer loop (the floor) -----------------------------


def _inline_buffer(n: int) -> Result:
    q: deque[int] = deque()
    demand = count = total = dropped = 0
    for i in range(0, n, K):
        # on_next(i)
        if demand and not q:
            demand -= 1
            count += 1
            total += i
        else:
            if len(q) >= CAPACITY:
                q.popleft()
                dropped += 1
            q.append(i)
        # request(1)
        demand += 1
        while demand and q:
            demand -= 1
            count += 1
            total += q.popleft()
        # on_next(i + 1)
        if demand and not q:
            demand -= 1
            count += 1
            total += i + 1
        else:
            if len(q) >= CAPACITY:
                q.popleft()
                dropped += 1
            q.append(i + 1)
    return count, total


def _inline_latest(n: int) -> Result:
    slot: int | None = None
    demand = count = total = dropped = 0
    for i in range(0, n, K):
        for item in (i, i + 1):
            if demand and slot is None:
                demand -= 1
                count += 1
                total += item
            else:
                if slot is not None:
                    dropped += 1
                slot = item
            if item == i:  # request(1)
                demand += 1
                if slot is not None:
                    demand -= 1
                    count += 1
                    total += slot
                    slot = None
    return count, total


def _inline_drop(n: int) -> Result:
    demand = count = total = dropped = 0
    for i in range(0, n, K):
        for item in (i, i + 1):
            if demand:
                demand -= 1
                count += 1
                total += item
            else:
                dropped += 1
            if item == i:  # request(1)
                demand += 1
    return count, total


def _inline_sample(n: int) -> Result:
    latest: int | None = None
    ready: int | None = None
    demand = count = total = dropped = 0
    for start in range(0, n, SAMPLE_GRANT):
        for half in (0, 1):
            first = start + half * SAMPLE_TICK
            for i in range(first, first + SAMPLE_TICK):
                if latest is not None:
                    dropped += 1
                latest = i
            if latest is not None:  # the tick
                if ready is not None:
                    dropped += 1
                ready, latest = latest, None
            if half == 0:
                demand += 1
            if demand and ready is not None:
                demand -= 1
                count += 1
                total += ready
                ready = None
    return count, total


# -- producer thread -> subscriber --------------------------------------------------------


def _source_queue(n: int) -> Result:
    source: SourceQueue[int] = SourceQueue(CAPACITY, OverflowStrategy.WAIT)
    sink = _CallbackSink()
    source.flow.subscribe_with(sink.add, on_complete=sink.done.set)

    def produce() -> None:
        offer = source.offer_blocking
        for i in range(n):
            offer(i)
        source.complete()

    producer = threading.Thread(target=produce)
    producer.start()
    sink.done.wait()
    producer.join()
    return sink.count, sink.total


def _create(n: int) -> Result:
    sink = _CallbackSink()

    def producer(emitter: object) -> None:
        def produce() -> None:
            emit = emitter.emit  # type: ignore[attr-defined]
            for i in range(n):
                emit(i)
            emitter.complete()  # type: ignore[attr-defined]

        threading.Thread(target=produce).start()

    Flow.create(producer, capacity=CAPACITY, overflow=OverflowStrategy.WAIT).subscribe_with(
        sink.add, on_complete=sink.done.set
    )
    sink.done.wait()
    return sink.count, sink.total


def _thread_queue(n: int) -> Result:
    channel: queue.Queue[int | None] = queue.Queue(maxsize=CAPACITY)

    def produce() -> None:
        put = channel.put
        for i in range(n):
            put(i)
        put(None)

    producer = threading.Thread(target=produce)
    producer.start()
    count = total = 0
    get = channel.get
    while (item := get()) is not None:
        count += 1
        total += item
    producer.join()
    return count, total


class _CallbackSink:
    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.done = threading.Event()

    def add(self, item: int) -> None:
        self.count += 1
        self.total += item


# -- groups ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One row: ``run(n)`` does the whole job and returns (delivered, sum)."""

    key: str
    label: str
    run: Callable[[int], Result]
    is_subject: bool = False
    with_library: Callable[[Any], Callable[[int], Result]] | None = None
    """The same pipeline built with another copy of the library (``--before``)."""


@dataclass(frozen=True)
class Group:
    """Contenders doing the same job; the first is the reactive_bp path measured."""

    key: str
    title: str
    contenders: tuple[Contender, ...]


def _build_buffer(flow: Flow[int], lib: Any) -> Flow[int]:
    # The library's own OverflowStrategy (--before loads a second copy).
    return flow.on_backpressure_buffer(CAPACITY, lib.OverflowStrategy.DROP_OLDEST)


def _build_latest(flow: Flow[int], lib: Any) -> Flow[int]:
    return flow.on_backpressure_latest()


def _build_drop(flow: Flow[int], lib: Any) -> Flow[int]:
    return flow.on_backpressure_drop()


GROUPS: tuple[Group, ...] = (
    Group(
        "buffer",
        "on_backpressure_buffer(1024, DROP_OLDEST), saturated",
        (
            Contender(
                "rbp",
                "reactive_bp on_backpressure_buffer(1024, DROP_OLDEST)",
                _rbp(_build_buffer),
                True,
                partial(_rbp, _build_buffer),
            ),
            Contender("minimal", "minimal RS operator (lock + deque)", _minimal(_MinimalBuffer)),
            Contender("inline", "inline deque in the producer loop", _inline_buffer),
        ),
    ),
    Group(
        "latest",
        "on_backpressure_latest(), saturated",
        (
            Contender(
                "rbp",
                "reactive_bp on_backpressure_latest()",
                _rbp(_build_latest),
                True,
                partial(_rbp, _build_latest),
            ),
            Contender("minimal", "minimal RS operator (lock + slot)", _minimal(_MinimalLatest)),
            Contender("inline", "inline slot in the producer loop", _inline_latest),
        ),
    ),
    Group(
        "drop",
        "on_backpressure_drop(), saturated",
        (
            Contender(
                "rbp",
                "reactive_bp on_backpressure_drop()",
                _rbp(_build_drop),
                True,
                partial(_rbp, _build_drop),
            ),
            Contender("minimal", "minimal RS operator (lock + counter)", _minimal(_MinimalDrop)),
            Contender("inline", "inline demand counter in the producer loop", _inline_drop),
        ),
    ),
    Group(
        "sample",
        f"sample(period), one period per {SAMPLE_TICK} items, one request per {SAMPLE_GRANT}",
        (
            Contender(
                "rbp",
                "reactive_bp sample(period, VirtualTimeScheduler)",
                _rbp_sample(),
                True,
                _rbp_sample,
            ),
            Contender("minimal", "minimal RS operator (lock + two slots)", _minimal_sample),
            Contender("inline", "inline slots in the producer loop", _inline_sample),
        ),
    ),
    Group(
        "thread",
        "producer thread -> subscriber, capacity 1024, WAIT",
        (
            Contender(
                "rbp",
                "reactive_bp SourceQueue.offer_blocking -> subscribe_with",
                _source_queue,
                True,
            ),
            Contender(
                "create", "reactive_bp Flow.create(WAIT) emit -> subscribe_with", _create, True
            ),
            Contender("queue", "two threads + queue.Queue(maxsize=1024)", _thread_queue),
        ),
    ),
)


def _load_before(path: Path) -> Any:
    """Import the ``reactive_bp`` package under ``path`` as ``reactive_bp_before``.

    The package imports itself relatively, so a second copy loads side by side
    with the current one and both run in this process, interleaved.
    """
    init = path / "reactive_bp" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "reactive_bp_before", init, submodule_search_locations=[str(init.parent)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reactive_bp_before"] = module
    spec.loader.exec_module(module)
    return module


def _with_before(group: Group, before: Any, path: Path) -> Group:
    """``group`` with a ``before`` row (the subject on the ``before`` library) after the subject."""
    rows: list[Contender] = []
    for contender in group.contenders:
        rows.append(contender)
        if contender.with_library is not None:
            rows.append(
                Contender(
                    "before", f"{contender.label}, before ({path})", contender.with_library(before)
                )
            )
    return Group(group.key, group.title, tuple(rows))


# -- measurement and output ---------------------------------------------------------------


@dataclass
class Measurement:
    """The timed runs of one contender, in seconds."""

    contender: Contender
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median run time."""
        return statistics.median(self.times)


def _time_once(contender: Contender, n: int) -> tuple[float, Result]:
    gc.collect()
    start = time.perf_counter()
    result = contender.run(n)
    return time.perf_counter() - start, result


def measure(group: Group, n: int, repeat: int) -> list[Measurement]:
    """Warm up (checking that the group agrees on what is delivered), then interleaved rounds."""
    results = {}
    for contender in group.contenders:
        _, results[contender.key] = _time_once(contender, n)
    if len(set(results.values())) != 1:
        raise SystemExit(f"{group.key}: contenders disagree on (delivered, sum): {results}")
    measurements = [Measurement(c) for c in group.contenders]
    for round_index in range(repeat):
        shift = round_index % len(measurements)
        for m in measurements[shift:] + measurements[:shift]:
            elapsed, _ = _time_once(m.contender, n)
            m.times.append(elapsed)
    return measurements


def markdown_table(group: Group, measurements: Sequence[Measurement], n: int) -> str:
    """The group as a markdown table: µs per produced item and ratios to the alternatives."""
    alternatives = [m for m in measurements if not m.contender.is_subject]
    header = "| path | µs/item (min-max) | " + " | ".join(
        f"vs {m.contender.key}" for m in alternatives
    )
    lines = [
        f"**{group.title}** ({n:,} items)",
        "",
        header + " |",
        "|---|---:|" + "---:|" * len(alternatives),
    ]
    for m in measurements:
        ratios = " | ".join(f"{a.median / m.median:.2f}x" for a in alternatives)
        lines.append(
            f"| {m.contender.label} | {m.median / n * 1e6:.3f} "
            f"({min(m.times) / n * 1e6:.3f}-{max(m.times) / n * 1e6:.3f}) | {ratios} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the groups and print one table each; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_000_000, help="items per run (default 1M)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="GROUP",
        help="groups: " + ", ".join(g.key for g in GROUPS),
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="CHECKOUT",
        help="also run the reactive_bp rows with the package in CHECKOUT (e.g. a git worktree "
        "of an earlier commit), interleaved in this process",
    )
    args = parser.parse_args(argv)
    if args.n < SAMPLE_GRANT or args.n % SAMPLE_GRANT or args.repeat < 1:
        parser.error(f"--n must be a positive multiple of {SAMPLE_GRANT}; --repeat positive")
    groups = [g for g in GROUPS if not args.only or g.key in args.only]
    if args.before is not None:
        before = _load_before(args.before)
        groups = [_with_before(group, before, args.before) for group in groups]
    print("# Backpressure strategies at saturation; producer thread -> subscriber")
    print(machine_summary())
    print(f"reactive_bp imported from {reactive_bp.__file__}")
    print(f"One warm-up round, then the median of {args.repeat} interleaved rounds.")
    print("Ratios: the alternative's time over this row's (above 1.0x: this row is faster).\n")
    for group in groups:
        measurements = measure(group, args.n, args.repeat)
        print(markdown_table(group, measurements, args.n))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
