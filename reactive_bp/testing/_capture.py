"""Capture what reaches the undeliverable hook."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .._core._hooks import set_undeliverable_hook

__all__ = ["capture_undeliverable"]


@contextmanager
def capture_undeliverable() -> Iterator[list[tuple[BaseException, str]]]:
    """Collect ``(error, origin)`` pairs sent to the undeliverable hook in the block.

    Example:
        >>> with capture_undeliverable() as reported:
        ...     _ = Flow.error(ValueError("boom")).subscribe_with()  # no on_error callback
        >>> type(reported[0][0]).__name__
        'ValueError'
    """
    reported: list[tuple[BaseException, str]] = []
    lock = threading.Lock()

    def hook(error: BaseException, origin: str) -> None:
        with lock:
            reported.append((error, origin))

    previous = set_undeliverable_hook(hook)
    try:
        yield reported
    finally:
        set_undeliverable_hook(previous)
