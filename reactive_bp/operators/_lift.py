"""``lift``: attach a subscriber-level operator between a flow and its subscriber."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from typing_extensions import override

from .._core._operator import EmptySubscription
from .._core._signals import signal_error
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber

__all__ = ["LiftFlow"]

T = TypeVar("T")
R = TypeVar("R")


class LiftFlow(Flow[R]):
    """``source`` seen through ``operator``: each subscriber gets its own operator instance."""

    __slots__ = ("_name", "_operator", "_source")

    def __init__(
        self,
        source: Publisher[T],
        operator: Callable[[Subscriber[R]], Subscriber[T]],
        name: str = "lift",
    ) -> None:
        self._source = source
        self._operator = operator
        self._name = name

    @override
    def _subscribe(self, subscriber: Subscriber[R]) -> None:
        try:
            upstream_subscriber = self._operator(subscriber)
            if upstream_subscriber is None:
                raise TypeError(f"{self!r}: the operator returned None, not a subscriber")
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return
        self._source.subscribe(upstream_subscriber)

    def __repr__(self) -> str:
        return f"{self._source!r}.{self._name}(...)"
