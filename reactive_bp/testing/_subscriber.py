"""``TestSubscriber``: records every signal and every rule it sees broken."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from .._core._demand import add_cap
from .._core._operator import CANCELLED

if TYPE_CHECKING:
    from ..abc import Subscription

__all__ = ["TestSubscriber"]

T = TypeVar("T")


class TestSubscriber(Generic[T]):
    """A subscriber that records signals and checks the publisher side of the spec.

    ``violations`` collects, as readable strings, every rule the publisher
    broke towards this subscriber: a signal before ``on_subscribe`` (Rule 1.9),
    a second ``on_subscribe`` (Rule 2.12), more items than requested (Rule 1.1),
    a signal after a terminal one (Rule 1.7), overlapping signals from two
    threads (Rule 1.3). Demand is requested with ``request(n)``;
    ``initial_request`` is requested inside ``on_subscribe``.
    """

    __test__ = False  # not a pytest test class

    __slots__ = (
        "__weakref__",
        "_busy",
        "_cancel_after",
        "_done",
        "_initial",
        "_request_lock",
        "_request_on_next",
        "cancelled",
        "completed",
        "errors",
        "items",
        "requested",
        "signals",
        "subscription",
        "violations",
    )

    def __init__(
        self,
        initial_request: int = 0,
        *,
        request_on_next: int = 0,
        cancel_after: int | None = None,
    ) -> None:
        self._request_on_next = request_on_next
        self._cancel_after = cancel_after
        self.subscription: Subscription = CANCELLED
        self.items: list[T] = []
        self.errors: list[Exception] = []
        self.completed = False
        self.cancelled = False
        self.requested = 0
        self.signals: list[str] = []
        self.violations: list[str] = []
        self._done = threading.Event()
        self._busy = threading.Lock()
        self._request_lock = threading.Lock()
        self._initial = initial_request

    # -- Subscriber ----------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Record the subscription and make the initial request."""
        with self._signal("on_subscribe"):
            if self.subscription is not CANCELLED:
                self.violations.append("Rule 2.12: on_subscribe called twice")
                return
            self.subscription = subscription
        if self._initial:
            self.request(self._initial)

    def on_next(self, item: T) -> None:
        """Record an item; check it was requested."""
        with self._signal(f"on_next({item!r})"):
            if self.subscription is CANCELLED and not self.cancelled:
                self.violations.append("Rule 1.9: on_next before on_subscribe")
            if self._done.is_set():
                self.violations.append(f"Rule 1.7: on_next({item!r}) after a terminal signal")
            self.items.append(item)
            if len(self.items) > self.requested:
                self.violations.append(
                    f"Rule 1.1: item #{len(self.items)} ({item!r}) but only "
                    f"{self.requested} requested"
                )
        if self._cancel_after is not None and len(self.items) >= self._cancel_after:
            self.cancel()
        elif self._request_on_next:
            self.request(self._request_on_next)

    def on_error(self, error: Exception) -> None:
        """Record the failure."""
        with self._signal(f"on_error({error!r})"):
            if self._done.is_set():
                self.violations.append(f"Rule 1.7: on_error({error!r}) after a terminal signal")
            self.errors.append(error)
            self._done.set()

    def on_complete(self) -> None:
        """Record the completion."""
        with self._signal("on_complete"):
            if self._done.is_set():
                self.violations.append("Rule 1.7: on_complete after a terminal signal")
            self.completed = True
            self._done.set()

    # -- control ---------------------------------------------------------------------

    def request(self, n: int) -> None:
        """Request ``n`` more items (counted only when ``n`` is a positive int)."""
        if type(n) is int and n > 0:
            with self._request_lock:
                self.requested = add_cap(self.requested, n)
        self.subscription.request(n)

    def cancel(self) -> None:
        """Cancel the subscription."""
        self.cancelled = True
        self.subscription.cancel()

    def await_terminal(self, timeout: float = 5.0) -> bool:
        """Wait until ``on_complete`` or ``on_error``; return whether it came."""
        return self._done.wait(timeout)

    @property
    def is_terminated(self) -> bool:
        """Whether ``on_complete`` or ``on_error`` was received."""
        return self._done.is_set()

    def assert_clean(self) -> None:
        """Raise ``AssertionError`` listing the violations, if any."""
        if self.violations:
            raise AssertionError("; ".join(self.violations) + f"\nsignals: {self.signals}")

    # -- internals ----------------------------------------------------------------------

    def _signal(self, name: str) -> _Overlap:
        self.signals.append(name)
        return _Overlap(self._busy, self.violations, name)

    def __repr__(self) -> str:
        return (
            f"TestSubscriber(items={len(self.items)}, requested={self.requested}, "
            f"completed={self.completed}, errors={self.errors!r})"
        )


class _Overlap:
    """Detects two threads inside the subscriber's signal methods (Rule 1.3)."""

    __slots__ = ("_acquired", "_busy", "_name", "_violations")

    def __init__(self, busy: threading.Lock, violations: list[str], name: str) -> None:
        self._busy = busy
        self._violations = violations
        self._name = name
        self._acquired = False

    def __enter__(self) -> None:
        self._acquired = self._busy.acquire(blocking=False)
        if not self._acquired and not _reentrant.depth:
            self._violations.append(f"Rule 1.3: {self._name} overlapped another signal")
        _reentrant.depth += 1

    def __exit__(self, *exc: object) -> None:
        _reentrant.depth -= 1
        if self._acquired:
            self._busy.release()


class _Depth(threading.local):
    depth = 0


_reentrant = _Depth()
