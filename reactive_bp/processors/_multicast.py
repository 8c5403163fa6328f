"""``MulticastProcessor``: one source, many subscribers, and a policy for the slow ones.

With several subscribers, *whose* demand paces the source? The user picks a
``SlowSubscriberPolicy``:

* ``WAIT``: the slowest one. Items wait in one shared queue of ``buffer_size``
  and are emitted to every subscriber at once, as many as the smallest demand
  allows (coordinated emission); upstream is requested at most ``buffer_size``
  ahead of the slowest subscriber, and ``offer`` answers ``FULL`` when the
  queue (plus what upstream was asked for) reaches it.
* ``DROP``, ``LATEST``, ``ERROR``: each subscriber on its own. An item is
  handed to every subscriber at once: one with demand queues it; one without
  misses it (``DROP``, counted and passed to ``on_dropped``), keeps only the
  newest (``LATEST``), or keeps up to ``buffer_size`` items beyond its demand
  and then fails alone with ``BufferOverflowError`` (``ERROR``). Upstream is
  requested in batches of ``buffer_size`` (75% replenishment), never unbounded.

How the rules hold:

* Rule 1.3 (serial signals) and Rule 3.3 (bounded recursion): one drain loop
  serves every subscriber. Ownership is a work-in-progress counter (``_wip``)
  under ``_lock``, as in ``QueueDrain``: a thread that brings work (an item,
  demand, a cancel, a subscriber, an ending) increments it, only the thread
  that moved it from 0 runs the loop, and the loop runs again while it finds
  it incremented behind its back. Only the loop owner calls a subscriber's
  ``on_next``/``on_error``/``on_complete`` (``on_subscribe`` comes first, from
  the subscribing thread, before the subscriber joins the loop, Rule 1.9), and
  only it calls the upstream's ``request``/``cancel`` (Rule 2.7).
* Rule 1.1: a pass takes at most a subscriber's outstanding demand from its
  queue (under ``WAIT``: the smallest demand of all from the shared queue).
* Each pass decides under ``_lock`` (``_plan_locked``: a ``_Pass`` of what to
  deliver, drop and request) and acts outside it (``_perform``): no user code,
  no subscriber and no upstream is ever called with ``_lock`` held.
* How the source ends (upstream's ``on_complete``/``on_error``, ``complete()``
  / ``error()``, the processor's own failure) is one ``Terminal``
  (``_terminal``), written under ``_lock``. Each subscriber has its own
  ``Terminal`` too (its cancel, its Rule 3.9 error, its overflow); a pass that
  finds a subscriber with nothing left to deliver records the source's ending
  in that subscriber's terminal and claims it there: an error recorded first
  (its own Rule 3.9 error) wins, and exactly one terminal signal is delivered.
  The source's ending follows the buffered items unless it is eager, and
  then cuts ahead of them: the processor's own failure, ``DisconnectedError``
  of ``auto_cancel``, and a source error under ``DROP``/``LATEST``/``ERROR``.
* Rule 1.7: a subscriber leaves the loop when its terminal signal is claimed,
  or when it cancelled; nothing is signalled to it afterwards.
* Rule 2.5: a second ``on_subscribe`` is cancelled and reported.
* Rule 2.13: ``None`` from upstream or ``offer`` raises ``TypeError``; a
  subscriber whose ``on_next`` raises is treated as cancelled and gets that
  error through ``on_error``; the others go on.
* Rule 3.9: a bad ``request`` fails that subscriber only, ahead of its
  buffered items.
* Rule 3.13: ``cancel`` drops the subscriber at once; the next pass removes
  its subscription from the loop.

Accounting: per subscriber, at every moment (under ``_lock``),
``produced == delivered + dropped + buffered``, where ``produced`` counts the
items that became due to it while it was subscribed (under ``WAIT`` that
includes the items still queued when it subscribed). Every item counted as
dropped for a subscriber goes to ``on_dropped(subscriber_id, item)``.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import cancel_quietly, refuse_second_subscription
from .._core._demand import add_cap, check_request, produced, sub_or_zero
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED
from .._core._push import BufferOverflowError, BufferStats, OfferResult
from .._core._queue_drain import replenish_limit
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Ending, Terminal
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription
    from ..metrics import BackpressureMeter

__all__ = [
    "DisconnectedError",
    "MulticastProcessor",
    "MulticastSubscription",
    "SlowSubscriberPolicy",
    "SubscriberStats",
]

T = TypeVar("T")

_get_ident = threading.get_ident


class SlowSubscriberPolicy(enum.Enum):
    """What a multicast source does about a subscriber that has no demand."""

    WAIT = "wait"
    """Pace the source by the slowest subscriber (a shared buffer of ``buffer_size``)."""
    DROP = "drop"
    """The slow subscriber misses the item (counted, passed to ``on_dropped``)."""
    LATEST = "latest"
    """The slow subscriber keeps only the newest item, delivered when it requests."""
    ERROR = "error"
    """The slow subscriber fails alone with ``BufferOverflowError`` once it lags ``buffer_size``."""


class DisconnectedError(Exception):
    """A hot source was cut off from its upstream.

    Signalled by a ``MulticastProcessor`` whose last subscriber left with
    ``auto_cancel`` on (to later subscribers), and by a ``ConnectableFlow``
    whose connection was disposed (to the subscribers of that connection).
    """


@dataclass(frozen=True)
class SubscriberStats:
    """One subscriber's counters: ``produced == delivered + dropped + buffered``."""

    subscriber_id: int
    """The subscriber's id (``MulticastSubscription.subscriber_id``)."""
    produced: int
    """Items that became due to it while it was subscribed."""
    delivered: int
    """Items handed to its ``on_next``."""
    dropped: int
    """Items it will never get (its policy dropped them, or it left with them buffered)."""
    buffered: int
    """Items waiting for its demand (under ``WAIT``: the shared queue)."""
    requested: int
    """Its outstanding demand (``UNBOUNDED`` once unbounded)."""
    active: bool
    """Whether it is still subscribed (no terminal signal claimed, not cancelled)."""


