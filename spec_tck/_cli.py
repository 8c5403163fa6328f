"""``python -m spec_tck MODULE:FACTORY``: run the publisher checks from the command line.

Exit status: 0 when no required check failed, 1 when one did, 2 for a usage error (the
reason is one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, NoReturn

from reactive_bp._core._demand import UNBOUNDED

from ._env import TestEnvironment
from ._publisher import PublisherVerification
from ._rules import RuleResult

__all__ = ["main"]

_STATUSES = ("passed", "failed", "skipped", "untested")


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
        "--json", metavar="PATH", help="also write the results as JSON to PATH ('-' for stdout)"
    )
    parser.add_argument(
        "--rule",
        action="append",
        metavar="ID",
        help="run only checks matching ID (309, spec309, 3.9, a check name); repeatable",
    )
    return parser


def _load(spec: str, option: str) -> Callable[..., object]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{option} must look like MODULE:FACTORY, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        raise UsageError(
            f"cannot import module {module_name!r}: {type(error).__name__}: {error}"
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


def _print_table(results: Sequence[RuleResult], out: IO[str]) -> None:
    width = max((len(r.id) for r in results), default=10)
    for result in results:
        first = result.message.partition("\n")[0]
        print(f"{result.id:<{width}}  {result.status:<8}  {first}".rstrip(), file=out)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    try:
        args = _parser().parse_args(argv)
        factory = _load(args.target, "MODULE:FACTORY")
        _check_arity(factory, args.target, (0,))
        failed = None
        if args.failed:
            failed = _load(args.failed, "--failed")
            _check_arity(failed, args.failed, ())
        if args.max_elements is not None and args.max_elements < 0:
            raise UsageError("--max-elements must be >= 0")
        if args.timeout_ms is not None and args.timeout_ms <= 0:
            raise UsageError("--timeout-ms must be > 0")
        env = TestEnvironment(default_timeout_ms=args.timeout_ms)
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

    started = time.monotonic()
    results = [verification.run_rule(case.id) for case in cases]
    seconds = time.monotonic() - started
    to_stdout_json = args.json == "-"
    table_out = sys.stderr if to_stdout_json else sys.stdout
    _print_table(results, table_out)
    print(summary_line(results, seconds), file=table_out)
    if args.json:
        document = {
            "target": args.target,
            "summary": dict(Counter(r.status for r in results)),
            "seconds": round(seconds, 3),
            "results": [r.to_json() for r in results],
        }
        text = json.dumps(document, indent=2)
        if to_stdout_json:
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 1 if any(r.status == "failed" for r in results) else 0
