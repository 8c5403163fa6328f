"""``balance``: fan one upstream out to ``n`` outputs, each item to exactly one of them.

One ``_Balance`` is the subscriber of the upstream and owns a shared queue;
each output is a ``Flow`` with at most one subscriber, served by its own
serialized drain loop, which takes items from the shared queue against its
own demand. An item is taken by exactly one loop (under ``_lock``), so it
reaches exactly one output; items a loop took but could not deliver (its
subscriber cancelled mid-batch) go back to the front of the queue for the
others.

How the rules hold:

* Rule 1.1: a loop takes at most its subscriber's outstanding demand.
* Rule 1.3 and Rule 3.3: one thread at a time owns an output's loop
  (``wip`` under ``_lock``); the subscribing thread owns it until
  ``on_subscribe`` returned (Rule 1.9).
* Terminal state: the upstream's ending is one ``Terminal`` whose
  transitions are made under ``_lock``, where the loops read it together with
  the queue and the count of items in flight; each output delivers it through
  its own ``Terminal`` (``finish``), so an output's own failure (Rule 3.9, a
  raising ``on_next``) and the upstream's ending are never both delivered.
* Rule 2.7: every output's loop may ask upstream for more, so the calls go
  through ``SerializedUpstream``.
* Rule 3.13: an output that cancels drops its subscriber; when every output
  has left, the upstream is cancelled and the queue cleared.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._demand import UNBOUNDED, add_cap, check_request, produced
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import EmptySubscription
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Ending, Terminal
from .._flow import Flow
from ..processors._replay import SerializedUpstream
from ._grouping import AlreadySubscribedError

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber, Subscription

__all__ = ["balance"]

T = TypeVar("T")


def balance(source: Publisher[T], n: int, buffer_size: int = 16) -> list[Flow[T]]:
    """Return ``n`` outputs sharing ``source``'s items (see ``Flow.balance``)."""
    if type(n) is not int or n < 1:
        raise ValueError(f"balance needs n >= 1 outputs, got {n!r}")
    if type(buffer_size) is not int or buffer_size < 0:
        raise ValueError(f"buffer_size must be an int >= 0, got {buffer_size!r}")
    return list(_Balance(source, n, buffer_size).outputs)


class _Output(Flow[T], Generic[T]):
    """One output of a ``balance``: a ``Flow`` with at most one subscriber."""

    __slots__ = ("_parent", "_state")

    def __init__(self, parent: _Balance[T], state: _OutputSubscription[T]) -> None:
        self._parent = parent
        self._state = state

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        self._parent._attach(self._state, subscriber)

    def __repr__(self) -> str:
        return f"<balance output {self._state.index} of {self._parent._n}>"


class _OutputSubscription(Generic[T]):
    """An output's subscriber, demand, liveness and drain-loop ownership."""

    __slots__ = ("actual", "index", "live", "parent", "requested", "subscribed", "terminal", "wip")

    def __init__(self, parent: _Balance[T], index: int) -> None:
        self.parent = parent
        self.index = index
        # Invariant: None until subscribed and once released (Rule 3.13).
        self.actual: Subscriber[T] | None = None
        # All guarded by the parent's _lock. subscribed: a subscriber came (set
        # once). live: subscribed and neither cancelled, failed nor terminated.
        self.subscribed = False
        self.live = False
        self.requested = 0
        self.wip = 0
        # This output's own ending: its Rule 3.9 error or failure (eager), or
        # the upstream's ending once it is due here; closed by cancel.
        self.terminal = Terminal(self)

    def request(self, n: int) -> None:
        """Add ``n`` to this output's demand; a bad ``n`` fails this output (Rule 3.9)."""
        self.parent._request(self, n)

    def cancel(self) -> None:
        """Leave; the other outputs go on (and receive what this one did not)."""
        self.parent._cancel(self)

    def __repr__(self) -> str:
        demand = "unbounded" if self.requested == UNBOUNDED else str(self.requested)
        return f"<BalanceSubscription {self.index} requested={demand} live={self.live}>"


