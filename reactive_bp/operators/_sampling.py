"""Time- and rate-based strategies: sample, throttle_*, debounce, throttle, buffer_timeout,
and the sampling operators sample_every and sample_adaptive.

Every operator here honours downstream demand: an item (or batch) that is due
while downstream has not asked waits in a bounded slot instead of failing the
stream for "lack of requests" (Reactor's ``sample``, ``bufferTimeout`` and
RxJava's ``ERROR``-kind timed operators do fail). Timing uses the operator's
``Scheduler`` (``now()`` and ``schedule_after``), so tests run in virtual time.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar

from typing_extensions import override

from .._core._demand import multiply_cap
from .._core._operator import OperatorSubscriber
from .._core._push import BufferStats, OfferResult, OverflowStrategy
from ..schedulers._base import RejectableAction, check_delay
from ._backpressure import (
    TimedStrategySubscriber,
    _BufferSpec,
    _BufferSubscriber,
    default_scheduler,
)
from ._lift import LiftFlow

if TYPE_CHECKING:
    from .._flow import Flow
    from ..abc import Subscriber
    from ..metrics import BackpressureMeter
    from ..schedulers import Cancellable, Scheduler

__all__ = [
    "RateExceededError",
    "adaptive_keep_rate",
    "buffer_timeout",
    "debounce",
    "sample",
    "sample_adaptive",
    "sample_every",
    "throttle",
    "throttle_first",
    "throttle_latest",
]

T = TypeVar("T")

ThrottleMode = Literal["shape", "enforce"]
_EPSILON = 1e-9


class RateExceededError(Exception):
    """``throttle(..., mode="enforce")``: upstream sent faster than the allowed rate."""


# -- sample ------------------------------------------------------------------------------------


class _LatestHolder(TimedStrategySubscriber[T, T]):
    """Holds the newest item between periods (``sample``, ``throttle_latest``).

    On upstream completion the held item is delivered (``emit_last``) or
    counted as dropped; on clear it is counted under the given reason.
    """

    __slots__ = ("_emit_last", "_latest", "_period")

    def __init__(
        self,
        actual: Subscriber[T],
        period: float,
        emit_last: bool,
        scheduler: Scheduler,
        meter: BackpressureMeter | None,
    ) -> None:
        super().__init__(actual, 2, meter, scheduler)
        self._period = period
        self._emit_last = emit_last
        self._latest: T | None = None  # guarded by _state

    @override
    def hook_upstream_complete(self) -> None:
        latest, self._latest = self._latest, None
        if latest is not None:
            if self._emit_last:
                self._push_ready_locked(latest)
            else:
                self.stats.count_drop("emit_last")
                self._held(-1)
        self._dispose_timers()

    @override
    def hook_clear_locked(self, reason: str) -> None:
        if self._latest is not None:
            self._latest = None
            self.stats.count_drop(reason)
            self._held(-1)


class _Sample(_LatestHolder[T]):
    """Keeps the newest item; each tick makes it ready; ready waits for demand.

    The hot path is ``on_next`` (fused: one call, one lock per item): an item
    that replaces the held one is only counted aside (``_sampled``), folded
    into the stats at each tick, at the end, and before any read of them.
    Arrivals are not counted at all: ``produced`` is delivered + dropped +
    depth (``lazy_stats``), and every arrival is one of those.
    """

    __slots__ = ("_sampled", "_sync_hook")

    lazy_stats = True

    def __init__(
        self,
        actual: Subscriber[T],
        period: float,
        emit_last: bool,
        scheduler: Scheduler,
        meter: BackpressureMeter | None,
    ) -> None:
        # Guarded by _state: items that replaced the held one, counted aside
        # until folded into the stats (dropped as "sampled").
        self._sampled = 0
        super().__init__(actual, period, emit_last, scheduler, meter)
        self._sync_hook = self._sync_stats  # bound once: armed once per period

    @override
    def hook_start(self) -> None:
        # The clock starts before the upstream request: a synchronous source
        # emits everything inside that request, so a timer started after it
        # would never tick while the source runs. Ticks on the timer thread
        # and items on the source thread meet under _state; cancel (and
        # completion) dispose the tracked timer, and _track cancels it at once
        # if the operator already halted. A tick the scheduler drops (a pool
        # that shut down) fails the stream (Periodic hands it to _rejected).
        tick = RejectableAction(self._tick, self._rejected)
        self._track(self._scheduler.schedule_periodic(self._period, tick))
        super().hook_start()

    @override
    def on_next(self, item: T) -> None:
        """Hold ``item`` as the newest (the held one is sampled away); a tick releases it."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        state = self._state
        state.acquire()  # ``with`` costs twice as much on this per-item path
        try:
            if self._latest is not None:
                # Cancel and an eager error set _halted; completion clears _latest.
                if not self._halted:
                    self._latest = item
                    self._sampled += 1
                return
            if self._halted or self._terminal._ending is not None:
                return  # Rule 2.8: after cancel, or after upstream's own ending
            self._latest = item
            stats = self.stats  # depth and peak are plain counters (drops_only)
            depth = stats.depth + 1
            stats.depth = depth
            if depth > stats.peak_depth:
                stats.peak_depth = depth
            # Invariant (under _state): the stats are armed while an item is
            # held, i.e. whenever counts may be aside (reads then fold them in).
            stats._sync = self._sync_hook
        finally:
            state.release()

    @override
    def _flush_stats_locked(self) -> None:
        sampled = self._sampled
        if sampled:
            self._sampled = 0  # first: count_drop reads through this flush
            self.stats.count_drop("sampled", sampled)

    def _tick(self) -> None:
        self._state.acquire()
        try:
            latest = self._latest
            if latest is None or self._halted:
                return
            self._latest = None
            stats = self.stats
            stats._sync = None  # plain reads from here: nothing will be aside
            self._flush_stats_locked()
            ready = self._ready
            if ready:  # _replace_ready_locked(): a sample still waiting is replaced
                ready.pop()
                stats.count_drop("stale")
                stats.depth -= 1
            ready.append((latest, 1))
        finally:
            self._state.release()
        # Only demand can take it now; without any, a later request drains it
        # (a pass still runs for a meter: it starts timing the wait). A racy
        # read: a request raises _requested before its pass looks at _ready,
        # so either that pass sees the item or this read sees the demand.
        if self._requested or self._timed:
            self._schedule()

    @override
    def hook_upstream_complete(self) -> None:
        self.stats._sync = None
        self._flush_stats_locked()
        super().hook_upstream_complete()

    @override
    def hook_clear_locked(self, reason: str) -> None:
        self.stats._sync = None
        self._flush_stats_locked()
        super().hook_clear_locked(reason)


