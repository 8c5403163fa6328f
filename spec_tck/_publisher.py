"""``PublisherVerification``: the publisher rules, checked against a factory."""

from __future__ import annotations

import functools
import gc
import random
import threading
import time
import weakref
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

from reactive_bp._core._demand import UNBOUNDED

from ._env import ManualSubscriber, SkipCheck, SpecViolation
from ._verification import Verification

if TYPE_CHECKING:
    from reactive_bp.abc import Publisher

__all__ = ["PublisherVerification"]

T = TypeVar("T")

STOCHASTIC_ELEMENTS: Final = 10
OVERFLOW_ELEMENTS: Final = 2**31 - 1
OVERFLOW_REQUESTS: Final = 10
# (subscriber index, request count) in the JVM kit's multicast one-by-one test; 0 means
# "request(1) and expect on_complete".
MULTICAST_SCHEDULE: Final = (
    (0, 1),
    (1, 2),
    (0, 1),
    (2, 3),
    (2, 1),
    (2, 1),
    (2, 0),
    (1, 3),
    (1, 0),
    (0, 2),
    (0, 1),
    (0, 0),
)


def _moved_past(sub: ManualSubscriber[T], seen: int) -> bool:
    return sub.received != seen


def _terminated(sub: ManualSubscriber[T]) -> bool:
    return sub.terminated


def _holders(ref: weakref.ref[ManualSubscriber[T]]) -> list[str]:
    """Name what keeps the subscriber reachable, one container level deep."""
    target = ref()
    if target is None:
        return []
    names: set[str] = set()
    for holder in gc.get_referrers(target):
        kind = type(holder).__qualname__
        if kind == "frame":
            continue
        if isinstance(holder, dict | list | tuple | set | deque):
            owners = {
                type(owner).__qualname__
                for owner in gc.get_referrers(holder)
                if type(owner).__qualname__ not in ("frame", "list", "dict")
            }
            names.add(f"{kind} in {'/'.join(sorted(owners))}" if owners else kind)
        else:
            names.add(kind)
    del target
    return sorted(names)


