"""``ThreadPoolScheduler``: actions run on a bounded pool of worker threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from ._base import Action, Cancellable, CancellableAction, check_delay
from ._timer import call_later, periodic

__all__ = ["ThreadPoolScheduler"]


class ThreadPoolScheduler:
    """Runs actions on up to ``max_workers`` threads.

    Delayed actions wait on the shared timer thread, then go to the pool.
    Use it as a context manager, or call ``shutdown()``, so its threads end.
    """

    __slots__ = ("_executor", "_lock", "_max_workers", "_shutdown")

    def __init__(self, max_workers: int = 4, thread_name_prefix: str = "reactive_bp") -> None:
        if type(max_workers) is not int or max_workers <= 0:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
        self._max_workers = max_workers
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self._shutdown = False

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def schedule(self, action: Action) -> Cancellable:
        """Run ``action`` on a worker thread as soon as one is free."""
        handle = CancellableAction(action)
        self._submit(handle.run)
        return handle

    def schedule_after(self, delay: float, action: Action) -> Cancellable:
        """Run ``action`` on a worker thread after ``delay`` seconds."""
        return call_later(check_delay("delay", delay), action, self._submit)

    def schedule_periodic(
        self, period: float, action: Action, initial_delay: float | None = None
    ) -> Cancellable:
        """Run ``action`` every ``period`` seconds on a worker thread."""
        return periodic(self, period, action, initial_delay)

    def _submit(self, run: Action) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self!r} is shut down")
            self._executor.submit(run)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new actions and let the worker threads end."""
        with self._lock:
            self._shutdown = True
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> ThreadPoolScheduler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"ThreadPoolScheduler(max_workers={self._max_workers})"
