"""``IdentityProcessorVerification``: a processor checked as a publisher and as a subscriber."""

from __future__ import annotations

import functools
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from reactive_bp._core._demand import UNBOUNDED, add_cap, check_request

from ._env import ManualPublisher, ManualSubscriber, SkipCheck, WhiteboxSubscriberProbe
from ._publisher import PublisherVerification
from ._subscriber import SubscriberWhiteboxVerification, TestSignalError

if TYPE_CHECKING:
    from reactive_bp.abc import Processor, Publisher, Subscriber, Subscription

__all__ = ["HelperPublisher", "IdentityProcessorVerification"]

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

    The publisher checks feed the processor from ``create_helper_publisher``, a synchronous
    publisher of ``create_element(0..n-1)``. The subscriber checks attach a probe downstream:
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

    def create_helper_publisher(self, elements: int) -> Publisher[T]:
        """The upstream of the processor in the publisher checks."""
        return HelperPublisher(
            elements,
            self.create_element,
            budget_s=max(2.0, 5 * self.env.default_timeout_s),
            on_overrun=self.env.flop,
        )

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


class HelperPublisher(Generic[T]):
    """A synchronous, spec-compliant publisher of ``make(0) .. make(elements - 1)``.

    ``elements == 2**63 - 1`` is an infinite stream. Nested ``request`` calls only add
    demand; the outermost one emits (Rule 3.3 depth 1).

    With ``budget_s``, a subscription that is still emitting that long after subscribe
    stops and reports through ``on_overrun``: a processor that never cancels its upstream
    would otherwise keep a synchronous helper emitting forever.
    """

    def __init__(
        self,
        elements: int,
        make: Callable[[int], T],
        *,
        budget_s: float | None = None,
        on_overrun: Callable[[str], None] | None = None,
    ) -> None:
        """Create a publisher of ``elements`` items made by ``make(index)``."""
        self._elements = elements
        self._make = make
        self._budget_s = budget_s
        self._on_overrun = on_overrun

    def subscribe(self, subscriber: Subscriber[T]) -> None:
        """Attach ``subscriber`` (Rule 1.9)."""
        if subscriber is None:
            raise TypeError("subscribe(None): Rule 1.9")
        deadline = None if self._budget_s is None else time.monotonic() + self._budget_s
        subscription = _HelperSubscription(
            subscriber, self._elements, self._make, deadline, self._on_overrun
        )
        subscriber.on_subscribe(subscription)
        if self._elements == 0:
            subscription._drain()


class _HelperSubscription(Generic[T]):
    def __init__(
        self,
        subscriber: Subscriber[T],
        elements: int,
        make: Callable[[int], T],
        deadline: float | None = None,
        on_overrun: Callable[[str], None] | None = None,
    ) -> None:
        self._deadline = deadline
        self._on_overrun = on_overrun
        self._lock = threading.Lock()
        # Invariant (under _lock): _subscriber is None once done; only the thread that set
        # _emitting signals.
        self._subscriber: Subscriber[T] | None = subscriber
        self._elements = elements
        self._make = make
        self._index = 0
        self._demand = 0
        self._emitting = False
        self._error: Exception | None = None

    def request(self, n: int) -> None:
        error = check_request(n)
        with self._lock:
            if self._subscriber is None:
                return
            if error is not None:
                self._error = error
            else:
                self._demand = add_cap(self._demand, n)
        self._drain()

    def cancel(self) -> None:
        with self._lock:
            self._subscriber = None  # Rule 3.13

    def _drain(self) -> None:
        with self._lock:
            if self._emitting:
                return
            self._emitting = True
        while True:
            with self._lock:
                subscriber = self._subscriber
                if subscriber is None:
                    self._emitting = False
                    return
                error, self._error = self._error, None
                done = self._index >= self._elements and self._elements != UNBOUNDED
                if error is not None or done:
                    self._subscriber = None
                    self._emitting = False
                elif self._demand == 0:
                    self._emitting = False
                    return
                else:
                    index = self._index
                    self._index += 1
                    if self._demand != UNBOUNDED:
                        self._demand -= 1
                    if index % 1024 == 1023 and self._overran():
                        self._subscriber = None
                        self._emitting = False
                        return
            if error is not None:
                subscriber.on_error(error)
                return
            if done:
                subscriber.on_complete()
                return
            subscriber.on_next(self._make(index))

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
