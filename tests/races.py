"""Concurrent terminal races: the scenario matrix's terminal signals, from other threads.

One *run* subscribes a fresh pipeline, then races, on four threads:

* the **emitter** (``race-0``) sends upstream items against the demand it
  was granted;
* the **ender** (``race-1``) sends the upstream terminal signal (the run's
  own ``Boom`` object, or completion) once ``end_at`` items were sent;
* two **requesters** (``race-2`` and the test's own thread) call
  ``request(n)`` on the downstream subscription: a few requests to get items
  flowing, then a burst while the terminal signal is sent (each request is a
  drain pass, or work for the thread that owns the drain loop). In about one
  run in four a requester calls ``cancel()`` at a random point.

Upstream signals are serialized (Rule 1.3) but hop threads: the upstream is a
correct publisher, only the threads change.

A switch interval of 1 µs makes preemption likely anywhere, but on a busy
machine the scheduler decides, and a window of a few bytecodes (the classic:
"done" is set, the error not stored yet) is rarely hit. So most runs also
*preempt* one thread at a random traced line of the library while it is
inside the terminal call, a request, a cancel or an ``on_next``
(``Preemption``): the paused thread waits until another thread has taken its
step (requests, or the whole terminal signal), then goes on. Every
interleaving this produces is one the scheduler could produce; it only makes
the narrow ones common.

After the race the run is settled (unbounded demand, the terminal signal sent
if it was not) and its ``Outcome`` kept; ``judge`` checks every run of a case
once all are over, so a signal that arrives late (from a pool or a timer) is
judged too. Invariants (``check_outcome``):

* exactly one terminal signal (at most one after a ``cancel``);
* an upstream error ends the stream with ``on_error`` of that same object
  (``is``), never ``on_complete``, unless the case says the operator may end
  the stream by itself at that point (``own_end``, e.g. ``take(7)``);
* no signal after the terminal one, no overlapping signals (Rule 1.3), no
  ``on_next`` beyond the requested demand (Rule 1.1);
* what was delivered fits the case's model of what upstream sent;
* nothing reaches the undeliverable hook, except the run's own error when a
  cancel (downstream, or of upstream) began before it was delivered, or the
  operator had ended the stream by itself; for a source that ends by itself,
  except what is reported during a run that cancelled.

The worker threads are reused across runs (a ``Crew``): starting threads per
run would cost more than the run. ``RACE_RUNS`` (environment, default 200)
sets the runs per case and ``RACE_SECONDS`` a time budget per case (default
0.08 s, never fewer than 30 runs; 0 turns it off). A deeper soak by hand:
``RACE_RUNS=2000 RACE_SECONDS=0 pytest -m race``.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import Literal, Protocol, TypeAlias

import reactive_bp
import spec_tck
from reactive_bp import UNBOUNDED, Flow
from reactive_bp.abc import Subscriber, Subscription
from tests.scenarios import Boom

__all__ = [
    "COMPLETE",
    "RACE_RUNS",
    "RACE_SECONDS",
    "ContentCheck",
    "Crew",
    "Ending",
    "Mode",
    "Outcome",
    "OwnEnd",
    "PausePlan",
    "Preemption",
    "Producer",
    "PushProducer",
    "RaceSubscriber",
    "RaceUpstream",
    "RequesterPlan",
    "RunPlan",
    "ScriptedSource",
    "Trace",
    "check_outcome",
    "expect_count",
    "expect_model",
    "judge",
    "new_error",
    "run_once",
    "runs",
    "spin",
]

RACE_RUNS = int(os.environ.get("RACE_RUNS", "200"))
"""Runs per race case; raise it for a soak (``RACE_RUNS=2000 RACE_SECONDS=0``)."""
RACE_SECONDS = float(os.environ.get("RACE_SECONDS", "0.08"))
"""Time budget per case: past it, a case stops after ``MIN_RUNS`` runs (0: no budget).

On a quiet machine ``RACE_RUNS`` runs fit well inside it; on a loaded one the
budget keeps the whole harness near its usual time, with fewer runs per case.
"""
MIN_RUNS = 30

PAUSE_TIMEOUT = 0.002
"""The longest a preempted thread waits for the other one to come and take its step."""
STEP_TIMEOUT = 0.0005
"""The longest it then waits for that step: the step may need a lock the preempted
thread holds, and then it goes on (unserved) so the step can finish."""
SERVE_TIMEOUT = 1.0
"""The longest a thread waits for the preemption it is to serve (a safety net)."""
PAUSE_LINES = 40
"""Preemption points are drawn among the first ``PAUSE_LINES`` traced lines of a call."""

Mode = Literal["error", "complete"]
TraceFunction: TypeAlias = Callable[[FrameType, str, object], "TraceFunction | None"]

# A global order of the events that gate the undeliverable hook: next() on a
# C-level count is atomic under the GIL.
_SEQ = itertools.count(1)


class _Complete:
    __slots__ = ()

    def __repr__(self) -> str:
        return "on_complete"


COMPLETE = _Complete()
"""The terminal ``on_complete`` in ``RaceSubscriber.terminals`` (errors are stored as is)."""

Terminal = Exception | _Complete


def runs() -> Iterator[int]:
    """The run indices of one case: ``RACE_RUNS``, or fewer once ``RACE_SECONDS`` are spent."""
    deadline = time.monotonic() + RACE_SECONDS if RACE_SECONDS > 0 else None
    for run in range(RACE_RUNS):
        if deadline is not None and run >= MIN_RUNS and time.monotonic() > deadline:
            return
        yield run


def spin(n: int) -> None:
    """Burn ``n`` loop iterations: a cheap random shift between threads."""
    for _ in range(n):
        pass


class _ThreadName(threading.local):
    name = ""


_thread_name = _ThreadName()


class Trace:
    """Every event of one run in order, with the name of the thread it happened on."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        # list.append is atomic: no lock, so tracing does not serialize the race.
        self.events: list[tuple[str, str]] = []

    def add(self, event: str) -> None:
        name = _thread_name.name
        if not name:
            name = _thread_name.name = threading.current_thread().name
        self.events.append((name, event))

    def render(self, head: int = 30, tail: int = 90) -> str:
        """The trace as lines; a long one as its start and its end (where runs end)."""
        events = self.events
        shown = [f"    [{thread}] {event}" for thread, event in events]
        if len(events) > head + tail:
            skipped = f"    ... {len(events) - head - tail} events ..."
            shown = [*shown[:head], skipped, *shown[-tail:]]
        return "\n".join(shown)


