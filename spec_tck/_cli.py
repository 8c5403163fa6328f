"""``python -m spec_tck MODULE:FACTORY``: run the publisher checks from the command line.

One line per check is printed as soon as the check finishes; a result a late violation
changes afterwards gets a second line (status ``failed``, its message saying how late:
``late: 31 ms after on_complete``). The failed checks follow
in full, then one summary line.

The code under test never runs in this process (see ``_isolate``): a child process runs
the checks and streams their results; once a check hung, each remaining check runs in a
process of its own (``--isolate`` does that from the start). Without ``os.fork`` the checks
run in this process.

Exit status: 0 when no required check failed, 1 when one did, 2 for a usage error (the
reason is one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, NoReturn

from reactive_bp._core._demand import UNBOUNDED

from ._env import TestEnvironment
from ._isolate import ChildRunner, available
from ._publisher import PublisherVerification
from ._rules import RuleCase, RuleResult

__all__ = ["main", "summary_line"]

_STATUSES = ("passed", "failed", "skipped", "untested")
_NO_LOOP = "no running event loop"
_DEFAULT_MAX_MEMORY_MB = 1024.0


class UsageError(Exception):
    """A bad command line; reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m spec_tck",
        description=(
            "Check a publisher against the Reactive Streams rules. FACTORY(elements: int) must "
            "return a publisher that emits exactly that many items and then completes."
        ),
    )
    parser.add_argument("target", metavar="MODULE:FACTORY", help="e.g. mypkg.sources:make_range")
    parser.add_argument(
        "--failed",
        metavar="MODULE:FACTORY",
        help="FACTORY() returns a publisher that signals on_subscribe then on_error",
    )
    parser.add_argument(
        "--max-elements",
        type=int,
        metavar="N",
        help="the longest stream FACTORY supports (checks needing more are skipped)",
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="run the publisher on an asyncio event loop (factories are called on it)",
    )
    parser.add_argument(
        "--timeout-ms", type=float, metavar="N", help="default timeout of every wait"
    )
    parser.add_argument(
        "--quiet-ms",
        type=float,
        metavar="N",
        help="final window watched for late signals after the last check (default 100)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="run every check in a process of its own (the default once a check hung)",
    )
    parser.add_argument(
        "--max-memory-mb",
        type=float,
        metavar="N",
        default=_DEFAULT_MAX_MEMORY_MB,
        help=f"kill a check whose process grows past N MB (default {_DEFAULT_MAX_MEMORY_MB:g})",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON to PATH ('-' for stdout)"
    )
    parser.add_argument(
        "--rule",
        action="append",
        metavar="ID",
        help="run only checks matching ID (309, spec309, 3.9, a check name); repeatable",
    )
    return parser


def _suggestion(spec: str) -> str:
    """``; did you mean 'mod:factory'?`` when ``spec`` is ``mod.factory`` and that exists."""
    module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        return ""
    try:
        module = importlib.import_module(module_name)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        return ""
    return f"; did you mean '{module_name}:{attribute}'?" if hasattr(module, attribute) else ""


def _load(spec: str, option: str) -> Callable[..., object]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{option} must look like MODULE:FACTORY, got {spec!r}{_suggestion(spec)}")
    try:
        module = importlib.import_module(module_name)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        if isinstance(error, ModuleNotFoundError) and error.name == module_name:
            raise UsageError(
                f"no module named {module_name!r} (run from the directory that contains it, "
                "or add that directory to PYTHONPATH)"
            ) from None
        raise UsageError(
            f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"{spec} is not callable (it is a {type(target).__name__})")
    return target


