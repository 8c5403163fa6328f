"""``from_publisher``: adopt any third-party publisher behind a strict guard.

A ``Flow`` relies on its upstream keeping the rules. A publisher that did not
come from reactive_bp may not, so its signals pass through ``_StrictSubscriber``,
which turns every violation it can see into a clean ``on_error`` downstream
(plus a report to the undeliverable hook) instead of corrupting the pipeline:

* Rule 1.1 over-delivery, Rule 1.7 signals after a terminal, Rule 1.9
  ``on_next`` before ``on_subscribe``, Rule 2.5 a second subscription,
  Rule 2.13 a ``None`` item;
* Rule 1.3: overlapping signals from two threads are serialized (a re-entrant
  lock, so synchronous nesting on one thread is still allowed);
* Rule 3.9: demand is validated here, so a bad ``request`` is answered with
  ``on_error`` even if the publisher would have raised or ignored it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._demand import UNBOUNDED, add_cap, check_request
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED
from .._core._signals import signal_complete, signal_error
from .._flow import Flow
from ._iterable import NoneItemError

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber, Subscription

__all__ = ["PublisherFlow"]

T = TypeVar("T")


class _StrictSubscriber(Generic[T]):
    __slots__ = (
        "_actual",
        "_delivered",
        "_demand_lock",
        "_done",
        "_requested",
        "_signal_lock",
        "_source",
        "_upstream",
    )

    def __init__(self, actual: Subscriber[T], source: object) -> None:
        self._actual = actual
        self._source = source
        self._upstream: Subscription = CANCELLED
        # Guarded by _demand_lock.
        self._requested = 0
        # Only touched while holding _signal_lock.
        self._delivered = 0
        self._done = False
        self._demand_lock = threading.Lock()
        self._signal_lock = threading.RLock()

    # -- from the third-party publisher --------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._signal_lock:
            if self._upstream is not CANCELLED or self._done:
                _cancel_quietly(subscription)
                self._violation("Rule 2.5: on_subscribe called twice; the second was cancelled")
                return
            self._upstream = subscription
            try:
                self._actual.on_subscribe(self)
            except Exception as fault:  # Rule 2.13
                self._terminate(fault)

    def on_next(self, item: T) -> None:
        if item is None:
            with self._signal_lock:
                self._terminate(NoneItemError(f"{self._source!r} emitted None"))
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        with self._signal_lock:
            if self._done:
                return
            if self._upstream is CANCELLED:
                self._violation("Rule 1.9: on_next before on_subscribe")
                return
            delivered = self._delivered + 1
            if delivered > self._requested:
                self._terminate(
                    ProtocolViolationError(
                        f"Rule 1.1: {self._source!r} delivered item #{delivered} "
                        f"but only {self._requested} were requested"
                    )
                )
                return
            self._delivered = delivered
            try:
                self._actual.on_next(item)
            except Exception as fault:  # Rule 2.13
                self._terminate(fault)

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        with self._signal_lock:
            if self._done:
                report_undeliverable(error, f"{self._source!r} after terminal (Rule 1.7)")
                return
            self._ensure_subscribed("on_error")
            self._done = True
            self._upstream = CANCELLED
            signal_error(self._actual, error, self._source)

    def on_complete(self) -> None:
        with self._signal_lock:
            if self._done:
                return
            self._ensure_subscribed("on_complete")
            self._done = True
            self._upstream = CANCELLED
            signal_complete(self._actual, self._source)

    def _ensure_subscribed(self, signal: str) -> None:
        """Rule 1.9: downstream must see on_subscribe before a terminal signal."""
        if self._upstream is CANCELLED:
            self._violation(f"Rule 1.9: {signal} before on_subscribe")
            try:
                self._actual.on_subscribe(self)
            except Exception as fault:  # Rule 2.13
                report_undeliverable(fault, f"{self._actual!r}.on_subscribe")

    # -- from downstream ---------------------------------------------------------

    def request(self, n: int) -> None:
        error = check_request(n)
        if error is not None:
            with self._signal_lock:
                self._terminate(error)
            return
        with self._demand_lock:
            if self._done:
                return
            self._requested = add_cap(self._requested, n)
        upstream = self._upstream
        try:
            upstream.request(n if n < UNBOUNDED else UNBOUNDED)
        except Exception as fault:  # Rule 3.16: request must return normally
            with self._signal_lock:
                self._terminate(fault)

    def cancel(self) -> None:
        self._done = True
        upstream, self._upstream = self._upstream, CANCELLED
        _cancel_quietly(upstream)

    # -- helpers -----------------------------------------------------------------

    def _terminate(self, error: Exception) -> None:
        """Cancel upstream and fail downstream once. Caller holds _signal_lock."""
        if self._done:
            report_undeliverable(error, repr(self._source))
            return
        self._done = True
        upstream, self._upstream = self._upstream, CANCELLED
        _cancel_quietly(upstream)
        signal_error(self._actual, error, self._source)

    def _violation(self, message: str) -> None:
        report_undeliverable(ProtocolViolationError(message), repr(self._source))


def _cancel_quietly(subscription: Subscription) -> None:
    try:
        subscription.cancel()
    except Exception as fault:  # Rule 3.15: cancel must return normally
        report_undeliverable(fault, f"{subscription!r}.cancel()")


class PublisherFlow(Flow[T]):
    """Wraps a publisher that is not a ``Flow``."""

    __slots__ = ("_publisher",)

    def __init__(self, publisher: Publisher[T]) -> None:
        if publisher is None or not callable(getattr(publisher, "subscribe", None)):
            raise TypeError(f"from_publisher needs an object with subscribe(), got {publisher!r}")
        self._publisher = publisher

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        self._publisher.subscribe(_StrictSubscriber(subscriber, self._publisher))

    def __repr__(self) -> str:
        return f"Flow.from_publisher({self._publisher!r})"
