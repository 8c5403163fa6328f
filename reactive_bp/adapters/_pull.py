"""Pull ← the consumer's side: ``async for``, blocking iteration, awaitable sinks.

Both iterators keep at most ``prefetch`` items requested and not yet consumed:
they ask for ``prefetch`` first, then for ``limit = prefetch - prefetch // 4``
more each time ``limit`` items were consumed (the 75% replenish rule), so the
producer rarely waits and memory stays bounded by ``prefetch``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncGenerator, Generator
from contextlib import aclosing
from typing import TYPE_CHECKING, Generic, TypeVar

from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscription

__all__ = ["aiter_flow", "blocking_iter", "collect_async"]

T = TypeVar("T")

_DONE = object()


def _check_prefetch(prefetch: int) -> int:
    if type(prefetch) is not int or prefetch <= 0:
        raise ValueError(f"prefetch must be a positive int, got {prefetch!r}")
    return prefetch


class _BridgeSubscriber(Generic[T]):
    """Queues at most ``prefetch`` items for a pulling consumer; wakes it on arrival."""

    __slots__ = (
        "_consumed",
        "_error",
        "_finished",
        "_limit",
        "_lock",
        "_prefetch",
        "_queue",
        "_subscription",
        "_unrequested",
    )

    def __init__(self, prefetch: int, total: int | None = None) -> None:
        self._prefetch = prefetch
        # How many more items may still be requested in all (None: no limit).
        self._unrequested = None if total is None else total - prefetch
        self._limit = prefetch - (prefetch >> 2)
        self._lock = threading.Lock()
        # Guarded by _lock: items not yet taken, and the terminal state.
        self._queue: deque[T] = deque()
        self._finished = False
        self._error: Exception | None = None
        self._subscription: Subscription = CANCELLED
        self._consumed = 0  # touched only by the consumer

    # -- Subscriber (any thread) ----------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._subscription is not CANCELLED:
            subscription.cancel()  # Rule 2.5
            return
        self._subscription = subscription
        subscription.request(self._prefetch)

    def on_next(self, item: T) -> None:
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        with self._lock:
            if self._finished:
                return
            if len(self._queue) >= self._prefetch:
                self._finished = True
                self._error = ProtocolViolationError(
                    f"Rule 1.1: more than the {self._prefetch} requested items arrived"
                )
                overflowed = True
            else:
                self._queue.append(item)
                overflowed = False
        if overflowed:
            self._subscription.cancel()
        self.wake()

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        with self._lock:
            if self._finished:
                report_undeliverable(error, "async/blocking iterator after terminal")
                return
            self._finished = True
            self._error = error
        self.wake()

    def on_complete(self) -> None:
        with self._lock:
            self._finished = True
        self.wake()

    def wake(self) -> None:
        """Tell the consumer something changed (overridden per consumer kind)."""

    # -- consumer side ------------------------------------------------------------------------

    def poll(self) -> object:
        """Return the next item, ``_DONE``, raise the error, or ``None`` if nothing yet."""
        with self._lock:
            if self._queue:
                item: object = self._queue.popleft()
            elif self._finished:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                return _DONE
            else:
                return None
        consumed = self._consumed + 1
        if consumed == self._limit:
            consumed = 0
            self._replenish()
        self._consumed = consumed
        return item

    def _replenish(self) -> None:
        n = self._limit
        if self._unrequested is not None:
            n = min(n, self._unrequested)
            self._unrequested -= n
        if n > 0:
            self._subscription.request(n)

    def cancel(self) -> None:
        with self._lock:
            self._finished = True
            self._queue.clear()
        subscription, self._subscription = self._subscription, CANCELLED
        subscription.cancel()


class _AsyncBridge(_BridgeSubscriber[T]):
    __slots__ = ("_loop", "_waiter")

    def __init__(
        self, prefetch: int, loop: asyncio.AbstractEventLoop, total: int | None = None
    ) -> None:
        super().__init__(prefetch, total)
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            _resolve(waiter)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_resolve, waiter)

    async def next(self) -> object:
        while True:
            item = self.poll()
            if item is not None:
                return item
            waiter = self._loop.create_future()
            self._waiter = waiter
            # Re-check after publishing the waiter: a wake in between is not lost.
            item = self.poll()
            if item is not None:
                self._waiter = None
                return item
            try:
                await waiter
            finally:
                self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def aiter_flow(
    source: Flow[T], prefetch: int, total: int | None = None
) -> AsyncGenerator[T, None]:
    """See :meth:`Flow.aiter`; ``total`` caps how many items are requested in all."""
    loop = asyncio.get_running_loop()
    bridge: _AsyncBridge[T] = _AsyncBridge(_check_prefetch(prefetch), loop, total)
    source.subscribe(bridge)
    try:
        while True:
            item = await bridge.next()
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        bridge.cancel()  # break, exception, task cancellation, aclose(), GC


class _BlockingBridge(_BridgeSubscriber[T]):
    __slots__ = ("_event",)

    def __init__(self, prefetch: int) -> None:
        super().__init__(prefetch)
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def take(self, timeout: float | None) -> object:
        while True:
            self._event.clear()
            item = self.poll()
            if item is not None:
                return item
            if not self._event.wait(timeout):
                self.cancel()
                raise TimeoutError(f"no item within {timeout} s")


def blocking_iter(
    source: Flow[T], prefetch: int, timeout: float | None
) -> Generator[T, None, None]:
    """See :meth:`Flow.blocking_iter`."""
    bridge: _BlockingBridge[T] = _BlockingBridge(_check_prefetch(prefetch))
    source.subscribe(bridge)
    try:
        while True:
            item = bridge.take(timeout)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        bridge.cancel()  # close(), break + garbage collection, an exception


async def collect_async(source: Flow[T], limit: int | None) -> list[T]:
    """Collect items (at most ``limit``) without blocking the event loop."""
    items: list[T] = []
    prefetch = 256 if limit is None else limit
    async with aclosing(aiter_flow(source, prefetch, limit)) as iterator:
        async for item in iterator:
            items.append(item)
            if limit is not None and len(items) >= limit:
                break  # aclosing cancels upstream now, not at garbage collection
    return items
