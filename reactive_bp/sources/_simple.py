"""``empty``, ``error``, ``never`` and ``defer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from typing_extensions import override

from .._core._drain import PullSubscription
from .._core._operator import EmptySubscription
from .._core._signals import signal_complete, signal_error
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber

__all__ = ["DeferFlow", "EmptyFlow", "ErrorFlow", "NeverFlow"]

T = TypeVar("T")


class EmptyFlow(Flow[T]):
    """Completes at once, whatever the demand (Rule 1.2 allows fewer than requested)."""

    __slots__ = ()

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        subscriber.on_subscribe(EmptySubscription())
        signal_complete(subscriber, self)

    def __repr__(self) -> str:
        return "Flow.empty()"


class ErrorFlow(Flow[T]):
    """Fails at once with the given error, without waiting for demand (Rule 1.4)."""

    __slots__ = ("_error",)

    def __init__(self, error: Exception) -> None:
        if not isinstance(error, Exception):
            raise TypeError(f"Flow.error() needs an Exception instance, got {error!r}")
        self._error = error

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        subscriber.on_subscribe(EmptySubscription())
        signal_error(subscriber, self._error, self)

    def __repr__(self) -> str:
        return f"Flow.error({self._error!r})"


class _NeverSubscription(PullSubscription[T]):
    """Validates demand (Rule 3.9) but never has anything to emit."""

    __slots__ = ()

    @override
    def _emit(self, actual: Subscriber[T], n: int) -> int:
        return 0


class NeverFlow(Flow[T]):
    """Never signals anything after ``on_subscribe``."""

    __slots__ = ()

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        _NeverSubscription(subscriber).start()

    def __repr__(self) -> str:
        return "Flow.never()"


class DeferFlow(Flow[T]):
    """Calls the factory for each subscriber and subscribes to what it returns."""

    __slots__ = ("_factory",)

    def __init__(self, factory: Callable[[], Publisher[T]]) -> None:
        self._factory = factory

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        try:
            publisher = self._factory()
            if publisher is None:
                raise TypeError(f"{self!r}: the factory returned None, not a publisher")
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return
        Flow.from_publisher(publisher).subscribe(subscriber)

    def __repr__(self) -> str:
        return f"Flow.defer({self._factory!r})"
