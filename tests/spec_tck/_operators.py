"""Small duck-typed operators for the demand checker: correct ones and broken ones.

Each operator is a publisher wrapping an upstream publisher; its subscriber object sits
between upstream and downstream and doubles as the downstream's subscription. They are
single-subscriber and synchronous (every signal on the caller's thread), except
``LateReplenishFilterLink``, which requests from a timer thread; the time-driven ones run on a
``ManualClock``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

MAX: Final = 2**63 - 1


def _cap(n: int) -> int:
    return MAX if n >= MAX else n


class Link:
    """Pass-through: forwards demand, cancellation and every signal unchanged."""

    def __init__(self, downstream: Any) -> None:
        self.downstream = downstream
        self.upstream: Any = None
        self.done = False

    # upstream-facing (Subscriber)
    def on_subscribe(self, subscription: Any) -> None:
        self.upstream = subscription
        self.downstream.on_subscribe(self)

    def on_next(self, item: Any) -> None:
        if not self.done:
            self.downstream.on_next(item)

    def on_error(self, error: Exception) -> None:
        if not self.done:
            self.done = True
            self.downstream.on_error(error)

    def on_complete(self) -> None:
        if not self.done:
            self.done = True
            self.downstream.on_complete()

    # downstream-facing (Subscription)
    def request(self, n: int) -> None:
        self.upstream.request(n)

    def cancel(self) -> None:
        self.done = True
        self.upstream.cancel()


class Operator:
    """A publisher that applies ``link(downstream)`` around ``upstream``."""

    def __init__(self, upstream: Any, link: Callable[[Any], Any]) -> None:
        self.upstream = upstream
        self.link = link

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        self.upstream.subscribe(self.link(subscriber))


# -- correct operators ----------------------------------------------------------------------


class MapLink(Link):
    def __init__(self, downstream: Any, fn: Callable[[Any], Any]) -> None:
        super().__init__(downstream)
        self.fn = fn

    def on_next(self, item: Any) -> None:
        if not self.done:
            self.downstream.on_next(self.fn(item))


class FilterLink(Link):
    def __init__(self, downstream: Any, predicate: Callable[[Any], bool]) -> None:
        super().__init__(downstream)
        self.predicate = predicate

    def on_next(self, item: Any) -> None:
        if self.done:
            return
        if self.predicate(item):
            self.downstream.on_next(item)
        else:
            self.upstream.request(1)  # a dropped item gives its demand back


class BufferLink(Link):
    """Lists of ``count`` items; a partial last list is emitted when demand allows."""

    def __init__(self, downstream: Any, count: int) -> None:
        super().__init__(downstream)
        self.count = count
        self.buffer: list[Any] = []
        self.demand = 0
        self.upstream_done = False

    def request(self, n: int) -> None:
        self.demand = _cap(self.demand + n)
        if self.upstream_done:
            self.flush()
        else:
            self.upstream.request(_cap(n * self.count))

    def on_next(self, item: Any) -> None:
        if self.done:
            return
        self.buffer.append(item)
        if len(self.buffer) == self.count:
            batch, self.buffer = self.buffer, []
            self.demand -= 0 if self.demand == MAX else 1
            self.downstream.on_next(batch)

    def on_complete(self) -> None:
        self.upstream_done = True
        self.flush()

    def flush(self) -> None:
        if self.done:
            return
        if self.buffer:
            if self.demand <= 0:
                return  # wait for demand
            batch, self.buffer = self.buffer, []
            self.downstream.on_next(batch)
        self.done = True
        self.downstream.on_complete()


class ReduceLink(Link):
    """Sums everything; requests all of upstream at the first downstream request."""

    def __init__(self, downstream: Any) -> None:
        super().__init__(downstream)
        self.total = 0
        self.requested = False
        self.upstream_done = False

    def request(self, n: int) -> None:
        if self.upstream_done:
            self.emit()
        elif not self.requested:
            self.requested = True
            self.upstream.request(MAX)

    def on_next(self, item: Any) -> None:
        self.total += item

    def on_complete(self) -> None:
        self.upstream_done = True
        if self.requested:
            self.emit()

    def emit(self) -> None:
        if not self.done:
            self.done = True
            self.downstream.on_next(self.total)
            self.downstream.on_complete()


class DropLink(Link):
    """Requests everything; delivers what downstream asked for and drops the rest."""

    def __init__(self, downstream: Any, on_dropped: Callable[[object], None]) -> None:
        super().__init__(downstream)
        self.on_dropped = on_dropped
        self.demand = 0

    def on_subscribe(self, subscription: Any) -> None:
        super().on_subscribe(subscription)
        subscription.request(MAX)

    def request(self, n: int) -> None:
        self.demand = _cap(self.demand + n)

    def on_next(self, item: Any) -> None:
        if self.done:
            return
        if self.demand > 0:
            self.demand -= 0 if self.demand == MAX else 1
            self.downstream.on_next(item)
        else:
            self.on_dropped(item)


# -- broken operators -----------------------------------------------------------------------


class OverRequestingLink(MapLink):
    """Asks upstream for twice what downstream asked (declared 1:1)."""

    def request(self, n: int) -> None:
        self.upstream.request(_cap(2 * n))


class LosingLink(Link):
    """Silently drops every third item, re-requesting for it."""

    def __init__(self, downstream: Any) -> None:
        super().__init__(downstream)
        self.seen = 0

    def on_next(self, item: Any) -> None:
        self.seen += 1
        if self.seen % 3 == 0:
            self.upstream.request(1)
        else:
            super().on_next(item)


class OffByOneLink(Link):
    """Requests n - 1 upstream, so request(1) becomes request(0)."""

    def request(self, n: int) -> None:
        self.upstream.request(n - 1 if n != MAX else n)


class NoCancelLink(Link):
    """Never passes cancel() upstream."""

    def cancel(self) -> None:
        self.done = True


class DuplicatingLink(Link):
    """Emits each item twice."""

    def on_next(self, item: Any) -> None:
        super().on_next(item)
        super().on_next(item)


class SwallowErrorLink(Link):
    """Drops upstream errors."""

    def on_error(self, error: Exception) -> None:
        self.done = True


class NoFlushBufferLink(BufferLink):
    """Forgets the partial last batch at completion."""

    def flush(self) -> None:
        if not self.done:
            self.done = True
            self.downstream.on_complete()


class SilentDropLink(DropLink):
    """Drops without telling anyone."""

    def on_next(self, item: Any) -> None:
        if self.demand > 0:
            super().on_next(item)


class NoReplenishFilterLink(FilterLink):
    """A filter that forgets to give back the demand of an item it drops.

    Downstream asked for one item, upstream sent one that was dropped, and nobody asks for
    another: downstream waits forever (a stall), though nothing is lost or over-delivered.
    """

    def on_next(self, item: Any) -> None:
        if not self.done and self.predicate(item):
            self.downstream.on_next(item)


class SelfCancellingLink(Link):
    """Cancels upstream after two items and never tells downstream: another stall."""

    def __init__(self, downstream: Any) -> None:
        super().__init__(downstream)
        self.seen = 0

    def on_next(self, item: Any) -> None:
        super().on_next(item)
        self.seen += 1
        if self.seen == 2:
            self.upstream.cancel()


# -- time-driven operators (a manual clock stands in for a virtual-time scheduler) ------------


class ManualClock:
    """A virtual clock: ``call_later`` queues an action, ``advance()`` runs what is due."""

    def __init__(self) -> None:
        self.timers: list[Callable[[], None]] = []

    def call_later(self, action: Callable[[], None]) -> None:
        self.timers.append(action)

    def advance(self) -> None:
        timers, self.timers = self.timers, []
        for action in timers:
            action()


class PacedLink(Link):
    """A pacer: requests one item upstream per clock tick while downstream has demand.

    Between a downstream request and the next tick it has no upstream demand and holds
    nothing, which is not a stall: time has to pass.
    """

    def __init__(self, downstream: Any, clock: ManualClock) -> None:
        super().__init__(downstream)
        self.clock = clock
        self.demand = 0
        self.ticking = False
        self.asked = False

    def request(self, n: int) -> None:
        self.demand = _cap(self.demand + n)
        self.tick_later()

    def tick_later(self) -> None:
        if not (self.ticking or self.asked or self.done) and self.demand > 0:
            self.ticking = True
            self.clock.call_later(self.tick)

    def tick(self) -> None:
        self.ticking = False
        if not self.done and self.demand > 0:
            self.asked = True
            self.upstream.request(1)

    def on_next(self, item: Any) -> None:
        if self.done:
            return
        self.asked = False
        self.demand -= 0 if self.demand == MAX else 1
        self.downstream.on_next(item)
        self.tick_later()


class HoldUntilTickLink(Link):
    """A delay: holds every item, and the completion, until the next clock tick."""

    def __init__(self, downstream: Any, clock: ManualClock) -> None:
        super().__init__(downstream)
        self.clock = clock
        self.held: list[Any] = []
        self.completed = False

    def on_next(self, item: Any) -> None:
        if not self.done:
            self.held.append(item)
            self.clock.call_later(self.release)

    def on_complete(self) -> None:
        self.completed = True
        self.clock.call_later(self.release)

    def release(self) -> None:
        if self.done:
            return
        while self.held:
            self.downstream.on_next(self.held.pop(0))
        if self.completed:
            self.done = True
            self.downstream.on_complete()


class LateReplenishFilterLink(FilterLink):
    """A filter that gives a dropped item's demand back from another thread, later."""

    delay_s = 0.3

    def on_next(self, item: Any) -> None:
        if self.done:
            return
        if self.predicate(item):
            self.downstream.on_next(item)
        else:
            threading.Timer(self.delay_s, self.upstream.request, (1,)).start()