# -- controlled preemption ----------------------------------------------------------------

# Only lines of the code under test are preemption points.
_UNDER_TEST = tuple(os.path.dirname(module.__file__ or "") for module in (reactive_bp, spec_tck))

PauseWhere = Literal["end", "next", "request", "cancel"]


@dataclass(frozen=True)
class PausePlan:
    """Where a run preempts a thread: at traced line ``at`` of one call.

    ``end``: the terminal call (the first requester serves, with requests);
    ``next``: the emitter's ``on_next`` of item ``index`` (the first
    requester serves); ``request``: request ``index`` of requester
    ``requester``; ``cancel``: that requester's cancel (the ender serves with
    the terminal signal, or, for a source that ends itself, the other
    requester with requests).
    """

    where: PauseWhere
    at: int
    index: int = 0
    requester: int = 0


class Preemption:
    """One run's preemption: a thread stopped mid-call until another took its step.

    States: ``waiting`` -> ``paused`` -> ``serving`` -> ``served``, or
    ``over`` when the pausing call ended without reaching its line or the
    pause gave up waiting.
    """

    __slots__ = ("_cond", "_state", "_trace", "plan")

    def __init__(self, plan: PausePlan | None, trace: Trace) -> None:
        self.plan = plan
        self._trace = trace
        self._cond = threading.Condition()
        self._state = "waiting"  # guarded by _cond

    def line(self, where: PauseWhere, index: int = 0, requester: int = 0) -> int:
        """The line at which this call pauses (0: it does not)."""
        plan = self.plan
        if plan is None or plan.where != where:
            return 0
        if where in ("next", "request") and plan.index != index:
            return 0
        if where in ("request", "cancel") and plan.requester != requester:
            return 0
        return plan.at

    def run(self, call: Callable[[], None], at: int) -> None:
        """Run ``call``, pausing at its ``at``-th traced line of the code under test.

        The thread's previous trace function (a coverage tracer) is restored.
        """
        if at <= 0:
            call()
            return
        seen = 0

        def tracer(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
            nonlocal seen
            if event == "call":
                return tracer if frame.f_code.co_filename.startswith(_UNDER_TEST) else None
            if event == "line":
                seen += 1
                if seen == at:
                    code = frame.f_code
                    self._trace.add(f"(preempted at {code.co_name}:{frame.f_lineno})")
                    self._trace.add(f"(resumed: {self._pause()})")
            return tracer

        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            call()
        finally:
            sys.settrace(previous)
            self.close()

    def serve(self, step: Callable[[], None]) -> bool:
        """Wait for the pause, take ``step`` while the other thread is stopped; whether it did."""
        with self._cond:
            self._cond.wait_for(lambda: self._state != "waiting", SERVE_TIMEOUT)
            if self._state != "paused":
                return False
            self._state = "serving"
            self._cond.notify_all()
        try:
            step()
        finally:
            with self._cond:
                if self._state == "serving":
                    self._state = "served"
                    self._cond.notify_all()
        return True

    def close(self) -> None:
        """The pausing role is past its call: nobody waits for a pause that will not come."""
        with self._cond:
            if self._state == "waiting":
                self._state = "over"
                self._cond.notify_all()

    def _pause(self) -> str:
        """Wait for the step; say how it went (for the trace)."""
        cond = self._cond
        with cond:
            if self._state != "waiting":
                return "no pause"
            self._state = "paused"
            cond.notify_all()
            if not cond.wait_for(lambda: self._state != "paused", PAUSE_TIMEOUT):
                outcome = "nobody came"
            elif cond.wait_for(lambda: self._state == "served", STEP_TIMEOUT):
                outcome = "served"
            else:
                outcome = "the step is still going (blocked on this thread?)"
            self._state = "over"
            return outcome


# -- the downstream end ---------------------------------------------------------------


class _Unsubscribed:
    __slots__ = ()

    def request(self, n: int) -> None:
        """Nothing to ask yet."""

    def cancel(self) -> None:
        """Nothing to cancel yet."""


class RaceSubscriber:
    """Records every signal with its thread, and every rule the publisher broke.

    ``request`` and ``cancel`` are called from several threads at once; the
    demand count is guarded by ``_lock`` and raised *before* the request is
    passed on, so an item can never be counted against demand not yet added.
    """

    __slots__ = (
        "_busy",
        "_busy_owner",
        "_lock",
        "_preemption",
        "_request_in_on_next",
        "cancel_seq",
        "done",
        "initial",
        "items",
        "requested",
        "subscribed",
        "subscription",
        "terminals",
        "trace",
        "violations",
    )

    def __init__(
        self,
        trace: Trace,
        initial: int = 0,
        request_in_on_next: bool = False,
        preemption: Preemption | None = None,
    ) -> None:
        self.trace = trace
        self.initial = initial
        self._request_in_on_next = request_in_on_next
        self._preemption = preemption if preemption is not None else Preemption(None, trace)
        self.subscription: Subscription = _Unsubscribed()
        self.subscribed = threading.Event()
        self.done = threading.Event()
        self.items: list[object] = []
        self.terminals: list[Terminal] = []
        self.violations: list[str] = []
        # Guarded by _lock: the sum of valid requests, capped at UNBOUNDED.
        self.requested = 0
        # Set once, before the subscription is cancelled: when cancel began.
        self.cancel_seq: int | None = None
        self._lock = threading.Lock()
        # Held while inside a signal method: a failed non-blocking acquire by
        # another thread is an overlap (Rule 1.3); by the same one, re-entry.
        self._busy = threading.Lock()
        self._busy_owner = 0

    # -- Subscriber ----------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        held = self._enter("on_subscribe")
        try:
            if self.subscribed.is_set():
                self.violations.append("Rule 2.12, on_subscribe twice: again")
                return
            self.subscription = subscription
            self.subscribed.set()
        finally:
            self._exit(held)
        if self.initial:
            self.request(self.initial)

    def on_next(self, item: object) -> None:
        held = self._enter(f"on_next({item!r})")
        try:
            if self.terminals:
                self.violations.append(
                    f"Rule 1.7, on_next after the terminal: on_next({item!r}) after "
                    f"{self.terminals[0]!r}"
                )
            self.items.append(item)
            if len(self.items) > self.requested:
                self.violations.append(
                    f"Rule 1.1, more items than requested: item #{len(self.items)} ({item!r}) "
                    f"but {self.requested} requested"
                )
        finally:
            self._exit(held)
        if self._request_in_on_next:
            self.request(1)

    def on_error(self, error: Exception) -> None:
        self._terminal(error)

    def on_complete(self) -> None:
        self._terminal(COMPLETE)

    # -- control ---------------------------------------------------------------------

    def request(self, n: int, pause_at: int = 0) -> None:
        """Request ``n``; with ``pause_at``, preempted at that line of the request."""
        with self._lock:
            self.requested = min(self.requested + n, UNBOUNDED)
        self.trace.add(f"request({'UNBOUNDED' if n == UNBOUNDED else n})")
        self._preemption.run(partial(self.subscription.request, n), pause_at)

    def cancel(self, pause_at: int = 0) -> None:
        """Cancel; with ``pause_at``, preempted at that line of the cancel."""
        if self.cancel_seq is None:
            self.cancel_seq = next(_SEQ)
        self.trace.add("cancel()")
        self._preemption.run(self.subscription.cancel, pause_at)

    # -- internals -------------------------------------------------------------------

    def _terminal(self, terminal: Terminal) -> None:
        held = self._enter(repr(terminal))
        try:
            if self.terminals:
                self.violations.append(
                    f"Rule 1.7, a second terminal: {terminal!r} after {self.terminals[0]!r}"
                )
            self.terminals.append(terminal)
        finally:
            self._exit(held)
            self.done.set()

    def _enter(self, signal: str) -> bool:
        self.trace.add(signal)
        me = threading.get_ident()
        if self._busy.acquire(blocking=False):
            self._busy_owner = me
            return True
        if self._busy_owner != me:
            self.violations.append(f"Rule 1.3, overlapping signals: {signal} overlapped another")
        return False

    def _exit(self, held: bool) -> None:
        if held:
            self._busy_owner = 0
            self._busy.release()


# -- the upstream end -----------------------------------------------------------------


class Producer(Protocol):
    """The upstream side of a run: what the emitter and the ender threads do.

    ``racing`` is false for a source that fails inside its own drain loop
    (a raising iterator): it has no threads of its own, only ``sent``.
    """

    racing: bool
    sent: list[int]
    violations: list[str]

    @property
    def imminent(self) -> threading.Event:
        """Set by the ender once the requesters may burst (the terminal signal is near)."""

    def produce(self) -> None:
        """Emit the items (the emitter thread)."""

    def end(self) -> None:
        """Send the terminal signal once the emitter says so (the ender thread)."""

    def warmed_up(self) -> None:
        """The requesters made their first requests: a starving emitter may give up."""

    def arrive(self) -> None:
        """A requester starts its burst (or left early): the ender waits for all of them."""

    def settle(self) -> None:
        """After the race: send the terminal signal if it was not sent and not cancelled."""

    def late_error_allowed(self, downstream_cancel: int | None) -> bool:
        """Whether the run's error may legitimately reach the undeliverable hook."""


def _cancelled_before(cancels: Sequence[int | None], returned: int | None) -> bool:
    """A cancel began before the terminal call returned (so the error may arrive late)."""
    seqs = [seq for seq in cancels if seq is not None]
    return bool(seqs) and (returned is None or min(seqs) < returned)


class _Ender:
    """What both producers share: the handoff from the emitter to the ender.

    The emitter releases the ender once ``end_at`` items are out (or it starves
    after the requesters' warm-up); the ender cues the requesters
    (``imminent``), waits until all are bursting (unless the run preempts the
    ender itself), then ends upstream, as the server of a request/cancel
    preemption when the run has one.
    """

    __slots__ = (
        "_arrivals",
        "_cued",
        "_handoff",
        "_released",
        "_waiting",
        "imminent",
        "preemption",
    )

    def __init__(self, preemption: Preemption, requesters: int, cued: bool) -> None:
        self.preemption = preemption
        self._cued = cued
        self.imminent = threading.Event()
        self._handoff = threading.Lock()
        self._handoff.acquire()
        self._released = False  # guarded by _arrivals
        self._arrivals = threading.Condition()
        self._waiting = requesters  # guarded by _arrivals: requesters not bursting yet

    def release(self) -> None:
        with self._arrivals:
            if self._released:
                return
            self._released = True
        self._handoff.release()

    def arrive(self) -> None:
        with self._arrivals:
            self._waiting -= 1
            self._arrivals.notify_all()

    def await_turn(self) -> None:
        """Block until the emitter hands over and every requester is bursting."""
        self._handoff.acquire(timeout=10)
        if self._cued:
            self.imminent.set()
            with self._arrivals:
                self._arrivals.wait_for(lambda: self._waiting <= 0, timeout=1)

    def end_with(self, send: Callable[[], None]) -> None:
        """Send the terminal signal: during a requester's preemption, if this run has one."""
        plan = self.preemption.plan
        serving = plan is not None and plan.where in ("request", "cancel")
        if not (serving and self.preemption.serve(send)):
            send()


class RaceUpstream(Flow[int]):
    """A demand-honouring upstream whose items and terminal signal come from two threads.

    ``produce`` (the emitter) sends ``items`` one by one against granted
    demand; once ``end_at`` items were sent (or demand ran out after the
    requesters' warm-up) it lets ``end`` (the ender, another thread) send the
    terminal signal, and goes on emitting until that is out. ``_signal``
    serializes every signal to the subscriber (Rule 1.3), so the upstream
    itself is a correct publisher; only the threads change.

    With ``ignore_cancel`` the terminal signal is sent even after a cancel:
    Rule 1.8 only says signals stop *eventually*, so a late error is legal
    and must go to the undeliverable hook, not downstream.
    """

    racing = True

    __slots__ = (
        "_cond",
        "_demand",
        "_end_at",
        "_end_spin",
        "_ended",
        "_ender",
        "_error",
        "_ignore_cancel",
        "_items",
        "_preemption",
        "_ready",
        "_signal",
        "_subscriber",
        "_trace",
        "_warmed_up",
        "cancel_seq",
        "end_returned",
        "sent",
        "violations",
    )

    def __init__(
        self,
        items: Sequence[int],
        error: Exception | None,
        plan: RunPlan,
        trace: Trace,
        preemption: Preemption,
    ) -> None:
        self._items = list(items)
        self._error = error
        self._end_at = plan.end_at
        self._end_spin = plan.end_spin
        self._ignore_cancel = plan.ignore_cancel
        self._trace = trace
        self._preemption = preemption
        self._ender = _Ender(preemption, len(plan.requesters), plan.cued)
        self._subscriber: Subscriber[int] | None = None
        # Held while signalling the subscriber (Rule 1.3 for this publisher).
        self._signal = threading.Lock()
        self._cond = threading.Condition()
        # Guarded by _cond.
        self._demand = 0
        self._ready = False  # on_subscribe returned
        self._ended = False  # the terminal signal is claimed (sent, or given up after cancel)
        self._warmed_up = False
        self.sent: list[int] = []
        self.violations: list[str] = []
        self.cancel_seq: int | None = None
        self.end_returned: int | None = None

    @property
    def imminent(self) -> threading.Event:
        return self._ender.imminent

    # -- Publisher -----------------------------------------------------------------

    def _subscribe(self, subscriber: Subscriber[int]) -> None:
        if self._subscriber is not None:
            self.violations.append("subscribed twice: the race upstream has one subscriber")
            return
        with self._signal:
            self._subscriber = subscriber
            self._trace.add("up.subscribe")
            subscriber.on_subscribe(_RaceSubscription(self))
        with self._cond:
            self._ready = True
            self._cond.notify_all()

    def _request(self, n: int) -> None:
        if type(n) is not int or n <= 0:
            self.violations.append(f"a bad request upstream: request({n!r})")
            return
        with self._cond:
            self._demand = min(self._demand + n, UNBOUNDED)
            self._cond.notify_all()
        self._trace.add(f"up.request({n})")

    def _cancel(self) -> None:
        with self._cond:
            if self.cancel_seq is None:
                self.cancel_seq = next(_SEQ)
            self._cond.notify_all()
        self._trace.add("up.cancel")

    # -- the race ------------------------------------------------------------------

    def produce(self) -> None:
        try:
            self._produce()
        finally:
            self._ender.release()
            if self._preemption.plan is not None and self._preemption.plan.where == "next":
                self._preemption.close()

    def _produce(self) -> None:
        cond = self._cond
        for item in self._items:
            with cond:
                while True:
                    if self._ended or self.cancel_seq is not None:
                        return
                    if self._ready and self._demand > 0:
                        if self._demand != UNBOUNDED:
                            self._demand -= 1
                        break
                    if self._warmed_up:
                        self._ender.release()  # no demand until the burst: let the end come
                        self._give_up_next()
                    cond.wait(0.005)
            subscriber = self._subscriber
            assert subscriber is not None
            with self._signal:
                if self._ended:
                    return
                self.sent.append(item)
                self._trace.add(f"up.on_next({item})")
                at = self._preemption.line("next", len(self.sent) - 1)
                self._preemption.run(partial(subscriber.on_next, item), at)
            if len(self.sent) >= self._end_at:
                self._ender.release()

    def _give_up_next(self) -> None:
        """Starving before the item to preempt: its server must not wait for it."""
        plan = self._preemption.plan
        if plan is not None and plan.where == "next" and plan.index >= len(self.sent):
            self._preemption.close()

    def end(self) -> None:
        try:
            self._ender.await_turn()
            with self._cond:
                self._cond.wait_for(
                    lambda: self._ready or self._warmed_up or self.cancel_seq is not None, 1
                )
            spin(self._end_spin)
            self._ender.end_with(self._send_end)
        finally:
            with self._cond:
                self._ended = True  # whatever happened, the emitter stops now
                self._cond.notify_all()
            if self._preemption.line("end"):
                self._preemption.close()

    def warmed_up(self) -> None:
        with self._cond:
            self._warmed_up = True
            self._cond.notify_all()

    def arrive(self) -> None:
        self._ender.arrive()

    def settle(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._ready or self.cancel_seq is not None, timeout=5)
        self._send_end(settling=True)

    def late_error_allowed(self, downstream_cancel: int | None) -> bool:
        return _cancelled_before((downstream_cancel, self.cancel_seq), self.end_returned)

    def _send_end(self, settling: bool = False) -> None:
        with self._signal:
            with self._cond:
                if self.end_returned is not None or not self._ready:
                    return  # sent already, or not subscribed yet (settle sends it)
                if self._ended and not settling:
                    return
                if self.cancel_seq is not None and not self._ignore_cancel:
                    self.end_returned = 0  # Rule 1.8: a cancelled publisher stops
                    return
                self._ended = True
                self._cond.notify_all()
            subscriber = self._subscriber
            assert subscriber is not None
            error = self._error
            at = 0 if settling else self._preemption.line("end")
            try:
                if error is None:
                    self._trace.add("up.on_complete")
                    self._preemption.run(subscriber.on_complete, at)
                else:
                    self._trace.add(f"up.on_error({error!r})")
                    self._preemption.run(partial(subscriber.on_error, error), at)
            except Exception as fault:  # Rule 2.13: a subscriber must not raise
                self.violations.append(f"the operator raised from a terminal signal: {fault!r}")
            finally:
                self.end_returned = next(_SEQ)

    def __repr__(self) -> str:
        return "RaceUpstream"


class _RaceSubscription:
    __slots__ = ("_upstream",)

    def __init__(self, upstream: RaceUpstream) -> None:
        self._upstream = upstream

    def request(self, n: int) -> None:
        self._upstream._request(n)

    def cancel(self) -> None:
        self._upstream._cancel()


class PushProducer:
    """The producer side of a push source (``Flow.create``, ``SourceQueue``, a Subject).

    The emitter pushes every item at once (a push source has no demand to
    wait for; its buffer holds them); once ``end_at`` were accepted the ender
    ends the source with ``end`` while pushes may still be going on:
    concurrent producers are what these buffers are built for.
    """

    racing = True

    __slots__ = (
        "_end",
        "_end_at",
        "_end_spin",
        "_ender",
        "_ignore_cancel",
        "_items",
        "_lock",
        "_preemption",
        "_push",
        "_stopped",
        "_trace",
        "cancel_seq",
        "end_returned",
        "sent",
        "violations",
    )

    def __init__(
        self, items: Sequence[int], plan: RunPlan, trace: Trace, preemption: Preemption
    ) -> None:
        self._items = list(items)
        self._end_at = plan.end_at
        self._end_spin = plan.end_spin
        self._ignore_cancel = plan.ignore_cancel
        self._trace = trace
        self._preemption = preemption
        self._ender = _Ender(preemption, len(plan.requesters), plan.cued)
        self._push: Callable[[int], bool] = _refuse
        self._end: Callable[[], None] = _nothing
        self._lock = threading.Lock()
        self._stopped = False  # guarded by _lock: the source was ended (or that was given up)
        self.sent: list[int] = []
        self.violations: list[str] = []
        self.cancel_seq: int | None = None  # the source told its producer it was cancelled
        self.end_returned: int | None = None

    @property
    def imminent(self) -> threading.Event:
        return self._ender.imminent

    def attach(self, push: Callable[[int], bool], end: Callable[[], None]) -> None:
        """``push(item)`` says whether the item was accepted; ``end()`` ends the source."""
        self._push = push
        self._end = end

    def upstream_cancelled(self) -> None:
        if self.cancel_seq is None:
            self.cancel_seq = next(_SEQ)
        self._trace.add("up.cancelled")

    def produce(self) -> None:
        try:
            for index, item in enumerate(self._items):
                if self._stopped or self.cancel_seq is not None:
                    return
                at = self._preemption.line("next", index)
                self._preemption.run(partial(self._offer, item), at)
                if len(self.sent) >= self._end_at:
                    self._ender.release()
        finally:
            self._ender.release()
            if self._preemption.plan is not None and self._preemption.plan.where == "next":
                self._preemption.close()

    def _offer(self, item: int) -> None:
        if self._push(item):
            self.sent.append(item)
            self._trace.add(f"up.push({item})")

    def end(self) -> None:
        try:
            self._ender.await_turn()
            spin(self._end_spin)
            self._ender.end_with(self._send_end)
        finally:
            if self._preemption.line("end"):
                self._preemption.close()

    def warmed_up(self) -> None:
        """A push source does not wait for demand."""

    def arrive(self) -> None:
        self._ender.arrive()

    def settle(self) -> None:
        self._send_end(settling=True)

    def late_error_allowed(self, downstream_cancel: int | None) -> bool:
        return _cancelled_before((downstream_cancel, self.cancel_seq), self.end_returned)

    def _send_end(self, settling: bool = False) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self.cancel_seq is not None and not self._ignore_cancel:
            return
        self._trace.add("up.end")
        try:
            self._preemption.run(self._end, 0 if settling else self._preemption.line("end"))
        except Exception as fault:
            self.violations.append(f"ending the source raised: {fault!r}")
        finally:
            self.end_returned = next(_SEQ)


class ScriptedSource:
    """A source that fails inside its own drain loop after ``sent`` (a raising iterator)."""

    racing = False

    __slots__ = ("_imminent", "sent", "violations")

    def __init__(self, sent: Sequence[int]) -> None:
        self.sent = list(sent)
        self.violations: list[str] = []
        self._imminent = threading.Event()
        self._imminent.set()

    @property
    def imminent(self) -> threading.Event:
        return self._imminent

    def produce(self) -> None:
        """No thread of its own."""

    def end(self) -> None:
        """It ends itself."""

    def warmed_up(self) -> None:
        """Nothing waits for demand."""

    def arrive(self) -> None:
        """Nothing waits for the requesters."""

    def settle(self) -> None:
        """It ends itself."""

    def late_error_allowed(self, downstream_cancel: int | None) -> bool:
        return downstream_cancel is not None


def _refuse(item: int) -> bool:
    return False


def _nothing() -> None:
    pass


# -- threads ----------------------------------------------------------------------------

Task = Callable[[], None]


class Crew:
    """Worker threads reused across runs: each run hands each worker at most one task.

    A worker waits on its own ``go`` lock and releases its ``done`` lock;
    handing over through two plain locks costs a fraction of a ``Barrier``.
    ``close()`` ends the threads (the suite fails a test that leaks threads).
    """

    __slots__ = ("_done", "_failures", "_go", "_tasks", "_threads")

    def __init__(self, size: int, name: str = "race") -> None:
        self._go = [threading.Lock() for _ in range(size)]
        self._done = [threading.Lock() for _ in range(size)]
        for lock in (*self._go, *self._done):
            lock.acquire()
        self._tasks: list[Task | None] = [None] * size
        # Written by worker i only, read after its done lock was acquired.
        self._failures: list[BaseException | None] = [None] * size
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, main: Task, *tasks: Task | None) -> list[BaseException]:
        """Run ``tasks`` on the workers and ``main`` here, all at once; return what raised."""
        started = [i for i, task in enumerate(tasks) if task is not None]
        for i in started:
            self._tasks[i] = tasks[i]
            self._failures[i] = None
        for i in started:
            self._go[i].release()
        failures: list[BaseException] = []
        try:
            main()
        except Exception as raised:
            failures.append(raised)
        for i in started:
            if not self._done[i].acquire(timeout=20):
                raise RuntimeError(f"race worker {i} hung (a deadlock in the race?)")
            failure = self._failures[i]
            if failure is not None:
                failures.append(failure)
        return failures

    def close(self) -> None:
        for i, thread in enumerate(self._threads):
            if thread.is_alive():
                self._tasks[i] = None
                self._go[i].release()
        for thread in self._threads:
            thread.join(5)

    def _work(self, i: int) -> None:
        while True:
            self._go[i].acquire()
            task = self._tasks[i]
            if task is None:
                return
            try:
                task()
            except BaseException as failure:
                self._failures[i] = failure
            finally:
                self._done[i].release()


