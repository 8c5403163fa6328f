"""``AsyncioScheduler``: actions run on an asyncio event loop."""

from __future__ import annotations

import asyncio

from ._base import Action, Cancellable, CancellableAction, check_delay
from ._timer import periodic

__all__ = ["AsyncioScheduler"]


class _LoopHandle:
    """Cancels both the action and, once known, the loop's timer handle."""

    __slots__ = ("_action", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, action: CancellableAction) -> None:
        self._loop = loop
        self._action = action
        self._handle: asyncio.Handle | None = None

    def cancel(self) -> None:
        self._action.cancel()
        handle = self._handle
        if handle is not None and not self._loop.is_closed():
            # TimerHandle.cancel is not thread-safe: do it on the loop.
            self._loop.call_soon_threadsafe(handle.cancel)


class AsyncioScheduler:
    """Schedules onto an event loop; safe to call from any thread.

    ``AsyncioScheduler()`` binds to the running loop (call it inside a
    coroutine); ``AsyncioScheduler(loop)`` binds to the given one.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = asyncio.get_running_loop() if loop is None else loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop actions run on."""
        return self._loop

    def now(self) -> float:
        """The loop's clock (``loop.time()``)."""
        return self._loop.time()

    def schedule(self, action: Action) -> Cancellable:
        """Run ``action`` on the loop soon (``call_soon_threadsafe``)."""
        handle = CancellableAction(action)
        self._loop.call_soon_threadsafe(handle.run)
        return handle

    def schedule_after(self, delay: float, action: Action) -> Cancellable:
        """Run ``action`` on the loop after ``delay`` seconds."""
        delay = check_delay("delay", delay)
        cancellable = CancellableAction(action)
        handle = _LoopHandle(self._loop, cancellable)

        def arm() -> None:
            if not cancellable.cancelled:
                handle._handle = self._loop.call_later(delay, cancellable.run)

        self._loop.call_soon_threadsafe(arm)
        return handle

    def schedule_periodic(
        self, period: float, action: Action, initial_delay: float | None = None
    ) -> Cancellable:
        """Run ``action`` on the loop every ``period`` seconds."""
        return periodic(self, period, action, initial_delay)

    def __repr__(self) -> str:
        return f"AsyncioScheduler({self._loop!r})"
