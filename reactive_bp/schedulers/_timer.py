"""A timer thread shared by the real-time schedulers, and the periodic helper.

The thread starts when the first delayed action is scheduled and exits as soon
as nothing is pending, so an idle program (or a test) has no extra thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from .._core._hooks import report_undeliverable
from ._base import Action, Cancellable, CancellableAction, Scheduler, check_delay

__all__ = ["Periodic", "call_later", "periodic"]


class _TimerThread:
    __slots__ = ("_cond", "_heap", "_sequence", "_thread")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # Guarded by _cond: (deadline, sequence, action, runner).
        self._heap: list[tuple[float, int, CancellableAction, Callable[[Action], object]]] = []
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None  # guarded by _cond

    def call_later(
        self, delay: float, action: Action, runner: Callable[[Action], object]
    ) -> CancellableAction:
        handle = CancellableAction(action)
        deadline = time.monotonic() + delay
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._sequence), handle, runner))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="reactive_bp-timer", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()
        return handle

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    # Drop cancelled entries so they do not keep the thread alive.
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._thread = None
                        return
                    deadline = self._heap[0][0]
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        _, _, handle, runner = heapq.heappop(self._heap)
                        break
                    self._cond.wait(min(wait, 0.05))
            try:
                runner(handle.run)
            except Exception as error:  # e.g. a pool that was shut down meanwhile
                report_undeliverable(error, f"timer runner {runner!r}")


_TIMER = _TimerThread()


def call_later(
    delay: float, action: Action, runner: Callable[[Action], object]
) -> CancellableAction:
    """Run ``runner(action)`` on the timer thread after ``delay`` seconds."""
    return _TIMER.call_later(delay, action, runner)


class Periodic:
    """Fixed-rate repetition on top of any scheduler's ``schedule_after``."""

    __slots__ = ("_action", "_cancelled", "_current", "_lock", "_next", "_period", "_scheduler")

    def __init__(
        self, scheduler: Scheduler, period: float, action: Action, initial_delay: float
    ) -> None:
        self._scheduler = scheduler
        self._period = period
        self._action = CancellableAction(action)
        self._lock = threading.Lock()
        self._cancelled = False  # guarded by _lock
        self._current: Cancellable | None = None  # guarded by _lock
        self._next = scheduler.now() + initial_delay
        self._schedule_next()

    def _schedule_next(self) -> None:
        delay = max(0.0, self._next - self._scheduler.now())
        handle = self._scheduler.schedule_after(delay, self._tick)
        with self._lock:
            if not self._cancelled:
                self._current = handle
                return
        handle.cancel()

    def _tick(self) -> None:
        if self._cancelled:
            return
        self._next += self._period
        self._action.run()
        if not self._cancelled:
            self._schedule_next()

    def cancel(self) -> None:
        """Stop repeating; idempotent."""
        with self._lock:
            self._cancelled = True
            current, self._current = self._current, None
        self._action.cancel()
        if current is not None:
            current.cancel()


def periodic(
    scheduler: Scheduler, period: float, action: Action, initial_delay: float | None
) -> Periodic:
    """Validate the arguments of ``schedule_periodic`` and start the repetition."""
    period = check_delay("period", period, positive=True)
    first = period if initial_delay is None else check_delay("initial_delay", initial_delay)
    return Periodic(scheduler, period, action, first)
