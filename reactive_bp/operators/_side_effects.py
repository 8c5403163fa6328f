"""Side effects: the ``do_*`` family, which watches a stream without changing it.

Every operator here passes items, demand and cancellation through unchanged
(demand is 1:1) and runs a user action at one point of the stream's life:

* ``do_on_next(f)``: ``f(item)`` before each item goes downstream;
* ``do_on_request(f)`` / ``do_on_cancel(f)``: on the way up, before the
  ``request(n)`` / ``cancel()`` reaches upstream;
* ``do_on_subscribe(f)``: ``f(subscription)`` on the upstream subscription,
  before downstream receives its own;
* ``do_on_error(f)`` / ``do_on_complete(f)`` / ``do_on_terminate(f)``: just
  before the matching terminal signal goes downstream;
* ``do_finally(f)``: ``f(signal)`` once, after the stream is over for
  downstream: after the terminal signal was delivered, or after a cancel
  reached upstream, whichever came first.

How the rules hold:

* Rules 1.7, 2.5, 2.13, 3.13: every operator is an ``OperatorSubscriber``,
  whose final spec methods own them (one terminal signal, a second
  subscription cancelled, ``None`` refused, the subscriber dropped on cancel).
  ``do_on_subscribe`` puts a gate in front of one, because its action must
  run *before* downstream's ``on_subscribe``, where the base runs none.
* A raising action, by where it runs (the choice Reactor made for its
  ``doOn*`` family):

  - on the way down, before a signal (``do_on_next``, ``do_on_subscribe``,
    ``do_on_error``, ``do_on_complete``, ``do_on_terminate``), it replaces
    that signal with ``on_error(fault)``; upstream is cancelled unless it
    already ended. A fault raised for an upstream error carries that error
    as ``__context__``, so neither is lost;
  - on the way up (``do_on_request``, ``do_on_cancel``), the fault goes to
    the undeliverable hook and the call goes through: ``request`` and
    ``cancel`` return normally (Rules 3.15, 3.16);
  - after the end (``do_finally``), there is nobody left to tell: the fault
    goes to the undeliverable hook.

* ``do_finally`` runs exactly once. The base's ``_done`` flag is not enough
  for that: it is read and written without a lock, so an upstream terminal on
  one thread and a downstream cancel on another can both get past it. A
  ``Terminal`` decides instead: the terminal path delivers its signal only if
  ``Terminal.finish`` claims the ending, a cancel runs the action only if
  ``Terminal.cancel`` closes the stream first, and each winner runs the
  action once. A terminal that loses to a cancel is not delivered (an error is
  reported, Rule 1.7). One more interleaving: a cancel that arrives after the
  base marked the terminal done skips ``hook_on_cancel`` but still detaches
  downstream (Rule 3.13); the terminal path, finding nobody to deliver to,
  ends as that cancel (``CANCEL``), so ``ON_COMPLETE``/``ON_ERROR`` always
  mean "delivered".
* Fusion: none of these take part in assembly-time fusion (``_fusion.py``);
  all keep the conditional fast path (``try_on_next``) going through them, so
  a ``filter`` below one still returns its demand without a round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

from typing_extensions import override

from .._core._arbiter import cancel_quietly
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import DETACHED, EmptySubscription, OperatorSubscriber
from .._core._signals import signal_complete, signal_error
from .._core._terminal import Terminal
from ..subscribers._base import SignalType
from ._lift import LiftFlow

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscriber, Subscription

__all__ = [
    "do_finally",
    "do_on_cancel",
    "do_on_complete",
    "do_on_error",
    "do_on_next",
    "do_on_request",
    "do_on_subscribe",
    "do_on_terminate",
]

T = TypeVar("T")


class _PassThrough(OperatorSubscriber[T, T]):
    """Items go downstream unchanged, on both the plain and the conditional path."""

    __slots__ = ()

    @override
    def hook_on_next(self, item: T) -> None:
        self._actual.on_next(item)

    @override
    def hook_try_on_next(self, item: T) -> bool:
        return self.emit_conditional(item)


# -- on the way down: before a signal --------------------------------------------------


class _DoOnNextSubscriber(OperatorSubscriber[T, T]):
    __slots__ = ("_action",)

    def __init__(self, actual: Subscriber[T], action: Callable[[T], object]) -> None:
        super().__init__(actual)
        self._action = action

    @override
    def hook_on_next(self, item: T) -> None:
        self._action(item)  # a fault: the base cancels upstream, on_error downstream
        self._actual.on_next(item)

    @override
    def hook_try_on_next(self, item: T) -> bool:
        self._action(item)
        return self.emit_conditional(item)


def do_on_next(source: Flow[T], action: Callable[[T], object]) -> Flow[T]:
    """See :meth:`Flow.do_on_next`."""
    return LiftFlow(source, partial(_DoOnNextSubscriber, action=action), "do_on_next")


class _DoOnErrorSubscriber(_PassThrough[T]):
    __slots__ = ("_action",)

    def __init__(self, actual: Subscriber[T], action: Callable[[Exception], object]) -> None:
        super().__init__(actual)
        self._action = action

    @override
    def hook_on_error(self, error: Exception) -> None:
        # A fault propagates to the base's on_error, which signals it in place
        # of ``error`` with ``error`` as its __context__.
        self._action(error)
        signal_error(self._actual, error, self)


def do_on_error(source: Flow[T], action: Callable[[Exception], object]) -> Flow[T]:
    """See :meth:`Flow.do_on_error`."""
    return LiftFlow(source, partial(_DoOnErrorSubscriber, action=action), "do_on_error")


class _DoOnCompleteSubscriber(_PassThrough[T]):
    __slots__ = ("_action",)

    def __init__(self, actual: Subscriber[T], action: Callable[[], object]) -> None:
        super().__init__(actual)
        self._action = action

    @override
    def hook_on_complete(self) -> None:
        # A fault propagates to the base's on_complete, which signals it
        # instead of the completion (upstream is over: nothing to cancel).
        self._action()
        signal_complete(self._actual, self)


def do_on_complete(source: Flow[T], action: Callable[[], object]) -> Flow[T]:
    """See :meth:`Flow.do_on_complete`."""
    return LiftFlow(source, partial(_DoOnCompleteSubscriber, action=action), "do_on_complete")


class _DoOnTerminateSubscriber(_PassThrough[T]):
    __slots__ = ("_action",)

    def __init__(self, actual: Subscriber[T], action: Callable[[], object]) -> None:
        super().__init__(actual)
        self._action = action

    @override
    def hook_on_error(self, error: Exception) -> None:
        self._action()  # a fault replaces ``error``, with it as __context__ (the base)
        signal_error(self._actual, error, self)

    @override
    def hook_on_complete(self) -> None:
        self._action()  # a fault replaces the completion (the base)
        signal_complete(self._actual, self)


def do_on_terminate(source: Flow[T], action: Callable[[], object]) -> Flow[T]:
    """See :meth:`Flow.do_on_terminate`."""
    return LiftFlow(source, partial(_DoOnTerminateSubscriber, action=action), "do_on_terminate")


class _ActionView:
    """The subscription ``do_on_subscribe``'s action sees: it may cancel, never request.

    Demand belongs to the downstream subscriber: a ``request(n)`` from the action
    would send items downstream never asked for (Rule 1.1), before it even has
    its subscription (Rule 1.9). So ``request`` raises ``ProtocolViolationError``
    at the caller; inside the action that is a raising action (upstream
    cancelled, downstream fails with it). ``cancel`` reaches upstream.
    """

    __slots__ = ("_subscription",)

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    def request(self, n: int) -> None:
        """Refused: see the class docstring."""
        raise ProtocolViolationError(
            f"do_on_subscribe: the action must not request({n!r}): demand is the downstream "
            "subscriber's, which would receive items it never asked for (Rule 1.1)"
        )

    def cancel(self) -> None:
        """Cancel upstream (downstream still gets its subscription, with nothing behind it)."""
        self._subscription.cancel()

    def __repr__(self) -> str:
        return f"<do_on_subscribe view of {self._subscription!r}>"


class _DoOnSubscribeGate(Generic[T]):
    """Runs the action on the upstream subscription before downstream sees any.

    ``OperatorSubscriber.on_subscribe`` hands the subscription downstream
    first and runs ``hook_on_subscribe`` after (downstream may have requested
    and received items by then), so the action cannot be a hook: this gate
    receives upstream's ``on_subscribe``, runs the action, and only then lets
    the pass-through operator behind it subscribe downstream. Every other
    signal goes straight to that operator, which owns the rules.
    """

    __slots__ = ("_action", "_inner")

    def __init__(self, actual: Subscriber[T], action: Callable[[Subscription], object]) -> None:
        self._inner: _PassThrough[T] = _PassThrough(actual)
        # Invariant: the action until the first on_subscribe, None after, so
        # a second subscription (Rule 2.5, rejected by the inner operator) does
        # not run it again. Written by on_subscribe only (Rule 1.3: signals to
        # this subscriber are serial).
        self._action: Callable[[Subscription], object] | None = action

    def on_subscribe(self, subscription: Subscription) -> None:
        """Run the action, then pass ``subscription`` on; a raising action cancels it."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        action, self._action = self._action, None
        if action is None:
            self._inner.on_subscribe(subscription)  # Rule 2.5: cancelled and reported there
            return
        try:
            action(_ActionView(subscription))
        except Exception as fault:
            cancel_quietly(subscription)  # Rule 3.15: the fault, not a cancel error, is news
            # Downstream still gets a subscription first (Rule 1.9), one with
            # nothing behind it, then the fault. Late upstream signals reach
            # a terminated operator: items are dropped, an error reported.
            self._inner.on_subscribe(EmptySubscription())
            self._inner.on_error(fault)
            return
        self._inner.on_subscribe(subscription)

    def on_next(self, item: T) -> None:
        """Pass ``item`` on."""
        self._inner.on_next(item)

    def try_on_next(self, item: T) -> bool:
        """Pass ``item`` on along the conditional path."""
        return self._inner.try_on_next(item)

    def on_error(self, error: Exception) -> None:
        """Pass the failure on."""
        self._inner.on_error(error)

    def on_complete(self) -> None:
        """Pass the completion on."""
        self._inner.on_complete()

    def __repr__(self) -> str:
        return f"<_DoOnSubscribeGate {self._inner!r}>"


