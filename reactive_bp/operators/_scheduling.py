"""Async boundaries: ``publish_on`` and ``subscribe_on``.

Both hand work to a scheduler, so both must survive a scheduler that stops
taking it. A ``schedule`` that raises, and a task the scheduler accepted and
then dropped (``ThreadPoolScheduler.shutdown`` rejects what is still queued by
calling the task's ``on_rejected``), end the stream with ``on_error`` -- the
``RejectedExecutionError`` names the scheduler -- instead of leaving the
subscriber waiting forever.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import cancel_quietly
from .._core._demand import add_cap, check_request
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, DETACHED
from .._core._queue_drain import replenish_limit
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from .._flow import Flow
from ..schedulers._base import RejectableAction
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

    Errors: if the scheduler refuses the loop (``schedule`` raises) or drops
    it unrun (``on_rejected``), the thread that learns it owns the loop --
    whoever moved ``_wip`` from 0 handed ownership to that task -- so it
    records the error, cutting ahead of the queue, and runs the loop itself
    to deliver it.
    """

    __slots__ = ("_drain_task", "_scheduler")

    def __init__(self, actual: Subscriber[T], prefetch: int, scheduler: Scheduler) -> None:
        super().__init__(actual, prefetch, replenish_limit(prefetch))
        self._scheduler = scheduler
        self._drain_task = RejectableAction(self._drain_loop, self._rejected)

    @override
    def _run_drain(self) -> None:
        try:
            self._scheduler.schedule(self._drain_task)
        except Exception as error:  # e.g. a shut-down pool: fail here rather than hang
            self._rejected(error)

    def _rejected(self, error: Exception) -> None:
        """The loop will not run on the scheduler: end the stream from this thread."""
        # Quiet: a stream already over (cancelled, or ending eagerly) has
        # nothing left to tell; its own ending is what the loop delivers.
        if self._terminal.fail(error, eager=True, quiet=True):
            self._halted = True
            self._cancel_upstreams()
        self._drain_loop()  # this thread owns the loop (see the class docstring)


def publish_on(source: Flow[T], scheduler: Scheduler, prefetch: int) -> Flow[T]:
    """See :meth:`Flow.publish_on`."""
    if type(prefetch) is not int or prefetch <= 0:
        raise ValueError(f"publish_on: prefetch must be a positive int, got {prefetch!r}")
    factory = partial(_PublishOnSubscriber, prefetch=prefetch, scheduler=scheduler)
    return LiftFlow(source, factory, "publish_on")


