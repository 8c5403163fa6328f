"""Run one documentation code block in this fresh interpreter (see tests/test_docs_snippets.py).

Started as ``python -m tests._docs_runner`` from the repository root, it reads one JSON object
from stdin, ``{"kind": "python" | "pycon", "path": ..., "line": ..., "source": ...}``, where
``line`` is the line of the opening fence in ``path``. The block runs as ``__main__`` in a fresh
module; tracebacks and doctest reports point at the Markdown file's own lines.

Exit status 0 means the block ran cleanly: no exception, every doctest output matched, no
exception escaped a thread, and nothing reached reactive_bp's undeliverable hook (unless the
block installed a hook of its own). Otherwise it prints why and exits with 1.
"""

from __future__ import annotations

import doctest
import json
import os
import sys
import threading
import traceback
import types

import reactive_bp

THREAD_JOIN_S = 10.0


class _Trouble:
    """What went wrong outside the block's own control flow."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def thread_failed(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        self.lines.append(f"exception in thread {name}:\n{text}")

    def unraisable(self, info: sys.UnraisableHookArgs) -> None:
        text = "".join(
            traceback.format_exception(info.exc_type, info.exc_value, info.exc_traceback)
        )
        self.lines.append(f"unraisable exception ({info.err_msg}, {info.object!r}):\n{text}")

    def undeliverable(self, error: BaseException, origin: str) -> None:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.lines.append(f"undeliverable error from {origin}:\n{text}")


def _fresh_main(path: str) -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    return module


def _run_python(path: str, line: int, source: str) -> bool:
    # Leading newlines make the block's line numbers those of the Markdown file.
    code = compile("\n" * line + source, path, "exec")
    module = _fresh_main(path)
    try:
        exec(code, module.__dict__)
    except BaseException:
        traceback.print_exc()
        return False
    return True


def _run_pycon(path: str, line: int, source: str) -> bool:
    module = _fresh_main(path)
    parser = doctest.DocTestParser()
    # doctest reports example k at test.lineno + k + 1, and example 0 is on line `line + 1`.
    test = parser.get_doctest(source, module.__dict__, f"{path}:{line}", path, line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test, out=sys.stdout.write)
    return result.failed == 0


def _join_threads() -> list[str]:
    stuck = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(THREAD_JOIN_S)
        if thread.is_alive():
            stuck.append(thread.name)
    return stuck


def main() -> int:
    request = json.loads(sys.stdin.read())
    kind, path, line, source = request["kind"], request["path"], request["line"], request["source"]
    trouble = _Trouble()
    threading.excepthook = trouble.thread_failed
    sys.unraisablehook = trouble.unraisable
    reactive_bp.set_undeliverable_hook(trouble.undeliverable)
    run = _run_python if kind == "python" else _run_pycon
    ok = run(path, line, source)
    stuck = _join_threads()
    if stuck:
        print(f"threads still running {THREAD_JOIN_S} s after the block: {stuck}", file=sys.stderr)
        ok = False
    if trouble.lines:
        print("\n".join(trouble.lines), file=sys.stderr)
        ok = False
    sys.stdout.flush()
    sys.stderr.flush()
    if stuck:
        os._exit(1)  # interpreter shutdown would wait for those threads forever
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
