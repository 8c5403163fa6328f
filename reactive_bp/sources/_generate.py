"""``generate``: a state function called once per requested item."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._drain import PullSubscription, SubscriberFault
from .._core._operator import EmptySubscription
from .._core._signals import signal_error
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["GenerateFlow", "SynchronousSink"]

T = TypeVar("T")
S = TypeVar("S")


class SynchronousSink(Generic[T]):
    """What the ``generate`` function may do in one call: one ``next`` and/or a terminal."""

    __slots__ = ("_error", "_item", "_terminated")

    def __init__(self) -> None:
        self._item: T | None = None
        self._terminated = False
        self._error: Exception | None = None

    def next(self, item: T) -> None:
        """Emit one item; at most once per call of the generator."""
        if item is None:
            raise TypeError("generate: sink.next(None) is not allowed; None is not an item")
        if self._item is not None:
            raise RuntimeError("generate: sink.next() may be called at most once per call")
        if self._terminated:
            raise RuntimeError("generate: sink.next() after complete() or error()")
        self._item = item

    def complete(self) -> None:
        """End the stream after the item of this call, if any."""
        self._terminated = True

    def error(self, error: Exception) -> None:
        """Fail the stream after the item of this call, if any."""
        self._terminated = True
        self._error = error


class _GenerateSubscription(PullSubscription[T], Generic[T, S]):
    __slots__ = ("_generator", "_on_dispose", "_source", "_state")

    def __init__(
        self,
        actual: Subscriber[T],
        state: S,
        generator: Callable[[S, SynchronousSink[T]], S],
        on_dispose: Callable[[S], object] | None,
        source: object,
    ) -> None:
        super().__init__(actual)
        self._state = state
        self._generator = generator
        self._on_dispose = on_dispose
        self._source = source

    @override
    def _emit(self, actual: Subscriber[T], n: int) -> int:
        sink: SynchronousSink[T] = SynchronousSink()
        generator = self._generator
        emitted = 0
        while emitted != n and not self._stopped:
            sink._item = None
            try:
                self._state = generator(self._state, sink)
            except Exception as error:
                self._finish(actual, error)
                return emitted
            item = sink._item
            if item is not None:
                try:
                    actual.on_next(item)
                except Exception as fault:
                    raise SubscriberFault(fault) from None
                emitted += 1
            if sink._terminated:
                self._finish(actual, sink._error)
                return emitted
            if item is None:
                self._finish(
                    actual,
                    RuntimeError(f"{self._source!r}: the generator neither emitted nor ended"),
                )
                return emitted
        return emitted

    @override
    def _on_release(self) -> None:
        if self._on_dispose is not None:
            dispose, self._on_dispose = self._on_dispose, None
            dispose(self._state)


class GenerateFlow(Flow[T], Generic[T, S]):
    """Cold: each subscriber gets its own state from ``initial_state()``."""

    __slots__ = ("_generator", "_initial_state", "_on_dispose")

    def __init__(
        self,
        initial_state: Callable[[], S],
        generator: Callable[[S, SynchronousSink[T]], S],
        on_dispose: Callable[[S], object] | None = None,
    ) -> None:
        self._initial_state = initial_state
        self._generator = generator
        self._on_dispose = on_dispose

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        try:
            state = self._initial_state()
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return
        _GenerateSubscription(subscriber, state, self._generator, self._on_dispose, self).start()

    def __repr__(self) -> str:
        return f"Flow.generate({self._generator!r})"
