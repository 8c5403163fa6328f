"""Reference publishers (correct) and deliberately broken ones, each breaking one rule.

None of these import reactive_bp: the kit must work on duck-typed objects. The broken
ones are small subclasses of the correct ones, so each differs in exactly one behaviour.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Final

MAX: Final = 2**63 - 1

# -- validation, as a third-party library would write it ------------------------------------


class BadRequestError(ValueError):
    """request(n <= 0) (Rule 3.9)."""


def request_error(n: object) -> Exception | None:
    if type(n) is not int:
        return TypeError(f"request(n) needs an int, got {n!r}")
    if n <= 0:
        return BadRequestError(f"Rule 3.9: non-positive request({n}) is illegal")
    return None


# -- synchronous ---------------------------------------------------------------------------


class SyncSubscription:
    """Emits on the thread that calls request(); nested requests only add demand."""

    def __init__(self, subscriber: Any, count: int) -> None:
        self.lock = threading.Lock()
        self.subscriber: Any = subscriber  # None once cancelled or terminated (Rule 3.13)
        self.count = count
        self.index = 0
        self.demand = 0
        self.emitting = False
        self.error: Exception | None = None

    def add_demand(self, n: int) -> None:
        total = self.demand + n
        self.demand = MAX if total >= MAX else total  # Rule 3.17: saturate

    def bad_request(self, error: Exception) -> None:
        self.error = error

    def request(self, n: int) -> None:
        error = request_error(n)
        with self.lock:
            if self.subscriber is None:
                return
            if error is not None:
                self.bad_request(error)
            else:
                self.add_demand(n)
        self.drain()

    def cancel(self) -> None:
        with self.lock:
            self.subscriber = None

    def finished(self) -> None:
        self.subscriber = None

    def drain(self) -> None:
        with self.lock:
            if self.emitting:
                return  # Rule 3.3: the outer drain loop delivers
            self.emitting = True
        while True:
            with self.lock:
                subscriber = self.subscriber
                if subscriber is None:
                    self.emitting = False
                    return
                error, self.error = self.error, None
                done = self.index >= self.count and self.count != MAX
                if error is not None or done:
                    self.finished()
                    self.emitting = False
                elif self.demand <= 0:
                    self.emitting = False
                    return
                else:
                    item = self.index
                    self.index += 1
                    if self.demand != MAX:
                        self.demand -= 1
            if error is not None:
                subscriber.on_error(error)
                return
            if done:
                self.signal_complete(subscriber)
                return
            subscriber.on_next(item)

    def signal_complete(self, subscriber: Any) -> None:
        subscriber.on_complete()


class SyncRangePublisher:
    """Publishes 0..count-1 synchronously (inside subscribe() and request())."""

    subscription_type: type[SyncSubscription] = SyncSubscription

    def __init__(self, count: int) -> None:
        self.count = count

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        subscription = self.subscription_type(subscriber, self.count)
        subscriber.on_subscribe(subscription)
        if self.count == 0:
            subscription.drain()  # an empty stream completes eagerly


class FailedPublisher:
    """Signals on_subscribe then on_error, with no request needed."""

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        subscriber.on_subscribe(_NoopSubscription())
        subscriber.on_error(RuntimeError("this publisher always fails"))


class _NoopSubscription:
    def request(self, n: int) -> None:
        pass

    def cancel(self) -> None:
        pass


# -- thread-based --------------------------------------------------------------------------


class ThreadedSubscription:
    """Emits from a worker thread of its own; the worker ends on completion or cancel."""

    def __init__(self, subscriber: Any, count: int) -> None:
        self.cond = threading.Condition()
        self.subscriber: Any = subscriber
        self.count = count
        self.index = 0
        self.demand = 0
        self.error: Exception | None = None
        self.worker = threading.Thread(target=self.run, name="threaded-range", daemon=True)

    def request(self, n: int) -> None:
        error = request_error(n)
        with self.cond:
            if error is not None:
                self.error = self.error or error
            else:
                total = self.demand + n
                self.demand = MAX if total >= MAX else total
            self.cond.notify()

    def cancel(self) -> None:
        with self.cond:
            self.subscriber = None
            self.cond.notify()

    def extra(self) -> int:
        return 0

    def run(self) -> None:
        while True:
            with self.cond:
                while (
                    self.subscriber is not None
                    and self.error is None
                    and self.demand <= 0
                    and not (self.index >= self.count and self.count != MAX)
                ):
                    self.cond.wait()
                subscriber = self.subscriber
                if subscriber is None:
                    return
                error = self.error
                done = self.index >= self.count and self.count != MAX
                if error is not None or done:
                    self.subscriber = None
                else:
                    item = self.index
                    self.index += 1
                    if self.demand != MAX:
                        self.demand -= 1
                    self.demand += self.extra()
            if error is not None:
                subscriber.on_error(error)
                return
            if done:
                subscriber.on_complete()
                return
            subscriber.on_next(item)


class ThreadedRangePublisher:
    """Publishes 0..count-1 from one worker thread per subscription."""

    subscription_type: type[ThreadedSubscription] = ThreadedSubscription

    def __init__(self, count: int) -> None:
        self.count = count

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        subscription = self.subscription_type(subscriber, self.count)
        subscriber.on_subscribe(subscription)
        subscription.worker.start()


# -- asyncio -------------------------------------------------------------------------------


class AsyncioSubscription:
    """Emits from event-loop callbacks; request() and cancel() only schedule work."""

    def __init__(self, subscriber: Any, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self.subscriber: Any = subscriber
        self.count = count
        self.loop = loop
        self.index = 0
        self.demand = 0
        self.error: Exception | None = None
        self.scheduled = False

    def request(self, n: int) -> None:
        self.loop.call_soon_threadsafe(self._on_request, n)

    def cancel(self) -> None:
        self.loop.call_soon_threadsafe(self._on_cancel)

    def _on_cancel(self) -> None:
        self.subscriber = None

    def _on_request(self, n: int) -> None:
        error = request_error(n)
        if error is not None:
            self.error = self.error or error
        else:
            total = self.demand + n
            self.demand = MAX if total >= MAX else total
        self.schedule()

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._emit)

    def _emit(self) -> None:
        self.scheduled = False
        batch = 8  # yield to the loop every few items
        while batch and self.subscriber is not None:
            subscriber = self.subscriber
            if self.error is not None:
                self.subscriber = None
                subscriber.on_error(self.error)
                return
            if self.index >= self.count and self.count != MAX:
                self.subscriber = None
                subscriber.on_complete()
                return
            if self.demand <= 0:
                return
            item = self.index
            self.index += 1
            if self.demand != MAX:
                self.demand -= 1
            subscriber.on_next(item)
            batch -= 1
        if self.subscriber is not None:
            self.schedule()


class AsyncioRangePublisher:
    """Publishes 0..count-1 on the running event loop (create it on the loop)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.loop = asyncio.get_running_loop()

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        subscription = AsyncioSubscription(subscriber, self.count, self.loop)
        subscriber.on_subscribe(subscription)
        if self.count == 0:
            subscription.schedule()


