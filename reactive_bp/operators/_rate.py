"""Operators that shape upstream demand: limit_rate."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, TypeVar

from typing_extensions import override

from .._core._demand import multiply_cap
from .._core._queue_drain import QueueDrainSubscriber, replenish_limit
from ._lift import LiftFlow

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscriber

__all__ = ["limit_rate"]

T = TypeVar("T")


class _LimitRateSubscriber(QueueDrainSubscriber[T]):
    """Requests ``high`` upstream, then ``low`` each time ``low`` items were delivered.

    Demand: downstream demand is served from a queue of at most ``high``
    items. Invariant: (upstream demand outstanding) + (queued) <= ``high``,
    because upstream is only ever asked again for items already delivered.

    Cancellation: cancels upstream and clears the queue.

    Errors: an upstream error is signalled after the queued items (like
    completion), as Reactor's ``limitRate``; a Rule 3.9 request cuts ahead.
    """

    __slots__ = ("_delivered", "_low")

    def __init__(self, actual: Subscriber[T], high: int, low: int) -> None:
        super().__init__(actual, high)
        self._low = low
        # Loop owner only: items delivered since the last replenishment.
        self._delivered = 0

    @override
    def hook_on_emitted(self, count: int) -> None:
        delivered = self._delivered + count
        batches, self._delivered = divmod(delivered, self._low)
        if batches and not self._upstream_done:
            self.request_upstream(multiply_cap(batches, self._low))


def limit_rate(source: Flow[T], high: int, low: int | None) -> Flow[T]:
    """See :meth:`Flow.limit_rate`."""
    if type(high) is not int or high < 1:
        raise ValueError(f"limit_rate: high must be an int >= 1, got {high!r}")
    if low is None:
        low = replenish_limit(high)
    elif type(low) is not int or not 1 <= low <= high:
        raise ValueError(f"limit_rate: low must be an int with 1 <= low <= high, got {low!r}")
    return LiftFlow(source, partial(_LimitRateSubscriber, high=high, low=low), "limit_rate")
