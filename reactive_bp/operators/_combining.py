"""Operators that combine publishers: flat_map, concat_map, merge, concat, zip."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import (
    ArbiterRelay,
    SubscriptionArbiter,
    cancel_quietly,
    refuse_second_subscription,
)
from .._core._demand import UNBOUNDED, add_cap, produced
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, EmptySubscription
from .._core._queue_drain import InnerQueueSubscriber, QueueDrain, replenish_limit
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from .._flow import Flow
from ..sources._iterable import IterableFlow
from ..sources._simple import EmptyFlow

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber, Subscription

__all__ = ["concat", "concat_map", "flat_map", "merge", "zip_"]

T = TypeVar("T")
R = TypeVar("R")


def _check_positive(name: str, what: str, value: int) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")


def _adopt(name: str, sources: tuple[Publisher[T], ...]) -> tuple[Flow[T], ...]:
    """Wrap each source with ``Flow.from_publisher`` (a third-party one gets the guard)."""
    flows: list[Flow[T]] = []
    for index, source in enumerate(sources):
        try:
            flows.append(Flow.from_publisher(source))
        except TypeError as error:
            raise TypeError(f"{name}: source #{index} is not a publisher: {source!r}") from error
    return tuple(flows)


def _inner_flow(mapper: Callable[[T], Publisher[R]], item: T) -> Flow[R]:
    """Call ``mapper`` and adopt what it returns; ``None`` is an error."""
    publisher = mapper(item)
    if isinstance(publisher, Flow):
        return publisher  # what Flow.from_publisher returns, without the call
    if publisher is None:
        raise TypeError(f"{mapper!r} returned None for {item!r}, not a publisher")
    return Flow.from_publisher(publisher)


# -- known values -------------------------------------------------------------------------


def _known_values(flow: Flow[R]) -> Sequence[R] | None:
    """The items ``flow`` emits, when they are known without subscribing; else ``None``.

    The one place that recognises sources whose items are fixed when they are
    built: ``Flow.just`` and ``Flow.from_iterable`` over a tuple or a
    ``range`` (immutable, so reading them now is what a subscription would
    read), and ``Flow.empty``. A tuple holding ``None`` is not known: its
    subscription signals ``NoneItemError`` after the items before it, and only
    a real subscription reproduces that. Combining operators treat a known
    inner as one that completes at once: no subscription, no inner queue.
    """
    kind = type(flow)
    if kind is IterableFlow:
        values = flow._iterable  # type: ignore[attr-defined]
        kind_of_values = type(values)
        if kind_of_values is range:
            return values  # type: ignore[no-any-return]
        if kind_of_values is tuple:
            for value in values:
                if value is None:
                    return None
            return values  # type: ignore[no-any-return]
        return None
    if kind is EmptyFlow:
        return ()
    return None


# -- flat_map / merge -------------------------------------------------------------------


class _FlatMapInner(InnerQueueSubscriber[R]):
    """An inner of ``flat_map``/``merge`` that hands an item straight downstream when it can.

    An item that finds this inner's queue empty, downstream demand and no
    drain loop running is emitted by the calling thread, which owns the loop
    for that moment (``_wip`` 0 -> 1 under the parent's ``_lock``, given back
    the same way, with one full pass if work arrived meanwhile); otherwise it is queued as
    in ``InnerQueueSubscriber``. Either way it counts as consumed, so demand,
    refill and Rule 1.1 checks are those of the queueing path.
    """

    __slots__ = ()

    @override
    def on_next(self, item: R) -> None:
        """Emit ``item`` at once if this thread can own the loop, else queue it."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        parent: _FlatMapMain[Any, R] = self._parent  # type: ignore[assignment]
        if parent._halted or self.done:
            return  # Rule 2.8
        if self.queue:
            super().on_next(item)  # earlier items of this source go first
            return
        lock = parent._lock
        lock.acquire()
        try:
            own = parent._wip == 0 and parent._requested != 0 and not parent._scalars
            if own:
                parent._wip = 1  # this thread is the loop owner until it lets go
        finally:
            lock.release()
        if not own:
            super().on_next(item)
            return
        actual = parent._actual
        terminal = parent._terminal
        if actual is None or terminal._ending is not None or terminal._closed or parent._halted:
            self.queue.append(item)
            parent._run_drain()  # the loop decides: release, terminate or drain
            return
        try:
            actual.on_next(item)
        except Exception as fault:  # Rule 2.13: as the loop does
            parent._loop_fault(actual, fault)
            return
        if self._limit != UNBOUNDED:  # consumed(1), inlined: refill at 75%
            total = self._consumed + 1
            if total < self._limit:
                self._consumed = total
            else:
                self._consumed = 0
                if not self.done:
                    self._subscription.request(total)
        lock.acquire()
        try:
            requested = parent._requested
            if requested != UNBOUNDED:  # produced(requested, 1), inlined on this hot path
                parent._requested = requested - 1
            more = parent._wip != 1
            if not more:
                parent._wip = 0
        finally:
            lock.release()
        if more:
            parent._run_drain()  # request/cancel/items arrived meanwhile: one full pass


