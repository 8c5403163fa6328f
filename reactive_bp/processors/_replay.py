"""``ReplayProcessor``: a hot publisher that replays its recent history to each new subscriber.

The processor keeps one list of items (the *log*) with absolute indices:
``_head`` is the index the next item gets, ``_first`` the oldest item still
held. Every subscriber has a cursor into the log and its own demand; it is
served by its own serialized drain loop, so a subscriber that is slow to
request never stops another from receiving what is already in the log.

How the rules hold:

* Rule 1.1: a subscriber's loop takes ``min(demand, head - cursor)`` items
  per pass, under ``_lock``, and subtracts them from its demand there.
* Rule 1.3 (serial signals) and Rule 3.3 (bounded recursion): one thread at a
  time owns a subscriber's loop (``wip``, under ``_lock``); work arriving
  meanwhile (an item, demand, the ending) only increments ``wip`` and the
  owner looks again. The thread inside ``subscribe()`` owns the loop until
  ``on_subscribe`` returned (Rule 1.9: nothing is signalled before it).
* Rule 1.7 and terminal state: how the *stream* ended is one ``Terminal``
  (``_terminal``), whose every transition is made under ``_lock``, where the
  loops read it together with ``_head``; a loop delivers the ending only when
  its cursor reached ``_head``, through its own subscriber's ``Terminal``
  (``finish``), so a subscriber's own failure (a Rule 3.9 request, a raising
  ``on_next``) and the stream's ending are never both delivered.
* Rule 2.5: a second ``on_subscribe`` is cancelled (``SerializedUpstream``).
* Rule 2.7: calls to the upstream subscription come from several threads
  (every subscriber's loop may ask for more), so they go through
  ``SerializedUpstream``, which makes them one at a time.
* Rule 2.13: ``None`` items and errors raise ``TypeError`` to the caller; a
  subscriber whose ``on_next`` raises is cancelled and receives that error;
  the others go on.
* Rule 3.9: a bad ``request`` fails only that subscriber, ahead of the items
  it has not received yet.
* Rule 3.13: a cancelled or terminated subscriber leaves the live set and its
  subscription drops the subscriber.
"""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from typing_extensions import override

from .._core._arbiter import cancel_quietly, refuse_second_subscription
from .._core._demand import UNBOUNDED, add_cap, check_request, produced
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._push import OfferResult
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Ending, Terminal
from .._flow import Flow
from ..schedulers._base import check_delay
from ..sources._time import time_scheduler
from ._multicast import DisconnectedError

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription
    from ..schedulers import Scheduler

__all__ = ["ReplayProcessor", "SerializedUpstream"]

T = TypeVar("T")


