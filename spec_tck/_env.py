"""The test environment: timeouts, per-check violation lists, how calls reach the code under test.

Assertions that fire on a publisher's thread must not raise into that thread, so they are
recorded ("flopped") and re-raised on the check's thread at the next wait or at the end of
the check. Every wait returns as soon as what it waits for happens, or as soon as something
was flopped: a failing check does not sit out its timeout.

Attribution: every recorder (the kit's subscribers, probes, manual publishers) belongs to
the check that created it, and its violations go to that check's list -- also after the
check returned. A violation that arrives later (a second ``on_complete`` from a timer
thread, an item 30 ms after ``cancel()``) is kept as *late* on the check it belongs to, and
``Verification`` turns that check's result to failed. Nothing is cleared when the next
check starts, and nothing is blamed on it.

Quiescence: a check that must see *nothing* happen ("expect none") needs a window only when
the code under test has shown it signals from elsewhere. The environment notes, for every
signal, whether it arrived on the thread that was inside a call into the code under test.
While every signal so far arrived that way (a synchronous publisher), there is nothing to
wait for once the call has returned, and the window is zero; late signals from a thread the
publisher starts later are still caught, by the attribution above and by the verification's
final quiet window (``quiet_ms``, 100 ms as in the JVM kit). After the first signal from
another thread or a later event-loop callback, the no-signals window applies.

Bounds: every call into the code under test is recorded (what it is, on which thread, since
when), so a call that does not return within ``call_budget_s`` can be named with the rule
it breaks (``subscribe`` Rule 1.9, ``request`` Rule 3.4, ``cancel`` Rule 3.5) and the stack
of the stuck thread (see ``_watchdog``). An event loop that stops running its callbacks is
noticed by a heartbeat and reported as such, instead of as the item that never came.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, Protocol, TypeVar

from reactive_bp._core._demand import add_cap

from ._watchdog import _Abandoned, call_rule, format_stack, interrupt, register_leak

if TYPE_CHECKING:
    from reactive_bp.abc import Subscriber, Subscription

__all__ = [
    "CALL_TIMEOUT_ENV",
    "DEFAULT_TIMEOUT_ENV",
    "GC_TIMEOUT_ENV",
    "NO_SIGNALS_TIMEOUT_ENV",
    "POLL_TIMEOUT_ENV",
    "QUIET_ENV",
    "ManualPublisher",
    "ManualSubscriber",
    "SkipCheck",
    "SpecViolation",
    "SubscriberPuppet",
    "TestEnvironment",
    "WhiteboxSubscriberProbe",
    "call_on_complete",
    "call_on_error",
]

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_TIMEOUT_ENV: Final = "SPEC_TCK_DEFAULT_TIMEOUT_MS"
"""Environment variable: every wait for a signal, in ms (default 1000; ends at the signal)."""
NO_SIGNALS_TIMEOUT_ENV: Final = "SPEC_TCK_NO_SIGNALS_TIMEOUT_MS"
"""Environment variable: each "nothing more arrives" window, in ms (default 50)."""
POLL_TIMEOUT_ENV: Final = "SPEC_TCK_POLL_TIMEOUT_MS"
"""Environment variable: the slice in which waits re-check, in ms (default 10)."""
GC_TIMEOUT_ENV: Final = "SPEC_TCK_GC_TIMEOUT_MS"
"""Environment variable: how long a cancelled subscriber may stay reachable (Rule 3.13), in ms
(default 1000)."""
QUIET_ENV: Final = "SPEC_TCK_QUIET_MS"
"""Environment variable: the final window watched for late signals, in ms (default 100; 0: off)."""
CALL_TIMEOUT_ENV: Final = "SPEC_TCK_CALL_TIMEOUT_MS"
"""Environment variable: one call into the code under test, in ms (default 5 x the default
timeout, at least 500); a call still running then fails its check with the stuck stack."""
DEBUG_ENV: Final = "SPEC_TCK_DEBUG"

_DEFAULTS_MS: Final[dict[str, float | None]] = {
    DEFAULT_TIMEOUT_ENV: 1000.0,
    NO_SIGNALS_TIMEOUT_ENV: 50.0,
    POLL_TIMEOUT_ENV: 10.0,
    GC_TIMEOUT_ENV: 1000.0,
    QUIET_ENV: 100.0,
    CALL_TIMEOUT_ENV: None,  # derived from the default timeout
}
_LOG_TAIL: Final = 40
_LOG_HEAD: Final = 8
# Signals that break a rule (after a terminal signal, beyond the demand) a recorder accepts
# before it raises into the publisher to stop it; only the first few are flopped in full.
_VIOLATION_LIMIT: Final = 1000
_VIOLATIONS_REPORTED: Final = 3
_KEEP_ERRORS: Final = 100
# How often an event loop under test proves it is still running callbacks.
_HEARTBEAT_S: Final = 0.02


class SpecViolation(AssertionError):
    """A rule was broken, or what the rule requires did not happen in time."""


class _ProtocolViolation(SpecViolation):
    """A rule broken by what the code under test did, whatever the check was looking for.

    Flopped by the recorders on every signal (Rules 1.1, 1.3, 1.7, 1.9, 2.13 ...) and by the
    watchdog for a call that does not return. Such a violation fails the check even when the
    check itself is optional: a required rule is never reported as skipped.
    """


class SkipCheck(Exception):
    """The check does not apply to this configuration; reported as skipped."""


class _Runaway(Exception):
    """Raised into a publisher that keeps signalling when it must not, to stop it."""


def _ms_from_env(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return _DEFAULTS_MS[name]
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of milliseconds") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value


def _ms(value: float | None, name: str) -> float:
    chosen = _ms_from_env(name) if value is None else value
    assert chosen is not None
    return chosen


# Names a call into the code under test is known by, most telling first.
_CALL_NAMES: Final = (
    "subscribe",
    "request",
    "cancel",
    "on_subscribe",
    "on_next",
    "on_error",
    "on_complete",
    "trigger_request",
    "signal_cancel",
)


def _label_of(fn: Callable[[], object]) -> str:
    """A name for a call the caller did not label: ``request()``, ``create_publisher()``."""
    target: object = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__name__", "")
    code = getattr(target, "__code__", None)
    if name == "<lambda>" and code is not None:
        names: tuple[str, ...] = code.co_names
        for candidate in _CALL_NAMES:
            if candidate in names or f"call_{candidate}" in names:
                return f"{candidate}()"
        for candidate in names:
            if candidate.startswith("create_"):
                return f"{candidate}()"
        return "a call into the code under test"
    return f"{name}()" if name else "a call into the code under test"


@dataclass(slots=True)
class _Call:
    """A call into the code under test: what, when it was handed over, when it began."""

    label: str
    dispatched: float
    started: float | None = None


class _Check:
    """One check's record: its violations while it runs, the late ones after it returned.

    Invariant: ``flops``, ``late``, ``ended_at`` and ``abandoned`` are guarded by the
    environment's ``cond``. ``ended_at`` is set once, when the check's result is taken;
    a violation recorded after that is late.
    """

    __slots__ = ("abandoned", "ended_at", "flops", "late", "name", "recorders")

    def __init__(self, name: str) -> None:
        self.name = name
        self.flops: list[SpecViolation] = []
        self.late: list[SpecViolation] = []
        self.ended_at: float | None = None
        self.abandoned = False
        # Weak: a recorder lives exactly as long as something (a publisher) can signal it.
        self.recorders: weakref.WeakSet[_Recorder[Any]] = weakref.WeakSet()

    def protocol_flop(self) -> SpecViolation | None:
        """The first violation that fails the check whatever its kind, if any."""
        return next((f for f in self.flops if isinstance(f, _ProtocolViolation)), None)


class TestEnvironment:
    """Timeouts and shared state for the checks of one verification.

    Every timeout is a constructor argument; an argument left out is read from its
    environment variable, and falls back to the default:

    ==========================  ==================================  =========
    argument                    environment variable                default
    ==========================  ==================================  =========
    ``default_timeout_ms``      ``SPEC_TCK_DEFAULT_TIMEOUT_MS``     1000
    ``no_signals_timeout_ms``   ``SPEC_TCK_NO_SIGNALS_TIMEOUT_MS``  50
    ``poll_timeout_ms``         ``SPEC_TCK_POLL_TIMEOUT_MS``        10
    ``gc_timeout_ms``           ``SPEC_TCK_GC_TIMEOUT_MS``          1000
    ``quiet_ms``                ``SPEC_TCK_QUIET_MS``               100
    ``call_timeout_ms``         ``SPEC_TCK_CALL_TIMEOUT_MS``        5 x default (>= 500)
    ==========================  ==================================  =========

    * The default timeout bounds every wait for a signal; a wait ends as soon as the
      signal arrives, so a generous value costs nothing on a passing run.
    * The no-signals timeout is how long "nothing more arrives" is watched for, and only
      once the code under test has signalled from another thread or a later event-loop
      callback (synchronous publishers need no window at all).
    * The poll timeout is the slice in which waits re-check their condition.
    * The GC timeout bounds Rule 3.13: how long a cancelled subscriber may stay reachable
      (``gc.collect()`` is retried every poll slice, so a correct publisher passes at once).
    * The quiet window is watched once, at the end of a verification, for late signals to
      the subscribers of checks that already returned (only while such a subscriber is
      still reachable from the code under test).
    * The call timeout bounds one call into the code under test (``subscribe``,
      ``request``, ``cancel``, a factory, a signal): one that does not return by then fails
      the check with the rule it breaks and the stack of the stuck thread.

    ``debug=True`` (or ``SPEC_TCK_DEBUG=1``) prints every recorded signal to stderr.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        default_timeout_ms: float | None = None,
        no_signals_timeout_ms: float | None = None,
        poll_timeout_ms: float | None = None,
        gc_timeout_ms: float | None = None,
        *,
        debug: bool | None = None,
        quiet_ms: float | None = None,
        call_timeout_ms: float | None = None,
    ) -> None:
        """Create an environment; ``None`` means "from the environment variable"."""
        self.default_timeout_ms = _ms(default_timeout_ms, DEFAULT_TIMEOUT_ENV)
        self.no_signals_timeout_ms = _ms(no_signals_timeout_ms, NO_SIGNALS_TIMEOUT_ENV)
        self.poll_timeout_ms = _ms(poll_timeout_ms, POLL_TIMEOUT_ENV)
        self.gc_timeout_ms = _ms(gc_timeout_ms, GC_TIMEOUT_ENV)
        self.quiet_ms = _ms(quiet_ms, QUIET_ENV)
        self.call_timeout_ms = (
            _ms_from_env(CALL_TIMEOUT_ENV) if call_timeout_ms is None else call_timeout_ms
        )
        for label, value in (
            ("default_timeout_ms", self.default_timeout_ms),
            ("no_signals_timeout_ms", self.no_signals_timeout_ms),
            ("poll_timeout_ms", self.poll_timeout_ms),
            ("gc_timeout_ms", self.gc_timeout_ms),
            ("quiet_ms", self.quiet_ms),
            ("call_timeout_ms", self.call_timeout_ms or 0.0),
        ):
            if value < 0:
                raise ValueError(f"{label} must not be negative, got {value}")
        self.debug = bool(os.environ.get(DEBUG_ENV)) if debug is None else debug
        # One condition guards every recorder and check record, so a flop wakes any wait.
        self.cond = threading.Condition(threading.RLock())
        # The check running now; recorders created outside any check belong to this one.
        self._check = _Check("(outside a check)")
        # The check a worker thread runs, so a thread the kit gave up on stays fenced off
        # from the checks that run after it.
        self._local = threading.local()
        # Invariant: guarded by cond. Thread ident -> the calls into the code under test
        # running on that thread, outermost first.
        self._calls: dict[int, list[_Call]] = {}
        self.saw_foreign_signal = False
        self.driver: _Driver = _SyncDriver(self)
        # What the kit last had to interrupt (a hung call, a blocked loop), until taken.
        self._interruption: str | None = None

    # -- durations --------------------------------------------------------------------

    @property
    def default_timeout_s(self) -> float:
        """The default timeout in seconds."""
        return self.default_timeout_ms / 1000

    @property
    def poll_s(self) -> float:
        """The poll slice in seconds (at least a millisecond)."""
        return max(self.poll_timeout_ms, 1.0) / 1000

    @property
    def call_budget_s(self) -> float:
        """How long one call into the code under test may take before it counts as hung."""
        if self.call_timeout_ms is not None:
            return max(self.call_timeout_ms, 1.0) / 1000
        return max(0.5, 5 * self.default_timeout_s)

    @property
    def grace_s(self) -> float:
        """How long the kit keeps trying to stop a thread it gave up on."""
        return max(0.2, min(1.0, self.call_budget_s / 4))

    def check_budget_s(self, iterations: int = 0) -> float:
        """How long one check may run in all before the watchdog ends it.

        Generous on purpose: every wait of a check is bounded already, and a call that does
        not return is caught by ``call_budget_s``; this bounds the rest (a check that keeps
        making slow progress). ``iterations`` adds a default timeout per repetition.
        """
        return (
            max(1.0, 30 * self.default_timeout_s)
            + self.gc_timeout_ms / 1000
            + 40 * self.no_signals_timeout_ms / 1000
            + 2 * self.call_budget_s
            + iterations * self.default_timeout_s
        )

    def quiet_window_s(self) -> float:
        """How long "nothing more happens" must be watched for right now."""
        return self.no_signals_timeout_ms / 1000 if self.saw_foreign_signal else 0.0

    # -- flops ------------------------------------------------------------------------

    def _active(self) -> _Check:
        """The check of the calling thread: its worker's check, else the current one."""
        check: _Check | None = getattr(self._local, "check", None)
        return check if check is not None else self._check

    def flop(self, message: str) -> None:
        """Record a violation seen on any thread; the check's thread raises it later."""
        self._flop_in(self._active(), message, protocol=True)

    def _flop_in(
        self,
        check: _Check,
        message: str,
        *,
        protocol: bool,
        since: tuple[str, float] | None = None,
    ) -> SpecViolation:
        """Record ``message`` against ``check``: in its list, or as late once it returned.

        ``since`` (what happened last to the recorder, and when) dates a late violation.
        """
        kind = _ProtocolViolation if protocol else SpecViolation
        with self.cond:
            if check.ended_at is None:
                violation = kind(message)
                check.flops.append(violation)
            else:
                now = time.monotonic()
                if since is not None and since[1] <= check.ended_at:
                    after = f"{(now - since[1]) * 1000:.0f} ms after {since[0]}"
                else:
                    after = f"{(now - check.ended_at) * 1000:.0f} ms after the check returned"
                first, newline, rest = message.partition("\n")
                violation = _ProtocolViolation(
                    f"{first} (late: {after}; the check had already returned){newline}{rest}"
                )
                check.late.append(violation)
            self.cond.notify_all()
        if self.debug:
            print(f"[spec_tck] FLOP {violation}", file=sys.stderr)
        return violation

    def flop_and_fail(self, message: str) -> NoReturn:
        """Record a violation and raise the check's first one (only on the check's thread)."""
        check = self._active()
        violation = self._flop_in(check, message, protocol=False)
        with self.cond:
            first = check.flops[0] if check.flops else violation
        raise first

    def fail_protocol(self, message: str) -> NoReturn:
        """Like ``flop_and_fail``, for a violation that fails even an optional check."""
        check = self._active()
        violation = self._flop_in(check, message, protocol=True)
        with self.cond:
            first = check.flops[0] if check.flops else violation
        raise first

    def raise_if_flopped(self) -> None:
        """Raise the first violation recorded for the check, if any."""
        check = self._active()
        with self.cond:
            if check.abandoned:
                raise _Abandoned
            if check.flops:
                raise check.flops[0]

    def verify_no_async_errors(self) -> None:
        """Fail on a recorded violation or on an ``on_error`` no check consumed."""
        self.raise_if_flopped()
        for recorder in list(self._active().recorders):
            recorder.verify_no_unexpected_error()

    # -- waiting ----------------------------------------------------------------------

    def wait_for(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``ready()``; ``False`` on timeout. Raises a flop as soon as one happens.

        The budget is a deadline, so every slice counts against the total. A wait for a
        signal that times out while the event loop under test is blocked fails with that
        finding: the signal could not have come.
        """
        check = self._active()
        deadline = time.monotonic() + timeout_s
        # A wait for a signal (not a short "nothing more" window) fails on a blocked loop:
        # at once when it has been blocked longer than any signal may take, else at the end.
        for_a_signal = timeout_s >= 0.5 * self.default_timeout_s
        with self.cond:
            while True:
                if check.abandoned:
                    raise _Abandoned
                if check.flops:
                    raise check.flops[0]
                if ready():
                    return True
                remaining = deadline - time.monotonic()
                if for_a_signal:
                    blocked = self.driver.blocked_s()
                    if blocked > self.default_timeout_s or (
                        remaining <= 0 and blocked > 0 and blocked >= 0.5 * timeout_s
                    ):
                        self.driver.fail_blocked(blocked, "while the check waited")
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, self.poll_s))

    # -- calls into the code under test -----------------------------------------------

    def call(self, fn: Callable[[], R], label: str | None = None) -> R:
        """Run ``fn`` (a call into the code under test) through the driver.

        ``label`` names the call in a report (``"request(1)"``); without one it is read
        off ``fn``.
        """
        check = self._active()
        if check.abandoned:
            raise _Abandoned
        return self.driver.call(fn, label if label is not None else _label_of(fn))

    def _enter_call(self, call: _Call) -> None:
        ident = threading.get_ident()
        with self.cond:
            if call.started is None:
                call.started = time.monotonic()
            self._calls.setdefault(ident, []).append(call)

    def _exit_call(self) -> None:
        ident = threading.get_ident()
        with self.cond:
            stack = self._calls.get(ident)
            if stack:
                stack.pop()
            if not stack:
                self._calls.pop(ident, None)

    def stuck_call(self, ident: int | None) -> tuple[_Call, float] | None:
        """The call thread ``ident`` is stuck in, if its outermost one is over budget.

        Timed from the outermost call; named after the innermost one (the kit's manual
        publisher records the subscriber's ``on_subscribe`` inside its ``subscribe``).
        """
        with self.cond:
            stack = self._calls.get(ident) if ident is not None else None
            outer, inner = (stack[0], stack[-1]) if stack else (None, None)
        if outer is None or inner is None or outer.started is None:
            return None
        elapsed = time.monotonic() - outer.started
        return (inner, elapsed) if elapsed > self.call_budget_s else None

    def innermost_label(self, ident: int | None, default: str) -> str:
        """The label of the innermost call running on thread ``ident``, else ``default``."""
        with self.cond:
            stack = self._calls.get(ident) if ident is not None else None
            return stack[-1].label if stack else default

    def in_call(self, ident: int | None) -> bool:
        """Whether thread ``ident`` is inside a call into the code under test."""
        with self.cond:
            return ident is not None and bool(self._calls.get(ident))

    def hang_message(self, label: str, seconds: float, ident: int | None, name: str) -> str:
        """The report of a call that did not return: the rule, the call, the stuck stack."""
        rule, why = call_rule(label)
        head = f"{label} did not return within {seconds:.1f} s ({why})"
        lines = [f"{rule}: {head}" if rule else head, format_stack(ident, name=name)]
        lines.extend(self._logs())
        return "\n".join(lines)

    def _logs(self, limit: int = 3) -> list[str]:
        """The signal logs of the active check's recorders (those that logged anything)."""
        logs = [r.describe() for r in list(self._active().recorders) if r.log]
        return logs[:limit]

    def note_signal(self) -> None:
        """Note one signal; called with ``cond`` held by the recorder that received it."""
        if threading.get_ident() not in self._calls:
            self.saw_foreign_signal = True

    def track(self, recorder: _Recorder[T]) -> None:
        """Attribute ``recorder`` to the active check (weakly held)."""
        self._active().recorders.add(recorder)

    # -- check lifecycle (used by the verification runner) ----------------------------

    def begin_check(
        self, *, use_asyncio: bool, saw_foreign_signal: bool, name: str = "check"
    ) -> _Check:
        """Start a new check record and a driver; the previous check's record is kept."""
        check = _Check(name)
        with self.cond:
            self._check = check
            self._calls.clear()
        self.saw_foreign_signal = saw_foreign_signal
        self.driver = _AsyncioDriver(self) if use_asyncio else _SyncDriver(self)
        self.driver.start()
        return check

    def bind_thread(self, check: _Check) -> None:
        """Make ``check`` the active check of the calling (worker) thread."""
        self._local.check = check

    def end_check(self) -> None:
        """Cancel what is still subscribed and stop the driver (errors are ignored).

        The check's recorders keep recording: a violation that arrives later is late.
        """
        check = self._active()
        driver = self.driver
        try:
            if not check.abandoned and not driver.broken:
                for recorder in list(check.recorders):
                    with contextlib.suppress(Exception, _Abandoned):
                        recorder.cleanup()
        finally:
            driver.stop()
            self.close_check(check)

    def close_check(self, check: _Check) -> None:
        """Mark ``check`` as returned: later violations of its recorders are late."""
        with self.cond:
            if check.ended_at is None:
                check.ended_at = time.monotonic()
        for recorder in list(check.recorders):
            recorder.retire()

    def note_interruption(self, what: str) -> None:
        """Remember that the kit had to interrupt the code under test (it hung)."""
        with self.cond:
            if self._interruption is None:
                self._interruption = what

    def take_interruption(self) -> str | None:
        """What the kit had to interrupt since the last call, if anything."""
        with self.cond:
            what, self._interruption = self._interruption, None
        return what

    def abandon(self, check: _Check) -> None:
        """Give up on ``check``: its waits and calls raise ``_Abandoned``, its recorders
        raise into any publisher that still signals them."""
        with self.cond:
            check.abandoned = True
            self.cond.notify_all()


# -- drivers: how calls reach the code under test ------------------------------------------


class _Driver:
    """Runs calls into the code under test: inline, or on an event loop."""

    def __init__(self, env: TestEnvironment) -> None:
        self.env = env
        # Set once a call hung: the kit makes no further calls through this driver.
        self.broken = False

    def start(self) -> None:
        """Prepare for a check."""

    def stop(self) -> None:
        """Release what ``start`` acquired (idempotent)."""

    def call(self, fn: Callable[[], R], label: str) -> R:
        """Run ``fn`` and return its result or raise its exception."""
        now = time.monotonic()
        self.env._enter_call(_Call(label, now, now))
        try:
            return fn()
        finally:
            self.env._exit_call()

    def settle(self) -> None:
        """Let work the code under test already scheduled run (no-op when inline)."""

    def blocked_s(self) -> float:
        """How long the event loop under test has not run its callbacks (0 when inline)."""
        return 0.0

    def fail_blocked(self, seconds: float, when: str) -> NoReturn:
        """Fail the check: the event loop has been blocked for ``seconds``."""
        raise AssertionError("only an event loop can be blocked")  # pragma: no cover


class _SyncDriver(_Driver):
    """Calls run inline on the calling thread (the watchdog bounds them from outside)."""


class _AsyncioDriver(_Driver):
    """Calls run on an event loop in a background thread, one loop per check.

    Publishers built on asyncio need a running loop; the kit marshals ``subscribe``,
    ``request``, ``cancel`` (and the factories) onto it and waits for each call to return.
    A call made on the loop thread itself (from inside a signal) runs inline.

    A heartbeat callback runs every ``_HEARTBEAT_S``; when it is late, something the code
    under test put on the loop does not return. A marshalled call that does not return
    within the call budget fails the check with the rule of that call; a loop that cannot
    be stopped at the end of the check is interrupted (``_watchdog.interrupt``) and, if even
    that fails, left behind as a leak.
    """

    def __init__(self, env: TestEnvironment) -> None:
        super().__init__(env)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._beat = time.monotonic()
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_loop_exception_handler)
        started = threading.Event()

        def beat() -> None:
            self._beat = time.monotonic()
            if not self._stopping:
                loop.call_later(_HEARTBEAT_S, beat)

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._ident = threading.get_ident()
            started.set()
            try:
                loop.call_soon(beat)
                loop.run_forever()
                tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            except _Abandoned:
                pass  # the kit gave up on this loop; leave quietly
            finally:
                with contextlib.suppress(_Abandoned):
                    asyncio.set_event_loop(None)
                    loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="spec_tck-asyncio-loop", daemon=True)
        self._thread.start()
        started.wait()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        self._stopping = True
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=max(0.5, min(self.env.default_timeout_s, self.env.grace_s * 2)))
        if not thread.is_alive():
            return
        if not self.broken:
            # Nothing reported it yet (the block began after the check's last wait).
            self.env.flop(self._blocked_message(self.blocked_s(), "when the check ended"))
        self.env.note_interruption("the event loop was blocked and had to be interrupted")
        if not interrupt(thread, self.env.grace_s):
            register_leak(thread, "an event loop blocked by the code under test")

    def blocked_s(self) -> float:
        if self._thread is None or self._stopping:
            return 0.0
        return max(0.0, time.monotonic() - self._beat - _HEARTBEAT_S)

    def _blocked_message(self, seconds: float, when: str) -> str:
        lines = [
            f"the event loop was blocked for {seconds:.1f} s {when}: a callback of the code "
            "under test does not return, so nothing else can run on the loop (no signal, no "
            "call from the kit)",
            format_stack(self._ident, name="spec_tck-asyncio-loop"),
            *self.env._logs(),
        ]
        return "\n".join(lines)

    def fail_blocked(self, seconds: float, when: str) -> NoReturn:
        self.broken = True
        self.env.note_interruption(f"the event loop was blocked for {seconds:.1f} s")
        self.env.fail_protocol(self._blocked_message(seconds, when))

    def call(self, fn: Callable[[], R], label: str) -> R:
        loop = self._loop
        if loop is None or threading.get_ident() == self._ident:
            return super().call(fn, label)
        if self.broken:
            raise _Abandoned  # the loop is known to be stuck; do not queue behind it
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        env = self.env
        record = _Call(label, time.monotonic())

        def run() -> None:
            env._enter_call(record)
            try:
                future.set_result(fn())
            except BaseException as error:
                future.set_exception(error)
            finally:
                env._exit_call()

        loop.call_soon_threadsafe(run)
        return self._wait(future, record)

    def _wait(self, future: concurrent.futures.Future[R], record: _Call) -> R:
        """Wait for a marshalled call, in slices, failing as soon as it counts as hung."""
        env = self.env
        check = env._active()
        budget = env.call_budget_s
        while True:
            try:
                return future.result(timeout=max(env.poll_s, 0.02))
            except concurrent.futures.TimeoutError:
                pass
            if check.abandoned:
                raise _Abandoned
            now = time.monotonic()
            if record.started is not None and now - record.started > budget:
                self.broken = True
                label = env.innermost_label(self._ident, record.label)
                env.note_interruption(f"{label} did not return")
                env.fail_protocol(
                    env.hang_message(
                        label, now - record.started, self._ident, "spec_tck-asyncio-loop"
                    )
                )
            if record.started is None and now - record.dispatched > budget:
                self.fail_blocked(self.blocked_s(), f"before {record.label} could even start on it")

    def settle(self) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._ident or self.broken:
            return

        async def spin() -> None:
            for _ in range(8):
                await asyncio.sleep(0)

        future = asyncio.run_coroutine_threadsafe(spin(), loop)
        self._wait(future, _Call("the kit's settle step", time.monotonic(), time.monotonic()))


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: the kit's own interruption is not news."""
    if isinstance(context.get("exception"), _Abandoned | _Runaway):
        return
    loop.default_exception_handler(context)


