"""The public facade: one flat namespace, sorted, every name real and documented."""

from __future__ import annotations

import inspect

import reactive_bp
from reactive_bp import Flow


def test_all_is_sorted_and_complete() -> None:
    names = reactive_bp.__all__
    assert sorted(names, key=lambda n: (not n.isupper(), n)) == names or sorted(names) == names
    for name in names:
        assert hasattr(reactive_bp, name), name
    public = {n for n in vars(reactive_bp) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(reactive_bp, n))}
    assert public - modules - {"annotations"} <= set(names)


def test_every_flow_operator_documents_demand() -> None:
    """Each operator says how downstream demand maps upstream (the house style)."""
    # Sinks and composition helpers are not operators.
    exempt = {"subscribe", "lift", "pipe", "subscribe_with", "to_list", "first", "last"}
    exempt |= {"to_list_async", "first_async", "last_async", "to_observable"}
    for name in vars(Flow):
        if name.startswith("_") or not callable(getattr(Flow, name)) or name in exempt:
            continue
        doc = inspect.getdoc(getattr(Flow, name)) or ""
        assert "Demand:" in doc, f"Flow.{name} has no Demand: paragraph"
        assert "::" in doc or "^" in doc, f"Flow.{name} has no marble diagram"