def sample(
    source: Flow[T],
    period: float,
    emit_last: bool,
    scheduler: Scheduler | None,
    meter: BackpressureMeter | None,
) -> Flow[T]:
    """See :meth:`Flow.sample`."""
    period = check_delay("sample: period", period, positive=True)
    factory = partial(
        _Sample,
        period=period,
        emit_last=emit_last,
        scheduler=default_scheduler(scheduler),
        meter=meter,
    )
    return LiftFlow(source, factory, "sample")


# -- throttle_first ------------------------------------------------------------------------------


class _ThrottleFirst(TimedStrategySubscriber[T, T]):
    """Accepts an item when the gate is open and the slot is free; closes the gate for a period."""

    __slots__ = ("_gate", "_period")

    def __init__(
        self,
        actual: Subscriber[T],
        period: float,
        scheduler: Scheduler,
        meter: BackpressureMeter | None,
    ) -> None:
        super().__init__(actual, 1, meter, scheduler)
        self._period = period
        self._gate = float("-inf")  # guarded by _state: when the gate opens again

    @override
    def hook_item(self, item: T) -> bool:
        now = self._clock()
        with self._state:
            self.stats.produced += 1
            if now < self._gate:
                self.stats.count_drop("throttled")
            elif self._ready:
                self.stats.count_drop("no_demand")  # the window's first still waits
            else:
                self._gate = now + self._period
                self._push_ready_locked(item)
                self._held(1)
                return True
        return False


def throttle_first(
    source: Flow[T], period: float, scheduler: Scheduler | None, meter: BackpressureMeter | None
) -> Flow[T]:
    """See :meth:`Flow.throttle_first`."""
    period = check_delay("throttle_first: period", period, positive=True)
    factory = partial(
        _ThrottleFirst, period=period, scheduler=default_scheduler(scheduler), meter=meter
    )
    return LiftFlow(source, factory, "throttle_first")


