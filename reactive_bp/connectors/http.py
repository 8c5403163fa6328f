"""HTTP client streams paced by demand, and a retry policy that honours ``Retry-After``.

Needs the ``http`` extra (``pip install 'reactive-bp[http]'``, i.e. ``httpx``). This
module never imports httpx itself: ``http_stream`` and ``http_lines`` take the
``httpx.AsyncClient`` you made, and ``RetryAfter`` and ``HTTPStatusError`` work without
httpx installed.

How demand maps onto HTTP:

=============================  ===========================================================
downstream                     HTTP / TCP
=============================  ===========================================================
first ``request(n)``           the request is sent (``client.stream(method, url, ...)``)
each requested item            one body chunk read (``chunk_size`` bytes, or one line);
                               nothing is read while demand is 0, so the socket's receive
                               buffer fills, the TCP window closes and the server's
                               ``send`` blocks
``cancel()``                   the response is closed: an unread body closes the
                               connection, which the server sees as a disconnect
non-2xx status                 ``on_error(HTTPStatusError)`` before any item
transport error                ``on_error`` with httpx's own exception
=============================  ===========================================================

What the client holds beyond what was requested is bounded by one network read (httpx
re-chunks a read of up to 64 KiB into ``chunk_size`` pieces, and a read can carry several
lines); the rest waits in the kernel's socket buffers, then on the server.

Rules, and where they hold:

* Rule 1.1: a batch reads at most the demand it took at its start, one item per read.
* Rule 1.3: every signal comes from the one task of the subscription, on the loop the
  stream was built or subscribed on; ``request`` and ``cancel`` from any thread only
  record and wake it (``call_soon_threadsafe``).
* Rule 3.9: a bad request is recorded in the ``Terminal`` and signalled by the task,
  between two items, never overlapping an ``on_next``; a read waiting for the server
  is interrupted for it, as for a cancel; before the first demand it is signalled
  without sending the request.
* Rules 3.5, 3.7, 3.13: cancel records the end once, drops the subscriber and
  interrupts the task's read (an anyio cancel scope: httpcore shields its clean-up
  from those only), whose ``async with`` closes the response. Once cancelled, nothing reaches
  the subscriber nor the undeliverable hook (a status error or a transport error
  that raced the cancel is dropped: it is not the subscriber's concern).
* A task opening the response (connecting, sending, waiting for the headers) is never
  interrupted: httpcore can leave a connection it was cancelled while acquiring in its
  pool for good (encode/httpcore#1093), and enough of them make every later request
  fail with ``PoolTimeout``. A cancel then detaches downstream at once, and the task
  closes the response as soon as the open returns.

``RetryAfter`` is a policy for ``Flow.retry``: on a 429/503 (``HTTPStatusError``, or
httpx's own from ``raise_for_status()``) it waits what ``Retry-After`` says, capped;
without the header, and for every other error, it waits its ``Backoff``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import re
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from typing_extensions import override

from .._core._demand import add_cap, check_request, produced
from .._core._hooks import report_undeliverable
from .._core._operator import EmptySubscription
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from .._flow import Flow
from ..operators._retry import Backoff

if TYPE_CHECKING:
    import anyio
    import httpx

    from ..abc import Subscriber

__all__ = [
    "HTTPStatusError",
    "RetryAfter",
    "http_lines",
    "http_stream",
    "parse_retry_after",
]

T = TypeVar("T")

# How much of an error response's body is read (and kept on the error) before the
# response is closed: enough for a problem+json document, never a whole download.
_ERROR_BODY_LIMIT = 8192

# Delta-seconds: ASCII digits only (``str.isdigit`` and ``float`` also take other
# scripts' digits, ``1_000`` and exponents), with an optional fraction.
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


# -- Retry-After ------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    ``now`` (seconds since the epoch, default ``time.time()``) is what an HTTP-date is
    measured from; a date in the past is ``0.0``. A missing or malformed value, and
    anything that is not a ``str``, is ``None``. Delta-seconds are ASCII digits, with
    an optional fraction (RFC 9110 asks for an integer, some servers send ``1.5``);
    signs, exponents, ``_`` separators, other scripts' digits, and values too large
    to be finite are not accepted.

    Example:
        >>> parse_retry_after("120")
        120.0
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0)
        10.0
        >>> parse_retry_after("soon") is None
        True
    """
    if not isinstance(value, str):
        return None  # None, or a header value that is not text (bytes from a dict...)
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text) is not None:
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None  # 400 digits overflow to inf
    if text[0].isdigit():
        return None  # digits, but not delta-seconds ("1e3", "1_000", "5, 10"...)
    try:
        date = email.utils.parsedate_to_datetime(text)
        if date.tzinfo is None:
            date = date.replace(tzinfo=UTC)  # an HTTP-date is GMT
        moment = time.time() if now is None else now
        seconds = date.timestamp() - moment
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, whatever the case of its name (httpx's ``Headers`` or a dict)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, found in headers.items():
        if key.lower() == name:
            return found
    return None


class HTTPStatusError(Exception):
    """The server answered with a status outside 2xx; signalled before any item.

    Attributes:
        status_code: The response's status.
        headers: The response's headers (case-insensitive when they came from httpx).
        retry_after: Seconds the server asked to wait (``Retry-After``, delta-seconds or an
            HTTP-date measured from when the response arrived), or ``None``.
        method: The request's method.
        url: The request's URL.
        body: The start of the response body (at most 8 KiB).
    """

    def __init__(
        self,
        status_code: int,
        headers: Mapping[str, str],
        retry_after: float | None = None,
        *,
        method: str = "",
        url: str = "",
        body: bytes = b"",
    ) -> None:
        """Describe a non-2xx response; ``retry_after`` in seconds, if the server gave one."""
        self.status_code = status_code
        self.headers = headers
        self.retry_after = retry_after
        self.method = method
        self.url = url
        self.body = body
        where = f" for {method} {url}" if method or url else ""
        wait = "" if retry_after is None else f" (Retry-After: {retry_after:g} s)"
        super().__init__(f"HTTP {status_code}{where}{wait}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_status_error,
            (self.status_code, dict(self.headers), self.retry_after, self.method, self.url),
            {"body": self.body},
        )


def _rebuild_status_error(
    status_code: int,
    headers: dict[str, str],
    retry_after: float | None,
    method: str,
    url: str,
) -> HTTPStatusError:
    return HTTPStatusError(status_code, headers, retry_after, method=method, url=url)


def _status_and_headers(error: Exception) -> tuple[int, Mapping[str, str], float | None] | None:
    """The status, headers and stated wait of an HTTP error, ours or httpx's; else ``None``."""
    if isinstance(error, HTTPStatusError):
        return error.status_code, error.headers, error.retry_after
    httpx_module = sys.modules.get("httpx")  # never imported here: loaded if httpx raised it
    if httpx_module is not None and isinstance(error, httpx_module.HTTPStatusError):
        response = error.response
        return response.status_code, response.headers, None
    return None


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """A ``RetryPolicy`` for ``Flow.retry``: wait what a 429/503 response's ``Retry-After`` says.

    On an ``HTTPStatusError`` (or httpx's ``HTTPStatusError`` from
    ``raise_for_status()``) whose status is in ``statuses``, the wait is the header's
    value -- delta-seconds, or an HTTP-date measured from ``clock()`` when the retry is
    planned -- capped at ``cap``. Without a usable header, and for every other error,
    the wait is ``backoff.delay_for(attempt, error)`` (by default
    ``Backoff.exponential()``: 0.1 s doubling up to 10 s, full jitter).

    Which errors are retried at all is ``retry``'s ``retry_on``; this policy only says how
    long to wait. The stated wait is not jittered: a server that sheds load spreads its
    clients by the values it sends.

    Example:
        >>> policy = RetryAfter(cap=30.0)
        >>> policy.delay_for(0, HTTPStatusError(503, {"Retry-After": "5"}))
        5.0
        >>> policy.delay_for(0, HTTPStatusError(429, {"retry-after": "3600"}))
        30.0
        >>> fixed = RetryAfter(backoff=Backoff.fixed(0.5))
        >>> fixed.delay_for(0, HTTPStatusError(503, {})), fixed.delay_for(0, OSError())
        (0.5, 0.5)
    """

    cap: float = 60.0
    statuses: Collection[int] = (429, 503)
    backoff: Backoff = field(default_factory=Backoff.exponential)
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.cap, bool) or not isinstance(self.cap, int | float):
            raise TypeError(f"RetryAfter: cap must be a number, got {self.cap!r}")
        if not 0.0 <= self.cap < math.inf:
            raise ValueError(f"RetryAfter: cap must be finite and >= 0, got {self.cap!r}")
        if not isinstance(self.backoff, Backoff):
            raise TypeError(f"RetryAfter: backoff must be a Backoff, got {self.backoff!r}")

    def stated_wait(self, error: Exception) -> float | None:
        """The capped wait ``error``'s ``Retry-After`` asks for, or ``None`` if it asks none."""
        found = _status_and_headers(error)
        if found is None:
            return None
        status, headers, retry_after = found
        if status not in self.statuses:
            return None
        raw = _header(headers, "retry-after")
        seconds = parse_retry_after(raw, self.clock()) if raw is not None else retry_after
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return None  # no wait stated, or an ``HTTPStatusError`` built with a non-number
        if not math.isfinite(seconds):
            return None  # NaN or infinite: not a wait, fall back to the backoff
        return min(max(float(seconds), 0.0), float(self.cap))

    def delay_for(self, attempt: int, error: Exception) -> float:
        """The wait before retry ``attempt`` (0 for the first) after ``error``."""
        stated = self.stated_wait(error)
        return stated if stated is not None else self.backoff.delay_for(attempt, error)