class _FlatMapMain(QueueDrain[R], Generic[T, R]):
    """Subscribes up to ``max_concurrency`` inners and merges their items downstream.

    Demand: upstream is asked for ``max_concurrency`` items; a slot is given
    back when an inner finished and its items were delivered, in batches of
    75% of ``max_concurrency`` -- or at once when upstream has nothing
    outstanding, so a long-lived inner never starves the others. Each inner
    is asked for ``prefetch`` and refilled at 75% of what the loop consumed;
    the loop emits only against downstream demand, visiting the inners
    round-robin.

    Known inners (``_known_values``: ``Flow.just``, ``Flow.empty``, a tuple or
    ``range`` of at most ``prefetch`` items -- what a subscribed inner would
    have queued at once) are not subscribed: their items are emitted by the
    calling thread when downstream demand allows and no loop runs, else
    queued in ``_scalars``, which takes one turn in the round-robin as if it
    were one more inner. Such an inner holds its slot until its last item was
    delivered, like a subscribed one. A subscribed inner whose item finds its
    queue empty, demand and no loop running also emits it directly.

    Concurrency: a thread that emits directly owns the drain loop for that
    moment (``_wip`` taken from 0 to 1 under ``_lock``) and gives it back
    the same way; work announced meanwhile (a request, a cancel, an item) is
    seen when it lets go and runs one full pass (``_let_go``).

    Cancellation: cancels upstream and every active inner, clears the queues.

    Errors: the first error (upstream, an inner, ``mapper``, a Rule 3.9
    request) cuts ahead of queued items, cancels everything else and is
    signalled once; later ones go to the undeliverable hook.
    """

    __slots__ = (
        "_cursor",
        "_finished",
        "_inner_view",
        "_inners",
        "_limit",
        "_main_done",
        "_mapper",
        "_max_concurrency",
        "_outstanding",
        "_prefetch",
        "_scalar_pos",
        "_scalars",
        "_upstream",
    )

    def __init__(
        self,
        actual: Subscriber[R],
        mapper: Callable[[T], Publisher[R]],
        max_concurrency: int,
        prefetch: int,
    ) -> None:
        super().__init__(actual)
        self._mapper = mapper
        self._max_concurrency = max_concurrency
        self._prefetch = prefetch
        # Slots given back upstream per request (UNBOUNDED: never ask again).
        self._limit = replenish_limit(max_concurrency) if max_concurrency < UNBOUNDED else UNBOUNDED
        # Invariant: CANCELLED until on_subscribe.
        self._upstream: Subscription = CANCELLED
        # Set once when upstream completed, after the last inner was
        # registered; read without the lock. An upstream error never sets it:
        # it goes to _terminal, so no pass can see "done" without the error.
        self._main_done = False
        # Guarded by _lock: the active subscribed inners, in subscription order.
        self._inners: dict[InnerQueueSubscriber[R], None] = {}
        # Written under _lock, read without it (one attribute read).
        # Invariant: == tuple(_inners) after every _lock block, so a pass
        # reads an immutable snapshot instead of copying the dict.
        self._inner_view: tuple[InnerQueueSubscriber[R], ...] = ()
        # The known inners whose items wait for demand, each holding its slot.
        # Appended only by the upstream thread (serial, Rule 1.3), popped only
        # by the loop owner. Invariant: every entry is non-empty and has at
        # most prefetch items; entries are delivered in arrival order.
        self._scalars: deque[Sequence[R]] = deque()
        # Loop owner only. Invariant: 0 if _scalars is empty, else < len(_scalars[0]).
        self._scalar_pos = 0
        # Guarded by _lock. Invariant: upstream items requested and not yet
        # received, 0 <= _outstanding <= max_concurrency.
        self._outstanding = max_concurrency
        # Guarded by _lock: finished inners whose slot was not yet requested
        # again. Invariant (after every _lock block that changes either):
        # _finished < _limit, and _finished == 0 whenever _outstanding == 0,
        # so batching never leaves upstream idle while a slot is free.
        self._finished = 0
        # Loop owner only: where the next pass starts (fairness between inners).
        self._cursor = 0

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
            return
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fail(fault)
            return
        if not self._halted:
            subscription.request(self._max_concurrency)

    def on_next(self, item: T) -> None:
        """Map ``item`` to a publisher: emit or queue its known items, or subscribe to it."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._halted or self._main_done:
            return  # Rule 2.8
        try:
            flow = _inner_flow(self._mapper, item)
        except Exception as error:
            self._fail(error)
            return
        values = _known_values(flow)
        if values is not None and len(values) <= self._prefetch:
            # No more than a subscribed inner would have queued at once.
            self._on_known(values)
            return
        inner: InnerQueueSubscriber[R] = _FlatMapInner(self, self._prefetch)
        with self._lock:
            if self._halted:
                return
            self._outstanding -= 1
            # Upstream just ran dry: give back the slots held for a batch.
            give_back = self._take_slots(0) if self._finished and not self._outstanding else 0
            self._inners[inner] = None
            self._inner_view = (*self._inner_view, inner)
        if give_back:
            self._upstream.request(give_back)
        try:
            flow.subscribe(inner)
        except Exception as error:  # a third-party subscribe() that raised
            self._fail(error)

    def on_error(self, error: Exception) -> None:
        """Fail at once: cancel the inners and signal ``error`` (it cuts ahead)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if self._main_done:
            report_undeliverable(error, f"{self!r} after upstream terminal (Rule 1.7)")
            return
        self._signal_error(error)

    def on_complete(self) -> None:
        """Complete once every inner has finished and its items were delivered."""
        if self._main_done:
            return
        self._main_done = True
        self._schedule()

    # -- known inners and slots ------------------------------------------------------------

    def _take_slots(self, freed: int) -> int:
        """Count ``freed`` slots; return how many to request upstream now (under ``_lock``)."""
        finished = self._finished + freed
        if finished == 0 or (finished < self._limit and self._outstanding > 0):
            self._finished = finished
            return 0
        self._finished = 0
        if self._limit == UNBOUNDED or self._main_done:
            return 0  # everything was requested already, or upstream is over
        self._outstanding = add_cap(self._outstanding, finished)
        return finished

    def _on_known(self, values: Sequence[R]) -> None:
        """An inner whose items are known: emit them now if this thread can own the loop."""
        give_back = 0
        with self._lock:
            self._outstanding -= 1
            if not values:  # an empty inner finishes at once
                give_back = self._take_slots(1)
                own = False
            else:
                if self._finished and not self._outstanding:
                    give_back = self._take_slots(0)  # upstream just ran dry
                requested = self._requested
                own = self._wip == 0 and requested != 0 and not self._scalars
                if own:
                    self._wip = 1  # this thread is the loop owner until it lets go
        if give_back:
            self._upstream.request(give_back)
        if not values:
            return
        if not own:
            self._scalars.append(values)
            self._schedule()
            return
        actual = self._actual
        terminal = self._terminal
        if actual is None or terminal._ending is not None or terminal._closed or self._halted:
            self._scalars.append(values)
            self._run_drain()  # the loop decides: release, terminate or drain
            return
        count = len(values)
        emitted = 0
        try:
            if count == 1:
                actual.on_next(values[0])
                emitted = 1
            else:
                on_next = actual.on_next
                while emitted != requested and emitted != count:
                    on_next(values[emitted])
                    emitted += 1
                    if self._halted:
                        break
        except Exception as fault:  # Rule 2.13: as the loop does
            self._loop_fault(actual, fault)
            return
        freed = 1
        if emitted != count:
            # This thread owns the loop and _scalars was empty: it becomes the head.
            self._scalars.append(values)
            self._scalar_pos = emitted
            freed = 0
        self._let_go(emitted, freed)

    def _let_go(self, emitted: int, freed: int) -> None:
        """Account a direct emission and give up the loop, or run it if work arrived."""
        give_back = 0
        with self._lock:
            if emitted:
                self._requested = produced(self._requested, emitted)
            if freed:
                finished = self._finished + freed
                if finished < self._limit and self._outstanding > 0:
                    self._finished = finished  # the common case of _take_slots
                else:
                    give_back = self._take_slots(freed)
            more = self._wip != 1
            if not more:
                self._wip = 0
        if give_back:
            self._upstream.request(give_back)
        if more:
            self._run_drain()  # request/cancel/items arrived meanwhile: one full pass

    def _loop_fault(self, actual: Subscriber[R], fault: Exception) -> None:
        """Downstream raised from ``on_next`` while this thread owned the loop."""
        if self._terminal._closed:
            report_undeliverable(fault, f"{self!r} after terminal/cancel")
            self._release()
        else:
            self._terminate(actual, fault)

    # -- the drain ------------------------------------------------------------------------------

    @override
    def hook_drain(self, actual: Subscriber[R], requested: int) -> int:
        # Read _main_done before the inners: an inner (known or subscribed)
        # is registered before upstream can complete, so "done and no
        # inners" is final.
        upstream_done = self._main_done
        on_next = actual.on_next
        emitted = 0
        freed = 0
        scalars = self._scalars
        inners = self._inner_view
        count = len(inners)
        # The known inners take one turn together, as if they were one more inner.
        turns = count + 1 if scalars else count
        start = 0
        if turns > 1:
            start = self._cursor % turns
            self._cursor = start + 1
        finished: list[InnerQueueSubscriber[R]] = []
        for turn in range(turns):
            if self._halted:
                return emitted
            index = (start + turn) % turns if start else turn
            if index == count:
                emitted, freed = self._drain_scalars(on_next, emitted, requested)
                continue
            inner = inners[index]
            queue = inner.queue
            done = inner.done  # before the queue: see InnerQueueSubscriber
            taken = 0
            while emitted != requested and queue:
                on_next(queue.popleft())
                emitted += 1
                taken += 1
                if self._halted:
                    return emitted
            if done and not queue:
                finished.append(inner)
            elif taken:
                inner.consumed(taken)
        active = count
        give_back = 0
        if finished or freed:
            with self._lock:
                if finished:
                    for inner in finished:
                        del self._inners[inner]
                    self._inner_view = tuple(self._inners)
                    active = len(self._inners)
                give_back = self._take_slots(freed + len(finished))
        if give_back:
            self._upstream.request(give_back)
        if upstream_done and active == 0 and not scalars and not self._halted:
            self._terminate(actual)  # an error recorded meanwhile wins
        return emitted

    def _drain_scalars(
        self, on_next: Callable[[R], object], emitted: int, requested: int
    ) -> tuple[int, int]:
        """The known inners' turn in a pass: return ``emitted`` updated and how many finished."""
        scalars = self._scalars
        pos = self._scalar_pos
        freed = 0
        while scalars and emitted != requested:
            values = scalars[0]
            count = len(values)
            while pos != count and emitted != requested:
                on_next(values[pos])
                pos += 1
                emitted += 1
                if self._halted:
                    self._scalar_pos = pos
                    return emitted, freed
            if pos == count:
                scalars.popleft()
                freed += 1
                pos = 0
        self._scalar_pos = pos
        return emitted, freed

    @override
    def hook_cancel_upstreams(self) -> None:
        cancel_quietly(self._upstream)
        with self._lock:  # serialized with on_next's registration (it checks _halted)
            inners = self._inner_view
        for inner in inners:
            inner.cancel()

    @override
    def hook_clear(self) -> None:
        with self._lock:
            inners = self._inner_view
            self._inners.clear()
            self._inner_view = ()
        self._scalars.clear()
        for inner in inners:
            inner.queue.clear()


