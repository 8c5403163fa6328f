"""The rule catalogue: rule texts, how a check's id encodes its rule, and check results.

A check is a method of a verification class whose name starts with its kind:

* ``required_`` -- a MUST rule (or a self-check of the knobs); a failure FAILS.
* ``optional_`` -- a MAY/SHOULD rule, or one that needs extra configuration; a failure
  is reported as SKIPPED with the reason.
* ``stochastic_`` -- a check that may pass by luck; it repeats, and
  ``skip_stochastic_tests()`` turns it off.
* ``untested_`` -- a rule no black-box harness can check; always reported as UNTESTED
  with the rule's text.

After the kind comes ``specXYY_`` naming the rule (``spec309`` is Rule 3.9, ``spec317`` is
Rule 3.17), then a description. The id of a check is its method name; the CLI, the pytest
plugin and the JSON report all use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "RULE_TEXTS",
    "CheckKind",
    "RuleCase",
    "RuleResult",
    "Status",
    "parse_case",
]

CheckKind = Literal["required", "optional", "stochastic", "untested"]
Status = Literal["passed", "failed", "skipped", "untested"]

RULE_TEXTS: Final[dict[str, str]] = {
    "1.1": "The number of on_next signals never exceeds the total demand requested.",
    "1.2": "A publisher may signal fewer items than requested, then end the stream.",
    "1.3": "on_subscribe, on_next, on_error and on_complete to one subscriber are serial.",
    "1.4": "A failing publisher signals on_error.",
    "1.5": "A finite stream that ends successfully signals on_complete.",
    "1.6": "After on_error or on_complete the subscription counts as cancelled.",
    "1.7": "After a terminal signal no further signal happens.",
    "1.8": "After cancel() signals eventually stop.",
    "1.9": (
        "subscribe() calls on_subscribe before any other signal and returns normally; "
        "subscribe(None) raises TypeError; any other rejection is on_error after on_subscribe."
    ),
    "1.10": "subscribe() may be called many times, each time with a different subscriber.",
    "1.11": "A publisher may support several subscribers (unicast or multicast).",
    "2.1": "A subscriber signals demand with request(n) to receive on_next.",
    "2.2": "A subscriber whose processing is slow should dispatch signals asynchronously.",
    "2.3": "on_complete and on_error never call the subscription or the publisher.",
    "2.4": "After on_complete/on_error the subscriber considers the subscription cancelled.",
    "2.5": "A subscriber with an active subscription cancels any new one it receives.",
    "2.6": "A subscriber cancels a subscription it no longer needs.",
    "2.7": "A subscriber's calls to request() and cancel() are serial.",
    "2.8": "A subscriber is prepared for on_next after it called cancel().",
    "2.9": "A subscriber is prepared for on_complete with or without a preceding request.",
    "2.10": "A subscriber is prepared for on_error with or without a preceding request.",
    "2.11": "Signal calls happen-before the subscriber processes them.",
    "2.12": "on_subscribe is called at most once per subscriber.",
    "2.13": ("Signal methods return normally; a None argument raises TypeError to the caller."),
    "3.1": "request() and cancel() are only called from within the subscriber's context.",
    "3.2": "request() may be called synchronously from on_next and on_subscribe.",
    "3.3": "request() bounds the synchronous recursion between publisher and subscriber.",
    "3.4": "request() returns promptly.",
    "3.5": "cancel() returns promptly, is idempotent and thread-safe.",
    "3.6": "After cancel(), request(n) is a no-op.",
    "3.7": "After cancel(), cancel() is a no-op.",
    "3.8": "While not cancelled, request(n) adds n to the demand.",
    "3.9": "While not cancelled, request(n <= 0) signals on_error with a ValueError.",
    "3.10": "While not cancelled, request() may call on_next synchronously.",
    "3.11": "While not cancelled, request() may call on_complete/on_error synchronously.",
    "3.12": "While not cancelled, cancel() makes the publisher eventually stop signalling.",
    "3.13": "While not cancelled, cancel() makes the publisher eventually drop the subscriber.",
    "3.14": "cancel() may shut a stateful publisher down when no subscription is left.",
    "3.15": "cancel() returns normally.",
    "3.16": "request() returns normally.",
    "3.17": (
        "A subscription supports demand up to 2**63-1 and any number of request() calls; "
        "demand at or above 2**63-1 may be treated as unbounded and is never an error."
    ),
    "4.1": "A processor is both a subscriber and a publisher and obeys both contracts.",
    "4.2": "A processor either recovers from on_error or passes it on to its subscribers.",
}

_CASE_NAME: Final = re.compile(r"^(required|optional|stochastic|untested)_(?:spec(\d)(\d\d)_)?")


@dataclass(frozen=True, slots=True)
class RuleCase:
    """One check of a verification class.

    Attributes:
        id: The method name, e.g. ``required_spec309_request_zero_must_signal_value_error``.
        kind: ``required``, ``optional``, ``stochastic`` or ``untested``.
        rule: The rule number (``"3.9"``), or ``None`` for a self-check.
    """

    id: str
    kind: CheckKind
    rule: str | None

    @property
    def rule_text(self) -> str:
        """The rule's text in one line (empty for a self-check)."""
        return RULE_TEXTS.get(self.rule, "") if self.rule else ""

    def matches(self, pattern: str) -> bool:
        """Whether ``pattern`` selects this check (``309``, ``spec309``, ``3.9``, a prefix)."""
        if pattern in self.id:
            return True
        return self.rule is not None and pattern in (self.rule, f"rule{self.rule}")


def parse_case(name: str) -> RuleCase | None:
    """Return the check a method name stands for, or ``None`` if it is not a check."""
    match = _CASE_NAME.match(name)
    if match is None:
        return None
    kind: CheckKind = match.group(1)  # type: ignore[assignment]
    rule = None
    if match.group(2) is not None:
        rule = f"{int(match.group(2))}.{int(match.group(3))}"
    return RuleCase(id=name, kind=kind, rule=rule)


@dataclass(frozen=True, slots=True)
class RuleResult:
    """The outcome of one check.

    Attributes:
        id: The check's id.
        kind: The check's kind.
        rule: The rule number, if any.
        status: ``passed``, ``failed``, ``skipped`` or ``untested``.
        message: Why it failed or was skipped (empty when it passed).
        duration_s: Wall time the check took.
    """

    id: str
    kind: CheckKind
    rule: str | None
    status: Status
    message: str
    duration_s: float

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "id": self.id,
            "kind": self.kind,
            "rule": self.rule,
            "status": self.status,
            "message": self.message,
            "duration_s": round(self.duration_s, 4),
        }