class _SubscribeOnSubscriber(Generic[T]):
    """Relays the source's signals; subscribes and forwards ``request`` on the scheduler.

    Requests are summed and handed over by one scheduled task at a time, so
    upstream sees them serially and in order (Rule 2.7) even on a pool. An
    invalid ``n`` (``0``, ``-1``, ``None``) is answered here (Rule 3.9), not
    handed over: it is recorded in ``_terminal`` at once, cutting ahead of
    whatever upstream still sends, so an upstream that ends before a
    hand-over would have run cannot turn it into ``on_complete``; once the
    stream has ended it is a no-op (Rule 3.6).

    How the rules hold:

    * Rule 1.3: ``on_subscribe`` returns before any request is handed over
      (``_scheduled`` is held during it), so no item overlaps it. An error
      that does not come from upstream (the scheduler dropped a task,
      ``subscribe`` raised, a Rule 3.9 request) is recorded in ``_terminal``
      first; it is delivered by the thread that recorded it only if no
      upstream signal is in flight (``_busy > 0``), and otherwise by that
      signal's thread as it leaves. Recording before reading ``_busy`` on
      one side, and setting ``_busy`` before reading the ending on the
      other, means at least one of them sees the other; ``Terminal.claim``
      makes the delivery happen once. The per-item path takes no lock.
    * Rules 1.9, 2.13: if the source's ``subscribe`` raises, or the scheduler
      drops the subscribe task, the subscriber gets ``on_subscribe`` (if it
      had not) and then ``on_error``, never an exception.
    * Rules 3.6, 3.13: after ``cancel`` requests are no-ops and the
      subscriber is dropped (``DETACHED``).
    """

    __slots__ = (
        "_actual",
        "_busy",
        "_flush_task",
        "_lock",
        "_pending",
        "_scheduled",
        "_scheduler",
        "_subscribed",
        "_terminal",
        "_upstream",
    )

    def __init__(self, actual: Subscriber[T], scheduler: Scheduler) -> None:
        # Invariant: the subscriber until the ending is claimed or downstream
        # cancelled, DETACHED after (Rule 3.13).
        self._actual: Subscriber[T] = actual
        self._scheduler = scheduler
        self._lock = threading.Lock()
        # Guarded by _lock: the upstream subscription (CANCELLED before
        # on_subscribe and after cancel or an abort).
        self._upstream: Subscription = CANCELLED
        # Guarded by _lock: demand not yet handed over, and whether a flush
        # task is scheduled or running.
        self._pending = 0
        self._scheduled = False
        # Guarded by _lock; set once: downstream got (or is getting) on_subscribe.
        self._subscribed = False
        # How many upstream signals are being relayed downstream right now (a
        # depth: more than 1 only if a source re-enters on_next). Written only
        # by the upstream's signals, which are serial (Rule 1.3), without a
        # lock except where on_subscribe starts; read by _abort under _lock.
        self._busy = 0
        # How the stream ends, including an error from outside the upstream.
        self._terminal = Terminal(self)
        self._flush_task = RejectableAction(self._flush, self._rejected)

    # -- Subscriber (on the scheduler's thread, or the source's) -----------------------------

    def subscribe_to(self, source: Publisher[T]) -> None:
        """Subscribe to ``source`` (the scheduled task); a raising ``subscribe`` is on_error."""
        try:
            source.subscribe(self)
        except Exception as error:  # Rule 1.9: subscribe must return normally
            self._abort(error, quiet=False)

    def on_subscribe(self, subscription: Subscription) -> None:
        """Hand ``self`` downstream, then hand over what it requested meanwhile."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            first = not self._subscribed
            if first:
                self._subscribed = True
                self._upstream = subscription
                # Requests made inside on_subscribe wait until it returns
                # (Rule 1.3: items must not arrive on another thread meanwhile).
                self._scheduled = True
                self._busy += 1  # an _abort meanwhile leaves the error to us
        if not first:
            cancel_quietly(subscription)  # Rule 2.5, or the stream was aborted already
            if not self._terminal.is_ended:
                report_undeliverable(
                    ProtocolViolationError("Rule 2.5: a second on_subscribe was cancelled"),
                    repr(self),
                )
            return
        try:
            self._actual.on_subscribe(self)
        finally:
            self._leave()
            self._flush()  # on the scheduler's thread, as the subscribe itself

    def on_next(self, item: T) -> None:
        """Relay ``item`` unless the stream is ending."""
        self._busy += 1
        try:
            if self._terminal._ending is None:
                self._actual.on_next(item)
        finally:
            self._leave()

    def on_error(self, error: Exception) -> None:
        """Relay the upstream failure (a late one is reported, Rule 1.7)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._terminal.fail(error)
        self._deliver()

    def on_complete(self) -> None:
        """Relay the upstream completion."""
        self._terminal.complete()
        self._deliver()

    # -- Subscription (downstream, any thread) --------------------------------------------

    def request(self, n: int) -> None:
        """Sum ``n`` into the demand and hand it over on the scheduler; a bad ``n`` fails now."""
        terminal = self._terminal
        if terminal._closed or terminal._ending is not None:
            return  # Rule 3.6: over, or about to be
        bad = check_request(n)
        if bad is not None:
            # Rule 3.9, answered here rather than handed over: a hand-over
            # still waiting for the scheduler could find upstream already
            # ended, and the error would be lost. Quiet: if the stream ended
            # meanwhile, the request is a no-op (Rule 3.6).
            self._abort(bad, quiet=True, eager=True)
            return
        with self._lock:
            self._pending = add_cap(self._pending, n)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._scheduler.schedule(self._flush_task)
        except Exception as error:  # the scheduler is gone: the source cannot run there
            self._rejected(error)

    def cancel(self) -> None:
        """Cancel upstream and drop the subscriber (Rules 3.5, 3.7, 3.13)."""
        self._terminal.cancel()
        self._actual = DETACHED
        with self._lock:
            upstream, self._upstream = self._upstream, CANCELLED
        cancel_quietly(upstream)

    # -- internals -------------------------------------------------------------------------

    def _flush(self) -> None:
        while True:
            with self._lock:
                n, self._pending = self._pending, 0
                if not n:
                    self._scheduled = False
                    return
                upstream = self._upstream
            upstream.request(n)

    def _rejected(self, error: Exception) -> None:
        """The scheduler refused or dropped a flush (or the subscribe): end the stream."""
        self._abort(error, quiet=True)

    def _abort(self, error: Exception, *, quiet: bool, eager: bool = False) -> None:
        """End the stream with ``error``, which did not come from upstream (any thread).

        ``quiet``: an error that comes after the stream already ended is not
        reported (a dropped flush after completion changes nothing).
        ``eager``: it supersedes an upstream ending recorded but not yet
        delivered (a Rule 3.9 request, like every bad request in reactive_bp).
        """
        if not self._terminal.fail(error, quiet=quiet, eager=eager):
            return  # the stream already ended or was cancelled
        with self._lock:
            upstream, self._upstream = self._upstream, CANCELLED
            hand_over = not self._subscribed
            self._subscribed = True
            in_flight = self._busy > 0  # read after the error was recorded
        cancel_quietly(upstream)
        if hand_over:  # Rule 1.9: on_subscribe first, even for a stream that never started
            try:
                self._actual.on_subscribe(self)
            except Exception as fault:  # Rule 2.13
                report_undeliverable(fault, f"{self._actual!r}.on_subscribe")
            self._deliver()
        elif not in_flight:
            self._deliver()
        # Otherwise the signal in flight delivers the error as it leaves (_leave).

    def _leave(self) -> None:
        """An upstream signal was relayed: deliver an ending recorded meanwhile."""
        self._busy -= 1
        if self._terminal._ending is not None:
            self._deliver()

    def _deliver(self) -> None:
        """Deliver the recorded ending, once (``Terminal.claim``), and drop the subscriber."""
        ending = self._terminal.claim()
        if ending is None:
            return
        actual, self._actual = self._actual, DETACHED
        if ending.error is None:
            signal_complete(actual, self)
        else:
            signal_error(actual, ending.error, self)

    def __repr__(self) -> str:
        return f"<subscribe_on relay on {self._scheduler!r} {self._terminal!r}>"


class _SubscribeOnFlow(Flow[T]):
    __slots__ = ("_scheduler", "_source")

    def __init__(self, source: Publisher[T], scheduler: Scheduler) -> None:
        self._source = source
        self._scheduler = scheduler

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        relay: _SubscribeOnSubscriber[T] = _SubscribeOnSubscriber(subscriber, self._scheduler)
        task = RejectableAction(partial(relay.subscribe_to, self._source), relay._rejected)
        try:
            self._scheduler.schedule(task)
        except Exception as error:
            relay._rejected(error)

    def __repr__(self) -> str:
        return f"{self._source!r}.subscribe_on({self._scheduler!r})"


def subscribe_on(source: Flow[T], scheduler: Scheduler) -> Flow[T]:
    """See :meth:`Flow.subscribe_on`."""
    return _SubscribeOnFlow(source, scheduler)
