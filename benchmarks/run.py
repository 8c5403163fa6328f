"""Throughput: reactive_bp against reactivex and plain-Python baselines, in one process.

Two jobs, one table each:

* ``map.filter`` (the same as in ``/work/shared/reference/peers.md``): ``N`` ints
  (default 1,000,000) go through ``map(x + 1)`` then ``filter(x % 2 == 0)`` into
  a sink that sums them; every run checks the sum (250,000,500,000 for N = 1M).
* ``10 maps``: ``N`` ints through ten chained ``map(x + 1)`` into the same kind
  of sink; the sum is checked too. This is where per-operator overhead shows.

Both tables have a "reactive_bp unfused" row: the same chain over
``Flow.defer(lambda: Flow.from_iterable(...))``, which assembly-time fusion
does not touch, i.e. the operator-per-stage path every chain took before
fusion. Its ratio to the fused row is the gain from fusion, measured in the
same interleaved rounds.

Method: one warm-up round, then ``--repeat`` timed rounds (default 5). In each
round every contender runs once, and the starting contender rotates from round
to round, so drift on a shared machine (CPU boost, noisy neighbours) spreads
over all of them instead of landing on whoever runs last. The table shows the
median with the min-max spread, items/s (input items over the median), and the
speed relative to reactivex and to the inline plain loop.

Fairness notes:

* reactivex has **no backpressure** (removed in RxPY 3): its ``from_iterable``
  pushes every item as fast as the subscriber returns and never asks how many
  are wanted. reactive_bp pays for demand accounting on every item; this
  benchmark shows what that costs.
* Every pipeline calls the same ``_inc`` and ``_is_even`` functions, except the
  inline plain loop, which is the floor.

Run: ``.venv/bin/python benchmarks/run.py [--n N] [--repeat R] [--json PATH]``
(``make bench``). Speed is never asserted in the test suite; it is measured here.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _machine import machine_info, machine_summary

from reactive_bp import Flow, RequestPolicy

try:
    import reactivex
    from reactivex import operators as rx_ops
except ImportError:  # reactivex is an optional extra ("reactive-bp[rx]")
    reactivex = None  # type: ignore[assignment]
    rx_ops = None  # type: ignore[assignment]

__all__ = [
    "CONTENDERS",
    "JOBS",
    "Contender",
    "Measurement",
    "expected_chain_sum",
    "expected_sum",
    "main",
]

REACTIVEX_KEY = "reactivex"
PLAIN_LOOP_KEY = "plain-loop"
BATCHED_KEY = "rbp-batch-256"
ONE_BY_ONE_KEY = "rbp-one-by-one"
UNFUSED_KEY = "rbp-unfused-batch-256"
CHAIN_JOB = "10 maps"
REACTIVEX_CHAIN_KEY = "reactivex-10-maps"
FUSED_CHAIN_KEY = "rbp-10-maps"
UNFUSED_CHAIN_KEY = "rbp-unfused-10-maps"
JOBS = {
    "map.filter": "map(x+1) -> filter(even) -> sum",
    CHAIN_JOB: "10 x map(x+1) -> sum",
}


def _inc(x: int) -> int:
    return x + 1


def _is_even(x: int) -> bool:
    return x % 2 == 0


def expected_sum(n: int) -> int:
    """Return the sum of the even numbers in ``1..n``, what every pipeline must produce."""
    k = n // 2
    return k * (k + 1)


# -- contenders ---------------------------------------------------------------------------
# Each takes N and returns the sum; building the pipeline is part of the timed run.


def _plain_loop(n: int) -> int:
    total = 0
    for x in range(n):
        y = x + 1
        if y % 2 == 0:
            total += y
    return total


def _map_gen(source: Iterable[int], mapper: Callable[[int], int]) -> Iterator[int]:
    for x in source:
        yield mapper(x)


def _filter_gen(source: Iterable[int], predicate: Callable[[int], bool]) -> Iterator[int]:
    for x in source:
        if predicate(x):
            yield x


def _generator_chain(n: int) -> int:
    total = 0
    for y in _filter_gen(_map_gen(range(n), _inc), _is_even):
        total += y
    return total


def _reactivex_from_iterable(n: int) -> int:
    # No backpressure: from_iterable pushes everything at once on the current thread.
    assert reactivex is not None and rx_ops is not None
    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    reactivex.from_iterable(range(n)).pipe(rx_ops.map(_inc), rx_ops.filter(_is_even)).subscribe(add)
    return total


def _source(n: int, fusable: bool) -> Flow[int]:
    if fusable:
        return Flow.from_iterable(range(n))
    # defer hides the iterable source, so every operator is lifted (not fused).
    return Flow.defer(lambda: Flow.from_iterable(range(n)))


def _reactive_bp(policy: Callable[[], RequestPolicy], fusable: bool = True) -> Callable[[int], int]:
    def run(n: int) -> int:
        total = 0

        def add(x: int) -> None:
            nonlocal total
            total += x

        _source(n, fusable).map(_inc).filter(_is_even).subscribe_with(add, request=policy())
        return total

    return run


CHAIN_LENGTH = 10


def expected_chain_sum(n: int) -> int:
    """Return ``sum(x + 10 for x in range(n))``, what every 10-map pipeline must produce."""
    return n * (n - 1) // 2 + CHAIN_LENGTH * n


def _generator_maps(n: int) -> int:
    items: Iterable[int] = range(n)
    for _ in range(CHAIN_LENGTH):
        items = _map_gen(items, _inc)
    total = 0
    for y in items:
        total += y
    return total


def _reactivex_maps(n: int) -> int:
    assert reactivex is not None and rx_ops is not None
    total = 0

    def add(x: int) -> None:
        nonlocal total
        total += x

    maps = [rx_ops.map(_inc) for _ in range(CHAIN_LENGTH)]
    reactivex.from_iterable(range(n)).pipe(*maps).subscribe(add)
    return total


def _reactive_bp_maps(fusable: bool) -> Callable[[int], int]:
    def run(n: int) -> int:
        total = 0

        def add(x: int) -> None:
            nonlocal total
            total += x

        flow = _source(n, fusable)
        for _ in range(CHAIN_LENGTH):
            flow = flow.map(_inc)
        flow.subscribe_with(add, request=RequestPolicy.batch(256))
        return total

    return run


@dataclass(frozen=True)
class Contender:
    """One pipeline in the table.

    Attributes:
        key: Short id, used by ``--only`` and in the JSON output.
        label: The row label in the table.
        demand: How the sink asks for items (``-`` for plain Python).
        run: Runs the whole pipeline over ``range(n)`` and returns the sum.
        job: Which table the contender belongs to (``JOBS``).
    """

    key: str
    label: str
    demand: str
    run: Callable[[int], int]
    job: str = "map.filter"


def _contenders() -> list[Contender]:
    contenders = [
        Contender(PLAIN_LOOP_KEY, "plain for-loop (inline)", "-", _plain_loop),
        Contender("generators", "sync generator chain", "pull, 1 at a time", _generator_chain),
    ]
    if reactivex is not None:
        contenders.append(
            Contender(
                REACTIVEX_KEY,
                "reactivex from_iterable.pipe(map, filter)",
                "none (no backpressure)",
                _reactivex_from_iterable,
            )
        )
    contenders += [
        Contender(
            BATCHED_KEY,
            "reactive_bp from_iterable.map.filter",
            "batch(256)",
            _reactive_bp(lambda: RequestPolicy.batch(256)),
        ),
        Contender(
            ONE_BY_ONE_KEY,
            "reactive_bp from_iterable.map.filter",
            "one_by_one()",
            _reactive_bp(RequestPolicy.one_by_one),
        ),
        Contender(
            "rbp-unbounded",
            "reactive_bp from_iterable.map.filter",
            "unbounded()",
            _reactive_bp(RequestPolicy.unbounded),
        ),
        Contender(
            UNFUSED_KEY,
            "reactive_bp unfused (defer).map.filter",
            "batch(256)",
            _reactive_bp(lambda: RequestPolicy.batch(256), fusable=False),
        ),
        Contender(
            "gen-10-maps",
            "sync generator chain, 10 maps",
            "pull, 1 at a time",
            _generator_maps,
            CHAIN_JOB,
        ),
    ]
    if reactivex is not None:
        contenders.append(
            Contender(
                REACTIVEX_CHAIN_KEY,
                "reactivex from_iterable.pipe(10 maps)",
                "none (no backpressure)",
                _reactivex_maps,
                CHAIN_JOB,
            )
        )
    contenders += [
        Contender(
            FUSED_CHAIN_KEY,
            "reactive_bp from_iterable + 10 maps",
            "batch(256)",
            _reactive_bp_maps(fusable=True),
            CHAIN_JOB,
        ),
        Contender(
            UNFUSED_CHAIN_KEY,
            "reactive_bp unfused (defer) + 10 maps",
            "batch(256)",
            _reactive_bp_maps(fusable=False),
            CHAIN_JOB,
        ),
    ]
    return contenders


CONTENDERS: list[Contender] = _contenders()


# -- measurement --------------------------------------------------------------------------


@dataclass
class Measurement:
    """The timed runs of one contender, in seconds."""

    contender: Contender
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median run time."""
        return statistics.median(self.times)


