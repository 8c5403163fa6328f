"""http_stream / http_lines against a real uvicorn on 127.0.0.1, and RetryAfter end to end.

The server is a raw ASGI app (no framework) in a uvicorn thread. It counts, on its own
side, what the client made it do: the requests that arrived and when, the body bytes
whose ``send`` returned (uvicorn's ``send`` blocks while the socket does not drain,
so that count is what TCP let through), and the disconnects it observed.

Waits here are for a condition with a deadline (a real network has no virtual clock);
nothing asserts a duration except the Retry-After waits, whose lower bound is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import uvicorn

from reactive_bp import Flow, NonPositiveRequestError, RetryExhaustedError
from reactive_bp.abc import Publisher
from reactive_bp.connectors.http import (
    HTTPStatusError,
    RetryAfter,
    http_lines,
    http_stream,
    parse_retry_after,
)
from reactive_bp.testing import TestSubscriber
from spec_tck import PublisherVerification, RuleResult, TestEnvironment

pytestmark = pytest.mark.no_undeliverable

# Small kernel buffers on both ends, so "what TCP lets through" is small and measurable
# (Linux doubles the value asked for; loopback autotuning would otherwise allow MiBs).
_SOCKET_BUFFER = 64 * 1024
_BIG_CHUNK = 64 * 1024
_BIG_TOTAL = 48 * 1024 * 1024

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


# -- the server ---------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the server saw; written on the server's loop, read by the tests."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # path -> monotonic arrival times of its requests
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    # path -> body bytes whose send() returned
    sent: dict[str, int] = field(default_factory=dict)
    # paths whose client disconnected before the body was complete
    disconnected: set[str] = field(default_factory=set)

    def arrived(self, path: str) -> list[float]:
        with self.lock:
            return list(self.arrivals.get(path, ()))

    def sent_of(self, path: str) -> int:
        with self.lock:
            return self.sent.get(path, 0)

    def saw_disconnect(self, path: str) -> bool:
        with self.lock:
            return path in self.disconnected


async def _watch_disconnect(receive: Receive, state: ServerState, path: str) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            with state.lock:
                state.disconnected.add(path)
            return


def make_app(state: ServerState) -> Callable[[Scope, Receive, Send], Any]:
    """The test app. Routes (``key`` keeps the counters of one test apart):

    * ``/count/<key>?n=N``: N records of 4 bytes (``"%03d\\n"``), 256 per send; N may be
      2**63-1 (until the client goes away).
    * ``/text/<key>``: a fixed body with every kind of line ending.
    * ``/big/<key>``: ``_BIG_TOTAL`` bytes in ``_BIG_CHUNK`` sends, counted as they return.
    * ``/status/<key>?code=C&retry_after=V``: status C, optional Retry-After, a short body.
    * ``/flaky/<key>?fail=K&code=C&retry_after=V|&in=S``: the first K requests get C with
      ``Retry-After: V`` (or an HTTP-date S seconds ahead), later ones 200 ``b"ok"``.
    * ``/stall/<key>``: 200, ``b"first"``, then nothing until the client goes away.
    * ``/ping``: 200 ``b"pong"``.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        with state.lock:
            state.arrivals.setdefault(path, []).append(time.monotonic())
        route = path.split("/")[1]
        if route == "ping":
            await _respond(send, 200, b"pong")
        elif route == "count":
            await _count(send, receive, state, path, int(query["n"]))
        elif route == "text":
            await _respond(send, 200, TEXT_BODY, content_type=b"text/plain; charset=utf-8")
        elif route == "big":
            await _big(send, receive, state, path)
        elif route == "stall":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await _watch_disconnect(receive, state, path)
        elif route == "status":
            await _respond(send, int(query["code"]), b"no", retry_after=query.get("retry_after"))
        elif route == "flaky":
            with state.lock:
                seen = len(state.arrivals[path])
            if seen <= int(query["fail"]):
                if "in" in query:
                    when = time.time() + float(query["in"])
                    value = email.utils.formatdate(when, usegmt=True)
                else:
                    value = query.get("retry_after", "")
                await _respond(send, int(query.get("code", "429")), b"later", retry_after=value)
            else:
                await _respond(send, 200, b"ok")
        else:
            await _respond(send, 404, b"not found")

    return app


