"""Shared fixtures.

``undeliverable`` captures what reaches reactive_bp's undeliverable hook.
Modules marked ``pytestmark = pytest.mark.no_undeliverable`` fail any test
that reports something there without inspecting it (nothing is swallowed
silently, and nothing is reported that should have been delivered).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from reactive_bp.testing import capture_undeliverable
from tests.brokers import nats_server, rabbitmq_server, redis_server

__all__ = ["nats_server", "rabbitmq_server", "redis_server"]  # session fixtures, shared


class _Guard:
    __slots__ = ("inspected", "reported")

    def __init__(self, reported: list[tuple[BaseException, str]]) -> None:
        self.reported = reported
        self.inspected = False


@pytest.fixture(autouse=True)
def _undeliverable_guard(request: pytest.FixtureRequest) -> Iterator[_Guard]:
    with capture_undeliverable() as reported:
        guard = _Guard(reported)
        yield guard
    if request.node.get_closest_marker("no_undeliverable") and not guard.inspected and reported:
        pytest.fail(f"unexpected undeliverable reports: {reported!r}")


@pytest.fixture
def undeliverable(_undeliverable_guard: _Guard) -> list[tuple[BaseException, str]]:
    """The list of ``(error, origin)`` reported in this test."""
    _undeliverable_guard.inspected = True
    return _undeliverable_guard.reported


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Every thread a test starts must be gone shortly after it (pools shut down, timers idle)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith("registry-pool")
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if leaked:
        pytest.fail(f"threads left running: {[t.name for t in leaked]}")


@pytest.fixture(autouse=True, scope="session")
def _registry_pool() -> Iterator[None]:
    yield
    from tests.registry import shutdown_pool

    shutdown_pool()
