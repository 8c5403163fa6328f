"""Throughput on the asyncio paths: ``aiter``, ``from_async_iterable``, ``from_queue``.

Each scenario sets reactive_bp next to what a user would write without it, on
the same job and in the same event loop:

* ``pipeline``: ``N`` ints through ``map(x + 1)`` -> ``filter(even)`` ->
  ``map(x * 2)``, consumed by ``async for``. Contenders: a hand-written chain of
  async generators (the baseline), aiostream's ``pipe.map``/``pipe.filter``,
  and ``Flow.from_iterable(...).map.filter.map`` read with ``aiter(256)``.
* ``async-source``: an async generator of ``N`` ints, summed. Contenders: the
  async generator read directly (the floor), the async generator behind one
  pass-through async-generator stage (the baseline), aiostream
  ``stream.iterate``, an ``asyncio.Queue(maxsize=256)`` between a producer task
  and the consumer, and ``Flow.from_async_iterable(agen).aiter(256)`` three
  ways: as a user writes it (consumer fusion: ``aiter`` iterates the source
  through one compiled async generator), behind ``Flow.defer`` (not fusable:
  the pump task and the ``aiter`` bridge, what every ``aiter`` cost before),
  and read by a subscriber with ``batch(256)`` (the pump, no ``aiter``).
* ``async-filter``: the same source through ``filter(even)``: an
  async-generator filter (the baseline), aiostream ``pipe.filter``, and
  ``Flow.from_async_iterable(agen).filter(even)`` the same three ways (fused
  into the source, and consumer-fused under ``aiter``; unfused behind
  ``defer``, where a rejected item still costs no ``request(1)`` thanks to
  ``try_on_next``; fused and pumped to a subscriber).
* ``queue``: a producer task puts ``N`` ints into an
  ``asyncio.Queue(maxsize=256)`` and then ``None``; read directly (the
  baseline) or with ``Flow.from_queue(queue).aiter(256)`` (consumer-fused).

Method (as ``run.py``): one process, one warm-up round, then ``--repeat``
interleaved rounds (default 5) in which every contender of a scenario runs
once, the starting contender rotating from round to round; the table shows the
median with the min-max spread and ratios (above 1.0x: faster than the
reference). Every run checks its sum.

Run: ``.venv/bin/python benchmarks/async_paths.py [--n N] [--repeat R]
[--only SCENARIO]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _machine import library_version, machine_summary

import reactive_bp
from reactive_bp import Flow, RequestPolicy

try:
    from aiostream import pipe as aio_pipe
    from aiostream import stream as aio_stream
except ImportError:  # aiostream is in the dev extra only
    aio_pipe = None  # type: ignore[assignment]
    aio_stream = None  # type: ignore[assignment]

__all__ = ["SCENARIOS", "Contender", "Scenario", "main"]

PREFETCH = 256


def _inc(x: int) -> int:
    return x + 1


def _is_even(x: int) -> bool:
    return x % 2 == 0


def _double(x: int) -> int:
    return x * 2


def _full_sum(n: int) -> int:
    """Sum of ``0..n-1``."""
    return n * (n - 1) // 2


def _even_sum(n: int) -> int:
    """Sum of the even numbers in ``0..n-1``."""
    k = (n - 1) // 2
    return k * (k + 1)


# -- hand-written async-generator stages -------------------------------------------------


async def _agen_range(n: int) -> AsyncIterator[int]:
    for x in range(n):
        yield x


async def _agen_map(source: AsyncIterable[int], mapper: Callable[[int], int]) -> AsyncIterator[int]:
    async for x in source:
        yield mapper(x)


async def _agen_filter(
    source: AsyncIterable[int], predicate: Callable[[int], bool]
) -> AsyncIterator[int]:
    async for x in source:
        if predicate(x):
            yield x


async def _agen_pass(source: AsyncIterable[int]) -> AsyncIterator[int]:
    async for x in source:
        yield x


async def _sum(source: AsyncIterable[int]) -> int:
    total = 0
    async for x in source:
        total += x
    return total


async def _sum_aiostream(stream: AsyncIterable[int]) -> int:
    total = 0
    async with stream.stream() as streamer:  # type: ignore[attr-defined]
        async for x in streamer:
            total += x
    return total


async def _sum_subscribed(flow: Flow[int]) -> int:
    """Sum with a subscriber requesting ``batch(256)``: the pump path, no ``aiter``."""
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    total = [0]

    def add(x: int) -> None:
        total[0] += x

    flow.subscribe_with(
        add,
        done.set_exception,
        lambda: done.set_result(total[0]),
        request=RequestPolicy.batch(PREFETCH),
    )
    return await done


# -- scenario: pipeline (map -> filter -> map) -------------------------------------------


async def _pipeline_agen(n: int) -> int:
    stages = _agen_map(_agen_filter(_agen_map(_agen_range(n), _inc), _is_even), _double)
    return await _sum(stages)


async def _pipeline_aiostream(n: int) -> int:
    assert aio_stream is not None and aio_pipe is not None
    # The async-generator source, as in the hand-written chain: aiostream's
    # iterate(range(n)) would add an asyncio.sleep(0) per item.
    xs = (
        aio_stream.iterate(_agen_range(n))
        | aio_pipe.map(_inc)  # type: ignore[arg-type]
        | aio_pipe.filter(_is_even)
        | aio_pipe.map(_double)  # type: ignore[arg-type]
    )
    return await _sum_aiostream(xs)


async def _pipeline_rbp(n: int) -> int:
    flow = Flow.from_iterable(range(n)).map(_inc).filter(_is_even).map(_double)
    return await _sum(flow.aiter(PREFETCH))


# -- scenario: async source ---------------------------------------------------------------


async def _source_direct(n: int) -> int:
    return await _sum(_agen_range(n))


async def _source_agen(n: int) -> int:
    return await _sum(_agen_pass(_agen_range(n)))


async def _source_aiostream(n: int) -> int:
    assert aio_stream is not None
    return await _sum_aiostream(aio_stream.iterate(_agen_range(n)))


async def _source_queue(n: int) -> int:
    channel: asyncio.Queue[int | None] = asyncio.Queue(maxsize=PREFETCH)

    async def produce() -> None:
        async for x in _agen_range(n):
            await channel.put(x)
        await channel.put(None)

    producer = asyncio.create_task(produce())
    total = 0
    while (x := await channel.get()) is not None:
        total += x
    await producer
    return total


async def _source_rbp(n: int) -> int:
    return await _sum(Flow.from_async_iterable(_agen_range(n)).aiter(PREFETCH))


async def _source_rbp_bridge(n: int) -> int:
    # Flow.defer hides the source from consumer fusion: the pump task and the bridge.
    flow = Flow.defer(lambda: Flow.from_async_iterable(_agen_range(n)))
    return await _sum(flow.aiter(PREFETCH))


async def _source_rbp_pump(n: int) -> int:
    return await _sum_subscribed(Flow.from_async_iterable(_agen_range(n)))


# -- scenario: async source -> filter -----------------------------------------------------


async def _filter_agen(n: int) -> int:
    return await _sum(_agen_filter(_agen_range(n), _is_even))


async def _filter_aiostream(n: int) -> int:
    assert aio_stream is not None and aio_pipe is not None
    return await _sum_aiostream(aio_stream.iterate(_agen_range(n)) | aio_pipe.filter(_is_even))


async def _filter_rbp(n: int) -> int:
    flow = Flow.from_async_iterable(_agen_range(n)).filter(_is_even)
    return await _sum(flow.aiter(PREFETCH))


async def _filter_rbp_bridge(n: int) -> int:
    # Unfused: the filter operator after the pump, then the bridge.
    flow = Flow.defer(lambda: Flow.from_async_iterable(_agen_range(n))).filter(_is_even)
    return await _sum(flow.aiter(PREFETCH))


async def _filter_rbp_pump(n: int) -> int:
    return await _sum_subscribed(Flow.from_async_iterable(_agen_range(n)).filter(_is_even))


# -- scenario: asyncio.Queue ----------------------------------------------------------------


def _queue_job(
    consume: Callable[[asyncio.Queue[int | None]], Awaitable[int]],
) -> Callable[[int], Awaitable[int]]:
    async def run(n: int) -> int:
        channel: asyncio.Queue[int | None] = asyncio.Queue(maxsize=PREFETCH)

        async def produce() -> None:
            for x in range(n):
                await channel.put(x)
            await channel.put(None)

        producer = asyncio.create_task(produce())
        total = await consume(channel)
        await producer
        return total

    return run


async def _queue_direct(channel: asyncio.Queue[int | None]) -> int:
    total = 0
    while (x := await channel.get()) is not None:
        total += x
    return total


async def _queue_rbp(channel: asyncio.Queue[int | None]) -> int:
    return await _sum(Flow.from_queue(channel).aiter(PREFETCH))


# -- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One way to do a scenario's job.

    Attributes:
        key: Short id.
        label: The row label in the table.
        run: Runs the job over ``n`` items and returns the sum.
    """

    key: str
    label: str
    run: Callable[[int], Awaitable[int]]


