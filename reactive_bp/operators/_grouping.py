"""Splitting operators: ``group_by``, ``window`` and ``window_timeout``.

Each turns one upstream into a flow of *inner flows* (groups, windows), and
each inner flow is a single-subscriber bounded queue fed by that upstream.
Three pieces, shared by all three operators:

* ``_InnerQueue``: the subscription behind one group or window. It is a
  ``QueueDrain`` whose loop is *held* from birth (``_wip`` starts at 1) until
  its one subscriber arrives: items pushed before then wait in its queue, and
  the arrival runs the first pass. A second subscriber gets ``on_subscribe``
  then ``on_error(AlreadySubscribedError)``; the first is not disturbed.
* ``_SerialUpstream``: the upstream subscription behind a queue of calls.
  Every inner's drain loop may ask upstream for more, from its own thread;
  the calls reach upstream one at a time and in order (Rule 2.7).
* ``_SplitMain``: the upstream ``Subscriber`` and the outer ``Subscription``:
  a ``QueueDrain`` over the inner flows that wait for outer demand.
  ``_GroupByMain`` and ``_WindowMain`` route the items and decide how much
  to ask upstream for.

How the rules hold:

* Rule 1.1: inner flows are emitted only by the outer drain loop, against
  outer demand; items only by each inner's drain loop, against the demand of
  its own subscriber.
* Rule 1.3: the upstream thread only queues (under ``_state``) and wakes the
  loops; each loop is owned by one thread at a time (``QueueDrain``).
* Bounded memory, no hidden buffer: upstream is asked only for what the
  queues have room for (see each operator's ``Demand:``), and a new group or
  window that waits for outer demand stops all requests until it is emitted.
* Terminal state: an upstream error or completion is recorded in the
  ``Terminal`` of the outer and of every open inner (``_error_all``,
  ``on_complete``) under ``_state``, which also marks the operator done,
  so no item is routed after it and no inner opened after it is missed. An
  error cuts ahead of queued items everywhere; a completion follows them.
* Rules 3.12, 3.13: a cancelled inner or outer drops its subscriber and its
  queue; once the outer is gone and no inner with a subscriber remains,
  upstream is cancelled and its subscription dropped (inners nobody
  subscribed to are abandoned then); timers are cancelled when they can no
  longer matter.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import cancel_quietly, refuse_second_subscription
from .._core._demand import UNBOUNDED, add_cap, produced, sub_or_zero
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, EmptySubscription
from .._core._queue_drain import QueueDrain, replenish_limit
from .._core._signals import signal_error
from .._flow import Flow
from ..schedulers._base import RejectableAction, check_delay
from ..sources._time import time_scheduler
from ._lift import LiftFlow

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription
    from ..schedulers import Cancellable, Scheduler

__all__ = [
    "AlreadySubscribedError",
    "GroupedFlow",
    "TooManyGroupsError",
    "group_by",
    "window",
    "window_timeout",
]

T = TypeVar("T")
K = TypeVar("K")
T_co = TypeVar("T_co", covariant=True)
K_co = TypeVar("K_co", covariant=True)
F = TypeVar("F", bound="_InnerFlow[Any]")


class AlreadySubscribedError(RuntimeError):
    """A single-subscriber flow got a second subscriber.

    Single-subscriber flows: a group of ``group_by``, a window of ``window`` /
    ``window_timeout``, an output of ``balance`` and a ``UnicastProcessor``.

    The second subscriber receives ``on_subscribe`` and then ``on_error`` with
    this error (the Reactive Streams way to turn a subscriber away, Rule 1.9);
    the first one is not disturbed.
    """


class TooManyGroupsError(RuntimeError):
    """``group_by`` saw a new key while ``max_groups`` groups were open."""


# -- the upstream, one call at a time ---------------------------------------------------------


class _SerialUpstream:
    """The one upstream subscription, called by one thread at a time (Rule 2.7).

    Requests made while a call is in progress are summed (``add_cap``) and
    made by the thread already calling, when its call returns; a request made
    from inside a call (a synchronous upstream delivers items, and they ask
    for more) is therefore picked up by the same loop, at depth one (Rule
    3.3). ``cancel`` wins over pending requests and drops the subscription
    (Rule 3.13).
    """

    __slots__ = ("_busy", "_cancelled", "_lock", "_pending", "_subscription")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Guarded by _lock. Invariant: CANCELLED before set() and once cancelled.
        self._subscription: Subscription = CANCELLED
        # Guarded by _lock: demand asked for but not yet passed upstream.
        self._pending = 0
        # Guarded by _lock: a thread is making calls; the others only queue.
        self._busy = False
        # Guarded by _lock; set once.
        self._cancelled = False

    def set(self, subscription: Subscription) -> bool:
        """Keep ``subscription``; ``False`` if one was set already (Rule 2.5)."""
        with self._lock:
            if self._subscription is not CANCELLED:
                return False
            cancelled = self._cancelled
            if not cancelled:
                self._subscription = subscription
        if cancelled:
            cancel_quietly(subscription)  # everything ended before upstream came
        return True

    def request(self, n: int) -> None:
        """Pass ``n > 0`` upstream, after any call in progress."""
        with self._lock:
            if self._cancelled:
                return
            self._pending = add_cap(self._pending, n)
            if self._busy:
                return  # the calling thread passes it on
            self._busy = True
        self._run()

    def cancel(self) -> None:
        """Cancel upstream once, after any call in progress."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            if self._busy:
                return  # the calling thread cancels when its call returns
            self._busy = True
        self._run()

    def _run(self) -> None:
        lock = self._lock
        while True:
            with lock:
                subscription = self._subscription
                if self._cancelled:
                    self._subscription = CANCELLED
                    self._pending = 0
                    n = 0  # _busy stays set: no call is ever made again
                else:
                    n = self._pending
                    self._pending = 0
                    if n == 0:
                        self._busy = False
                        return
            if n == 0:
                cancel_quietly(subscription)
                return
            try:
                subscription.request(n)
            except BaseException:  # Rule 3.16 broken upstream: let the next caller call
                with lock:
                    self._busy = False
                raise

    def __repr__(self) -> str:
        return f"<_SerialUpstream cancelled={self._cancelled} pending={self._pending}>"


