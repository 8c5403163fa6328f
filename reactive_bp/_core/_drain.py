"""The serialized drain loop that every pull source is built on.

``PullSubscription`` owns the demand, the lock and the terminal checks; a
source only writes ``_emit(actual, n)``, a loop that emits up to ``n`` items.

How the rules hold:

* Rule 1.3 (serial signals) and Rule 3.3 (bounded recursion): exactly one
  thread at a time owns the drain loop (``_emitting``). A ``request`` that
  arrives while the loop runs, from ``on_next`` on the same thread or from any
  other thread, only adds to ``_requested`` and returns; the owner picks the
  new demand up at the end of its batch. Recursion depth is therefore 1 even
  for 1,000,000 synchronous items.
* Demand is read and subtracted once per batch, under the lock, never per item.
* Rule 3.9: a bad ``request`` stops the loop and the owner signals the error,
  so the error never overlaps an ``on_next``.
* Rules 1.7, 3.6, 3.7: after a terminal signal or ``cancel`` nothing more is
  signalled and further calls are no-ops.
* Rule 3.13: on cancel or termination the subscription drops its reference to
  the subscriber (``_release``).
* Rule 2.13: if ``actual.on_next`` raises, the subscription is treated as
  cancelled and the error is delivered to ``actual.on_error``.
* Exactly one terminal signal: how the stream ends is recorded in one
  ``Terminal`` (``_terminal.py``); the source's own ending goes through
  ``Terminal.finish`` and the loop owner delivers a stop's error through
  ``Terminal.claim``, so the two can never both be signalled.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from ._demand import UNBOUNDED, add_cap, check_request, produced
from ._hooks import report_undeliverable
from ._signals import signal_complete, signal_error
from ._terminal import Terminal

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["PullSubscription", "SubscriberFault"]

T = TypeVar("T")


class SubscriberFault(Exception):
    """Wraps an exception raised by the downstream ``on_next`` (Rule 2.13).

    Raised inside ``_emit`` so the drain loop can tell a failing subscriber
    from a failing source.
    """

    __slots__ = ("cause",)

    def __init__(self, cause: Exception) -> None:
        super().__init__(cause)
        self.cause = cause


class PullSubscription(Generic[T]):
    """A subscription whose source produces items only while there is demand."""

    __slots__ = ("_actual", "_emitting", "_lock", "_requested", "_stopped", "_terminal")

    def __init__(self, actual: Subscriber[T]) -> None:
        # Invariant: _actual is None only after _release (Rule 3.13).
        self._actual: Subscriber[T] | None = actual
        self._lock = threading.Lock()
        # Guarded by _lock: outstanding demand, capped at UNBOUNDED.
        self._requested = 0
        # Guarded by _lock: True while one thread owns the drain loop; stays
        # True after a stop so no loop ever starts again.
        self._emitting = False
        # Set once under _lock (by cancel, a bad request, a fault or the
        # source's ending), after _terminal changed; read without the lock in
        # the per-item loop.
        self._stopped = False
        # How the stream ends: a stop's error waits here for the loop owner.
        self._terminal = Terminal(self)

    # -- the Subscription interface ----------------------------------------

    def request(self, n: int) -> None:
        """Add ``n`` to the demand and drain (Rules 3.8, 3.9, 3.17)."""
        error = check_request(n)
        with self._lock:
            if self._stopped:
                if error is not None:
                    # Stopping but not yet ended: the ending still in progress
                    # picks the Rule 3.9 error up; after it, a no-op (Rule 3.6).
                    self._terminal.fail(error, eager=True, quiet=True)
                return  # Rule 3.6
            if error is None:
                self._requested = add_cap(self._requested, n)
            else:
                self._terminal.fail(error, eager=True, quiet=True)
                self._stopped = True
            if self._emitting:
                return  # Rule 3.3: the running loop takes the new demand
            self._emitting = True
        self._drain()

    def cancel(self) -> None:
        """Stop signalling and release the subscriber (Rules 3.5, 3.7, 3.12, 3.13)."""
        with self._lock:
            self._terminal.cancel()  # a stop's error not yet signalled is dropped
            self._stopped = True
            if self._emitting:
                return  # the loop owner releases when it sees _stopped
            self._emitting = True
        self._release()

    # -- for subclasses ------------------------------------------------------

    def start(self) -> None:
        """Deliver ``on_subscribe`` to the subscriber (Rule 1.9)."""
        actual = self._actual
        assert actual is not None
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fault(fault)

    def _emit(self, actual: Subscriber[T], n: int) -> int:
        """Emit up to ``n`` items to ``actual``; return how many were emitted.

        Stop early when ``self._stopped`` is set. A source that is exhausted
        calls ``_finish``. Wrap an exception from ``actual.on_next`` in
        ``SubscriberFault``; any other exception must be handled by the source.
        Returning fewer than ``n`` without finishing means "nothing more for now".
        """
        raise NotImplementedError

    def _on_release(self) -> None:
        """Free source resources (close an iterator, dispose a state)."""

    def _finish(self, actual: Subscriber[T], error: Exception | None = None) -> None:
        """Signal the terminal event once, unless cancelled (Rules 1.4, 1.5, 1.7).

        A stop recorded first (a Rule 3.9 bad request) wins over the source's
        own ending, which is then reported rather than signalled.
        """
        with self._lock:
            self._stopped = True
        ending = self._terminal.finish(error)
        if ending is None:
            return  # cancelled
        if ending.error is None:
            signal_complete(actual, self)
        else:
            signal_error(actual, ending.error, self)

    def _fault(self, error: Exception) -> None:
        """Stop and signal ``error`` from whichever thread owns the loop."""
        with self._lock:
            late = self._stopped
            if not late:
                self._terminal.fail(error, eager=True)
                self._stopped = True
                if self._emitting:
                    return
                self._emitting = True
        if late:
            if not self._terminal.is_cancelled:
                report_undeliverable(error, repr(self))
            return
        self._drain()

    # -- the loop --------------------------------------------------------------

    def _drain(self) -> None:
        actual = self._actual
        if actual is None:  # pragma: no cover - released subscriptions never drain
            return
        lock = self._lock
        while True:
            with lock:
                if self._stopped:
                    break
                n = self._requested
                if n == 0:
                    self._emitting = False
                    return
            try:
                emitted = self._emit(actual, n)
            except SubscriberFault as fault:
                with lock:
                    # Rule 2.13: signalled below; reported if too late.
                    self._terminal.fail(fault.cause, eager=True)
                    self._stopped = True
                break
            with lock:
                if self._stopped:
                    break
                self._requested = produced(self._requested, emitted)
                if emitted < n:
                    self._emitting = False  # the source has nothing more for now
                    return
        ending = self._terminal.claim()  # a stop's error, if one is waiting
        if ending is not None:
            if ending.error is None:  # pragma: no cover - completion goes through _finish
                signal_complete(actual, self)
            else:
                signal_error(actual, ending.error, self)
        self._release()

    def _release(self) -> None:
        if self._actual is None:
            return  # released once already
        self._actual = None
        try:
            self._on_release()
        except Exception as error:
            report_undeliverable(error, f"{self!r} while releasing")

    @property
    def requested(self) -> int:
        """The outstanding demand (``UNBOUNDED`` once it is unbounded)."""
        return self._requested

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "active"
        demand = "unbounded" if self._requested == UNBOUNDED else str(self._requested)
        return f"<{type(self).__name__} {state} requested={demand}>"
