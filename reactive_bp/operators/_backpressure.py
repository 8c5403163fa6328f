"""Backpressure strategies: what to do with items that arrive while downstream is not asking.

Two mechanisms, shared by every strategy operator:

* ``_BufferSubscriber`` is a ``PushBuffer`` between an upstream that is
  asked for everything (``request(UNBOUNDED)``, "unbounded-in", like Reactor
  and RxJava's ``onBackpressure*``) and the downstream subscriber: upstream's
  subscriber and downstream's subscription in one object, whose ``on_next``
  is the buffer's ``offer`` (one call per item). The buffer's
  ``OverflowStrategy`` decides; it counts every item (produced == delivered +
  dropped + depth, at every read) and hands every dropped item, the one
  that actually left, to ``on_dropped``. ``on_backpressure_buffer``,
  ``_unbounded``, ``_drop``, ``_latest``, ``_error`` and ``sample_adaptive``
  are this class with different buffer settings.
* ``StrategySubscriber`` is a ``QueueDrain`` (the package's demand / drain /
  terminal machinery) that holds a few items under its own policy: a pending
  fold (``on_backpressure_reduce``), the newest item (``sample``,
  ``debounce``, ``throttle_*``), a batch (``buffer_timeout``) or a queue
  waiting for tokens (``throttle``). Policy state is guarded by ``_state``;
  items reach downstream only from the drain loop, against demand, so none of
  these operators ever fails for "lack of requests".

Both keep a ``BufferStats`` per subscription; pass ``meter=`` to read it
(without a meter nobody can, so the backpressure clock is not read). Every
timer they schedule is a ``RejectableAction``: a pool that shut down before it
ran fails the stream with ``RejectedExecutionError`` instead of leaving it
waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, final

from typing_extensions import override

from .._core._arbiter import cancel_quietly, refuse_second_subscription
from .._core._demand import UNBOUNDED
from .._core._operator import CANCELLED
from .._core._push import (
    BufferStats,
    OfferResult,
    OverflowStrategy,
    PushBuffer,
    WaterMarks,
    synced_stats,
)
from .._core._queue_drain import QueueDrain
from ..schedulers import ImmediateScheduler
from ..schedulers._base import RejectableAction, check_delay
from ..sources._iterable import NoneItemError
from ._lift import LiftFlow

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscriber, Subscription
    from ..metrics import BackpressureMeter
    from ..schedulers import Cancellable, Scheduler

__all__ = [
    "StrategySubscriber",
    "default_scheduler",
    "on_backpressure_buffer",
    "on_backpressure_buffer_unbounded",
    "on_backpressure_drop",
    "on_backpressure_error",
    "on_backpressure_latest",
    "on_backpressure_reduce",
]

T = TypeVar("T")
R = TypeVar("R")

_DEFAULT_SCHEDULER = ImmediateScheduler()


def default_scheduler(scheduler: Scheduler | None) -> Scheduler:
    """The scheduler a time-based strategy uses when none is given.

    ``ImmediateScheduler``: delayed actions run on reactive_bp's shared timer
    thread, which exists only while something is scheduled.
    """
    return _DEFAULT_SCHEDULER if scheduler is None else scheduler


# -- PushBuffer-based strategies ---------------------------------------------------------------


class _BufferSpec(Generic[T]):
    """The per-operator settings a ``_BufferSubscriber`` builds its buffer from."""

    __slots__ = (
        "capacity",
        "error_ahead",
        "meter",
        "name",
        "on_dropped",
        "overflow",
        "scheduler",
        "ttl",
        "water_marks",
        "zero_capacity",
    )

    def __init__(
        self,
        name: str,
        capacity: int,
        overflow: OverflowStrategy,
        on_dropped: Callable[[T], object] | None = None,
        *,
        error_ahead: bool = False,
        zero_capacity: bool = False,
        ttl: float | None = None,
        scheduler: Scheduler | None = None,
        water_marks: WaterMarks | None = None,
        meter: BackpressureMeter | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self.on_dropped = on_dropped
        self.error_ahead = error_ahead
        self.zero_capacity = zero_capacity
        self.ttl = None if ttl is None else check_delay("ttl", ttl, positive=True)
        self.scheduler = default_scheduler(scheduler)
        self.water_marks = water_marks
        self.meter = meter
        # Validate now: a bad argument is the caller's error, not the stream's.
        PushBuffer(
            None,
            capacity,
            overflow,
            name=name,
            zero_capacity=zero_capacity,
            ttl=self.ttl,
            water_marks=water_marks,
        )

    def subscriber(self, actual: Subscriber[T]) -> _BufferSubscriber[T]:
        """The operator for one subscription (``LiftFlow``'s factory)."""
        if self.ttl is not None or self.overflow is OverflowStrategy.ERROR:
            return _CheckedBufferSubscriber(actual, self)
        return _BufferSubscriber(actual, self)


class _BufferSubscriber(PushBuffer[T]):
    """A ``PushBuffer`` that is also upstream's subscriber: it requests everything and
    its ``on_next`` *is* ``offer`` (one call per item on the saturated path).

    ::

        upstream:   --1--2--3--4--5--|            (asked for UNBOUNDED)
        request:    (1)          (2)
        buffer(2, DROP_OLDEST)
        downstream: --1----------4--5--|          (2, 3 dropped: counted, on_dropped)

    Demand: ``request(UNBOUNDED)`` upstream once downstream has its
    subscription; downstream demand is the buffer's (Rules 3.8, 3.9, 3.17).

    Cancellation: the buffer drops (and counts) what it holds and cancels
    upstream through its ``on_cancel`` callback; a Rule 3.9 request does too.

    Errors: an upstream error follows the buffered items (``error_ahead``:
    ahead of them). An ``ERROR`` overflow cancels upstream at once; the
    buffer delivers ``BufferOverflowError`` after the items it holds. A
    raising ``on_dropped`` cancels upstream and fails the stream ahead of
    the buffered items (the callback is not called again); so does a ttl
    sweep that the scheduler drops (a pool that shut down).

    Example:
        >>> from reactive_bp import Flow
        >>> from reactive_bp.testing import TestSubscriber
        >>> subscriber = TestSubscriber(0)
        >>> Flow.range(5).on_backpressure_buffer(2).subscribe(subscriber)
        >>> subscriber.request(5)
        >>> subscriber.items, subscriber.completed
        ([0, 1], False)
    """

    __slots__ = (
        "_downstream",
        "_failed",
        "_scheduler",
        "_timer",
        "_timer_lock",
        "_ttl_sweep",
        "_upstream",
        "_user_on_dropped",
    )

    def __init__(self, actual: Subscriber[T], spec: _BufferSpec[T]) -> None:
        self._user_on_dropped = spec.on_dropped
        self._failed = False
        super().__init__(
            None,
            spec.capacity,
            spec.overflow,
            None if spec.on_dropped is None else self._item_dropped,
            name=spec.name,
            error_ahead=spec.error_ahead,
            zero_capacity=spec.zero_capacity,
            ttl=spec.ttl,
            clock=spec.scheduler.now,
            water_marks=spec.water_marks,
            # Nobody can read the stats without a meter: no clock reads for them.
            timed=spec.meter is not None,
        )
        # Invariant: the subscriber until on_subscribe attaches it, None after
        # (the buffer alone holds it, and drops it on cancel: Rule 3.13).
        self._downstream: Subscriber[T] | None = actual
        if spec.meter is not None:
            spec.meter.attach(self.stats)
        # Invariant: CANCELLED until on_subscribe; the one upstream after.
        self._upstream: Subscription = CANCELLED
        self._scheduler = spec.scheduler
        self._timer_lock = threading.Lock()
        # Guarded by _timer_lock: the pending ttl sweep, if any.
        self._timer: Cancellable | None = None
        # What every sweep runs: one object, reused.
        self._ttl_sweep = RejectableAction(self._sweep, self._sweep_rejected)

    @final
    def on_subscribe(self, subscription: Subscription) -> None:
        """Hand the buffer downstream (Rule 1.9), then ask upstream for everything."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._upstream is not CANCELLED:
            refuse_second_subscription(subscription, self.name)  # Rule 2.5
            return
        self._upstream = subscription
        self.on_cancel(self._cancel_upstream)
        actual, self._downstream = self._downstream, None
        assert actual is not None  # a second on_subscribe returned above (Rule 2.5)
        self.attach(actual)
        if not self.is_closed:
            subscription.request(UNBOUNDED)

    if TYPE_CHECKING:

        def on_next(self, item: T) -> None:
            """Offer ``item`` (``None`` raises ``TypeError``, Rule 2.13)."""

    else:
        # The hot path: upstream's on_next is the buffer's offer itself, no
        # call in between (the OfferResult it returns is ignored by callers).
        on_next = PushBuffer.offer

    @final
    def on_error(self, error: Exception) -> None:
        """Fail the buffer (after its items, or ahead of them with ``error_ahead``)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self.error(error)

    @final
    def on_complete(self) -> None:
        """Complete once the buffered items are delivered."""
        self.complete()

    def _cancel_upstream(self) -> None:
        cancel_quietly(self._upstream)
        with self._timer_lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _item_dropped(self, item: T) -> None:
        on_dropped = self._user_on_dropped
        if self._failed or on_dropped is None:
            return
        try:
            on_dropped(item)
        except Exception as fault:
            self._fail_ahead(fault)

    def _fail_ahead(self, fault: Exception) -> None:
        """The operator's own failure: cancel upstream, fail ahead of the buffered items."""
        self._failed = True
        self._cancel_upstream()
        self.error_ahead = True
        self.error(fault, supersede=True)  # the operator's own failure cuts ahead

    def _arm_ttl(self) -> None:
        """Keep one sweep scheduled for when the oldest item expires."""
        with self._timer_lock:
            if self._timer is not None or self.is_cancelled:
                return
            expiry = self.next_expiry
            if expiry is None:
                return
            delay = max(0.0, expiry - self._scheduler.now())
            try:
                self._timer = self._scheduler.schedule_after(delay, self._ttl_sweep)
                return
            except Exception as error:  # e.g. a closed event loop: never out of on_next
                refused = error
        self._sweep_rejected(refused)

    def _sweep(self) -> None:
        with self._timer_lock:
            self._timer = None
        self.expire()
        self._arm_ttl()

    def _sweep_rejected(self, error: Exception) -> None:
        """The scheduler dropped the sweep (it shut down): the ttl cannot be kept."""
        with self._timer_lock:
            self._timer = None
        if not self._failed and not self.is_cancelled:  # an ended stream waits for no sweep
            self._fail_ahead(error)

    @override
    def __repr__(self) -> str:
        return f"<{self.name} {self._counters()}>"


class _CheckedBufferSubscriber(_BufferSubscriber[T]):
    """``_BufferSubscriber`` for an ``ERROR`` overflow or a ttl: ``on_next`` acts on the answer."""

    __slots__ = ()

    @override
    def on_next(self, item: T) -> None:
        """Offer ``item``; an ``ERROR`` overflow cancels upstream, a held item arms the ttl."""
        result = self.offer(item)  # raises TypeError for None (Rule 2.13)
        if result is OfferResult.FAILED:
            self._cancel_upstream()
        elif result is OfferResult.ENQUEUED and self._ttl is not None:
            self._arm_ttl()


def _buffer_flow(source: Flow[T], spec: _BufferSpec[T]) -> Flow[T]:
    return LiftFlow(source, spec.subscriber, spec.name)


def on_backpressure_buffer(
    source: Flow[T],
    capacity: int,
    overflow: OverflowStrategy,
    on_dropped: Callable[[T], object] | None,
    ttl: float | None,
    scheduler: Scheduler | None,
    error_ahead: bool,
    water_marks: WaterMarks | None,
    meter: BackpressureMeter | None,
) -> Flow[T]:
    """See :meth:`Flow.on_backpressure_buffer`."""
    if overflow is OverflowStrategy.UNBOUNDED_BUFFER:
        raise ValueError(
            "on_backpressure_buffer is bounded: use on_backpressure_buffer_unbounded() "
            "for a buffer without a limit"
        )
    if overflow is OverflowStrategy.WAIT:
        raise ValueError(
            "an operator holds its upstream back with demand, not by waiting: use "
            "limit_rate(capacity) for a bounded prefetch, or choose a dropping strategy"
        )
    if type(capacity) is not int or capacity < 1:
        raise ValueError(f"on_backpressure_buffer: capacity must be an int >= 1, got {capacity!r}")
    if ttl is None and scheduler is not None:
        raise ValueError("on_backpressure_buffer: scheduler is only used with a ttl")
    spec = _BufferSpec(
        "on_backpressure_buffer",
        capacity,
        overflow,
        on_dropped,
        error_ahead=error_ahead,
        ttl=ttl,
        scheduler=scheduler,
        water_marks=water_marks,
        meter=meter,
    )
    return _buffer_flow(source, spec)


def on_backpressure_buffer_unbounded(
    source: Flow[T], water_marks: WaterMarks | None, meter: BackpressureMeter | None
) -> Flow[T]:
    """See :meth:`Flow.on_backpressure_buffer_unbounded`."""
    spec: _BufferSpec[T] = _BufferSpec(
        "on_backpressure_buffer_unbounded",
        0,
        OverflowStrategy.UNBOUNDED_BUFFER,
        water_marks=water_marks,
        meter=meter,
    )
    return _buffer_flow(source, spec)


def on_backpressure_drop(
    source: Flow[T], on_dropped: Callable[[T], object] | None, meter: BackpressureMeter | None
) -> Flow[T]:
    """See :meth:`Flow.on_backpressure_drop`."""
    spec = _BufferSpec(
        "on_backpressure_drop",
        0,
        OverflowStrategy.DROP_NEWEST,
        on_dropped,
        zero_capacity=True,
        meter=meter,
    )
    return _buffer_flow(source, spec)


def on_backpressure_latest(
    source: Flow[T], on_dropped: Callable[[T], object] | None, meter: BackpressureMeter | None
) -> Flow[T]:
    """See :meth:`Flow.on_backpressure_latest`."""
    spec = _BufferSpec(
        "on_backpressure_latest", 1, OverflowStrategy.LATEST, on_dropped, meter=meter
    )
    return _buffer_flow(source, spec)


def on_backpressure_error(source: Flow[T], meter: BackpressureMeter | None) -> Flow[T]:
    """See :meth:`Flow.on_backpressure_error`."""
    spec: _BufferSpec[T] = _BufferSpec(
        "on_backpressure_error", 0, OverflowStrategy.ERROR, zero_capacity=True, meter=meter
    )
    return _buffer_flow(source, spec)


# -- QueueDrain-based strategies ----------------------------------------------------------------


class StrategySubscriber(QueueDrain[R], Generic[T, R]):
    """A single-upstream operator that holds a few items under its own policy.

    Subclasses write the policy; this class owns the Subscriber side, the
    held items (``_ready``), the stats and the timers:

    * ``hook_start()``: the initial upstream request (default: unbounded)
      and timers.
    * ``hook_item(item)``: an upstream item arrived. Count it
      (``stats.produced``), update the policy under ``_state`` and put what
      may be delivered into ``_ready`` with ``_push_ready_locked``. Return
      whether ``_ready`` (or what ``_take_locked`` offers) changed: only then
      does a drain pass run, so an item that is merely held (sampled,
      debounced, throttled away) costs one lock and no pass.
    * ``hook_upstream_complete()``: upstream completed; release what should
      still be delivered (under ``_state``).
    * ``_take_locked()`` / ``_idle_locked()``: what the drain loop delivers
      next, and whether nothing more will ever be delivered (defaults: the
      ``_ready`` queue).
    * ``hook_emitted(count)``: ``count`` items went downstream (outside any lock).
    * ``lazy_stats`` / ``_flush_stats_locked()``: a policy whose per-item
      path only counts dropped items aside (``sample``) sets ``lazy_stats``.
      It never counts ``produced`` (derived: delivered + dropped + depth),
      and while it has counts aside it arms ``stats._sync =
      self._sync_stats``, so reading ``produced``, ``dropped`` or
      ``dropped_by_reason`` first folds them in (``_flush_stats_locked``,
      under ``_state``).
    * ``on_next`` may be replaced by a fused version on a hot path (``sample``):
      it must make the same checks (Rule 2.13, nothing after cancel or the
      ending, a raising policy becomes ``_fail``) in one call.

    Demand: items leave only through the drain loop, at most as many as
    downstream requested (Rule 1.1); ``request`` and ``cancel`` are
    ``QueueDrain``'s (Rules 3.3, 3.6, 3.9, 3.13).

    Cancellation: cancels upstream and every timer; held items are counted
    as dropped (reason ``"cancelled"``).

    Errors: an upstream error cuts ahead: held items are counted as dropped
    (reason ``"error"``). A raising hook or user function cancels upstream
    and becomes ``on_error``.
    """

    __slots__ = (
        "_clock",
        "_ready",
        "_state",
        "_timed",
        "_timers",
        "_upstream",
        "stats",
    )

    lazy_stats: ClassVar[bool] = False
    """Whether ``_flush_stats_locked`` must run before the stats are read."""

    # Set per subclass (__init_subclass__): whether it keeps the default
    # _budget_locked/_take_locked/_idle_locked (hook_drain then inlines them),
    # and whether it overrides hook_emitted (else the drain does not call it).
    _plain_ready: ClassVar[bool] = True
    _hears_emitted: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        base = StrategySubscriber
        cls._plain_ready = (
            cls._budget_locked is base._budget_locked
            and cls._take_locked is base._take_locked
            and cls._idle_locked is base._idle_locked
        )
        cls._hears_emitted = cls.hook_emitted is not base.hook_emitted

    def __init__(
        self,
        actual: Subscriber[R],
        capacity: int | None,
        meter: BackpressureMeter | None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(actual)
        # Guards the policy state of subclasses, _ready and _timers. Reentrant:
        # a timer's action may run on the thread that schedules it.
        self._state = threading.RLock()
        # Items due for delivery, oldest first, each with how many upstream
        # items it stands for (a batch stands for its length).
        self._ready: deque[tuple[R, int]] = deque()
        self._timers: set[Cancellable] = set()
        self._clock = clock
        # Invariant: CANCELLED until on_subscribe.
        self._upstream: Subscription = CANCELLED
        # With lazy_stats the counters of dropped items sync on read, once the
        # policy arms them (stats._sync = self._sync_stats) with counts aside.
        self.stats = (
            synced_stats(capacity, None, drops_only=True)
            if self.lazy_stats
            else BufferStats(capacity)
        )
        # Backpressure time is measured only for a meter: nobody else can read it.
        self._timed = meter is not None
        if meter is not None:
            meter.attach(self.stats)

    # -- Subscriber --------------------------------------------------------------------

    @final
    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept the upstream, hand ``self`` downstream, then ``hook_start`` (Rule 1.9)."""
        if not self._accept_upstream(self._upstream, subscription):
            return
        self._upstream = subscription
        self._hand_downstream(subscription, self.hook_start)

    def on_next(self, item: T) -> None:
        """Apply the policy to ``item``, then drain."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._halted or self._terminal._ending is not None:
            return  # Rule 2.8: after cancel, or after upstream's own ending
        try:
            deliverable = self.hook_item(item)
        except Exception as fault:
            self._fail(fault)
            return
        if deliverable:
            self._schedule()

    @final
    def on_error(self, error: Exception) -> None:
        """Fail downstream ahead of the held items."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._signal_error(error)  # recorded with "ended" at once; a late one is reported

    @final
    def on_complete(self) -> None:
        """Release what the policy still owes downstream; complete after it."""
        if self._upstream_done:
            return
        try:
            with self._state:
                # Recorded under _state, where the drain reads "ended and idle".
                if not self._terminal.complete():
                    return
                self.hook_upstream_complete()
        except Exception as fault:
            self._fail(fault)
            return
        self._schedule()

    # -- hooks ---------------------------------------------------------------------------

    def hook_start(self) -> None:
        """Make the initial upstream request (default: everything) and start timers."""
        self._upstream.request(UNBOUNDED)

    def hook_item(self, item: T) -> bool:
        """Handle one upstream item; return whether something new may be delivered."""
        raise NotImplementedError

    def hook_upstream_complete(self) -> None:
        """Upstream completed (called under ``_state``)."""

    def hook_emitted(self, count: int) -> None:
        """``count`` items were delivered in this pass (called outside locks)."""

    def _take_locked(self, budget: int) -> tuple[R, int] | None:
        """The next item to deliver (``budget`` more are allowed now), or ``None``."""
        return self._ready.popleft() if self._ready else None

    def _idle_locked(self) -> bool:
        """Whether nothing is held that could still be delivered."""
        return not self._ready

    def _budget_locked(self, wanted: int) -> int:
        """How many of the ``wanted`` (still requested) items may go now; throttling lowers it."""
        return wanted

    # -- helpers ------------------------------------------------------------------------

    def request_upstream(self, n: int) -> None:
        """Ask upstream for ``n`` more items."""
        self._upstream.request(n)

    def _held(self, delta: int) -> None:
        """Adjust the held-item count (under ``_state``)."""
        stats = self.stats
        depth = stats.depth + delta
        stats.depth = depth
        if depth > stats.peak_depth:
            stats.peak_depth = depth

    def _push_ready_locked(self, item: R, weight: int = 1) -> None:
        self._ready.append((item, weight))

    def _replace_ready_locked(self, item: R, reason: str, weight: int = 1) -> None:
        """Make ``item`` the newest ready item, dropping an undelivered newer one."""
        if self._ready:
            _, old_weight = self._ready.pop()
            self.stats.count_drop(reason, old_weight)
            self._held(-old_weight)
        self._ready.append((item, weight))

    def _after(self, delay: float, action: Callable[[], object]) -> Cancellable:
        """Run ``action`` after ``delay`` on the scheduler, unless the operator ended."""
        raise NotImplementedError

    def _track(self, timer: Cancellable) -> Cancellable:
        with self._state:
            if self._halted:
                timer.cancel()
            else:
                self._timers.add(timer)
        return timer

    def _untrack(self, timer: Cancellable | None) -> None:
        if timer is None:
            return
        timer.cancel()
        with self._state:
            self._timers.discard(timer)

    def hook_clear_locked(self, reason: str) -> None:
        """Count what the policy holds outside ``_ready`` as dropped for ``reason``."""

    def _flush_stats_locked(self) -> None:
        """Fold counts kept aside into ``stats`` (under ``_state``; with ``lazy_stats``)."""

    def _sync_stats(self) -> None:
        with self._state:
            self._flush_stats_locked()

    def _rejected(self, error: Exception) -> None:
        """The scheduler dropped one of our timers unrun (it shut down): fail the stream.

        A timer is what some held item or batch waits for, so without it the
        subscriber would wait forever. Too late once the operator halted.
        """
        if not self._halted and not self._terminal.is_closed:
            self._fail(error)

    # -- QueueDrain ------------------------------------------------------------------------

    @override
    def hook_drain(self, actual: Subscriber[R], requested: int) -> int:
        emitted = 0
        stats = self.stats
        state = self._state
        if self._plain_ready:
            # The default policy hooks, inlined: take from _ready while asked.
            ready = self._ready
            while emitted < requested and not self._halted:
                with state:
                    if not ready:
                        break
                    item, weight = ready.popleft()
                    stats.delivered += weight
                    stats.depth -= weight  # _held(-weight): a fall never moves the peak
                actual.on_next(item)
                emitted += 1
        else:
            while not self._halted:
                with state:
                    budget = self._budget_locked(requested - emitted)
                    if budget <= 0:
                        break
                    taken = self._take_locked(budget)
                    if taken is None:
                        break
                    item, weight = taken
                    stats.delivered += weight
                    self._held(-weight)
                actual.on_next(item)
                emitted += 1
        if emitted and self._hears_emitted:
            self.hook_emitted(emitted)
        if self._plain_ready and not self._timed:
            # No lock: the ending is read before _ready, and completion records
            # it in the critical section that makes the last items ready, so
            # "ended and nothing ready", read in this order, is final.
            finished = self._terminal._ending is not None and not self._ready
        else:
            finished = self._finished_locked(stats, emitted < requested)
        if finished and not self._halted:
            self._terminate(actual)  # an error recorded meanwhile wins
        return emitted

    def _finished_locked(self, stats: BufferStats, short: bool) -> bool:
        """Whether the stream is over (ended, nothing held); times the wait for a meter."""
        with self._state:
            idle = not self._ready if self._plain_ready else self._idle_locked()
            finished = idle and self._terminal._ending is not None  # _upstream_done, inlined
            if self._timed:
                now = self._clock()
                if idle or short:
                    stats.pressure_ended(now)
                else:
                    stats.pressure_started(now)  # held items wait for demand
        return finished

    @override
    def hook_cancel_upstreams(self) -> None:
        cancel_quietly(self._upstream)
        self._dispose_timers()

    @override
    def hook_clear(self) -> None:
        reason = "cancelled" if self._terminal.is_cancelled else "error"
        with self._state:
            for _, weight in self._ready:
                self.stats.count_drop(reason, weight)
                self._held(-weight)
            self._ready.clear()
            self.hook_clear_locked(reason)
            if self._timed:
                self.stats.pressure_ended(self._clock())
        self._dispose_timers()

    def _dispose_timers(self) -> None:
        with self._state:
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()


class TimedStrategySubscriber(StrategySubscriber[T, R]):
    """A ``StrategySubscriber`` whose policy runs timers on a scheduler."""

    __slots__ = ("_scheduler",)

    def __init__(
        self,
        actual: Subscriber[R],
        capacity: int | None,
        meter: BackpressureMeter | None,
        scheduler: Scheduler,
    ) -> None:
        super().__init__(actual, capacity, meter, scheduler.now)
        self._scheduler = scheduler

    @override
    def _after(self, delay: float, action: Callable[[], object]) -> Cancellable:
        # Rejectable: a pool that shut down before the timer came due fails
        # the stream (RejectedExecutionError) instead of leaving it waiting.
        timer = RejectableAction(action, self._rejected)
        return self._track(self._scheduler.schedule_after(max(0.0, delay), timer))


# -- on_backpressure_reduce ------------------------------------------------------------------------


class _Reduce(StrategySubscriber[T, R]):
    """Holds one pending value; items arriving while it waits are folded into it.

    Without a seed the first item is the pending value itself (``T -> T``);
    with a seed factory every item is folded into ``seed()`` or into the
    pending aggregate (``T -> R``). Each item folded into a pending value is
    counted as dropped with reason ``"reduced"``: it is inside the one value
    that will be delivered, so produced == delivered + dropped + depth holds.
    """

    __slots__ = ("_fold", "_seed")

    def __init__(
        self,
        actual: Subscriber[R],
        fold: Callable[[R, T], R],
        seed: Callable[[], R] | None,
        meter: BackpressureMeter | None,
    ) -> None:
        super().__init__(actual, 1, meter, time.monotonic)
        self._fold = fold
        self._seed = seed

    @override
    def hook_item(self, item: T) -> bool:
        with self._state:
            self.stats.produced += 1
            previous = self._ready.pop()[0] if self._ready else None
            if previous is not None:
                self._held(-1)
        # The user's fold runs outside the lock; only this (upstream) thread
        # adds to _ready, and the drain loop finds it empty meanwhile.
        try:
            if previous is not None:
                value = self._fold(previous, item)
            elif self._seed is not None:
                value = self._fold(self._seed(), item)
            else:
                value = item  # type: ignore[assignment]  # T -> T without a seed
        except Exception:
            with self._state:
                self.stats.count_drop("error", 1 if previous is None else 2)
            raise
        if value is None:
            with self._state:
                self.stats.count_drop("error", 1 if previous is None else 2)
            raise NoneItemError("on_backpressure_reduce: the fold returned None (Rule 2.13)")
        with self._state:
            if previous is not None:
                self.stats.count_drop("reduced")
            self._ready.append((value, 1))
            self._held(1)
        return True


def on_backpressure_reduce(
    source: Flow[T],
    fold: Callable[[R, T], R],
    seed: Callable[[], R] | None,
    meter: BackpressureMeter | None,
) -> Flow[R]:
    """See :meth:`Flow.on_backpressure_reduce`."""
    if not callable(fold):
        raise TypeError(f"on_backpressure_reduce: fold must be callable, got {fold!r}")
    if seed is not None and not callable(seed):
        raise TypeError(
            f"on_backpressure_reduce: seed must be a factory (a callable), got {seed!r}; "
            "a shared mutable seed would leak between subscriptions"
        )
    factory = partial(_Reduce, fold=fold, seed=seed, meter=meter)
    return LiftFlow(source, factory, "on_backpressure_reduce")
