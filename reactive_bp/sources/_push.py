"""Push sources: ``Flow.create`` (an emitter per subscriber) and ``SourceQueue`` (hot)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._hooks import ProtocolViolationError
from .._core._operator import EmptySubscription
from .._core._push import BufferStats, OfferResult, OverflowStrategy, PushBuffer, WaterMarks
from .._core._signals import signal_error
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Subscriber
    from ..metrics import BackpressureMeter

__all__ = ["CreateFlow", "Emitter", "SourceQueue"]

T = TypeVar("T")


class Emitter(Generic[T]):
    """What a ``Flow.create`` producer pushes into; one per subscriber.

    ``emit`` never blocks except with ``OverflowStrategy.WAIT``, where it waits
    for room (thread producers); coroutine producers ``await send(item)``
    instead. Check ``is_cancelled`` (or register ``on_cancel``) to stop early;
    ``requested`` is the downstream demand not yet covered by buffered items.
    """

    __slots__ = ("_buffer", "_wait")

    def __init__(self, buffer: PushBuffer[T]) -> None:
        self._buffer = buffer
        self._wait = buffer._overflow is OverflowStrategy.WAIT

    def emit(self, item: T) -> OfferResult:
        """Push one item; with WAIT, block the calling thread until there is room.

        Raises:
            RuntimeError: with WAIT, when the buffer is full and the calling
                thread is one the subscriber needs in order to make room (see
                ``PushBuffer.offer_blocking``): the thread inside
                ``subscribe()``, the subscriber's own thread, or a thread
                running an asyncio event loop. The stream fails with the same
                error after the buffered items. Emit from another thread, or
                ``await send(item)`` from a coroutine producer.
        """
        if self._wait:
            return self._buffer.offer_blocking(item)
        return self._buffer.offer(item)

    async def send(self, item: T) -> OfferResult:
        """Push one item; with WAIT, suspend the coroutine until there is room."""
        return await self._buffer.offer_wait(item)

    def complete(self) -> None:
        """End the stream once the buffered items are delivered."""
        self._buffer.complete()

    def error(self, error: Exception) -> None:
        """Fail the stream after the buffered items."""
        self._buffer.error(error)

    @property
    def requested(self) -> int:
        """Downstream demand not yet covered by buffered items."""
        return self._buffer.requested

    @property
    def is_cancelled(self) -> bool:
        """Whether downstream cancelled (or the stream ended)."""
        return self._buffer.is_closed

    def on_request(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(n)`` after each later ``request(n)`` from downstream."""
        self._buffer.on_request(callback)

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once if downstream cancels."""
        self._buffer.on_cancel(callback)

    @property
    def stats(self) -> BufferStats:
        """Produced / delivered / dropped / depth counters."""
        return self._buffer.stats


Producer = Callable[[Emitter[T]], object]


class CreateFlow(Flow[T]):
    """Runs the producer once per subscriber, behind a bounded buffer."""

    __slots__ = ("_capacity", "_meter", "_on_dropped", "_overflow", "_producer", "_water_marks")

    def __init__(
        self,
        producer: Producer[T],
        capacity: int,
        overflow: OverflowStrategy,
        on_dropped: Callable[[T], object] | None,
        water_marks: WaterMarks | None = None,
        meter: BackpressureMeter | None = None,
    ) -> None:
        # Validate eagerly: a bad argument is the caller's error, not the stream's.
        PushBuffer(None, capacity, overflow, on_dropped)
        self._producer = producer
        self._capacity = capacity
        self._overflow = overflow
        self._on_dropped = on_dropped
        self._water_marks = water_marks
        self._meter = meter

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        buffer: PushBuffer[T] = PushBuffer(
            None,
            self._capacity,
            self._overflow,
            self._on_dropped,
            name="Flow.create",
            water_marks=self._water_marks,
        )
        if self._meter is not None:
            self._meter.attach(buffer.stats)  # before the producer runs: counts from its start
        emitter = Emitter(buffer)
        # A synchronous producer runs inside subscribe(): a WAIT emit there that
        # would have to wait raises instead (the consumer cannot request more
        # until subscribe() returns).
        with buffer.subscribing():
            buffer.attach(subscriber)
            try:
                result = self._producer(emitter)
            except Exception as error:
                buffer.error(error)  # a re-raised WAIT RuntimeError is not reported twice
                return
        if inspect.iscoroutine(result):
            _run_coroutine(buffer, result)

    def __repr__(self) -> str:
        return f"Flow.create({self._producer!r})"


def _run_coroutine(buffer: PushBuffer[T], coroutine: Awaitable[object]) -> None:
    """Drive a coroutine producer as a task on the running loop; cancel it on cancel."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        close = getattr(coroutine, "close", None)
        if close is not None:
            close()
        buffer.error(TypeError("a coroutine producer needs a running event loop"))
        return

    async def run() -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as error:
            buffer.error(error)

    task = loop.create_task(run())

    def cancel_task() -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    buffer.on_cancel(cancel_task)


