"""Blocking sinks: ``to_list``, ``first``, ``last``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from ._base import BaseSubscriber, RequestPolicy

if TYPE_CHECKING:
    from .._flow import Flow

__all__ = ["EmptyFlowError", "first", "last", "to_list"]

T = TypeVar("T")


class EmptyFlowError(LookupError):
    """``first()`` or ``last()`` met a flow that completed without items."""


class _Collector(BaseSubscriber[T], Generic[T]):
    __slots__ = ("_error", "_event", "_items", "_limit")

    def __init__(self, limit: int | None) -> None:
        super().__init__(RequestPolicy.unbounded() if limit is None else RequestPolicy(limit, 0))
        self._limit = limit
        self._items: list[T] = []
        self._error: Exception | None = None
        self._event = threading.Event()

    @override
    def hook_on_next(self, item: T) -> None:
        self._items.append(item)
        if self._limit is not None and len(self._items) >= self._limit:
            self.cancel()

    @override
    def hook_on_error(self, error: Exception) -> None:
        self._error = error

    @override
    def hook_finally(self, signal: object) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> list[T]:
        if not self._event.wait(timeout):
            self.cancel()
            raise TimeoutError(f"no terminal signal within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._items


def _run(source: Flow[T], limit: int | None, timeout: float | None) -> list[T]:
    collector: _Collector[T] = _Collector(limit)
    source.subscribe(collector)
    return collector.wait(timeout)


def to_list(source: Flow[T], timeout: float | None) -> list[T]:
    """See :meth:`Flow.to_list`."""
    return _run(source, None, timeout)


def first(source: Flow[T], timeout: float | None) -> T:
    """See :meth:`Flow.first`."""
    items = _run(source, 1, timeout)
    if not items:
        raise EmptyFlowError(f"{source!r} completed without items")
    return items[0]


def last(source: Flow[T], timeout: float | None) -> T:
    """See :meth:`Flow.last`."""
    # reduce keeps only the newest item, so memory stays constant.
    items = _run(source.reduce(lambda _, item: item), None, timeout)
    if not items:
        raise EmptyFlowError(f"{source!r} completed without items")
    return items[-1]
