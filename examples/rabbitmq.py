"""RabbitMQ in and out, paced by demand: a slow consumer never floods the client.

A private RabbitMQ node (Debian's ``rabbitmq-server``) runs on free loopback ports. A
producer flow publishes orders with ``rabbitmq.sink``: each one is emitted once the
broker confirmed it (publisher confirms), with at most 32 unconfirmed at a time. A slow
consumer then reads them with ``rabbitmq.source``: ``basic.qos(prefetch_count=20)``
bounds what the broker pushes, so the client holds 20 messages at most while the rest
of the backlog waits in the queue, and each order is acknowledged where its processing
ends: at-least-once. The source completes once the queue is drained
(``complete_when_drained``), so the example ends by itself.
"""

# supports: --quick

from __future__ import annotations

import asyncio
import json
import os
import sys

import aio_pika

from reactive_bp import Flow
from reactive_bp.connectors import Message, rabbitmq
from reactive_bp.testing.servers import RabbitMQServer, ServerUnavailable

PREFETCH = 20
WORKERS = 4


def encode(order: dict[str, int]) -> bytes:
    return json.dumps(order).encode()


def decode(data: bytes) -> dict[str, int]:
    order: dict[str, int] = json.loads(data)
    return order


async def main(url: str, orders: int) -> None:
    admin = await aio_pika.connect(url)
    channel = await admin.channel()
    await channel.declare_queue("orders", durable=True)

    # Producer: each order is emitted once the broker confirmed it (basic.ack).
    published = await (
        Flow.range(0, orders)
        .map(lambda i: {"id": i, "cents": 100 + i % 900})
        .pipe(rabbitmq.sink(url, "orders", encode=encode, max_in_flight=32))
        .to_list_async()
    )
    print(f"published {len(published)} orders, each confirmed by the broker")

    # Consumer: slow billing, 4 at a time, acking each order once it is billed.
    source = rabbitmq.source(
        url,
        "orders",
        decode=decode,
        prefetch=PREFETCH,
        max_batch=10,
        complete_when_drained=True,
    )
    waiting: list[int] = []
    total_cents = 0

    async def bill(message: Message[dict[str, int]]) -> int:
        nonlocal total_cents
        if message.value["id"] % 50 == 0:  # look at the broker's side now and then
            queue = await channel.declare_queue("orders", passive=True)
            waiting.append(queue.declaration_result.message_count or 0)
        await asyncio.sleep(0.002)  # the slow part: charging a card
        total_cents += message.value["cents"]
        await message.ack()
        return message.value["id"]

    billed = await source.map_async(bill, max_concurrency=WORKERS).to_list_async()
    assert sorted(billed) == list(range(orders))

    stats = source.stats
    print(f"billed {len(billed)} orders, {total_cents / 100:.2f} in total")
    print(
        f"client side: {stats.fetches} fetches, at most {stats.max_held} messages held "
        f"(prefetch={PREFETCH}), {stats.acked} acked"
    )
    print(f"broker side: up to {max(waiting)} orders waited in the queue meanwhile")
    assert stats.max_held <= PREFETCH
    await admin.close()


def run(quick: bool) -> int:
    try:
        server = RabbitMQServer()
    except ServerUnavailable as missing:
        print(f"skipped: {missing}")
        return 1 if os.environ.get("CI", "").lower() == "true" else 0
    with server:
        asyncio.run(main(server.url, 300 if quick else 2_000))
    return 0


if __name__ == "__main__":
    sys.exit(run("--quick" in sys.argv))
