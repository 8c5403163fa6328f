"""Bounding a check: threads the kit gives up on, how it tries to stop them, what leaked.

Every check runs on a worker thread of its own while the thread that asked for it waits
with a budget (``_verification.Verification.run_rule``). When a call into the code under
test does not return, the waiting thread does not wait with it:

* the stuck thread's stack is read with ``sys._current_frames()`` (any thread, at once);
* ``_Abandoned`` is raised *into* the stuck thread (``PyThreadState_SetAsyncExc``). That
  stops code that keeps running Python bytecode (a spinning emission loop, a loop callback
  that drains an endless source) at its next instruction. It cannot stop a thread parked in
  C (``Event.wait()``, ``time.sleep``): the exception fires only when that call returns;
* a thread that is still alive after the grace period is recorded as a leak. Its CPU time
  is sampled before every later check: a leak that keeps *running* taints the verification
  (the CLI then runs the remaining checks in processes of their own, see ``_isolate``), a
  parked one only costs a thread.

``_Abandoned`` derives from ``BaseException`` so ``except Exception`` in the code under test
does not swallow it; asyncio's callback and task runners report it to the loop's exception
handler and carry on, which is what lets a blocked loop be stopped afterwards.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Leak",
    "call_rule",
    "format_stack",
    "interrupt",
    "leaks",
    "register_leak",
    "running_leaks",
]

_STACK_FRAMES: Final = 14
# Clock ticks per second for /proc/<pid>/task/<tid>/stat (utime, stime).
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# CPU a leaked thread may use between two samples and still count as parked.
_RUNNING_CPU_S: Final = 0.02


class _Abandoned(BaseException):
    """Raised into a thread the kit gave up on (and raised by kit waits of an abandoned check)."""


# -- which rule a call that does not return breaks ------------------------------------------

_CALL_RULES: Final = {
    "subscribe": ("Rule 1.9", "subscribe() must return normally, and promptly"),
    "request": (
        "Rule 3.4",
        "request() must return promptly; one that never returns also breaks Rule 3.16",
    ),
    "cancel": (
        "Rule 3.5",
        "cancel() must return promptly; one that never returns also breaks Rule 3.15",
    ),
    "on_subscribe": ("Rule 2.13", "a signal method must return normally"),
    "on_next": ("Rule 2.13", "a signal method must return normally"),
    "on_error": ("Rule 2.13", "a signal method must return normally"),
    "on_complete": ("Rule 2.13", "a signal method must return normally"),
}


def call_rule(label: str) -> tuple[str, str]:
    """The rule a call named ``label`` (``"request(1)"``) breaks by not returning, and why.

    Factories and the whitebox puppet belong to no rule: the first item is ``""``.
    """
    name = label.partition("(")[0].strip()
    return _CALL_RULES.get(name, ("", "the kit cannot go on until it returns"))


# -- stacks -----------------------------------------------------------------------------------


def format_stack(ident: int | None, *, name: str = "", limit: int = _STACK_FRAMES) -> str:
    """The innermost ``limit`` frames of thread ``ident``, indented, innermost last."""
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return f"  (thread {name or ident} has no Python stack)"
    stack = traceback.extract_stack(frame)
    # Thread and event-loop plumbing says nothing, except where the thread is parked.
    frames = [
        entry
        for index, entry in enumerate(stack)
        if index >= len(stack) - 2 or not _plumbing(entry.filename)
    ]
    shown = frames[-limit:]
    lines = [f"  stack of thread {name!r} (innermost last):" if name else "  stack:"]
    if len(frames) > limit:
        lines.append(f"    ... {len(frames) - limit} outer frames ...")
    for entry in shown:
        lines.append(f"    {entry.filename}:{entry.lineno} in {entry.name}")
        if entry.line:
            lines.append(f"      {entry.line.strip()}")
    return "\n".join(lines)


_PLUMBING: Final = (
    os.path.dirname(threading.__file__) + os.sep + "threading.py",
    os.path.dirname(threading.__file__) + os.sep + "asyncio" + os.sep,
    os.path.dirname(threading.__file__) + os.sep + "concurrent" + os.sep,
)


def _plumbing(filename: str) -> bool:
    return filename.startswith(_PLUMBING)


# -- stopping a thread ----------------------------------------------------------------------


def _raise_in(ident: int) -> bool:
    """Schedule ``_Abandoned`` in thread ``ident``; ``False`` if there is no such thread."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(_Abandoned)
    )
    return bool(done)


def interrupt(
    thread: threading.Thread,
    grace_s: float,
    *,
    stuck: Callable[[], bool] | None = None,
    finished: Callable[[], bool] | None = None,
) -> bool:
    """Raise ``_Abandoned`` into ``thread`` until it is unstuck; ``True`` if it was.

    Args:
        thread: The thread to stop (one the kit started: a check's worker, a loop thread).
        grace_s: How long to keep trying.
        stuck: Whether the thread is still where it must not be (still inside the call that
            hung); the exception is raised again only while this holds, so a thread that
            already got out is not hit again in the kit's own code. Default: alive.
        finished: Whether the thread is done with what it was doing (default: not alive).
    """
    ident = thread.ident
    if ident is None:
        return True
    is_stuck = stuck if stuck is not None else thread.is_alive
    is_finished = finished if finished is not None else (lambda: not thread.is_alive())
    deadline = time.monotonic() + grace_s
    while True:
        if is_finished():
            return True
        if is_stuck() and not _raise_in(ident):
            return True  # the thread is gone
        if time.monotonic() >= deadline:
            return is_finished()
        time.sleep(0.01)


# -- leaks ----------------------------------------------------------------------------------


def _thread_cpu_s(native_id: int | None) -> float | None:
    """CPU seconds a thread of this process has used (Linux), or ``None`` if unknown."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class Leak:
    """A thread the kit could not stop.

    Attributes:
        thread: The thread.
        what: What it was doing when the kit gave up (for messages).
        cpu_s: Its CPU time at the last sample (``None`` where that is unknown).
    """

    thread: threading.Thread
    what: str
    cpu_s: float | None


# Invariant: guarded by _LEAKS_LOCK. Process-wide: a leaked thread outlives its verification.
_LEAKS: list[Leak] = []
_LEAKS_LOCK: Final = threading.Lock()


def register_leak(thread: threading.Thread, what: str) -> None:
    """Remember ``thread`` as leaked (it is sampled before later checks)."""
    with _LEAKS_LOCK:
        _LEAKS.append(Leak(thread, what, _thread_cpu_s(thread.native_id)))


def leaks() -> list[Leak]:
    """The leaked threads that are still alive."""
    with _LEAKS_LOCK:
        _LEAKS[:] = [leak for leak in _LEAKS if leak.thread.is_alive()]
        return list(_LEAKS)


def running_leaks() -> list[str]:
    """What the leaked threads that used CPU since the last sample were doing.

    A parked thread (blocked in ``Event.wait()``) costs nothing and is left alone; one
    that runs (or whose CPU time cannot be read) is reported.
    """
    running: list[str] = []
    with _LEAKS_LOCK:
        _LEAKS[:] = [leak for leak in _LEAKS if leak.thread.is_alive()]
        for leak in _LEAKS:
            now = _thread_cpu_s(leak.thread.native_id)
            if now is None or leak.cpu_s is None or now - leak.cpu_s > _RUNNING_CPU_S:
                running.append(f"thread {leak.thread.name!r} ({leak.what})")
            leak.cpu_s = now
    return running
