"""HTTP with backpressure, server side: load shedding with ``Retry-After``, and responses
paced by the client.

Pure ASGI (no web framework, no import of a server): ``LoadShedding`` wraps any ASGI
application (Starlette, FastAPI, a bare callable) and runs under any ASGI server
(uvicorn, hypercorn...); ``flow_response``, ``ndjson_response`` and ``sse_response``
turn a ``Flow`` into an ASGI application that streams it. The ``http`` extra
(``pip install 'reactive-bp[http]'``) installs uvicorn and httpx for running and
testing them; this module itself needs neither.

How demand maps onto HTTP:

* **Admission.** ``LoadShedding`` lets at most ``max_concurrency`` requests into the
  application; up to ``max_queue`` more wait, first come first served, each for at
  most ``queue_timeout`` seconds; anything beyond is answered at once with ``status``
  (503, or 429) and ``Retry-After``. The server's own request queue is thus bounded,
  and a client told to retry knows when: see ``LoadShedding.retry_after``.
* **Streaming.** A streaming response asks its flow for one item, waits for it,
  hands its bytes to the server (``await send(...)``) and asks for the next only
  once ``send`` returned. A server applies TCP flow control in ``send`` (uvicorn
  waits while its write buffer is above 64 KiB), so a client that reads slowly
  slows the flow down to its pace: the response holds at most one item that the
  server has not taken (produced minus sent is at most 1), plus the server's own
  write buffer.

Concurrency: everything here runs on the event loop that serves the requests and
touches its state only there (no locks). A flow may produce on any thread; its items
reach the response through the same bridge as ``Flow.aiter`` (``adapters``). Stats
may be read from any thread (a Prometheus scrape): the counters are plain ints
written on the loop, so a reader can see one counter a step ahead of another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from itertools import count
from typing import Any, Generic, TypeVar

from typing_extensions import override

from .._core._push import BufferStats, WaterMarks
from .._flow import Flow
from ..adapters._pull import _DONE, _AsyncBridge
from ..metrics import BackpressureMeter

__all__ = [
    "ASGIApp",
    "ASGIMessage",
    "LoadShedding",
    "LoadSheddingStats",
    "Receive",
    "Scope",
    "Send",
    "ServerSentEvent",
    "WaitSummary",
    "flow_response",
    "ndjson_response",
    "sse_response",
]

T = TypeVar("T")

# The ASGI callables' shapes, as the ecosystem writes them (Starlette's aliases):
# scopes and messages are dicts of heterogeneous values, so their values are Any.
Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger(__name__)

# How many recent completions the Retry-After rate is measured over (at most), and
# how many recent waits the wait-time percentiles are taken from.
_RATE_SAMPLES = 512
_WAIT_SAMPLES = 1024
# A queued request's body is read while it waits (so that a disconnect is seen);
# beyond this many bytes it is left to the server's flow control instead.
_HOLD_BODY_LIMIT = 65536
# The shortest time span a rate is divided by (a fake clock may not move).
_MIN_SPAN = 1e-3
# A streaming response whose flow always has the next item ready (so no await
# suspends) lets other tasks run every this many chunks.
_YIELD_EVERY = 32


# ---------------------------------------------------------------------------------------
# Load shedding
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaitSummary:
    """Time admitted requests waited in the queue, over the last 1024 (0 if none waited).

    Percentiles are nearest-rank over those samples; a request admitted at once
    counts as a wait of 0.
    """

    samples: int
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class LoadSheddingStats:
    """A snapshot of ``LoadShedding``'s counters (``LoadShedding.stats``).

    ``arrived == admitted + shed + timed_out + disconnected + cancelled + queued_now``
    holds whenever no slot is being handed over: a waiter given a freed slot leaves
    ``queued_now`` at once and enters ``admitted`` when its task resumes, on the
    loop's next turn (bypassed requests are counted apart).
    """

    arrived: int
    """Requests subject to shedding that reached the middleware."""
    admitted: int
    """Handed to the application (at once, or after waiting)."""
    queued_now: int
    """Waiting for a slot right now."""
    peak_queued: int
    """The most that ever waited at once."""
    in_flight: int
    """In the application right now (at most ``max_concurrency``)."""
    completed: int
    """Returned from the application, normally or by an exception."""
    failed: int
    """Of the completed, those whose application raised (cancellation included: the
    server cancelling a request's task counts here)."""
    shed: int
    """Refused on arrival: every slot busy and the queue full."""
    timed_out: int
    """Waited ``queue_timeout`` without a slot, then refused."""
    disconnected: int
    """Left the queue because the client went away."""
    cancelled: int
    """Left the queue because their task was cancelled (server shutdown)."""
    bypassed: int
    """Matched ``bypass``: passed straight to the application, never counted above."""
    pressured: bool
    """The water marks' state (``False`` without water marks)."""
    retry_after: int
    """What a refused request would be told now, in seconds."""
    wait: WaitSummary
    """Queue wait of recently admitted requests."""


class _SheddingBufferStats(BufferStats):
    """``BufferStats`` for the meter: a request is an item, the queue is the buffer.

    produced = arrived, delivered = admitted, dropped by reason ``shed``,
    ``queue_timeout``, ``disconnected``, ``cancelled``; depth = queued now;
    backpressured = time with every slot busy. The snapshot adds the extra series
    the Prometheus collector exports: ``in_flight`` (a gauge) and the wait-time
    percentiles (maxima).
    """

    __slots__ = ("_owner",)

    def __init__(self, capacity: int, owner: LoadShedding) -> None:
        super().__init__(capacity)
        # Weak: a meter that outlives the middleware does not keep the app alive.
        self._owner = weakref.ref(owner)

    @override
    def snapshot(self) -> dict[str, object]:
        snapshot = super().snapshot()
        owner = self._owner()
        if owner is not None:
            wait = owner._wait_summary()
            snapshot["gauges"] = {"in_flight": owner._in_flight}
            snapshot["maxima"] = {
                "wait_seconds_p50": wait.p50,
                "wait_seconds_p90": wait.p90,
                "wait_seconds_p99": wait.p99,
                "wait_seconds_max": wait.max,
            }
        return snapshot


class _HeldReceive:
    """A queued request's ``receive``: sees a disconnect while it waits, loses no message.

    While the request waits, one ``receive()`` at a time is kept running as a task
    (``pending``). Request-body messages it returns are held and replayed, in
    order, to the application once admitted; a ``receive()`` still running at
    admission is handed over, not cancelled, so nothing the server delivers is
    lost. Watching stops after ``_HOLD_BODY_LIMIT`` bytes of body (the rest stays
    with the server's flow control) and never starts for ``Expect: 100-continue``
    (reading would invite the client to upload while it waits).
    """

    __slots__ = ("_held", "_held_bytes", "_receive", "_task", "_watching")

    def __init__(self, receive: Receive, watching: bool) -> None:
        self._receive = receive
        self._watching = watching
        self._held: deque[ASGIMessage] = deque()
        self._held_bytes = 0
        self._task: asyncio.Future[ASGIMessage] | None = None

    def pending(self) -> asyncio.Future[ASGIMessage] | None:
        """The running ``receive()`` to wait on (started if needed), or None if not watching."""
        if self._task is None and self._watching:
            self._task = asyncio.ensure_future(self._receive())
        return self._task

    def took(self) -> bool:
        """Take the finished ``receive()``'s message; return whether the client left."""
        task = self._task
        assert task is not None and task.done()
        self._task = None
        message = task.result()  # a receive that raised: the caller leaves the queue
        if message.get("type") == "http.disconnect":
            return True
        self._held.append(message)
        body = message.get("body", b"")
        self._held_bytes += len(body) if isinstance(body, bytes | bytearray) else 0
        if self._held_bytes >= _HOLD_BODY_LIMIT:
            self._watching = False
        return False

    def close(self) -> None:
        """The request leaves without the application: stop the running ``receive()``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self._held.clear()

    async def __call__(self) -> ASGIMessage:
        """The application's ``receive``: held messages first, then the server's."""
        if self._held:
            return self._held.popleft()
        task, self._task = self._task, None
        if task is not None:
            return await task
        return await self._receive()


def _expects_continue(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            return True
    return False


class LoadShedding:
    """ASGI middleware: bounded concurrency, a bounded FIFO queue, and refusals with
    ``Retry-After`` beyond it.

    ::

        arrivals    -1-2-3-4----------------------------
        in the app  -[1--------][2--------][3--------]    max_concurrency=1
        waiting        2........                          max_queue=2, FIFO
                         3...................
        responses   -------4:503------1:200------2:200------3:200
                           (Retry-After: n)

    Demand: the application's concurrency is the demand. At most
    ``max_concurrency`` requests run in the application; a slot that frees is
    handed directly to the oldest waiter (no newcomer overtakes the queue). At
    most ``max_queue`` requests wait; a waiter gives up after ``queue_timeout``
    seconds. A request that finds every slot busy and the queue full is refused
    at once with ``status`` and ``Retry-After``; so is one whose wait timed out.

    Retry-After: ``ceil((queued + in_flight) / rate)`` seconds, at least 1 and at
    most ``retry_after_cap``: the time the backlog in front of a new request takes
    to clear at the observed completion rate. ``rate`` is the completions of the
    last ``rate_window`` seconds (at most the last 512) divided by the time they
    span (from the window's start, or from the first request if the middleware is
    younger than the window). With no completion in the window, ``rate`` is
    ``in_flight / age of the oldest request in flight``: nothing finished yet, so
    service takes at least that long; a stalled application thus gets a growing
    Retry-After. See ``retry_after()``.

    Cancellation: a client that disconnects while queued leaves the queue (its
    request never reaches the application); one whose task is cancelled
    (server shutdown) too. A slot is released however the application ends: a
    return, an exception (re-raised), a cancellation.

    Errors: the application's exceptions pass through unchanged (counted as
    ``failed``); the middleware raises none of its own.

    Bypass and other scopes: requests whose path is in ``bypass`` (or for which
    the predicate is true) go straight to the application, uncounted (health and
    readiness checks must answer under overload). ``lifespan`` and ``websocket``
    scopes pass through: a websocket holds a connection for its whole life, not a
    request's, so counting it against ``max_concurrency`` would let a few long
    sessions starve every HTTP request; limit websockets where they are accepted.

    Observability: ``stats`` (a ``LoadSheddingStats``) at any moment, from any
    thread; ``water_marks`` observes the queue's depth (``pressured`` from
    ``high`` queued requests until back down to ``low``, listeners called on the
    loop); ``meter`` gets a ``BufferStats`` (arrived, admitted, dropped by reason,
    queue depth, time saturated, plus ``in_flight`` and wait-time percentiles) that
    ``reactive_bp.metrics.PrometheusCollector`` exports.

    All state is touched only on the event loop that serves the requests (one
    middleware instance per loop: with several worker processes, each has its own).

    Args:
        app: The ASGI application to protect.
        max_concurrency: Requests allowed in the application at once (>= 1).
        max_queue: Requests allowed to wait for a slot (0: refuse at once when full).
        queue_timeout: Longest wait in the queue, in seconds (> 0).
        status: The refusal's status: 503 (the server is overloaded) or 429 (the
            client sends too much); any 4xx or 5xx is accepted.
        bypass: Paths (exact ``scope["path"]``) or a predicate on the path.
        water_marks: Observes the queue depth.
        meter: Receives the middleware's ``BufferStats``.
        retry_after_cap: The largest ``Retry-After``, in seconds (>= 1).
        rate_window: How far back completions count for the rate, in seconds.
        clock: Monotonic seconds for the rate, the wait times and ages (tests pass
            a fake one; the queue timeout itself runs on the event loop's clock).

    Example:
        A protected app under uvicorn (`uvicorn module:app`)::

            async def api(scope, receive, send): ...

            meter = BackpressureMeter("api")
            app = LoadShedding(api, max_concurrency=32, max_queue=64,
                               queue_timeout=2.0, bypass={"/healthz"}, meter=meter)
    """

    __slots__ = (
        "__weakref__",
        "_admitted",
        "_app",
        "_arrived",
        "_buffer",
        "_bypass",
        "_bypassed",
        "_cancelled",
        "_clock",
        "_completed",
        "_completions",
        "_disconnected",
        "_failed",
        "_first_seen",
        "_in_flight",
        "_max_concurrency",
        "_max_queue",
        "_peak_queued",
        "_queue_timeout",
        "_rate_window",
        "_retry_after_cap",
        "_running",
        "_shed",
        "_status",
        "_tickets",
        "_timed_out",
        "_waiters",
        "_waits",
        "_water_marks",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrency: int,
        max_queue: int = 0,
        queue_timeout: float = 1.0,
        status: int = 503,
        bypass: Callable[[str], bool] | Collection[str] = (),
        water_marks: WaterMarks | None = None,
        meter: BackpressureMeter | None = None,
        retry_after_cap: float = 60.0,
        rate_window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if type(max_queue) is not int or max_queue < 0:
            raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
        if not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be > 0 seconds, got {queue_timeout!r}")
        if type(status) is not int or not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx status (503, 429), got {status!r}")
        if not retry_after_cap >= 1:
            raise ValueError(f"retry_after_cap must be >= 1 second, got {retry_after_cap!r}")
        if not rate_window > 0:
            raise ValueError(f"rate_window must be > 0 seconds, got {rate_window!r}")
        self._app = app
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._queue_timeout = float(queue_timeout)
        self._status = status
        self._bypass: Callable[[str], bool] = (
            bypass if callable(bypass) else frozenset(bypass).__contains__
        )
        self._water_marks = water_marks
        self._retry_after_cap = retry_after_cap
        self._rate_window = float(rate_window)
        self._clock = clock
        # Everything below is loop-confined (read from other threads only by stats).
        # Invariant: _in_flight <= max_concurrency; when _waiters is not empty,
        # _in_flight == max_concurrency (a freed slot goes straight to a waiter).
        self._in_flight = 0
        # Waiters, oldest first; each future is resolved when a slot is handed to
        # it. Invariant: only pending futures are in it (one that leaves removes
        # itself), and len(_waiters) <= max_queue.
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Admission times of the requests in the application, oldest first.
        self._running: dict[int, float] = {}
        self._tickets = count()
        # Completion times (monotonic, oldest first) and recent admitted waits.
        self._completions: deque[float] = deque(maxlen=_RATE_SAMPLES)
        self._waits: deque[float] = deque(maxlen=_WAIT_SAMPLES)
        self._first_seen: float | None = None
        self._arrived = 0
        self._admitted = 0
        self._completed = 0
        self._failed = 0
        self._shed = 0
        self._timed_out = 0
        self._disconnected = 0
        self._cancelled = 0
        self._bypassed = 0
        self._peak_queued = 0
        self._buffer = _SheddingBufferStats(max_queue, self)
        if meter is not None:
            meter.attach(self._buffer)

    @property
    def app(self) -> ASGIApp:
        """The protected application."""
        return self._app

    @property
    def pressured(self) -> bool:
        """The water marks' state: the queue reached ``high`` and is not back to ``low``."""
        marks = self._water_marks
        return marks is not None and marks.pressured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)  # lifespan, websocket: see the docstring
            return
        if self._bypass(scope.get("path", "")):
            self._bypassed += 1
            await self._app(scope, receive, send)
            return
        now = self._clock()
        if self._first_seen is None:
            self._first_seen = now
        self._arrived += 1
        self._buffer.produced += 1
        if self._in_flight < self._max_concurrency and not self._waiters:
            self._in_flight += 1
            if self._in_flight == self._max_concurrency:
                self._buffer.pressure_started(now)
            app_receive = receive
            waited = 0.0
        elif len(self._waiters) < self._max_queue:
            admitted = await self._wait(scope, receive, send)
            if admitted is None:
                return  # refused after the timeout, or the client left
            app_receive = admitted
            waited = self._clock() - now
        else:
            self._shed += 1
            self._buffer.count_drop("shed")
            await self._refuse(send)
            return
        # The slot is ours from here (counted in _in_flight); it is released below
        # however the application ends.
        ticket = next(self._tickets)
        self._running[ticket] = self._clock()
        self._admitted += 1
        self._buffer.delivered += 1
        self._waits.append(waited)
        try:
            await self._app(scope, app_receive, send)
        except BaseException:
            self._failed += 1
            raise
        finally:
            del self._running[ticket]
            self._completed += 1
            self._note_completion()
            self._release()
            if isinstance(app_receive, _HeldReceive):
                app_receive.close()  # a receive() the application left running

    # -- the queue ---------------------------------------------------------------------------

    async def _wait(self, scope: Scope, receive: Receive, send: Send) -> _HeldReceive | None:
        """Wait for a slot (FIFO); return the application's receive, or None if refused."""
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()
        self._waiters.append(granted)
        self._queue_changed()
        held = _HeldReceive(receive, watching=not _expects_continue(scope))
        deadline = loop.time() + self._queue_timeout
        try:
            while not granted.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                reading = held.pending()
                waiting: set[asyncio.Future[Any]] = {granted}
                if reading is not None:
                    waiting.add(reading)
                await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if granted.done():
                    break  # a slot wins over a disconnect seen in the same pass
                if reading is not None and reading.done() and held.took():
                    self._leave(granted, "disconnected")
                    held.close()
                    return None
        except BaseException as error:
            reason = "cancelled" if isinstance(error, asyncio.CancelledError) else "disconnected"
            if granted.done() and not granted.cancelled():
                self._release()  # a slot was handed to us before we could use it: pass it on
                self._count_left(reason)
            else:
                self._leave(granted, reason)
            held.close()
            raise
        if granted.done():
            return held  # the slot was handed over in _release: _in_flight already counts it
        self._leave(granted, "queue_timeout")
        held.close()
        await self._refuse(send)
        return None

    def _leave(self, granted: asyncio.Future[None], reason: str) -> None:
        """A waiter leaves the queue without a slot."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(granted)
        granted.cancel()
        self._count_left(reason)
        self._queue_changed()

    def _count_left(self, reason: str) -> None:
        if reason == "queue_timeout":
            self._timed_out += 1
        elif reason == "disconnected":
            self._disconnected += 1
        else:
            self._cancelled += 1
        self._buffer.count_drop(reason)

    def _release(self) -> None:
        """A slot frees: hand it to the oldest waiter, or give it back."""
        waiters = self._waiters
        while waiters:
            granted = waiters.popleft()
            if not granted.done():
                granted.set_result(None)  # FIFO: the slot goes to the oldest waiter
                self._queue_changed()
                return
        self._in_flight -= 1
        self._buffer.pressure_ended(self._clock())

    def _queue_changed(self) -> None:
        depth = len(self._waiters)
        self._buffer.depth = depth
        if depth > self._peak_queued:
            self._peak_queued = depth
            self._buffer.peak_depth = depth
        marks = self._water_marks
        if marks is not None:
            marks.observe(depth)

    def _note_completion(self) -> None:
        now = self._clock()
        completions = self._completions
        completions.append(now)
        horizon = now - self._rate_window
        while completions[0] < horizon:
            completions.popleft()

    async def _refuse(self, send: Send) -> None:
        seconds = self.retry_after()
        body = b"Overloaded: retry later\n"
        await send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(seconds).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # -- Retry-After ------------------------------------------------------------------------

    def completion_rate(self) -> float | None:
        """Completions per second over the recent window, or None if none completed in it."""
        now = self._clock()
        completions = tuple(self._completions)  # one atomic copy: readable from any thread
        first = bisect_left(completions, now - self._rate_window)
        recent = len(completions) - first
        if recent == 0:
            return None
        if len(completions) == _RATE_SAMPLES and first == 0:
            start = completions[0]  # more completions than kept: measure over those kept
        else:
            first_seen = self._first_seen
            start = max(now - self._rate_window, now if first_seen is None else first_seen)
        return recent / max(now - start, _MIN_SPAN)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: ``ceil((queued + in_flight) / rate)``.

        Clamped to ``[1, retry_after_cap]``; ``rate`` as in the class docstring.
        """
        backlog = len(self._waiters) + self._in_flight
        if backlog == 0:
            return 1
        rate = self.completion_rate()
        if rate is None:
            running = tuple(self._running.values())
            oldest = min(running) if running else None
            if oldest is None:
                return 1
            rate = max(len(running), 1) / max(self._clock() - oldest, _MIN_SPAN)
        seconds = math.ceil(backlog / rate - 1e-9)
        return int(min(max(seconds, 1), max(1, math.floor(self._retry_after_cap))))

    # -- stats -------------------------------------------------------------------------------

    def _wait_summary(self) -> WaitSummary:
        waits = sorted(self._waits)  # one C-level copy: readable from any thread
        if not waits:
            return WaitSummary(0, 0.0, 0.0, 0.0, 0.0)
        return WaitSummary(
            len(waits),
            _nearest_rank(waits, 0.50),
            _nearest_rank(waits, 0.90),
            _nearest_rank(waits, 0.99),
            waits[-1],
        )

    @property
    def stats(self) -> LoadSheddingStats:
        """A snapshot of the counters (any thread, any moment)."""
        return LoadSheddingStats(
            arrived=self._arrived,
            admitted=self._admitted,
            queued_now=len(self._waiters),
            peak_queued=self._peak_queued,
            in_flight=self._in_flight,
            completed=self._completed,
            failed=self._failed,
            shed=self._shed,
            timed_out=self._timed_out,
            disconnected=self._disconnected,
            cancelled=self._cancelled,
            bypassed=self._bypassed,
            pressured=self.pressured,
            retry_after=self.retry_after(),
            wait=self._wait_summary(),
        )

    def __repr__(self) -> str:
        return (
            f"LoadShedding({self._app!r}, max_concurrency={self._max_concurrency}, "
            f"max_queue={self._max_queue}, in_flight={self._in_flight}, "
            f"queued={len(self._waiters)})"
        )


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------
# Streaming responses
# ---------------------------------------------------------------------------------------


