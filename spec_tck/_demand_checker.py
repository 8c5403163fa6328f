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
  reordered), or for a lossy operator a subsequence, with every gap reported as dropped.

At the end it requests everything that is left, completes upstream if the schedule did
not end it, and checks that a completion or an upstream error arrives downstream exactly
once, and that the output equals ``model(everything emitted)``. Hypothesis shrinks a failing
schedule; the failure prints it as ``[request(2), emit(0), cancel()]``.

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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar

from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from reactive_bp._core._demand import UNBOUNDED, add_cap, check_request, multiply_cap

if TYPE_CHECKING:
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

UpstreamBound: TypeAlias = "int | Unbounded | Callable[[int], int]"


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


def schedules(
    elements: st.SearchStrategy[object], max_steps: int = 30
) -> st.SearchStrategy[list[Step]]:
    """Hypothesis strategy of schedules.

    A schedule is a body of requests and emits, then at most one ending (``complete()``,
    ``error()`` or ``cancel()``), then a short tail of requests and emits that probe what
    happens after the ending. Keeping endings rare in the body lets long streams happen.
    """
    request = st.one_of(
        st.integers(min_value=1, max_value=4).map(Request),
        st.just(Request(UNBOUNDED)),
    )
    emit = elements.map(Emit)
    flowing: st.SearchStrategy[Step] = st.one_of(request, emit, emit)
    ending: st.SearchStrategy[list[Step]] = st.one_of(
        st.just([]),
        st.sampled_from([Complete(), Fail(), Cancel()]).map(lambda step: [step]),
    )
    tail = st.lists(st.one_of(flowing, st.just(Cancel())), max_size=4)
    return st.tuples(st.lists(flowing, max_size=max_steps), ending, tail).map(
        lambda parts: [*parts[0], *parts[1], *parts[2]]
    )


class DemandViolation(AssertionError):
    """An operator mishandled demand; the message holds the schedule and the trace."""


class UpstreamError(Exception):
    """The error the instrumented upstream sends."""


# -- the run of one schedule ---------------------------------------------------------------


