"""``SubscriptionArbiter``: one downstream subscription over a succession of upstreams.

Operators that relay one upstream after another (``concat``, ``concat_map``,
``on_error_resume``) hand downstream a single subscription while the
publisher behind it changes. The arbiter keeps the outstanding downstream
demand across the switch: it remembers everything requested, the owner
reports what the finished upstream delivered (``produced``), and the next
upstream is asked for the remainder as soon as it is attached
(``set_upstream``).

How the rules hold:

* Rule 3.8 / 3.17: demand is added with ``add_cap`` and reduced with
  ``produced``, under ``_lock``; nothing else touches it.
* Rule 3.9: a bad ``request`` is recorded once (``pending_error``) and handed
  to ``hook_on_bad_request``. By default it is forwarded, unchanged, to the
  current upstream, which answers with ``on_error`` serialized with its own
  items (every ``Flow`` validates demand, and third-party publishers are
  adopted through ``Flow.from_publisher``, which does too). An upstream
  attached later receives the same bad ``request`` instead of the demand, and
  an owner that sits between two upstreams checks ``pending_error`` there.
  Owners that can serialize the error themselves override the hook.
* Rules 3.5, 3.7, 3.12: ``cancel`` is idempotent, cancels the current upstream
  and every upstream attached afterwards.
* Rule 3.6: after ``cancel``, ``request`` is a no-op.

The owner calls ``produced(n)`` once per finished upstream (not per item), so
the per-item path takes no lock.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar, final

from ._demand import UNBOUNDED, add_cap, check_request, produced
from ._hooks import ProtocolViolationError, report_undeliverable

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription

__all__ = ["ArbiterRelay", "SubscriptionArbiter", "cancel_quietly", "refuse_second_subscription"]

T = TypeVar("T")


def cancel_quietly(subscription: Subscription) -> None:
    """Cancel ``subscription``; an exception from it is reported, never raised (Rule 3.15)."""
    try:
        subscription.cancel()
    except Exception as fault:
        report_undeliverable(fault, f"{subscription!r}.cancel()")


def refuse_second_subscription(subscription: Subscription, where: str) -> None:
    """Rule 2.5: cancel a second ``subscription`` a subscriber was given, and report it.

    The one place for what every subscriber does with a second ``on_subscribe``:
    the new subscription is cancelled (quietly, Rule 3.15) and the protocol
    violation goes to the undeliverable hook, naming ``where``.
    """
    cancel_quietly(subscription)
    report_undeliverable(
        ProtocolViolationError("Rule 2.5: a second on_subscribe was cancelled"), where
    )


class SubscriptionArbiter:
    """A subscription whose upstream can be replaced, carrying the outstanding demand over.

    Usage by an owner (usually a subclass that is also the ``Subscriber`` of
    each upstream in turn):

    1. hand the arbiter downstream as its subscription;
    2. in each upstream's ``on_subscribe`` call ``set_upstream(subscription)``:
       it requests the outstanding demand (or cancels the upstream if the
       arbiter was cancelled);
    3. count the items relayed from that upstream and, when it completes and
       before the next one is subscribed, call ``produced(count)``.

    Hooks: ``hook_on_cancel`` (release the downstream reference, Rule 3.13)
    and ``hook_on_bad_request`` (how a Rule 3.9 error reaches downstream).
    """

    __slots__ = (
        "_bad_n",
        "_cancelled",
        "_epoch",
        "_lock",
        "_pending_error",
        "_requested",
        "_upstream",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Guarded by _lock: the current upstream, None between upstreams and
        # after cancel.
        self._upstream: Subscription | None = None
        # Guarded by _lock. Invariant: downstream requests minus the items
        # reported through produced(), capped at UNBOUNDED, never negative.
        self._requested = 0
        # Guarded by _lock; set once.
        self._cancelled = False
        # Guarded by _lock; set once, by the first invalid request (Rule 3.9).
        self._pending_error: Exception | None = None
        self._bad_n: object = None
        # Guarded by _lock: how many times the upstream was cleared (see set_upstream).
        self._epoch = 0

    # -- the Subscription interface --------------------------------------------

    @final
    def request(self, n: int) -> None:
        """Add ``n`` to the demand and pass it to the current upstream (Rules 3.8, 3.9)."""
        error = check_request(n)
        with self._lock:
            if self._cancelled or self._pending_error is not None:
                return  # Rule 3.6; after a bad request nothing more is asked
            if error is None:
                self._requested = add_cap(self._requested, n)
            else:
                self._pending_error = error
                self._bad_n = n
            upstream = self._upstream
        if error is not None:
            self.hook_on_bad_request(n, error, upstream)
        elif upstream is not None:
            upstream.request(n)

    @final
    def cancel(self) -> None:
        """Cancel the current upstream and every later one (Rules 3.5, 3.7, 3.12)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            upstream, self._upstream = self._upstream, None
        if upstream is not None:
            cancel_quietly(upstream)
        self.hook_on_cancel()

    # -- for the owner ----------------------------------------------------------

    def set_upstream(self, subscription: Subscription, epoch: int | None = None) -> None:
        """Make ``subscription`` current and ask it for the outstanding demand.

        If the arbiter was cancelled, ``subscription`` is cancelled instead.
        If a bad request is pending, ``subscription`` receives that request,
        so it signals the Rule 3.9 error in order with its own signals.

        ``epoch``: the ``epoch`` read when this upstream was subscribed. An
        owner that may move on to the next upstream while the current one is
        still between ``subscribe`` and ``on_subscribe`` (``timeout`` switching
        to its fallback from a timer) passes it: if the upstream was cleared
        since, ``subscription`` is stale and is cancelled, never made current
        over its successor.
        """
        with self._lock:
            cancelled = self._cancelled or (epoch is not None and epoch != self._epoch)
            if not cancelled:
                self._upstream = subscription
            requested = self._requested
            bad = self._pending_error is not None
            bad_n = self._bad_n
        if cancelled:
            cancel_quietly(subscription)
        elif bad:
            subscription.request(bad_n)  # type: ignore[arg-type]
        elif requested:
            subscription.request(requested)

    def clear_upstream(self) -> None:
        """Forget the current upstream (it terminated), so nothing more is sent to it."""
        with self._lock:
            self._upstream = None
            self._epoch += 1

    def produced(self, n: int) -> None:
        """Record that ``n`` items were relayed from the upstream that just finished."""
        if n <= 0:
            return
        with self._lock:
            left = produced(self._requested, n)
            # A broken upstream may over-deliver; never let demand go negative.
            self._requested = left if left > 0 else 0

    @property
    def pending_error(self) -> Exception | None:
        """The Rule 3.9 error of the first invalid ``request``, if any."""
        return self._pending_error

    @property
    def epoch(self) -> int:
        """How many times the upstream was cleared: the generation ``set_upstream`` checks."""
        return self._epoch

    @property
    def is_cancelled(self) -> bool:
        """Whether downstream (or the owner) cancelled."""
        return self._cancelled

    @property
    def requested(self) -> int:
        """The outstanding demand not yet reported as produced."""
        return self._requested

    # -- hooks ----------------------------------------------------------------------

    def hook_on_cancel(self) -> None:
        """Release owner resources after ``cancel`` (drop the downstream, Rule 3.13)."""

    def hook_on_bad_request(
        self, n: object, error: Exception, upstream: Subscription | None
    ) -> None:
        """Route a Rule 3.9 error downstream; called once, on the requesting thread.

        The default forwards ``n`` to the current upstream, which signals the
        error through the owner, serialized with its items. With no current
        upstream the error waits in ``pending_error``: ``set_upstream``
        forwards it to the next upstream, and the owner must check it before
        completing.
        """
        if upstream is not None:
            upstream.request(n)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        demand = "unbounded" if self._requested == UNBOUNDED else str(self._requested)
        state = "cancelled" if self._cancelled else "active"
        return f"<{type(self).__name__} {state} requested={demand}>"


