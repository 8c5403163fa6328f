"""The self-report gives the same figures on every run (issue 14: the README's line).

A check whose outcome depends on timing, not on the component's contract, is
declared skipped by its registry entry (``PublisherEntry.skips``), with the reason.
"""

from __future__ import annotations

import dataclasses

import pytest

from reactive_bp import Flow
from spec_tck.components import PUBLISHERS, PublisherEntry, verification_for

MULTICAST_CHECKS = [
    "optional_spec111_multicast_must_produce_the_same_elements_in_the_same_sequence_"
    f"to_all_of_its_subscribers_when_{when}"
    for when in (
        "requesting_one_by_one",
        "requesting_many_upfront",
        "requesting_many_upfront_and_complete_as_expected",
    )
]


def _entry(name: str) -> PublisherEntry:
    return next(entry for entry in PUBLISHERS if entry.name == name)


def test_interval_declares_its_timing_dependent_checks_skipped() -> None:
    # Each subscriber of interval has its own clock: which ticks it sees depends on when it
    # requests, so these checks passed or not with the machine's load before.
    results = verification_for(_entry("interval")).run(MULTICAST_CHECKS)
    assert [r.id for r in results] == MULTICAST_CHECKS
    for result in results:
        assert result.status == "skipped", result
        assert "own real-time clock" in result.message, result


def test_a_skip_only_replaces_the_checks_it_names() -> None:
    entry = _entry("interval")
    others = verification_for(dataclasses.replace(entry, skips=())).run(
        ["optional_spec111_may_support_multi_subscribe"]
    )
    assert [r.status for r in others] == ["passed"]


def test_a_skip_naming_no_check_is_refused() -> None:
    entry = PublisherEntry(
        "range_typo",
        lambda n: Flow.range(n),
        (),
        skips=(("optional_spec111_no_such_check", "a typo"),),
    )
    with pytest.raises(ValueError, match="optional_spec111_no_such_check"):
        verification_for(entry)