# -- one run ------------------------------------------------------------------------------

# Mostly small: every request is one more drain pass racing the terminal signal.
REQUEST_SIZES = (1, 1, 1, 1, 2, 2, 3, 5, 8, UNBOUNDED)
# A source that ends by itself gets requests until it ended, a cancel, or this many.
MAX_REQUESTS = 64
# What a requester does while another thread is preempted: enough demand to
# empty a queue (the state in which a drain pass decides on the terminal), or not.
STEPS = ((UNBOUNDED,), (1,), (1, UNBOUNDED), (2, 2, 2), (8,), (UNBOUNDED, 1))


@dataclass(frozen=True)
class RequesterPlan:
    """One requester: ``warmup`` requests, then ``burst`` more while upstream ends."""

    warmup: int
    burst: int
    sizes: tuple[int, ...]  # cycled
    spins: tuple[int, ...]  # cycled: the spin before each request
    cancel_at: int | None  # cancel before this request (an index over warmup + burst)
    step: tuple[int, ...]  # the requests made while serving a preemption


@dataclass(frozen=True)
class RunPlan:
    """The random choices of one run, made up front (the threads only read them)."""

    initial: int
    request_in_on_next: bool
    end_at: int
    end_spin: int
    pause: PausePlan | None
    ignore_cancel: bool
    requesters: tuple[RequesterPlan, ...]

    @staticmethod
    def draw(rng: random.Random, items: int, racing: bool = True, requesters: int = 2) -> RunPlan:
        """Random choices for a run over ``items`` upstream items (one ``rng`` per case).

        ``racing``: the source has emitter and ender threads (else it ends by
        itself: a preemption is then served by the other requester).
        """
        cancelling = rng.randrange(requesters) if rng.random() < 0.25 else None
        warmups = [rng.randint(1, 3) for _ in range(requesters)]
        bursts = [rng.randint(3, 12) for _ in range(requesters)]
        end_at = rng.randint(0, items)
        # Mostly the terminal call (the race this harness is for), else a request,
        # a cancel or an item; the line is drawn among the first ones more often.
        at = 1 + rng.randrange(rng.choice((8, 12, 24, PAUSE_LINES)))
        if racing:
            where: PauseWhere = rng.choice(("end",) * 4 + ("request", "next", "cancel"))
        else:
            where = rng.choice(("request", "request", "cancel"))
        if where == "cancel" and cancelling is None:
            where = "request"
        if where == "next" and not end_at:
            where = "end"
        # A racing source's ender serves a request/cancel preemption during the burst.
        first = warmups if racing else [0] * requesters
        cancel_at = [
            (
                first[r] + rng.randrange(bursts[r])
                if where == "cancel"
                else rng.randint(0, warmups[r] + bursts[r])
            )
            if r == cancelling
            else None
            for r in range(requesters)
        ]
        pause: PausePlan | None
        if rng.random() < 0.15:
            pause = None
        elif where == "request":
            r = rng.randrange(requesters)
            pause = PausePlan("request", at, first[r] + rng.randrange(bursts[r]), r)
        elif where == "cancel":
            assert cancelling is not None
            pause = PausePlan("cancel", at, requester=cancelling)
        elif where == "next":
            pause = PausePlan("next", at, index=rng.randrange(end_at))
        else:
            pause = PausePlan("end", at)
        return RunPlan(
            initial=rng.choice((0, 0, 1, 2)),
            request_in_on_next=rng.random() < 0.3,
            end_at=end_at,
            end_spin=rng.randrange(200),
            pause=pause,
            ignore_cancel=rng.random() < 0.5,
            requesters=tuple(
                RequesterPlan(
                    warmup=warmups[r],
                    burst=bursts[r],
                    sizes=tuple(rng.choice(REQUEST_SIZES) for _ in range(8)),
                    spins=tuple(rng.randrange(30) for _ in range(8)),
                    cancel_at=cancel_at[r],
                    step=rng.choice(STEPS),
                )
                for r in range(requesters)
            ),
        )

    @property
    def cancels(self) -> bool:
        return any(r.cancel_at is not None for r in self.requesters)

    @property
    def cued(self) -> bool:
        """Whether the requesters burst on the ender's cue (not needed when the ender
        is preempted mid-terminal: the first requester serves that pause anyway)."""
        return self.pause is None or self.pause.where != "end"


