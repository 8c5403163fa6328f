"""``VirtualTimeScheduler``: time moves only when the test says so."""

from __future__ import annotations

import heapq
import math
import threading

from ._base import Action, Cancellable, RejectableAction, check_delay
from ._timer import QueuedAction, TimerQueue

__all__ = ["VirtualTimeScheduler"]


class _VirtualQueue(TimerQueue[None]):
    """The virtual clock's heap, which can also put a popped periodic handle back."""

    __slots__ = ()

    def requeue_locked(self, due: float, handle: QueuedAction) -> None:
        """Queue ``handle`` (popped and run, not cancelled) again at ``due``."""
        handle.queued = True
        heapq.heappush(self._heap, (due, next(self._sequence), handle, None))

    def pop_due_locked(self, time: float) -> tuple[float, int, QueuedAction, None] | None:
        """Take the first live entry due by ``time`` (cancelled ones on top are dropped)."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[2]._cancelled:
                self._pop_locked()  # counts it out (see TimerQueue.forget)
                continue
            if entry[0] > time:
                return None
            return self._pop_locked()
        return None


class _VirtualPeriodic(QueuedAction):
    """One handle for every run of a fixed-rate repetition in virtual time.

    Each run puts the same handle back into the heap (``_requeue``): no new
    handle, no ``schedule_after`` and no delay validation per tick, which was
    most of a tick's cost for ``sample`` at saturation. ``cancel`` is
    ``QueuedAction``'s: it drops the action (Rule 3.13) and the queue counts
    the entry if it is queued; a handle cancelled while its action runs is
    not queued again (``_requeue`` checks under the scheduler's lock, after
    ``cancel`` set the flag, or ``forget`` counts the re-queued entry).
    """

    __slots__ = ("_next", "_period", "_scheduler")

    def __init__(
        self, action: Action, scheduler: VirtualTimeScheduler, first: float, period: float
    ) -> None:
        super().__init__(action, scheduler._queue)
        self._scheduler = scheduler
        self._period = period
        # Runner only (runs are serial: one handle, popped before it runs):
        # when the next run is due; fixed rate, late runs do not shift it.
        self._next = first

    def run(self) -> None:
        """Run the action, then queue the next run unless cancelled meanwhile."""
        if self._cancelled:
            return
        self._next += self._period
        super().run()  # reports what the action raises
        self._scheduler._requeue(self)


class VirtualTimeScheduler:
    """A deterministic clock for tests.

    Nothing runs until ``advance_by``/``advance_to``/``run_ready`` is called;
    then every action due by the new time runs, in time order, and actions
    due at the same time run in the order they were scheduled.

    Example:
        >>> vts = VirtualTimeScheduler()
        >>> seen = []
        >>> _ = vts.schedule_periodic(1.0, lambda: seen.append(vts.now()))
        >>> vts.advance_by(3.5)
        >>> seen
        [1.0, 2.0, 3.0]
    """

    __slots__ = ("_lock", "_now", "_queue")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        # Reentrant: an action may schedule or cancel while the clock advances.
        self._lock = threading.RLock()
        # Guarded by _lock: what is due, and when. Cancelled entries are purged
        # once they outnumber the live ones, so a test that cancels millions of
        # timers (a timeout per item) keeps a small heap.
        self._queue = _VirtualQueue(self._lock)

    def now(self) -> float:
        """The virtual time, in seconds."""
        return self._now

    def schedule(self, action: Action) -> Cancellable:
        """Queue ``action`` at the current virtual time (runs on the next advance)."""
        return self._push(self._now, action)

    def schedule_after(self, delay: float, action: Action) -> Cancellable:
        """Queue ``action`` at ``now() + delay``."""
        return self._push(self._now + check_delay("delay", delay), action)

    def schedule_periodic(
        self, period: float, action: Action, initial_delay: float | None = None
    ) -> Cancellable:
        """Repeat ``action`` every ``period`` virtual seconds (fixed rate)."""
        period = check_delay("period", period, positive=True)
        first = period if initial_delay is None else check_delay("initial_delay", initial_delay)
        if type(action) is RejectableAction:
            # Virtual time never drops an action: its on_rejected cannot be
            # called, so the handle runs what it wraps, one call less per tick.
            action = action.run_action
        with self._lock:
            handle = _VirtualPeriodic(action, self, self._now + first, period)
            self._queue.requeue_locked(handle._next, handle)
        return handle

    def _requeue(self, handle: _VirtualPeriodic) -> None:
        with self._lock:
            if handle._cancelled:
                return  # cancelled while it ran: nothing is queued, nothing to count
            # As a re-arm after a late run would: never before the clock.
            self._queue.requeue_locked(max(handle._next, self._now), handle)

    def _push(self, due: float, action: Action) -> QueuedAction:
        with self._lock:
            handle, _ = self._queue.push_locked(due, action, None)
        return handle

    def advance_to(self, time: float) -> None:
        """Run everything due up to ``time``, moving the clock to each due time.

        ``time`` must be finite (NaN would run everything, infinity never end with a
        periodic action). An action that advances the clock past ``time`` itself
        leaves it there: the clock never moves back.
        """
        if not math.isfinite(time):
            raise ValueError(f"virtual time must be finite, got {time!r}")
        if time < self._now:
            raise ValueError(f"cannot move virtual time back from {self._now} to {time}")
        lock = self._lock
        queue = self._queue
        while True:
            lock.acquire()
            try:
                entry = queue.pop_due_locked(time)
                if entry is None:
                    break
                due = entry[0]
                if due > self._now:
                    self._now = due
            finally:
                lock.release()
            entry[2].run()  # outside the lock (see the _timer module docstring)
        lock.acquire()
        try:
            if time > self._now:  # an action may have advanced it further: never back
                self._now = time
        finally:
            lock.release()

    def advance_by(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, running what falls due."""
        if type(seconds) is not float or not seconds >= 0:  # NaN fails ``>=`` too
            seconds = check_delay("seconds", seconds)
        self.advance_to(self._now + seconds)

    def run_ready(self) -> None:
        """Run what is due now, without moving the clock."""
        self.advance_to(self._now)

    @property
    def pending(self) -> int:
        """How many actions wait to run (cancelled ones are not counted)."""
        return self._queue.live

    def __repr__(self) -> str:
        return f"VirtualTimeScheduler(now={self._now})"