class SourceQueue(Generic[T]):
    """A hot source that any number of producers offer into; consume it via ``.flow``.

    ``overflow`` defaults to ``OverflowStrategy.WAIT`` (``Flow.create`` and
    ``Flow.from_observable`` default to ``ERROR``): a full queue holds its
    producers back. ``offer`` answers at once with an ``OfferResult``
    (``FULL`` when there is no room; each one is counted in
    ``stats.refused``); ``await offer_wait(item)`` waits for room; ``await
    queue.ready()`` returns when there is room (WHATWG's ``writer.ready``,
    Node's ``drain``); ``desired_size`` is capacity minus queued. Items
    offered before anyone subscribes wait in the buffer. ``water_marks`` (a
    ``WaterMarks``) flips to "pressured" at its high mark and back at its low
    mark, for producers or autoscalers to watch; ``meter`` (a
    ``BackpressureMeter``) follows ``stats`` for the Prometheus exporter.

    Example:
        >>> queue = SourceQueue[int](capacity=2, overflow=OverflowStrategy.DROP_NEWEST)
        >>> [queue.offer(i).value for i in range(3)]
        ['enqueued', 'enqueued', 'dropped']
        >>> queue.complete()
        >>> queue.flow.to_list()
        [0, 1]
    """

    __slots__ = ("_buffer", "_subscribed", "flow")

    def __init__(
        self,
        capacity: int,
        overflow: OverflowStrategy = OverflowStrategy.WAIT,
        on_dropped: Callable[[T], object] | None = None,
        *,
        water_marks: WaterMarks | None = None,
        meter: BackpressureMeter | None = None,
    ) -> None:
        self._buffer: PushBuffer[T] = PushBuffer(
            None, capacity, overflow, on_dropped, name="SourceQueue", water_marks=water_marks
        )
        if meter is not None:
            meter.attach(self._buffer.stats)
        self._subscribed = False
        self.flow: Flow[T] = _SourceQueueFlow(self)
        """The single-subscriber ``Flow`` of the offered items."""

    def offer(self, item: T) -> OfferResult:
        """Offer without waiting: ENQUEUED, DROPPED, FULL (WAIT strategy), FAILED or CLOSED.

        ``FULL`` means the item was not taken (the caller still holds it); it
        is counted in ``stats.refused``, not in ``produced`` or ``dropped``.
        """
        return self._buffer.offer(item)

    async def offer_wait(self, item: T) -> OfferResult:
        """Offer, awaiting room while full (only WAIT ever waits)."""
        return await self._buffer.offer_wait(item)

    def offer_blocking(self, item: T, timeout: float | None = None) -> OfferResult:
        """Offer from a thread, blocking while full (only WAIT ever waits).

        ``FULL`` after ``timeout`` (counted in ``stats.refused``). Raises
        ``RuntimeError`` instead of waiting on a thread running an asyncio event
        loop or on the subscriber's own thread (the queue then fails with it);
        use ``await offer_wait(item)`` there.
        """
        return self._buffer.offer_blocking(item, timeout)

    async def ready(self) -> None:
        """Return once there is room for one more item (or the queue is closed)."""
        await self._buffer.ready()

    @property
    def desired_size(self) -> int:
        """``capacity - queued``: how many more items fit right now."""
        return self._buffer.desired_size

    @property
    def is_closed(self) -> bool:
        """Whether offers are refused now."""
        return self._buffer.is_closed

    @property
    def stats(self) -> BufferStats:
        """Produced / delivered / dropped / refused / depth counters."""
        return self._buffer.stats

    def complete(self) -> None:
        """Complete the flow after the queued items."""
        self._buffer.complete()

    def error(self, error: Exception) -> None:
        """Fail the flow after the queued items."""
        self._buffer.error(error)

    def _attach(self, subscriber: Subscriber[T]) -> None:
        if self._subscribed:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(
                subscriber, ProtocolViolationError("a SourceQueue has one subscriber"), self
            )
            return
        self._subscribed = True
        self._buffer.attach(subscriber)

    def __repr__(self) -> str:
        return f"SourceQueue({self._buffer.stats.snapshot()})"


class _SourceQueueFlow(Flow[T]):
    __slots__ = ("_queue",)

    def __init__(self, queue: SourceQueue[T]) -> None:
        self._queue = queue

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        self._queue._attach(subscriber)

    def __repr__(self) -> str:
        return f"{self._queue!r}.flow"
