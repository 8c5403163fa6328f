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

Every rule also has one line saying how to fix a failure of it (``how_to_fix``), and so
does every condition a failure can name without citing a rule (a blocked event loop, a
check over its time budget, the memory cap, a dead process, a hung factory:
``CONDITION_FIXES``). A failed ``RuleResult`` ends its message with that line, so each
report (pytest, the CLI, JSON, ``format_results``) tells the reader what to change, not
only what went wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "CONDITION_FIXES",
    "FIX_PREFIX",
    "RULE_FIXES",
    "RULE_TEXTS",
    "SELF_CHECK_FIXES",
    "CheckKind",
    "RuleCase",
    "RuleResult",
    "Status",
    "condition_fix",
    "failed_rule",
    "how_to_fix",
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
        "subscribe(None) raises (TypeError recommended); any other rejection is on_error "
        "after on_subscribe."
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
"""Each rule's text in one line, keyed by rule id (``"3.9"``): what an untested rule reports."""

RULE_FIXES: Final[dict[str, str]] = {
    "1.1": "count demand per subscription and stop emitting at zero",
    "1.2": "when the source runs dry, signal on_complete (or on_error) even with demand left",
    "1.3": (
        "serialize the signals to one subscriber: emit from one drain loop guarded by a "
        "work-in-progress counter or a lock, never from two threads at once"
    ),
    "1.4": (
        "report a failure of the source as on_error after on_subscribe, never as an "
        "exception out of subscribe() or request()"
    ),
    "1.5": "call on_complete after the last item of a finite stream, even if nothing is requested",
    "1.6": "after on_error or on_complete, mark the subscription cancelled and drop the subscriber",
    "1.7": "record the terminal signal once and check it before every signal: nothing follows it",
    "1.8": "check a cancelled flag before every signal and stop once cancel() was called",
    "1.9": (
        "call on_subscribe first and exactly once, before any other signal, and return from "
        "subscribe() promptly; raise TypeError for subscribe(None); report a refusal as "
        "on_error after on_subscribe"
    ),
    "1.10": "keep per-subscriber state in the subscription, not the publisher",
    "1.11": (
        "give every subscriber its own subscription and demand, and send all of them the same "
        "items in the same order"
    ),
    "2.1": "call subscription.request(n) (in on_subscribe or later) to receive items",
    "2.2": "hand slow work to another thread or a queue instead of blocking in on_next",
    "2.3": "only record the ending in on_complete/on_error: call neither request() nor cancel()",
    "2.4": "after on_complete/on_error treat the subscription as cancelled and drop it",
    "2.5": "in on_subscribe, cancel the new subscription when one is already active",
    "2.6": "call cancel() on a subscription that is no longer needed",
    "2.7": "serialize calls to request() and cancel(): one thread at a time (a lock or a queue)",
    "2.8": "after cancel(), accept and ignore further on_next calls without raising",
    "2.9": "accept on_complete at any time, also before any request() and with no items",
    "2.10": "accept on_error at any time, also before any request()",
    "2.11": "hand what a signal method received to another thread through a queue or a lock",
    "2.12": "never call on_subscribe twice on one subscriber: refuse a second subscribe() of it",
    "2.13": (
        "never signal None; in signal methods raise TypeError for a None argument and "
        "otherwise return normally (report failures by cancelling, not by raising)"
    ),
    "3.1": "let only the subscriber that owns a subscription call its request() and cancel()",
    "3.2": (
        "let request() be called from on_next and on_subscribe: add the demand and let the "
        "running drain loop emit"
    ),
    "3.3": (
        "when request() arrives while already emitting, add the demand and return; the "
        "running loop picks it up (a trampolined drain loop)"
    ),
    "3.4": "keep request() cheap: add the demand and schedule work, compute nothing heavy",
    "3.5": "keep cancel() cheap, idempotent and thread-safe: set a flag atomically",
    "3.6": "check the cancelled flag first in request(): after cancel() it adds no demand",
    "3.7": "check the cancelled flag first in cancel(): a second cancel() does nothing",
    "3.8": "add every request(n) to the outstanding demand and deliver up to that many items",
    "3.9": (
        "for request(n <= 0) signal on_error with a ValueError citing Rule 3.9; never raise "
        "it to the caller"
    ),
    "3.10": "allow on_next to be signalled synchronously from inside request()",
    "3.11": "allow on_complete/on_error to be signalled synchronously from inside request()",
    "3.12": "on cancel() set a flag the emitting loop checks before every signal, then stop",
    "3.13": (
        "on cancel() drop every reference to the subscriber (clear the field, remove it "
        "from lists and callbacks)"
    ),
    "3.14": "release a stateful publisher's resources only when its last subscription is cancelled",
    "3.15": "return normally from cancel(): catch what cleaning up raises",
    "3.16": "return normally from request(): report problems through on_error",
    "3.17": (
        "add demand with saturation at 2**63 - 1 (add_cap) and treat that as unbounded; "
        "never fail on large demand"
    ),
    "4.1": (
        "request upstream whenever downstream demand arrives, even long after subscribing, "
        "and obey the publisher and subscriber rules on both sides"
    ),
    "4.2": "pass an upstream on_error on to every subscriber at once, or recover from it",
}
"""How to fix a failure of each rule, in one line (the last line of a failed result)."""

