"""``DemandVerification``: does an operator handle demand correctly? (Hypothesis-driven)

An operator is any ``Callable[[Publisher[T]], Publisher[R]]``. The checker puts an
instrumented upstream under it, subscribes a recording subscriber below it, and plays a
random *schedule* of steps: ``request(k)`` and ``cancel()`` from downstream, ``emit(x)``,
``complete()`` and ``error()`` from upstream. ``emit`` only sends within the demand the
operator granted upstream. After every step it checks:

* downstream never gets more items than it requested (Rule 1.1);
* downstream gets nothing after a terminal signal (Rule 1.7) or after ``cancel()``
  returned (synchronous operators; Rule 1.8 lets asynchronous ones take a moment);
* the operator never requests ``n <= 0`` (or a non-int) upstream (Rule 3.9);
* the demand outstanding upstream stays within the declared ``upstream_bound``;
* a downstream ``cancel()`` reaches upstream (Rule 3.12);
* what was delivered is a prefix of ``model(emitted so far)`` (nothing lost, duplicated or
  reordered), or for a lossy operator a subsequence, with every gap reported as dropped;
* no stall: while downstream has demand outstanding and upstream has not ended, the operator
  has upstream demand outstanding (and has neither cancelled upstream itself nor failed to
  subscribe) or holds something to deliver. What it *holds* is
  ``len(model(received)) - delivered - dropped``: the outputs it owes downstream. So
  ``buffer(3)`` holding two items is fine, and a ``filter`` that swallows an item without
  requesting a replacement is caught at the step that left downstream waiting forever.
  Without a ``model`` every received item counts as one output, so a swallowed item looks
  held; give a ``model`` to catch those. A time-driven operator tested on a virtual clock
  declares ``advance_time``: the checker calls it before it calls anything a stall, and in
  the final drain; an asynchronous one gets ``stall_grace_ms`` to request upstream.

At the end it requests everything that is left, completes upstream if the schedule did
not end it, and checks that a completion or an upstream error arrives downstream exactly
once, and that the output equals ``model(everything emitted)``. Hypothesis shrinks a failing
schedule; ``run()`` then replays the shrunk schedule once more and reports that run: the
schedule as ``[request(2), emit(0), cancel()]``, a trace with one line per step, and a last
line saying how to fix the problem.

Hypothesis is needed only to generate schedules (``run()``, ``schedules()``): it is imported
when first used, so ``check_schedule()`` and the rest of ``spec_tck`` work without it, and
``run()`` without it raises one line naming the extra (``pip install 'reactive-bp[tck]'``).

Declaring the upstream bound (how much the operator may have requested upstream but not
yet received, after each step):

* ``SAME_AS_DOWNSTREAM`` (the default): at most what downstream has outstanding -- 1:1
  operators such as ``map``, and ``filter`` (a dropped item gives its demand back).
* ``per_output(count, extra=0)``: at most ``count * outstanding + extra`` -- batching
  operators such as ``buffer(count)``.
* an ``int``: at most that much whatever downstream asked (a prefetch, a ``limit_rate``).
* a ``Callable[[int], int]`` of the downstream outstanding demand, for anything else.
* ``UNBOUNDED_BY_DESIGN``: the operator may request everything (``reduce``, ``to_list``,
  ``count``); it must say so explicitly.

Registering an operator (how reactive_bp registers each of its operators)::

    from spec_tck import DemandVerification, per_output, UNBOUNDED_BY_DESIGN

    DEMAND_CASES = [
        DemandVerification(
            name="map",
            operator=lambda up: Flow.from_publisher(up).map(lambda x: x * 2),
            model=lambda xs: [x * 2 for x in xs],
        ),
        DemandVerification(
            name="buffer(3)",
            operator=lambda up: Flow.from_publisher(up).buffer(3),
            upstream_bound=per_output(3),
            model=lambda xs: [list(xs[i : i + 3]) for i in range(0, len(xs), 3)],
        ),
        DemandVerification(
            name="on_backpressure_drop",
            lossy_operator=lambda up, on_dropped: Flow.from_publisher(up)
            .on_backpressure_drop(on_dropped),
            upstream_bound=UNBOUNDED_BY_DESIGN,
        ),
    ]

    @pytest.mark.parametrize("case", DEMAND_CASES, ids=str)
    def test_operator_demand(case: DemandVerification[int, object]) -> None:
        case.run()

``run()`` raises ``DemandViolation`` (an ``AssertionError``) with the shrunk schedule;
``check_schedule(steps)`` replays one schedule deterministically (for regression tests).
A failure reads like this::

    filter without replenish: stall: downstream waits for 1 more item(s), upstream has not
    ended, the operator has no outstanding upstream request and holds nothing (after step 2:
    emit(1))
      schedule: [request(1), emit(1)]
      trace:
        subscribe: up.subscribe; down.on_subscribe
        step 1 request(1): down.request(1); up.request(1)
        step 2 emit(1): up.on_next(1); !! stall: ...
      how to fix: request a replacement upstream for every item consumed without emitting
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar

from reactive_bp._core._demand import UNBOUNDED, add_cap, check_request, multiply_cap

if TYPE_CHECKING:
    # Only for annotations: Hypothesis is imported where schedules are generated.
    from hypothesis import strategies as st

    from reactive_bp.abc import Publisher, Subscriber, Subscription

__all__ = [
    "SAME_AS_DOWNSTREAM",
    "UNBOUNDED_BY_DESIGN",
    "Cancel",
    "Complete",
    "DemandVerification",
    "DemandViolation",
    "Emit",
    "Fail",
    "Request",
    "Step",
    "Unbounded",
    "UpstreamBound",
    "UpstreamError",
    "per_output",
    "schedules",
    "verify_operator_demand",
]

T = TypeVar("T")
R = TypeVar("R")

TCK_EXTRA: Final = "pip install 'reactive-bp[tck]'"


def _hypothesis_installed() -> bool:
    return importlib.util.find_spec("hypothesis") is not None


def _require_hypothesis(what: str) -> None:
    """Raise one line naming the extra when Hypothesis is not installed.

    Args:
        what: The call that needs Hypothesis, for the message.

    Raises:
        ModuleNotFoundError: Hypothesis cannot be imported.
    """
    if not _hypothesis_installed():
        raise ModuleNotFoundError(
            f"spec_tck: {what} generates schedules with Hypothesis, which is not installed: "
            f"{TCK_EXTRA}",
            name="hypothesis",
        )


class Unbounded:
    """The type of ``UNBOUNDED_BY_DESIGN``: the operator may request everything upstream."""

    _instance: Unbounded | None = None

    def __new__(cls) -> Unbounded:
        """Return the one instance."""
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNBOUNDED_BY_DESIGN"


UNBOUNDED_BY_DESIGN: Final = Unbounded()
"""``upstream_bound`` for an operator that requests everything upstream (``UNBOUNDED``)."""

UpstreamBound: TypeAlias = "int | Unbounded | Callable[[int], int]"
"""How much upstream outstanding demand an operator may hold: a constant, ``UNBOUNDED_BY_DESIGN``,
or a function of the downstream outstanding demand (``SAME_AS_DOWNSTREAM``, ``per_output(n)``)."""


def _same_as_downstream(outstanding: int) -> int:
    return outstanding


SAME_AS_DOWNSTREAM: Final[Callable[[int], int]] = _same_as_downstream
"""Upstream outstanding demand never exceeds downstream outstanding demand (1:1, filter)."""


def per_output(count: int, *, extra: int = 0) -> Callable[[int], int]:
    """Bound for operators that need ``count`` inputs per output (plus ``extra`` prefetch)."""
    if count < 1 or extra < 0:
        raise ValueError("per_output(count >= 1, extra >= 0)")

    def bound(outstanding: int) -> int:
        return add_cap(multiply_cap(outstanding, count), extra)

    bound.__qualname__ = f"per_output({count}, extra={extra})"
    return bound


# -- schedule steps ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """Downstream calls ``request(n)``."""

    n: int

    def __repr__(self) -> str:
        return "request(UNBOUNDED)" if self.n == UNBOUNDED else f"request({self.n})"


@dataclass(frozen=True, slots=True)
class Emit:
    """Upstream sends ``on_next(item)`` if the operator has demand upstream."""

    item: object

    def __repr__(self) -> str:
        return f"emit({self.item!r})"


@dataclass(frozen=True, slots=True)
class Complete:
    """Upstream sends ``on_complete()``."""

    def __repr__(self) -> str:
        return "complete()"


@dataclass(frozen=True, slots=True)
class Fail:
    """Upstream sends ``on_error(UpstreamError)``."""

    def __repr__(self) -> str:
        return "error()"


@dataclass(frozen=True, slots=True)
class Cancel:
    """Downstream calls ``cancel()``."""

    def __repr__(self) -> str:
        return "cancel()"


Step: TypeAlias = Request | Emit | Complete | Fail | Cancel
"""One step of a schedule: downstream requests or cancels, upstream emits, completes or fails."""


def schedules(
    elements: st.SearchStrategy[object], max_steps: int = 30
) -> st.SearchStrategy[list[Step]]:
    """Hypothesis strategy of schedules.

    A schedule is a body of requests and emits, then at most one ending (``complete()``,
    ``error()`` or ``cancel()``), then a short tail of requests and emits that probe what
    happens after the ending. Keeping endings rare in the body lets long streams happen.

    Args:
        elements: Strategy for the items upstream emits.
        max_steps: Longest body.

    Returns:
        A strategy of step lists.

    Raises:
        ModuleNotFoundError: Hypothesis is not installed (the ``tck`` extra).
    """
    _require_hypothesis("schedules()")
    from hypothesis import strategies as hs

    request = hs.one_of(
        hs.integers(min_value=1, max_value=4).map(Request),
        hs.just(Request(UNBOUNDED)),
    )
    emit = elements.map(Emit)
    flowing: st.SearchStrategy[Step] = hs.one_of(request, emit, emit)
    ending: st.SearchStrategy[list[Step]] = hs.one_of(
        hs.just([]),
        hs.sampled_from([Complete(), Fail(), Cancel()]).map(lambda step: [step]),
    )
    tail = hs.lists(hs.one_of(flowing, hs.just(Cancel())), max_size=4)
    return hs.tuples(hs.lists(flowing, max_size=max_steps), ending, tail).map(
        lambda parts: [*parts[0], *parts[1], *parts[2]]
    )


class DemandViolation(AssertionError):
    """An operator mishandled demand; the message holds the schedule, the trace and a fix.

    Attributes:
        schedule: The schedule that failed (after ``run()``: the shrunk one).
        fix: One line saying how to fix the problem.
    """

    def __init__(self, message: str, schedule: Sequence[Step] = (), fix: str = "") -> None:
        """Create the violation; ``schedule`` and ``fix`` are kept for tools and tests."""
        super().__init__(message)
        self.schedule: list[Step] = list(schedule)
        self.fix = fix


class UpstreamError(Exception):
    """The error the instrumented upstream sends."""


# -- how to fix what the checker finds -----------------------------------------------------

_FIX_OVER_DELIVERY: Final = (
    "count downstream demand per subscription and stop emitting at zero (Rule 1.1)"
)
_FIX_AFTER_TERMINAL: Final = "record the terminal signal once and emit nothing after it (Rule 1.7)"
_FIX_AFTER_CANCEL: Final = (
    "set a cancelled flag in cancel() and check it before every signal (Rule 1.8)"
)
_FIX_BAD_REQUEST: Final = (
    "never call request(n) upstream with n <= 0: skip the call when there is nothing to ask "
    "for (Rule 3.9)"
)
_FIX_BOUND: Final = (
    "request upstream only what outstanding downstream demand needs, or declare the "
    "operator's real bound in upstream_bound"
)
_FIX_CANCEL: Final = "pass cancel() on to the upstream subscription (Rule 3.12)"
_FIX_ITEMS: Final = (
    "deliver model(upstream items) exactly once each and in order: look for a lost, "
    "duplicated or reordered item in the drain loop"
)
_FIX_DROPS: Final = "call on_dropped(item) for every item the operator drops"
_FIX_STALL: Final = (
    "request a replacement upstream for every item consumed without emitting one (a "
    "dropped item gives its demand back)"
)
_FIX_STALL_CANCELLED: Final = (
    "after cancelling upstream, end downstream too (on_complete, or on_error with the reason)"
)
_FIX_STALL_UNSUBSCRIBED: Final = "subscribe upstream by the time downstream requests"
_FIX_RAISED: Final = (
    "signal methods return normally: catch the error, cancel upstream and signal on_error "
    "downstream (Rule 2.13)"
)
_FIX_SUBSCRIBE: Final = (
    "call on_subscribe exactly once, before any other signal, and subscribe upstream once "
    "(Rule 1.9)"
)
_FIX_ERROR: Final = (
    "pass an upstream error on with on_error downstream, once (set propagates_errors=False "
    "for an operator that handles errors)"
)
_FIX_COMPLETION: Final = (
    "when upstream completes, deliver what is held as demand allows, then call on_complete "
    "exactly once (Rules 1.5, 1.7)"
)
_FIX_NONE: Final = "never emit None: it is not an item (Rule 2.13)"


# -- the run of one schedule ---------------------------------------------------------------


class _Run(Generic[T, R]):
    """One schedule against one freshly built operator."""

    def __init__(self, spec: DemandVerification[T, R], steps: Sequence[Step]) -> None:
        self.spec = spec
        self.steps = list(steps)
        self.lock = threading.RLock()
        # (step index, entry): -1 is the subscription, len(steps) the final drain.
        self.trace: list[tuple[int, str]] = []
        self.problems: list[tuple[str, str]] = []  # (message with where, fix)
        self.step_index = -1
        # upstream side; Invariant: guarded by lock.
        self.up_subscriber: Subscriber[T] | None = None
        self.up_subscriptions = 0
        self.up_requested = 0
        self.up_emitted: list[T] = []
        self.up_cancelled = False
        self.up_terminated = False
        self.up_error: UpstreamError | None = None
        # downstream side
        self.down_subscription: Subscription | None = None
        self.down_requested = 0
        self.down_items: list[R] = []
        self.down_completions = 0
        self.down_errors: list[Exception] = []
        self.cancel_returned = False
        self.dropped: list[object] = []

    # -- reporting ---------------------------------------------------------------------

    def note(self, entry: str) -> None:
        with self.lock:
            self.trace.append((self.step_index, entry))

    def step_label(self, index: int) -> str:
        if index < 0:
            return "subscribe"
        if index >= len(self.steps):
            return "final drain (request(UNBOUNDED), complete())"
        return f"step {index + 1} {self.steps[index]!r}"

    def problem(self, message: str, fix: str) -> None:
        with self.lock:
            index = self.step_index
            if index < 0:
                where = "at subscribe"
            elif index >= len(self.steps):
                where = "in the final drain"
            else:
                where = f"after step {index + 1}: {self.steps[index]!r}"
            self.problems.append((f"{message} ({where})", fix))
            short = message if len(message) <= 72 else f"{message[:69]}..."
            self.trace.append((index, f"!! {short}"))

    def trace_lines(self, *, last: int | None = None) -> list[str]:
        """One line per step: what each side did, in order."""
        with self.lock:
            entries = list(self.trace)
        by_step: dict[int, list[str]] = {}
        for index, entry in entries:
            by_step.setdefault(index, []).append(entry)
        indices = sorted(set(range(-1, len(self.steps))) | set(by_step))
        lines = [
            f"{self.step_label(index)}: {'; '.join(by_step.get(index, ['-']))}" for index in indices
        ]
        if last is not None and len(lines) > last:
            lines = [f"... {len(lines) - last} earlier step(s)", *lines[-last:]]
        return lines

    def violation(self) -> DemandViolation | None:
        with self.lock:
            if not self.problems:
                return None
            problem, fix = self.problems[0]
        trace = "\n".join(f"    {line}" for line in self.trace_lines(last=60))
        return DemandViolation(
            f"{self.spec.name or 'operator'}: {problem}\n"
            f"  schedule: {self.steps!r}\n"
            f"  trace:\n{trace}\n"
            f"  how to fix: {fix}",
            schedule=self.steps,
            fix=fix,
        )

    def fail_if_problems(self) -> None:
        violation = self.violation()
        if violation is not None:
            raise violation

    # -- upstream (the instrumented publisher) -----------------------------------------

    def up_subscribe(self, subscriber: Subscriber[T]) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None): Rule 1.9")
        with self.lock:
            self.up_subscriptions += 1
            if self.up_subscriptions > 1:
                self.problem("the operator subscribed to upstream twice", _FIX_SUBSCRIBE)
                return
            self.up_subscriber = subscriber
            self.note("up.subscribe")
        try:
            subscriber.on_subscribe(_UpstreamSubscription(self))
        except Exception as error:
            self.problem(f"the operator's on_subscribe raised {error!r} (Rule 2.13)", _FIX_RAISED)

    def up_request(self, n: object) -> None:
        with self.lock:
            self.note(f"up.request({_n(n)})")
            if check_request(n) is not None:
                self.problem(
                    f"the operator called request({n!r}) upstream (Rule 3.9)", _FIX_BAD_REQUEST
                )
                return
            assert isinstance(n, int)
            if not self.up_cancelled and not self.up_terminated:
                self.up_requested = add_cap(self.up_requested, n)

    def up_cancel(self) -> None:
        with self.lock:
            self.note("up.cancel")
            self.up_cancelled = True

    def up_outstanding(self) -> int:
        if self.up_requested >= UNBOUNDED:
            return UNBOUNDED
        return self.up_requested - len(self.up_emitted)

    def emit(self, item: T) -> None:
        with self.lock:
            subscriber = self.up_subscriber
            if (
                subscriber is None
                or self.up_cancelled
                or self.up_terminated
                or self.up_outstanding() <= 0
            ):
                self.note(f"(emit({item!r}) skipped: no upstream demand)")
                return
            self.up_emitted.append(item)
            self.note(f"up.on_next({item!r})")
        try:
            subscriber.on_next(item)
        except Exception as error:
            self.problem(f"the operator's on_next raised {error!r} (Rule 2.13)", _FIX_RAISED)

    def up_finish(self, error: UpstreamError | None) -> None:
        with self.lock:
            subscriber = self.up_subscriber
            if subscriber is None or self.up_cancelled or self.up_terminated:
                self.note("(upstream terminal skipped)")
                return
            self.up_terminated = True
            self.up_error = error
            self.note("up.on_error" if error else "up.on_complete")
        try:
            if error is None:
                subscriber.on_complete()
            else:
                subscriber.on_error(error)
        except Exception as raised:
            self.problem(
                f"the operator's terminal signal raised {raised!r} (Rule 2.13)", _FIX_RAISED
            )

    # -- downstream (the recording subscriber) -----------------------------------------

    def down_on_subscribe(self, subscription: Subscription) -> None:
        with self.lock:
            self.note("down.on_subscribe")
            if self.down_subscription is not None:
                self.problem("downstream got on_subscribe twice (Rule 1.9)", _FIX_SUBSCRIBE)
                subscription.cancel()
                return
            self.down_subscription = subscription

    def _down_closed(self, signal: str) -> None:
        if self.down_completions or self.down_errors:
            self.problem(
                f"downstream got {signal} after a terminal signal (Rule 1.7)", _FIX_AFTER_TERMINAL
            )
        elif self.cancel_returned and not self.spec.asynchronous:
            self.problem(
                f"downstream got {signal} after cancel() returned (Rules 1.8, 3.12)",
                _FIX_AFTER_CANCEL,
            )

    def down_on_next(self, item: R) -> None:
        with self.lock:
            self.note(f"down.on_next({item!r})")
            self._down_closed(f"on_next({item!r})")
            self.down_items.append(item)
            if len(self.down_items) > self.down_requested:
                self.problem(
                    f"downstream got item #{len(self.down_items)} but requested only "
                    f"{self.down_requested} (Rule 1.1)",
                    _FIX_OVER_DELIVERY,
                )

    def down_on_error(self, error: Exception) -> None:
        with self.lock:
            self.note(f"down.on_error({type(error).__name__})")
            self._down_closed("on_error")
            self.down_errors.append(error)

    def down_on_complete(self) -> None:
        with self.lock:
            self.note("down.on_complete")
            self._down_closed("on_complete")
            self.down_completions += 1

    def down_outstanding(self) -> int:
        if self.down_requested >= UNBOUNDED:
            return UNBOUNDED
        return max(0, self.down_requested - len(self.down_items))

    # -- steps -------------------------------------------------------------------------

    def start(self) -> None:
        upstream = _InstrumentedUpstream(self)
        spec = self.spec
        if spec.lossy_operator is not None:

            def on_dropped(item: object) -> None:
                with self.lock:
                    self.note(f"dropped({item!r})")
                    self.dropped.append(item)

            publisher = spec.lossy_operator(upstream, on_dropped)
        else:
            assert spec.operator is not None
            publisher = spec.operator(upstream)
        publisher.subscribe(_Downstream(self))
        self.settle()
        with self.lock:
            if self.down_subscription is None:
                self.problem("downstream never got on_subscribe (Rule 1.9)", _FIX_SUBSCRIBE)

    def apply(self, step: Step) -> None:
        subscription = self.down_subscription
        if isinstance(step, Request):
            if subscription is None or self.cancel_returned:
                return
            with self.lock:
                self.note(f"down.request({_n(step.n)})")
                if not (self.down_completions or self.down_errors):
                    self.down_requested = add_cap(self.down_requested, step.n)
            try:
                subscription.request(step.n)
            except Exception as error:
                self.problem(
                    f"request({_n(step.n)}) raised {error!r} (Rule 3.16)",
                    "request() returns normally: signal problems through on_error (Rule 3.16)",
                )
        elif isinstance(step, Cancel):
            if subscription is None or self.cancel_returned:
                return
            self.note("down.cancel")
            try:
                subscription.cancel()
            except Exception as error:
                self.problem(
                    f"cancel() raised {error!r} (Rule 3.15)",
                    "cancel() returns normally: catch what cleaning up raises (Rule 3.15)",
                )
            with self.lock:
                self.cancel_returned = True
        elif isinstance(step, Emit):
            self.emit(step.item)  # type: ignore[arg-type]
        elif isinstance(step, Complete):
            self.up_finish(None)
        else:
            self.up_finish(UpstreamError(f"upstream error at step {self.step_index + 1}"))
        self.settle()

    def settle(self) -> None:
        quiet = self.spec.settle_ms / 1000
        if quiet <= 0:
            return
        seen = -1
        while True:
            with self.lock:
                now = len(self.trace)
            if now == seen:
                return
            seen = now
            time.sleep(quiet)

    # -- invariants --------------------------------------------------------------------

    def check_step(self, step: Step | None) -> None:
        spec = self.spec
        with self.lock:
            down_done = bool(self.down_completions or self.down_errors)
            if (
                isinstance(step, Cancel)
                and self.up_subscriber is not None
                and not self.up_cancelled
                and not self.up_terminated
                and not down_done
            ):
                self.problem("downstream cancel() did not reach upstream (Rule 3.12)", _FIX_CANCEL)
            if (
                self.up_subscriber is not None
                and not self.up_cancelled
                and not self.up_terminated
                and not down_done
                and not self.cancel_returned
            ):
                limit = spec.bound_for(self.down_outstanding())
                outstanding = self.up_outstanding()
                if outstanding > limit:
                    self.problem(
                        f"upstream demand outstanding is {_n(outstanding)} but the declared "
                        f"bound ({spec.bound_text()}) allows {_n(limit)} with "
                        f"{_n(self.down_outstanding())} outstanding downstream",
                        _FIX_BOUND,
                    )
            self.check_items(final=False)
            if self.problems:
                return
        self.check_stall()

    def expected(self) -> list[object]:
        """``model(items emitted so far)``; identity without a model."""
        emitted = list(self.up_emitted)
        return list(self.spec.model(emitted)) if self.spec.model is not None else list(emitted)

    def held(self) -> int:
        """How many outputs the operator owes downstream: expected - delivered - dropped.

        For ``buffer(3)`` with two items received and nothing delivered this is 1 (the
        partial batch ``model`` ends with); for a filter that dropped what it received, 0.
        """
        owed = len(self.expected()) - len(self.down_items) - len(self.dropped)
        return max(0, owed)

    def stall(self) -> tuple[str, str] | None:
        """Why downstream waits forever right now and the fix, or ``None`` if it need not.

        A stall: downstream has demand outstanding and is neither ended nor cancelled,
        upstream has not ended, the operator has no upstream demand outstanding (or never
        subscribed, or cancelled upstream itself), and it holds nothing to deliver.
        """
        with self.lock:
            if (
                self.down_subscription is None
                or self.cancel_returned
                or self.down_completions
                or self.down_errors
                or self.up_terminated
            ):
                return None
            waiting = self.down_outstanding()
            if waiting <= 0:
                return None
            if self.up_subscriber is None:
                upstream, fix = "the operator never subscribed upstream", _FIX_STALL_UNSUBSCRIBED
            elif self.up_cancelled:
                upstream = "the operator cancelled upstream without ending downstream"
                fix = _FIX_STALL_CANCELLED
            elif self.up_outstanding() > 0:
                return None
            else:
                upstream, fix = "the operator has no outstanding upstream request", _FIX_STALL
            if self.held() > 0:
                return None
            return (
                f"stall: downstream waits for {_n(waiting)} more item(s), upstream has not "
                f"ended, {upstream} and holds nothing",
                fix,
            )

    def check_stall(self) -> None:
        stall = self.stall()
        if stall is None:
            return
        spec = self.spec
        if spec.advance_time is not None:
            # A virtual clock may be what the operator waits for (a timer that requests).
            self.note("advance_time()")
            spec.advance_time()
            self.settle()
            stall = self.stall()
        if stall is not None and spec.asynchronous:
            # Another thread may still be on its way to request upstream.
            deadline = time.monotonic() + spec.stall_grace_ms / 1000
            while stall is not None and time.monotonic() < deadline:
                time.sleep(max(spec.settle_ms / 1000, 0.001))
                stall = self.stall()
        if stall is not None:
            self.problem(*stall)

    def let_time_pass(self) -> None:
        """Final drain: advance the virtual clock until it moves nothing more (at most 100)."""
        advance = self.spec.advance_time
        if advance is None:
            return
        for _ in range(100):
            with self.lock:
                before = len(self.trace)
                if self.down_completions or self.down_errors:
                    return
            self.note("advance_time()")
            advance()
            self.settle()
            with self.lock:
                if len(self.trace) == before + 1:
                    return

    def check_items(self, *, final: bool) -> None:
        spec = self.spec
        if spec.model is None and spec.lossy_operator is None:
            return
        expected = self.expected()
        delivered: list[object] = list(self.down_items)
        if spec.lossy_operator is None:
            if delivered != expected[: len(delivered)]:
                self.problem(
                    f"downstream got {delivered!r}, which is not a prefix of "
                    f"model(upstream items) = {expected!r} (lost, duplicated or reordered)",
                    _FIX_ITEMS,
                )
            elif final and delivered != expected:
                self.problem(
                    f"downstream got {delivered!r} then {self._terminal_text()}, "
                    f"expected model(upstream items) = {expected!r}",
                    _FIX_COMPLETION,
                )
            return
        gaps = _subsequence_gaps(delivered, expected)
        if gaps is None:
            self.problem(
                f"downstream got {delivered!r}, which is not a subsequence of "
                f"model(upstream items) = {expected!r}",
                _FIX_ITEMS,
            )
        elif gaps > len(self.dropped):
            self.problem(
                f"{gaps} item(s) missing from {delivered!r} (expected from {expected!r}) but "
                f"only {len(self.dropped)} reported through on_dropped",
                _FIX_DROPS,
            )
        elif final and len(delivered) + len(self.dropped) != len(expected):
            self.problem(
                f"{len(delivered)} delivered + {len(self.dropped)} dropped != "
                f"{len(expected)} expected ({expected!r})",
                _FIX_DROPS if len(delivered) + len(self.dropped) < len(expected) else _FIX_ITEMS,
            )

    def _terminal_text(self) -> str:
        if self.down_errors:
            return f"on_error({self.down_errors[0]!r})"
        return "on_complete" if self.down_completions else "no terminal signal"

    def finish(self) -> None:
        self.step_index = len(self.steps)
        subscription = self.down_subscription
        with self.lock:
            cancelled = self.cancel_returned
            done = bool(self.down_completions or self.down_errors)
        if subscription is not None and not cancelled and not done:
            self.apply(Request(UNBOUNDED))
            self.up_finish(None)
            self.settle()
            self.let_time_pass()
        with self.lock:
            if self.cancel_returned:
                return
            up_error = self.up_error
            terminals = self.down_completions + len(self.down_errors)
            if terminals > 1:
                self.problem(
                    f"downstream got {terminals} terminal signals (Rule 1.7)", _FIX_AFTER_TERMINAL
                )
            if up_error is not None:
                if self.spec.propagates_errors and self.down_errors[:1] != [up_error]:
                    self.problem(
                        f"the upstream error did not reach downstream exactly once "
                        f"(downstream got {self._terminal_text()})",
                        _FIX_ERROR,
                    )
            elif self.up_terminated:
                if terminals == 0:
                    self.problem(
                        "upstream completed but downstream got no terminal signal",
                        _FIX_COMPLETION,
                    )
                elif self.down_errors:
                    self.problem(
                        f"upstream completed but downstream got {self._terminal_text()}",
                        _FIX_COMPLETION,
                    )
                else:
                    self.check_items(final=True)


def _subsequence_gaps(sub: Sequence[object], full: Sequence[object]) -> int | None:
    """How many items of ``full`` before the last match were skipped; None if no match."""
    position = 0
    for item in sub:
        while position < len(full) and full[position] != item:
            position += 1
        if position == len(full):
            return None
        position += 1
    return position - len(sub)


def _n(n: object) -> str:
    return "UNBOUNDED" if n == UNBOUNDED else repr(n)


class _UpstreamSubscription:
    def __init__(self, run: _Run[Any, Any]) -> None:
        self._run = run

    def request(self, n: int) -> None:
        self._run.up_request(n)

    def cancel(self) -> None:
        self._run.up_cancel()


class _InstrumentedUpstream(Generic[T]):
    """A manual publisher: records every request/cancel, emits only within demand."""

    def __init__(self, run: _Run[T, Any]) -> None:
        self._run = run

    def subscribe(self, subscriber: Subscriber[T]) -> None:
        self._run.up_subscribe(subscriber)


class _Downstream(Generic[R]):
    def __init__(self, run: _Run[Any, R]) -> None:
        self._run = run

    def on_subscribe(self, subscription: Subscription) -> None:
        if subscription is None:
            raise TypeError("on_subscribe(None)")
        self._run.down_on_subscribe(subscription)

    def on_next(self, item: R) -> None:
        if item is None:
            self._run.problem("downstream got on_next(None) (Rule 2.13)", _FIX_NONE)
            raise TypeError("on_next(None)")
        self._run.down_on_next(item)

    def on_error(self, error: Exception) -> None:
        if error is None:
            raise TypeError("on_error(None)")
        self._run.down_on_error(error)

    def on_complete(self) -> None:
        self._run.down_on_complete()


# -- the public checker ---------------------------------------------------------------------


@dataclass
class DemandVerification(Generic[T, R]):
    """Checks how an operator turns downstream demand into upstream demand.

    Attributes:
        operator: Builds the operator around an upstream publisher (lossless operators).
        lossy_operator: Instead of ``operator``, for operators that may drop items: also
            receives ``on_dropped``, which it must call with every item it drops.
        upstream_bound: How much demand may be outstanding upstream (see the module doc).
        model: The expected output for a given list of upstream items, e.g.
            ``lambda xs: [x * 2 for x in xs]``. ``None`` skips the item checks (for a lossy
            operator, ``None`` means identity).
        elements: Hypothesis strategy for upstream items (default: small ints).
        propagates_errors: ``False`` for operators that handle upstream errors themselves.
        asynchronous: ``True`` for operators that signal on another thread; set
            ``settle_ms`` too, so each step waits until nothing moves for that long.
        settle_ms: Quiet time that ends a step (asynchronous operators).
        advance_time: For an operator on a virtual clock (a pacer, a delay): lets its
            pending timers fire, e.g. ``lambda: vts.advance_by(1.0)``. Called once before the
            checker reports a stall (it stands only if nothing changed), and in the final
            drain until it moves nothing more.
        stall_grace_ms: How long an asynchronous operator may take to request upstream
            before a stall is reported.
        max_examples: Hypothesis examples per ``run()``.
        max_steps: Longest schedule.
        name: Shown in failures and as the pytest id.
    """

    operator: Callable[[Publisher[T]], Publisher[R]] | None = None
    lossy_operator: Callable[[Publisher[T], Callable[[object], None]], Publisher[R]] | None = None
    upstream_bound: int | Unbounded | Callable[[int], int] = SAME_AS_DOWNSTREAM
    model: Callable[[list[T]], Sequence[R]] | None = None
    elements: st.SearchStrategy[T] | None = None
    propagates_errors: bool = True
    asynchronous: bool = False
    settle_ms: float = 0.0
    advance_time: Callable[[], object] | None = None
    stall_grace_ms: float = 200.0
    max_examples: int = 100
    max_steps: int = 30
    name: str = ""
    _checked: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        """Validate the declaration."""
        if (self.operator is None) == (self.lossy_operator is None):
            raise ValueError("give exactly one of operator= and lossy_operator=")
        bound = self.upstream_bound
        if isinstance(bound, bool) or (isinstance(bound, int) and bound < 0):
            raise ValueError(f"upstream_bound must be an int >= 0, got {bound!r}")
        if not isinstance(bound, int | Unbounded) and not callable(bound):
            raise TypeError(
                f"upstream_bound must be int, UNBOUNDED_BY_DESIGN or callable: {bound!r}"
            )

    def __str__(self) -> str:
        return self.name or "operator"

    def bound_for(self, downstream_outstanding: int) -> int:
        """The upstream outstanding demand allowed for ``downstream_outstanding``."""
        bound = self.upstream_bound
        if isinstance(bound, Unbounded):
            return UNBOUNDED
        if isinstance(bound, int):
            return bound
        return min(UNBOUNDED, bound(downstream_outstanding))

    def bound_text(self) -> str:
        """The declared bound, for messages."""
        bound = self.upstream_bound
        if bound is SAME_AS_DOWNSTREAM:
            return "SAME_AS_DOWNSTREAM"
        if isinstance(bound, int | Unbounded):
            return repr(bound)
        return getattr(bound, "__qualname__", repr(bound))

    def check_schedule(self, steps: Sequence[Step]) -> None:
        """Play one schedule; raise ``DemandViolation`` on the first problem.

        Needs no Hypothesis: use it to pin a schedule in a regression test.

        Args:
            steps: The schedule, e.g. ``[Request(1), Emit(1), Complete()]``.

        Raises:
            DemandViolation: naming the step after which the first problem showed, with
                the trace and a line saying how to fix it.
        """
        run: _Run[T, R] = _Run(self, steps)
        run.start()
        run.fail_if_problems()
        for index, step in enumerate(run.steps):
            run.step_index = index
            run.apply(step)
            run.check_step(step)
            run.fail_if_problems()
        run.finish()
        run.fail_if_problems()
        self._checked += 1

    def smoke_schedules(self) -> list[list[Step]]:
        """Schedules always played after the random ones: each ending, long and short."""
        items: list[object] = list(range(7))
        if self.elements is not None:
            _require_hypothesis("DemandVerification(elements=...)")
            from hypothesis import find, settings

            items = [find(self.elements, lambda _: True, settings=settings(database=None))] * 7
        emits: list[Step] = [Emit(item) for item in items]
        return [
            [Request(1), *emits[:3], Request(2), *emits[3:], Complete()],
            [Request(UNBOUNDED), *emits, Complete()],
            [Request(2), *emits[:2], Fail()],
            [Fail(), Request(1)],
            [Request(3), *emits[:1], Cancel(), *emits[1:3], Request(1)],
            [*emits[:2], Request(4), *emits, Complete(), Request(1)],
        ]

    def strategy(self) -> st.SearchStrategy[list[Step]]:
        """The Hypothesis strategy of schedules this verification plays."""
        _require_hypothesis("DemandVerification.strategy()")
        from hypothesis import strategies as hs

        elements: st.SearchStrategy[object] = (
            self.elements if self.elements is not None else hs.integers(0, 99)
        )
        return schedules(elements, self.max_steps)

    def run(self) -> None:
        """Play ``max_examples`` random schedules, then ``smoke_schedules()``.

        When a random schedule fails, Hypothesis shrinks it; the shrunk schedule is then
        replayed once more and that run is reported, so the trace is the minimal one.

        Raises:
            DemandViolation: with the shrunk schedule (or the smoke schedule that failed).
            ModuleNotFoundError: Hypothesis is not installed (the ``tck`` extra).
        """
        _require_hypothesis("DemandVerification.run()")
        from hypothesis import HealthCheck, given, settings

        @settings(
            max_examples=self.max_examples,
            deadline=None,
            database=None,
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(schedule=self.strategy())
        def demand_schedule(schedule: list[Step]) -> None:
            self.check_schedule(schedule)

        try:
            demand_schedule()
        except DemandViolation as shrunk:
            raise self._replayed(shrunk) from None
        # Then a fixed set covering every ending, so a rare path is never left to chance.
        for schedule in self.smoke_schedules():
            self.check_schedule(schedule)

    def _replayed(self, shrunk: DemandViolation) -> DemandViolation:
        """Play the shrunk schedule once more, outside Hypothesis, and report that run."""
        try:
            self.check_schedule(shrunk.schedule)
        except DemandViolation as replayed:
            return replayed
        report, _, fix_line = str(shrunk).rpartition("\n  how to fix: ")
        return DemandViolation(
            f"{report}\n  note: replaying this schedule once more passed, so the failure "
            "depends on timing (an asynchronous operator: raise settle_ms)\n"
            f"  how to fix: {fix_line}",
            schedule=shrunk.schedule,
            fix=shrunk.fix,
        )


def verify_operator_demand(
    operator: Callable[[Publisher[T]], Publisher[R]],
    *,
    upstream_bound: int | Unbounded | Callable[[int], int] = SAME_AS_DOWNSTREAM,
    model: Callable[[list[T]], Sequence[R]] | None = None,
    elements: st.SearchStrategy[T] | None = None,
    max_examples: int = 100,
    name: str = "",
) -> None:
    """Shorthand for ``DemandVerification(operator=..., ...).run()``."""
    DemandVerification(
        operator=operator,
        upstream_bound=upstream_bound,
        model=model,
        elements=elements,
        max_examples=max_examples,
        name=name,
    ).run()