# -- one group or window ----------------------------------------------------------------------


def _reject(subscriber: Subscriber[T], error: Exception, origin: object) -> None:
    """Turn ``subscriber`` away: ``on_subscribe`` then ``on_error`` (Rule 1.9)."""
    try:
        subscriber.on_subscribe(EmptySubscription())
    except Exception as fault:  # Rule 2.13
        fault.__context__ = error
        report_undeliverable(fault, f"{type(subscriber).__name__}.on_subscribe (via {origin!r})")
        return
    signal_error(subscriber, error, origin)


class _InnerQueue(QueueDrain[T]):
    """The subscription behind one group or window: a queue with one subscriber.

    The parent feeds it while holding its ``_state`` lock (``offer_locked``,
    ``end_locked``: no foreign call) and then ``wake``s it outside the lock.
    The loop is held from birth until ``attach`` (``_wip`` starts at 1, so a
    ``wake`` before then only counts as missed work) and then runs on the
    attaching thread. ``fail`` is the parent's error broadcast: it cuts ahead
    of queued items (as the outer does), and is quiet for an inner whose
    subscriber already left (the parent reports an error nobody took).

    Upstream demand is the parent's business: this loop tells it how many
    items left the queue (``_inner_consumed``) and that its subscriber went
    away (``_inner_gone``: a cancel, a Rule 3.9 request, a raising
    ``on_next``); the parent then forgets it and asks for more or stops.
    """

    __slots__ = ("_attached", "_parent", "_queue", "_rejection", "tag")

    def __init__(self, parent: _SplitMain[T, Any], tag: object) -> None:
        # The subscriber arrives with attach(); until then _actual is None and
        # the held loop (_wip == 1) never reads it.
        super().__init__(None)  # type: ignore[arg-type]
        self._wip = 1
        self._parent = parent
        # The group's key or the window's number (for the parent and reprs).
        self.tag = tag
        # Appended under the parent's _state by the upstream thread, popped by
        # this loop's owner. Invariant: no longer than the parent's bound
        # (group_buffer, or the window's max_size).
        self._queue: deque[T] = deque()
        # Guarded by _lock, set once: a subscriber came, or nobody ever will.
        self._attached = False
        # Guarded by _lock: why a subscriber is turned away once _attached.
        self._rejection = "allows one subscriber and already has one"

    # -- the subscriber side -------------------------------------------------------------

    def attach(self, subscriber: Subscriber[T]) -> None:
        """Give this subscription to ``subscriber`` and run the held loop (Rule 1.9)."""
        with self._lock:
            rejection = self._rejection if self._attached else None
            self._attached = True
        if rejection is not None:
            _reject(subscriber, AlreadySubscribedError(f"{self._describe()} {rejection}"), self)
            return
        self._actual = subscriber
        try:
            subscriber.on_subscribe(self)
        except Exception as fault:  # Rule 2.13: signalled by the loop below
            self._record_fatal(fault)
        self._drain_loop()  # this thread owns the loop: it was held for the subscriber

    def abandon(self) -> bool:
        """Close an inner nobody subscribed to; ``False`` if it has a subscriber.

        For an inner the outer never emitted (the outer went away first) or
        emitted to an outer subscriber that raised or had cancelled.
        """
        with self._lock:
            if self._attached:
                return False
            self._attached = True
            self._rejection = "was dropped: the outer subscriber went away before subscribing"
        self._terminal.cancel()
        self._halted = True
        self._queue.clear()
        return True

    # -- the parent side ------------------------------------------------------------------

    def offer_locked(self, item: T) -> None:
        """Queue ``item`` (the parent holds its ``_state``); dropped once halted."""
        if not self._halted:
            self._queue.append(item)

    def end_locked(self) -> None:
        """Record completion, delivered after the queued items (parent holds ``_state``)."""
        self._terminal.complete()

    def wake(self) -> None:
        """Announce queued items or the ending; drain unless the loop is busy or held."""
        self._schedule()

    def fail(self, error: Exception) -> bool:
        """Record ``error`` ahead of queued items; ``False`` if it came too late."""
        if not self._terminal.fail(error, eager=True, quiet=True, supersede=False):
            return False
        self._halted = True
        self._schedule()
        return True

    # -- the loop ------------------------------------------------------------------------------

    @override
    def hook_drain(self, actual: Subscriber[T], requested: int) -> int:
        queue = self._queue
        on_next = actual.on_next
        emitted = 0
        while emitted != requested and queue and not self._halted:
            on_next(queue.popleft())
            emitted += 1
        if emitted:
            self._parent._inner_consumed(self, emitted)
        # Read the ending before the queue: items are queued before it is recorded.
        if self._terminal._ending is not None and not queue and not self._halted:
            self._terminate(actual)
        return emitted

    @override
    def hook_cancel_upstreams(self) -> None:
        self._parent._inner_gone(self)

    @override
    def hook_clear(self) -> None:
        self._queue.clear()

    def _describe(self) -> str:
        return self._parent._describe_inner(self)

    def __repr__(self) -> str:
        return f"<{self._describe()} queued={len(self._queue)}>"