class ArbiterRelay(SubscriptionArbiter, Generic[T]):
    """An arbiter that is also the subscriber of each successive upstream.

    Used by operators that switch upstreams while keeping one downstream
    (``concat``, ``on_error_resume``, ``retry``): it accepts one upstream at a
    time (Rule 2.5), relays its items, counts them for ``produced`` when that
    upstream ends, and turns a raising downstream ``on_next`` into ``_stop``
    (Rule 2.13). Subclasses write ``on_error``, ``on_complete`` and ``_stop``,
    and set ``_active = False`` when an upstream terminates.
    """

    __slots__ = ("_active", "_actual", "_count")

    def __init__(self, actual: Subscriber[T]) -> None:
        super().__init__()
        # Invariant: None after a terminal signal or cancel (Rule 3.13).
        self._actual: Subscriber[T] | None = actual
        # Items relayed from the current upstream; touched only by its (serial) signals.
        self._count = 0
        # Whether an upstream is subscribed and not yet terminated (Rule 2.5 guard).
        self._active = False

    def on_subscribe(self, subscription: Subscription) -> None:
        """Make the new upstream current; it is asked for the outstanding demand."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._active:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return
        self._active = True
        self.set_upstream(subscription)

    def on_next(self, item: T) -> None:
        """Relay ``item``."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        actual = self._actual
        if actual is None:
            return  # Rule 2.8
        self._count += 1
        try:
            actual.on_next(item)
        except Exception as fault:  # Rule 2.13
            self._stop(fault)

    def _stop(self, error: Exception) -> None:
        """End the stream with ``error`` (cancel what is left, signal downstream once)."""
        raise NotImplementedError
