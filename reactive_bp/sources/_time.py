"""Time sources: ``interval`` and ``timer``, and the default scheduler of time operators.

A clock cannot be slowed down, so a time source must decide what a tick that
finds no demand means. Reactor and RxJava fail the stream ("could not emit
tick due to lack of requests"); here no tick ever breaks Rule 1.1 and none
fails the stream:

* ``interval`` keeps at most one undelivered tick. A tick that finds no
  demand is held; a later tick that finds the held one still undelivered
  replaces it (the older one is *coalesced*: counted, never delivered). When
  demand arrives the held tick is delivered at once. Items are the tick
  numbers 0, 1, 2, ..., so a gap in the numbers is exactly the number of
  ticks that were coalesced.
* ``timer`` holds its one item until it is requested, then completes.

Both are ``QueueDrain`` subscriptions: the scheduler's thread and the
requesting thread meet in the serialized drain loop (Rules 1.3, 3.3), which
also validates demand (Rule 3.9) and handles cancel (Rules 3.5, 3.7, 3.13).

A clock that stops is not a quiet stream: both schedule a
``RejectableAction``, so a tick or a deadline the scheduler drops (a
``ThreadPoolScheduler`` shut down) fails the stream with the scheduler's
``RejectedExecutionError``, and a scheduler that refuses to start the clock
fails it at once; the subscriber is never left waiting for a tick that
cannot come.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final, TypeVar

from typing_extensions import override

from .._core._queue_drain import QueueDrain
from .._flow import Flow
from ..schedulers import ImmediateScheduler
from ..schedulers._base import RejectableAction, check_delay

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..abc import Subscriber
    from ..schedulers import Cancellable, Scheduler

__all__ = ["DEFAULT_TIME_SCHEDULER", "IntervalFlow", "TimerFlow", "time_scheduler"]

T = TypeVar("T")

DEFAULT_TIME_SCHEDULER: Final[Scheduler] = ImmediateScheduler()
"""Where time operators run when no ``scheduler=`` is given.

