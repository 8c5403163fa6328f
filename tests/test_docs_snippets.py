"""Every code block of README.md and docs/**/*.md runs (issue 14): the docs cannot drift.

The convention, for whoever writes documentation:

* A fenced ```python (or ```py) block is executed on its own, in a fresh interpreter, as
  ``__main__``, with the repository root as working directory: it must be self-contained, with
  its imports; asyncio code calls ``asyncio.run(...)`` itself. Keep it under about 2 s.
* A fenced ```pycon block is run as a doctest (``>>>`` lines and their expected output;
  ``...`` matches anything in an output, ``doctest.ELLIPSIS``).
* Fences in any other language (```text, ```bash, ```console, none) are not run.
* Directives go in HTML comments (invisible on the site) on the line(s) just before the fence:

  - ``<!-- docs-test: skip: <one-line reason> -->`` skips the block with that reason (needs a
    server that is not started, runs forever, is a fragment). A skip without a reason fails.
  - ``<!-- docs-test: needs: redis -->`` (or ``nats``, ``rabbitmq``; comma-separated for
    several) runs the block with a private server of the test session, its URL in the
    environment variable ``REDIS_URL`` / ``NATS_URL`` / ``AMQP_URL``. Without the server's
    binary the block is skipped with the install hint (failed under ``CI=true``).

  A directive that is misspelt, empty, or not directly above a runnable block fails, so a
  marker cannot silently stop guarding anything.

A block passes when it exits normally, every doctest output matches, no exception escaped a
thread, and nothing reached reactive_bp's undeliverable hook (``tests/_docs_runner.py``).
Tracebacks point at the Markdown file's own lines. Test ids are ``path:line`` of the opening
fence, so ``pytest tests/test_docs_snippets.py -k concepts.md`` runs one page.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Blocks marked ``docs-test: needs: ...`` get the session servers of tests/brokers.py
# (shared through tests/conftest.py with the connector tests).

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0

RUNNABLE = {"python": "python", "py": "python", "pycon": "pycon"}
SERVICES = {
    # needs: name -> (session fixture, environment variable for its URL)
    "redis": ("redis_server", "REDIS_URL"),
    "nats": ("nats_server", "NATS_URL"),
    "rabbitmq": ("rabbitmq_server", "AMQP_URL"),
}

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test\b(?P<body>.*?)-->\s*$")
_LOOKS_LIKE_DIRECTIVE = re.compile(r"docs[-_ ]?tests?\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One fenced code block that the tests run (or a directive problem found near one)."""

    path: str  # relative to the repository root, with "/"
    line: int  # the opening fence's line, 1-based
    kind: str  # "python" or "pycon"
    source: str  # the code, dedented by the fence's indentation
    skip: str | None = None  # the reason, for a skipped block
    needs: tuple[str, ...] = ()
    problem: str | None = None  # a malformed or misplaced directive: the item fails with it

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


MISPLACED = "a docs-test directive must be directly above a ```python or ```pycon fence"


def _failing(path: str, line: int, problem: str) -> Block:
    """An item that fails with ``problem`` (a directive that would otherwise guard nothing)."""
    return Block(path, line, "python", "", problem=problem)


def _dedent(line: str, indent: str) -> str:
    width = len(indent)
    stripped = len(line) - len(line.lstrip(" \t"))
    return line[min(width, stripped) :]


def _parse_directive(body: str) -> tuple[str | None, tuple[str, ...], str | None]:
    """``body`` after ``docs-test``: (skip reason, needs, problem)."""
    text = body.strip()
    if not text.startswith(":"):
        return None, (), f"malformed directive 'docs-test{body}': expected 'docs-test: ...'"
    text = text[1:].strip()
    name, _, argument = text.partition(":")
    name, argument = name.strip(), argument.strip()
    if name == "skip":
        if not argument:
            return None, (), "'docs-test: skip' needs a reason: <!-- docs-test: skip: <reason> -->"
        return argument, (), None
    if name == "needs":
        services = tuple(s.strip() for s in argument.split(",") if s.strip())
        unknown = [s for s in services if s not in SERVICES]
        if not services or unknown:
            return None, (), f"'docs-test: needs' takes one or more of {sorted(SERVICES)}: {text!r}"
        return None, services, None
    return None, (), f"unknown directive 'docs-test: {text}' (known: skip, needs)"