class _Heartbeat:
    __slots__ = ("chunk", "every")

    def __init__(self, every: float, chunk: bytes) -> None:
        self.every = every
        self.chunk = chunk


class _FlowResponse(Generic[T]):
    """The ASGI application behind ``flow_response``: one subscription per request."""

    __slots__ = ("_encode", "_flow", "_headers", "_heartbeat", "_status")

    def __init__(
        self,
        flow: Flow[T],
        encode: Callable[[T], bytes],
        status: int,
        headers: list[tuple[bytes, bytes]],
        heartbeat: _Heartbeat | None = None,
    ) -> None:
        self._flow = flow
        self._encode = encode
        self._status = status
        self._headers = headers
        self._heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            raise RuntimeError(f"a streaming response serves HTTP requests, not {kind!r}")
        if scope.get("method") == "HEAD":
            await send(
                {"type": "http.response.start", "status": self._status, "headers": self._headers}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        loop = asyncio.get_running_loop()
        # prefetch 1: one item requested at a time; the next only after send returned.
        bridge: _AsyncBridge[T] = _AsyncBridge(1, loop)
        streaming = asyncio.ensure_future(self._stream(bridge, scope, send))
        watching = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
            if streaming.done():
                streaming.result()  # an error after the headers aborts the response
                return
            if not watching.cancelled() and watching.exception() is not None:
                # receive() itself failed (a server fault, not a client leaving): say so,
                # stop the flow below, and let the server see the error.
                bridge.cancel()
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streaming
                watching.result()
            # The client left: stop sending and cancel the flow (Rule 3.13 via the bridge).
            bridge.cancel()
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
        finally:
            bridge.cancel()  # upstream is cancelled however this ends (no-op when it ended)
            watching.cancel()
            streaming.cancel()

    async def _stream(self, bridge: _AsyncBridge[T], scope: Scope, send: Send) -> None:
        self._flow.subscribe(bridge)
        heartbeat = self._heartbeat
        started = False
        chunks = 0
        ready_in_a_row = 0
        while True:
            try:
                item = bridge.poll()  # an item already there, the ending, or None
                if item is None:
                    ready_in_a_row = 0
                    item = await _next_or_idle(bridge, heartbeat)
                else:
                    ready_in_a_row += 1
                    if ready_in_a_row == _YIELD_EVERY:
                        ready_in_a_row = 0
                        await asyncio.sleep(0)  # a flow that is always ready must not hog the loop
                if item is _DONE:
                    body = None
                elif item is _IDLE:
                    assert heartbeat is not None
                    body = heartbeat.chunk
                else:
                    body = self._encode(item)  # type: ignore[arg-type]
            except Exception as error:
                if started:
                    _log_abort(scope, chunks, error)
                    raise
                logger.error(
                    "streaming response for %s %s: the flow failed before the first chunk; "
                    "answering 500",
                    scope.get("method"),
                    scope.get("path"),
                    exc_info=error,
                )
                await _internal_error(send)
                return
            if not started:
                await send(
                    {
                        "type": "http.response.start",
                        "status": self._status,
                        "headers": self._headers,
                    }
                )
                started = True
            if body is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send({"type": "http.response.body", "body": body, "more_body": True})
            if item is not _IDLE:
                chunks += 1
                # Demand: the next item only now that the server took this one (its
                # send waits while the client's TCP window is closed).
                bridge.consumed()

    def __repr__(self) -> str:
        return f"flow_response({self._flow!r}, status={self._status})"


_IDLE = object()  # no item within the heartbeat interval


async def _next_or_idle(bridge: _AsyncBridge[T], heartbeat: _Heartbeat | None) -> object:
    """The next item or ``_DONE`` (raising the flow's error); ``_IDLE`` if a heartbeat is due."""
    if heartbeat is None:
        return await bridge.next()
    try:
        # Cancelling next() on timeout loses nothing: an item arriving meanwhile
        # stays queued in the bridge for the next poll.
        return await asyncio.wait_for(bridge.next(), heartbeat.every)
    except TimeoutError:
        return _IDLE


def _log_abort(scope: Scope, chunks: int, error: Exception) -> None:
    logger.error(
        "streaming response for %s %s: the flow failed after %d chunk(s): %r; "
        "aborting the response (the client sees an incomplete body)",
        scope.get("method"),
        scope.get("path"),
        chunks,
        error,
    )


async def _internal_error(send: Send) -> None:
    body = b"Internal Server Error\n"
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    """Read (and discard) the request until the server says the client left."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer the lifespan protocol (a streaming response served as the whole app)."""
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    raise TypeError(
        f"flow_response needs bytes (or str) items, or encode=...; got {type(item).__name__}"
    )


def _headers(
    media_type: str, headers: Mapping[str, str] | None, extra: Iterable[tuple[str, str]] = ()
) -> list[tuple[bytes, bytes]]:
    merged = {"content-type": media_type, **dict(extra)}
    for name, value in (headers or {}).items():
        merged[name.lower()] = value
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in merged.items()]