TEXT_BODY = b"first\nsecond\r\nthird\rfourth\n\nsixth, no newline at the end"


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    retry_after: str | None = None,
    content_type: bytes = b"application/octet-stream",
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _count(send: Send, receive: Receive, state: ServerState, path: str, n: int) -> None:
    watcher = asyncio.ensure_future(_watch_disconnect(receive, state, path))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        done = 0
        while done < n and not watcher.done():
            batch = min(n - done, 256)
            body = b"".join(b"%03d\n" % ((done + i) % 1000) for i in range(batch))
            await send({"type": "http.response.body", "body": body, "more_body": True})
            done += batch
            await asyncio.sleep(0)  # uvicorn's send need not yield: let the watcher run
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()


async def _big(send: Send, receive: Receive, state: ServerState, path: str) -> None:
    watcher = asyncio.ensure_future(_watch_disconnect(receive, state, path))
    chunk = b"x" * _BIG_CHUNK
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        sent = 0
        while sent < _BIG_TOTAL and not watcher.done():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
            with state.lock:
                state.sent[path] = sent
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        await asyncio.wait_for(asyncio.shield(watcher), 5.0)  # see the client go, if it does
    except TimeoutError:
        pass
    finally:
        watcher.cancel()


@dataclass
class Served:
    url: str
    state: ServerState


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The test app on an ephemeral 127.0.0.1 port, uvicorn in a thread of its own."""
    state = ServerState()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)  # accepted ones inherit
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(state), lifespan="off", log_level="warning", http="h11", loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-http-client", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", state)
    finally:
        server.should_exit = True
        thread.join(10.0)
        sock.close()


_keys = itertools.count()


def key() -> str:
    """A fresh path component: each test's counters on the server are its own."""
    return f"k{next(_keys)}"


def small_buffer_client(**kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)]
    )
    return httpx.AsyncClient(transport=transport, timeout=10.0, **kwargs)