class _Balance(Generic[T]):
    """The shared state of one ``balance(n)``: the upstream subscriber and the queue."""

    __slots__ = (
        "_batch",
        "_buffer_size",
        "_in_flight",
        "_lock",
        "_n",
        "_next",
        "_outstanding",
        "_queue",
        "_source",
        "_started",
        "_states",
        "_subscribed",
        "_terminal",
        "_upstream",
        "_window",
        "outputs",
    )

    def __init__(self, source: Publisher[T], n: int, buffer_size: int) -> None:
        self._source = source
        self._n = n
        self._buffer_size = buffer_size
        # At most this many items requested-or-held at once, so that demand an
        # output withdraws by cancelling strands at most this many.
        self._window = max(2 * buffer_size, 1)
        # While demand is outstanding, ask upstream in batches of at least this much.
        self._batch = max(1, self._window // 4)
        self._lock = threading.Lock()
        self._states = [_OutputSubscription(self, index) for index in range(n)]
        self.outputs: tuple[_Output[T], ...] = tuple(_Output(self, s) for s in self._states)
        # All guarded by _lock. Items received and not yet taken by an output;
        # items taken by an output's loop and not yet delivered (or put back);
        # upstream demand not yet answered; outputs subscribed so far; whether
        # the upstream was subscribed; where the round-robin scan starts.
        self._queue: deque[T] = deque()
        self._in_flight = 0
        self._outstanding = 0
        self._subscribed = 0
        self._started = False
        self._next = 0
        # The upstream's ending; every transition is made under _lock.
        self._terminal = Terminal(self)
        self._upstream = SerializedUpstream(self)

    # -- Subscriber (the upstream side) -------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Take the upstream (a second one is cancelled, Rule 2.5) and ask for the demand."""
        if not self._upstream.attach(subscription):
            return
        with self._lock:
            n = self._plan_locked()
        if n:
            self._upstream.request(n)

    def on_next(self, item: T) -> None:
        """Queue ``item`` and let the outputs with demand take it (round-robin)."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        with self._lock:
            if self._terminal._ending is not None or self._upstream.is_cancelled:
                return  # Rule 2.8: items may still arrive after cancel
            overflow = self._outstanding == 0
            if not overflow:
                if self._outstanding != UNBOUNDED:
                    self._outstanding -= 1
                self._queue.append(item)
                owners = self._wake_locked(demand_only=True)
        if overflow:
            self._end(
                ProtocolViolationError(
                    f"Rule 1.1: the upstream of balance({self._n}) sent {item!r} beyond the "
                    "demand it was given"
                ),
                cancel_upstream=True,
            )
            return
        for state in owners:
            self._drain(state)

    def on_error(self, error: Exception) -> None:
        """Fail every live output now (queued items are discarded)."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._end(error, cancel_upstream=False)

    def on_complete(self) -> None:
        """Complete every live output once the queued items were taken."""
        self._end(None, cancel_upstream=False)

    # -- the outputs' side ----------------------------------------------------------------

    def _attach(self, state: _OutputSubscription[T], subscriber: Subscriber[T]) -> None:
        with self._lock:
            second = state.subscribed
            if not second:
                state.subscribed = True
                state.live = True
                state.actual = subscriber
                state.wip = 1  # this thread owns the loop until on_subscribe returned
                self._subscribed += 1
        if second:
            error = AlreadySubscribedError(
                f"balance output {state.index} allows only one subscriber"
            )
            try:
                subscriber.on_subscribe(EmptySubscription())
            except Exception as fault:  # Rule 2.13
                report_undeliverable(fault, f"{type(subscriber).__name__}.on_subscribe")
            signal_error(subscriber, error, self)
            return
        try:
            subscriber.on_subscribe(state)  # Rule 1.9
        except Exception as fault:  # Rule 2.13: this output fails, the others go on
            state.terminal.fail(fault, eager=True)
            with self._lock:
                self._leave_locked(state)
                state.actual = None
                ending = state.terminal.claim()
            self._after_leave()
            if ending is not None and ending.error is not None:
                signal_error(subscriber, ending.error, self)
            self._start_if_ready()  # the others may all be here
            return
        self._start_if_ready()
        self._drain(state)

    def _start_if_ready(self) -> None:
        """Subscribe upstream once every output has a subscriber (and one is still live)."""
        with self._lock:
            if self._started or self._subscribed < self._n:
                return
            self._started = True
            live = any(state.live for state in self._states)
        if not live:
            self._upstream.cancel()  # everyone left before it began: never subscribe
            return
        try:
            self._source.subscribe(self)
        except Exception as fault:  # a publisher must not raise from subscribe (Rule 1.9)
            self._end(fault, cancel_upstream=True)

    def _request(self, state: _OutputSubscription[T], n: int) -> None:
        terminal = state.terminal
        if terminal._closed:
            return  # Rule 3.6
        error = check_request(n)
        upstream_n = 0
        with self._lock:
            if error is not None:
                # Rule 3.9: only this output fails; a second bad request is a no-op.
                if terminal.fail(error, eager=True, quiet=True):
                    self._leave_locked(state)
            else:
                state.requested = add_cap(state.requested, n)
                upstream_n = self._plan_locked()
            state.wip += 1
            owner = state.wip == 1
        if error is not None:
            self._after_leave()
        elif upstream_n:
            self._upstream.request(upstream_n)
        if owner:
            self._drain(state)

    def _cancel(self, state: _OutputSubscription[T]) -> None:
        if not state.terminal.cancel():
            return  # Rule 3.7
        with self._lock:
            self._leave_locked(state)
            state.wip += 1
            if state.wip == 1:
                state.actual = None  # Rule 3.13; otherwise the loop owner releases
        self._after_leave()

    # -- the loop -------------------------------------------------------------------------

    def _drain(self, state: _OutputSubscription[T]) -> None:
        """Deliver to one output; the caller owns its loop (it moved ``wip`` from 0)."""
        lock = self._lock
        terminal = state.terminal
        queue = self._queue
        missed = 1
        while True:
            batch: list[T] = []
            ending: Ending | None = None
            upstream_n = 0
            with lock:
                actual = state.actual
                if actual is None or terminal._closed:
                    state.actual = None  # Rules 3.7, 3.13: cancelled
                    return
                upstream_ending = self._terminal._ending
                if terminal._ending is not None:
                    # This output's own failure (Rule 3.9) cuts ahead; it already left.
                    ending = terminal.claim()
                    state.actual = None
                elif upstream_ending is not None and upstream_ending.error is not None:
                    # An upstream error reaches every output at once, without demand.
                    ending = terminal.finish(upstream_ending.error, eager=False)
                    state.actual = None
                    self._leave_locked(state)
                else:
                    size = len(queue)
                    requested = state.requested
                    n = requested if requested < size else size
                    if n:
                        batch = [queue.popleft() for _ in range(n)]
                        state.requested = produced(requested, n)
                        self._in_flight += n
                        self._next = (state.index + 1) % self._n
                    elif not size and not self._in_flight and upstream_ending is not None:
                        ending = terminal.finish(None, eager=False)  # completed
                        state.actual = None
                        self._leave_locked(state)
            if ending is not None:
                if ending.error is None:
                    signal_complete(actual, self)
                else:
                    signal_error(actual, ending.error, self)
                return
            if batch:
                sent = 0
                fault: Exception | None = None
                for item in batch:
                    if terminal._closed:
                        break  # Rule 3.6: cancelled mid-batch; the rest goes back
                    sent += 1
                    try:
                        actual.on_next(item)
                    except Exception as error:  # Rule 2.13
                        fault = error
                        break
                owners = self._batch_done(state, batch, sent)
                if fault is not None:
                    self._output_failed(state, actual, fault)
                for other in owners:
                    self._drain(other)
                if fault is not None:
                    return
                continue  # look again: more items, the ending, or nothing (then let go)
            with lock:
                upstream_n = self._plan_locked()
                state.wip -= missed
                missed = state.wip
            if upstream_n:
                self._upstream.request(upstream_n)
            if missed == 0:
                return

    def _batch_done(
        self, state: _OutputSubscription[T], batch: list[T], sent: int
    ) -> list[_OutputSubscription[T]]:
        """A batch is over: put back what was not delivered; return loops to run for it."""
        owners: list[_OutputSubscription[T]] = []
        with self._lock:
            self._in_flight -= len(batch)
            rest = batch[sent:]
            if rest:
                if self._terminal._ending is not None and self._terminal._ending.error is not None:
                    pass  # the upstream failed: nobody receives queued items any more
                elif any(other.live for other in self._states):
                    self._queue.extendleft(reversed(rest))
            if rest or (not self._in_flight and self._terminal._ending is not None):
                # Someone else may take the returned items, or complete now.
                owners = self._wake_locked(demand_only=False, skip=state)
        return owners

    def _output_failed(
        self, state: _OutputSubscription[T], actual: Subscriber[T], fault: Exception
    ) -> None:
        """The output's ``on_next`` raised: it leaves and receives ``fault`` (Rule 2.13)."""
        terminal = state.terminal
        terminal.fail(fault, eager=True)  # too late (cancelled meanwhile): reported
        with self._lock:
            self._leave_locked(state)
            state.actual = None
            ending = terminal.claim()  # a Rule 3.9 error recorded meanwhile wins
        self._after_leave()
        if ending is not None and ending.error is not None:
            signal_error(actual, ending.error, self)

    # -- state changes (under _lock) -------------------------------------------------------

    def _wake_locked(
        self, *, demand_only: bool, skip: _OutputSubscription[T] | None = None
    ) -> list[_OutputSubscription[T]]:
        """Take the loops of the live outputs (with demand, if ``demand_only``), round-robin."""
        owners: list[_OutputSubscription[T]] = []
        states = self._states
        count = self._n
        start = self._next
        for offset in range(count):
            state = states[(start + offset) % count]
            if state is skip or not state.live or (demand_only and not state.requested):
                continue
            state.wip += 1
            if state.wip == 1:
                owners.append(state)
        return owners

    def _leave_locked(self, state: _OutputSubscription[T]) -> None:
        """``state`` is no longer live; its demand no longer counts."""
        state.live = False
        state.requested = 0

    def _after_leave(self) -> None:
        """An output left: if it was the last one, cancel upstream and drop the queue."""
        with self._lock:
            gone = self._subscribed == self._n and not any(s.live for s in self._states)
            if gone:
                self._queue.clear()
            upstream_n = 0 if gone else self._plan_locked()
        if gone:
            self._upstream.cancel()
        elif upstream_n:
            self._upstream.request(upstream_n)

    def _plan_locked(self) -> int:
        """How much more to request upstream now (already counted as outstanding), or 0.

        Requested-but-unsent plus held (queued or in flight) stays within the
        live outputs' demand plus ``buffer_size``, and within ``_window``.
        """
        if not self._started or self._terminal._ending is not None:
            return 0
        demand = 0
        for state in self._states:
            if state.live:
                demand = add_cap(demand, state.requested)
        outstanding = self._outstanding
        target = min(add_cap(demand, self._buffer_size), self._window)
        deficit = target - outstanding - len(self._queue) - self._in_flight
        if deficit <= 0 or (outstanding and deficit < self._batch):
            return 0
        self._outstanding = outstanding + deficit
        return deficit

    def _end(self, error: Exception | None, *, cancel_upstream: bool) -> None:
        """Record the upstream's ending (the first wins) and let every live output see it."""
        with self._lock:
            accepted = self._terminal._ending is None
            owners: list[_OutputSubscription[T]] = []
            if accepted:
                if error is None:
                    self._terminal.complete()
                else:
                    self._terminal.fail(error)
                    self._queue.clear()  # an error cuts ahead: nobody receives these
                owners = self._wake_locked(demand_only=False)
        if not accepted:
            if error is not None:
                self._terminal.fail(error, supersede=False)  # reported: Rule 1.7
            return
        if cancel_upstream:
            self._upstream.cancel()
        for state in owners:
            self._drain(state)

    def __repr__(self) -> str:
        return f"<balance({self._n}) queued={len(self._queue)} {self._terminal!r}>"
