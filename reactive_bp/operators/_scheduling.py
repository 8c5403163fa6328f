"""Async boundaries: ``publish_on`` and ``subscribe_on``."""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import cancel_quietly
from .._core._demand import add_cap, check_request
from .._core._operator import CANCELLED, EmptySubscription
from .._core._queue_drain import replenish_limit
from .._core._signals import signal_error
from .._flow import Flow
from ._lift import LiftFlow
from ._rate import _LimitRateSubscriber

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber, Subscription
    from ..schedulers import Scheduler

__all__ = ["publish_on", "subscribe_on"]

T = TypeVar("T")


class _PublishOnSubscriber(_LimitRateSubscriber[T]):
    """``limit_rate(prefetch)`` whose drain loop runs on a scheduler.

    Demand: at most ``prefetch`` items outstanding upstream plus queued
    (Invariant of ``limit_rate``), replenished at 75%, so the queue between
    the two threads is bounded by ``prefetch`` whatever the producer's speed.

    Every signal to downstream comes from the drain loop on the scheduler;
    the work-in-progress counter guarantees one loop at a time (Rule 1.3)
    even on a multi-threaded pool.
    """

    __slots__ = ("_scheduler",)

    def __init__(self, actual: Subscriber[T], prefetch: int, scheduler: Scheduler) -> None:
        super().__init__(actual, prefetch, replenish_limit(prefetch))
        self._scheduler = scheduler

    @override
    def _run_drain(self) -> None:
        try:
            self._scheduler.schedule(self._drain_loop)
        except Exception as error:  # e.g. a shut-down pool: fail here rather than hang
            self._record_fatal(error)
            self._drain_loop()  # this thread owns the loop (it moved _wip from 0)


def publish_on(source: Flow[T], scheduler: Scheduler, prefetch: int) -> Flow[T]:
    """See :meth:`Flow.publish_on`."""
    if type(prefetch) is not int or prefetch <= 0:
        raise ValueError(f"publish_on: prefetch must be a positive int, got {prefetch!r}")
    factory = partial(_PublishOnSubscriber, prefetch=prefetch, scheduler=scheduler)
    return LiftFlow(source, factory, "publish_on")


class _ScheduledRequests:
    """Forwards ``request`` through the scheduler so the source works there too.

    Requests are summed and handed over by one scheduled task at a time, so
    upstream sees them serially and in order (Rule 2.7) even on a pool.
    """

    __slots__ = ("_bad", "_lock", "_pending", "_scheduled", "_scheduler", "_upstream")

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._upstream: Subscription = CANCELLED
        self._lock = threading.Lock()
        # Guarded by _lock: demand not yet handed over, the first invalid n
        # (passed on unchanged: upstream signals the Rule 3.9 error), and
        # whether a flush task is scheduled.
        self._pending = 0
        self._bad: object = None
        self._scheduled = False

    def request(self, n: int) -> None:
        with self._lock:
            if check_request(n) is None:
                self._pending = add_cap(self._pending, n)
            elif self._bad is None:
                self._bad = n
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._scheduler.schedule(self._flush)
        except Exception:  # the scheduler is gone: hand over here rather than lose demand
            self._flush()

    def _flush(self) -> None:
        while True:
            with self._lock:
                n, self._pending = self._pending, 0
                bad, self._bad = self._bad, None
                if not n and bad is None:
                    self._scheduled = False
                    return
            upstream = self._upstream
            if bad is not None:
                upstream.request(bad)  # type: ignore[arg-type]
            if n:
                upstream.request(n)

    def cancel(self) -> None:
        upstream, self._upstream = self._upstream, CANCELLED
        cancel_quietly(upstream)


class _SubscribeOnSubscriber(_ScheduledRequests, Generic[T]):
    __slots__ = ("_actual",)

    def __init__(self, actual: Subscriber[T], scheduler: Scheduler) -> None:
        super().__init__(scheduler)
        self._actual = actual

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        self._upstream = subscription
        with self._lock:
            # Requests made inside on_subscribe wait until it returns (Rule 1.3:
            # items must not arrive on another thread while it is still running).
            self._scheduled = True
        try:
            self._actual.on_subscribe(self)
        finally:
            self._flush()  # on the scheduler's thread, as the subscribe itself

    def on_next(self, item: T) -> None:
        self._actual.on_next(item)

    def on_error(self, error: Exception) -> None:
        self._actual.on_error(error)

    def on_complete(self) -> None:
        self._actual.on_complete()


class _SubscribeOnFlow(Flow[T]):
    __slots__ = ("_scheduler", "_source")

    def __init__(self, source: Publisher[T], scheduler: Scheduler) -> None:
        self._source = source
        self._scheduler = scheduler

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        relay: _SubscribeOnSubscriber[T] = _SubscribeOnSubscriber(subscriber, self._scheduler)
        try:
            self._scheduler.schedule(lambda: self._source.subscribe(relay))
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)

    def __repr__(self) -> str:
        return f"{self._source!r}.subscribe_on({self._scheduler!r})"


def subscribe_on(source: Flow[T], scheduler: Scheduler) -> Flow[T]:
    """See :meth:`Flow.subscribe_on`."""
    return _SubscribeOnFlow(source, scheduler)
