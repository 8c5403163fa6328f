"""The measurement the broker benchmarks share (``broker_redis.py``, ``broker_nats.py``,
``broker_rabbitmq.py``).

A script brings what is particular to its broker: its ``Bench`` (the client and the
sizes every run shares), the contenders' run coroutines grouped in scenarios, the
setup, and hooks around each run (untimed: queue the input, check and clear the
output). This module does the rest:

* ``parse_arguments``: ``--n``, ``--repeat``, the script's batch-size option,
  ``--in-flight`` and ``--only``;
* ``run_rounds``: one warm-up run of every contender of a scenario, then ``repeat``
  interleaved rounds, the starting contender rotating from round to round;
  ``time_once`` times one run: ``gc.collect()``, then the wall time and this process's
  CPU time (the broker's work is not in it), the run's checksum checked;
* ``markdown_table`` / ``print_report``: a table per scenario with the median and the
  min-max spread, items/s, the ratio and the overhead against the ``raw`` contender,
  the client's CPU time and its overhead, and optionally the overheads (wall, CPU)
  against a second baseline;
* ``run_and_report``: start the script's private server (or print ``skipped: ...``),
  run the script's measurement in a new event loop, print the report.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from _machine import machine_summary

from reactive_bp.testing.servers import LoopbackServer, ServerUnavailable

__all__ = [
    "Contender",
    "Measurement",
    "RunHook",
    "Results",
    "Scenario",
    "markdown_table",
    "parse_arguments",
    "print_report",
    "run_and_report",
    "run_rounds",
    "time_once",
]

B = TypeVar("B")


@dataclass(frozen=True)
class Contender(Generic[B]):
    """One way to do a scenario's job: ``run`` returns the checksum."""

    key: str
    label: str
    run: Callable[[B], Awaitable[int]]


@dataclass(frozen=True)
class Scenario(Generic[B]):
    """A job, its expected checksum for ``n`` items, and the contenders doing it.

    The table compares every contender with the one keyed ``raw``.
    """

    title: str
    expected: Callable[[int], int]
    contenders: tuple[Contender[B], ...]


