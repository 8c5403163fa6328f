"""Terminal-signal delivery that never lets a subscriber's exception escape.

Rule 2.13: a subscriber's signal method must return normally; when one does
not, its caller treats the subscription as cancelled and reports the error
instead of re-raising it. These two helpers are that report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ._hooks import report_undeliverable

if TYPE_CHECKING:
    from ..abc import Subscriber

__all__ = ["signal_complete", "signal_error"]

T = TypeVar("T")


def signal_error(actual: Subscriber[T], error: Exception, origin: object) -> None:
    """Call ``actual.on_error(error)``; if that raises, report both to the hook."""
    try:
        actual.on_error(error)
    except Exception as fault:
        fault.__context__ = error
        report_undeliverable(fault, f"{type(actual).__name__}.on_error (via {origin!r})")


def signal_complete(actual: Subscriber[T], origin: object) -> None:
    """Call ``actual.on_complete()``; if that raises, report it to the hook."""
    try:
        actual.on_complete()
    except Exception as fault:
        report_undeliverable(fault, f"{type(actual).__name__}.on_complete (via {origin!r})")