def requester_tasks(
    plan: RunPlan,
    subscriber: RaceSubscriber,
    producer: Producer | None,
    preemption: Preemption,
) -> list[Task]:
    """One task per requester in ``plan``.

    A requester makes its warm-up requests (items start to flow), waits for
    the ender's cue, then bursts while upstream ends. When the last one
    warmed up, the producer learns that no more demand comes until the
    burst, so a starving emitter lets the terminal signal go. The first
    requester serves an ``end``/``next`` preemption (requests while the
    ender or emitter is stopped mid-call); for a source that ends by itself
    the other requester serves a ``request``/``cancel`` one.
    """
    racing = producer is not None and producer.racing
    warming = [len(plan.requesters)]
    lock = threading.Lock()
    done = subscriber.done
    pause = plan.pause

    def warmed_up() -> None:
        with lock:
            warming[0] -= 1
            last = warming[0] == 0
        if last and producer is not None:
            producer.warmed_up()

    def make(index: int, r: RequesterPlan) -> Task:
        serves = pause is not None and (
            (racing and pause.where in ("end", "next") and index == 0)
            or (not racing and pause.where in ("request", "cancel") and index != pause.requester)
        )
        pausing = (
            pause is not None and pause.where in ("request", "cancel") and pause.requester == index
        )

        def request(i: int) -> bool:
            """Make request ``i``; whether the requester should stop."""
            spin(r.spins[i % 8])
            if i == r.cancel_at:
                subscriber.cancel(preemption.line("cancel", requester=index))
            subscriber.request(r.sizes[i % 8], preemption.line("request", i, index))
            # After a cancel, one more request races it, then this requester stops.
            return done.is_set() or (
                subscriber.cancel_seq is not None and (r.cancel_at is None or i > r.cancel_at)
            )

        def step() -> None:
            for n in r.step:
                subscriber.request(n)

        def task() -> None:
            arrived = False
            try:
                try:
                    for i in range(r.warmup):
                        if request(i):
                            return
                finally:
                    warmed_up()
                if serves:
                    preemption.serve(step)
                if racing and producer is not None and plan.cued:
                    producer.imminent.wait(10)
                    producer.arrive()
                    arrived = True
                for i in range(r.warmup, r.warmup + (r.burst if racing else MAX_REQUESTS)):
                    if request(i):
                        return
            finally:
                if not arrived and producer is not None and plan.cued:
                    producer.arrive()  # the ender must not wait for a requester that left
                if pausing:
                    preemption.close()

        return task

    return [make(index, r) for index, r in enumerate(plan.requesters)]