OnDropped = Callable[[int, T], object]


class MulticastSubscription(Generic[T]):
    """The subscription a ``MulticastProcessor`` hands each subscriber.

    Besides ``request``/``cancel`` it tells the subscriber its
    ``subscriber_id`` (the id ``on_dropped`` and ``subscriber_stats()`` use)
    and its ``stats``. Every mutable field is guarded by the processor's
    ``_lock``.
    """

    __slots__ = (
        "_actual",
        "_attached",
        "_parent",
        "_queue",
        "_requested",
        "_terminal",
        "delivered",
        "dropped",
        "produced",
        "subscriber_id",
    )

    def __init__(self, parent: MulticastProcessor[T], actual: Subscriber[T], ident: int) -> None:
        self._parent = parent
        # Invariant: None once cancelled or once its terminal signal was claimed
        # (Rule 3.13); read by the loop owner under the processor's _lock.
        self._actual: Subscriber[T] | None = actual
        # Whether it is in the processor's loop (_subs); set after on_subscribe
        # returned, cleared when a pass removes it.
        self._attached = False
        # Outstanding demand not yet delivered, capped at UNBOUNDED.
        self._requested = 0
        # Its own queue (DROP/LATEST/ERROR). Invariant: under DROP at most
        # _requested items; under LATEST at most _requested + 1; under ERROR at
        # most _requested + buffer_size. Unused under WAIT (the shared queue).
        self._queue: deque[T] = deque()
        # Its own ending: cancel (closed), a Rule 3.9 error or an overflow
        # (eager), or the source's ending recorded by the pass that delivers it.
        # Every transition is made under the processor's _lock.
        self._terminal = Terminal(self)
        self.subscriber_id: Final = ident
        """This subscriber's id: 0, 1, 2, ... in subscription order."""
        self.produced = 0
        self.delivered = 0
        self.dropped = 0

    def request(self, n: int) -> None:
        """Add ``n`` to this subscriber's demand; a bad ``n`` fails it alone (Rule 3.9)."""
        error = None if n.__class__ is int and n > 0 else check_request(n)
        parent = self._parent
        with parent._lock:
            terminal = self._terminal
            if terminal._closed:
                return  # Rule 3.6
            if error is None:
                self._requested = add_cap(self._requested, n)
            else:
                # Eager: cuts ahead of its buffered items; a second one is a no-op.
                terminal.fail(error, eager=True, quiet=True)
            owner = parent._enter_locked()
        if owner:
            parent._drain_loop()

    def cancel(self) -> None:
        """Stop this subscriber's signals and release it (Rules 3.5, 3.7, 3.13)."""
        parent = self._parent
        with parent._lock:
            if not self._terminal.cancel():
                return  # Rule 3.7
            self._actual = None  # Rule 3.13
            # The next pass counts what it had buffered as dropped and removes it.
            owner = parent._enter_locked() if self._attached else False
        if owner:
            parent._drain_loop()

    @property
    def stats(self) -> SubscriberStats:
        """A consistent snapshot of this subscriber's counters."""
        with self._parent._lock:
            return self._stats_locked()

    def _stats_locked(self) -> SubscriberStats:
        return SubscriberStats(
            subscriber_id=self.subscriber_id,
            produced=self.produced,
            delivered=self.delivered,
            dropped=self.dropped,
            buffered=self._buffered_locked(),
            requested=self._requested,
            active=not self._terminal._closed,
        )

    def _buffered_locked(self) -> int:
        if not self._attached:
            return 0
        if self._parent._wait:
            return len(self._parent._queue)
        return len(self._queue)

    @property
    def _open(self) -> bool:
        """Neither cancelled nor ending on its own (read under the processor's _lock)."""
        terminal = self._terminal
        return terminal._ending is None and not terminal._closed

    def __repr__(self) -> str:
        return f"<MulticastSubscription id={self.subscriber_id} {self._terminal!r}>"


