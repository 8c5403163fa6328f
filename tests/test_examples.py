"""Every example runs to completion; the demo's bounded scenario stays bounded.

Each ``examples/*.py`` runs in its own interpreter (``sys.executable``), so an
example that leaves threads behind or changes global state cannot affect other
tests. An example that declares ``# supports: --quick`` on a line of its own is
run with ``--quick``; the others run as they are. New examples are picked up by
the glob.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


_DONE_LINE = re.compile(
    r"^\s*(?P<name>.+?)\s+produced\s+(?P<produced>[\d,]+)\s+delivered\s+(?P<delivered>[\d,]+)"
    r"\s+dropped\s+(?P<dropped>[\d,]+)\s+queued\s+(?P<queued>[\d,]+)\s+done$",
    re.MULTILINE,
)
_PEAK_NOTE = re.compile(
    r"Note \((?P<name>strategy: [^)]+\))\): peak queue (?P<peak>[\d,]+) = (?P<held>[\d,]+) "
    r"held by the strategy .*?\+ (?P<inbox>[\d,]+) already delivered into the consumer's inbox"
)


def _check_strategy_scenes(
    output: str, lossy: list[dict[str, str]], pulled: dict[str, str], batch: int = 256
) -> None:
    """Strategy rows: drops counted apart from the queue, the peak explained, a fair producer."""
    done = {m["name"]: m for m in _DONE_LINE.finditer(output)}
    for row in lossy:
        produced, delivered, dropped = (
            _count(row[column]) for column in ("produced", "delivered", "dropped")
        )
        assert dropped > 0, row  # the producer outpaces the consumer: the strategy drops
        assert delivered + dropped <= produced, row
        # The last progress line counts dropped readings apart: "queued" is only what
        # still waits (at most the operator's capacity plus one request), never the drops.
        line = done[row["scenario"]]
        assert _count(line["dropped"]) == dropped, (line.group(0), row)
        assert _count(line["queued"]) <= 256 + batch, line.group(0)
        assert _count(line["delivered"]) + _count(line["dropped"]) + _count(
            line["queued"]
        ) <= _count(line["produced"]), line.group(0)
    # A peak above the operator's capacity is explained: what the strategy held plus what
    # it had already delivered into the consumer's inbox (at most one request's worth).
    notes = {m["name"]: m for m in _PEAK_NOTE.finditer(output)}
    for row in lossy:
        note = notes[row["scenario"]]
        held, inbox = _count(note["held"]), _count(note["inbox"])
        assert _count(note["peak"]) == held + inbox == _count(row["peak queue"]), note.group(0)
        assert held <= 256 and inbox <= batch, note.group(0)
    # The producer yields the GIL fairly: a strategy's consumer gets through about as many
    # readings as the pulling consumer (a producer that hogs the GIL left it under 10%).
    buffered = next(row for row in lossy if "on_backpressure_buffer" in row["scenario"])
    assert _count(buffered["delivered"]) >= _count(pulled["delivered"]) / 3, (buffered, pulled)


def test_demo_reactive_bp_queue_is_bounded() -> None:
    completed = _run(EXAMPLES_DIR / "demo.py")
    assert completed.returncode == 0, completed.stderr
    rows = _table_rows(completed.stdout)
    assert {"scenario", "produced", "delivered", "dropped", "peak queue", "peak memory"} <= set(
        rows[0]
    )

    unbounded = [row for row in rows if row["scenario"].startswith("no backpressure")]
    bounded = [row for row in rows if row["scenario"].startswith("reactive_bp")]
    lossy = [row for row in rows if row["scenario"].startswith("strategy:")]
    assert len(unbounded) == 1
    assert bounded
    assert lossy

    for row in bounded:
        produced, delivered, dropped, peak = (
            _count(row[column]) for column in ("produced", "delivered", "dropped", "peak queue")
        )
        # request(256): the producer is never more than one request ahead, and nothing is lost.
        assert 0 < peak <= 256, row
        assert dropped == 0, row
        assert delivered <= produced <= delivered + 256, row
    assert "Verdict:" in completed.stdout

    _check_strategy_scenes(completed.stdout, lossy, bounded[0])

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


def _strategies_module() -> ModuleType:
    """``examples/strategies.py``, imported by path (the examples are not a package)."""
    spec = importlib.util.spec_from_file_location(
        "strategies_example", EXAMPLES_DIR / "strategies.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_strategy_fates_show_which_readings_survive() -> None:
    """The item strips in docs/choosing-a-strategy.md: which readings of a burst get through.

    Burst 2 is readings 30-59 (the first burst starts before the consumer's first request).
    """
    strategies = _strategies_module()
    by_name = {s.name: s for s in strategies.STRATEGIES}

    def delivered(name: str) -> set[int]:
        timeline = strategies.simulate(by_name[name], 6.0)
        return {i for i, fate in timeline.fates.items() if fate == "delivered"}

    burst = set(range(30, 60))
    oldest = delivered("on_backpressure_buffer(20, DROP_OLDEST)") & burst
    newest = delivered("on_backpressure_buffer(20, DROP_NEWEST)") & burst
    latest = delivered("on_backpressure_latest()") & burst
    # DROP_OLDEST keeps the end of the burst, DROP_NEWEST its start: same count, other readings.
    assert len(oldest) == len(newest) == 20
    assert set(range(40, 60)) <= oldest and 35 not in oldest
    assert set(range(30, 50)) <= newest and 55 not in newest
    # latest delivers a few readings, the burst's last one among them.
    assert 59 in latest and len(latest) <= 3

    ttl = strategies.simulate(by_name["on_backpressure_buffer(20, ttl=1.0)"], 4.0)
    expired = {i for i, fate in ttl.fates.items() if fate == "ttl"}
    assert expired and expired <= set(range(60)), expired
    assert max(expired) == 59  # the end of the burst waits longest behind the consumer


def test_lossless_strategies_hold_back_instead_of_dropping() -> None:
    strategies = _strategies_module()
    for strategy in strategies.STRATEGIES:
        if strategy.name.startswith(("throttle(", "buffer_timeout(")):
            timeline = strategies.simulate(strategy, 4.0)
            assert timeline.dropped[-1] == 0, strategy.name
            assert timeline.held_back[-1] > 0, strategy.name
            # Every offered reading was delivered, is still held, or stayed with the producer.
            assert timeline.offered[-1] == (
                timeline.delivered[-1] + timeline.depth[-1] + timeline.held_back[-1]
            ), strategy.name