# -- judging ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """What a case's ``own_end`` and content checks look at."""

    mode: Mode
    error: Exception | None
    sent: list[int]
    items: list[object]
    terminal: Terminal | None
    cancelled: bool
    # Upstream was cancelled before downstream cancelled (or downstream never did):
    # the operator ended its upstream by itself.
    upstream_cancelled_first: bool = False


@dataclass
class Outcome:
    """One finished run, judged after all runs of the case (late signals included)."""

    run: int
    plan: RunPlan
    mode: Mode
    error: Exception | None
    subscriber: RaceSubscriber
    producer: Producer | None
    failures: list[BaseException]
    # How many undeliverable reports the test had seen when this run started.
    report_mark: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def trace(self) -> Trace:
        return self.subscriber.trace

    def ending(self) -> Ending:
        terminals = self.subscriber.terminals
        downstream = self.subscriber.cancel_seq
        upstream = getattr(self.producer, "cancel_seq", None)
        return Ending(
            mode=self.mode,
            error=self.error,
            sent=list(self.producer.sent) if self.producer is not None else [],
            items=list(self.subscriber.items),
            terminal=terminals[0] if terminals else None,
            cancelled=downstream is not None,
            upstream_cancelled_first=upstream is not None
            and (downstream is None or upstream < downstream),
        )


