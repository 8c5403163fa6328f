"""Subscriber verifications: whitebox (the subscriber reports to a probe) and blackbox."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._env import (
    ManualPublisher,
    SpecViolation,
    SubscriberPuppet,
    WhiteboxSubscriberProbe,
)
from ._verification import Verification

if TYPE_CHECKING:
    from reactive_bp.abc import Subscriber

__all__ = [
    "SubscriberBlackboxVerification",
    "SubscriberWhiteboxVerification",
    "TestSignalError",
]

T = TypeVar("T")

# The JVM kit's cap on what blackbox 2.1 sends, against a subscriber asking for "everything".
BLACKBOX_EMISSION_CAP = 512


class TestSignalError(Exception):
    """The error the kit sends with ``on_error`` to a subscriber under test."""

    __test__ = False


class _NoopSubscription:
    def request(self, n: int) -> None:
        """Ignore the request."""

    def cancel(self) -> None:
        """Ignore the cancellation."""


class _SubscriberChecks(Verification, Generic[T]):
    """What both subscriber verifications share: the stage and the common checks."""

    @abstractmethod
    def create_element(self, index: int) -> T:
        """Return the item to send as the ``index``-th element (may run on any thread)."""

    # Implemented by the two flavours.
    @abstractmethod
    def _fresh_subscriber(self) -> Subscriber[T]:
        """A new subscriber under test, not yet subscribed."""

    def _setup(self, what: str) -> tuple[ManualPublisher, Subscriber[T]]:
        subscriber = self._fresh_subscriber()
        publisher = ManualPublisher(self.env)
        try:
            self.env.call(lambda: publisher.subscribe(cast(Any, subscriber)))
        except SpecViolation:
            raise
        except Exception as error:
            publisher.fail(
                f"{what}: Rule 2.13: on_subscribe raised {type(error).__name__}: {error}"
            )
        return publisher, subscriber

    def _signal_none(self, subscriber: Subscriber[T], signal: str) -> None:
        method = getattr(subscriber, signal)
        try:
            self.env.call(lambda: method(None))
        except TypeError:
            return
        except SpecViolation:
            raise
        except Exception as error:
            raise SpecViolation(
                f"Rule 2.13: {signal}(None) raised {type(error).__name__}: {error}; it must "
                "raise TypeError"
            ) from error
        raise SpecViolation(f"Rule 2.13: {signal}(None) returned normally; it must raise TypeError")

    def _check_terminal_calls_nothing(self, terminal: str) -> None:
        what = f"Rule 2.3 ({terminal})"
        publisher, _ = self._setup(what)
        if terminal == "on_complete":
            publisher.send_completion(what)
        else:
            publisher.send_error(TestSignalError("spec_tck: test error for Rule 2.3"), what)
        # ManualPublisher flops any request()/cancel() made under the marker frame.

    def _check_second_subscription_cancelled(self, *, blackbox: bool) -> None:
        what = "Rule 2.5"
        publisher, subscriber = self._setup(what)
        second = publisher.new_subscription()
        try:
            self.env.call(lambda: subscriber.on_subscribe(second))
        except SpecViolation:
            raise
        except Exception as error:
            publisher.fail(
                f"{what}: Rule 2.13: the second on_subscribe raised {type(error).__name__}: {error}"
            )
        calls = publisher.extra_subscriptions[id(second)]
        if not self.env.wait_for(lambda: "cancel()" in calls, self.env.default_timeout_s):
            publisher.fail(
                f"{what}: a subscriber that already has a subscription must cancel() a second "
                f"one; it did not within {self.env.default_timeout_ms:g} ms "
                f"(calls on it: {calls or 'none'})"
            )
        if blackbox and any(call.startswith("request") for call in calls):
            publisher.fail(
                f"{what}: the subscriber requested from the second subscription: {calls}"
            )
        if blackbox:
            publisher.send_completion(what)


class SubscriberWhiteboxVerification(_SubscriberChecks[T], Generic[T]):
    """Checks a subscriber that reports what it receives to a probe (Rules 2.x, 3.8).

    Implement ``create_subscriber(probe)`` and ``create_element(index)``. The subscriber
    must call ``probe.register_on_subscribe(puppet)`` from ``on_subscribe``, where the
    puppet's ``trigger_request(n)`` makes it request ``n`` and ``signal_cancel()`` makes it
    cancel; and ``probe.register_on_next/on_error/on_complete`` from its signal methods.
    """

    @abstractmethod
    def create_subscriber(self, probe: WhiteboxSubscriberProbe[T]) -> Subscriber[T]:
        """Return a new subscriber under test wired to ``probe``."""

    def _fresh_subscriber(self) -> Subscriber[T]:
        probe = WhiteboxSubscriberProbe[T](self.env)
        self._probe = probe
        return self.env.call(lambda: self.create_subscriber(probe))

    def _stage(self, what: str) -> _WhiteboxStage[T]:
        publisher, subscriber = self._setup(what)
        puppet = self._probe.expect_puppet(what)
        return _WhiteboxStage(self, publisher, subscriber, self._probe, puppet)

    # -- required --------------------------------------------------------------------------

    def required_exercise_whitebox_happy_path(self) -> None:
        """Demand flows up, items flow down, cancel() flows up."""
        what = "happy path"
        stage = self._stage(what)
        stage.trigger_request(1)
        stage.trigger_request(1)
        first = stage.publisher.expect_request(f"{what}: after trigger_request(1) x2")
        stage.send_and_expect_next(what)
        stage.trigger_request(1)
        if first == 1:
            stage.publisher.expect_request(f"{what}: after the first item")
        stage.send_and_expect_next(what)
        stage.signal_cancel()
        stage.publisher.expect_cancelling(f"{what}: after signal_cancel()")

    def required_spec201_must_signal_demand_via_subscription_request(self) -> None:
        """Rule 2.1: a subscriber asks for items with request(n)."""
        stage = self._stage("Rule 2.1")
        stage.trigger_request(1)
        stage.publisher.expect_request("Rule 2.1: after trigger_request(1)")
        stage.send_and_expect_next("Rule 2.1")

    def required_spec203_must_not_call_methods_on_subscription_or_publisher_in_on_complete(
        self,
    ) -> None:
        """Rule 2.3: on_complete calls neither request() nor cancel()."""
        self._check_terminal_calls_nothing("on_complete")

    def required_spec203_must_not_call_methods_on_subscription_or_publisher_in_on_error(
        self,
    ) -> None:
        """Rule 2.3: on_error calls neither request() nor cancel()."""
        self._check_terminal_calls_nothing("on_error")

    def required_spec205_must_call_subscription_cancel_if_it_already_has_an_subscription_and_receives_another_on_subscribe_signal(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.5: a second subscription is cancelled."""
        self._check_second_subscription_cancelled(blackbox=False)

    def required_spec208_must_be_prepared_to_receive_on_next_signals_after_having_called_subscription_cancel(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.8: on_next after cancel() is handled without error."""
        what = "Rule 2.8"
        stage = self._stage(what)
        stage.trigger_request(1)
        stage.publisher.expect_request(f"{what}: after trigger_request(1)")
        stage.signal_cancel()
        stage.publisher.expect_cancelling(f"{what}: after signal_cancel()")
        stage.send_next(f"{what}: on_next after cancel() must return normally")
        stage.trigger_request(1)
        stage.trigger_request(1)

    def required_spec209_must_be_prepared_to_receive_an_on_complete_signal_with_preceding_request_call(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.9: on_complete after a request."""
        what = "Rule 2.9 (after a request)"
        stage = self._stage(what)
        stage.trigger_request(1)
        stage.publisher.send_completion(what)
        stage.probe.expect_completion(f"{what}: the probe must see on_complete")

    def required_spec209_must_be_prepared_to_receive_an_on_complete_signal_without_preceding_request_call(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.9: on_complete without any request."""
        what = "Rule 2.9 (no request)"
        stage = self._stage(what)
        stage.publisher.send_completion(what)
        stage.probe.expect_completion(f"{what}: the probe must see on_complete")

    def required_spec210_must_be_prepared_to_receive_an_on_error_signal_with_preceding_request_call(
        self,
    ) -> None:
        """Rule 2.10: on_error after a request."""
        what = "Rule 2.10 (after a request)"
        stage = self._stage(what)
        stage.trigger_request(1)
        stage.trigger_request(1)
        stage.send_error_and_expect(what)

    def required_spec210_must_be_prepared_to_receive_an_on_error_signal_without_preceding_request_call(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.10: on_error without any request."""
        what = "Rule 2.10 (no request)"
        self._stage(what).send_error_and_expect(what)

    def required_spec213_on_subscribe_must_raise_type_error_when_parameters_are_none(self) -> None:
        """Rule 2.13: on_subscribe(None) raises TypeError."""
        self._signal_none(self._fresh_subscriber(), "on_subscribe")

    def required_spec213_on_next_must_raise_type_error_when_parameters_are_none(self) -> None:
        """Rule 2.13: on_next(None) raises TypeError."""
        self._signal_none(self._stage("Rule 2.13").subscriber, "on_next")

    def required_spec213_on_error_must_raise_type_error_when_parameters_are_none(self) -> None:
        """Rule 2.13: on_error(None) raises TypeError."""
        self._signal_none(self._stage("Rule 2.13").subscriber, "on_error")

    def required_spec308_request_must_register_given_number_elements_to_be_produced(self) -> None:
        """Rule 3.8: the subscriber's requests add up."""
        what = "Rule 3.8"
        stage = self._stage(what)
        stage.trigger_request(2)
        first = stage.publisher.expect_request(f"{what}: after trigger_request(2)")
        stage.send_and_expect_next(what)
        if first < 2:
            stage.publisher.expect_request(f"{what}: the second of trigger_request(2)")
        stage.send_and_expect_next(what)
        stage.probe.expect_none(f"{what}: after the 2 requested items")
        stage.trigger_request(3)
        stage.publisher.expect_request(f"{what}: after trigger_request(3)")

    # -- untested ----------------------------------------------------------------------------

    def untested_spec202_should_asynchronously_dispatch(self) -> None:
        """Rule 2.2 is a recommendation."""

    def untested_spec204_must_consider_the_subscription_as_cancelled_after_receiving_on_complete_or_on_error(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.4 concerns internal state."""

    def untested_spec206_must_call_subscription_cancel_if_it_is_no_longer_valid(self) -> None:
        """Rule 2.6 concerns intent."""

    def untested_spec207_must_ensure_all_calls_on_its_subscription_take_place_from_the_same_thread_or_take_care_of_synchronization(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.7 cannot be provoked from outside."""

    def untested_spec211_must_make_sure_that_all_calls_on_its_methods_happen_before_the_processing_of_the_respective_events(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.11 concerns memory visibility."""

    def untested_spec212_must_not_call_on_subscribe_more_than_once_based_on_object_equality(
        self,
    ) -> None:
        """Rule 2.12 concerns the caller."""

    def untested_spec213_failing_on_signal_invocation(self) -> None:
        """Rule 2.13 (a raising signal) cannot be provoked from outside."""

    def untested_spec301_must_not_be_called_outside_subscriber_context(self) -> None:
        """Rule 3.1 concerns the caller."""

    def untested_spec310_request_may_synchronously_call_on_next_on_subscriber(self) -> None:
        """Rule 3.10 is a permission."""

    def untested_spec311_request_may_synchronously_call_on_complete_or_on_error(self) -> None:
        """Rule 3.11 is a permission."""

    def untested_spec314_cancel_may_cause_the_publisher_to_shutdown_if_no_other_subscription_exists(
        self,
    ) -> None:
        """Rule 3.14 is a permission."""

    def untested_spec315_cancel_must_not_raise_exception_and_must_signal_on_error(self) -> None:
        """Rule 3.15 cannot be provoked from outside."""

    def untested_spec316_request_must_not_raise_exception_and_must_on_error_the_subscriber(
        self,
    ) -> None:
        """Rule 3.16 cannot be provoked from outside."""


class _WhiteboxStage(Generic[T]):
    """The manual publisher, the subscriber under test, its probe and puppet, together."""

    def __init__(
        self,
        verification: SubscriberWhiteboxVerification[T],
        publisher: ManualPublisher,
        subscriber: Subscriber[T],
        probe: WhiteboxSubscriberProbe[T],
        puppet: SubscriberPuppet,
    ) -> None:
        self.verification = verification
        self.env = verification.env
        self.publisher = publisher
        self.subscriber = subscriber
        self.probe = probe
        self.puppet = puppet
        self.sent = 0

    def trigger_request(self, n: int) -> None:
        try:
            self.env.call(lambda: self.puppet.trigger_request(n))
        except SpecViolation:
            raise
        except Exception as error:
            self.probe.fail(f"puppet.trigger_request({n}) raised {type(error).__name__}: {error}")

    def signal_cancel(self) -> None:
        try:
            self.env.call(self.puppet.signal_cancel)
        except SpecViolation:
            raise
        except Exception as error:
            self.probe.fail(f"puppet.signal_cancel() raised {type(error).__name__}: {error}")

    def send_next(self, what: str) -> T:
        element = self.verification.create_element(self.sent)
        self.sent += 1
        self.publisher.send_next(element, what)
        return element

    def send_and_expect_next(self, what: str) -> None:
        element = self.send_next(what)
        seen = self.probe.expect_next(f"{what}: the probe must see the item sent")
        if seen != element:
            self.probe.fail(f"{what}: the probe saw {seen!r}, the kit sent {element!r}")

    def send_error_and_expect(self, what: str) -> None:
        error = TestSignalError(f"spec_tck: test error for {what}")
        self.publisher.send_error(error, what)
        seen = self.probe.expect_error(Exception, f"{what}: the probe must see on_error")
        if seen is not error:
            self.probe.fail(f"{what}: the probe saw {seen!r}, not the error the kit sent")


class SubscriberBlackboxVerification(_SubscriberChecks[T], Generic[T]):
    """Checks a subscriber from outside (Rules 2.x), with no cooperation from it.

    Implement ``create_subscriber()`` and ``create_element(index)``. Override
    ``trigger_request(subscriber)`` if the subscriber only requests after an outside event.
    """

    @abstractmethod
    def create_subscriber(self) -> Subscriber[T]:
        """Return a new subscriber under test."""

    def trigger_request(self, subscriber: Subscriber[T]) -> None:
        """Make ``subscriber`` request (for subscribers that wait for a stimulus)."""

    def _fresh_subscriber(self) -> Subscriber[T]:
        return self.env.call(self.create_subscriber)

    def _trigger(self, subscriber: Subscriber[T], publisher: ManualPublisher) -> None:
        try:
            self.env.call(lambda: self.trigger_request(subscriber))
        except SpecViolation:
            raise
        except Exception as error:
            publisher.fail(f"trigger_request() raised {type(error).__name__}: {error}")

    # -- required --------------------------------------------------------------------------

    def required_spec201_blackbox_must_signal_demand_via_subscription_request(self) -> None:
        """Rule 2.1: the subscriber requests; the requested items and on_complete are handled."""
        what = "Rule 2.1"
        publisher, subscriber = self._setup(what)
        self._trigger(subscriber, publisher)
        publisher.expect_request(f"{what}: the subscriber must request")
        sent = 0
        # Up to what it requested (also what it requests while this runs), at most 512,
        # and no further item once it cancelled; then on_complete (Rule 1.2 allows fewer).
        while sent < BLACKBOX_EMISSION_CAP:
            with self.env.cond:
                if sent >= publisher.total_requested or publisher.cancel_count:
                    break
            publisher.send_next(self.create_element(sent), what)
            sent += 1
        publisher.send_completion(f"{what}: after {sent} requested items")

    def required_spec203_blackbox_must_not_call_methods_on_subscription_or_publisher_in_on_complete(
        self,
    ) -> None:
        """Rule 2.3: on_complete calls neither request() nor cancel()."""
        self._check_terminal_calls_nothing("on_complete")

    def required_spec203_blackbox_must_not_call_methods_on_subscription_or_publisher_in_on_error(
        self,
    ) -> None:
        """Rule 2.3: on_error calls neither request() nor cancel()."""
        self._check_terminal_calls_nothing("on_error")

    def required_spec205_blackbox_must_call_subscription_cancel_if_it_already_has_an_subscription_and_receives_another_on_subscribe_signal(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.5: a second subscription is cancelled and never requested from."""
        self._check_second_subscription_cancelled(blackbox=True)

    def required_spec209_blackbox_must_be_prepared_to_receive_an_on_complete_signal_with_preceding_request_call(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.9: on_complete after a request returns normally."""
        what = "Rule 2.9 (after a request)"
        publisher, subscriber = self._setup(what)
        self._trigger(subscriber, publisher)
        publisher.expect_request(f"{what}: the subscriber must request")
        publisher.send_completion(what)

    def required_spec209_blackbox_must_be_prepared_to_receive_an_on_complete_signal_without_preceding_request_call(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.9: on_complete without a request returns normally."""
        what = "Rule 2.9 (no request)"
        publisher, _ = self._setup(what)
        publisher.send_completion(what)

    def required_spec210_blackbox_must_be_prepared_to_receive_an_on_error_signal_with_preceding_request_call(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.10: on_error after a request returns normally."""
        what = "Rule 2.10 (after a request)"
        publisher, subscriber = self._setup(what)
        self._trigger(subscriber, publisher)
        publisher.expect_request(f"{what}: the subscriber must request")
        publisher.send_error(TestSignalError(f"spec_tck: test error for {what}"), what)

    def required_spec210_blackbox_must_be_prepared_to_receive_an_on_error_signal_without_preceding_request_call(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.10: on_error without a request returns normally."""
        what = "Rule 2.10 (no request)"
        publisher, _ = self._setup(what)
        publisher.send_error(TestSignalError(f"spec_tck: test error for {what}"), what)

    def required_spec213_blackbox_on_subscribe_must_raise_type_error_when_parameters_are_none(
        self,
    ) -> None:
        """Rule 2.13: on_subscribe(None) raises TypeError."""
        self._signal_none(self._fresh_subscriber(), "on_subscribe")

    def required_spec213_blackbox_on_next_must_raise_type_error_when_parameters_are_none(
        self,
    ) -> None:
        """Rule 2.13: on_next(None) raises TypeError."""
        subscriber = self._fresh_subscriber()
        self.env.call(lambda: subscriber.on_subscribe(_NoopSubscription()))
        self._signal_none(subscriber, "on_next")

    def required_spec213_blackbox_on_error_must_raise_type_error_when_parameters_are_none(
        self,
    ) -> None:
        """Rule 2.13: on_error(None) raises TypeError."""
        subscriber = self._fresh_subscriber()
        self.env.call(lambda: subscriber.on_subscribe(_NoopSubscription()))
        self._signal_none(subscriber, "on_error")

    # -- untested ----------------------------------------------------------------------------

    def untested_spec202_blackbox_should_asynchronously_dispatch(self) -> None:
        """Rule 2.2 is a recommendation."""

    def untested_spec204_blackbox_must_consider_the_subscription_as_cancelled_after_receiving_on_complete_or_on_error(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.4 concerns internal state."""

    def untested_spec206_blackbox_must_call_subscription_cancel_if_it_is_no_longer_valid(
        self,
    ) -> None:
        """Rule 2.6 concerns intent."""

    def untested_spec207_blackbox_must_ensure_all_calls_on_its_subscription_take_place_from_the_same_thread_or_take_care_of_synchronization(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.7 cannot be provoked from outside."""

    def untested_spec208_blackbox_must_be_prepared_to_receive_on_next_signals_after_having_called_subscription_cancel(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.8 needs the whitebox probe."""

    def untested_spec211_blackbox_must_make_sure_that_all_calls_on_its_methods_happen_before_the_processing_of_the_respective_events(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.11 concerns memory visibility."""

    def untested_spec212_blackbox_must_not_call_on_subscribe_more_than_once_based_on_object_equality(  # noqa: E501
        self,
    ) -> None:
        """Rule 2.12 concerns the caller."""

    def untested_spec213_blackbox_failing_on_signal_invocation(self) -> None:
        """Rule 2.13 (a raising signal) cannot be provoked from outside."""

    def untested_spec301_blackbox_must_not_be_called_outside_subscriber_context(self) -> None:
        """Rule 3.1 concerns the caller."""

    def untested_spec308_blackbox_request_must_register_given_number_elements_to_be_produced(
        self,
    ) -> None:
        """Rule 3.8 needs the whitebox probe."""

    def untested_spec310_blackbox_request_may_synchronously_call_on_next_on_subscriber(
        self,
    ) -> None:
        """Rule 3.10 is a permission."""

    def untested_spec311_blackbox_request_may_synchronously_call_on_complete_or_on_error(
        self,
    ) -> None:
        """Rule 3.11 is a permission."""

    def untested_spec314_blackbox_cancel_may_cause_the_publisher_to_shutdown_if_no_other_subscription_exists(  # noqa: E501
        self,
    ) -> None:
        """Rule 3.14 is a permission."""

    def untested_spec315_blackbox_cancel_must_not_raise_exception_and_must_signal_on_error(
        self,
    ) -> None:
        """Rule 3.15 cannot be provoked from outside."""

    def untested_spec316_blackbox_request_must_not_raise_exception_and_must_on_error_the_subscriber(
        self,
    ) -> None:
        """Rule 3.16 cannot be provoked from outside."""
