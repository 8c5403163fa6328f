"""``map_async``: a work-in-progress limiter for coroutine and blocking functions.

At most ``max_concurrency`` calls run at once, and no more than that many
items are ever between upstream and downstream (requested, running, or
finished and waiting for downstream demand), so a slow consumer bounds the
work and the memory of a fast producer.

Where calls run:

* ``async def`` functions: as tasks on an asyncio loop: the loop of an
  ``AsyncioScheduler`` passed as ``scheduler``, else the loop running when
  the flow is subscribed (no running loop: the subscriber gets ``on_error``).
* plain (blocking) functions: through ``scheduler.schedule`` when a
  scheduler is given (a ``ThreadPoolScheduler`` runs them in parallel, a
  ``VirtualTimeScheduler`` when the test says so), else on a private pool of
  ``max_concurrency`` threads owned by the subscription and shut down when
  it terminates or is cancelled.

A call the scheduler never runs fails like a call that raised: a
``schedule`` that raises fails the stream at once, and a call the scheduler
accepted and then dropped (a ``ThreadPoolScheduler`` shut down while it was
queued) is reported back through ``RejectableAction.on_rejected`` as that
call's error (``RejectedExecutionError``, naming the pool), so the stream
ends with ``on_error`` instead of waiting forever for its result.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from typing_extensions import override

from .._core._arbiter import cancel_quietly, refuse_second_subscription
from .._core._demand import add_cap, produced
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, EmptySubscription
from .._core._queue_drain import QueueDrain
from .._core._signals import signal_error
from .._flow import Flow
from ..schedulers import AsyncioScheduler, RejectedExecutionError
from ..schedulers._base import RejectableAction
from ..sources._iterable import NoneItemError

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription
    from ..schedulers import Cancellable, Scheduler

__all__ = ["map_async"]

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)


class _Slot(Generic[R]):
    """One call: its result once ``done`` (guarded by the owner's ``_lock``)."""

    __slots__ = ("done", "handle", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: R | None = None
        self.handle: Cancellable | None = None


Completion = Callable[["_Slot[R]", "R | None", "Exception | None"], None]


class _Runner(Protocol[T_contra, R]):
    """Starts one call of ``fn``; reports through ``on_done``; can be closed."""

    def submit(self, item: T_contra, slot: _Slot[R], on_done: Completion[R]) -> Cancellable | None:
        """Start ``fn(item)``; return a handle that can cancel it (``None``: already done)."""

    def close(self) -> None:
        """Release the runner's resources (idempotent, any thread)."""


def _check_result(fn: object, item: object, value: object) -> None:
    if value is None:
        raise NoneItemError(f"map_async: {fn!r} returned None for {item!r}; None is not an item")
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise TypeError(
            f"map_async: {fn!r} returned an awaitable for {item!r}; "
            "pass an `async def` function to run it on the event loop"
        )


def _call(fn: Callable[[T], R], item: T, slot: _Slot[R], on_done: Completion[R]) -> None:
    """Run a blocking call and report its outcome (on whatever thread runs it)."""
    try:
        value = fn(item)
        _check_result(fn, item, value)
    except Exception as error:
        on_done(slot, None, error)
        return
    on_done(slot, value, None)


class _SchedulerRunner(Generic[T, R]):
    """Blocking calls as ``scheduler.schedule`` actions (a pool, virtual time, ...).

    Each call is a ``RejectableAction``: if the scheduler drops it unrun, the
    call finishes with the rejection as its error (``on_done``).
    """

    __slots__ = ("_fn", "_scheduler")

    def __init__(self, fn: Callable[[T], R], scheduler: Scheduler) -> None:
        self._fn = fn
        self._scheduler = scheduler

    def submit(self, item: T, slot: _Slot[R], on_done: Completion[R]) -> Cancellable | None:
        fn = self._fn

        def rejected(error: Exception) -> None:
            on_done(slot, None, error)

        return self._scheduler.schedule(
            RejectableAction(partial(_call, fn, item, slot, on_done), rejected)
        )

    def close(self) -> None:
        pass  # the scheduler belongs to the caller


class _FutureHandle:
    __slots__ = ("_future",)

    def __init__(self, future: Future[None]) -> None:
        self._future = future

    def cancel(self) -> None:
        self._future.cancel()  # a call already running finishes; its result is dropped


class _PoolRunner(Generic[T, R]):
    """Blocking calls on a private pool, created at the first call and shut down on close."""

    __slots__ = ("_closed", "_executor", "_fn", "_lock", "_workers")

    def __init__(self, fn: Callable[[T], R], workers: int) -> None:
        self._fn = fn
        self._workers = workers
        self._lock = threading.Lock()
        # Guarded by _lock.
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, item: T, slot: _Slot[R], on_done: Completion[R]) -> Cancellable | None:
        with self._lock:
            if self._closed:
                return None
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._workers, thread_name_prefix="reactive_bp-map_async"
                )
            future = self._executor.submit(_call, self._fn, item, slot, on_done)
        return _FutureHandle(future)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            # Never wait: close may run on one of the pool's own threads.
            executor.shutdown(wait=False, cancel_futures=True)


