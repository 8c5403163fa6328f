"""pytest plugin: a verification subclass in a test module becomes one test per check.

Registered through the ``pytest11`` entry point ``reactive_bp_tck``. A class whose name
matches ``python_classes`` (``Test*``) and that subclasses a concrete verification yields
``test_<check id>`` items, e.g.
``TestRange::test_required_spec309_request_zero_must_signal_value_error``:

* a failed required (or stochastic) check FAILS with the rule, what was expected, what
  happened, the signal log and, last, one line saying how to fix it;
* a failed optional check, or one that does not apply, is SKIPPED with the reason;
* an untested rule is SKIPPED with the rule's text.

Every item of a class shares one verification instance, and the class ends with one more
item, ``test_verify_no_late_violations``: a check is reported as soon as it returns, but
its subscribers keep recording, so a signal that breaks a rule later (a second
``on_complete`` from a timer thread) can only be reported afterwards. That item watches the
final quiet window (``Verification.finish``) and FAILS naming every check a late signal
broke and its rule; it passes when none was, and skips when no check of the class ran.
Like a class fixture's teardown, it runs after the class's last selected check whenever
one of them runs, whatever ``-k`` says (``pytest_collection_modifyitems``); only
``--deselect`` with its node id leaves it out.

Other classes and functions are left to pytest's own collection. Only this module imports
pytest; the checks themselves do not. The entry point is registered whatever extras are
installed, so loading this plugin imports nothing from the ``tck`` extra: with
``pip install reactive-bp pytest`` any pytest run still works (Hypothesis is imported only
when a ``DemandVerification`` generates schedules).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any, Final

import pytest

from ._verification import Verification

__all__ = ["LATE_ITEM", "pytest_collection_modifyitems", "pytest_pycollect_makeitem"]

LATE_ITEM: Final = "test_verify_no_late_violations"
"""The name of the last item of every verification class (see the module docstring)."""


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


# Defined after _check_function: pytest < 8 orders a class's items by line number.
def _late_function() -> Callable[[Any], None]:
    def check(self: Any) -> None:
        verification: Verification = type(self).spec_tck_verification()
        if not verification.results():
            pytest.skip("no check of this class ran in this session: nothing can be late")
        report = verification.late_failure_report()
        if report is not None:
            pytest.fail(report, pytrace=False)

    check.__name__ = check.__qualname__ = LATE_ITEM
    check.__doc__ = (
        "After the class's checks: fail if a signal broke a rule after its check had been "
        "reported (a late violation, attributed to that check), once the final quiet "
        "window is over."
    )
    return check


def _collectable_class(cls: type[Verification]) -> type:
    """A plain class with one ``test_*`` method per check, sharing one verification, then
    the late-violations item."""
    holder: list[Verification] = []

    def spec_tck_verification(_: type) -> Verification:
        if not holder:
            holder.append(cls())
        return holder[0]

    cases = cls.rule_cases()
    namespace: dict[str, object] = {
        "spec_tck_verification": classmethod(spec_tck_verification),
        "spec_tck_item_names": tuple(f"test_{case.id}" for case in cases),
        "__module__": cls.__module__,
        "__doc__": cls.__doc__,
    }
    for case in cases:
        namespace[f"test_{case.id}"] = _check_function(case.id, getattr(cls, case.id).__doc__)
    namespace[LATE_ITEM] = _late_function()
    collected = type(cls.__name__, (), namespace)
    collected.__qualname__ = cls.__qualname__
    return collected


class VerificationClass(pytest.Class):
    """A verification subclass, collected as the plain class ``_collectable_class`` builds."""

    def _getobj(self) -> type:
        original = getattr(self.parent.obj, self.name)  # type: ignore[union-attr]
        return _collectable_class(original)

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        """The checks, then the late item (matched by ``-k`` like any of the checks)."""
        collected = list(super().collect())
        for node in collected:
            if node.name == LATE_ITEM:
                self.mark_late_item(node)
        return collected

    def mark_late_item(self, node: pytest.Item | pytest.Collector) -> None:
        """Let ``-k`` keep ``node`` whenever its expression keeps one of the checks."""
        node.extra_keyword_matches.update(self.obj.spec_tck_item_names)

    def late_item(self) -> pytest.Item:
        """A new late item (for a class whose checks were selected by node id)."""
        item = pytest.Function.from_parent(self, name=LATE_ITEM)
        self.mark_late_item(item)
        return item


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


@pytest.hookimpl(hookwrapper=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, object, None]:
    """After every other plugin (``-k``, ``-m``, reordering): each verification class with a
    selected check ends with its late item, right after the last of those checks.

    Idempotent: a ``conftest.py`` may register it besides the entry point.
    """
    yield
    last_check: dict[VerificationClass, pytest.Item] = {}
    late: dict[VerificationClass, pytest.Item] = {}
    for item in items:
        parent = item.parent
        if isinstance(parent, VerificationClass):
            (late if item.name == LATE_ITEM else last_check)[parent] = item
    deselected = tuple(config.getoption("deselect", None) or ())
    for parent in last_check:
        if parent not in late and not f"{parent.nodeid}::{LATE_ITEM}".startswith(deselected):
            late[parent] = parent.late_item()
    moved = {late[parent] for parent in last_check if parent in late}
    ordered: list[pytest.Item] = []
    for item in items:
        if item in moved:
            continue
        ordered.append(item)
        parent = item.parent
        if (
            isinstance(parent, VerificationClass)
            and parent in late
            and last_check.get(parent) is item
        ):
            ordered.append(late[parent])
    items[:] = ordered
