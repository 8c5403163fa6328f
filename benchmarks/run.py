"""Throughput: reactive_bp against reactivex and plain-Python baselines, in one process.

The job (the same as in ``/work/shared/reference/peers.md``): ``N`` ints
(default 1,000,000) go through ``map(x + 1)`` then ``filter(x % 2 == 0)`` into a
sink that sums them; every run checks the sum (250,000,500,000 for N = 1M).

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

__all__ = ["CONTENDERS", "Contender", "Measurement", "expected_sum", "main"]

REACTIVEX_KEY = "reactivex"
PLAIN_LOOP_KEY = "plain-loop"
BATCHED_KEY = "rbp-batch-256"


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


def _reactive_bp(policy: Callable[[], RequestPolicy]) -> Callable[[int], int]:
    def run(n: int) -> int:
        total = 0

        def add(x: int) -> None:
            nonlocal total
            total += x

        Flow.from_iterable(range(n)).map(_inc).filter(_is_even).subscribe_with(
            add, request=policy()
        )
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
    """

    key: str
    label: str
    demand: str
    run: Callable[[int], int]


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
            "rbp-one-by-one",
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
    expected = expected_sum(n)
    for contender in contenders:  # warm-up: imports, caches, specialisation
        _time_once(contender, n, expected)
    results = [Measurement(contender) for contender in contenders]
    for round_index in range(repeat):
        shift = round_index % len(results)
        for measurement in results[shift:] + results[:shift]:
            measurement.times.append(_time_once(measurement.contender, n, expected))
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


def markdown_table(results: Sequence[Measurement], n: int) -> str:
    """Return the results as a markdown table, ready to paste into the README."""
    reactivex_row = _find(results, REACTIVEX_KEY)
    plain_row = _find(results, PLAIN_LOOP_KEY)
    lines = [
        "| pipeline | demand | median s (min-max) | items/s | vs reactivex | vs plain loop |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in results:
        lines.append(
            f"| {m.contender.label} | {m.contender.demand} "
            f"| {m.median:.3f} ({min(m.times):.3f}-{max(m.times):.3f}) "
            f"| {n / m.median:,.0f} "
            f"| {_format_ratio(_ratio(reactivex_row, m))} "
            f"| {_format_ratio(_ratio(plain_row, m))} |"
        )
    return "\n".join(lines)


def verdict(results: Sequence[Measurement]) -> str:
    """Return one line: did batched reactive_bp reach the target of ≥ 1.0x reactivex?"""
    batched = _find(results, BATCHED_KEY)
    reactivex_row = _find(results, REACTIVEX_KEY)
    if batched is None or reactivex_row is None:
        return "Target (batched reactive_bp ≥ 1.0x reactivex): not measured in this run."
    ratio = reactivex_row.median / batched.median
    status = "met" if ratio >= 1.0 else "NOT met"
    return (
        f"Target (batched reactive_bp ≥ 1.0x reactivex): {status}, {ratio:.2f}x "
        "(differences under ~1.1x are within this machine's run-to-run noise)."
    )


def to_json(results: Sequence[Measurement], n: int, repeat: int) -> dict[str, object]:
    """Return everything measured, plus the machine description, as JSON-ready data."""
    reactivex_row = _find(results, REACTIVEX_KEY)
    plain_row = _find(results, PLAIN_LOOP_KEY)
    return {
        "benchmark": "map(x+1) -> filter(even) -> sum",
        "n": n,
        "repeat": repeat,
        "expected_sum": expected_sum(n),
        "machine": machine_info(),
        "results": [
            {
                "key": m.contender.key,
                "pipeline": m.contender.label,
                "demand": m.contender.demand,
                "times_s": m.times,
                "median_s": m.median,
                "min_s": min(m.times),
                "max_s": max(m.times),
                "items_per_s": n / m.median,
                "vs_reactivex": _ratio(reactivex_row, m),
                "vs_plain_loop": _ratio(plain_row, m),
            }
            for m in results
        ],
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
    print(f"# Throughput: {n:,} ints -> map(x+1) -> filter(even) -> sum")
    print(f"{machine_summary()}")
    print(f"One warm-up round, then the median of {repeat} interleaved rounds.")
    if reactivex is None:
        print("reactivex is not installed: its row and the 'vs reactivex' column are skipped.")
    print(flush=True)

    def report(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    results = measure(contenders, n, repeat, report)
    print(markdown_table(results, n))
    print()
    print(verdict(results))
    print("reactivex has no backpressure: its source pushes without being asked.")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results, n, repeat), indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
