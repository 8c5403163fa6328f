"""Packaging: a plain install (no extras) keeps pytest, the plugin and the CLI working.

The ``pytest11`` entry point is registered whatever extras are installed, so with
``pip install reactive-bp pytest`` every pytest run in that environment loads the plugin. The
plugin, ``spec_tck`` and ``python -m spec_tck`` must therefore import nothing from the ``tck``
extra; only generating demand schedules needs Hypothesis, and says so in one line.

The wheel is built once per session and installed, with pytest only, into a fresh venv. When
the package index cannot be reached (no network, no local index) those tests skip and say why;
any other failure to build or install is a packaging bug and fails.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# pip's ways of saying that it could not reach an index or find a distribution there.
_UNREACHABLE = re.compile(
    r"Could not find a version that satisfies|No matching distribution found|"
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Network is unreachable|ReadTimeoutError|ConnectTimeoutError|ProxyError"
)

EXTRA_MESSAGE = (
    "ModuleNotFoundError: spec_tck: DemandVerification.run() generates schedules with "
    "Hypothesis, which is not installed: pip install 'reactive-bp[tck]'"
)


def _pip(args: list[str], what: str) -> None:
    """Run the current interpreter's pip; skip when the index is unreachable, else fail."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    if _UNREACHABLE.search(output):
        last = output.strip().splitlines()[-1]
        pytest.skip(f"cannot {what}: the package index is unreachable ({last})")
    pytest.fail(f"{what} failed (pip exit {done.returncode}):\n{output}")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per session."""
    out = tmp_path_factory.mktemp("wheel")
    _pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(ROOT)], "build the wheel")
    (built,) = out.glob("reactive_bp-*.whl")
    return built


@pytest.fixture(scope="session")
def plain_python(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """The interpreter of a fresh venv holding the wheel without extras, and pytest."""
    root = tmp_path_factory.mktemp("plain-venv")
    try:
        venv.create(root, with_pip=False)  # the current pip installs into it (--python)
    except Exception as error:
        pytest.skip(f"cannot create a venv here: {type(error).__name__}: {error}")
    python = root / "bin" / "python"
    _pip(
        ["--python", str(python), "install", "--quiet", str(wheel), "pytest"],
        "install the wheel and pytest into a fresh venv",
    )
    return python


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run in ``cwd`` with nothing of this checkout on the path."""
    env = {"PATH": os.defpath, "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False
    )


def test_the_wheel_ships_type_markers_and_an_optional_hypothesis(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        requirements = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
        plugins = archive.read(entry_points).decode()
    assert {"spec_tck/py.typed", "reactive_bp/py.typed"} <= names
    assert "reactive_bp_tck = spec_tck.pytest_plugin" in plugins
    unconditional = [r for r in requirements if "extra ==" not in r]
    assert not [r for r in unconditional if r.startswith(("hypothesis", "pytest"))], requirements
    assert "hypothesis>=6.80; extra == 'tck'" in requirements


PLAIN_TESTS = """
import sys

from reactive_bp import Flow
from spec_tck import PublisherVerification


def test_the_plugin_loaded_without_hypothesis(request):
    assert request.config.pluginmanager.has_plugin("reactive_bp_tck")
    assert "hypothesis" not in sys.modules


class TestRange(PublisherVerification[int]):
    def create_publisher(self, elements):
        return Flow.range(elements)

    def max_elements_from_publisher(self):
        return 1000
"""


def test_pytest_runs_in_a_plain_install(plain_python: Path, tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(PLAIN_TESTS)
    done = _run(
        [str(plain_python), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-k", "plain or 309"],
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The plugin collected the verification class: its Rule 3.9 checks ran and passed.
    assert re.search(r"^(\d+) passed", done.stdout, re.MULTILINE), done.stdout
    assert int(re.findall(r"(\d+) passed", done.stdout)[-1]) >= 3, done.stdout


def test_the_cli_runs_in_a_plain_install(plain_python: Path, tmp_path: Path) -> None:
    done = _run([str(plain_python), "-m", "spec_tck", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "MODULE:FACTORY" in done.stdout


DEMAND_SCRIPT = """
from spec_tck import Complete, DemandVerification, Emit, Request

case = DemandVerification(name="identity", operator=lambda up: up, model=list)
case.check_schedule([Request(1), Emit(1), Complete()])
print("check_schedule works without hypothesis")
case.run()
"""


def test_demand_verification_names_the_extra_in_a_plain_install(
    plain_python: Path, tmp_path: Path
) -> None:
    done = _run([str(plain_python), "-c", DEMAND_SCRIPT], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == "check_schedule works without hypothesis\n"
    assert done.stderr.strip().splitlines()[-1] == EXTRA_MESSAGE


LOADING_TEST = """
import sys


def test_loading_the_plugin_imported_no_hypothesis():
    assert "spec_tck.pytest_plugin" in sys.modules
    assert "hypothesis" not in sys.modules, "loading spec_tck's plugin imported hypothesis"
"""


def test_loading_the_plugin_does_not_import_hypothesis(tmp_path: Path) -> None:
    """In this (dev) environment, where Hypothesis is installed but must not be loaded."""
    (tmp_path / "test_loading.py").write_text(LOADING_TEST)
    load = []
    registered = importlib.metadata.entry_points(group="pytest11", name="reactive_bp_tck")
    if not registered:  # not installed as a distribution here: load it by name
        load = ["-p", "spec_tck.pytest_plugin"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesispytest",  # Hypothesis's own plugin is not ours to judge
            *load,
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
