"""Timer queues, the timer thread shared by the real-time schedulers, and the periodic helper.

``TimerQueue`` is the heap of due times behind both the shared timer thread
and ``VirtualTimeScheduler``. How it stays correct and small:

* Every field is guarded by the owner's lock (the timer thread's condition,
  the virtual scheduler's lock); the queue takes that lock itself only when a
  handle is cancelled, from whatever thread cancels it. No action runs and
  no other lock of reactive_bp is taken while it is held, so a cancel made
  under an operator's lock cannot deadlock against the runner.
* A cancelled entry cannot be taken out of the middle of a heap cheaply, so
  ``cancel`` only counts it. Once the cancelled entries are at least
  ``_PURGE_MIN`` and outnumber the live ones, the heap is rebuilt without
  them: each rebuild costs at most twice the cancels that triggered it, so a
  cancel is amortized O(1), and the heap never holds more than twice its live
  entries plus ``_PURGE_MIN``. Without this, ``timeout(30)`` over 200,000 items left
  200,000 dead entries (about 100 MiB) behind any earlier pending timer.
* A cancelled handle drops its action at once (``CancellableAction.cancel``),
  so a dead entry, while it waits for the purge, keeps no operator reachable.

The timer thread starts when the first delayed action is scheduled and exits
as soon as nothing live is pending, so an idle program (or a test) has no
extra thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, Protocol, TypeVar

from .._core._hooks import report_undeliverable
from ._base import (
    Action,
    Cancellable,
    CancellableAction,
    Rejectable,
    RejectableAction,
    Scheduler,
    check_delay,
)

__all__ = ["Periodic", "QueuedAction", "TimerQueue", "call_later", "periodic"]

P = TypeVar("P")
Runner = Callable[[Action], object]

# Fewer cancelled entries than this are never worth a rebuild.
_PURGE_MIN = 64


class _Forgetter(Protocol):
    def forget(self, handle: QueuedAction) -> None: ...


class QueuedAction(CancellableAction):
    """The handle of a ``TimerQueue`` entry: cancelling it tells the queue."""

    __slots__ = ("_queue", "queued")

    def __init__(self, action: Action, queue: _Forgetter) -> None:
        super().__init__(action)
        self._queue = queue
        # Invariant (guarded by the queue owner's lock): True while the entry
        # is in the heap and not yet counted in TimerQueue._cancelled.
        self.queued = True

    def cancel(self) -> None:
        """Cancel the action and let the queue count (and maybe purge) its entry."""
        if self._cancelled:
            return
        super().cancel()
        # Idempotent under the queue's lock: two racing cancels count once.
        self._queue.forget(self)


class TimerQueue(Generic[P]):
    """A min-heap of ``(due, sequence, handle, payload)`` that purges cancelled entries.

    Entries due at the same time come out in the order they were pushed.
    Methods named ``*_locked`` must be called with the owner's lock held.
    """

    __slots__ = ("_cancelled", "_heap", "_lock", "_sequence")

    def __init__(self, lock: AbstractContextManager[object]) -> None:
        self._lock = lock
        # Guarded by _lock.
        self._heap: list[tuple[float, int, QueuedAction, P]] = []
        # Guarded by _lock. Invariant: the number of heap entries whose handle
        # is not ``queued`` (cancelled and counted, waiting for the purge).
        self._cancelled = 0
        self._sequence = itertools.count()  # guarded by _lock: FIFO for equal due times

    def push_locked(self, due: float, action: Action, payload: P) -> tuple[QueuedAction, bool]:
        """Queue ``action`` at ``due``; return its handle and whether it is now the first."""
        handle = QueuedAction(action, self)
        heapq.heappush(self._heap, (due, next(self._sequence), handle, payload))
        return handle, self._heap[0][2] is handle

    def first_due_locked(self) -> float | None:
        """The earliest due time of a live entry, or ``None`` when none is left.

        Cancelled entries at the top are dropped on the way, so a queue whose
        live entries are all gone reads as empty (the timer thread exits).
        """
        heap = self._heap
        while heap and heap[0][2].cancelled:
            self._pop_locked()
        return heap[0][0] if heap else None

    def pop_locked(self) -> tuple[QueuedAction, P]:
        """Take the first entry (call ``first_due_locked`` first)."""
        _, _, handle, payload = self._pop_locked()
        return handle, payload

    def _pop_locked(self) -> tuple[float, int, QueuedAction, P]:
        entry = heapq.heappop(self._heap)
        handle = entry[2]
        if handle.queued:
            handle.queued = False  # a cancel from now on is not counted
        else:
            self._cancelled -= 1
        return entry

    def forget(self, handle: QueuedAction) -> None:
        """Count a cancelled entry; rebuild the heap once the dead outnumber the live."""
        with self._lock:
            if not handle.queued:
                return  # already taken out, or already counted
            handle.queued = False
            self._cancelled += 1
            cancelled = self._cancelled
            heap = self._heap
            if cancelled >= _PURGE_MIN and 2 * cancelled > len(heap):
                heap[:] = [entry for entry in heap if entry[2].queued]
                heapq.heapify(heap)
                self._cancelled = 0

    @property
    def live(self) -> int:
        """How many entries are not cancelled."""
        with self._lock:
            return len(self._heap) - self._cancelled

    def __len__(self) -> int:
        """How many entries the heap holds, cancelled ones not yet purged included."""
        with self._lock:
            return len(self._heap)


class _TimerThread:
    __slots__ = ("_cond", "_queue", "_thread")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # Guarded by _cond: each entry's payload is the runner that gets its action.
        self._queue: TimerQueue[Runner] = TimerQueue(self._cond)
        # Guarded by _cond. Invariant: not None while the loop may still run
        # an entry; the loop sets it to None as it exits, under _cond.
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, action: Action, runner: Runner) -> CancellableAction:
        deadline = time.monotonic() + delay
        with self._cond:
            handle, first = self._queue.push_locked(deadline, action, runner)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="reactive_bp-timer", daemon=True
                )
                self._thread.start()
            elif first:
                self._cond.notify()  # the loop waits for a later deadline
        return handle

    def _loop(self) -> None:
        cond = self._cond
        queue = self._queue
        while True:
            with cond:
                while True:
                    deadline = queue.first_due_locked()
                    if deadline is None:
                        self._thread = None
                        return
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        handle, runner = queue.pop_locked()
                        break
                    # Cancels do not notify: waking every 50 ms lets the
                    # thread find a cancelled first entry and exit when idle.
                    cond.wait(min(wait, 0.05))
            try:
                runner(handle.run)
            except Exception as error:  # e.g. a pool that was shut down meanwhile
                report_undeliverable(error, f"timer runner {runner!r}")


_TIMER = _TimerThread()


def call_later(delay: float, action: Action, runner: Runner) -> CancellableAction:
    """Run ``runner(action)`` on the timer thread after ``delay`` seconds."""
    return _TIMER.call_later(delay, action, runner)


class Periodic:
    """Fixed-rate repetition on top of any scheduler's ``schedule_after``.

    Each tick is scheduled as a ``RejectableAction``: if the scheduler drops
    a tick (a pool that shut down), the repetition ends and the rejection is
    passed on to ``action.on_rejected`` when ``action`` is ``Rejectable``
    (``interval`` fails its stream), else to the undeliverable hook.
    """

    __slots__ = (
        "_action",
        "_cancelled",
        "_current",
        "_lock",
        "_next",
        "_period",
        "_rejectable",
        "_scheduler",
        "_tick_action",
    )

    def __init__(
        self, scheduler: Scheduler, period: float, action: Action, initial_delay: float
    ) -> None:
        self._scheduler = scheduler
        self._period = period
        self._action = CancellableAction(action)
        # Invariant: the owner to tell about a dropped tick; None once
        # cancelled (dropped with the action, Rule 3.13) or when it cannot hear.
        self._rejectable: Rejectable | None = action if isinstance(action, Rejectable) else None
        self._tick_action = RejectableAction(self._tick, self._rejected)
        self._lock = threading.Lock()
        self._cancelled = False  # guarded by _lock
        self._current: Cancellable | None = None  # guarded by _lock
        self._next = scheduler.now() + initial_delay
        self._schedule_next()

    def _schedule_next(self) -> None:
        delay = max(0.0, self._next - self._scheduler.now())
        handle = self._scheduler.schedule_after(delay, self._tick_action)
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

    def _rejected(self, error: Exception) -> None:
        """The scheduler dropped a tick: the repetition is over; tell the action's owner."""
        if self._cancelled:
            return  # nobody is waiting for the tick any more
        rejectable = self._rejectable
        self.cancel()
        if rejectable is None:
            report_undeliverable(error, f"dropped periodic tick on {self._scheduler!r}")
        else:
            rejectable.on_rejected(error)

    def cancel(self) -> None:
        """Stop repeating; idempotent."""
        with self._lock:
            self._cancelled = True
            current, self._current = self._current, None
        self._rejectable = None
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
