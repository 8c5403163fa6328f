"""Combining operators: flat_map, concat_map, merge and zip next to what a user would write.

Each job runs ``N`` items through one combining operator into a sink that sums
them (every run checks the sum):

* ``flat_map(just)``: ``range(N)`` mapped to ``Flow.just(x)`` per item (default N = 100,000).
* ``concat_map(just)``: the same through ``concat_map``.
* ``merge of 4``: four ranges of ``N / 4`` ints merged (default N = 200,000).
* ``zip of 2``: two ranges of ``N`` ints paired, the sink sums ``a + b`` (default N = 200,000).

Next to each reactive_bp row: reactivex's operator (no backpressure), a
minimal hand-written operator with the same demand semantics (single-threaded,
no locks: what a user would write for one pipeline), and a plain generator.

Method (as ``run.py``): one process, one warm-up round, then ``--repeat``
interleaved rounds (default 5) with a rotating start; the table shows the
median, the min-max spread, µs per item and ratios against the reactive_bp
row of the same job. The sink asks with ``RequestPolicy.batch(256)``.

Run: ``.venv/bin/python benchmarks/combining.py [--repeat R] [--scale S] [--only KEY]``.
Before/after in one process: ``git worktree add /tmp/old HEAD`` then
``--before /tmp/old`` adds, under each reactive_bp row, the same pipeline on
that checkout's package (imported as ``reactive_bp_before``), interleaved with
the rest. The header prints which ``reactive_bp`` was imported. Ratios compare µs per item; a
row marked with its own item count ran on fewer items because it is too slow.

Issue 10's "today" for these rows is commit 7b5b099, the one before the
combining work (5a72d58); 1ec579b, the baseline of the strategy rows, already
contains it. On a loaded machine compare several runs: wall times swing 2x.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _machine import machine_summary

import reactive_bp
from reactive_bp import Flow

try:
    import reactivex
    from reactivex import operators as rx_ops
except ImportError:  # reactivex is an optional extra ("reactive-bp[rx]")
    reactivex = None  # type: ignore[assignment]
    rx_ops = None  # type: ignore[assignment]

__all__ = ["JOBS", "Contender", "Job", "main"]

UNBOUNDED = 2**63 - 1

# reactivex subscribes each inner through its trampoline scheduler at ~100+ µs an
# item: its flat_map/concat_map rows run on fewer items (µs/item stays comparable).
_RX_INNER_MAX_N = 10_000
# reactivex zip runs at ~100+ µs a pair on a loaded 2-vCPU VM: fewer items too.
_RX_ZIP_MAX_N = 20_000


# -- a minimal hand-written operator kit (single-threaded, what a user would write) ---------


class _Relay:
    """Base of the hand-written operators: a subscription with demand and a wip counter."""

    def __init__(self, actual: Any) -> None:
        self.actual = actual
        self.requested = 0
        self.wip = 0
        self.cancelled = False

    def request(self, n: int) -> None:
        self.requested = min(UNBOUNDED, self.requested + n)
        self.drain()

    def cancel(self) -> None:
        self.cancelled = True

    def drain(self) -> None:
        raise NotImplementedError


class _MiniFlatMapScalar(_Relay):
    """flat_map for inners that are one known value: emit directly or queue; refill 75%."""

    def __init__(self, actual: Any, mapper: Callable[[int], int], max_concurrency: int) -> None:
        super().__init__(actual)
        self.mapper = mapper
        self.queue: deque[int] = deque()
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency - (max_concurrency >> 2)
        self.finished = 0
        self.done = False
        self.upstream: Any = None

    def on_subscribe(self, s: Any) -> None:
        self.upstream = s
        self.actual.on_subscribe(self)
        s.request(self.max_concurrency)

    def on_next(self, item: int) -> None:
        value = self.mapper(item)
        if self.wip == 0 and self.requested and not self.queue:
            self.wip = 1
            self.actual.on_next(value)
            if self.requested != UNBOUNDED:
                self.requested -= 1
            self._finished_one()
            self.wip -= 1
            if self.wip:
                self.wip = 0
                self.drain()
        else:
            self.queue.append(value)
            self.drain()

    def _finished_one(self) -> None:
        self.finished += 1
        if self.finished == self.limit:
            self.finished = 0
            self.upstream.request(self.limit)

    def on_error(self, error: Exception) -> None:
        self.actual.on_error(error)

    def on_complete(self) -> None:
        self.done = True
        self.drain()

    def drain(self) -> None:
        self.wip += 1
        if self.wip != 1:
            return
        while True:
            queue = self.queue
            while self.requested and queue:
                self.actual.on_next(queue.popleft())
                if self.requested != UNBOUNDED:
                    self.requested -= 1
                self._finished_one()
            if self.done and not queue:
                self.actual.on_complete()
                return
            self.wip -= 1
            if self.wip == 0:
                return


class _MiniInner:
    def __init__(self, parent: _MiniMulti, prefetch: int) -> None:
        self.parent = parent
        self.queue: deque[object] = deque()
        self.done = False
        self.prefetch = prefetch
        self.limit = prefetch - (prefetch >> 2)
        self.consumed = 0
        self.upstream: Any = None

    def on_subscribe(self, s: Any) -> None:
        self.upstream = s
        s.request(self.prefetch)

    def on_next(self, item: object) -> None:
        self.queue.append(item)
        self.parent.drain()

    def on_error(self, error: Exception) -> None:
        self.parent.actual.on_error(error)

    def on_complete(self) -> None:
        self.done = True
        self.parent.drain()

    def took(self, n: int) -> None:
        self.consumed += n
        if self.consumed >= self.limit:
            n, self.consumed = self.consumed, 0
            self.upstream.request(n)


class _MiniMulti(_Relay):
    def __init__(self, actual: Any, count: int, prefetch: int) -> None:
        super().__init__(actual)
        self.inners = [_MiniInner(self, prefetch) for _ in range(count)]

    def start(self, sources: Sequence[Flow[object]]) -> None:
        self.actual.on_subscribe(self)
        for source, inner in zip(sources, self.inners, strict=True):
            source.subscribe(inner)


class _MiniMerge(_MiniMulti):
    """merge: per-source queues, round-robin against downstream demand."""

    def drain(self) -> None:
        self.wip += 1
        if self.wip != 1:
            return
        actual = self.actual
        while True:
            all_done = True
            for inner in self.inners:
                queue = inner.queue
                done = inner.done
                taken = 0
                while self.requested and queue:
                    actual.on_next(queue.popleft())
                    if self.requested != UNBOUNDED:
                        self.requested -= 1
                    taken += 1
                if taken and not done:
                    inner.took(taken)
                if not (done and not queue):
                    all_done = False
            if all_done:
                actual.on_complete()
                return
            self.wip -= 1
            if self.wip == 0:
                return


class _MiniZip(_MiniMulti):
    """zip: a tuple per head of every queue, against downstream demand."""

    def drain(self) -> None:
        self.wip += 1
        if self.wip != 1:
            return
        actual = self.actual
        inners = self.inners
        while True:
            while True:
                ready = True
                for inner in inners:
                    if not inner.queue:
                        if inner.done:
                            actual.on_complete()
                            return
                        ready = False
                if not ready or not self.requested:
                    break
                actual.on_next(tuple([inner.queue.popleft() for inner in inners]))
                if self.requested != UNBOUNDED:
                    self.requested -= 1
                for inner in inners:
                    inner.took(1)
            self.wip -= 1
            if self.wip == 0:
                return


class _MiniFlatMapFlow(Flow[int]):
    def __init__(self, source: Flow[int], mapper: Callable[[int], int]) -> None:
        self._source = source
        self._mapper = mapper

    def _subscribe(self, subscriber: Any) -> None:
        self._source.subscribe(_MiniFlatMapScalar(subscriber, self._mapper, 256))


class _MiniMultiFlow(Flow[object]):
    def __init__(self, kind: type[_MiniMulti], sources: Sequence[Flow[object]]) -> None:
        self._kind = kind
        self._sources = sources

    def _subscribe(self, subscriber: Any) -> None:
        self._kind(subscriber, len(self._sources), 32).start(self._sources)


# -- jobs ----------------------------------------------------------------------------------


def _sink_sum(flow: Flow[int], lib: Any = reactive_bp) -> int:
    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    flow.subscribe_with(add, request=lib.RequestPolicy.batch(256))
    return total


def _sink_pairs(flow: Flow[tuple[int, int]], lib: Any = reactive_bp) -> int:
    total = 0

    def add(pair: tuple[int, int]) -> None:
        nonlocal total
        total += pair[0] + pair[1]

    flow.subscribe_with(add, request=lib.RequestPolicy.batch(256))
    return total


def _rbp_run(job: str, lib: Any) -> Callable[[int], int]:
    """The reactive_bp pipeline of ``job``, built with the library module ``lib``."""
    flow = lib.Flow
    if job == "flat_map":
        return lambda n: _sink_sum(flow.range(n).flat_map(lambda x: flow.just(x)), lib)
    if job == "concat_map":
        return lambda n: _sink_sum(flow.range(n).concat_map(lambda x: flow.just(x)), lib)
    if job == "merge":
        return lambda n: _sink_sum(
            flow.merge(*[flow.range(r.start, r.stop) for r in _quarters(n)]), lib
        )
    if job == "zip":
        return lambda n: _sink_pairs(flow.zip(flow.range(n), flow.range(n)), lib)
    raise ValueError(job)


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


def _rx_sum(observable: Any) -> int:
    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    observable.subscribe(add)
    return total


def _rx_pairs(observable: Any) -> int:
    total = 0

    def add(pair: tuple[int, int]) -> None:
        nonlocal total
        total += pair[0] + pair[1]

    observable.subscribe(add)
    return total


def _ident(x: int) -> int:
    return x


def _yield_one(x: int) -> Iterator[int]:
    yield x


def _quarters(n: int) -> list[range]:
    q = n // 4
    return [range(i * q, (i + 1) * q) for i in range(4)]


@dataclass(frozen=True)
class Contender:
    """One row: ``run(n)`` builds and runs the pipeline and returns the checked sum."""

    key: str
    label: str
    demand: str
    run: Callable[[int], int]
    reference: bool = False  # the reactive_bp row the ratios are taken against
    max_n: int | None = None  # a contender too slow for the job's N runs on fewer items

    def items(self, n: int) -> int:
        """How many items this contender runs when the job runs ``n``."""
        return n if self.max_n is None else min(n, self.max_n)


@dataclass(frozen=True)
class Job:
    """One table: a combining operator and its contenders over ``n`` items."""

    key: str
    title: str
    n: int
    expected: Callable[[int], int]
    contenders: list[Contender]


def _jobs() -> list[Job]:
    def flat_map_job() -> Job:
        rows = [
            Contender(
                "fm-rbp",
                "reactive_bp `flat_map(lambda x: Flow.just(x))`",
                "batch(256)",
                _rbp_run("flat_map", reactive_bp),
                reference=True,
            ),
            Contender(
                "fm-mini",
                "hand-written scalar flat_map (same demand, no locks)",
                "batch(256)",
                lambda n: _sink_sum(_MiniFlatMapFlow(Flow.range(n), _ident)),
            ),
            Contender(
                "fm-gen",
                "generator `for x in src: yield from gen(x)`",
                "pull",
                lambda n: sum(y for x in range(n) for y in _yield_one(x)),
            ),
        ]
        if reactivex is not None:
            rows.insert(
                1,
                Contender(
                    "fm-rx",
                    "reactivex `flat_map(lambda x: rx.just(x))`",
                    "none (no backpressure)",
                    lambda n: _rx_sum(
                        reactivex.range(n).pipe(rx_ops.flat_map(lambda x: reactivex.just(x)))
                    ),
                    max_n=_RX_INNER_MAX_N,
                ),
            )
        return Job("flat_map", "flat_map(just)", 100_000, lambda n: n * (n - 1) // 2, rows)

    def concat_map_job() -> Job:
        rows = [
            Contender(
                "cm-rbp",
                "reactive_bp `concat_map(lambda x: Flow.just(x))`",
                "batch(256)",
                _rbp_run("concat_map", reactive_bp),
                reference=True,
            ),
            Contender(
                "cm-gen",
                "generator `for x in src: yield from gen(x)`",
                "pull",
                lambda n: sum(y for x in range(n) for y in _yield_one(x)),
            ),
        ]
        if reactivex is not None:
            rows.insert(
                1,
                Contender(
                    "cm-rx",
                    "reactivex `concat_map(lambda x: rx.just(x))`",
                    "none (no backpressure)",
                    lambda n: _rx_sum(
                        reactivex.range(n).pipe(rx_ops.concat_map(lambda x: reactivex.just(x)))
                    ),
                    max_n=_RX_INNER_MAX_N,
                ),
            )
        return Job("concat_map", "concat_map(just)", 100_000, lambda n: n * (n - 1) // 2, rows)

    def merge_job() -> Job:
        rows = [
            Contender(
                "merge-rbp",
                "reactive_bp `Flow.merge(4 ranges)`",
                "batch(256)",
                _rbp_run("merge", reactive_bp),
                reference=True,
            ),
            Contender(
                "merge-mini",
                "hand-written merge (prefetch 32, same demand, no locks)",
                "batch(256)",
                lambda n: _sink_sum(
                    _MiniMultiFlow(_MiniMerge, [Flow.range(r.start, r.stop) for r in _quarters(n)])  # type: ignore[arg-type]
                ),
            ),
            Contender(
                "merge-gen",
                "generator round-robin over 4 iterators",
                "pull",
                lambda n: sum(_round_robin([iter(r) for r in _quarters(n)])),
            ),
        ]
        if reactivex is not None:
            rows.insert(
                1,
                Contender(
                    "merge-rx",
                    "reactivex `merge(4 ranges)`",
                    "none (no backpressure)",
                    lambda n: _rx_sum(
                        reactivex.merge(*[reactivex.from_iterable(r) for r in _quarters(n)])
                    ),
                ),
            )
        return Job("merge", "merge of 4", 200_000, lambda n: n * (n - 1) // 2, rows)

    def zip_job() -> Job:
        rows = [
            Contender(
                "zip-rbp",
                "reactive_bp `Flow.zip(range, range)`",
                "batch(256)",
                _rbp_run("zip", reactive_bp),
                reference=True,
            ),
            Contender(
                "zip-mini",
                "hand-written zip (prefetch 32, same demand, no locks)",
                "batch(256)",
                lambda n: _sink_pairs(
                    _MiniMultiFlow(_MiniZip, [Flow.range(n), Flow.range(n)])  # type: ignore[arg-type]
                ),
            ),
            Contender(
                "zip-gen",
                "built-in `zip(range, range)`",
                "pull",
                lambda n: sum(a + b for a, b in zip(range(n), range(n), strict=True)),
            ),
        ]
        if reactivex is not None:
            rows.insert(
                1,
                Contender(
                    "zip-rx",
                    "reactivex `zip(range, range)`",
                    "none (no backpressure)",
                    lambda n: _rx_pairs(reactivex.zip(reactivex.range(n), reactivex.range(n))),
                    max_n=_RX_ZIP_MAX_N,
                ),
            )
        return Job("zip", "zip of 2", 200_000, lambda n: n * (n - 1), rows)

    return [flat_map_job(), concat_map_job(), merge_job(), zip_job()]


def _round_robin(iterators: list[Iterator[int]]) -> Iterator[int]:
    active = deque(iterators)
    while active:
        iterator = active.popleft()
        for item in iterator:
            yield item
            active.append(iterator)
            break


JOBS: list[Job] = _jobs()


def _with_before(job: Job, before: Any, path: Path) -> Job:
    """``job`` with a row for the same pipeline on the ``before`` library, after its reference."""
    rows: list[Contender] = []
    for contender in job.contenders:
        rows.append(contender)
        if contender.reference:
            rows.append(
                Contender(
                    f"{contender.key}-before",
                    f"{contender.label}, before ({path})",
                    contender.demand,
                    _rbp_run(job.key, before),
                )
            )
    return Job(job.key, job.title, job.n, job.expected, rows)


# -- measurement ---------------------------------------------------------------------------


@dataclass
class Measurement:
    """The timed runs of one contender, in seconds."""

    contender: Contender
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median run time."""
        return statistics.median(self.times)

    def per_item(self, n: int) -> float:
        """The median time per item, in seconds, for a job of ``n`` items."""
        return self.median / self.contender.items(n)