Delivery = tuple[MulticastSubscription[T], "Subscriber[T] | None", Sequence[T], Ending | None]


class _Pass(Generic[T]):
    """What one pass of the loop does outside the lock, decided under it."""

    __slots__ = ("again", "cancel", "deliveries", "dropped", "request", "upstream")

    def __init__(self) -> None:
        # Per subscriber, in order: items to deliver, then (or instead) an ending.
        self.deliveries: list[Delivery[T]] = []
        # (subscriber_id, item) for on_dropped.
        self.dropped: list[tuple[int, T]] = []
        # Upstream actions (the loop owner is the only caller, Rule 2.7).
        self.upstream: Subscription = CANCELLED
        self.request = 0
        self.cancel = False
        # Whether another pass is due even if no new work arrives.
        self.again = False


class MulticastProcessor(Flow[T], Generic[T]):
    """A hot ``Flow`` shared by many subscribers, each with its own demand.

    It is a ``Processor[T, T]``: subscribe it to an upstream, or push into it
    with the ``SourceQueue``-shaped API (``offer``, ``offer_blocking``, ``await
    offer_wait``, ``await ready()``, ``desired_size``, ``complete``, ``error``,
    ``stats``), or both (offers and upstream share the buffer). Chain operators
    on it like on any ``Flow``.

    ::

        policy WAIT, A requests 3, B requests 1:
            source:  -a-b-c-|
            A:       -a-----.....b-c-|   (b, c wait until B asks for them)
            B:       -a-----.....b-c-|
        policy DROP, A requests 3, B requests 1:
            A:       -a-b-c-|
            B:       -a-|                (b, c dropped for B: on_dropped(B, b), ...)
        policy LATEST: B gets a, then c when it requests again (b is replaced)
        policy ERROR, buffer_size 1: B gets a, keeps b, then X (BufferOverflowError) at c

    A subscriber sees the items that arrive after it subscribed (after its
    ``on_subscribe`` returned); under ``WAIT`` also the items still queued
    then (not yet emitted to anyone: with coordinated emission nobody got
    them yet). Before the first subscriber, items wait in the queue up to
    ``buffer_size`` under ``WAIT`` (Reactor's warm-up) and are dropped and
    counted (``stats.dropped``) under the other policies.

    Demand: each subscriber's own; none ever gets more than it requested
    (Rule 1.1). Upstream is asked for ``buffer_size`` items, then for more
    as items leave: under ``WAIT`` when they were emitted to every
    subscriber (at most ``buffer_size`` items are ever requested but not yet
    emitted), under the other policies as they arrive (handed out or dropped
    at once).

    Cancellation: a subscriber's cancel removes it (what it had buffered is
    counted as dropped); the others go on. With ``auto_cancel`` (default)
    the processor shuts down when its last subscriber leaves (cancels, or
    fails on its own): upstream is cancelled, queued items are dropped,
    ``offer`` answers ``CLOSED`` and later subscribers get
    ``DisconnectedError`` (Reactor's ``Sinks.many().multicast()`` with
    ``autoCancel``). A processor nobody has subscribed to yet never shuts
    down this way.

    Errors: the source's ending (upstream ``on_complete``/``on_error``,
    ``complete()``/``error()``) reaches every current subscriber and every
    later one. Completion follows each subscriber's buffered items (nothing is
    lost). A failure follows the shared queue under ``WAIT`` (everyone gets
    the same items, then the error); under ``DROP``, ``LATEST`` and ``ERROR``
    it cuts ahead of what each subscriber holds beyond its deliveries (counted
    as dropped), as ``on_backpressure_*`` does, so a subscriber without
    demand hears of it at once (Rule 4.2). A subscriber's own failure (Rule 3.9 request,
    ``BufferOverflowError`` under ``ERROR``, a raising ``on_next``) ends that
    subscriber only, ahead of its buffered items. A raising ``on_dropped``
    fails the processor: upstream is cancelled and every subscriber gets that
    error, ahead of buffered items. Upstream sending beyond the demand it was
    given (Rule 1.1) fails the processor with ``ProtocolViolationError``.

    Example:
        >>> hub = MulticastProcessor[int](buffer_size=4)
        >>> a, b = [], []
        >>> _ = hub.subscribe_with(a.append)
        >>> _ = hub.subscribe_with(b.append)
        >>> [hub.offer(i).value for i in range(3)]
        ['enqueued', 'enqueued', 'enqueued']
        >>> hub.complete()
        >>> a, b
        ([0, 1, 2], [0, 1, 2])
    """

    __slots__ = (
        "__weakref__",
        "_async_waiters",
        "_auto_cancel",
        "_buffer_size",
        "_has_upstream",
        "_limit",
        "_lock",
        "_next_id",
        "_on_dropped",
        "_outstanding",
        "_owner",
        "_policy",
        "_queue",
        "_room",
        "_subs",
        "_subscribing",
        "_terminal",
        "_upstream",
        "_upstream_over",
        "_wait",
        "_waiters",
        "_wip",
        "stats",
    )

    def __init__(
        self,
        buffer_size: int = 256,
        policy: SlowSubscriberPolicy = SlowSubscriberPolicy.WAIT,
        auto_cancel: bool = True,
        on_dropped: OnDropped[T] | None = None,
        *,
        meter: BackpressureMeter | None = None,
    ) -> None:
        if type(buffer_size) is not int or buffer_size <= 0:
            raise ValueError(f"buffer_size must be a positive int, got {buffer_size!r}")
        if not isinstance(policy, SlowSubscriberPolicy):
            raise TypeError(f"policy must be a SlowSubscriberPolicy, got {policy!r}")
        if on_dropped is not None and not callable(on_dropped):
            raise TypeError(f"on_dropped must be callable, got {on_dropped!r}")
        self._buffer_size = buffer_size
        self._limit = replenish_limit(buffer_size)
        self._policy = policy
        self._wait = policy is SlowSubscriberPolicy.WAIT
        self._auto_cancel = bool(auto_cancel)
        self._on_dropped = on_dropped
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # offer_blocking producers sleep here
        # Everything below is guarded by _lock.
        # The subscribers in the loop, in subscription order: _subscribe appends,
        # a pass that removes some replaces the list.
        self._subs: list[MulticastSubscription[T]] = []
        # WAIT: the items not yet emitted to anyone.
        # Invariant (WAIT): len(_queue) + _outstanding <= buffer_size.
        self._queue: deque[T] = deque()
        # How the source ends. Never claimed: each subscriber claims its own.
        self._terminal = Terminal(self)
        # Invariant: CANCELLED until on_subscribe and once upstream is over.
        self._upstream: Subscription = CANCELLED
        self._has_upstream = False  # an upstream was accepted (Rule 2.5 after it)
        self._upstream_over = False  # upstream ended, or was cancelled by the loop
        # Upstream demand requested and not yet received.
        self._outstanding = 0
        # Work in progress: the thread that moves it from 0 owns the loop (_owner).
        self._wip = 0
        self._owner = 0
        self._next_id = 0
        # Threads inside a subscriber's on_subscribe: not yet in the loop, so an
        # offer_blocking there could wait for room only that subscriber would make.
        self._subscribing: dict[int, int] = {}
        self._waiters = 0  # threads in offer_blocking
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.stats = BufferStats(buffer_size)
        """Processor-wide counters: ``produced`` items, ``delivered`` (emitted to
        at least one subscriber), ``dropped`` (reached none: reason
        ``"no_subscriber"``, ``"no_demand"``, ``"overflow"``, ``"cancelled"``),
        ``refused`` (offers answered ``FULL``), ``depth`` (the ``WAIT`` queue)."""
        if meter is not None:
            meter.attach(self.stats)

    # -- introspection ----------------------------------------------------------------

    @property
    def policy(self) -> SlowSubscriberPolicy:
        """The slow-subscriber policy."""
        return self._policy

    @property
    def buffer_size(self) -> int:
        """The buffer size given at construction."""
        return self._buffer_size

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are in the loop now."""
        with self._lock:
            return len(self._subs)

    def subscriber_stats(self) -> dict[int, SubscriberStats]:
        """The counters of every subscriber in the loop, keyed by ``subscriber_id``.

        A subscriber that left is no longer listed; its final counters stay
        readable on its subscription (``MulticastSubscription.stats``).
        """
        with self._lock:
            return {inner.subscriber_id: inner._stats_locked() for inner in self._subs}

    @property
    def is_closed(self) -> bool:
        """Whether the source ended (offers are refused with ``CLOSED``)."""
        return self._terminal._ending is not None

    @property
    def desired_size(self) -> int:
        """How many offers would be taken now: the room left (``WAIT``), else ``buffer_size``."""
        with self._lock:
            if not self._wait:
                return self._buffer_size
            return sub_or_zero(self._buffer_size, len(self._queue) + self._outstanding)

    # -- the downstream side (Publisher) ------------------------------------------------

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        me = _get_ident()
        with self._lock:
            ident = self._next_id
            self._next_id += 1
            self._subscribing[me] = self._subscribing.get(me, 0) + 1
        inner = MulticastSubscription(self, subscriber, ident)
        try:
            subscriber.on_subscribe(inner)  # Rule 1.9: first, before it joins the loop
        except Exception as fault:  # Rule 2.13: treated as cancelled, told why
            with self._lock:
                self._left_on_subscribe_locked(me)
                inner._terminal.cancel()
                inner._actual = None
            signal_error(subscriber, fault, self)
            return
        with self._lock:
            self._left_on_subscribe_locked(me)
            if inner._terminal._closed:
                return  # cancelled inside on_subscribe
            inner._attached = True
            if self._wait:
                inner.produced = len(self._queue)  # still queued: due to it as well
            self._subs.append(inner)
            owner = self._enter_locked()
        if owner:
            self._drain_loop()

    def _left_on_subscribe_locked(self, me: int) -> None:
        depth = self._subscribing[me] - 1
        if depth:
            self._subscribing[me] = depth
        else:
            del self._subscribing[me]

    # -- the upstream side (Subscriber) -------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Accept the upstream; the loop makes the first request (Rules 2.5, 2.7)."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            second = self._has_upstream
            ended = self._terminal._ending is not None
            if not second and not ended:
                self._has_upstream = True
                self._upstream = subscription
                owner = self._enter_locked()
        if second:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
        elif ended:
            cancel_quietly(subscription)  # the processor is over: nothing to receive
        elif owner:
            self._drain_loop()

    def on_next(self, item: T) -> None:
        """Hand ``item`` to the subscribers per the policy (Rule 2.13: ``None`` raises)."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        dropped: list[tuple[int, T]] = []
        violation = False
        with self._lock:
            if self._terminal._ending is not None or self._upstream_over:
                return  # Rule 2.8: items may still arrive after cancel
            if self._outstanding == 0:
                violation = True
            else:
                self._outstanding = produced(self._outstanding, 1)
                self._dispatch_locked(item, dropped)
                owner = self._enter_locked()
        if violation:
            self._fail(
                ProtocolViolationError(
                    f"Rule 1.1: the upstream of {self!r} sent {item!r} beyond the demand "
                    "it was given"
                )
            )
            return
        if dropped:
            self._report_dropped(dropped)
        if owner:
            self._drain_loop()

    def on_error(self, error: Exception) -> None:
        """Record the upstream failure: every subscriber gets it (see the class's Errors)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        with self._lock:
            if not self._upstream_over:
                self._upstream_over = True
                self._upstream = CANCELLED  # Rule 3.13: done with it
            # Under WAIT it follows the shared queue; otherwise it cuts ahead of
            # what each subscriber holds (Rule 4.2: a stalled subscriber hears it).
            accepted = self._terminal.fail(error, eager=not self._wait, quiet=True, supersede=False)
            if accepted:
                self._wake_locked()
                owner = self._enter_locked()
        if not accepted:
            self._report_late(error)
        elif owner:
            self._drain_loop()

    def on_complete(self) -> None:
        """Record the upstream completion: every subscriber completes after its buffered items."""
        with self._lock:
            if not self._upstream_over:
                self._upstream_over = True
                self._upstream = CANCELLED
            if not self._terminal.complete():
                return  # already ended: a late completion is ignored (Rule 1.7)
            self._wake_locked()
            owner = self._enter_locked()
        if owner:
            self._drain_loop()

    # -- the push side (SourceQueue's shape) -------------------------------------------

    def offer(self, item: T) -> OfferResult:
        """Push ``item`` without waiting.

        ``ENQUEUED``: at least one subscriber took it (or, under ``WAIT``, it
        is queued). ``FULL`` (only ``WAIT``): no room; nothing was taken, the
        caller still holds it (counted in ``stats.refused``). ``DROPPED``: no
        subscriber took it (none, or none with demand). ``FAILED`` (``ERROR``):
        no subscriber took it and at least one overflowed on it. ``CLOSED``:
        the source ended.
        """
        return self._offer(item, True)

    def _offer(self, item: T, count_refusal: bool) -> OfferResult:
        if item is None:
            raise TypeError("MulticastProcessor.offer: None is not a valid item (Rule 2.13)")
        dropped: list[tuple[int, T]] = []
        with self._lock:
            if self._terminal._ending is not None:
                return OfferResult.CLOSED
            if self._wait and len(self._queue) + self._outstanding >= self._buffer_size:
                if count_refusal:
                    self.stats.refused += 1
                return OfferResult.FULL
            result = self._dispatch_locked(item, dropped)
            owner = self._enter_locked()
        if dropped:
            self._report_dropped(dropped)
        if owner:
            self._drain_loop()
        return result

    def offer_blocking(self, item: T, timeout: float | None = None) -> OfferResult:
        """Offer from a thread, waiting while full (only ``WAIT`` ever waits).

        ``FULL`` after ``timeout`` seconds (counted in ``stats.refused``),
        ``CLOSED`` if the source ends meanwhile.

        Raises:
            RuntimeError: instead of waiting forever, on the thread that runs
                the processor's loop (inside a subscriber's ``on_next``), inside a
                subscriber's ``on_subscribe`` (it joins only afterwards), or on
                a thread running an asyncio event loop; nothing is taken. Use
                ``offer`` there, or ``await offer_wait(item)``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self._offer(item, False)
            if result is not OfferResult.FULL:
                return result
            with self._lock:
                if self._room_locked():
                    continue
                me = _get_ident()
                if self._owner == me or me in self._subscribing:
                    raise RuntimeError(
                        f"{self!r}: offer_blocking on the thread delivering to its "
                        "subscribers, or inside a subscriber's on_subscribe, would wait "
                        "forever (that thread is the one that would make room); use offer() "
                        "there"
                    )
                if asyncio._get_running_loop() is not None:
                    raise RuntimeError(
                        f"{self!r}: offer_blocking would block the running event loop; "
                        "use `await offer_wait(item)`"
                    )
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.stats.refused += 1
                    return OfferResult.FULL
                self._waiters += 1
                try:
                    self._room.wait(1.0 if remaining is None else min(remaining, 1.0))
                finally:
                    self._waiters -= 1

    async def offer_wait(self, item: T) -> OfferResult:
        """Offer, awaiting room while full (only ``WAIT`` ever waits)."""
        loop = asyncio.get_running_loop()
        while True:
            result = self._offer(item, False)
            if result is not OfferResult.FULL:
                return result
            await self._wait_for_room(loop)

    async def ready(self) -> None:
        """Return once an offer would be taken (or the source ended)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._room_locked():
                    return
            await self._wait_for_room(loop)

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._room_locked():
                return
            self._async_waiters.append((loop, future))
        await future

    def _room_locked(self) -> bool:
        if self._terminal._ending is not None or not self._wait:
            return True
        return len(self._queue) + self._outstanding < self._buffer_size

    def complete(self) -> None:
        """End the source: subscribers complete after their buffered items.

        An attached upstream is cancelled. A second ending is ignored.
        """
        with self._lock:
            if not self._terminal.complete():
                return
            self._wake_locked()
            owner = self._enter_locked()
        if owner:
            self._drain_loop()

    # The push side's failure, as on SourceQueue; it shadows the static source
    # factory Flow.error(e) on instances (Flow.error itself is unchanged).
    def error(self, error: Exception) -> None:  # type: ignore[override]
        """Fail the source: subscribers get ``error`` as an upstream error (class docstring).

        An attached upstream is cancelled. An error after the source ended is
        reported to the undeliverable hook (Rule 1.7).
        """
        if not isinstance(error, Exception):
            raise TypeError(f"error() needs an Exception, got {error!r}")
        with self._lock:
            # Under WAIT it follows the shared queue; otherwise it cuts ahead of
            # what each subscriber holds (Rule 4.2: a stalled subscriber hears it).
            accepted = self._terminal.fail(error, eager=not self._wait, quiet=True, supersede=False)
            if accepted:
                self._wake_locked()
                owner = self._enter_locked()
        if not accepted:
            self._report_late(error)
        elif owner:
            self._drain_loop()

    # -- internals: arrivals ------------------------------------------------------------

    def _dispatch_locked(self, item: T, dropped: list[tuple[int, T]]) -> OfferResult:
        """Hand one accepted item out per the policy (the source is open; room checked)."""
        stats = self.stats
        stats.produced += 1
        if self._wait:
            queue = self._queue
            queue.append(item)
            depth = len(queue)
            stats.depth = depth
            if depth > stats.peak_depth:
                stats.peak_depth = depth
            for inner in self._subs:
                inner.produced += 1
            return OfferResult.ENQUEUED
        policy = self._policy
        taken = failed = anyone = False
        for inner in self._subs:
            if not inner._open:
                continue  # leaving: the next pass removes it
            anyone = True
            inner.produced += 1
            queue = inner._queue
            size = len(queue)
            requested = inner._requested
            if size < requested:
                queue.append(item)
                taken = True
            elif policy is SlowSubscriberPolicy.DROP:
                inner.dropped += 1
                dropped.append((inner.subscriber_id, item))
            elif policy is SlowSubscriberPolicy.LATEST:
                if size > requested:  # it already holds one beyond its demand: replace it
                    inner.dropped += 1
                    dropped.append((inner.subscriber_id, queue.pop()))
                queue.append(item)
                taken = True
            elif size - requested < self._buffer_size:  # ERROR, room in its buffer
                queue.append(item)
                taken = True
            else:  # ERROR: its buffer is full; it fails alone, ahead of what it holds
                inner.dropped += 1
                dropped.append((inner.subscriber_id, item))
                inner._terminal.fail(
                    BufferOverflowError(
                        f"subscriber {inner.subscriber_id} of {self!r}: its buffer of "
                        f"{self._buffer_size} items is full (SlowSubscriberPolicy.ERROR)"
                    ),
                    eager=True,
                    quiet=True,
                )
                failed = True
        if taken:
            stats.delivered += 1
            return OfferResult.ENQUEUED
        if not anyone:
            stats.count_drop("no_subscriber")
            return OfferResult.DROPPED
        stats.count_drop("overflow" if failed else "no_demand")
        return OfferResult.FAILED if failed else OfferResult.DROPPED

    def _enter_locked(self) -> bool:
        """Announce work; ``True`` if the caller now owns the loop and must run it."""
        self._wip += 1
        if self._wip != 1:
            return False  # Rule 3.3: the running loop picks it up
        self._owner = _get_ident()
        return True

    def _fail(self, error: Exception) -> None:
        """The processor's own failure: cuts ahead, cancels upstream, reaches everyone."""
        with self._lock:
            accepted = self._terminal.fail(error, eager=True, quiet=True, supersede=False)
            if accepted:
                self._wake_locked()
                owner = self._enter_locked()
        if not accepted:
            self._report_late(error)
        elif owner:
            self._drain_loop()

    def _report_late(self, error: Exception) -> None:
        ending = self._terminal._ending
        if ending is None or ending.error is not error:
            report_undeliverable(error, f"{self!r} after its end (Rule 1.7)")

    def _report_dropped(self, dropped: Sequence[tuple[int, T]]) -> None:
        on_dropped = self._on_dropped
        if on_dropped is None:
            return
        for ident, item in dropped:
            try:
                on_dropped(ident, item)
            except Exception as fault:  # a raising callback fails the processor
                self._fail(fault)

    def _wake_locked(self) -> None:
        if self._waiters:
            self._room.notify_all()
        if not self._async_waiters:
            return
        waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    # -- internals: the loop ------------------------------------------------------------

    def _drain_loop(self) -> None:
        """Run passes until no work is left; the caller owns the loop (``_enter_locked``)."""
        lock = self._lock
        missed = 1
        while True:
            work: _Pass[T] = _Pass()
            with lock:
                self._plan_locked(work)
            if self._perform(work):
                work.again = True
            with lock:
                if work.again:
                    self._wip += 1
                self._wip -= missed
                missed = self._wip
                if missed == 0:
                    self._owner = 0
                    return

    def _plan_locked(self, work: _Pass[T]) -> None:
        """Decide one pass: who leaves, what each gets, what upstream is asked."""
        ending = self._terminal._ending
        queue = self._queue
        subs = self._subs
        left = False
        if subs:
            kept: list[MulticastSubscription[T]] = []
            for inner in subs:
                terminal = inner._terminal
                if terminal._closed:  # cancelled (an ending claimed here is removed at once)
                    self._detach_locked(inner, work)
                    left = True
                elif terminal._ending is not None or (ending is not None and ending.eager):
                    # Its own failure (Rule 3.9, overflow), or the source's eager
                    # end: ahead of what it had buffered.
                    left = left or terminal._ending is not None
                    self._finish_locked(inner, ending, work)
                else:
                    kept.append(inner)
            if len(kept) != len(subs):
                self._subs = subs = kept
        if left and not subs and self._auto_cancel and ending is None:
            self._terminal.fail(
                DisconnectedError(
                    f"{self!r}: its last subscriber left and auto_cancel is on: upstream "
                    "was cancelled, no more items or subscribers are served"
                ),
                eager=True,
                quiet=True,
            )
            ending = self._terminal._ending
            self._wake_locked()
        if ending is not None and ending.eager and queue:
            self.stats.count_drop("cancelled", len(queue))
            queue.clear()
            self.stats.depth = 0
            self._wake_locked()
        if self._wait:
            self._plan_wait_locked(ending, work)
        else:
            self._plan_each_locked(ending, work)
        self._plan_upstream_locked(ending, work)

    def _plan_wait_locked(self, ending: Ending | None, work: _Pass[T]) -> None:
        """Coordinated emission: as many items as the smallest demand, to everyone."""
        subs = self._subs
        if not subs:
            return
        queue = self._queue
        n = len(queue)
        for inner in subs:
            if inner._requested < n:
                n = inner._requested  # Rule 1.1 for the slowest
        if n:
            batch = [queue.popleft() for _ in range(n)]
            for inner in subs:
                inner._requested = produced(inner._requested, n)
                inner.delivered += n
                work.deliveries.append((inner, inner._actual, batch, None))
            stats = self.stats
            stats.delivered += n
            stats.depth = len(queue)
            self._wake_locked()
        if ending is not None and not queue:
            if n:
                work.again = True  # the ending goes in a pass of its own, after the items
            else:
                for inner in subs:
                    self._finish_locked(inner, ending, work)
                self._subs = []

    def _plan_each_locked(self, ending: Ending | None, work: _Pass[T]) -> None:
        """Each subscriber at its own pace, from its own queue."""
        finished = False
        for inner in self._subs:
            queue = inner._queue
            n = min(inner._requested, len(queue))  # Rule 1.1
            if n:
                batch = [queue.popleft()] if n == 1 else [queue.popleft() for _ in range(n)]
                inner._requested = produced(inner._requested, n)
                inner.delivered += n
                work.deliveries.append((inner, inner._actual, batch, None))
            if ending is not None and not queue:
                if n:
                    work.again = True
                else:
                    self._finish_locked(inner, ending, work)
                    finished = True
        if finished:
            self._subs = [inner for inner in self._subs if inner._attached]

    def _plan_upstream_locked(self, ending: Ending | None, work: _Pass[T]) -> None:
        if not self._has_upstream or self._upstream_over:
            return
        if ending is not None:
            # The processor ended on its own (complete(), error(), a failure,
            # auto_cancel): upstream is no longer needed.
            work.upstream, self._upstream = self._upstream, CANCELLED
            work.cancel = True
            self._upstream_over = True
            return
        room = self._buffer_size - self._outstanding
        if self._wait:
            room -= len(self._queue)
        if room >= self._limit:
            self._outstanding = add_cap(self._outstanding, room)
            work.upstream = self._upstream
            work.request = room

    def _finish_locked(
        self, inner: MulticastSubscription[T], ending: Ending | None, work: _Pass[T]
    ) -> None:
        """Take ``inner`` out of the loop with its ending (its own first, else the source's)."""
        terminal = inner._terminal
        if terminal._ending is None and ending is not None:
            if ending.error is None:
                terminal.complete()
            else:
                terminal.fail(ending.error, eager=ending.eager, quiet=True)
        actual = inner._actual
        self._detach_locked(inner, work)
        work.deliveries.append((inner, actual, (), terminal.claim()))

    def _detach_locked(self, inner: MulticastSubscription[T], work: _Pass[T]) -> None:
        """Remove ``inner`` from the loop; what it still had buffered counts as dropped."""
        items: Sequence[T] = self._queue if self._wait else inner._queue
        if items:
            inner.dropped += len(items)
            if self._on_dropped is not None:
                ident = inner.subscriber_id
                work.dropped.extend((ident, item) for item in items)
            if not self._wait:
                inner._queue.clear()
        inner._attached = False
        inner._actual = None  # Rule 3.13

    def _perform(self, work: _Pass[T]) -> bool:
        """Do what the pass decided, outside the lock; ``True`` if another pass is due."""
        again = False
        if work.cancel:
            cancel_quietly(work.upstream)
        for inner, actual, batch, ending in work.deliveries:
            if actual is None:
                continue  # cancelled before the pass (its buffered items were counted)
            terminal = inner._terminal
            sent = 0
            faulted = False
            for item in batch:
                if terminal._cancelled:  # Rule 3.6: cancelled mid-batch
                    break
                sent += 1
                try:
                    actual.on_next(item)
                except Exception as fault:  # Rule 2.13: it is cancelled, and hears why
                    with self._lock:
                        accepted = terminal.fail(fault, eager=True, quiet=True)
                        self._unsend_locked(inner, batch[sent:], work)
                    if not accepted:
                        report_undeliverable(
                            fault, f"{type(actual).__name__}.on_next (via {self!r})"
                        )
                    again = faulted = True
                    break
            else:
                if ending is not None:
                    if ending.error is None:
                        signal_complete(actual, self)
                    else:
                        signal_error(actual, ending.error, self)
                continue
            if sent < len(batch) and not faulted:
                with self._lock:
                    self._unsend_locked(inner, batch[sent:], work)
        if work.dropped:
            self._report_dropped(work.dropped)
        if work.request:
            try:
                work.upstream.request(work.request)
            except Exception as fault:  # Rule 3.16 broken by upstream
                self._fail(fault)
        return again

    def _unsend_locked(
        self, inner: MulticastSubscription[T], items: Sequence[T], work: _Pass[T]
    ) -> None:
        """Items popped for ``inner`` that never reached it: count them dropped."""
        if not items:
            return
        inner.delivered -= len(items)
        inner.dropped += len(items)
        if self._on_dropped is not None:
            work.dropped.extend((inner.subscriber_id, item) for item in items)

    def __repr__(self) -> str:
        ending = self._terminal._ending
        state = "open" if ending is None else ("completed" if ending.error is None else "failed")
        return (
            f"<MulticastProcessor {self._policy.name} buffer_size={self._buffer_size} "
            f"subscribers={len(self._subs)} queued={len(self._queue)} {state}>"
        )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
