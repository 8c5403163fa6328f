"""``TestPublisher``: a publisher the test drives by hand, recording demand."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from .._core._demand import add_cap, check_request, produced
from .._core._hooks import ProtocolViolationError
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["TestPublisher"]

T = TypeVar("T")


class TestPublisher(Flow[T], Generic[T]):
    """A single-subscriber ``Flow`` whose signals the test sends explicitly.

    Records every ``request(n)`` (``requests``), the outstanding demand
    (``outstanding``), the most demand ever outstanding (``peak_outstanding``)
    and ``cancelled``. With ``strict=True`` (the default), ``next`` beyond the
    granted demand raises ``ProtocolViolationError`` in the test: the test is
    then the one breaking Rule 1.1, which is never what it meant to do.
    Bad ``request`` arguments are recorded in ``bad_requests`` (an operator
    should never pass one upstream unless its own downstream sent it).
    """

    __test__ = False

    __slots__ = (
        "_lock",
        "bad_requests",
        "cancelled",
        "outstanding",
        "peak_outstanding",
        "requests",
        "strict",
        "subscriber",
    )

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self.subscriber: Subscriber[T] | None = None
        self.requests: list[int] = []
        self.bad_requests: list[object] = []
        self.outstanding = 0
        self.peak_outstanding = 0
        self.cancelled = False
        self._lock = threading.Lock()

    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        if self.subscriber is not None:
            raise ProtocolViolationError("TestPublisher accepts one subscriber")
        self.subscriber = subscriber
        subscriber.on_subscribe(_TestSubscription(self))

    # -- driving ---------------------------------------------------------------------

    def send_next(self, *items: T) -> None:
        """Send ``items`` with ``on_next``, one by one."""
        subscriber = self._attached()
        for item in items:
            with self._lock:
                if self.strict and self.outstanding <= 0:
                    raise ProtocolViolationError(
                        f"TestPublisher.send_next({item!r}) without demand "
                        f"(requests={self.requests})"
                    )
                self.outstanding = produced(self.outstanding, 1) if self.outstanding else 0
            subscriber.on_next(item)

    def emit_all_requested(self, start: int = 0) -> int:
        """Send consecutive ints from ``start`` while there is demand; return the next int."""
        value = start
        while self.outstanding > 0 and not self.cancelled:
            self.send_next(value)  # type: ignore[arg-type]
            value += 1
        return value

    def send_complete(self) -> None:
        """Send ``on_complete``."""
        self._attached().on_complete()

    def send_error(self, error: Exception) -> None:
        """Send ``on_error``."""
        self._attached().on_error(error)

    @property
    def total_requested(self) -> int:
        """The sum of all valid requests, capped at ``UNBOUNDED``."""
        total = 0
        for n in self.requests:
            total = add_cap(total, n)
        return total

    def _attached(self) -> Subscriber[T]:
        if self.subscriber is None:
            raise ProtocolViolationError("TestPublisher has no subscriber yet")
        return self.subscriber

    def __repr__(self) -> str:
        return f"TestPublisher(requests={self.requests}, cancelled={self.cancelled})"


class _TestSubscription(Generic[T]):
    __slots__ = ("_publisher",)

    def __init__(self, publisher: TestPublisher[T]) -> None:
        self._publisher = publisher

    def request(self, n: int) -> None:
        publisher = self._publisher
        if check_request(n) is not None:
            publisher.bad_requests.append(n)
            return
        with publisher._lock:
            publisher.requests.append(n)
            publisher.outstanding = add_cap(publisher.outstanding, n)
            publisher.peak_outstanding = max(publisher.peak_outstanding, publisher.outstanding)

    def cancel(self) -> None:
        self._publisher.cancelled = True
