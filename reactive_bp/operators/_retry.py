"""``retry`` with a ``Backoff`` policy: exponential, capped, with full jitter.

The wait before retry number ``k`` (``k = 0`` for the first retry) is, with
full jitter, ``uniform(0, min(cap, base * factor ** k))``: the "exponentially
increasing random delay" that keeps many failing clients from retrying in
lock-step. The random source is injectable, so tests fix it with a seed.

The retry loop asks its policy ``delay_for(attempt, error)``, so a wait may
depend on the error that ended the attempt: any object with that method is a
``RetryPolicy`` (``Backoff`` ignores the error; ``RetryAfter`` in
``reactive_bp.connectors.http`` waits what a 429/503's ``Retry-After`` says).
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, cast, runtime_checkable

from typing_extensions import override

from .._core._arbiter import ArbiterRelay
from .._core._hooks import report_undeliverable
from .._core._signals import signal_complete, signal_error
from .._flow import Flow
from ..schedulers._base import RejectableAction, check_delay
from ..sources._time import time_scheduler

if TYPE_CHECKING:
    from ..abc import Subscriber, Subscription
    from ..schedulers import Cancellable, Scheduler

__all__ = ["Backoff", "Jitter", "RetryExhaustedError", "RetryOn", "RetryPolicy", "retry"]

T = TypeVar("T")

Jitter = Literal["full", "equal", "none"]
"""``full``: uniform(0, d); ``equal``: d/2 + uniform(0, d/2); ``none``: d."""

RetryOn = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
"""Which errors are retried: exception type(s), or a predicate on the error."""


@runtime_checkable
class RetryPolicy(Protocol):
    """How long ``retry`` waits before a new attempt, given the error that ended the last one.

    ``Backoff`` is one (it ignores the error); ``RetryAfter`` in
    ``reactive_bp.connectors.http`` is another. ``delay_for`` runs on the
    thread that signalled the error; what it raises fails the stream.
    """

    def delay_for(self, attempt: int, error: Exception) -> float:
        """The wait in seconds (>= 0) before retry ``attempt`` (0 for the first retry)."""
        ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long ``retry`` waits before each new attempt.

    Build one with :meth:`none`, :meth:`fixed` or :meth:`exponential`. The
    wait before retry ``k`` (0-based) is ``min(cap, base * factor ** k)``,
    then jittered.

    Example:
        >>> import random
        >>> b = Backoff.exponential(base=1.0, factor=2.0, cap=5.0, jitter="none")
        >>> [b.delay(k) for k in range(5)]
        [1.0, 2.0, 4.0, 5.0, 5.0]
        >>> seeded = Backoff.exponential(base=1.0, random=random.Random(7))
        >>> 0.0 <= seeded.delay(3) <= 8.0
        True
    """

    base: float
    factor: float
    cap: float
    jitter: Jitter
    random: _random.Random = field(default_factory=_random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_delay("Backoff: base", self.base)
        check_delay("Backoff: cap", self.cap)
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise TypeError(f"Backoff: factor must be a number, got {self.factor!r}")
        if not self.factor >= 1.0:
            raise ValueError(f"Backoff: factor must be >= 1, got {self.factor!r}")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(
                f"Backoff: jitter must be 'full', 'equal' or 'none', got {self.jitter!r}"
            )

    @staticmethod
    def none() -> Backoff:
        """Retry at once, on the thread that saw the error (trampolined, no recursion)."""
        return Backoff(0.0, 1.0, 0.0, "none")

    @staticmethod
    def fixed(delay: float) -> Backoff:
        """Wait ``delay`` seconds before every retry."""
        return Backoff(delay, 1.0, delay, "none")

    @staticmethod
    def exponential(
        base: float = 0.1,
        factor: float = 2.0,
        cap: float = 10.0,
        jitter: Jitter = "full",
        random: _random.Random | None = None,
    ) -> Backoff:
        """Wait ``min(cap, base * factor ** k)`` before retry ``k``, jittered (full by default).

        ``random`` is the random source (pass ``random.Random(seed)`` for
        reproducible waits); by default each ``Backoff`` gets its own.
        """
        return Backoff(base, factor, cap, jitter, _random.Random() if random is None else random)

    def ceiling(self, attempt: int) -> float:
        """The un-jittered wait before retry ``attempt``: ``min(cap, base * factor ** attempt)``."""
        try:
            raw = self.base * self.factor**attempt
        except OverflowError:
            return self.cap
        return raw if raw < self.cap else self.cap

    def delay(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (0 for the first retry), jitter applied."""
        ceiling = self.ceiling(attempt)
        if ceiling == 0.0 or self.jitter == "none":
            return ceiling
        if self.jitter == "full":
            return self.random.uniform(0.0, ceiling)
        half = ceiling / 2
        return half + self.random.uniform(0.0, half)

    def delay_for(self, attempt: int, error: Exception) -> float:
        """``delay(attempt)``: a ``Backoff`` waits the same whatever the error (``RetryPolicy``)."""
        return self.delay(attempt)


class RetryExhaustedError(Exception):
    """Every attempt failed; ``__cause__`` is the last error, ``attempts`` how many were made."""

    def __init__(self, attempts: int, last_error: Exception) -> None:
        super().__init__(f"gave up after {attempts} attempt(s); last error: {last_error!r}")
        self.attempts = attempts
        self.__cause__ = last_error

    @property
    def last_error(self) -> Exception:
        """The error of the final attempt (also ``__cause__``)."""
        cause = self.__cause__
        assert isinstance(cause, Exception)
        return cause


def _answers(error: Exception, pending: Exception) -> bool:
    """Whether ``error`` can be the attempt's answer to the bad request behind ``pending``.

    ``pending`` is what ``check_request`` made of the bad ``n``: a
    ``NonPositiveRequestError`` (a ``ValueError``, Python's counterpart of
    the ``IllegalArgumentException`` Rule 3.9 asks for) for ``n <= 0``, a
    ``TypeError`` for a value that is not an int. An attempt answers with
    an error of the same family -- every ``Flow`` and the ``from_publisher``
    guard with the very same ``check_request`` error, another publisher
    perhaps with its own ``ValueError`` subclass. Anything else is an error
    of the attempt's own and must not be dropped.
    """
    if error is pending:
        return True
    family = ValueError if isinstance(pending, ValueError) else type(pending)
    return isinstance(error, family)


def _predicate(retry_on: RetryOn | None) -> Callable[[Exception], bool]:
    if retry_on is None:
        return lambda error: True
    if isinstance(retry_on, tuple) or (
        isinstance(retry_on, type) and issubclass(retry_on, BaseException)
    ):
        kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise TypeError(f"retry: retry_on must be Exception subclasses, got {retry_on!r}")
        return lambda error: isinstance(error, kinds)
    if callable(retry_on):
        return cast("Callable[[Exception], bool]", retry_on)
    raise TypeError(f"retry: retry_on must be exception type(s) or a callable, got {retry_on!r}")


class _RetrySubscriber(ArbiterRelay[T]):
    """Re-subscribes to the source after a retryable error, after the backoff wait.

    Demand: 1:1 through the ``SubscriptionArbiter``; before each new attempt
    the items the failed attempt delivered are reported (``produced``), so
    the new subscription is asked only for the demand still outstanding.

    Cancellation: cancels the current attempt, or the pending backoff timer
    (no re-subscription happens after a cancel).

    Errors: a non-retryable error passes through unchanged; after
    ``max_attempts`` failed attempts ``RetryExhaustedError`` (``__cause__`` =
    the last error) is signalled; a raising ``retry_on`` predicate is
    signalled with the error it judged as ``__context__``; a Rule 3.9
    request error is never retried: during an attempt that attempt answers
    it (in order with its items), and between attempts (a backoff wait) it is
    signalled at once, the wait is called off and nothing is re-subscribed.
    An attempt that fails with another error while a Rule 3.9 error is
    pending still ends the stream with the Rule 3.9 error (nothing more is
    re-subscribed); its own error is reported to the undeliverable hook,
    never dropped. If the scheduler refuses the backoff timer, or drops it
    (a pool shut down during the wait), the stream fails with the
    scheduler's error instead of waiting for a re-subscription that cannot
    happen.

    Re-subscriptions without a wait run in a trampoline (``_wip``), so a
    source that fails synchronously on every attempt costs no stack depth.
    """

    __slots__ = (
        "_attempts",
        "_backoff",
        "_max_attempts",
        "_retry_lock",
        "_retry_on",
        "_scheduler",
        "_source",
        "_timer",
        "_wip",
    )

    def __init__(
        self,
        actual: Subscriber[T],
        source: Flow[T],
        max_attempts: int,
        backoff: RetryPolicy,
        retry_on: Callable[[Exception], bool],
        scheduler: Scheduler,
    ) -> None:
        super().__init__(actual)
        self._source = source
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._retry_on = retry_on
        self._scheduler = scheduler
        # Touched only by the (serial) signals of the current attempt and by
        # the re-subscription that follows its end.
        self._attempts = 0
        self._retry_lock = threading.Lock()
        # Guarded by _retry_lock: the pending backoff timer, and the
        # trampoline's work-in-progress count.
        self._timer: Cancellable | None = None
        self._wip = 0
        # _actual (ArbiterRelay) is taken for the terminal signal, or dropped
        # on cancel, only under _retry_lock: a Rule 3.9 error between attempts
        # is signalled from the requesting thread and may race the attempt's
        # end on another (_claim).

    # -- Subscriber (each attempt) ------------------------------------------------------

    def on_error(self, error: Exception) -> None:
        """Retry after the backoff wait, or give up and signal."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if self._actual is None:
            pending = self.pending_error
            if pending is not None and _answers(error, pending):
                # The answer to a bad request already signalled: racing a re-subscription,
                # the bad n reached two attempts (the requesting thread's and the new one's).
                return
            report_undeliverable(error, f"{self!r} after terminal/cancel")
            return
        self.clear_upstream()
        pending = self.pending_error
        if pending is not None:
            # Rule 3.9 ends the stream, whatever the attempt ended with. If
            # that was not its answer to the bad request, it is an error of
            # its own (it failed before the request reached it): report it.
            if not _answers(error, pending):
                report_undeliverable(error, f"{self!r}: superseded by {pending!r} (Rule 3.9)")
            self._stop(pending, quiet=True)
            return
        try:
            retryable = self._retry_on(error)
        except Exception as fault:
            fault.__context__ = error
            self._stop(fault)
            return
        if not retryable:
            self._stop(error)
            return
        if self._attempts >= self._max_attempts:
            self._stop(RetryExhaustedError(self._attempts, error))
            return
        self.produced(self._count)
        self._count = 0
        self._active = False
        try:
            wait = self._backoff.delay_for(self._attempts - 1, error)
            if not wait >= 0.0:  # also NaN
                raise ValueError(f"retry: {self._backoff!r} returned a wait of {wait!r}")
        except Exception as fault:  # a broken random source or policy
            fault.__context__ = error
            self._stop(fault)
            return
        if wait <= 0.0:
            self._subscribe_next()
            return
        action = RejectableAction(self._backoff_elapsed, self._backoff_rejected)
        try:
            handle = self._scheduler.schedule_after(wait, action)
        except Exception as fault:  # e.g. a closed event loop: never out of on_error
            fault.__context__ = error
            self._stop(fault)
            return
        with self._retry_lock:
            if not self.is_cancelled:
                self._timer = handle
                return
        handle.cancel()

    def on_complete(self) -> None:
        """Pass the completion on."""
        actual = self._claim()
        if actual is not None:
            self.clear_upstream()
            signal_complete(actual, self)

    # -- attempts ---------------------------------------------------------------------------

    def _backoff_elapsed(self) -> None:
        with self._retry_lock:
            self._timer = None
        self._subscribe_next()

    def _backoff_rejected(self, error: Exception) -> None:
        """The scheduler dropped the backoff timer: no attempt can follow; fail the stream.

        Quiet: a stream already over (cancelled, or ended by a Rule 3.9
        request during the wait) was not waiting for the timer.
        """
        with self._retry_lock:
            self._timer = None
        self._stop(error, quiet=True)

    def _subscribe_next(self) -> None:
        """Subscribe the next attempt; nested calls queue behind the running one (trampoline)."""
        with self._retry_lock:
            self._wip += 1
            if self._wip != 1:
                return
        missed = 1
        while True:
            if self.is_cancelled or self._actual is None:
                return
            pending = self.pending_error
            if pending is not None:
                # Rule 3.9 arrived between attempts: do not re-subscribe.
                self._stop(pending, quiet=True)
                return
            self._attempts += 1
            try:
                self._source.subscribe(self)
            except Exception as fault:  # a third-party subscribe() that raised
                self._stop(fault)
                return
            with self._retry_lock:
                self._wip -= missed
                missed = self._wip
                if missed == 0:
                    return

    @override
    def hook_on_bad_request(
        self, n: object, error: Exception, upstream: Subscription | None
    ) -> None:
        if upstream is not None:
            upstream.request(n)  # type: ignore[arg-type]  # the attempt answers, in order
            return
        # Between attempts nothing upstream can answer, and no attempt is
        # signalling (the last one ended, the next is not subscribed): signal
        # now rather than after the wait and one more subscription (Rule 3.9).
        # If the next attempt is being subscribed right now, _subscribe_next
        # sees pending_error first, or set_upstream hands it the bad request.
        self._stop(error, quiet=True)

    @override
    def hook_on_cancel(self) -> None:
        with self._retry_lock:
            self._actual = None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _claim(self) -> Subscriber[T] | None:
        """Take the subscriber for the terminal signal, once (Rule 1.7)."""
        with self._retry_lock:
            actual, self._actual = self._actual, None
        return actual

    def _stop(self, error: Exception, *, quiet: bool = False) -> None:
        """Cancel what is left and signal ``error`` once.

        ``quiet``: ``error`` is the recorded Rule 3.9 error, which two threads
        may both try to signal; the one that comes second reports nothing.
        """
        actual = self._claim()
        if actual is None:
            if not quiet:
                report_undeliverable(error, f"{self!r} after terminal/cancel")
            return
        self.cancel()
        signal_error(actual, error, self)

    def start(self) -> None:
        """Hand ``self`` downstream, then make the first attempt."""
        actual = self._actual
        assert actual is not None
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._stop(fault)
            return
        self._subscribe_next()


class _RetryFlow(Flow[T]):
    __slots__ = ("_backoff", "_max_attempts", "_retry_on", "_scheduler", "_source")

    def __init__(
        self,
        source: Flow[T],
        max_attempts: int,
        backoff: RetryPolicy,
        retry_on: Callable[[Exception], bool],
        scheduler: Scheduler,
    ) -> None:
        self._source = source
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._retry_on = retry_on
        self._scheduler = scheduler

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        _RetrySubscriber(
            subscriber,
            self._source,
            self._max_attempts,
            self._backoff,
            self._retry_on,
            self._scheduler,
        ).start()

    def __repr__(self) -> str:
        return f"{self._source!r}.retry({self._max_attempts}, {self._backoff!r})"


def retry(
    source: Flow[T],
    max_attempts: int,
    backoff: RetryPolicy | None,
    retry_on: RetryOn | None,
    scheduler: Scheduler | None,
) -> Flow[T]:
    """See :meth:`Flow.retry`."""
    if type(max_attempts) is not int or max_attempts < 1:
        raise ValueError(f"retry: max_attempts must be an int >= 1, got {max_attempts!r}")
    if backoff is not None and not isinstance(backoff, RetryPolicy):
        raise TypeError(
            "retry: backoff must be a Backoff or a RetryPolicy "
            f"(delay_for(attempt, error) -> seconds), got {backoff!r}"
        )
    return _RetryFlow(
        source,
        max_attempts,
        Backoff.none() if backoff is None else backoff,
        _predicate(retry_on),
        time_scheduler(scheduler),
    )
