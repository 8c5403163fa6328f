"""The one small protocol every time- or thread-based operator uses.

Also the two small action objects the schedulers understand:
``CancellableAction`` (the handle every ``schedule*`` returns) and
``RejectableAction`` (an action whose owner hears it if a scheduler that shut
down drops it unrun, so the owner's stream fails instead of waiting forever).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = [
    "Cancellable",
    "CancellableAction",
    "Rejectable",
    "RejectableAction",
    "Scheduler",
    "check_delay",
]

Action = Callable[[], object]


@runtime_checkable
class Cancellable(Protocol):
    """A scheduled action that can still be called off."""

    def cancel(self) -> None:
        """Stop the action from running (again); idempotent."""


@runtime_checkable
class Scheduler(Protocol):
    """Run an action now, later, or periodically, cancellably.

    ``now()`` is the scheduler's clock in seconds (monotonic, or virtual).
    An action that raises is reported to the undeliverable hook; the
    scheduler keeps running.
    """

    def now(self) -> float:
        """The current time on this scheduler's clock, in seconds."""

    def schedule(self, action: Action) -> Cancellable:
        """Run ``action`` as soon as possible."""

    def schedule_after(self, delay: float, action: Action) -> Cancellable:
        """Run ``action`` once, ``delay`` seconds from now."""

    def schedule_periodic(
        self, period: float, action: Action, initial_delay: float | None = None
    ) -> Cancellable:
        """Run ``action`` every ``period`` seconds (first after ``initial_delay``,
        default ``period``), at a fixed rate: late runs do not shift later ones."""


@runtime_checkable
class Rejectable(Protocol):
    """An action that wants to know if its scheduler drops it without running it.

    ``ThreadPoolScheduler`` calls ``on_rejected`` with a
    ``RejectedExecutionError`` naming the pool when an action it accepted
    will never run (it was still queued at ``shutdown``, or it was a delayed
    action that came due after it). A plain callable in that situation can
    only be reported to the undeliverable hook, and the stream waiting for it
    would wait forever.
    """

    def __call__(self) -> object:
        """Run the action."""

    def on_rejected(self, error: Exception) -> None:
        """The scheduler will never run this action; ``error`` says which and why."""


class RejectableAction:
    """A scheduled action plus what to do if the scheduler drops it (``on_rejected``).

    Every operator whose stream waits for a scheduled action (a drain pass, a
    timer, a blocking call, a re-subscription) schedules one of these, and
    ends its stream with the error in ``on_rejected``: a lost action must
    never leave a subscriber waiting forever.

    Example:
        >>> failures = []
        >>> action = RejectableAction(lambda: print("ran"), failures.append)
        >>> action()
        ran
        >>> action.on_rejected(RuntimeError("pool shut down"))  # what a dropping pool calls
        >>> failures
        [RuntimeError('pool shut down')]
    """

    __slots__ = ("_on_rejected", "_run")

    def __init__(self, run: Action, on_rejected: Callable[[Exception], object]) -> None:
        self._run = run
        self._on_rejected = on_rejected

    def __call__(self) -> None:
        """Run the action."""
        self._run()

    def on_rejected(self, error: Exception) -> None:
        """The scheduler will never run this action (it shut down)."""
        self._on_rejected(error)

    @property
    def run_action(self) -> Action:
        """What running this action calls (a scheduler that never drops actions may call it)."""
        return self._run

    def __repr__(self) -> str:
        return f"<rejectable {self._run!r}>"


def check_delay(name: str, seconds: float, *, positive: bool = False) -> float:
    """Validate a delay or period argument; return it as a float."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {seconds!r}")
    if seconds != seconds or seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {seconds!r}")
    return float(seconds)


def _cancelled_action() -> None:
    """What a cancelled handle holds instead of its action."""


class CancellableAction:
    """An action with a cancelled flag; running it after ``cancel`` does nothing.

    ``cancel`` also drops the action: a cancelled timer that still waits in a
    scheduler's queue must not keep its operator, and through it the
    subscriber, reachable (Rule 3.13).
    """

    __slots__ = ("_action", "_cancelled", "_on_cancel")

    def __init__(self, action: Action, on_cancel: Callable[[], object] | None = None) -> None:
        # Invariant: _action is _cancelled_action once _cancelled is set. Both
        # are written without a lock: a run racing a cancel either runs the
        # action or does nothing, as it would without the drop.
        self._action = action
        self._cancelled = False
        self._on_cancel = on_cancel

    def run(self) -> None:
        """Run the action unless cancelled; report what it raises."""
        if self._cancelled:
            return
        action = self._action
        try:
            action()
        except Exception as error:
            from .._core._hooks import report_undeliverable

            report_undeliverable(error, f"scheduled action {action!r}")

    def cancel(self) -> None:
        """Mark cancelled, drop the action and run the cancel callback once."""
        if self._cancelled:
            return
        self._cancelled = True
        self._action = _cancelled_action
        on_cancel, self._on_cancel = self._on_cancel, None
        if on_cancel is not None:
            on_cancel()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self._cancelled