class _FlatMapFlow(Flow[R], Generic[T, R]):
    __slots__ = ("_mapper", "_max_concurrency", "_name", "_prefetch", "_source")

    def __init__(
        self,
        source: Publisher[T],
        mapper: Callable[[T], Publisher[R]],
        max_concurrency: int,
        prefetch: int,
        name: str,
    ) -> None:
        self._source = source
        self._mapper = mapper
        self._max_concurrency = max_concurrency
        self._prefetch = prefetch
        self._name = name

    @override
    def _subscribe(self, subscriber: Subscriber[R]) -> None:
        self._source.subscribe(
            _FlatMapMain(subscriber, self._mapper, self._max_concurrency, self._prefetch)
        )

    def __repr__(self) -> str:
        return f"{self._source!r}.{self._name}(max_concurrency={self._max_concurrency})"


def flat_map(
    source: Flow[T],
    mapper: Callable[[T], Publisher[R]],
    max_concurrency: int,
    prefetch: int,
) -> Flow[R]:
    """See :meth:`Flow.flat_map`."""
    _check_positive("flat_map", "max_concurrency", max_concurrency)
    _check_positive("flat_map", "prefetch", prefetch)
    return _FlatMapFlow(
        source, mapper, min(max_concurrency, UNBOUNDED), min(prefetch, UNBOUNDED), "flat_map"
    )