# -- Rule 2.3 markers ------------------------------------------------------------------------


def _spec_tck_rule_2_3_marker_frame_for_on_complete(subscriber: Subscriber[T]) -> None:
    subscriber.on_complete()


def _spec_tck_rule_2_3_marker_frame_for_on_error(
    subscriber: Subscriber[T], error: Exception
) -> None:
    subscriber.on_error(error)


# Matched by code object identity, never by name, so no user frame can be mistaken for one.
_TERMINAL_MARKERS: Final = {
    _spec_tck_rule_2_3_marker_frame_for_on_complete.__code__: "on_complete",
    _spec_tck_rule_2_3_marker_frame_for_on_error.__code__: "on_error",
}


def _inside_terminal_signal() -> str | None:
    frame = sys._getframe(1)
    while frame is not None:
        name = _TERMINAL_MARKERS.get(frame.f_code)
        if name is not None:
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return None


def call_on_complete(subscriber: Subscriber[T]) -> None:
    """Call ``subscriber.on_complete()`` under the Rule 2.3 marker frame."""
    _spec_tck_rule_2_3_marker_frame_for_on_complete(subscriber)


def call_on_error(subscriber: Subscriber[T], error: Exception) -> None:
    """Call ``subscriber.on_error(error)`` under the Rule 2.3 marker frame."""
    _spec_tck_rule_2_3_marker_frame_for_on_error(subscriber, error)


