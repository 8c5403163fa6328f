"""Reference subscribers and processors (correct), and broken ones breaking one rule each.

Duck-typed: nothing here imports reactive_bp.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Final

MAX: Final = 2**63 - 1


# -- subscribers ----------------------------------------------------------------------------


class BatchingSubscriber:
    """Requests ``batch`` items at a time and asks for more when a batch is used up."""

    def __init__(self, batch: int = 4) -> None:
        self.batch = batch
        self.subscription: Any = None
        self.outstanding = 0
        self.items: list[object] = []
        self.done = False

    def on_subscribe(self, subscription: Any) -> None:
        if subscription is None:
            raise TypeError("on_subscribe(None)")
        if self.subscription is not None:
            subscription.cancel()  # Rule 2.5
            return
        self.subscription = subscription
        self.more()

    def more(self) -> None:
        self.outstanding += self.batch
        self.subscription.request(self.batch)

    def on_next(self, item: object) -> None:
        if item is None:
            raise TypeError("on_next(None)")
        if self.done:
            return
        self.items.append(item)
        self.outstanding -= 1
        if self.outstanding == 0:
            self.more()

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("on_error(None)")
        self.done = True

    def on_complete(self) -> None:
        self.done = True


class RequestsInOnComplete(BatchingSubscriber):
    """Rule 2.3: calls request() from on_complete."""

    def on_complete(self) -> None:
        self.subscription.request(1)


class CancelsInOnError(BatchingSubscriber):
    """Rule 2.3: calls cancel() from on_error."""

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("on_error(None)")
        self.subscription.cancel()


class KeepsSecondSubscription(BatchingSubscriber):
    """Rule 2.5: replaces its subscription instead of cancelling the new one."""

    def on_subscribe(self, subscription: Any) -> None:
        if subscription is None:
            raise TypeError("on_subscribe(None)")
        self.subscription = subscription
        self.more()


class NeverRequests(BatchingSubscriber):
    """Rule 2.1: never signals demand."""

    def more(self) -> None:
        pass


class AcceptsNoneItem(BatchingSubscriber):
    """Rule 2.13: on_next(None) returns normally."""

    def on_next(self, item: object) -> None:
        if item is not None:
            super().on_next(item)


class RaisesInOnError(BatchingSubscriber):
    """Rules 2.10/2.13: on_error raises."""

    def on_error(self, error: Exception) -> None:
        raise RuntimeError("cannot handle errors")


# -- whitebox: the same subscriber, reporting to the probe ------------------------------------


class _Puppet:
    def __init__(self, owner: ProbedSubscriber) -> None:
        self.owner = owner

    def trigger_request(self, n: int) -> None:
        self.owner.subscription.request(self.owner.shrink(n))

    def signal_cancel(self) -> None:
        self.owner.subscription.cancel()


class ProbedSubscriber:
    """Requests only when the probe's puppet says so; reports every signal."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self.subscription: Any = None

    def shrink(self, n: int) -> int:
        return n

    def on_subscribe(self, subscription: Any) -> None:
        if subscription is None:
            raise TypeError("on_subscribe(None)")
        if self.subscription is not None:
            subscription.cancel()
            return
        self.subscription = subscription
        self.probe.register_on_subscribe(_Puppet(self))

    def on_next(self, item: object) -> None:
        if item is None:
            raise TypeError("on_next(None)")
        self.probe.register_on_next(item)

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("on_error(None)")
        self.probe.register_on_error(error)

    def on_complete(self) -> None:
        self.probe.register_on_complete()


class UnderRequestingProbedSubscriber(ProbedSubscriber):
    """Rule 3.8 (as seen by the whitebox checks): requests one less than triggered."""

    def shrink(self, n: int) -> int:
        return n - 1 if n > 1 else n


class ForgetsToReportOnSubscribe(ProbedSubscriber):
    """A wiring mistake: never calls probe.register_on_subscribe."""

    def on_subscribe(self, subscription: Any) -> None:
        if subscription is None:
            raise TypeError("on_subscribe(None)")
        self.subscription = subscription


# -- processors -----------------------------------------------------------------------------


class _Downstream:
    def __init__(self, processor: IdentityProcessor) -> None:
        self.processor = processor

    def request(self, n: int) -> None:
        self.processor.downstream_request(n)

    def cancel(self) -> None:
        self.processor.downstream_cancel()


