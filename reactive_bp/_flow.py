"""``Flow[T]``: the fluent, fully typed face of reactive_bp.

Every method is a one-line delegation to the module that implements it; the
docstrings here are the user documentation (marble diagram, ``Demand:``,
``Cancellation:``, ``Errors:``). Marble legend: ``-`` time, ``a``.. items,
``|`` completion, ``X`` error, ``^`` subscribe, ``!`` cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar, overload

from ._core._push import OverflowStrategy

if TYPE_CHECKING:
    import reactivex

    from .abc import Publisher, Subscriber
    from .schedulers import Scheduler
    from .sources._generate import SynchronousSink
    from .sources._push import Emitter
    from .subscribers._base import RequestPolicy
    from .subscribers._lambda import Disposable

__all__ = ["Flow"]

T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")
R = TypeVar("R")
A = TypeVar("A")
S = TypeVar("S")


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
        """Attach ``subscriber``; ``subscribe(None)`` raises ``TypeError`` (Rule 1.9)."""
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
    def from_async_iterable(
        iterable: AsyncIterable[U], loop: asyncio.AbstractEventLoop | None = None
    ) -> Flow[U]:
        """Emit the items of an async iterable, calling ``__anext__`` only while there is demand.

        ::

            async generator a b c   from_async_iterable   ^-a-b-c-|

        Demand: one ``__anext__`` per requested item, awaited in one task on
        ``loop`` (default: the loop running when ``subscribe`` is called).
        ``request`` may come from any thread.

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

        Errors: a producer that raises fails the stream.
        """
        strategy = OverflowStrategy.ERROR if overflow is None else overflow
        return _push.CreateFlow(producer, capacity, strategy, on_dropped)

    # -- composition -------------------------------------------------------------

    def lift(self, operator: Callable[[Subscriber[R]], Subscriber[T_co]]) -> Flow[R]:
        """Apply a subscriber-level operator (usually an ``OperatorSubscriber`` subclass).

        ``operator`` receives the downstream subscriber and returns the
        subscriber that is attached upstream.

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

        Errors: a raising ``mapper`` (or one returning ``None``) cancels
        upstream and becomes ``on_error``.

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
        scheduler that refuses work fails the stream.
        """
        from .operators import _scheduling

        return _scheduling.publish_on(self, scheduler, prefetch)

    def subscribe_on(self, scheduler: Scheduler) -> Flow[T_co]:
        """Subscribe, and make every ``request``, on ``scheduler``.

        ::

            ^-a-b-|   subscribe_on(pool)   ^-a-b-|  (the source runs on pool threads)

        Demand: passed upstream 1:1, each ``request(n)`` as a task on the
        scheduler, so a synchronous source produces there, not on the
        requesting thread.
        """
        from .operators import _scheduling

        return _scheduling.subscribe_on(self, scheduler)

    # -- side effects ----------------------------------------------------------------

    def do_on_next(self, action: Callable[[T_co], object]) -> Flow[T_co]:
        """Call ``action(item)`` for each item before passing it on.

        ::

            ^-a-b-|  do_on_next(f)  ^-a-b-|   (f(a) and f(b) ran first)

        Demand: 1:1, passed straight upstream.

        Errors: a raising ``action`` cancels upstream and becomes ``on_error``.
        """
        return _transform.do_on_next(self, action)

    def do_on_request(self, action: Callable[[int], object]) -> Flow[T_co]:
        """Call ``action(n)`` for each downstream ``request(n)``, then pass it upstream.

        ::

            request(3) -> do_on_request(f) -> f(3); request(3)

        Demand: 1:1, passed straight upstream after ``action`` saw it.

        Errors: a raising ``action`` is reported to the undeliverable hook and
        the request still goes through (``request`` must return normally, Rule 3.16).
        """
        return _transform.do_on_request(self, action)

    def do_on_cancel(self, action: Callable[[], object]) -> Flow[T_co]:
        """Call ``action()`` when downstream cancels, then cancel upstream.

        ::

            ^-a-b-!  do_on_cancel(f)  ^-a-b-!   (f() ran, then upstream was cancelled)

        Demand: 1:1, passed straight upstream.

        Errors: a raising ``action`` is reported; upstream is still cancelled.
        """
        return _transform.do_on_cancel(self, action)

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

        ``request`` is the demand policy (default ``RequestPolicy.unbounded()``;
        see ``RequestPolicy.batch(n)`` and ``RequestPolicy.one_by_one()``).
        Without ``on_error``, an error goes to the undeliverable hook.
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
        were consumed; the loop body is the consumer's pace.

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
        garbage collection, or an exception in the loop cancels upstream.
        Errors: an ``on_error`` is raised from the loop; ``TimeoutError`` if no
        signal arrives within ``timeout`` seconds.
        """
        return _pull.blocking_iter(self, prefetch, timeout)

    async def to_list_async(self) -> list[T_co]:
        """Collect every item without blocking the event loop."""
        return await _pull.collect_async(self, None)

    async def first_async(self) -> T_co:
        """Return the first item (``EmptyFlowError`` if none) without blocking the loop."""
        items = await _pull.collect_async(self, 1)
        if not items:
            raise _blocking.EmptyFlowError(f"{self!r} completed without items")
        return items[0]

    async def last_async(self) -> T_co:
        """Return the last item (``EmptyFlowError`` if none) without blocking the loop."""
        items = await _pull.collect_async(self.reduce(_newest), None)
        if not items:
            raise _blocking.EmptyFlowError(f"{self!r} completed without items")
        return items[0]

    def to_observable(self) -> reactivex.Observable[T_co]:
        """A reactivex Observable of this flow (the ``rx`` extra); it requests everything.

        An Observer cannot signal demand, so the subscription requests
        ``2**63 - 1``; put a strategy operator before it if the flow is fast.
        Disposing the Observable subscription cancels the flow.
        """
        return _rx.to_observable(self)

    def to_list(self, timeout: float | None = None) -> list[T_co]:
        """Block until completion and return all items (re-raises an ``on_error``).

        Raises ``TimeoutError`` after ``timeout`` seconds (the subscription is
        cancelled). Do not call it on the thread an asynchronous source needs.
        """
        return _blocking.to_list(self, timeout)

    def first(self, timeout: float | None = None) -> T_co:
        """Request one item, cancel, and return it (``LookupError`` if empty)."""
        return _blocking.first(self, timeout)

    def last(self, timeout: float | None = None) -> T_co:
        """Block until completion and return the last item (``LookupError`` if empty)."""
        return _blocking.last(self, timeout)


# Implementations import Flow, so they are bound after the class exists.
from .adapters import _pull, _rx  # noqa: E402
from .operators import _aggregate, _filtering, _lift, _transform  # noqa: E402
from .sources import _async, _generate, _iterable, _publisher, _push, _simple  # noqa: E402
from .subscribers import _blocking, _lambda  # noqa: E402