# -- recorders -------------------------------------------------------------------------------


def _show(value: object) -> str:
    if type(value) is int and abs(value) >= 2**62:
        sign, magnitude = ("-", -value) if value < 0 else ("", value)
        offset = magnitude - 2**63
        text = f"2**63{'+' if offset > 0 else '-'}{abs(offset)}" if offset else "2**63"
        return f"-({text})" if sign else text
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _compress(entries: list[str]) -> list[str]:
    """Shorten runs of more than three ``on_next`` entries from one thread."""
    out: list[str] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        end = index + 1
        if entry.startswith("on_next("):
            tag = entry[entry.rfind(" [") :] if entry.endswith("]") else ""
            while (
                end < len(entries)
                and entries[end].startswith("on_next(")
                and entries[end].endswith(tag)
            ):
                end += 1
        if end - index > 3:
            out.extend([entry, f"... {end - index - 2} more on_next ...", entries[end - 1]])
        else:
            out.extend(entries[index:end])
        index = end
    return out


class _Recorder(Generic[T]):
    """A log of received signals that the test thread consumes with ``expect_*``."""

    def __init__(self, env: TestEnvironment, name: str) -> None:
        self.env = env
        self.name = name
        # Invariant: everything below is guarded by env.cond.
        self.items: list[T] = []
        self.received = 0  # on_next count, also when items are not kept
        self._next_index = 0
        self.completions = 0
        self._completions_seen = 0
        self.errors: list[Exception] = []
        self._errors_seen = 0
        self.log: list[str] = []
        # The check this recorder belongs to: its violations go there, also late ones.
        self.check = env._active()
        # The last terminal signal or cancel() and when it happened (dates late violations).
        self._mark: tuple[str, float] | None = None
        env.track(self)

    # -- log ------------------------------------------------------------------------

    def _log(self, entry: str) -> None:
        self.log.append(entry)
        if len(self.log) > 4 * _LOG_TAIL:
            # Keep the first entries (how it started) and the latest ones.
            if self.log[_LOG_HEAD] != "...":
                self.log.insert(_LOG_HEAD, "...")
            del self.log[_LOG_HEAD + 1 : _LOG_HEAD + 1 + 2 * _LOG_TAIL]
        if self.env.debug:
            print(f"[spec_tck] {self.name}: {entry}", file=sys.stderr)

    def _thread_tag(self) -> str:
        return f" [{threading.current_thread().name}]"

    def describe(self) -> str:
        """The signal log, oldest first; runs of items are shortened, long logs cut."""
        with self.env.cond:
            entries = _compress(list(self.log))
        if len(entries) > _LOG_HEAD + _LOG_TAIL:
            entries = [*entries[:_LOG_HEAD], "...", *entries[-_LOG_TAIL:]]
        shown = entries
        prefix = ""
        return f"  signal log of {self.name}: {prefix}{', '.join(shown) or '(nothing)'}"

    def fail(self, message: str) -> NoReturn:
        """Fail the check with ``message`` and this recorder's signal log."""
        self.env.flop_and_fail(f"{message}\n{self.describe()}")

    def flop(self, message: str) -> None:
        """Record a violation (any thread) with this recorder's signal log, for its check."""
        self.env._flop_in(
            self.check, f"{message}\n{self.describe()}", protocol=True, since=self._mark
        )

    def _note_mark(self, event: str) -> None:
        """Remember ``event`` (a terminal signal, ``cancel()``) as the last thing that happened."""
        if self._mark is None:
            self._mark = (event, time.monotonic())

    def retire(self) -> None:
        """The check returned: keep checking signals, stop keeping what nobody will consume."""

    @property
    def terminated(self) -> bool:
        """Whether ``on_complete`` or ``on_error`` was received."""
        return bool(self.completions or self.errors)

    # -- consuming ------------------------------------------------------------------

    def _has_pending(self) -> bool:
        return (
            len(self.items) > self._next_index
            or self.completions > self._completions_seen
            or len(self.errors) > self._errors_seen
        )

    def _pending_text(self) -> str:
        if len(self.items) > self._next_index:
            return f"on_next({_show(self.items[self._next_index])})"
        if len(self.errors) > self._errors_seen:
            error = self.errors[self._errors_seen]
            return f"on_error({type(error).__name__}: {error})"
        if self.completions > self._completions_seen:
            return "on_complete()"
        return "no signal"

    def _wait_pending(self, timeout_s: float) -> bool:
        return self.env.wait_for(self._has_pending, timeout_s)

    def expect_next(self, what: str) -> T:
        """Wait for the next ``on_next`` and return its item."""
        if not self._wait_pending(self.env.default_timeout_s):
            self.fail(f"{what}: expected on_next within {self.env.default_timeout_ms:g} ms")
        with self.env.cond:
            if len(self.items) > self._next_index:
                item = self.items[self._next_index]
                self._next_index += 1
                return item
            pending = self._pending_text()
        self.fail(f"{what}: expected on_next, got {pending}")

    def expect_next_n(self, count: int, what: str) -> list[T]:
        """Wait for ``count`` items, all within one default timeout."""
        deadline = time.monotonic() + self.env.default_timeout_s
        items: list[T] = []
        for index in range(count):
            remaining = max(0.0, deadline - time.monotonic())
            if not self._wait_pending(remaining):
                self.fail(
                    f"{what}: expected {count} on_next signals within "
                    f"{self.env.default_timeout_ms:g} ms, got {index}"
                )
            items.append(self.expect_next(what))
        return items

    def expect_completion(self, what: str) -> None:
        """Wait for ``on_complete`` (with no unconsumed item or error before it)."""
        if not self._wait_pending(self.env.default_timeout_s):
            self.fail(f"{what}: expected on_complete within {self.env.default_timeout_ms:g} ms")
        with self.env.cond:
            if len(self.items) == self._next_index and len(self.errors) == self._errors_seen:
                self._completions_seen += 1
                return
            pending = self._pending_text()
        self.fail(f"{what}: expected on_complete, got {pending}")

    def expect_error(self, kind: type[Exception], what: str) -> Exception:
        """Wait for ``on_error`` with an instance of ``kind`` and return the error."""
        if not self._wait_pending(self.env.default_timeout_s):
            self.fail(
                f"{what}: expected on_error({kind.__name__}) within "
                f"{self.env.default_timeout_ms:g} ms, got no signal"
            )
        with self.env.cond:
            if len(self.errors) > self._errors_seen and len(self.items) == self._next_index:
                error = self.errors[self._errors_seen]
                self._errors_seen += 1
                if isinstance(error, kind):
                    return error
                pending = f"on_error({type(error).__name__}: {error})"
            else:
                pending = self._pending_text()
        self.fail(f"{what}: expected on_error({kind.__name__}), got {pending}")

    def expect_none(self, what: str) -> None:
        """Fail if any further signal arrives (within the no-signals window, if any)."""
        window = self.env.quiet_window_s()
        if window > 0:
            self.env.driver.settle()
        if self.env.wait_for(self._has_pending, window):
            with self.env.cond:
                pending = self._pending_text()
            self.fail(f"{what}: expected no further signal, got {pending}")

    def drain_items(self) -> list[T]:
        """Consume and return every item received so far."""
        with self.env.cond:
            items = self.items[self._next_index :]
            self._next_index = len(self.items)
            return items

    def verify_no_unexpected_error(self) -> None:
        """Fail if an ``on_error`` arrived that no check consumed."""
        with self.env.cond:
            if len(self.errors) <= self._errors_seen:
                return
            error = self.errors[self._errors_seen]
        self.fail(f"unexpected on_error({type(error).__name__}: {error})")

    def cleanup(self) -> None:
        """Release what the check left subscribed (nothing by default)."""

    def runaway(self) -> bool:
        """Whether the check gave up, so any further signal is raised back at once."""
        return self.check.abandoned


