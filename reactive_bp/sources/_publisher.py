"""``from_publisher``: adopt any third-party publisher behind a strict guard.

A ``Flow`` relies on its upstream keeping the rules. A publisher that did not
come from reactive_bp may not, so its signals pass through ``_StrictSubscriber``,
which turns every violation it can see into a clean ``on_error`` downstream,
and every signal it cannot deliver any more into a report to the
undeliverable hook, instead of corrupting the pipeline:

* ends the stream with ``on_error``: Rule 1.1 over-delivery, Rule 1.9
  ``on_next`` before ``on_subscribe`` (``ProtocolViolationError``), Rule 2.13
  a ``None`` item, Rule 3.16 a ``request`` that raises, and Rule 1.9 a
  ``subscribe`` that raises instead of returning normally (the subscriber gets
  ``on_subscribe`` first if it had not, then that exception);
* reported to the hook: Rule 1.7 anything after the publisher's own
  ``on_complete``/``on_error`` (an item, a second terminal), Rule 2.5 a second
  subscription (cancelled), Rule 1.9 a terminal signal before ``on_subscribe``
  (the subscriber still gets ``on_subscribe`` first);
* Rule 1.3: signals that overlap (two publisher threads, or an item from the
  publisher's thread while downstream's ``on_subscribe`` is still running)
  are serialized without blocking: one thread at a time calls downstream
  (``_emitting``); a signal that arrives meanwhile is queued -- never more
  items than were requested, Rule 1.1 is checked first -- and the calling
  thread hands it on before it leaves. A signal re-entering from inside a
  downstream call (an item emitted inside ``request``) is handed on after that
  call returns (Rule 3.3);
* Rule 3.9: demand is validated here, so a bad ``request`` is answered with
  ``on_error`` even if the publisher would have raised or ignored it;
* Rule 3.13: after ``cancel`` or the terminal signal, the subscriber is dropped.

No lock of the guard is held while it calls out -- to the subscriber, or to
the publisher's ``request``/``cancel``. A publisher that holds its own lock
while it signals, and takes that lock in ``request``/``cancel``, therefore
cannot deadlock against the guard (before, the guard held its lock across
downstream's ``on_subscribe`` and across cancelling the publisher, and a
signal from the publisher's thread waited for it with the publisher's lock
held: a lock-order inversion).

How the stream ends is kept in one ``Terminal``. The publisher's own ending,
and a fault of the publisher it can see in a signal (over-delivery, a
``None``), come in order after the items already accepted; an error of the
guard's own (a Rule 3.9 request, a raising ``request``, a raising downstream
``on_next``) cuts ahead of them. Whoever records an ending delivers it if no
thread is calling downstream, and otherwise leaves it to that thread, which
reads the ending before it stops (both under ``_lock``), so it is never lost
and delivered once (``Terminal.claim``).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import cancel_quietly
from .._core._demand import UNBOUNDED, add_cap, check_request
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import CANCELLED, DETACHED, EmptySubscription
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from .._flow import Flow
from ._iterable import NoneItemError

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber, Subscription

__all__ = ["PublisherFlow"]

T = TypeVar("T")

_NOT_YET: Final = EmptySubscription()
"""``_StrictSubscriber._upstream`` before ``on_subscribe`` (and before downstream got one)."""

_ENDED: Final = EmptySubscription()
"""``_StrictSubscriber._upstream`` after the publisher's own terminal signal."""