class SerializedUpstream:
    """The one upstream subscription of a fan-out, with the calls to it made one at a time.

    Several threads decide to ask upstream for more (every subscriber's drain
    loop); Rule 2.7 wants the calls serialized. A thread that finds another one
    calling upstream adds its demand to ``_pending`` and returns; the caller
    takes it before it lets go (so recursion stays at depth 1, Rule 3.3).
    Demand asked for before the upstream arrives is requested on arrival; a
    ``cancel`` before it arrives cancels it on arrival.
    """

    __slots__ = (
        "_attached",
        "_busy",
        "_cancelled",
        "_lock",
        "_owner",
        "_pending",
        "_subscription",
    )

    def __init__(self, owner: object = None) -> None:
        # Who the undeliverable hook is told a Rule 2.5 violation concerns.
        self._owner = owner
        self._lock = threading.Lock()
        # All guarded by _lock. Invariant: _subscription is set once, by attach,
        # and dropped (None) once cancelled and the cancel was passed on.
        self._subscription: Subscription | None = None
        self._attached = False
        # Demand not yet passed upstream, capped at UNBOUNDED.
        self._pending = 0
        self._cancelled = False
        # True while one thread calls the upstream; after a cancel it stays True.
        self._busy = False

    def attach(self, subscription: Subscription) -> bool:
        """Take ``subscription`` as the upstream; ``False`` if one came before (Rule 2.5)."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            second = self._attached
            if not second:
                self._attached = True
                self._subscription = subscription
                run = not self._busy and (self._cancelled or self._pending > 0)
                if run:
                    self._busy = True
        if second:
            refuse_second_subscription(
                subscription, repr(self._owner if self._owner is not None else self)
            )  # Rule 2.5
            return False
        if run:
            self._run()
        return True

    def request(self, n: int) -> None:
        """Ask upstream for ``n`` more (``n > 0``), now or as soon as it is attached."""
        with self._lock:
            if self._cancelled:
                return
            self._pending = add_cap(self._pending, n)
            if self._busy or self._subscription is None:
                return  # the calling thread, or attach(), passes it on
            self._busy = True
        self._run()

    def cancel(self) -> None:
        """Cancel upstream (idempotent; one that arrives later is cancelled on arrival)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            if self._busy or self._subscription is None:
                return
            self._busy = True
        self._run()

    @property
    def is_cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self._cancelled

    @property
    def attached(self) -> bool:
        """Whether an upstream subscription arrived."""
        return self._attached

    def _run(self) -> None:
        """Pass demand and cancel upstream until nothing is left; the caller set ``_busy``."""
        while True:
            with self._lock:
                subscription = self._subscription
                if self._cancelled:
                    self._subscription = None  # Rule 3.13; _busy stays: nothing more is sent
                    n = 0
                elif self._pending == 0:
                    self._busy = False
                    return
                else:
                    n, self._pending = self._pending, 0
            assert subscription is not None  # _busy is only taken with a subscription
            if n == 0:
                cancel_quietly(subscription)
                return
            try:
                subscription.request(n)
            except Exception as fault:  # Rule 3.16: request must return normally
                report_undeliverable(fault, f"{subscription!r}.request({n})")

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "attached" if self._attached else "detached"
        return f"<SerializedUpstream {state} pending={self._pending}>"


