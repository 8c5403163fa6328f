"""Operators that fold the whole stream into one item: reduce."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from typing_extensions import override

from .._core._demand import UNBOUNDED, check_request
from .._core._hooks import report_undeliverable
from .._core._operator import OperatorSubscriber
from .._core._signals import signal_complete, signal_error
from ..sources._iterable import NoneItemError
from ._lift import LiftFlow

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscriber

__all__ = ["ScalarResultSubscriber", "reduce"]

T = TypeVar("T")
R = TypeVar("R")


class ScalarResultSubscriber(OperatorSubscriber[T, R]):
    """Consumes all of upstream and emits at most one result once it is requested.

    Demand: unbounded by design upstream (everything folds into one value);
    the single result waits for downstream demand. The terminal decision is
    taken under ``_lock``, so a downstream ``request`` racing the upstream
    completion emits the result exactly once, and a bad ``request`` (Rule 3.9)
    never overlaps it.
    """

    __slots__ = ("_finished", "_lock", "_ready", "_requested", "_result")

    def __init__(self, actual: Subscriber[R]) -> None:
        super().__init__(actual)
        self._lock = threading.Lock()
        # All guarded by _lock.
        self._result: R | None = None
        self._requested = False
        self._ready = False  # upstream completed; _result holds the answer (or None)
        self._finished = False  # the downstream terminal signal has been claimed

    @override
    def hook_on_subscribe(self) -> None:
        self._upstream.request(UNBOUNDED)

    @override
    def hook_on_complete(self) -> None:
        with self._lock:
            if self._finished:
                return
            if self._result is not None and not self._requested:
                self._ready = True
                # Downstream has not received its terminal signal yet: a cancel
                # before the result is requested must still run hook_on_cancel.
                self._done = False
                return
            self._finished = True
            result, self._result = self._result, None
        self._deliver(result)

    @override
    def hook_on_error(self, error: Exception) -> None:
        with self._lock:
            if self._finished:
                report_undeliverable(error, repr(self))
                return
            self._finished = True
            self._result = None
        signal_error(self._actual, error, self)

    @override
    def hook_on_request(self, n: int) -> None:
        error = check_request(n)
        with self._lock:
            if self._finished:
                return
            if error is None:
                self._requested = True
                if not self._ready:
                    return
            self._finished = True
            result, self._result = self._result, None
        if error is not None:
            self._done = True
            self._upstream.cancel()
            signal_error(self._actual, error, self)
        else:
            self._deliver(result)

    @override
    def hook_on_cancel(self) -> None:
        with self._lock:
            self._finished = True
            self._result = None

    @override
    def _fail(self, error: Exception) -> None:
        with self._lock:  # a failure is terminal: no result and no second error later
            self._finished = True
            self._result = None
        super()._fail(error)

    def _deliver(self, result: R | None) -> None:
        if result is not None:
            try:
                self._actual.on_next(result)
            except Exception as fault:  # Rule 2.13
                signal_error(self._actual, fault, self)
                return
        signal_complete(self._actual, self)


class _ReduceSubscriber(ScalarResultSubscriber[T, R]):
    __slots__ = ("_accumulator",)

    def __init__(
        self, actual: Subscriber[R], accumulator: Callable[[R, T], R], seed: R | None
    ) -> None:
        super().__init__(actual)
        self._accumulator = accumulator
        self._result = seed

    @override
    def hook_on_next(self, item: T) -> None:
        current = self._result
        if current is None:
            self._result = item  # type: ignore[assignment]
            return
        value = self._accumulator(current, item)
        if value is None:
            raise NoneItemError(f"reduce: {self._accumulator!r} returned None")
        self._result = value


def reduce(source: Flow[T], accumulator: Callable[[R, T], R], seed: object) -> Flow[R]:
    """See :meth:`Flow.reduce`."""
    from .._flow import NO_VALUE

    if seed is None:
        raise TypeError("reduce: the seed may not be None (None is not an item)")
    initial: R | None = None if seed is NO_VALUE else seed  # type: ignore[assignment]
    return LiftFlow(
        source, partial(_ReduceSubscriber, accumulator=accumulator, seed=initial), "reduce"
    )
