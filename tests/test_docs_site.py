"""The documentation site builds with ``mkdocs build --strict`` and its API reference is complete.

The reference pages (docs/reference/) are generated from the docstrings by mkdocstrings, and
this test checks the result: every public member of ``Flow`` and every name in the ``__all__``
of each public module has an anchor in the built HTML, and every ``Flow`` member shows a
marble diagram and its ``Demand:`` paragraph. A name nobody added to a page, or one without a
docstring (mkdocstrings leaves those out), fails here with the name.

Without mkdocs (the ``docs`` extra) the tests skip, unless ``CI`` is set: then they fail.
One strict build of the whole site takes about 15-20 s on the 2-core machine.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType

import pytest

import reactive_bp.connectors
from reactive_bp import Flow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "mkdocs.yml"
BUILD_TIMEOUT_S = 600

# Each module whose __all__ the reference must cover; each connector module is found on disk,
# so a new one fails here until it has a page.
PUBLIC_MODULES = (
    "reactive_bp",
    "reactive_bp.abc",
    "reactive_bp.schedulers",
    "reactive_bp.metrics",
    "reactive_bp.testing",
    "reactive_bp.testing.servers",
    "reactive_bp.processors",
    "reactive_bp.connectors",
    *(
        f"reactive_bp.connectors.{info.name}"
        for info in pkgutil.iter_modules(reactive_bp.connectors.__path__)
        if not info.name.startswith("_")
    ),
    "spec_tck",
)

_ID = re.compile(r'\bid="((?:reactive_bp|spec_tck)(?:\.[A-Za-z_]\w*)*)"')
_FLOW_HEADING = re.compile(r'<h\d id="reactive_bp\.Flow\.([A-Za-z_]\w*)"')


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _require_mkdocs() -> None:
    missing = [
        name
        for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
        if find_spec(name) is None
    ]
    if not missing:
        return
    why = f"{', '.join(missing)} not installed (the docs extra: pip install -e '.[docs]')"
    if _in_ci():
        pytest.fail(f"{why}; CI is set, so the documentation build may not be skipped")
    pytest.skip(why)


def _mkdocs_build(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config),
            "--site-dir",
            str(site_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's site, built strictly once for this module."""
    _require_mkdocs()
    site_dir = tmp_path_factory.mktemp("site")
    result = _mkdocs_build(CONFIG, site_dir)
    if result.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}")
    return site_dir


def _documented_ids(site_dir: Path) -> set[str]:
    ids: set[str] = set()
    for page in (site_dir / "reference").rglob("*.html"):
        ids.update(_ID.findall(page.read_text(encoding="utf-8")))
    return ids