class PublisherVerification(Verification, Generic[T]):
    """Checks a publisher against Rules 1.x and 3.x.

    Implement ``create_publisher(elements)``; it must return a publisher that emits exactly
    ``elements`` items and then completes (``2**63 - 1`` means "never completes"). Override
    ``create_failed_publisher()`` to check Rules 1.4/1.9 rejection; it returns ``None`` by
    default, which skips those checks.

    Knobs (override the methods): ``max_elements_from_publisher()``,
    ``bounded_depth_of_on_next_and_request_recursion()``, ``skip_stochastic_tests()``,
    ``iterations_per_stochastic_test()``. Set the class attribute ``asyncio = True`` for a publisher
    that needs a running event loop.

    Example::

        class TestRange(PublisherVerification[int]):
            def create_publisher(self, elements: int) -> Publisher[int]:
                return RangePublisher(elements)
    """

    # -- factories and knobs ------------------------------------------------------------

    @abstractmethod
    def create_publisher(self, elements: int) -> Publisher[T]:
        """Return a publisher of exactly ``elements`` items followed by ``on_complete``."""

    def create_failed_publisher(self) -> Publisher[T] | None:
        """Return a publisher that signals ``on_subscribe`` then ``on_error``, or ``None``."""
        return None

    def max_elements_from_publisher(self) -> int:
        """The largest stream the publisher supports; ``2**63 - 1`` means it never completes."""
        return UNBOUNDED - 1

    def bounded_depth_of_on_next_and_request_recursion(self) -> int:
        """The Rule 3.3 bound on ``request -> on_next -> request`` nesting (at least 1)."""
        return 1

    def iterations_per_stochastic_test(self) -> int:
        """How often the stochastic Rule 1.3 check repeats."""
        return 100

    # -- helpers ------------------------------------------------------------------------

    def _active(self, elements: int, *, completion: bool) -> Publisher[T]:
        limit = self.max_elements_from_publisher()
        if elements > limit:
            raise SkipCheck(
                f"needs a stream of {elements} items; max_elements_from_publisher() is {limit}"
            )
        if completion and limit >= UNBOUNDED:
            raise SkipCheck(
                "needs on_complete, but max_elements_from_publisher() == 2**63-1 says the "
                "publisher never completes"
            )
        publisher = self.env.call(lambda: self.create_publisher(elements))
        if publisher is None:
            raise SpecViolation(f"create_publisher({elements}) returned None")
        return publisher

    def _failed(self) -> Publisher[T]:
        publisher = self.env.call(self.create_failed_publisher)
        if publisher is None:
            raise SkipCheck("create_failed_publisher() returned None")
        return publisher

    def _subscriber(
        self,
        name: str = "subscriber",
        *,
        on_subscribe_hook: Callable[[ManualSubscriber[T]], None] | None = None,
        on_next_hook: Callable[[ManualSubscriber[T], T], None] | None = None,
        keep_items: bool = True,
        runaway_limit: int = 100_000,
    ) -> ManualSubscriber[T]:
        return ManualSubscriber(
            self.env,
            name,
            on_subscribe_hook=on_subscribe_hook,
            on_next_hook=on_next_hook,
            keep_items=keep_items,
            runaway_limit=runaway_limit,
        )

    def _subscribe(
        self, publisher: Publisher[T], subscriber: ManualSubscriber[T], what: str
    ) -> None:
        try:
            self.env.call(lambda: publisher.subscribe(subscriber))
        except SpecViolation:
            raise
        except Exception as error:
            subscriber.fail(
                f"{what}: Rule 1.9: subscribe() raised {type(error).__name__}: {error} instead "
                "of returning normally (a rejection must be on_subscribe then on_error)"
            )
        subscriber.expect_subscription(what)

    def _new_subscriber(
        self, publisher: Publisher[T], what: str, name: str = "subscriber"
    ) -> ManualSubscriber[T]:
        subscriber = self._subscriber(name)
        self._subscribe(publisher, subscriber, what)
        return subscriber

    def _until(self, ready: Callable[[], bool], timeout_s: float | None = None) -> bool:
        return self.env.wait_for(
            ready, self.env.default_timeout_s if timeout_s is None else timeout_s
        )

    # -- required: setup sanity and knobs -----------------------------------------------

    def required_create_publisher1_must_produce_a_stream_of_exactly_1_element(self) -> None:
        """create_publisher(1) yields one item, then on_complete."""
        what = "create_publisher(1)"
        sub = self._new_subscriber(self._active(1, completion=True), what)
        sub.request(1)
        sub.expect_next(f"{what} after request(1)")
        sub.request(1)
        sub.expect_completion(f"{what}: after its one item and request(1)")
        sub.expect_none(f"{what} after on_complete")

    def required_create_publisher3_must_produce_a_stream_of_exactly_3_elements(self) -> None:
        """create_publisher(3) yields three items one request at a time, then on_complete."""
        what = "create_publisher(3)"
        sub = self._new_subscriber(self._active(3, completion=True), what)
        for index in range(3):
            sub.request(1)
            sub.expect_next(f"{what}: item {index + 1} after request(1)")
        sub.request(1)
        sub.expect_completion(f"{what}: after its three items and request(1)")
        sub.expect_none(f"{what} after on_complete")

    def required_validate_max_elements_from_publisher(self) -> None:
        """max_elements_from_publisher() is at least 0."""
        value = self.max_elements_from_publisher()
        if type(value) is not int or value < 0:
            raise SpecViolation(f"max_elements_from_publisher() must be an int >= 0, got {value!r}")

    def required_validate_bounded_depth_of_on_next_and_request_recursion(self) -> None:
        """bounded_depth_of_on_next_and_request_recursion() is at least 1."""
        value = self.bounded_depth_of_on_next_and_request_recursion()
        if type(value) is not int or value < 1:
            raise SpecViolation(
                f"bounded_depth_of_on_next_and_request_recursion() must be an int >= 1, "
                f"got {value!r}"
            )

    # -- required: Rules 1.x ------------------------------------------------------------

    def required_spec101_subscription_request_must_result_in_the_correct_number_of_produced_elements(  # noqa: E501
        self,
    ) -> None:
        """Rule 1.1: request(1) then request(1)+request(2) yield exactly 1 then 3 items."""
        sub = self._new_subscriber(self._active(5, completion=False), "Rule 1.1")
        sub.expect_none("Rule 1.1: before any request()")
        sub.request(1)
        sub.expect_next("Rule 1.1: after request(1)")
        sub.expect_none("Rule 1.1: after request(1) was served")
        sub.request(1)
        sub.request(2)
        sub.expect_next_n(3, "Rule 1.1: after request(1) and request(2)")
        sub.expect_none("Rule 1.1: after 4 items for a total demand of 4")
        sub.cancel()

    def required_spec102_may_signal_less_than_requested_and_terminate_subscription(self) -> None:
        """Rule 1.2: request(10) of a 3-item stream yields 3 items and on_complete."""
        sub = self._new_subscriber(self._active(3, completion=True), "Rule 1.2")
        sub.request(10)
        sub.expect_next_n(3, "Rule 1.2: request(10) of a 3-item stream")
        sub.expect_completion("Rule 1.2: after all 3 items of the stream")
        sub.expect_none("Rule 1.2: after on_complete")

    def required_spec105_must_signal_on_complete_when_finite_stream_terminates(self) -> None:
        """Rule 1.5: a finite stream ends with on_complete."""
        sub = self._new_subscriber(self._active(3, completion=True), "Rule 1.5")
        for index in range(3):
            sub.request(1)
            sub.expect_next(f"Rule 1.5: item {index + 1} of 3")
        sub.request(1)
        sub.expect_completion("Rule 1.5: a finite stream must signal on_complete at its end")
        sub.expect_none("Rule 1.5: after on_complete")

    def required_spec107_must_not_emit_further_signals_once_on_complete_has_been_signalled(
        self,
    ) -> None:
        """Rule 1.7: nothing follows on_complete, even when more is requested."""
        sub = self._new_subscriber(self._active(1, completion=True), "Rule 1.7")
        sub.request(10)
        sub.expect_next("Rule 1.7: request(10) of a 1-item stream")
        sub.expect_completion("Rule 1.7: after the only item")
        sub.request(10)
        sub.expect_none("Rule 1.7: request(10) after on_complete")

    def _subscribe_none(self) -> Exception | None:
        """Call ``subscribe(None)``; return what it raised, ``None`` if it returned."""
        publisher = self._active(0, completion=False)
        try:
            self.env.call(lambda: cast(Any, publisher).subscribe(None))
        except SpecViolation:
            raise
        except Exception as error:
            return error
        return None

    def required_spec109_subscribe_must_raise_on_none_subscriber(self) -> None:
        """Rule 1.9: subscribe(None) raises to the caller (any exception; TypeError is optional).

        The JVM kit demands a ``NullPointerException``, which Java raises by itself. Python
        has no such reflex: ``None.on_subscribe(...)`` raises ``AttributeError``. So any
        exception raised synchronously satisfies the rule; returning normally breaks it.
        ``optional_spec109_subscribe_should_raise_type_error_on_none_subscriber`` checks for
        the recommended ``TypeError``.
        """
        if self._subscribe_none() is None:
            raise SpecViolation(
                "Rule 1.9: subscribe(None) returned normally; it must raise to the caller "
                "(TypeError recommended)"
            )

    def optional_spec109_subscribe_should_raise_type_error_on_none_subscriber(self) -> None:
        """Rule 1.9 (recommended): the exception subscribe(None) raises is a TypeError."""
        error = self._subscribe_none()
        if error is None:
            raise SpecViolation("Rule 1.9: subscribe(None) returned normally")
        if not isinstance(error, TypeError):
            raise SpecViolation(
                f"Rule 1.9: subscribe(None) raised {type(error).__name__}: {error}; a TypeError "
                "(the Python form of the JVM's NullPointerException) is recommended"
            )

    def required_spec109_must_issue_on_subscribe_for_non_none_subscriber(self) -> None:
        """Rule 1.9: on_subscribe arrives once, before any other signal."""
        publisher = self._active(0, completion=False)
        sub = self._subscriber()
        self._subscribe(publisher, sub, "Rule 1.9")
        if self._until(lambda: sub.subscribe_count > 1, self.env.quiet_window_s()):
            sub.fail("Rule 1.9: on_subscribe was called more than once")

    def required_spec109_may_reject_calls_to_subscribe_if_publisher_is_unable_or_unwilling_to_serve_them_rejection_must_trigger_on_error_after_on_subscribe(  # noqa: E501
        self,
    ) -> None:
        """Rule 1.9: a rejecting publisher signals on_subscribe then on_error."""
        what = "Rule 1.9 (create_failed_publisher())"
        sub = self._subscriber()
        self._subscribe(self._failed(), sub, what)
        sub.expect_error(Exception, f"{what}: a rejection is on_error after on_subscribe")
        sub.expect_none(f"{what}: after on_error")

    # -- required: Rules 3.x ------------------------------------------------------------

    def required_spec302_must_allow_synchronous_request_calls_from_on_next_and_on_subscribe(
        self,
    ) -> None:
        """Rule 3.2: request() may be called from on_subscribe and on_next."""

        def on_subscribe(sub: ManualSubscriber[T]) -> None:
            for _ in range(3):
                sub.request_direct(1)

        def on_next(sub: ManualSubscriber[T], item: T) -> None:
            if sub.received < 6:  # an infinite stream must not keep this going forever
                sub.request_direct(1)

        publisher = self._active(6, completion=False)
        sub = self._subscriber(on_subscribe_hook=on_subscribe, on_next_hook=on_next)
        self._subscribe(publisher, sub, "Rule 3.2")
        if not self._until(lambda: sub.received >= 6 or sub.terminated):
            sub.fail(
                "Rule 3.2: with request(1) x3 from on_subscribe and request(1) from each "
                f"on_next, expected 6 items within {self.env.default_timeout_ms:g} ms, "
                f"got {sub.received}"
            )
        if sub.received < 6 and not sub.errors:
            sub.fail(f"Rule 3.2: the stream ended after {sub.received} of 6 items")

    def required_spec303_must_not_allow_unbounded_recursion(self) -> None:
        """Rule 3.3: request() inside on_next does not nest deeper than the declared bound."""
        bound = self.bounded_depth_of_on_next_and_request_recursion()
        elements = bound + 1
        depth = threading.local()

        def on_next(sub: ManualSubscriber[T], item: T) -> None:
            level = getattr(depth, "level", 0) + 1
            depth.level = level
            try:
                if level > bound:
                    sub.flop(
                        f"Rule 3.3: on_next was re-entered at synchronous depth {level} "
                        f"(request() -> on_next -> request() -> on_next ...); the declared "
                        f"bound is {bound} (bounded_depth_of_on_next_and_request_recursion())"
                    )
                    return
                if sub.received < elements:
                    sub.request_direct(1)
            finally:
                depth.level = level - 1

        publisher = self._active(elements, completion=False)
        sub = self._subscriber(on_next_hook=on_next)
        self._subscribe(publisher, sub, "Rule 3.3")
        sub.request(1)
        if not self._until(lambda: sub.received >= elements or sub.terminated):
            sub.fail(
                f"Rule 3.3: expected {elements} items, one request(1) from each on_next, within "
                f"{self.env.default_timeout_ms:g} ms; got {sub.received}"
            )

    def required_spec306_after_subscription_is_cancelled_request_must_be_nops(self) -> None:
        """Rule 3.6: request() after cancel() has no effect."""
        sub = self._new_subscriber(self._active(3, completion=False), "Rule 3.6")
        sub.cancel()
        for _ in range(3):
            sub.request(1)
        sub.expect_none("Rule 3.6: request(1) x3 after cancel() must be no-ops")

    def required_spec307_after_subscription_is_cancelled_additional_cancellations_must_be_nops(
        self,
    ) -> None:
        """Rule 3.7: cancel() after cancel() has no effect and returns normally."""
        sub = self._new_subscriber(self._active(1, completion=False), "Rule 3.7")
        for _ in range(3):
            sub.cancel()
        sub.expect_none("Rule 3.7: cancel() x3 must be no-ops")

    def required_spec309_request_zero_must_signal_value_error(self) -> None:
        """Rule 3.9: request(0) signals on_error(ValueError)."""
        sub = self._new_subscriber(self._active(10, completion=False), "Rule 3.9")
        sub.request(0)
        sub.expect_error(ValueError, "Rule 3.9: request(0) must be answered with on_error")

    def required_spec309_request_negative_number_must_signal_value_error(self) -> None:
        """Rule 3.9: request(n < 0) signals on_error(ValueError)."""
        n = -random.randrange(1, UNBOUNDED)
        sub = self._new_subscriber(self._active(10, completion=False), "Rule 3.9")
        sub.request(n)
        sub.expect_error(ValueError, f"Rule 3.9: request({n}) must be answered with on_error")

    def required_spec312_cancel_must_make_the_publisher_eventually_stop_signalling(self) -> None:
        """Rule 3.12: after cancel() items stop (within the demand already granted)."""
        sub = self._new_subscriber(self._active(20, completion=False), "Rule 3.12")
        sub.request(10)
        sub.request(5)
        sub.expect_next("Rule 3.12: after request(10) and request(5)")
        sub.cancel()
        window = self.env.quiet_window_s()
        for _ in range(17):
            seen = sub.received
            if not self._until(functools.partial(_moved_past, sub, seen), window):
                return
        sub.fail(
            f"Rule 3.12: the publisher was still signalling {17 * window * 1000:g} ms after "
            "cancel()"
        )

    def required_spec313_cancel_must_make_the_publisher_eventually_drop_all_references_to_the_subscriber(  # noqa: E501
        self,
    ) -> None:
        """Rule 3.13: after cancel() the publisher no longer references the subscriber."""
        publisher = self._active(3, completion=False)
        ref, log = self._take_one_and_cancel(publisher)
        deadline = time.monotonic() + self.env.gc_timeout_ms / 1000
        while True:
            gc.collect()
            if ref() is None:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(self.env.poll_s)
        holders = _holders(ref)
        raise SpecViolation(
            f"Rule 3.13: the subscriber was still reachable {self.env.gc_timeout_ms:g} ms after "
            f"cancel() (gc.collect() retried); referenced by: {', '.join(holders) or 'unknown'}"
            f"\n{log}"
        )

    def _take_one_and_cancel(
        self, publisher: Publisher[T]
    ) -> tuple[weakref.ref[ManualSubscriber[T]], str]:
        # A frame of its own, so no local of the check keeps the subscriber alive.
        sub = self._new_subscriber(publisher, "Rule 3.13")
        sub.request(1)
        sub.expect_next("Rule 3.13: after request(1)")
        sub.cancel()
        self.env.verify_no_async_errors()
        return weakref.ref(sub), sub.describe()

    def required_spec317_must_support_a_pending_element_count_up_to_unbounded(self) -> None:
        """Rule 3.17: request(2**63-1) is valid and yields the whole stream."""
        sub = self._new_subscriber(self._active(3, completion=True), "Rule 3.17")
        sub.request(UNBOUNDED)
        sub.expect_next_n(3, "Rule 3.17: request(2**63-1) of a 3-item stream")
        sub.expect_completion("Rule 3.17: after all items with unbounded demand")
        sub.expect_none("Rule 3.17: after on_complete")

    def required_spec317_must_support_a_cumulative_pending_element_count_up_to_unbounded(
        self,
    ) -> None:
        """Rule 3.17: requests adding up to exactly 2**63-1 are valid."""
        sub = self._new_subscriber(self._active(3, completion=True), "Rule 3.17")
        half = UNBOUNDED // 2
        sub.request(half)
        sub.request(half)
        sub.request(1)
        what = "Rule 3.17: request(2**62-1) x2 + request(1) (a total of 2**63-1)"
        sub.expect_next_n(3, what)
        sub.expect_completion(f"{what}: after all items")
        sub.expect_none(f"{what}: after on_complete")

    def _overflow_demand(self) -> ManualSubscriber[T]:
        """request(1), then request(2**63-2) from each of the first 10 on_next calls, then
        cancel() from the 11th (the JVM kit's scenario). Fails on an on_error; returns the
        subscriber once it cancelled, terminated or the default timeout ran out.
        """
        calls = [0]

        def on_next(sub: ManualSubscriber[T], item: T) -> None:
            calls[0] += 1
            if calls[0] <= OVERFLOW_REQUESTS:
                sub.request_direct(UNBOUNDED - 1)
            elif calls[0] == OVERFLOW_REQUESTS + 1:
                sub.cancel_direct()

        publisher = self._active(OVERFLOW_ELEMENTS, completion=False)
        sub = self._subscriber(keep_items=False, on_next_hook=on_next, runaway_limit=10_000)
        self._subscribe(publisher, sub, "Rule 3.17")
        sub.request(1)
        self._until(lambda: sub.cancelled or sub.terminated)
        with self.env.cond:
            errors = list(sub.errors)
        if errors:
            error = errors[0]
            sub.fail(
                f"Rule 3.17: on_error({type(error).__name__}: {error}) after request(2**63-2) "
                f"from each of {min(calls[0], OVERFLOW_REQUESTS)} on_next calls; demand past "
                "2**63-1 must be treated as unbounded, not as an error"
            )
        return sub

    def required_spec317_must_not_signal_on_error_when_pending_above_unbounded(self) -> None:
        """Rule 3.17: demand past 2**63-1 is "unbounded", never an error.

        As in the JVM kit, the rule is "no on_error": a publisher that is slow to deliver
        the 11 items of the scenario passes; the optional
        ``optional_spec317_should_keep_delivering_when_pending_above_unbounded`` counts them.
        """
        self._overflow_demand()

    def optional_spec317_should_keep_delivering_when_pending_above_unbounded(self) -> None:
        """Rule 3.17: with demand past 2**63-1, the items keep coming (11 within the timeout)."""
        sub = self._overflow_demand()
        if not sub.cancelled and not sub.terminated:
            sub.fail(
                f"Rule 3.17: expected {OVERFLOW_REQUESTS + 1} items with demand past 2**63-1 "
                f"within {self.env.default_timeout_ms:g} ms; got {sub.received}"
            )

    # -- optional -----------------------------------------------------------------------

    def optional_spec104_must_signal_on_error_when_fails(self) -> None:
        """Rule 1.4: a failed publisher signals on_error (after on_subscribe, unrequested)."""
        publisher = self._failed()
        sub = self._subscriber()
        try:
            self.env.call(lambda: publisher.subscribe(sub))
        except SpecViolation:
            raise
        except Exception as error:
            raise SpecViolation(
                f"Rule 1.4: subscribe() raised {type(error).__name__}: {error} instead of "
                "signalling on_error"
            ) from error
        sub.expect_subscription("Rule 1.4")
        sub.expect_error(Exception, "Rule 1.4: a failed publisher must signal on_error")
        sub.expect_none("Rule 1.4: after on_error")

    def optional_spec105_empty_stream_must_terminate_by_signalling_on_complete(self) -> None:
        """Rule 1.5: an empty stream completes (eagerly or after a request)."""
        sub = self._new_subscriber(self._active(0, completion=True), "Rule 1.5 (empty)")
        sub.request(1)
        sub.expect_completion("Rule 1.5: an empty stream must signal on_complete")
        sub.expect_none("Rule 1.5: after on_complete")

    def optional_spec111_may_support_multi_subscribe(self) -> None:
        """Rule 1.11: two subscribers both receive on_subscribe."""
        publisher = self._active(1, completion=False)
        self._new_subscriber(publisher, "Rule 1.11", "subscriber 1")
        self._new_subscriber(publisher, "Rule 1.11", "subscriber 2")

    def optional_spec111_registered_subscribers_must_receive_on_next_or_on_complete_signals(
        self,
    ) -> None:
        """Rule 1.11: two subscribers each get an item or on_complete after request(1)."""
        publisher = self._active(1, completion=False)
        subs = [self._new_subscriber(publisher, "Rule 1.11", f"subscriber {i}") for i in (1, 2)]
        for sub in subs:
            sub.request(1)
        for sub in subs:
            if not sub._wait_pending(self.env.default_timeout_s):
                sub.fail("Rule 1.11: expected on_next or on_complete after request(1)")
            if sub.errors:
                sub.verify_no_unexpected_error()

    def _multicast_upfront(self, elements: int, *, complete: bool) -> None:
        publisher = self._active(elements, completion=complete)
        what = "Rule 1.11 (multicast)"
        subs = [self._new_subscriber(publisher, what, f"subscriber {i}") for i in (1, 2, 3)]
        for sub in subs:
            sub.request(elements + 1)
        sequences = [sub.expect_next_n(elements, what) for sub in subs]
        if complete:
            for sub in subs:
                sub.expect_completion(f"{what}: after {elements} items")
        if any(seq != sequences[0] for seq in sequences):
            raise SpecViolation(f"{what}: the subscribers saw different sequences: {sequences}")

    def optional_spec111_multicast_must_produce_the_same_elements_in_the_same_sequence_to_all_of_its_subscribers_when_requesting_one_by_one(  # noqa: E501
        self,
    ) -> None:
        """Rule 1.11: three subscribers with staggered demand see the same 5 items."""
        publisher = self._active(5, completion=True)
        what = "Rule 1.11 (multicast, staggered demand)"
        subs = [self._new_subscriber(publisher, what, f"subscriber {i}") for i in (1, 2, 3)]
        seen: list[list[T]] = [[], [], []]
        # The JVM kit's schedule: the subscribers take turns with different batch sizes, so
        # each one is served while the others are behind or ahead of it. A count of 0 means
        # request(1) and expect on_complete.
        for index, count in MULTICAST_SCHEDULE:
            sub = subs[index]
            sub.request(count or 1)
            if count:
                seen[index].extend(
                    sub.expect_next_n(count, f"{what}: {sub.name} after request({count})")
                )
            else:
                sub.expect_completion(f"{what}: {sub.name} after all 5 items and request(1)")
        for index in (1, 2):
            if seen[index] != seen[0]:
                raise SpecViolation(
                    f"{what}: {subs[index].name} saw {seen[index]}, subscriber 1 saw {seen[0]}"
                )

    def optional_spec111_multicast_must_produce_the_same_elements_in_the_same_sequence_to_all_of_its_subscribers_when_requesting_many_upfront(  # noqa: E501
        self,
    ) -> None:
        """Rule 1.11: three subscribers requesting 4 upfront see the same 3 items."""
        self._multicast_upfront(3, complete=False)

    def optional_spec111_multicast_must_produce_the_same_elements_in_the_same_sequence_to_all_of_its_subscribers_when_requesting_many_upfront_and_complete_as_expected(  # noqa: E501
        self,
    ) -> None:
        """Rule 1.11: ... and all three complete."""
        self._multicast_upfront(3, complete=True)

    def optional_spec309_request_negative_number_may_signal_value_error_with_specific_message(
        self,
    ) -> None:
        """Rule 3.9 (SHOULD): the error message cites the rule."""
        sub = self._new_subscriber(self._active(10, completion=False), "Rule 3.9")
        sub.request(-1)
        error = sub.expect_error(ValueError, "Rule 3.9: request(-1) must be answered with on_error")
        text = str(error).lower()
        if not any(hint in text for hint in ("3.9", "non-positive", "negative")):
            raise SpecViolation(
                "Rule 3.9: the ValueError message should cite Rule 3.9 or say that "
                f"non-positive requests are illegal; got {str(error)!r}"
            )

    # -- stochastic ---------------------------------------------------------------------

    def stochastic_spec103_must_signal_on_methods_sequentially(self) -> None:
        """Rule 1.3: no two threads are inside signals to one subscriber at once."""

        def on_subscribe(sub: ManualSubscriber[T]) -> None:
            sub.request_direct(1)

        def on_next(sub: ManualSubscriber[T], item: T) -> None:
            sub.request_direct(1)

        timeout = STOCHASTIC_ELEMENTS * self.env.default_timeout_s
        for iteration in range(self.iterations_per_stochastic_test()):
            publisher = self._active(STOCHASTIC_ELEMENTS, completion=True)
            sub = self._subscriber(
                f"subscriber #{iteration}", on_subscribe_hook=on_subscribe, on_next_hook=on_next
            )
            self._subscribe(publisher, sub, "Rule 1.3")
            if not self._until(functools.partial(_terminated, sub), timeout):
                sub.fail(
                    f"Rule 1.3 (iteration {iteration}): expected {STOCHASTIC_ELEMENTS} items and "
                    f"on_complete within {timeout * 1000:g} ms, got {sub.received} items"
                )
            sub.verify_no_unexpected_error()

    # -- untested -------------------------------------------------------------------------

    def untested_spec106_must_consider_subscription_cancelled_after_on_error_or_on_complete_has_been_called(  # noqa: E501
        self,
    ) -> None:
        """Rule 1.6 concerns internal state."""

    def untested_spec107_must_not_emit_further_signals_once_on_error_has_been_signalled(
        self,
    ) -> None:
        """Rule 1.7 after on_error needs a publisher that errors on demand."""

    def untested_spec108_possibly_cancelled_subscription_should_not_receive_on_error_or_on_complete_signals(  # noqa: E501
        self,
    ) -> None:
        """Rule 1.8 allows propagation delay."""

    def untested_spec109_subscribe_should_not_raise_non_fatal_exception(self) -> None:
        """Rule 1.9 cannot be provoked from outside."""

    def untested_spec110_reject_a_subscription_request_if_the_same_subscriber_subscribes_twice(
        self,
    ) -> None:
        """Rule 1.10 concerns the caller."""

    def untested_spec304_request_should_not_perform_heavy_computations(self) -> None:
        """Rule 3.4 has no measurable threshold."""

    def untested_spec305_cancel_must_not_synchronously_perform_heavy_computation(self) -> None:
        """Rule 3.5 has no measurable threshold."""
