"""The base of every verification class: finding its checks and running one of them.

Nothing here imports pytest: a check raises ``SpecViolation`` (an ``AssertionError``) to
fail and ``SkipCheck`` to skip, and ``run_rule`` turns that into a ``RuleResult``. The
pytest plugin and the CLI are thin layers over ``run_rule``.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC
from collections.abc import Iterable
from typing import ClassVar

from ._env import SkipCheck, SpecViolation, TestEnvironment
from ._rules import RuleCase, RuleResult, Status, parse_case

__all__ = ["Verification", "format_results"]


class Verification(ABC):  # noqa: B024 -- abstract in spirit; subclasses add the factories
    """Common machinery of the verification classes.

    Subclass one of ``PublisherVerification``, ``SubscriberWhiteboxVerification``,
    ``SubscriberBlackboxVerification`` or ``IdentityProcessorVerification`` rather than
    this class.

    Attributes:
        asyncio: Set to ``True`` when the code under test must run on an asyncio event loop.
            The kit then runs a loop in a background thread for each check and calls the
            factories, ``subscribe``, ``request``, ``cancel`` and the signals on it.
        env: The ``TestEnvironment`` (timeouts, error list).
    """

    asyncio: ClassVar[bool] = False

    def __init__(self, env: TestEnvironment | None = None) -> None:
        """Create a verification; ``env`` defaults to one configured from env vars."""
        self.env = env if env is not None else TestEnvironment()
        # Sticky across checks: once the code under test signalled from another thread,
        # every "nothing more happens" check waits the no-signals window.
        self._saw_foreign_signal = False

    # -- knobs shared by all verifications --------------------------------------------

    def skip_stochastic_tests(self) -> bool:
        """Return ``True`` to skip the ``stochastic_`` checks."""
        return False

    # -- the checks -------------------------------------------------------------------

    @classmethod
    def rule_cases(cls) -> list[RuleCase]:
        """Every check of this class, bases first, in definition order."""
        found: dict[str, RuleCase] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                case = parse_case(name)
                if case is not None and callable(value) and name not in found:
                    found[name] = case
        return list(found.values())

    @classmethod
    def select(cls, patterns: Iterable[str] | None = None) -> list[RuleCase]:
        """The checks matching any of ``patterns`` (all of them when ``None``)."""
        cases = cls.rule_cases()
        if patterns is None:
            return cases
        wanted = list(patterns)
        return [case for case in cases if any(case.matches(p) for p in wanted)]

    def run_rule(self, rule_id: str) -> RuleResult:
        """Run one check and return its result (never raises for a failing check)."""
        case = next((c for c in self.rule_cases() if c.id == rule_id), None)
        if case is None:
            raise KeyError(f"{type(self).__name__} has no check named {rule_id!r}")
        started = time.monotonic()

        def result(status: Status, message: str = "") -> RuleResult:
            return RuleResult(
                id=case.id,
                kind=case.kind,
                rule=case.rule,
                status=status,
                message=message,
                duration_s=time.monotonic() - started,
            )

        if case.kind == "untested":
            return result(
                "untested", f"Rule {case.rule}: {case.rule_text} Not verified by this kit."
            )
        if case.kind == "stochastic" and self.skip_stochastic_tests():
            return result("skipped", "stochastic checks are off (skip_stochastic_tests())")
        status: Status = "passed"
        message = ""
        try:
            self.env.begin_check(
                use_asyncio=type(self).asyncio, saw_foreign_signal=self._saw_foreign_signal
            )
            try:
                getattr(self, case.id)()
                self.env.verify_no_async_errors()
            finally:
                self._saw_foreign_signal |= self.env.saw_foreign_signal
                self.env.end_check()
        except SkipCheck as skip:
            status, message = "skipped", str(skip)
        except AssertionError as failure:
            status, message = "failed", str(failure) or repr(failure)
        except Exception as error:
            frames = traceback.extract_tb(error.__traceback__)
            where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            status = "failed"
            message = f"unexpected {type(error).__name__}: {error}{where}"
        if status == "failed" and case.kind == "optional":
            status, message = "skipped", f"optional rule not met: {message}"
        return result(status, message)

    def run(self, rules: Iterable[str] | None = None) -> list[RuleResult]:
        """Run the checks matching ``rules`` (all when ``None``) and return their results."""
        return [self.run_rule(case.id) for case in self.select(rules)]

    def verify(self, rules: Iterable[str] | None = None) -> list[RuleResult]:
        """Run the checks; raise ``SpecViolation`` listing every failed one, if any."""
        results = self.run(rules)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise SpecViolation(
                f"{len(failed)} required check(s) failed:\n" + format_results(failed)
            )
        return results


def format_results(results: Iterable[RuleResult]) -> str:
    """One line per result (id, status, first line of the message), plus detail lines."""
    lines = []
    for result in results:
        first, _, rest = result.message.partition("\n")
        lines.append(f"{result.id:<100} {result.status:<8} {first}".rstrip())
        lines.extend(f"    {line}" for line in rest.splitlines())
    return "\n".join(lines)
