"""Time-based operators: ``delay`` and ``timeout``.

Every time operator takes ``scheduler=``; without one it runs its timers on
:data:`reactive_bp.sources._time.DEFAULT_TIME_SCHEDULER` (the shared,
self-stopping timer thread). Tests pass a ``VirtualTimeScheduler``.

A timer the scheduler never runs ends the stream: each timer is a
``RejectableAction``, so a ``ThreadPoolScheduler`` that shut down before the
timer came due fails the stream with its ``RejectedExecutionError`` (naming
the pool) instead of leaving the subscriber waiting for a signal that can no
longer come; a ``schedule_after`` that raises does the same.
"""

from __future__ import annotations

import threading
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import SubscriptionArbiter, cancel_quietly, refuse_second_subscription
from .._core._demand import UNBOUNDED, add_cap, check_request, produced, sub_or_zero
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED
from .._core._queue_drain import QueueDrain
from .._core._signals import signal_complete, signal_error
from .._flow import Flow
from ..schedulers._base import RejectableAction, check_delay
from ..sources._time import time_scheduler
from ._lift import LiftFlow

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber, Subscription
    from ..schedulers import Cancellable, Scheduler

__all__ = ["FlowTimeoutError", "delay", "timeout"]

T = TypeVar("T")
U = TypeVar("U")


# -- delay ---------------------------------------------------------------------------------


