"""rsocket-py under the kit: a shape adapter for its publishers, and a loopback TCP pair.

rsocket-py's publishers follow the ``reactivestreams`` 0.1 classes it ships: the same
``subscribe``/``on_subscribe``/``request``/``cancel``/``on_error``/``on_complete`` as the
kit's, with one difference in shape: ``on_next(value, is_complete=False)``. The last item
may carry the completion (``is_complete=True``) instead of a separate ``on_complete()``.
``RSocketPublisher`` translates exactly that and nothing else, so that every rule the
kit checks is checked on rsocket-py's own behaviour.

The TCP publisher is a ``request_stream`` between two rsocket-py endpoints on 127.0.0.1:
a ``RSocketServer`` behind ``asyncio.start_server`` on an ephemeral port and one
``RSocketClient`` per publisher (so a request that breaks a connection, see the test
module, cannot disturb the next check). Both live on one event loop in a thread of their
own (``LoopThread``); rsocket-py is not thread-safe, so the adapter hands the kit's
``subscribe``/``request``/``cancel`` to that loop and waits for them, as the kit's own
asyncio driver does. Signals reach the kit on the loop thread, unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final, Generic, TypeVar

from rsocket.helpers import single_transport_provider
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_client import RSocketClient
from rsocket.rsocket_server import RSocketServer
from rsocket.streams.stream_from_async_generator import StreamFromAsyncGenerator
from rsocket.streams.stream_from_generator import StreamFromGenerator
from rsocket.transports.tcp import TransportTCP

from reactive_bp.abc import Subscriber

R = TypeVar("R")
T = TypeVar("T")

UNBOUNDED: Final = 2**63 - 1
FAIL: Final = b"fail"
_CALL_TIMEOUT_S: Final = 10.0

Call = Callable[[Callable[[], None]], None]


def _inline(fn: Callable[[], None]) -> None:
    fn()


# -- the shape adapter ------------------------------------------------------------------------


class RSocketPublisher(Generic[T]):
    """The kit's view of an rsocket-py publisher.

    Only translates ``on_next(value, is_complete=True)`` into ``on_next(value)`` followed
    by ``on_complete()``. Everything else passes through unchanged: ``subscribe(None)``
    reaches rsocket-py as ``None``, the subscription rsocket-py hands out is the one the kit
    calls (no validation, no serialization, no buffering), and every signal is forwarded on
    the thread it arrived on, in order, even one that breaks a rule.

    ``call`` runs ``subscribe``, ``request`` and ``cancel`` where rsocket-py needs them (the
    loopback's loop thread); by default inline.
    """

    def __init__(self, target: Any, call: Call = _inline) -> None:
        """Wrap the rsocket-py publisher ``target``."""
        self._target = target
        self._call = call

    def subscribe(self, subscriber: Subscriber[T]) -> None:
        """Subscribe ``subscriber`` (wrapped) to the rsocket-py publisher."""
        wrapped = None if subscriber is None else _ShapeSubscriber(subscriber, self._call)
        self._call(lambda: self._target.subscribe(wrapped))

    def __repr__(self) -> str:
        return f"RSocketPublisher({type(self._target).__name__})"


class _ShapeSubscriber(Generic[T]):
    """What rsocket-py calls; forwards to the kit's subscriber."""

    def __init__(self, target: Subscriber[T], call: Call) -> None:
        self._target = target
        self._call = call

    def on_subscribe(self, subscription: Any) -> None:
        forwarded = subscription
        if subscription is not None and self._call is not _inline:
            forwarded = _CalledSubscription(subscription, self._call)
        self._target.on_subscribe(forwarded)

    def on_next(self, value: T, is_complete: bool = False) -> None:
        self._target.on_next(value)
        if is_complete:
            self._target.on_complete()

    def on_error(self, exception: Exception) -> None:
        self._target.on_error(exception)

    def on_complete(self) -> None:
        self._target.on_complete()


class _CalledSubscription:
    """rsocket-py's subscription, its calls made through ``call`` (the loop thread)."""

    def __init__(self, target: Any, call: Call) -> None:
        self._target = target
        self._call = call

    def request(self, n: int) -> None:
        self._call(lambda: self._target.request(n))

    def cancel(self) -> None:
        self._call(self._target.cancel)


# -- rsocket-py's generator streams: exactly `elements` items, then completion -------------------


def _item(index: int) -> Payload:
    return Payload(str(index).encode())


def items(elements: int) -> Iterator[tuple[Payload | None, bool]]:
    """``elements`` payloads in rsocket-py's form: the last one flagged complete.

    An empty stream is ``(None, True)``, rsocket-py's "complete without an item";
    ``2**63 - 1`` never completes.
    """
    if elements == 0:
        yield None, True
        return
    indexes = itertools.count() if elements == UNBOUNDED else range(elements)
    for index in indexes:
        yield _item(index), index == elements - 1


async def async_items(elements: int) -> Any:
    """``items(elements)`` as an async generator (for ``StreamFromAsyncGenerator``)."""
    for entry in items(elements):
        yield entry


def stream_from_generator(elements: int) -> StreamFromGenerator:
    """rsocket-py's ``StreamFromGenerator`` over ``items(elements)`` (needs a running loop)."""
    return StreamFromGenerator(lambda: items(elements))


def stream_from_async_generator(elements: int) -> StreamFromAsyncGenerator:
    """rsocket-py's ``StreamFromAsyncGenerator`` over ``async_items(elements)``."""
    return StreamFromAsyncGenerator(lambda: async_items(elements))


# -- a loop in a thread of its own ------------------------------------------------------------


class LoopThread:
    """An asyncio event loop running in a daemon thread, with blocking ways in."""

    def __init__(self, name: str) -> None:
        """Create (not start) the loop thread."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT_S)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop and wait; inline when already on the loop thread."""
        if threading.current_thread() is self._thread:
            fn()
            return
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(None)

        self.loop.call_soon_threadsafe(run)
        future.result(_CALL_TIMEOUT_S)

    def stop(self) -> None:
        """Cancel what still runs on the loop, stop it, join the thread, close the loop."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            self.run(cancel_all())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(_CALL_TIMEOUT_S)
        self.loop.close()


# -- the loopback: a server and its clients on 127.0.0.1 --------------------------------------


class _StreamHandler(BaseRequestHandler):  # type: ignore[misc]  # rsocket-py is untyped
    """The server's request_stream: ``b"<n>"`` streams n items; ``b"fail"`` fails."""

    async def request_stream(self, payload: Payload) -> StreamFromGenerator:
        if payload.data == FAIL:
            raise RuntimeError("spec_tck: the failed publisher of the rsocket loopback")
        return stream_from_generator(int(payload.data))


class RSocketLoopback:
    """An rsocket-py server on 127.0.0.1 (ephemeral port) and a client per publisher."""

    def __init__(self) -> None:
        """Create (not start) the loopback."""
        self.net = LoopThread("rsocket-loopback")
        self.port = 0
        self._server: asyncio.Server | None = None
        # Touched on the loop thread only.
        self._sessions: list[RSocketServer] = []
        self._clients: list[RSocketClient] = []

    def start(self) -> None:
        """Start the loop thread and the listening server."""
        self.net.start()
        self.net.run(self._listen())

    async def _listen(self) -> None:
        def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            transport = TransportTCP(reader, writer)
            self._sessions.append(RSocketServer(transport, handler_factory=_StreamHandler))

        self._server = await asyncio.start_server(session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connect(self) -> RSocketClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = RSocketClient(single_transport_provider(TransportTCP(reader, writer)))
        await client.connect()
        self._clients.append(client)
        return client

    def stream(self, data: bytes) -> RSocketPublisher[Payload]:
        """A ``request_stream(Payload(data))`` publisher on a new connection."""

        async def open_stream() -> Any:
            client = await self._connect()
            return client.request_stream(Payload(data))

        return RSocketPublisher(self.net.run(open_stream()), call=self.net.call)

    async def _close_connections(self) -> None:
        clients, self._clients = self._clients, []
        sessions, self._sessions = self._sessions, []
        for endpoint in [*clients, *sessions]:
            await endpoint.close()

    def close_connections(self) -> None:
        """Close every connection opened so far (clients and their server sessions)."""
        self.net.run(self._close_connections())

    def stop(self) -> None:
        """Close every connection and the server, then stop the loop thread."""

        async def close() -> None:
            await self._close_connections()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        try:
            if self._server is not None:
                self.net.run(close())
        finally:
            self.net.stop()
