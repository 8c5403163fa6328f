"""``from_iterable`` and ``range``: pull an iterator only as far as demand allows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from typing_extensions import override

from .._core._drain import PullSubscription, SubscriberFault
from .._core._operator import EmptySubscription
from .._core._signals import signal_error
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["IterableFlow", "NoneItemError"]

T = TypeVar("T")


class NoneItemError(TypeError):
    """``None`` met where an item was due, which is never valid (Rule 2.13).

    Signalled (``on_error``) when a source yields ``None`` (the message names the
    source), or when a function whose result becomes an item returns ``None``:
    the mapper of ``map``/``map_async``, the accumulator of ``scan``/``reduce``,
    the fold of ``on_backpressure_reduce`` (the message names the function and,
    for a mapper, the item). It is a ``TypeError``, so ``except TypeError`` still
    catches it. A ``None`` handed to ``on_next`` directly raises a plain
    ``TypeError`` to the caller instead (Rule 2.13).
    """


_END: Any = object()
"""What ``next(iterator, _END)`` returns once the iterator is exhausted."""


class _IteratorSubscription(PullSubscription[T]):
    __slots__ = ("_iterator", "_source", "_try_on_next")

    def __init__(self, actual: Subscriber[T], iterator: Iterator[T], source: object) -> None:
        super().__init__(actual)
        self._iterator = iterator
        self._source = source
        # Looked up once, not once per batch: with request(1) per item a batch
        # is one item, and the lookup was a measurable share of its cost.
        self._try_on_next: Callable[[T], bool] | None = getattr(actual, "try_on_next", None)

    @override
    def _emit(self, actual: Subscriber[T], n: int) -> int:
        try_on_next = self._try_on_next
        if try_on_next is not None:
            return self._emit_conditional(actual, try_on_next, n)
        on_next = actual.on_next
        if n == 1:
            # request(1) per item: one next() instead of an islice and a loop.
            try:
                item = next(self._iterator, _END)
            except Exception as error:
                self._finish(actual, error)
                return 0
            if item is _END:
                self._finish(actual)
                return 0
            if item is None:
                self._finish(actual, NoneItemError(f"{self._source!r} produced None"))
                return 0
            try:
                on_next(item)
            except Exception as fault:
                raise SubscriberFault(fault) from None
            return 1
        emitted = 0
        try:
            # islice advances the iterator at most n times: nothing is pulled
            # without demand. Errors raised by the iterator land below.
            for item in islice(self._iterator, n):
                if item is None:
                    self._finish(actual, NoneItemError(f"{self._source!r} produced None"))
                    return emitted
                try:
                    on_next(item)
                except Exception as fault:
                    raise SubscriberFault(fault) from None
                emitted += 1
                if self._stopped:
                    return emitted
        except SubscriberFault:
            raise
        except Exception as error:
            self._finish(actual, error)
            return emitted
        if emitted < n:
            self._finish(actual)
        return emitted

    def _emit_conditional(
        self, actual: Subscriber[T], try_on_next: Callable[[T], bool], n: int
    ) -> int:
        # Only accepted items count against demand, so a filter downstream
        # needs no request(1) per rejected item.
        emitted = 0
        try:
            for item in self._iterator:
                if item is None:
                    self._finish(actual, NoneItemError(f"{self._source!r} produced None"))
                    return emitted
                try:
                    accepted = try_on_next(item)
                except Exception as fault:
                    raise SubscriberFault(fault) from None
                if accepted:
                    emitted += 1
                    if emitted == n:
                        return emitted
                if self._stopped:
                    return emitted
        except SubscriberFault:
            raise
        except Exception as error:
            self._finish(actual, error)
            return emitted
        self._finish(actual)
        return emitted

    @override
    def _on_release(self) -> None:
        # Rule 3.13: the bound method would keep the subscriber reachable.
        self._try_on_next = None
        # Let a generator run its finally blocks now, not at garbage collection.
        close = getattr(self._iterator, "close", None)
        self._iterator = iter(())
        if close is not None:
            close()


class IterableFlow(Flow[T]):
    """A cold flow over an iterable; each subscriber gets a fresh ``iter()``."""

    __slots__ = ("_iterable", "_name")

    def __init__(self, iterable: Iterable[T], name: str = "from_iterable") -> None:
        self._iterable = iterable
        self._name = name

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        try:
            iterator = iter(self._iterable)
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return
        _IteratorSubscription(subscriber, iterator, self).start()

    def __repr__(self) -> str:
        shown = self._iterable if isinstance(self._iterable, range) else type(self._iterable)
        return f"Flow.{self._name}({shown!r})"
