"""``Flow.subscribe_with``: callbacks plus a request policy, returning a handle."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from typing_extensions import override

from ._base import BaseSubscriber, RequestPolicy

if TYPE_CHECKING:
    from .._flow import Flow

__all__ = ["Disposable", "LambdaSubscriber", "subscribe_with"]

T = TypeVar("T")


class Disposable(Protocol):
    """A handle on a running subscription."""

    def dispose(self) -> None:
        """Cancel the subscription; idempotent."""

    @property
    def is_disposed(self) -> bool:
        """Whether the subscription has ended (terminal signal or dispose)."""


class LambdaSubscriber(BaseSubscriber[T]):
    """A ``BaseSubscriber`` whose hooks are the given callbacks."""

    __slots__ = ("_on_complete", "_on_error", "_on_next")

    def __init__(
        self,
        on_next: Callable[[T], object] | None = None,
        on_error: Callable[[Exception], object] | None = None,
        on_complete: Callable[[], object] | None = None,
        request: RequestPolicy | None = None,
    ) -> None:
        super().__init__(request)
        self._on_next = on_next
        self._on_error = on_error
        self._on_complete = on_complete
        if on_next is not None:
            self._next_hook = on_next  # one call per item instead of two

    @override
    def hook_on_next(self, item: T) -> None:
        if self._on_next is not None:
            self._on_next(item)

    @override
    def hook_on_error(self, error: Exception) -> None:
        if self._on_error is None:
            super().hook_on_error(error)
        else:
            self._on_error(error)

    @override
    def hook_on_complete(self) -> None:
        if self._on_complete is not None:
            self._on_complete()


def subscribe_with(
    source: Flow[T],
    on_next: Callable[[T], object] | None,
    on_error: Callable[[Exception], object] | None,
    on_complete: Callable[[], object] | None,
    request: RequestPolicy | None,
) -> Disposable:
    """See :meth:`Flow.subscribe_with`."""
    subscriber = LambdaSubscriber(on_next, on_error, on_complete, request)
    source.subscribe(subscriber)
    return subscriber