class _InnerFlow(Flow[T_co]):
    """One window (and the base of ``GroupedFlow``): a ``Flow`` with a single subscriber."""

    __slots__ = ("_inner",)

    def __init__(self, inner: _InnerQueue[T_co]) -> None:
        self._inner = inner

    @override
    def _subscribe(self, subscriber: Subscriber[T_co]) -> None:
        self._inner.attach(subscriber)

    def __repr__(self) -> str:
        return self._inner._describe()


class GroupedFlow(_InnerFlow[T_co], Generic[K_co, T_co]):
    """One group of ``Flow.group_by``: the items whose key is ``key``, in upstream order.

    A ``Flow`` like any other, with two differences: it accepts one
    subscriber (a second one gets ``on_error(AlreadySubscribedError)``), and
    its items wait in a bounded queue until that subscriber asks for them --
    a group that is never subscribed to or never drained eventually pauses
    the whole source (see ``Flow.group_by``).

    Example:
        >>> groups = Flow.just("apple", "bob", "avocado").group_by(lambda s: s[0])
        >>> groups.flat_map(lambda g: g.map(lambda s: (g.key, s))).to_list()
        [('a', 'apple'), ('a', 'avocado'), ('b', 'bob')]
    """

    __slots__ = ("_key",)

    def __init__(self, key: K_co, inner: _InnerQueue[T_co]) -> None:
        super().__init__(inner)
        self._key = key

    @property
    def key(self) -> K_co:
        """The key every item of this group has."""
        return self._key

    def __repr__(self) -> str:
        return f"GroupedFlow(key={self._key!r})"


# -- the outer side, shared -------------------------------------------------------------------


