"""Throughput of the RabbitMQ connector next to raw aio-pika loops doing the same job.

Against a private RabbitMQ node on loopback, one aio-pika connection shared by every
contender:

* ``source``: ``N`` messages (queued before each run, untimed) consumed and acked one
  by one, with ``basic.qos(prefetch_count=P)``. Baseline: aio-pika's own consume loop,
  ``async for message in queue.iterator()`` with ``await message.ack()`` for each.
  reactive_bp: ``rabbitmq.source(connection, queue, prefetch=P)`` (MANUAL acks)
  read with ``aiter(prefetch=P)`` calling ``message.ack()`` for each (the last
  settlement awaited at the end: acks go out in order), and the same source driven
  by a subscriber (``subscribe_with``, ``RequestPolicy.batch(P)``) acking in
  ``on_next``.
* ``sink``: ``N`` messages published with publisher confirms, at most ``K``
  unconfirmed, in order. Baseline: aio-pika ``default_exchange.publish`` on a
  confirm channel, a window of ``K`` tasks (a semaphore, a task per message).
  reactive_bp: ``Flow.from_iterable(...).pipe(rabbitmq.sink(connection, queue,
  max_in_flight=K))``, counted by a subscriber.

The connector talks to aio-pika's underlying aiormq channel per message (no
``IncomingMessage``/``aio_pika.Message`` wrapper), which the raw aio-pika loops pay
for. So each scenario also runs the same loop written directly against that aiormq
channel (``aiormq``): the last column is reactive_bp's cost over the layer it uses.
Most of the time of all of them is aiormq's frame handling and the broker, which
shares the machine's cores with the client.

Method (``_broker_bench.py``, as ``async_paths.py``): one warm-up round, then
``--repeat`` interleaved rounds (default 5), the starting contender rotating; the table
shows the median with the min-max spread, items/s and the ratio to the raw loop (above
1.0x: faster), and the overhead (how much longer reactive_bp takes than the raw loop;
the target is 15 % at most), and the client process's CPU time per message with its
overhead, steadier than wall time on a loaded machine. Every run checks the sum of
what it read or the count it published, and that the queue was left as expected.

Run: ``.venv/bin/python benchmarks/broker_rabbitmq.py [--n N] [--repeat R]
[--prefetch P] [--in-flight K] [--only source|sink]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq
import aiormq.abc
from _broker_bench import Contender, Results, Scenario, parse_arguments, run_and_report, run_rounds
from _machine import library_version
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from reactive_bp import Flow, RequestPolicy
from reactive_bp.connectors import Message, Settlement, rabbitmq
from reactive_bp.testing.servers import RabbitMQServer

__all__ = ["main", "measure"]

SOURCE_QUEUE = "bench-source"
SINK_QUEUE = "bench-sink"


@dataclass
class Bench:
    """What every run shares: the connection, a channel for setup, the sizes."""

    connection: aio_pika.abc.AbstractConnection
    admin: aio_pika.abc.AbstractChannel
    n: int
    prefetch: int
    in_flight: int

    async def fill(self) -> None:
        """Queue ``n`` messages (bodies ``0..n-1``) in bulk and wait until all are ready."""
        raw = cast(aiormq.Channel, await self.admin.get_underlay_channel())
        properties = spec.Basic.Properties(delivery_mode=1)
        for start in range(0, self.n, 1000):
            frames: list[Any] = []
            for i in range(start, min(start + 1000, self.n)):
                body = b"%d" % i
                frames += [
                    spec.Basic.Publish(exchange="", routing_key=SOURCE_QUEUE),
                    ContentHeader(body_size=len(body), properties=properties),
                    ContentBody(body),
                ]
            await raw.write_queue.put(aiormq.abc.ChannelFrame.marshall(raw.number, frames))
        while await self.ready(SOURCE_QUEUE) < self.n:
            await asyncio.sleep(0.02)

    async def ready(self, queue: str) -> int:
        declared = await self.admin.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


# -- source: consume N messages, ack each -------------------------------------------------------


async def _source_raw(bench: Bench) -> int:
    channel = await bench.connection.channel()
    try:
        await channel.set_qos(prefetch_count=bench.prefetch)
        queue = await channel.get_queue(SOURCE_QUEUE)
        total = read = 0
        async with queue.iterator() as messages:
            async for message in messages:
                total += int(message.body)
                await message.ack()
                read += 1
                if read == bench.n:
                    break
        return total
    finally:
        await channel.close()


async def _source_aiormq(bench: Bench) -> int:
    channel = await bench.connection.channel()
    try:
        await channel.set_qos(prefetch_count=bench.prefetch)
        raw = await channel.get_underlay_channel()
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        state = [0, 0]  # total, read

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            state[0] += int(message.body)
            tag = message.delivery_tag
            assert tag is not None
            await raw.basic_ack(tag)
            state[1] += 1
            if state[1] == bench.n and not done.done():
                done.set_result(state[0])

        consumer = await raw.basic_consume(SOURCE_QUEUE, on_message)
        total = await done
        assert consumer.consumer_tag is not None
        await raw.basic_cancel(consumer.consumer_tag)
        return total
    finally:
        await channel.close()


def _source(bench: Bench) -> Flow[Message[int]]:
    return rabbitmq.source(
        bench.connection, SOURCE_QUEUE, decode=int, prefetch=bench.prefetch, settle_timeout=0
    ).take(bench.n)


async def _source_rbp_aiter(bench: Bench) -> int:
    total = 0
    last: Settlement | None = None
    async for message in _source(bench).aiter(prefetch=bench.prefetch):
        total += message.value
        last = message.ack()
    if last is not None:
        await last  # acks go out in order: the last one written, all are
    return total


async def _source_rbp_subscriber(bench: Bench) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    total = [0]
    last: list[Settlement] = []

    def on_next(message: Message[int]) -> None:
        total[0] += message.value
        last[:] = [message.ack()]

    _source(bench).subscribe_with(
        on_next,
        done.set_exception,
        lambda: done.set_result(total[0]),
        request=RequestPolicy.batch(bench.prefetch),
    )
    result = await done
    for settlement in last:
        await settlement
    return result


# -- sink: publish N messages, at most K unconfirmed --------------------------------------------


def _payloads(n: int) -> list[bytes]:
    return [b"%d" % i for i in range(n)]


async def _sink_raw(bench: Bench) -> int:
    channel = await bench.connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = channel.default_exchange
        window = asyncio.Semaphore(bench.in_flight)
        tasks: list[asyncio.Task[Any]] = []
        for payload in _payloads(bench.n):
            await window.acquire()
            task = asyncio.create_task(
                exchange.publish(aio_pika.Message(payload), routing_key=SINK_QUEUE)
            )
            task.add_done_callback(lambda _: window.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        return len(tasks)
    finally:
        await channel.close()


async def _sink_aiormq(bench: Bench) -> int:
    channel = await bench.connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        raw = await channel.get_underlay_channel()
        window = asyncio.Semaphore(bench.in_flight)
        tasks: list[asyncio.Task[Any]] = []
        for payload in _payloads(bench.n):
            await window.acquire()
            task = asyncio.create_task(
                raw.basic_publish(
                    payload,
                    routing_key=SINK_QUEUE,
                    properties=spec.Basic.Properties(delivery_mode=2),
                    mandatory=True,
                )
            )
            task.add_done_callback(lambda _: window.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        return len(tasks)
    finally:
        await channel.close()


async def _sink_rbp(bench: Bench) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    count = [0]

    def on_next(_: bytes) -> None:
        count[0] += 1

    Flow.from_iterable(_payloads(bench.n)).pipe(
        rabbitmq.sink(bench.connection, SINK_QUEUE, max_in_flight=bench.in_flight)
    ).subscribe_with(on_next, done.set_exception, lambda: done.set_result(count[0]))
    return await done


# -- measurement ------------------------------------------------------------------------------


SCENARIOS: dict[str, Scenario[Bench]] = {
    "source": Scenario(
        "consume N messages (prefetch P), ack each",
        lambda n: n * (n - 1) // 2,
        (
            Contender("raw", "aio-pika: queue.iterator() + await ack()", _source_raw),
            Contender(
                "aiormq",
                "aiormq (under aio-pika): basic_consume callback + await basic_ack",
                _source_aiormq,
            ),
            Contender("rbp", "reactive_bp source(prefetch=P).aiter(P) + ack()", _source_rbp_aiter),
            Contender(
                "rbp-sub",
                "reactive_bp source(prefetch=P) -> subscriber batch(P), ack() in on_next",
                _source_rbp_subscriber,
            ),
        ),
    ),
    "sink": Scenario(
        "publish N messages with confirms, at most K unconfirmed",
        lambda n: n,
        (
            Contender("raw", "aio-pika: confirm channel, window of K publish tasks", _sink_raw),
            Contender(
                "aiormq", "aiormq (under aio-pika): window of K basic_publish tasks", _sink_aiormq
            ),
            Contender("rbp", "reactive_bp from_iterable.pipe(sink(max_in_flight=K))", _sink_rbp),
        ),
    ),
}


async def _fill_source_queue(bench: Bench, scenario: str, _: Contender[Bench]) -> None:
    if scenario == "source":
        await bench.fill()


async def _check_queues(bench: Bench, scenario: str, contender: Contender[Bench]) -> None:
    """Check that the run left the queue as expected; empty the sink's queue."""
    if scenario == "source":
        await asyncio.sleep(0.1)  # the consumer's channel closes in the background
        left = await bench.ready(SOURCE_QUEUE)
        if left:
            raise SystemExit(f"{contender.key}: {left} messages left unconsumed")
    else:
        published = await bench.ready(SINK_QUEUE)
        if published != bench.n:
            raise SystemExit(f"{contender.key}: {published} messages queued, expected {bench.n}")
        await (await bench.admin.get_queue(SINK_QUEUE)).purge()