class ManualSubscriber(_Recorder[T]):
    """The kit's subscriber: records signals and checks them as they arrive.

    Checked on every signal, whatever the check: Rule 1.9 (``on_subscribe`` first and
    once), Rule 1.7 (nothing after a terminal signal), Rule 1.1 (never more items than
    requested before ``cancel()``), Rule 1.3 (no two threads inside signals at once;
    synchronous re-entry on one thread is allowed) and ``None`` items (Rule 2.13).

    Hooks run inside ``on_subscribe`` and ``on_next`` and may call ``request_direct`` and
    ``cancel_direct`` (the synchronous calls Rule 3.2 allows).
    """

    def __init__(
        self,
        env: TestEnvironment,
        name: str = "subscriber",
        *,
        on_subscribe_hook: Callable[[ManualSubscriber[T]], None] | None = None,
        on_next_hook: Callable[[ManualSubscriber[T], T], None] | None = None,
        keep_items: bool = True,
        runaway_limit: int = 100_000,
    ) -> None:
        """Create a subscriber reporting to ``env``."""
        super().__init__(env, name)
        self.subscription: Subscription | None = None
        self.subscribe_count = 0
        self.requested = 0  # total demand, capped at UNBOUNDED, before cancel()
        self.cancelled = False
        self.requests_after_cancel = 0
        self.received_after_cancel = 0
        self._on_subscribe_hook = on_subscribe_hook
        self._on_next_hook = on_next_hook
        self._keep_items = keep_items
        self._runaway_limit = runaway_limit
        # Signals that broke a rule (after a terminal signal, beyond the demand); past
        # _VIOLATION_LIMIT the publisher is spinning and the kit raises into it.
        self._violations = 0
        self._stopped_reported = False
        # Rule 1.3 barrier: the thread inside a signal method, and how deeply it re-entered.
        self._inside: int | None = None
        self._inside_name = ""
        self._depth = 0

    # -- Rule 1.3 barrier ------------------------------------------------------------

    def _enter(self, signal: str) -> None:
        ident = threading.get_ident()
        if self._inside is not None and self._inside != ident:
            self.flop(
                f"Rule 1.3: {signal} entered on thread {threading.current_thread().name!r} "
                f"while thread {self._inside_name!r} was still inside a signal to the same "
                "subscriber (signals must be serial)"
            )
            return
        self._inside = ident
        self._inside_name = threading.current_thread().name
        self._depth += 1

    def _exit(self) -> None:
        if self._inside == threading.get_ident():
            self._depth -= 1
            if self._depth == 0:
                self._inside = None

    # -- Subscriber ------------------------------------------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Record the subscription (Rule 1.9 order checks)."""
        if subscription is None:
            raise TypeError("on_subscribe(None): Rule 2.13")
        duplicate = False
        with self.env.cond:
            self._enter("on_subscribe")
            try:
                self.env.note_signal()
                self._log("on_subscribe" + self._thread_tag())
                self.subscribe_count += 1
                if self.subscribe_count > 1:
                    duplicate = True
                    self.flop("Rule 1.9: on_subscribe was called a second time")
                elif self.received or self.terminated:
                    self.flop("Rule 1.9: on_subscribe arrived after another signal")
                else:
                    self.subscription = subscription
                self.env.cond.notify_all()
            finally:
                if duplicate:
                    self._exit()
        if duplicate:
            return
        try:
            if self._on_subscribe_hook is not None:
                self._on_subscribe_hook(self)
        finally:
            with self.env.cond:
                self._exit()

    def _violation(self, message: str) -> None:
        """Count a signal that broke a rule; flop the first few in full (``cond`` held)."""
        self._violations += 1
        if self._violations <= _VIOLATIONS_REPORTED:
            self.flop(message)

    def _stop_runaway(self, message: str) -> None:
        """Raise into a publisher that keeps signalling; flop ``message`` the first time."""
        with self.env.cond:
            first = not self._stopped_reported
            self._stopped_reported = True
        if first and message:
            self.flop(message)
        raise _Runaway("spec_tck: the publisher keeps signalling; stopped by the kit")

    def _check_spinning(self) -> None:
        """Stop a publisher that signals on and on where it must not (any signal)."""
        if self.runaway():
            self._stop_runaway("")
        if self._violations > _VIOLATION_LIMIT:
            self._stop_runaway(
                f"the publisher kept signalling after breaking a rule ({self._violations} "
                "signals after a terminal signal or beyond the demand); the kit raised into "
                "it to stop it"
            )

    def retire(self) -> None:
        """The check returned: keep checking signals, stop keeping items nobody consumes."""
        self._keep_items = False

    def on_next(self, item: T) -> None:
        """Record an item (Rules 1.1, 1.7, 1.9, 2.13 checks)."""
        if item is None:
            self.flop("Rule 2.13: the publisher signalled on_next(None); None is never an item")
            raise TypeError("on_next(None): Rule 2.13")
        runaway = False
        with self.env.cond:
            self._enter("on_next")
            self.env.note_signal()
            self._log(f"on_next({_show(item)})" + self._thread_tag())
            self.received += 1
            if self.subscription is None:
                self._violation(f"Rule 1.9: on_next({_show(item)}) arrived before on_subscribe")
            elif self.terminated:
                self._violation(f"Rule 1.7: on_next({_show(item)}) arrived after a terminal signal")
            elif self.received > self.requested:
                note = ""
                if self.requests_after_cancel:
                    note = " (request() after cancel() adds no demand: Rule 3.6)"
                elif self.cancelled:
                    note = " (after cancel(); Rules 1.8, 3.12)"
                self._violation(
                    f"Rule 1.1: on_next #{self.received} exceeds the total demand of "
                    f"{self.requested}{note}"
                )
            if self._keep_items:
                self.items.append(item)
            if self.cancelled:
                self.received_after_cancel += 1
                runaway = self.received_after_cancel > self._runaway_limit
            self.env.cond.notify_all()
        try:
            if runaway:
                self._stop_runaway(
                    f"Rule 3.12: the publisher signalled {self.received_after_cancel} items "
                    "after cancel() and kept going; the kit raised into it to stop it"
                )
            self._check_spinning()
            if self._on_next_hook is not None:
                self._on_next_hook(self, item)
        finally:
            with self.env.cond:
                self._exit()

    def on_error(self, error: Exception) -> None:
        """Record the error (Rules 1.7, 1.9 checks)."""
        if error is None:
            self.flop("Rule 2.13: the publisher signalled on_error(None)")
            raise TypeError("on_error(None): Rule 2.13")
        with self.env.cond:
            self._enter("on_error")
            try:
                self.env.note_signal()
                self._log(f"on_error({type(error).__name__}: {error})" + self._thread_tag())
                if self.subscription is None:
                    self._violation("Rule 1.9: on_error arrived before on_subscribe")
                elif self.terminated:
                    self._violation("Rule 1.7: on_error arrived after a terminal signal")
                if len(self.errors) < _KEEP_ERRORS:  # bounded, for a publisher that spins
                    self.errors.append(error)
                self._note_mark("on_error")
                self.env.cond.notify_all()
            finally:
                self._exit()
        self._check_spinning()

    def on_complete(self) -> None:
        """Record completion (Rules 1.7, 1.9 checks)."""
        with self.env.cond:
            self._enter("on_complete")
            try:
                self.env.note_signal()
                self._log("on_complete" + self._thread_tag())
                if self.subscription is None:
                    self._violation("Rule 1.9: on_complete arrived before on_subscribe")
                elif self.terminated:
                    self._violation("Rule 1.7: on_complete arrived after a terminal signal")
                self.completions += 1
                self._note_mark("on_complete")
                self.env.cond.notify_all()
            finally:
                self._exit()
        self._check_spinning()

    # -- driving ---------------------------------------------------------------------

    def expect_subscription(self, what: str = "Rule 1.9") -> Subscription:
        """Wait for ``on_subscribe`` and return the subscription."""
        if not self.env.wait_for(lambda: self.subscribe_count > 0, self.env.default_timeout_s):
            self.fail(
                f"{what}: on_subscribe did not arrive within {self.env.default_timeout_ms:g} ms "
                "of subscribe()"
            )
        with self.env.cond:
            subscription = self.subscription
        if subscription is None:
            self.fail(f"{what}: no valid on_subscribe")
        return subscription

    def _account_request(self, n: int) -> None:
        with self.env.cond:
            self._log(f"request({_show(n)})")
            if self.cancelled:
                self.requests_after_cancel += 1
            elif type(n) is int and n > 0:
                self.requested = add_cap(self.requested, n)

    def request(self, n: int) -> None:
        """Call ``request(n)`` from the test thread; it must return normally."""
        subscription = self.expect_subscription()
        self._account_request(n)
        try:
            self.env.call(lambda: subscription.request(n), f"request({_show(n)})")
        except SpecViolation:
            raise
        except Exception as error:
            self.fail(
                f"Rule 3.16: request({n}) raised {type(error).__name__}: {error} instead of "
                "returning normally (a bad request must be signalled with on_error, Rule 3.9)"
            )

    def request_direct(self, n: int) -> None:
        """Call ``request(n)`` inline, from inside a signal (Rule 3.2)."""
        with self.env.cond:
            subscription = self.subscription
        if subscription is None:
            return
        self._account_request(n)
        # Recorded, so that a request() that does not return is named as such.
        now = time.monotonic()
        self.env._enter_call(_Call(f"request({_show(n)})", now, now))
        try:
            subscription.request(n)
        except _Runaway:
            raise
        except Exception as error:
            self.flop(f"Rule 3.16: request({n}) raised {type(error).__name__}: {error}")
        finally:
            self.env._exit_call()

    def cancel(self) -> None:
        """Call ``cancel()`` from the test thread; it must return normally."""
        subscription = self.expect_subscription()
        with self.env.cond:
            self._log("cancel()")
            self.cancelled = True
            self._note_mark("cancel()")
        try:
            self.env.call(subscription.cancel, "cancel()")
        except SpecViolation:
            raise
        except Exception as error:
            self.fail(f"Rule 3.15: cancel() raised {type(error).__name__}: {error}")

    def cancel_direct(self) -> None:
        """Call ``cancel()`` inline, from inside a signal."""
        with self.env.cond:
            subscription = self.subscription
            self._log("cancel()")
            self.cancelled = True
            self._note_mark("cancel()")
        if subscription is not None:
            now = time.monotonic()
            self.env._enter_call(_Call("cancel()", now, now))
            try:
                subscription.cancel()
            except Exception as error:
                self.flop(f"Rule 3.15: cancel() raised {type(error).__name__}: {error}")
            finally:
                self.env._exit_call()

    def cleanup(self) -> None:
        """Cancel the subscription if the check left it active."""
        with self.env.cond:
            subscription = self.subscription
            active = subscription is not None and not self.cancelled and not self.terminated
            self.cancelled = True
            if active:
                self._note_mark("cancel()")
        if active and subscription is not None:
            # Cleanup only: a raising cancel() is not reported here; one that does not
            # return is (the watchdog names it).
            with contextlib.suppress(Exception):
                self.env.call(subscription.cancel, "cancel() (the kit's cleanup after the check)")


