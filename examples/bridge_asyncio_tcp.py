"""An asyncio TCP producer on loopback, consumed with demand through ``async for``.

The server writes lines as fast as the socket lets it. The client turns the
``StreamReader`` into a flow with ``Flow.from_async_iterable``: a line is read
from the socket only when downstream asked for one, so the kernel's socket
buffers fill up and TCP flow control slows the server down. Nothing piles up
in Python memory.
"""

# supports: --quick

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from reactive_bp import Flow

PAD = "x" * 1000  # ~1 KB lines, so the backlog is visible in bytes


async def serve(lines: int) -> tuple[asyncio.Server, int, list[int]]:
    written = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(lines):
            writer.write(f"reading {i} {PAD}\n".encode())
            written[0] = i + 1
            await writer.drain()  # the server is held back when the client does not read
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, written


async def read_lines(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    while line := await reader.readline():
        yield line.decode().rstrip()


async def main(quick: bool) -> None:
    lines = 4_000 if quick else 40_000
    server, port, written = await serve(lines)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = 0
    max_ahead = 0
    flow = Flow.from_async_iterable(read_lines(reader)).map(lambda line: int(line.split()[1]))
    async for number in flow.aiter(prefetch=32):
        assert number == received
        received += 1
        max_ahead = max(max_ahead, written[0] - received)
        if received % 100 == 0:
            await asyncio.sleep(0.001)  # a slow consumer
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    print(f"received {received} lines of ~1 KB; the server was at most {max_ahead} lines ahead")
    print(f"(at most ~{max_ahead} KB, held in the kernel's socket buffers by TCP flow control;")
    print(" in this process at most 32 lines were requested ahead)")
    assert received == lines


if __name__ == "__main__":
    asyncio.run(main("--quick" in sys.argv))
