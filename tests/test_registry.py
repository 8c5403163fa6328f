"""The registry covers every public Flow member, and every entry keeps its contract."""

from __future__ import annotations

import asyncio

import pytest

from reactive_bp import Flow
from tests.registry import EXEMPT, PUBLISHERS, PublisherEntry


def _public_members() -> set[str]:
    return {
        name
        for name in dir(Flow)
        if not name.startswith("_") and callable(getattr(Flow, name, None))
    }


def test_every_public_flow_member_is_verified_or_exempted_with_a_reason() -> None:
    covered = {name for entry in PUBLISHERS for name in entry.covers}
    missing = _public_members() - covered - set(EXEMPT)
    assert not missing, f"register these in tests/registry.py: {sorted(missing)}"
    assert all(reason for reason in EXEMPT.values())


def _collect(entry: PublisherEntry, elements: int) -> list[object]:
    flow = Flow.from_publisher(entry.create(elements))
    if entry.kind == "asyncio":

        async def run() -> list[object]:
            return await Flow.from_publisher(entry.create(elements)).to_list_async()

        return asyncio.run(run())
    return flow.to_list(timeout=10)


@pytest.mark.parametrize("entry", PUBLISHERS, ids=repr)
@pytest.mark.parametrize("elements", [0, 1, 3, 17])
def test_entry_emits_exactly_the_requested_count(entry: PublisherEntry, elements: int) -> None:
    if elements > entry.max_elements:
        pytest.skip(f"{entry.name} emits at most {entry.max_elements}")
    assert len(_collect(entry, elements)) == elements