# -- throttle_latest ---------------------------------------------------------------------------


class _ThrottleLatest(_LatestHolder[T]):
    """Delivers at once when quiet, then at most one item (the newest) per period.

    A window starts when an item is delivered; while it is open, arrivals
    replace ``_latest``; when it ends, ``_latest`` becomes ready. A ready item
    waiting for demand is replaced by newer arrivals (it is not yet sent).
    """

    __slots__ = ("_window",)

    def __init__(
        self,
        actual: Subscriber[T],
        period: float,
        emit_last: bool,
        scheduler: Scheduler,
        meter: BackpressureMeter | None,
    ) -> None:
        super().__init__(actual, period, emit_last, scheduler, meter)
        self._window: Cancellable | None = None  # guarded by _state

    @override
    def hook_item(self, item: T) -> bool:
        with self._state:
            self.stats.produced += 1
            self._held(1)
            if self._window is None:
                self._replace_ready_locked(item, "throttled")
                return True
            if self._latest is not None:
                self.stats.count_drop("throttled")
                self._held(-1)
            self._latest = item
        return False  # the window's end makes it deliverable

    @override
    def hook_emitted(self, count: int) -> None:
        with self._state:
            if self._window is not None or self._upstream_done:
                return
            self._window = self._after(self._period, self._window_end)

    def _window_end(self) -> None:
        with self._state:
            window, self._window = self._window, None
            self._untrack(window)
            latest, self._latest = self._latest, None
            if latest is not None:
                self._push_ready_locked(latest)
        self._schedule()


def throttle_latest(
    source: Flow[T],
    period: float,
    emit_last: bool,
    scheduler: Scheduler | None,
    meter: BackpressureMeter | None,
) -> Flow[T]:
    """See :meth:`Flow.throttle_latest`."""
    period = check_delay("throttle_latest: period", period, positive=True)
    factory = partial(
        _ThrottleLatest,
        period=period,
        emit_last=emit_last,
        scheduler=default_scheduler(scheduler),
        meter=meter,
    )
    return LiftFlow(source, factory, "throttle_latest")


# -- debounce ----------------------------------------------------------------------------------


class _Debounce(TimedStrategySubscriber[T, T]):
    """An item becomes ready once ``period`` passes without a newer one."""

    __slots__ = ("_generation", "_latest", "_period", "_timer")

    def __init__(
        self,
        actual: Subscriber[T],
        period: float,
        scheduler: Scheduler,
        meter: BackpressureMeter | None,
    ) -> None:
        super().__init__(actual, 2, meter, scheduler)
        self._period = period
        # Guarded by _state.
        self._latest: T | None = None
        self._generation = 0
        self._timer: Cancellable | None = None

    @override
    def hook_item(self, item: T) -> bool:
        with self._state:
            self.stats.produced += 1
            if self._latest is None:
                self._held(1)
            else:
                self.stats.count_drop("debounced")
            self._latest = item
            self._generation += 1
            self._untrack(self._timer)
            self._timer = self._after(self._period, partial(self._fire, self._generation))
        return False  # the quiet period's end makes it deliverable

    def _fire(self, generation: int) -> None:
        with self._state:
            if generation != self._generation or self._latest is None:
                return
            latest, self._latest = self._latest, None
            self._untrack(self._timer)
            self._timer = None
            self._replace_ready_locked(latest, "stale")
        self._schedule()

    @override
    def hook_upstream_complete(self) -> None:
        latest, self._latest = self._latest, None
        if latest is not None:
            self._push_ready_locked(latest)
        self._dispose_timers()

    @override
    def hook_clear_locked(self, reason: str) -> None:
        if self._latest is not None:
            self._latest = None
            self.stats.count_drop(reason)
            self._held(-1)


def debounce(
    source: Flow[T], period: float, scheduler: Scheduler | None, meter: BackpressureMeter | None
) -> Flow[T]:
    """See :meth:`Flow.debounce`."""
    period = check_delay("debounce: period", period, positive=True)
    factory = partial(_Debounce, period=period, scheduler=default_scheduler(scheduler), meter=meter)
    return LiftFlow(source, factory, "debounce")