# == broken publishers: each breaks one rule ===================================================


class _OverDelivering(SyncSubscription):
    def add_demand(self, n: int) -> None:
        super().add_demand(n + 1)  # one more than asked


class OverDeliveringPublisher(SyncRangePublisher):
    """Rule 1.1: delivers one item more than requested."""

    subscription_type = _OverDelivering


class _CompletesAgain(SyncSubscription):
    def finished(self) -> None:
        self.count = self.index  # keeps the subscriber: the next request completes again


class SignalAfterCompletePublisher(SyncRangePublisher):
    """Rule 1.7: a request after on_complete signals on_complete again."""

    subscription_type = _CompletesAgain


class _IgnoresCancel(SyncSubscription):
    def cancel(self) -> None:
        pass


class SignalAfterCancelPublisher(SyncRangePublisher):
    """Rules 3.6/1.8: keeps serving requests after cancel()."""

    subscription_type = _IgnoresCancel


class OnNextBeforeOnSubscribePublisher(SyncRangePublisher):
    """Rule 1.9: the first signal (an item, or on_complete when empty) precedes on_subscribe."""

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        subscription = SyncSubscription(subscriber, self.count)
        if self.count == 0:
            subscriber.on_complete()
        else:
            subscription.index = 1
            subscriber.on_next(0)
        subscriber.on_subscribe(subscription)