def _expected(contender: Contender, n: int) -> int:
    return expected_chain_sum(n) if contender.job == CHAIN_JOB else expected_sum(n)


def _time_once(contender: Contender, n: int, expected: int) -> float:
    gc.collect()  # start each run from the same heap state; gc stays enabled, as in real use
    start = time.perf_counter()
    result = contender.run(n)
    elapsed = time.perf_counter() - start
    if result != expected:
        raise SystemExit(f"{contender.key}: wrong sum {result} (expected {expected})")
    return elapsed


def measure(
    contenders: Sequence[Contender],
    n: int,
    repeat: int,
    report: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Run one warm-up round, then ``repeat`` interleaved timed rounds.

    Args:
        contenders: What to run, in table order.
        n: Items per run.
        repeat: Timed rounds.
        report: Receives a short progress message after each round.

    Returns:
        One measurement per contender, in the order given.
    """
    for contender in contenders:  # warm-up: imports, caches, specialisation
        _time_once(contender, n, _expected(contender, n))
    results = [Measurement(contender) for contender in contenders]
    for round_index in range(repeat):
        shift = round_index % len(results)
        for measurement in results[shift:] + results[:shift]:
            contender = measurement.contender
            measurement.times.append(_time_once(contender, n, _expected(contender, n)))
        if report is not None:
            report(f"round {round_index + 1}/{repeat} done")
    return results


# -- output -------------------------------------------------------------------------------


def _ratio(baseline: Measurement | None, measurement: Measurement) -> float | None:
    """Speed relative to ``baseline`` (above 1.0 means faster than the baseline)."""
    if baseline is None:
        return None
    return baseline.median / measurement.median


def _format_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _find(results: Sequence[Measurement], key: str) -> Measurement | None:
    return next((m for m in results if m.contender.key == key), None)


def _baselines(
    results: Sequence[Measurement], job: str
) -> tuple[Measurement | None, Measurement | None, Measurement | None]:
    """The reactivex, unfused reactive_bp and plain-loop rows of ``job`` (None if absent)."""
    if job == CHAIN_JOB:
        return _find(results, REACTIVEX_CHAIN_KEY), _find(results, UNFUSED_CHAIN_KEY), None
    return (
        _find(results, REACTIVEX_KEY),
        _find(results, UNFUSED_KEY),
        _find(results, PLAIN_LOOP_KEY),
    )


def markdown_table(results: Sequence[Measurement], n: int, job: str = "map.filter") -> str:
    """Return the rows of ``job`` as a markdown table, ready to paste into the README."""
    reactivex_row, unfused_row, plain_row = _baselines(results, job)
    lines = [
        "| pipeline | demand | median s (min-max) | items/s | vs reactivex "
        "| vs reactive_bp unfused | vs plain loop |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        if m.contender.job != job:
            continue
        lines.append(
            f"| {m.contender.label} | {m.contender.demand} "
            f"| {m.median:.3f} ({min(m.times):.3f}-{max(m.times):.3f}) "
            f"| {n / m.median:,.0f} "
            f"| {_format_ratio(_ratio(reactivex_row, m))} "
            f"| {_format_ratio(_ratio(unfused_row, m))} "
            f"| {_format_ratio(_ratio(plain_row, m))} |"
        )
    return "\n".join(lines)


TARGETS: list[tuple[str, str, str, float]] = [
    # (what, measured row, baseline row, the ratio to reach)
    ("batched map.filter vs reactivex", BATCHED_KEY, REACTIVEX_KEY, 2.0),
    ("one_by_one map.filter vs reactivex", ONE_BY_ONE_KEY, REACTIVEX_KEY, 0.5),
    ("10 maps fused vs unfused", FUSED_CHAIN_KEY, UNFUSED_CHAIN_KEY, 2.0),
    ("10 maps vs reactivex", FUSED_CHAIN_KEY, REACTIVEX_CHAIN_KEY, 1.0),
]
"""The targets the verdict lines check (issue "Performance where users pay")."""


def verdict(results: Sequence[Measurement]) -> str:
    """Return one line per target: reached or not, with the measured ratio."""
    lines = []
    for what, key, baseline_key, target in TARGETS:
        row, baseline = _find(results, key), _find(results, baseline_key)
        if row is None or baseline is None:
            lines.append(f"Target ({what} ≥ {target:.1f}x): not measured in this run.")
            continue
        ratio = baseline.median / row.median
        status = "met" if ratio >= target else "NOT met"
        lines.append(f"Target ({what} ≥ {target:.1f}x): {status}, {ratio:.2f}x")
    lines.append("Differences under ~1.1x are within this machine's run-to-run noise.")
    return "\n".join(lines)


def to_json(results: Sequence[Measurement], n: int, repeat: int) -> dict[str, object]:
    """Return everything measured, plus the machine description, as JSON-ready data."""
    rows = []
    for m in results:
        reactivex_row, unfused_row, plain_row = _baselines(results, m.contender.job)
        rows.append(
            {
                "job": m.contender.job,
                "key": m.contender.key,
                "pipeline": m.contender.label,
                "demand": m.contender.demand,
                "times_s": m.times,
                "median_s": m.median,
                "min_s": min(m.times),
                "max_s": max(m.times),
                "items_per_s": n / m.median,
                "vs_reactivex": _ratio(reactivex_row, m),
                "vs_unfused": _ratio(unfused_row, m),
                "vs_plain_loop": _ratio(plain_row, m),
            }
        )
    return {
        "benchmark": JOBS,
        "n": n,
        "repeat": repeat,
        "expected_sum": {"map.filter": expected_sum(n), CHAIN_JOB: expected_chain_sum(n)},
        "machine": machine_info(),
        "results": rows,
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_000_000, help="items per run (default 1M)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--only",
        action="append",
        metavar="KEY",
        help="run only these contenders (repeatable): " + ", ".join(c.key for c in CONTENDERS),
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; return the exit status."""
    args = _parse_args(argv)
    contenders = CONTENDERS
    if args.only:
        contenders = [c for c in CONTENDERS if c.key in args.only]
        unknown = set(args.only) - {c.key for c in contenders}
        if unknown:
            raise SystemExit(f"unknown contender(s): {', '.join(sorted(unknown))}")
    n: int = args.n
    repeat: int = args.repeat
    print(f"# Throughput: {n:,} ints through each job")
    print(f"{machine_summary()}")
    print(f"One warm-up round, then the median of {repeat} interleaved rounds.")
    if reactivex is None:
        print("reactivex is not installed: its row and the 'vs reactivex' column are skipped.")
    print(flush=True)

    def report(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    results = measure(contenders, n, repeat, report)
    for job, description in JOBS.items():
        if any(m.contender.job == job for m in results):
            print(f"## {job}: {description}")
            print()
            print(markdown_table(results, n, job))
            print()
    print(verdict(results))
    print("reactivex has no backpressure: its source pushes without being asked.")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results, n, repeat), indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
