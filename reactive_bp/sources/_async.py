"""Async sources: ``from_async_iterable`` and ``from_queue`` pull only while there is demand."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._demand import add_cap, check_request, produced
from .._core._hooks import report_undeliverable
from .._core._operator import EmptySubscription
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from .._flow import Flow
from ._iterable import NoneItemError

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["AsyncIterableFlow", "queue_items", "start"]

T = TypeVar("T")
U = TypeVar("U")

# Pulls between two looks at the terminal state: how soon a bad request
# (Rule 3.9) cuts into a long batch. Cancellation is seen at every pull.
_CHUNK = 64


class _AsyncPullSubscription(Generic[T]):
    """Calls ``__anext__`` only for requested items, in one task on the loop.

    Only the pump task signals the subscriber (Rule 1.3); ``request`` from any
    thread only adds demand and wakes the pump (Rule 3.3: no recursion at all).
    A bad ``request`` (Rule 3.9) is signalled by the pump too.

    Per wake-up the pump takes the whole outstanding demand as its budget and
    pulls item after item without a lock, settling the demand once per batch.
    A subscriber with ``try_on_next`` (a ``filter``, say) is called through it
    and an item counts against demand only when it returns ``True``, so a
    rejected item costs no ``request(1)`` round trip.

    A fused chain that ends in ``take(k)`` sets ``_remaining``: the pump then
    offers at most ``k`` items in all and completes on the ``k``-th at once,
    as the ``take`` operator does, without pulling item ``k + 1``.
    """

    __slots__ = (
        "_actual",
        "_iterator",
        "_lock",
        "_loop",
        "_remaining",
        "_requested",
        "_running",
        "_source",
        "_task",
        "_terminal",
    )

    def __init__(
        self,
        actual: Subscriber[T],
        iterator: AsyncIterator[T],
        loop: asyncio.AbstractEventLoop,
        source: object,
    ) -> None:
        self._actual: Subscriber[T] | None = actual
        self._iterator = iterator
        self._loop = loop
        self._source = source
        self._lock = threading.Lock()
        # Guarded by _lock. Invariant: only request() raises it and only the
        # pump lowers it, by what it emitted, once per batch; a batch never
        # emits more than the value it read at its start (Rule 1.1).
        self._requested = 0
        self._running = False  # guarded by _lock: a pump task exists
        # How the stream ends: a bad request waits here for the pump; closed
        # once the pump delivered the ending or downstream cancelled.
        self._terminal = Terminal(source)
        self._task: asyncio.Task[None] | None = None
        # Items a final ``take`` still lets through (fused chains only; None:
        # no take). Touched only by the pump (Rule 1.3), so it needs no lock.
        # Invariant: > 0 while the stream runs; the pump completes at 0.
        self._remaining: int | None = None

    def request(self, n: int) -> None:
        error = check_request(n)
        terminal = self._terminal
        with self._lock:
            if terminal.is_closed:
                return  # Rule 3.6
            if error is None:
                self._requested = add_cap(self._requested, n)
            else:
                terminal.fail(error, eager=True, quiet=True)  # Rule 3.9, signalled by the pump
            if self._running:
                return
            self._running = True
        self._start_pump()

    def _start_pump(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._task = self._loop.create_task(self._pump())
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._create_task)

    def _create_task(self) -> None:
        if not self._terminal.is_closed:
            self._task = self._loop.create_task(self._pump())

    async def _pump(self) -> None:
        terminal = self._terminal
        anext = self._iterator.__anext__
        while True:
            with self._lock:
                actual = self._actual
                if terminal.is_closed or actual is None:
                    self._running = False
                    return
                ending = terminal.ending
                budget = self._requested
                if ending is None and budget == 0:
                    self._running = False
                    return
            if ending is not None:
                self._finish(actual, None)  # delivers the recorded ending
                return
            try_on_next: Callable[[T], bool] | None = getattr(actual, "try_on_next", None)
            on_next = actual.on_next
            remaining = self._remaining
            emitted = 0  # Invariant: emitted <= budget <= _requested
            while emitted < budget:
                # Once per chunk: a bad request cuts in (Rule 3.9) within
                # _CHUNK pulls, without a property read per item.
                if terminal.is_closed or terminal.ending is not None:
                    break
                chunk = min(budget - emitted, _CHUNK)  # never beyond demand
                if remaining is not None and remaining < chunk:
                    chunk = remaining  # a take: never offer item k + 1
                # Each turn is one pull and one offer; only a return leaves early.
                for _ in range(chunk):
                    # cancel() drops _actual (Rule 3.13): nothing more is
                    # pulled, even when on_next itself cancelled (Rule 3.7).
                    if self._actual is None:
                        return
                    try:
                        item = await anext()
                    except StopAsyncIteration:
                        self._finish(actual, None)
                        return
                    except asyncio.CancelledError as cancelled:
                        task = asyncio.current_task()
                        if terminal.is_closed or (task is not None and task.cancelling()):
                            with self._lock:
                                self._running = False
                            raise  # this pump was cancelled
                        # The iterator was cancelled from elsewhere: that ends the stream.
                        failure = RuntimeError(f"{self._source!r} was cancelled")
                        failure.__cause__ = cancelled
                        self._finish(actual, failure)
                        return
                    except Exception as failure:
                        self._finish(actual, failure)
                        return
                    if self._actual is None:
                        return  # cancelled while we awaited: drop the item (Rule 3.6)
                    if item is None:
                        self._finish(actual, NoneItemError(f"{self._source!r} produced None"))
                        return
                    try:
                        if try_on_next is None:
                            on_next(item)
                            emitted += 1
                        elif try_on_next(item):
                            emitted += 1
                    except Exception as fault:  # Rule 2.13
                        self._finish(actual, fault)
                        return
                if remaining is not None:
                    # A take counts every item offered (accepted or not).
                    remaining -= chunk
                    self._remaining = remaining
                    if not remaining:
                        self._finish(actual, None)  # the k-th item completes at once
                        return
            with self._lock:
                self._requested = produced(self._requested, emitted)

    def _finish(self, actual: Subscriber[T], error: Exception | None) -> None:
        """Deliver the ending once: one recorded earlier (a bad request) wins."""
        ending = self._terminal.finish(error)
        if ending is None:
            return  # cancelled
        with self._lock:
            self._running = False
        self._actual = None
        self._close_iterator()
        if ending.error is None:
            signal_complete(actual, self._source)
        else:
            signal_error(actual, ending.error, self._source)

    def cancel(self) -> None:
        if not self._terminal.cancel():
            return
        self._actual = None  # Rule 3.13
        task = self._task
        if task is not None and not task.done():
            self._loop.call_soon_threadsafe(task.cancel)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close_iterator)

    def _close_iterator(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is None:
            return
        try:
            self._loop.create_task(aclose())
        except RuntimeError as error:  # the loop is closing
            report_undeliverable(error, f"{self._source!r} aclose")


class AsyncIterableFlow(Flow[T]):
    """Pulls an async iterable on an event loop, ``__anext__`` only for requested items."""

    __slots__ = ("_iterable", "_loop", "_name")

    def __init__(
        self,
        iterable: AsyncIterable[T],
        loop: asyncio.AbstractEventLoop | None,
        name: str = "from_async_iterable",
    ) -> None:
        self._iterable = iterable
        self._loop = loop
        self._name = name

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        opened = self._open(subscriber)
        if opened is not None:
            loop, iterator = opened
            start(subscriber, _AsyncPullSubscription(subscriber, iterator, loop, self), self)

    def _open(
        self, subscriber: Subscriber[U]
    ) -> tuple[asyncio.AbstractEventLoop, AsyncIterator[T]] | None:
        """The loop to pump on and a fresh iterator, or None after failing ``subscriber``.

        Shared with the fused chains (``operators/_async_fusion.py``), so that
        they refuse and fail exactly as this source does.
        """
        try:
            loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        except RuntimeError:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(
                subscriber,
                RuntimeError(
                    f"Flow.{self._name}: subscribe inside a running event loop or pass loop="
                ),
                self,
            )
            return None
        try:
            iterator = self._iterable.__aiter__()
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return None
        return loop, iterator

    def __repr__(self) -> str:
        return f"Flow.{self._name}({type(self._iterable).__name__})"


def start(
    subscriber: Subscriber[T], subscription: _AsyncPullSubscription[T], source: object
) -> None:
    """Hand ``subscription`` to ``subscriber``; a raising ``on_subscribe`` cancels it."""
    try:
        subscriber.on_subscribe(subscription)
    except Exception as fault:  # Rule 2.13
        subscription.cancel()
        signal_error(subscriber, fault, source)


async def queue_items(queue: asyncio.Queue[T | None]) -> AsyncIterator[T]:
    """Yield from an ``asyncio.Queue`` until it yields ``None`` (the end marker)."""
    while True:
        item = await queue.get()
        queue.task_done()
        if item is None:
            return
        yield item
