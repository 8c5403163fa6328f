"""spec_tck: a Reactive Streams compliance kit for Python publishers, subscribers and processors.

Subclass a verification and implement its factories; every check is named after the rule it
verifies (``required_spec309_request_zero_must_signal_value_error``)::

    class TestMyPublisher(PublisherVerification[int]):
        def create_publisher(self, elements: int) -> Publisher[int]:
            return MyPublisher(range(elements))

Under pytest (the ``reactive_bp_tck`` plugin) such a class yields one test per check:
required checks fail, optional ones skip with the reason, untested rules skip with the
rule's text. Without pytest, ``verification.run()`` returns a ``RuleResult`` per check and
``python -m spec_tck MODULE:FACTORY`` runs the publisher checks from the command line.

``DemandVerification`` checks an operator's demand handling with Hypothesis-generated
request/cancel schedules. Hypothesis (the ``tck`` extra) is imported only when schedules are
generated, so importing this package, the pytest plugin and ``python -m spec_tck`` need
nothing beyond reactive_bp itself.

Every failure ends with one line saying how to fix it (``how_to_fix(rule)``).
"""

from ._demand_checker import (
    SAME_AS_DOWNSTREAM as SAME_AS_DOWNSTREAM,
)
from ._demand_checker import (
    UNBOUNDED_BY_DESIGN as UNBOUNDED_BY_DESIGN,
)
from ._demand_checker import (
    Cancel as Cancel,
)
from ._demand_checker import (
    Complete as Complete,
)
from ._demand_checker import (
    DemandVerification as DemandVerification,
)
from ._demand_checker import (
    DemandViolation as DemandViolation,
)
from ._demand_checker import (
    Emit as Emit,
)
from ._demand_checker import (
    Fail as Fail,
)
from ._demand_checker import (
    Request as Request,
)
from ._demand_checker import (
    Step as Step,
)
from ._demand_checker import (
    Unbounded as Unbounded,
)
from ._demand_checker import (
    UpstreamBound as UpstreamBound,
)
from ._demand_checker import (
    UpstreamError as UpstreamError,
)
from ._demand_checker import (
    per_output as per_output,
)
from ._demand_checker import (
    schedules as schedules,
)
from ._demand_checker import (
    verify_operator_demand as verify_operator_demand,
)
from ._env import (
    CALL_TIMEOUT_ENV as CALL_TIMEOUT_ENV,
)
from ._env import (
    DEFAULT_TIMEOUT_ENV as DEFAULT_TIMEOUT_ENV,
)
from ._env import (
    GC_TIMEOUT_ENV as GC_TIMEOUT_ENV,
)
from ._env import (
    NO_SIGNALS_TIMEOUT_ENV as NO_SIGNALS_TIMEOUT_ENV,
)
from ._env import (
    POLL_TIMEOUT_ENV as POLL_TIMEOUT_ENV,
)
from ._env import (
    QUIET_ENV as QUIET_ENV,
)
from ._env import (
    ManualPublisher as ManualPublisher,
)
from ._env import (
    ManualSubscriber as ManualSubscriber,
)
from ._env import (
    SkipCheck as SkipCheck,
)
from ._env import (
    SpecViolation as SpecViolation,
)
from ._env import (
    SubscriberPuppet as SubscriberPuppet,
)
from ._env import (
    TestEnvironment as TestEnvironment,
)
from ._env import (
    WhiteboxSubscriberProbe as WhiteboxSubscriberProbe,
)
from ._processor import (
    HelperPool as HelperPool,
)
from ._processor import (
    HelperPublisher as HelperPublisher,
)
from ._processor import (
    IdentityProcessorVerification as IdentityProcessorVerification,
)
from ._publisher import PublisherVerification as PublisherVerification
from ._rules import (
    RULE_FIXES as RULE_FIXES,
)
from ._rules import (
    RULE_TEXTS as RULE_TEXTS,
)
from ._rules import (
    RuleCase as RuleCase,
)
from ._rules import (
    RuleResult as RuleResult,
)
from ._rules import (
    how_to_fix as how_to_fix,
)
from ._subscriber import (
    SubscriberBlackboxVerification as SubscriberBlackboxVerification,
)
from ._subscriber import (
    SubscriberWhiteboxVerification as SubscriberWhiteboxVerification,
)
from ._subscriber import (
    TestSignalError as TestSignalError,
)
from ._verification import Verification as Verification
from ._verification import format_results as format_results

__all__ = [
    "CALL_TIMEOUT_ENV",
    "DEFAULT_TIMEOUT_ENV",
    "GC_TIMEOUT_ENV",
    "NO_SIGNALS_TIMEOUT_ENV",
    "POLL_TIMEOUT_ENV",
    "QUIET_ENV",
    "RULE_FIXES",
    "RULE_TEXTS",
    "SAME_AS_DOWNSTREAM",
    "UNBOUNDED_BY_DESIGN",
    "Cancel",
    "Complete",
    "DemandVerification",
    "DemandViolation",
    "Emit",
    "Fail",
    "HelperPool",
    "HelperPublisher",
    "IdentityProcessorVerification",
    "ManualPublisher",
    "ManualSubscriber",
    "PublisherVerification",
    "Request",
    "RuleCase",
    "RuleResult",
    "SkipCheck",
    "SpecViolation",
    "Step",
    "SubscriberBlackboxVerification",
    "SubscriberPuppet",
    "SubscriberWhiteboxVerification",
    "TestEnvironment",
    "TestSignalError",
    "Unbounded",
    "UpstreamBound",
    "UpstreamError",
    "Verification",
    "WhiteboxSubscriberProbe",
    "format_results",
    "how_to_fix",
    "per_output",
    "schedules",
    "verify_operator_demand",
]
