"""Operators that recover from an error: on_error_resume, on_error_return."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from typing_extensions import override

from .._core._arbiter import ArbiterRelay
from .._core._hooks import report_undeliverable
from .._core._signals import signal_complete, signal_error
from .._flow import Flow

if TYPE_CHECKING:
    from ..abc import Publisher, Subscriber

__all__ = ["on_error_resume", "on_error_return"]

T = TypeVar("T")
U = TypeVar("U")

ErrorTypes = type[Exception] | tuple[type[Exception], ...]


class _ResumeSubscriber(ArbiterRelay[T]):
    """Relays the source; on a matching error, relays ``fallback(error)`` instead.

    Demand: 1:1 through a ``SubscriptionArbiter``; what downstream requested
    and did not receive from the source is requested from the fallback.

    Cancellation: cancels the source, or the fallback once it is subscribed.

    Errors: an error not matching ``when``, an error from the fallback, and a
    Rule 3.9 request error pass through; a raising (or ``None``-returning)
    ``fallback`` is signalled with the original error as ``__context__``.
    The fallback is used at most once.
    """

    __slots__ = ("_fallback", "_resumed", "_when")

    def __init__(
        self,
        actual: Subscriber[T],
        fallback: Callable[[Exception], Publisher[T]],
        when: ErrorTypes,
    ) -> None:
        super().__init__(actual)
        self._fallback = fallback
        self._when = when
        # Touched only by the (serial) signals of the current upstream.
        self._resumed = False

    def on_error(self, error: Exception) -> None:
        """Resume with the fallback if ``error`` matches; otherwise pass it on."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        if self._actual is None:
            report_undeliverable(error, f"{self!r} after terminal/cancel")
            return
        self.clear_upstream()  # it terminated: nothing to cancel
        if self._resumed or not isinstance(error, self._when):
            self._stop(error)
            return
        pending = self.pending_error
        if pending is not None:
            # A Rule 3.9 request: the source's error may be that very request
            # being answered; never "recover" from it.
            self._stop(pending)
            return
        self._resumed = True
        self._active = False
        self.produced(self._count)
        self._count = 0
        try:
            publisher = self._fallback(error)
            if publisher is None:
                raise TypeError(f"{self._fallback!r} returned None, not a publisher")
            Flow.from_publisher(publisher).subscribe(self)
        except Exception as fault:
            fault.__context__ = error
            self._stop(fault)

    def on_complete(self) -> None:
        """Pass the completion on."""
        actual = self._actual
        if actual is None:
            return
        self._actual = None
        signal_complete(actual, self)

    @override
    def hook_on_cancel(self) -> None:
        self._actual = None

    def _stop(self, error: Exception) -> None:
        actual = self._actual
        if actual is None:
            report_undeliverable(error, f"{self!r} after terminal/cancel")
            return
        self._actual = None
        self.cancel()
        signal_error(actual, error, self)

    def start(self, source: Flow[T]) -> None:
        """Hand ``self`` downstream, then subscribe to ``source``."""
        actual = self._actual
        assert actual is not None
        try:
            actual.on_subscribe(self)
        except Exception as fault:  # Rule 2.13
            self._stop(fault)
            return
        if not self.is_cancelled:
            source.subscribe(self)


class _ResumeFlow(Flow[T]):
    __slots__ = ("_fallback", "_name", "_source", "_when")

    def __init__(
        self,
        source: Flow[T],
        fallback: Callable[[Exception], Publisher[T]],
        when: ErrorTypes,
        name: str,
    ) -> None:
        self._source = source
        self._fallback = fallback
        self._when = when
        self._name = name

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        _ResumeSubscriber(subscriber, self._fallback, self._when).start(self._source)

    def __repr__(self) -> str:
        return f"{self._source!r}.{self._name}(...)"


def _check_when(name: str, when: ErrorTypes) -> None:
    kinds = when if isinstance(when, tuple) else (when,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"{name}: when must be Exception subclasses, got {when!r}")


def on_error_resume(
    source: Flow[T],
    fallback: Callable[[Exception], Publisher[U]],
    when: ErrorTypes,
) -> Flow[T | U]:
    """See :meth:`Flow.on_error_resume`."""
    _check_when("on_error_resume", when)
    if not callable(fallback):
        raise TypeError(f"on_error_resume: fallback must be callable, got {fallback!r}")
    widened: Flow[T | U] = source
    return _ResumeFlow(widened, fallback, when, "on_error_resume")


def on_error_return(source: Flow[T], value: U, when: ErrorTypes) -> Flow[T | U]:
    """See :meth:`Flow.on_error_return`."""
    if value is None:
        raise TypeError("on_error_return: the value may not be None (None is not an item)")
    _check_when("on_error_return", when)
    fallback_flow: Flow[U] = Flow.just(value)

    def fallback(_: Exception) -> Flow[U]:
        return fallback_flow

    widened: Flow[T | U] = source
    return _ResumeFlow(widened, fallback, when, "on_error_return")
