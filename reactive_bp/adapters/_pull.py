"""Pull ← the consumer's side: ``async for``, blocking iteration, awaitable sinks.

Both iterators keep at most ``prefetch`` items requested and not yet consumed:
they ask for ``prefetch`` first, then for ``limit = prefetch - prefetch // 4``
more each time ``limit`` items were consumed (the 75% replenish rule), so the
producer rarely waits and memory stays bounded by ``prefetch``.

How the rules hold:

* Rule 2.5 and giving up early: a subscription that arrives after the
  consumer left (``blocking_iter`` timed out, the task running ``aiter`` was
  cancelled, the iterator was closed) is cancelled at once and never
  requested from; so is a second subscription.
* Rule 1.7: how the stream ended is one ``Terminal``, recorded under ``_lock``
  together with the queue, and claimed once by the consumer when the queue is
  empty: the consumer never sees "done" before the error that ended it.
* Rule 1.1: more items than requested end the stream with
  ``ProtocolViolationError`` after the ones that were requested.
* ``blocking_iter`` refuses to run on a thread that runs an asyncio event
  loop (it would block the loop, and hang if the source needs it); use
  ``aiter`` there.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncGenerator, Generator
from contextlib import aclosing
from typing import TYPE_CHECKING, Generic, TypeVar

from .._core._hooks import ProtocolViolationError
from .._core._operator import CANCELLED
from .._core._terminal import Terminal
from ..subscribers._blocking import refuse_running_loop

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
        "_limit",
        "_lock",
        "_prefetch",
        "_queue",
        "_subscription",
        "_terminal",
        "_unrequested",
    )

    def __init__(self, prefetch: int, total: int | None = None) -> None:
        self._prefetch = prefetch
        # How many more items may still be requested in all (None: no limit).
        self._unrequested = None if total is None else total - prefetch
        self._limit = prefetch - (prefetch >> 2)
        self._lock = threading.Lock()
        # Guarded by _lock: items not yet taken.
        self._queue: deque[T] = deque()
        # Ended: the publisher's terminal signal (or a Rule 1.1 violation).
        # Closed: claimed by the consumer, or the consumer left (cancel), after
        # which a late subscription is cancelled. Guarded by its own leaf lock;
        # cancel, claim and the Rule 1.1 failure also hold _lock. Invariant:
        # nothing is queued once it has ended (on_next checks under _lock, and
        # Rule 1.3 orders on_next before the terminal signal), so a poll that
        # finds the queue empty under _lock may claim the ending it reads.
        self._terminal = Terminal(self)
        # Guarded by _lock: CANCELLED until on_subscribe, and again after cancel.
        self._subscription: Subscription = CANCELLED
        self._consumed = 0  # touched only by the consumer

    # -- Subscriber (any thread) ----------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            # The consumer may have left before a delayed on_subscribe arrived
            # (subscribe_on a busy pool): the subscription is then unwanted.
            accepted = not self._terminal.is_closed and self._subscription is CANCELLED
            if accepted:
                self._subscription = subscription
        if not accepted:
            subscription.cancel()  # Rule 2.5, or nobody is left to consume
            return
        # A cancel() racing with this request makes it a no-op (Rule 3.6).
        subscription.request(self._prefetch)

    def on_next(self, item: T) -> None:
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        with self._lock:
            terminal = self._terminal
            if terminal.is_ended or terminal.is_closed:
                return  # Rule 1.7 (a publisher's late item), or the consumer left
            overflowed = len(self._queue) >= self._prefetch
            if overflowed:
                terminal.fail(
                    ProtocolViolationError(
                        f"Rule 1.1: more than the {self._prefetch} requested items arrived"
                    )
                )
                subscription = self._subscription
            else:
                self._queue.append(item)
        if overflowed:
            subscription.cancel()
        self.wake()

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._terminal.fail(error)  # too late (Rule 1.7, or after cancel): reported there
        self.wake()

    def on_complete(self) -> None:
        self._terminal.complete()
        self.wake()

    def wake(self) -> None:
        """Tell the consumer something changed (overridden per consumer kind)."""

    # -- consumer side ------------------------------------------------------------------------

    def poll(self) -> object:
        """Return the next item, ``_DONE``, raise the error, or ``None`` if nothing yet."""
        with self._lock:
            if self._queue:
                item: object = self._queue.popleft()
            elif self._terminal.is_closed:
                return _DONE  # the ending was already delivered, or the consumer left
            elif self._terminal.is_ended:
                # Queue empty and ended, read together under _lock: deliver the
                # ending once (its error is part of the same snapshot).
                ending = self._terminal.claim()
                if ending is not None and ending.error is not None:
                    raise ending.error
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
        """The consumer left: cancel upstream now, or on arrival of a late subscription."""
        with self._lock:
            self._terminal.cancel()
            self._queue.clear()
            subscription, self._subscription = self._subscription, CANCELLED
        subscription.cancel()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefetch={self._prefetch} {self._terminal!r}>"


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


def _refuse_running_loop() -> None:
    refuse_running_loop("Flow.blocking_iter()", "`async for item in flow.aiter()`")


def blocking_iter(
    source: Flow[T], prefetch: int, timeout: float | None
) -> Generator[T, None, None]:
    """See :meth:`Flow.blocking_iter`."""
    bridge: _BlockingBridge[T] = _BlockingBridge(_check_prefetch(prefetch))
    _refuse_running_loop()  # before subscribing: a subscribe may block too
    source.subscribe(bridge)
    try:
        while True:
            item = bridge.take(timeout)
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
            _refuse_running_loop()  # each next() may come from another thread
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
