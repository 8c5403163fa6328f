"""``Flow[T]``: the fluent, fully typed face of reactive_bp.

Every method is a one-line delegation to the module that implements it; the
docstrings here are the user documentation (marble diagram, ``Demand:``,
``Cancellation:``, ``Errors:``). Marble legend: ``-`` time, ``a``.. items,
``|`` completion, ``X`` error, ``^`` subscribe, ``!`` cancel.
"""

from __future__ import annotations

import asyncio
import random as random_module
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Generator,
    Iterable,
)
from typing import TYPE_CHECKING, Generic, Literal, TypeVar, overload

from ._core._push import OverflowStrategy, WaterMarks

if TYPE_CHECKING:
    import reactivex

    from .abc import Publisher, Subscriber, Subscription
    from .metrics import BackpressureMeter
    from .operators._grouping import GroupedFlow
    from .operators._retry import Backoff, RetryOn, RetryPolicy
    from .processors._connectable import ConnectableFlow
    from .processors._multicast import SlowSubscriberPolicy
    from .schedulers import Scheduler
    from .sources._generate import SynchronousSink
    from .sources._push import Emitter
    from .subscribers._base import RequestPolicy, SignalType
    from .subscribers._lambda import Disposable

__all__ = ["Flow"]

T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")
R = TypeVar("R")
A = TypeVar("A")
S = TypeVar("S")
K = TypeVar("K")


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE = _NoValue()


def _newest(previous: U, item: U) -> U:
    return item


