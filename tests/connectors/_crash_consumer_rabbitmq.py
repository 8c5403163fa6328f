"""A consumer that the crash test SIGKILLs mid-stream (run as a child process).

Usage: ``python _crash_consumer_rabbitmq.py URL QUEUE PREFETCH LOG``

Consumes ``QUEUE`` with ``rabbitmq.source`` (``AckMode.MANUAL``); for each
message it "processes" it by appending its body (an id) and its
``redelivered`` flag to ``LOG`` (flushed), then acks it. So every id in the log
was processed, and an id whose ack had not reached the broker when the process
died is redelivered to the next consumer: those are the only duplicates allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from reactive_bp.connectors import rabbitmq


async def consume(url: str, queue: str, prefetch: int, log_path: Path) -> None:
    flow = rabbitmq.source(url, queue, prefetch=prefetch, max_batch=prefetch // 2 or 1)
    with log_path.open("a", buffering=1) as log:
        async with contextlib.aclosing(flow.aiter(prefetch // 2 or 1)) as messages:
            async for message in messages:
                log.write(
                    f"{message.value.decode()} {int(bool(message.metadata['redelivered']))}\n"
                )
                log.flush()
                await message.ack()


def main(argv: list[str]) -> int:
    url, queue, prefetch, log_path = argv[1], argv[2], int(argv[3]), Path(argv[4])
    asyncio.run(consume(url, queue, prefetch, log_path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