def do_on_subscribe(source: Flow[T], action: Callable[[Subscription], object]) -> Flow[T]:
    """See :meth:`Flow.do_on_subscribe`."""
    return LiftFlow(source, partial(_DoOnSubscribeGate, action=action), "do_on_subscribe")


# -- on the way up: before request and cancel ------------------------------------------


class _DoOnRequestSubscriber(_PassThrough[T]):
    __slots__ = ("_action",)

    def __init__(self, actual: Subscriber[T], action: Callable[[int], object]) -> None:
        super().__init__(actual)
        self._action = action

    @override
    def hook_on_request(self, n: int) -> None:
        try:
            self._action(n)
        except Exception as error:  # Rule 3.16: request returns normally
            report_undeliverable(error, f"do_on_request action {self._action!r}")
        self._upstream.request(n)


def do_on_request(source: Flow[T], action: Callable[[int], object]) -> Flow[T]:
    """See :meth:`Flow.do_on_request`."""
    return LiftFlow(source, partial(_DoOnRequestSubscriber, action=action), "do_on_request")


class _DoOnCancelSubscriber(_PassThrough[T]):
    __slots__ = ("_action",)

    def __init__(self, actual: Subscriber[T], action: Callable[[], object]) -> None:
        super().__init__(actual)
        self._action = action

    @override
    def hook_on_cancel(self) -> None:
        try:
            self._action()
        except Exception as error:  # Rule 3.15: cancel returns normally
            report_undeliverable(error, f"do_on_cancel action {self._action!r}")


