"""Every example runs to completion; the demo's bounded scenario stays bounded.

Each ``examples/*.py`` runs in its own interpreter (``sys.executable``), so an
example that leaves threads behind or changes global state cannot affect other
tests. An example that declares ``# supports: --quick`` on a line of its own is
run with ``--quick``; the others run as they are. New examples are picked up by
the glob.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
QUICK_MARKER = re.compile(r"^#\s*supports:.*--quick\b", re.MULTILINE)
TIMEOUT_S = 60


def _command(example: Path) -> list[str]:
    command = [sys.executable, str(example)]
    if QUICK_MARKER.search(example.read_text(encoding="utf-8")):
        command.append("--quick")
    return command


def _run(example: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(example),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=EXAMPLES_DIR.parent,
        check=False,
    )


def test_examples_are_found() -> None:
    assert EXAMPLES_DIR / "demo.py" in EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(example: Path) -> None:
    completed = _run(example)
    assert completed.returncode == 0, (
        f"{' '.join(_command(example))} exited {completed.returncode}\n"
        f"--- stdout ---\n{completed.stdout}\n--- stderr ---\n{completed.stderr}"
    )


def test_quick_marker_is_detected() -> None:
    assert _command(EXAMPLES_DIR / "demo.py")[-1] == "--quick"


def _table_rows(output: str, index: int = 0) -> list[dict[str, str]]:
    """Parse the ``index``-th markdown table in ``output`` into dicts keyed by header."""
    tables: list[list[str]] = []
    previous_was_row = False
    for line in output.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous_was_row = is_row
    assert len(tables) > index, f"no table {index} in output:\n{output}"
    lines = tables[index]
    assert len(lines) >= 3, f"no table in output:\n{output}"
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= set("|-: "), lines[1]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def _count(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_demo_reactive_bp_queue_is_bounded() -> None:
    completed = _run(EXAMPLES_DIR / "demo.py")
    assert completed.returncode == 0, completed.stderr
    rows = _table_rows(completed.stdout)
    assert {"scenario", "produced", "delivered", "peak queue", "peak memory"} <= set(rows[0])

    unbounded = [row for row in rows if row["scenario"].startswith("no backpressure")]
    bounded = [row for row in rows if row["scenario"].startswith("reactive_bp")]
    assert len(unbounded) == 1
    assert bounded

    for row in bounded:
        produced, delivered, peak = (
            _count(row[column]) for column in ("produced", "delivered", "peak queue")
        )
        # request(256): the producer is never more than one request ahead.
        assert 0 < peak <= 256, row
        assert delivered <= produced <= delivered + 256, row
    assert "Verdict:" in completed.stdout

    # The multicast scene: WAIT loses nothing and holds at most buffer_size; the lossy
    # policies account for every reading (received + missed == offered).
    hot = {row["policy"]: row for row in _table_rows(completed.stdout, 1)}
    assert set(hot) == {"WAIT", "DROP", "LATEST", "ERROR"}
    wait = hot["WAIT"]
    assert _count(wait["slow missed"]) == 0
    assert _count(wait["fast received"]) == _count(wait["offered"]) == _count(wait["slow received"])
    assert _count(wait["peak held (sampled)"]) <= 64
    for row in hot.values():
        assert _count(row["slow received"]) + _count(row["slow missed"]) == _count(row["offered"])
