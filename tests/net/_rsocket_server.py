"""Child process for tests/net/test_rsocket.py: a ``FlowRoutes`` server that reports on stdout.

Run as ``python tests/net/_rsocket_server.py``. It listens on a free port of 127.0.0.1 and
prints one JSON object per line:

* ``{"port": P}`` once, when it accepts connections;
* ``{"produced": ..., "requested": ..., "rss": ..., "cancelled": ..., "streams": ...}``
  every ``REPORT_S`` and at once when a stream is cancelled or completes: the items all
  its flows produced, the sum of the ``request(n)`` they received (``UNBOUNDED`` counts as
  ``2**63 - 1``), its resident set size in bytes, and how many streams were cancelled.

Route ``numbers``: the request data is a decimal count; the flow is a synchronous
``Flow.range(count)``, so it produces inside each ``REQUEST_N`` as fast as demand allows.

It exits when its stdin closes (the parent went away) or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from reactive_bp import Flow
from reactive_bp._core._demand import add_cap
from reactive_bp.connectors.rsocket import FlowRoutes

REPORT_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE


class Counters:
    """What every stream's flow did (all on the server's loop: no lock needed)."""

    def __init__(self) -> None:
        self.produced = 0
        self.requested = 0
        self.cancelled = 0
        self.completed = 0
        self.streams = 0

    def report(self) -> None:
        line = {
            "produced": self.produced,
            "requested": self.requested,
            "rss": rss_bytes(),
            "cancelled": self.cancelled,
            "completed": self.completed,
            "streams": self.streams,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def routes(counters: Counters) -> FlowRoutes:
    served = FlowRoutes()

    def on_request(n: int) -> None:
        counters.requested = add_cap(counters.requested, n)

    def on_next(_item: int) -> None:
        counters.produced += 1

    def on_cancel() -> None:
        counters.cancelled += 1
        counters.report()

    def on_complete() -> None:
        counters.completed += 1
        counters.report()

    def opened(_subscription: object) -> None:
        counters.streams += 1

    @served.stream("numbers", encode=lambda n: b"%d" % n)
    def numbers(request: Any) -> Flow[int]:
        return (
            Flow.range(int(request.data))
            .do_on_subscribe(opened)
            .do_on_request(on_request)
            .do_on_next(on_next)
            .do_on_cancel(on_cancel)
            .do_on_complete(on_complete)
        )

    return served


async def main() -> None:
    logging.getLogger("pyrsocket").setLevel(logging.CRITICAL)
    loop = asyncio.get_running_loop()
    counters = Counters()
    handler = routes(counters).handler
    sessions: list[RSocketServer] = []

    def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = TransportTCP(reader, writer, read_buffer_size=65536)
        sessions.append(RSocketServer(transport, handler_factory=handler))

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    sys.stdout.write(json.dumps({"port": server.sockets[0].getsockname()[1]}) + "\n")
    sys.stdout.flush()

    async def reporter() -> None:
        while True:
            counters.report()
            await asyncio.sleep(REPORT_S)

    task = loop.create_task(reporter())
    await stop.wait()
    task.cancel()
    server.close()
    for endpoint in sessions:
        await endpoint.close()


if __name__ == "__main__":
    asyncio.run(main())
