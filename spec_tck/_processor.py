"""``IdentityProcessorVerification``: a processor checked as a publisher and as a subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from reactive_bp._core._demand import UNBOUNDED, add_cap, check_request

from ._env import (
    ManualPublisher,
    ManualSubscriber,
    SkipCheck,
    TestEnvironment,
    WhiteboxSubscriberProbe,
)
from ._publisher import PublisherVerification
from ._rules import RuleResult
from ._subscriber import SubscriberWhiteboxVerification, TestSignalError

if TYPE_CHECKING:
    from reactive_bp.abc import Processor, Publisher, Subscriber, Subscription

__all__ = ["HelperPool", "HelperPublisher", "IdentityProcessorVerification"]

T = TypeVar("T")

TEST_BUFFER_SIZE = 16


class IdentityProcessorVerification(
    PublisherVerification[T], SubscriberWhiteboxVerification[T], Generic[T]
):
    """Checks an identity processor: every publisher check runs on its output, every
    whitebox subscriber check on its input, plus three processor checks (Rules 4.1, 4.2,
    and Rule 1.4 across subscribers).

    Implement ``create_identity_processor(buffer_size)`` (a pass-through processor able to
    buffer ``buffer_size`` items) and ``create_element(index)``; optionally
    ``create_failed_publisher()``. Knobs: ``max_supported_subscribers()`` (tests that need
    two subscribers are skipped below 2), ``does_coordinated_emission()``,
    ``processor_buffer_size()``, ``create_helper_publisher(elements)`` and every
    ``PublisherVerification`` knob.

    The publisher checks feed the processor from ``create_helper_publisher``, an
    asynchronous publisher of ``create_element(0..n-1)`` (a thread pool, or the event loop
    with ``asyncio = True``). The subscriber checks attach a probe downstream:
    ``trigger_request(n)`` becomes a downstream ``request(n)``, so they also check that
    demand and cancellation pass through to upstream.
    """

    @abstractmethod
    def create_identity_processor(self, buffer_size: int) -> Processor[T, T]:
        """Return a new processor that passes items through unchanged."""

    def processor_buffer_size(self) -> int:
        """The buffer size passed to ``create_identity_processor``."""
        return TEST_BUFFER_SIZE

    def max_supported_subscribers(self) -> int:
        """How many subscribers the processor serves at once."""
        return UNBOUNDED

    def does_coordinated_emission(self) -> bool:
        """Whether the processor emits only when every subscriber has demand."""
        return False

    def __init__(self, env: TestEnvironment | None = None) -> None:
        """Create a verification; ``env`` defaults to one configured from env vars."""
        super().__init__(env)
        # The helper publishers of the running check and the pool they signal from; both
        # are closed when the check returns (run_rule).
        self._helpers: list[HelperPublisher[T]] = []
        self._helper_pool: HelperPool | None = None

    def create_helper_publisher(self, elements: int) -> Publisher[T]:
        """The upstream of the processor in the publisher checks: an asynchronous publisher.

        It signals from a pool of 4 threads (as the JVM kit's helper does), or, with
        ``asyncio = True``, from callbacks on the check's event loop. Override it to feed
        the processor from something else, e.g. ``HelperPublisher(elements, make)`` without
        ``execute`` for a synchronous upstream.
        """
        helper = HelperPublisher(
            elements,
            self.create_element,
            budget_s=0.5 * self.env.call_budget_s,  # ends before the kit counts the call hung
            on_overrun=self.env.flop,
            execute=self._helper_execute(),
        )
        self._helpers.append(helper)
        return helper

    def _helper_execute(self) -> Execute:
        if type(self).asyncio:
            with contextlib.suppress(RuntimeError):  # called off the loop: use the pool
                return asyncio.get_running_loop().call_soon_threadsafe
        if self._helper_pool is None:
            self._helper_pool = HelperPool()
        return self._helper_pool.execute

    def run_rule(self, rule_id: str) -> RuleResult:
        """Run one check; then stop the helper publishers it created and their threads."""
        try:
            return super().run_rule(rule_id)
        finally:
            helpers, self._helpers = self._helpers, []
            for helper in helpers:
                helper.close()
            pool, self._helper_pool = self._helper_pool, None
            if pool is not None:
                pool.shutdown(self.env.default_timeout_s)

    # -- the two views of the processor (final) --------------------------------------------

    def create_publisher(self, elements: int) -> Publisher[T]:
        """The processor fed by ``create_helper_publisher(elements)``."""
        processor = self.create_identity_processor(self.processor_buffer_size())
        self.create_helper_publisher(elements).subscribe(processor)
        return processor

    def create_subscriber(self, probe: WhiteboxSubscriberProbe[T]) -> Subscriber[T]:
        """The processor, with a probe-reporting subscriber downstream of it."""
        processor = self.create_identity_processor(self.processor_buffer_size())
        processor.subscribe(_ProbeSubscriber(probe))
        return processor

    # -- processor checks ------------------------------------------------------------------

    def _wired(
        self, *names: str
    ) -> tuple[Processor[T, T], ManualPublisher, list[ManualSubscriber[T]]]:
        processor = self.env.call(
            lambda: self.create_identity_processor(self.processor_buffer_size())
        )
        subscribers: list[ManualSubscriber[T]] = []
        for name in names:
            subscriber: ManualSubscriber[T] = ManualSubscriber(self.env, name)
            self.env.call(functools.partial(processor.subscribe, subscriber))
            subscriber.expect_subscription()
            subscribers.append(subscriber)
        upstream = ManualPublisher(self.env, "upstream")
        self.env.call(lambda: upstream.subscribe(cast(Any, processor)))
        return processor, upstream, subscribers

    def _upstream_demand(self, upstream: ManualPublisher, sent: int, what: str) -> None:
        if not self.env.wait_for(
            lambda: upstream.total_requested > sent, self.env.default_timeout_s
        ):
            upstream.fail(
                f"{what}: the processor did not request from upstream for demand its "
                f"subscribers signalled (upstream got {sent} items, requested "
                f"{upstream.total_requested})"
            )

    def _needs_two_subscribers(self) -> None:
        if self.max_supported_subscribers() < 2:
            raise SkipCheck(
                f"needs 2 subscribers; max_supported_subscribers() is "
                f"{self.max_supported_subscribers()}"
            )

    def required_spec104_must_call_on_error_on_all_its_subscribers_if_it_encounters_a_non_recoverable_error(  # noqa: E501
        self,
    ) -> None:
        """Rules 1.4, 4.2: an upstream error reaches every subscriber."""
        self._needs_two_subscribers()
        what = "Rule 1.4 (processor)"
        _, upstream, (sub1, sub2) = self._wired("subscriber 1", "subscriber 2")
        coordinated = self.does_coordinated_emission()
        sub1.request(1)
        if coordinated:
            sub2.request(1)
        self._upstream_demand(upstream, 0, what)
        element = self.create_element(0)
        upstream.send_next(element, what)
        for sub in (sub1, sub2) if coordinated else (sub1,):
            if sub.expect_next(f"{what}: the item sent upstream") != element:
                sub.fail(f"{what}: expected {element!r}")
        sub1.request(1)
        error = TestSignalError("spec_tck: upstream failure")
        upstream.send_error(error, what)
        for sub in (sub1, sub2):
            seen = sub.expect_error(Exception, f"{what}: every subscriber must get on_error")
            if seen is not error:
                sub.fail(f"{what}: got {seen!r}, not the upstream error")

    def required_spec402_must_immediately_pass_on_on_error_events_received_from_its_upstream_to_its_downstream(  # noqa: E501
        self,
    ) -> None:
        """Rule 4.2: an upstream error reaches the subscriber even without demand."""
        what = "Rule 4.2"
        _, upstream, (sub,) = self._wired("subscriber")
        error = TestSignalError("spec_tck: upstream failure")
        upstream.send_error(error, what)
        seen = sub.expect_error(Exception, f"{what}: the upstream error must be passed on")
        if seen is not error:
            sub.fail(f"{what}: got {seen!r}, not the upstream error")

    def required_spec401_must_request_from_upstream_for_elements_that_have_been_requested_long_ago(
        self,
    ) -> None:
        """Rule 4.1: demand signalled early is served; a late subscriber gets later items."""
        self._needs_two_subscribers()
        what = "Rule 4.1"
        processor, upstream, (sub1,) = self._wired("subscriber 1")
        coordinated = self.does_coordinated_emission()
        sub1.request(20)
        sent = 0
        for _ in range(2):
            self._upstream_demand(upstream, sent, what)
            element = self.create_element(sent)
            upstream.send_next(element, what)
            sent += 1
            if sub1.expect_next(f"{what}: item {sent}") != element:
                sub1.fail(f"{what}: expected {element!r}")
        sub2: ManualSubscriber[T] = ManualSubscriber(self.env, "subscriber 2")
        self.env.call(lambda: processor.subscribe(sub2))
        sub2.expect_subscription()
        if coordinated:
            sub2.request(1)
        self._upstream_demand(upstream, sent, what)
        element = self.create_element(sent)
        upstream.send_next(element, what)
        if sub1.expect_next(f"{what}: item {sent + 1}") != element:
            sub1.fail(f"{what}: expected {element!r}")
        if not coordinated:
            sub2.expect_none(f"{what}: a late subscriber without demand")
            sub2.request(1)
        if sub2.expect_next(f"{what}: the late subscriber's first item") != element:
            sub2.fail(f"{what}: expected {element!r}")
        upstream.send_completion(what)
        sub1.expect_completion(f"{what}: after upstream on_complete")
        sub2.expect_completion(f"{what}: after upstream on_complete")


class _ProbePuppet:
    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    def trigger_request(self, n: int) -> None:
        self._subscription.request(n)

    def signal_cancel(self) -> None:
        self._subscription.cancel()


class _ProbeSubscriber(Generic[T]):
    """Downstream of a processor in the whitebox checks: reports to the probe."""

    def __init__(self, probe: WhiteboxSubscriberProbe[T]) -> None:
        self._probe = probe

    def on_subscribe(self, subscription: Subscription) -> None:
        self._probe.register_on_subscribe(_ProbePuppet(subscription))

    def on_next(self, item: T) -> None:
        self._probe.register_on_next(item)

    def on_error(self, error: Exception) -> None:
        self._probe.register_on_error(error)

    def on_complete(self) -> None:
        self._probe.register_on_complete()


Execute = Callable[[Callable[[], None]], object]
"""Runs a task later, elsewhere: ``HelperPool.execute``, ``loop.call_soon_threadsafe``."""


class HelperPool:
    """A fixed pool of daemon threads running tasks in submission order.

    The asynchronous context of the kit's helper publisher, as the JVM kit's helper runs on
    an ``ExecutorService`` of 4 threads. Threads start on the first task; ``shutdown``
    ends them (a task already running is waited for, up to a timeout).
    """

    def __init__(self, workers: int = 4, name: str = "spec_tck-helper") -> None:
        """Create a pool of at most ``workers`` threads named ``name``."""
        self._workers = workers
        self._name = name
        self._cond = threading.Condition()
        # Invariant (under _cond): tasks run in submission order; _closed is set once.
        self._tasks: deque[Callable[[], None]] = deque()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def execute(self, task: Callable[[], None]) -> None:
        """Run ``task`` on a pool thread; a closed pool drops it."""
        with self._cond:
            if self._closed:
                return
            self._tasks.append(task)
            if len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._tasks and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                task = self._tasks.popleft()
            # A task reports its own failures (HelperPublisher does); the pool keeps going.
            with contextlib.suppress(BaseException):
                task()

    def shutdown(self, timeout_s: float) -> bool:
        """Drop pending tasks, end the threads; ``False`` if one still runs after the timeout."""
        with self._cond:
            self._closed = True
            self._tasks.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)


class HelperPublisher(Generic[T]):
    """A spec-compliant publisher of ``make(0) .. make(elements - 1)``, then ``on_complete``.

    ``elements == 2**63 - 1`` is an infinite stream; ``0`` completes without a request.

    With ``execute``, every signal (``on_subscribe`` too) is sent from a task it runs: the
    publisher is asynchronous, like the JVM kit's helper (an ``AsyncIterablePublisher`` on a
    thread pool). ``request`` and ``cancel`` only record and schedule. One task at a time
    signals a subscription (Rule 1.3), and a task sends at most ``BATCH`` items before it
    schedules the next one, so an endless subscription does not hold a thread. A signal that
    raises ends the subscription and is reported through ``on_overrun`` (Rule 2.13).

    Without ``execute`` it is synchronous: it signals from ``subscribe`` and ``request``;
    nested ``request`` calls only add demand and the outermost one emits (Rule 3.3, depth 1).

    With ``budget_s``, a subscription still emitting that long after ``subscribe`` stops and
    reports through ``on_overrun``: a processor that never cancels its upstream would
    otherwise keep the helper emitting forever. ``close()`` ends every subscription silently.
    """

    BATCH = 128

    def __init__(
        self,
        elements: int,
        make: Callable[[int], T],
        *,
        budget_s: float | None = None,
        on_overrun: Callable[[str], None] | None = None,
        execute: Execute | None = None,
    ) -> None:
        """Create a publisher of ``elements`` items made by ``make(index)``."""
        self._elements = elements
        self._make = make
        self._budget_s = budget_s
        self._on_overrun = on_overrun
        self._execute = execute
        self._subscriptions: list[_HelperSubscription[T]] = []

    def subscribe(self, subscriber: Subscriber[T]) -> None:
        """Attach ``subscriber`` (Rule 1.9)."""
        if subscriber is None:
            raise TypeError("subscribe(None): Rule 1.9")
        deadline = None if self._budget_s is None else time.monotonic() + self._budget_s
        subscription = _HelperSubscription(
            subscriber, self._elements, self._make, deadline, self._on_overrun, self._execute
        )
        self._subscriptions.append(subscription)
        subscription._start()

    def close(self) -> None:
        """End every subscription without a further signal (the kit's cleanup)."""
        for subscription in self._subscriptions:
            subscription._stop()
        self._subscriptions.clear()


class _HelperSubscription(Generic[T]):
    def __init__(
        self,
        subscriber: Subscriber[T],
        elements: int,
        make: Callable[[int], T],
        deadline: float | None,
        on_overrun: Callable[[str], None] | None,
        execute: Execute | None,
    ) -> None:
        self._deadline = deadline
        self._on_overrun = on_overrun
        self._execute = execute
        self._lock = threading.Lock()
        # Invariant (under _lock): _subscriber is None once done, cancelled or stopped
        # (Rule 3.13); while _busy, only the one drain running or scheduled signals.
        self._subscriber: Subscriber[T] | None = subscriber
        self._subscribed = False
        self._elements = elements
        self._make = make
        self._index = 0
        self._demand = 0
        self._busy = True  # the first drain delivers on_subscribe
        self._error: Exception | None = None

    def _start(self) -> None:
        self._schedule()

    def request(self, n: int) -> None:
        error = check_request(n)
        with self._lock:
            if self._subscriber is None:
                return
            if error is not None:
                self._error = error
            else:
                self._demand = add_cap(self._demand, n)
            if self._busy:
                return  # the running drain sends it (Rule 3.3)
            self._busy = True
        self._schedule()

    def cancel(self) -> None:
        self._stop()

    def _stop(self) -> None:
        with self._lock:
            self._subscriber = None

    def _schedule(self) -> None:
        if self._execute is None:
            self._drain()
            return
        try:
            self._execute(self._drain)
        except RuntimeError:  # the check's event loop is closed: the check is over
            self._stop()

    def _drain(self) -> None:
        try:
            self._drain_batch()
        except Exception as error:
            if self._execute is None:
                raise  # synchronous: the caller of subscribe()/request() sees it
            with self._lock:
                self._subscriber = None
                self._busy = False
            if self._on_overrun is not None:
                self._on_overrun(
                    f"Rule 2.13: a signal from the kit's helper publisher to the processor "
                    f"under test raised {type(error).__name__}: {error}"
                )

    def _drain_batch(self) -> None:
        budget = UNBOUNDED if self._execute is None else HelperPublisher.BATCH
        while True:
            with self._lock:
                subscriber = self._subscriber
                if subscriber is None:
                    self._busy = False
                    return
                first = not self._subscribed
                self._subscribed = True
                index = -1
                error: Exception | None = None
                done = False
                if not first:
                    error, self._error = self._error, None
                    done = self._index >= self._elements and self._elements != UNBOUNDED
                    if error is not None or done:
                        self._subscriber = None
                        self._busy = False
                    elif self._demand == 0:
                        self._busy = False
                        return
                    elif budget == 0:
                        break  # stays busy: the next task goes on
                    else:
                        budget -= 1
                        index = self._index
                        self._index += 1
                        if self._demand != UNBOUNDED:
                            self._demand -= 1
                        if index % 1024 == 1023 and self._overran():
                            self._subscriber = None
                            self._busy = False
                            return
            if first:
                subscriber.on_subscribe(self)
            elif error is not None:
                subscriber.on_error(error)
                return
            elif done:
                subscriber.on_complete()
                return
            else:
                subscriber.on_next(self._make(index))
        self._schedule()

    def _overran(self) -> bool:
        if self._deadline is None or time.monotonic() < self._deadline:
            return False
        if self._on_overrun is not None:
            self._on_overrun(
                f"the kit's helper publisher was still emitting ({self._index} items) when its "
                "time budget ran out: the processor under test kept requesting and never "
                "cancelled its upstream (Rules 3.12, 4.1)"
            )
        return True
