"""spec_tck's public namespace: one flat, sorted ``__all__``, every public name in it."""

from __future__ import annotations

import inspect
import re
import threading
from typing import Any

import pytest

import spec_tck
from spec_tck import (
    CALL_TIMEOUT_ENV,
    QUIET_ENV,
    HelperPool,
    HelperPublisher,
    IdentityProcessorVerification,
    TestEnvironment,
)


def test_all_is_sorted_constants_first() -> None:
    names = spec_tck.__all__
    assert names == sorted(names, key=lambda name: (not name.isupper(), name))
    assert len(set(names)) == len(names)


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(spec_tck).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(spec_tck.__all__)


def test_every_timeout_variable_of_the_environment_is_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = set(re.findall(r"SPEC_TCK_\w+_MS", TestEnvironment.__doc__ or ""))
    exported = {getattr(spec_tck, name) for name in spec_tck.__all__ if name.endswith("_ENV")}
    assert table and table == exported
    monkeypatch.setenv(QUIET_ENV, "7")
    monkeypatch.setenv(CALL_TIMEOUT_ENV, "123")
    env = TestEnvironment()
    assert (env.quiet_ms, env.call_timeout_ms) == (7.0, 123.0)


class _Collect:
    def __init__(self) -> None:
        self.items: list[int] = []
        self.threads: set[str] = set()
        self.done = threading.Event()

    def on_subscribe(self, subscription: Any) -> None:
        subscription.request(10)

    def on_next(self, item: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.items.append(item)

    def on_error(self, error: Exception) -> None:
        self.done.set()

    def on_complete(self) -> None:
        self.done.set()


def test_the_helper_pool_is_the_public_knob_of_the_processor_helper() -> None:
    """Overriding ``create_helper_publisher`` with a pool of one's own needs public names."""
    assert "create_helper_publisher" in vars(IdentityProcessorVerification)
    pool = HelperPool(workers=1, name="spec_tck-api")
    try:
        subscriber = _Collect()
        HelperPublisher(3, lambda index: index * 2, execute=pool.execute).subscribe(subscriber)
        assert subscriber.done.wait(5.0)
        assert subscriber.items == [0, 2, 4]
        assert subscriber.threads == {"spec_tck-api-0"}
    finally:
        assert pool.shutdown(1.0)
