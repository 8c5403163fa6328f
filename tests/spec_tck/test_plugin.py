"""The pytest plugin: verification classes become one test per check, beside normal tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MODULE = """
from spec_tck import PublisherVerification
from tests.spec_tck import _publishers as pubs


class TestBroken(PublisherVerification[int]):
    def create_publisher(self, elements):
        return pubs.OverDeliveringPublisher(elements)


class TestOrdinary:
    def test_plain_method(self):
        assert True


def test_plain_function():
    assert True


class Helper(PublisherVerification[int]):  # not Test*: left alone
    def create_publisher(self, elements):
        return pubs.SyncRangePublisher(elements)
"""

CONFTEST = "from spec_tck.pytest_plugin import pytest_pycollect_makeitem\n"


def test_plugin_collects_one_test_per_check_with_skip_semantics(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(MODULE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
        env={
            "PYTHONPATH": str(ROOT),
            "PATH": "/usr/bin:/bin",
            "SPEC_TCK_DEFAULT_TIMEOUT_MS": "300",
        },
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    outcomes = {
        m.group(2): m.group(1)
        for m in re.finditer(r"^(PASSED|FAILED|SKIPPED)\S* (?:\[\d+\] )?(\S+)", out, re.MULTILINE)
    }
    assert outcomes["test_user.py::TestOrdinary::test_plain_method"] == "PASSED"
    assert outcomes["test_user.py::test_plain_function"] == "PASSED"
    prefix = "test_user.py::TestBroken::test_"
    assert (
        outcomes[
            prefix + "required_spec101_subscription_request_must_result_in_the_correct_number_of"
            "_produced_elements"
        ]
        == "FAILED"
    )
    assert outcomes[prefix + "required_spec309_request_zero_must_signal_value_error"] == "PASSED"
    assert len([i for i in outcomes if i.startswith(prefix)]) >= 25
    assert not any("Helper" in i for i in outcomes)
    assert "Rule 1.1: on_next #2 exceeds the total demand of 1" in out
    assert re.search(r"untested: Rule 1.6", out)
    assert re.search(r"skipped: create_failed_publisher\(\) returned None", out)
    assert "cannot collect test class" not in out
