"""A consumer that the crash test SIGKILLs mid-stream (run as a child process).

Usage: ``python _crash_consumer_redis.py URL STREAM GROUP CONSUMER OUT_FILE BATCH``

Consumes STREAM as CONSUMER of GROUP with ``max_batch=BATCH``, keeping at most
BATCH messages requested and not yet acknowledged: it requests BATCH, then one
more each time a message was processed (its value appended to OUT_FILE, one
line, written through to the kernel) and its ``XACK`` confirmed. So at any
moment the messages it holds unacknowledged, the group's pending entries for
CONSUMER, number at most BATCH.
"""

from __future__ import annotations

import asyncio
import os
import sys

from reactive_bp.abc import Subscription
from reactive_bp.connectors import Message, redis_streams


class SlowWorker:
    """A subscriber that processes one message at a time on the loop, slowly."""

    def __init__(self, out: int, batch: int) -> None:
        self.out = out
        self.batch = batch
        self.queue: asyncio.Queue[Message[bytes] | None] = asyncio.Queue()
        self.subscription: Subscription | None = None

    def on_subscribe(self, subscription: Subscription) -> None:
        self.subscription = subscription
        subscription.request(self.batch)

    def on_next(self, message: Message[bytes]) -> None:
        self.queue.put_nowait(message)  # bounded by the demand: at most BATCH

    def on_error(self, error: Exception) -> None:
        print(f"consumer failed: {error!r}", file=sys.stderr)
        self.queue.put_nowait(None)

    def on_complete(self) -> None:
        self.queue.put_nowait(None)

    async def run(self) -> None:
        while (message := await self.queue.get()) is not None:
            os.write(self.out, message.value + b"\n")  # processed: survives SIGKILL
            await asyncio.sleep(0.002)  # slow work: the parent kills us mid-stream
            await message.ack()
            assert self.subscription is not None
            self.subscription.request(1)


async def main(url: str, stream: str, group: str, consumer: str, out_file: str, batch: int) -> None:
    out = os.open(out_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    worker = SlowWorker(out, batch)
    source = redis_streams.source(
        url, stream, group=group, consumer=consumer, start_id="0", max_batch=batch
    )
    source.subscribe(worker)
    await worker.run()


if __name__ == "__main__":
    url, stream, group, consumer, out_file, batch = sys.argv[1:7]
    asyncio.run(main(url, stream, group, consumer, out_file, int(batch)))
