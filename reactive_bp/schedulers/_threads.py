"""``ThreadPoolScheduler``: actions run on a bounded pool of worker threads.

What happens to work when the pool shuts down (nothing is lost silently):

* ``schedule`` on a pool that is shut down raises ``RejectedExecutionError``
  naming the pool; the caller still holds the work and decides
  (``publish_on`` fails its stream).
* An action that was accepted but will never run -- it was still queued
  when ``shutdown(cancel_futures=True)`` dropped the queue, or it was a
  delayed action that came due after the shutdown -- is *rejected*: if it is
  ``Rejectable`` (has an ``on_rejected(error)`` method; operators schedule a
  ``RejectableAction``), that is called with a ``RejectedExecutionError``
  naming the pool, so its owner can end its stream with ``on_error`` instead
  of waiting forever; otherwise the error goes to the undeliverable hook. A
  cancelled action is dropped without a word.
* ``on_rejected`` runs on the thread that called ``shutdown`` (or on the timer
  thread, for a delayed action), after the pool stopped taking work, never
  while a lock of the pool or of its executor is held.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from types import TracebackType

from .._core._hooks import report_undeliverable
from ._base import Action, Cancellable, CancellableAction, Rejectable, check_delay
from ._timer import call_later, periodic

__all__ = ["RejectedExecutionError", "ThreadPoolScheduler"]


class RejectedExecutionError(RuntimeError):
    """A scheduler refused an action, or dropped one it had accepted, because it shut down.

    The message names the scheduler. Operators that hop threads
    (``publish_on``, ``subscribe_on``, ``map_async``) and the time operators
    and sources (``delay``, ``timeout``, ``retry`` with a backoff, ``interval``,
    ``timer``) end their stream with it.
    """


def _reject(action: Action, error: RejectedExecutionError) -> None:
    """Tell ``action``'s owner it will never run: ``action.on_rejected(error)``, or the hook.

    Nothing raised here reaches the caller: a failing ``on_rejected`` is reported.
    """
    if not isinstance(action, Rejectable):
        report_undeliverable(error, f"dropped action {action!r}")
        return
    try:
        action.on_rejected(error)
    except Exception as fault:
        fault.__context__ = error
        report_undeliverable(fault, f"{action!r}.on_rejected")


def _cancelled(run: Action) -> bool:
    """Whether ``run`` is the ``run`` of a ``CancellableAction`` that was cancelled."""
    handle = getattr(run, "__self__", None)
    return isinstance(handle, CancellableAction) and handle.cancelled


class ThreadPoolScheduler:
    """Runs actions on up to ``max_workers`` threads.

    Delayed actions wait on the shared timer thread, then go to the pool.
    Use it as a context manager, or call ``shutdown()``, so its threads end.
    Work that never runs because of the shutdown is rejected (see the module
    docstring): never dropped without a word.
    """

    __slots__ = ("_dropped", "_executor", "_lock", "_max_workers", "_name", "_shutdown")

    def __init__(self, max_workers: int = 4, thread_name_prefix: str = "reactive_bp") -> None:
        if type(max_workers) is not int or max_workers <= 0:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
        self._max_workers = max_workers
        self._name = thread_name_prefix
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        # Guarded by _lock; set once. Invariant: once set, nothing more is
        # submitted to _executor.
        self._shutdown = False
        # (action, run) of the futures the executor cancelled at shutdown,
        # waiting to be rejected by the thread that called shutdown (deque:
        # appended by the executor's cancel callbacks, popped by shutdown;
        # both atomic).
        self._dropped: deque[tuple[Action, Action]] = deque()

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def schedule(self, action: Action) -> Cancellable:
        """Run ``action`` on a worker thread as soon as one is free.

        Raises:
            RejectedExecutionError: the pool is shut down.
        """
        handle = CancellableAction(action)
        self._submit(action, handle.run)
        return handle

    def schedule_after(self, delay: float, action: Action) -> Cancellable:
        """Run ``action`` on a worker thread after ``delay`` seconds.

        If the pool is shut down when the action comes due, the action is
        rejected then (``on_rejected`` or the hook); this call never raises
        for it, so an operator arming a timer from ``request`` stays within
        Rule 3.16.
        """
        return call_later(check_delay("delay", delay), action, partial(self._submit_due, action))

    def schedule_periodic(
        self, period: float, action: Action, initial_delay: float | None = None
    ) -> Cancellable:
        """Run ``action`` every ``period`` seconds on a worker thread."""
        return periodic(self, period, action, initial_delay)

    def _submit(self, action: Action, run: Action) -> None:
        """Queue ``run`` (which runs ``action``); raise if shut down."""
        with self._lock:
            if self._shutdown:
                raise RejectedExecutionError(f"{self!r} is shut down")
            try:
                future = self._executor.submit(run)
            except RuntimeError as error:  # the interpreter is shutting down
                raise RejectedExecutionError(f"{self!r}: {error}") from error
            # Registered under _lock, so before shutdown can cancel the future:
            # a cancelled future always lands in _dropped before shutdown
            # drains it. Called at once if the future is already done,
            # otherwise on the worker after run (or by the cancelling shutdown).
            future.add_done_callback(partial(self._settled, action, run))

    def _submit_due(self, action: Action, run: Action) -> None:
        """The timer's runner: a delayed action came due; reject it if the pool is gone."""
        try:
            self._submit(action, run)
        except RejectedExecutionError as error:
            if not _cancelled(run):
                _reject(action, error)

    def _settled(self, action: Action, run: Action, future: Future[object]) -> None:
        if future.cancelled() and not _cancelled(run):
            self._dropped.append((action, run))  # rejected by shutdown, outside the executor's lock

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = True) -> None:
        """Refuse new actions and let the worker threads end.

        Args:
            wait: block until the running actions finished and the threads ended.
            cancel_futures: drop the actions still queued (each is rejected:
                ``on_rejected`` or the hook) instead of running them first.
        """
        with self._lock:
            self._shutdown = True
        self._executor.shutdown(wait=False, cancel_futures=cancel_futures)
        dropped = self._dropped
        while dropped:  # one error each: streams must not share (and re-raise) one instance
            action, run = dropped.popleft()
            # Checked again here: rejecting one action may end a stream that
            # cancels its other queued actions (map_async's calls, say).
            if not _cancelled(run):
                _reject(action, RejectedExecutionError(f"{self!r} shut down before the action ran"))
        if wait:
            self._executor.shutdown(wait=True)

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
        return f"ThreadPoolScheduler(max_workers={self._max_workers}, name={self._name!r})"