def flow_response(
    flow: Flow[T],
    *,
    media_type: str = "application/octet-stream",
    encode: Callable[[T], bytes] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> ASGIApp:
    """An ASGI application that streams ``flow`` as the response body, paced by the client.

    ::

        flow      --a-----b--------c--|
        request   1    1       1              (after each send returned)
        send      --[a]---[b]------[c]--[end]
        client    reads slowly: send waits, so the next request(1) waits too

    Each request subscribes to ``flow`` (a cold flow gives every client its own
    stream). The status and headers go out with the first chunk (or at the
    end of an empty flow), so a flow that fails before its first item still gets
    a proper ``500``. Each item becomes one body chunk, ``encode(item)``
    (default: the item itself, ``bytes``; a ``str`` is UTF-8 encoded).

    Demand: ``request(1)``, then one more each time ``await send(chunk)``
    returned: produced minus sent is at most 1 item at every moment. A server
    applies TCP flow control in ``send`` (uvicorn: while more than 64 KiB wait in
    its write buffer), so a slow client slows the flow itself, and memory stays
    bounded by one item plus the server's and the kernel's socket buffers.

    Cancellation: the client going away (``http.disconnect``, seen even while
    the flow is idle or ``send`` is blocked) cancels the flow at once; so does
    the response's task being cancelled.

    Errors: a flow error (or an ``encode`` that raises) before the first chunk
    answers ``500`` and is logged; after it, the error is logged and raised, so
    the server aborts the response: the connection closes without the final
    chunk and the client sees an incomplete body, never a silently truncated
    one.

    The flow may produce on any thread (``subscribe_on``, a pool): items reach
    the event loop through the same bridge as ``Flow.aiter``.

    Example:
        ``app = flow_response(Flow.range(3).map(lambda i: f"{i}\\n".encode()))``
        serves ``0\\n1\\n2\\n`` to every request.
    """
    return _FlowResponse(
        flow,
        encode if encode is not None else _as_bytes,
        status,
        _headers(media_type, headers),
    )


def ndjson_response(
    flow: Flow[T],
    *,
    default: Callable[[Any], Any] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> ASGIApp:
    """Stream ``flow`` as newline-delimited JSON (``application/x-ndjson``): one item a line.

    Each item is ``json.dumps(item, default=default)`` (compact, UTF-8) plus
    ``\\n``; demand, cancellation and errors as ``flow_response`` (an item
    that cannot be serialized is a flow error).
    """

    def encode(item: T) -> bytes:
        line = json.dumps(item, default=default, ensure_ascii=False, separators=(",", ":"))
        return (line + "\n").encode()

    return _FlowResponse(flow, encode, status, _headers("application/x-ndjson", headers))


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One Server-Sent Event with its own fields (an item of ``sse_response``'s flow).

    ``data`` may span lines (each becomes a ``data:`` line); ``event`` and
    ``id`` must not contain a line break (nor ``id`` a NUL); ``retry`` is the
    client's reconnection delay in milliseconds.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def encode(self) -> bytes:
        """The event's wire form: its field lines and the blank line that ends it."""
        lines: list[str] = []
        if self.event is not None:
            lines.append(f"event: {_single_line('event', self.event)}")
        if self.id is not None:
            if "\0" in self.id:
                raise ValueError("an SSE id must not contain NUL")
            lines.append(f"id: {_single_line('id', self.id)}")
        if self.retry is not None:
            if type(self.retry) is not int or self.retry < 0:
                raise ValueError(f"an SSE retry must be an int >= 0 (ms), got {self.retry!r}")
            lines.append(f"retry: {self.retry}")
        # Every line break form (CRLF, CR, LF) ends a line in SSE: one data: line each.
        data = self.data.replace("\r\n", "\n").replace("\r", "\n")
        lines.extend(f"data: {line}" for line in data.split("\n"))
        return ("\n".join(lines) + "\n\n").encode()


def _single_line(field: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an SSE {field} must be one line, got {value!r}")
    return value


def sse_response(
    flow: Flow[T],
    *,
    event: str | None = None,
    encode: Callable[[T], str] | None = None,
    keep_alive: float | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> ASGIApp:
    """Stream ``flow`` as Server-Sent Events (``text/event-stream``): one event per item.

    An item that is a ``ServerSentEvent`` is sent with its own fields; any
    other becomes ``data`` = ``encode(item)`` (default ``str(item)``), with
    ``event:`` set to ``event`` when given. Multi-line data becomes one
    ``data:`` line per line. With ``keep_alive`` (seconds), a comment line
    (``: keep-alive``) is sent whenever no event went out for that long, so
    proxies keep an idle stream open (the headers then go out before the first
    event). Demand, cancellation and errors as ``flow_response``.

    Example:
        ``sse_response(ticks.map(lambda t: ServerSentEvent(str(t), id=str(t))))``
    """
    if event is not None:
        _single_line("event", event)
    if keep_alive is not None and not keep_alive > 0:
        raise ValueError(f"keep_alive must be > 0 seconds, got {keep_alive!r}")

    def frame(item: T) -> bytes:
        if isinstance(item, ServerSentEvent):
            return item.encode()
        data = encode(item) if encode is not None else str(item)
        return ServerSentEvent(data, event=event).encode()

    return _FlowResponse(
        flow,
        frame,
        status,
        _headers(
            "text/event-stream; charset=utf-8",
            headers,
            (("cache-control", "no-cache"), ("x-accel-buffering", "no")),
        ),
        None if keep_alive is None else _Heartbeat(keep_alive, b": keep-alive\n\n"),
    )