# -- throttle (token bucket) ----------------------------------------------------------------------


class _Throttle(TimedStrategySubscriber[T, T]):
    """A token bucket of ``burst`` tokens, refilled at ``rate`` per ``per`` seconds.

    Upstream credit: ``burst`` items first, then one per item delivered, so
    (outstanding upstream) + (held) <= ``burst``. ``shape`` spends a token per
    delivered item and waits for the next token when the bucket is empty;
    ``enforce`` spends a token per arriving item and fails with
    ``RateExceededError`` when there is none.
    """

    __slots__ = ("_burst", "_enforce", "_refill_per_second", "_stamp", "_timer", "_tokens")

    def __init__(
        self,
        actual: Subscriber[T],
        rate: int,
        per: float,
        burst: int,
        enforce: bool,
        scheduler: Scheduler,
        meter: BackpressureMeter | None,
    ) -> None:
        super().__init__(actual, burst, meter, scheduler)
        self._burst = burst
        self._enforce = enforce
        self._refill_per_second = rate / per
        # Guarded by _state: the bucket starts full.
        self._tokens = float(burst)
        self._stamp = scheduler.now()
        self._timer: Cancellable | None = None

    @override
    def hook_start(self) -> None:
        self.request_upstream(self._burst)

    def _refill_locked(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0:
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._refill_per_second)

    @override
    def hook_item(self, item: T) -> bool:
        with self._state:
            self.stats.produced += 1
            if self._enforce:
                self._refill_locked()
                if self._tokens + _EPSILON < 1:
                    self.stats.count_drop("rate_exceeded")
                    raise RateExceededError(
                        f"throttle(enforce): more than {self._burst} items in a burst or "
                        f"{self._refill_per_second:g} items/s sustained"
                    )
                self._tokens -= 1
            self._push_ready_locked(item)
            self._held(1)
        return True

    @override
    def _budget_locked(self, wanted: int) -> int:
        if self._enforce:
            return wanted
        self._refill_locked()
        # The epsilon absorbs float drift: 0.9999999999 tokens is a token.
        return min(wanted, int(self._tokens + _EPSILON))

    @override
    def _take_locked(self, budget: int) -> tuple[T, int] | None:
        taken = super()._take_locked(budget)
        if taken is not None and not self._enforce:
            self._tokens -= 1
        return taken

    @override
    def hook_emitted(self, count: int) -> None:
        if not self._upstream_done:
            self.request_upstream(count)

    @override
    def hook_drain(self, actual: Subscriber[T], requested: int) -> int:
        emitted = super().hook_drain(actual, requested)
        if not self._enforce and emitted < requested:
            with self._state:
                if self._ready and self._timer is None and not self._halted:
                    wait = (1.0 - self._tokens) / self._refill_per_second
                    self._timer = self._after(max(wait, _EPSILON), self._token_due)
        return emitted

    def _token_due(self) -> None:
        with self._state:
            timer, self._timer = self._timer, None
            self._untrack(timer)
        self._schedule()