class _RaisesOnBadRequest(SyncSubscription):
    def bad_request(self, error: Exception) -> None:
        raise error


class RaisingRequestPublisher(SyncRangePublisher):
    """Rules 3.9/3.16: request(0) raises instead of signalling on_error."""

    subscription_type = _RaisesOnBadRequest


class _IgnoresBadRequest(SyncSubscription):
    def bad_request(self, error: Exception) -> None:
        pass


class IgnoringBadRequestPublisher(SyncRangePublisher):
    """Rule 3.9: request(0) is silently ignored."""

    subscription_type = _IgnoresBadRequest


class _Recursive(SyncSubscription):
    def drain(self) -> None:
        # No trampoline: every nested request() emits right away (Rule 3.3).
        with self.lock:
            subscriber = self.subscriber
            if subscriber is None:
                return
            error, self.error = self.error, None
            if error is not None:
                self.subscriber = None
            elif self.index >= self.count and self.count != MAX:
                self.subscriber = None
                done, item = True, -1
            elif self.demand <= 0:
                return
            else:
                done, item = False, self.index
                self.index += 1
                self.demand -= 1
        if error is not None:
            subscriber.on_error(error)
        elif done:
            subscriber.on_complete()
        else:
            subscriber.on_next(item)
            self.drain()


class UnboundedRecursionPublisher(SyncRangePublisher):
    """Rule 3.3: request() inside on_next emits the next item at once, nesting deeper."""

    subscription_type = _Recursive


class OverlappingSignalsPublisher:
    """Rule 1.3: each request() hands emission to a new thread and waits for it.

    A request() made from inside on_next therefore has a second thread calling on_next
    while the first is still inside it.
    """

    def __init__(self, count: int) -> None:
        self.count = count

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        subscriber.on_subscribe(_HandoffSubscription(subscriber, self.count))


class _HandoffSubscription:
    def __init__(self, subscriber: Any, count: int) -> None:
        self.subscriber: Any = subscriber
        self.count = count
        self.index = 0
        self.lock = threading.Lock()

    def request(self, n: int) -> None:
        error = request_error(n)
        worker = threading.Thread(target=self._emit, args=(n, error), name="handoff")
        worker.start()
        worker.join()

    def _emit(self, n: int, error: Exception | None) -> None:
        for _ in range(1 if error else min(n, 1000)):
            with self.lock:
                subscriber = self.subscriber
                if subscriber is None:
                    return
                if error is not None or self.index >= self.count:
                    self.subscriber = None
                    done, item = True, -1
                else:
                    done, item = False, self.index
                    self.index += 1
            if error is not None:
                subscriber.on_error(error)
                return
            if done:
                subscriber.on_complete()
                return
            subscriber.on_next(item)

    def cancel(self) -> None:
        with self.lock:
            self.subscriber = None


