"""Write your own operator: the base class keeps the Reactive Streams rules for you."""

from __future__ import annotations

from collections.abc import Callable

from typing_extensions import override

from reactive_bp import Flow, OperatorSubscriber, Subscriber


class _Pairwise(OperatorSubscriber[int, tuple[int, int]]):
    """Emit (previous, current) for each item after the first."""

    __slots__ = ("_previous",)

    def __init__(self, downstream: Subscriber[tuple[int, int]]) -> None:
        super().__init__(downstream)
        self._previous: int | None = None

    @override
    def hook_on_next(self, item: int) -> None:
        previous, self._previous = self._previous, item
        if previous is None:
            self.request_upstream(1)  # the first item emits nothing: ask for one more
        else:
            self.emit((previous, item))


def pairwise() -> Callable[[Flow[int]], Flow[tuple[int, int]]]:
    """Use as ``flow.pipe(pairwise())``."""
    return lambda flow: flow.lift(_Pairwise)


if __name__ == "__main__":
    print(Flow.range(5).pipe(pairwise()).to_list())  # [(0, 1), (1, 2), (2, 3), (3, 4)]