def throttle(
    source: Flow[T],
    rate: int,
    per: float,
    burst: int | None,
    mode: ThrottleMode,
    scheduler: Scheduler | None,
    meter: BackpressureMeter | None,
) -> Flow[T]:
    """See :meth:`Flow.throttle`."""
    if type(rate) is not int or rate < 1:
        raise ValueError(f"throttle: rate must be an int >= 1, got {rate!r}")
    per = check_delay("throttle: per", per, positive=True)
    if burst is None:
        burst = max(1, rate // 10)  # Akka's automatic burst: a tenth of the rate
    if type(burst) is not int or burst < 1:
        raise ValueError(f"throttle: burst must be an int >= 1, got {burst!r}")
    if mode not in ("shape", "enforce"):
        raise ValueError(f"throttle: mode must be 'shape' or 'enforce', got {mode!r}")
    factory = partial(
        _Throttle,
        rate=rate,
        per=per,
        burst=burst,
        enforce=mode == "enforce",
        scheduler=default_scheduler(scheduler),
        meter=meter,
    )
    return LiftFlow(source, factory, "throttle")


# -- buffer_timeout ---------------------------------------------------------------------------


class _BufferTimeout(TimedStrategySubscriber[T, list[T]]):
    """Collects a batch until ``max_size`` items or ``max_time`` since its first item.

    A due batch waits for demand and keeps filling up to ``max_size``
    meanwhile (Akka's ``groupedWithin``). Upstream credit: ``max_size`` first,
    then as many as each delivered batch held, so (outstanding upstream) +
    (held) <= ``max_size``: when the batch is full and downstream is not
    asking, upstream is not asked either.
    """

    __slots__ = ("_batch", "_due", "_generation", "_max_size", "_max_time", "_timer")

    def __init__(
        self,
        actual: Subscriber[list[T]],
        max_size: int,
        max_time: float,
        scheduler: Scheduler,
        meter: BackpressureMeter | None,
    ) -> None:
        super().__init__(actual, max_size, meter, scheduler)
        self._max_size = max_size
        self._max_time = max_time
        # Guarded by _state.
        self._batch: list[T] = []
        self._due = False
        self._generation = 0
        self._timer: Cancellable | None = None

    @override
    def hook_start(self) -> None:
        self.request_upstream(self._max_size)

    @override
    def hook_item(self, item: T) -> bool:
        with self._state:
            self.stats.produced += 1
            self._held(1)
            batch = self._batch
            batch.append(item)
            if len(batch) == 1 and not self._due:
                self._generation += 1
                self._timer = self._after(self._max_time, partial(self._fire, self._generation))
            if len(batch) >= self._max_size:
                self._due = True
            return self._due

    def _fire(self, generation: int) -> None:
        with self._state:
            if generation != self._generation or not self._batch:
                return
            self._due = True
        self._schedule()

    @override
    def hook_upstream_complete(self) -> None:
        if self._batch:
            self._due = True
        self._dispose_timers()

    @override
    def _take_locked(self, budget: int) -> tuple[list[T], int] | None:
        if not self._due or not self._batch:
            return None
        batch, self._batch = self._batch, []
        self._due = False
        self._generation += 1
        self._untrack(self._timer)
        self._timer = None
        return batch, len(batch)

    @override
    def _idle_locked(self) -> bool:
        return not self._batch

    @override
    def hook_drain(self, actual: Subscriber[list[T]], requested: int) -> int:
        before = self.stats.delivered
        emitted = super().hook_drain(actual, requested)
        delivered = self.stats.delivered - before
        if delivered and not self._upstream_done and not self._halted:
            self.request_upstream(delivered)
        return emitted

    @override
    def hook_clear_locked(self, reason: str) -> None:
        if self._batch:
            self.stats.count_drop(reason, len(self._batch))
            self._held(-len(self._batch))
            self._batch = []


def buffer_timeout(
    source: Flow[T],
    max_size: int,
    max_time: float,
    scheduler: Scheduler | None,
    meter: BackpressureMeter | None,
) -> Flow[list[T]]:
    """See :meth:`Flow.buffer_timeout`."""
    if type(max_size) is not int or max_size < 1:
        raise ValueError(f"buffer_timeout: max_size must be an int >= 1, got {max_size!r}")
    max_time = check_delay("buffer_timeout: max_time", max_time, positive=True)
    factory = partial(
        _BufferTimeout,
        max_size=max_size,
        max_time=max_time,
        scheduler=default_scheduler(scheduler),
        meter=meter,
    )
    return LiftFlow(source, factory, "buffer_timeout")


# -- sample_every --------------------------------------------------------------------------


class _SampleEvery(OperatorSubscriber[T, T]):
    """Keeps items number n, 2n, 3n, ... (1-based); asks upstream for n per requested item."""

    __slots__ = ("_count", "_every", "stats")

    def __init__(self, actual: Subscriber[T], every: int, meter: BackpressureMeter | None) -> None:
        super().__init__(actual)
        self._every = every
        self._count = 0  # upstream thread only (Rule 1.3)
        self.stats = BufferStats(0)
        if meter is not None:
            meter.attach(self.stats)

    @override
    def hook_on_next(self, item: T) -> None:
        self.stats.produced += 1
        count = self._count + 1
        if count == self._every:
            self._count = 0
            self.stats.delivered += 1
            self.emit(item)
        else:
            self._count = count
            self.stats.count_drop("sampled")

    @override
    def hook_on_request(self, n: int) -> None:
        if type(n) is int and n > 0:
            self._upstream.request(multiply_cap(n, self._every))
        else:
            self._upstream.request(n)  # upstream signals the Rule 3.9 error


def sample_every(source: Flow[T], n: int, meter: BackpressureMeter | None) -> Flow[T]:
    """See :meth:`Flow.sample_every`."""
    if type(n) is not int or n < 1:
        raise ValueError(f"sample_every: n must be an int >= 1, got {n!r}")
    return LiftFlow(source, partial(_SampleEvery, every=n, meter=meter), "sample_every")


# -- sample_adaptive -----------------------------------------------------------------------------


def adaptive_keep_rate(load: float, base_rate: float, floor_rate: float, threshold: float) -> float:
    """The share of items ``sample_adaptive`` keeps at a buffer ``load`` (0..1).

    Below ``threshold`` it is ``base_rate``; above, it falls linearly with the
    excess load, ``base_rate * (1 - excess)`` where ``excess = (load -
    threshold) / (1 - threshold)``, and never below ``floor_rate``.

    Example:
        >>> [round(adaptive_keep_rate(x, 1.0, 0.01, 0.7), 3) for x in (0.5, 0.7, 0.85, 1.0)]
        [1.0, 1.0, 0.5, 0.01]
    """
    if load < threshold:
        return base_rate
    excess = (load - threshold) / (1.0 - threshold) if threshold < 1.0 else 1.0
    return max(floor_rate, base_rate * (1.0 - min(1.0, excess)))


class _AdaptiveSubscriber(_BufferSubscriber[T]):
    """A bounded buffer that keeps fewer items the fuller it gets.

    Each arriving item is kept with probability ``adaptive_keep_rate(depth /
    capacity)``; the others are counted as dropped, reason ``"sampled"``. A
    kept item that finds the buffer full is dropped as ``"drop_newest"``.
    """

    __slots__ = ("_base", "_floor", "_random", "_threshold", "keep_rate")

    def __init__(
        self,
        actual: Subscriber[T],
        spec: _BufferSpec[T],
        base_rate: float,
        floor_rate: float,
        threshold: float,
        rng: _random.Random | None,
    ) -> None:
        super().__init__(actual, spec)
        self._base = base_rate
        self._floor = floor_rate
        self._threshold = threshold
        self._random = _random.Random() if rng is None else rng
        self.keep_rate = base_rate
        """The rate used for the last item (for dashboards and tests)."""

    @override
    def on_next(self, item: T) -> None:
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        load = self.depth / self._capacity
        rate = adaptive_keep_rate(load, self._base, self._floor, self._threshold)
        self.keep_rate = rate
        if rate >= 1.0 or self._random.random() < rate:
            if self.offer(item) is OfferResult.FAILED:  # pragma: no cover - DROP_NEWEST
                self._cancel_upstream()
        else:
            self.discard(item, "sampled")


def sample_adaptive(
    source: Flow[T],
    base_rate: float,
    floor_rate: float,
    load_threshold: float,
    capacity: int,
    rng: _random.Random | None,
    on_dropped: Callable[[T], object] | None,
    meter: BackpressureMeter | None,
) -> Flow[T]:
    """See :meth:`Flow.sample_adaptive`."""
    if not 0.0 <= floor_rate <= base_rate <= 1.0:
        raise ValueError(
            f"sample_adaptive: need 0 <= floor_rate <= base_rate <= 1, "
            f"got floor_rate={floor_rate!r}, base_rate={base_rate!r}"
        )
    if not 0.0 <= load_threshold <= 1.0:
        raise ValueError(
            f"sample_adaptive: load_threshold must be in [0, 1], got {load_threshold!r}"
        )
    if type(capacity) is not int or capacity < 1:
        raise ValueError(f"sample_adaptive: capacity must be an int >= 1, got {capacity!r}")
    spec = _BufferSpec(
        "sample_adaptive", capacity, OverflowStrategy.DROP_NEWEST, on_dropped, meter=meter
    )
    factory = partial(
        _AdaptiveSubscriber,
        spec=spec,
        base_rate=base_rate,
        floor_rate=floor_rate,
        threshold=load_threshold,
        rng=rng,
    )
    return LiftFlow(source, factory, "sample_adaptive")