class KeepsSubscriberPublisher(SyncRangePublisher):
    """Rule 3.13: remembers every subscriber forever."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.everyone: list[Any] = []

    def subscribe(self, subscriber: Any) -> None:
        self.everyone.append(subscriber)
        super().subscribe(subscriber)


class _Overflowing(SyncSubscription):
    def add_demand(self, n: int) -> None:
        self.demand += n
        if self.demand > MAX:  # Rule 3.17 says: saturate, never fail
            self.error = OverflowError("demand overflowed 2**63-1")


class OverflowErrorPublisher(SyncRangePublisher):
    """Rule 3.17: demand past 2**63-1 becomes on_error."""

    subscription_type = _Overflowing


class _NeverCompletes(SyncSubscription):
    def signal_complete(self, subscriber: Any) -> None:
        pass  # forgets on_complete


class NeverCompletesPublisher(SyncRangePublisher):
    """Rule 1.5: never signals on_complete."""

    subscription_type = _NeverCompletes


class AcceptsNoneSubscriberPublisher(SyncRangePublisher):
    """Rule 1.9: subscribe(None) returns normally."""

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is not None:
            super().subscribe(subscriber)


class _ThreadedOverDelivering(ThreadedSubscription):
    def extra(self) -> int:
        return 1 if self.index == 1 else 0  # one spare item after the first


class ThreadedOverDeliveringPublisher(ThreadedRangePublisher):
    """Rule 1.1 from another thread: one item more than requested, a moment later."""

    subscription_type = _ThreadedOverDelivering


class RaisingFailedPublisher:
    """Rules 1.4/1.9: a failed publisher that raises from subscribe() instead of on_error."""

    def subscribe(self, subscriber: Any) -> None:
        raise RuntimeError("cannot serve")


# -- JVM-parity samples (docs/verify-your-publisher.md, "Deliberate differences") -----------


class AttributeErrorOnNoneSubscriberPublisher(SyncRangePublisher):
    """Rule 1.9 met the Python way: subscribe(None) fails on None.on_subscribe.

    Raises AttributeError, not the recommended TypeError (rsocket-py does this).
    """

    def subscribe(self, subscriber: Any) -> None:
        subscription = self.subscription_type(subscriber, self.count)
        subscriber.on_subscribe(subscription)  # AttributeError for None
        if self.count == 0:
            subscription.drain()


class _StallsPastUnbounded(SyncSubscription):
    def add_demand(self, n: int) -> None:
        if self.demand + n > MAX:
            self.demand = 0  # a wrapped counter: no error, but the items stop
        else:
            self.demand += n


class StallsPastUnboundedPublisher(SyncRangePublisher):
    """Rule 3.17 (optional part): demand past 2**63-1 silently stops the items, no on_error."""

    subscription_type = _StallsPastUnbounded


class LockStepMulticastPublisher:
    """Rule 1.11: multicasts one shared sequence, an item only when every subscriber has demand.

    Passes when the subscribers request in rounds of one each; stalls under the JVM kit's
    staggered demand, where one subscriber asks while the others have none.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.lock = threading.RLock()
        self.subscribers: list[Any] = []
        self.demand: dict[int, int] = {}
        self.index = 0
        self.done = False

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        with self.lock:
            self.subscribers.append(subscriber)
            self.demand[id(subscriber)] = 0
        subscriber.on_subscribe(_LockStepSubscription(self, subscriber))
        self.pump()

    def pump(self) -> None:
        with self.lock:
            while not self.done and self.subscribers:
                if self.index >= self.count:
                    self.done = True
                    for subscriber in self.subscribers:
                        subscriber.on_complete()
                    return
                if any(self.demand[id(s)] <= 0 for s in self.subscribers):
                    return
                item = self.index
                self.index += 1
                for subscriber in self.subscribers:
                    self.demand[id(subscriber)] -= 1
                    subscriber.on_next(item)


class _LockStepSubscription:
    def __init__(self, publisher: LockStepMulticastPublisher, subscriber: Any) -> None:
        self.publisher = publisher
        self.subscriber = subscriber

    def request(self, n: int) -> None:
        error = request_error(n)
        publisher = self.publisher
        with publisher.lock:
            if self.subscriber not in publisher.subscribers:
                return
            if error is not None:
                publisher.subscribers.remove(self.subscriber)
                self.subscriber.on_error(error)
                return
            key = id(self.subscriber)
            publisher.demand[key] = min(MAX, publisher.demand[key] + n)
        publisher.pump()

    def cancel(self) -> None:
        publisher = self.publisher
        with publisher.lock:
            if self.subscriber in publisher.subscribers:
                publisher.subscribers.remove(self.subscriber)