@dataclass(frozen=True)
class Scenario:
    """A job and the contenders that do it; ratios are relative to ``baseline``.

    Attributes:
        key: Short id, used by ``--only``.
        title: The heading above the scenario's table.
        expected: The sum every contender must return for ``n`` items.
        baseline: Key of the contender the "vs" column divides by.
        contenders: The rows, in table order.
    """

    key: str
    title: str
    expected: Callable[[int], int]
    baseline: str
    contenders: tuple[Contender, ...]


def _with_aiostream(*contenders: Contender) -> tuple[Contender, ...]:
    return tuple(c for c in contenders if aio_stream is not None or "aiostream" not in c.key)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "pipeline",
        "map(x+1) -> filter(even) -> map(x*2), consumed with async for",
        lambda n: 2 * _even_sum(n + 1),
        "agen",
        _with_aiostream(
            Contender("agen", "hand-written async-generator chain", _pipeline_agen),
            Contender("aiostream", "aiostream iterate | map | filter | map", _pipeline_aiostream),
            Contender("rbp", "reactive_bp from_iterable.map.filter.map.aiter(256)", _pipeline_rbp),
        ),
    ),
    Scenario(
        "async-source",
        "an async generator of N ints, summed",
        _full_sum,
        "agen",
        _with_aiostream(
            Contender("direct", "async for over the async generator (floor)", _source_direct),
            Contender(
                "agen", "async generator + one pass-through async-generator stage", _source_agen
            ),
            Contender("aiostream", "aiostream stream.iterate(agen)", _source_aiostream),
            Contender("queue", "producer task + asyncio.Queue(maxsize=256)", _source_queue),
            Contender("rbp", "reactive_bp from_async_iterable(agen).aiter(256)", _source_rbp),
            Contender(
                "rbp-bridge",
                "reactive_bp, not consumer-fused: defer(from_async_iterable).aiter(256)",
                _source_rbp_bridge,
            ),
            Contender(
                "rbp-pump",
                "reactive_bp from_async_iterable(agen) -> subscriber, batch(256)",
                _source_rbp_pump,
            ),
        ),
    ),
    Scenario(
        "async-filter",
        "an async generator of N ints -> filter(even), summed",
        _even_sum,
        "agen",
        _with_aiostream(
            Contender("agen", "async-generator filter stage", _filter_agen),
            Contender("aiostream", "aiostream iterate(agen) | filter", _filter_aiostream),
            Contender(
                "rbp", "reactive_bp from_async_iterable(agen).filter.aiter(256)", _filter_rbp
            ),
            Contender(
                "rbp-bridge",
                "reactive_bp, unfused: defer(from_async_iterable).filter.aiter(256)",
                _filter_rbp_bridge,
            ),
            Contender(
                "rbp-pump",
                "reactive_bp from_async_iterable(agen).filter (fused) -> subscriber, batch(256)",
                _filter_rbp_pump,
            ),
        ),
    ),
    Scenario(
        "queue",
        "producer task -> asyncio.Queue(maxsize=256) -> consumer",
        _full_sum,
        "direct",
        (
            Contender("direct", "await queue.get() loop", _queue_job(_queue_direct)),
            Contender("rbp", "reactive_bp from_queue(queue).aiter(256)", _queue_job(_queue_rbp)),
        ),
    ),
)


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


