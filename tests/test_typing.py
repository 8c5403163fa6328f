"""Static typing of the fluent API: checked by ``mypy --strict`` in ``make test``.

The assertions are ``assert_type`` calls, which mypy verifies and which are
no-ops at run time; running the test also checks the values.
"""

from __future__ import annotations

from typing import assert_type

from reactive_bp import Flow, SynchronousSink
from reactive_bp.abc import Publisher


def test_lambdas_type_check_through_the_chain() -> None:
    doubled = Flow.range(0, 10).map(lambda x: x * 2)
    assert_type(doubled, Flow[int])
    words = doubled.filter(lambda x: x > 4).map(lambda x: f"n{x}")
    assert_type(words, Flow[str])
    assert_type(words.buffer(2), Flow[list[str]])
    assert_type(Flow.just("a").scan(lambda acc, s: acc + s), Flow[str])
    assert_type(Flow.just(1, 2).reduce(lambda acc, x: [*acc, x], [0]), Flow[list[int]])
    assert_type(Flow.just(1).distinct_until_changed(lambda x: x % 2), Flow[int])
    assert words.to_list() == ["n6", "n8", "n10", "n12", "n14", "n16", "n18"]


def test_flow_is_a_covariant_publisher() -> None:
    ints: Flow[int] = Flow.just(1)
    objects: Flow[object] = ints
    publisher: Publisher[object] = objects
    assert publisher is ints


def test_sources_infer_their_item_type() -> None:
    def step(state: int, sink: SynchronousSink[str]) -> int:
        sink.next(str(state))
        sink.complete()
        return state

    assert_type(Flow.generate(lambda: 0, step), Flow[str])
    assert_type(Flow.from_iterable([1.5]), Flow[float])
    empty: Flow[int] = Flow.empty()
    assert empty.to_list() == []