OwnEnd = Callable[[Ending], bool]
ContentCheck = Callable[[Ending], str | None]


def check_outcome(
    outcome: Outcome, own_end: OwnEnd | None, content: ContentCheck | None
) -> list[str]:
    """Every invariant the run broke, as readable sentences."""
    subscriber = outcome.subscriber
    problems = list(subscriber.violations)
    if outcome.producer is not None:
        problems += outcome.producer.violations
    problems += [f"a racing call raised: {failure!r}" for failure in outcome.failures]
    terminals = subscriber.terminals
    cancelled = subscriber.cancel_seq is not None
    ending = outcome.ending()
    if not terminals and not cancelled:
        problems.append("no terminal signal, and downstream never cancelled: hung")
    if terminals:
        first = terminals[0]
        expected: Terminal = COMPLETE if outcome.error is None else outcome.error
        if first is not expected and not (own_end is not None and own_end(ending)):
            problems.append(
                f"ended with {_short(first)}, expected {_short(expected)}: "
                f"got {_describe(first)}, expected {_describe(expected)}"
            )
    if content is not None:
        problem = content(ending)
        if problem is not None:
            problems.append(problem)
    return problems


def _short(terminal: Terminal) -> str:
    if isinstance(terminal, _Complete):
        return "on_complete"
    return f"on_error({type(terminal).__name__})"


