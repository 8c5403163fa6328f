"""``BaseSubscriber``: final spec methods, overridable hooks, a request policy."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar, final

from .._core._arbiter import refuse_second_subscription
from .._core._demand import UNBOUNDED
from .._core._hooks import report_undeliverable
from .._core._operator import CANCELLED, EmptySubscription

if TYPE_CHECKING:
    from ..abc import Subscription

__all__ = ["BaseSubscriber", "RequestPolicy", "SignalType"]

T = TypeVar("T")


_GAVE_UP = EmptySubscription()
"""In place of the subscription once the subscriber cancelled before ``on_subscribe``.

A subscription that arrives afterwards (``subscribe_on`` a busy pool, a
``to_list(timeout=)`` that timed out first) is cancelled at once, never
requested from, and is not a Rule 2.5 violation.
"""


class RequestPolicy:
    """How a subscriber asks for items: an initial request and a replenish step.

    ``initial`` items are requested on subscribe; every time ``replenish`` of
    them have been delivered, ``replenish`` more are requested (so at most
    ``initial`` are ever outstanding). ``replenish == 0`` means never.
    """

    __slots__ = ("initial", "replenish")

    def __init__(self, initial: int, replenish: int) -> None:
        if type(initial) is not int or initial < 0 or initial > UNBOUNDED:
            raise ValueError(f"RequestPolicy: initial must be in [0, 2**63-1], got {initial!r}")
        if type(replenish) is not int or replenish < 0 or replenish > initial:
            raise ValueError(f"RequestPolicy: replenish must be in [0, initial], got {replenish!r}")
        self.initial: Final = initial
        self.replenish: Final = replenish

    @classmethod
    def unbounded(cls) -> RequestPolicy:
        """Request everything at once (``request(2**63-1)``)."""
        return cls(UNBOUNDED, 0)

    @classmethod
    def batch(cls, size: int) -> RequestPolicy:
        """Request ``size``, then replenish once 75% of a batch has arrived.

        This is Reactor's ``limitRate`` arithmetic: the next batch is asked for
        before the current one runs dry, so the producer rarely idles.
        """
        if type(size) is not int or size <= 0:
            raise ValueError(f"RequestPolicy.batch: size must be a positive int, got {size!r}")
        return cls(size, size - (size >> 2))

    @classmethod
    def one_by_one(cls) -> RequestPolicy:
        """Request one item, and one more after each delivered item."""
        return cls(1, 1)

    @classmethod
    def manual(cls) -> RequestPolicy:
        """Request nothing automatically; the subscriber calls ``request`` itself."""
        return cls(0, 0)

    def __repr__(self) -> str:
        initial = "unbounded" if self.initial == UNBOUNDED else self.initial
        return f"RequestPolicy(initial={initial}, replenish={self.replenish})"


class SignalType(enum.Enum):
    """What ended a subscription, as passed to ``hook_finally``."""

    ON_COMPLETE = "on_complete"
    ON_ERROR = "on_error"
    CANCEL = "cancel"


class BaseSubscriber(Generic[T]):
    """A subscriber for users: override the ``hook_*`` methods, keep the rules.

    The spec methods are final and uphold Rule 2.5 (a second subscription is
    cancelled), Rule 2.13 (``None`` arguments raise ``TypeError``; a raising
    ``hook_on_next`` cancels the subscription and is handed to
    ``hook_on_error``), Rule 1.7 (nothing after a terminal signal reaches the
    hooks) and the request policy.

    Example:
        >>> class Printer(BaseSubscriber[int]):
        ...     def hook_on_next(self, item: int) -> None:
        ...         print(item)
        >>> Flow.range(2).subscribe(Printer(RequestPolicy.one_by_one()))
        0
        1
    """

    __slots__ = ("_delivered", "_done", "_next_hook", "_policy", "_replenish", "_subscription")

    def __init__(self, request: RequestPolicy | None = None) -> None:
        self._policy = RequestPolicy.unbounded() if request is None else request
        self._replenish = self._policy.replenish
        # The per-item callable, bound once (a subclass may bind a plain function).
        self._next_hook: Callable[[T], object] = self.hook_on_next
        # Invariant: CANCELLED before on_subscribe and after the end; _GAVE_UP
        # once cancelled before on_subscribe. Not locked: cancel() may race a
        # late on_subscribe, which re-checks _done after storing it.
        self._subscription: Subscription = CANCELLED
        self._done = False
        self._delivered = 0  # items since the last replenish; touched only by on_next

    # -- Subscriber ------------------------------------------------------------------

    @final
    def on_subscribe(self, subscription: Subscription) -> None:
        """Keep the subscription, run ``hook_on_subscribe``, make the initial request."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._subscription is _GAVE_UP:
            subscription.cancel()  # the subscriber left before it arrived
            return
        if self._subscription is not CANCELLED or self._done:
            refuse_second_subscription(subscription, type(self).__name__)  # Rule 2.5
            return
        self._subscription = subscription
        if self._done:
            # cancel() ran on another thread since the check above; it sets
            # _done before it takes _subscription, so either it cancelled this
            # subscription or we see _done here: cancelled either way, never
            # requested from (Rule 3.7 makes a second cancel harmless).
            subscription.cancel()
            return
        try:
            self.hook_on_subscribe(subscription)
        except Exception as fault:
            self._fail(fault)
            return
        if self._policy.initial and not self._done:
            subscription.request(self._policy.initial)

    @final
    def on_next(self, item: T) -> None:
        """Run ``hook_on_next``, then replenish demand per the policy."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._done:
            return
        try:
            self._next_hook(item)
        except Exception as fault:
            self._fail(fault)
            return
        replenish = self._replenish
        if replenish:
            delivered = self._delivered + 1
            if delivered == replenish:
                self._delivered = 0
                if not self._done:
                    self._subscription.request(replenish)
            else:
                self._delivered = delivered

    @final
    def on_error(self, error: Exception) -> None:
        """Run ``hook_on_error`` once, then ``hook_finally``."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if self._done:
            report_undeliverable(error, f"{type(self).__name__} after terminal/cancel")
            return
        self._done = True
        self._subscription = CANCELLED  # Rule 2.4
        self._run_hook_on_error(error)
        self._run_finally(SignalType.ON_ERROR)

    @final
    def on_complete(self) -> None:
        """Run ``hook_on_complete`` once, then ``hook_finally``."""
        if self._done:
            return
        self._done = True
        self._subscription = CANCELLED  # Rule 2.4
        try:
            self.hook_on_complete()
        except Exception as fault:
            report_undeliverable(fault, f"{type(self).__name__}.hook_on_complete")
        self._run_finally(SignalType.ON_COMPLETE)

    # -- control ----------------------------------------------------------------------

    @final
    def request(self, n: int) -> None:
        """Ask for ``n`` more items (validated by the publisher, Rule 3.9)."""
        self._subscription.request(n)

    @final
    def cancel(self) -> None:
        """Cancel the subscription; idempotent."""
        if self._done:
            return
        self._done = True
        subscription = self._subscription
        # No subscription yet: remember that the subscriber gave up, so a late
        # on_subscribe is cancelled quietly rather than reported as Rule 2.5.
        self._subscription = _GAVE_UP if subscription is CANCELLED else CANCELLED
        subscription.cancel()
        try:
            self.hook_on_cancel()
        except Exception as fault:
            report_undeliverable(fault, f"{type(self).__name__}.hook_on_cancel")
        self._run_finally(SignalType.CANCEL)

    def dispose(self) -> None:
        """Same as ``cancel``."""
        self.cancel()

    @property
    def is_disposed(self) -> bool:
        """Whether the subscription ended (terminal signal or cancel)."""
        return self._done

    # -- hooks --------------------------------------------------------------------------

    def hook_on_subscribe(self, subscription: Subscription) -> None:
        """Called once with the subscription, before the policy's initial request."""

    def hook_on_next(self, item: T) -> None:
        """Called for each item."""

    def hook_on_error(self, error: Exception) -> None:
        """Called on failure; by default the error goes to the undeliverable hook."""
        report_undeliverable(error, f"{type(self).__name__} (no error handler)")

    def hook_on_complete(self) -> None:
        """Called on completion."""

    def hook_on_cancel(self) -> None:
        """Called after this subscriber cancelled."""

    def hook_finally(self, signal: SignalType) -> None:
        """Called last, once, whatever ended the subscription."""

    # -- internals ------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        """A hook raised: cancel upstream and treat the error as ``on_error`` (Rule 2.13)."""
        if self._done:
            report_undeliverable(error, type(self).__name__)
            return
        self._done = True
        subscription, self._subscription = self._subscription, CANCELLED
        try:
            subscription.cancel()
        finally:
            self._run_hook_on_error(error)
            self._run_finally(SignalType.ON_ERROR)

    def _run_hook_on_error(self, error: Exception) -> None:
        try:
            self.hook_on_error(error)
        except Exception as fault:
            fault.__context__ = error
            report_undeliverable(fault, f"{type(self).__name__}.hook_on_error")

    def _run_finally(self, signal: SignalType) -> None:
        try:
            self.hook_finally(signal)
        except Exception as fault:
            report_undeliverable(fault, f"{type(self).__name__}.hook_finally")
