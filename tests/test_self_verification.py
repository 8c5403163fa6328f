"""reactive_bp verified by its own compliance kit: every source and operator in the registry."""

from __future__ import annotations

import pytest

from spec_tck import RuleResult, format_results
from spec_tck.components import PUBLISHERS, PublisherEntry, verification_for
from spec_tck.self_report import main, table


@pytest.mark.parametrize("entry", PUBLISHERS, ids=repr)
def test_every_required_rule_holds(entry: PublisherEntry) -> None:
    results: list[RuleResult] = verification_for(entry).run()
    failed = [result for result in results if result.status == "failed"]
    assert not failed, f"{entry.name}:\n{format_results(failed)}"
    assert any(result.status == "passed" for result in results)


def test_self_report_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "range", "--only", "map"]) == 0
    out = capsys.readouterr().out
    assert "self-report: 2 components" in out and "failed=0" in out
    assert "required_spec309" in out
    assert table({}) == "no components"
