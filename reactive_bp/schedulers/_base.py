"""The one small protocol every time- or thread-based operator uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Cancellable", "CancellableAction", "Scheduler", "check_delay"]

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
