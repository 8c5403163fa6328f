"""The queue-drain base of every buffering operator.

A buffering operator receives items on one or more upstream threads, keeps
them in bounded queues and delivers them downstream only against downstream
demand. ``QueueDrain`` owns everything but the queues' contents: the
downstream demand, the serialized drain loop, request validation, cancel and
the terminal decision. An operator writes ``hook_drain`` (one pass: emit up
to ``requested`` items, decide completion) and ``hook_cancel_upstreams``.

``QueueDrainSubscriber`` is the single-upstream form: it is also the
``Subscriber`` of that upstream and owns its one ``deque``; an author only
chooses the initial request, the overflow policy and the replenishing policy.
``InnerQueueSubscriber`` is a prefetching per-source queue for operators with
many upstreams (``flat_map``, ``zip``).

How the rules hold:

* Rule 1.3 (serial signals): only the thread that owns the drain loop calls
  the downstream subscriber. Ownership is a work-in-progress counter
  (``_wip``) under ``_lock``: a thread that brings work (an item, demand, a
  cancel, a terminal) increments it; only the one that moved it from 0 runs
  the loop, and the loop runs again while it finds ``_wip`` was incremented
  behind its back (missed work), so no signal is lost and no two threads
  signal at once.
* Rule 3.3 (bounded recursion): a ``request`` from inside ``on_next`` only
  increments ``_wip`` and returns; the running loop picks the demand up at the
  end of its pass. The depth is 1.
* Demand is read once per pass and reduced once per pass (``produced``), under
  the lock; the per-item path of a pass takes no lock.
* The locked sections on per-item and per-pass paths are written
  ``lock.acquire()`` / ``try`` / ``finally: lock.release()``: the same
  guarantee as ``with lock:`` (released on any exit), at about half its cost
  on CPython 3.11 (about 900 instead of 2,000 instructions, callgrind), which
  was a quarter of a ``zip`` row.
* Rule 3.9: a bad ``request`` is recorded; the loop owner cancels the
  upstreams and signals the error, so it never overlaps an ``on_next``.
* Rules 1.7, 3.6, 3.7: after a terminal signal or ``cancel`` the loop never
  runs again (``_wip`` stays above zero) and further calls are no-ops.
* Rule 3.13: after cancel or a terminal signal the queues are cleared and the
  downstream reference is dropped.
* Rule 2.13: an exception from the downstream ``on_next`` or from a hook
  cancels the upstreams and becomes ``on_error``.

* Terminal state: how the stream ends lives in one ``Terminal``
  (``_terminal.py``): an upstream error is recorded together with "ended",
  and the pass that finds the stream over delivers what ``Terminal.finish``
  returns, so an error recorded before that moment is never turned into
  ``on_complete``, and exactly one terminal signal is delivered.

Errors: an upstream error (``_signal_error``) cuts ahead of queued items
unless the class sets ``delay_error = True``, in which case ``hook_drain``
delivers it after the queue (``QueueDrainSubscriber`` does that by default,
like Reactor's ``publishOn``). An operator's own failure (``_fail``: a raising
callback, an overflow) always cuts ahead.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, final

from typing_extensions import override

from ._arbiter import cancel_quietly, refuse_second_subscription
from ._demand import UNBOUNDED, add_cap, check_request, produced
from ._hooks import ProtocolViolationError, report_undeliverable
from ._operator import CANCELLED
from ._signals import signal_complete, signal_error
from ._terminal import Terminal

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription

__all__ = ["InnerQueueSubscriber", "QueueDrain", "QueueDrainSubscriber", "replenish_limit"]

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)


def replenish_limit(prefetch: int) -> int:
    """Return how many consumed items trigger a refill: 75% of ``prefetch`` (Reactor's rule)."""
    return prefetch - (prefetch >> 2)


class QueueDrain(Generic[R_co]):
    """The downstream half of a buffering operator: demand, drain loop, terminal.

    ``QueueDrain`` is the ``Subscription`` handed downstream. Subclasses
    implement:

    * ``hook_drain(actual, requested)``: one pass, called only by the loop
      owner; emit at most ``requested`` items with ``actual.on_next`` (stop
      early when ``self._halted`` becomes true), return how many were emitted,
      and call ``self._terminate(actual)`` when the stream is over (all
      sources done, nothing queued): that delivers the recorded ending, and an
      error recorded at any moment before wins over the completion the pass
      decided on (see ``_terminal.py``).
    * ``hook_cancel_upstreams()``: cancel every upstream (thread-safe; may be
      called more than once).
    * ``hook_clear()``: drop queued items (loop owner only).

    From the upstream side call ``_schedule()`` after queueing an item,
    ``_upstream_complete()`` when the single upstream completed,
    ``_signal_error(error)`` for an upstream error and ``_fail(error)`` for the
    operator's own failure. An error is never signalled by setting a flag:
    it is recorded in ``_terminal`` first, and only then may anything that
    lets a pass decide "done" (an inner's ``done``) become visible.
    """

    __slots__ = ("_actual", "_halted", "_lock", "_requested", "_terminal", "_wip")

    delay_error: ClassVar[bool] = False
    """Whether an upstream error waits until the queued items were delivered."""

    def __init__(self, actual: Subscriber[R_co]) -> None:
        # Invariant: None once released (Rule 3.13); read by the loop owner.
        self._actual: Subscriber[R_co] | None = actual
        self._lock = threading.Lock()
        # Guarded by _lock: downstream demand not yet delivered, capped at UNBOUNDED.
        self._requested = 0
        # Guarded by _lock: work-in-progress; the thread that moves it from 0
        # owns the loop. Never returns to 0 after a terminal signal or cancel.
        self._wip = 0
        # How the stream ends (its own lock). Closed once downstream cancelled
        # or the loop owner claimed the ending for delivery.
        self._terminal = Terminal(self)
        # Set once, after the terminal state changed; read without a lock, per
        # item, by hook_drain: nothing more may be emitted (cancel, an eager
        # error, a delivered terminal).
        self._halted = False

    # -- the Subscription interface ------------------------------------------------

    @final
    def request(self, n: int) -> None:
        """Add ``n`` to the demand and drain; a bad ``n`` becomes ``on_error`` (Rule 3.9)."""
        terminal = self._terminal
        if terminal._closed:
            return  # Rule 3.6
        error = check_request(n)
        # Rule 3.9 cuts ahead of queued items; a second bad request is a no-op.
        if error is not None and terminal.fail(error, eager=True, quiet=True):
            self._halted = True
            self._cancel_upstreams()
        lock = self._lock
        lock.acquire()
        try:
            if error is None:
                self._requested = add_cap(self._requested, n)
            self._wip += 1
            if self._wip != 1:
                return  # Rule 3.3: the running loop takes the new demand
        finally:
            lock.release()
        self._run_drain()

    @final
    def cancel(self) -> None:
        """Cancel every upstream, clear the queues, drop the subscriber (Rules 3.5, 3.7, 3.13)."""
        if not self._terminal.cancel():
            return  # Rule 3.7: already cancelled or terminated
        self._halted = True
        with self._lock:
            self._wip += 1
            owner = self._wip == 1
        self._cancel_upstreams()
        if owner:
            self._release()
        # Otherwise the loop owner sees the closed terminal and releases.

    # -- for subclasses ---------------------------------------------------------------

    def _schedule(self) -> None:
        """Announce work (an item, a completion); run the loop if no one else does."""
        lock = self._lock
        lock.acquire()
        try:
            self._wip += 1
            if self._wip != 1:
                return
        finally:
            lock.release()
        self._run_drain()

    def _run_drain(self) -> None:
        """Run the loop; an operator that hops threads (``publish_on``) overrides this."""
        self._drain_loop()

    def _upstream_complete(self) -> None:
        """Record that the single upstream completed (after its last item was queued)."""
        if self._terminal.complete():
            self._schedule()

    @property
    def _upstream_done(self) -> bool:
        """Whether the upstream's ending (completion or error) was recorded: one read."""
        return self._terminal._ending is not None

    def _signal_error(self, error: Exception) -> None:
        """Record an upstream error (first ending wins; a later one is reported) and drain.

        Unless ``delay_error``, it cuts ahead: emission stops and every
        upstream is cancelled now.
        """
        eager = not self.delay_error
        # An upstream error never supersedes upstream's own completion (Rule 1.7).
        if not self._terminal.fail(error, eager=eager, supersede=False):
            return  # reported by the terminal (Rule 1.7)
        if eager:
            self._halted = True
            self._cancel_upstreams()
        self._schedule()

    def _fail(self, error: Exception) -> None:
        """Fail the operator (a raising callback, an overflow): cancel all, signal ``error``."""
        if self._record_fatal(error):
            self._schedule()

    def _record_fatal(self, error: Exception) -> bool:
        """Record ``error`` as an ending that cuts ahead; cancel upstreams. ``False`` if late."""
        if not self._terminal.fail(error, eager=True):
            return False
        self._halted = True
        self._cancel_upstreams()
        return True

    def _terminate(self, actual: Subscriber[R_co], error: Exception | None = None) -> None:
        """Deliver the stream's ending once (loop owner only), then release.

        ``error`` is what the pass decided (``None``: complete); an ending
        recorded earlier wins (``Terminal.finish``). An error also cancels
        every upstream. After this the loop never runs again.
        """
        ending = self._terminal.finish(error)
        if ending is None:
            self._release()  # cancelled meanwhile (Rule 3.13); the loop stops after this
            return
        self._halted = True
        if ending.error is not None:
            self._cancel_upstreams()
        self._release()
        if ending.error is None:
            signal_complete(actual, self)
        else:
            signal_error(actual, ending.error, self)

    def _accept_upstream(self, current: Subscription, subscription: Subscription) -> bool:
        """Whether ``subscription`` may become the single upstream (Rules 2.13, 2.5)."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if current is not CANCELLED:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return False
        return True

    def _hand_downstream(self, subscription: Subscription, start: Callable[[], None]) -> None:
        """Give ``self`` to downstream (Rule 1.9), then run ``start`` unless halted."""
        actual = self._actual
        if actual is None:  # pragma: no cover - cannot be released before on_subscribe
            cancel_quietly(subscription)
            return
        try:
            actual.on_subscribe(self)
            if not self._halted:
                start()
        except Exception as fault:  # Rule 2.13
            self._fail(fault)

    # -- hooks -----------------------------------------------------------------------------

    def hook_drain(self, actual: Subscriber[R_co], requested: int) -> int:
        """Emit at most ``requested`` items; return how many; terminate when over."""
        raise NotImplementedError

    def hook_cancel_upstreams(self) -> None:
        """Cancel every upstream subscription (idempotent, thread-safe)."""
        raise NotImplementedError

    def hook_clear(self) -> None:
        """Drop all queued items (called once, by the loop owner, on release)."""

    # -- the loop ----------------------------------------------------------------------------

    def _drain_loop(self) -> None:
        lock = self._lock
        terminal = self._terminal
        missed = 1
        while True:
            actual = self._actual
            if terminal._closed or actual is None:
                self._release()  # Rules 3.7, 3.13: cancelled (or delivered)
                return
            lock.acquire()
            try:
                requested = self._requested
            finally:
                lock.release()
            ending = terminal._ending
            if ending is not None and ending.eager:
                self._terminate(actual)  # Rule 3.9 / a failed callback cut ahead
                return
            try:
                emitted = self.hook_drain(actual, requested)
            except Exception as fault:  # Rule 2.13: the downstream or a hook raised
                if terminal._closed:
                    report_undeliverable(fault, f"{self!r} after terminal/cancel")
                    self._release()
                else:
                    self._terminate(actual, fault)
                return
            if terminal._closed:
                self._release()  # delivered by hook_drain, or cancelled during it
                return
            lock.acquire()
            try:
                if emitted:
                    self._requested = produced(self._requested, emitted)
                self._wip -= missed
                missed = self._wip
                if missed == 0:
                    return
            finally:
                lock.release()

    def _cancel_upstreams(self) -> None:
        try:
            self.hook_cancel_upstreams()
        except Exception as fault:  # Rule 3.15: cancel must return normally
            report_undeliverable(fault, f"{self!r} while cancelling upstream")

    def _release(self) -> None:
        if self._actual is None:
            return  # released once already
        self._actual = None
        try:
            self.hook_clear()
        except Exception as fault:
            report_undeliverable(fault, f"{self!r} while clearing")

    @property
    def requested(self) -> int:
        """The outstanding downstream demand (``UNBOUNDED`` once unbounded)."""
        return self._requested

    def __repr__(self) -> str:
        terminal = self._terminal
        if terminal._closed:
            state = "closed"
        elif terminal._ending is not None:
            state = "ending"
        else:
            state = "active"
        demand = "unbounded" if self._requested == UNBOUNDED else str(self._requested)
        return f"<{type(self).__name__} {state} requested={demand}>"


class QueueDrainSubscriber(QueueDrain[T]):
    """A single-upstream buffering operator: one bounded ``deque`` between upstream and down.

    It is the ``Subscriber`` of the upstream and the ``Subscription`` of
    downstream. Items are queued as they arrive and delivered by the drain
    loop against downstream demand; completion follows the queued items, and
    so does an upstream error (``delay_error = True``; set it to ``False`` to
    let errors cut ahead).

    Hooks:

    * ``hook_on_subscribe()``: the initial upstream request; by default
      ``capacity`` (use ``UNBOUNDED`` with a dropping overflow policy for
      ``on_backpressure_*``).
    * ``hook_on_overflow(item)``: an item arrived while ``capacity`` items
      were queued. By default the upstream broke Rule 1.1 and the stream
      fails with ``ProtocolViolationError``; a policy may instead drop the
      item, or ``self._queue.popleft()`` and append it (drop oldest), or call
      ``self._fail(...)``.
    * ``hook_on_emitted(count)``: the loop delivered ``count`` more items
      (once per pass); request replenishment here with ``request_upstream``.

    Example (``limit_rate`` in full)::

        class _LimitRate(QueueDrainSubscriber[T]):
            def hook_on_emitted(self, count: int) -> None:
                ...  # every `low` delivered items: self.request_upstream(low)
    """

    __slots__ = ("_capacity", "_queue", "_upstream")

    delay_error: ClassVar[bool] = True

    def __init__(self, actual: Subscriber[T], capacity: int) -> None:
        super().__init__(actual)
        if type(capacity) is not int or capacity <= 0:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        # Appended by the upstream thread, popped by the loop owner (deque's
        # append/popleft are atomic). Invariant: len <= capacity.
        self._queue: deque[T] = deque()
        # Invariant: CANCELLED until on_subscribe.
        self._upstream: Subscription = CANCELLED
        # The upstream's ending is recorded in _terminal after its last item
        # was queued, so a pass that reads the ending and then finds the queue
        # empty has seen every item.

    # -- the Subscriber interface --------------------------------------------------------

    @final
    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept the upstream, hand ``self`` downstream, then ``hook_on_subscribe`` (Rule 1.9)."""
        if not self._accept_upstream(self._upstream, subscription):
            return
        self._upstream = subscription
        self._hand_downstream(subscription, self.hook_on_subscribe)

    @final
    def on_next(self, item: T) -> None:
        """Queue ``item`` and drain; an item beyond ``capacity`` goes to ``hook_on_overflow``."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._halted or self._upstream_done:
            return  # Rule 2.8: items may still arrive after cancel
        if len(self._queue) >= self._capacity:
            try:
                self.hook_on_overflow(item)
            except Exception as fault:
                self._fail(fault)
                return
        else:
            self._queue.append(item)
        self._schedule()

    @final
    def on_error(self, error: Exception) -> None:
        """Record the upstream failure (delivered after the queue when ``delay_error``)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._signal_error(error)  # a second terminal is reported (Rule 1.7)

    @final
    def on_complete(self) -> None:
        """Record the upstream completion; it is delivered after the queued items."""
        self._upstream_complete()

    # -- hooks ------------------------------------------------------------------------------

    def hook_on_subscribe(self) -> None:
        """Make the initial upstream request; by default ``capacity``."""
        self._upstream.request(self._capacity)

    def hook_on_overflow(self, item: T) -> None:
        """Handle an item that found the queue full; by default fail (Rule 1.1)."""
        self._fail(
            ProtocolViolationError(
                f"Rule 1.1: {self!r} received more than the {self._capacity} items it "
                f"requested; dropped {item!r}"
            )
        )

    def hook_on_emitted(self, count: int) -> None:
        """The loop delivered ``count`` more items (once per pass); replenish here."""

    def request_upstream(self, n: int) -> None:
        """Ask upstream for ``n`` more items (from hooks)."""
        self._upstream.request(n)

    @override
    def hook_drain(self, actual: Subscriber[T], requested: int) -> int:
        queue = self._queue
        on_next = actual.on_next
        emitted = 0
        while emitted != requested and queue and not self._halted:
            on_next(queue.popleft())
            emitted += 1
        if emitted:
            self.hook_on_emitted(emitted)
        # Read the ending before looking at the queue: items are queued before
        # it is recorded, so "ended and empty" is final.
        if self._terminal._ending is not None and not queue and not self._halted:
            self._terminate(actual)
        return emitted

    @override
    def hook_cancel_upstreams(self) -> None:
        cancel_quietly(self._upstream)

    @override
    def hook_clear(self) -> None:
        self._queue.clear()


class InnerQueueSubscriber(Generic[T]):
    """One prefetching source of a multi-source ``QueueDrain`` (``flat_map``, ``zip``).

    Requests ``prefetch`` items on subscribe; the parent's loop owner pops
    ``queue`` and calls ``consumed(n)``, which requests more once 75% of
    ``prefetch`` was consumed (``replenish_limit``), so requested-but-not-
    consumed never exceeds ``prefetch``. Signals go to the parent: items and
    completion through ``_schedule``, errors through ``_signal_error``; an item
    beyond ``prefetch`` fails the parent (the source broke Rule 1.1).

    ``queue`` and ``done`` are read by the parent's loop owner: read ``done``
    first, then the queue (items are queued before ``done`` is set). ``done``
    set by ``on_error`` becomes visible only after the error was recorded in
    the parent's terminal state.
    """

    __slots__ = (
        "_cancelled",
        "_consumed",
        "_limit",
        "_parent",
        "_prefetch",
        "_subscription",
        "done",
        "queue",
    )

    def __init__(self, parent: QueueDrain[object], prefetch: int) -> None:
        self._parent = parent
        self._prefetch = prefetch
        self._limit = replenish_limit(prefetch) if prefetch < UNBOUNDED else UNBOUNDED
        self.queue: deque[T] = deque()
        self.done = False
        # Loop owner only: items consumed since the last refill.
        self._consumed = 0
        # Guarded by the parent's _lock (written once each).
        self._subscription: Subscription = CANCELLED
        self._cancelled = False

    def on_subscribe(self, subscription: Subscription) -> None:
        """Store the subscription and request ``prefetch`` (or cancel it if already cancelled)."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._parent._lock:
            second = self._subscription is not CANCELLED
            cancelled = self._cancelled
            if not second and not cancelled:
                self._subscription = subscription
        if second:
            refuse_second_subscription(subscription, repr(self._parent))  # Rule 2.5
        elif cancelled:
            cancel_quietly(subscription)
        else:
            subscription.request(self._prefetch)

    def on_next(self, item: T) -> None:
        """Queue ``item`` and let the parent drain."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        parent = self._parent
        if parent._halted or self.done:
            return  # Rule 2.8
        if len(self.queue) >= self._prefetch:
            parent._fail(
                ProtocolViolationError(
                    f"Rule 1.1: an inner source of {parent!r} sent more than the "
                    f"{self._prefetch} items requested"
                )
            )
            return
        self.queue.append(item)
        parent._schedule()

    def on_error(self, error: Exception) -> None:
        """Pass the failure to the parent."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if self.done:
            report_undeliverable(error, f"inner of {self._parent!r} after terminal (Rule 1.7)")
            return
        # Record the error in the parent's terminal *before* ``done`` is
        # visible: a pass that sees this source done and empty may decide the
        # stream is complete, and must then find the error already recorded.
        self._parent._signal_error(error)
        self.done = True

    def on_complete(self) -> None:
        """Mark this source finished and let the parent drain."""
        if self.done:
            return
        self.done = True
        self._parent._schedule()

    def consumed(self, n: int) -> None:
        """The parent's loop owner took ``n`` items from ``queue``; refill at 75%."""
        if self._limit == UNBOUNDED:
            return
        total = self._consumed + n
        if total >= self._limit:
            self._consumed = 0
            if not self.done:
                self._subscription.request(total)
        else:
            self._consumed = total

    def cancel(self) -> None:
        """Cancel this source (idempotent, thread-safe)."""
        with self._parent._lock:
            if self._cancelled:
                return
            self._cancelled = True
            subscription = self._subscription
        cancel_quietly(subscription)

    def __repr__(self) -> str:
        return f"<InnerQueueSubscriber queued={len(self.queue)} done={self.done}>"
