"""The test environment: timeouts, the error list, how calls reach the code under test.

Assertions that fire on a publisher's thread must not raise into that thread, so they are
recorded ("flopped") in the environment and re-raised on the test thread at the next wait
or at the end of the check. Every wait returns as soon as what it waits for happens, or as
soon as something was flopped: a failing check does not sit out its timeout.

Quiescence: a check that must see *nothing* happen ("expect none") needs a window only when
the code under test has shown it signals from elsewhere. The environment notes, for every
signal, whether it arrived on the thread that was inside a call into the code under test.
While every signal so far arrived that way (a synchronous publisher), there is nothing to
wait for once the call has returned, and the window is zero. After the first signal from
another thread or a later event-loop callback, the no-signals window applies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, NoReturn, Protocol, TypeVar

from reactive_bp._core._demand import add_cap

if TYPE_CHECKING:
    from reactive_bp.abc import Subscriber, Subscription

__all__ = [
    "DEFAULT_TIMEOUT_ENV",
    "GC_TIMEOUT_ENV",
    "NO_SIGNALS_TIMEOUT_ENV",
    "POLL_TIMEOUT_ENV",
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
NO_SIGNALS_TIMEOUT_ENV: Final = "SPEC_TCK_NO_SIGNALS_TIMEOUT_MS"
POLL_TIMEOUT_ENV: Final = "SPEC_TCK_POLL_TIMEOUT_MS"
GC_TIMEOUT_ENV: Final = "SPEC_TCK_GC_TIMEOUT_MS"
DEBUG_ENV: Final = "SPEC_TCK_DEBUG"

_DEFAULTS_MS: Final = {
    DEFAULT_TIMEOUT_ENV: 1000.0,
    NO_SIGNALS_TIMEOUT_ENV: 50.0,
    POLL_TIMEOUT_ENV: 10.0,
    GC_TIMEOUT_ENV: 1000.0,
}
_LOG_TAIL: Final = 40
_LOG_HEAD: Final = 8


class SpecViolation(AssertionError):
    """A rule was broken, or what the rule requires did not happen in time."""


class SkipCheck(Exception):
    """The check does not apply to this configuration; reported as skipped."""


class _Runaway(Exception):
    """Raised into a publisher that keeps signalling long after cancel(), to stop it."""


def _ms_from_env(name: str) -> float:
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


class TestEnvironment:
    """Timeouts and shared state for the checks of one verification.

    Every timeout is a constructor argument; an argument left out is read from its
    environment variable, and falls back to the default:

    ==========================  ==================================  =======
    argument                    environment variable                default
    ==========================  ==================================  =======
    ``default_timeout_ms``      ``SPEC_TCK_DEFAULT_TIMEOUT_MS``     1000
    ``no_signals_timeout_ms``   ``SPEC_TCK_NO_SIGNALS_TIMEOUT_MS``  50
    ``poll_timeout_ms``         ``SPEC_TCK_POLL_TIMEOUT_MS``        10
    ``gc_timeout_ms``           ``SPEC_TCK_GC_TIMEOUT_MS``          1000
    ==========================  ==================================  =======

    * The default timeout bounds every wait for a signal; a wait ends as soon as the
      signal arrives, so a generous value costs nothing on a passing run.
    * The no-signals timeout is how long "nothing more arrives" is watched for, and only
      once the code under test has signalled from another thread or a later event-loop
      callback (synchronous publishers need no window at all).
    * The poll timeout is the slice in which waits re-check their condition.
    * The GC timeout bounds Rule 3.13: how long a cancelled subscriber may stay reachable
      (``gc.collect()`` is retried every poll slice, so a correct publisher passes at once).

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
    ) -> None:
        """Create an environment; ``None`` means "from the environment variable"."""
        self.default_timeout_ms = (
            _ms_from_env(DEFAULT_TIMEOUT_ENV) if default_timeout_ms is None else default_timeout_ms
        )
        self.no_signals_timeout_ms = (
            _ms_from_env(NO_SIGNALS_TIMEOUT_ENV)
            if no_signals_timeout_ms is None
            else no_signals_timeout_ms
        )
        self.poll_timeout_ms = (
            _ms_from_env(POLL_TIMEOUT_ENV) if poll_timeout_ms is None else poll_timeout_ms
        )
        self.gc_timeout_ms = (
            _ms_from_env(GC_TIMEOUT_ENV) if gc_timeout_ms is None else gc_timeout_ms
        )
        for label, value in (
            ("default_timeout_ms", self.default_timeout_ms),
            ("no_signals_timeout_ms", self.no_signals_timeout_ms),
            ("poll_timeout_ms", self.poll_timeout_ms),
            ("gc_timeout_ms", self.gc_timeout_ms),
        ):
            if value < 0:
                raise ValueError(f"{label} must not be negative, got {value}")
        self.debug = bool(os.environ.get(DEBUG_ENV)) if debug is None else debug
        # One condition guards every recorder of the current check, so a flop wakes any wait.
        self.cond = threading.Condition(threading.RLock())
        # Invariant: guarded by cond; cleared at the start of every check.
        self._flops: list[SpecViolation] = []
        # thread ident -> depth of calls into the code under test running on that thread.
        self._in_call: dict[int, int] = {}
        self.saw_foreign_signal = False
        self._tracked: weakref.WeakSet[_Recorder[object]] = weakref.WeakSet()
        self.driver: _Driver = _SyncDriver(self)

    # -- durations --------------------------------------------------------------------

    @property
    def default_timeout_s(self) -> float:
        """The default timeout in seconds."""
        return self.default_timeout_ms / 1000

    @property
    def poll_s(self) -> float:
        """The poll slice in seconds (at least a millisecond)."""
        return max(self.poll_timeout_ms, 1.0) / 1000

    def quiet_window_s(self) -> float:
        """How long "nothing more happens" must be watched for right now."""
        return self.no_signals_timeout_ms / 1000 if self.saw_foreign_signal else 0.0

    # -- flops ------------------------------------------------------------------------

    def flop(self, message: str) -> None:
        """Record a violation seen on any thread; the test thread raises it later."""
        with self.cond:
            self._flops.append(SpecViolation(message))
            self.cond.notify_all()
        if self.debug:
            print(f"[spec_tck] FLOP {message}", file=sys.stderr)

    def flop_and_fail(self, message: str) -> NoReturn:
        """Record a violation and raise it (only on the test thread)."""
        violation = SpecViolation(message)
        with self.cond:
            self._flops.append(violation)
            first = self._flops[0]
        raise first if first is not violation else violation

    def raise_if_flopped(self) -> None:
        """Raise the first recorded violation, if any."""
        with self.cond:
            if self._flops:
                raise self._flops[0]

    def verify_no_async_errors(self) -> None:
        """Fail on a recorded violation or on an ``on_error`` no check consumed."""
        self.raise_if_flopped()
        for recorder in list(self._tracked):
            recorder.verify_no_unexpected_error()

    # -- waiting ----------------------------------------------------------------------

    def wait_for(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``ready()``; ``False`` on timeout. Raises a flop as soon as one happens.

        The budget is a deadline, so every slice counts against the total.
        """
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                if self._flops:
                    raise self._flops[0]
                if ready():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, self.poll_s))

    # -- calls into the code under test -----------------------------------------------

    def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` (a call into the code under test) through the driver."""
        return self.driver.call(fn)

    def _enter_call(self) -> None:
        ident = threading.get_ident()
        with self.cond:
            self._in_call[ident] = self._in_call.get(ident, 0) + 1

    def _exit_call(self) -> None:
        ident = threading.get_ident()
        with self.cond:
            depth = self._in_call.get(ident, 1) - 1
            if depth:
                self._in_call[ident] = depth
            else:
                self._in_call.pop(ident, None)

    def note_signal(self) -> None:
        """Note one signal; called with ``cond`` held by the recorder that received it."""
        if threading.get_ident() not in self._in_call:
            self.saw_foreign_signal = True

    def track(self, recorder: _Recorder[T]) -> None:
        """Verify ``recorder`` at the end of the check and clean it up (weakly held)."""
        self._tracked.add(recorder)  # type: ignore[arg-type]

    # -- check lifecycle (used by the verification runner) ----------------------------

    def begin_check(self, *, use_asyncio: bool, saw_foreign_signal: bool) -> None:
        """Reset per-check state and start the driver."""
        with self.cond:
            self._flops.clear()
            self._in_call.clear()
        self._tracked = weakref.WeakSet()
        self.saw_foreign_signal = saw_foreign_signal
        self.driver = _AsyncioDriver(self) if use_asyncio else _SyncDriver(self)
        self.driver.start()

    def end_check(self) -> None:
        """Cancel what is still subscribed and stop the driver (errors are ignored)."""
        for recorder in list(self._tracked):
            recorder.cleanup()
        self._tracked = weakref.WeakSet()
        self.driver.stop()


# -- drivers: how calls reach the code under test ------------------------------------------


class _Driver:
    """Runs calls into the code under test: inline, or on an event loop."""

    def __init__(self, env: TestEnvironment) -> None:
        self.env = env

    def start(self) -> None:
        """Prepare for a check."""

    def stop(self) -> None:
        """Release what ``start`` acquired."""

    def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` and return its result or raise its exception."""
        self.env._enter_call()
        try:
            return fn()
        finally:
            self.env._exit_call()

    def settle(self) -> None:
        """Let work the code under test already scheduled run (no-op when inline)."""


class _SyncDriver(_Driver):
    """Calls run inline on the calling thread."""


class _AsyncioDriver(_Driver):
    """Calls run on an event loop in a background thread, one loop per check.

    Publishers built on asyncio need a running loop; the kit marshals ``subscribe``,
    ``request``, ``cancel`` (and the factories) onto it and waits for each call to return.
    A call made on the loop thread itself (from inside a signal) runs inline.
    """

    def __init__(self, env: TestEnvironment) -> None:
        super().__init__(env)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._ident = threading.get_ident()
            started.set()
            try:
                loop.run_forever()
                tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
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
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=max(5.0, self.env.default_timeout_s))

    def call(self, fn: Callable[[], R]) -> R:
        loop = self._loop
        if loop is None or threading.get_ident() == self._ident:
            return super().call(fn)
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        env = self.env

        def run() -> None:
            env._enter_call()
            try:
                future.set_result(fn())
            except BaseException as error:
                future.set_exception(error)
            finally:
                env._exit_call()

        loop.call_soon_threadsafe(run)
        limit = max(5.0, 10 * env.default_timeout_s)
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            env.flop_and_fail(
                f"Rules 3.4/3.5: a call into the code under test did not return within "
                f"{limit:.1f} s on the event loop (it must not block the loop)"
            )

    def settle(self) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._ident:
            return

        async def spin() -> None:
            for _ in range(8):
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(spin(), loop).result(timeout=self.env.default_timeout_s)


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
        """Record a violation (any thread) with this recorder's signal log."""
        self.env.flop(f"{message}\n{self.describe()}")

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
                self.flop(f"Rule 1.9: on_next({_show(item)}) arrived before on_subscribe")
            elif self.terminated:
                self.flop(f"Rule 1.7: on_next({_show(item)}) arrived after a terminal signal")
            elif self.received > self.requested:
                note = ""
                if self.requests_after_cancel:
                    note = " (request() after cancel() adds no demand: Rule 3.6)"
                elif self.cancelled:
                    note = " (after cancel(); Rules 1.8, 3.12)"
                self.flop(
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
                self.flop(
                    f"Rule 3.12: the publisher signalled {self.received_after_cancel} items "
                    "after cancel() and kept going; the kit raised into it to stop it"
                )
                raise _Runaway("spec_tck: publisher ignored cancel()")
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
                    self.flop("Rule 1.9: on_error arrived before on_subscribe")
                elif self.terminated:
                    self.flop("Rule 1.7: on_error arrived after a terminal signal")
                self.errors.append(error)
                self.env.cond.notify_all()
            finally:
                self._exit()

    def on_complete(self) -> None:
        """Record completion (Rules 1.7, 1.9 checks)."""
        with self.env.cond:
            self._enter("on_complete")
            try:
                self.env.note_signal()
                self._log("on_complete" + self._thread_tag())
                if self.subscription is None:
                    self.flop("Rule 1.9: on_complete arrived before on_subscribe")
                elif self.terminated:
                    self.flop("Rule 1.7: on_complete arrived after a terminal signal")
                self.completions += 1
                self.env.cond.notify_all()
            finally:
                self._exit()

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
            self.env.call(lambda: subscription.request(n))
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
        try:
            subscription.request(n)
        except _Runaway:
            raise
        except Exception as error:
            self.flop(f"Rule 3.16: request({n}) raised {type(error).__name__}: {error}")

    def cancel(self) -> None:
        """Call ``cancel()`` from the test thread; it must return normally."""
        subscription = self.expect_subscription()
        with self.env.cond:
            self._log("cancel()")
            self.cancelled = True
        try:
            self.env.call(subscription.cancel)
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
        if subscription is not None:
            try:
                subscription.cancel()
            except Exception as error:
                self.flop(f"Rule 3.15: cancel() raised {type(error).__name__}: {error}")

    def cleanup(self) -> None:
        """Cancel the subscription if the check left it active."""
        with self.env.cond:
            subscription = self.subscription
            active = subscription is not None and not self.cancelled and not self.terminated
            self.cancelled = True
        if active and subscription is not None:
            # Cleanup only: the check has already ended, so a failure here is not reported.
            with contextlib.suppress(Exception):
                self.env.call(subscription.cancel)


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
        subscriber.on_subscribe(self.subscription)

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