def _identity(flow: Flow[T]) -> Flow[T]:
    return flow


def merge(sources: tuple[Publisher[T], ...], max_concurrency: int, prefetch: int) -> Flow[T]:
    """See :meth:`Flow.merge`."""
    _check_positive("merge", "max_concurrency", max_concurrency)
    _check_positive("merge", "prefetch", prefetch)
    flows = _adopt("merge", sources)
    if not flows:
        return Flow.empty()
    return _FlatMapFlow(
        Flow.from_iterable(flows),
        _identity,
        min(max_concurrency, UNBOUNDED),
        min(prefetch, UNBOUNDED),
        "merge",
    )


# -- concat -----------------------------------------------------------------------------------


class _ConcatSubscriber(ArbiterRelay[T]):
    """Relays the sources one after another through one arbiter.

    Demand: the arbiter carries the outstanding downstream demand from one
    source to the next.

    Cancellation: cancels the current source; later ones are never subscribed.

    Errors: a source's error ends the stream at once; a Rule 3.9 request is
    forwarded to the current source (which signals it in order), or, between
    sources, signalled before the next one is subscribed.

    Subscribing the next source happens in a trampoline (``_wip``), so a long
    run of synchronously completing sources does not recurse.
    """

    __slots__ = ("_index", "_sources", "_wip")

    def __init__(self, actual: Subscriber[T], sources: tuple[Flow[T], ...]) -> None:
        super().__init__(actual)
        self._sources = sources
        # Trampoline owner only.
        self._index = 0
        # Guarded by _lock: advance requests; the thread moving it from 0 subscribes.
        self._wip = 0

    def on_error(self, error: Exception) -> None:
        """End the stream with the source's error."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._active = False
        self.clear_upstream()  # it terminated: nothing to cancel
        self._stop(error)

    def on_complete(self) -> None:
        """Move on to the next source."""
        if self._actual is None:
            return
        self._active = False
        self.clear_upstream()
        self._advance()

    @override
    def hook_on_cancel(self) -> None:
        self._actual = None
        self._sources = ()

    def _stop(self, error: Exception) -> None:
        actual = self._actual
        if actual is None:
            report_undeliverable(error, f"{self!r} after terminal/cancel")
            return
        self._actual = None
        self._sources = ()
        self.cancel()
        signal_error(actual, error, self)

    def _advance(self) -> None:
        with self._lock:
            self._wip += 1
            if self._wip != 1:
                return  # the running trampoline subscribes the next source
        while True:
            actual = self._actual
            if actual is None:
                return
            if self._count:
                self.produced(self._count)
                self._count = 0
            error = self.pending_error
            if error is not None:  # Rule 3.9, requested between two sources
                self._stop(error)
                return
            sources = self._sources  # () once cancelled, from any thread
            if self._index >= len(sources):
                if self.is_cancelled:
                    return  # cancelled meanwhile: nothing to signal (Rule 3.7)
                self._actual = None
                self._sources = ()
                signal_complete(actual, self)
                return
            source = sources[self._index]
            self._index += 1
            try:
                source.subscribe(self)
            except Exception as fault:  # a third-party subscribe() that raised
                self._stop(fault)
                return
            with self._lock:
                self._wip -= 1
                if self._wip == 0:
                    return

    def start(self) -> None:
        """Hand ``self`` downstream, then subscribe the first source."""
        actual = self._actual
        assert actual is not None
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._stop(fault)
            return
        self._advance()


class _ConcatFlow(Flow[T]):
    __slots__ = ("_sources",)

    def __init__(self, sources: tuple[Flow[T], ...]) -> None:
        self._sources = sources

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        _ConcatSubscriber(subscriber, self._sources).start()

    def __repr__(self) -> str:
        return f"Flow.concat(<{len(self._sources)} sources>)"


def concat(sources: tuple[Publisher[T], ...]) -> Flow[T]:
    """See :meth:`Flow.concat`."""
    return _ConcatFlow(_adopt("concat", sources))


# -- concat_map -------------------------------------------------------------------------------


class _ConcatMapInner(SubscriptionArbiter, Generic[R]):
    """The subscriber of each inner in turn; its arbiter is downstream's demand."""

    __slots__ = ("_count", "_parent")

    def __init__(self, parent: _ConcatMapMain[Any, R]) -> None:
        super().__init__()
        self._parent = parent
        # Items relayed from the current inner; touched only by its serial signals.
        self._count = 0

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        self.set_upstream(subscription)

    def on_next(self, item: R) -> None:
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        self._count += 1
        self._parent._emit(item)

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._parent._fail(error)

    def on_complete(self) -> None:
        self.clear_upstream()
        self.produced(self._count)
        self._count = 0
        self._parent._inner_done()

    @override
    def hook_on_bad_request(
        self, n: object, error: Exception, upstream: Subscription | None
    ) -> None:
        # The parent's gate serializes the error with inner items; after the
        # stream ended a bad request is a no-op (Rule 3.6).
        self._parent._fail(error, quiet=True)


