"""Operators that combine publishers: flat_map, concat_map, merge, concat, zip."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import ArbiterRelay, SubscriptionArbiter, cancel_quietly
from .._core._demand import UNBOUNDED
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, EmptySubscription
from .._core._queue_drain import InnerQueueSubscriber, QueueDrain, replenish_limit
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from .._flow import Flow

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
    if publisher is None:
        raise TypeError(f"{mapper!r} returned None for {item!r}, not a publisher")
    return Flow.from_publisher(publisher)


# -- flat_map / merge -------------------------------------------------------------------


class _FlatMapMain(QueueDrain[R], Generic[T, R]):
    """Subscribes up to ``max_concurrency`` inners and merges their queues downstream.

    Demand: upstream is asked for ``max_concurrency`` items, then one more per
    inner that finished; each inner is asked for ``prefetch`` and refilled at
    75% of what the loop consumed; the loop emits only against downstream
    demand, visiting the inners round-robin.

    Cancellation: cancels upstream and every active inner, clears the queues.

    Errors: the first error (upstream, an inner, ``mapper``, a Rule 3.9
    request) cuts ahead of queued items, cancels everything else and is
    signalled once; later ones go to the undeliverable hook.
    """

    __slots__ = (
        "_cursor",
        "_inners",
        "_main_done",
        "_mapper",
        "_max_concurrency",
        "_prefetch",
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
        # Invariant: CANCELLED until on_subscribe.
        self._upstream: Subscription = CANCELLED
        # Set once when upstream completed, after the last inner was
        # registered; read without the lock. An upstream error never sets it:
        # it goes to _terminal, so no pass can see "done" without the error.
        self._main_done = False
        # Guarded by _lock: the active inners, in subscription order.
        self._inners: dict[InnerQueueSubscriber[R], None] = {}
        # Loop owner only: where the next pass starts (fairness between inners).
        self._cursor = 0

    # -- upstream side ---------------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept upstream, hand ``self`` downstream, ask for ``max_concurrency`` items."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if self._upstream is not CANCELLED:
            cancel_quietly(subscription)  # Rule 2.5
            report_undeliverable(
                ProtocolViolationError("Rule 2.5: a second on_subscribe was cancelled"),
                repr(self),
            )
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
        """Map ``item`` to a publisher and subscribe to it."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._halted or self._main_done:
            return  # Rule 2.8
        try:
            flow = _inner_flow(self._mapper, item)
        except Exception as error:
            self._fail(error)
            return
        inner: InnerQueueSubscriber[R] = InnerQueueSubscriber(self, self._prefetch)
        with self._lock:
            if self._halted:
                return
            self._inners[inner] = None
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
        """Complete once every inner has finished and its queue was delivered."""
        if self._main_done:
            return
        self._main_done = True
        self._schedule()

    # -- the drain ------------------------------------------------------------------------------

    @override
    def hook_drain(self, actual: Subscriber[R], requested: int) -> int:
        # Read _main_done before the snapshot: an inner is registered
        # before upstream can complete, so "done and no inners" is final.
        upstream_done = self._main_done
        with self._lock:
            inners = list(self._inners)
        count = len(inners)
        if count > 1:
            start = self._cursor % count
            self._cursor = start + 1
            inners = inners[start:] + inners[:start]
        on_next = actual.on_next
        emitted = 0
        finished: list[InnerQueueSubscriber[R]] = []
        for inner in inners:
            if self._halted:
                return emitted
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
        if finished:
            with self._lock:
                for inner in finished:
                    del self._inners[inner]
                active = len(self._inners)
            if not upstream_done:
                self._upstream.request(len(finished))  # one new inner per finished one
        else:
            active = count
        if upstream_done and active == 0 and not self._halted:
            self._terminate(actual)  # an error recorded meanwhile wins
        return emitted

    @override
    def hook_cancel_upstreams(self) -> None:
        cancel_quietly(self._upstream)
        with self._lock:
            inners = list(self._inners)
        for inner in inners:
            inner.cancel()

    @override
    def hook_clear(self) -> None:
        with self._lock:
            inners = list(self._inners)
            self._inners.clear()
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
        # The parent's gate serializes the error with inner items.
        self._parent._fail(error)


class _ConcatMapMain(Generic[T, R]):
    """Maps queued upstream items to inners and relays one inner at a time, in order.

    Demand: upstream is asked for ``prefetch`` items and refilled at 75%; the
    current inner gets exactly the outstanding downstream demand, which
    carries over to the next inner (``SubscriptionArbiter``).

    Cancellation: cancels upstream and the current inner; clears the queue.

    Errors: the first error (upstream, the inner, ``mapper``, a Rule 3.9
    request) cancels everything and is signalled at once (Reactor's
    ``IMMEDIATE`` mode).

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
        "_mapper",
        "_prefetch",
        "_queue",
        "_terminal",
        "_upstream",
        "_upstream_done",
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
        # Set once, after the last item was queued.
        self._upstream_done = False
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
            cancel_quietly(subscription)  # Rule 2.5
            report_undeliverable(
                ProtocolViolationError("Rule 2.5: a second on_subscribe was cancelled"),
                repr(self),
            )
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
        if self._halted or self._upstream_done:
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
        if self._upstream_done:
            report_undeliverable(error, f"{self!r} after upstream terminal (Rule 1.7)")
            return
        self._fail(error)  # recorded in _terminal; _upstream_done stays for completion

    def on_complete(self) -> None:
        """Complete after the queued items' inners have finished."""
        if self._upstream_done:
            return
        self._upstream_done = True
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

    def _fail(self, error: Exception) -> None:
        if not self._terminal.fail(error, eager=True):
            return  # reported by the terminal
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
                done = self._upstream_done  # before the queue: items precede it
                if queue:
                    item = queue.popleft()
                    self._refill()
                    try:
                        flow = _inner_flow(self._mapper, item)
                    except Exception as error:
                        self._fail(error)
                        continue
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
    """

    __slots__ = ("_inners",)

    def __init__(self, actual: Subscriber[tuple[object, ...]], count: int, prefetch: int) -> None:
        super().__init__(actual)
        self._inners: tuple[InnerQueueSubscriber[object], ...] = tuple(
            InnerQueueSubscriber(self, prefetch) for _ in range(count)
        )

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
            for inner in inners:
                inner.consumed(1)
        return emitted

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