# -- the whitebox probe ----------------------------------------------------------------------


class SubscriberPuppet(Protocol):
    """What a whitebox subscriber hands the probe: a way to make it request or cancel.

    ``trigger_request(n)`` must make the subscriber eventually request at least ``n`` more
    (all at once or one by one); ``signal_cancel()`` must make it cancel.
    """

    def trigger_request(self, n: int) -> None:
        """Make the subscriber request ``n`` more items."""

    def signal_cancel(self) -> None:
        """Make the subscriber cancel its subscription."""


class WhiteboxSubscriberProbe(_Recorder[T]):
    """What a whitebox subscriber under test reports to.

    The subscriber calls ``register_on_subscribe(puppet)`` from ``on_subscribe``, and
    ``register_on_next``/``register_on_error``/``register_on_complete`` from the matching
    signal methods.
    """

    def __init__(self, env: TestEnvironment, name: str = "probe") -> None:
        """Create a probe reporting to ``env``."""
        super().__init__(env, name)
        self.puppet: SubscriberPuppet | None = None

    def register_on_subscribe(self, puppet: SubscriberPuppet) -> None:
        """Report ``on_subscribe``; ``puppet`` lets the kit drive the subscriber."""
        with self.env.cond:
            self.env.note_signal()
            self._log("register_on_subscribe" + self._thread_tag())
            if self.puppet is not None:
                self.flop("Rule 2.12: register_on_subscribe was called twice")
            self.puppet = puppet
            self.env.cond.notify_all()

    def register_on_next(self, item: T) -> None:
        """Report that ``on_next(item)`` reached the subscriber."""
        with self.env.cond:
            self.env.note_signal()
            self._log(f"register_on_next({_show(item)})" + self._thread_tag())
            if self.terminated:
                self.flop("Rule 1.7: the subscriber reported on_next after a terminal signal")
            self.items.append(item)
            self.received += 1
            self.env.cond.notify_all()

    def register_on_error(self, error: Exception) -> None:
        """Report that ``on_error(error)`` reached the subscriber."""
        with self.env.cond:
            self.env.note_signal()
            self._log(f"register_on_error({type(error).__name__})" + self._thread_tag())
            self.errors.append(error)
            self.env.cond.notify_all()

    def register_on_complete(self) -> None:
        """Report that ``on_complete()`` reached the subscriber."""
        with self.env.cond:
            self.env.note_signal()
            self._log("register_on_complete" + self._thread_tag())
            self.completions += 1
            self.env.cond.notify_all()

    def verify_no_unexpected_error(self) -> None:
        """Errors the probe saw were sent by the kit itself; nothing to verify."""

    def expect_puppet(self, what: str = "setup") -> SubscriberPuppet:
        """Wait for ``register_on_subscribe`` and return the puppet."""
        if not self.env.wait_for(lambda: self.puppet is not None, self.env.default_timeout_s):
            self.fail(
                f"{what}: the subscriber did not call probe.register_on_subscribe(puppet) within "
                f"{self.env.default_timeout_ms:g} ms of on_subscribe; wrap the subscriber so "
                "that it reports to the probe"
            )
        assert self.puppet is not None
        return self.puppet