def collect(path: Path, root: Path = ROOT) -> list[Block]:
    """The runnable blocks of one Markdown file, with their directives, in order."""
    relative = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: list[tuple[int, str]] = []  # directives waiting for their fence: (line, body)
    index = 0
    while index < len(lines):
        text = lines[index]
        number = index + 1
        directive = _DIRECTIVE.match(text)
        if directive:
            pending.append((number, directive.group("body")))
            index += 1
            continue
        opening = _FENCE_OPEN.match(text)
        if opening is None:
            if text.lstrip().startswith("<!--") and _LOOKS_LIKE_DIRECTIVE.search(text):
                expected = "<!-- docs-test: skip: <reason> -->"
                unreadable = f"unreadable directive {text.strip()!r}: expected {expected}"
                blocks.append(_failing(relative, number, unreadable))
            blocks += [_failing(relative, line, MISPLACED) for line, _ in pending]
            pending = []
            index += 1
            continue
        fence, indent = opening.group("fence"), opening.group("indent")
        info = opening.group("info").strip()
        language = info.split()[0].lower() if info else ""
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        index += 1
        while index < len(lines) and not closing.match(lines[index]):
            body.append(_dedent(lines[index], indent))
            index += 1
        if index >= len(lines):
            blocks.append(_failing(relative, number, "unclosed code fence"))
            break
        index += 1  # the closing fence
        kind = RUNNABLE.get(language)
        skip: str | None = None
        needs: tuple[str, ...] = ()
        problems: list[str] = []
        for directive_line, directive_body in pending:
            reason, services, complaint = _parse_directive(directive_body)
            if complaint is not None:
                problems.append(f"line {directive_line}: {complaint}")
            skip = reason if reason is not None else skip
            needs += services
        if pending and kind is None:
            problems.append(f"a docs-test directive above a ```{language} block, which never runs")
        pending = []
        if kind is None:
            if problems:
                blocks.append(_failing(relative, number, "; ".join(problems)))
            continue
        source = "\n".join(body) + "\n"
        blocks.append(
            Block(relative, number, kind, source, skip, needs, "; ".join(problems) or None)
        )
    blocks += [_failing(relative, line, MISPLACED) for line, _ in pending]
    return blocks


def documentation_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def collect_all(root: Path = ROOT) -> list[Block]:
    return [block for path in documentation_files(root) for block in collect(path, root)]


def run_block(
    block: Block, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S
) -> tuple[bool, str]:
    """Run ``block`` in a fresh interpreter; (passed, what it printed)."""
    request = {"kind": block.kind, "path": block.path, "line": block.line, "source": block.source}
    environment = {**os.environ, **(env or {})}
    environment.pop("PYTHONSTARTUP", None)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "tests._docs_runner"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        output = f"{_text(expired.stdout)}{_text(expired.stderr)}"
        return False, f"did not finish within {timeout} s\n{output}"
    return completed.returncode == 0, completed.stdout + completed.stderr


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


BLOCKS = collect_all()


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_docs_block(block: Block, request: pytest.FixtureRequest) -> None:
    if block.problem is not None:
        pytest.fail(f"{block.id}: {block.problem}", pytrace=False)
    if block.skip is not None:
        pytest.skip(block.skip)
    env: dict[str, str] = {}
    for service in block.needs:
        fixture, variable = SERVICES[service]
        server = request.getfixturevalue(fixture)
        env[variable] = server.url
    passed, output = run_block(block, env)
    if not passed:
        pytest.fail(f"{block.id} ({block.kind}) failed:\n{output}", pytrace=False)


# -- the collector itself ----------------------------------------------------------------------

