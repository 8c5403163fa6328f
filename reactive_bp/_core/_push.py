"""A bounded buffer between producers that push and a subscriber that pulls.

``PushBuffer`` is the one mechanism behind ``Flow.create``, ``SourceQueue``
and the ``on_backpressure_*`` operators: any number of producers (threads or
coroutines) ``offer`` items; the subscriber receives them only against its
demand, through a serialized drain loop (Rule 1.3, Rule 3.3 depth 1). When
the buffer is full, the ``OverflowStrategy`` decides, and every item that is
dropped goes to ``on_dropped`` and is counted in ``stats``: nothing vanishes
unaccounted (produced == delivered + dropped + queued, at every moment).

How the rules hold:

* Rule 1.3 (serial signals) and Rule 3.3 (bounded recursion): one thread at a
  time owns the drain loop (``_draining``); a ``request``, ``offer`` or
  terminal call that brings deliverable work meanwhile sets ``_missed`` and
  returns, and the owner looks again before it lets go. Ownership is taken in
  the same critical section that changed the state, so deciding whether a
  pass is needed costs one lock acquisition; work that cannot be delivered
  yet (an item without demand, demand without items) needs no pass at all.
* The fast path: an ``offer`` that finds demand, nothing queued and no loop
  running takes ownership and hands the item straight to the subscriber
  (counted as produced and delivered), then lets go unless work was missed
  meanwhile, in which case it runs the loop. Items are delivered in order:
  nothing was queued, and while it owns the loop nobody else delivers.
* The saturated path: an ``offer`` without demand, with no ``on_dropped``,
  ttl or water marks (``_quiet_overflow``), queues the item, or makes the
  strategy's one step when full (evict the oldest or the newest, or refuse),
  inside the same critical section, and returns: no pass, no allocation, no
  call. The ``on_backpressure_*`` operators' ``on_next`` *is* ``offer``.
* Costs only when used: ``on_dropped``'s list, the ttl stamps and water-mark
  observations exist only when configured; producers are notified only when
  one is waiting (``_waiters``, ``_async_waiters``); the backpressure clock
  runs only when the stats can be read (``timed``).
* Counting: the counters live in the buffer, under ``_lock``. ``produced`` is
  never counted: it is delivered + dropped + queued by construction. A drop
  by the overflow strategy on the saturated path is only counted aside
  (``_overflowed``); ``stats`` (from ``synced_stats``) folds it in under
  ``_lock`` whenever any counter is read, so every read is exact and the
  invariant holds in every ``snapshot()``. Nothing in the buffer reads
  ``stats`` (a read takes ``_lock``), not even ``__repr__``.
* Rules 1.7, 3.6, 3.7: how the stream ends is one ``Terminal``. Every
  transition of it is made under ``_lock``, and the drain loop reads
  ``terminal.ending`` in the same critical section as the queue, so "ended
  and nothing queued" is never decided before the ending's error is known.
  Only the loop owner claims the ending and signals it, once.
* Rule 3.9: a bad ``request`` is an eager failure: it drops (and counts) what
  is queued and is delivered ahead of it.
* Rule 3.13: on cancel or termination the buffer drops its subscriber.
* A ``WAIT`` producer never waits on a thread that the subscriber needs in
  order to make room (the drain thread, a request callback, the thread inside
  ``subscribe()``, a thread running an event loop): it raises ``RuntimeError``
  and the stream fails with it, after the buffered items.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from typing_extensions import override

from ._demand import UNBOUNDED, add_cap, check_request, produced
from ._hooks import report_undeliverable
from ._signals import signal_complete, signal_error
from ._terminal import Terminal

if TYPE_CHECKING:
    from ..abc import Subscriber

_get_ident = threading.get_ident

__all__ = [
    "BufferOverflowError",
    "BufferStats",
    "OfferResult",
    "OverflowStrategy",
    "PushBuffer",
    "WaterMarks",
    "synced_stats",
]

T = TypeVar("T")


class OverflowStrategy(enum.Enum):
    """What a full buffer does with one more item."""

    ERROR = "error"
    """Fail the stream with ``BufferOverflowError`` (after the buffered items)."""
    DROP_NEWEST = "drop_newest"
    """Drop the incoming item."""
    DROP_OLDEST = "drop_oldest"
    """Drop the oldest buffered item to make room."""
    LATEST = "latest"
    """Overwrite the newest buffered item (with capacity 1: keep only the latest)."""
    WAIT = "wait"
    """Hold the producer until there is room (blocking ``emit``, awaitable ``send``)."""
    UNBOUNDED_BUFFER = "unbounded_buffer"
    """Never full: memory grows with the backlog. Only when asked for by name."""


class OfferResult(enum.Enum):
    """The answer to one ``offer``."""

    ENQUEUED = "enqueued"
    """Accepted (with DROP_OLDEST / LATEST another item may have been dropped for it)."""
    DROPPED = "dropped"
    """Refused and dropped (DROP_NEWEST), and reported to ``on_dropped``."""
    FULL = "full"
    """Refused, nothing dropped: WAIT strategy and no room (use ``offer_wait``)."""
    FAILED = "failed"
    """The buffer overflowed with the ERROR strategy: the stream now fails."""
    CLOSED = "closed"
    """The stream is completed, failed or cancelled: nothing more is accepted."""


class BufferOverflowError(Exception):
    """A bounded buffer was full and its strategy is ``OverflowStrategy.ERROR``."""


class BufferStats:
    """Counters of a buffer, readable at any time without locking the hot path.

    Invariant (under the buffer's lock): ``produced == delivered + dropped + depth``.
    ``refused`` stands outside it: an offer answered ``FULL`` (the ``WAIT``
    strategy) was never taken, the producer still holds the item.

    An owner whose hot path keeps some counts aside (a ``PushBuffer``, ``sample``)
    hands out the form made by ``synced_stats``: reading any counter first folds
    those counts in, under the owner's lock, so every read is exact.
    """

    __slots__ = (
        "_backpressured_since",
        "_sync",
        "backpressured_seconds",
        "capacity",
        "delivered",
        "depth",
        "dropped",
        "dropped_by_reason",
        "peak_depth",
        "produced",
        "refused",
    )

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.produced = 0
        self.delivered = 0
        self.dropped = 0
        self.dropped_by_reason: dict[str, int] = {}
        self.refused = 0
        """Offers answered ``FULL``: not taken, so neither produced nor dropped."""
        self.depth = 0
        self.peak_depth = 0
        self.backpressured_seconds = 0.0
        self._backpressured_since: float | None = None
        # The owner's "fold your pending counts in" (synced_stats), or None.
        self._sync: Callable[[], None] | None = None

    def pressure_started(self, now: float) -> None:
        """Start timing a backpressured spell at ``now`` (no-op if one is running)."""
        if self._backpressured_since is None:
            self._backpressured_since = now

    def pressure_ended(self, now: float) -> None:
        """End the running backpressured spell at ``now`` and add it up."""
        since = self._backpressured_since
        if since is not None:
            self.backpressured_seconds += max(0.0, now - since)
            self._backpressured_since = None

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dropped items under ``reason`` (for operators that keep these stats)."""
        self.dropped += n
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + n

    def snapshot(self) -> dict[str, object]:
        """A plain dict of the counters (for logs and exporters)."""
        return {
            "capacity": self.capacity,
            "produced": self.produced,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "dropped_by_reason": dict(self.dropped_by_reason),
            "refused": self.refused,
            "depth": self.depth,
            "peak_depth": self.peak_depth,
            "backpressured_seconds": self.backpressured_seconds,
        }

    def __repr__(self) -> str:
        return f"BufferStats({self.snapshot()})"


_SYNCED_COUNTERS = (
    "backpressured_seconds",
    "delivered",
    "depth",
    "dropped",
    "dropped_by_reason",
    "peak_depth",
    "produced",
    "refused",
)


_DROPPED_SLOT: Any = BufferStats.__dict__["dropped"]
_BY_REASON_SLOT: Any = BufferStats.__dict__["dropped_by_reason"]


def _synced(slot: Any) -> property:
    """A counter that asks the owner to fold its pending counts in before it is read."""

    def read(stats: BufferStats) -> object:
        sync = stats._sync
        if sync is not None:
            sync()
        return slot.__get__(stats, BufferStats)

    def write(stats: BufferStats, value: object) -> None:
        slot.__set__(stats, value)

    return property(read, write)


class _SyncedStats(BufferStats):
    """``BufferStats`` whose reads fold the owner's pending counts in first.

    The layout is ``BufferStats``'s own (no slots added), so code that swaps
    the class of a stats object for a subclass of ``BufferStats`` still can.
    """

    __slots__ = ()

    @override
    def count_drop(self, reason: str, n: int = 1) -> None:
        # One call for the owner's own counting (the properties would be four).
        sync = self._sync
        if sync is not None:
            sync()
        _DROPPED_SLOT.__set__(self, _DROPPED_SLOT.__get__(self, BufferStats) + n)
        by_reason = _BY_REASON_SLOT.__get__(self, BufferStats)
        by_reason[reason] = by_reason.get(reason, 0) + n

    @override
    def snapshot(self) -> dict[str, object]:
        sync = self._sync
        if sync is not None:
            sync()  # once: the counters below are one consistent reading
        raw = BufferStats.__dict__
        values = {
            name: raw[name].__get__(self, BufferStats)
            for name in _SYNCED_COUNTERS
            if name != "produced"
        }
        if type(self) is _SyncedDropStats:  # derived there: never stored
            values["produced"] = values["delivered"] + values["dropped"] + values["depth"]
        else:
            values["produced"] = raw["produced"].__get__(self, BufferStats)
        return {
            "capacity": self.capacity,
            "produced": values["produced"],
            "delivered": values["delivered"],
            "dropped": values["dropped"],
            "dropped_by_reason": dict(values["dropped_by_reason"]),
            "refused": values["refused"],
            "depth": values["depth"],
            "peak_depth": values["peak_depth"],
            "backpressured_seconds": values["backpressured_seconds"],
        }


class _SyncedDropStats(_SyncedStats):
    """``_SyncedStats`` for an owner that keeps only dropped items aside.

    ``dropped`` and ``dropped_by_reason`` sync; ``produced`` is derived
    (delivered + dropped + depth, after the sync), so the owner never counts
    arrivals; the other counters are plain, kept current by the owner, and
    its own bookkeeping of depth and deliveries pays nothing for properties.
    """

    __slots__ = ()


def _derived_produced(stats: BufferStats) -> int:
    sync = stats._sync
    if sync is not None:
        sync()
    raw = BufferStats.__dict__
    delivered: int = raw["delivered"].__get__(stats, BufferStats)
    dropped: int = raw["dropped"].__get__(stats, BufferStats)
    depth: int = raw["depth"].__get__(stats, BufferStats)
    return delivered + dropped + depth


def _not_counted(stats: BufferStats, value: object) -> None:
    """Derived, not counted: a write (``BufferStats.__init__``'s 0) changes nothing."""


# Each counter becomes a property over BufferStats' own slot (set here, after the
# class exists: to type checkers they stay BufferStats' plain int/dict attributes).
for _name in _SYNCED_COUNTERS:
    setattr(_SyncedStats, _name, _synced(BufferStats.__dict__[_name]))
    if _name not in ("produced", "dropped", "dropped_by_reason"):
        setattr(_SyncedDropStats, _name, BufferStats.__dict__[_name])
del _name
setattr(_SyncedDropStats, "produced", property(_derived_produced, _not_counted))  # noqa: B010


def synced_stats(
    capacity: int | None, sync: Callable[[], None] | None, *, drops_only: bool = False
) -> BufferStats:
    """Stats whose reads first call ``sync()``, which folds the owner's pending counts in.

    ``sync`` takes the owner's lock, so the owner never reads these counters
    while holding a non-reentrant lock; it writes them inside ``sync`` (or
    under a reentrant lock that ``sync`` takes too). The owner may set
    ``stats._sync`` to ``None`` while nothing is pending (reads are then
    plain) and back when something is. With ``drops_only`` only ``dropped``
    and ``dropped_by_reason`` sync, ``produced`` is derived (never written),
    and the owner keeps the rest current itself.
    """
    if drops_only:
        stats: BufferStats = _SyncedDropStats(capacity)
        # The slot behind the derived property, for a reader of the plain
        # BufferStats layout (a class swapped in for instrumentation).
        BufferStats.__dict__["produced"].__set__(stats, 0)
    else:
        stats = _SyncedStats(capacity)
    stats._sync = sync
    return stats


class WaterMarks:
    """Hysteresis on a buffer's depth: pressured from ``high`` until back down to ``low``.

    A buffer that has these marks calls ``observe(depth)`` whenever its depth
    changes. ``pressured`` turns true when the depth reaches ``high`` and false
    again only when it falls to ``low``, so a producer or an autoscaler that
    watches it (``add_listener``) sees one signal per spell, not one per item
    (Node's ``write() -> false`` / ``'drain'``, with a gap between the two).
    The signal is advisory: the buffer's capacity and overflow strategy still
    decide what happens to items.

    Listeners run on the thread whose offer or delivery crossed a mark, in
    order (transitions are serialized by an internal lock); one that raises is
    reported to the undeliverable hook. One ``WaterMarks`` watches one buffer
    at a time: a flow subscribed twice shares it (the last depth observed wins).

    Example:
        >>> marks = WaterMarks(high=8, low=2)
        >>> seen = []
        >>> marks.add_listener(seen.append)
        >>> for depth in (3, 8, 9, 5, 3, 2, 7):
        ...     marks.observe(depth)
        >>> seen, marks.pressured, marks.transitions
        ([True, False], False, 2)
    """

    __slots__ = ("_listeners", "_lock", "depth", "high", "low", "pressured", "transitions")

    def __init__(
        self, high: int, low: int, on_change: Callable[[bool], object] | None = None
    ) -> None:
        if type(high) is not int or type(low) is not int or not 0 <= low < high:
            raise ValueError(f"water marks need ints with 0 <= low < high, got {low=}, {high=}")
        self.high = high
        self.low = low
        self.pressured = False
        """Whether the buffer is between reaching ``high`` and falling back to ``low``."""
        self.transitions = 0
        """How many times ``pressured`` changed."""
        self.depth = 0
        """The last depth observed."""
        self._lock = threading.RLock()  # serializes transitions and listener calls
        self._listeners: list[Callable[[bool], object]] = []
        if on_change is not None:
            self._listeners.append(on_change)

    def add_listener(self, listener: Callable[[bool], object]) -> None:
        """Call ``listener(pressured)`` on every transition."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[bool], object]) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def observe(self, depth: int) -> None:
        """Record the buffer's ``depth``; notify listeners if a mark was crossed."""
        with self._lock:
            self.depth = depth
            if self.pressured:
                if depth > self.low:
                    return
                self.pressured = False
            else:
                if depth < self.high:
                    return
                self.pressured = True
            self.transitions += 1
            state = self.pressured
            for listener in list(self._listeners):
                try:
                    listener(state)
                except Exception as error:
                    report_undeliverable(error, f"{self!r} listener")

    def __repr__(self) -> str:
        return f"WaterMarks(high={self.high}, low={self.low}, pressured={self.pressured})"


_OVERFLOW_REASON = {
    OverflowStrategy.DROP_NEWEST: "drop_newest",
    OverflowStrategy.DROP_OLDEST: "drop_oldest",
    OverflowStrategy.LATEST: "latest",
    OverflowStrategy.ERROR: "overflow_error",
}


_ENQUEUED = OfferResult.ENQUEUED
_DROPPED = OfferResult.DROPPED
_FULL = OfferResult.FULL
_FAILED = OfferResult.FAILED
_CLOSED = OfferResult.CLOSED
_DROP_NEWEST = OverflowStrategy.DROP_NEWEST
_DROP_OLDEST = OverflowStrategy.DROP_OLDEST
_LATEST = OverflowStrategy.LATEST


class PushBuffer(Generic[T]):
    """The subscription handed to the subscriber of a push source.

    Producers call ``offer`` (any thread), ``offer_blocking`` (threads, WAIT),
    ``await offer_wait`` (coroutines), ``complete`` and ``error``. The
    subscriber calls ``request`` and ``cancel``.
    """

    __slots__ = (
        "_actual",
        "_async_waiters",
        "_callback_thread",
        "_cancel_callbacks",
        "_capacity",
        "_clock",
        "_cond",
        "_delivered",
        "_drain_thread",
        "_draining",
        "_dropped",
        "_lock",
        "_missed",
        "_on_dropped",
        "_overflow",
        "_overflow_reason",
        "_overflowed",
        "_peak",
        "_pressure_seconds",
        "_pressure_since",
        "_queue",
        "_quiet_overflow",
        "_reasons",
        "_refused",
        "_request_callbacks",
        "_requested",
        "_stamps",
        "_subscribe_thread",
        "_terminal",
        "_timed",
        "_ttl",
        "_waiters",
        "_waits",
        "error_ahead",
        "name",
        "stats",
        "water_marks",
    )

    def __init__(
        self,
        actual: Subscriber[T] | None,
        capacity: int,
        overflow: OverflowStrategy,
        on_dropped: Callable[[T], object] | None = None,
        *,
        name: str = "buffer",
        error_ahead: bool = False,
        zero_capacity: bool = False,
        ttl: float | None = None,
        clock: Callable[[], float] | None = None,
        water_marks: WaterMarks | None = None,
        timed: bool = True,
    ) -> None:
        """Create the buffer.

        The keyword-only options are for the ``on_backpressure_*`` operators:
        ``zero_capacity`` allows ``capacity=0`` with ``DROP_NEWEST`` or
        ``ERROR`` (hold nothing beyond demand); ``ttl`` drops items that have
        waited ``ttl`` seconds on ``clock`` (default ``time.monotonic``) with
        reason ``"ttl"``, whenever the buffer is offered to, drained or
        ``expire()`` is called; ``water_marks`` observes every depth change;
        ``timed=False`` leaves ``stats.backpressured_seconds`` at 0 (two clock
        reads per spell saved, for an owner whose stats nobody can read).
        """
        if not isinstance(overflow, OverflowStrategy):
            raise TypeError(f"overflow must be an OverflowStrategy, got {overflow!r}")
        smallest = 0 if zero_capacity else 1
        if zero_capacity and overflow not in (OverflowStrategy.DROP_NEWEST, OverflowStrategy.ERROR):
            raise ValueError(f"zero_capacity needs DROP_NEWEST or ERROR, got {overflow}")
        if overflow is not OverflowStrategy.UNBOUNDED_BUFFER and (
            type(capacity) is not int or capacity < smallest
        ):
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if ttl is not None and (isinstance(ttl, bool) or not ttl > 0):
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        self._actual: Subscriber[T] | None = actual
        self._capacity = UNBOUNDED if overflow is OverflowStrategy.UNBOUNDED_BUFFER else capacity
        self._overflow = overflow
        self._on_dropped = on_dropped
        self.name = name
        self.error_ahead = error_ahead
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # WAIT producers sleep here
        # All guarded by _lock.
        self._queue: deque[T] = deque()
        self._requested = 0
        # Invariant: every transition of _terminal is made while holding _lock.
        # Ended (completed, failed, overflowed): offers are refused and the
        # ending follows the queued items (an eager one cuts ahead of them).
        # Closed (claimed by the drain loop, or cancelled): nothing more is
        # signalled. Read without the lock, it is one snapshot (Rule 1.7).
        self._terminal = Terminal(self)
        # Invariant (all under _lock): _draining is true while one thread owns
        # the drain loop (or a fast-path delivery), _drain_thread is that
        # thread (kept only with WAIT: only a waiting producer asks, in
        # _cannot_wait_locked); _missed is set when deliverable work arrived
        # meanwhile.
        # While nobody owns the loop, either nothing is requested or nothing
        # is queued (or there is no subscriber yet): an offer that finds
        # demand *and* a queue is always racing a running loop.
        self._draining = False
        self._drain_thread = 0
        self._waits = overflow is OverflowStrategy.WAIT
        self._missed = False
        # Guarded by _lock: threads sleeping in offer_blocking on _cond.
        self._waiters = 0
        self._callback_thread = 0  # the thread running on_request callbacks, if any
        # Guarded by _lock: the thread delivering on_subscribe and running a
        # synchronous producer (``subscribing()``); 0 outside subscribe().
        self._subscribe_thread = 0
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._request_callbacks: list[Callable[[int], object]] = []
        self._cancel_callbacks: list[Callable[[], object]] = []
        # The counters behind ``stats``, all guarded by _lock. ``produced`` is
        # not counted: it is delivered + dropped + overflowed + len(_queue) by
        # construction, so the invariant cannot drift. Drops by the overflow
        # strategy on the saturated path are only counted (_overflowed) and
        # folded into _dropped / _reasons when the stats are read.
        self._delivered = 0
        self._dropped = 0
        self._reasons: dict[str, int] = {}
        self._overflowed = 0
        self._overflow_reason = _OVERFLOW_REASON.get(overflow, "overflow")
        self._refused = 0
        self._peak = 0
        self._timed = timed
        self._pressure_since: float | None = None  # the running spell; None unless timed
        self._pressure_seconds = 0.0
        self.stats = synced_stats(
            None if self._capacity == UNBOUNDED else capacity, self._sync_stats
        )
        self._ttl = ttl
        self._clock: Callable[[], float] = time.monotonic if clock is None else clock
        # Guarded by _lock: when each queued item was enqueued (only with a ttl).
        # Invariant: len(_stamps) == len(_queue), position by position.
        self._stamps: deque[float] | None = None if ttl is None else deque()
        self.water_marks = water_marks
        # Whether a full buffer's overflow is one quiet step that offer() makes
        # inline: evict (DROP_OLDEST, LATEST) or refuse (DROP_NEWEST) and count,
        # with nobody to tell (no on_dropped, no water marks) and no stamps.
        self._quiet_overflow = (
            overflow in (OverflowStrategy.DROP_NEWEST, OverflowStrategy.DROP_OLDEST, _LATEST)
            and on_dropped is None
            and ttl is None
            and water_marks is None
        )

    def _sync_stats(self) -> None:
        """Write the counters into ``stats`` (every read of it calls this first)."""
        stats = self.stats
        raw = BufferStats.__dict__
        with self._lock:
            self._fold_overflowed_locked()
            for name, value in self._counters().items():
                raw[name].__set__(stats, value)
            stats._backpressured_since = self._pressure_since

    def _counters(self) -> dict[str, object]:
        """The counters by ``stats`` name: exact under ``_lock``, a rough reading without it."""
        delivered = self._delivered
        dropped = self._dropped + self._overflowed
        depth = len(self._queue)
        reasons = self._reasons
        if self._overflowed:  # only without _lock: folding needs it
            reasons = dict(reasons)
            reason = self._overflow_reason
            reasons[reason] = reasons.get(reason, 0) + self._overflowed
        return {
            "produced": delivered + dropped + depth,
            "delivered": delivered,
            "dropped": dropped,
            "dropped_by_reason": reasons,
            "refused": self._refused,
            "depth": depth,
            "peak_depth": self._peak,
            "backpressured_seconds": self._pressure_seconds,
        }

    def _fold_overflowed_locked(self) -> int:
        """Count the pending overflow drops under their reason; return all drops."""
        overflowed = self._overflowed
        if overflowed:
            self._overflowed = 0
            self._dropped += overflowed
            reasons = self._reasons
            reason = self._overflow_reason
            reasons[reason] = reasons.get(reason, 0) + overflowed
        return self._dropped

    def attach(self, actual: Subscriber[T]) -> None:
        """Give the buffer its subscriber (for a buffer created before anyone subscribed)."""
        with self._lock:
            if self._actual is not None or self._terminal.is_closed:
                raise RuntimeError(f"{self.name} already has a subscriber")
            self._actual = actual
        with self.subscribing():
            try:
                actual.on_subscribe(self)
            except Exception as fault:  # Rule 2.13
                self.cancel()
                signal_error(actual, fault, self.name)
                return
            self._drain()

    @contextlib.contextmanager
    def subscribing(self) -> Iterator[None]:
        """Mark the calling thread as inside ``subscribe()`` for the ``with`` block.

        A ``WAIT`` producer on that thread must not wait: the consumer that
        would make room is, as a rule, the one waiting for ``subscribe`` to
        return (``blocking_iter``, ``aiter``). Nesting on one thread is fine.
        """
        me = threading.get_ident()
        with self._lock:
            previous, self._subscribe_thread = self._subscribe_thread, me
        try:
            yield
        finally:
            with self._lock:
                self._subscribe_thread = previous

    # -- introspection ----------------------------------------------------------------

    @property
    def requested(self) -> int:
        """Outstanding downstream demand not yet covered by buffered items."""
        with self._lock:
            return max(0, self._requested - len(self._queue))

    @property
    def desired_size(self) -> int:
        """Room left before the buffer is full (``capacity - queued``; WHATWG's name)."""
        with self._lock:
            return self._capacity - len(self._queue)

    @property
    def depth(self) -> int:
        """How many items are queued (``stats.depth`` without folding the other counters)."""
        return len(self._queue)

    @property
    def is_cancelled(self) -> bool:
        """Whether the subscriber cancelled (or the stream's end was signalled)."""
        return self._terminal.is_closed

    @property
    def is_closed(self) -> bool:
        """Whether offers are refused (completed, failed or cancelled)."""
        return self._refusing()

    def _refusing(self) -> bool:
        # Two reads, safe without _lock: both flags only ever turn true.
        terminal = self._terminal
        return terminal.is_ended or terminal.is_closed

    def on_request(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(n)`` after each valid ``request(n)``."""
        self._request_callbacks.append(callback)

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once when the subscriber cancels."""
        self._cancel_callbacks.append(callback)

    # -- producers --------------------------------------------------------------------

    def offer(self, item: T, count_refusal: bool = True) -> OfferResult:
        """Add ``item`` if the strategy allows; never blocks.

        A ``FULL`` answer (``WAIT`` strategy, no room) is counted in
        ``stats.refused`` unless ``count_refusal`` is false (a waiting
        producer that will offer the same item again).
        """
        if item is None:
            raise TypeError(f"{self.name}: None is not a valid item (Rule 2.13)")
        terminal = self._terminal
        with self._lock:
            queue = self._queue
            requested = self._requested
            if queue or not requested or self._draining:
                # Not the next item due now: it is held (or the strategy drops
                # something). The saturated paths first, each one decision.
                if terminal._ending is not None or terminal._closed:
                    return _CLOSED
                if self._quiet_overflow:
                    size = len(queue)
                    if size < self._capacity or size < requested:
                        queue.append(item)
                        if size >= self._peak:
                            self._peak = size + 1
                        if not requested:
                            return _ENQUEUED  # no demand: it waits, no pass needed
                        # Demand and a queue: a loop is running (see _draining).
                        drain = self._own_locked()
                        result = _ENQUEUED
                    else:
                        # Full, so no new deliverable work: a running loop has
                        # at least as many items as demand already (Rule 3.3).
                        if self._timed and self._pressure_since is None:
                            self._pressure_since = time.monotonic()
                        self._overflowed += 1
                        overflow = self._overflow
                        if overflow is _DROP_NEWEST:
                            return _DROPPED
                        if overflow is _DROP_OLDEST:
                            queue.popleft()
                        else:  # LATEST
                            queue.pop()
                        queue.append(item)
                        return _ENQUEUED
                    actual = None
                else:
                    actual = None
                    dropped: list[T] | None = None if self._on_dropped is None else []
                    result = self._hold_locked(item, requested, dropped, count_refusal)
                    drain = (result is _ENQUEUED and bool(requested)) or result is _FAILED
                    if drain:
                        drain = self._own_locked()
            else:
                # The fast path: demand and nothing queued, so this item is the
                # next one due; take the loop's ownership and hand it over.
                actual = self._actual
                if actual is None or terminal._ending is not None or terminal._closed:
                    actual = None
                    dropped = None if self._on_dropped is None else []
                    result = self._hold_locked(item, requested, dropped, count_refusal)
                    drain = False
                else:
                    self._draining = True
                    if self._waits:
                        self._drain_thread = _get_ident()
                    self._missed = False
                    if requested != UNBOUNDED:
                        self._requested = requested - 1
                    self._delivered += 1
                    since = self._pressure_since
                    if since is not None:  # the spell ends: there was room and demand
                        self._pressure_seconds += time.monotonic() - since
                        self._pressure_since = None
        if actual is not None:
            # The loop owner's delivery (inlined: this is the hot path).
            try:
                actual.on_next(item)
            except Exception as fault:  # Rule 2.13
                self._failed_delivery(actual, fault, ())
                return _ENQUEUED
            with self._lock:
                if terminal._closed:  # cancelled during on_next (Rule 3.13)
                    self._actual = None
                    self._draining = False
                    self._wake_producers_locked()
                    return _ENQUEUED
                drain = self._missed  # work arrived meanwhile: stay the owner
                if not drain:
                    self._draining = False
                    if self.water_marks is None:
                        return _ENQUEUED
            if drain:
                self._drain_loop()
            if self.water_marks is not None:
                self.water_marks.observe(len(self._queue))
            return _ENQUEUED
        if self._quiet_overflow:
            if drain:
                self._drain_loop()
            return result
        if dropped:
            self._report_dropped(dropped)
        if drain:
            self._drain_loop()
        if self.water_marks is not None:
            self.water_marks.observe(len(self._queue))
        return result

    def _own_locked(self) -> bool:
        """Take the drain loop (``True``), or tell its owner to look again (``False``)."""
        if self._draining:
            self._missed = True  # the running loop will look again (Rule 3.3)
            return False
        if self._terminal._closed or self._actual is None:
            return False
        self._draining = True
        self._drain_thread = _get_ident()
        self._missed = False
        return True

    def _hold_locked(
        self, item: T, requested: int, dropped: list[T] | None, count_refusal: bool
    ) -> OfferResult:
        """Queue ``item`` or apply the overflow strategy: every configuration, under ``_lock``."""
        terminal = self._terminal
        if terminal._ending is not None or terminal._closed:
            return _CLOSED
        queue = self._queue
        stamps = self._stamps
        if stamps is not None:
            self._expire_locked(dropped)  # expired items make room first
        size = len(queue)
        if size >= self._capacity and size >= requested:
            overflow = self._overflow
            if self._timed and self._pressure_since is None:
                self._pressure_since = time.monotonic()
            if overflow is OverflowStrategy.WAIT:
                if count_refusal:
                    self._refused += 1  # not taken: the producer still holds it
                return _FULL
            if overflow is _DROP_NEWEST:
                self._count_drop(item, "drop_newest", dropped)
                return _DROPPED
            if overflow is _DROP_OLDEST:
                self._count_drop(queue.popleft(), "drop_oldest", dropped)
                if stamps is not None:
                    stamps.popleft()
                size -= 1
            elif overflow is _LATEST:
                self._count_drop(queue.pop(), "latest", dropped)
                if stamps is not None:
                    stamps.pop()
                size -= 1
            else:  # ERROR
                self._count_drop(item, "overflow_error", dropped)
                # Accepted: the stream was open (checked above, under _lock).
                self._terminal.fail(
                    BufferOverflowError(
                        f"{self.name}: buffer of {self._capacity} is full "
                        f"({self._delivered + self._fold_overflowed_locked() + size} "
                        f"produced, {self._delivered} delivered)"
                    ),
                    eager=self.error_ahead,
                )
                if self.error_ahead:
                    for queued in queue:
                        self._count_drop(queued, "overflow_error", dropped)
                    queue.clear()
                    if stamps is not None:
                        stamps.clear()
                return _FAILED
        queue.append(item)
        if stamps is not None:
            stamps.append(self._clock())
        if size >= self._peak:
            self._peak = size + 1
        return _ENQUEUED

    def _count_drop(self, item: T, reason: str, dropped: list[T] | None) -> None:
        self._dropped += 1
        reasons = self._reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        if dropped is not None:  # a list only when there is an on_dropped to call
            dropped.append(item)

    def _report_dropped(self, dropped: list[T]) -> None:
        on_dropped = self._on_dropped
        if not dropped or on_dropped is None:
            return
        for item in dropped:
            try:
                on_dropped(item)
            except Exception as error:
                report_undeliverable(error, f"{self.name} on_dropped callback")

    def _expire_locked(self, dropped: list[T] | None) -> None:
        stamps = self._stamps
        if not stamps or self._ttl is None:
            return
        deadline = self._clock() - self._ttl
        queue = self._queue
        while stamps and stamps[0] <= deadline:
            stamps.popleft()
            self._count_drop(queue.popleft(), "ttl", dropped)

    def expire(self) -> int:
        """Drop (reason ``"ttl"``) every item older than the ttl; return how many."""
        dropped: list[T] = []
        with self._lock:
            self._expire_locked(dropped)
            if dropped:
                self._wake_producers_locked()
        self._report_dropped(dropped)
        if dropped:
            if self.water_marks is not None:
                self.water_marks.observe(len(self._queue))
            self._drain()  # a completed buffer may now be empty: signal completion
        return len(dropped)

    @property
    def next_expiry(self) -> float | None:
        """When (on the buffer's clock) the oldest item expires; ``None`` if none can."""
        with self._lock:
            if not self._stamps or self._ttl is None:
                return None
            return self._stamps[0] + self._ttl

    def discard(self, item: T, reason: str) -> None:
        """Count ``item`` as produced and dropped for ``reason`` without queueing it.

        For operators that decide to drop before offering (sampling): the
        accounting invariant still holds and ``on_dropped`` still sees it.
        """
        dropped: list[T] = []
        with self._lock:
            if self._refusing():
                return
            self._count_drop(item, reason, dropped)
        self._report_dropped(dropped)

    def offer_blocking(self, item: T, timeout: float | None = None) -> OfferResult:
        """Offer, waiting for room while the buffer is full (the WAIT strategy, threads).

        Returns ``CLOSED`` if the stream ends while waiting and ``FULL`` after
        ``timeout`` (counted in ``stats.refused``).

        Raises:
            RuntimeError: the buffer is full and this thread is one the
                subscriber needs in order to make room, so waiting could never
                end: the thread delivering to the subscriber or running its
                ``request``, the thread inside ``subscribe()`` (a synchronous
                producer), or a thread running an asyncio event loop. The
                stream fails with the same error, after the buffered items, so
                the subscriber hears of it whatever the producer does with it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self.offer(item, False)
            if result is not OfferResult.FULL:
                return result
            with self._lock:
                if self._room_locked() or self._refusing():
                    continue
                reason = self._cannot_wait_locked()
                if reason is None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        self._refused += 1
                        return OfferResult.FULL
                    self._waiters += 1
                    try:
                        self._cond.wait(remaining if remaining is not None else 1.0)
                    finally:
                        self._waiters -= 1
                    continue
                error = RuntimeError(f"{self.name}: a WAIT emit beyond demand {reason}")
                self._terminal.fail(error)  # accepted: the stream is open (checked above)
                self._wake_producers_locked()  # the other producers learn it is CLOSED
            self._drain()  # the buffered items, then the error
            raise error

    def _cannot_wait_locked(self) -> str | None:
        """Why a producer waiting on this thread could never be woken; ``None`` if it can be."""
        me = threading.get_ident()
        if (self._draining and self._drain_thread == me) or self._callback_thread == me:
            return (
                "on the subscriber's own thread would wait forever: that thread is the one "
                "that would make room. Emit at most `emitter.requested` items there, or "
                "produce on another thread"
            )
        if self._subscribe_thread == me:
            return (
                "inside subscribe() would wait forever: the consumer cannot request more "
                "until subscribe() returns. Run the producer on another thread, or make it "
                "a coroutine that does `await emitter.send(item)`"
            )
        if asyncio._get_running_loop() is not None:  # (raises nothing when there is none)
            return (
                "would block the running event loop of this thread and could wait forever: "
                "a consumer on that loop cannot make room. Make the producer a coroutine "
                "that does `await emitter.send(item)` (SourceQueue: `await offer_wait(item)`), "
                "or run it on another thread"
            )
        return None

    async def offer_wait(self, item: T) -> OfferResult:
        """Offer, awaiting room while the buffer is full (the WAIT strategy, coroutines)."""
        loop = asyncio.get_running_loop()
        while True:
            result = self.offer(item, False)
            if result is not OfferResult.FULL:
                return result
            await self._wait_for_room(loop)

    async def ready(self) -> None:
        """Return once there is room (or the stream is closed): Node's ``drain``."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._room_locked() or self._refusing():
                    return
            await self._wait_for_room(loop)

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._room_locked() or self._refusing():
                return
            self._async_waiters.append((loop, future))
        await future

    def _room_locked(self) -> bool:
        size = len(self._queue)
        return size < self._capacity or size < self._requested

    def complete(self) -> None:
        """No more items: complete once the buffered ones are delivered."""
        with self._lock:
            if not self._terminal.complete():
                return  # already ended or cancelled: a late completion is ignored
            self._wake_producers_locked()  # waiting producers learn it is CLOSED
        self._drain()

    def error(self, error: Exception, *, supersede: bool = False) -> None:
        """Fail the stream (after the buffered items, or ahead of them with ``error_ahead``).

        A second error is reported to the undeliverable hook (Rule 1.7), except
        the very error the stream already ended with (a producer re-raising
        what ``offer_blocking`` raised). So is an error after ``complete()``:
        the producer's completion stands. ``supersede`` is for the owner's own
        failure (a raising ``on_dropped``): with ``error_ahead`` it replaces a
        completion still waiting behind the items.
        """
        if not isinstance(error, Exception):
            raise TypeError(f"error() needs an Exception, got {error!r}")
        dropped: list[T] = []
        with self._lock:
            ending = self._terminal.ending
            if ending is not None and ending.error is error:
                return
            eager = self.error_ahead
            # An upstream error never supersedes upstream's completion (Rule 1.7).
            if not self._terminal.fail(error, eager=eager, supersede=eager and supersede):
                return  # reported by the terminal: too late (Rule 1.7)
            self._wake_producers_locked()  # waiting producers learn it is CLOSED
            if eager:
                while self._queue:
                    self._count_drop(self._queue.popleft(), "error_ahead", dropped)
                if self._stamps is not None:
                    self._stamps.clear()
        self._report_dropped(dropped)
        self._drain()
        if self.water_marks is not None:
            self.water_marks.observe(len(self._queue))

    # -- the subscriber's side ----------------------------------------------------------------

    def request(self, n: int) -> None:
        """Add demand (Rules 3.8, 3.9, 3.17) and deliver what is buffered."""
        if n.__class__ is not int or n <= 0:  # the common valid case skips the call
            error = check_request(n)
            if error is not None:
                self._bad_request(error)
                return
        terminal = self._terminal
        queue = self._queue
        item: T | None = None
        with self._lock:
            if terminal._closed:
                return  # Rule 3.6
            self._requested = add_cap(self._requested, n)
            if self._waiters or self._async_waiters:
                self._wake_producers_locked()
            callbacks = self._request_callbacks
            # Demand with nothing queued and no ending needs no pass: the next
            # offer takes it (the fast path), and complete/error drain.
            drain = False
            if not callbacks and (queue or terminal._ending is not None):
                # _own_locked(), inlined on this hot path.
                if self._draining:
                    self._missed = True  # the running loop will look again (Rule 3.3)
                elif self._actual is not None:
                    self._draining = drain = True
                    if self._waits:
                        self._drain_thread = _get_ident()
                    self._missed = False
                    if queue and terminal._ending is None and self._stamps is None:
                        # The loop's first delivery, made here (one pass fewer):
                        # the oldest item, against the demand just added.
                        # (Producers waiting for room were woken above.)
                        item = queue.popleft()
                        requested = self._requested
                        if requested != UNBOUNDED:
                            self._requested = requested - 1
                        self._delivered += 1
                        since = self._pressure_since
                        if since is not None:  # the spell ends once there is room
                            size = len(queue)
                            if size < self._capacity or size < self._requested:
                                self._pressure_seconds += time.monotonic() - since
                                self._pressure_since = None
        if item is not None:
            actual = self._actual
            assert actual is not None  # the owner's subscriber is released only by the owner
            if self.water_marks is not None:
                self.water_marks.observe(len(queue))
            try:
                actual.on_next(item)
            except Exception as fault:  # Rule 2.13
                self._failed_delivery(actual, fault, ())
                return
            with self._lock:
                if terminal._closed:  # cancelled during on_next (Rule 3.13)
                    self._actual = None
                    self._draining = False
                    self._wake_producers_locked()
                    return
                drain = self._missed or bool(queue and self._requested)
                if not drain:
                    self._draining = False
        if drain:
            self._drain_loop()
        elif callbacks:
            previous = self._callback_thread
            self._callback_thread = _get_ident()
            try:
                for callback in list(callbacks):
                    try:
                        callback(n)
                    except Exception as fault:  # the producer failed: so does the stream
                        self.error(fault)
                        break
            finally:
                self._callback_thread = previous
            self._drain()

    def _bad_request(self, error: Exception) -> None:
        """Rule 3.9, eager: the error cuts ahead of the queued items, which are dropped."""
        dropped: list[T] = []
        with self._lock:
            if self._terminal._closed:
                return  # Rule 3.6
            if self._terminal.fail(error, eager=True, quiet=True):  # Rule 3.6 once ended
                while self._queue:
                    self._count_drop(self._queue.popleft(), "cancelled", dropped)
                if self._stamps is not None:
                    self._stamps.clear()
                self._requested = 0
            self._wake_producers_locked()
        self._report_dropped(dropped)
        self._run_cancel_callbacks()
        self._drain()

    def cancel(self) -> None:
        """Stop, drop (and count) what is buffered, release the subscriber (Rule 3.13)."""
        dropped: list[T] = []
        with self._lock:
            if not self._terminal.cancel():
                return  # Rule 3.7
            while self._queue:
                self._count_drop(self._queue.popleft(), "cancelled", dropped)
            if self._stamps is not None:
                self._stamps.clear()
            self._wake_producers_locked()
            if not self._draining:
                self._actual = None
        self._report_dropped(dropped)
        self._run_cancel_callbacks()
        if self.water_marks is not None:
            self.water_marks.observe(0)

    def _run_cancel_callbacks(self) -> None:
        callbacks, self._cancel_callbacks = self._cancel_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception as fault:
                report_undeliverable(fault, f"{self.name} on_cancel callback")

    def _wake_producers_locked(self) -> None:
        if self._waiters:
            self._cond.notify_all()
        if not self._async_waiters:
            return
        waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    # -- the drain loop ----------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            drain = self._own_locked()
        if drain:
            self._drain_loop()

    def _drain_loop(self) -> None:
        """Deliver against demand, then the ending; the caller owns the loop (``_draining``)."""
        actual = self._actual
        lock = self._lock
        terminal = self._terminal
        queue = self._queue
        while True:
            expired: list[T] | None = None
            with lock:
                self._missed = False
                if terminal._closed or actual is None:  # cancelled (only this loop claims)
                    self._actual = None
                    self._draining = False
                    self._wake_producers_locked()
                    return
                if self._stamps is not None:
                    expired = []
                    self._expire_locked(expired)  # never deliver an expired item
                requested = self._requested
                n = min(requested, len(queue))
                batch: Sequence[T] = ()
                if n:
                    # n == 1 apart: a comprehension is a function call (3.11).
                    batch = [queue.popleft()] if n == 1 else [queue.popleft() for _ in range(n)]
                    if self._stamps is not None:
                        for _ in range(n):
                            self._stamps.popleft()
                    self._requested = produced(requested, n)
                    self._delivered += n
                    if self._waiters or self._async_waiters:
                        self._wake_producers_locked()
                    since = self._pressure_since
                    if since is not None:  # the spell ends once there is room
                        size = len(queue)  # _room_locked(), inlined
                        if size < self._capacity or size < self._requested:
                            self._pressure_seconds += max(0.0, time.monotonic() - since)
                            self._pressure_since = None
            if expired:
                self._report_dropped(expired)
            if self.water_marks is not None and (n or expired):
                self.water_marks.observe(len(queue))
            sent = 0
            for item in batch:
                if terminal._closed:  # Rule 3.6: cancelled mid-batch
                    break
                sent += 1
                try:
                    actual.on_next(item)
                except Exception as fault:  # Rule 2.13
                    self._failed_delivery(actual, fault, batch[sent:])
                    return
            if sent < n:
                self._unsend(batch[sent:])  # cancelled mid-batch: the rest never arrived
            with lock:
                if terminal._closed:
                    self._actual = None
                    self._draining = False
                    self._wake_producers_locked()
                    return
                # One snapshot, read with the queue under _lock (every transition
                # of the terminal is made under it): an ending seen here already
                # carries its error, so a failed stream never completes (Rule 1.7).
                if terminal._ending is not None and not queue:
                    ending = terminal.claim()
                    self._actual = None
                    self._draining = False
                    self._wake_producers_locked()
                elif not self._missed and (not n or not self._requested or not queue):
                    self._draining = False
                    return
                else:
                    continue
            assert ending is not None  # claimed under _lock right after reading it
            if ending.error is None:
                signal_complete(actual, self.name)
            else:
                signal_error(actual, ending.error, self.name)
            return

    def _failed_delivery(
        self, actual: Subscriber[T], fault: Exception, unsent: Sequence[T]
    ) -> None:
        """The subscriber's ``on_next`` raised (Rule 2.13): cancel, then signal ``fault``.

        An ending still waiting behind the queue (an upstream error) is
        superseded by ``fault``: it is reported, never silently dropped.
        """
        closing = not self._terminal.is_closed
        self.cancel()
        waiting = self._terminal.ending
        if closing and waiting is not None and waiting.error is not None:
            report_undeliverable(waiting.error, f"{self.name}: superseded by {fault!r}")
        self._unsend(unsent)
        signal_error(actual, fault, self.name)
        with self._lock:
            self._draining = False
            self._actual = None

    def _unsend(self, items: Sequence[T]) -> None:
        """Items popped for delivery that never reached the subscriber: count them dropped."""
        if not items:
            return
        dropped: list[T] = []
        with self._lock:
            self._delivered -= len(items)
            for item in items:
                self._count_drop(item, "cancelled", dropped)
        self._report_dropped(dropped)

    def __repr__(self) -> str:
        # Never through ``stats``: a repr may be taken under _lock (a late error
        # reported by the terminal), and reading stats takes _lock.
        return f"<PushBuffer {self.name} {self._counters()}>"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