async def until(ready: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def settled(read: Callable[[], int], quiet: float = 0.3, timeout: float = 10.0) -> int:
    """``read()`` once it stopped changing for ``quiet`` seconds (a stalled TCP stream)."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the server never stalled"
        await asyncio.sleep(0.02)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


@contextlib.asynccontextmanager
async def client_for(**kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0, **kwargs) as client:
        yield client


# -- Retry-After parsing --------------------------------------------------------------------


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("0", now) == 0.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    # The obsolete date formats RFC 9110 still asks recipients to accept.
    assert parse_retry_after("Tuesday, 14-Nov-23 22:13:50 GMT", now) == 30.0
    assert parse_retry_after("Tue Nov 14 22:13:50 2023", now) == 30.0
    for bad in (None, "", "soon", "-5", "nan", "inf", "1e999", "Mon, 99 Foo 2023"):
        assert parse_retry_after(bad, now) is None, bad


def test_status_error_carries_status_headers_and_wait() -> None:
    error = HTTPStatusError(503, {"Retry-After": "7"}, 7.0, method="GET", url="http://h/x")
    assert (error.status_code, error.retry_after, error.method) == (503, 7.0, "GET")
    assert "503" in str(error) and "GET http://h/x" in str(error)
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status_code, dict(copy.headers), copy.retry_after) == (
        503,
        {"Retry-After": "7"},
        7.0,
    )


# -- the body, paced by demand ------------------------------------------------------------------


def test_items_are_the_body_in_chunks_of_chunk_size(served: Served) -> None:
    async def main() -> list[bytes]:
        async with client_for() as client:
            url = f"{served.url}/count/{key()}?n=1000"
            return await http_stream(client, "GET", url, chunk_size=4).to_list_async()

    items = asyncio.run(main())
    assert items == [b"%03d\n" % (i % 1000) for i in range(1000)]


def test_chunks_are_chunk_size_bytes_the_last_one_shorter(served: Served) -> None:
    async def main() -> list[bytes]:
        async with client_for() as client:
            url = f"{served.url}/count/{key()}?n=10"  # 40 bytes
            return await http_stream(client, "GET", url, chunk_size=16).to_list_async()

    assert [len(c) for c in asyncio.run(main())] == [16, 16, 8]


def test_http_lines_split_as_httpx_aiter_lines_does(served: Served) -> None:
    async def main() -> tuple[list[str], list[str]]:
        async with client_for() as client:
            url = f"{served.url}/text/{key()}"
            ours = await http_lines(client, "GET", url).to_list_async()
            async with client.stream("GET", url) as response:
                theirs = [line async for line in response.aiter_lines()]
            return ours, theirs

    ours, theirs = asyncio.run(main())
    assert ours == theirs
    assert ours == ["first", "second", "third", "fourth", "", "sixth, no newline at the end"]


def test_the_request_is_sent_on_the_first_demand_not_at_subscribe(served: Served) -> None:
    path = f"/count/{key()}"

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber()
            http_stream(client, "GET", f"{served.url}{path}?n=3", chunk_size=4).subscribe(
                subscriber
            )
            # A full round trip on the same client and loop after the subscribe: had the
            # subscribe sent anything, the server would have seen it by now.
            await client.get(f"{served.url}/ping")
            for _ in range(20):
                await asyncio.sleep(0)
            assert served.state.arrived(path) == []
            subscriber.request(1)
            await until(lambda: len(subscriber.items) == 1, "the first item")
            assert len(served.state.arrived(path)) == 1
            subscriber.request(5)
            await until(lambda: subscriber.is_terminated, "the end")
            return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [b"000\n", b"001\n", b"002\n"] and subscriber.completed
    subscriber.assert_clean()


def test_demand_paces_the_body_and_tcp_pushes_back_on_the_server(served: Served) -> None:
    """The server's ``send`` stalls once the kernel buffers are full, and moves on demand.

    A client that read ahead (``aread()``, or a pump that ignores demand) would let the
    server send the whole 48 MiB; here it stalls within a few hundred KiB of what was
    requested, and requesting more moves it on by about as much.
    """
    path = f"/big/{key()}"
    chunk = _BIG_CHUNK
    # What may sit between the server's returned send() and the client's last read:
    # uvicorn's 64 KiB write buffer, both kernels' buffers (doubled by Linux, plus
    # per-packet overhead), httpx's one 64 KiB read, the chunk in flight.
    slack = 1024 * 1024

    async def main() -> tuple[int, int, int]:
        async with small_buffer_client() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber(4)
            flow = http_stream(client, "GET", f"{served.url}{path}", chunk_size=chunk)
            flow.subscribe(subscriber)
            await until(lambda: len(subscriber.items) == 4, "4 chunks")
            first = await settled(lambda: served.state.sent_of(path))
            subscriber.request(32)
            await until(lambda: len(subscriber.items) == 36, "36 chunks")
            second = await settled(lambda: served.state.sent_of(path))
            received = sum(map(len, subscriber.items))
            subscriber.cancel()
            await until(lambda: served.state.saw_disconnect(path), "the server to see the cancel")
            return first, second, received

    first, second, received = asyncio.run(main())
    assert received == 36 * chunk
    assert 4 * chunk <= first <= 4 * chunk + slack, first
    assert 36 * chunk <= second <= 36 * chunk + slack, second
    assert second - first >= 32 * chunk - slack  # demand, not time, moved the server on


def test_cancel_closes_the_connection_and_the_server_sees_a_disconnect(served: Served) -> None:
    path = f"/count/{key()}"

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber(2)
            url = f"{served.url}{path}?n={2**63 - 1}"  # endless
            http_stream(client, "GET", url, chunk_size=4).subscribe(subscriber)
            await until(lambda: len(subscriber.items) == 2, "2 items")
            await asyncio.to_thread(subscriber.cancel)  # from another thread
            await until(lambda: served.state.saw_disconnect(path), "the server to see it")
            subscriber.request(10)  # Rule 3.6: a no-op now
            for _ in range(20):
                await asyncio.sleep(0)
            return subscriber

    subscriber = asyncio.run(main())
    assert len(subscriber.items) == 2 and not subscriber.is_terminated
    subscriber.assert_clean()


def test_cancel_while_waiting_for_the_response_headers_sends_nothing_more(served: Served) -> None:
    path = f"/count/{key()}"

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber(1)
            http_stream(client, "GET", f"{served.url}{path}?n=5", chunk_size=4).subscribe(
                subscriber
            )
            subscriber.cancel()  # before the task even ran: no request at all
            await client.get(f"{served.url}/ping")
            for _ in range(20):
                await asyncio.sleep(0)
            return subscriber

    subscriber = asyncio.run(main())
    assert served.state.arrived(path) == []
    assert subscriber.items == [] and not subscriber.is_terminated


def test_non_2xx_is_on_error_before_any_item_with_retry_after(served: Served) -> None:
    async def main() -> tuple[TestSubscriber[bytes], TestSubscriber[str]]:
        async with client_for() as client:
            stream: TestSubscriber[bytes] = TestSubscriber(10)
            url = f"{served.url}/status/{key()}?code=503&retry_after=7"
            http_stream(client, "GET", url).subscribe(stream)
            lines: TestSubscriber[str] = TestSubscriber(10)
            http_lines(client, "GET", f"{served.url}/status/{key()}?code=404").subscribe(lines)
            await until(lambda: stream.is_terminated and lines.is_terminated, "errors")
            return stream, lines

    stream, lines = asyncio.run(main())
    assert stream.items == [] and len(stream.errors) == 1
    error = stream.errors[0]
    assert isinstance(error, HTTPStatusError)
    assert (error.status_code, error.retry_after, error.body) == (503, 7.0, b"no")
    assert error.headers["Retry-After"] == "7" and error.method == "GET"
    assert lines.items == [] and len(lines.errors) == 1
    error = lines.errors[0]
    assert isinstance(error, HTTPStatusError)
    assert (error.status_code, error.retry_after) == (404, None)


def test_a_transport_error_is_on_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber(1)
            http_stream(client, "GET", f"http://127.0.0.1:{port}/").subscribe(subscriber)
            await until(lambda: subscriber.is_terminated, "the error")
            return subscriber

    subscriber = asyncio.run(main())
    assert len(subscriber.errors) == 1
    assert isinstance(subscriber.errors[0], httpx.ConnectError)


def test_a_bad_request_before_any_demand_sends_nothing_rule_3_9(served: Served) -> None:
    path = f"/count/{key()}"

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber()
            http_stream(client, "GET", f"{served.url}{path}?n=5").subscribe(subscriber)
            subscriber.request(0)
            await until(lambda: subscriber.is_terminated, "the Rule 3.9 error")
            await client.get(f"{served.url}/ping")
            return subscriber

    subscriber = asyncio.run(main())
    assert len(subscriber.errors) == 1
    assert isinstance(subscriber.errors[0], NonPositiveRequestError)
    assert served.state.arrived(path) == []


def test_a_bad_request_mid_stream_ends_it_and_closes_the_response(served: Served) -> None:
    path = f"/count/{key()}"

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber(3)
            url = f"{served.url}{path}?n={2**63 - 1}"
            http_stream(client, "GET", url, chunk_size=4).subscribe(subscriber)
            await until(lambda: len(subscriber.items) == 3, "3 items")
            await asyncio.to_thread(subscriber.request, -1)
            await until(lambda: subscriber.is_terminated, "the Rule 3.9 error")
            await until(lambda: served.state.saw_disconnect(path), "the connection to close")
            return subscriber

    subscriber = asyncio.run(main())
    assert len(subscriber.items) == 3 and len(subscriber.errors) == 1
    assert isinstance(subscriber.errors[0], NonPositiveRequestError)
    subscriber.assert_clean()


def test_a_raising_on_next_becomes_on_error_and_closes_the_response(served: Served) -> None:
    path = f"/count/{key()}"

    class Boom(Exception):
        pass

    seen: list[bytes] = []
    errors: list[Exception] = []

    def on_next(item: bytes) -> None:
        seen.append(item)
        if len(seen) == 2:
            raise Boom("on_next")

    async def main() -> None:
        async with client_for() as client:
            url = f"{served.url}{path}?n={2**63 - 1}"
            http_stream(client, "GET", url, chunk_size=4).subscribe_with(
                on_next=on_next, on_error=errors.append
            )
            await until(lambda: bool(errors), "on_error")
            await until(lambda: served.state.saw_disconnect(path), "the connection to close")

    asyncio.run(main())
    assert len(seen) == 2 and len(errors) == 1 and isinstance(errors[0], Boom)


def test_a_bad_request_interrupts_a_read_the_server_stalls_rule_3_9(served: Served) -> None:
    """The server sends one chunk, then nothing: ``request(0)`` must not wait for more."""
    path = f"/stall/{key()}"

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:  # a 10 s read timeout: longer than `until`'s 5
            subscriber: TestSubscriber[bytes] = TestSubscriber(2)
            http_stream(client, "GET", f"{served.url}{path}", chunk_size=5).subscribe(subscriber)
            await until(lambda: len(subscriber.items) == 1, "the first chunk")
            await asyncio.to_thread(subscriber.request, 0)  # the task is reading
            await until(lambda: subscriber.is_terminated, "the Rule 3.9 error", timeout=5.0)
            await until(lambda: served.state.saw_disconnect(path), "the connection to close")
            return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [b"first"] and len(subscriber.errors) == 1
    assert isinstance(subscriber.errors[0], NonPositiveRequestError)
    subscriber.assert_clean()


def test_cancels_at_any_point_leave_the_client_pool_healthy(served: Served) -> None:
    """Cancels while connecting, mid-body and as the body ends never poison the pool.

    httpcore leaves a connection it was natively cancelled while acquiring in its pool
    for good (encode/httpcore#1093), and one natively cancelled while giving itself
    back stays counted as busy: with ``max_connections=2``, two such leaks make every
    later request fail with ``PoolTimeout``.
    """

    async def main() -> TestSubscriber[bytes]:
        limits = httpx.Limits(max_connections=2)
        timeout = httpx.Timeout(10.0, pool=2.0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            for run in range(120):
                path = f"/count/{key()}?n={3 if run % 2 else 2**63 - 1}"
                subscriber: TestSubscriber[bytes] = TestSubscriber()
                flow = http_stream(client, "GET", f"{served.url}{path}", chunk_size=4)
                flow.subscribe(subscriber)
                subscriber.request(1 + run % 3)
                for _ in range(run % 30):  # the task is this many steps into the exchange
                    await asyncio.sleep(0)
                subscriber.cancel()
                assert not subscriber.is_terminated
            healthy: TestSubscriber[bytes] = TestSubscriber(10)
            http_stream(client, "GET", f"{served.url}/ping").subscribe(healthy)
            await until(lambda: healthy.is_terminated, "the healthy request")
            return healthy

    healthy = asyncio.run(main())
    assert healthy.items == [b"pong"] and healthy.errors == []


class _CancelOnClose(httpx.AsyncByteStream):
    """A response body whose close cancels the subscriber: an error decided, then cancel."""

    def __init__(self, body: bytes, cancel: Callable[[], None], fail: bool = False) -> None:
        self.body = body
        self.cancel = cancel
        self.fail = fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.fail:
            self.cancel()  # then the read fails: a transport error that raced the cancel
            raise httpx.ReadError("reset")
        yield self.body

    async def aclose(self) -> None:
        self.cancel()


@pytest.mark.parametrize("fail", [False, True], ids=["503", "read-error"])
def test_an_error_that_races_a_cancel_is_dropped_quietly(fail: bool) -> None:
    """Neither signalled (Rule 3.7) nor reported: downstream is gone, it is no one's fault."""
    subscriber: TestSubscriber[bytes] = TestSubscriber()

    def handler(request: httpx.Request) -> httpx.Response:
        body = _CancelOnClose(b"busy", subscriber.cancel, fail)
        status = 200 if fail else 503
        return httpx.Response(status, headers={"Retry-After": "1"}, stream=body)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            http_stream(client, "GET", "http://test/").subscribe(subscriber)
            subscriber.request(1)
            await until(lambda: subscriber.cancelled, "the cancel")
            for _ in range(20):
                await asyncio.sleep(0)

    asyncio.run(main())  # the module's no_undeliverable mark fails a reported error
    assert subscriber.items == [] and not subscriber.is_terminated


def test_retry_of_a_flow_built_outside_the_loop_reuses_its_first_loop(served: Served) -> None:
    """A retry re-subscribes from a timer thread: the loop of the first subscription is kept."""
    path = f"/flaky/{key()}"
    client = httpx.AsyncClient(timeout=10.0)  # built, like the flow, before any loop runs
    # A wait above 0: a retry without one re-subscribes at once, on the loop.
    flow = http_stream(client, "GET", f"{served.url}{path}?fail=2&retry_after=0.2")

    async def main() -> list[bytes]:
        async with client:
            retried = flow.retry(3, backoff=RetryAfter(cap=5.0), retry_on=_retry_on_shed)
            return await retried.to_list_async()

    assert asyncio.run(main()) == [b"ok"]
    assert len(served.state.arrived(path)) == 3


def test_subscribed_without_a_loop_is_on_error() -> None:
    flow = http_stream(httpx.AsyncClient(), "GET", "http://127.0.0.1:9/")  # no loop here
    subscriber: TestSubscriber[bytes] = TestSubscriber(1)
    flow.subscribe(subscriber)
    assert len(subscriber.errors) == 1 and isinstance(subscriber.errors[0], RuntimeError)


def test_arguments_are_checked_when_the_flow_is_built() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError):
        http_stream(client, "GET", "http://h/", chunk_size=0)
    with pytest.raises(TypeError):
        http_stream(client, "", "http://h/")
    with pytest.raises(TypeError):
        http_lines(client, "GET", None)  # type: ignore[arg-type]


def test_request_and_cancel_from_many_threads_keep_the_rules(served: Served) -> None:
    """Demand from 4 threads at once: exactly what was asked, in order, no overlap."""

    async def main() -> TestSubscriber[bytes]:
        async with client_for() as client:
            subscriber: TestSubscriber[bytes] = TestSubscriber()
            url = f"{served.url}/count/{key()}?n=2000"
            http_stream(client, "GET", url, chunk_size=4).subscribe(subscriber)

            def ask() -> None:
                for _ in range(100):
                    subscriber.request(1)

            await asyncio.gather(*(asyncio.to_thread(ask) for _ in range(4)))
            await until(lambda: len(subscriber.items) == 400, "400 items")
            for _ in range(50):
                await asyncio.sleep(0)
            assert len(subscriber.items) == 400  # Rule 1.1: not one more
            subscriber.request(2**63 - 1)
            await until(lambda: subscriber.is_terminated, "the end")
            return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [b"%03d\n" % (i % 1000) for i in range(2000)]
    subscriber.assert_clean()


# -- RetryAfter against the server --------------------------------------------------------------


def _retry_on_shed(error: Exception) -> bool:
    return isinstance(error, HTTPStatusError) and error.status_code in (429, 503)


def test_retry_after_seconds_waits_the_stated_time_then_succeeds(served: Served) -> None:
    path = f"/flaky/{key()}"

    async def main() -> list[bytes]:
        async with client_for() as client:
            flow = http_stream(client, "GET", f"{served.url}{path}?fail=1&retry_after=1")
            return await flow.retry(
                3, backoff=RetryAfter(cap=5.0), retry_on=_retry_on_shed
            ).to_list_async()

    assert asyncio.run(main()) == [b"ok"]
    first, second = served.state.arrived(path)
    assert 0.95 <= second - first <= 4.0, second - first


def test_retry_after_http_date_waits_until_then(served: Served) -> None:
    path = f"/flaky/{key()}"

    async def main() -> list[bytes]:
        async with client_for() as client:
            # The date is 2 s ahead, rounded down to the second: a wait of (1, 2] s.
            flow = http_stream(client, "GET", f"{served.url}{path}?fail=1&code=503&in=2")
            return await flow.retry(
                3, backoff=RetryAfter(cap=5.0), retry_on=_retry_on_shed
            ).to_list_async()

    assert asyncio.run(main()) == [b"ok"]
    first, second = served.state.arrived(path)
    assert 0.95 <= second - first <= 4.0, second - first


def test_retry_after_is_capped_and_gives_up_after_max_attempts(served: Served) -> None:
    path = f"/flaky/{key()}"

    async def main() -> BaseException:
        async with client_for() as client:
            flow = http_stream(client, "GET", f"{served.url}{path}?fail=99&retry_after=3600")
            with pytest.raises(RetryExhaustedError) as caught:
                await flow.retry(
                    3, backoff=RetryAfter(cap=0.2), retry_on=_retry_on_shed
                ).to_list_async()
            return caught.value

    error = asyncio.run(main())
    assert isinstance(error.__cause__, HTTPStatusError)
    arrivals = served.state.arrived(path)
    assert len(arrivals) == 3  # bounded in count
    waits = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.15 <= w <= 3.0 for w in waits), waits  # the cap, not the hour asked for


