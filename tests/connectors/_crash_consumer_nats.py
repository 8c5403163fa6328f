"""A JetStream consumer that test_nats.py SIGKILLs mid-stream (run as a child process).

Usage: ``python _crash_consumer_nats.py URL SUBJECT DURABLE OUT_FILE MAX_BATCH ACK_WAIT``

It consumes ``SUBJECT`` through ``reactive_bp.connectors.nats.source`` (durable
consumer ``DURABLE``, manual acks confirmed by the server) slowly, and appends to
``OUT_FILE``, unbuffered, ``P <id>`` when it processed a message and ``A <id>`` once
the server confirmed that message's ack. It never ends by itself: the parent kills it.
"""

from __future__ import annotations

import asyncio
import os
import sys

from reactive_bp.connectors import nats as jetstream


async def consume(url: str, subject: str, durable: str, out: int, batch: int, wait: float) -> None:
    flow = jetstream.source(
        url,
        subject,
        durable=durable,
        decode=lambda data: data.decode(),
        max_batch=batch,
        ack_wait=wait,
        confirm_acks=True,
    )
    async for message in flow.aiter(prefetch=batch):
        os.write(out, f"P {message.value}\n".encode())
        await asyncio.sleep(0.002)  # a slow consumer
        await message.ack()
        os.write(out, f"A {message.value}\n".encode())


def main() -> None:
    url, subject, durable, out_path, batch, wait = sys.argv[1:7]
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(out, b"started\n")
    asyncio.run(consume(url, subject, durable, out, int(batch), float(wait)))


if __name__ == "__main__":
    main()
