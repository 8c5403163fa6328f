"""``ImmediateScheduler`` and ``TrampolineScheduler``: run on the calling thread."""

from __future__ import annotations

import threading
import time
from collections import deque

from ._base import Action, Cancellable, CancellableAction, check_delay
from ._timer import call_later, periodic

__all__ = ["ImmediateScheduler", "TrampolineScheduler"]


def _run_now(action: Action) -> None:
    action()


class ImmediateScheduler:
    """Runs ``schedule``d actions at once, on the caller's thread.

    Delayed and periodic actions run on reactive_bp's shared timer thread.
    """

    __slots__ = ()

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def schedule(self, action: Action) -> Cancellable:
        """Run ``action`` now; the returned handle is already spent."""
        handle = CancellableAction(action)
        handle.run()
        return handle

    def schedule_after(self, delay: float, action: Action) -> Cancellable:
        """Run ``action`` on the timer thread after ``delay`` seconds."""
        return call_later(check_delay("delay", delay), action, _run_now)

    def schedule_periodic(
        self, period: float, action: Action, initial_delay: float | None = None
    ) -> Cancellable:
        """Run ``action`` every ``period`` seconds on the timer thread."""
        return periodic(self, period, action, initial_delay)

    def __repr__(self) -> str:
        return "ImmediateScheduler()"


class _TrampolineState(threading.local):
    def __init__(self) -> None:
        self.queue: deque[CancellableAction] | None = None


class TrampolineScheduler(ImmediateScheduler):
    """Runs actions on the caller's thread, queued behind the one already running.

    An action scheduled from inside another runs after it returns, never
    nested: recursion depth stays constant however many actions schedule more.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _TrampolineState()

    def schedule(self, action: Action) -> Cancellable:
        """Run ``action`` now, or after the running action if there is one."""
        handle = CancellableAction(action)
        state = self._state
        if state.queue is not None:
            state.queue.append(handle)
            return handle
        queue: deque[CancellableAction] = deque([handle])
        state.queue = queue
        try:
            while queue:
                queue.popleft().run()
        finally:
            state.queue = None
        return handle

    def __repr__(self) -> str:
        return "TrampolineScheduler()"
