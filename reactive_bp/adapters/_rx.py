"""reactivex interop (the ``rx`` extra): Observables in, Observables out.

An Observable cannot be slowed down, so ``from_observable`` always puts a
bounded ``OverflowStrategy`` between it and the subscriber; ``to_observable``
requests everything, because an Observer has no way to ask for less.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._core._push import OverflowStrategy
from ..subscribers._base import BaseSubscriber

if TYPE_CHECKING:
    import reactivex

    from .._flow import Flow
    from ..sources._push import Emitter

__all__ = ["from_observable", "to_observable"]

T = TypeVar("T")


def _reactivex() -> Any:
    try:
        import reactivex
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "reactivex interop needs the 'rx' extra: pip install 'reactive-bp[rx]'"
        ) from error
    return reactivex


def from_observable(
    observable: reactivex.Observable[T],
    capacity: int,
    overflow: OverflowStrategy,
    on_dropped: Callable[[T], object] | None,
) -> Flow[T]:
    """See :meth:`Flow.from_observable`."""
    from .._flow import Flow

    if overflow is OverflowStrategy.WAIT:
        raise ValueError(
            "from_observable: WAIT would block the Observable's thread; "
            "choose ERROR, DROP_NEWEST, DROP_OLDEST or LATEST"
        )

    def producer(emitter: Emitter[T]) -> None:
        def on_next(item: T) -> None:
            emitter.emit(item)  # the result is counted in emitter.stats

        disposable = observable.subscribe(
            on_next=on_next,
            on_error=lambda error: emitter.error(
                error if isinstance(error, Exception) else RuntimeError(str(error))
            ),
            on_completed=emitter.complete,
        )
        emitter.on_cancel(disposable.dispose)

    return Flow.create(producer, capacity, overflow, on_dropped)


class _ObserverBridge(BaseSubscriber[T]):
    __slots__ = ("_observer",)

    def __init__(self, observer: Any) -> None:
        super().__init__()
        self._observer = observer

    def hook_on_next(self, item: T) -> None:
        self._observer.on_next(item)

    def hook_on_error(self, error: Exception) -> None:
        self._observer.on_error(error)

    def hook_on_complete(self) -> None:
        self._observer.on_completed()


def to_observable(source: Flow[T]) -> reactivex.Observable[T]:
    """See :meth:`Flow.to_observable`."""
    rx = _reactivex()
    from reactivex.disposable import Disposable

    def subscribe(observer: Any, scheduler: Any = None) -> Any:
        bridge: _ObserverBridge[T] = _ObserverBridge(observer)
        source.subscribe(bridge)
        return Disposable(bridge.cancel)

    observable: reactivex.Observable[T] = rx.create(subscribe)
    return observable
