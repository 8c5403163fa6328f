"""``from_publisher``: adopt any third-party publisher behind a strict guard.

A ``Flow`` relies on its upstream keeping the rules. A publisher that did not
come from reactive_bp may not, so its signals pass through ``_StrictSubscriber``,
which turns every violation it can see into a clean ``on_error`` downstream,
and every signal it cannot deliver any more into a report to the
undeliverable hook, instead of corrupting the pipeline:

* ends the stream with ``on_error``: Rule 1.1 over-delivery, Rule 1.9
  ``on_next`` before ``on_subscribe`` (``ProtocolViolationError``), Rule 2.13
  a ``None`` item, Rule 3.16 a ``request`` that raises, and Rule 1.9 a
  ``subscribe`` that raises instead of returning normally (the subscriber gets
  ``on_subscribe`` first if it had not, then that exception);
* reported to the hook: Rule 1.7 anything after the publisher's own
  ``on_complete``/``on_error`` (an item, a second terminal), Rule 2.5 a second
  subscription (cancelled), Rule 1.9 a terminal signal before ``on_subscribe``
  (the subscriber still gets ``on_subscribe`` first);
* Rule 1.3: overlapping signals from two threads are serialized (a re-entrant
  lock, so synchronous nesting on one thread is still allowed);
* Rule 3.9: demand is validated here, so a bad ``request`` is answered with
  ``on_error`` even if the publisher would have raised or ignored it;
* Rule 3.13: after ``cancel`` or the terminal signal, the subscriber is dropped.

How the stream ends is kept in one ``Terminal``; every ending is delivered
under ``_signal_lock`` at the moment it is decided (``Terminal.finish``), so
there is no state in which the stream is over but its error is not known.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import cancel_quietly
from .._core._demand import UNBOUNDED, add_cap, check_request
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, DETACHED, EmptySubscription
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from .._flow import Flow
from ._iterable import NoneItemError

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber, Subscription

__all__ = ["PublisherFlow"]

T = TypeVar("T")

_NOT_YET: Final = EmptySubscription()
"""``_StrictSubscriber._upstream`` before ``on_subscribe`` (and before downstream got one)."""

_ENDED: Final = EmptySubscription()
"""``_StrictSubscriber._upstream`` after the publisher's own terminal signal."""


