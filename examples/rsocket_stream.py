"""RSocket on loopback: ``request(n)`` crosses the connection as ``REQUEST_N`` frames.

A ``FlowRoutes`` server and an rsocket-py client run on one event loop over TCP on
127.0.0.1. The client's transport prints the demand frames it sends, the server's flow
records the ``request(n)`` calls it receives:

1. the demand mapping: downstream ``request(3)``, ``request(5)``, ``request(UNBOUNDED)``
   become ``REQUEST_STREAM n=3``, ``REQUEST_N 5``, ``REQUEST_N 2147483647`` on the wire and
   ``request(3)``, ``request(5)``, ``request(UNBOUNDED)`` on the server's flow;
2. a slow consumer (``limit_rate(64)``): the server never produced more than the consumer
   asked for, whatever its speed;
3. rsocket-py's own requester, for contrast: it asks ``MAX_REQUEST_N`` at subscribe, so the
   server produces the whole stream before anyone requested anything.
"""

# supports: --quick

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from rsocket.extensions.helpers import composite, route
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.frame import FrameType
from rsocket.helpers import single_transport_provider
from rsocket.payload import Payload
from rsocket.rsocket_client import RSocketClient
from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from reactive_bp import Flow
from reactive_bp._core._demand import UNBOUNDED
from reactive_bp.connectors.rsocket import FlowRoutes, remote_flow
from reactive_bp.testing import TestSubscriber


class Server:
    """A ``FlowRoutes`` server whose ``numbers`` route records what its last stream was asked."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.produced = 0
        self.streams = 0
        self.routes = FlowRoutes()
        self.routes.add_stream("numbers", self.numbers, encode=lambda n: b"%d" % n)

    def numbers(self, request: Payload) -> Flow[int]:
        self.streams += 1
        self.requests.clear()
        self.produced = 0
        return (
            Flow.range(int(request.data))
            .do_on_request(self.requests.append)
            .do_on_next(lambda _n: self._count())
        )

    def _count(self) -> None:
        self.produced += 1


class ShowingTransport(TransportTCP):  # type: ignore[misc]  # rsocket-py is untyped
    """The client's TCP transport, printing the demand frames it sends."""

    show = False

    async def send_frame(self, frame: Any) -> None:
        if self.show and frame.frame_type == FrameType.REQUEST_STREAM:
            print(f"  -> REQUEST_STREAM initial request-n {frame.initial_request_n}")
        elif self.show and frame.frame_type == FrameType.REQUEST_N:
            print(f"  -> REQUEST_N {frame.request_n}")
        elif self.show and frame.frame_type == FrameType.CANCEL:
            print("  -> CANCEL")
        await super().send_frame(frame)


async def until(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def demand_mapping(client: RSocketClient, server: Server, transport: Any) -> None:
    print("1. demand mapping (client request -> frame -> server flow's request)")
    transport.show = True
    consumer: TestSubscriber[bytes] = TestSubscriber()
    remote_flow(client, "numbers", b"20").subscribe(consumer)
    for n, label in ((3, "3"), (5, "5"), (UNBOUNDED, "UNBOUNDED")):
        print(f"  request({label})")
        consumer.request(n)
        await until(lambda n=n: len(server.requests) and server.requests[-1] == n)
        await until(lambda: len(consumer.items) == min(20, server.produced))
        shown = "UNBOUNDED" if server.requests[-1] == UNBOUNDED else server.requests[-1]
        print(f"  <- server flow request({shown}); items so far {len(consumer.items)}")
    await until(lambda: consumer.completed)
    transport.show = False


async def slow_consumer(client: RSocketClient, server: Server, items: int) -> None:
    print(f"2. a slow consumer of {items:,} items through limit_rate(64)")
    ahead = 0
    received = 0
    started = time.monotonic()
    flow = remote_flow(client, "numbers", str(items).encode()).limit_rate(64)
    async for _ in flow.aiter(prefetch=1):
        received += 1
        ahead = max(ahead, server.produced - received)
        if received % 64 == 0:
            await asyncio.sleep(0.001)  # slow
    elapsed = time.monotonic() - started
    print(f"  received {received:,} in {elapsed:.1f} s ({received / elapsed:,.0f}/s)")
    print(f"  server produced at most {ahead} items ahead of the consumer (limit_rate: 64)")
    assert ahead <= 64 + 1


async def rsocket_py_requester(client: RSocketClient, server: Server, items: int) -> None:
    print("3. rsocket-py's own requester, subscribed and never asked for anything")

    class Silent:
        def on_subscribe(self, subscription: Any) -> None:
            pass  # never requests

        def on_next(self, value: Any, is_complete: bool = False) -> None:
            pass

        def on_error(self, error: Exception) -> None:
            pass

        def on_complete(self) -> None:
            pass

    requester = client.request_stream(Payload(str(items).encode(), composite(route("numbers"))))
    requester.subscribe(Silent())
    await until(lambda: server.produced == items)
    asked = "UNBOUNDED" if server.requests[0] == UNBOUNDED else server.requests[0]
    print(f"  the server's flow got request({asked}) and produced {server.produced:,} items")
    print("  nobody asked for: rsocket-py sends MAX_REQUEST_N at subscribe")
    streams = server.streams
    reactive: TestSubscriber[bytes] = TestSubscriber()
    remote_flow(client, "numbers", str(items).encode()).subscribe(reactive)
    # A full round trip on the same connection: a frame sent before it has arrived.
    await remote_flow(client, "numbers", b"1").to_list_async()
    opened = server.streams - streams - 1
    print(f"  remote_flow, subscribed and never asked: {opened} streams opened, 0 items")
    assert opened == 0 and reactive.items == []


async def main(quick: bool) -> None:
    # rsocket-py logs its own shutdown hiccups at WARNING; they are not this example's.
    logging.getLogger("pyrsocket").setLevel(logging.ERROR)
    server = Server()
    sessions: list[RSocketServer] = []

    def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = TransportTCP(reader, writer, read_buffer_size=65536)
        sessions.append(RSocketServer(transport, handler_factory=server.routes.handler))

    listener = await asyncio.start_server(session, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    transport = ShowingTransport(reader, writer, read_buffer_size=65536)
    client = RSocketClient(
        single_transport_provider(transport),
        metadata_encoding=WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA,
    )
    await client.connect()
    try:
        await demand_mapping(client, server, transport)
        await slow_consumer(client, server, 2_000 if quick else 20_000)
        await rsocket_py_requester(client, server, 200 if quick else 2_000)
    finally:
        await client.close()  # the server's session ends when its connection does
        listener.close()
        await listener.wait_closed()


if __name__ == "__main__":
    asyncio.run(main("--quick" in sys.argv))
