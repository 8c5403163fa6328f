"""Schedulers: virtual time is exact; real-time tests are few and tolerant."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from reactive_bp.schedulers import (
    AsyncioScheduler,
    ImmediateScheduler,
    Scheduler,
    ThreadPoolScheduler,
    TrampolineScheduler,
    VirtualTimeScheduler,
)


def _wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.005)
    return False


def _timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reactive_bp-timer"]


# -- virtual time -------------------------------------------------------------------------


def test_virtual_time_runs_only_when_advanced_in_time_order() -> None:
    vts = VirtualTimeScheduler()
    log: list[tuple[float, str]] = []
    vts.schedule_after(2.0, lambda: log.append((vts.now(), "b")))
    vts.schedule_after(1.0, lambda: log.append((vts.now(), "a")))
    vts.schedule(lambda: log.append((vts.now(), "now")))
    assert log == []
    vts.advance_by(1.5)
    assert log == [(0.0, "now"), (1.0, "a")]
    assert vts.now() == 1.5
    vts.advance_to(10)
    assert log[-1] == (2.0, "b")


def test_virtual_time_keeps_fifo_order_for_equal_times() -> None:
    vts = VirtualTimeScheduler()
    log: list[int] = []
    for i in range(50):
        vts.schedule_after(1.0, lambda i=i: log.append(i))  # type: ignore[misc]
    vts.advance_by(1.0)
    assert log == list(range(50))


def test_virtual_time_runs_actions_scheduled_by_due_actions() -> None:
    vts = VirtualTimeScheduler()
    log: list[float] = []

    def chain() -> None:
        log.append(vts.now())
        if len(log) < 3:
            vts.schedule_after(0.5, chain)

    vts.schedule_after(1.0, chain)
    vts.advance_by(5)
    assert log == [1.0, 1.5, 2.0]


def test_virtual_time_cancel_and_periodic_fixed_rate() -> None:
    vts = VirtualTimeScheduler()
    ticks: list[float] = []
    handle = vts.schedule_periodic(1.0, lambda: ticks.append(vts.now()), initial_delay=0.5)
    vts.advance_by(3.0)
    assert ticks == [0.5, 1.5, 2.5]
    handle.cancel()
    vts.advance_by(5)
    assert ticks == [0.5, 1.5, 2.5]
    assert vts.pending == 0
    cancelled = vts.schedule_after(1, lambda: ticks.append(-1))
    cancelled.cancel()
    vts.advance_by(2)
    assert -1 not in ticks


def test_virtual_time_cannot_go_back_and_validates_delays() -> None:
    vts = VirtualTimeScheduler(start=5)
    with pytest.raises(ValueError):
        vts.advance_to(4)
    with pytest.raises(ValueError):
        vts.schedule_after(-1, lambda: None)
    with pytest.raises(ValueError):
        vts.schedule_periodic(0, lambda: None)
    with pytest.raises(TypeError):
        vts.schedule_after("1", lambda: None)  # type: ignore[arg-type]


def test_a_raising_action_is_reported_and_the_scheduler_goes_on(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    vts = VirtualTimeScheduler()
    log: list[int] = []

    def bad() -> None:
        raise KeyError("action failed")

    vts.schedule(bad)
    vts.schedule(lambda: log.append(1))
    vts.run_ready()
    assert log == [1]
    assert [type(e) for e, _ in undeliverable] == [KeyError]


# -- calling thread ----------------------------------------------------------------------------


def test_immediate_runs_at_once() -> None:
    log: list[str] = []
    ImmediateScheduler().schedule(lambda: log.append("ran"))
    assert log == ["ran"]


def test_trampoline_never_nests() -> None:
    trampoline = TrampolineScheduler()
    depth: list[int] = []
    count = [0]

    def step() -> None:
        depth.append(len(_stack()))
        count[0] += 1
        if count[0] < 10_000:
            trampoline.schedule(step)

    trampoline.schedule(step)
    assert count[0] == 10_000
    assert max(depth) == min(depth)


def _stack() -> list[object]:
    frames: list[object] = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return frames


# -- real time (tolerant) -------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", [ImmediateScheduler(), TrampolineScheduler()], ids=repr)
def test_delayed_actions_run_on_the_timer_thread_which_then_exits(scheduler: Scheduler) -> None:
    ran = threading.Event()
    where: list[str] = []

    def action() -> None:
        where.append(threading.current_thread().name)
        ran.set()

    scheduler.schedule_after(0.01, action)
    assert ran.wait(5)
    assert where == ["reactive_bp-timer"]
    assert _wait_for(lambda: not _timer_threads())


def test_thread_pool_runs_on_workers_and_respects_max_workers() -> None:
    with ThreadPoolScheduler(max_workers=2) as pool:
        lock = threading.Lock()
        active = [0]
        peak = [0]
        done = threading.Semaphore(0)

        def work() -> None:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.01)
            with lock:
                active[0] -= 1
            done.release()

        for _ in range(8):
            pool.schedule(work)
        for _ in range(8):
            assert done.acquire(timeout=5)
        assert peak[0] <= 2
        ticks: list[float] = []
        handle = pool.schedule_periodic(0.01, lambda: ticks.append(pool.now()))
        assert _wait_for(lambda: len(ticks) >= 3)
        handle.cancel()
        count = len(ticks)
        time.sleep(0.05)
        assert len(ticks) <= count + 1  # one tick may have been in flight
    with pytest.raises(RuntimeError):
        pool.schedule(lambda: None)
    with pytest.raises(ValueError):
        ThreadPoolScheduler(0)


def test_asyncio_scheduler_marshals_onto_the_loop() -> None:
    async def main() -> list[str]:
        scheduler = AsyncioScheduler()
        loop_thread = threading.current_thread().name
        log: list[str] = []
        done = asyncio.Event()

        def from_thread() -> None:
            def on_loop() -> None:
                log.append("soon:" + str(threading.current_thread().name == loop_thread))

            def later() -> None:
                log.append("later")
                done.set()

            scheduler.schedule(on_loop)
            scheduler.schedule_after(0.01, later)

        threading.Thread(target=from_thread).start()
        await asyncio.wait_for(done.wait(), 5)
        cancelled = scheduler.schedule_after(0.01, lambda: log.append("cancelled"))
        cancelled.cancel()
        ticks: list[float] = []
        periodic = scheduler.schedule_periodic(0.005, lambda: ticks.append(scheduler.now()))
        while len(ticks) < 3:
            await asyncio.sleep(0.005)
        periodic.cancel()
        await asyncio.sleep(0.03)
        return log

    log = asyncio.run(main())
    assert log == ["soon:True", "later"]
