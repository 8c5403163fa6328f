"""The four Reactive Streams interfaces, as structural protocols.

Third-party classes conform by shape; nothing needs to inherit from these.
Every method returns ``None`` and, by Rules 2.13, 3.15 and 3.16, returns
normally: the only failure channel towards a subscriber is ``on_error``.

The Python forms of the spec's null rules: ``subscribe(None)``,
``on_subscribe(None)``, ``on_next(None)`` and ``on_error(None)`` raise
``TypeError`` to the caller (Rules 1.9 and 2.13). ``None`` is therefore never a
valid item.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Processor", "Publisher", "Subscriber", "Subscription"]

T_contra = TypeVar("T_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Subscription(Protocol):
    """The link between one publisher and one subscriber.

    ``request(n)`` adds ``n`` to the outstanding demand (Rule 3.8); totals at or
    above ``2**63 - 1`` mean "unbounded" (Rule 3.17). ``request(n <= 0)`` is
    answered with ``on_error`` (Rule 3.9), never with an exception to the
    caller. ``cancel()`` is idempotent and thread-safe (Rules 3.5, 3.7).
    """

    def request(self, n: int) -> None:
        """Ask for up to ``n`` more items."""

    def cancel(self) -> None:
        """Ask the publisher to stop signalling and release this subscriber."""


@runtime_checkable
class Subscriber(Protocol[T_contra]):
    """Receives ``on_subscribe on_next* (on_error | on_complete)?``."""

    def on_subscribe(self, subscription: Subscription) -> None:
        """Receive the subscription; called exactly once, first (Rule 1.9)."""

    def on_next(self, item: T_contra) -> None:
        """Receive one item; never more than requested (Rule 1.1)."""

    def on_error(self, error: Exception) -> None:
        """Receive the terminal failure (Rule 1.4)."""

    def on_complete(self) -> None:
        """Receive the terminal success (Rule 1.5)."""


@runtime_checkable
class Publisher(Protocol[T_co]):
    """A source of items that honours demand."""

    def subscribe(self, subscriber: Subscriber[T_co]) -> None:
        """Attach ``subscriber``; ``subscribe(None)`` raises ``TypeError`` (Rule 1.9)."""


@runtime_checkable
class Processor(Subscriber[T_contra], Publisher[T_co], Protocol[T_contra, T_co]):
    """Both a subscriber (of ``T_contra``) and a publisher (of ``T_co``) (Rule 4.1)."""
