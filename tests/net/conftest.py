"""Real HTTP servers on loopback for the network tests: uvicorn in a thread or a child process.

Two factory fixtures, both stopping everything they started at the end of the test:

* ``asgi_server(app, **config)`` runs an ASGI application object under uvicorn in
  a thread of this process, on a free ``127.0.0.1`` port (the socket is bound here
  and handed to uvicorn, so no other process can take the port in between), and
  returns a ``ServedApp`` once uvicorn says it started. The test can read the
  server's state directly (same process). Extra keywords go to ``uvicorn.Config``.
* ``asgi_process(factory, env=...)`` runs ``uvicorn --factory module:callable`` in
  a child process (its own interpreter and GIL: for load figures that the test's
  client does not distort), ready when its port accepts connections.

Both log at ``warning`` without access logs and turn lifespan off (the apps under
test are bare ASGI callables), unless told otherwise.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from reactive_bp.connectors.asgi import ASGIApp
from reactive_bp.testing.servers import HOST, LoopbackServer

uvicorn = pytest.importorskip("uvicorn", reason="the http extra: pip install 'reactive-bp[http]'")

_REPO = Path(__file__).resolve().parents[2]
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class ServedApp:
    """An ASGI application served by uvicorn in a thread of this process."""

    def __init__(self, app: ASGIApp, **config: Any) -> None:
        options: dict[str, Any] = {
            "log_level": "warning",
            "access_log": False,
            "lifespan": "off",
            "timeout_graceful_shutdown": 1,
        }
        options.update(config)
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((HOST, 0))
        self.host = HOST
        self.port: int = self._socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="uvicorn-test"
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServedApp:
        """Start serving; return once uvicorn reports it started (or fail)."""
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn not started after {_START_TIMEOUT} s")
            time.sleep(0.005)  # a readiness poll, not timing logic
        return self

    def stop(self) -> None:
        """Stop serving (graceful, then forced) and wait for the thread to end."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(_STOP_TIMEOUT)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(_STOP_TIMEOUT)
        self._socket.close()


class UvicornProcess(LoopbackServer):
    """``uvicorn --factory module:callable`` in a child process, on a free loopback port."""

    name = "uvicorn"
    ready_timeout = 20.0

    def __init__(self, factory: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._factory = factory
        self._env = dict(env or {})

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            self._factory,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--no-access-log",
            "--lifespan",
            "off",
            "--log-level",
            "warning",
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        env.update(self._env)
        return env

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture
def asgi_server() -> Iterator[Callable[..., ServedApp]]:
    """Factory: ``asgi_server(app, **uvicorn_config) -> ServedApp`` (started; stopped after)."""
    served: list[ServedApp] = []

    def serve(app: ASGIApp, **config: Any) -> ServedApp:
        server = ServedApp(app, **config)
        served.append(server)
        return server.start()

    yield serve
    for server in reversed(served):
        server.stop()


@pytest.fixture
def asgi_process() -> Iterator[Callable[..., UvicornProcess]]:
    """Factory: ``asgi_process("module:factory", env={...}) -> UvicornProcess`` (started)."""
    started: list[UvicornProcess] = []

    def serve(factory: str, env: Mapping[str, str] | None = None) -> UvicornProcess:
        server = UvicornProcess(factory, env)
        started.append(server)
        server.start()
        return server

    yield serve
    for server in reversed(started):
        server.stop()