class _SplitMain(QueueDrain[F], Generic[T, F]):
    """The upstream subscriber and the outer subscription of a splitting operator.

    The outer loop emits the inner flows waiting in ``_ready`` against outer
    demand and, after each pass, lets the subclass ask upstream for more
    (``_after_drain_locked``). Subclasses route items in ``on_next`` and say
    how much upstream may be asked for (``_want_locked``), which inners are
    open at the end (``_stop_locked``), which inners still need upstream
    once the outer is gone (``_orphans_locked``, ``_forget_locked``), and
    what an inner's consumption or departure means (``_inner_consumed``,
    ``_inner_gone``).

    The outer going away (cancel, a Rule 3.9 request, a raising ``on_next``)
    does not end the inners it emitted that have a subscriber: they run until
    they end or their subscribers cancel (Reactor's semantics). Inners still
    waiting in ``_ready``, and emitted inners nobody subscribed to, are
    dropped (abandoned) once nothing else needs upstream, and upstream is
    then cancelled (``_stop_if_unneeded``): an inner left in a cancelled
    ``concat_map``'s queue must not keep the source running (Rule 3.12).
    """

    __slots__ = ("_done", "_emitting", "_outer_gone", "_ready", "_state", "_upstream")

    def __init__(self, actual: Subscriber[F]) -> None:
        super().__init__(actual)
        self._upstream = _SerialUpstream()
        # Guards the routing state below and the subclasses' (never held
        # across a foreign call; QueueDrain._lock is never taken inside it).
        self._state = threading.Lock()
        # Guarded by _state: inner flows opened and not yet emitted (popped by
        # the outer loop owner). Invariant: while non-empty, upstream is not
        # asked for anything (a new inner waits for outer demand).
        self._ready: deque[F] = deque()
        # Guarded by _state: the inner flow the outer loop is handing over (popped
        # from _ready, its on_next not returned yet). It may get its subscriber
        # any moment: it is never abandoned from outside the loop.
        self._emitting: F | None = None
        # Guarded by _state, set once: the outer subscriber is gone.
        self._outer_gone = False
        # Guarded by _state, set once: upstream ended, failed, or was
        # cancelled; nothing more is routed or requested.
        self._done = False

    # -- the Subscriber interface -------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Keep the upstream and hand the outer subscription downstream (Rule 1.9)."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        if not self._upstream.set(subscription):
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return
        actual = self._actual
        if actual is None:  # pragma: no cover - cannot be released before on_subscribe
            return
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._error_all(fault, cancel_upstream=True)

    def on_error(self, error: Exception) -> None:
        """Fail the outer and every open inner with ``error`` (it cuts ahead of queued items)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._error_all(error, cancel_upstream=False)

    def on_complete(self) -> None:
        """Complete every open inner and the outer, after what they hold."""
        inners: list[_InnerQueue[T]] = []
        timer: Cancellable | None = None
        with self._state:
            if self._done:
                return
            self._done = True
            inners, timer = self._stop_locked()
            for inner in inners:
                inner.end_locked()
        if timer is not None:
            timer.cancel()
        for inner in inners:
            inner.wake()
        self._upstream_complete()

    # -- endings -------------------------------------------------------------------------------

    def _error_all(self, error: Exception, *, cancel_upstream: bool) -> None:
        """End everything with ``error``: the outer and every open inner, once."""
        with self._state:
            late = self._done
            if not late:
                self._done = True
                inners, timer = self._stop_locked()
        if late:
            report_undeliverable(error, f"{self!r} after terminal/cancel (Rule 1.7)")
            return
        if timer is not None:
            timer.cancel()
        if cancel_upstream:
            self._upstream.cancel()
        taken = False
        for inner in inners:
            taken = inner.fail(error) or taken
        # An upstream error never supersedes (Rule 1.7); the operator's own
        # failure finds nothing recorded, the operator being done only now.
        if self._terminal.fail(error, eager=True, quiet=True, supersede=False):
            self._halted = True
            self._cancel_upstreams()
            self._schedule()
        elif not taken:
            report_undeliverable(error, f"{self!r}: nobody left to receive it (Rule 1.7)")

    def _fail_all(self, error: Exception) -> None:
        """The operator failed (a key function, a limit, a clock): end all, cancel upstream."""
        self._error_all(error, cancel_upstream=True)

    # -- the outer loop ------------------------------------------------------------------------

    @override
    def hook_drain(self, actual: Subscriber[F], requested: int) -> int:
        ready = self._ready
        state = self._state
        emitted = 0
        while emitted != requested and not self._halted:
            with state:
                flow = self._emitting = ready.popleft() if ready else None
            if flow is None:
                break
            try:
                actual.on_next(flow)
            except Exception:
                with state:
                    self._emitting = None
                self._let_go(flow)  # never handed over: nobody may hold the source for it
                raise
            with state:
                self._emitting = None
            emitted += 1
            if self._halted:
                self._let_go(flow)  # the outer subscriber had cancelled: it may ignore it
        # Read the ending before _ready: inners are queued before it is recorded.
        ending = self._terminal._ending
        with state:
            want = (
                0
                if self._halted
                else self._after_drain_locked(requested, produced(requested, emitted))
            )
            over = ending is not None and not ready
        if want:
            self._upstream.request(want)
        if over and not self._halted:
            self._terminate(actual)  # an error recorded meanwhile wins
        return emitted

    def _let_go(self, flow: F) -> None:
        """``flow`` reached no subscriber: close it unless someone subscribed meanwhile."""
        inner = flow._inner
        if self._abandon(inner):
            self._inner_gone(inner)

    def _abandon(self, inner: _InnerQueue[T]) -> bool:
        """Abandon ``inner`` and stop routing to it; ``False`` if it has a subscriber."""
        if not inner.abandon():
            return False
        with self._state:
            self._forget_locked(inner)
            # Under _state, after _halted was set: an item routed before is
            # dropped here, none can be routed after.
            inner._queue.clear()
        return True

    @override
    def hook_cancel_upstreams(self) -> None:
        """The outer is gone: drop the waiting inners; stop upstream if nobody needs it."""
        with self._state:
            if self._outer_gone:
                return
            self._outer_gone = True
            pending = list(self._ready)
            self._ready.clear()
            for flow in pending:
                self._forget_locked(flow._inner)
        for flow in pending:
            flow._inner.abandon()
        self._stop_if_unneeded()
        with self._state:
            want = self._want_locked()  # a waiting inner may have held the gate
        if want:
            self._upstream.request(want)

    def _stop_if_unneeded(self) -> None:
        """Once the outer is gone: cancel upstream when no subscribed inner needs it.

        Inners nobody subscribed to are abandoned first (a subscriber that
        arrives later is turned away). One that gets its subscriber in the
        meantime refuses (``abandon`` returns ``False``) and keeps upstream.
        """
        while True:
            with self._state:
                if self._done or not self._outer_gone or self._emitting is not None:
                    return  # (the outer loop decides about the inner it is handing over)
                orphans = self._orphans_locked()
                if orphans is None:
                    return  # an inner with a subscriber still needs upstream
                if not orphans:
                    self._done = True
                    _, timer = self._stop_locked()
                    break
            for inner in orphans:
                self._abandon(inner)  # refused: it got a subscriber, checked next round
        if timer is not None:
            timer.cancel()
        self._upstream.cancel()

    @override
    def hook_clear(self) -> None:
        with self._state:
            pending = list(self._ready)
            self._ready.clear()
        for flow in pending:
            self._let_go(flow)

    # -- for subclasses --------------------------------------------------------------------------

    def _stop_locked(self) -> tuple[list[_InnerQueue[T]], Cancellable | None]:
        """Upstream ended: forget and return the open inners, and the timer to cancel."""
        raise NotImplementedError

    def _orphans_locked(self) -> list[_InnerQueue[T]] | None:
        """The open inners without a subscriber, or ``None`` if one with a subscriber is open."""
        raise NotImplementedError

    def _forget_locked(self, inner: _InnerQueue[T]) -> None:
        """Stop routing items to ``inner`` (it was dropped)."""
        raise NotImplementedError

    def _want_locked(self) -> int:
        """How much to ask upstream for now (already counted as outstanding); 0: nothing."""
        raise NotImplementedError

    def _after_drain_locked(self, requested: int, remaining: int) -> int:
        """After an outer pass (``requested`` at its start, ``remaining`` after it): ask for?"""
        return self._want_locked()

    def _inner_consumed(self, inner: _InnerQueue[T], n: int) -> None:
        """``inner``'s loop delivered ``n`` queued items."""

    def _inner_gone(self, inner: _InnerQueue[T]) -> None:
        """``inner``'s subscriber went away (cancel, Rule 3.9, a raising ``on_next``)."""
        raise NotImplementedError

    def _describe_inner(self, inner: _InnerQueue[T]) -> str:
        raise NotImplementedError


