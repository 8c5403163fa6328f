"""Timer queues: cancelled entries are purged, cancelled actions are dropped, cancels race safely.

Both queues are covered: the one behind ``VirtualTimeScheduler`` and the one
behind reactive_bp's shared timer thread (every ``ImmediateScheduler``,
``TrampolineScheduler`` and ``ThreadPoolScheduler`` delay waits there).
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import pytest

from reactive_bp.schedulers import (
    Cancellable,
    ImmediateScheduler,
    Scheduler,
    VirtualTimeScheduler,
    _timer,
)

if TYPE_CHECKING:
    from reactive_bp.schedulers._timer import TimerQueue

pytestmark = pytest.mark.no_undeliverable

KINDS = ["virtual", "timer"]


def _scheduler(kind: str) -> Scheduler:
    return VirtualTimeScheduler() if kind == "virtual" else ImmediateScheduler()


def _queue(scheduler: Scheduler) -> TimerQueue[object]:
    """The queue the delayed actions of ``scheduler`` wait in."""
    if isinstance(scheduler, VirtualTimeScheduler):
        return scheduler._queue  # type: ignore[return-value]
    return _timer._TIMER._queue  # type: ignore[return-value]


def _noop() -> None:
    pass


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def _timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reactive_bp-timer"]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond, so a 1 % race shows up in a few hundred rounds."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize("kind", KINDS)
def test_cancelled_entries_are_purged_while_an_earlier_timer_waits(kind: str) -> None:
    scheduler = _scheduler(kind)
    # The earliest entry stays first, so the timer thread never reaches the
    # cancelled ones below it: only the purge can take them out.
    earliest = scheduler.schedule_after(60.0, _noop)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            scheduler.schedule_after(120.0, _noop).cancel()
        peak = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        # Without the purge: about 170 bytes per cancelled entry, 3.5 MiB here.
        assert peak < 100_000, f"{peak / (1 << 20):.1f} MiB for 1 live timer"
        queue = _queue(scheduler)
        assert len(queue) <= _timer._PURGE_MIN + 1 and queue.live == 1
    finally:
        tracemalloc.stop()
        earliest.cancel()
    assert queue.live == 0
    if kind == "timer":
        assert _wait_for(lambda: len(queue) == 0 and not _timer_threads())


def test_the_purge_keeps_the_live_entries_and_their_order() -> None:
    scheduler = VirtualTimeScheduler()
    queue = scheduler._queue
    ran: list[int] = []
    handles = [scheduler.schedule_after(1.0 + i % 7, partial(ran.append, i)) for i in range(1000)]
    for i, handle in enumerate(handles):
        if i % 10:
            handle.cancel()  # 900 cancelled: several purges on the way
    assert len(queue) < 200 and scheduler.pending == 100
    scheduler.advance_by(10.0)
    kept = [i for i in range(1000) if i % 10 == 0]
    assert ran == sorted(kept, key=lambda i: (i % 7, i))  # due time, then FIFO
    assert scheduler.pending == 0 and len(queue) == 0


class _Owner:
    """Stands for an operator that a pending timer's action refers to."""

    def fire(self) -> None:
        pass


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_timer_does_not_keep_its_action_reachable(kind: str) -> None:
    scheduler = _scheduler(kind)
    owner = _Owner()
    ref = weakref.ref(owner)
    once = scheduler.schedule_after(60.0, owner.fire)
    repeating = scheduler.schedule_periodic(60.0, owner.fire)
    del owner
    once.cancel()
    repeating.cancel()
    gc.collect()
    # The handles are still held here (as an operator holds its timer), and a
    # cancelled entry may wait in the queue for the purge: neither may keep
    # the operator, and through it the subscriber, alive (Rule 3.13).
    assert ref() is None
    if kind == "timer":
        assert _wait_for(lambda: not _timer_threads())


def _cancel_all(handles: list[Cancellable], start: threading.Barrier) -> None:
    start.wait()
    for handle in handles:
        handle.cancel()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("fast_switching")
def test_cancels_racing_the_runner_keep_the_queue_consistent(kind: str) -> None:
    """Two threads cancel the same handles while the runner pops the due ones.

    A cancel counted twice, or counted after its entry was popped, leaves the
    cancelled count off: it must be back to 0 once the queue is empty, and
    every entry nobody cancelled must run exactly once.
    """
    rng = random.Random(7)
    rounds = 100
    for _ in range(rounds):
        scheduler = _scheduler(kind)
        queue = _queue(scheduler)
        runs: list[int] = []
        count = 300
        # Real time: due within 2 ms, so pops and cancels overlap.
        spread = 0.002 if kind == "timer" else 1.0
        handles = [
            scheduler.schedule_after(rng.random() * spread, partial(runs.append, i))
            for i in range(count)
        ]
        victims = [h for i, h in enumerate(handles) if i % 3]
        orders = [rng.sample(victims, len(victims)) for _ in range(2)]
        start = threading.Barrier(3)
        threads = [threading.Thread(target=_cancel_all, args=(o, start)) for o in orders]
        for thread in threads:
            thread.start()
        start.wait()
        if isinstance(scheduler, VirtualTimeScheduler):
            while any(t.is_alive() for t in threads):
                scheduler.advance_by(0.01)
            scheduler.advance_by(spread)
        for thread in threads:
            thread.join(10)
        survivors = [i for i in range(count) if i % 3 == 0]

        def settled(
            queue: TimerQueue[object] = queue,
            runs: list[int] = runs,
            survivors: list[int] = survivors,
        ) -> bool:
            return len(queue) == 0 and sorted(i for i in runs if i % 3 == 0) == survivors

        assert _wait_for(settled), f"{len(queue)} entries left, {len(runs)} ran"
        assert queue._cancelled == 0
        assert len(runs) == len(set(runs)), "an entry ran twice"
    if kind == "timer":
        assert _wait_for(lambda: not _timer_threads())