def _describe(terminal: Terminal) -> str:
    if isinstance(terminal, _Complete):
        return "on_complete"
    return f"on_error({terminal!r} id={id(terminal):#x})"


def _late_report_allowed(outcome: Outcome, own_end: OwnEnd | None) -> bool:
    """Whether the run's own error may have reached the undeliverable hook.

    Only if a cancel (downstream, or of upstream) began before the error was
    delivered, or the operator had ended the stream by itself (it is done
    with its upstream before it gets round to cancelling it).
    """
    cancel = outcome.subscriber.cancel_seq
    if outcome.producer is None:
        cancelled = cancel is not None
    else:
        cancelled = outcome.producer.late_error_allowed(cancel)
    return cancelled or (own_end is not None and own_end(outcome.ending()))


def judge(
    name: str,
    outcomes: Sequence[Outcome],
    reported: Sequence[tuple[BaseException, str]],
    own_end: OwnEnd | None,
    content: ContentCheck | None,
) -> str | None:
    """A failure report for the case (``None`` if every run held), with traces of the first few."""
    stray: list[str] = []
    by_error = {id(o.error): o for o in outcomes if o.error is not None}
    marks = [o.report_mark for o in outcomes]
    for index, (error, origin) in enumerate(reported):
        outcome = by_error.get(id(error))
        if outcome is not None and outcome.error is error:
            if error in outcome.subscriber.terminals:
                outcome.problems.append(f"delivered and also reported: {error!r} by {origin}")
            elif not _late_report_allowed(outcome, own_end):
                outcome.problems.append(
                    f"the error went to the undeliverable hook with no cancel before it: "
                    f"{error!r} by {origin}"
                )
            continue
        # Not a run's own error (a source's, or a fault): it belongs to the run
        # that was going on, and only a cancel there makes a late report legal.
        owner = outcomes[max(bisect.bisect_right(marks, index) - 1, 0)] if outcomes else None
        if owner is None or owner.subscriber.cancel_seq is None:
            stray.append(f"{error!r} from {origin}")
    for outcome in outcomes:
        outcome.problems[:0] = check_outcome(outcome, own_end, content)
    failed = [o for o in outcomes if o.problems]
    if not failed and not stray:
        return None
    kinds = Counter(_kind(p) for o in failed for p in o.problems)
    lines = [
        f"{name}: {len(failed)} of {len(outcomes)} runs broke an invariant "
        f"({100 * len(failed) / max(len(outcomes), 1):.1f} %)"
    ]
    lines += [f"  {count} x {kind}" for kind, count in kinds.most_common()]
    if stray:
        lines.append(f"  {len(stray)} undeliverable reports in runs without a cancel: {stray[:5]}")
    for outcome in failed[:3]:
        plan = outcome.plan
        lines.append(
            f"  run {outcome.run} (mode={outcome.mode}, end_at={plan.end_at}, "
            f"cancels={plan.cancels}, ignore_cancel={plan.ignore_cancel}, pause={plan.pause}):"
        )
        lines += [f"    - {p}" for p in outcome.problems]
        lines.append(outcome.trace.render())
    return "\n".join(lines)