SELF_CHECK_FIXES: Final[dict[str, str]] = {
    "required_create_publisher": (
        "make create_publisher(n) return a publisher of exactly n items followed by on_complete"
    ),
    "required_validate_max_elements_from_publisher": (
        "return an int >= 0 from max_elements_from_publisher() (2**63 - 1: never completes)"
    ),
    "required_validate_bounded_depth_of_on_next_and_request_recursion": (
        "return an int >= 1 from bounded_depth_of_on_next_and_request_recursion()"
    ),
    "required_exercise_whitebox_happy_path": (
        "from the subscriber call probe.register_on_subscribe(puppet) in on_subscribe and "
        "register_on_next/_on_error/_on_complete in the signals; honour the puppet's calls"
    ),
}
"""How to fix the checks of the kit's own factories and knobs (no rule), by id prefix."""

CONDITION_FIXES: Final[dict[str, str]] = {
    r"^the event loop was blocked\b": (
        "never block the event loop thread: run blocking work in a thread (asyncio.to_thread) "
        "and keep queues bounded"
    ),
    r"^the check did not finish within\b": (
        "make the code under test progress promptly (each item within the default timeout, "
        "no busy wait in its calls); if it is only slow, raise SPEC_TCK_DEFAULT_TIMEOUT_MS "
        "(--timeout-ms): the check's budget grows with it"
    ),
    r"^the memory of the process running the check grew past\b": (
        "produce and buffer only what was requested, and stop at cancel(): the code under test "
        "kept allocating (raise --max-memory-mb only if the stream really needs that much)"
    ),
    r"^the process running the check ended unexpectedly\b": (
        "never end the process from the code under test (sys.exit, os._exit, a crash in an "
        "extension): report a failure with on_error"
    ),
    r" did not return within [\d.]+ s \(the kit cannot go on until it returns\)": (
        "return promptly from the factories and puppet calls: build the object and hand it "
        "over, never wait there for a signal or another thread (connect in subscribe() or on "
        "the first request())"
    ),
}
"""How to fix a failure whose first line cites no rule but names a condition of its own (a
blocked event loop, a check over its time budget, the memory cap, a dead process, a factory
that never returns), by a regular expression searched in that line. Such a failure is about
the condition, not the check's own rule."""

FIX_PREFIX: Final = "how to fix"
_GENERIC_FIX: Final = "compare the factories and knobs with their docstrings and the message above"

_CITED_RULE: Final = re.compile(r"\bRules? (\d\.\d+)")
_CONDITIONS: Final = [(re.compile(pattern), fix) for pattern, fix in CONDITION_FIXES.items()]


def condition_fix(message: str) -> str | None:
    """The fix of the rule-less condition the first line of ``message`` names, if any."""
    first = message.partition("\n")[0]
    return next((fix for pattern, fix in _CONDITIONS if pattern.search(first)), None)


def how_to_fix(rule: str | None, check_id: str = "", message: str = "") -> str:
    """One line saying how to fix a failure.

    Args:
        rule: The rule that failed (``"1.1"``), or ``None`` for a self-check or a failure
            about a condition (``failed_rule`` says which).
        check_id: The check's id, used when ``rule`` is ``None`` or unknown.
        message: The failure message, for a condition it names (``CONDITION_FIXES``).

    Returns:
        The fix; a generic hint for a self-check without a listed fix.
    """
    if rule is not None and rule in RULE_FIXES:
        return RULE_FIXES[rule]
    condition = condition_fix(message)
    if condition is not None:
        return condition
    for prefix, fix in SELF_CHECK_FIXES.items():
        if check_id.startswith(prefix):
            return fix
    return _GENERIC_FIX


def failed_rule(message: str, rule: str | None) -> str | None:
    """The rule a failure message is about.

    A check may fail on another rule than its own: a publisher that over-delivers fails the
    Rule 3.17 checks with "Rule 1.1: ...". The check's own rule wins when the message's
    first line cites it, or cites none and names no condition of its own; otherwise the
    first rule that line cites. A first line that cites no rule but names a condition
    (``CONDITION_FIXES``: "the event loop was blocked ...") is about no rule.

    Args:
        message: The failure message.
        rule: The failed check's own rule, if any.

    Returns:
        The rule number, or ``None`` for a self-check or a condition whose message cites no
        rule.
    """
    first = message.partition("\n")[0]
    cited = _CITED_RULE.findall(first)
    if cited:
        return rule if rule in cited else cited[0]
    return None if condition_fix(first) is not None else rule


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

    A failed result's message ends with one ``how to fix ...`` line, added on creation
    unless the message has one already, so every report shows it.

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

    def __post_init__(self) -> None:
        """End a failure's message with its fix line."""
        if self.status != "failed":
            return
        lines = self.message.splitlines()
        if any(line.startswith(FIX_PREFIX) for line in lines):
            return
        object.__setattr__(self, "message", "\n".join([*lines, self.fix_line]))

    @property
    def fix(self) -> str:
        """How to fix this failure, in one line (empty unless it failed)."""
        if self.status != "failed":
            return ""
        return how_to_fix(failed_rule(self.message, self.rule), self.id, self.message)

    @property
    def fix_line(self) -> str:
        """The line a failed message ends with: ``how to fix (Rule 1.1): ...``."""
        if self.status != "failed":
            return ""
        rule = failed_rule(self.message, self.rule)
        where = f" (Rule {rule})" if rule in RULE_FIXES else ""
        return f"{FIX_PREFIX}{where}: {self.fix}"

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "id": self.id,
            "kind": self.kind,
            "rule": self.rule,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            "duration_s": round(self.duration_s, 4),
        }