def _time_once(contender: Contender, n: int, expected: Callable[[int], int]) -> float:
    n = contender.items(n)
    gc.collect()
    start = time.perf_counter()
    result = contender.run(n)
    elapsed = time.perf_counter() - start
    if result != expected(n):
        raise SystemExit(f"{contender.key}: wrong sum {result} (expected {expected(n)})")
    return elapsed


def measure(job: Job, n: int, repeat: int) -> list[Measurement]:
    """One warm-up round, then ``repeat`` interleaved rounds with a rotating start."""
    expected = job.expected
    for contender in job.contenders:
        _time_once(contender, n, expected)
    results = [Measurement(c) for c in job.contenders]
    for round_index in range(repeat):
        shift = round_index % len(results)
        for m in results[shift:] + results[:shift]:
            m.times.append(_time_once(m.contender, n, expected))
    return results


def markdown_table(job: Job, results: Sequence[Measurement], n: int) -> str:
    """The results of one job as a markdown table (ratios: >1 is faster than reactive_bp)."""
    reference = next((m for m in results if m.contender.reference), results[0])
    lines = [
        f"**{job.title}**, {n:,} items",
        "",
        "| pipeline | demand | median s (min-max) | µs/item | vs reactive_bp |",
        "|---|---|---:|---:|---:|",
    ]
    for m in results:
        label = m.contender.label
        if m.contender.items(n) != n:
            label += f" ({m.contender.items(n):,} items)"
        lines.append(
            f"| {label} | {m.contender.demand} "
            f"| {m.median:.3f} ({min(m.times):.3f}-{max(m.times):.3f}) "
            f"| {m.per_item(n) * 1e6:.2f} | {reference.per_item(n) / m.per_item(n):.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every job (or ``--only`` some) and print one table per job."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N (default 1)")
    parser.add_argument(
        "--only", action="append", metavar="JOB", help="jobs: " + ", ".join(j.key for j in JOBS)
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="CHECKOUT",
        help="also run the reactive_bp rows with the package in CHECKOUT (e.g. a git worktree "
        "of the previous commit), interleaved in this process",
    )
    args = parser.parse_args(argv)
    jobs = [j for j in JOBS if not args.only or j.key in args.only]
    if args.before is not None:
        before = _load_before(args.before)
        jobs = [_with_before(job, before, args.before) for job in jobs]
    print("# Combining operators")
    print(machine_summary())
    print(f"reactive_bp imported from {reactive_bp.__file__}")
    print(f"One warm-up round, then the median of {args.repeat} interleaved rounds.")
    print(flush=True)
    for job in jobs:
        n = max(4, int(job.n * args.scale)) // 4 * 4
        results = measure(job, n, args.repeat)
        print(markdown_table(job, results, n))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
