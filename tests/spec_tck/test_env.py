"""TestEnvironment: knobs, env vars, waits that end early, and the error-wait budget."""

from __future__ import annotations

import threading
import time

import pytest

from spec_tck import (
    DEFAULT_TIMEOUT_ENV,
    GC_TIMEOUT_ENV,
    NO_SIGNALS_TIMEOUT_ENV,
    POLL_TIMEOUT_ENV,
    ManualSubscriber,
    SpecViolation,
    TestEnvironment,
)


def test_env_var_names_share_one_scheme() -> None:
    names = [DEFAULT_TIMEOUT_ENV, NO_SIGNALS_TIMEOUT_ENV, POLL_TIMEOUT_ENV, GC_TIMEOUT_ENV]
    assert names == [
        "SPEC_TCK_DEFAULT_TIMEOUT_MS",
        "SPEC_TCK_NO_SIGNALS_TIMEOUT_MS",
        "SPEC_TCK_POLL_TIMEOUT_MS",
        "SPEC_TCK_GC_TIMEOUT_MS",
    ]


def test_timeouts_come_from_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEFAULT_TIMEOUT_ENV, "1234")
    monkeypatch.setenv(NO_SIGNALS_TIMEOUT_ENV, "56")
    monkeypatch.setenv(POLL_TIMEOUT_ENV, "7")
    monkeypatch.setenv(GC_TIMEOUT_ENV, "890")
    env = TestEnvironment()
    assert (env.default_timeout_ms, env.no_signals_timeout_ms) == (1234, 56)
    assert (env.poll_timeout_ms, env.gc_timeout_ms) == (7, 890)


def test_arguments_beat_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEFAULT_TIMEOUT_ENV, "1234")
    assert TestEnvironment(default_timeout_ms=10).default_timeout_ms == 10


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (DEFAULT_TIMEOUT_ENV, NO_SIGNALS_TIMEOUT_ENV, POLL_TIMEOUT_ENV, GC_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    env = TestEnvironment()
    assert (env.default_timeout_ms, env.no_signals_timeout_ms) == (1000, 50)
    assert (env.poll_timeout_ms, env.gc_timeout_ms) == (10, 1000)


@pytest.mark.parametrize("value", ["soon", "-5"])
def test_bad_env_var_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(POLL_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=POLL_TIMEOUT_ENV):
        TestEnvironment()


def _subscribed(env: TestEnvironment) -> ManualSubscriber[int]:
    subscriber: ManualSubscriber[int] = ManualSubscriber(env)
    subscriber.on_subscribe(_Nothing())
    return subscriber


class _Nothing:
    def request(self, n: int) -> None:
        pass

    def cancel(self) -> None:
        pass


def test_expect_error_waits_its_whole_budget_across_poll_slices() -> None:
    """An error arriving after several poll slices is still caught (the JVM 1.0.4 `=-` bug
    gave up after the first slice)."""
    env = TestEnvironment(default_timeout_ms=2000, poll_timeout_ms=10)
    subscriber = _subscribed(env)
    timer = threading.Timer(0.15, subscriber.on_error, args=(ValueError("late"),))
    timer.start()
    try:
        assert isinstance(subscriber.expect_error(ValueError, "late error"), ValueError)
    finally:
        timer.join()


def test_expect_error_fails_only_after_the_budget() -> None:
    env = TestEnvironment(default_timeout_ms=200, poll_timeout_ms=10)
    subscriber = _subscribed(env)
    started = time.monotonic()
    with pytest.raises(SpecViolation, match=r"expected on_error\(ValueError\) within 200 ms"):
        subscriber.expect_error(ValueError, "nothing comes")
    assert time.monotonic() - started >= 0.19


def test_a_flop_on_another_thread_ends_a_wait_early() -> None:
    env = TestEnvironment(default_timeout_ms=30_000)
    subscriber = _subscribed(env)
    timer = threading.Timer(0.05, env.flop, args=("Rule 9.9: seen on another thread",))
    timer.start()
    try:
        with pytest.raises(SpecViolation, match=r"Rule 9\.9"):
            subscriber.expect_next("waiting")
    finally:
        timer.join()


def test_quiet_window_is_zero_until_a_foreign_signal() -> None:
    env = TestEnvironment(no_signals_timeout_ms=40)
    subscriber = _subscribed(env)  # on_subscribe outside any call: counts as foreign
    assert env.quiet_window_s() == pytest.approx(0.04)
    env.begin_check(use_asyncio=False, saw_foreign_signal=False)
    try:
        assert env.quiet_window_s() == 0.0
        env.call(lambda: subscriber.on_complete())  # inside a call: synchronous
        assert env.quiet_window_s() == 0.0
    finally:
        env.end_check()


def test_over_delivery_is_flagged_when_it_happens() -> None:
    env = TestEnvironment()
    subscriber = _subscribed(env)
    subscriber.request(1)
    subscriber.on_next(1)
    subscriber.on_next(2)
    with pytest.raises(SpecViolation, match=r"Rule 1.1: on_next #2 exceeds the total demand of 1"):
        env.verify_no_async_errors()


def test_signals_from_two_threads_at_once_are_flagged() -> None:
    env = TestEnvironment()
    inside = threading.Event()
    release = threading.Event()

    def on_next(subscriber: ManualSubscriber[int], item: int) -> None:
        if item == 1:
            inside.set()
            release.wait(5)

    subscriber: ManualSubscriber[int] = ManualSubscriber(env, on_next_hook=on_next)
    subscriber.on_subscribe(_Nothing())
    subscriber.request(2)
    first = threading.Thread(target=subscriber.on_next, args=(1,))
    first.start()
    inside.wait(5)
    subscriber.on_next(2)
    release.set()
    first.join()
    with pytest.raises(SpecViolation, match=r"Rule 1\.3"):
        env.verify_no_async_errors()


def test_same_thread_reentry_is_allowed() -> None:
    env = TestEnvironment()

    def on_next(subscriber: ManualSubscriber[int], item: int) -> None:
        if item == 1:
            subscriber.on_next(2)  # synchronous nesting, as request() -> on_next does

    subscriber: ManualSubscriber[int] = ManualSubscriber(env, on_next_hook=on_next)
    subscriber.on_subscribe(_Nothing())
    subscriber.request(2)
    subscriber.on_next(1)
    env.verify_no_async_errors()