class _ConcatMapMain(Generic[T, R]):
    """Maps queued upstream items to inners and relays one inner at a time, in order.

    Demand: upstream is asked for ``prefetch`` items and refilled at 75%; the
    current inner gets exactly the outstanding downstream demand, which
    carries over to the next inner (``SubscriptionArbiter``).

    Cancellation: cancels upstream and the current inner; clears the queue.

    Errors: the first error (upstream, the inner, ``mapper``, a Rule 3.9
    request) cancels everything and is signalled at once (Reactor's
    ``IMMEDIATE`` mode).

    Known inners (``_known_values``) whose items the outstanding demand covers
    are relayed by the loop without a subscription, as a synchronous inner
    would be; an empty one is skipped. Otherwise the inner is subscribed.

    Serialization: inner items go straight downstream while errors may come
    from the upstream thread, so downstream signals pass a non-blocking
    ``_gate`` lock. ``on_next`` holds it briefly; the terminal signal takes it
    for good (Rule 1.7). When the gate is busy the terminal is left in
    ``_terminal`` and the ``on_next`` thread delivers it on its way out.
    """

    __slots__ = (
        "_active",
        "_actual",
        "_consumed",
        "_gate",
        "_halted",
        "_inner",
        "_limit",
        "_lock",
        "_main_done",
        "_mapper",
        "_prefetch",
        "_queue",
        "_terminal",
        "_upstream",
        "_wip",
    )

    def __init__(
        self, actual: Subscriber[R], mapper: Callable[[T], Publisher[R]], prefetch: int
    ) -> None:
        # Invariant: None once a terminal signal was delivered or downstream cancelled.
        self._actual: Subscriber[R] | None = actual
        self._mapper = mapper
        self._prefetch = prefetch
        self._limit = replenish_limit(prefetch)
        self._upstream: Subscription = CANCELLED
        self._lock = threading.Lock()
        # Appended by the upstream thread, popped by the loop owner.
        self._queue: deque[T] = deque()
        # Set once when upstream completed, after the last item was queued. An
        # upstream error never sets it: it goes to _terminal (as in flat_map).
        self._main_done = False
        # Guarded by _lock: the drain loop's work-in-progress counter.
        self._wip = 0
        # Written by the loop owner (True) and the inner's on_complete (False,
        # followed by _schedule); read by the loop owner.
        self._active = False
        # Loop owner only: upstream items taken since the last refill.
        self._consumed = 0
        # Set once: nothing more is emitted or subscribed.
        self._halted = False
        # How the stream ends; claimed by whoever holds the gate for good.
        self._terminal = Terminal(self)
        self._gate = threading.Lock()
        self._inner: _ConcatMapInner[R] = _ConcatMapInner(self)

    # -- downstream side -----------------------------------------------------------------

    def request(self, n: int) -> None:
        """Add to the demand the current (and next) inner is asked for (Rules 3.8, 3.9)."""
        self._inner.request(n)

    def cancel(self) -> None:
        """Cancel upstream and the current inner; drop the subscriber (Rules 3.7, 3.13)."""
        if not self._terminal.cancel():
            return
        self._halted = True
        self._actual = None
        self._inner.cancel()
        cancel_quietly(self._upstream)
        self._schedule()  # the loop owner clears the queue

    # -- upstream side ---------------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept upstream, hand ``self`` downstream, prefetch."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._upstream is not CANCELLED:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return
        self._upstream = subscription
        actual = self._actual
        if actual is None:  # pragma: no cover
            return
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fail(fault)
            return
        if not self._halted:
            subscription.request(self._prefetch)

    def on_next(self, item: T) -> None:
        """Queue ``item``; the loop maps it once the previous inner is done."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._halted or self._main_done:
            return  # Rule 2.8
        if len(self._queue) >= self._prefetch:
            self._fail(
                ProtocolViolationError(
                    f"Rule 1.1: upstream of {self!r} sent more than the "
                    f"{self._prefetch} items requested"
                )
            )
            return
        self._queue.append(item)
        self._schedule()

    def on_error(self, error: Exception) -> None:
        """Fail at once (cancels the current inner)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if self._main_done:
            report_undeliverable(error, f"{self!r} after upstream terminal (Rule 1.7)")
            return
        self._fail(error)  # recorded in _terminal; _main_done is for completion only

    def on_complete(self) -> None:
        """Complete after the queued items' inners have finished."""
        if self._main_done:
            return
        self._main_done = True
        self._schedule()

    # -- inner side ----------------------------------------------------------------------------

    def _emit(self, item: R) -> None:
        gate = self._gate
        if not gate.acquire(blocking=False):
            return  # the terminal signal owns the gate (Rule 1.7)
        try:
            actual = self._actual
            if actual is not None:
                actual.on_next(item)
        except Exception as fault:  # Rule 2.13
            gate.release()
            self._fail(fault)
            return
        gate.release()
        if self._terminal._ending is not None:
            self._deliver_terminal()  # it arrived while we held the gate

    def _inner_done(self) -> None:
        self._active = False
        self._schedule()

    # -- terminal ---------------------------------------------------------------------------------

    def _fail(self, error: Exception, *, quiet: bool = False) -> None:
        if not self._terminal.fail(error, eager=True, quiet=quiet):
            # Too late (reported unless quiet). An ending recorded first may
            # have found the gate busy and left its delivery to the thread in
            # on_next, which may be this one, failing: deliver it now.
            self._deliver_terminal()
            return
        self._halted = True
        self._inner.cancel()
        cancel_quietly(self._upstream)
        self._deliver_terminal()
        self._schedule()  # the loop owner clears the queue

    def _complete(self) -> None:
        self._terminal.complete()  # an error recorded first wins
        self._halted = True
        self._deliver_terminal()

    def _deliver_terminal(self) -> None:
        # Whoever takes the gate keeps it: no on_next can follow (Rule 1.7).
        if not self._gate.acquire(blocking=False):
            return  # an on_next is in flight; its thread calls us again
        ending = self._terminal.claim()
        actual, self._actual = self._actual, None
        if actual is None or ending is None:
            return
        if ending.error is None:
            signal_complete(actual, self)
        else:
            signal_error(actual, ending.error, self)

    # -- the loop ----------------------------------------------------------------------------------

    def _schedule(self) -> None:
        with self._lock:
            self._wip += 1
            if self._wip != 1:
                return
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        missed = 1
        while True:
            if self._halted:
                queue.clear()
                return  # _wip stays above zero: the loop never runs again
            if not self._active:
                done = self._main_done  # before the queue: items precede it
                if queue:
                    item = queue.popleft()
                    self._refill()
                    try:
                        flow = _inner_flow(self._mapper, item)
                    except Exception as error:
                        self._fail(error)
                        continue
                    values = _known_values(flow)
                    if values is not None and self._emit_known(values):
                        continue  # it completed at once: map the next item
                    self._active = True
                    try:
                        # A synchronous inner completes in here; its _schedule
                        # only bumps _wip, so the next one starts in this loop.
                        flow.subscribe(self._inner)
                    except Exception as error:  # a third-party subscribe() that raised
                        self._fail(error)
                        continue
                elif done:
                    self._complete()
                    continue
            with self._lock:
                self._wip -= missed
                missed = self._wip
                if missed == 0:
                    return

    def _emit_known(self, values: Sequence[R]) -> bool:
        """Relay a known inner without subscribing, if the demand covers all of it (loop owner).

        ``False`` (not enough demand, a pending Rule 3.9 error, cancelled):
        subscribe to it instead, which waits for demand as any inner does.
        """
        inner = self._inner
        count = len(values)
        if count == 0:
            return True  # completes at once, whatever the demand (Rule 1.2)
        if inner.is_cancelled or inner.pending_error is not None or inner.requested < count:
            return False
        emit = self._emit
        for value in values:
            if self._halted:
                return True
            emit(value)
        inner.produced(count)  # as the inner's on_complete would
        return True

    def _refill(self) -> None:
        consumed = self._consumed + 1
        if consumed == self._limit:
            self._consumed = 0
            self._upstream.request(consumed)
        else:
            self._consumed = consumed

    def __repr__(self) -> str:
        state = "halted" if self._halted else "active"
        return f"<concat_map {state} queued={len(self._queue)}>"


