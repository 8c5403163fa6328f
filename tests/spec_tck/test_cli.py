"""``python -m spec_tck``: table, summary, JSON, rule selection and exit statuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PUBS = "tests.spec_tck._publishers"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spec_tck", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={"SPEC_TCK_DEFAULT_TIMEOUT_MS": "300", "PATH": "/usr/bin:/bin"},
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
    assert summary.startswith("spec_tck summary: passed=31 failed=0 skipped=0 untested=7")
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
    assert len(ids) == 6
    assert all("309" in i or "317" in i for i in ids)
    assert document["summary"] == {"passed": 6}
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
        (["no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
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