class IdentityProcessor:
    """A single-subscriber pass-through processor; downstream demand goes upstream 1:1."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Invariant (under lock): only the thread that set draining signals downstream, and
        # only once ready: on_subscribe is a signal too (Rule 1.3), so an item the upstream
        # sends on its own thread while downstream's on_subscribe runs (e.g. for the request
        # made inside it) waits for on_subscribe to return (Rule 1.9).
        self.upstream: Any = None
        self.pending_upstream = 0  # demand signalled before the upstream arrived
        self.downstream: Any = None
        self.subscribed = False
        self.ready = False  # downstream's on_subscribe returned
        self.queue: deque[object] = deque()
        self.demand = 0
        self.done = False
        self.error: Exception | None = None
        self.cancelled = False
        self.draining = False

    # -- Subscriber -----------------------------------------------------------------------

    def on_subscribe(self, subscription: Any) -> None:
        if subscription is None:
            raise TypeError("on_subscribe(None)")
        with self.lock:
            duplicate = self.upstream is not None
            if not duplicate:
                self.upstream = subscription
            pending, self.pending_upstream = self.pending_upstream, 0
            cancelled = self.cancelled
        if duplicate or cancelled:
            subscription.cancel()
        elif pending:
            subscription.request(pending)

    def on_next(self, item: object) -> None:
        if item is None:
            raise TypeError("on_next(None)")
        with self.lock:
            if self.done or self.cancelled:
                return
            self.queue.append(item)
        self.drain()

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("on_error(None)")
        self.terminate(error)

    def on_complete(self) -> None:
        self.terminate(None)

    def terminate(self, error: Exception | None) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            self.error = error
            if error is not None:
                self.queue.clear()  # Rule 4.2: the error goes on at once
        self.drain()

    # -- Publisher ------------------------------------------------------------------------

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        with self.lock:
            taken = self.subscribed
            self.subscribed = True
            if not taken:
                self.downstream = subscriber
        if taken:
            subscriber.on_subscribe(_Rejected())
            subscriber.on_error(RuntimeError("this processor serves one subscriber"))
            return
        subscriber.on_subscribe(_Downstream(self))
        with self.lock:
            self.ready = True
        self.drain()  # what arrived during on_subscribe

    def downstream_request(self, n: int) -> None:
        if type(n) is not int or n <= 0:
            error = ValueError(f"Rule 3.9: non-positive request({n!r})")
            with self.lock:
                upstream, self.upstream = self.upstream, None
                self.queue.clear()
                self.done, self.error = True, error
                self.cancelled_upstream = True
            if upstream is not None:
                upstream.cancel()
            self.drain()
            return
        with self.lock:
            if self.cancelled:
                return
            total = self.demand + n
            self.demand = MAX if total >= MAX else total
            upstream = self.upstream
            if upstream is None:
                total = self.pending_upstream + n
                self.pending_upstream = MAX if total >= MAX else total
        if upstream is not None:
            self.forward_request(upstream, n)
        self.drain()

    def forward_request(self, upstream: Any, n: int) -> None:
        upstream.request(n)

    def downstream_cancel(self) -> None:
        with self.lock:
            if self.cancelled:
                return
            self.cancelled = True
            self.downstream = None  # Rule 3.13
            self.queue.clear()
            upstream = self.upstream
        if upstream is not None:
            self.forward_cancel(upstream)

    def forward_cancel(self, upstream: Any) -> None:
        upstream.cancel()

    def drain(self) -> None:
        with self.lock:
            if self.draining:
                return
            self.draining = True
        while True:
            with self.lock:
                downstream = self.downstream
                signal: tuple[str, object] | None = None
                if downstream is not None and self.ready and not self.cancelled:
                    if self.queue and self.demand > 0:
                        signal = ("next", self.queue.popleft())
                        if self.demand != MAX:
                            self.demand -= 1
                    elif self.done and (not self.queue or self.error is not None):
                        signal = ("error", self.error) if self.error else ("complete", None)
                        self.downstream = None
                if signal is None:
                    self.draining = False
                    return
            kind, value = signal
            if kind == "next":
                downstream.on_next(value)
            elif kind == "error":
                downstream.on_error(value)
            else:
                downstream.on_complete()


class _Rejected:
    def request(self, n: int) -> None:
        pass

    def cancel(self) -> None:
        pass


class SwallowsErrorsProcessor(IdentityProcessor):
    """Rule 4.2: an upstream error is neither recovered from nor passed on."""

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("on_error(None)")


class KeepsUpstreamOnCancelProcessor(IdentityProcessor):
    """Downstream cancel() never reaches upstream."""

    def forward_cancel(self, upstream: Any) -> None:
        pass


# -- JVM-parity samples (docs/verify-your-publisher.md, "Deliberate differences") -----------


class HundredItemBuffer(BatchingSubscriber):
    """Rule 2.13: asks for everything, but its buffer holds 100 items; the 101st raises.

    The JVM kit's blackbox 2.1 sends up to 512 of the requested items, enough to show it.
    """

    def more(self) -> None:
        self.subscription.request(MAX)

    def on_next(self, item: object) -> None:
        if item is None:
            raise TypeError("on_next(None)")
        if len(self.items) >= 100:
            raise OverflowError("buffer of 100 items is full")
        self.items.append(item)


class CancelsAfterFive(BatchingSubscriber):
    """Asks for everything and cancels after 5 items (legal); counts what came after."""

    def __init__(self) -> None:
        super().__init__()
        self.after_cancel = 0

    def more(self) -> None:
        self.subscription.request(MAX)

    def on_next(self, item: object) -> None:
        if item is None:
            raise TypeError("on_next(None)")
        if self.done:
            self.after_cancel += 1
            return
        self.items.append(item)
        if len(self.items) == 5:
            self.done = True
            self.subscription.cancel()


class PassesOnOnlyWhenRequestedProcessor(IdentityProcessor):
    """Assumes a synchronous upstream: an item is passed on only when downstream requests.

    Its on_next queues without draining; the drain after forwarding a request delivers what
    the upstream sent *during* that request. Right for a synchronous upstream, wrong for an
    asynchronous one (items that arrive later wait for the next request).
    """

    def on_next(self, item: object) -> None:
        if item is None:
            raise TypeError("on_next(None)")
        with self.lock:
            if self.done or self.cancelled:
                return
            self.queue.append(item)
