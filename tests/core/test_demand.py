"""Demand arithmetic (Rules 3.9, 3.17)."""

from __future__ import annotations

import enum

from hypothesis import given
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, NonPositiveRequestError
from reactive_bp._core._demand import add_cap, check_request, multiply_cap, produced, sub_or_zero

demands = st.integers(min_value=0, max_value=UNBOUNDED)


def test_unbounded_is_long_max() -> None:
    assert UNBOUNDED == 2**63 - 1


@given(demands, demands)
def test_add_cap_saturates_and_never_goes_negative(a: int, b: int) -> None:
    total = add_cap(a, b)
    assert 0 <= total <= UNBOUNDED
    assert total == min(a + b, UNBOUNDED)


def test_add_cap_at_the_edge() -> None:
    assert add_cap(UNBOUNDED - 1, 1) == UNBOUNDED
    assert add_cap(UNBOUNDED, UNBOUNDED) == UNBOUNDED
    assert add_cap(2**62, 2**62) == UNBOUNDED
    assert add_cap(UNBOUNDED - 2, 1) == UNBOUNDED - 1


@given(demands, st.integers(min_value=0, max_value=2**20))
def test_multiply_cap_saturates(a: int, b: int) -> None:
    assert multiply_cap(a, b) == min(a * b, UNBOUNDED)


@given(demands, demands)
def test_sub_or_zero(a: int, b: int) -> None:
    assert sub_or_zero(a, b) == max(a - b, 0)


def test_produced_keeps_unbounded_unbounded() -> None:
    assert produced(UNBOUNDED, 10) == UNBOUNDED
    assert produced(10, 4) == 6


def test_check_request_accepts_positive_ints() -> None:
    assert check_request(1) is None
    assert check_request(UNBOUNDED) is None
    assert check_request(2**70) is None  # above UNBOUNDED is "unbounded", never an error


def test_check_request_rejects_non_positive_citing_rule_3_9() -> None:
    for n in (0, -1, -(2**63)):
        error = check_request(n)
        assert isinstance(error, NonPositiveRequestError)
        assert isinstance(error, ValueError)
        assert "Rule 3.9" in str(error)


def test_check_request_rejects_non_ints_with_type_error() -> None:
    for n in (1.0, 1.5, "1", None, True, False, [1]):
        assert isinstance(check_request(n), TypeError), n


def test_check_request_accepts_int_subclasses() -> None:
    class Size(enum.IntEnum):
        SMALL = 2
        NONE = 0

    assert check_request(Size.SMALL) is None
    assert isinstance(check_request(Size.NONE), NonPositiveRequestError)
