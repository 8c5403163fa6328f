"""1:1 and batching transformations: map, scan, buffer (the ``do_*`` family: ``_side_effects``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar, cast

from typing_extensions import override

from .._core._demand import check_request, multiply_cap
from .._core._operator import OperatorSubscriber
from .._core._signals import signal_complete
from ..sources._iterable import NoneItemError
from ._fusion import fuse
from ._lift import LiftFlow

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscriber

__all__ = ["buffer", "map_", "scan"]

T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A")


class _MapSubscriber(OperatorSubscriber[T, R]):
    __slots__ = ("_mapper",)

    def __init__(self, actual: Subscriber[R], mapper: Callable[[T], R]) -> None:
        super().__init__(actual)
        self._mapper = mapper

    @override
    def hook_on_next(self, item: T) -> None:
        value = self._mapper(item)
        if value is None:
            raise NoneItemError(
                f"map: {self._mapper!r} returned None for {item!r}; None is not an item"
            )
        self._actual.on_next(value)

    @override
    def try_on_next(self, item: T) -> bool:
        # The base try_on_next with the hook inlined (this is the hot path).
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._done:
            return True
        try:
            value = self._mapper(item)
            if value is None:
                raise NoneItemError(
                    f"map: {self._mapper!r} returned None for {item!r}; None is not an item"
                )
            downstream_try = self._downstream_try
            if downstream_try is None:
                self._actual.on_next(value)
                return True
            return downstream_try(value)
        except Exception as fault:
            self._fail(fault)
            return True


def map_(source: Flow[T], mapper: Callable[[T], R]) -> Flow[R]:
    """See :meth:`Flow.map`."""
    fused = fuse(source, "map", mapper)
    if fused is not None:
        return cast("Flow[R]", fused)
    return LiftFlow(source, partial(_MapSubscriber, mapper=mapper), "map")


class _ScanSubscriber(OperatorSubscriber[T, A]):
    __slots__ = ("_accumulator", "_has_value", "_value")

    def __init__(
        self,
        actual: Subscriber[A],
        accumulator: Callable[[A, T], A],
        seed: A | None,
    ) -> None:
        super().__init__(actual)
        self._accumulator = accumulator
        self._has_value = seed is not None
        self._value = seed

    @override
    def hook_on_next(self, item: T) -> None:
        if self._has_value:
            value = self._accumulator(self._value, item)  # type: ignore[arg-type]
            if value is None:
                raise NoneItemError(f"scan: {self._accumulator!r} returned None")
        else:
            value = item  # type: ignore[assignment]
            self._has_value = True
        self._value = value
        self._actual.on_next(value)


def scan(source: Flow[T], accumulator: Callable[[A, T], A], seed: object) -> Flow[A]:
    """See :meth:`Flow.scan`."""
    from .._flow import NO_VALUE, Flow

    if seed is NO_VALUE:
        return LiftFlow(
            source, partial(_ScanSubscriber, accumulator=accumulator, seed=None), "scan"
        )
    if seed is None:
        raise TypeError("scan: the seed may not be None (None is not an item)")
    initial: A = seed  # type: ignore[assignment]
    rest: Flow[A] = LiftFlow(
        source, partial(_ScanSubscriber, accumulator=accumulator, seed=initial), "scan"
    )
    # The seed is an item like any other: concat makes it wait for demand.
    return Flow.concat(Flow.just(initial), rest)


class _BufferSubscriber(OperatorSubscriber[T, list[T]]):
    __slots__ = ("_batch", "_count")

    def __init__(self, actual: Subscriber[list[T]], count: int) -> None:
        super().__init__(actual)
        self._count = count
        self._batch: list[T] = []

    @override
    def hook_on_next(self, item: T) -> None:
        batch = self._batch
        batch.append(item)
        if len(batch) == self._count:
            self._batch = []
            self._actual.on_next(batch)

    @override
    def hook_on_complete(self) -> None:
        # Demand for the partial list exists: n lists asked n*count items and
        # fewer than that arrived.
        if self._batch:
            batch, self._batch = self._batch, []
            self._actual.on_next(batch)
        signal_complete(self._actual, self)

    @override
    def hook_on_request(self, n: int) -> None:
        if check_request(n) is None:
            self._upstream.request(multiply_cap(n, self._count))
        else:
            self._upstream.request(n)  # upstream signals the Rule 3.9 error

    @override
    def hook_on_cancel(self) -> None:
        self._batch = []


def buffer(source: Flow[T], count: int) -> Flow[list[T]]:
    """See :meth:`Flow.buffer`."""
    if type(count) is not int or count <= 0:
        raise ValueError(f"buffer: count must be a positive int, got {count!r}")
    return LiftFlow(source, partial(_BufferSubscriber, count=count), "buffer")