async def measure(url: str, args: argparse.Namespace) -> Results[Bench]:
    """Warm up, then ``args.repeat`` interleaved rounds per scenario."""
    connection = await aio_pika.connect(url)
    try:
        admin = await connection.channel(publisher_confirms=False)  # fill() writes raw frames
        await admin.declare_queue(SOURCE_QUEUE)
        await admin.declare_queue(SINK_QUEUE)
        bench = Bench(connection, admin, args.n, args.prefetch, args.in_flight)
        return await run_rounds(
            bench,
            SCENARIOS,
            args.n,
            args.repeat,
            args.only,
            before_run=_fill_source_queue,
            after_run=_check_queues,
        )
    finally:
        await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Start a private RabbitMQ node, run the scenarios, print one table each."""
    args = parse_arguments(
        __doc__, argv, SCENARIOS, items="messages", size=("--prefetch", "P: prefetch (default 100)")
    )
    return run_and_report(
        RabbitMQServer,
        measure,
        args,
        SCENARIOS,
        f"# RabbitMQ connector: {args.n:,} messages per run",
        f"aio-pika {library_version('aio-pika')}, aiormq {library_version('aiormq')}; "
        f"P={args.prefetch}, K={args.in_flight}",
        cpu_per="msg",
        second_baseline="aiormq",
    )


if __name__ == "__main__":
    sys.exit(main())