class _Run(Generic[T, R]):
    """One schedule against one freshly built operator."""

    def __init__(self, spec: DemandVerification[T, R], steps: Sequence[Step]) -> None:
        self.spec = spec
        self.steps = list(steps)
        self.lock = threading.RLock()
        self.trace: list[str] = []
        self.problems: list[str] = []
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
            self.trace.append(entry)

    def problem(self, message: str) -> None:
        with self.lock:
            where = f"after step {self.step_index + 1}" if self.step_index >= 0 else "at subscribe"
            if self.step_index >= len(self.steps):
                where = "in the final drain"
            self.problems.append(f"{message} ({where})")
            self.trace.append(f"!! {message}")

    def fail_if_problems(self) -> None:
        with self.lock:
            if not self.problems:
                return
            problem = self.problems[0]
            trace = list(self.trace)
        shown = trace[-60:]
        raise DemandViolation(
            f"{self.spec.name or 'operator'}: {problem}\n"
            f"  schedule: {self.steps!r}\n"
            f"  trace: {'; '.join(shown)}"
        )

    # -- upstream (the instrumented publisher) -----------------------------------------

    def up_subscribe(self, subscriber: Subscriber[T]) -> None:
        if subscriber is None:
            raise TypeError("subscribe(None): Rule 1.9")
        with self.lock:
            self.up_subscriptions += 1
            if self.up_subscriptions > 1:
                self.problem("the operator subscribed to upstream twice")
                return
            self.up_subscriber = subscriber
            self.note("up.subscribe")
        try:
            subscriber.on_subscribe(_UpstreamSubscription(self))
        except Exception as error:
            self.problem(f"the operator's on_subscribe raised {error!r} (Rule 2.13)")

    def up_request(self, n: object) -> None:
        with self.lock:
            self.note(f"up.request({_n(n)})")
            if check_request(n) is not None:
                self.problem(f"the operator called request({n!r}) upstream (Rule 3.9)")
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
            self.problem(f"the operator's on_next raised {error!r} (Rule 2.13)")

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
            self.problem(f"the operator's terminal signal raised {raised!r} (Rule 2.13)")

    # -- downstream (the recording subscriber) -----------------------------------------

    def down_on_subscribe(self, subscription: Subscription) -> None:
        with self.lock:
            self.note("down.on_subscribe")
            if self.down_subscription is not None:
                self.problem("downstream got on_subscribe twice (Rule 1.9)")
                subscription.cancel()
                return
            self.down_subscription = subscription

    def _down_closed(self, signal: str) -> None:
        if self.down_completions or self.down_errors:
            self.problem(f"downstream got {signal} after a terminal signal (Rule 1.7)")
        elif self.cancel_returned and not self.spec.asynchronous:
            self.problem(f"downstream got {signal} after cancel() returned (Rules 1.8, 3.12)")

    def down_on_next(self, item: R) -> None:
        with self.lock:
            self.note(f"down.on_next({item!r})")
            self._down_closed(f"on_next({item!r})")
            self.down_items.append(item)
            if len(self.down_items) > self.down_requested:
                self.problem(
                    f"downstream got item #{len(self.down_items)} but requested only "
                    f"{self.down_requested} (Rule 1.1)"
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
                self.problem("downstream never got on_subscribe (Rule 1.9)")

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
                self.problem(f"request({_n(step.n)}) raised {error!r} (Rule 3.16)")
        elif isinstance(step, Cancel):
            if subscription is None or self.cancel_returned:
                return
            self.note("down.cancel")
            try:
                subscription.cancel()
            except Exception as error:
                self.problem(f"cancel() raised {error!r} (Rule 3.15)")
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
                self.problem("downstream cancel() did not reach upstream (Rule 3.12)")
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
                        f"{_n(self.down_outstanding())} outstanding downstream"
                    )
            self.check_items(final=False)

    def check_items(self, *, final: bool) -> None:
        spec = self.spec
        if spec.model is None and spec.lossy_operator is None:
            return
        emitted = list(self.up_emitted)
        expected: list[object] = (
            list(spec.model(emitted)) if spec.model is not None else list(emitted)
        )
        delivered: list[object] = list(self.down_items)
        if spec.lossy_operator is None:
            if delivered != expected[: len(delivered)]:
                self.problem(
                    f"downstream got {delivered!r}, which is not a prefix of "
                    f"model(upstream items) = {expected!r} (lost, duplicated or reordered)"
                )
            elif final and delivered != expected:
                self.problem(
                    f"downstream got {delivered!r} then {self._terminal_text()}, "
                    f"expected model(upstream items) = {expected!r}"
                )
            return
        gaps = _subsequence_gaps(delivered, expected)
        if gaps is None:
            self.problem(
                f"downstream got {delivered!r}, which is not a subsequence of "
                f"model(upstream items) = {expected!r}"
            )
        elif gaps > len(self.dropped):
            self.problem(
                f"{gaps} item(s) missing from {delivered!r} (expected from {expected!r}) but "
                f"only {len(self.dropped)} reported through on_dropped"
            )
        elif final and len(delivered) + len(self.dropped) != len(expected):
            self.problem(
                f"{len(delivered)} delivered + {len(self.dropped)} dropped != "
                f"{len(expected)} expected ({expected!r})"
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
        with self.lock:
            if self.cancel_returned:
                return
            up_error = self.up_error
            terminals = self.down_completions + len(self.down_errors)
            if terminals > 1:
                self.problem(f"downstream got {terminals} terminal signals (Rule 1.7)")
            if up_error is not None:
                if self.spec.propagates_errors and self.down_errors[:1] != [up_error]:
                    self.problem(
                        f"the upstream error did not reach downstream exactly once "
                        f"(downstream got {self._terminal_text()})"
                    )
            elif self.up_terminated:
                if terminals == 0:
                    self.problem("upstream completed but downstream got no terminal signal")
                elif self.down_errors:
                    self.problem(f"upstream completed but downstream got {self._terminal_text()}")
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
            self._run.problem("downstream got on_next(None) (Rule 2.13)")
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
        """Play one schedule; raise ``DemandViolation`` on the first problem."""
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
        """Schedules always played before the random ones: each ending, long and short."""
        items: list[object] = list(range(7))
        if self.elements is not None:
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
        elements: st.SearchStrategy[object] = (
            self.elements if self.elements is not None else st.integers(0, 99)
        )
        return schedules(elements, self.max_steps)

    def run(self) -> None:
        """Play ``max_examples`` random schedules, then ``smoke_schedules()``.

        Raises:
            DemandViolation: with the shrunk schedule (or the smoke schedule that failed).
        """

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

        demand_schedule()
        # Then a fixed set covering every ending, so a rare path is never left to chance.
        for schedule in self.smoke_schedules():
            self.check_schedule(schedule)


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
