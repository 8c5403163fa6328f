"""A griffe extension: render reactive_bp's Google-style docstrings well in mkdocstrings.

The docstrings are written to read well in ``help()`` and follow three reST habits that
Markdown does not understand. Before griffe parses a docstring this rewrites, outside any
code fence:

* a literal block (a paragraph ending in ``::`` followed by an indented block: the marble
  diagrams, code examples) into a fenced block, ``python`` when the block parses as Python and
  ``text`` otherwise; ``Example::`` becomes an ``Example`` admonition holding the fence;
* a doctest run (``>>>`` lines and their output, up to a blank line) into a ``pycon`` fence, so
  that output such as ``['a', 'b']`` is not read as a Markdown link;
* a reST simple table (``====  ====`` borders) into a Markdown table;
* a Sphinx role (``:meth:`Flow.publish```) into a code span;
* the house-style paragraph labels (``Demand:``, ``Cancellation:``, ``Errors:``) into bold.

Without it a marble diagram renders after a stray ``::`` paragraph and an ``Example:`` section
renders its ``>>>`` lines as nested block quotes. The source docstrings are not changed.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):`~?([^`]+)`")
_EXAMPLE_HEADER = re.compile(r"(Examples?)\b(.*)::")
_BORDER = re.compile(r"^ *=+( +=+)+ *$")
_GAP = re.compile(r" {2,}")
_LABEL = re.compile(r"^(\s*)(Demand|Cancellation|Errors):(?=\s)")
_FENCE = "```"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the block of lines indented deeper than ``indent`` from ``start``.

    Blank lines belong to the block only if an indented line follows them.
    """
    end = start
    index = start
    while index < len(lines):
        line = lines[index]
        if line.strip():
            if _indent(line) <= indent:
                break
            end = index + 1
        index += 1
    return end


def _language(block: list[str]) -> str:
    try:
        ast.parse("\n".join(block))
    except SyntaxError:
        return "text"
    return "python"


def _dedent(block: list[str]) -> list[str]:
    depth = min(_indent(line) for line in block if line.strip())
    return [line[depth:] if line.strip() else "" for line in block]


def _literal_block(lines: list[str], index: int, out: list[str]) -> int | None:
    """Rewrite the ``::`` literal block whose header is ``lines[index]``; None if not one."""
    header = lines[index]
    indent = _indent(header)
    start = index + 1
    while start < len(lines) and not lines[start].strip():
        start += 1
    end = _block_end(lines, start, indent)
    if end <= start:
        return None
    body = _dedent(lines[start:end])
    text = header.strip()
    margin = " " * indent
    example = _EXAMPLE_HEADER.fullmatch(text)
    if example is not None:
        # "Example::" -> an Example admonition holding the code (griffe's Google parser).
        title = text[:-2].strip()
        out.append(f"{margin}Example:" + ("" if title == "Example" else f" {title}"))
        inner = margin + "    "
        out.append(f"{inner}{_FENCE}{_language(body)}")
        out.extend(f"{inner}{line}" if line else "" for line in body)
        out.append(f"{inner}{_FENCE}")
    else:
        if text != "::":
            # reST: "text::" shows "text:", "text ::" shows "text".
            out.append(header[:-2].rstrip() + (":" if not header[:-2].endswith(" ") else ""))
            out.append("")
        out.append(f"{margin}{_FENCE}{_language(body)}")
        out.extend(f"{margin}{line}" if line else "" for line in body)
        out.append(f"{margin}{_FENCE}")
    return end


def _doctest_run(lines: list[str], index: int, out: list[str]) -> int:
    """Fence the doctest run starting at ``lines[index]`` (a ``>>>`` line)."""
    indent = _indent(lines[index])
    end = index
    while end < len(lines) and lines[end].strip() and _indent(lines[end]) >= indent:
        end += 1
    margin = " " * indent
    out.append(f"{margin}{_FENCE}pycon")
    out.extend(lines[index:end])
    out.append(f"{margin}{_FENCE}")
    return end


def _table_cells(row: str, starts: list[int]) -> list[str]:
    """Split a table row into one cell per column (empty where the row is blank)."""
    first = _indent(row)
    column = max(index for index, start in enumerate(starts) if start <= first or index == 0)
    parts = _GAP.split(row.strip(), maxsplit=len(starts) - 1 - column)
    cells = [""] * column + parts
    return cells + [""] * (len(starts) - len(cells))


def _simple_table(lines: list[str], index: int, out: list[str]) -> int | None:
    """Rewrite the reST simple table starting at border ``lines[index]``; None if not one.

    Cells are split at runs of two or more spaces (a cell that overruns its column, which
    reST would refuse, still lands in its column); a row whose first column is blank
    continues the row above.
    """
    border = lines[index]
    indent = _indent(border)
    starts = [match.start() for match in re.finditer(r"=+", border)]
    borders = [index]
    end = index + 1
    while end < len(lines):
        line = lines[end]
        if _BORDER.match(line) and _indent(line) == indent:
            borders.append(end)
            if end + 1 == len(lines) or not lines[end + 1].strip():
                break
        elif not line.strip():
            return None
        end += 1
    if len(borders) not in (2, 3) or borders[-1] != end:
        return None
    rows: list[list[str]] = []
    header: list[str] = [""] * len(starts)
    for number in range(index + 1, end):
        if number in borders:
            if rows:
                header = [" ".join(cell.split()) for cell in rows[0]]
                rows = []
            continue
        cells = _table_cells(lines[number], starts)
        if rows and not cells[0]:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    margin = " " * indent

    def markdown_row(cells: list[str]) -> str:
        return margin + "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    out.append(markdown_row(header))
    out.append(margin + "|" + "---|" * len(starts))
    out.extend(markdown_row(row) for row in rows)
    return end + 1


def convert(text: str) -> str:
    """The docstring ``text`` with its reST habits rewritten as Markdown."""
    lines = text.split("\n")
    out: list[str] = []
    in_fence = False
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if stripped.startswith(_FENCE):
            in_fence = not in_fence
        elif not in_fence:
            if stripped.endswith("::") and not stripped.startswith(".."):
                after = _literal_block(lines, index, out)
                if after is not None:
                    index = after
                    continue
            elif stripped.startswith(">>>"):
                index = _doctest_run(lines, index, out)
                continue
            elif _BORDER.match(line):
                after = _simple_table(lines, index, out)
                if after is not None:
                    index = after
                    continue
            line = _ROLE.sub(r"`\1`", line)
            if not out or not out[-1].strip():
                line = _LABEL.sub(r"\1**\2:**", line)
        out.append(line)
        index += 1
    return "\n".join(out)


class RestLiterals(Extension):
    """Rewrite each docstring with :func:`convert` before griffe parses it."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
