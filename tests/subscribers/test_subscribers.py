"""BaseSubscriber, request policies, subscribe_with and the blocking sinks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from reactive_bp import (
    UNBOUNDED,
    BaseSubscriber,
    EmptyFlowError,
    Flow,
    ProtocolViolationError,
    RequestPolicy,
    SignalType,
)
from reactive_bp._core._operator import EmptySubscription
from reactive_bp.abc import Subscription

pytestmark = pytest.mark.no_undeliverable


def _requests_of(policy: RequestPolicy, count: int = 1000) -> tuple[list[int], list[int]]:
    requests: list[int] = []
    items: list[int] = []
    Flow.range(count).do_on_request(requests.append).subscribe_with(items.append, request=policy)
    return requests, items


def test_batch_policy_requests_then_replenishes_at_75_percent() -> None:
    requests, items = _requests_of(RequestPolicy.batch(256))
    assert items == list(range(1000))
    assert requests[0] == 256
    assert set(requests[1:]) == {192}
    # Outstanding demand never exceeds the batch size.
    outstanding, delivered = 0, 0
    for n in requests:
        outstanding += n
        assert outstanding - delivered <= 256
        delivered = min(delivered + 192, 1000)


def test_one_by_one_policy_requests_single_items() -> None:
    requests, items = _requests_of(RequestPolicy.one_by_one(), 50)
    assert items == list(range(50))
    assert set(requests) == {1}


def test_unbounded_policy_requests_once() -> None:
    requests, items = _requests_of(RequestPolicy.unbounded(), 50)
    assert requests == [UNBOUNDED]
    assert len(items) == 50


def test_manual_policy_requests_nothing() -> None:
    requests, items = _requests_of(RequestPolicy.manual(), 50)
    assert requests == [] and items == []


def test_policy_validation() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            RequestPolicy.batch(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RequestPolicy(4, 5)
    assert RequestPolicy.batch(1).replenish == 1
    assert RequestPolicy.batch(4).replenish == 3


class _Recorder(BaseSubscriber[int]):
    def __init__(self, policy: RequestPolicy | None = None, fail_at: int | None = None) -> None:
        super().__init__(policy)
        self.fail_at = fail_at
        self.log: list[str] = []

    def hook_on_subscribe(self, subscription: Subscription) -> None:
        self.log.append("subscribe")

    def hook_on_next(self, item: int) -> None:
        if item == self.fail_at:
            raise KeyError(item)
        self.log.append(f"next {item}")

    def hook_on_error(self, error: Exception) -> None:
        self.log.append(f"error {type(error).__name__}")

    def hook_on_complete(self) -> None:
        self.log.append("complete")

    def hook_on_cancel(self) -> None:
        self.log.append("cancel")

    def hook_finally(self, signal: SignalType) -> None:
        self.log.append(f"finally {signal.value}")


def test_base_subscriber_hooks_in_order() -> None:
    recorder = _Recorder()
    Flow.range(2).subscribe(recorder)
    assert recorder.log == ["subscribe", "next 0", "next 1", "complete", "finally on_complete"]
    assert recorder.is_disposed


def test_a_raising_hook_cancels_upstream_and_becomes_hook_on_error() -> None:
    cancelled: list[bool] = []
    recorder = _Recorder(fail_at=1)
    Flow.range(5).do_on_cancel(lambda: cancelled.append(True)).subscribe(recorder)
    assert recorder.log == ["subscribe", "next 0", "error KeyError", "finally on_error"]
    assert cancelled == [True]


def test_cancel_runs_hooks_once() -> None:
    recorder = _Recorder(RequestPolicy.manual())
    Flow.range(5).subscribe(recorder)
    recorder.request(1)
    recorder.cancel()
    recorder.cancel()
    recorder.request(1)
    assert recorder.log == ["subscribe", "next 0", "cancel", "finally cancel"]


def test_a_second_subscription_is_cancelled_and_reported(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    class Tracking(EmptySubscription):
        cancelled = False

        def cancel(self) -> None:
            Tracking.cancelled = True

    recorder = _Recorder()
    Flow.never().subscribe(recorder)
    recorder.on_subscribe(Tracking())
    assert Tracking.cancelled  # Rule 2.5
    assert isinstance(undeliverable[0][0], ProtocolViolationError)
    assert "Rule 2.5" in str(undeliverable[0][0])


def test_none_arguments_raise_type_error() -> None:
    recorder = _Recorder()
    with pytest.raises(TypeError):
        recorder.on_subscribe(None)  # type: ignore[arg-type]
    Flow.never().subscribe(recorder)
    with pytest.raises(TypeError):
        recorder.on_next(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        recorder.on_error(None)  # type: ignore[arg-type]


def test_the_default_error_hook_reports_undeliverable(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    error = ValueError("nobody listens")
    Flow.error(error).subscribe(BaseSubscriber())
    assert undeliverable[0][0] is error


def test_subscribe_with_returns_a_disposable_handle() -> None:
    items: list[int] = []
    handle = Flow.never().subscribe_with(items.append)
    assert not handle.is_disposed
    handle.dispose()
    assert handle.is_disposed
    done: list[str] = []
    Flow.range(3).subscribe_with(items.append, on_complete=lambda: done.append("complete"))
    assert items == [0, 1, 2] and done == ["complete"]
    errors: list[Exception] = []
    Flow.error(KeyError("k")).subscribe_with(on_error=errors.append)
    assert [type(e) for e in errors] == [KeyError]


def test_to_list_first_last() -> None:
    assert Flow.range(4).to_list() == [0, 1, 2, 3]
    assert Flow.range(4).last() == 3
    requests: list[int] = []
    assert Flow.range(10).do_on_request(requests.append).first() == 0
    assert requests == [1]  # first() asks for one item only
    with pytest.raises(EmptyFlowError):
        Flow.empty().first()
    with pytest.raises(LookupError):
        Flow.empty().last()
    with pytest.raises(KeyError):
        Flow.error(KeyError("k")).to_list()


def test_to_list_times_out_and_cancels() -> None:
    cancelled: list[bool] = []
    with pytest.raises(TimeoutError):
        Flow.never().do_on_cancel(lambda: cancelled.append(True)).to_list(timeout=0.05)
    assert cancelled == [True]


# -- blocking sinks inside a running event loop ------------------------------------------


@pytest.mark.parametrize(
    ("sink", "instead"),
    [
        (lambda flow: flow.to_list(timeout=1), "await flow.to_list_async()"),
        (lambda flow: flow.first(timeout=1), "await flow.first_async()"),
        (lambda flow: flow.last(timeout=1), "await flow.last_async()"),
    ],
    ids=["to_list", "first", "last"],
)
def test_blocking_sinks_refuse_to_block_a_running_event_loop(
    sink: Callable[[Flow[int]], object], instead: str
) -> None:
    subscribed: list[Flow[int]] = []

    async def numbers() -> AsyncIterator[int]:
        yield 1  # needs the loop that the blocking sink would block

    def tracked(flow: Flow[int]) -> Flow[int]:
        def factory() -> Flow[int]:
            subscribed.append(flow)
            return flow

        return Flow.defer(factory)

    async def main() -> None:
        for flow in (Flow.from_async_iterable(numbers()), Flow.range(3)):
            with pytest.raises(RuntimeError, match="would block the running event loop") as raised:
                sink(tracked(flow))
            assert instead in str(raised.value)
        assert subscribed == []  # refused before subscribing: nothing to clean up

    asyncio.run(main())


def test_blocking_sinks_still_work_in_a_worker_thread_of_the_loop() -> None:
    async def main() -> tuple[list[int], int, int]:
        flow = Flow.range(4)
        return (
            await asyncio.to_thread(flow.to_list),
            await asyncio.to_thread(flow.first),
            await asyncio.to_thread(flow.last),
        )

    assert asyncio.run(main()) == ([0, 1, 2, 3], 0, 3)
