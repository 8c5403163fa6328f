"""``python -m spec_tck``: table, summary, JSON, rule selection and exit statuses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from . import _publishers as pubs

ROOT = Path(__file__).resolve().parents[2]
PUBS = "tests.spec_tck._publishers"


ENV = {"SPEC_TCK_DEFAULT_TIMEOUT_MS": "300", "PATH": "/usr/bin:/bin"}
ROW = re.compile(
    r"^(?:required|optional|stochastic|untested)_\w+ +(?:passed|failed|skipped|untested)\b"
)


def rows(out: str, prefix: str = "") -> list[str]:
    """The streamed result rows (not the "failed checks in full" section)."""
    return [line for line in out.splitlines() if ROW.match(line) and line.startswith(prefix)]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spec_tck", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env=ENV,
    )


def test_a_correct_publisher_exits_0_with_a_row_per_check() -> None:
    done = run(f"{PUBS}:SyncRangePublisher", "--failed", f"{PUBS}:FailedPublisher")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(
        re.match(r"required_spec309_request_zero_must_signal_value_error\s+passed", line)
        for line in lines
    )
    assert any(re.match(r"untested_spec304_\w+\s+untested\s+Rule 3.4", line) for line in lines)
    summary = lines[-1]
    assert summary.startswith("spec_tck summary: passed=33 failed=0 skipped=0 untested=7")
    # Never shaped like pytest's own "N passed, N failed" line.
    assert not re.search(r"\d+ passed, \d+ failed", done.stdout)


def test_a_broken_publisher_exits_1_and_explains() -> None:
    done = run(f"{PUBS}:OverDeliveringPublisher", "--rule", "101")
    assert done.returncode == 1
    assert "Rule 1.1: on_next #2 exceeds the total demand of 1" in done.stdout
    assert "signal log of subscriber" in done.stdout
    assert "verdict=FAIL" in done.stdout.splitlines()[-1]


def test_rule_selection_and_json_to_stdout() -> None:
    done = run(f"{PUBS}:SyncRangePublisher", "--rule", "309", "--rule", "spec317", "--json", "-")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    ids = [result["id"] for result in document["results"]]
    assert len(ids) == 7
    assert all("309" in i or "317" in i for i in ids)
    assert document["summary"] == {"passed": 7}
    assert "spec_tck summary:" in done.stderr


def test_json_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    done = run(f"{PUBS}:SyncRangePublisher", "--rule", "3.9", "--json", str(target))
    assert done.returncode == 0
    assert {r["rule"] for r in json.loads(target.read_text())["results"]} == {"3.9"}


def test_asyncio_and_max_elements_options() -> None:
    done = run(f"{PUBS}:AsyncioRangePublisher", "--asyncio", "--max-elements", "3", "--rule", "31")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"required_spec312_\w+\s+skipped\s+needs a stream of 20 items", done.stdout)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["no_such_module_xyz:make"], "no module named 'no_such_module_xyz'"),
        ([f"{PUBS}.SyncRangePublisher"], f"did you mean '{PUBS}:SyncRangePublisher'?"),
        ([f"{PUBS}:nothing_here"], "has no attribute 'nothing_here'"),
        ([f"{PUBS}:MAX"], "is not callable"),
        ([f"{PUBS}:FailedPublisher"], "wrong signature"),
        ([f"{PUBS}"], "must look like MODULE:FACTORY"),
        ([f"{PUBS}:SyncRangePublisher", "--failed", f"{PUBS}:SyncRangePublisher"], "wrong sig"),
        ([f"{PUBS}:SyncRangePublisher", "--rule", "nope"], "no check matches"),
        ([f"{PUBS}:SyncRangePublisher", "--max-elements", "x"], "invalid int value"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], reason: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("spec_tck: error: ")
    assert reason in lines[0]
    assert "Traceback" not in done.stderr


def test_usage_errors_do_not_repeat_themselves() -> None:
    for args, named in (
        (["no_such_module_xyz:make"], "no_such_module_xyz"),
        ([PUBS], "MODULE:FACTORY"),
    ):
        line = run(*args).stderr.strip()
        assert line.count(named) == 1, line


def test_skip_reasons_name_the_command_line_options() -> None:
    done = run(
        f"{PUBS}:SyncRangePublisher", "--max-elements", "3", "--rule", "104", "--rule", "312"
    )
    assert done.returncode == 0, done.stdout
    assert re.search(r"optional_spec104_\w+\s+skipped\s+no --failed MODULE:FACTORY", done.stdout)
    assert re.search(r"required_spec312_\w+\s+skipped\s+.*--max-elements is 3", done.stdout)
    assert "create_failed_publisher" not in done.stdout
    assert "max_elements_from_publisher" not in done.stdout


def test_an_asyncio_publisher_run_without_asyncio_gets_one_hint() -> None:
    done = run(f"{PUBS}:AsyncioRangePublisher", "--rule", "spec101", "--rule", "spec102")
    assert done.returncode == 1
    assert "no running event loop" in done.stdout
    assert done.stdout.count("this looks like an asyncio publisher: add --asyncio") == 1


_FACTORY_CALLS = [0]


def once_per_process(elements: int) -> object:
    """A factory that works once per process: shows whether checks shared a process."""
    _FACTORY_CALLS[0] += 1
    if _FACTORY_CALLS[0] > 1:
        raise RuntimeError("this factory works once per process")
    return pubs.SyncRangePublisher(elements)


def test_isolate_runs_every_check_in_a_process_of_its_own() -> None:
    target = "tests.spec_tck.test_cli:once_per_process"
    shared = run(target, "--rule", "spec101", "--rule", "spec102")
    assert shared.returncode == 1 and "works once per process" in shared.stdout
    isolated = run(target, "--rule", "spec101", "--rule", "spec102", "--isolate")
    assert isolated.returncode == 0, isolated.stdout


def test_a_late_violation_turns_the_row_failed_and_quiet_ms_sets_the_window() -> None:
    done = run(f"{PUBS}:LateCompleteAgainPublisher", "--rule", "required_spec107")
    assert done.returncode == 1, done.stdout
    streamed = rows(done.stdout, "required_spec107")
    # Streamed: "passed" when the check returned, then "failed" when the late signal came
    # (one "failed" row if, on a slow machine, it came before the check returned).
    assert streamed[-1].split()[1] == "failed"
    assert len(streamed) == 1 or (streamed[0].split()[1] == "passed" and "late: " in streamed[-1])
    window_off = run(
        f"{PUBS}:LateCompleteAgainPublisher", "--rule", "required_spec107", "--quiet-ms", "0"
    )
    assert window_off.returncode == 0, window_off.stdout


def test_a_blocking_subscribe_is_bounded_even_with_timeout_ms_100() -> None:
    started = time.monotonic()
    done = run(
        f"{PUBS}:BlockingSubscribePublisher",
        "--timeout-ms",
        "100",
        *("--rule", "spec101", "--rule", "spec102"),
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    streamed = rows(done.stdout)
    assert len(streamed) == 2, done.stdout
    assert all("failed    Rule 1.9: subscribe() did not return within 0.5 s" in r for r in streamed)
    # After the first hang the rest ran in processes of their own.
    assert "running the remaining 1 check each in a process of its own" in done.stdout


def _readline(stream: IO[str] | None, timeout_s: float) -> str:
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout_s)
    assert ready, f"no line within {timeout_s} s"
    return stream.readline()


def test_rows_stream_while_later_checks_run() -> None:
    command = [sys.executable, "-m", "spec_tck", f"{PUBS}:BlockingRequestPublisher"]
    command += ["--timeout-ms", "100", "--rule", "spec101", "--rule", "spec102"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV) as proc:
        try:
            first = _readline(proc.stdout, 30)
            first_at = time.monotonic()
            proc.communicate(timeout=30)
            ended_at = time.monotonic()
        finally:
            proc.kill()
    assert first.startswith("required_spec101") and "Rule 3.4: request(" in first
    assert ended_at - first_at > 0.3  # the second check (another hang) ran after the row


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                for child in handle.read().split():
                    found += _tree(int(child))
    except OSError:
        pass
    return found


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_a_publisher_blocking_its_event_loop_is_bounded_in_time_and_memory() -> None:
    """The kit once left such a loop running: RSS grew by ~100 MB/s while later checks ran."""
    command = [sys.executable, "-m", "spec_tck", f"{PUBS}:LoopBlockingPublisher", "--asyncio"]
    command += ["--rule", "spec101", "--rule", "317_must_support_a_pending"]
    cap_mb, peak_mb = 700.0, 0.0
    started = time.monotonic()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV
    ) as proc:
        try:
            while proc.poll() is None and time.monotonic() - started < 60:
                peak_mb = max(peak_mb, sum(_rss_mb(pid) for pid in _tree(proc.pid)))
                if peak_mb > cap_mb:
                    break
                time.sleep(0.02)
        finally:
            for pid in reversed(_tree(proc.pid)):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
            out = proc.communicate()[0]
    seconds = time.monotonic() - started
    assert peak_mb < 400, f"peak RSS of the process tree {peak_mb:.0f} MB"
    assert seconds < 30
    assert out.count("failed    the event loop was blocked for") == 2, out


def test_a_check_that_outgrows_the_memory_cap_is_killed_with_the_stacks_of_its_threads() -> None:
    # A long timeout keeps the kit's own loop watchdog quiet: the memory cap ends it first.
    done = run(
        f"{PUBS}:LoopBlockingPublisher",
        *("--asyncio", "--timeout-ms", "5000", "--max-memory-mb", "150", "--rule", "spec101"),
    )
    assert done.returncode == 1, done.stdout
    assert "grew past 150 MB" in done.stdout
    assert "in _fill" in done.stdout  # faulthandler's stack of the loop thread
    assert "  how to fix: produce and buffer only what was requested" in done.stdout


def exits_the_process(elements: int) -> object:
    """A factory that ends the process it runs in."""
    os._exit(3)


def test_a_check_whose_process_dies_is_failed_and_the_run_goes_on() -> None:
    done = run(
        "tests.spec_tck.test_cli:exits_the_process", "--rule", "spec101", "--rule", "spec102"
    )
    assert done.returncode == 1
    streamed = rows(done.stdout)
    assert len(streamed) == 2, done.stdout
    assert all("ended unexpectedly (exit status 3)" in row for row in streamed)
    assert done.stdout.count("  how to fix: never end the process from the code under test") == 2