Delayed actions run on reactive_bp's shared timer thread, which exits as soon
as nothing is pending: no pool to shut down, no thread left behind.
"""


def time_scheduler(scheduler: Scheduler | None) -> Scheduler:
    """Return ``scheduler``, or the default one for time operators."""
    return DEFAULT_TIME_SCHEDULER if scheduler is None else scheduler


class _TimedSubscription(QueueDrain[int]):
    """A ``QueueDrain`` with one scheduled action to cancel when it ends."""

    __slots__ = ("_handle", "_handle_lock", "_stopped")

    def __init__(self, actual: Subscriber[int]) -> None:
        super().__init__(actual)
        self._handle_lock = threading.Lock()
        # Guarded by _handle_lock: the scheduled action, and whether it must
        # not be (re)armed because the subscription ended.
        self._handle: Cancellable | None = None
        self._stopped = False

    def _arm(self, handle: Cancellable) -> None:
        """Keep ``handle``; cancel it at once if the subscription already ended."""
        with self._handle_lock:
            if not self._stopped:
                self._handle = handle
                return
        handle.cancel()

    @override
    def hook_cancel_upstreams(self) -> None:
        with self._handle_lock:
            self._stopped = True
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def start(self, actual: Subscriber[int], arm: Callable[[], Cancellable]) -> None:
        """Deliver ``on_subscribe``, then start the clock unless already cancelled."""
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fail(fault)
            return
        if self._halted:
            return
        try:
            handle = arm()
        except Exception as error:  # e.g. a closed event loop: on_error, never raised (Rule 1.9)
            self.rejected(error)
            return
        self._arm(handle)

    def rejected(self, error: Exception) -> None:
        """The scheduler refused or dropped the clock's action: fail the stream with ``error``.

        It cuts ahead (a held tick is not delivered: the stream is broken,
        not over). Quiet: a stream already over (cancelled, completed, or
        ending eagerly) was not waiting for the clock.
        """
        if self._terminal.fail(error, eager=True, quiet=True):
            self._halted = True
            self._cancel_upstreams()
            self._schedule()


class _IntervalSubscription(_TimedSubscription):
    """Ticks on the scheduler; at most one undelivered tick is held (see the module doc)."""

    __slots__ = ("_coalesced", "_held", "_next")

    def __init__(self, actual: Subscriber[int]) -> None:
        super().__init__(actual)
        # Guarded by _lock: the number the next tick gets, the undelivered
        # tick (None when there is none), and how many ticks were replaced.
        self._next = 0
        self._held: int | None = None
        self._coalesced = 0

    def tick(self) -> None:
        """One period elapsed: hold the new tick (replacing an undelivered one) and drain."""
        with self._lock:
            if self._halted:
                return
            if self._held is not None:
                self._coalesced += 1
            self._held = self._next
            self._next += 1
        self._schedule()

    @override
    def hook_drain(self, actual: Subscriber[int], requested: int) -> int:
        if requested == 0:
            return 0
        with self._lock:
            held, self._held = self._held, None
        if held is None:
            return 0
        actual.on_next(held)
        return 1

    @override
    def hook_clear(self) -> None:
        self._held = None

    @property
    def coalesced(self) -> int:
        """How many ticks found an undelivered tick and replaced it."""
        return self._coalesced


class _TimerSubscription(_TimedSubscription):
    """Holds ``0`` from the deadline until it is requested, then completes."""

    __slots__ = ("_due",)

    def __init__(self, actual: Subscriber[int]) -> None:
        super().__init__(actual)
        self._due = False  # set once, by the scheduled action

    def fire(self) -> None:
        """The delay elapsed: the item may go as soon as there is demand."""
        self._due = True
        self._schedule()

    @override
    def hook_drain(self, actual: Subscriber[int], requested: int) -> int:
        if not self._due or requested == 0:
            return 0
        actual.on_next(0)
        if not self._halted:  # a cancel or a Rule 3.9 request from inside on_next wins
            self._terminate(actual, None)
        return 1


class IntervalFlow(Flow[int]):
    """``Flow.interval``: tick numbers every ``period`` seconds, coalesced without demand."""

    __slots__ = ("_initial_delay", "_period", "_scheduler")

    def __init__(
        self, period: float, scheduler: Scheduler | None, initial_delay: float | None
    ) -> None:
        self._period = check_delay("interval: period", period, positive=True)
        self._initial_delay = (
            self._period
            if initial_delay is None
            else check_delay("interval: initial_delay", initial_delay)
        )
        self._scheduler = time_scheduler(scheduler)

    @override
    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        subscription = _IntervalSubscription(subscriber)
        scheduler = self._scheduler
        # Periodic passes a dropped tick on to on_rejected (schedulers/_timer.py).
        tick = RejectableAction(subscription.tick, subscription.rejected)
        subscription.start(
            subscriber,
            lambda: scheduler.schedule_periodic(self._period, tick, self._initial_delay),
        )

    def __repr__(self) -> str:
        return f"Flow.interval({self._period}, initial_delay={self._initial_delay})"


class TimerFlow(Flow[int]):
    """``Flow.timer``: ``0`` after ``delay`` seconds (held until requested), then completion."""

    __slots__ = ("_delay", "_scheduler")

    def __init__(self, delay: float, scheduler: Scheduler | None) -> None:
        self._delay = check_delay("timer: delay", delay)
        self._scheduler = time_scheduler(scheduler)

    @override
    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        subscription = _TimerSubscription(subscriber)
        scheduler = self._scheduler
        fire = RejectableAction(subscription.fire, subscription.rejected)
        subscription.start(subscriber, lambda: scheduler.schedule_after(self._delay, fire))

    def __repr__(self) -> str:
        return f"Flow.timer({self._delay})"
