"""``VirtualTimeScheduler``: time moves only when the test says so."""

from __future__ import annotations

import threading

from ._base import Action, Cancellable, check_delay
from ._timer import QueuedAction, TimerQueue, periodic

__all__ = ["VirtualTimeScheduler"]


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
        self._queue: TimerQueue[None] = TimerQueue(self._lock)

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
        """Repeat ``action`` every ``period`` virtual seconds."""
        return periodic(self, period, action, initial_delay)

    def _push(self, due: float, action: Action) -> QueuedAction:
        with self._lock:
            handle, _ = self._queue.push_locked(due, action, None)
        return handle

    def advance_to(self, time: float) -> None:
        """Run everything due up to ``time``, moving the clock to each due time."""
        if time < self._now:
            raise ValueError(f"cannot move virtual time back from {self._now} to {time}")
        while True:
            with self._lock:
                due = self._queue.first_due_locked()
                if due is None or due > time:
                    break
                handle, _ = self._queue.pop_locked()
                self._now = max(self._now, due)
            handle.run()  # outside the lock (see the _timer module docstring)
        self._now = time

    def advance_by(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, running what falls due."""
        self.advance_to(self._now + check_delay("seconds", seconds))

    def run_ready(self) -> None:
        """Run what is due now, without moving the clock."""
        self.advance_to(self._now)

    @property
    def pending(self) -> int:
        """How many actions wait to run (cancelled ones are not counted)."""
        return self._queue.live

    def __repr__(self) -> str:
        return f"VirtualTimeScheduler(now={self._now})"