def test_retry_after_also_reads_httpx_raise_for_status_errors(served: Served) -> None:
    path = f"/flaky/{key()}"

    async def fetch(client: httpx.AsyncClient) -> AsyncIterator[bytes]:
        response = await client.get(f"{served.url}{path}?fail=1&retry_after=1")
        response.raise_for_status()  # plain httpx: its own HTTPStatusError
        yield response.content

    async def main() -> list[bytes]:
        async with client_for() as client:
            loop = asyncio.get_running_loop()  # a retry re-subscribes from a timer thread
            flow = Flow.defer(lambda: Flow.from_async_iterable(fetch(client), loop))
            return await flow.retry(3, backoff=RetryAfter(cap=5.0)).to_list_async()

    assert asyncio.run(main()) == [b"ok"]
    first, second = served.state.arrived(path)
    assert 0.95 <= second - first <= 4.0, second - first


# -- the compliance kit against the real server -----------------------------------------------


class HttpStreamVerification(PublisherVerification[bytes]):
    """``http_stream`` of ``/count`` with 4-byte chunks: exactly ``elements`` items."""

    asyncio = True

    def __init__(self, url: str, env: TestEnvironment, lines: bool = False) -> None:
        super().__init__(env)
        self.url = url
        self.lines = lines
        self.clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    def client(self) -> httpx.AsyncClient:
        # One client per check's loop (the kit gives every check a loop of its own); no
        # keep-alive, so nothing is left open when the check's loop goes away.
        loop = asyncio.get_running_loop()
        client = self.clients.get(loop)
        if client is None:
            limits = httpx.Limits(max_keepalive_connections=0)
            client = self.clients[loop] = httpx.AsyncClient(timeout=10.0, limits=limits)
        return client

    def create_publisher(self, elements: int) -> Publisher[bytes]:
        url = f"{self.url}/count/{key()}?n={elements}"
        if self.lines:
            return http_lines(self.client(), "GET", url)  # type: ignore[return-value]
        return http_stream(self.client(), "GET", url, chunk_size=4)

    def create_failed_publisher(self) -> Publisher[bytes] | None:
        # The kit's failed publisher signals on_error with no demand at all: that is the
        # stream's rejection at subscribe (its event loop is gone). A non-2xx status is
        # known only once demand sent the request (tested above).
        loop = asyncio.new_event_loop()
        loop.close()
        return http_stream(self.client(), "GET", f"{self.url}/ping", loop=loop)

    def iterations_per_stochastic_test(self) -> int:
        return 10  # an HTTP request each

    def max_elements_from_publisher(self) -> int:
        return 2**63 - 2


def _no_failures(results: list[RuleResult]) -> None:
    bad = [r for r in results if r.status not in ("passed", "untested")]
    assert not bad, "\n".join(f"{r.id}: {r.status}: {r.message}" for r in bad)


def test_http_stream_passes_the_publisher_verification_against_uvicorn(served: Served) -> None:
    env = TestEnvironment(default_timeout_ms=500, gc_timeout_ms=500)
    results = HttpStreamVerification(served.url, env).run()
    assert len(results) > 30
    _no_failures(results)


def test_http_lines_passes_the_item_rules_against_uvicorn(served: Served) -> None:
    """``http_lines`` shares the subscription; these are the checks its items could break."""
    env = TestEnvironment(default_timeout_ms=500, gc_timeout_ms=500)
    rules = ["101", "102", "103", "105", "107", "309", "312", "313", "317"]
    results = HttpStreamVerification(served.url, env, lines=True).run(rules)
    assert len(results) > 10
    _no_failures(results)
