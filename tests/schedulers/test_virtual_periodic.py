"""VirtualTimeScheduler.schedule_periodic: one handle re-queued per run.

Each test targets one way re-queueing the same handle could go wrong: a run
after cancel, a cancel from inside the action not sticking, a miscounted
queue (``pending``), a raising action ending the repetition, drift of the
fixed rate, a cancelled repetition keeping its action reachable.
"""

from __future__ import annotations

import gc
import math
import sys
import threading
import weakref
from collections.abc import Iterator
from functools import partial

import pytest

from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.schedulers._base import Cancellable, RejectableAction


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_fixed_rate_over_many_periods_does_not_drift() -> None:
    vts = VirtualTimeScheduler()
    ticks: list[float] = []
    vts.schedule_periodic(0.1, lambda: ticks.append(vts.now()))
    vts.advance_by(1000.05)
    assert len(ticks) == 10_000
    # Each due time is the previous plus the period, computed from the same
    # running sum a fixed-rate clock keeps (not now() + period per tick).
    expected = 0.0
    for tick in ticks:
        expected += 0.1
        assert tick == expected


def test_cancel_from_inside_the_action_stops_the_repetition() -> None:
    vts = VirtualTimeScheduler()
    ticks: list[float] = []
    handles: list[Cancellable] = []

    def action() -> None:
        ticks.append(vts.now())
        if len(ticks) == 3:
            handles[0].cancel()

    handles.append(vts.schedule_periodic(1.0, action))
    vts.schedule_after(3.5, lambda: None)  # stays on top after the third run
    vts.advance_by(3)
    assert vts.pending == 1  # the repetition was not queued again after its cancelled run
    vts.advance_by(7)
    assert ticks == [1.0, 2.0, 3.0]


def test_a_raising_action_is_reported_and_keeps_repeating(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    vts = VirtualTimeScheduler()
    runs: list[float] = []

    def action() -> None:
        runs.append(vts.now())
        raise KeyError("tick failed")

    handle = vts.schedule_periodic(1.0, action)
    vts.advance_by(3)
    assert runs == [1.0, 2.0, 3.0]
    assert [type(error) for error, _ in undeliverable] == [KeyError] * 3
    undeliverable.clear()
    handle.cancel()


def test_pending_counts_the_repetition_once_and_not_after_cancel() -> None:
    vts = VirtualTimeScheduler()
    handle = vts.schedule_periodic(1.0, lambda: None, initial_delay=0)
    other = vts.schedule_after(5, lambda: None)
    assert vts.pending == 2
    vts.advance_by(3.5)
    assert vts.pending == 2
    handle.cancel()
    handle.cancel()  # idempotent: counted once
    assert vts.pending == 1
    other.cancel()
    assert vts.pending == 0
    vts.advance_by(10)
    assert vts.pending == 0


def test_a_rejectable_action_runs_what_it_wraps() -> None:
    vts = VirtualTimeScheduler()
    ran: list[float] = []
    rejected: list[Exception] = []
    handle = vts.schedule_periodic(
        2.0, RejectableAction(lambda: ran.append(vts.now()), rejected.append)
    )
    vts.advance_by(6)
    assert ran == [2.0, 4.0, 6.0] and rejected == []
    handle.cancel()


class _Owner:
    def fire(self) -> None:
        pass


def test_a_repetition_cancelled_between_runs_releases_its_action() -> None:
    vts = VirtualTimeScheduler()
    owner = _Owner()
    ref = weakref.ref(owner)
    handle = vts.schedule_periodic(1.0, owner.fire)
    vts.advance_by(2.5)
    del owner
    handle.cancel()
    gc.collect()
    assert ref() is None  # Rule 3.13: the held handle keeps nothing alive


@pytest.mark.usefixtures("fast_switching")
def test_cancel_from_another_thread_racing_the_runs() -> None:
    """After cancel returns, at most the run already under way completes; the count stays exact."""
    for run in range(100):
        vts = VirtualTimeScheduler()
        ticks: list[float] = []
        handle = vts.schedule_periodic(1.0, partial(ticks.append, 1.0))
        start = threading.Barrier(2)

        def cancel_soon(handle: Cancellable = handle, start: threading.Barrier = start) -> None:
            start.wait()
            handle.cancel()

        thread = threading.Thread(target=cancel_soon)
        thread.start()
        start.wait()
        vts.advance_by(200 + run)
        thread.join()
        seen = len(ticks)
        vts.advance_by(100)
        assert len(ticks) == seen  # nothing ran after the cancel
        assert vts.pending == 0
        assert len(vts._queue) == 0 or vts._queue.live == 0


def test_an_action_that_advances_the_clock_further_is_never_undone() -> None:
    """advance_to(5) runs an action at t=1 that advances to 10: the clock stays at 10
    (it used to be set back to 5, after the t=7 action had already run)."""
    vts = VirtualTimeScheduler()
    ran: list[float] = []
    vts.schedule_after(1.0, lambda: vts.advance_to(10.0))
    vts.schedule_after(7.0, lambda: ran.append(vts.now()))
    vts.advance_to(5.0)
    assert ran == [7.0]
    assert vts.now() == 10.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_virtual_time_must_be_finite(bad: float) -> None:
    vts = VirtualTimeScheduler()
    ran: list[float] = []
    vts.schedule_after(100.0, lambda: ran.append(vts.now()))
    with pytest.raises(ValueError, match="finite"):
        vts.advance_to(bad)
    with pytest.raises(ValueError, match=r"finite|>= 0"):
        vts.advance_by(bad)
    assert ran == [] and vts.now() == 0.0