class _ConcatMapFlow(Flow[R], Generic[T, R]):
    __slots__ = ("_mapper", "_prefetch", "_source")

    def __init__(
        self, source: Publisher[T], mapper: Callable[[T], Publisher[R]], prefetch: int
    ) -> None:
        self._source = source
        self._mapper = mapper
        self._prefetch = prefetch

    @override
    def _subscribe(self, subscriber: Subscriber[R]) -> None:
        self._source.subscribe(_ConcatMapMain(subscriber, self._mapper, self._prefetch))

    def __repr__(self) -> str:
        return f"{self._source!r}.concat_map(prefetch={self._prefetch})"


def concat_map(source: Flow[T], mapper: Callable[[T], Publisher[R]], prefetch: int) -> Flow[R]:
    """See :meth:`Flow.concat_map`."""
    _check_positive("concat_map", "prefetch", prefetch)
    return _ConcatMapFlow(source, mapper, min(prefetch, UNBOUNDED))


# -- zip ----------------------------------------------------------------------------------------


class _ZipInner(InnerQueueSubscriber[object]):
    """A source of ``zip``: completes a tuple at once when its item is the last one missing.

    An item that finds its own queue empty, every other source's queue
    non-empty, downstream demand and no drain loop running is paired and
    emitted by the calling thread, which owns the loop for that moment
    (``_ZipMain._wip`` taken from 0 to 1 under ``_lock``). An item that cannot
    complete a tuple (another queue is empty) is queued without a drain pass:
    the item that fills the last empty queue announces the work.
    """

    __slots__ = ("_first", "_other_queue", "_others")

    def __init__(self, parent: _ZipMain, prefetch: int, index: int) -> None:
        super().__init__(parent, prefetch)
        # Set by the parent once every source exists: the other sources, and
        # for a zip of two the other's queue and whether this one is first.
        self._others: tuple[InnerQueueSubscriber[object], ...] = ()
        self._other_queue: deque[object] | None = None
        self._first = index == 0

    @override
    def on_next(self, item: object) -> None:
        """Pair ``item`` at once, queue it quietly, or queue it and drain."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        parent: _ZipMain = self._parent  # type: ignore[assignment]
        if parent._halted or self.done:
            return  # Rule 2.8
        queue = self.queue
        if queue and len(queue) >= self._prefetch:
            super().on_next(item)  # fails the stream: Rule 1.1
            return
        other_queue = self._other_queue
        if other_queue is not None:  # a zip of two
            if not other_queue:
                # No tuple can be formed yet. Whoever fills the last empty
                # queue checks the others after its append, so one of the
                # appenders always sees every queue non-empty and drains.
                queue.append(item)
                if other_queue:
                    parent._schedule()  # filled meanwhile by another thread
                return
        else:
            others = self._others
            for other in others:
                if not other.queue:
                    queue.append(item)  # as above
                    for again in others:
                        if not again.queue:
                            return
                    parent._schedule()
                    return
        if queue:
            queue.append(item)  # earlier items of this source go first
            parent._schedule()
            return
        lock = parent._lock
        lock.acquire()
        try:
            own = parent._wip == 0 and parent._requested != 0
            if own:
                parent._wip = 1  # this thread is the loop owner until it lets go
        finally:
            lock.release()
        if not own:
            queue.append(item)
            parent._schedule()
            return
        actual = parent._actual
        terminal = parent._terminal
        if actual is None or terminal._ending is not None or terminal._closed or parent._halted:
            queue.append(item)
            parent._run_drain()  # the loop decides: release, terminate or drain
            return
        # Only the loop owner pops. A loop that ran between our look at the
        # other queues and our claim may have taken the heads we saw.
        row: tuple[object, ...]
        if other_queue is not None:
            if not other_queue:
                queue.append(item)
                parent._run_drain()
                return
            row = (item, other_queue.popleft()) if self._first else (other_queue.popleft(), item)
        else:
            for other in self._others:
                if not other.queue:
                    queue.append(item)
                    parent._run_drain()
                    return
            row = tuple(
                [item if inner is self else inner.queue.popleft() for inner in parent._inners]
            )
        try:
            actual.on_next(row)
        except Exception as fault:  # Rule 2.13: as the loop does
            if terminal._closed:
                report_undeliverable(fault, f"{parent!r} after terminal/cancel")
                parent._release()
            else:
                parent._terminate(actual, fault)
            return
        taken = parent._taken + 1  # _took_one, inlined
        if taken < parent._limit:
            parent._taken = taken
        else:
            parent._taken = 0
            for inner in parent._inners:
                inner.consumed(taken)
        # done before the queue: items are queued before done is set. A head
        # we took may have been a finished source's last: a pass completes.
        over = False
        if parent._any_done:
            for inner in parent._inners:
                if inner.done and not inner.queue:
                    over = True
        lock.acquire()
        try:
            requested = parent._requested
            if requested != UNBOUNDED:  # produced(requested, 1), inlined on this hot path
                parent._requested = requested - 1
            more = over or parent._wip != 1
            if not more:
                parent._wip = 0
        finally:
            lock.release()
        if more:
            parent._run_drain()  # work arrived meanwhile, or the end: one full pass

    @override
    def on_error(self, error: Exception) -> None:
        """Pass the failure to the parent."""
        self._parent._any_done = True  # type: ignore[attr-defined]  # before done
        super().on_error(error)

    @override
    def on_complete(self) -> None:
        """Mark this source finished and let the parent drain."""
        if self.done:
            return
        self._parent._any_done = True  # type: ignore[attr-defined]  # before done
        super().on_complete()


class _ZipMain(QueueDrain[tuple[object, ...]]):
    """Pairs the heads of every source's queue into a tuple, against downstream demand.

    Demand: each source is asked for ``prefetch`` and refilled at 75% of what
    was consumed; a tuple is emitted only against downstream demand.

    Cancellation: cancels every source, clears the queues.

    Completion: as soon as one source is done with an empty queue (no further
    tuple is possible), the others are cancelled and downstream completes,
    whatever the demand.

    Errors: the first error from any source (or a Rule 3.9 request) cuts
    ahead, cancels the other sources and is signalled once.

    Concurrency: the item that completes a tuple (every other queue holds a
    head) is paired and emitted by its own thread when downstream demand
    allows and no loop runs; that thread owns the loop for the moment
    (``_wip`` 0 -> 1 under ``_lock``) and runs a full pass if work arrived
    meanwhile. An item that cannot complete a tuple is queued without a pass.
    """

    __slots__ = ("_any_done", "_inners", "_limit", "_taken")

    def __init__(self, actual: Subscriber[tuple[object, ...]], count: int, prefetch: int) -> None:
        super().__init__(actual)
        inners = tuple(_ZipInner(self, prefetch, index) for index in range(count))
        for inner in inners:
            inner._others = tuple(other for other in inners if other is not inner)
            if count == 2:
                inner._other_queue = inner._others[0].queue
        self._inners: tuple[_ZipInner, ...] = inners
        # Every source refills at the same count: tuples taken since the last
        # refill are counted once here instead of per source.
        self._limit = replenish_limit(prefetch) if prefetch < UNBOUNDED else UNBOUNDED
        # Loop owner only. Invariant: _taken < _limit.
        self._taken = 0
        # Set (never cleared) before any source's done becomes visible: while
        # it is False, the direct path skips looking for a finished source.
        self._any_done = False

    def start(self, sources: tuple[Flow[object], ...]) -> None:
        actual = self._actual
        assert actual is not None
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fail(fault)
            return
        for source, inner in zip(sources, self._inners, strict=True):
            if self._halted:
                return
            try:
                source.subscribe(inner)
            except Exception as error:  # a third-party subscribe() that raised
                self._fail(error)
                return

    @override
    def hook_drain(self, actual: Subscriber[tuple[object, ...]], requested: int) -> int:
        inners = self._inners
        emitted = 0
        while not self._halted:
            ready = True
            for inner in inners:
                # done before the queue: items are queued before done is set
                if inner.done and not inner.queue:
                    self._cancel_upstreams()  # no further tuple can be formed
                    self._terminate(actual, None)
                    return emitted
                if not inner.queue:
                    ready = False
            if not ready or emitted == requested:
                break
            values = tuple([inner.queue.popleft() for inner in inners])
            actual.on_next(values)
            emitted += 1
            self._took_one()
        return emitted

    def _took_one(self) -> None:
        """One tuple was taken (loop owner): every source refills at 75% of ``prefetch``."""
        taken = self._taken + 1
        if taken < self._limit:
            self._taken = taken
            return
        self._taken = 0
        for inner in self._inners:
            inner.consumed(taken)

    @override
    def hook_cancel_upstreams(self) -> None:
        for inner in self._inners:
            inner.cancel()

    @override
    def hook_clear(self) -> None:
        for inner in self._inners:
            inner.queue.clear()


class _ZipFlow(Flow[tuple[object, ...]]):
    __slots__ = ("_prefetch", "_sources")

    def __init__(self, sources: tuple[Flow[object], ...], prefetch: int) -> None:
        self._sources = sources
        self._prefetch = prefetch

    @override
    def _subscribe(self, subscriber: Subscriber[tuple[object, ...]]) -> None:
        if not self._sources:
            subscriber.on_subscribe(EmptySubscription())
            signal_complete(subscriber, self)
            return
        _ZipMain(subscriber, len(self._sources), self._prefetch).start(self._sources)

    def __repr__(self) -> str:
        return f"Flow.zip(<{len(self._sources)} sources>, prefetch={self._prefetch})"


def zip_(sources: tuple[Publisher[object], ...], prefetch: int) -> Flow[tuple[object, ...]]:
    """See :meth:`Flow.zip`."""
    _check_positive("zip", "prefetch", prefetch)
    return _ZipFlow(_adopt("zip", sources), min(prefetch, UNBOUNDED))
