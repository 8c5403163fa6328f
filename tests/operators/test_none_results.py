"""A user function whose result becomes an item and returns ``None`` signals ``NoneItemError``.

docs/concepts.md promises it: ``None`` met where an item was due ends the stream with
``on_error(NoneItemError)`` (a ``TypeError``), whether a source yielded it or a mapper,
accumulator or fold returned it; fused and unfused chains alike.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reactive_bp import UNBOUNDED, Flow, NoneItemError
from reactive_bp.testing import TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _none(*_: object) -> None:
    return None


CASES: dict[str, Callable[[Flow[int]], Flow[object]]] = {
    "map": lambda flow: flow.map(_none),
    "map_async": lambda flow: flow.map_async(_none),
    "scan": lambda flow: flow.scan(_none),  # type: ignore[arg-type]
    "scan_with_seed": lambda flow: flow.scan(_none, 0),
    "reduce": lambda flow: flow.reduce(_none),  # type: ignore[arg-type]
    "reduce_with_seed": lambda flow: flow.reduce(_none, 0),
}
SOURCES: dict[str, Callable[[], Flow[int]]] = {
    "fused": lambda: Flow.range(1, 4),  # map over an iterable source is fused
    "unfused": lambda: Flow.defer(lambda: Flow.range(1, 4)),
}


@pytest.mark.parametrize("source", SOURCES.values(), ids=list(SOURCES))
@pytest.mark.parametrize("operator", CASES.values(), ids=list(CASES))
def test_a_function_returning_none_signals_none_item_error(
    source: Callable[[], Flow[int]], operator: Callable[[Flow[int]], Flow[object]]
) -> None:
    with pytest.raises(NoneItemError, match="returned None"):
        operator(source()).to_list(timeout=5)


def test_a_fold_returning_none_signals_none_item_error() -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()  # no demand: the fold must run
    Flow.range(3).on_backpressure_reduce(_none).subscribe(subscriber)  # type: ignore[arg-type]
    subscriber.request(UNBOUNDED)
    [error] = subscriber.errors
    assert type(error) is NoneItemError and "fold returned None" in str(error)


def test_none_item_error_is_still_a_type_error() -> None:
    with pytest.raises(TypeError):
        Flow.range(3).map(_none).to_list()