# -- the streams --------------------------------------------------------------------------------


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _BodySubscription(Generic[T]):
    """One HTTP exchange whose body is read only as far as downstream requested.

    One task on the loop does everything that touches the response: it waits for the
    first demand, sends the request, checks the status, reads one item per unit of
    demand and closes the response (``async with``) before it signals the end. So the
    response is never used from two tasks, and no signal overlaps another (Rule 1.3).

    ``request`` and ``cancel`` may come from any thread. They change state under
    ``_lock`` and hand the task a wake-up through the loop: the first demand starts it,
    later demand wakes it only when it is parked waiting for demand (``_parked``), so
    a stream of ``request(1)`` from the task's own ``on_next`` costs no loop callback.
    """

    __slots__ = (
        "_actual",
        "_closing",
        "_lock",
        "_loop",
        "_parked",
        "_requested",
        "_scope",
        "_source",
        "_started",
        "_task",
        "_terminal",
        "_wakeup",
    )

    def __init__(
        self,
        actual: Subscriber[T],
        source: _HTTPFlow[T],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # Invariant: None once the stream ended or was cancelled (Rule 3.13). Set to
        # None only by cancel (any thread) or the task; read by the task per item.
        self._actual: Subscriber[T] | None = actual
        self._source = source
        self._loop = loop
        self._lock = threading.Lock()
        # Guarded by _lock. Invariant: only request() raises it and only the task
        # lowers it, by what it emitted, once per batch; a batch never emits more than
        # the value it read at its start (Rule 1.1).
        self._requested = 0
        # Guarded by _lock: the task was asked for (first demand or cancel); it is
        # never asked for twice.
        self._started = False
        # Guarded by _lock: the task waits on _wakeup for demand; whoever clears it
        # owes the task one _wakeup.set() on the loop.
        self._parked = False
        # How the stream ends: a bad request waits here for the task (Rule 3.9);
        # closed once the task delivered the ending or downstream cancelled.
        self._terminal = Terminal(source)
        # Loop-confined from here on.
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The anyio cancel scope around the task's reads; None while it opens the
        # response (encode/httpcore#1093) or closes it: nothing may interrupt those.
        self._scope: anyio.CancelScope | None = None
        # The task decided how the stream ends and is closing the response: a cancel
        # now must not interrupt that close.
        self._closing = False

    # -- Subscription (any thread) ----------------------------------------------------------

    def request(self, n: int) -> None:
        """Add ``n`` to the demand and start or wake the task (Rules 3.8, 3.9, 3.17)."""
        error = check_request(n)
        terminal = self._terminal
        with self._lock:
            if terminal.is_closed:
                return  # Rule 3.6
            if error is None:
                self._requested = add_cap(self._requested, n)
            else:
                terminal.fail(error, eager=True, quiet=True)  # signalled by the task
            if not self._started:
                self._started = True
                action: Callable[[], None] = self._start
            elif self._parked:
                self._parked = False
                action = self._wakeup.set
            elif error is not None:
                # The task may wait on a read for as long as the server is silent:
                # interrupt it as cancel does; it then delivers the error (Rule 3.9).
                action = self._interrupt
            else:
                return  # the running task takes the new demand at its next batch
        if _running_loop() is self._loop:
            action()
            return
        try:
            self._loop.call_soon_threadsafe(action)
        except RuntimeError as closed:  # the loop is closed: no task can ever signal
            self._end_off_loop(closed)

    def cancel(self) -> None:
        """Stop: no more signals, the response is closed (Rules 3.5, 3.7, 3.13)."""
        if not self._terminal.cancel():
            return
        with self._lock:
            self._actual = None
            started, self._started = self._started, True  # nothing starts after this
        if not started:
            return
        if _running_loop() is self._loop:
            self._interrupt()
            return
        # A closed loop raises: its tasks are gone, and with them the response.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._interrupt)

    # -- on the loop ------------------------------------------------------------------------

    def _start(self) -> None:
        if self._terminal.is_closed:
            return  # cancelled before the task could start: nothing was sent
        self._task = self._loop.create_task(self._run(), name=repr(self._source))

    def _interrupt(self) -> None:
        """Make the task look at the state now, for a cancel or a bad request (on the loop).

        A task waiting for demand is woken. A task reading the body (or an error
        status's body) has its read cancelled through an anyio cancel scope, never
        ``Task.cancel()``: httpcore shields its own clean-up (giving the connection
        back to the pool) from anyio cancellation only, so a native cancel landing there
        would leave the connection counted as busy for good. A task opening the
        response has no scope: it looks at the state when the open returns.
        """
        self._wakeup.set()  # a stale wake-up is harmless: _demand re-checks and re-parks
        scope = self._scope
        if scope is not None and not self._closing:
            scope.cancel()

    async def _run(self) -> None:
        failure: Exception | None = None
        try:
            if await self._demand() > 0:  # else a bad request or a cancel came first
                async with self._source._open() as response:
                    failure = await self._read(response)
        except asyncio.CancelledError:
            # Not ours (ours are anyio's, caught by their scope): the loop is shutting
            # down; as the async sources do, nothing more is signalled on a dying loop.
            self._terminal.cancel()
            self._actual = None
            raise
        except Exception as error:  # transport errors, a raising on_next (Rule 2.13)
            failure = error
        self._end(failure)

    async def _read(self, response: httpx.Response) -> HTTPStatusError | None:
        """Relay the body, or describe an error status, until done or interrupted.

        Only this part can be interrupted (``_scope``): not the open before it
        (encode/httpcore#1093), nor the close after it.
        """
        import anyio  # httpx's own dependency: there whenever a response is

        if self._actual is None or self._terminal.ending is not None:
            self._closing = True  # cancelled or failed (Rule 3.9) while opening
            return None
        ok = 200 <= response.status_code < 300
        items = self._source._items(response) if ok else None
        failure: HTTPStatusError | None = None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                try:
                    if items is not None:
                        await self._relay(items)
                    else:
                        failure = await _status_error(response)
                finally:
                    self._scope = None
                    self._closing = True
        finally:
            if items is not None:
                await items.aclose()  # httpx's async generator, suspended or done
        return failure

    def _end(self, failure: Exception | None) -> None:
        """Deliver the ending once; one recorded first (a Rule 3.9 request) wins.

        After a cancel, ``failure`` is dropped quietly: a status or transport error
        that raced the cancel is no fault of the subscriber's, nor a Rule 1.7 breach.
        """
        terminal = self._terminal
        if (
            failure is not None
            and not terminal.fail(failure, eager=True, quiet=True)
            and not terminal.is_cancelled
        ):
            # Lost to the bad request recorded first (Rule 3.9): reported, not dropped.
            report_undeliverable(failure, f"{self._source!r}: after a bad request (Rule 3.9)")
        ending = terminal.finish()
        actual = self._actual
        self._actual = None  # Rule 3.13
        self._task = None
        if ending is None or actual is None:
            return  # cancelled
        if ending.error is None:
            signal_complete(actual, self._source)
        else:
            signal_error(actual, ending.error, self._source)

    def _end_off_loop(self, error: Exception) -> None:
        """The loop is closed: end the stream from the requesting thread (nothing else can)."""
        ending = self._terminal.finish(error)
        actual, self._actual = self._actual, None
        if ending is not None and actual is not None and ending.error is not None:
            signal_error(actual, ending.error, self._source)

    async def _demand(self) -> int:
        """The outstanding demand, once there is some; 0 once the stream is over."""
        terminal = self._terminal
        wakeup = self._wakeup
        while True:
            with self._lock:
                if self._actual is None or terminal.is_closed or terminal.ending is not None:
                    return 0
                n = self._requested
                if n:
                    return n
                self._parked = True
                wakeup.clear()
            await wakeup.wait()

    async def _relay(self, items: AsyncGenerator[T, None]) -> None:
        """Read and emit one item per unit of demand until the body ends or the stream stops."""
        terminal = self._terminal
        pull = items.__anext__
        while True:
            budget = await self._demand()
            if budget == 0:
                return
            emitted = 0  # Invariant: emitted <= budget <= _requested
            while emitted < budget:
                # Per item: a cancel (also one from inside on_next, which cannot cancel
                # this task) or a bad request (Rule 3.9) cuts in between two reads.
                if self._actual is None:
                    return
                if terminal.ending is not None:
                    break
                try:
                    item = await pull()
                except StopAsyncIteration:
                    return  # the body ended: _end completes, unless a Rule 3.9 error waits
                actual = self._actual
                if actual is None:
                    return  # cancelled while the read was in flight: drop it (Rule 3.6)
                try:
                    actual.on_next(item)  # raising: Rule 2.13, on_error via _run
                except Exception as fault:
                    if terminal.is_cancelled:  # it cancelled, then raised: _end drops errors
                        report_undeliverable(fault, f"{self._source!r}: on_next raised")
                        return
                    raise
                emitted += 1
            with self._lock:
                self._requested = produced(self._requested, emitted)

    def __repr__(self) -> str:
        state = "closed" if self._terminal.is_closed else "open"
        return f"<_BodySubscription {self._source!r} {state} requested={self._requested}>"


async def _status_error(response: httpx.Response) -> HTTPStatusError:
    """Describe a non-2xx response, reading at most ``_ERROR_BODY_LIMIT`` of its body."""
    retry_after = parse_retry_after(_header(response.headers, "retry-after"))
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break  # the rest is not read: closing the response drops the connection
    except Exception:  # the body is a courtesy; the status is the error
        pass
    request = response.request
    return HTTPStatusError(
        response.status_code,
        response.headers,
        retry_after,
        method=request.method,
        url=str(request.url),
        body=bytes(body[:_ERROR_BODY_LIMIT]),
    )


class _HTTPFlow(Flow[T]):
    """One HTTP request per subscriber; its body as items, read as demand allows."""

    __slots__ = (
        "_chunk_size",
        "_client",
        "_kwargs",
        "_lines",
        "_loop",
        "_loop_lock",
        "_method",
        "_url",
    )

    def __init__(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        chunk_size: int | None,
        loop: asyncio.AbstractEventLoop | None,
        kwargs: dict[str, Any],
    ) -> None:
        self._client = client
        self._method = method
        self._url = url
        self._chunk_size = chunk_size
        self._lines = chunk_size is None
        # The loop the client is used on: given, else the one running now, else the
        # one running at the first subscription, kept for the later ones (a retry
        # re-subscribes from a timer thread). Guarded by _loop_lock; set once.
        self._loop = loop if loop is not None else _running_loop()
        self._loop_lock = threading.Lock()
        self._kwargs = kwargs

    def _event_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop to run on; the first one seen running at a subscription is kept."""
        loop = self._loop
        if loop is not None:
            return loop
        running = _running_loop()
        if running is None:
            return None  # never subscribed on a loop yet
        with self._loop_lock:
            if self._loop is None:
                self._loop = running
            return self._loop

    def _open(self) -> Any:
        """``client.stream(...)``: sends the request on enter, closes the response on exit."""
        return self._client.stream(self._method, self._url, **self._kwargs)

    def _items(self, response: httpx.Response) -> AsyncGenerator[T, None]:
        # httpx's iterators are async generators (typed as iterators): one item per pull.
        if self._lines:
            return cast("AsyncGenerator[T, None]", response.aiter_lines())
        return cast("AsyncGenerator[T, None]", response.aiter_bytes(self._chunk_size))

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        loop = self._event_loop()
        if loop is None or loop.is_closed():
            subscriber.on_subscribe(EmptySubscription())
            signal_error(
                subscriber,
                RuntimeError(
                    f"{self!r}: build or subscribe it inside a running event loop, or pass loop="
                ),
                self,
            )
            return
        subscription = _BodySubscription(subscriber, self, loop)
        try:
            subscriber.on_subscribe(subscription)
        except Exception as fault:  # Rule 2.13
            subscription.cancel()
            signal_error(subscriber, fault, self)

    def __repr__(self) -> str:
        kind = "http_lines" if self._lines else "http_stream"
        return f"{kind}({self._method} {self._url})"


def _check_method_url(method: object, url: object) -> None:
    if not isinstance(method, str) or not method:
        raise TypeError(f"method must be a non-empty str, got {method!r}")
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {url!r}")


def http_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    chunk_size: int = 65536,
    loop: asyncio.AbstractEventLoop | None = None,
    **request_kwargs: object,
) -> Flow[bytes]:
    """The body of one HTTP request per subscriber, as chunks read only as demand allows.

    ::

        http_stream(client, "GET", url):  ^--(request sent on first demand)--a--b--c--|
        non-2xx response:                 ^--X(HTTPStatusError)

    Each subscriber sends its own request (so ``retry`` re-sends it) with
    ``client.stream(method, url, **request_kwargs)`` (``params``, ``headers``,
    ``json``, ``content``, ``timeout``, ``auth``, ``follow_redirects``... as httpx takes
    them). Items are the decoded body (``Content-Encoding`` undone) in chunks of
    ``chunk_size`` bytes, the last one shorter.

    Demand: the request is sent on the first ``request(n)``; then each requested item is
    one chunk read from the response, never ahead of demand. While demand is 0 nothing
    is read, the socket buffers fill and TCP flow control stops the server.

    Cancellation: closes the response; a body not read to its end closes the connection
    (the server sees a disconnect) instead of returning it to the client's pool. A
    cancel while the request is being sent (the connection opened, the headers awaited)
    detaches downstream at once and closes the response when it arrives: interrupting
    httpx there could leave a dead connection in the client's pool. After a cancel no
    error is signalled or reported.

    Errors: a status outside 2xx is ``on_error(HTTPStatusError)`` (status, headers,
    ``retry_after``) before any item; connection and read errors are httpx's own
    exceptions (``httpx.ConnectError``, ``httpx.ReadTimeout``...). A ``request(n <= 0)``
    interrupts a read waiting for the server and is ``on_error`` (Rule 3.9).

    Everything runs on one event loop -- ``loop``, else the one running when this is
    called, else the one running at the first subscription, kept for later ones (so
    ``retry``, which re-subscribes from a timer thread, works) -- the loop the client
    belongs to; ``request`` and ``cancel`` may come from any thread.

    Example:
        Count the bytes of a download, 4 KiB per requested chunk (a running server and
        an ``httpx.AsyncClient`` on the current loop are assumed; see
        ``examples/http_load_shedding.py``)::

            sizes = await http_stream(client, "GET", url, chunk_size=4096).map(len).to_list_async()
    """
    _check_method_url(method, url)
    if type(chunk_size) is not int or chunk_size < 1:
        raise ValueError(f"http_stream: chunk_size must be an int >= 1, got {chunk_size!r}")
    return _HTTPFlow[bytes](client, method, url, chunk_size, loop, dict(request_kwargs))


def http_lines(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    **request_kwargs: object,
) -> Flow[str]:
    """The body of one HTTP request per subscriber as text lines, read as demand allows.

    ::

        http_lines(client, "GET", url):  ^--(request sent on first demand)--l1--l2--|

    Lines are decoded with the response's charset (UTF-8 by default) and split as
    httpx's ``aiter_lines`` does (``\\n``, ``\\r\\n``, ``\\r``), without their line
    ending; an empty line is ``""``. Suits NDJSON and other line-framed streams.

    Demand: the request is sent on the first ``request(n)``; each requested item is one
    line; the body is read one network chunk at a time, only when no complete line is
    left from the last one.

    Cancellation: closes the response (and the connection, if the body was not read to
    its end).

    Errors: as ``http_stream``: ``HTTPStatusError`` for a non-2xx status, before any
    line; httpx's exceptions for transport and decoding errors.

    Example:
        Decode an NDJSON stream, one document per requested item::

            docs = http_lines(client, "GET", url).map(json.loads)
    """
    _check_method_url(method, url)
    return _HTTPFlow[str](client, method, url, None, loop, dict(request_kwargs))