class _StrictSubscriber(Generic[T]):
    __slots__ = (
        "_accepted",
        "_actual",
        "_emitting",
        "_lock",
        "_queue",
        "_requested",
        "_source",
        "_terminal",
        "_upstream",
    )

    def __init__(self, actual: Subscriber[T], source: object) -> None:
        # Invariant: the subscriber until the ending was delivered or
        # downstream cancelled, DETACHED after (Rule 3.13).
        self._actual: Subscriber[T] = actual
        self._source = source
        # A leaf lock: held only to read and write the fields below, never
        # while calling the subscriber, the publisher or the hook.
        self._lock = threading.Lock()
        # Guarded by _lock. Invariant: _NOT_YET until downstream got
        # on_subscribe; the publisher's subscription while it runs; _ENDED
        # once the publisher signalled its terminal (what it sends after that
        # breaks Rule 1.7); CANCELLED once downstream cancelled or the guard
        # ended the stream itself (what it sends after that is Rule 2.8 noise).
        self._upstream: Subscription = _NOT_YET
        # Guarded by _lock. Invariant: _accepted <= _requested (Rule 1.1):
        # items taken from the publisher (delivered or queued) never exceed
        # what downstream requested.
        self._requested = 0
        self._accepted = 0
        # Guarded by _lock: a thread is calling downstream (Rule 1.3: one at
        # a time). Stays set once the ending was claimed or downstream
        # cancelled: nothing more goes out.
        self._emitting = False
        # Guarded by _lock: accepted items that arrived while another thread
        # was calling downstream, in order; that thread hands them on.
        # Bounded by the demand (Rule 1.1 is checked before an item is queued).
        self._queue: deque[T] = deque()
        # How the stream ends; closed once the ending was claimed or downstream cancelled.
        self._terminal = Terminal(source)

    # -- from the third-party publisher --------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            current = self._upstream
            first = current is _NOT_YET
            if first:
                self._upstream = subscription
                # Downstream's on_subscribe is the first call out (Rule 1.3):
                # items arriving from another thread meanwhile are queued.
                self._emitting = True
        if not first:
            cancel_quietly(subscription)
            if current is _ENDED:
                self._violation("Rule 1.7: on_subscribe after the terminal signal; cancelled")
            elif current is not CANCELLED:  # after cancel or our own ending it is expected
                self._violation("Rule 2.5: on_subscribe called twice; the second was cancelled")
            return
        try:
            self._actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._fail(fault, eager=True)
        self._drain()

    def on_next(self, item: T) -> None:
        if item is None:
            self._broken(NoneItemError(f"{self._source!r} emitted None"))
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        over = 0  # the number of the item that broke Rule 1.1, if one did
        with self._lock:
            upstream = self._upstream
            if upstream is not _NOT_YET and upstream is not _ENDED and upstream is not CANCELLED:
                accepted = self._accepted + 1
                if accepted > self._requested:
                    over = accepted
                else:
                    self._accepted = accepted
                    ending = self._terminal._ending
                    if ending is not None and ending.eager:
                        return  # the guard is ending the stream; its error cuts ahead
                    if self._emitting:
                        self._queue.append(item)  # handed on by the thread calling downstream
                        return
                    self._emitting = True
        if upstream is CANCELLED:
            return  # Rule 2.8: items may still arrive after cancel
        if upstream is _ENDED:
            self._violation(f"Rule 1.7: on_next({item!r}) after the terminal signal")
            return
        if upstream is _NOT_YET:
            self._broken(ProtocolViolationError("Rule 1.9: on_next before on_subscribe"))
            return
        if over:
            self._broken(
                ProtocolViolationError(
                    f"Rule 1.1: {self._source!r} delivered item #{over} "
                    f"but only {over - 1} were requested"
                )
            )
            return
        try:
            self._actual.on_next(item)
        except Exception as fault:  # Rule 2.13
            self._fail(fault, eager=True)
        self._drain()

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        with self._lock:
            upstream = self._upstream
            late = upstream is _ENDED or upstream is CANCELLED
            early = upstream is _NOT_YET
            if not late:
                self._upstream = _ENDED
                if early:
                    self._emitting = True  # downstream's on_subscribe goes out first
        if late:
            report_undeliverable(error, f"{self._source!r} after terminal/cancel (Rule 1.7)")
            return
        if early:
            self._violation("Rule 1.9: on_error before on_subscribe")
            self._start_early()
        # In order, after the items accepted before it. Not recorded (and
        # reported by the terminal) only if the guard ended the stream meanwhile.
        self._terminal.fail(error)
        if early:
            self._drain()
        else:
            self._drain_if_idle()

    def on_complete(self) -> None:
        with self._lock:
            upstream = self._upstream
            going = upstream is not CANCELLED and upstream is not _ENDED
            early = upstream is _NOT_YET
            if going:
                self._upstream = _ENDED
                if early:
                    self._emitting = True
        if upstream is CANCELLED:
            return  # Rule 2.8: after cancel, or after the guard ended the stream
        if upstream is _ENDED:
            self._violation("Rule 1.7: on_complete after the terminal signal")
            return
        if early:
            self._violation("Rule 1.9: on_complete before on_subscribe")
            self._start_early()
        self._terminal.complete()  # after the items accepted before it
        if early:
            self._drain()
        else:
            self._drain_if_idle()

    def subscribe_raised(self, error: Exception) -> None:
        """The publisher's ``subscribe`` raised (Rule 1.9: it must return normally)."""
        with self._lock:
            upstream = self._upstream
            early = upstream is _NOT_YET
            if upstream is not _ENDED:  # after its terminal, what it sends is still Rule 1.7
                self._upstream = CANCELLED
            if early:
                self._emitting = True
        if early:
            self._start_early()
        elif upstream is not _ENDED:
            cancel_quietly(upstream)
        # Reported by the terminal if the stream is already over.
        self._terminal.fail(error)
        if early:
            self._drain()
        else:
            self._drain_if_idle()

    # -- from downstream ---------------------------------------------------------

    def request(self, n: int) -> None:
        if self._terminal._closed:
            return  # Rule 3.6
        error = check_request(n)
        if error is not None:
            # Rule 3.9: cuts ahead; a second bad request, or one after the
            # end, is a no-op (Rule 3.6).
            self._fail(error, eager=True, quiet=True)
            return
        with self._lock:
            self._requested = add_cap(self._requested, n)
            upstream = self._upstream
        try:
            upstream.request(n if n < UNBOUNDED else UNBOUNDED)
        except Exception as fault:  # Rule 3.16: request must return normally
            self._fail(fault, eager=True)

    def cancel(self) -> None:
        if not self._terminal.cancel():
            return  # Rule 3.7: already cancelled, or the ending was delivered
        self._actual = DETACHED
        with self._lock:
            upstream, self._upstream = self._upstream, CANCELLED
            self._queue.clear()  # Rule 3.13
        if upstream is not _ENDED:
            cancel_quietly(upstream)  # outside _lock: the publisher may take its own lock

    # -- helpers (no lock held on entry) --------------------------------------------

    def _fail(self, error: Exception, *, eager: bool, quiet: bool = False) -> None:
        """End the stream with the guard's own ``error``: cancel the publisher, deliver once.

        Recorded first, then ``_emitting`` is read under ``_lock``: either no
        thread is calling downstream and this one delivers, or the thread
        that is will read the ending (under ``_lock``) before it stops.
        """
        if not self._terminal.fail(error, eager=eager, quiet=quiet):
            return  # already over: reported by the terminal unless quiet (Rule 1.7)
        with self._lock:
            upstream, self._upstream = self._upstream, CANCELLED
            idle = not self._emitting
            if idle:
                self._emitting = True
        if idle:
            self._drain()  # first: cancelling may wait for a publisher that holds its lock
        if upstream is not _ENDED:
            cancel_quietly(upstream)  # outside _lock: the publisher may take its own lock

    def _broken(self, error: Exception) -> None:
        """The publisher broke a rule in a signal: end the stream with ``error``, in order.

        The items accepted before the broken signal are still delivered
        first; the publisher is cancelled and what it sends afterwards is
        ignored (Rule 2.8).
        """
        with self._lock:
            upstream = self._upstream
            if upstream is CANCELLED:
                return  # over already, or being cancelled: noise (Rule 2.8)
            early = upstream is _NOT_YET
            self._upstream = CANCELLED
            if early:
                self._emitting = True
        if upstream is _ENDED:
            report_undeliverable(error, f"{self._source!r} after the terminal signal (Rule 1.7)")
            return
        if early:
            self._start_early()  # Rule 1.9; the publisher's late on_subscribe is cancelled
        else:
            cancel_quietly(upstream)
        self._terminal.fail(error)
        if early:
            self._drain()
        else:
            self._drain_if_idle()

    def _start_early(self) -> None:
        """Rule 1.9: downstream must see on_subscribe before anything else (caller is emitting)."""
        try:
            self._actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            report_undeliverable(fault, f"{self._actual!r}.on_subscribe")

    def _drain_if_idle(self) -> None:
        """Deliver what is waiting, unless another thread is calling downstream (it will)."""
        with self._lock:
            if self._emitting:
                return
            self._emitting = True
        self._drain()

    def _drain(self) -> None:
        """Hand on queued items, then the ending; the caller owns ``_emitting`` (Rule 1.3)."""
        lock = self._lock
        queue = self._queue
        terminal = self._terminal
        while True:
            with lock:
                if terminal._closed:
                    queue.clear()  # cancelled: nothing more goes out (Rules 3.7, 3.13)
                    return
                ending = terminal._ending
                if ending is not None and (ending.eager or not queue):
                    queue.clear()
                    break
                if not queue:
                    self._emitting = False  # read with the ending, under _lock: none is missed
                    return
                item = queue.popleft()
            try:
                self._actual.on_next(item)
            except Exception as fault:  # Rule 2.13
                self._fail(fault, eager=True)
        ending = terminal.claim()  # once, whoever gets here first
        if ending is None:
            return
        actual, self._actual = self._actual, DETACHED  # Rule 3.13
        if ending.error is None:
            signal_complete(actual, self._source)
        else:
            signal_error(actual, ending.error, self._source)

    def _violation(self, message: str) -> None:
        report_undeliverable(ProtocolViolationError(message), repr(self._source))


class PublisherFlow(Flow[T]):
    """Wraps a publisher that is not a ``Flow``."""

    __slots__ = ("_publisher",)

    def __init__(self, publisher: Publisher[T]) -> None:
        if publisher is None or not callable(getattr(publisher, "subscribe", None)):
            raise TypeError(f"from_publisher needs an object with subscribe(), got {publisher!r}")
        self._publisher = publisher

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        guard = _StrictSubscriber(subscriber, self._publisher)
        try:
            self._publisher.subscribe(guard)
        except Exception as error:  # Rule 1.9: never out of Flow.subscribe
            guard.subscribe_raised(error)

    def __repr__(self) -> str:
        return f"Flow.from_publisher({self._publisher!r})"
