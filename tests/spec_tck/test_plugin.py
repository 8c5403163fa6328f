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
# What the docs tell users without the entry point to put in a conftest.py.
FULL_CONFTEST = (
    "from spec_tck.pytest_plugin import pytest_collection_modifyitems, pytest_pycollect_makeitem\n"
)
LATE = "test_verify_no_late_violations"


def pytest_run(
    tmp_path: Path, module: str, *args: str, conftest: str = CONFTEST, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run pytest in a subprocess on ``module`` (as ``test_user.py``) in ``tmp_path``.

    ``-rA`` lists every outcome; pass ``-v`` to see the order items ran in.
    """
    (tmp_path / "test_user.py").write_text(module)
    (tmp_path / "conftest.py").write_text(conftest)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
        env={
            "PYTHONPATH": str(ROOT),
            "PATH": "/usr/bin:/bin",
            "SPEC_TCK_DEFAULT_TIMEOUT_MS": "300",
            **env,
        },
    )


def outcomes_of(out: str) -> dict[str, str]:
    """Node id -> PASSED/FAILED/SKIPPED, from the ``-rA`` summary."""
    return {
        m.group(2): m.group(1)
        for m in re.finditer(r"^(PASSED|FAILED|SKIPPED)\S* (?:\[\d+\] )?(\S+)", out, re.MULTILINE)
    }


def test_plugin_collects_one_test_per_check_with_skip_semantics(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, MODULE, "-q", str(tmp_path))
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    outcomes = outcomes_of(out)
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
    # A check that failed on its own is not reported again as late.
    assert outcomes[f"test_user.py::TestBroken::{LATE}"] == "PASSED"


# -- late violations: one more item at the end of each class -------------------------------

LATE_MODULE = """
from spec_tck import PublisherVerification
from tests.spec_tck import _publishers as pubs
from tests.spec_tck.test_late_signals import CompletesMuchLaterPublisher


class TestCompletesTwice(PublisherVerification[int]):
    # The gallery's second on_complete from a timer thread, here 250 ms after the first:
    # every check has returned (and was reported passed) when it comes.
    def create_publisher(self, elements):
        return CompletesMuchLaterPublisher(elements)


class TestCompliant(PublisherVerification[int]):
    def create_publisher(self, elements):
        return pubs.SyncRangePublisher(elements)
"""

SPEC107 = "test_required_spec107_must_not_emit_further_signals_once_on_complete_has_been_signalled"
SPEC309 = "test_required_spec309_request_zero_must_signal_value_error"
TWICE = "test_user.py::TestCompletesTwice::"
COMPLIANT = "test_user.py::TestCompliant::"


def ran(out: str) -> list[str]:
    """The node ids in the order they ran (``-v``)."""
    return list(ran_with_outcomes(out))


def ran_with_outcomes(out: str) -> dict[str, str]:
    """Node id -> outcome, in the order they ran (``-v``)."""
    found = re.findall(r"^(test_user\.py::\S+) (PASSED|FAILED|SKIPPED)", out, re.MULTILINE)
    return dict(found)


def collected(out: str) -> list[str]:
    """The node ids ``--collect-only -q`` lists, in run order."""
    return [line for line in out.splitlines() if line.startswith("test_user.py::")]


def test_a_late_violation_fails_the_last_item_of_its_class_naming_check_and_rule(
    tmp_path: Path,
) -> None:
    done = pytest_run(tmp_path, LATE_MODULE, "-v", SPEC_TCK_QUIET_MS="600")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    outcomes = ran_with_outcomes(out)
    # Every check of the class was reported before the late signal came ...
    checks = [i for i in outcomes if i.startswith(TWICE)]
    assert checks[-1] == TWICE + LATE and len(checks) > 30, out
    assert outcomes[TWICE + SPEC107] == "PASSED"
    assert [i for i in checks[:-1] if outcomes[i] == "FAILED"] == []
    # ... and the class ends with the failure that names the check and the rule it broke.
    assert outcomes[TWICE + LATE] == "FAILED"
    report = out[out.index(f"_ TestCompletesTwice.{LATE} _") :]
    assert "reported earlier were broken by a late signal" in report
    assert re.search(
        r"required_spec107_\w+ +failed +Rule 1\.7: on_complete arrived after a terminal signal "
        r"\(late: \d+ ms after on_complete",
        report,
    ), report
    assert "how to fix (Rule 1.7)" in report
    # A compliant publisher's class ends with a passing late item.
    assert ran(out)[-1] == COMPLIANT + LATE
    assert outcomes[COMPLIANT + LATE] == "PASSED"
    assert [i for i in outcomes if i.startswith(COMPLIANT) and outcomes[i] == "FAILED"] == []


def test_the_late_item_follows_any_selection_of_its_checks(tmp_path: Path) -> None:
    # -k: kept (and not counted as deselected) whenever a check of its class is.
    done = pytest_run(
        tmp_path, LATE_MODULE, "-v", "-k", "required_spec107", SPEC_TCK_QUIET_MS="600"
    )
    assert done.returncode == 1, done.stdout
    assert ran(done.stdout) == [
        TWICE + SPEC107,
        TWICE + LATE,
        COMPLIANT + SPEC107,
        COMPLIANT + LATE,
    ]
    total = re.search(r"collected (\d+) items", done.stdout)
    assert total is not None, done.stdout
    assert f"1 failed, 3 passed, {int(total.group(1)) - 4} deselected" in done.stdout
    # By node id: the late item of the selected check's class is added after it.
    done = pytest_run(tmp_path, LATE_MODULE, "-v", TWICE + SPEC107, SPEC_TCK_QUIET_MS="600")
    assert done.returncode == 1, done.stdout
    assert ran(done.stdout) == [TWICE + SPEC107, TWICE + LATE]
    # "-k 'not ...'" keeps it too: it belongs to the checks that still run.
    done = pytest_run(tmp_path, LATE_MODULE, "--collect-only", "-q", "-k", "not spec107")
    assert collected(done.stdout)[-1] == COMPLIANT + LATE
    # Only --deselect with its own node id leaves it out.
    done = pytest_run(
        tmp_path,
        LATE_MODULE,
        *("--collect-only", "-q", "-k", "spec309_request_zero"),
        *("--deselect", COMPLIANT + LATE),
    )
    assert collected(done.stdout) == [TWICE + SPEC309, TWICE + LATE, COMPLIANT + SPEC309]


REVERSER = """
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):  # a reordering plugin (pytest-randomly, ...)
    items.reverse()
"""


def test_the_late_item_runs_after_its_checks_whatever_the_order(tmp_path: Path) -> None:
    """Also shows the conftest registration the docs give works without the entry point."""
    (tmp_path / "reverser.py").write_text(REVERSER)
    done = pytest_run(
        tmp_path,
        LATE_MODULE,
        *("--collect-only", "-q", "-p", "no:reactive_bp_tck", "-p", "reverser"),
        *("-k", "required_spec107 or spec309_request_zero"),
        conftest=FULL_CONFTEST,
    )
    assert collected(done.stdout) == [
        COMPLIANT + SPEC309,
        COMPLIANT + SPEC107,
        COMPLIANT + LATE,
        TWICE + SPEC309,
        TWICE + SPEC107,
        TWICE + LATE,
    ], done.stdout


def test_the_late_item_alone_skips(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, LATE_MODULE, "-q", COMPLIANT + LATE)
    assert done.returncode == 0, done.stdout
    assert "no check of this class ran in this session" in done.stdout