async def _time_once(contender: Contender, n: int, expected: int) -> float:
    gc.collect()
    start = time.perf_counter()
    result = await contender.run(n)
    elapsed = time.perf_counter() - start
    if result != expected:
        raise SystemExit(f"{contender.key}: wrong sum {result} (expected {expected})")
    return elapsed


async def measure(scenario: Scenario, n: int, repeat: int) -> list[Measurement]:
    """Run one warm-up round, then ``repeat`` interleaved rounds with a rotating start.

    Args:
        scenario: The job and its contenders.
        n: Items per run.
        repeat: Timed rounds.

    Returns:
        One measurement per contender, in table order.
    """
    expected = scenario.expected(n)
    for contender in scenario.contenders:
        await _time_once(contender, n, expected)
    results = [Measurement(c) for c in scenario.contenders]
    for round_index in range(repeat):
        shift = round_index % len(results)
        for measurement in results[shift:] + results[:shift]:
            measurement.times.append(await _time_once(measurement.contender, n, expected))
    return results


def markdown_table(scenario: Scenario, results: Sequence[Measurement], n: int) -> str:
    """Return one scenario's results as a markdown table with ratios."""
    baseline = next(m for m in results if m.contender.key == scenario.baseline)
    aiostream_row = next((m for m in results if m.contender.key == "aiostream"), None)
    lines = [
        f"| {scenario.title} | median s (min-max) | items/s "
        f"| vs {scenario.baseline} | vs aiostream |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in results:
        vs_aiostream = "n/a" if aiostream_row is None else f"{aiostream_row.median / m.median:.2f}x"
        label = m.contender.label.replace("|", "\\|")  # a markdown cell
        lines.append(
            f"| {label} | {m.median:.3f} ({min(m.times):.3f}-{max(m.times):.3f}) "
            f"| {n / m.median:,.0f} | {baseline.median / m.median:.2f}x | {vs_aiostream} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios and print one table each; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="items per run (default 200k)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help="run only these scenarios (repeatable): " + ", ".join(s.key for s in SCENARIOS),
    )
    args = parser.parse_args(argv)
    if args.n < 2 or args.repeat < 1:
        parser.error("--n must be at least 2 and --repeat positive")
    scenarios = [s for s in SCENARIOS if not args.only or s.key in args.only]
    print(f"# asyncio paths: {args.n:,} ints per run")
    print(machine_summary())
    where = Path(reactive_bp.__file__).parent
    print(f"aiostream {library_version('aiostream')}; reactive_bp imported from {where}")
    print(f"One warm-up round, then the median of {args.repeat} interleaved rounds.")
    print(flush=True)
    for scenario in scenarios:
        results = asyncio.run(measure(scenario, args.n, args.repeat))
        print(markdown_table(scenario, results, args.n))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
