"""``ConnectableFlow``: a hot flow that starts when told to (``publish``, ``replay``).

A ``ConnectableFlow`` holds a *connection*: a processor (made by a factory:
a ``MulticastProcessor`` for ``publish``, a ``ReplayProcessor`` for
``replay``) and, once ``connect()`` was called, one subscription of the
source feeding it. Subscribers join the current connection's processor;
``connect()`` starts it. All the connection logic lives here, so ``publish``
and ``replay`` differ only in their processor.

Lifecycle of the current connection:

* no connection, or the current one was disposed: a subscriber (or
  ``connect()``) makes a fresh one from the factory; subscribers wait in its
  processor until it is connected;
* ``connect()`` while connected returns the same connection;
* once the source ended (completed or failed), the connection stays current:
  late subscribers get what its processor gives late subscribers (a
  ``MulticastProcessor`` under ``WAIT``: the items still queued, then the
  ending; a ``ReplayProcessor``: its history, then the ending), until
  ``connect()`` starts a fresh connection (RxJava 3's rule; a ``ref_count``
  flow starts a fresh one by itself when its first subscriber arrives);
* ``dispose()`` on the connection cancels the source and fails the
  processor's subscribers with ``DisconnectedError`` (delivered as a source
  error); later subscribers join a fresh connection.

How the rules hold for the processor, which is the connection's subscriber:
the source's signals are serialized (Rule 1.3) and so are ours: ``dispose``
adds one ``on_error`` that must never overlap a signal the source is
delivering on another thread, so a signal in progress (``_busy``) makes it
wait in ``_pending`` for that signal's thread to hand it on (Rule 1.3 and
Rule 1.7: nothing after it). ``on_subscribe`` always reaches the processor
first (Rule 1.9), even when the connection is disposed before the source
called back.

Locks: ``ref_count``'s lock may be held while the ``ConnectableFlow``'s lock
is taken, never the other way; the connection's lock is a leaf. None is held
while a source, processor or subscriber is called.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar, cast

from typing_extensions import override

from .._core._arbiter import cancel_quietly
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, EmptySubscription, OperatorSubscriber
from .._core._signals import signal_complete, signal_error
from .._flow import Flow
from ..schedulers._base import RejectableAction, check_delay
from ..sources._time import time_scheduler
from ._multicast import DisconnectedError, MulticastProcessor, SlowSubscriberPolicy
from ._replay import ReplayProcessor

if TYPE_CHECKING:
    from ..abc import Processor, Publisher, Subscriber, Subscription
    from ..schedulers import Cancellable, Scheduler
    from ..subscribers._lambda import Disposable

__all__ = ["ConnectableFlow", "publish", "replay"]

T = TypeVar("T")

_IDLE: Final = "idle"
_CONNECTED: Final = "connected"
_TERMINATED: Final = "terminated"
_DISPOSED: Final = "disposed"

_GONE: Final = EmptySubscription()
"""``_Connection._upstream`` once the source is over (ended, cancelled or disposed)."""


def publish(
    source: Publisher[T],
    buffer_size: int,
    policy: SlowSubscriberPolicy | None,
    on_dropped: Callable[[int, T], object] | None,
) -> ConnectableFlow[T]:
    """See :meth:`Flow.publish`: a ``ConnectableFlow`` over ``MulticastProcessor``s."""
    chosen = SlowSubscriberPolicy.WAIT if policy is None else policy

    def factory() -> MulticastProcessor[T]:
        # auto_cancel off: the connection (connect/ref_count) decides when to stop.
        return MulticastProcessor(buffer_size, chosen, False, on_dropped)

    factory()  # a bad argument is the caller's error, raised now
    return ConnectableFlow(source, factory, "publish")


def replay(
    source: Publisher[T],
    history: int | None,
    ttl: float | None,
    scheduler: Scheduler | None,
) -> ConnectableFlow[T]:
    """See :meth:`Flow.replay`: a ``ConnectableFlow`` over ``ReplayProcessor``s."""

    def factory() -> ReplayProcessor[T]:
        return ReplayProcessor(history, ttl, scheduler)

    factory()  # a bad argument is the caller's error, raised now
    return ConnectableFlow(source, factory, "replay")


class ConnectableFlow(Flow[T]):
    """A hot ``Flow`` whose source is subscribed only when ``connect()`` is called.

    Returned by ``Flow.publish()`` and ``Flow.replay()``. Subscribe first,
    then ``connect()``; or let ``ref_count()`` / ``auto_connect()`` connect
    for you.

    ::

        source:            -a-b-c-d-|
        flow = source.publish()
        flow.subscribe(A):  ^
        flow.connect():       ^ (source subscribed here)
        A:                    -a-b-c-d-|
        flow.subscribe(B):        ^
        B:                        -c-d-|

    Demand: the connection's processor decides (``publish``: the policy of
    its ``MulticastProcessor``; ``replay``: each subscriber at its own pace).
    Nothing is requested from the source before ``connect()``.

    Cancellation: a subscriber's cancel leaves the connection running;
    ``dispose()`` on what ``connect()`` returned cancels the source.

    Errors: the source's ending reaches every subscriber of the connection,
    and late ones (see the module's lifecycle); a disposed connection fails
    its subscribers with ``DisconnectedError``.

    Example:
        >>> flow = Flow.range(3).publish()
        >>> seen = []
        >>> _ = flow.subscribe_with(seen.append)
        >>> seen
        []
        >>> connection = flow.connect()
        >>> seen, connection.is_disposed
        ([0, 1, 2], True)
    """

    __slots__ = ("_current", "_factory", "_lock", "_name", "_source")

    def __init__(
        self,
        source: Publisher[T],
        factory: Callable[[], Processor[T, T]],
        name: str = "publish",
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, got {factory!r}")
        self._source = source
        self._factory = factory
        self._name = name
        self._lock = threading.Lock()
        # Guarded by _lock: the connection subscribers join, or None (a fresh
        # one is made on demand). Never a disposed one.
        self._current: _Connection[T] | None = None

    # -- the public surface -------------------------------------------------------------

    def connect(self) -> Disposable:
        """Subscribe the source to the current connection's processor; return the connection.

        While connected, the same connection is returned. After it ended
        (the source completed or failed) or was disposed, a fresh one is
        started.
        """
        while True:
            with self._lock:
                connection = self._current
                if connection is not None:
                    state = connection._state
                    if state == _CONNECTED:
                        return connection
                    if state == _IDLE:
                        connection._state = _CONNECTED
                        break
            # None, or over (ended, or being disposed): start afresh.
            fresh = _Connection(self, self._factory())
            with self._lock:
                current = self._current
                if current is None or current._state in (_TERMINATED, _DISPOSED):
                    self._current = fresh
        self._source.subscribe(connection)
        return connection

    def ref_count(
        self, min_subscribers: int = 1, grace: float = 0.0, scheduler: Scheduler | None = None
    ) -> Flow[T]:
        """Connect when ``min_subscribers`` subscribed; disconnect when all left.

        ::

            flow = source.publish().ref_count(grace=2)
            A: ^-a-b-!                      (A cancels: count 0, a 2 s grace starts)
            B:          ^-c-d-...           (within the grace: same connection)
            after the last subscriber left for 2 s: the source is cancelled

        Demand: as the processor decides; nothing is requested before the
        connection starts.

        Cancellation: when the count of subscribers drops to 0 (by cancel),
        the connection is disposed (the source cancelled) at once, or
        ``grace`` seconds later on ``scheduler`` (default: the shared timer
        thread) unless a subscriber arrives meanwhile. A subscriber that
        arrives after the source ended, with nobody left, starts a fresh
        connection (the source is subscribed again).

        Errors: the source's ending reaches the subscribers and ends the
        connection; a scheduler that drops the grace timer (shut down)
        disconnects at once.

        Example:
            >>> shared = Flow.range(3).publish().ref_count()
            >>> shared.to_list(), shared.to_list()
            ([0, 1, 2], [0, 1, 2])
        """
        if type(min_subscribers) is not int or min_subscribers < 1:
            raise ValueError(f"min_subscribers must be an int >= 1, got {min_subscribers!r}")
        seconds = check_delay("grace", grace)
        return _RefCountFlow(self, min_subscribers, seconds, time_scheduler(scheduler))

    def auto_connect(self, min_subscribers: int = 1) -> Flow[T]:
        """Connect once, when ``min_subscribers`` subscribed (``0``: at once); never disconnect.

        ::

            flow = source.publish().auto_connect(2)
            A: ^........-a-b-|     (waits for B)
            B:         ^-a-b-|     (B's subscription connects)

        Demand: as the processor decides.

        Cancellation: subscribers come and go; the source keeps running (use
        ``ref_count`` to stop it when everyone left).

        Errors: the source's ending reaches every subscriber, later ones too.

        Example:
            >>> flow = Flow.range(3).publish().auto_connect()
            >>> flow.to_list()
            [0, 1, 2]
        """
        if type(min_subscribers) is not int or min_subscribers < 0:
            raise ValueError(f"min_subscribers must be an int >= 0, got {min_subscribers!r}")
        return _AutoConnectFlow(self, min_subscribers)

    # -- internals ----------------------------------------------------------------------

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        self._joinable().processor.subscribe(subscriber)

    def _joinable(self) -> _Connection[T]:
        """The connection a subscriber joins: the current one, or a fresh idle one."""
        with self._lock:
            connection = self._current
            if connection is not None and connection._state != _DISPOSED:
                return connection
        fresh = _Connection(self, self._factory())
        with self._lock:
            current = self._current
            if current is None or current._state == _DISPOSED:
                self._current = current = fresh
            return current

    def _reset_if_over(self) -> None:
        """Forget a connection whose source ended, so the next subscriber starts afresh."""
        with self._lock:
            current = self._current
            if current is not None and current._state in (_TERMINATED, _DISPOSED):
                self._current = None

    def _detach(self, connection: _Connection[T]) -> None:
        """Stop handing ``connection`` to subscribers (it is being disposed)."""
        with self._lock:
            if self._current is connection:
                self._current = None

    def __repr__(self) -> str:
        return f"{self._source!r}.{self._name}()"


class _Connection(Generic[T]):
    """One connection: the source's subscriber, the processor's subscription, a Disposable."""

    __slots__ = (
        "_busy",
        "_flow",
        "_lock",
        "_pending",
        "_state",
        "_subscribed",
        "_upstream",
        "processor",
    )

    def __init__(self, flow: ConnectableFlow[T], processor: Processor[T, T]) -> None:
        self._flow = flow
        # Replaced by _RELEASED once disposed and the processor was told.
        self.processor: Processor[T, T] = processor
        self._lock = threading.Lock()
        # Written under the ConnectableFlow's _lock while idle -> connected;
        # afterwards under _lock: -> terminated (the source ended, or the
        # processor cancelled it) or -> disposed. Read without a lock (one load).
        self._state = _IDLE
        # Guarded by _lock: the source's subscription; CANCELLED before it
        # arrived, _GONE once the source is over (Rule 3.13).
        self._upstream: Subscription = CANCELLED
        # Guarded by _lock: the processor got on_subscribe (Rule 1.9).
        self._subscribed = False
        # Guarded by _lock: how many signals to the processor are in progress
        # (nested ones included), and the dispose error waiting for them.
        self._busy = 0
        self._pending: Exception | None = None

    # -- Disposable ------------------------------------------------------------------------

    def dispose(self) -> None:
        """Cancel the source; the processor's subscribers get ``DisconnectedError``."""
        with self._lock:
            if self._state in (_DISPOSED, _TERMINATED):
                return
            self._state = _DISPOSED
            upstream, self._upstream = self._upstream, _GONE
            first = not self._subscribed
            self._subscribed = True
            error = DisconnectedError(f"{self._flow!r}: the connection was disposed")
            deliver = self._busy == 0
            if deliver:
                self._busy += 1
            else:
                self._pending = error  # handed on by the thread signalling now (Rule 1.3)
        self._flow._detach(self)
        cancel_quietly(upstream)
        if deliver:
            try:
                if first:
                    self.processor.on_subscribe(EmptySubscription())  # Rule 1.9
                self.processor.on_error(error)
            finally:
                self._leave()

    @property
    def is_disposed(self) -> bool:
        """Whether the connection is over: disposed, or the source ended."""
        return self._state in (_DISPOSED, _TERMINATED)

    # -- the source's subscriber --------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Hand the processor this connection as its subscription (Rule 1.9)."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            current = self._upstream
            accepted = current is CANCELLED
            if accepted:
                self._upstream = subscription
                self._subscribed = True
                self._busy += 1
        if not accepted:
            cancel_quietly(subscription)
            if current is not _GONE:  # not disposed before the source called back: Rule 2.5
                report_undeliverable(
                    ProtocolViolationError("Rule 2.5: a second on_subscribe was cancelled"),
                    repr(self),
                )
            return
        try:
            self.processor.on_subscribe(self)
        finally:
            self._leave()

    def on_next(self, item: T) -> None:
        """Pass ``item`` to the processor (dropped once disposed, Rule 2.8)."""
        with self._lock:
            if self._state == _DISPOSED:
                return
            self._busy += 1
        try:
            self.processor.on_next(item)
        finally:
            self._leave()

    def on_error(self, error: Exception) -> None:
        """Pass the source's failure to the processor; the connection is over."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if not self._end():
            report_undeliverable(error, f"{self!r} after its end (Rule 1.7)")
            return
        try:
            self.processor.on_error(error)
        finally:
            self._leave()

    def on_complete(self) -> None:
        """Pass the source's completion to the processor; the connection is over."""
        if not self._end():
            return
        try:
            self.processor.on_complete()
        finally:
            self._leave()

    def _end(self) -> bool:
        with self._lock:
            if self._state in (_DISPOSED, _TERMINATED):
                return False
            self._state = _TERMINATED
            self._upstream = _GONE  # Rule 3.13
            self._busy += 1
            return True

    def _leave(self) -> None:
        """A signal to the processor returned; hand on a dispose error that waited for it."""
        with self._lock:
            self._busy -= 1
            pending = self._pending
            if self._busy or pending is None:
                self._release_locked()
                return
            self._pending = None
            self._busy += 1
        try:
            self.processor.on_error(pending)
        finally:
            with self._lock:
                self._busy -= 1
                self._release_locked()

    def _release_locked(self) -> None:
        """Once disposed and told: drop the processor (a source may keep this relay)."""
        if self._state == _DISPOSED and not self._busy and self._pending is None:
            self.processor = cast("Processor[T, T]", _RELEASED)

    # -- the processor's subscription ------------------------------------------------------

    def request(self, n: int) -> None:
        """Pass the processor's demand to the source (it validates ``n``, Rule 3.9)."""
        self._upstream.request(n)

    def cancel(self) -> None:
        """The processor is done with the source (it ended on its own): cancel it."""
        with self._lock:
            upstream, self._upstream = self._upstream, _GONE
            if self._state == _CONNECTED:
                self._state = _TERMINATED
        cancel_quietly(upstream)

    def __repr__(self) -> str:
        return f"<connection {self._state} of {self._flow!r}>"


class _Released:
    """What a disposed connection holds instead of its processor (Rule 3.13)."""

    __slots__ = ()

    def subscribe(self, subscriber: Subscriber[object]) -> None:
        subscriber.on_subscribe(EmptySubscription())
        signal_error(subscriber, DisconnectedError("the connection was disposed"), self)

    def on_subscribe(self, subscription: Subscription) -> None:
        cancel_quietly(subscription)

    def on_next(self, item: object) -> None:
        """Dropped: the connection is over (Rule 2.8)."""

    def on_error(self, error: Exception) -> None:
        """Dropped: the processor was told of the disposal already."""

    def on_complete(self) -> None:
        """Dropped."""

    def __repr__(self) -> str:
        return "<released>"


_RELEASED: Final[Processor[object, object]] = _Released()


class _RefCountFlow(Flow[T]):
    """``ConnectableFlow.ref_count``: connect on the n-th subscriber, dispose on the last."""

    __slots__ = (
        "_connectable",
        "_connecting",
        "_connection",
        "_count",
        "_grace",
        "_lock",
        "_min",
        "_scheduler",
        "_timer",
        "_token",
    )

    def __init__(
        self,
        connectable: ConnectableFlow[T],
        min_subscribers: int,
        grace: float,
        scheduler: Scheduler,
    ) -> None:
        self._connectable = connectable
        self._min = min_subscribers
        self._grace = grace
        self._scheduler = scheduler
        self._lock = threading.Lock()
        # All guarded by _lock. Invariant: _count is the number of subscribers
        # that joined and have neither cancelled nor ended.
        self._count = 0
        # The connection this flow started (None while there is none).
        self._connection: Disposable | None = None
        self._connecting = False
        # The pending grace timer and its token (the token is what the timer
        # checks: a subscriber that arrives in the grace replaces it).
        self._timer: Cancellable | None = None
        self._token: object | None = None

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        with self._lock:
            self._count += 1
            timer, self._timer = self._timer, None
            self._token = None  # a subscriber within the grace keeps the connection
            if self._connection is not None and self._connection.is_disposed:
                self._connection = None  # its source ended
            idle = self._connection is None and not self._connecting
            if idle:
                # Nothing running: join a fresh connection, not one whose source ended.
                self._connectable._reset_if_over()
            connect = idle and self._count >= self._min
            if connect:
                self._connecting = True
        if timer is not None:
            timer.cancel()
        # Join first, then connect: a synchronous source loses nothing.
        self._connectable.subscribe(_RefCountSubscriber(subscriber, self))
        if not connect:
            return
        connection = self._connectable.connect()
        with self._lock:
            self._connecting = False
            orphan = self._count == 0  # everyone left while it was connecting
            if orphan:
                self._detach_locked(connection)
            else:
                self._connection = connection
        if orphan:
            connection.dispose()

    def _release(self, relay: _RefCountSubscriber[T], cancelled: bool) -> None:
        """One subscriber left (``cancelled``) or ended; the last one disconnects."""
        with self._lock:
            if relay._released:
                return
            relay._released = True
            self._count -= 1
            connection = self._connection
            if self._count > 0 or connection is None:
                return
            if self._grace > 0 and cancelled and not connection.is_disposed:
                token = self._token = object()
            else:
                self._connection = None
                self._detach_locked(connection)
                token = None
        if token is None:
            connection.dispose()
            return
        action = RejectableAction(
            lambda: self._grace_over(token), lambda error: self._grace_over(token)
        )
        try:
            timer = self._scheduler.schedule_after(self._grace, action)
        except Exception:  # the scheduler refuses: no grace
            self._grace_over(token)
            return
        with self._lock:
            keep = self._token is token
            if keep:
                self._timer = timer
        if not keep:
            timer.cancel()  # a subscriber arrived meanwhile (or the grace is already over)

    def _grace_over(self, token: object) -> None:
        with self._lock:
            if self._token is not token or self._count > 0:
                return
            self._token = None
            self._timer = None
            connection, self._connection = self._connection, None
            if connection is not None:
                self._detach_locked(connection)
        if connection is not None:
            connection.dispose()

    def _detach_locked(self, connection: Disposable) -> None:
        """Under ``_lock``: no subscriber joins ``connection`` any more.

        Done in the same locked section that decides to disconnect, so a
        subscriber arriving before the ``dispose`` finds no connection and starts
        a fresh one instead of joining the one about to be disposed (lock order:
        this ``_lock``, then the ``ConnectableFlow``'s).
        """
        if isinstance(connection, _Connection):
            self._connectable._detach(connection)

    def __repr__(self) -> str:
        return f"{self._connectable!r}.ref_count({self._min})"


class _RefCountSubscriber(OperatorSubscriber[T, T]):
    """Sits between a ``ref_count`` subscriber and the processor, to count it out once."""

    __slots__ = ("_parent", "_released")

    def __init__(self, actual: Subscriber[T], parent: _RefCountFlow[T]) -> None:
        super().__init__(actual)
        self._parent = parent
        self._released = False  # guarded by the parent's _lock

    @override
    def hook_on_next(self, item: T) -> None:
        self.emit(item)

    @override
    def hook_on_error(self, error: Exception) -> None:
        signal_error(self._actual, error, self)
        self._parent._release(self, cancelled=False)

    @override
    def hook_on_complete(self) -> None:
        signal_complete(self._actual, self)
        self._parent._release(self, cancelled=False)

    @override
    def hook_on_cancel(self) -> None:
        # Leave the processor first: a disconnect must not reach this subscriber.
        cancel_quietly(self._upstream)
        self._parent._release(self, cancelled=True)


class _AutoConnectFlow(Flow[T]):
    """``ConnectableFlow.auto_connect``: connect once, on the n-th subscriber."""

    __slots__ = ("_connectable", "_connected", "_count", "_lock", "_min")

    def __init__(self, connectable: ConnectableFlow[T], min_subscribers: int) -> None:
        self._connectable = connectable
        self._min = min_subscribers
        self._lock = threading.Lock()
        # Guarded by _lock.
        self._count = 0
        self._connected = min_subscribers == 0
        if self._connected:
            connectable.connect()

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        self._connectable.subscribe(subscriber)  # join first: nothing is lost
        with self._lock:
            if self._connected:
                return
            self._count += 1
            connect = self._connected = self._count >= self._min
        if connect:
            self._connectable.connect()

    def __repr__(self) -> str:
        return f"{self._connectable!r}.auto_connect({self._min})"
