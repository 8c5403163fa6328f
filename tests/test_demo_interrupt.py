"""One Ctrl-C ends ``examples/demo.py`` at once, cleanly, whichever scenario is running.

The demo runs in its own interpreter (``--quick``, unbuffered so its output
arrives as it is printed). Once a given line has appeared, the test sends
SIGINT and expects the process to be gone within ``EXIT_DEADLINE_S`` with exit
status 130 and exactly ``interrupted`` on stderr. Before the fix, a Ctrl-C
printed a ``KeyboardInterrupt`` traceback and then, in the first scenario and
whenever it did not land inside ``Thread.join``, hung for good in interpreter
shutdown: non-daemon threads whose loops wait for a stop event nobody set.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
# Startup plus the wait for the trigger line; --quick runs four 0.35 s scenarios.
OUTPUT_DEADLINE_S = 20.0
# The demo exits well under 1 s after Ctrl-C; the rest is slack for a loaded CI machine.
EXIT_DEADLINE_S = 3.0
EXIT_INTERRUPTED = 130

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows"
)


def _wait_for_output(process: subprocess.Popen[bytes], marker: bytes, count: int) -> bytes:
    """Read the demo's stdout until ``marker`` has appeared ``count`` times; return it."""
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + OUTPUT_DEADLINE_S
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while seen.count(marker) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {count} x {marker!r} in time; stdout so far:\n{seen!r}"
            if selector.select(remaining):
                chunk = os.read(process.stdout.fileno(), 65536)
                assert chunk, f"the demo ended before {count} x {marker!r}:\n{seen!r}"
                seen += chunk
    return seen


@pytest.mark.parametrize(
    ("marker", "count", "delay"),
    [
        # The header is printed just before the first scenario (the unbounded
        # queue with its own producer and consumer threads) starts; it runs 0.35 s.
        (b"per scenario.", 1, 0.15),
        # Each "done" line is printed just before the next scenario starts.
        (b"  done", 1, 0.0),  # the reactive_bp consumer pulling with request(n)
        (b"  done", 3, 0.05),  # sample(10 ms): a producer thread and the timer thread
    ],
    ids=["first-scenario", "second-scenario", "last-scenario"],
)
def test_one_sigint_ends_the_demo_promptly(marker: bytes, count: int, delay: float) -> None:
    process = subprocess.Popen(
        [sys.executable, "-u", str(DEMO), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=DEMO.parent.parent,
    )
    try:
        before = _wait_for_output(process, marker, count)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            rest, stderr = process.communicate(timeout=EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo was still running {EXIT_DEADLINE_S} s after one SIGINT")
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    report = (
        f"exit {process.returncode} after {elapsed:.2f} s\n"
        f"--- stdout ---\n{(before + rest).decode(errors='replace')}\n"
        f"--- stderr ---\n{stderr.decode(errors='replace')}"
    )
    assert b"Traceback" not in stderr, report
    assert stderr.decode().strip() == "interrupted", report
    assert process.returncode == EXIT_INTERRUPTED, report