@dataclass
class Measurement(Generic[B]):
    """The timed runs of one contender: wall time and this process's CPU time, in seconds."""

    contender: Contender[B]
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median run time."""
        return statistics.median(self.times)

    @property
    def median_cpu(self) -> float:
        """The median CPU time of the client process (the server's work is not in it)."""
        return statistics.median(self.cpu)


Results = dict[str, list[Measurement[B]]]
"""The measurements of every scenario run, by scenario key, in the scenario's order."""

RunHook = Callable[[B, str, Contender[B]], Awaitable[None]]
"""Called with the bench, the scenario's key and the contender before or after a run."""


async def time_once(contender: Contender[B], bench: B, expected: int) -> tuple[float, float]:
    """Run ``contender`` once: its wall time and this process's CPU time, in seconds.

    Raises ``SystemExit`` if the run's checksum is not ``expected``.
    """
    gc.collect()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = await contender.run(bench)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if result != expected:
        raise SystemExit(f"{contender.key}: checksum {result}, expected {expected}")
    return elapsed, cpu


async def run_rounds(
    bench: B,
    scenarios: Mapping[str, Scenario[B]],
    n: int,
    repeat: int,
    only: Collection[str] | None = None,
    *,
    before_run: RunHook[B] | None = None,
    after_run: RunHook[B] | None = None,
) -> Results[B]:
    """Warm up, then ``repeat`` interleaved rounds per scenario (those in ``only``, if given).

    ``before_run`` and ``after_run`` (untimed) surround every run, the warm-up's too.
    """

    async def run(key: str, contender: Contender[B], expected: int) -> tuple[float, float]:
        if before_run is not None:
            await before_run(bench, key, contender)
        timed = await time_once(contender, bench, expected)
        if after_run is not None:
            await after_run(bench, key, contender)
        return timed

    results: Results[B] = {}
    for key, scenario in scenarios.items():
        if only and key not in only:
            continue
        expected = scenario.expected(n)
        for contender in scenario.contenders:
            await run(key, contender, expected)
        measurements = [Measurement(c) for c in scenario.contenders]
        for round_index in range(repeat):
            shift = round_index % len(measurements)
            for m in measurements[shift:] + measurements[:shift]:
                elapsed, cpu = await run(key, m.contender, expected)
                m.times.append(elapsed)
                m.cpu.append(cpu)
        results[key] = measurements
    return results


def _overhead(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f} %"


def markdown_table(
    title: str,
    results: Sequence[Measurement[B]],
    n: int,
    *,
    cpu_per: str | None = None,
    second_baseline: str | None = None,
) -> str:
    """One scenario as a markdown table: time, items/s, ratio and overhead vs raw.

    The overheads compare medians: of the wall time, and of the client's CPU time
    (steadier on a shared machine, where other processes stretch the wall time), shown
    in seconds per run, or in µs per item with ``cpu_per`` (the item's name). With
    ``second_baseline`` (a contender's key) a last column gives the overheads (wall,
    CPU) against that contender too.
    """
    raw = next(m for m in results if m.contender.key == "raw")
    floor = next((m for m in results if m.contender.key == second_baseline), None)
    cpu_header = "client CPU s" if cpu_per is None else f"client CPU µs/{cpu_per}"
    header = f"| {title} | median s (min-max) | items/s | vs raw | overhead | {cpu_header} "
    header += "| CPU overhead |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if floor is not None:
        header += f" overhead vs {floor.contender.key} (wall, CPU) |"
        rule += "---:|"
    lines = [header, rule]
    for m in results:
        cpu = f"{m.median_cpu:.3f}" if cpu_per is None else f"{m.median_cpu / n * 1e6:.0f}"
        line = (
            f"| {m.contender.label} | {m.median:.3f} ({min(m.times):.3f}-{max(m.times):.3f}) "
            f"| {n / m.median:,.0f} | {raw.median / m.median:.2f}x "
            f"| {'-' if m is raw else _overhead(m.median, raw.median)} "
            f"| {cpu} | {'-' if m is raw else _overhead(m.median_cpu, raw.median_cpu)} |"
        )
        if floor is not None:
            below = (
                "-"
                if m is raw or m is floor
                else f"{_overhead(m.median, floor.median)}, "
                f"{_overhead(m.median_cpu, floor.median_cpu)}"
            )
            line += f" {below} |"
        lines.append(line)
    return "\n".join(lines)


def parse_arguments(
    doc: str | None,
    argv: Sequence[str] | None,
    scenarios: Collection[str],
    *,
    items: str,
    size: tuple[str, str],
) -> argparse.Namespace:
    """Parse ``--n`` (``items`` per run), ``--repeat``, the batch-size option ``size``
    (its name and help), ``--in-flight`` and ``--only`` (one of ``scenarios``)."""
    size_option, size_help = size
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--n", type=int, default=10_000, help=f"{items} per run (default 10k)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(size_option, type=int, default=100, help=size_help)
    parser.add_argument("--in-flight", type=int, default=100, help="K: sink window (100)")
    parser.add_argument("--only", action="append", choices=sorted(scenarios))
    args = parser.parse_args(argv)
    size_value: int = getattr(args, size_option.removeprefix("--").replace("-", "_"))
    if args.n < 2 or args.repeat < 1 or size_value < 1 or args.in_flight < 1:
        parser.error(f"--n >= 2, --repeat, {size_option} and --in-flight >= 1")
    return args


def print_report(
    heading: str,
    libraries: str,
    scenarios: Mapping[str, Scenario[B]],
    results: Mapping[str, Sequence[Measurement[B]]],
    n: int,
    repeat: int,
    *,
    cpu_per: str | None = None,
    second_baseline: str | None = None,
) -> None:
    """Print the heading, the machine and ``libraries`` lines, then a table per scenario."""
    print(heading)
    print(machine_summary())
    print(libraries)
    print(f"One warm-up round, then the median of {repeat} interleaved rounds.")
    print()
    for key, measurements in results.items():
        title = scenarios[key].title
        print(
            markdown_table(title, measurements, n, cpu_per=cpu_per, second_baseline=second_baseline)
        )
        print(flush=True)


def run_and_report(
    server: Callable[[], LoopbackServer],
    measure: Callable[[str, argparse.Namespace], Coroutine[Any, Any, Results[B]]],
    args: argparse.Namespace,
    scenarios: Mapping[str, Scenario[B]],
    heading: str,
    libraries: str,
    *,
    cpu_per: str | None = None,
    second_baseline: str | None = None,
) -> int:
    """Start a private server, run ``measure(url, args)`` in a new event loop, stop the
    server and print the report (see ``print_report``); the exit status, 0.

    If the server cannot start here, print ``skipped: ...`` instead.
    """
    try:
        started = server()
    except ServerUnavailable as missing:
        print(f"skipped: {missing}")
        return 0
    with started:
        results = asyncio.run(measure(started.url, args))
    print_report(
        heading,
        libraries,
        scenarios,
        results,
        args.n,
        args.repeat,
        cpu_per=cpu_per,
        second_baseline=second_baseline,
    )
    return 0