class _TaskHandle:
    """Cancels a task that may not exist yet, from any thread."""

    __slots__ = ("_cancelled", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Set on the loop thread: the call's task, or the future it is waiting on.
        self._task: asyncio.Future[Any] | None = None
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        if self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._cancel_task()
        else:
            self._loop.call_soon_threadsafe(self._cancel_task)

    def _cancel_task(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()


class _CoroutineRunner(Generic[T, R]):
    """``async def`` calls as tasks on one event loop."""

    __slots__ = ("_fn", "_loop")

    def __init__(self, fn: Callable[[T], Awaitable[R]], loop: asyncio.AbstractEventLoop) -> None:
        self._fn = fn
        self._loop = loop

    def submit(self, item: T, slot: _Slot[R], on_done: Completion[R]) -> Cancellable | None:
        handle = _TaskHandle(self._loop)

        def start() -> None:
            if not handle._cancelled:
                handle._task = self._loop.create_task(self._run(item, slot, on_done))

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            start()
        else:
            self._loop.call_soon_threadsafe(start)
        return handle

    async def _run(self, item: T, slot: _Slot[R], on_done: Completion[R]) -> None:
        try:
            value = await self._fn(item)
            if value is None:
                raise NoneItemError(
                    f"map_async: {self._fn!r} returned None for {item!r}; None is not an item"
                )
        except asyncio.CancelledError:
            return  # cancelled by the subscription, which no longer wants the result
        except Exception as error:
            on_done(slot, None, error)
            return
        on_done(slot, value, None)

    def close(self) -> None:
        pass  # tasks were cancelled one by one


class _MapAsyncSubscriber(QueueDrain[R], Generic[T, R]):
    """The limiter: a window of ``max_concurrency`` items between upstream and downstream.

    Demand: upstream is asked for ``max_concurrency`` items at subscription,
    then for one more per result delivered downstream. Invariant (under
    ``_lock``): ``asked + in_flight + finished-but-undelivered <=
    max_concurrency``; so at most ``max_concurrency`` calls run at once, and
    finished results wait (at most ``max_concurrency`` of them, in input
    order when ``ordered``) until downstream requests them.

    Cancellation: cancels upstream and every call not yet finished (tasks
    are cancelled; pool calls not yet started never start; a blocking call
    already running finishes and its result is dropped); shuts down a
    private pool.

    Errors: the first error (from ``fn``, upstream, a Rule 3.9 request, or
    the scheduler refusing or dropping a call) cuts ahead of the finished
    results, cancels everything else and is signalled once.
    """

    __slots__ = (
        "_asked",
        "_in_flight",
        "_max_concurrency",
        "_ordered",
        "_pending",
        "_results",
        "_runner",
        "_upstream",
    )

    def __init__(
        self,
        actual: Subscriber[R],
        runner: _Runner[T, R],
        max_concurrency: int,
        ordered: bool,
    ) -> None:
        super().__init__(actual)
        self._runner = runner
        self._max_concurrency = max_concurrency
        self._ordered = ordered
        # Invariant: CANCELLED until on_subscribe.
        self._upstream: Subscription = CANCELLED
        # Guarded by _lock: requested upstream and not yet received; calls
        # started and not finished; the calls not finished, with handles.
        self._asked = 0
        self._in_flight = 0
        self._pending: dict[_Slot[R], None] = {}
        # Guarded by _lock. Ordered: every undelivered call's slot, in input
        # order (the reorder buffer). Unordered: finished slots, as they finish.
        self._results: deque[_Slot[R]] = deque()

    # -- upstream side ---------------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept upstream, hand ``self`` downstream, ask for ``max_concurrency`` items."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._upstream is not CANCELLED:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return
        self._upstream = subscription
        actual = self._actual
        if actual is None:  # pragma: no cover - cannot be released before on_subscribe
            cancel_quietly(subscription)
            return
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fail(fault)
            return
        if not self._halted:
            with self._lock:
                self._asked = self._max_concurrency
            subscription.request(self._max_concurrency)

    def on_next(self, item: T) -> None:
        """Start ``fn(item)``."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._halted or self._upstream_done:
            return  # Rule 2.8
        slot: _Slot[R] = _Slot()
        with self._lock:
            over = self._asked == 0
            if not over:
                self._asked = produced(self._asked, 1)
                self._in_flight += 1
                self._pending[slot] = None
                if self._ordered:
                    self._results.append(slot)
        if over:
            self._fail(
                ProtocolViolationError(
                    f"Rule 1.1: {self!r} received {item!r} beyond the "
                    f"{self._max_concurrency} items it requested"
                )
            )
            return
        try:
            handle = self._runner.submit(item, slot, self._call_done)
        except Exception as error:  # a closed loop, a shut-down pool
            self._record_refusal(error)
            self._schedule()
            return
        if handle is None:
            return  # nothing to cancel one by one (the runner's close stops it all)
        with self._lock:
            keep = not slot.done and not self._halted
            if keep:
                slot.handle = handle
        if not keep and not slot.done:
            handle.cancel()

    def on_error(self, error: Exception) -> None:
        """Fail at once: the calls still running are cancelled."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._signal_error(error)  # recorded with "ended" at once; a late one is reported

    def on_complete(self) -> None:
        """Complete once every call has finished and its result was delivered."""
        self._upstream_complete()  # recorded after the last call was started

    # -- calls -------------------------------------------------------------------------------

    def _call_done(self, slot: _Slot[R], value: R | None, error: Exception | None) -> None:
        """A call finished (any thread): record its result and drain.

        A failed call's error is recorded (it cuts ahead) *before* its slot
        is marked done, and the drain checks ``_halted`` under the lock where
        it sees ``done``: a failed slot is never taken for a result.
        """
        if error is not None:
            with self._lock:
                if slot.done:
                    return
            if isinstance(error, RejectedExecutionError):
                self._record_refusal(error)  # the scheduler dropped the call unrun
            else:
                self._record_fatal(error)  # reported by the terminal if too late
        with self._lock:
            if slot.done:
                return
            slot.done = True
            slot.handle = None
            self._pending.pop(slot, None)
            self._in_flight -= 1
            halted = self._halted
            if error is None and not halted:
                slot.value = value
                if not self._ordered:
                    self._results.append(slot)
        if error is not None:
            self._schedule()  # the loop owner delivers the recorded error
            return
        if not halted:
            self._schedule()

    def _calls_done(self, finished: list[tuple[_Slot[R], R]]) -> None:
        """Several calls succeeded (any thread): record them under one lock, drain once.

        The batched form of ``_call_done`` for runners that learn of many
        confirmations at once (a pipeline's replies): one pass then delivers
        them all and asks upstream for as many more in one ``request``.
        """
        with self._lock:
            halted = self._halted
            for slot, value in finished:
                if slot.done:
                    continue
                slot.done = True
                slot.handle = None
                self._pending.pop(slot, None)
                self._in_flight -= 1
                if not halted:
                    slot.value = value
                    if not self._ordered:
                        self._results.append(slot)
        if not halted:
            self._schedule()

    def _record_refusal(self, error: Exception) -> None:
        """The scheduler refused a call, or dropped it unrun: record the stream's error.

        It cuts ahead and cancels the rest, like a failed call. Quiet: a
        stream already over (cancelled, or ending) was not waiting for this
        call; its own ending is what it delivers. The caller drains.
        """
        if self._terminal.fail(error, eager=True, quiet=True):
            self._halted = True
            self._cancel_upstreams()

    # -- the drain ---------------------------------------------------------------------------

    @override
    def hook_drain(self, actual: Subscriber[R], requested: int) -> int:
        results = self._results
        lock = self._lock
        on_next = actual.on_next
        emitted = 0
        while emitted != requested and not self._halted:
            ready: list[R | None] = []
            with lock:
                # _halted under the lock: a failed call halts before its slot is
                # done, so while this lock is held and _halted is false, every done
                # slot at the head holds a result. They are taken in one go.
                if self._halted:
                    break
                want = requested - emitted
                while results and results[0].done and len(ready) != want:
                    ready.append(results.popleft().value)
            if not ready:
                break
            for value in ready:
                if self._halted:
                    break  # cancelled, or an error cut ahead: the rest is dropped
                on_next(cast("R", value))
                emitted += 1
        if emitted and not self._upstream_done and not self._halted:
            with lock:
                self._asked = add_cap(self._asked, emitted)
            self._upstream.request(emitted)
        if self._halted:
            return emitted
        # Read the ending first: a call is registered before upstream completes.
        done = self._upstream_done
        with lock:
            idle = self._in_flight == 0 and not results
        if done and idle:
            self._terminate(actual)
        return emitted

    @override
    def hook_cancel_upstreams(self) -> None:
        cancel_quietly(self._upstream)
        with self._lock:
            handles = [slot.handle for slot in self._pending if slot.handle is not None]
            for slot in self._pending:
                slot.handle = None
        for handle in handles:
            try:
                handle.cancel()
            except Exception as fault:
                report_undeliverable(fault, f"{self!r} while cancelling a call")
        self._runner.close()

    @override
    def hook_clear(self) -> None:
        with self._lock:
            self._results.clear()
        self._runner.close()


class _MapAsyncFlow(Flow[R], Generic[T, R]):
    __slots__ = ("_fn", "_is_coroutine", "_max_concurrency", "_ordered", "_scheduler", "_source")

    def __init__(
        self,
        source: Flow[T],
        fn: Callable[[T], R] | Callable[[T], Awaitable[R]],
        max_concurrency: int,
        ordered: bool,
        scheduler: Scheduler | None,
        is_coroutine: bool,
    ) -> None:
        self._source = source
        self._fn = fn
        self._max_concurrency = max_concurrency
        self._ordered = ordered
        self._scheduler = scheduler
        self._is_coroutine = is_coroutine

    def _runner(self) -> _Runner[T, R]:
        if self._is_coroutine:
            scheduler = self._scheduler
            if isinstance(scheduler, AsyncioScheduler):
                loop = scheduler.loop
            else:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    raise RuntimeError(
                        "map_async: an async function needs a running event loop at "
                        "subscribe time, or scheduler=AsyncioScheduler(loop)"
                    ) from None
            return _CoroutineRunner(cast("Callable[[T], Awaitable[R]]", self._fn), loop)
        fn = cast("Callable[[T], R]", self._fn)
        if self._scheduler is None:
            return _PoolRunner(fn, self._max_concurrency)
        return _SchedulerRunner(fn, self._scheduler)

    @override
    def _subscribe(self, subscriber: Subscriber[R]) -> None:
        try:
            runner = self._runner()
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return
        self._source.subscribe(
            _MapAsyncSubscriber(subscriber, runner, self._max_concurrency, self._ordered)
        )

    def __repr__(self) -> str:
        order = "ordered" if self._ordered else "unordered"
        return f"{self._source!r}.map_async({self._fn!r}, {self._max_concurrency}, {order})"


def _is_coroutine_function(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def map_async(
    source: Flow[T],
    fn: Callable[[T], R] | Callable[[T], Awaitable[R]],
    max_concurrency: int,
    ordered: bool,
    scheduler: Scheduler | None,
) -> Flow[R]:
    """See :meth:`Flow.map_async`."""
    if not callable(fn):
        raise TypeError(f"map_async: fn must be callable, got {fn!r}")
    if type(max_concurrency) is not int or max_concurrency < 1:
        raise ValueError(f"map_async: max_concurrency must be an int >= 1, got {max_concurrency!r}")
    is_coroutine = _is_coroutine_function(fn)
    if is_coroutine and scheduler is not None and not isinstance(scheduler, AsyncioScheduler):
        raise TypeError(
            f"map_async: an async function runs on an event loop; scheduler must be an "
            f"AsyncioScheduler or None, got {scheduler!r}"
        )
    return _MapAsyncFlow(source, fn, max_concurrency, bool(ordered), scheduler, is_coroutine)