# == broken publishers the kit must survive: late, blocking, spinning =========================
#
# Each of these once made the kit hang, run away with memory, or pass. They must fail on the
# right rule, in bounded time and memory.

LATE_S: Final = 0.03
# Released by the tests' teardown: a thread blocked on it wakes up and hits the exception
# the kit raised into it (so no blocked thread outlives the test session).
RELEASE_BLOCKED: Final = threading.Event()


def _later(delay_s: float, fn: Any, *args: Any) -> None:
    timer = threading.Timer(delay_s, fn, args=args)
    timer.daemon = True
    timer.start()


class _CompletesAgainLater(SyncSubscription):
    delay_s = LATE_S

    def signal_complete(self, subscriber: Any) -> None:
        subscriber.on_complete()
        _later(self.delay_s, subscriber.on_complete)  # from a timer thread, after the check


class LateCompleteAgainPublisher(SyncRangePublisher):
    """Rule 1.7, late: a second on_complete 30 ms after the first, from a timer thread."""

    subscription_type = _CompletesAgainLater


class _OneMoreAfterCancel(SyncSubscription):
    delay_s = LATE_S

    def cancel(self) -> None:
        with self.lock:
            subscriber, self.subscriber = self.subscriber, None
            item = self.index
        if subscriber is not None:
            _later(self.delay_s, subscriber.on_next, item)  # one more item, beyond any demand


class LateItemAfterCancelPublisher(SyncRangePublisher):
    """Rules 1.1/3.6, late: one more item 30 ms after cancel(), from a timer thread."""

    subscription_type = _OneMoreAfterCancel


class BlockingSubscribePublisher(SyncRangePublisher):
    """Rule 1.9: subscribe() blocks (a connect that never completes) and never returns."""

    def subscribe(self, subscriber: Any) -> None:
        RELEASE_BLOCKED.wait()  # parked in C: the kit cannot interrupt this
        super().subscribe(subscriber)


class _BlockingRequest(SyncSubscription):
    def request(self, n: int) -> None:
        RELEASE_BLOCKED.wait()
        super().request(n)


class BlockingRequestPublisher(SyncRangePublisher):
    """Rule 3.4: request() blocks and never returns."""

    subscription_type = _BlockingRequest


class _BlockingCancel(SyncSubscription):
    def cancel(self) -> None:
        RELEASE_BLOCKED.wait()
        super().cancel()


class BlockingCancelPublisher(SyncRangePublisher):
    """Rule 3.5: cancel() blocks and never returns."""

    subscription_type = _BlockingCancel


class _SpinsAfterComplete(SyncSubscription):
    def signal_complete(self, subscriber: Any) -> None:
        subscriber.on_complete()
        with self.lock:
            self.count = MAX  # forgets it completed ...
            self.subscriber = subscriber
        self.drain()  # ... and serves what demand is left, forever with request-from-on_next


class SpinsAfterCompletePublisher(SyncRangePublisher):
    """Rule 1.7: keeps signalling on the calling thread after on_complete.

    One item per unit of demand, in a loop: with a subscriber that requests from on_next
    (Rules 1.3, 3.17 checks) that loop never ends.
    """

    subscription_type = _SpinsAfterComplete


class _LoopBlockingSubscription(AsyncioSubscription):
    def _on_request(self, n: int) -> None:
        self.loop.call_soon(self._fill)  # the first request starts buffering "the source"

    def _fill(self) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()  # unbounded
        while True:  # drains an endless source on the loop thread: the loop never runs again
            queue.put_nowait(bytes(160))  # about 100 MB/s (fewer on a busy machine)


class LoopBlockingPublisher(AsyncioRangePublisher):
    """Blocks the event loop: drains an endless source into an unbounded queue on it.

    Memory grows by about 100 MB/s for as long as the loop thread runs.
    """

    def subscribe(self, subscriber: Any) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None)")
        subscriber.on_subscribe(_LoopBlockingSubscription(subscriber, self.count, self.loop))
