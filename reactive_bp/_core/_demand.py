"""Demand arithmetic: the only place where demand is validated or combined.

Rule 3.17: any total at or above ``UNBOUNDED`` (``2**63 - 1``) is unbounded,
never an error and never a negative number. Nothing else in the package adds to
a demand with ``+``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "UNBOUNDED",
    "NonPositiveRequestError",
    "add_cap",
    "check_request",
    "multiply_cap",
    "produced",
    "sub_or_zero",
]

UNBOUNDED: Final = 2**63 - 1
"""Demand at or above this value means "send everything" (Rule 3.17)."""


class NonPositiveRequestError(ValueError):
    """``request(n)`` was called with ``n <= 0`` (Rule 3.9)."""


def add_cap(a: int, b: int) -> int:
    """Return ``a + b`` saturated at ``UNBOUNDED``."""
    total = a + b
    return UNBOUNDED if total >= UNBOUNDED else total


def multiply_cap(a: int, b: int) -> int:
    """Return ``a * b`` saturated at ``UNBOUNDED`` (for operators that batch)."""
    total = a * b
    return UNBOUNDED if total >= UNBOUNDED else total


def sub_or_zero(a: int, b: int) -> int:
    """Return ``a - b``, never below zero."""
    rest = a - b
    return rest if rest > 0 else 0


def produced(requested: int, n: int) -> int:
    """Return the demand left after ``n`` items were delivered.

    Unbounded demand stays unbounded (Rule 3.17: it is no longer tracked).
    """
    if requested == UNBOUNDED:
        return UNBOUNDED
    return requested - n


def check_request(n: object) -> Exception | None:
    """Return the error that ``request(n)`` must signal, or ``None`` if ``n`` is valid.

    The error is delivered through ``on_error``; it is never raised to the caller
    of ``request`` (Rules 3.9 and 3.16).
    """
    if type(n) is int:
        if n > 0:
            return None
        return NonPositiveRequestError(
            f"Rule 3.9: request(n) requires n > 0, got request({n}); "
            "non-positive requests are illegal"
        )
    if isinstance(n, int) and not isinstance(n, bool):
        # An int subclass (an IntEnum, say) is still a count.
        return check_request(int(n))
    return TypeError(f"request(n) requires an int, got {type(n).__name__} {n!r}")