class Flow(Generic[T_co]):
    """A cold publisher of ``T_co`` with operators that honour demand.

    ``Flow`` implements :class:`reactive_bp.abc.Publisher`. Subclasses implement
    ``_subscribe``; users build flows with the static sources and operators.
    """

    __slots__ = ()

    # -- Publisher -------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber[T_co]) -> None:
        """Attach ``subscriber``; ``subscribe(None)`` raises ``TypeError`` (Rule 1.9).

        ::

            subscribe(s):  ^ s.on_subscribe(subscription), then s.on_next(a).. as s requests

        Demand: nothing is sent before ``subscriber`` calls ``request(n)`` on the
        subscription it was given, and never more than it requested (Rule 1.1).

        Cancellation: ``subscription.cancel()`` stops the flow.

        Errors: ``subscribe(None)`` raises ``TypeError``; everything else reaches
        ``subscriber.on_error``.
        """
        if subscriber is None:
            raise TypeError("Rule 1.9: subscribe(None) is not allowed")
        self._subscribe(subscriber)

    def _subscribe(self, subscriber: Subscriber[T_co]) -> None:
        raise NotImplementedError

    # -- sources ---------------------------------------------------------------

    @staticmethod
    def from_iterable(iterable: Iterable[U]) -> Flow[U]:
        """Emit the items of ``iterable``, pulling only as many as requested.

        ::

            from_iterable([a, b, c]):  ^-a-b-c-|

        Demand: ``next()`` is called once per requested item, never ahead.
        Each subscriber gets its own ``iter(iterable)``: a list replays, a
        generator is shared (the second subscriber sees what is left).

        Cancellation: the iterator is closed (a generator's ``finally`` runs).

        Errors: an exception from the iterator becomes ``on_error``; a ``None``
        item becomes ``on_error(NoneItemError)`` naming the source.

        Example:
            >>> Flow.from_iterable([1, 2, 3]).to_list()
            [1, 2, 3]
        """
        return _iterable.IterableFlow(iterable)

    @staticmethod
    def range(start: int, stop: int | None = None, step: int = 1) -> Flow[int]:
        """Emit ``range(start, stop, step)`` (Python's semantics, not Reactor's count).

        ::

            range(0, 3):  ^-0-1-2-|

        Demand: one number per requested item.

        Example:
            >>> Flow.range(3).to_list()
            [0, 1, 2]
        """
        numbers = range(start) if stop is None else range(start, stop, step)
        return _iterable.IterableFlow(numbers, "range")

    @staticmethod
    def just(*items: U) -> Flow[U]:
        """Emit the given items, then complete.

        ::

            just(a, b):  ^-a-b-|

        Demand: one item per requested item; completes once all were sent.

        Errors: ``just(None)`` raises ``TypeError`` at once: ``None`` is not an item.

        Example:
            >>> Flow.just("a", "b").to_list()
            ['a', 'b']
        """
        if any(item is None for item in items):
            raise TypeError("Flow.just(): None is not a valid item (Rule 2.13)")
        return _iterable.IterableFlow(items, "just")

    @staticmethod
    def empty() -> Flow[U]:
        """Complete at once, without waiting for demand.

        ::

            empty():  ^|

        Demand: none needed; completion is sent at once (Rule 1.2).
        """
        return _simple.EmptyFlow()

    @staticmethod
    def error(error: Exception) -> Flow[U]:
        """Fail at once with ``error``, without waiting for demand.

        ::

            error(e):  ^X

        Demand: none needed; the error is sent at once (Rule 1.4).
        """
        return _simple.ErrorFlow(error)

    @staticmethod
    def never() -> Flow[U]:
        """Never emit, never terminate (demand is still validated, Rule 3.9).

        ::

            never():  ^--------

        Demand: validated and ignored.
        """
        return _simple.NeverFlow()

    @staticmethod
    def defer(factory: Callable[[], Publisher[U]]) -> Flow[U]:
        """Call ``factory`` for each subscriber and relay the publisher it returns.

        ::

            defer(f):  ^ f() -> ^-a-b-|   gives   ^-a-b-|

        Demand: passed straight to the publisher ``factory`` returned.

        Errors: a raising factory, or one returning ``None``, becomes ``on_error``.
        """
        return _simple.DeferFlow(factory)

    @staticmethod
    def generate(
        initial_state: Callable[[], S],
        generator: Callable[[S, SynchronousSink[U]], S],
        on_dispose: Callable[[S], object] | None = None,
    ) -> Flow[U]:
        """Produce items by calling ``generator(state, sink)`` once per requested item.

        Each call must ``sink.next(item)`` once, or end the stream with
        ``sink.complete()`` / ``sink.error(exc)`` (after an optional item); it
        returns the next state. ``initial_state()`` runs once per subscriber;
        ``on_dispose(state)`` runs on completion, error or cancel.

        ::

            generate(lambda: 0, step):  ^-0-1-2-...

        Demand: the generator is called exactly once per requested item.

        Example:
            >>> def step(n: int, sink: SynchronousSink[int]) -> int:
            ...     sink.next(n)
            ...     if n == 2:
            ...         sink.complete()
            ...     return n + 1
            >>> Flow.generate(lambda: 0, step).to_list()
            [0, 1, 2]
        """
        return _generate.GenerateFlow(initial_state, generator, on_dispose)

    @staticmethod
    def from_publisher(publisher: Publisher[U]) -> Flow[U]:
        """Adopt any Reactive Streams publisher (a ``Flow`` is returned unchanged).

        A third-party publisher is guarded: a rule it breaks (over-delivery,
        signals after a terminal, ``None`` items, overlapping signals, a bad
        ``request`` it would raise from) becomes a clean ``on_error`` downstream
        and a report to the undeliverable hook.

        ::

            publisher:  ^-a-b-|   from_publisher   ^-a-b-|

        Demand: validated here (Rule 3.9), then passed to the publisher 1:1;
        delivery beyond it is an error (Rule 1.1).
        """
        if isinstance(publisher, Flow):
            return publisher
        return _publisher.PublisherFlow(publisher)

    @staticmethod
    def interval(
        period: float, scheduler: Scheduler | None = None, initial_delay: float | None = None
    ) -> Flow[int]:
        """Emit the tick numbers 0, 1, 2, ... every ``period`` seconds, forever.

        ::

            period 1, request(unbounded):  ^---0---1---2---3--->
            no demand during ticks 1-3:    ^---0-----------(3)  (request(1) at once gets 3)

        Demand: a clock cannot be slowed, so a tick that finds no demand is
        held, never an error. At most one tick is held: a newer tick replaces
        an undelivered one (it is *coalesced*), and a request delivers the
        held tick at once. The numbers count every tick, so a gap (0, 1, 5)
        says exactly how many ticks were coalesced (2, 3, 4).

        Cancellation: stops the periodic timer.

        Errors: only a Rule 3.9 request. The timer runs on ``scheduler``
        (default: the shared timer thread, which exits when idle); the first
        tick comes after ``initial_delay`` (default ``period``).

        Example:
            >>> from reactive_bp.schedulers import VirtualTimeScheduler
            >>> vts = VirtualTimeScheduler()
            >>> seen: list[int] = []
            >>> _ = Flow.interval(1.0, scheduler=vts).take(3).subscribe_with(seen.append)
            >>> vts.advance_by(5)
            >>> seen
            [0, 1, 2]
        """
        from .sources import _time

        return _time.IntervalFlow(period, scheduler, initial_delay)

    @staticmethod
    def timer(delay: float, scheduler: Scheduler | None = None) -> Flow[int]:
        """Emit ``0`` after ``delay`` seconds, then complete.

        ::

            delay 2:   ^-------0|
            no demand: ^-------.....0|   (0 waits for request(1), then completes)

        Demand: the item is held from the deadline until it is requested.

        Cancellation: cancels the pending timer.

        Errors: only a Rule 3.9 request.
        """
        from .sources import _time

        return _time.TimerFlow(delay, scheduler)

    @staticmethod
    def from_async_iterable(
        iterable: AsyncIterable[U], loop: asyncio.AbstractEventLoop | None = None
    ) -> Flow[U]:
        """Emit the items of an async iterable, calling ``__anext__`` only while there is demand.

        ::

            async generator a b c   from_async_iterable   ^-a-b-c-|

        Demand: one ``__anext__`` per requested item, awaited in one task on
        ``loop`` (default: the loop running when ``subscribe`` is called);
        with a conditional downstream (``filter``) a rejected item consumes no
        demand, as with ``from_iterable``. ``request`` may come from any
        thread; a bad ``request`` (Rule 3.9) cuts in within 64 pulls.
        ``map``/``filter``/``skip``/``skip_while``/``take_while``/``take``
        right after it are fused into it (one async generator, same
        semantics), and ``aiter()`` of it pulls one item per item consumed,
        without a pump task (unless ``loop`` is another loop than the running one).

        Cancellation: the pump task is cancelled and the iterator ``aclose``d.

        Errors: an exception from ``__anext__`` becomes ``on_error``; ``None``
        becomes ``on_error(NoneItemError)``.
        """
        return _async.AsyncIterableFlow(iterable, loop)

    @staticmethod
    def from_queue(
        queue: asyncio.Queue[U | None], loop: asyncio.AbstractEventLoop | None = None
    ) -> Flow[U]:
        """Emit what is put into an ``asyncio.Queue``; putting ``None`` completes the flow.

        ::

            queue.put(a); queue.put(b); queue.put(None)   from_queue   ^-a-b-|

        Demand: one ``await queue.get()`` per requested item, so a bounded
        queue (``maxsize``) holds its producers back while downstream is slow.
        ``None`` is never an item, which is why it marks the end.
        """
        return _async.AsyncIterableFlow(_async.queue_items(queue), loop, "from_queue")

    @staticmethod
    def from_observable(
        observable: reactivex.Observable[U],
        capacity: int = 256,
        overflow: OverflowStrategy | None = None,
        on_dropped: Callable[[U], object] | None = None,
    ) -> Flow[U]:
        """Adopt a reactivex Observable (the ``rx`` extra) behind a bounded buffer.

        ::

            observable a b c d   from_observable(capacity=2, DROP_OLDEST)   ^---c-d-|

        Demand: an Observable cannot be slowed down, so its items wait in a
        buffer of ``capacity``; when it is full, ``overflow`` (default
        ``ERROR``) decides, and every dropped item goes to ``on_dropped`` and is
        counted. ``WAIT`` is refused: it would block the Observable's thread.

        Cancellation: disposes the Observable subscription.
        """
        strategy = OverflowStrategy.ERROR if overflow is None else overflow
        return _rx.from_observable(observable, capacity, strategy, on_dropped)

    @staticmethod
    def create(
        producer: Callable[[Emitter[U]], object],
        capacity: int = 256,
        overflow: OverflowStrategy | None = None,
        on_dropped: Callable[[U], object] | None = None,
        *,
        water_marks: WaterMarks | None = None,
        meter: BackpressureMeter | None = None,
    ) -> Flow[U]:
        """Bridge a producer that pushes (callbacks, sockets, threads) into a flow.

        ``producer(emitter)`` runs once per subscriber, right after
        ``on_subscribe``; it calls ``emitter.emit(item)``, ``complete()`` and
        ``error(exc)``, may read ``emitter.requested`` and register
        ``on_request(cb)`` / ``on_cancel(cb)``. A coroutine function producer
        runs as a task on the subscriber's running loop and should ``await
        emitter.send(item)``.

        ::

            producer pushes a b c d   create(capacity=2, DROP_NEWEST)   ^-a-b---|  (c, d dropped)

        Demand: items wait in a buffer of ``capacity`` until downstream
        requests them. When it is full, ``overflow`` decides (default
        ``OverflowStrategy.ERROR``): ``ERROR`` fails the stream with
        ``BufferOverflowError`` after the buffered items, ``DROP_NEWEST`` /
        ``DROP_OLDEST`` / ``LATEST`` drop (every dropped item goes to
        ``on_dropped`` and is counted in ``emitter.stats``), ``WAIT`` holds the
        producer (blocking ``emit``, awaitable ``send``). An unbounded buffer
        exists only as ``OverflowStrategy.UNBOUNDED_BUFFER``.

        Cancellation: ``emitter.is_cancelled`` turns true, ``on_cancel``
        callbacks run, a coroutine producer's task is cancelled.

        ``water_marks`` (a ``WaterMarks``) watches the buffer's depth with
        hysteresis, so the producer (or an autoscaler) can react to pressure.
        ``meter`` (a ``BackpressureMeter``) follows each subscription's
        ``emitter.stats``, readable from outside the producer
        (``meter.stats``) and exportable to Prometheus.

        Errors: a producer that raises fails the stream.

        Example:
            >>> from reactive_bp import BackpressureMeter
            >>> from reactive_bp.testing import TestSubscriber
            >>> def burst(emitter: Emitter[int]) -> None:  # ten at once, cannot wait
            ...     for i in range(10):
            ...         emitter.emit(i)
            ...     emitter.complete()
            >>> meter = BackpressureMeter("burst")
            >>> late: TestSubscriber[int] = TestSubscriber()  # nothing requested yet
            >>> Flow.create(burst, 4, OverflowStrategy.DROP_OLDEST, meter=meter).subscribe(late)
            >>> late.request(10)
            >>> late.items, meter.stats.dropped_by_reason
            ([6, 7, 8, 9], {'drop_oldest': 6})
        """
        strategy = OverflowStrategy.ERROR if overflow is None else overflow
        return _push.CreateFlow(producer, capacity, strategy, on_dropped, water_marks, meter)

    # -- composition -------------------------------------------------------------

    def lift(self, operator: Callable[[Subscriber[R]], Subscriber[T_co]]) -> Flow[R]:
        """Apply a subscriber-level operator (usually an ``OperatorSubscriber`` subclass).

        ``operator`` receives the downstream subscriber and returns the
        subscriber that is attached upstream.

        ::

            lift(op):  this flow -> op(downstream) -> downstream

        Demand: whatever ``operator``'s subscriber asks upstream; an
        ``OperatorSubscriber`` passes ``request`` through unless its hooks change it.

        Example:
            >>> class Double(OperatorSubscriber[int, int]):
            ...     def hook_on_next(self, item: int) -> None:
            ...         self.emit(item * 2)
            >>> Flow.range(3).lift(Double).to_list()
            [0, 2, 4]
        """
        return _lift.LiftFlow(self, operator)

    @overload
    def pipe(self) -> Flow[T_co]: ...
    @overload
    def pipe(self, op1: Callable[[Flow[T_co]], Flow[A]], /) -> Flow[A]: ...
    @overload
    def pipe(
        self, op1: Callable[[Flow[T_co]], Flow[A]], op2: Callable[[Flow[A]], Flow[R]], /
    ) -> Flow[R]: ...
    @overload
    def pipe(
        self,
        op1: Callable[[Flow[T_co]], Flow[A]],
        op2: Callable[[Flow[A]], Flow[S]],
        op3: Callable[[Flow[S]], Flow[R]],
        /,
    ) -> Flow[R]: ...
    @overload
    def pipe(
        self,
        op1: Callable[[Flow[T_co]], Flow[A]],
        op2: Callable[[Flow[A]], Flow[S]],
        op3: Callable[[Flow[S]], Flow[U]],
        op4: Callable[[Flow[U]], Flow[R]],
        /,
    ) -> Flow[R]: ...
    def pipe(self, *operators: Callable[[Flow[object]], Flow[object]]) -> Flow[object]:  # type: ignore[misc]
        """Chain flow-to-flow functions, so user-written operators read like built-ins.

        ::

            flow.pipe(f, g)  ==  g(f(flow))

        Demand: that of the flows the functions build; ``pipe`` adds no stage.

        Example:
            >>> def doubled(flow: Flow[int]) -> Flow[int]:
            ...     return flow.map(lambda x: x * 2)
            >>> Flow.range(3).pipe(doubled, doubled).to_list()
            [0, 4, 8]
        """
        flow: Flow[object] = self
        for operator in operators:
            flow = operator(flow)
        return flow

    # -- transforming ------------------------------------------------------------

    def map(self, mapper: Callable[[T_co], R]) -> Flow[R]:
        """Transform each item with ``mapper``.

        ::

            ^-1-2-3-|  map(x * 10)  ^-10-20-30-|

        Demand: 1:1, passed straight upstream.

        Errors: a raising ``mapper`` cancels upstream and becomes ``on_error``;
        one returning ``None`` does the same with ``NoneItemError``.

        Example:
            >>> Flow.range(3).map(lambda x: x * 10).to_list()
            [0, 10, 20]
        """
        return _transform.map_(self, mapper)

    def filter(self, predicate: Callable[[T_co], object]) -> Flow[T_co]:
        """Keep the items for which ``predicate`` is truthy.

        ::

            ^-1-2-3-4-|  filter(even)  ^---2---4-|

        Demand: passed upstream 1:1; each rejected item asks upstream for one
        more, so downstream still receives what it requested.

        Errors: a raising ``predicate`` cancels upstream and becomes ``on_error``.

        Example:
            >>> Flow.range(6).filter(lambda x: x % 2 == 0).to_list()
            [0, 2, 4]
        """
        return _filtering.filter_(self, predicate)

    def take(self, count: int) -> Flow[T_co]:
        """Emit the first ``count`` items, then cancel upstream and complete.

        ::

            ^-1-2-3-4-|  take(2)  ^-1-2|

        Demand: capped: upstream is never asked for more than ``count`` in
        total, whatever downstream requests (so an unbounded request through
        ``take(3)`` pulls 3 items from upstream, not 2**63-1).

        Errors: ``count < 0`` raises ``ValueError`` at once.

        Example:
            >>> Flow.range(10).take(3).to_list()
            [0, 1, 2]
        """
        return _filtering.take(self, count)

    def skip(self, count: int) -> Flow[T_co]:
        """Drop the first ``count`` items.

        ::

            ^-1-2-3-4-|  skip(2)  ^-----3-4-|

        Demand: each skipped item asks upstream for one more.

        Example:
            >>> Flow.range(5).skip(3).to_list()
            [3, 4]
        """
        return _filtering.skip(self, count)

    def take_while(self, predicate: Callable[[T_co], object]) -> Flow[T_co]:
        """Emit items while ``predicate`` holds; at the first that fails, cancel and complete.

        ::

            ^-1-2-5-1-|  take_while(x < 3)  ^-1-2-|

        Demand: 1:1. Example:
            >>> Flow.range(10).take_while(lambda x: x < 3).to_list()
            [0, 1, 2]
        """
        return _filtering.take_while(self, predicate)

    def skip_while(self, predicate: Callable[[T_co], object]) -> Flow[T_co]:
        """Drop items while ``predicate`` holds, then emit everything.

        ::

            ^-1-2-5-1-|  skip_while(x < 3)  ^-----5-1-|

        Demand: each skipped item asks upstream for one more. Example:
            >>> Flow.just(1, 2, 5, 1).skip_while(lambda x: x < 3).to_list()
            [5, 1]
        """
        return _filtering.skip_while(self, predicate)

    def distinct_until_changed(self, key: Callable[[T_co], object] | None = None) -> Flow[T_co]:
        """Drop items equal (by ``key``, default the item) to the one just emitted.

        ::

            ^-1-1-2-2-1-|  distinct_until_changed()  ^-1---2---1-|

        Demand: each dropped item asks upstream for one more. Example:
            >>> Flow.just(1, 1, 2, 2, 1).distinct_until_changed().to_list()
            [1, 2, 1]
        """
        return _filtering.distinct_until_changed(self, key)

    @overload
    def scan(self, accumulator: Callable[[T_co, T_co], T_co]) -> Flow[T_co]: ...
    @overload
    def scan(self, accumulator: Callable[[A, T_co], A], seed: A) -> Flow[A]: ...
    def scan(self, accumulator: Callable[[A, T_co], A], seed: object = NO_VALUE) -> Flow[A]:
        """Emit every intermediate result of folding the items with ``accumulator``.

        Without a seed the first item is emitted as is; with a seed, the seed is
        emitted first (as in ``itertools.accumulate(initial=...)``, Reactor and RxJava).

        ::

            ^-1-2-3-|  scan(+)     ^-1-3-6-|
            ^-1-2-3-|  scan(+, 0)  ^0-1-3-6-|

        Demand: 1:1 (the seed takes one unit of the first request).

        Example:
            >>> Flow.range(1, 4).scan(lambda acc, x: acc + x).to_list()
            [1, 3, 6]
        """
        return _transform.scan(self, accumulator, seed)

    @overload
    def reduce(self, accumulator: Callable[[T_co, T_co], T_co]) -> Flow[T_co]: ...
    @overload
    def reduce(self, accumulator: Callable[[A, T_co], A], seed: A) -> Flow[A]: ...
    def reduce(self, accumulator: Callable[[A, T_co], A], seed: object = NO_VALUE) -> Flow[A]:
        """Fold all items into one, emitted when upstream completes.

        ::

            ^-1-2-3-|  reduce(+)  ^-------6|

        Demand: unbounded by design: upstream is asked for everything at once
        (it all folds into one value, so nothing accumulates). The one result
        waits for downstream demand. An empty upstream gives the seed, or just
        completion when there is no seed.

        Example:
            >>> Flow.range(1, 4).reduce(lambda acc, x: acc + x).to_list()
            [6]
        """
        return _aggregate.reduce(self, accumulator, seed)

    def buffer(self, count: int) -> Flow[list[T_co]]:
        """Collect items into lists of ``count`` (the last one may be shorter).

        ::

            ^-1-2-3-4-5-|  buffer(2)  ^---[1,2]---[3,4]-[5]|

        Demand: one requested list asks upstream for ``count`` items.

        Example:
            >>> Flow.range(5).buffer(2).to_list()
            [[0, 1], [2, 3], [4]]
        """
        return _transform.buffer(self, count)

    # -- splitting: groups and windows ----------------------------------------------------

    def group_by(
        self,
        key: Callable[[T_co], K],
        max_groups: int = 1024,
        group_buffer: int = 256,
    ) -> Flow[GroupedFlow[K, T_co]]:
        """Split items by ``key`` into groups: one ``GroupedFlow`` per key, emitted when first seen.

        ::

            ^-a1-b1-a2-b2-|   group_by(letter)   ^-A-----B--------|
                                                   A: a1----a2----|
                                                   B:    b1----b2-|

        Each group is a ``Flow`` with ``.key`` that accepts one subscriber (a
        second gets ``on_error(AlreadySubscribedError)``) and holds its items
        in a queue of at most ``group_buffer`` until they are requested. A
        key may be any hashable value, ``None`` included.

        Demand: a new group is emitted only against outer demand; until then
        it waits with its first item and upstream is not asked for anything.
        Upstream is asked for at most ``group_buffer`` items ahead, and only
        what the fullest open group has room for (for every open group,
        queued + outstanding upstream <= ``group_buffer``; requests come in
        batches of 75%), so memory is at most ``max_groups * group_buffer``
        items and nothing is requested before the outer's first request.
        The known ``groupBy`` hang follows, by design: a group that is not
        consumed (never subscribed, or not requesting) pauses the whole
        source once its queue is full, and a new group waits for outer
        demand. Remedy: consume every group, e.g. ``flat_map`` with
        ``max_concurrency`` >= the number of keys (or ``take``/cancel groups
        that are done), or bound the keys with ``max_groups``.

        Cancellation: a group that cancels is removed (its queued items are
        dropped); a later item with its key opens a new group. Cancelling
        the outer drops the groups not yet emitted; emitted groups that have
        a subscriber run on until they end or cancel (Reactor's semantics),
        and items with a new key are dropped meanwhile. Once no group with a
        subscriber is left, upstream is cancelled and groups nobody
        subscribed to are dropped (a later subscriber gets
        ``AlreadySubscribedError``).

        Errors: an upstream error, a ``key`` that raises (or returns an
        unhashable value) and a new key beyond ``max_groups``
        (``TooManyGroupsError``) reach the outer and every open group, cutting
        ahead of queued items; the last two cancel upstream. Completion
        reaches every group after its queued items.

        Example:
            >>> Flow.range(6).group_by(lambda x: x % 2).flat_map(
            ...     lambda g: g.buffer(3).map(lambda xs: (g.key, xs))
            ... ).to_list()
            [(0, [0, 2, 4]), (1, [1, 3, 5])]
        """
        from .operators import _grouping

        return _grouping.group_by(self, key, max_groups, group_buffer)

    def window(self, count: int) -> Flow[Flow[T_co]]:
        """Split items into consecutive windows of ``count`` (the last may be shorter).

        ::

            ^-1-2-3-4-5-|   window(2)   ^-W------W------W-|
                                          W: 1-2|
                                                 3-4|
                                                        5|

        A window opens with its first item (never empty) and completes after
        its ``count``-th; it is a ``Flow`` that accepts one subscriber (a
        second gets ``on_error(AlreadySubscribedError)``).

        Demand: a new window's ``count`` items are asked for only when the
        outer has demand for it, so upstream is never more than ``count``
        items ahead; each window holds at most ``count`` items until its
        subscriber requests them. A window nobody consumes fills up and
        closes: it does not stop the next one.

        Cancellation: a window that cancels keeps its place (the rest of its
        items are dropped), so boundaries never move. Cancelling the outer
        lets the open window run to its end if it has a subscriber (one
        without is dropped), then cancels upstream.

        Errors: an upstream error reaches the outer and the open window,
        cutting ahead of queued items; closed windows are complete.

        Example:
            >>> Flow.range(5).window(2).concat_map(lambda w: w.buffer(2)).to_list()
            [[0, 1], [2, 3], [4]]
        """
        from .operators import _grouping

        return _grouping.window(self, count)

    def window_timeout(
        self, max_size: int, max_time: float, scheduler: Scheduler | None = None
    ) -> Flow[Flow[T_co]]:
        """Split items into windows of at most ``max_size``, each open at most ``max_time`` seconds.

        ::

            ^-a-b-c-d----e------|   window_timeout(3, 2s)   ^-W-----W----W--|
                                                              W: a-b-c|
                                                                    d--|
                                                                         e-|

        A window opens with its first item (never empty) and completes when
        it holds ``max_size`` items or ``max_time`` after it opened,
        whichever comes first (Reactor's ``windowTimeout``, without empty
        windows). Each window accepts one subscriber.

        Demand: as ``window``: the next window's ``max_size`` items are asked
        for only when the outer has demand for it, so upstream is never more
        than ``max_size`` items ahead, and each window holds at most
        ``max_size`` items. With backpressure, closing on time never fails
        or drops anything for lack of outer demand: a window due to close
        closes; items already requested then open the next window, which
        waits (with its clock running) until the outer asks for it, and
        nothing more is requested meanwhile.

        Cancellation: as ``window``; the timer is cancelled once no window
        can use it.

        Errors: an upstream error reaches the outer and the open window,
        cutting ahead of queued items; a clock that cannot run (a
        ``ThreadPoolScheduler`` that shut down) fails the stream with its
        ``RejectedExecutionError``.

        Example:
            >>> from reactive_bp.schedulers import VirtualTimeScheduler
            >>> windows = Flow.range(5).window_timeout(2, 1.0, VirtualTimeScheduler())
            >>> windows.concat_map(lambda w: w.buffer(2)).to_list()
            [[0, 1], [2, 3], [4]]
        """
        from .operators import _grouping

        return _grouping.window_timeout(self, max_size, max_time, scheduler)

    # -- combining ---------------------------------------------------------------------

    def flat_map(
        self,
        mapper: Callable[[T_co], Publisher[R]],
        max_concurrency: int = 256,
        prefetch: int = 32,
    ) -> Flow[R]:
        """Map each item to a publisher and merge their items as they arrive.

        ::

            ^-a-----b-----|   flat_map(x -> x1-x2|)   ^-a1-a2-b1-b2-|

        Demand: at most ``max_concurrency`` inner publishers are subscribed at
        once (upstream is asked for that many items, then one more per inner
        that completes); each inner is asked for ``prefetch`` items and
        replenished at 75%; items reach downstream only against its demand.

        Cancellation: cancels upstream and every active inner.

        Errors: the first error from upstream, an inner or ``mapper`` cancels
        everything else and is signalled once.
        """
        from .operators import _combining

        return _combining.flat_map(self, mapper, max_concurrency, prefetch)

    def concat_map(self, mapper: Callable[[T_co], Publisher[R]], prefetch: int = 2) -> Flow[R]:
        """Map each item to a publisher and relay them one after another, in order.

        ::

            ^-a-b-|   concat_map(x -> x1-x2|)   ^-a1-a2-b1-b2-|

        Demand: one inner at a time; the inner gets exactly the outstanding
        downstream demand; upstream is asked for ``prefetch`` items ahead.
        """
        from .operators import _combining

        return _combining.concat_map(self, mapper, prefetch)

    @staticmethod
    def merge(*sources: Publisher[U], max_concurrency: int = 256, prefetch: int = 32) -> Flow[U]:
        """Relay the items of all ``sources`` as they arrive, interleaved.

        ::

            ^-a---b-|
            ^---1---2-|   merge   ^-a-1-b-2-|

        Demand: each source is asked for ``prefetch`` items and replenished at
        75%; items reach downstream only against its demand.
        """
        from .operators import _combining

        return _combining.merge(sources, max_concurrency, prefetch)

    @staticmethod
    def concat(*sources: Publisher[U]) -> Flow[U]:
        """Relay ``sources`` one after another; the next is subscribed when one completes.

        ::

            ^-a-b-|  ^-1-2-|   concat   ^-a-b-1-2-|

        Demand: the outstanding downstream demand carries over from one
        source to the next.
        """
        from .operators import _combining

        return _combining.concat(sources)

    @overload
    @staticmethod
    def zip(s1: Publisher[U], s2: Publisher[R], /, *, prefetch: int = 32) -> Flow[tuple[U, R]]: ...
    @overload
    @staticmethod
    def zip(
        s1: Publisher[U], s2: Publisher[R], s3: Publisher[A], /, *, prefetch: int = 32
    ) -> Flow[tuple[U, R, A]]: ...
    @overload
    @staticmethod
    def zip(*sources: Publisher[U], prefetch: int = 32) -> Flow[tuple[U, ...]]: ...
    @staticmethod
    def zip(*sources: Publisher[object], prefetch: int = 32) -> Flow[tuple[object, ...]]:
        """Pair the n-th items of every source into a tuple.

        ::

            ^-a---b---c-|
            ^---1---2-|     zip   ^---(a,1)-(b,2)-|

        Demand: each source is asked for ``prefetch`` items and replenished at
        75%; a tuple is emitted only against downstream demand. Completes when
        any source completes with nothing left queued.
        """
        from .operators import _combining

        return _combining.zip_(sources, prefetch)

    def merge_with(
        self, *others: Publisher[U], max_concurrency: int = 256, prefetch: int = 32
    ) -> Flow[T_co | U]:
        """This flow's items and those of ``others``, interleaved as they arrive.

        ::

            ^-a---b-|
            ^---1---2-|   merge_with   ^-a-1-b-2-|

        The instance form of ``Flow.merge(self, *others)`` (``a.merge(b)``
        raises ``TypeError``: through an instance, a static ``merge`` would
        silently leave ``a`` out).

        Demand: as ``merge``: each source is asked for ``prefetch`` items and
        replenished at 75%; items reach downstream only against its demand.

        Example:
            >>> sorted(Flow.range(2).merge_with(Flow.range(10, 12)).to_list())
            [0, 1, 10, 11]
        """
        return Flow.merge(self, *others, max_concurrency=max_concurrency, prefetch=prefetch)

    def concat_with(self, *others: Publisher[U]) -> Flow[T_co | U]:
        """This flow's items, then those of each of ``others`` in turn.

        ::

            ^-a-b-|  ^-1-2-|   concat_with   ^-a-b-1-2-|

        The instance form of ``Flow.concat(self, *others)``.

        Demand: as ``concat``: the outstanding downstream demand carries over
        from one source to the next.

        Example:
            >>> Flow.range(2).concat_with(Flow.just(7)).to_list()
            [0, 1, 7]
        """
        return Flow.concat(self, *others)

    def zip_with(self, other: Publisher[U], prefetch: int = 32) -> Flow[tuple[T_co, U]]:
        """Pair this flow's n-th item with ``other``'s n-th item.

        ::

            ^-a---b---c-|
            ^---1---2-|     zip_with   ^---(a,1)-(b,2)-|

        The instance form of ``Flow.zip(self, other)``.

        Demand: as ``zip``: each source is asked for ``prefetch`` items and
        replenished at 75%; a pair is emitted only against downstream demand.

        Example:
            >>> Flow.just("a", "b").zip_with(Flow.range(5)).to_list()
            [('a', 0), ('b', 1)]
        """
        return Flow.zip(self, other, prefetch=prefetch)

    # -- fan-out for work distribution -------------------------------------------------

    def balance(self, n: int, buffer_size: int = 16) -> list[Flow[T_co]]:
        """Split the items among ``n`` outputs: each item goes to exactly one that has demand.

        ::

            ^-a-b-c-d-e-|   balance(2)   out 0:  ^-a---c-d---|   (requests 3)
                                         out 1:  ^---b-----e-|   (requests 2)

        Akka's ``Balance``: work distribution over competing consumers. Each
        output is a ``Flow`` for one subscriber; an item goes to an output
        that requested it (round-robin among those that did), never to two,
        and nothing is lost: items an output took but could not deliver (it
        cancelled mid-batch) go to the others. The list is single-use: one
        upstream subscription shared by the ``n`` outputs.

        Demand: the upstream is subscribed once every output has a subscriber
        (as an Akka graph runs once it is fully connected: otherwise a cold
        source would hand everything to whichever output came first; an
        output that is never subscribed therefore holds everything back).
        It is then asked for what the outputs requested plus ``buffer_size``
        items of prefetch, at most ``2 * buffer_size`` (at least 1) requested
        or queued at once: total upstream demand never exceeds the sum of the
        outputs' demand plus ``buffer_size``. ``buffer_size=0`` asks only for
        what outputs requested, one item at a time.

        Cancellation: an output that cancels stops receiving, the others go
        on; when every output has cancelled, upstream is cancelled. A second
        subscriber to an output receives ``AlreadySubscribedError``.

        Errors: an upstream error reaches every live output at once, without
        demand (queued items are discarded); completion reaches each output
        once the queued items were taken. An output's bad ``request`` (Rule
        3.9) or raising ``on_next`` fails only that output.

        Example:
            >>> first, second = Flow.range(6).balance(2)
            >>> a, b = TestSubscriber(), TestSubscriber()
            >>> first.subscribe(a); second.subscribe(b)
            >>> a.request(4); b.request(10)
            >>> sorted(a.items + b.items), len(a.items) <= 4
            ([0, 1, 2, 3, 4, 5], True)
        """
        from .operators import _balance

        return _balance.balance(self, n, buffer_size)

    # -- errors -----------------------------------------------------------------------

    def on_error_resume(
        self,
        fallback: Callable[[Exception], Publisher[U]],
        when: type[Exception] | tuple[type[Exception], ...] = Exception,
    ) -> Flow[T_co | U]:
        """On an error matching ``when``, continue with ``fallback(error)``.

        ::

            ^-a-b-X          on_error_resume(e -> 1-2|)   ^-a-b-1-2-|

        Demand: the outstanding downstream demand carries over to the fallback.

        Errors: a raising ``fallback`` is signalled, with the original error as
        its ``__context__``; a non-matching error passes through.
        """
        from .operators import _errors

        return _errors.on_error_resume(self, fallback, when)

    def on_error_return(
        self,
        value: U,
        when: type[Exception] | tuple[type[Exception], ...] = Exception,
    ) -> Flow[T_co | U]:
        """On an error matching ``when``, emit ``value`` (once demand allows) and complete.

        ::

            ^-a-b-X   on_error_return(z)   ^-a-b-z|

        Demand: 1:1 until the error; then ``value`` waits for demand.
        """
        from .operators import _errors

        return _errors.on_error_return(self, value, when)

    # -- rate ---------------------------------------------------------------------------

    def limit_rate(self, high: int, low: int | None = None) -> Flow[T_co]:
        """Cap upstream demand: request ``high`` first, then ``low`` at a time.

        Demand: ``low`` defaults to 75% of ``high`` (Reactor's arithmetic):
        once ``low`` items have been delivered downstream, ``low`` more are
        requested upstream, so upstream never has more than ``high``
        outstanding. Items are queued (at most ``high``) and delivered against
        downstream demand.

        ::

            request(unbounded) -> limit_rate(100) -> request(100), request(75), ...
        """
        from .operators import _rate

        return _rate.limit_rate(self, high, low)

    # -- async boundaries ---------------------------------------------------------------

    def publish_on(self, scheduler: Scheduler, prefetch: int = 256) -> Flow[T_co]:
        """Continue downstream signals on ``scheduler``, through a bounded queue.

        ::

            ^-a-b-c-|  (producer thread)   publish_on(pool)   ^-a-b-c-|  (pool thread)

        Demand: upstream is asked for ``prefetch`` items, then for 75% of
        ``prefetch`` each time that many were delivered downstream; queued
        plus outstanding never exceeds ``prefetch``, so memory stays flat
        whatever the producer's speed (unlike an ``observe_on`` queue).

        Cancellation: cancels upstream and clears the queue.

        Errors: an upstream error is delivered after the queued items; a
        scheduler that refuses work, or drops it unrun (a pool shut down with
        the drain queued), fails the stream with its error
        (``RejectedExecutionError``, naming the scheduler), cutting ahead.
        """
        from .operators import _scheduling

        return _scheduling.publish_on(self, scheduler, prefetch)

    def subscribe_on(self, scheduler: Scheduler) -> Flow[T_co]:
        """Subscribe, and make every ``request``, on ``scheduler``.

        ::

            ^-a-b-|   subscribe_on(pool)   ^-a-b-|  (the source runs on pool threads)

        Demand: passed upstream 1:1, each ``request(n)`` as a task on the
        scheduler, so a synchronous source produces there, not on the
        requesting thread. An invalid ``n`` (``0``, ``-1``, ``None``) is
        answered with ``on_error`` (Rule 3.9).

        Cancellation: cancels upstream and drops the subscriber (Rule 3.13).

        Errors: upstream errors pass through. A scheduler that refuses or
        drops the subscribe or a request (a pool shut down) cancels upstream
        and fails the stream (``RejectedExecutionError``, naming the
        scheduler); a ``subscribe`` that raises becomes ``on_error`` too.
        """
        from .operators import _scheduling

        return _scheduling.subscribe_on(self, scheduler)

    # -- side effects ----------------------------------------------------------------

    def do_on_next(self, action: Callable[[T_co], object]) -> Flow[T_co]:
        """Call ``action(item)`` for each item before passing it on.

        ::

            ^-a-b-|  do_on_next(f)  ^-a-b-|   (f(a) and f(b) ran first)

        Demand: 1:1, passed straight upstream.

        Cancellation: passed straight upstream.

        Errors: a raising ``action`` cancels upstream and becomes ``on_error``
        in place of the item.

        Example:
            >>> Flow.range(2).do_on_next(print).to_list()
            0
            1
            [0, 1]
        """
        return _side_effects.do_on_next(self, action)

    def do_on_subscribe(self, action: Callable[[Subscription], object]) -> Flow[T_co]:
        """Call ``action(subscription)`` with upstream's subscription, before downstream has one.

        ::

            ^-a-|  do_on_subscribe(f)  ^-a-|   (f(s) ran before downstream's on_subscribe)

        Demand: 1:1, passed straight upstream. ``action`` runs before
        downstream can request, so no item has flowed yet. It may cancel the
        subscription it is given, but not request: demand is downstream's
        (``request`` raises ``ProtocolViolationError``).

        Cancellation: passed straight upstream.

        Errors: a raising ``action`` (a ``request`` from it included) cancels
        upstream; downstream receives a subscription with nothing behind it,
        then ``on_error`` with the fault.

        Example:
            >>> Flow.just(1).do_on_subscribe(lambda s: print("subscribed")).to_list()
            subscribed
            [1]
        """
        return _side_effects.do_on_subscribe(self, action)

    def do_on_request(self, action: Callable[[int], object]) -> Flow[T_co]:
        """Call ``action(n)`` for each downstream ``request(n)``, then pass it upstream.

        ::

            request(3) -> do_on_request(f) -> f(3); request(3)

        Demand: 1:1, passed straight upstream after ``action`` saw it.

        Cancellation: passed straight upstream.

        Errors: a raising ``action`` is reported to the undeliverable hook and
        the request still goes through (``request`` must return normally, Rule 3.16).

        Example:
            >>> seen = []
            >>> Flow.range(3).do_on_request(seen.append).take(2).to_list()
            [0, 1]
            >>> seen
            [2]
        """
        return _side_effects.do_on_request(self, action)

    def do_on_cancel(self, action: Callable[[], object]) -> Flow[T_co]:
        """Call ``action()`` when downstream cancels, then cancel upstream.

        ::

            ^-a-b-!  do_on_cancel(f)  ^-a-b-!   (f() ran, then upstream was cancelled)

        Demand: 1:1, passed straight upstream.

        Cancellation: ``action`` runs on the first ``cancel`` only, unless the
        stream had already ended; then upstream is cancelled.

        Errors: a raising ``action`` is reported; upstream is still cancelled
        (``cancel`` must return normally, Rule 3.15).

        Example:
            >>> Flow.range(10).do_on_cancel(lambda: print("cancelled")).first()
            cancelled
            0
        """
        return _side_effects.do_on_cancel(self, action)

    def do_on_error(self, action: Callable[[Exception], object]) -> Flow[T_co]:
        """Call ``action(error)`` when upstream fails, before the error goes on.

        ::

            ^-a-b-X  do_on_error(f)  ^-a-b-X   (f(X) ran first)

        Demand: 1:1, passed straight upstream (a Rule 3.9 bad request is an
        upstream error like any other: ``action`` sees it).

        Cancellation: passed straight upstream; ``action`` does not run.

        Errors: a raising ``action`` replaces the error: downstream receives
        the fault, with the upstream error as its ``__context__``.

        Example:
            >>> failing = Flow.concat(Flow.just(1), Flow.error(KeyError("k")))
            >>> logged = failing.do_on_error(lambda e: print("failed:", repr(e)))
            >>> logged.on_error_return(-1).to_list()
            failed: KeyError('k')
            [1, -1]
        """
        return _side_effects.do_on_error(self, action)

    def do_on_complete(self, action: Callable[[], object]) -> Flow[T_co]:
        """Call ``action()`` when upstream completes, before the completion goes on.

        ::

            ^-a-b-|  do_on_complete(f)  ^-a-b-|   (f() ran first)

        Demand: 1:1, passed straight upstream.

        Cancellation: passed straight upstream; ``action`` does not run.

        Errors: a raising ``action`` replaces the completion with ``on_error``
        (upstream is over: there is nothing to cancel). An upstream error
        passes through without calling ``action``.

        Example:
            >>> Flow.range(2).do_on_complete(lambda: print("done")).to_list()
            done
            [0, 1]
        """
        return _side_effects.do_on_complete(self, action)

    def do_on_terminate(self, action: Callable[[], object]) -> Flow[T_co]:
        """Call ``action()`` when upstream completes or fails, before that signal goes on.

        ::

            ^-a-|  do_on_terminate(f)  ^-a-|   (f() ran first)
            ^-a-X  do_on_terminate(f)  ^-a-X   (f() ran first)

        Demand: 1:1, passed straight upstream.

        Cancellation: passed straight upstream; ``action`` does not run
        (``do_finally`` runs for a cancel too).

        Errors: a raising ``action`` replaces the signal with ``on_error``
        of the fault; the upstream error, if there was one, is the fault's
        ``__context__``.

        Example:
            >>> Flow.range(2).do_on_terminate(lambda: print("over")).to_list()
            over
            [0, 1]
        """
        return _side_effects.do_on_terminate(self, action)

    def do_finally(self, action: Callable[[SignalType], object]) -> Flow[T_co]:
        """Call ``action(signal)`` once, after the stream ended for downstream.

        ``signal`` says how: ``SignalType.ON_COMPLETE`` or
        ``SignalType.ON_ERROR`` after that signal was delivered downstream,
        ``SignalType.CANCEL`` after a downstream cancel reached upstream.

        ::

            ^-a-b-|  do_finally(f)  ^-a-b-|   then f(ON_COMPLETE)
            ^-a-b-X  do_finally(f)  ^-a-b-X   then f(ON_ERROR)
            ^-a-b-!  do_finally(f)  ^-a-b-!   then f(CANCEL)

        Demand: 1:1, passed straight upstream.

        Cancellation: cancels upstream, then runs ``action(CANCEL)``.
        Exactly once even when a cancel on one thread races upstream's
        terminal signal on another: whichever comes first ends the stream
        and runs ``action``; a terminal signal that loses is not delivered
        (an error goes to the undeliverable hook, Rule 1.7). A downstream
        whose ``on_next`` or ``on_subscribe`` raises (Rule 2.13) ends it
        with ``ON_ERROR``.

        Errors: upstream errors pass through. A raising ``action`` goes to
        the undeliverable hook: the stream is already over.

        Example:
            >>> seen = []
            >>> Flow.range(3).do_finally(seen.append).to_list()
            [0, 1, 2]
            >>> Flow.range(9).do_finally(seen.append).take(1).to_list()
            [0]
            >>> [signal.name for signal in seen]
            ['ON_COMPLETE', 'CANCEL']
        """
        return _side_effects.do_finally(self, action)

    # -- time, retry and concurrency ---------------------------------------------------

    def delay(self, duration: float, scheduler: Scheduler | None = None) -> Flow[T_co]:
        """Shift every item, and the completion, ``duration`` seconds later.

        ::

            ^-a-b---c-|      delay(2)   ^---a-b---c-|
            ^-a-b-X          delay(2)   ^-X            (errors are not delayed)

        Demand: 1:1. Each downstream ``request(n)`` asks upstream for ``n``;
        an item is held for ``duration`` against demand that was already
        granted, so held items never exceed the outstanding demand.

        Cancellation: cancels upstream and the pending timer; held items are
        dropped.

        Errors: an upstream error is signalled at once, dropping held items
        (it is not delayed). Completion comes ``duration`` after upstream
        completed, so always after the last item.

        Example:
            >>> from reactive_bp.schedulers import VirtualTimeScheduler
            >>> vts = VirtualTimeScheduler()
            >>> seen: list[tuple[float, int]] = []
            >>> flow = Flow.just(1, 2).delay(0.5, scheduler=vts)
            >>> _ = flow.subscribe_with(lambda x: seen.append((vts.now(), x)))
            >>> vts.advance_by(1)
            >>> seen
            [(0.5, 1), (0.5, 2)]
        """
        from .operators import _timing

        return _timing.delay(self, duration, scheduler)

    def timeout(
        self,
        duration: float,
        fallback: Publisher[U] | None = None,
        scheduler: Scheduler | None = None,
    ) -> Flow[T_co | U]:
        """Fail with ``FlowTimeoutError`` (a ``TimeoutError``) if an item is ``duration`` late.

        ::

            ^-a--b---------       timeout(3)          ^-a--b---X
            ^-a--b---------       timeout(3, 1-2|)    ^-a--b---1-2|

        Demand: 1:1. The clock runs only while downstream waits for an item:
        it starts at subscription (or at the first request), restarts after
        each item while demand remains, and stops while there is none, so a
        slow consumer never causes a timeout. With ``fallback`` the source is
        cancelled and the fallback is asked for the outstanding demand
        (requested minus delivered).

        Cancellation: cancels the source (or the fallback) and the timer.

        Errors: upstream errors pass through; the fallback is not timed.
        """
        from .operators import _timing

        return _timing.timeout(self, duration, fallback, scheduler)

    def retry(
        self,
        max_attempts: int,
        backoff: Backoff | RetryPolicy | None = None,
        retry_on: RetryOn | None = None,
        scheduler: Scheduler | None = None,
    ) -> Flow[T_co]:
        """Re-subscribe after a matching error, at most ``max_attempts`` subscriptions in all.

        ::

            ^-a-X  ^-b-X  ^-c|    retry(3)    ^-a---b---c|
            ^-a-X  ^-b-X  ^-c-X   retry(3)    ^-a---b---c-X(RetryExhaustedError)

        ``backoff`` sets the wait before each retry (default: none), e.g.
        ``Backoff.exponential(base=0.1, factor=2.0, cap=10.0, jitter="full",
        random=random.Random(seed))`` waits ``uniform(0, min(cap, base *
        factor**k))`` before retry ``k``. Any ``RetryPolicy`` (an object with
        ``delay_for(attempt, error) -> seconds``) may stand in for a ``Backoff``
        when the wait depends on the error: ``RetryAfter`` from
        ``reactive_bp.connectors.http`` waits what a 429/503 response's
        ``Retry-After`` says, capped. ``retry_on`` (exception type(s) or a
        predicate) says which errors are retried (default: all).

        Demand: 1:1. What downstream requested and did not receive carries
        over to the next attempt; delivered items are not requested again
        (a re-subscribed source starts over, so they may be repeated).

        Cancellation: cancels the current attempt, or the pending backoff
        timer: nothing is subscribed after a cancel.

        Errors: an error ``retry_on`` rejects passes through unchanged; after
        the last attempt ``RetryExhaustedError`` is signalled, with
        ``attempts`` and the last error as ``__cause__``.
        """
        from .operators import _retry

        return _retry.retry(self, max_attempts, backoff, retry_on, scheduler)

    @overload
    def map_async(
        self,
        fn: Callable[[T_co], Awaitable[R]],
        max_concurrency: int = 4,
        ordered: bool = True,
        scheduler: Scheduler | None = None,
    ) -> Flow[R]: ...
    @overload
    def map_async(
        self,
        fn: Callable[[T_co], R],
        max_concurrency: int = 4,
        ordered: bool = True,
        scheduler: Scheduler | None = None,
    ) -> Flow[R]: ...
    def map_async(
        self,
        fn: Callable[[T_co], R] | Callable[[T_co], Awaitable[R]],
        max_concurrency: int = 4,
        ordered: bool = True,
        scheduler: Scheduler | None = None,
    ) -> Flow[R]:
        """Map with ``fn`` concurrently, never more than ``max_concurrency`` calls at once.

        ::

            ^-a-b-c-|   map_async(f, 2)                 ^---f(a)-f(b)---f(c)|
            ^-a-b-c-|   map_async(f, 2, ordered=False)  ^---f(b)-f(a)---f(c)|

        An ``async def`` ``fn`` runs as tasks on the event loop (the loop of
        an ``AsyncioScheduler`` given as ``scheduler``, else the loop running
        at subscribe time). A plain, blocking ``fn`` runs through
        ``scheduler.schedule`` (e.g. a ``ThreadPoolScheduler``) or, by
        default, on a private pool of ``max_concurrency`` threads that is shut
        down when the stream terminates or is cancelled.

        Demand: upstream is asked for ``max_concurrency`` items, then for one
        more per result delivered: requested + running + finished-but-
        undelivered never exceeds ``max_concurrency``. Results wait for
        downstream demand; ``ordered=True`` keeps input order (the reorder
        buffer holds at most ``max_concurrency`` results), ``ordered=False``
        emits them as they finish.

        Cancellation: cancels upstream and the unfinished calls (tasks are
        cancelled, pool calls not started never start; a blocking call
        already running finishes and its result is dropped).

        Errors: the first error from ``fn`` (or upstream) cancels upstream and
        the other calls and is signalled once, ahead of undelivered results.
        """
        from .operators import _concurrency

        return _concurrency.map_async(self, fn, max_concurrency, ordered, scheduler)

    # -- backpressure strategies -------------------------------------------------------
    # What happens to items that arrive while downstream is not asking. Every
    # operator here keeps a ``BufferStats`` per subscription: pass
    # ``meter=BackpressureMeter(name)`` to read it (see ``reactive_bp.metrics``).

    def on_backpressure_buffer(
        self,
        capacity: int,
        overflow: OverflowStrategy = OverflowStrategy.ERROR,
        on_dropped: Callable[[T_co], object] | None = None,
        ttl: float | None = None,
        scheduler: Scheduler | None = None,
        *,
        error_ahead: bool = False,
        water_marks: WaterMarks | None = None,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Hold up to ``capacity`` items that downstream has not requested yet.

        ::

            ^-a-b-c-d-e-|     on_backpressure_buffer(2, DROP_OLDEST), request(5) late
            ^-----------d-e-|  (a, b, c dropped: the oldest left as newer ones came)

        ``overflow`` decides when the buffer is full (the enum ``Flow.create``
        uses): ``ERROR`` fails with ``BufferOverflowError`` *after* the
        buffered items (Reactor's choice; ``error_ahead=True`` cuts ahead of
        them, RxJava's), ``DROP_NEWEST`` drops the incoming item,
        ``DROP_OLDEST`` evicts the head, ``LATEST`` overwrites the newest.
        ``on_dropped`` always receives the item that actually left. With
        ``ttl``, an item that waited ``ttl`` seconds (on ``scheduler``'s clock)
        is dropped with reason ``"ttl"``: a sweep is scheduled for the moment
        the oldest item expires, and expired items are also removed before
        any delivery or overflow decision, so an item older than ``ttl`` is
        never delivered. ``water_marks`` (a ``WaterMarks``) turns
        ``pressured`` on at its high mark and off at its low mark.

        Demand: unbounded-in: upstream is asked for everything at once;
        downstream receives buffered items only against its own demand. At
        most ``capacity`` items are held beyond what downstream requested.
        ``WAIT`` is refused (an operator holds upstream back with demand: use
        ``limit_rate``), and so is ``UNBOUNDED_BUFFER`` (use
        ``on_backpressure_buffer_unbounded``).

        Cancellation: cancels upstream; buffered items are dropped with
        reason ``"cancelled"`` (and go to ``on_dropped``).

        Errors: an upstream error follows the buffered items (ahead of them
        with ``error_ahead``). An ``ERROR`` overflow cancels upstream at once.
        A raising ``on_dropped`` cancels upstream and fails the stream.

        Example:
            >>> meter = BackpressureMeter("example")
            >>> flow = Flow.range(10).on_backpressure_buffer(
            ...     3, OverflowStrategy.DROP_OLDEST, meter=meter)
            >>> subscriber = TestSubscriber()
            >>> flow.subscribe(subscriber); subscriber.request(10)
            >>> subscriber.items, meter.stats.dropped_by_reason
            ([7, 8, 9], {'drop_oldest': 7})
        """
        from .operators import _backpressure

        return _backpressure.on_backpressure_buffer(
            self, capacity, overflow, on_dropped, ttl, scheduler, error_ahead, water_marks, meter
        )

    def on_backpressure_buffer_unbounded(
        self, *, water_marks: WaterMarks | None = None, meter: BackpressureMeter | None = None
    ) -> Flow[T_co]:
        """Hold every item downstream has not requested yet, without any limit.

        ::

            ^-a-b-c-d-|   on_backpressure_buffer_unbounded, request(4) late   ^-------a-b-c-d-|

        Warning: memory grows with the backlog, as long as upstream outpaces
        downstream; a stalled consumer means an out-of-memory failure later
        instead of a clear error now. Prefer ``on_backpressure_buffer(n, ...)``
        and decide what happens when ``n`` is reached; use this only when
        the producer is known to be finite and small, and watch
        ``meter.stats.depth`` or ``water_marks``.

        Demand: unbounded-in: upstream is asked for everything at once;
        items reach downstream only against its demand. Nothing is ever dropped.

        Cancellation: cancels upstream and drops the backlog (reason ``"cancelled"``).

        Errors: an upstream error is delivered after the buffered items.

        Example:
            >>> Flow.range(3).on_backpressure_buffer_unbounded().to_list()
            [0, 1, 2]
        """
        from .operators import _backpressure

        return _backpressure.on_backpressure_buffer_unbounded(self, water_marks, meter)

    def on_backpressure_drop(
        self,
        on_dropped: Callable[[T_co], object] | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Drop every item that arrives while downstream has no outstanding demand.

        ::

            ^-a-b-c-d-|   on_backpressure_drop, request(1) before a and before d
            ^-a-----d-|   (b, c dropped)

        Demand: unbounded-in: upstream is asked for everything; an item goes
        downstream if demand is outstanding, else to ``on_dropped`` (reason
        ``"drop_newest"``). Nothing is held.

        Cancellation: cancels upstream.

        Errors: upstream errors pass through; a raising ``on_dropped``
        cancels upstream and fails the stream.

        Example:
            >>> dropped = []
            >>> subscriber = TestSubscriber(2)
            >>> Flow.range(5).on_backpressure_drop(dropped.append).subscribe(subscriber)
            >>> subscriber.items, dropped
            ([0, 1], [2, 3, 4])
        """
        from .operators import _backpressure

        return _backpressure.on_backpressure_drop(self, on_dropped, meter)

    def on_backpressure_latest(
        self,
        on_dropped: Callable[[T_co], object] | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Keep only the newest undelivered item; deliver it when downstream asks.

        ::

            ^-a-b-c-d-|   on_backpressure_latest, request(1) at start and after d
            ^-a-------d|  (b, c replaced by newer items)

        Demand: unbounded-in: upstream is asked for everything; one item at
        most waits for downstream demand; a newer one replaces it (the
        replaced one goes to ``on_dropped``, reason ``"latest"``).

        Cancellation: cancels upstream; a waiting item is dropped (``"cancelled"``).

        Errors: an upstream error follows the waiting item. A raising
        ``on_dropped`` cancels upstream and fails the stream.

        Example:
            >>> subscriber = TestSubscriber()
            >>> Flow.range(5).on_backpressure_latest().subscribe(subscriber)
            >>> subscriber.request(3); subscriber.items
            [4]
        """
        from .operators import _backpressure

        return _backpressure.on_backpressure_latest(self, on_dropped, meter)

    def on_backpressure_error(self, *, meter: BackpressureMeter | None = None) -> Flow[T_co]:
        """Fail with ``BufferOverflowError`` when an item arrives that nobody requested.

        ::

            ^-a-b-c-|   on_backpressure_error, request(1)   ^-a-X

        Demand: unbounded-in: upstream is asked for everything; items within
        downstream demand pass, the first one beyond it ends the stream.
        Use it to make a missing ``request`` loud in tests and pipelines that
        must never lose items silently.

        Cancellation: cancels upstream.

        Errors: the overflow cancels upstream; ``BufferOverflowError`` follows
        any item that downstream requested and has not received yet.

        Example:
            >>> subscriber = TestSubscriber(1)
            >>> Flow.range(5).on_backpressure_error().subscribe(subscriber)
            >>> subscriber.items, type(subscriber.errors[0]).__name__
            ([0], 'BufferOverflowError')
        """
        from .operators import _backpressure

        return _backpressure.on_backpressure_error(self, meter)

    @overload
    def on_backpressure_reduce(
        self,
        fold: Callable[[T_co, T_co], T_co],
        seed: None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]: ...
    @overload
    def on_backpressure_reduce(
        self,
        fold: Callable[[R, T_co], R],
        seed: Callable[[], R],
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[R]: ...
    def on_backpressure_reduce(
        self,
        fold: Callable[[R, T_co], R],
        seed: Callable[[], R] | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[R]:
        """While downstream is not asking, fold new items into the one waiting (conflate).

        ::

            ^-1-2-3-4-|   on_backpressure_reduce(+), request(1) at start and after 4
            ^-1-----9-|   (2, 3, 4 folded into one value: 2+3+4)

        Without ``seed`` an item that finds nothing waiting is the waiting
        value itself (``T -> T``, like RxJava's ``onBackpressureReduce`` and
        Akka's ``conflate``). With ``seed`` (a factory, called once per
        aggregate, so no mutable seed is shared) every item is folded into
        ``seed()`` or into the waiting aggregate (``T -> R``: counts, lists,
        statistics; Akka's ``conflateWithSeed``).

        Demand: unbounded-in: upstream is asked for everything; one value at
        most waits for downstream demand. Each item folded into a waiting
        value is counted as dropped with reason ``"reduced"``.

        Cancellation: cancels upstream; the waiting value is dropped.

        Errors: an upstream error cuts ahead of the waiting value. A raising
        ``fold`` (or ``seed``) cancels upstream and fails the stream.

        Example:
            >>> subscriber = TestSubscriber()
            >>> Flow.range(1, 5).on_backpressure_reduce(lambda a, b: a + b).subscribe(subscriber)
            >>> subscriber.request(1); subscriber.items
            [10]
        """
        from .operators import _backpressure

        return _backpressure.on_backpressure_reduce(self, fold, seed, meter)

    def sample(
        self,
        period: float,
        emit_last: bool = True,
        scheduler: Scheduler | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Every ``period`` seconds, deliver the newest item that arrived since the last tick.

        ::

            ^-a-b---c-d-e---|      sample(1s)
            ^----b-----e----e|     (ticks: |1s|2s|; e again? no: completion emits
                                    the unsampled last item only if one is pending)

        ``emit_last`` (default true) delivers an item that arrived after the
        last tick when upstream completes (RxJava's ``emitLast``; Kotlin
        drops it).

        Demand: unbounded-in: upstream is asked for everything. A tick never
        fails for lack of demand (Reactor's ``sample`` does): the sampled
        item waits until downstream asks, and a newer sample replaces it
        (reason ``"stale"``). Items overwritten between ticks are dropped
        with reason ``"sampled"``. At most two items are held.

        Cancellation: cancels upstream and the periodic timer.

        Errors: an upstream error cuts ahead of held items.

        Example:
            >>> vts = VirtualTimeScheduler()
            >>> source = TestPublisher(strict=False)
            >>> subscriber = TestSubscriber(10)
            >>> source.sample(1.0, scheduler=vts).subscribe(subscriber)
            >>> source.send_next(1, 2); vts.advance_by(1.0); subscriber.items
            [2]
        """
        from .operators import _sampling

        return _sampling.sample(self, period, emit_last, scheduler, meter)

    def throttle_first(
        self,
        period: float,
        scheduler: Scheduler | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Deliver an item, then ignore items for ``period`` seconds.

        ::

            ^-a-b-c-----d-e-|   throttle_first(1s)   ^-a---------d---|

        Demand: unbounded-in: upstream is asked for everything. An accepted
        item waits in a one-item slot for downstream demand (never an error);
        its window starts when it arrives. Items inside a window are dropped
        (reason ``"throttled"``), and so are items after the window while the
        accepted one still waits (``"no_demand"``).

        Cancellation: cancels upstream.

        Errors: an upstream error cuts ahead of the waiting item.

        Example:
            >>> vts = VirtualTimeScheduler()
            >>> source = TestPublisher(strict=False)
            >>> subscriber = TestSubscriber(10)
            >>> source.throttle_first(1.0, scheduler=vts).subscribe(subscriber)
            >>> source.send_next(1, 2); vts.advance_by(1.0); source.send_next(3)
            >>> subscriber.items
            [1, 3]
        """
        from .operators import _sampling

        return _sampling.throttle_first(self, period, scheduler, meter)

    def throttle_latest(
        self,
        period: float,
        scheduler: Scheduler | None = None,
        *,
        emit_last: bool = True,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Deliver at once when quiet, then at most one item per ``period``: the newest.

        ::

            ^-a-b-c-----d-|   throttle_latest(1s)   ^-a---c-----d-|

        A window opens when an item is delivered; items arriving in it
        replace each other (reason ``"throttled"``), and the newest is
        delivered when the window ends, opening the next one. ``emit_last``
        (default true) delivers a pending item when upstream completes.

        Demand: unbounded-in: upstream is asked for everything; a due item
        waits for downstream demand (replaced by newer ones meanwhile), never
        an error. At most two items are held.

        Cancellation: cancels upstream and the window timer.

        Errors: an upstream error cuts ahead of held items.

        Example:
            >>> vts = VirtualTimeScheduler()
            >>> source = TestPublisher(strict=False)
            >>> subscriber = TestSubscriber(10)
            >>> source.throttle_latest(1.0, scheduler=vts).subscribe(subscriber)
            >>> source.send_next(1, 2, 3); vts.advance_by(1.0); subscriber.items
            [1, 3]
        """
        from .operators import _sampling

        return _sampling.throttle_latest(self, period, emit_last, scheduler, meter)

    def debounce(
        self,
        period: float,
        scheduler: Scheduler | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Deliver an item only once ``period`` seconds pass without a newer one.

        ::

            ^-a-b------c-|   debounce(1s)   ^-----b-----c|

        Demand: unbounded-in: upstream is asked for everything; a settled
        item waits for downstream demand (a newer settled item replaces it,
        reason ``"stale"``), never an error. Superseded items are dropped
        with reason ``"debounced"``. The last item is delivered at completion.

        Cancellation: cancels upstream and the timer.

        Errors: an upstream error cuts ahead of held items.

        Example:
            >>> vts = VirtualTimeScheduler()
            >>> source = TestPublisher(strict=False)
            >>> subscriber = TestSubscriber(10)
            >>> source.debounce(1.0, scheduler=vts).subscribe(subscriber)
            >>> source.send_next(1, 2); vts.advance_by(1.0); subscriber.items
            [2]
        """
        from .operators import _sampling

        return _sampling.debounce(self, period, scheduler, meter)

    def throttle(
        self,
        rate: int,
        per: float,
        burst: int | None = None,
        mode: Literal["shape", "enforce"] = "shape",
        scheduler: Scheduler | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Limit the flow to ``rate`` items per ``per`` seconds with a token bucket.

        ::

            ^-abcdef-|   throttle(2, per=1s, burst=2)   ^-ab--cd--ef|  (shape)
            ^-abcdef-|   throttle(2, 1s, 2, "enforce")  ^-abX          (RateExceededError)

        The bucket holds ``burst`` tokens (default a tenth of ``rate``, at
        least 1), starts full and refills continuously. ``mode="shape"``
        (default) delays items until a token is free; ``"enforce"`` fails
        with ``RateExceededError`` when an item arrives with no token.

        Demand: upstream is asked for ``burst`` items, then for one more per
        item delivered, so at most ``burst`` items are ever held; downstream
        demand is honoured as well as the rate.

        Cancellation: cancels upstream and the token timer.

        Errors: ``RateExceededError`` (enforce) cancels upstream; an upstream
        error cuts ahead of held items.

        Example:
            >>> vts = VirtualTimeScheduler()
            >>> subscriber = TestSubscriber(10)
            >>> Flow.range(4).throttle(1, per=1.0, burst=1, scheduler=vts).subscribe(subscriber)
            >>> vts.advance_by(2.0); subscriber.items
            [0, 1, 2]
        """
        from .operators import _sampling

        return _sampling.throttle(self, rate, per, burst, mode, scheduler, meter)

    def sample_every(self, n: int, *, meter: BackpressureMeter | None = None) -> Flow[T_co]:
        """Keep every ``n``-th item (the ``n``-th, ``2n``-th, ...), drop the rest.

        ::

            ^-1-2-3-4-5-6-|   sample_every(3)   ^-----3-----6-|

        Demand: exact: a request for ``k`` asks upstream for ``k * n`` items,
        which hold exactly ``k`` kept ones. The others are counted as dropped
        with reason ``"sampled"``. Nothing is held.

        Cancellation: cancels upstream.

        Errors: upstream errors pass through.

        Example:
            >>> Flow.range(1, 10).sample_every(3).to_list()
            [3, 6, 9]
        """
        from .operators import _sampling

        return _sampling.sample_every(self, n, meter)

    def sample_adaptive(
        self,
        base_rate: float,
        floor_rate: float,
        load_threshold: float,
        capacity: int,
        random: random_module.Random | None = None,
        *,
        on_dropped: Callable[[T_co], object] | None = None,
        meter: BackpressureMeter | None = None,
    ) -> Flow[T_co]:
        """Buffer up to ``capacity`` items, keeping fewer of them the fuller the buffer gets.

        ::

            load <  threshold: keep base_rate of the items
            load >= threshold: keep max(floor_rate, base_rate * (1 - excess)),
                               excess = (load - threshold) / (1 - threshold)

            ^-abcdefgh-|   sample_adaptive(1.0, 0.1, 0.5, 4), slow consumer   ^-a-b-d-h-|

        For logs, traces and metrics: under load a representative share
        survives instead of the first or last ``capacity`` items.
        ``random`` is the source of the keep decisions: pass a seeded
        ``random.Random`` for reproducible runs. ``adaptive_keep_rate`` is
        the formula, for dashboards.

        Demand: unbounded-in: upstream is asked for everything; kept items
        wait in a buffer of ``capacity`` for downstream demand. Sampled-out
        items are dropped with reason ``"sampled"``; a kept item that finds
        the buffer full with ``"drop_newest"``.

        Cancellation: cancels upstream; buffered items are dropped.

        Errors: an upstream error follows the buffered items.

        Example:
            >>> import random
            >>> flow = Flow.range(100).sample_adaptive(1.0, 0.1, 0.5, 10, random.Random(1))
            >>> subscriber = TestSubscriber()
            >>> flow.subscribe(subscriber); subscriber.request(100)
            >>> len(subscriber.items) <= 10
            True
        """
        from .operators import _sampling

        return _sampling.sample_adaptive(
            self, base_rate, floor_rate, load_threshold, capacity, random, on_dropped, meter
        )

    def buffer_timeout(
        self,
        max_size: int,
        max_time: float,
        scheduler: Scheduler | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> Flow[list[T_co]]:
        """Collect items into lists of at most ``max_size``, each sent within ``max_time``.

        ::

            ^-a-b-c-d-----e-----|   buffer_timeout(3, 2s)   ^-----[a,b,c]--[d]--[e]|

        A batch is due when it holds ``max_size`` items or ``max_time``
        seconds after its first item; never empty.

        Demand: backpressured (Akka's ``groupedWithin``): a due batch waits
        for downstream demand instead of failing "for lack of requests"
        (Reactor's ``bufferTimeout``), and keeps filling up to ``max_size``
        meanwhile. Upstream is asked for ``max_size`` items, then for as many
        as each delivered batch held: at most ``max_size`` items are ever
        held, and a full batch nobody asked for stops upstream.

        Cancellation: cancels upstream and the timer; the batch is dropped.

        Errors: an upstream error cuts ahead of the batch.

        Example:
            >>> Flow.range(7).buffer_timeout(3, 1.0).to_list()
            [[0, 1, 2], [3, 4, 5], [6]]
        """
        from .operators import _sampling

        return _sampling.buffer_timeout(self, max_size, max_time, scheduler, meter)

    # -- hot: multicast and replay --------------------------------------------------------

    def publish(
        self,
        buffer_size: int = 256,
        policy: SlowSubscriberPolicy | None = None,
        *,
        on_dropped: Callable[[int, T_co], object] | None = None,
    ) -> ConnectableFlow[T_co]:
        """Share one subscription of this flow among many subscribers, once connected.

        ::

            source:          -a-b-c-d-|
            A subscribes:    ^
            connect():         ^         (the source is subscribed here)
            A:                 -a-b-c-d-|
            B subscribes:          ^
            B:                     -c-d-|

        Subscribers join a ``MulticastProcessor(buffer_size, policy)``;
        ``connect()`` subscribes it to this flow and returns the connection
        (``dispose()`` it to stop). ``ref_count()`` and ``auto_connect()``
        connect for you; ``share()`` is ``publish().ref_count()``.

        Demand: per ``policy`` (default ``SlowSubscriberPolicy.WAIT``). ``WAIT``
        paces this flow by the slowest subscriber, requesting at most
        ``buffer_size`` items ahead of it; ``DROP``, ``LATEST`` and ``ERROR``
        request in batches of ``buffer_size`` and handle a subscriber without
        demand per the policy (each drop goes to ``on_dropped(subscriber_id,
        item)``). Nothing is requested before ``connect()``.

        Cancellation: a subscriber's cancel leaves the source running;
        disposing the connection cancels it, and its subscribers get
        ``DisconnectedError`` (as a source error: under ``WAIT`` after the queue).

        Errors: this flow's ending reaches every subscriber after its buffered
        items, and later subscribers too (under ``WAIT`` after the items still
        queued), until ``connect()`` starts afresh.

        Example:
            >>> flow = Flow.range(3).publish()
            >>> a, b = [], []
            >>> _ = flow.subscribe_with(a.append)
            >>> _ = flow.subscribe_with(b.append)
            >>> _ = flow.connect()
            >>> a, b
            ([0, 1, 2], [0, 1, 2])
        """
        from .processors import _connectable

        return _connectable.publish(self, buffer_size, policy, on_dropped)

    def share(self) -> Flow[T_co]:
        """Share one subscription among the current subscribers: ``publish().ref_count()``.

        ::

            source:  -a-b-c-d-e-|
            A:       ^-a-b-c-d-e-|   (the first subscriber subscribes the source)
            B:           ^-c-d-e-|   (joins the running subscription)
            once all cancelled, the source is cancelled; a later subscriber
            (or one after the source ended) subscribes it afresh

        Demand: the slowest subscriber paces the source
        (``SlowSubscriberPolicy.WAIT``): at most 256 items are requested ahead
        of it.

        Cancellation: when the last subscriber cancels, the source is
        cancelled.

        Errors: the source's ending reaches every current subscriber.

        Example:
            >>> shared = Flow.range(3).share()
            >>> shared.to_list(), shared.to_list()
            ([0, 1, 2], [0, 1, 2])
        """
        from .processors import _connectable

        return _connectable.publish(self, 256, None, None).ref_count()

    def replay(
        self,
        history: int | None = None,
        ttl: float | None = None,
        scheduler: Scheduler | None = None,
    ) -> ConnectableFlow[T_co]:
        """Like ``publish``, but each subscriber first gets the last ``history`` items.

        ::

            source:              -a-b-c-d-|
            connect(), A:          -a-b-c-d-|
            B (after c), history=None:  (a b c)-d-|
            C (after c), history=2:       (b c)-d-|
            D (after the end), history=2:     (c d)|

        Subscribers join a ``ReplayProcessor(history, ttl, scheduler)``:
        ``history=None`` keeps every item (unbounded memory, because you asked),
        ``ttl`` stops replaying items older than that many seconds.
        ``cache()`` is ``replay().auto_connect()``.

        Demand: each subscriber receives the history, then live items, at its
        own pace; this flow is asked only for what subscribers requested (see
        ``ReplayProcessor`` for the bounds). Nothing is requested before
        ``connect()``.

        Cancellation: a subscriber's cancel leaves the source running;
        disposing the connection cancels it.

        Errors: the ending is replayed too: a later subscriber gets the
        history, then the ending.

        Example:
            >>> flow = Flow.range(3).replay(2)
            >>> _ = flow.connect()
            >>> flow.to_list(), flow.to_list()
            ([0, 1, 2], [1, 2])
        """
        from .processors import _connectable

        return _connectable.replay(self, history, ttl, scheduler)

    def cache(self) -> Flow[T_co]:
        """Remember every item and the ending for later subscribers: ``replay().auto_connect()``.

        ::

            source:  -a-b-c-|        (subscribed once, by the first subscriber)
            A:       ^-a-b-c-|
            B:                 ^(a b c)|

        Demand: the source is asked only for what subscribers requested; a
        later subscriber gets the remembered items at its own pace.

        Cancellation: subscribers come and go; the source keeps its one
        subscription (it is never cancelled by them).

        Errors: the source's error is remembered and replayed too.

        Example:
            >>> cached = Flow.range(3).cache()
            >>> cached.to_list(), cached.to_list()
            ([0, 1, 2], [0, 1, 2])
        """
        from .processors import _connectable

        return _connectable.replay(self, None, None, None).auto_connect()

    # -- sinks --------------------------------------------------------------------------

    def subscribe_with(
        self,
        on_next: Callable[[T_co], object] | None = None,
        on_error: Callable[[Exception], object] | None = None,
        on_complete: Callable[[], object] | None = None,
        *,
        request: RequestPolicy | None = None,
    ) -> Disposable:
        """Subscribe with callbacks; return a handle whose ``dispose()`` cancels.

        ::

            ^-a-b-|   subscribe_with(f, g, h)   f(a) f(b) h()

        Demand: ``request`` is the demand policy (default ``RequestPolicy.unbounded()``;
        see ``RequestPolicy.batch(n)`` and ``RequestPolicy.one_by_one()``).

        Cancellation: ``dispose()`` on the returned handle.

        Errors: without ``on_error``, an error goes to the undeliverable hook.
        """
        return _lambda.subscribe_with(self, on_next, on_error, on_complete, request)

    def __aiter__(self) -> AsyncGenerator[T_co, None]:
        """``async for item in flow``: same as ``flow.aiter()``."""
        return _pull.aiter_flow(self, 256)

    def aiter(self, prefetch: int = 256) -> AsyncGenerator[T_co, None]:
        """Iterate asynchronously, keeping at most ``prefetch`` items requested ahead.

        ::

            async for item in flow.aiter(prefetch=64):
                ...

        Demand: ``prefetch`` first, then 75% of it each time that many items
        were consumed; the loop body is the consumer's pace. Directly over
        ``from_async_iterable``/``from_queue`` (and stages fused into them)
        the source is iterated in place: one ``__anext__`` per item consumed.

        Cancellation: leaving the loop early (``break``, an exception, task
        cancellation) cancels upstream. After ``break`` that happens when the
        generator is closed: use ``contextlib.aclosing(flow.aiter())`` to make
        it immediate.

        Errors: an ``on_error`` is raised from the ``async for``.
        """
        return _pull.aiter_flow(self, prefetch)

    def blocking_iter(
        self, prefetch: int = 256, timeout: float | None = None
    ) -> Generator[T_co, None, None]:
        """Iterate in a thread, blocking for each item; at most ``prefetch`` requested ahead.

        ::

            for item in flow.blocking_iter(prefetch=64):
                ...

        Demand: as ``aiter``. Cancellation: ``close()``, ``break`` followed by
        garbage collection, or an exception in the loop cancels upstream (a
        subscription that arrives after that is cancelled on arrival).
        Errors: an ``on_error`` is raised from the loop; ``TimeoutError`` if no
        signal arrives within ``timeout`` seconds; ``RuntimeError`` at once if
        ``next()`` is called on a thread running an asyncio event loop (use
        ``aiter()`` there).
        """
        return _pull.blocking_iter(self, prefetch, timeout)

    async def to_list_async(self) -> list[T_co]:
        """Collect every item without blocking the event loop.

        ::

            ^-a-b-c-|   await to_list_async()   [a, b, c]

        Demand: as ``aiter()``: at most 256 items requested ahead of the collected ones.

        Cancellation: cancelling the awaiting task cancels the subscription.
        """
        return await _pull.collect_async(self, None)

    async def first_async(self) -> T_co:
        """Return the first item (``EmptyFlowError`` if none) without blocking the loop.

        ::

            ^-a-b-c-|   await first_async()   a   (cancelled after a)

        Demand: ``request(1)``, then cancel once the item arrived.
        """
        items = await _pull.collect_async(self, 1)
        if not items:
            raise _blocking.EmptyFlowError(f"{self!r} completed without items")
        return items[0]

    async def last_async(self) -> T_co:
        """Return the last item (``EmptyFlowError`` if none) without blocking the loop.

        ::

            ^-a-b-c-|   await last_async()   c

        Demand: unbounded; only the newest item is kept, so memory stays constant.
        """
        items = await _pull.collect_async(self.reduce(_newest), None)
        if not items:
            raise _blocking.EmptyFlowError(f"{self!r} completed without items")
        return items[0]

    def to_observable(self) -> reactivex.Observable[T_co]:
        """A reactivex Observable of this flow (the ``rx`` extra); it requests everything.

        ::

            ^-a-b-|   to_observable()   an Observable: a b |

        Demand: unbounded: an Observer cannot signal demand, so the subscription
        requests ``2**63 - 1``; put a strategy operator before it if the flow is fast.

        Cancellation: disposing the Observable subscription cancels the flow.
        """
        return _rx.to_observable(self)

    def to_list(self, timeout: float | None = None) -> list[T_co]:
        """Block until completion and return all items (re-raises an ``on_error``).

        ::

            ^-a-b-c-|   to_list()   [a, b, c]

        Demand: unbounded: everything is requested at once (``2**63 - 1``).

        Cancellation: after ``timeout`` seconds.

        Errors: ``TimeoutError`` after ``timeout`` seconds (the subscription is
        cancelled), and ``RuntimeError`` at once on a thread running an asyncio
        event loop, which it would block: use ``await flow.to_list_async()``.
        """
        return _blocking.to_list(self, timeout)

    def first(self, timeout: float | None = None) -> T_co:
        """Request one item, cancel, and return it (``LookupError`` if empty).

        ::

            ^-a-b-c-|   first()   a   (cancelled after a)

        Demand: ``request(1)``, then cancel once the item arrived.

        Errors: ``EmptyFlowError`` (a ``LookupError``) on completion without items,
        ``TimeoutError`` after ``timeout`` seconds, ``RuntimeError`` on a thread running
        an event loop: ``await flow.first_async()``.
        """
        return _blocking.first(self, timeout)

    def last(self, timeout: float | None = None) -> T_co:
        """Block until completion and return the last item (``LookupError`` if empty).

        ::

            ^-a-b-c-|   last()   c

        Demand: unbounded; only the newest item is kept, so memory stays constant.

        Errors: ``EmptyFlowError`` (a ``LookupError``) on completion without items,
        ``TimeoutError`` after ``timeout`` seconds, ``RuntimeError`` on a thread running
        an event loop: ``await flow.last_async()``.
        """
        return _blocking.last(self, timeout)


# Implementations import Flow, so they are bound after the class exists.
from .adapters import _pull, _rx  # noqa: E402
from .operators import _aggregate, _filtering, _lift, _side_effects, _transform  # noqa: E402
from .sources import _async, _generate, _iterable, _publisher, _push, _simple  # noqa: E402
from .subscribers import _blocking, _lambda  # noqa: E402


class _StaticFactory:
    """A static combining factory that refuses to be called through an instance.

    ``a.merge(b)`` would call the static ``Flow.merge(b)`` and silently leave
    ``a`` out; through an instance the call raises ``TypeError`` naming the
    instance form (``merge_with``) instead. Through the class nothing changes.
    """

    __slots__ = ("_function", "_name")

    def __init__(self, name: str, function: Callable[..., object]) -> None:
        self._name = name
        self._function = function

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., object]:
        if instance is None:
            return self._function
        name = self._name

        def refused(*_args: object, **_kwargs: object) -> object:
            raise TypeError(
                f"Flow.{name} is a static factory: call Flow.{name}(a, b, ...), or "
                f"a.{name}_with(b, ...) to include a; a.{name}(b) would leave a out"
            )

        return refused


for _name in ("merge", "concat", "zip"):
    setattr(Flow, _name, _StaticFactory(_name, getattr(Flow, _name)))
del _name
