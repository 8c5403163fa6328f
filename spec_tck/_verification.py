"""The base of every verification class: finding its checks and running them, bounded.

Nothing here imports pytest: a check raises ``SpecViolation`` (an ``AssertionError``) to
fail and ``SkipCheck`` to skip, and ``run_rule`` turns that into a ``RuleResult``. The
pytest plugin and the CLI are thin layers over ``run_rule`` and ``finish``.

How one check runs (``run_rule``):

* The check's body runs on a worker thread; the calling thread is its watchdog. A call
  into the code under test that does not return within ``env.call_budget_s``, or a check
  that does not finish within ``env.check_budget_s()``, fails the check with the rule of
  that call and the stack of the stuck thread, and the run goes on (see ``_watchdog`` for
  how the kit tries to stop what it gave up on, and what it does when it cannot).
* A violation of a rule the kit checks on every signal (``_ProtocolViolation``) fails the
  check whatever its kind: a required rule is never reported as skipped because the check
  that saw it was optional.

After the checks (``finish``): every check's subscribers keep recording once it returned.
A violation that arrives later is attributed to the check that created the subscriber and
turns its result to failed, with the delay seen. One final quiet window (``quiet_ms``, the
JVM kit's 100 ms) catches stragglers; it is skipped when no subscriber of a recent check is
reachable any more (nothing can signal it), which keeps a synchronous publisher fast.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
import traceback
from abc import ABC
from collections.abc import Callable, Iterable
from typing import ClassVar

from ._env import SkipCheck, SpecViolation, TestEnvironment, _Check, _ProtocolViolation
from ._rules import RuleCase, RuleResult, Status, failed_rule, how_to_fix, parse_case
from ._watchdog import _Abandoned, format_stack, interrupt, register_leak, running_leaks

__all__ = ["Verification", "format_results"]

# How often the watchdog looks at a running check.
_WATCH_SLICE_S = 0.02


class _Outcome:
    """What the worker thread of a check left behind."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


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
        tainted: Why later results of this verification may be disturbed (a check hung and
            the kit had to abandon a thread), or ``None``. The CLI runs the remaining
            checks in processes of their own once this is set.
    """

    asyncio: ClassVar[bool] = False

    def __init__(self, env: TestEnvironment | None = None) -> None:
        """Create a verification; ``env`` defaults to one configured from env vars."""
        self.env = env if env is not None else TestEnvironment()
        # Sticky across checks: once the code under test signalled from another thread,
        # every "nothing more happens" check waits the no-signals window.
        self._saw_foreign_signal = False
        self.tainted: str | None = None
        # Every check run so far: its latest result and its record (for late violations).
        self._ran: dict[str, tuple[RuleResult, _Check]] = {}
        # Checks whose late violation was already turned into a failed result.
        self._late_reported: set[str] = set()

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

    def _iterations(self, case: RuleCase) -> int:
        if case.kind != "stochastic":
            return 0
        iterations: Callable[[], int] | None = getattr(self, "iterations_per_stochastic_test", None)
        return iterations() if iterations is not None else 0

    def run_rule(self, rule_id: str) -> RuleResult:
        """Run one check, bounded, and return its result (never raises for a failing check).

        A violation that arrives after this returned is picked up by ``finish()``.
        """
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
        running = running_leaks()
        if running and self.tainted is None:
            self.tainted = "still running after an earlier check gave up on it: " + "; ".join(
                running
            )
        check = self.env.begin_check(
            use_asyncio=type(self).asyncio,
            saw_foreign_signal=self._saw_foreign_signal,
            name=case.id,
        )
        hang, error = self._watch(case, check)
        status, message = self._classify(case, check, hang, error)
        del error
        with self.env.cond:
            for flop in check.flops:  # its frames would keep the check's subscribers alive
                flop.__traceback__ = None
        interrupted = self.env.take_interruption()
        if interrupted is not None and self.tainted is None:
            self.tainted = f"{case.id}: {interrupted}"
        outcome = result(status, message)
        self._ran[case.id] = (outcome, check)
        self._late_reported.discard(case.id)
        return outcome

    # -- running one check on a worker thread -----------------------------------------

    def _body(self, case: RuleCase, check: _Check, outcome: _Outcome) -> None:
        """The worker thread: the check, the async-error verification, the cleanup."""
        env = self.env
        env.bind_thread(check)
        try:
            try:
                getattr(self, case.id)()
                env.verify_no_async_errors()
            finally:
                self._saw_foreign_signal |= env.saw_foreign_signal
                env.end_check()
        except BaseException as error:  # classified on the watchdog's side
            outcome.error = error
        finally:
            outcome.done.set()

    def _watch(self, case: RuleCase, check: _Check) -> tuple[str | None, BaseException | None]:
        """Run the check's body on a worker and wait for it.

        Returns the hang report (``None`` if it did not hang) and what the body raised.
        """
        env = self.env
        outcome = _Outcome()
        worker = threading.Thread(
            target=self._body, args=(case, check, outcome), name="spec_tck-check", daemon=True
        )
        worker.start()
        deadline = time.monotonic() + env.check_budget_s(self._iterations(case))
        hang: str | None = None
        in_call = False
        while not outcome.done.wait(_WATCH_SLICE_S):
            stuck = env.stuck_call(worker.ident)
            if stuck is not None:
                call, seconds = stuck
                hang = env.hang_message(call.label, seconds, worker.ident, worker.name)
                in_call = True
                break
            if time.monotonic() >= deadline:
                budget = env.check_budget_s(self._iterations(case))
                hang = "\n".join(
                    [
                        f"the check did not finish within {budget:.1f} s",
                        format_stack(worker.ident, name=worker.name),
                        *env._logs(),
                    ]
                )
                break
        if hang is not None:
            self._give_up(check, worker, outcome, hang, in_call=in_call)
        return hang, outcome.error if outcome.done.is_set() else None

    def _give_up(
        self,
        check: _Check,
        worker: threading.Thread,
        outcome: _Outcome,
        hang: str,
        *,
        in_call: bool,
    ) -> None:
        """Stop what hung as far as possible; contain what cannot be stopped.

        A worker stuck in a call is interrupted only while it is still inside a call (so the
        kit's own cleanup is not hit); one that overran its budget elsewhere, until it ends.
        """
        env = self.env
        first_line = hang.partition("\n")[0]
        self.tainted = self.tainted or f"{check.name} hung"
        env.abandon(check)
        stopped = interrupt(
            worker,
            env.grace_s,
            stuck=(lambda: env.in_call(worker.ident)) if in_call else None,
            finished=outcome.done.is_set,
        )
        if not stopped:
            register_leak(worker, f"{check.name}: {first_line}")
            # The worker cannot stop its own driver; the watchdog does (idempotent).
            env.driver.stop()
            env.close_check(check)

    def _classify(
        self, case: RuleCase, check: _Check, hang: str | None, error: BaseException | None
    ) -> tuple[Status, str]:
        """The status and message of a check, from what it raised and what it flopped."""
        env = self.env
        with env.cond:
            flops = list(check.flops)
            if check.ended_at is None:
                check.ended_at = time.monotonic()
        protocol = check.protocol_flop()
        if hang is not None:
            if flops and flops[0].args and str(flops[0]) != hang:
                return "failed", f"{flops[0]}\n  then: {hang}"
            return "failed", hang
        if error is None:
            if protocol is not None or (flops and case.kind != "optional"):
                return "failed", str(protocol or flops[0])
            return "passed", ""
        if isinstance(error, SkipCheck):
            if protocol is not None:
                return "failed", str(protocol)
            return "skipped", str(error)
        if isinstance(error, AssertionError):
            status: Status = "failed"
            message = str(error) or repr(error)
        elif isinstance(error, _Abandoned):
            return "failed", str(protocol or "the kit gave up on the check")
        else:
            frames = traceback.extract_tb(error.__traceback__)
            where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            status = "failed"
            message = f"unexpected {type(error).__name__}: {error}{where}"
        if case.kind == "optional" and not isinstance(error, _ProtocolViolation):
            if protocol is not None:
                return "failed", str(protocol)
            return "skipped", f"optional rule not met: {message}"
        return status, message

    # -- late violations and the final quiet window -------------------------------------

    def take_late_failures(self) -> list[RuleResult]:
        """Results that turned to failed since they were returned (a late violation).

        Does not wait; each changed result is returned once. ``finish()`` waits the final
        quiet window first.
        """
        changed: list[RuleResult] = []
        for rule_id, (result, check) in list(self._ran.items()):
            with self.env.cond:
                late = list(check.late)
            if not late or rule_id in self._late_reported:
                continue
            self._late_reported.add(rule_id)
            if result.status == "failed":
                extra = str(late[0])
                fix = how_to_fix(failed_rule(extra, result.rule), rule_id, extra)
                message = f"{result.message}\n  also, later: {extra}\n  how to fix that: {fix}"
            else:
                message = str(late[0])
            updated = dataclasses.replace(result, status="failed", message=message)
            self._ran[rule_id] = (updated, check)
            changed.append(updated)
        return changed

    def _latest_reachable_end(self, *, collect: bool) -> float | None:
        """When the latest check ended that returned less than ``quiet_ms`` ago and whose
        subscribers are still reachable (``None``: no such check, nothing can be signalled).

        With ``collect``, garbage is collected first if that is what keeps them: a subscriber
        only the garbage collector still holds cannot be signalled. The young generations
        are cheap; a full collection runs only when they were not enough.
        """
        quiet_s = self.env.quiet_ms / 1000
        if quiet_s <= 0 or not self._ran:
            return None
        now = time.monotonic()
        recent = [
            check
            for _, check in self._ran.values()
            if check.ended_at is not None and check.ended_at + quiet_s > now
        ]
        for generation in (None, 1, 2) if collect else (None,):
            if generation is not None:
                gc.collect(generation)
            alive = [c.ended_at for c in recent if c.ended_at is not None and len(c.recorders)]
            if not alive:
                return None
        return max(alive)

    def _final_window_s(self) -> float:
        """How long the final quiet window must still run (0 when nothing can signal)."""
        end = self._latest_reachable_end(collect=True)
        return 0.0 if end is None else max(0.0, end + self.env.quiet_ms / 1000 - time.monotonic())

    def finish(self) -> list[RuleResult]:
        """Watch the final quiet window, then return the results a late violation changed.

        Call it once after the last ``run_rule`` (``run`` and the CLI do): a result returned
        earlier as passed (or skipped) is failed if a subscriber of that check was signalled
        against the rules after the check returned. The window ends early once no
        subscriber of a recent check is reachable any more.
        """
        window = self._final_window_s()
        deadline = time.monotonic() + window
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, self.env.poll_s))
            if self._latest_reachable_end(collect=False) is None:
                break
        return self.take_late_failures()

    def late_failure_report(self) -> str | None:
        """``finish()``, as text for a runner that reports each check as it ends.

        The pytest plugin reports a check as soon as it returns; a late violation can only
        be reported afterwards, by one more test at the end of the class that fails with
        this text.

        Returns:
            The checks a late violation failed, one block each, or ``None`` when none did.
        """
        changed = self.finish()
        if not changed:
            return None
        return (
            f"{len(changed)} check(s) reported earlier were broken by a late signal:\n"
            + format_results(changed)
        )

    def results(self) -> list[RuleResult]:
        """The latest result of every check run so far (late violations applied)."""
        return [result for result, _ in self._ran.values()]

    def run(self, rules: Iterable[str] | None = None) -> list[RuleResult]:
        """Run the checks matching ``rules`` (all when ``None``) and return their results.

        Ends with ``finish()``, so a late violation is in the result of the check it
        belongs to.
        """
        results = [self.run_rule(case.id) for case in self.select(rules)]
        self.finish()
        latest = {result.id: result for result in self.results()}
        return [latest.get(result.id, result) for result in results]

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
