"""The base class that makes a 1:1 operator correct by construction.

An operator author subclasses :class:`OperatorSubscriber` and writes
``hook_on_next`` (and, if needed, the other hooks). The spec methods are final
and uphold, for every operator alike:

* Rule 2.13: ``on_subscribe(None)`` / ``on_next(None)`` / ``on_error(None)``
  raise ``TypeError`` to the caller; a hook that raises (a mapper, a
  predicate, or the downstream ``on_next``) cancels upstream and becomes
  ``on_error`` downstream, exactly once.
* Rule 2.5: a second ``on_subscribe`` is cancelled and reported.
* Rules 1.7, 2.8: after a terminal signal or ``cancel`` nothing more goes
  downstream; late upstream items are dropped, late errors are reported to the
  undeliverable hook rather than swallowed.
* Conditional fast path (the idea of Reactor's ``ConditionalSubscriber``):
  a source that finds ``try_on_next`` on its subscriber calls it instead of
  ``on_next`` and counts an item against demand only when it returns
  ``True``. An operator that drops an item (``filter``) then returns ``False``
  instead of calling ``request(1)`` upstream: same demand, no round trip.
* ``request`` and ``cancel`` pass through to upstream (which validates demand
  and serializes the resulting signals, Rules 1.3 and 3.9), unless the operator
  overrides ``hook_on_request``.
* Rule 3.13: ``cancel`` drops the downstream subscriber: ``_actual`` becomes
  ``DETACHED`` and ``_downstream_try`` ``None``, so a caller that still holds
  the subscription no longer keeps the subscriber reachable. Both are
  replaced, never cleared to ``None`` in ``_actual``: an ``on_next`` racing
  the cancel on another thread reads either the subscriber or ``DETACHED``,
  and the per-item path needs no lock and no extra check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar, final

from ._arbiter import refuse_second_subscription
from ._hooks import report_undeliverable
from ._signals import signal_complete, signal_error

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription

__all__ = ["CANCELLED", "DETACHED", "DetachedSubscriber", "EmptySubscription", "OperatorSubscriber"]

T = TypeVar("T")
R = TypeVar("R")


class EmptySubscription:
    """A subscription with nothing behind it: every call is a no-op."""

    __slots__ = ()

    def request(self, n: int) -> None:
        """Ignore ``n``: nothing will ever be signalled."""

    def cancel(self) -> None:
        """Nothing to cancel."""

    def __repr__(self) -> str:
        return "EmptySubscription()"


CANCELLED = EmptySubscription()
"""Placeholder for "no upstream yet" and "upstream released"."""


class DetachedSubscriber:
    """What a subscription holds instead of its subscriber once that cancelled (Rule 3.13).

    Every signal is dropped, except an error: nothing is swallowed, so an
    error that reaches it (an upstream failure racing the cancel) goes to the
    undeliverable hook, as any error after cancel does (Rule 1.7).
    """

    __slots__ = ()

    def on_subscribe(self, subscription: Subscription) -> None:
        """Cancel ``subscription``: nobody is listening any more."""
        try:
            subscription.cancel()
        except Exception as fault:  # Rule 3.15
            report_undeliverable(fault, f"{subscription!r}.cancel()")

    def on_next(self, item: object) -> None:
        """Drop ``item`` (Rule 2.8: items may still arrive after cancel)."""

    def try_on_next(self, item: object) -> bool:
        """Drop ``item``; report it as consumed so a conditional source does not retry it."""
        return True

    def on_error(self, error: Exception) -> None:
        """Report ``error``: it arrived after cancel."""
        report_undeliverable(error, "a subscriber after cancel (Rule 1.7)")

    def on_complete(self) -> None:
        """Nothing to do."""

    def __repr__(self) -> str:
        return "DETACHED"


DETACHED = DetachedSubscriber()
"""The subscriber of a subscription that was cancelled (Rule 3.13)."""


class OperatorSubscriber(Generic[T, R]):
    """Subscriber to upstream ``T`` and subscription for downstream ``R``.

    Override ``hook_on_next`` (required) and optionally ``hook_on_subscribe``,
    ``hook_on_error``, ``hook_on_complete``, ``hook_on_request`` and
    ``hook_on_cancel``. Inside hooks use ``emit``, ``request_upstream``,
    ``complete`` and ``error``.
    """

    __slots__ = ("_actual", "_done", "_downstream_try", "_upstream")

    def __init__(self, actual: Subscriber[R]) -> None:
        # Invariant: the downstream subscriber until cancel, DETACHED after
        # (Rule 3.13). Written once more, by cancel, without a lock: a reader
        # on another thread sees one or the other, both callable.
        self._actual: Subscriber[R] = actual
        # The downstream conditional entry point, if it has one; None after
        # cancel (then the hot paths fall back to _actual, i.e. DETACHED).
        self._downstream_try: Callable[[R], bool] | None = getattr(actual, "try_on_next", None)
        # Invariant: CANCELLED until on_subscribe; the single upstream after.
        self._upstream: Subscription = CANCELLED
        # Set once by a terminal signal, an operator's own completion or
        # cancel; afterwards nothing goes downstream (Rule 1.7).
        self._done = False

    # -- upstream side (Subscriber) -------------------------------------------

    @final
    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept the upstream subscription and hand ``self`` downstream (Rule 1.9)."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._upstream is not CANCELLED:
            refuse_second_subscription(subscription, type(self).__name__)  # Rule 2.5
            return
        self._upstream = subscription
        try:
            self._actual.on_subscribe(self)
            self.hook_on_subscribe()
        except Exception as fault:
            self._fail(fault)

    @final
    def on_next(self, item: T) -> None:
        """Run ``hook_on_next`` unless terminated; a raising hook becomes ``on_error``."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._done:
            return  # Rule 2.8: items may still arrive after cancel
        try:
            self.hook_on_next(item)
        except Exception as fault:
            self._fail(fault)

    def try_on_next(self, item: T) -> bool:
        """Like ``on_next``, but return ``False`` when the item consumed no demand.

        Not final: the hottest built-ins (``map``, ``filter``) override it with
        the same checks inlined, which saves a call per item. Everyone else
        writes ``hook_try_on_next``.
        """
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._done:
            return True
        try:
            return self.hook_try_on_next(item)
        except Exception as fault:
            self._fail(fault)
            return True

    @final
    def on_error(self, error: Exception) -> None:
        """Forward the upstream failure once (Rule 1.7); report a late one."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if self._done:
            report_undeliverable(error, f"{type(self).__name__} after terminal/cancel")
            return
        self._done = True
        try:
            self.hook_on_error(error)
        except Exception as fault:
            fault.__context__ = error
            signal_error(self._actual, fault, self)

    @final
    def on_complete(self) -> None:
        """Forward the upstream completion once (Rule 1.7)."""
        if self._done:
            return
        self._done = True
        try:
            self.hook_on_complete()
        except Exception as fault:
            signal_error(self._actual, fault, self)

    # -- downstream side (Subscription) ---------------------------------------

    @final
    def request(self, n: int) -> None:
        """Pass demand upstream through ``hook_on_request``."""
        self.hook_on_request(n)

    @final
    def cancel(self) -> None:
        """Stop downstream delivery, cancel upstream, drop the subscriber (Rules 3.5, 3.7, 3.13)."""
        if self._done:
            self._detach()
            self._upstream.cancel()  # idempotent upstream; harmless if terminated
            return
        self._done = True
        try:
            self.hook_on_cancel()
        finally:
            self._detach()
            self._upstream.cancel()

    # -- hooks -------------------------------------------------------------------

    def hook_on_subscribe(self) -> None:
        """Called after downstream received its subscription.

        Downstream may already have requested, and items may already have
        flowed, by then: initialize operator state in ``__init__``.
        """

    def hook_on_next(self, item: T) -> None:
        """Handle one upstream item; emit zero or more items downstream."""
        raise NotImplementedError

    def hook_try_on_next(self, item: T) -> bool:
        """Handle one item from a conditional source; ``False`` means "dropped".

        By default runs ``hook_on_next`` and reports the item as consumed
        (an operator that calls ``request_upstream(1)`` for a dropped item
        stays correct either way).
        """
        self.hook_on_next(item)
        return True

    def emit_conditional(self, item: R) -> bool:
        """Emit ``item``; return whether downstream counted it against demand."""
        downstream_try = self._downstream_try
        if downstream_try is None:
            self._actual.on_next(item)
            return True
        return downstream_try(item)

    def hook_on_error(self, error: Exception) -> None:
        """Handle the upstream failure; by default forward it."""
        signal_error(self._actual, error, self)

    def hook_on_complete(self) -> None:
        """Handle the upstream completion; by default forward it."""
        signal_complete(self._actual, self)

    def hook_on_request(self, n: int) -> None:
        """Map downstream demand to upstream demand; by default 1:1.

        An invalid ``n`` is forwarded unchanged: upstream signals the Rule 3.9
        error through this operator, serialized with its items.
        """
        self._upstream.request(n)

    def hook_on_cancel(self) -> None:
        """Release operator resources on downstream cancel."""

    # -- helpers for hooks ------------------------------------------------------

    def emit(self, item: R) -> None:
        """Send ``item`` downstream (call only from ``hook_on_next``/``hook_on_complete``)."""
        self._actual.on_next(item)

    def request_upstream(self, n: int) -> None:
        """Ask upstream for ``n`` more items (a dropped item gives its demand back)."""
        self._upstream.request(n)

    def complete(self) -> None:
        """End the stream early: cancel upstream and complete downstream."""
        if self._done:
            return
        self._done = True
        self._upstream.cancel()
        signal_complete(self._actual, self)

    def error(self, error: Exception) -> None:
        """Fail the stream: cancel upstream and signal ``error`` downstream."""
        self._fail(error)

    @property
    def is_done(self) -> bool:
        """Whether a terminal signal was sent or downstream cancelled."""
        return self._done

    def _detach(self) -> None:
        """Drop every reference to downstream (Rule 3.13); later signals go nowhere."""
        self._downstream_try = None
        self._actual = DETACHED

    def _fail(self, error: Exception) -> None:
        if self._done:
            report_undeliverable(error, f"{type(self).__name__} after terminal/cancel")
            return
        self._done = True
        self._upstream.cancel()
        signal_error(self._actual, error, self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} done={self._done}>"
