"""Operators that let some items through: filter, take, skip and their _while forms."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar, cast

from typing_extensions import override

from .._core._demand import check_request
from .._core._operator import OperatorSubscriber
from ._fusion import fuse
from ._lift import LiftFlow

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscriber

__all__ = ["distinct_until_changed", "filter_", "skip", "skip_while", "take", "take_while"]

T = TypeVar("T")


def _check_count(name: str, count: int) -> None:
    if type(count) is not int or count < 0:
        raise ValueError(f"{name}: count must be an int >= 0, got {count!r}")


class _FilterSubscriber(OperatorSubscriber[T, T]):
    __slots__ = ("_predicate",)

    def __init__(self, actual: Subscriber[T], predicate: Callable[[T], object]) -> None:
        super().__init__(actual)
        self._predicate = predicate

    @override
    def hook_on_next(self, item: T) -> None:
        if self._predicate(item):
            self._actual.on_next(item)
        else:
            self._upstream.request(1)  # a dropped item gives its demand back

    @override
    def try_on_next(self, item: T) -> bool:
        # The base try_on_next with the hook inlined (this is the hot path).
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._done:
            return True
        try:
            if not self._predicate(item):
                return False  # a conditional source keeps the demand: no request(1)
            downstream_try = self._downstream_try
            if downstream_try is None:
                self._actual.on_next(item)
                return True
            return downstream_try(item)
        except Exception as fault:
            self._fail(fault)
            return True


def filter_(source: Flow[T], predicate: Callable[[T], object]) -> Flow[T]:
    """See :meth:`Flow.filter`."""
    fused = fuse(source, "filter", predicate)
    if fused is not None:
        return cast("Flow[T]", fused)
    return LiftFlow(source, partial(_FilterSubscriber, predicate=predicate), "filter")


class _TakeSubscriber(OperatorSubscriber[T, T]):
    __slots__ = ("_lock", "_remaining", "_unrequested")

    def __init__(self, actual: Subscriber[T], count: int) -> None:
        super().__init__(actual)
        self._remaining = count  # items still to emit; touched only by on_next
        self._unrequested = count  # guarded by _lock: demand we may still pass upstream
        self._lock = threading.Lock()

    @override
    def hook_on_subscribe(self) -> None:
        if self._remaining == 0:
            self.complete()

    @override
    def hook_on_next(self, item: T) -> None:
        # Non-conditional path: downstream handles its own drops through
        # hook_on_request, which keeps the cap.
        self._remaining -= 1
        self._actual.on_next(item)
        if self._remaining == 0:
            self.complete()

    @override
    def hook_try_on_next(self, item: T) -> bool:
        self._remaining -= 1
        accepted = self.emit_conditional(item)
        if self._remaining == 0:
            self.complete()
        return accepted

    @override
    def hook_on_request(self, n: int) -> None:
        if check_request(n) is not None:
            self._upstream.request(n)  # upstream signals the Rule 3.9 error
            return
        with self._lock:
            allowed = min(n, self._unrequested)
            self._unrequested -= allowed
        if allowed:
            self._upstream.request(allowed)


def take(source: Flow[T], count: int) -> Flow[T]:
    """See :meth:`Flow.take`."""
    _check_count("take", count)
    fused = fuse(source, "take", count)
    if fused is not None:
        return cast("Flow[T]", fused)
    return LiftFlow(source, partial(_TakeSubscriber, count=count), "take")


class _SkipSubscriber(OperatorSubscriber[T, T]):
    __slots__ = ("_remaining",)

    def __init__(self, actual: Subscriber[T], count: int) -> None:
        super().__init__(actual)
        self._remaining = count

    @override
    def hook_on_next(self, item: T) -> None:
        if not self.hook_try_on_next(item):
            self._upstream.request(1)

    @override
    def hook_try_on_next(self, item: T) -> bool:
        if self._remaining:
            self._remaining -= 1
            return False
        return self.emit_conditional(item)


def skip(source: Flow[T], count: int) -> Flow[T]:
    """See :meth:`Flow.skip`."""
    _check_count("skip", count)
    fused = fuse(source, "skip", count)
    if fused is not None:
        return cast("Flow[T]", fused)
    return LiftFlow(source, partial(_SkipSubscriber, count=count), "skip")


class _TakeWhileSubscriber(OperatorSubscriber[T, T]):
    __slots__ = ("_predicate",)

    def __init__(self, actual: Subscriber[T], predicate: Callable[[T], object]) -> None:
        super().__init__(actual)
        self._predicate = predicate

    @override
    def hook_on_next(self, item: T) -> None:
        if self._predicate(item):
            self._actual.on_next(item)
        else:
            self.complete()

    @override
    def hook_try_on_next(self, item: T) -> bool:
        if self._predicate(item):
            return self.emit_conditional(item)
        self.complete()
        return True


def take_while(source: Flow[T], predicate: Callable[[T], object]) -> Flow[T]:
    """See :meth:`Flow.take_while`."""
    fused = fuse(source, "take_while", predicate)
    if fused is not None:
        return cast("Flow[T]", fused)
    return LiftFlow(source, partial(_TakeWhileSubscriber, predicate=predicate), "take_while")


class _SkipWhileSubscriber(OperatorSubscriber[T, T]):
    __slots__ = ("_predicate", "_skipping")

    def __init__(self, actual: Subscriber[T], predicate: Callable[[T], object]) -> None:
        super().__init__(actual)
        self._predicate = predicate
        self._skipping = True

    @override
    def hook_on_next(self, item: T) -> None:
        if not self.hook_try_on_next(item):
            self._upstream.request(1)

    @override
    def hook_try_on_next(self, item: T) -> bool:
        if self._skipping:
            if self._predicate(item):
                return False
            self._skipping = False
        return self.emit_conditional(item)


def skip_while(source: Flow[T], predicate: Callable[[T], object]) -> Flow[T]:
    """See :meth:`Flow.skip_while`."""
    fused = fuse(source, "skip_while", predicate)
    if fused is not None:
        return cast("Flow[T]", fused)
    return LiftFlow(source, partial(_SkipWhileSubscriber, predicate=predicate), "skip_while")


_NOTHING = object()


class _DistinctUntilChangedSubscriber(OperatorSubscriber[T, T]):
    __slots__ = ("_key", "_last")

    def __init__(self, actual: Subscriber[T], key: Callable[[T], object] | None) -> None:
        super().__init__(actual)
        self._key = key
        self._last: object = _NOTHING

    @override
    def hook_on_next(self, item: T) -> None:
        if not self.hook_try_on_next(item):
            self._upstream.request(1)

    @override
    def hook_try_on_next(self, item: T) -> bool:
        key = item if self._key is None else self._key(item)
        if self._last is not _NOTHING and key == self._last:
            return False
        self._last = key
        return self.emit_conditional(item)


def distinct_until_changed(source: Flow[T], key: Callable[[T], object] | None) -> Flow[T]:
    """See :meth:`Flow.distinct_until_changed`."""
    return LiftFlow(
        source,
        partial(_DistinctUntilChangedSubscriber, key=key),
        "distinct_until_changed",
    )