class _DelaySubscriber(QueueDrain[T]):
    """Holds each item for ``delay`` seconds, then emits it; demand passes through 1:1.

    Demand: each drain pass asks upstream for the downstream demand not yet
    covered by held items or by earlier upstream requests, so upstream is
    asked for exactly what downstream asked for, no more (Invariant:
    ``asked + len(queue) <= requested downstream``). Held items therefore
    always have demand waiting for them.

    One timer at a time: items arrive in order and share one delay, so the
    head of the queue is always due first; the timer is armed for the head
    (or for the delayed completion) by the drain loop, which keeps timer
    work serialized with emission (Rule 1.3) even on a thread pool.

    Cancellation: cancels upstream and the pending timer, drops held items.

    Errors: an upstream error cuts ahead at once (held items are dropped,
    like RxJava's ``delay`` without ``delayError``); completion is delayed by
    ``delay`` like the items. A timer the scheduler drops (a pool shut down
    while it was pending) fails the stream the same way, with the
    scheduler's ``RejectedExecutionError``.
    """

    __slots__ = (
        "_asked",
        "_complete_at",
        "_delay",
        "_queue",
        "_scheduler",
        "_timer",
        "_timer_action",
        "_upstream",
    )

    delay_error: ClassVar[bool] = False

    def __init__(self, actual: Subscriber[T], delay: float, scheduler: Scheduler) -> None:
        super().__init__(actual)
        self._delay = delay
        self._scheduler = scheduler
        # Invariant: CANCELLED until on_subscribe.
        self._upstream: Subscription = CANCELLED
        # Guarded by _lock for appends; popped by the loop owner. Each entry
        # is (due time on the scheduler's clock, item), in arrival order.
        self._queue: deque[tuple[float, T]] = deque()
        # Guarded by _lock: requested upstream and not yet received.
        self._asked = 0
        # Guarded by _lock: the one pending timer; None when none is armed.
        self._timer: Cancellable | None = None
        # Written once, before the completion is recorded in _terminal (which
        # _upstream_done reads), so a pass that sees the ending sees it too.
        self._complete_at = 0.0
        # What every timer runs; one object, reused.
        self._timer_action = RejectableAction(self._timer_fired, self._timer_rejected)

    # -- upstream side -------------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept upstream and hand ``self`` downstream; demand flows in drain passes."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._upstream is not CANCELLED:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return
        self._upstream = subscription
        actual = self._actual
        if actual is None:  # pragma: no cover - cannot be released before on_subscribe
            cancel_quietly(subscription)
            return
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fail(fault)

    def on_next(self, item: T) -> None:
        """Hold ``item`` until ``delay`` has passed."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._halted or self._upstream_done:
            return  # Rule 2.8
        due = self._scheduler.now() + self._delay
        with self._lock:
            over = self._asked == 0
            if not over:
                self._asked = produced(self._asked, 1)
                self._queue.append((due, item))
        if over:
            self._fail(
                ProtocolViolationError(f"Rule 1.1: {self!r} received {item!r} without demand")
            )
            return
        self._schedule()

    def on_error(self, error: Exception) -> None:
        """Fail at once: held items are dropped (errors are not delayed)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._signal_error(error)  # recorded with "ended" at once; a late one is reported

    def on_complete(self) -> None:
        """Complete ``delay`` seconds from now, after the held items."""
        if self._upstream_done:
            return
        self._complete_at = self._scheduler.now() + self._delay
        self._upstream_complete()

    # -- the drain -------------------------------------------------------------------------

    def _timer_fired(self) -> None:
        with self._lock:
            self._timer = None
        self._schedule()

    def _timer_rejected(self, error: Exception) -> None:
        """The scheduler dropped the timer: held items can never come due; fail the stream."""
        with self._lock:
            self._timer = None
        # Cuts ahead, even of a recorded completion that waits behind held
        # items. Quiet: a stream already over (cancelled, or ending eagerly)
        # was not waiting for this timer; its own ending is what it delivers.
        if self._terminal.fail(error, eager=True, quiet=True):
            self._halted = True
            self._cancel_upstreams()
            self._schedule()

    @override
    def hook_drain(self, actual: Subscriber[T], requested: int) -> int:
        queue = self._queue
        with self._lock:
            if requested == UNBOUNDED:
                ask = 0 if self._asked == UNBOUNDED else UNBOUNDED
            else:
                ask = sub_or_zero(requested, add_cap(len(queue), self._asked))
            if ask:
                self._asked = add_cap(self._asked, ask)
        if ask and not self._upstream_done:
            self._upstream.request(ask)
        now = self._scheduler.now()
        emitted = 0
        while queue and emitted != requested and not self._halted:
            due, item = queue[0]
            if due > now:
                break
            queue.popleft()
            actual.on_next(item)
            emitted += 1
        if self._halted:
            return emitted
        # Read the ending before the queue: items are queued before it is recorded.
        done = self._upstream_done
        if queue:
            deadline = queue[0][0]
        elif done:
            if self._complete_at <= now:
                self._terminate(actual)
                return emitted
            deadline = self._complete_at
        else:
            return emitted
        self._arm(deadline - now)
        return emitted

    def _arm(self, wait: float) -> None:
        """Arm the one timer, unless it is armed already (loop owner only)."""
        with self._lock:
            if self._timer is not None or self._halted:
                return
            # A schedule_after that raises propagates to the loop, which
            # fails the stream with it (Rule 2.13 path), releasing _lock first.
            self._timer = self._scheduler.schedule_after(max(wait, 0.0), self._timer_action)

    @override
    def hook_cancel_upstreams(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        cancel_quietly(self._upstream)

    @override
    def hook_clear(self) -> None:
        self._queue.clear()


def delay(source: Flow[T], duration: float, scheduler: Scheduler | None) -> Flow[T]:
    """See :meth:`Flow.delay`."""
    seconds = check_delay("delay: duration", duration)
    chosen = time_scheduler(scheduler)

    def factory(actual: Subscriber[T]) -> Subscriber[T]:
        return _DelaySubscriber(actual, seconds, chosen)

    return LiftFlow(source, factory, "delay")


# -- timeout -------------------------------------------------------------------------------


class FlowTimeoutError(TimeoutError):
    """No item arrived within the ``timeout`` while downstream was waiting for one."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no item within {seconds} seconds")
        self.seconds = seconds


class _TimeoutSubscriber(Generic[T]):
    """Relays the source while items keep coming; on a timeout, errors or switches to a fallback.

    The clock only runs while downstream waits: a timer is armed when there is
    outstanding demand and no item in flight (at subscription, after an item
    if demand remains, or when a request ends a period without demand), and
    every item disarms it. A slow consumer therefore never causes a timeout;
    only a source that does not answer requested demand within ``duration``
    does.

    Demand: 1:1 through a ``SubscriptionArbiter``; after a timeout the
    fallback is asked for the outstanding demand (requested minus delivered).

    Cancellation: cancels the source (or the fallback) and the timer.

    Errors: the source's errors pass through; a timeout without a fallback
    signals ``FlowTimeoutError`` and cancels the source. A timer never fires
    while an item is being delivered (it is not armed then, and a stale timer
    is recognised by its item index), so Rule 1.3 holds. A Rule 3.9 request
    stops the clock for good: the source (or the fallback) answers it with
    ``on_error``, and a timer must not end the stream with
    ``FlowTimeoutError`` first and leave that answer undeliverable. If the
    clock cannot run (the scheduler refuses the timer, or drops it because
    it shut down), the stream fails with the scheduler's error and the
    source is cancelled; there is no switch to the fallback.
    """

    __slots__ = (
        "_actual",
        "_arbiter",
        "_count",
        "_done",
        "_duration",
        "_emitting",
        "_fallback",
        "_index",
        "_lock",
        "_main",
        "_outstanding",
        "_scheduler",
        "_timer",
    )

    def __init__(
        self,
        actual: Subscriber[T],
        duration: float,
        fallback: Flow[T] | None,
        scheduler: Scheduler,
    ) -> None:
        # Invariant: None after a terminal signal or cancel (Rule 3.13).
        self._actual: Subscriber[T] | None = actual
        self._duration = duration
        self._fallback = fallback
        self._scheduler = scheduler
        self._arbiter = SubscriptionArbiter()
        self._lock = threading.Lock()
        # Guarded by _lock.
        self._main: Subscription = CANCELLED
        self._done = False  # the source relay is over (terminal, cancel or timeout)
        self._emitting = False  # inside actual.on_next for a source item
        self._index = 0  # source items seen; a timer is valid only for its index
        self._count = 0  # source items relayed (reported to the arbiter on a switch)
        self._outstanding = 0  # downstream demand not yet met by the source
        self._timer: Cancellable | None = None

    # -- Subscription (downstream) -----------------------------------------------------

    def request(self, n: int) -> None:
        """Pass ``n`` upstream; start the clock if downstream now waits for an item."""
        if check_request(n) is None:
            with self._lock:
                self._outstanding = add_cap(self._outstanding, n)
            self._arbiter.request(n)
            self._arm_if_waiting()
            return
        # Rule 3.9: recorded in the arbiter (pending_error) before it is
        # forwarded; from then on no timer fires (_timed_out checks it) and
        # none is armed, so the stream ends with the answer to this request.
        self._arbiter.request(n)
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def cancel(self) -> None:
        """Cancel the timer and the current upstream (Rules 3.5, 3.7, 3.13)."""
        with self._lock:
            self._done = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._actual = None
        self._arbiter.cancel()

    # -- Subscriber (the source) --------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Make the source current; it gets the outstanding demand."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            second = self._main is not CANCELLED
            late = self._done
            if not second and not late:
                self._main = subscription
        if late and not second:
            cancel_quietly(subscription)  # timed out (or cancelled) before it subscribed
            return
        if second:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return
        # The source is the arbiter's first upstream (epoch 0). A timeout may switch
        # to the fallback between the check above and this call: the switch clears
        # the upstream first, so the source, stale by then, is cancelled here rather
        # than made current over the fallback (which would take its demand, a hang).
        self._arbiter.set_upstream(subscription, epoch=0)

    def on_next(self, item: T) -> None:
        """Relay ``item`` and restart the clock if more is requested."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        with self._lock:
            actual = self._actual
            if self._done or actual is None:
                return  # Rule 2.8, or the item lost the race against the timeout
            self._index += 1
            self._count += 1
            self._emitting = True
            self._outstanding = produced(self._outstanding, 1)
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        try:
            actual.on_next(item)
        except Exception as fault:  # Rule 2.13
            self._stop(fault)
            return
        with self._lock:
            self._emitting = False
        self._arm_if_waiting()

    def on_error(self, error: Exception) -> None:
        """Pass the source's error on."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if not self._finish_source():
            report_undeliverable(error, f"{self!r} after terminal/cancel/timeout")
            return
        actual, self._actual = self._actual, None
        if actual is not None:
            signal_error(actual, error, self)

    def on_complete(self) -> None:
        """Pass the source's completion on."""
        if not self._finish_source():
            return
        actual, self._actual = self._actual, None
        if actual is not None:
            signal_complete(actual, self)

    # -- the clock ----------------------------------------------------------------------

    def _arm_if_waiting(self) -> None:
        with self._lock:
            if (
                self._done
                or self._emitting
                or self._timer is not None
                or self._outstanding == 0
                or self._arbiter.pending_error is not None  # Rule 3.9: the clock stopped
            ):
                return
            index = self._index
            action = RejectableAction(
                partial(self._timed_out, index), partial(self._clock_failed, index)
            )
            try:
                self._timer = self._scheduler.schedule_after(self._duration, action)
                return
            except Exception as error:  # e.g. a closed event loop: never out of request
                refused = error
        self._clock_failed(index, refused)

    def _timed_out(self, index: int) -> None:
        with self._lock:
            if (
                self._done
                or self._emitting
                or index != self._index
                or self._arbiter.pending_error is not None
            ):
                return  # an item came first, the relay is over, or a Rule 3.9 answer is due
            self._done = True
            self._timer = None
            main = self._main
            count = self._count
        cancel_quietly(main)
        fallback = self._fallback
        if fallback is None:
            actual, self._actual = self._actual, None
            self._arbiter.cancel()
            if actual is not None:
                signal_error(actual, FlowTimeoutError(self._duration), self)
            return
        self._arbiter.clear_upstream()
        self._arbiter.produced(count)
        fallback.subscribe(_FallbackRelay(self))

    def _clock_failed(self, index: int, error: Exception) -> None:
        """The timer for item ``index`` will never run: end the stream with ``error``.

        Without the clock the timeout cannot be kept, so the stream fails
        (cancelling the source) rather than relaying on without one. A stale
        timer (an item came since; its successor has its own fate) and a
        relay already over change nothing.
        """
        with self._lock:
            if self._done or index != self._index:
                return
            self._done = True
            self._timer = None
            main = self._main
        cancel_quietly(main)
        actual, self._actual = self._actual, None
        self._arbiter.cancel()
        if actual is not None:
            signal_error(actual, error, self)

    # -- helpers ------------------------------------------------------------------------

    def _finish_source(self) -> bool:
        """Claim the terminal signal of the source; ``False`` if the relay was already over."""
        with self._lock:
            if self._done:
                return False
            self._done = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._arbiter.clear_upstream()
        return True

    def _stop(self, error: Exception) -> None:
        """Downstream's on_next raised: cancel everything and signal ``error`` (Rule 2.13)."""
        with self._lock:
            self._done = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        actual, self._actual = self._actual, None
        self._arbiter.cancel()
        if actual is None:
            report_undeliverable(error, f"{self!r} after terminal/cancel")
        else:
            signal_error(actual, error, self)

    def start(self, source: Publisher[T]) -> None:
        """Hand ``self`` downstream, subscribe to ``source``, start the clock if demanded."""
        actual = self._actual
        assert actual is not None
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._stop(fault)
            return
        if self._arbiter.is_cancelled:
            return
        source.subscribe(self)
        self._arm_if_waiting()

    def __repr__(self) -> str:
        return f"<timeout({self._duration}) done={self._done}>"


class _FallbackRelay(Generic[T]):
    """The subscriber of the fallback: relays straight downstream, no more clock."""

    __slots__ = ("_parent",)

    def __init__(self, parent: _TimeoutSubscriber[T]) -> None:
        self._parent = parent

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        self._parent._arbiter.set_upstream(subscription)

    def on_next(self, item: T) -> None:
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        actual = self._parent._actual
        if actual is None:
            return  # Rule 2.8
        try:
            actual.on_next(item)
        except Exception as fault:  # Rule 2.13
            self._parent._stop(fault)

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        parent = self._parent
        actual, parent._actual = parent._actual, None
        if actual is None:
            report_undeliverable(error, f"{parent!r} fallback after terminal/cancel")
            return
        signal_error(actual, error, parent)

    def on_complete(self) -> None:
        parent = self._parent
        actual, parent._actual = parent._actual, None
        if actual is not None:
            signal_complete(actual, parent)


class _TimeoutFlow(Flow[T]):
    __slots__ = ("_duration", "_fallback", "_scheduler", "_source")

    def __init__(
        self,
        source: Flow[T],
        duration: float,
        fallback: Flow[T] | None,
        scheduler: Scheduler,
    ) -> None:
        self._source = source
        self._duration = duration
        self._fallback = fallback
        self._scheduler = scheduler

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        relay = _TimeoutSubscriber(subscriber, self._duration, self._fallback, self._scheduler)
        relay.start(self._source)

    def __repr__(self) -> str:
        return f"{self._source!r}.timeout({self._duration})"


def timeout(
    source: Flow[T],
    duration: float,
    fallback: Publisher[U] | None,
    scheduler: Scheduler | None,
) -> Flow[T | U]:
    """See :meth:`Flow.timeout`."""
    seconds = check_delay("timeout: duration", duration, positive=True)
    widened: Flow[T | U] = source
    adopted: Flow[T | U] | None = None if fallback is None else Flow.from_publisher(fallback)
    return _TimeoutFlow(widened, seconds, adopted, time_scheduler(scheduler))