def _check_arity(factory: Callable[..., object], spec: str, args: tuple[object, ...]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # no introspectable signature (a builtin): trust it
    try:
        signature.bind(*args)
    except TypeError:
        wanted = "one argument (elements: int)" if args else "no arguments"
        raise UsageError(
            f"{spec} has the wrong signature {signature}: it must take {wanted}"
        ) from None


def _verification(
    factory: Callable[..., object],
    failed: Callable[..., object] | None,
    max_elements: int | None,
    use_asyncio: bool,
    env: TestEnvironment,
) -> PublisherVerification[object]:
    class CommandLineVerification(PublisherVerification[object]):
        asyncio = use_asyncio

        def create_publisher(self, elements: int) -> object:  # type: ignore[override]
            return factory(elements)

        def create_failed_publisher(self) -> object:  # type: ignore[override]
            return failed() if failed is not None else None

        def max_elements_from_publisher(self) -> int:
            return UNBOUNDED - 1 if max_elements is None else max_elements

    return CommandLineVerification(env)


# -- what the CLI user typed, instead of the verification's method names --------------------


def _cli_words(args: argparse.Namespace) -> Callable[[str], str]:
    """Rewrite a message so it names the command line's options, not the knob methods."""
    factory = args.target.partition(":")[2] or "FACTORY"
    failed = args.failed.partition(":")[2] if args.failed else None
    replacements: list[tuple[re.Pattern[str], str]] = [
        (
            re.compile(r"create_failed_publisher\(\) returned None"),
            "no --failed MODULE:FACTORY was given",
        ),
        (re.compile(r"max_elements_from_publisher\(\) is (\d+)"), r"--max-elements is \1"),
        (
            re.compile(r"max_elements_from_publisher\(\) == 2\*\*63-1"),
            "--max-elements 9223372036854775807",
        ),
        (re.compile(r"max_elements_from_publisher\(\)"), "--max-elements"),
        (re.compile(r"create_publisher\("), f"{factory}("),
    ]
    if failed is not None:
        replacements.append((re.compile(r"create_failed_publisher\(\)"), f"{failed}()"))
    else:
        replacements.append((re.compile(r"create_failed_publisher\(\)"), "--failed"))

    def rewrite(message: str) -> str:
        for pattern, replacement in replacements:
            message = pattern.sub(replacement, message)
        return message

    return rewrite


class _Report:
    """Prints one row per finished check as it arrives, then the full failures and summary."""

    def __init__(
        self, cases: Sequence[RuleCase], out: IO[str], words: Callable[[str], str]
    ) -> None:
        self.order = [case.id for case in cases]
        self._width = max((len(case.id) for case in cases), default=10)
        self._out = out
        self._words = words
        self.results: dict[str, RuleResult] = {}
        self.notes: list[str] = []

    def _cli(self, result: RuleResult) -> RuleResult:
        message = self._words(result.message)
        if message == result.message:
            return result
        return RuleResult(
            id=result.id,
            kind=result.kind,
            rule=result.rule,
            status=result.status,
            message=message,
            duration_s=result.duration_s,
        )

    def _row(self, result: RuleResult, status: str) -> None:
        first = result.message.partition("\n")[0]
        print(f"{result.id:<{self._width}}  {status:<8}  {first}".rstrip(), file=self._out)
        self._out.flush()

    def result(self, result: RuleResult) -> None:
        """A check finished."""
        result = self._cli(result)
        self.results[result.id] = result
        self._row(result, result.status)

    def late(self, result: RuleResult) -> None:
        """An earlier result turned to failed (a late violation)."""
        result = self._cli(result)
        self.results[result.id] = result
        self._row(result, "failed")

    def note(self, text: str) -> None:
        """A line about the run itself (not about a check)."""
        self.notes.append(text)
        print(f"spec_tck: {text}", file=self._out)
        self._out.flush()

    def ordered(self) -> list[RuleResult]:
        """Every result, in check order."""
        return [self.results[i] for i in self.order if i in self.results]


def _print_failures(results: Sequence[RuleResult], out: IO[str]) -> None:
    failures = [r for r in results if r.status == "failed"]
    if failures:
        print("\nfailed checks in full:", file=out)
        for result in failures:
            print(f"\n{result.id}\n  {result.message.replace(chr(10), chr(10) + '  ')}", file=out)


def summary_line(results: Sequence[RuleResult], seconds: float) -> str:
    """The last line of the report (deliberately not shaped like pytest's)."""
    counts: Counter[str] = Counter(r.status for r in results)
    parts = " ".join(f"{status}={counts.get(status, 0)}" for status in _STATUSES)
    verdict = "FAIL" if counts.get("failed") else "OK"
    return f"spec_tck summary: {parts} time={seconds:.2f}s verdict={verdict}"


def _run_in_process(verification: PublisherVerification[object], report: _Report) -> None:
    for rule_id in report.order:
        report.result(verification.run_rule(rule_id))
        for late in verification.take_late_failures():
            report.late(late)
    for late in verification.finish():
        report.late(late)


def _run_in_children(
    verification: PublisherVerification[object], report: _Report, *, isolate: bool, memory: float
) -> None:
    runner = ChildRunner(
        verification, on_result=report.result, on_late=report.late, max_memory_mb=memory
    )
    remaining = list(report.order)
    if not isolate:
        remaining, why = runner.run(remaining, stop_on_taint=True)
        if remaining:
            count = f"{len(remaining)} check{'s' if len(remaining) > 1 else ''}"
            report.note(
                f"note: {why or 'a check could not finish'}; running the remaining {count} "
                "each in a process of its own (as with --isolate)"
            )
    for rule_id in remaining:
        runner.run([rule_id], stop_on_taint=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    try:
        args = _parser().parse_args(argv)
        factory = _load(args.target, "the publisher factory")
        _check_arity(factory, args.target, (0,))
        failed = None
        if args.failed:
            failed = _load(args.failed, "--failed")
            _check_arity(failed, args.failed, ())
        if args.max_elements is not None and args.max_elements < 0:
            raise UsageError("--max-elements must be >= 0")
        if args.timeout_ms is not None and args.timeout_ms <= 0:
            raise UsageError("--timeout-ms must be > 0")
        if args.quiet_ms is not None and args.quiet_ms < 0:
            raise UsageError("--quiet-ms must be >= 0")
        if args.max_memory_mb <= 0:
            raise UsageError("--max-memory-mb must be > 0")
        env = TestEnvironment(default_timeout_ms=args.timeout_ms, quiet_ms=args.quiet_ms)
        verification = _verification(factory, failed, args.max_elements, args.asyncio, env)
        cases = verification.select(args.rule)
        if not cases:
            raise UsageError(f"no check matches --rule {' --rule '.join(args.rule)}")
    except UsageError as error:
        print(f"spec_tck: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # a bad SPEC_TCK_* environment variable
        print(f"spec_tck: error: {error}", file=sys.stderr)
        return 2

    to_stdout_json = args.json == "-"
    table_out = sys.stderr if to_stdout_json else sys.stdout
    report = _Report(cases, table_out, _cli_words(args))
    started = time.monotonic()
    if available():
        _run_in_children(verification, report, isolate=args.isolate, memory=args.max_memory_mb)
    else:
        _run_in_process(verification, report)
    seconds = time.monotonic() - started
    results = report.ordered()
    _print_failures(results, table_out)
    no_loop = [r for r in results if r.status == "failed" and _NO_LOOP in r.message]
    if no_loop and not args.asyncio:
        print(
            f"\nspec_tck: hint: {len(no_loop)} checks failed with '{_NO_LOOP}': this looks "
            "like an asyncio publisher: add --asyncio",
            file=table_out,
        )
    print(summary_line(results, seconds), file=table_out)
    if args.json:
        document = {
            "target": args.target,
            "summary": dict(Counter(r.status for r in results)),
            "seconds": round(seconds, 3),
            "notes": report.notes,
            "results": [r.to_json() for r in results],
        }
        text = json.dumps(document, indent=2)
        if to_stdout_json:
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 1 if any(r.status == "failed" for r in results) else 0