class _StrictSubscriber(Generic[T]):
    __slots__ = (
        "_actual",
        "_delivered",
        "_demand_lock",
        "_requested",
        "_signal_lock",
        "_source",
        "_terminal",
        "_upstream",
    )

    def __init__(self, actual: Subscriber[T], source: object) -> None:
        # Invariant: the subscriber until the ending was delivered or
        # downstream cancelled, DETACHED after (Rule 3.13).
        self._actual: Subscriber[T] = actual
        self._source = source
        # Written under _signal_lock, except by cancel (which only ever
        # writes CANCELLED). Invariant: _NOT_YET until downstream got
        # on_subscribe; the publisher's subscription while it runs; _ENDED
        # once the publisher signalled its terminal (what it sends after that
        # breaks Rule 1.7); CANCELLED once downstream cancelled or the guard
        # ended the stream itself (what it sends after that is Rule 2.8 noise).
        self._upstream: Subscription = _NOT_YET
        # Guarded by _demand_lock.
        self._requested = 0
        # Only touched while holding _signal_lock.
        self._delivered = 0
        # How the stream ends; closed once the ending was delivered or downstream cancelled.
        self._terminal = Terminal(source)
        self._demand_lock = threading.Lock()
        self._signal_lock = threading.RLock()

    # -- from the third-party publisher --------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._signal_lock:
            current = self._upstream
            if current is not _NOT_YET:
                cancel_quietly(subscription)
                if current is _ENDED:
                    self._violation("Rule 1.7: on_subscribe after the terminal signal; cancelled")
                elif current is not CANCELLED:  # after cancel or our own ending it is expected
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
            upstream = self._upstream
            if upstream is CANCELLED:
                return  # Rule 2.8: items may still arrive after cancel
            if upstream is _ENDED:
                self._violation(f"Rule 1.7: on_next({item!r}) after the terminal signal")
                return
            if upstream is _NOT_YET:
                self._start_early()
                self._terminate(ProtocolViolationError("Rule 1.9: on_next before on_subscribe"))
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
            upstream = self._upstream
            if upstream is _ENDED or upstream is CANCELLED:
                report_undeliverable(error, f"{self._source!r} after terminal/cancel (Rule 1.7)")
                return
            if upstream is _NOT_YET:
                self._violation("Rule 1.9: on_error before on_subscribe")
                self._start_early()
            self._upstream = _ENDED
            if self._terminal.finish(error) is not None:  # None: cancelled meanwhile (reported)
                signal_error(self._release(), error, self._source)

    def on_complete(self) -> None:
        with self._signal_lock:
            upstream = self._upstream
            if upstream is CANCELLED:
                return  # Rule 2.8: after cancel, or after the guard ended the stream
            if upstream is _ENDED:
                self._violation("Rule 1.7: on_complete after the terminal signal")
                return
            if upstream is _NOT_YET:
                self._violation("Rule 1.9: on_complete before on_subscribe")
                self._start_early()
            self._upstream = _ENDED
            if self._terminal.finish() is not None:
                signal_complete(self._release(), self._source)

    def subscribe_raised(self, error: Exception) -> None:
        """The publisher's ``subscribe`` raised (Rule 1.9: it must return normally)."""
        with self._signal_lock:
            if self._terminal.is_closed:
                report_undeliverable(error, f"{self._source!r}.subscribe() after terminal")
                return
            if self._upstream is _NOT_YET:
                self._start_early()
            self._terminate(error)

    # -- from downstream ---------------------------------------------------------

    def request(self, n: int) -> None:
        if self._terminal.is_closed:
            return  # Rule 3.6
        error = check_request(n)
        if error is not None:
            with self._signal_lock:
                if not self._terminal.is_closed:  # a second bad request is a no-op
                    self._terminate(error)
            return
        with self._demand_lock:
            self._requested = add_cap(self._requested, n)
        upstream = self._upstream
        try:
            upstream.request(n if n < UNBOUNDED else UNBOUNDED)
        except Exception as fault:  # Rule 3.16: request must return normally
            with self._signal_lock:
                self._terminate(fault)

    def cancel(self) -> None:
        if not self._terminal.cancel():
            return  # Rule 3.7: already cancelled, or the ending was delivered
        self._actual = DETACHED
        upstream, self._upstream = self._upstream, CANCELLED
        if upstream is not _ENDED:
            cancel_quietly(upstream)

    # -- helpers (caller holds _signal_lock) ----------------------------------------

    def _start_early(self) -> None:
        """Rule 1.9: downstream must see on_subscribe before anything else."""
        self._upstream = CANCELLED  # the guard ends the stream next; its own on_subscribe is late
        try:
            self._actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            report_undeliverable(fault, f"{self._actual!r}.on_subscribe")

    def _terminate(self, error: Exception) -> None:
        """End the stream from the guard: cancel the publisher, fail downstream once."""
        if self._terminal.finish(error) is None:
            return  # already over: finish reported the error (Rule 1.7)
        upstream, self._upstream = self._upstream, CANCELLED
        if upstream is not _ENDED:
            cancel_quietly(upstream)
        signal_error(self._release(), error, self._source)

    def _release(self) -> Subscriber[T]:
        """Take the subscriber for its terminal signal and drop it (Rule 3.13)."""
        actual, self._actual = self._actual, DETACHED
        return actual

    def _violation(self, message: str) -> None:
        report_undeliverable(ProtocolViolationError(message), repr(self._source))


class PublisherFlow(Flow[T]):
    """Wraps a publisher that is not a ``Flow``."""

    __slots__ = ("_publisher",)

    def __init__(self, publisher: Publisher[T]) -> None:
        if publisher is None or not callable(getattr(publisher, "subscribe", None)):
            raise TypeError(f"from_publisher needs an object with subscribe(), got {publisher!r}")
        self._publisher = publisher

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        guard = _StrictSubscriber(subscriber, self._publisher)
        try:
            self._publisher.subscribe(guard)
        except Exception as error:  # Rule 1.9: never out of Flow.subscribe
            guard.subscribe_raised(error)

    def __repr__(self) -> str:
        return f"Flow.from_publisher({self._publisher!r})"
