"""ThreadPoolScheduler at shutdown: refused and dropped work is rejected, never lost silently."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from reactive_bp import RejectedExecutionError
from reactive_bp.schedulers import ThreadPoolScheduler

pytestmark = pytest.mark.no_undeliverable


class _Rejectable:
    """An action that wants to hear it was dropped."""

    def __init__(self) -> None:
        self.ran = False
        self.rejected: list[Exception] = []
        self.heard = threading.Event()

    def __call__(self) -> None:
        self.ran = True

    def on_rejected(self, error: Exception) -> None:
        self.rejected.append(error)
        self.heard.set()


@pytest.fixture
def blocked_pool() -> Iterator[tuple[ThreadPoolScheduler, threading.Event]]:
    """A one-worker pool whose worker is busy until the event is set."""
    pool = ThreadPoolScheduler(1, thread_name_prefix="blocked")
    release = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    pool.schedule(block)
    assert started.wait(5)
    yield pool, release
    release.set()
    pool.shutdown()


def test_schedule_on_a_shut_down_pool_raises_rejected_naming_the_pool() -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix="gone")
    pool.shutdown()
    with pytest.raises(RejectedExecutionError, match=r"ThreadPoolScheduler\(.*'gone'.*shut down"):
        pool.schedule(lambda: None)
    assert issubclass(RejectedExecutionError, RuntimeError)  # what schedule raised before


def test_a_queued_action_dropped_at_shutdown_hears_on_rejected(
    blocked_pool: tuple[ThreadPoolScheduler, threading.Event],
) -> None:
    pool, release = blocked_pool
    action = _Rejectable()
    pool.schedule(action)
    pool.shutdown(wait=False)
    # Rejected on the thread that shut the pool down, before shutdown returned.
    assert action.heard.is_set()
    [error] = action.rejected
    assert isinstance(error, RejectedExecutionError) and "'blocked'" in str(error)
    release.set()
    pool.shutdown()
    assert not action.ran


def test_a_dropped_plain_action_is_reported_and_a_cancelled_one_is_not(
    blocked_pool: tuple[ThreadPoolScheduler, threading.Event],
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    pool, _ = blocked_pool

    def plain() -> None:
        pass

    pool.schedule(plain)
    pool.schedule(lambda: None).cancel()
    pool.shutdown(wait=False)
    assert len(undeliverable) == 1
    error, origin = undeliverable[0]
    assert isinstance(error, RejectedExecutionError) and "plain" in origin


def test_shutdown_without_cancelling_runs_the_queue_first(
    blocked_pool: tuple[ThreadPoolScheduler, threading.Event],
) -> None:
    pool, release = blocked_pool
    action = _Rejectable()
    pool.schedule(action)
    pool.shutdown(wait=False, cancel_futures=False)
    release.set()
    pool.shutdown(cancel_futures=False)  # wait for the queue to run
    assert action.ran and action.rejected == []


def test_a_delayed_action_that_comes_due_after_shutdown_is_rejected() -> None:
    pool = ThreadPoolScheduler(1, thread_name_prefix="late")
    action = _Rejectable()
    pool.schedule_after(0.02, action)
    cancelled = _Rejectable()
    pool.schedule_after(0.02, cancelled).cancel()
    pool.shutdown()
    assert action.heard.wait(5)  # on the timer thread, when it came due
    assert [type(e) for e in action.rejected] == [RejectedExecutionError]
    assert not action.ran and cancelled.rejected == []


def test_a_raising_on_rejected_is_reported(
    blocked_pool: tuple[ThreadPoolScheduler, threading.Event],
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    pool, _ = blocked_pool

    class Broken(_Rejectable):
        def on_rejected(self, error: Exception) -> None:
            raise KeyError("owner broke")

    pool.schedule(Broken())
    pool.shutdown(wait=False)  # returns normally
    assert [type(e) for e, _ in undeliverable] == [KeyError]
    assert isinstance(undeliverable[0][0].__context__, RejectedExecutionError)


def _submit_all(pool: ThreadPoolScheduler, actions: list[_Rejectable], go: threading.Event) -> None:
    go.wait(5)
    for action in actions:
        try:
            pool.schedule(action)
        except RejectedExecutionError as refused:
            action.rejected.append(refused)


def test_many_actions_racing_a_shutdown_each_run_or_are_rejected_once() -> None:
    """Every action either runs, is refused or is rejected, exactly once; none is lost."""
    for _ in range(50):
        pool = ThreadPoolScheduler(2)
        actions = [_Rejectable() for _ in range(200)]
        go = threading.Event()
        thread = threading.Thread(target=_submit_all, args=(pool, actions, go))
        thread.start()
        go.set()
        pool.shutdown()
        thread.join(5)
        for action in actions:
            assert action.ran + len(action.rejected) == 1, (action.ran, action.rejected)