class ReplayProcessor(Flow[T], Generic[T]):
    """A hot ``Flow`` that replays its last ``history`` items to each new subscriber, then live.

    Each subscriber is served at its own demand. It is a ``Processor[T, T]``:
    subscribe it to an upstream, or push into it with ``offer``/``complete``/
    ``error`` (one or the other: pushed items do not count against the
    upstream's demand). Subscribe any number of subscribers.

    ::

        upstream:      -a-b-c-d-----e-|
        history=2:      ^ (s1)    ^ (s2 subscribes after d)
        s1:            -a-b-c-d-----e-|
        s2:                       c-d-e-|   (c and d replayed, then live)

    Args:
        history: How many of the latest items a new subscriber receives first.
            ``None`` keeps every item the processor ever received, in memory,
            for as long as it lives: unbounded, and only because you said so.
            ``0`` replays nothing (live items only).
        ttl: Items older than ``ttl`` seconds (on ``scheduler``'s clock) are
            not replayed to new subscribers. A subscriber already subscribed
            still receives every item it has not consumed yet, however old:
            nothing is lost for live subscribers.
        scheduler: Whose ``now()`` times the items (default: the monotonic
            clock of the time operators; a ``VirtualTimeScheduler`` in tests).
        buffer_size: With a bounded ``history``, how many items beyond the
            history a live subscriber may fall behind before the others wait
            for it; also the most that is requested upstream ahead of the
            newest item. At least 1.
        auto_cancel: Cancel the upstream when the last subscriber leaves. By
            default it stays connected: a replay exists to remember, and
            ``Flow.replay(...).ref_count()`` disconnects when nobody listens.

    Demand: upstream is asked only for what subscribers requested: at most
    as far as the most demanding live subscriber wants, never more than
    ``buffer_size`` ahead of the newest item, and -- with a bounded
    ``history`` -- never further than ``history + buffer_size`` beyond the
    slowest live subscriber's position. So a subscriber that is slow to
    request never makes another wait until it is ``buffer_size`` items behind
    the history window; then the source is paced by it, nothing is lost for
    any live subscriber, and memory stays bounded by ``history + buffer_size``
    items (the log holds the history plus what the slowest live subscriber has
    not consumed). Reactor's bounded replay instead requests everything and
    lets a slow subscriber pin an ever-growing tail of the log; a subscriber
    that must never slow the others down puts ``on_backpressure_latest()``
    (or another strategy) between itself and the processor. Without any live
    subscriber nothing is requested: the history is what subscribers pulled.
    A subscriber receives the history only against its own demand.

    Cancellation: a subscriber that cancels leaves; the others go on. With
    ``auto_cancel`` the upstream is cancelled when the last one leaves, and
    later subscribers receive the history, then ``DisconnectedError``.

    Errors: the upstream's completion or error, like every item, is replayed:
    each subscriber receives it after the items it has not consumed yet (a
    subscriber that arrives later receives the history, then the ending).
    A subscriber's bad ``request`` (Rule 3.9) or raising ``on_next`` fails only
    that subscriber. An upstream that sends more than requested (Rule 1.1)
    ends the stream with ``ProtocolViolationError`` and is cancelled.

    Example:
        >>> processor = ReplayProcessor[int](history=2)
        >>> for i in range(5):
        ...     _ = processor.offer(i)
        >>> processor.complete()
        >>> processor.to_list()
        [3, 4]
    """

    __slots__ = (
        "_auto_cancel",
        "_base",
        "_batch",
        "_buffer_size",
        "_clock",
        "_first",
        "_head",
        "_history",
        "_inners",
        "_items",
        "_lock",
        "_outstanding",
        "_stamps",
        "_terminal",
        "_ttl",
        "_upstream",
    )

    def __init__(
        self,
        history: int | None = None,
        ttl: float | None = None,
        scheduler: Scheduler | None = None,
        *,
        buffer_size: int = 256,
        auto_cancel: bool = False,
    ) -> None:
        if history is not None and (type(history) is not int or history < 0):
            raise ValueError(f"history must be None or an int >= 0, got {history!r}")
        if type(buffer_size) is not int or buffer_size < 1:
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        self._history = history
        self._buffer_size = buffer_size
        # Demand is passed upstream in batches of at least this much while some
        # is still outstanding (one request per item would cost a call each).
        self._batch = max(1, buffer_size // 2)
        self._ttl = None if ttl is None else check_delay("ttl", ttl, positive=True)
        self._clock = time_scheduler(scheduler).now
        self._auto_cancel = auto_cancel
        self._lock = threading.Lock()
        # All guarded by _lock. The log: _items[i] is the item with absolute
        # index _base + i. Invariant: _base <= _first <= _head ==
        # _base + len(_items); slots before _first are None (released items,
        # compacted away in batches); _stamps, when there is a ttl, holds the
        # arrival time of each slot.
        self._items: list[T | None] = []
        self._stamps: list[float] | None = None if ttl is None else []
        self._base = 0
        self._first = 0
        self._head = 0
        # Copy-on-write: the live subscriptions (subscribed, not cancelled, not
        # terminated). Invariant: every live cursor is >= _first.
        self._inners: tuple[_ReplaySubscription[T], ...] = ()
        # Upstream demand not yet answered with an item.
        self._outstanding = 0
        # How the stream ended (upstream, a producer, or auto_cancel); every
        # transition is made under _lock, after the last item was logged.
        self._terminal = Terminal(self)
        self._upstream = SerializedUpstream(self)

    # -- Subscriber (the upstream side) -------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Take the upstream (a second one is cancelled, Rule 2.5) and ask for what is wanted."""
        if not self._upstream.attach(subscription):
            return
        if self._terminal.is_ended:
            self._upstream.cancel()  # ended by a producer or auto_cancel: nothing is wanted
            return
        with self._lock:
            n = self._plan_locked()
        if n:
            self._upstream.request(n)

    def on_next(self, item: T) -> None:
        """Log ``item`` and deliver it to every live subscriber with demand."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        with self._lock:
            if self._terminal._ending is not None or self._upstream.is_cancelled:
                return  # Rule 2.8: items may still arrive after cancel
            outstanding = self._outstanding
            overflow = outstanding == 0
            if not overflow:
                if outstanding != UNBOUNDED:
                    self._outstanding = outstanding - 1
                owners = self._append_locked(item)
        if overflow:
            self._end(
                ProtocolViolationError(
                    f"Rule 1.1: the upstream of {self!r} sent {item!r} beyond the demand it "
                    "was given"
                ),
                cancel_upstream=True,
            )
            return
        for inner in owners:
            self._drain(inner)

    def on_error(self, error: Exception) -> None:
        """End the stream with ``error``: each subscriber gets it after its pending items."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._end(error, cancel_upstream=False)

    def on_complete(self) -> None:
        """Complete the stream: each subscriber completes after its pending items."""
        self._end(None, cancel_upstream=False)

    # -- the push entry point -----------------------------------------------------------

    def offer(self, item: T) -> OfferResult:
        """Log ``item`` (``ENQUEUED``); ``FULL`` if a live subscriber is too far behind.

        ``FULL`` (nothing taken) only with a bounded ``history``, when logging
        one more item would leave a live subscriber more than
        ``history + buffer_size`` items behind. ``CLOSED`` once the stream ended.
        """
        if item is None:
            raise TypeError("ReplayProcessor: None is not a valid item (Rule 2.13)")
        with self._lock:
            if self._terminal._ending is not None:
                return OfferResult.CLOSED
            history = self._history
            if history is not None and self._inners:
                slowest = min(inner.cursor for inner in self._inners)
                if self._head + 1 > slowest + history + self._buffer_size:
                    return OfferResult.FULL
            owners = self._append_locked(item)
        for inner in owners:
            self._drain(inner)
        return OfferResult.ENQUEUED

    def complete(self) -> None:
        """Complete the stream (after the logged items); cancels the upstream, if any."""
        self._end(None, cancel_upstream=True)

    # The push side's failure, as on SourceQueue; it shadows the static source
    # factory Flow.error(e) on instances (Flow.error itself is unchanged).
    def error(self, error: Exception) -> None:  # type: ignore[override]
        """Fail the stream (after the logged items); cancels the upstream, if any."""
        if not isinstance(error, Exception):
            raise TypeError(f"error() needs an Exception, got {error!r}")
        self._end(error, cancel_upstream=True)

    # -- introspection ------------------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are live (subscribed, neither cancelled nor terminated)."""
        return len(self._inners)

    @property
    def retained(self) -> int:
        """How many items are held: the history plus what live subscribers have not consumed."""
        with self._lock:
            return self._head - self._first

    @property
    def is_terminated(self) -> bool:
        """Whether the stream ended (completed, failed, or auto-cancelled)."""
        return self._terminal.is_ended

    # -- Publisher ----------------------------------------------------------------------

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        inner = _ReplaySubscription(self, subscriber)
        with self._lock:
            inner.cursor = self._replay_start_locked()
            self._inners = (*self._inners, inner)
        try:
            subscriber.on_subscribe(inner)  # Rule 1.9: this thread owns the loop (wip == 1)
        except Exception as fault:  # Rule 2.13
            inner.cancel()
            inner.actual = None
            signal_error(subscriber, fault, self)
            return
        self._drain(inner)

    # -- the subscription side ----------------------------------------------------------

    def _request(self, inner: _ReplaySubscription[T], n: int) -> None:
        terminal = inner.terminal
        if terminal._closed:
            return  # Rule 3.6
        error = check_request(n)
        upstream_n = 0
        cancel_upstream = False
        with self._lock:
            if error is not None:
                # Rule 3.9: cuts ahead of the items not yet delivered; a second is a no-op.
                if terminal.fail(error, eager=True, quiet=True):
                    upstream_n, cancel_upstream = self._leave_locked(inner)
            else:
                inner.requested = add_cap(inner.requested, n)
                upstream_n = self._plan_locked()
            inner.wip += 1
            owner = inner.wip == 1
        self._ask_upstream(upstream_n, cancel_upstream)
        if owner:
            self._drain(inner)

    def _cancel(self, inner: _ReplaySubscription[T]) -> None:
        if not inner.terminal.cancel():
            return  # Rule 3.7
        with self._lock:
            upstream_n, cancel_upstream = self._leave_locked(inner)
            inner.wip += 1
            if inner.wip == 1:
                inner.actual = None  # Rule 3.13; otherwise the loop owner releases
        self._ask_upstream(upstream_n, cancel_upstream)

    # -- the loop -----------------------------------------------------------------------

    def _drain(self, inner: _ReplaySubscription[T]) -> None:
        """Deliver to one subscriber; the caller owns its loop (it moved ``wip`` from 0)."""
        lock = self._lock
        terminal = inner.terminal
        missed = 1
        while True:
            batch: list[T] = []
            ending: Ending | None = None
            upstream_n = 0
            cancel_upstream = False
            with lock:
                actual = inner.actual
                if actual is None or terminal._closed:
                    inner.actual = None  # Rules 3.7, 3.13: cancelled
                    return
                if terminal._ending is not None:
                    # The subscriber's own failure (Rule 3.9) cuts ahead; it already left.
                    ending = terminal.claim()
                    inner.actual = None
                else:
                    cursor = inner.cursor
                    available = self._head - cursor
                    requested = inner.requested
                    n = requested if requested < available else available
                    if n:
                        start = cursor - self._base
                        batch = cast("list[T]", self._items[start : start + n])
                        inner.cursor = cursor + n
                        inner.requested = produced(requested, n)
                        upstream_n = self._plan_locked()
                        self._evict_locked()
                    elif available == 0 and self._terminal._ending is not None:
                        # Caught up with an ended stream: its ending is this one's
                        # (unless a failure of its own was recorded first).
                        ending = terminal.finish(self._terminal._ending.error, eager=False)
                        inner.actual = None
                        upstream_n, cancel_upstream = self._leave_locked(inner)
            self._ask_upstream(upstream_n, cancel_upstream)
            for item in batch:
                if terminal._closed:
                    break  # Rule 3.6: cancelled mid-batch
                try:
                    actual.on_next(item)
                except Exception as fault:  # Rule 2.13
                    self._subscriber_failed(inner, actual, fault)
                    return
            if ending is not None:
                if ending.error is None:
                    signal_complete(actual, self)
                else:
                    signal_error(actual, ending.error, self)
                return
            if batch:
                continue  # look again: more items, the ending (Rule 1.2), or nothing
            with lock:
                inner.wip -= missed
                missed = inner.wip
                if missed == 0:
                    return

    def _subscriber_failed(
        self, inner: _ReplaySubscription[T], actual: Subscriber[T], fault: Exception
    ) -> None:
        """``on_next`` raised: that subscriber is cancelled and receives ``fault`` (Rule 2.13)."""
        terminal = inner.terminal
        terminal.fail(fault, eager=True)  # too late (cancelled meanwhile): reported
        with self._lock:
            upstream_n, cancel_upstream = self._leave_locked(inner)
            inner.actual = None
            # A Rule 3.9 error recorded meanwhile by another thread wins; fault is reported.
            ending = terminal.claim()
        self._ask_upstream(upstream_n, cancel_upstream)
        if ending is not None and ending.error is not None:
            signal_error(actual, ending.error, self)

    # -- state changes (under _lock) -----------------------------------------------------

    def _append_locked(self, item: T) -> list[_ReplaySubscription[T]]:
        """Log ``item``; return the subscriptions whose loop the caller now owns."""
        self._items.append(item)
        if self._stamps is not None:
            self._stamps.append(self._clock())
        self._head += 1
        self._evict_locked()
        owners: list[_ReplaySubscription[T]] = []
        for inner in self._inners:
            if inner.requested:
                inner.wip += 1
                if inner.wip == 1:
                    owners.append(inner)
        return owners

    def _end(self, error: Exception | None, *, cancel_upstream: bool) -> None:
        """Record how the stream ends (the first ending wins) and let every loop deliver it."""
        owners: list[_ReplaySubscription[T]] = []
        with self._lock:
            accepted = self._terminal._ending is None
            if accepted:
                if error is None:
                    self._terminal.complete()
                else:
                    self._terminal.fail(error)
                for inner in self._inners:
                    inner.wip += 1
                    if inner.wip == 1:
                        owners.append(inner)
        if not accepted:
            if error is not None:
                # Too late: reported by the terminal (Rule 1.7); a late completion is ignored.
                self._terminal.fail(error, supersede=False)
            return
        if cancel_upstream:
            self._upstream.cancel()
        for inner in owners:
            self._drain(inner)

    def _leave_locked(self, inner: _ReplaySubscription[T]) -> tuple[int, bool]:
        """``inner`` is no longer live; return (demand to ask upstream, cancel upstream?)."""
        inners = self._inners
        if inner in inners:
            self._inners = tuple(other for other in inners if other is not inner)
        self._evict_locked()
        if self._auto_cancel and not self._inners and self._terminal._ending is None:
            self._terminal.fail(
                DisconnectedError(
                    f"{self!r} cancelled its upstream when its last subscriber left "
                    "(auto_cancel=True)"
                )
            )
            return 0, True
        return self._plan_locked(), False

    def _plan_locked(self) -> int:
        """How much more to request upstream now (already counted as outstanding), or 0."""
        inners = self._inners
        if not inners or self._terminal._ending is not None:
            return 0
        head = self._head
        outstanding = self._outstanding
        want = max(add_cap(inner.cursor, inner.requested) for inner in inners)
        limit = head + self._buffer_size
        history = self._history
        if history is not None:
            slowest = min(inner.cursor for inner in inners)
            limit = min(limit, slowest + history + self._buffer_size)
        target = want if want < limit else limit
        deficit = target - head - outstanding
        if deficit <= 0 or (outstanding and deficit < self._batch):
            return 0
        self._outstanding = outstanding + deficit
        return deficit

    def _evict_locked(self) -> None:
        """Release the items no live subscriber needs that left the history (count or age)."""
        history = self._history
        stamps = self._stamps
        if history is None and stamps is None:
            return  # everything is history, for ever
        head = self._head
        floor = min(inner.cursor for inner in self._inners) if self._inners else head
        first = self._first
        if first >= floor:
            return
        items = self._items
        base = self._base
        by_count = head - history if history is not None else first
        deadline = self._clock() - self._ttl if stamps is not None and self._ttl else None
        while first < floor:
            if first >= by_count and (
                deadline is None or stamps is None or stamps[first - base] > deadline
            ):
                break
            items[first - base] = None
            first += 1
        self._first = first
        dead = first - base
        if dead >= 64 and dead * 2 >= len(items):
            del items[:dead]
            if stamps is not None:
                del stamps[:dead]
            self._base = first

    def _replay_start_locked(self) -> int:
        """Where a new subscriber starts: the history window, without expired items."""
        head = self._head
        start = self._first
        if self._history is not None and head - self._history > start:
            start = head - self._history
        stamps = self._stamps
        if stamps is not None and self._ttl and start < head:
            base = self._base
            deadline = self._clock() - self._ttl
            start = base + bisect.bisect_right(stamps, deadline, start - base, head - base)
        return start

    def _ask_upstream(self, n: int, cancel: bool) -> None:
        if cancel:
            self._upstream.cancel()
        elif n:
            self._upstream.request(n)

    def __repr__(self) -> str:
        history = "all" if self._history is None else self._history
        return (
            f"<ReplayProcessor history={history} subscribers={len(self._inners)} "
            f"logged={self._head} {self._terminal!r}>"
        )


class _ReplaySubscription(Generic[T]):
    """One subscriber's position in the log, its demand and its drain-loop ownership."""

    __slots__ = ("actual", "cursor", "parent", "requested", "terminal", "wip")

    def __init__(self, parent: ReplayProcessor[T], actual: Subscriber[T]) -> None:
        self.parent = parent
        # Invariant: None once released (Rule 3.13); read by the loop owner.
        self.actual: Subscriber[T] | None = actual
        # Guarded by the parent's _lock: the absolute index of the next item to
        # deliver, the demand not yet delivered (capped at UNBOUNDED), and the
        # loop's work-in-progress count. wip starts at 1: the subscribing
        # thread owns the loop until on_subscribe returned (Rule 1.9).
        self.cursor = 0
        self.requested = 0
        self.wip = 1
        # This subscriber's own ending: its Rule 3.9 error or failure (eager),
        # or the stream's ending once it caught up; closed by cancel.
        self.terminal = Terminal(self)

    def request(self, n: int) -> None:
        """Add ``n`` to the demand; a bad ``n`` fails this subscriber (Rule 3.9)."""
        self.parent._request(self, n)

    def cancel(self) -> None:
        """Leave: nothing more is signalled and the subscriber is released (Rule 3.13)."""
        self.parent._cancel(self)

    def __repr__(self) -> str:
        demand = "unbounded" if self.requested == UNBOUNDED else str(self.requested)
        return f"<ReplaySubscription cursor={self.cursor} requested={demand}>"
