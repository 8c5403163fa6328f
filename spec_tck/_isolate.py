"""Running checks in processes of their own, so nothing the code under test leaves behind
outlives them.

In one process the kit can only *try* to stop a thread that hung (``_watchdog``): a thread
parked in C, or C code that never gives the interpreter back, cannot be stopped, and keeps
its memory. A process can always be killed. So the CLI never runs the code under test in its
own process: it forks a child that runs the checks and streams one JSON event per line back
over a pipe, and the parent

* prints each result as it arrives;
* kills the child when a check runs past its budget (the in-process watchdog should have
  ended it; this is the backstop for a process that no longer runs Python at all), or when
  the child's memory grows past a cap, after asking ``faulthandler`` for the stack of every
  thread (it needs no interpreter lock, so it works in a wedged process too);
* when a check hung once (``Verification.tainted``), lets that child finish its quiet window
  and runs every remaining check in a process of its own (``--isolate`` does so from the
  start).

Events (one JSON object per line): ``start`` (a check began), ``result`` (its result),
``late`` (an earlier result a late violation turned to failed), ``tainted`` (a check hung;
this child stops after its quiet window), ``done``.

POSIX only (``os.fork``); elsewhere ``available()`` is false and the CLI runs in-process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Final, NoReturn

from ._rules import RuleCase, RuleResult
from ._verification import Verification

__all__ = ["ChildRunner", "available", "result_from_json"]

_SLICE_S: Final = 0.05
# Allowance on top of a check's own budget before the parent kills its process.
_SLACK_S: Final = 3.0
_DUMP_LINES: Final = 40
_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def available() -> bool:
    """Whether checks can run in child processes here (``os.fork`` exists)."""
    return hasattr(os, "fork")


def result_from_json(data: dict[str, object]) -> RuleResult:
    """The ``RuleResult`` that ``RuleResult.to_json`` wrote."""
    rule = data.get("rule")
    duration = data.get("duration_s", 0.0)
    return RuleResult(
        id=str(data["id"]),
        kind=data["kind"],  # type: ignore[arg-type]
        rule=str(rule) if rule is not None else None,
        status=data["status"],  # type: ignore[arg-type]
        message=str(data.get("message", "")),
        duration_s=float(duration) if isinstance(duration, int | float) else 0.0,
    )


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


# -- the child ------------------------------------------------------------------------------


def _child(
    verification: Verification, ids: list[str], out: IO[str], stop_on_taint: bool
) -> NoReturn:
    """Run ``ids`` and stream events to ``out``; never returns (``os._exit``)."""

    def send(event: dict[str, object]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    status = 0
    try:
        for rule_id in ids:
            send({"event": "start", "id": rule_id})
            send({"event": "result", "result": verification.run_rule(rule_id).to_json()})
            for late in verification.take_late_failures():
                send({"event": "late", "result": late.to_json()})
            if stop_on_taint and verification.tainted is not None:
                send({"event": "tainted", "reason": verification.tainted})
                break
        send({"event": "finishing"})
        for late in verification.finish():
            send({"event": "late", "result": late.to_json()})
        send({"event": "done"})
    except BaseException:
        status = 3
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


# -- the parent -----------------------------------------------------------------------------


@dataclass
class _Progress:
    """What the parent knows about a running child."""

    current: str | None = None
    since: float = field(default_factory=time.monotonic)
    finishing: bool = False
    done: bool = False
    tainted: str | None = None
    finished: set[str] = field(default_factory=set)


class ChildRunner:
    """Runs checks of one verification in forked children and reports their results.

    Args:
        verification: The verification; each child inherits it as it is at fork time.
        on_result: Called with every result as it arrives (also for a killed check).
        on_late: Called with an earlier result a late violation turned to failed.
        max_memory_mb: A child whose resident memory grows past this is killed.
    """

    def __init__(
        self,
        verification: Verification,
        *,
        on_result: Callable[[RuleResult], None],
        on_late: Callable[[RuleResult], None],
        max_memory_mb: float,
    ) -> None:
        """Create a runner; nothing is forked yet."""
        self._verification = verification
        self._on_result = on_result
        self._on_late = on_late
        self._max_memory_mb = max_memory_mb
        self._cases = {case.id: case for case in verification.rule_cases()}

    def _budget_s(self, rule_id: str) -> float:
        verification = self._verification
        env = verification.env
        case = self._cases[rule_id]
        return env.check_budget_s(verification._iterations(case)) + 2 * env.grace_s + _SLACK_S

    def run(self, ids: Iterable[str], *, stop_on_taint: bool) -> tuple[list[str], str | None]:
        """Run ``ids`` in one child; return the ids it did not get to and why it stopped.

        With ``stop_on_taint`` the child stops after the first check that hung. A check
        that overran its budget, or a child that died or outgrew the memory cap, ends the
        child too (the check is reported failed).
        """
        ids = list(ids)
        if not ids:
            return [], None
        read_fd, write_fd = os.pipe()
        dump = tempfile.TemporaryFile()  # noqa: SIM115 -- closed below, after the child
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover -- the child (coverage does not follow a fork)
            os.close(read_fd)
            faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
            _child(self._verification, ids, os.fdopen(write_fd, "w"), stop_on_taint)
        os.close(write_fd)
        progress = _Progress()
        why: str | None = None
        try:
            why = self._follow(pid, read_fd, dump, progress)
        finally:
            os.close(read_fd)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            dump.close()
        if why is None and progress.tainted is not None:
            why = progress.tainted
        remaining = [rule_id for rule_id in ids if rule_id not in progress.finished]
        return remaining, why

    def _follow(self, pid: int, read_fd: int, dump: IO[bytes], progress: _Progress) -> str | None:
        """Read the child's events until it is done; kill it when it overruns."""
        buffer = b""
        while True:
            ready, _, _ = select.select([read_fd], [], [], _SLICE_S)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._event(json.loads(line), progress)
                if progress.done:
                    return None
            overrun = self._overrun(pid, progress)
            if overrun is not None:
                reason, short = overrun
                what = progress.current or "the quiet window"
                self._kill(pid, dump, progress, reason)
                return f"{what} was killed ({short})"
        # End of file before "done": the child died (or exited from inside the code under test).
        _, status = os.waitpid(pid, 0)
        how = (
            f"killed by signal {os.WTERMSIG(status)}"
            if os.WIFSIGNALED(status)
            else f"exit status {os.WEXITSTATUS(status)}"
        )
        reason = f"the process running the check ended unexpectedly ({how})"
        running = progress.current
        if running is not None:
            self._killed_result(progress, reason, "")
        return f"the process died during {running or 'the quiet window'} ({how})"

    def _event(self, event: dict[str, object], progress: _Progress) -> None:
        kind = event.get("event")
        if kind == "start":
            progress.current = str(event["id"])
            progress.since = time.monotonic()
        elif kind == "result":
            result = result_from_json(event["result"])  # type: ignore[arg-type]
            progress.finished.add(result.id)
            progress.current = None
            progress.since = time.monotonic()
            self._on_result(result)
        elif kind == "late":
            self._on_late(result_from_json(event["result"]))  # type: ignore[arg-type]
        elif kind == "tainted":
            progress.tainted = str(event.get("reason", "a check hung"))
        elif kind == "finishing":
            progress.finishing = True
            progress.since = time.monotonic()
        elif kind == "done":
            progress.done = True

    def _overrun(self, pid: int, progress: _Progress) -> tuple[str, str] | None:
        """Why the child must be killed now (in full, and in a few words), if it must."""
        rss = _rss_mb(pid)
        if rss > self._max_memory_mb:
            return (
                f"the memory of the process running the check grew past "
                f"{self._max_memory_mb:g} MB ({rss:.0f} MB): the code under test keeps "
                "allocating; the process was killed",
                "memory cap",
            )
        elapsed = time.monotonic() - progress.since
        if progress.current is not None:
            budget = self._budget_s(progress.current)
            if elapsed > budget:
                return (
                    f"the check did not finish within {budget:.1f} s, even counting the "
                    "kit's own watchdog; the process running it was killed",
                    "time budget",
                )
        elif elapsed > self._verification.env.quiet_ms / 1000 + _SLACK_S + 10:
            return "the process running the checks stopped responding; it was killed", "stuck"
        return None

    def _kill(self, pid: int, dump: IO[bytes], progress: _Progress, reason: str) -> None:
        """Dump every thread's stack, kill the child, report the check it was running."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        dump.seek(0)
        stacks = dump.read().decode("utf-8", "replace").strip().splitlines()
        shown = "\n".join(f"    {line}" for line in stacks[:_DUMP_LINES])
        if len(stacks) > _DUMP_LINES:
            shown += f"\n    ... {len(stacks) - _DUMP_LINES} more lines"
        detail = (
            f"  stacks of its threads (faulthandler, innermost first):\n{shown}" if stacks else ""
        )
        if progress.current is not None:
            self._killed_result(progress, reason, detail)

    def _killed_result(self, progress: _Progress, reason: str, detail: str) -> None:
        rule_id = progress.current
        assert rule_id is not None
        case: RuleCase = self._cases[rule_id]
        message = reason + (f"\n{detail}" if detail else "")
        progress.finished.add(rule_id)
        progress.current = None
        self._on_result(
            RuleResult(
                id=case.id,
                kind=case.kind,
                rule=case.rule,
                status="failed",
                message=message,
                duration_s=time.monotonic() - progress.since,
            )
        )