def do_on_cancel(source: Flow[T], action: Callable[[], object]) -> Flow[T]:
    """See :meth:`Flow.do_on_cancel`."""
    return LiftFlow(source, partial(_DoOnCancelSubscriber, action=action), "do_on_cancel")


# -- after the end -----------------------------------------------------------------------


class _DoFinallySubscriber(_PassThrough[T]):
    __slots__ = ("_action", "_terminal")

    def __init__(self, actual: Subscriber[T], action: Callable[[SignalType], object]) -> None:
        super().__init__(actual)
        self._action = action
        # Invariant: closed exactly once, by whichever comes first: an ending
        # (finish: upstream's terminal, or a fault of downstream's) or a
        # downstream cancel. The winner, and only it, runs the action; the
        # terminal path delivers its signal only if it won.
        self._terminal = Terminal(self)

    @override
    def hook_on_complete(self) -> None:
        self._end(None)

    @override
    def hook_on_error(self, error: Exception) -> None:
        self._end(error)

    @override
    def hook_on_cancel(self) -> None:
        # Upstream first, so the action runs after the cancel reached it; the
        # base cancels once more afterwards, a no-op (Rule 3.7).
        cancel_quietly(self._upstream)
        if self._terminal.cancel():
            self._run_finally(SignalType.CANCEL)

    @override
    def _fail(self, error: Exception) -> None:
        # Downstream raised from on_subscribe or on_next (Rule 2.13): as in the
        # base, upstream is cancelled and the error delivered; that ending runs
        # the action too, decided by the Terminal like any other.
        self._done = True
        cancel_quietly(self._upstream)
        self._end(error)

    def _end(self, error: Exception | None) -> None:
        """Deliver the ending and run the action, unless a cancel came first."""
        if self._terminal.finish(error) is None:
            return  # a cancel closed the stream first; finish() reported ``error``
        actual = self._actual
        if actual is DETACHED:
            # A cancel arrived after the base had marked this ending done, so
            # it skipped hook_on_cancel and detached downstream: nobody is
            # left to deliver to. The stream ended by that cancel, for
            # downstream; ``error`` is reported, not swallowed (Rule 1.7).
            cancel_quietly(self._upstream)
            if error is not None:
                report_undeliverable(error, f"{self!r} after cancel (Rule 1.7)")
            self._run_finally(SignalType.CANCEL)
        elif error is None:
            signal_complete(actual, self)
            self._run_finally(SignalType.ON_COMPLETE)
        else:
            signal_error(actual, error, self)
            self._run_finally(SignalType.ON_ERROR)

    def _run_finally(self, signal: SignalType) -> None:
        try:
            self._action(signal)
        except Exception as fault:  # the stream is over: nobody left to signal
            report_undeliverable(fault, f"do_finally action {self._action!r} ({signal.name})")


def do_finally(source: Flow[T], action: Callable[[SignalType], object]) -> Flow[T]:
    """See :meth:`Flow.do_finally`."""
    return LiftFlow(source, partial(_DoFinallySubscriber, action=action), "do_finally")
