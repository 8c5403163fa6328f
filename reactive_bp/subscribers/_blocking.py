"""Blocking sinks: ``to_list``, ``first``, ``last``.

Each one parks the calling thread until the stream ends. On a thread that runs
an asyncio event loop that could never end if the source needs the loop (an
async iterable, a coroutine producer, ``publish_on`` an ``AsyncioScheduler``),
and it would freeze every other task meanwhile, so they refuse at once, the way
``asyncio.run`` refuses to nest, and name the awaitable to use instead.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._terminal import Terminal
from ._base import BaseSubscriber, RequestPolicy

if TYPE_CHECKING:
    from .._flow import Flow

__all__ = ["EmptyFlowError", "first", "last", "refuse_running_loop", "to_list"]

T = TypeVar("T")


class EmptyFlowError(LookupError):
    """``first()`` or ``last()`` met a flow that completed without items."""


def refuse_running_loop(call: str, instead: str) -> None:
    """Raise ``RuntimeError`` if the calling thread is running an asyncio event loop.

    Args:
        call: The blocking call, as the user wrote it (``"Flow.to_list()"``).
        instead: The non-blocking alternative to name in the message.

    Raises:
        RuntimeError: an event loop is running in this thread.
    """
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(
            f"{call} would block the running event loop (and hang if its source needs "
            f"that loop); use {instead}, or call it from another thread "
            "(`await asyncio.to_thread(...)`)"
        )


class _Collector(BaseSubscriber[T], Generic[T]):
    __slots__ = ("_event", "_items", "_limit", "_terminal")

    def __init__(self, limit: int | None) -> None:
        super().__init__(RequestPolicy.unbounded() if limit is None else RequestPolicy(limit, 0))
        self._limit = limit
        # Touched only by the signalling thread until _event is set (Rule 1.3).
        self._items: list[T] = []
        # How the stream ended (stays open when the collector cancelled at its
        # limit). Guarded by its own leaf lock; recorded before _event is set,
        # read by the waiting thread only after it.
        self._terminal = Terminal(self)
        self._event = threading.Event()

    @override
    def hook_on_next(self, item: T) -> None:
        self._items.append(item)
        if self._limit is not None and len(self._items) >= self._limit:
            self.cancel()

    @override
    def hook_on_error(self, error: Exception) -> None:
        self._terminal.fail(error)

    @override
    def hook_on_complete(self) -> None:
        self._terminal.complete()

    @override
    def hook_finally(self, signal: object) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> list[T]:
        if not self._event.wait(timeout):
            self.cancel()
            raise TimeoutError(f"no terminal signal within {timeout} s")
        ending = self._terminal.ending
        if ending is not None and ending.error is not None:
            raise ending.error
        return self._items


def _run(source: Flow[T], limit: int | None, timeout: float | None) -> list[T]:
    collector: _Collector[T] = _Collector(limit)
    source.subscribe(collector)
    return collector.wait(timeout)


def to_list(source: Flow[T], timeout: float | None) -> list[T]:
    """See :meth:`Flow.to_list`."""
    refuse_running_loop("Flow.to_list()", "`await flow.to_list_async()`")
    return _run(source, None, timeout)


def first(source: Flow[T], timeout: float | None) -> T:
    """See :meth:`Flow.first`."""
    refuse_running_loop("Flow.first()", "`await flow.first_async()`")
    items = _run(source, 1, timeout)
    if not items:
        raise EmptyFlowError(f"{source!r} completed without items")
    return items[0]


def last(source: Flow[T], timeout: float | None) -> T:
    """See :meth:`Flow.last`."""
    refuse_running_loop("Flow.last()", "`await flow.last_async()`")
    # reduce keeps only the newest item, so memory stays constant.
    items = _run(source.reduce(lambda _, item: item), None, timeout)
    if not items:
        raise EmptyFlowError(f"{source!r} completed without items")
    return items[-1]