# -- group_by ---------------------------------------------------------------------------------


class _GroupByMain(_SplitMain[T, GroupedFlow[K, T]], Generic[T, K]):
    """Routes each item to the group of its key; a new key opens a group.

    Demand. Invariant (after every ``_state`` block): for every open group,
    ``len(queue) + _outstanding <= group_buffer``. Any requested item may
    belong to any group, so upstream is asked for at most what the fullest
    open group has room for (``_max_queued`` is an upper bound of the longest
    queue, exact after ``_rescan_locked``); requests are batched at 75% of
    ``group_buffer`` while items are still outstanding. Upstream is not asked
    for anything before the outer's first request, nor while a new group
    waits for outer demand.
    """

    __slots__ = (
        "_group_buffer",
        "_groups",
        "_key",
        "_limit",
        "_max_groups",
        "_max_queued",
        "_outstanding",
        "_stale",
        "_started",
    )

    def __init__(
        self,
        actual: Subscriber[GroupedFlow[K, T]],
        key: Callable[[T], K],
        max_groups: int,
        group_buffer: int,
    ) -> None:
        super().__init__(actual)
        self._key = key
        self._max_groups = max_groups
        self._group_buffer = group_buffer
        self._limit = replenish_limit(group_buffer)
        # Guarded by _state: the open groups (emitted or waiting in _ready).
        self._groups: dict[K, _InnerQueue[T]] = {}
        # Guarded by _state: upstream items requested and not yet received.
        self._outstanding = 0
        # Guarded by _state. Invariant: >= the longest queue of an open group.
        self._max_queued = 0
        # Guarded by _state: a queue shrank or a group left since the last rescan.
        self._stale = False
        # Guarded by _state, set once: the outer asked for something.
        self._started = False

    def on_next(self, item: T) -> None:
        """Queue ``item`` in its key's group, opening the group if needed."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._done:
            return  # Rule 2.8
        try:
            key = self._key(item)
            hash(key)  # an unhashable key fails here, as the key function's own error
        except Exception as raised:
            self._fail_all(raised)
            return
        error: Exception | None = None
        new: GroupedFlow[K, T] | None = None
        inner: _InnerQueue[T] | None = None
        want = 0
        try:
            with self._state:
                if self._done:
                    return
                if self._outstanding == 0:
                    error = ProtocolViolationError(
                        f"Rule 1.1: {self!r} received {item!r}, more than it requested"
                    )
                else:
                    self._outstanding = produced(self._outstanding, 1)
                    inner = self._groups.get(key)
                    if inner is None and not self._outer_gone:
                        # After the outer left, nobody can receive a new group: dropped.
                        if len(self._groups) >= self._max_groups:
                            error = TooManyGroupsError(
                                f"group_by: key {key!r} would open group #"
                                f"{self._max_groups + 1}, above max_groups={self._max_groups}; "
                                "cancel groups that are done (take, take_while...) or raise "
                                "max_groups"
                            )
                        else:
                            inner = _InnerQueue(self, key)
                            new = GroupedFlow(key, inner)
                            self._groups[key] = inner
                            self._ready.append(new)
                    if inner is not None:
                        inner.offer_locked(item)
                        size = len(inner._queue)
                        if size > self._max_queued:
                            self._max_queued = size
                    if error is None:
                        want = self._want_locked()
        except Exception as fault:  # a key whose __eq__ raises
            error = fault
        if error is not None:
            self._fail_all(error)
            return
        if new is not None:
            self._schedule()  # the outer emits it when it has demand
        elif inner is not None:
            inner.wake()
        if want:
            self._upstream.request(want)

    # -- demand --------------------------------------------------------------------------------

    @override
    def _want_locked(self) -> int:
        if self._done or not self._started or self._ready:
            return 0
        outstanding = self._outstanding
        limit = self._limit
        room = sub_or_zero(self._group_buffer, outstanding)
        if room == 0 or (outstanding and room < limit):
            return 0  # a batch is still on its way, however empty the groups are
        free = sub_or_zero(room, self._max_queued)
        if free < limit and self._stale:
            self._rescan_locked()  # O(groups): only when the bound may be what stops us
            free = sub_or_zero(room, self._max_queued)
        if free == 0 or (outstanding and free < limit):
            return 0  # paused: a full group
        self._outstanding = add_cap(outstanding, free)
        return free

    def _rescan_locked(self) -> None:
        longest = 0
        for inner in self._groups.values():
            size = len(inner._queue)
            if size > longest:
                longest = size
        self._max_queued = longest
        self._stale = False

    @override
    def _after_drain_locked(self, requested: int, remaining: int) -> int:
        if requested:
            self._started = True
        return self._want_locked()

    @override
    def _inner_consumed(self, inner: _InnerQueue[T], n: int) -> None:
        with self._state:
            if len(inner._queue) + n >= self._max_queued:
                self._stale = True  # it may have been the longest queue
            want = self._want_locked()
        if want:
            self._upstream.request(want)

    @override
    def _inner_gone(self, inner: _InnerQueue[T]) -> None:
        # Taking _state also orders this after any item routed to ``inner``:
        # its queue is cleared after this returns (hook_clear).
        with self._state:
            self._forget_locked(inner)
            outer_gone = self._outer_gone
            want = 0 if outer_gone and not self._groups else self._want_locked()
        if outer_gone:
            self._stop_if_unneeded()
        if want:
            self._upstream.request(want)

    # -- endings -------------------------------------------------------------------------------

    @override
    def _stop_locked(self) -> tuple[list[_InnerQueue[T]], Cancellable | None]:
        inners = list(self._groups.values())
        self._groups.clear()
        return inners, None

    @override
    def _orphans_locked(self) -> list[_InnerQueue[T]] | None:
        orphans = []
        for inner in self._groups.values():
            if inner._halted:
                continue  # on its way out (_inner_gone follows)
            if inner._attached:
                return None
            orphans.append(inner)
        return orphans

    @override
    def _forget_locked(self, inner: _InnerQueue[T]) -> None:
        key: K = inner.tag  # type: ignore[assignment]
        if self._groups.get(key) is inner:
            del self._groups[key]
            self._stale = True

    @override
    def _describe_inner(self, inner: _InnerQueue[T]) -> str:
        return f"group_by group {inner.tag!r}"

    def __repr__(self) -> str:
        return f"<group_by groups={len(self._groups)} outstanding={self._outstanding}>"


def group_by(
    source: Flow[T], key: Callable[[T], K], max_groups: int, group_buffer: int
) -> Flow[GroupedFlow[K, T]]:
    """See :meth:`Flow.group_by`."""
    if not callable(key):
        raise TypeError(f"group_by: key must be callable, got {key!r}")
    _check_count("group_by", "max_groups", max_groups)
    _check_count("group_by", "group_buffer", group_buffer)
    factory = partial(
        _GroupByMain,
        key=key,
        max_groups=max_groups,
        group_buffer=min(group_buffer, UNBOUNDED),
    )
    return LiftFlow(source, factory, "group_by")


def _check_count(name: str, what: str, value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name}: {what} must be an int >= 1, got {value!r}")


# -- window / window_timeout ------------------------------------------------------------------


class _WindowMain(_SplitMain[T, _InnerFlow[T]]):
    """Cuts upstream into consecutive windows of ``max_size`` items (or ``max_time``).

    A window opens with its first item and closes when it holds
    ``max_size`` items, or ``max_time`` after it opened (``window_timeout``),
    whichever comes first; it is never empty.

    Demand. Invariant: ``_outstanding <= max_size - _received`` while a
    window is open and ``<= max_size`` otherwise. The next window's items are
    asked for (``max_size`` at once) only by an outer pass that still has
    demand, no window open and none waiting; the open window is then topped
    up to ``max_size``. A window closed by time can leave items outstanding:
    they open the next window, which waits in ``_ready`` if the outer has no
    demand, and nothing more is asked for meanwhile.

    A window whose subscriber cancels keeps its place: the items that belong
    to it are dropped until it closes, so boundaries do not depend on the
    consumer (Reactor's semantics).
    """

    __slots__ = (
        "_current",
        "_max_size",
        "_max_time",
        "_opened",
        "_outstanding",
        "_received",
        "_scheduler",
        "_timer",
    )

    def __init__(
        self,
        actual: Subscriber[_InnerFlow[T]],
        max_size: int,
        max_time: float | None,
        scheduler: Scheduler | None,
    ) -> None:
        super().__init__(actual)
        self._max_size = max_size
        self._max_time = max_time
        self._scheduler = scheduler
        # Guarded by _state: the window that receives the next item.
        self._current: _InnerQueue[T] | None = None
        # Guarded by _state: items routed to _current.
        self._received = 0
        # Guarded by _state: upstream items requested and not yet received.
        self._outstanding = 0
        # Guarded by _state: windows opened so far (the next one's number - 1).
        self._opened = 0
        # Guarded by _state: the timer that closes _current (window_timeout).
        self._timer: Cancellable | None = None

    def on_next(self, item: T) -> None:
        """Put ``item`` in the open window, opening one if needed; close it when full."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        if self._done:
            return  # Rule 2.8
        new: _InnerFlow[T] | None = None
        window: _InnerQueue[T] | None = None
        timer: Cancellable | None = None
        closed = outer_gone = False
        want = 0
        with self._state:
            if self._done:
                return
            if self._outstanding == 0:
                overflow = True
            else:
                overflow = False
                self._outstanding = produced(self._outstanding, 1)
                window = self._current
                if window is None and not self._outer_gone:
                    self._opened += 1
                    window = _InnerQueue(self, self._opened)
                    new = _InnerFlow(window)
                    self._current = window
                    self._received = 0
                    self._ready.append(new)
                if window is not None:
                    window.offer_locked(item)
                    self._received += 1
                    if self._received >= self._max_size:
                        closed = True
                        window.end_locked()
                        self._current = None
                        timer, self._timer = self._timer, None
                        outer_gone = self._outer_gone
                want = self._want_locked()
        if overflow:
            self._fail_all(
                ProtocolViolationError(f"Rule 1.1: {self!r} received {item!r}, more than requested")
            )
            return
        if timer is not None:
            timer.cancel()
        if window is not None:
            if new is not None and not closed and self._max_time is not None:
                self._arm(window)
            window.wake()
        if new is not None or closed:
            self._schedule()  # the outer emits it, or decides about the next window
        if outer_gone:
            self._stop_if_unneeded()
        elif want:
            self._upstream.request(want)

    # -- the clock ------------------------------------------------------------------------------

    def _arm(self, window: _InnerQueue[T]) -> None:
        """Close ``window`` ``max_time`` after it opened (a ``RejectableAction``)."""
        scheduler = self._scheduler
        assert scheduler is not None and self._max_time is not None
        action = RejectableAction(
            partial(self._time_up, window), partial(self._clock_failed, window)
        )
        try:
            handle: Cancellable | None = scheduler.schedule_after(self._max_time, action)
        except Exception as error:  # e.g. a pool that shut down: the stream cannot keep time
            self._clock_failed(window, error)
            return
        with self._state:
            if self._current is window and not self._done:
                self._timer, handle = handle, None
        if handle is not None:
            handle.cancel()  # the window closed (or everything ended) before the timer was kept

    def _time_up(self, window: _InnerQueue[T]) -> None:
        with self._state:
            if self._current is not window or self._done:
                return  # closed by size meanwhile, or over
            self._current = None
            self._timer = None
            window.end_locked()
            outer_gone = self._outer_gone
        window.wake()
        self._schedule()  # the outer decides about the next window
        if outer_gone:
            self._stop_if_unneeded()

    def _clock_failed(self, window: _InnerQueue[T], error: Exception) -> None:
        with self._state:
            relevant = self._current is window and not self._done
        if relevant:
            self._fail_all(error)

    # -- demand ----------------------------------------------------------------------------------

    @override
    def _want_locked(self) -> int:
        if self._done or self._ready or self._current is None:
            return 0
        want = sub_or_zero(sub_or_zero(self._max_size, self._received), self._outstanding)
        if want:
            self._outstanding = add_cap(self._outstanding, want)
        return want

    @override
    def _after_drain_locked(self, requested: int, remaining: int) -> int:
        if remaining and self._current is None and not self._ready and not self._done:
            want = sub_or_zero(self._max_size, self._outstanding)  # the next window's items
            if want:
                self._outstanding = add_cap(self._outstanding, want)
            return want
        return self._want_locked()

    @override
    def _inner_gone(self, inner: _InnerQueue[T]) -> None:
        # The open window keeps its place (its items are dropped until it
        # closes); without the outer, nobody needs what follows it. Taking
        # _state also orders this after any item routed to ``inner``: its
        # queue is cleared after this returns (hook_clear).
        with self._state:
            outer_gone = self._outer_gone
        if outer_gone:
            self._stop_if_unneeded()

    # -- endings --------------------------------------------------------------------------------

    @override
    def _stop_locked(self) -> tuple[list[_InnerQueue[T]], Cancellable | None]:
        window, self._current = self._current, None
        timer, self._timer = self._timer, None
        return ([] if window is None else [window]), timer

    @override
    def _orphans_locked(self) -> list[_InnerQueue[T]] | None:
        current = self._current
        if current is None or current._halted:
            return []  # closed, or its subscriber left: nothing needs upstream
        return None if current._attached else [current]

    @override
    def _forget_locked(self, inner: _InnerQueue[T]) -> None:
        if self._current is inner:
            self._current = None

    @override
    def _describe_inner(self, inner: _InnerQueue[T]) -> str:
        return f"window #{inner.tag}"

    def __repr__(self) -> str:
        return f"<window max_size={self._max_size} opened={self._opened}>"


def window(source: Flow[T], count: int) -> Flow[Flow[T]]:
    """See :meth:`Flow.window`."""
    _check_count("window", "count", count)
    factory = partial(_WindowMain, max_size=min(count, UNBOUNDED), max_time=None, scheduler=None)
    return LiftFlow(source, factory, "window")


def window_timeout(
    source: Flow[T], max_size: int, max_time: float, scheduler: Scheduler | None
) -> Flow[Flow[T]]:
    """See :meth:`Flow.window_timeout`."""
    _check_count("window_timeout", "max_size", max_size)
    max_time = check_delay("window_timeout: max_time", max_time, positive=True)
    factory = partial(
        _WindowMain,
        max_size=min(max_size, UNBOUNDED),
        max_time=max_time,
        scheduler=time_scheduler(scheduler),
    )
    return LiftFlow(source, factory, "window_timeout")