def _resolve(path: str) -> object | None:
    """The object an anchor id names (``reactive_bp.processors.MulticastProcessor``)."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(obj, name):
                return None
            obj = getattr(obj, name)
        return obj
    return None


def _is_definition(obj: object) -> bool:
    """A class, function or module: one object, however many names it is re-exported under."""
    return inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, ModuleType)


def expected_ids() -> list[str]:
    """Every anchor the reference must have (modules, their ``__all__``, ``Flow``'s members)."""
    expected: list[str] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if module_name != "reactive_bp":  # the package itself is spread over the pages
            expected.append(module_name)
        expected.extend(f"{module_name}.{name}" for name in getattr(module, "__all__", ()))
    expected.extend(f"reactive_bp.Flow.{name}" for name in dir(Flow) if not name.startswith("_"))
    return expected


def missing_from_reference(ids: Iterable[str]) -> list[str]:
    """The expected anchors absent from ``ids``.

    A class, function or module re-exported under several names counts as present when it is
    documented under any of them (``reactive_bp.MulticastProcessor`` is documented as
    ``reactive_bp.processors.MulticastProcessor``); a constant must have its own anchor.
    """
    present = set(ids)
    documented: list[object] = [
        obj for path in present if (obj := _resolve(path)) is not None and _is_definition(obj)
    ]
    missing = []
    for path in expected_ids():
        if path in present:
            continue
        obj = _resolve(path)
        if obj is not None and _is_definition(obj) and any(obj is seen for seen in documented):
            continue
        missing.append(path)
    return missing


def _flow_sections(site_dir: Path) -> dict[str, str]:
    """Each ``Flow`` member's rendered HTML on the Flow page, by member name."""
    html = (site_dir / "reference" / "flow.html").read_text(encoding="utf-8")
    headings = list(_FLOW_HEADING.finditer(html))
    ends = [match.start() for match in headings[1:]] + [len(html)]
    return {
        match.group(1): html[match.start() : end] for match, end in zip(headings, ends, strict=True)
    }


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_site_builds_strictly(site: Path) -> None:
    """``mkdocs build --strict`` passes: no broken link or anchor, no unresolved reference."""
    for page in ("index.html", "concepts.html", "reference/flow.html", "reference/spec_tck.html"):
        assert (site / page).is_file(), page


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_reference_lists_every_public_name(site: Path) -> None:
    missing = missing_from_reference(_documented_ids(site))
    assert not missing, (
        f"not in the API reference: {missing}. Add `::: <name>` (or its module) to a page "
        "under docs/reference/ and to the nav in mkdocs.yml, and give it a docstring "
        "(mkdocstrings leaves undocumented names out)"
    )


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_every_flow_member_shows_its_marble_diagram_and_demand(site: Path) -> None:
    sections = _flow_sections(site)
    members = [name for name in dir(Flow) if not name.startswith("_")]
    problems = []
    for name in members:
        section = sections.get(name)
        if section is None:
            problems.append(f"{name}: not on the Flow page")
            continue
        contents = section.split('<div class="doc doc-contents', 1)[-1]
        body = re.sub(r"<details.*?</details>", "", contents, flags=re.DOTALL)  # not examples
        if "<pre" not in body:
            problems.append(f"{name}: no marble diagram (a `::` literal block)")
        if "<strong>Demand:</strong>" not in body:
            problems.append(f"{name}: no Demand: paragraph")
    assert not problems, problems


def test_a_name_left_out_is_reported() -> None:
    """The completeness check can fail: drop one anchor and it names the member."""
    complete = set(expected_ids())
    assert missing_from_reference(complete) == []
    assert missing_from_reference(complete - {"reactive_bp.Flow.map"}) == ["reactive_bp.Flow.map"]
    assert missing_from_reference(complete - {"spec_tck.QUIET_ENV"}) == ["spec_tck.QUIET_ENV"]
    # A class documented under another public name counts; one documented nowhere does not.
    without_top_level = complete - {"reactive_bp.MulticastProcessor"}
    assert missing_from_reference(without_top_level) == []
    nowhere = without_top_level - {"reactive_bp.processors.MulticastProcessor"}
    assert missing_from_reference(nowhere) == [
        "reactive_bp.MulticastProcessor",
        "reactive_bp.processors.MulticastProcessor",
    ]


def _small_site(tmp_path: Path, page: str) -> subprocess.CompletedProcess[str]:
    """Build a one-page site with the project's configuration (theme, plugins, validation)."""
    docs = tmp_path / "docs"
    docs.mkdir(parents=True)
    (docs / "index.md").write_text(page, encoding="utf-8")
    config = tmp_path / "mkdocs.yml"
    extension = ROOT / "docs" / "reference" / "_griffe_rst.py"
    config.write_text(
        f"INHERIT: {CONFIG}\n"
        f"docs_dir: {docs}\n"
        "nav: [index.md]\n"
        "extra_css: []\n"
        "plugins:\n"
        "  - search\n"
        "  - autorefs\n"
        "  - mkdocstrings:\n"
        "      handlers:\n"
        "        python:\n"
        f"          paths: [{ROOT}]\n"
        "          options:\n"
        f"            extensions: [{extension}]\n",
        encoding="utf-8",
    )
    return _mkdocs_build(config, tmp_path / "site")


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    _require_mkdocs()
    good = _small_site(tmp_path / "good", "# Home\n\n::: reactive_bp.Flow.map\n")
    assert good.returncode == 0, good.stderr
    broken = _small_site(tmp_path / "broken", "# Home\n\nSee [the guide](no-such-page.md).\n")
    assert broken.returncode != 0
    assert "no-such-page.md" in broken.stderr


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_build_fails_on_a_reference_to_nothing(tmp_path: Path) -> None:
    _require_mkdocs()
    result = _small_site(tmp_path, "# Home\n\n::: reactive_bp.NoSuchThing\n")
    assert result.returncode != 0
    assert "reactive_bp.NoSuchThing" in result.stderr
