"""``python -m spec_tck.self_report``: the rule x component table for reactive_bp itself.

Runs ``PublisherVerification`` against every source and operator registered in
``spec_tck.components``, and ``IdentityProcessorVerification`` (publisher,
subscriber and multi-subscriber checks) against every processor configuration
registered there, and prints one row per component: the counts, and one
symbol per check in rule order (``P`` passed, ``F`` failed, ``s`` skipped, ``u``
untested). ``--json PATH`` writes every result; the exit status is 1 if any
required check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

from ._rules import RuleResult
from .components import (
    PROCESSORS,
    PUBLISHERS,
    processor_verification_for,
    shutdown_pool,
    verification_for,
)

_SYMBOL = {"passed": "P", "failed": "F", "skipped": "s", "untested": "u"}


def run_all(only: Sequence[str] = ()) -> dict[str, list[RuleResult]]:
    """Run the publisher checks for each registered component (or those in ``only``)."""
    results: dict[str, list[RuleResult]] = {}
    for entry in PUBLISHERS:
        if only and entry.name not in only:
            continue
        results[entry.name] = verification_for(entry).run()
    return results


def run_processors(only: Sequence[str] = ()) -> dict[str, list[RuleResult]]:
    """Run the identity-processor checks for each registered processor (or those in ``only``)."""
    results: dict[str, list[RuleResult]] = {}
    for entry in PROCESSORS:
        if only and entry.name not in only:
            continue
        results[entry.name] = processor_verification_for(entry).run()
    return results


def table(results: dict[str, list[RuleResult]], what: str = "components") -> str:
    """The report as text: a legend of checks, then one row per component."""
    if not results:
        return "no components"
    first = next(iter(results.values()))
    width = max(len(name) for name in results)
    lines = ["checks, in column order:"]
    lines += [f"  {i + 1:>2} {result.id}" for i, result in enumerate(first)]
    lines.append("")
    header = "".join(str((i + 1) % 10) for i in range(len(first)))
    lines.append(f"{'component':<{width}}  pass fail skip untested  {header}")
    totals: Counter[str] = Counter()
    for name, rows in results.items():
        counts = Counter(row.status for row in rows)
        totals.update(counts)
        symbols = "".join(_SYMBOL[row.status] for row in rows)
        lines.append(
            f"{name:<{width}}  {counts['passed']:>4} {counts['failed']:>4} "
            f"{counts['skipped']:>4} {counts['untested']:>8}  {symbols}"
        )
    failures = [
        f"  {name}: {row.id}: {row.message.splitlines()[0] if row.message else ''}"
        for name, rows in results.items()
        for row in rows
        if row.status == "failed"
    ]
    lines.append("")
    lines.append(
        f"self-report: {len(results)} {what}, checks passed={totals['passed']} "
        f"failed={totals['failed']} skipped={totals['skipped']} untested={totals['untested']}"
    )
    if failures:
        lines.append("failed checks:")
        lines += failures
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m spec_tck.self_report``."""
    parser = argparse.ArgumentParser(
        prog="python -m spec_tck.self_report",
        description="Verify reactive_bp components against the Reactive Streams rules.",
    )
    parser.add_argument("--only", action="append", default=[], help="component name (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON ('-' = stdout)")
    args = parser.parse_args(argv)
    try:
        results = run_all(args.only)
        processors = run_processors(args.only)
    finally:
        shutdown_pool()
    if args.json:
        everything = {**results, **{f"processor:{k}": v for k, v in processors.items()}}
        payload = {name: [r.to_json() for r in rows] for name, rows in everything.items()}
        text = json.dumps(payload, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    if args.json != "-":
        print(table(results))
        if processors:
            print()
            print("processors (IdentityProcessorVerification):")
            print(table(processors, "processors"))
    failed = any(
        row.status == "failed" for rows in (*results.values(), *processors.values()) for row in rows
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