# -- the manual publisher (drives a subscriber under test) ----------------------------------


class _ManualSubscription:
    """The subscription a ``ManualPublisher`` hands out: it only records calls."""

    def __init__(self, publisher: ManualPublisher) -> None:
        self._publisher = publisher

    def request(self, n: int) -> None:
        self._publisher._on_request(self, n)

    def cancel(self) -> None:
        self._publisher._on_cancel(self)


class ManualPublisher(_Recorder[int]):
    """A publisher the check drives by hand; it records demand and cancellation.

    Every ``request``/``cancel`` it sees is checked against Rule 2.3: neither may run while
    the kit is calling the subscriber's ``on_complete`` or ``on_error``.
    """

    def __init__(self, env: TestEnvironment, name: str = "stage publisher") -> None:
        """Create a publisher reporting to ``env``."""
        super().__init__(env, name)
        self.subscriber: Subscriber[object] | None = None
        self.subscription: _ManualSubscription | None = None
        self.total_requested = 0
        self.cancel_count = 0
        self.extra_subscriptions: dict[int, list[str]] = {}

    def subscribe(self, subscriber: Subscriber[object]) -> None:
        """Attach the one subscriber and call its ``on_subscribe``."""
        if subscriber is None:
            raise TypeError("subscribe(None): Rule 1.9")
        with self.env.cond:
            if self.subscriber is not None:
                self.flop("the kit's manual publisher accepts a single subscriber")
                return
            self.subscriber = subscriber
            self.subscription = _ManualSubscription(self)
            self._log("subscribe")
        # The code under test here is the subscriber: a hang is its on_subscribe (Rule 2.13).
        now = time.monotonic()
        self.env._enter_call(_Call("on_subscribe()", now, now))
        try:
            subscriber.on_subscribe(self.subscription)
        finally:
            self.env._exit_call()

    def new_subscription(self) -> _ManualSubscription:
        """A further subscription (for Rule 2.5) whose calls are recorded separately."""
        subscription = _ManualSubscription(self)
        with self.env.cond:
            self.extra_subscriptions[id(subscription)] = []
        return subscription

    def _on_request(self, subscription: _ManualSubscription, n: object) -> None:
        inside = _inside_terminal_signal()
        with self.env.cond:
            self._log(f"request({_show(n)})" + self._thread_tag())
            if inside is not None:
                self.flop(f"Rule 2.3: the subscriber called request({n!r}) from within {inside}")
            extra = self.extra_subscriptions.get(id(subscription))
            if extra is not None:
                extra.append(f"request({_show(n)})")
            else:
                if type(n) is int and n > 0:
                    self.total_requested = add_cap(self.total_requested, n)
                self.items.append(n)  # type: ignore[arg-type]
            self.env.cond.notify_all()

    def _on_cancel(self, subscription: _ManualSubscription) -> None:
        inside = _inside_terminal_signal()
        with self.env.cond:
            self._log("cancel()" + self._thread_tag())
            if inside is not None:
                self.flop(f"Rule 2.3: the subscriber called cancel() from within {inside}")
            extra = self.extra_subscriptions.get(id(subscription))
            if extra is not None:
                extra.append("cancel()")
            else:
                self.cancel_count += 1
            self.env.cond.notify_all()

    # -- the check's side -------------------------------------------------------------

    def _subscriber(self) -> Subscriber[object]:
        if self.subscriber is None:
            self.fail("the subscriber under test was never subscribed")
        return self.subscriber

    def send_next(self, item: object, what: str) -> None:
        """Call ``on_next(item)``; it must return normally (Rule 2.13)."""
        subscriber = self._subscriber()
        with self.env.cond:
            self._log(f"send on_next({_show(item)})")
        self._send(lambda: subscriber.on_next(item), f"on_next({_show(item)})", what)

    def send_completion(self, what: str) -> None:
        """Call ``on_complete()`` under the Rule 2.3 marker; it must return normally."""
        subscriber = self._subscriber()
        with self.env.cond:
            self._log("send on_complete()")
        self._send(lambda: call_on_complete(subscriber), "on_complete()", what)

    def send_error(self, error: Exception, what: str) -> None:
        """Call ``on_error(error)`` under the Rule 2.3 marker; it must return normally."""
        subscriber = self._subscriber()
        with self.env.cond:
            self._log(f"send on_error({type(error).__name__})")
        self._send(lambda: call_on_error(subscriber, error), "on_error(...)", what)

    def _send(self, fn: Callable[[], None], signal: str, what: str) -> None:
        try:
            self.env.call(fn)
        except SpecViolation:
            raise
        except Exception as error:
            self.fail(
                f"{what}: Rule 2.13: {signal} raised {type(error).__name__}: {error} instead "
                "of returning normally"
            )

    def expect_request(self, what: str) -> int:
        """Wait for the next ``request(n)``; ``n`` must be a positive int (Rule 3.9)."""
        if not self.env.wait_for(
            lambda: len(self.items) > self._next_index, self.env.default_timeout_s
        ):
            self.fail(
                f"{what}: expected the subscriber to call request(n) within "
                f"{self.env.default_timeout_ms:g} ms (Rule 2.1)"
            )
        n = self.expect_next(what)
        if type(n) is not int or n <= 0:
            self.fail(f"{what}: the subscriber called request({n!r}); n must be an int > 0")
        return n

    def pending_requests(self) -> list[int]:
        """Consume requests that already arrived (without waiting)."""
        return self.drain_items()

    def expect_cancelling(self, what: str) -> None:
        """Wait for ``cancel()``."""
        if not self.env.wait_for(lambda: self.cancel_count > 0, self.env.default_timeout_s):
            self.fail(
                f"{what}: expected the subscriber to call cancel() within "
                f"{self.env.default_timeout_ms:g} ms"
            )

    def verify_no_unexpected_error(self) -> None:
        """Requests are not errors; nothing to verify."""
