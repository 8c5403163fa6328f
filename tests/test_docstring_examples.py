"""Every ``>>>`` example in the docstrings of ``reactive_bp`` and ``spec_tck`` runs.

The API reference (``make docs``) renders these examples; this keeps them true.
Each module's examples run with the module's own globals plus the names a reader
of the reference sees in scope: everything ``reactive_bp`` exports, and
``reactive_bp.testing``, ``reactive_bp.schedulers``, ``reactive_bp.metrics``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import reactive_bp
import spec_tck

OPTIONAL = {"rsocket", "asgi", "http", "nats", "redis_streams", "rabbitmq"}


def _examples(module: ModuleType) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module, globs={}) if test.examples]


def _modules() -> list[str]:
    """Every module of the two packages that has at least one ``>>>`` example."""
    names: list[str] = []
    for package in (reactive_bp, spec_tck):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    with_examples: list[str] = []
    for name in sorted(names):
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra that is not installed: the test says so
            with_examples.append(name)
            continue
        if _examples(module):
            with_examples.append(name)
    return with_examples


def _scope() -> dict[str, object]:
    scope: dict[str, object] = {}
    for name in (
        "reactive_bp",
        "reactive_bp.testing",
        "reactive_bp.schedulers",
        "reactive_bp.metrics",
    ):
        module = importlib.import_module(name)
        scope.update({key: getattr(module, key) for key in getattr(module, "__all__", ())})
    return scope


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    """A broken example (a renamed method, a changed output) fails here, naming it."""
    try:
        module = importlib.import_module(name)
    except ImportError as missing:  # an optional extra that is not installed
        if name.rsplit(".", 1)[-1] in OPTIONAL:
            pytest.skip(f"{name}: {missing}")
        raise
    tests = _examples(module)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    scope = _scope()
    report: list[str] = []
    for test in tests:
        test.globs = {**scope, **vars(module)}
        runner.run(test, out=report.append)
    failed = runner.failures
    assert failed == 0, f"{failed} example(s) failed in {name}:\n" + "".join(report)
