"""``UnicastProcessor``: a bounded buffer for one subscriber, fed by an upstream or by pushes.

Everything between the producers and the subscriber is the ``PushBuffer`` behind
``SourceQueue`` and ``Flow.create``: its drain loop, its overflow strategies,
its ``OfferResult`` answers and its ``BufferStats``. This module adds the
processor's two other faces:

* the upstream side: the buffer's room is what is requested upstream
  (``capacity`` on subscribe, then replenished as items leave the buffer), so
  an upstream that honours demand never overflows it. Requests come from the
  upstream's thread and the subscriber's, so they go through
  ``SerializedUpstream`` (Rule 2.7);
* the one-subscriber rule: a second subscriber receives ``on_subscribe``
  then ``on_error(AlreadySubscribedError)`` (the spirit of Rule 1.10: a
  publisher may refuse a subscriber, and says so with ``on_error``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._demand import UNBOUNDED
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import EmptySubscription
from .._core._push import BufferStats, OfferResult, OverflowStrategy, PushBuffer, WaterMarks
from .._core._signals import signal_error
from .._flow import Flow
from ..operators._grouping import AlreadySubscribedError
from ._replay import SerializedUpstream

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription
    from ..metrics import BackpressureMeter

__all__ = ["UnicastProcessor"]

T = TypeVar("T")


class UnicastProcessor(Flow[T], Generic[T]):
    """A hot ``Flow`` for exactly one subscriber: items wait in a bounded buffer until it asks.

    A ``Processor[T, T]``: subscribe it to an upstream, or push into it with
    ``offer``/``offer_wait``/``offer_blocking``/``complete``/``error`` (the
    shape of ``SourceQueue``), or both. Items that arrive before the subscriber
    wait in the buffer; the terminal signal follows them.

    ::

        upstream:   -a-b-c-----d-|
        subscribe:        ^ request(2)   request(5)
        subscriber:       a-b----c---d-|

    Args:
        capacity: The most items held for the subscriber beyond what it
            requested. ``256`` by default, the buffer a Reactor
            ``Sinks.many().unicast().onBackpressureBuffer()`` user gets with a
            bounded queue.
        overflow: What a full buffer does with one more pushed item. ``WAIT``
            by default: ``offer`` answers ``FULL`` without taking the item
            (Reactor's ``FAIL_OVERFLOW``), ``offer_wait`` / ``offer_blocking``
            wait for room. ``DROP_NEWEST``, ``DROP_OLDEST``, ``LATEST`` drop
            (each drop goes to ``on_dropped`` and ``stats``), ``ERROR`` fails
            the stream with ``BufferOverflowError``, ``UNBOUNDED_BUFFER``
            never refuses (memory grows with the backlog).
        on_dropped: Receives every item a strategy dropped.
        water_marks: Turns ``pressured`` on at its high mark, off at its low mark.
        meter: A ``BackpressureMeter`` that follows ``stats``.

    Demand: as a subscriber it requests ``capacity`` upstream at once (items
    are buffered before anyone subscribes), then replenishes what left the
    buffer: after each of the subscriber's requests, and once 75% of the
    room is free again after items arrived. Upstream requested-but-unsent
    plus buffered never exceeds ``capacity`` (unbounded with
    ``UNBOUNDED_BUFFER``). The subscriber receives items only against its own
    demand.

    Cancellation: the subscriber's cancel drops (and counts) what is buffered
    and cancels the upstream; later offers answer ``CLOSED``.

    Errors: ``complete()``, ``error()`` and the upstream's ending follow the
    buffered items. A second subscriber gets ``AlreadySubscribedError``
    (also after the first one left: a unicast processor serves one subscriber
    in its life). An upstream that sends more than requested (Rule 1.1) fails
    the stream with ``ProtocolViolationError``; so does an upstream item that
    finds the buffer full because pushed items took its room (``WAIT``).

    Example:
        >>> processor = UnicastProcessor[str](capacity=4)
        >>> [processor.offer(c).value for c in "abc"]
        ['enqueued', 'enqueued', 'enqueued']
        >>> processor.complete()
        >>> processor.to_list()
        ['a', 'b', 'c']
    """

    __slots__ = (
        "_buffer",
        "_capacity",
        "_limit",
        "_lock",
        "_received",
        "_requested",
        "_since",
        "_subscribed",
        "_upstream",
    )

    def __init__(
        self,
        capacity: int = 256,
        overflow: OverflowStrategy = OverflowStrategy.WAIT,
        on_dropped: Callable[[T], object] | None = None,
        *,
        water_marks: WaterMarks | None = None,
        meter: BackpressureMeter | None = None,
    ) -> None:
        self._buffer: _UnicastBuffer[T] = _UnicastBuffer(
            self, capacity, overflow, on_dropped, water_marks
        )
        self._buffer.on_cancel(self._downstream_cancelled)
        if meter is not None:
            meter.attach(self._buffer.stats)
        unbounded = overflow is OverflowStrategy.UNBOUNDED_BUFFER
        self._capacity = UNBOUNDED if unbounded else capacity
        # Replenish in batches of 25% of the room while some demand is outstanding.
        self._limit = 1 if unbounded else max(1, capacity >> 2)
        self._lock = threading.Lock()
        # Written under _lock: upstream demand ever asked for (UNBOUNDED once
        # unbounded). Written by on_next only (serial, Rule 1.3): upstream items
        # ever received, and how many since the room was last looked at.
        # Invariant (upstream honouring demand): _requested - _received +
        # buffered <= capacity.
        self._requested = 0
        self._received = 0
        self._since = 0
        # Guarded by _lock, set once: the one subscriber arrived.
        self._subscribed = False
        self._upstream = SerializedUpstream(self)

    # -- Subscriber (the upstream side) -------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Take the upstream (a second one is cancelled, Rule 2.5) and request ``capacity``."""
        if not self._upstream.attach(subscription):
            return
        if self._buffer.is_closed:
            self._upstream.cancel()  # completed, failed or cancelled: nothing is wanted
            return
        self._replenish(eager=True)

    def on_next(self, item: T) -> None:
        """Buffer ``item`` (or hand it straight to a subscriber with demand)."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        # _received is written only here, and on_next calls are serial (Rule 1.3).
        received = self._received
        requested = self._requested
        if received >= requested and requested != UNBOUNDED:
            self._fail_upstream(
                ProtocolViolationError(
                    f"Rule 1.1: the upstream of {self!r} sent {item!r} beyond the demand it "
                    "was given"
                )
            )
            return
        result = self._buffer.offer(item)
        # Counted after the offer: a replenish reads _received before the buffer's
        # room, so it sees this item buffered but not yet received and
        # under-requests, never over-requests.
        self._received = received = received + 1
        if result is OfferResult.FULL:
            self._fail_upstream(
                ProtocolViolationError(
                    f"{self!r}: an upstream item found the buffer full: pushed items took "
                    "the room it was given (feed a UnicastProcessor from an upstream or by "
                    "offers, not both, or use a dropping overflow strategy)"
                )
            )
            return
        if result is OfferResult.CLOSED:
            return  # Rule 2.8: cancelled or ended; items may still arrive
        # Look at the room every _limit items, and whenever the upstream demand ran
        # out (otherwise a subscriber waiting with an empty buffer would stall).
        since = self._since + 1
        if since >= self._limit or received == self._requested:
            self._since = 0
            self._replenish(eager=False)
        else:
            self._since = since

    def on_error(self, error: Exception) -> None:
        """Fail the stream after the buffered items."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._buffer.error(error)

    def on_complete(self) -> None:
        """Complete the stream after the buffered items."""
        self._buffer.complete()

    # -- the push entry point (SourceQueue's shape) ---------------------------------------

    def offer(self, item: T) -> OfferResult:
        """Offer without waiting: ENQUEUED, DROPPED, FULL (WAIT strategy), FAILED or CLOSED."""
        return self._buffer.offer(item)

    async def offer_wait(self, item: T) -> OfferResult:
        """Offer, awaiting room while full (only WAIT ever waits)."""
        return await self._buffer.offer_wait(item)

    def offer_blocking(self, item: T, timeout: float | None = None) -> OfferResult:
        """Offer from a thread, blocking while full (only WAIT ever waits).

        ``FULL`` after ``timeout``; ``RuntimeError`` instead of waiting on a
        thread the subscriber needs to make room (see ``SourceQueue``).
        """
        return self._buffer.offer_blocking(item, timeout)

    async def ready(self) -> None:
        """Return once there is room for one more item (or the stream is closed)."""
        await self._buffer.ready()

    def complete(self) -> None:
        """Complete after the buffered items; cancels the upstream, if any."""
        self._buffer.complete()
        self._upstream.cancel()

    # The push side's failure, as on SourceQueue; it shadows the static source
    # factory Flow.error(e) on instances (Flow.error itself is unchanged).
    def error(self, error: Exception) -> None:  # type: ignore[override]
        """Fail after the buffered items; cancels the upstream, if any."""
        self._buffer.error(error)
        self._upstream.cancel()

    @property
    def desired_size(self) -> int:
        """``capacity - buffered``: how many more items fit right now."""
        return self._buffer.desired_size

    @property
    def is_closed(self) -> bool:
        """Whether offers are refused now (completed, failed or cancelled)."""
        return self._buffer.is_closed

    @property
    def stats(self) -> BufferStats:
        """Produced / delivered / dropped / refused / depth counters."""
        return self._buffer.stats

    @property
    def has_subscriber(self) -> bool:
        """Whether the one subscriber has arrived (it may have left since)."""
        return self._subscribed

    # -- Publisher ----------------------------------------------------------------------

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        with self._lock:
            first = not self._subscribed
            self._subscribed = True
        if first:
            self._buffer.attach(subscriber)
            return
        error = AlreadySubscribedError(f"{self!r} allows only one subscriber")
        try:
            subscriber.on_subscribe(EmptySubscription())
        except Exception as fault:  # Rule 2.13
            report_undeliverable(fault, f"{type(subscriber).__name__}.on_subscribe")
        signal_error(subscriber, error, self)

    # -- internals -------------------------------------------------------------------------

    def _replenish(self, *, eager: bool) -> None:
        """Request the room that left the buffer; ``eager`` also for less than a batch."""
        upstream = self._upstream
        buffer = self._buffer
        if not upstream.attached or upstream.is_cancelled or buffer.is_closed:
            return
        with self._lock:
            requested = self._requested
            if requested == UNBOUNDED:
                return
            # _received first, then the room: on_next buffers an item before it
            # counts it, so an arrival in between makes this under-estimate the
            # room, never over-estimate it.
            outstanding = requested - self._received
            room = buffer.desired_size
            deficit = room - outstanding
            if deficit <= 0 or (not eager and outstanding > 0 and deficit < self._limit):
                return
            if self._capacity == UNBOUNDED:
                self._requested = n = UNBOUNDED
            else:
                self._requested = requested + deficit
                n = deficit
        upstream.request(n)

    def _downstream_cancelled(self) -> None:
        """The subscriber cancelled (or failed, Rule 3.9 / 2.13): nothing more is wanted."""
        self._upstream.cancel()

    def _fail_upstream(self, error: Exception) -> None:
        self._upstream.cancel()
        self._buffer.error(error, supersede=True)

    def __repr__(self) -> str:
        return f"<UnicastProcessor {self._buffer.stats.snapshot()}>"


class _UnicastBuffer(PushBuffer[T]):
    """The processor's ``PushBuffer``: after each ``request`` it replenishes the upstream."""

    __slots__ = ("_owner",)

    def __init__(
        self,
        owner: UnicastProcessor[T],
        capacity: int,
        overflow: OverflowStrategy,
        on_dropped: Callable[[T], object] | None,
        water_marks: WaterMarks | None,
    ) -> None:
        super().__init__(
            None, capacity, overflow, on_dropped, name="UnicastProcessor", water_marks=water_marks
        )
        self._owner = owner

    @override
    def request(self, n: int) -> None:
        """Deliver against the new demand, then ask upstream for the room it freed."""
        super().request(n)
        self._owner._replenish(eager=True)
