"""The one place where signals that cannot be delivered are reported.

A Reactive Streams component may never raise into its caller (Rules 2.13,
3.15, 3.16), so an error with nowhere to go (a subscriber's ``on_error``
that raised, an error that arrived after a terminal signal, a protocol
violation by a third-party publisher) is handed to this hook instead of being
swallowed. The default hook logs it on the ``reactive_bp`` logger at ERROR
level. Tests capture it with :func:`reactive_bp.testing.capture_undeliverable`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = [
    "ProtocolViolationError",
    "UndeliverableHook",
    "get_undeliverable_hook",
    "report_undeliverable",
    "set_undeliverable_hook",
]

UndeliverableHook = Callable[[BaseException, str], None]
"""Receives the error and a short description of where it came from."""

_logger = logging.getLogger("reactive_bp")


class ProtocolViolationError(Exception):
    """A component broke a Reactive Streams rule; the message names the rule."""


def _log(error: BaseException, origin: str) -> None:
    _logger.error("undeliverable error from %s", origin, exc_info=error)


# Guarded by _hook_lock for writes; reads are a single attribute load.
_hook: UndeliverableHook = _log
_hook_lock = threading.Lock()


def set_undeliverable_hook(hook: UndeliverableHook | None) -> UndeliverableHook:
    """Install ``hook`` (``None`` restores the logging default); return the previous one."""
    global _hook
    with _hook_lock:
        previous = _hook
        _hook = _log if hook is None else hook
    return previous


def get_undeliverable_hook() -> UndeliverableHook:
    """Return the hook currently installed."""
    return _hook


def report_undeliverable(error: BaseException, origin: str) -> None:
    """Hand ``error`` to the hook; a hook that raises is logged, never propagated."""
    try:
        _hook(error, origin)
    except Exception:  # the hook itself must not break the stream
        _logger.exception("undeliverable hook raised while reporting %r", error)