def _kind(problem: str) -> str:
    """A problem without its run-specific details (every problem reads "kind: details")."""
    return problem.partition(": ")[0]


def run_once(
    crew: Crew,
    plan: RunPlan,
    subscriber: RaceSubscriber,
    producer: Producer | None,
    preemption: Preemption,
    subscribe: Callable[[], None],
) -> list[BaseException]:
    """Subscribe, race (emitter, ender, requesters), settle; return what raised in the race."""
    subscribe()
    if not subscriber.subscribed.wait(5):
        return [RuntimeError("no on_subscribe within 5 s")]
    racing = producer is not None and producer.racing
    main, other = requester_tasks(plan, subscriber, producer, preemption)
    failures = crew.run(
        main,
        producer.produce if racing and producer is not None else None,
        producer.end if racing and producer is not None else None,
        other,
    )
    preemption.close()
    if subscriber.cancel_seq is None:
        subscriber.request(UNBOUNDED)
        if producer is not None:
            producer.settle()
        subscriber.done.wait(2)
    return failures


def expect_count(count: int) -> ContentCheck:
    """A registry entry emits exactly ``count`` items, then completes."""

    def check(ending: Ending) -> str | None:
        if len(ending.items) > count:
            return f"more items than the source has: {len(ending.items)} > {count}"
        if ending.terminal is COMPLETE and not ending.cancelled and len(ending.items) != count:
            return f"completed short: after {len(ending.items)} items, expected {count}"
        return None

    return check


def expect_model(
    model: Callable[[list[int]], Sequence[object]],
    ordered: bool = True,
    *,
    whole_before_error: bool = False,
) -> ContentCheck:
    """Delivered items are the model of what upstream sent: all of it after a completion
    (and after an error with ``whole_before_error``, for sources whose error follows
    the buffered items), else a prefix."""

    def check(ending: Ending) -> str | None:
        expected = list(model(list(ending.sent)))
        items = ending.items
        ended = ending.terminal is COMPLETE or (
            whole_before_error and ending.terminal is not None and ending.terminal is ending.error
        )
        whole = ended and not ending.cancelled
        if ordered:
            good = items == expected if whole else items == expected[: len(items)]
        else:
            left = Counter(map(repr, expected))
            got = Counter(map(repr, items))
            good = got == left if whole else not (got - left)
        if good:
            return None
        return f"items do not fit the model of what was sent: {items!r}, model {expected!r}"

    return check


def new_error(run: int) -> Boom:
    """A fresh error object per run: its identity says which run it belongs to."""
    return Boom(f"upstream failed (run {run})")
