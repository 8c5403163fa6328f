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


def test_self_report_includes_every_processor(capsys: pytest.CaptureFixture[str]) -> None:
    # The processors' full verifications run in tests/processors; here: the registry
    # covers every processor class and policy, and the report runs and prints them.
    from reactive_bp.processors import (
        MulticastProcessor,
        ReplayProcessor,
        SlowSubscriberPolicy,
        UnicastProcessor,
    )
    from spec_tck.components import PROCESSORS

    made = [entry.create(4) for entry in PROCESSORS]
    policies = {p.policy for p in made if isinstance(p, MulticastProcessor)}
    assert policies == set(SlowSubscriberPolicy)
    assert any(isinstance(p, ReplayProcessor) for p in made)
    assert any(isinstance(p, UnicastProcessor) for p in made)
    assert main(["--only", "unicast"]) == 0
    out = capsys.readouterr().out
    assert "processors (IdentityProcessorVerification):" in out
    assert "self-report: 1 processors" in out and "failed=0" in out
