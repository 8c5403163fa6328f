"""Pull ← the consumer's side: ``async for``, blocking iteration, awaitable sinks.

Both iterators keep at most ``prefetch`` items requested and not yet consumed:
they ask for ``prefetch`` first, then for ``limit = prefetch - prefetch // 4``
more each time ``limit`` items were consumed (the 75% replenish rule), so the
producer rarely waits and memory stays bounded by ``prefetch``.

``aiter`` directly over an async-iterable source (``from_async_iterable``,
``from_queue``, with or without fused stages) skips all of this: it iterates
the source through one compiled async generator (``operators/_async_fusion.py``),
one pull per item consumed, which is within any ``prefetch``.

Cost per item: the publisher appends to a deque and wakes the consumer only if
it is asleep; the consumer pops items that are already queued without a lock,
an ``await`` or a future (``aiter``) or an event (``blocking_iter``), and
accounts demand once per ``limit`` items. Locks, futures and events are paid
only when the queue runs dry.

How the rules hold:

* Rule 2.5 and giving up early: a subscription that arrives after the
  consumer left (``blocking_iter`` timed out, the task running ``aiter`` was
  cancelled, the iterator was closed) is cancelled at once and never
  requested from; so is a second subscription.
* Rule 1.7: how the stream ended is one ``Terminal``, claimed once by the
  consumer when the queue is empty: the consumer never sees "done" before the
  error that ended it. The ending is read *before* the queue is found empty:
  Rule 1.3 orders every ``on_next`` before the terminal signal, so once the
  ending is visible every item sent before it is visible in the queue too.
* Rule 1.1: more items than requested end the stream with
  ``ProtocolViolationError`` after the ones that were requested.
* No lost wake-up: the consumer publishes its waiter (under ``_lock``) and
  then looks at the queue once more; the publisher appends and then looks for
  a waiter. One of the two always sees the other.
* ``blocking_iter`` refuses to run on a thread that runs an asyncio event
  loop (it would block the loop, and hang if the source needs it); use
  ``aiter`` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, Generator
from contextlib import aclosing
from typing import TYPE_CHECKING, Generic, TypeVar

from .._core._hooks import ProtocolViolationError
from .._core._operator import CANCELLED
from .._core._terminal import Terminal
from ..operators._async_fusion import direct_aiter
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
    """Queues at most ``prefetch`` items for a pulling consumer; wakes it when it waits.

    The consumer (one at a time) pops queued items itself (the fast path: no
    lock) or calls ``poll`` (which also delivers the ending), and counts every
    item it hands out (``consumed``, or a local countdown in ``aiter_flow``) so
    that demand is replenished once per ``limit`` items.
    """

    __slots__ = (
        "_consumed",
        "_limit",
        "_lock",
        "_prefetch",
        "_queue",
        "_subscription",
        "_terminal",
        "_unrequested",
        "_waiter",
    )

    def __init__(self, prefetch: int, total: int | None = None) -> None:
        self._prefetch = prefetch
        # How many more items may still be requested in all (None: no limit).
        self._unrequested = None if total is None else total - prefetch
        self._limit = prefetch - (prefetch >> 2)
        # Guards _subscription and _waiter; taken only off the per-item path.
        self._lock = threading.Lock()
        # Items not yet taken. Invariant: appended only by on_next (Rule 1.3:
        # one publisher thread at a time), popped only by the consumer; both
        # deque operations are atomic, so the per-item path takes no lock.
        # Nothing is appended once the stream ended (on_next checks first).
        self._queue: deque[T] = deque()
        # Ended: the publisher's terminal signal (or a Rule 1.1 violation).
        # Closed: claimed by the consumer, or the consumer left (cancel), after
        # which a late subscription is cancelled and late items are dropped.
        self._terminal = Terminal(self)
        # Written under _lock: CANCELLED until on_subscribe, and again once the
        # stream ended (recorded in _terminal first) or the consumer left.
        # on_next reads it without the lock to drop late items (Rule 1.7): it
        # is not how the stream ended, which only _terminal says.
        self._subscription: Subscription = CANCELLED
        # Written under _lock: what wakes the consumer while it sleeps (a
        # future or an event), None while it runs. Read without the lock on
        # the per-item path: only a non-None value leads to wake().
        self._waiter: object | None = None
        self._consumed = 0  # touched only by the consumer

    # -- Subscriber (any thread) ----------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            # The consumer may have left before a delayed on_subscribe arrived
            # (subscribe_on a busy pool): the subscription is then unwanted.
            terminal = self._terminal
            accepted = (
                not terminal.is_ended and not terminal.is_closed and self._subscription is CANCELLED
            )
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
        if self._subscription is CANCELLED:
            return  # Rule 1.7 (a publisher's late item), or the consumer left
        queue = self._queue
        # The consumer only shrinks the queue meanwhile: a stale length can
        # only overestimate, so a publisher within its demand never trips this.
        if len(queue) >= self._prefetch:
            self._overflow()
            return
        queue.append(item)
        if self._waiter is not None:
            self.wake()

    def _overflow(self) -> None:
        self._terminal.fail(
            ProtocolViolationError(
                f"Rule 1.1: more than the {self._prefetch} requested items arrived"
            )
        )
        self._release().cancel()
        self.wake()

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._terminal.fail(error)  # too late (Rule 1.7, or after cancel): reported there
        self._release()  # Rule 2.4: the subscription is over
        self.wake()

    def on_complete(self) -> None:
        self._terminal.complete()
        self._release()  # Rule 2.4: the subscription is over
        self.wake()

    def _release(self) -> Subscription:
        """Drop the subscription (after the ending was recorded); return what it was."""
        with self._lock:
            subscription, self._subscription = self._subscription, CANCELLED
        return subscription

    def wake(self) -> None:
        """Wake the consumer if it sleeps (the waiter is taken, so this happens once)."""
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._resume(waiter)

    def _resume(self, waiter: object) -> None:
        """Resume a consumer sleeping on ``waiter`` (overridden per consumer kind)."""

    def _sleep_on(self, waiter: object) -> None:
        """Publish ``waiter``: from now on a signal resumes the consumer through it."""
        with self._lock:
            self._waiter = waiter

    def _awake(self) -> None:
        """The consumer runs again: signals need not wake it."""
        with self._lock:
            self._waiter = None

    # -- consumer side ------------------------------------------------------------------------

    def poll(self) -> object:
        """Return the next item, ``_DONE``, raise the error, or ``None`` if nothing yet.

        The item is not counted: the caller calls ``consumed`` when it hands it out.
        """
        terminal = self._terminal
        if terminal.is_closed:
            return _DONE  # the ending was already delivered, or the consumer left
        # Read the ending before looking at the queue (see the module docstring).
        ended = terminal.is_ended
        queue = self._queue
        if queue:
            return queue.popleft()
        if not ended:
            return None
        # Queue empty after the ending was recorded: deliver the ending once
        # (its error is part of the same snapshot).
        ending = terminal.claim()
        if ending is not None and ending.error is not None:
            raise ending.error
        return _DONE

    def consumed(self) -> None:
        """Count one item handed to the consumer; replenish demand every ``limit`` items."""
        consumed = self._consumed + 1
        if consumed == self._limit:
            consumed = 0
            self._replenish()
        self._consumed = consumed

    def _replenish(self) -> None:
        n = self._limit
        if self._unrequested is not None:
            n = min(n, self._unrequested)
            self._unrequested -= n
        if n > 0:
            with self._lock:
                subscription = self._subscription
            subscription.request(n)

    def cancel(self) -> None:
        """The consumer left: cancel upstream now, or on arrival of a late subscription."""
        with self._lock:
            self._terminal.cancel()
            subscription, self._subscription = self._subscription, CANCELLED
            self._waiter = None
        self._queue.clear()  # an item racing in after this is never read: the consumer left
        subscription.cancel()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefetch={self._prefetch} {self._terminal!r}>"


class _AsyncBridge(_BridgeSubscriber[T]):
    __slots__ = ("_loop",)

    def __init__(
        self, prefetch: int, loop: asyncio.AbstractEventLoop, total: int | None = None
    ) -> None:
        super().__init__(prefetch, total)
        self._loop = loop

    def _resume(self, waiter: object) -> None:
        assert isinstance(waiter, asyncio.Future)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            _resolve(waiter)
            return
        # The loop may close between a check and the call: a closed loop has no
        # consumer left to wake, so its refusal is not an error.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_resolve, waiter)

    async def next(self) -> object:
        """Wait for the next item or the ending (the slow path: the queue was empty)."""
        while True:
            item = self.poll()
            if item is not None:
                return item
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._sleep_on(waiter)
            # Re-check after publishing the waiter: a wake in between is not lost.
            item = self.poll()
            if item is not None:
                self._awake()
                return item
            try:
                await waiter
            finally:
                self._awake()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def aiter_flow(source: Flow[T], prefetch: int, total: int | None = None) -> AsyncGenerator[T, None]:
    """See :meth:`Flow.aiter`; ``total`` caps how many items are requested in all.

    An async-iterable source (fused or not) with nothing in between is
    iterated directly (consumer fusion, ``operators/_async_fusion.py``): one
    pull per item consumed is within any ``prefetch``. Anything else is
    subscribed to through the bridge.
    """
    if type(prefetch) is int and prefetch > 0:  # else the bridge raises, at first use
        direct = direct_aiter(source)
        if direct is not None:
            return direct
    return _aiter_bridge(source, prefetch, total)


async def _aiter_bridge(
    source: Flow[T], prefetch: int, total: int | None
) -> AsyncGenerator[T, None]:
    loop = asyncio.get_running_loop()
    bridge: _AsyncBridge[T] = _AsyncBridge(_check_prefetch(prefetch), loop, total)
    source.subscribe(bridge)
    queue = bridge._queue
    popleft = queue.popleft
    limit = bridge._limit
    replenish = bridge._replenish
    # The bridge's consumed count, kept here as a countdown on this hot path.
    until_replenish = limit
    try:
        while True:
            # Fast path: an item already queued is yielded without an await,
            # a lock or a future. (After cancel this generator is finished, and
            # a claimed ending leaves the queue empty: no closed check needed.)
            if queue:
                item: object = popleft()
            else:
                item = await bridge.next()
                if item is _DONE:
                    return
            until_replenish -= 1
            if not until_replenish:  # the 75% rule: demand once per batch
                until_replenish = limit
                replenish()
            yield item  # type: ignore[misc]
    finally:
        bridge.cancel()  # break, exception, task cancellation, aclose(), GC


class _BlockingBridge(_BridgeSubscriber[T]):
    __slots__ = ("_event",)

    def __init__(self, prefetch: int) -> None:
        super().__init__(prefetch)
        self._event = threading.Event()

    def _resume(self, waiter: object) -> None:
        assert isinstance(waiter, threading.Event)
        waiter.set()

    def take(self, timeout: float | None) -> object:
        """Return the next item (counted), ``_DONE`` or raise; block while nothing is there."""
        queue = self._queue
        if queue:
            item: object = queue.popleft()  # the fast path: no lock, no event
            self.consumed()
            return item
        event = self._event
        while True:
            item = self.poll()
            if item is None:
                event.clear()
                self._sleep_on(event)
                # Re-check after publishing the waiter: a wake in between is not lost.
                item = self.poll()
                if item is None:
                    woken = event.wait(timeout)
                    self._awake()
                    if not woken:
                        self.cancel()
                        raise TimeoutError(f"no item within {timeout} s")
                    continue
                self._awake()
            if item is not _DONE:
                self.consumed()
            return item


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
