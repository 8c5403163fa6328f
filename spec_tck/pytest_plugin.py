"""pytest plugin: a verification subclass in a test module becomes one test per check.

Registered through the ``pytest11`` entry point ``reactive_bp_tck``. A class whose name
matches ``python_classes`` (``Test*``) and that subclasses a concrete verification yields
``test_<check id>`` items, e.g.
``TestRange::test_required_spec309_request_zero_must_signal_value_error``:

* a failed required (or stochastic) check FAILS with the rule, what was expected, what
  happened, the signal log and, last, one line saying how to fix it;
* a failed optional check, or one that does not apply, is SKIPPED with the reason;
* an untested rule is SKIPPED with the rule's text.

Other classes and functions are left to pytest's own collection. Only this module imports
pytest; the checks themselves do not. The entry point is registered whatever extras are
installed, so loading this plugin imports nothing from the ``tck`` extra: with
``pip install reactive-bp pytest`` any pytest run still works (Hypothesis is imported only
when a ``DemandVerification`` generates schedules).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from ._verification import Verification

__all__ = ["pytest_pycollect_makeitem"]


def _check_function(case_id: str, doc: str | None) -> Callable[[Any], None]:
    def check(self: Any) -> None:
        result = type(self).spec_tck_verification().run_rule(case_id)
        if result.status == "failed":
            pytest.fail(f"{case_id}\n{result.message}", pytrace=False)
        if result.status in ("skipped", "untested"):
            pytest.skip(f"{result.status}: {result.message}")

    check.__name__ = check.__qualname__ = f"test_{case_id}"
    check.__doc__ = doc
    return check


def _collectable_class(cls: type[Verification]) -> type:
    """A plain class with one ``test_*`` method per check, sharing one verification."""
    holder: list[Verification] = []

    def spec_tck_verification(_: type) -> Verification:
        if not holder:
            holder.append(cls())
        return holder[0]

    namespace: dict[str, object] = {
        "spec_tck_verification": classmethod(spec_tck_verification),
        "__module__": cls.__module__,
        "__doc__": cls.__doc__,
    }
    for case in cls.rule_cases():
        namespace[f"test_{case.id}"] = _check_function(case.id, getattr(cls, case.id).__doc__)
    collected = type(cls.__name__, (), namespace)
    collected.__qualname__ = cls.__qualname__
    return collected


class VerificationClass(pytest.Class):
    """A verification subclass, collected as the plain class ``_collectable_class`` builds."""

    def _getobj(self) -> type:
        original = getattr(self.parent.obj, self.name)  # type: ignore[union-attr]
        return _collectable_class(original)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> pytest.Class | None:
    """Collect concrete verification subclasses as one test per check."""
    if not (inspect.isclass(obj) and issubclass(obj, Verification)):
        return None
    if inspect.isabstract(obj) or not collector.classnamefilter(name):
        return None
    node: pytest.Class = VerificationClass.from_parent(collector, name=name)
    return node