SAMPLE = """\
# A page

```python
print("plain")
```

Some text, then an indented block in a list:

* item

  ```py
  def f() -> int:
      return 1
  ```

<!-- docs-test: skip: needs a terminal -->
```python
input()
```

<!-- docs-test: needs: redis, nats -->
```python
import os
```

```pycon
>>> 1 + 1
2
```

```text
not run
```

```bash
make test
```

````python
```
four backticks hold three
````
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    page = tmp_path / "docs" / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_collector_finds_blocks_languages_and_directives(tmp_path: Path) -> None:
    blocks = collect(_write(tmp_path, SAMPLE), tmp_path)
    assert [(b.line, b.kind, b.skip, b.needs, b.problem) for b in blocks] == [
        (3, "python", None, (), None),
        (11, "python", None, (), None),
        (17, "python", "needs a terminal", (), None),
        (22, "python", None, ("redis", "nats"), None),
        (26, "pycon", None, (), None),
        (39, "python", None, (), None),
    ]
    assert blocks[0].id == "docs/page.md:3"
    assert blocks[1].source == "def f() -> int:\n    return 1\n"  # dedented to the fence
    assert blocks[5].source == "```\nfour backticks hold three\n"


@pytest.mark.parametrize(
    ("directive", "complaint"),
    [
        ("<!-- docs-test: skip -->", "needs a reason"),
        ("<!-- docs-test: skip:   -->", "needs a reason"),
        ("<!-- docs-test: needs: kafka -->", "'docs-test: needs' takes"),
        ("<!-- docs-test: skipp: typo -->", "unknown directive"),
        ("<!-- docs-test skip: no colon -->", "malformed directive"),
        ("<!-- docs_test: skip: underscore -->", "unreadable directive"),
    ],
)
def test_a_bad_directive_fails_its_item(tmp_path: Path, directive: str, complaint: str) -> None:
    blocks = collect(_write(tmp_path, f"{directive}\n```python\npass\n```\n"), tmp_path)
    assert any(b.problem is not None and complaint in b.problem for b in blocks), blocks


def test_a_directive_must_sit_directly_above_a_runnable_fence(tmp_path: Path) -> None:
    text = "<!-- docs-test: skip: x -->\n\n```python\npass\n```\n"
    text += "<!-- docs-test: skip: y -->\n```text\nplain\n```\n"
    text += "<!-- docs-test: skip: z -->\n"
    problems = [(b.line, b.problem) for b in collect(_write(tmp_path, text), tmp_path)]
    assert [line for line, problem in problems if problem is not None] == [1, 7, 10]
    assert [line for line, problem in problems if problem is None] == [3]


def test_an_unclosed_fence_fails(tmp_path: Path) -> None:
    [block] = collect(_write(tmp_path, "```python\nprint(1)\n"), tmp_path)
    assert block.problem == "unclosed code fence"


def _block(kind: str, source: str, line: int = 10) -> Block:
    return Block("docs/example.md", line, kind, source)


def test_a_working_block_passes_in_a_fresh_namespace() -> None:
    assert run_block(_block("python", "assert 'Block' not in globals()\nprint('ok')\n")) == (
        True,
        "ok\n",
    )


def test_a_broken_block_fails_and_names_its_markdown_line() -> None:
    passed, output = run_block(_block("python", "x = 1\nraise ValueError('boom')\n", line=40))
    assert not passed
    assert 'File "docs/example.md", line 42' in output and "ValueError: boom" in output


def test_a_pycon_block_is_a_doctest() -> None:
    assert run_block(_block("pycon", ">>> 1 + 1\n2\n>>> print('a b c')\na ... c\n"))[0]
    passed, output = run_block(_block("pycon", ">>> 1 + 1\n3\n", line=7))
    assert not passed
    assert "line 8" in output and "Expected:\n    3\nGot:\n    2" in output


def test_an_exception_in_a_thread_fails_the_block() -> None:
    source = "import threading\nt = threading.Thread(target=lambda: 1 / 0)\nt.start()\n"
    passed, output = run_block(_block("python", source))
    assert not passed and "ZeroDivisionError" in output


def test_an_undeliverable_error_fails_the_block() -> None:
    source = (
        "from reactive_bp import Flow\n"
        "def boom(error: Exception) -> None:\n"
        "    raise RuntimeError('on_error raised')\n"
        "Flow.error(ValueError('x')).subscribe_with(print, boom)\n"
    )
    passed, output = run_block(_block("python", source))
    assert not passed and "undeliverable error" in output and "on_error raised" in output


def test_a_block_that_hangs_fails_after_the_timeout() -> None:
    passed, output = run_block(_block("python", "import time\ntime.sleep(30)\n"), timeout=1.0)
    assert not passed and "did not finish within 1.0 s" in output


def test_the_repository_docs_have_runnable_blocks() -> None:
    pages = {block.path for block in BLOCKS}
    assert "README.md" in pages and "docs/bridging-push-and-pull.md" in pages
    assert sum(block.skip is None and block.problem is None for block in BLOCKS) >= 20
