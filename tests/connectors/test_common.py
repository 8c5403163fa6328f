"""The machinery every broker connector shares (``connectors/_common.py``), broker-free.

The broker half here is an in-memory ``Fetcher``: these tests check our pump, our
settlement and our confirmed-publish operator, not a broker (the broker modules'
tests run against real servers).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from reactive_bp import Flow, NonPositiveRequestError, ProtocolViolationError
from reactive_bp.connectors import (
    AlreadySettledError,
    ConnectorStats,
    Message,
    PublishError,
    Settlement,
)
from reactive_bp.connectors._common import FetchFlow, confirmed, confirmed_batches, require
from reactive_bp.schedulers import ThreadPoolScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber

pytestmark = pytest.mark.no_undeliverable


async def _settle(turns: int = 30) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


class ListFetcher:
    """Hands out ``values`` as messages, at most ``per_fetch`` (and ``n``) per fetch.

    Records every ``fetch(n)`` and every settlement; ``gate`` (when set) makes each
    fetch wait for it, so a test can hold a fetch in flight.
    """

    def __init__(
        self,
        values: Sequence[int],
        *,
        per_fetch: int | None = None,
        complete: bool = True,
        overfetch: int = 0,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.values = list(values)
        self.position = 0
        self.per_fetch = per_fetch
        self.complete = complete
        self.overfetch = overfetch
        self.gate = gate
        self.fetches: list[int] = []
        self.cancelled_fetches = 0
        self.closed = 0
        self.acked: list[int] = []
        self.nacked: list[tuple[int, bool]] = []
        self.ack_threads: list[int] = []

    async def fetch(self, n: int) -> Sequence[Message[int]]:
        self.fetches.append(n)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled_fetches += 1
                raise
        if self.position >= len(self.values):
            if self.complete:
                raise StopAsyncIteration
            await asyncio.sleep(0.001)
            return []
        size = n if self.per_fetch is None else min(n, self.per_fetch)
        size += self.overfetch
        chunk = self.values[self.position : self.position + size]
        self.position += len(chunk)
        loop = asyncio.get_running_loop()
        return [self._message(value, loop) for value in chunk]

    def _message(self, value: int, loop: asyncio.AbstractEventLoop) -> Message[int]:
        async def ack() -> None:
            self.ack_threads.append(threading.get_ident())
            self.acked.append(value)

        async def nack(requeue: bool) -> None:
            self.nacked.append((value, requeue))

        return Message(value, {"offset": value}, ack=ack, nack=nack, loop=loop)

    async def aclose(self) -> None:
        self.closed += 1


def _flow(fetcher: ListFetcher, max_batch: int = 10) -> FetchFlow[int]:
    return FetchFlow(lambda stats: fetcher, max_batch=max_batch, loop=None, name="list")


def _values(subscriber: TestSubscriber[Message[int]]) -> list[int]:
    return [message.value for message in subscriber.items]


# -- FetchFlow: demand -------------------------------------------------------------------------


def test_nothing_is_fetched_without_demand_and_each_fetch_is_within_demand() -> None:
    fetcher = ListFetcher(range(100), complete=False)

    async def main() -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber()
        flow = _flow(fetcher, max_batch=10)
        flow.subscribe(subscriber)
        await _settle()
        assert fetcher.fetches == []  # subscribed, nothing requested: no fetch
        subscriber.request(3)
        await _until(lambda: len(subscriber.items) == 3)
        await _settle()
        assert fetcher.fetches == [3]  # exactly the demand, no read-ahead
        subscriber.request(25)
        await _until(lambda: len(subscriber.items) == 28)
        await _settle()
        assert fetcher.fetches == [3, 10, 10, 5]  # min(outstanding, max_batch)
        assert flow.stats.max_held <= 10
        subscriber.cancel()
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert _values(subscriber) == list(range(28))
    subscriber.assert_clean()


def test_short_batches_are_refetched_for_the_outstanding_demand_only() -> None:
    fetcher = ListFetcher(range(20), per_fetch=3)

    async def main() -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber()
        _flow(fetcher, max_batch=8).subscribe(subscriber)
        subscriber.request(7)
        await _until(lambda: len(subscriber.items) == 7)
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    # 3 of 7, then 3 of the 4 outstanding, then the last 1: never asked for more.
    assert fetcher.fetches == [7, 4, 1]
    subscriber.assert_clean()


def test_a_fetcher_returning_more_than_asked_is_a_rule_1_1_error() -> None:
    fetcher = ListFetcher(range(20), overfetch=1)

    async def main() -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber()
        _flow(fetcher).subscribe(subscriber)
        subscriber.request(2)
        await _until(lambda: subscriber.is_terminated)
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == []  # nothing of the oversized batch is delivered
    (error,) = subscriber.errors
    assert isinstance(error, ProtocolViolationError) and "Rule 1.1" in str(error)
    assert fetcher.closed == 1
    subscriber.assert_clean()


def test_completion_and_errors_of_the_fetcher_end_the_stream_and_close_it() -> None:
    class Boom(Exception):
        pass

    class Failing(ListFetcher):
        async def fetch(self, n: int) -> Sequence[Message[int]]:
            if self.position >= 2:
                raise Boom("broker down")
            return await super().fetch(min(n, 2 - self.position))

    async def main(fetcher: ListFetcher) -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber(100)
        _flow(fetcher).subscribe(subscriber)
        await _until(lambda: subscriber.is_terminated)
        await _settle()
        return subscriber

    done = ListFetcher(range(5))
    completed = asyncio.run(main(done))
    assert completed.completed and _values(completed) == list(range(5)) and done.closed == 1

    failing = Failing(range(5))
    failed = asyncio.run(main(failing))
    assert _values(failed) == [0, 1] and isinstance(failed.errors[0], Boom)
    assert failing.closed == 1
    completed.assert_clean()
    failed.assert_clean()


@pytest.mark.parametrize("bad", [0, -1])
def test_a_bad_request_is_on_error_through_the_stream_rule_3_9(bad: int) -> None:
    fetcher = ListFetcher(range(10), complete=False)

    async def main() -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber()
        _flow(fetcher).subscribe(subscriber)
        subscriber.request(bad)  # never raises to the caller
        await _until(lambda: subscriber.is_terminated)
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    (error,) = subscriber.errors
    assert isinstance(error, NonPositiveRequestError) and "3.9" in str(error)
    assert fetcher.fetches == [] and fetcher.closed == 1
    subscriber.assert_clean()


def test_a_subscriber_requesting_from_many_threads_never_gets_beyond_demand() -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for run in range(30):
            fetcher = ListFetcher(range(10_000), per_fetch=7, complete=False)

            async def main(fetcher: ListFetcher = fetcher) -> TestSubscriber[Message[int]]:
                subscriber: TestSubscriber[Message[int]] = TestSubscriber()
                flow = _flow(fetcher, max_batch=16)
                flow.subscribe(subscriber)

                def requester() -> None:
                    for _ in range(50):
                        subscriber.request(2)

                threads = [threading.Thread(target=requester) for _ in range(3)]
                for thread in threads:
                    thread.start()

                def join() -> None:
                    for thread in threads:
                        thread.join()

                await asyncio.to_thread(join)
                await _until(lambda: len(subscriber.items) == 300)
                await _settle()
                assert flow.stats.max_held <= 16
                subscriber.cancel()
                await _settle()
                return subscriber

            subscriber = asyncio.run(main())
            assert _values(subscriber) == list(range(300)), run
            assert all(n <= 16 for n in fetcher.fetches)
            subscriber.assert_clean()
    finally:
        sys.setswitchinterval(switch)


# -- FetchFlow: cancel -------------------------------------------------------------------------


def test_cancel_cancels_the_fetch_in_flight_closes_the_fetcher_and_stops_fetching() -> None:
    async def main() -> tuple[ListFetcher, TestSubscriber[Message[int]]]:
        gate = asyncio.Event()
        fetcher = ListFetcher(range(100), gate=gate)
        subscriber: TestSubscriber[Message[int]] = TestSubscriber()
        _flow(fetcher).subscribe(subscriber)
        subscriber.request(5)
        await _until(lambda: fetcher.fetches == [5])
        subscriber.cancel()
        await _settle()
        gate.set()
        subscriber.request(5)  # after cancel: a no-op (Rule 3.6)
        await _settle()
        return fetcher, subscriber

    fetcher, subscriber = asyncio.run(main())
    assert fetcher.cancelled_fetches == 1 and fetcher.closed == 1
    assert fetcher.fetches == [5] and subscriber.items == []
    subscriber.assert_clean()


def test_cancel_from_on_next_stops_the_batch_and_leaves_the_rest_unsettled() -> None:
    fetcher = ListFetcher(range(100))

    async def main() -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber(10, cancel_after=3)
        _flow(fetcher, max_batch=10).subscribe(subscriber)
        await _until(lambda: fetcher.closed == 1)
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert _values(subscriber) == [0, 1, 2] and fetcher.fetches == [10]
    assert fetcher.acked == [] and fetcher.nacked == []
    subscriber.assert_clean()


def test_open_fetcher_failing_or_no_loop_is_on_error_after_on_subscribe() -> None:
    def broken(stats: ConnectorStats) -> ListFetcher:
        raise OSError("cannot connect")

    async def main() -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber()
        FetchFlow(broken, max_batch=1, loop=None, name="broken").subscribe(subscriber)
        return subscriber

    failed = asyncio.run(main())
    assert isinstance(failed.errors[0], OSError) and failed.signals[0] == "on_subscribe"

    no_loop: TestSubscriber[Message[int]] = TestSubscriber()
    _flow(ListFetcher([])).subscribe(no_loop)  # no running loop, no loop=
    assert isinstance(no_loop.errors[0], RuntimeError)
    assert "loop" in str(no_loop.errors[0])
    with pytest.raises(ValueError, match="max_batch"):
        FetchFlow(broken, max_batch=0, loop=None, name="x")
    failed.assert_clean()
    no_loop.assert_clean()


# -- Message and Settlement --------------------------------------------------------------------


def _one_message() -> tuple[ListFetcher, Callable[[], Coroutine[Any, Any, Message[int]]]]:
    fetcher = ListFetcher([7])

    async def first() -> Message[int]:
        (message,) = await fetcher.fetch(1)
        return message

    return fetcher, first


def test_settlement_from_the_loop_and_from_a_thread_runs_on_the_loop() -> None:
    fetcher = ListFetcher([1, 2])

    async def main() -> tuple[int, Settlement]:
        one, two = await fetcher.fetch(2)
        await one.ack()  # awaited on the loop
        settlement = await asyncio.to_thread(two.nack, True)  # started from a thread
        await asyncio.to_thread(settlement.result, 5.0)  # and waited on from a thread
        return threading.get_ident(), settlement

    loop_thread, settlement = asyncio.run(main())
    assert fetcher.acked == [1] and fetcher.nacked == [(2, True)]
    assert fetcher.ack_threads == [loop_thread]
    assert settlement.done() and settlement.kind == "nack"


def test_result_on_the_loop_itself_refuses_to_block() -> None:
    fetcher, first = _one_message()

    async def main() -> None:
        message = await first()
        settlement = message.ack()
        with pytest.raises(RuntimeError, match="await it"):
            settlement.result(0.1)
        await settlement

    asyncio.run(main())
    assert fetcher.acked == [7]


def test_ack_is_idempotent_and_the_other_kind_is_already_settled() -> None:
    fetcher, first = _one_message()

    async def main() -> None:
        message = await first()
        assert message.settled is None
        settlement = message.ack()
        assert message.ack() is settlement  # the same call again: the same settlement
        with pytest.raises(AlreadySettledError):
            message.nack()
        await settlement
        assert message.settled == "ack"

    asyncio.run(main())
    assert fetcher.acked == [7]  # the broker heard it once


def test_a_failed_settlement_keeps_its_error() -> None:
    class Lost(ConnectionError):
        pass

    async def main() -> Settlement:
        async def ack() -> None:
            raise Lost("connection closed")

        async def nack(requeue: bool) -> None:
            pass

        message = Message(1, {}, ack=ack, nack=nack, loop=asyncio.get_running_loop())
        settlement = message.ack()
        with pytest.raises(Lost):
            await settlement
        return settlement

    settlement = asyncio.run(main())
    with pytest.raises(Lost):
        settlement.result(1.0)


def test_a_settlement_follows_a_future_already_under_way_without_a_task() -> None:
    """A connector may batch settlements: its ack returns a future on the loop."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        replies: list[asyncio.Future[None]] = [loop.create_future() for _ in range(3)]

        async def nack(requeue: bool) -> None:
            pass

        messages = [
            Message(i, {}, ack=lambda i=i: replies[i], nack=nack, loop=loop)  # type: ignore[misc]
            for i in range(3)
        ]
        tasks = len(asyncio.all_tasks())
        ok, failing = messages[0].ack(), messages[1].ack()
        assert len(asyncio.all_tasks()) == tasks  # no task per settlement
        assert not ok.done()
        replies[0].set_result(None)
        replies[1].set_exception(OSError("XACK failed"))
        await ok
        with pytest.raises(OSError, match="XACK failed"):
            await failing
        # Started from a thread, the same future is awaited on the loop.
        from_thread = await asyncio.to_thread(messages[2].ack)
        loop.call_later(0.01, replies[2].set_result, None)
        await asyncio.to_thread(from_thread.result, 5.0)

    asyncio.run(main())


def test_settling_after_the_loop_closed_fails_the_settlement_not_the_caller() -> None:
    loop = asyncio.new_event_loop()
    acked: list[int] = []

    async def ack() -> None:
        acked.append(1)

    async def nack(requeue: bool) -> None:
        pass

    message = Message(1, {}, ack=ack, nack=nack, loop=loop)
    loop.close()
    settlement = message.ack()  # from this thread, onto a closed loop: no exception here
    with pytest.raises(ConnectionError, match="closed"):
        settlement.result(1.0)
    assert acked == []


# -- confirmed(): the sink machinery -----------------------------------------------------------


def _assert_publish_error(
    subscriber: TestSubscriber[int], item: int, cause: type[BaseException]
) -> None:
    """The stream ended with one ``PublishError`` for ``item``, caused by a ``cause``."""
    (error,) = subscriber.errors
    assert isinstance(error, PublishError) and error.item == item
    assert isinstance(error.__cause__, cause)


class Confirmations:
    """A publish function whose confirmations the test releases one by one."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.started: list[int] = []
        self.confirmed: list[int] = []
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.max_unconfirmed = 0
        self.fail_on = fail_on

    async def publish(self, item: int) -> None:
        self.started.append(item)
        self.max_unconfirmed = max(self.max_unconfirmed, len(self.started) - len(self.confirmed))
        future = self.pending[item] = asyncio.get_running_loop().create_future()
        await future
        if item == self.fail_on:
            raise OSError(f"broker refused {item}")
        self.confirmed.append(item)

    def confirm(self, item: int) -> None:
        self.pending.pop(item).set_result(None)


def test_confirmed_keeps_at_most_max_in_flight_unconfirmed_and_one_more_per_confirmation() -> None:
    pulled: list[int] = []

    async def main() -> tuple[Confirmations, TestSubscriber[int]]:
        publisher = Confirmations()
        upstream = Flow.range(0, 100).do_on_next(pulled.append)
        subscriber: TestSubscriber[int] = TestSubscriber(1000)
        confirmed(upstream, publisher.publish, max_in_flight=4).subscribe(subscriber)
        await _settle()
        assert publisher.started == [0, 1, 2, 3] and pulled == [0, 1, 2, 3]
        publisher.confirm(2)  # out of order: emitted only once 0 and 1 are
        await _settle()
        assert subscriber.items == [] and len(publisher.started) <= 5
        publisher.confirm(0)
        await _settle()
        assert subscriber.items == [0]
        for expected in (1, *range(3, 100)):
            await _until(lambda: expected in publisher.pending)  # noqa: B023
            publisher.confirm(expected)
            await _settle(5)
            assert len(publisher.started) - len(publisher.confirmed) <= 4
        await _until(lambda: subscriber.is_terminated)
        return publisher, subscriber

    publisher, subscriber = asyncio.run(main())
    assert subscriber.items == list(range(100)) and subscriber.completed
    assert publisher.max_unconfirmed == 4  # reached, never exceeded
    subscriber.assert_clean()


def test_confirmed_waits_for_downstream_demand_too() -> None:
    async def main() -> tuple[Confirmations, TestSubscriber[int]]:
        publisher = Confirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(1)
        confirmed(Flow.range(0, 100), publisher.publish, max_in_flight=3).subscribe(subscriber)
        await _settle()
        for item in (0, 1, 2):
            publisher.confirm(item)
        await _settle()
        # One delivered; two confirmed and held for demand: nothing more published.
        assert subscriber.items == [0] and publisher.started == [0, 1, 2, 3]
        subscriber.cancel()
        await _settle()
        return publisher, subscriber

    publisher, subscriber = asyncio.run(main())
    assert publisher.started == [0, 1, 2, 3]
    subscriber.assert_clean()


def test_a_failed_publish_is_publish_error_with_the_item_and_cancels_upstream() -> None:
    cancelled: list[bool] = []

    async def main() -> TestSubscriber[int]:
        publisher = Confirmations(fail_on=1)
        upstream = Flow.range(0, 100).do_on_cancel(lambda: cancelled.append(True))
        subscriber: TestSubscriber[int] = TestSubscriber(100)
        confirmed(upstream, publisher.publish, max_in_flight=2).subscribe(subscriber)
        await _settle()
        publisher.confirm(0)
        publisher.confirm(1)
        await _until(lambda: subscriber.is_terminated)
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [0]
    _assert_publish_error(subscriber, 1, OSError)
    assert cancelled == [True]
    subscriber.assert_clean()


class FutureConfirmations:
    """A publish that returns a plain future (like the Redis appender): no coroutine, no task."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, asyncio.Future[bytes]]] = []

    def publish(self, item: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        return future

    def reply_all(self, fail_on: int | None = None) -> None:
        """Resolve every pending publish at once, as one pipeline's replies do."""
        pending, self.pending = self.pending, []
        for item, future in pending:
            if item == fail_on:
                future.set_exception(OSError(f"broker refused {item}"))
            else:
                future.set_result(b"ok")


class BatchConfirmations:
    """A batch publisher: one future per batch, resolved when the test replies to it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.waiting: list[tuple[list[int], asyncio.Future[Sequence[object]]]] = []
        self.threads: set[int] = set()

    def publish_batch(self, payloads: list[int]) -> asyncio.Future[Sequence[object]]:
        self.threads.add(threading.get_ident())
        future: asyncio.Future[Sequence[object]] = asyncio.get_running_loop().create_future()
        self.batches.append(payloads)
        self.waiting.append((payloads, future))
        return future

    @property
    def unconfirmed(self) -> int:
        return sum(len(batch) for batch, future in self.waiting if not future.done())

    def reply_all(self, fail_on: int | None = None) -> None:
        waiting, self.waiting = self.waiting, []
        for batch, future in waiting:
            if not future.done():
                future.set_result(
                    [OSError(f"refused {p}") if p == fail_on else b"ok" for p in batch]
                )


def _tenfold(item: int) -> int:
    return item * 10


def test_confirmations_that_arrive_together_are_one_drain_and_one_request_upstream() -> None:
    requests: list[int] = []

    async def main() -> TestSubscriber[int]:
        publisher = FutureConfirmations()
        upstream = Flow.range(0, 40).do_on_request(requests.append)
        subscriber: TestSubscriber[int] = TestSubscriber(1000)
        confirmed(upstream, publisher.publish, max_in_flight=8).subscribe(subscriber)
        while not subscriber.is_terminated:
            await _settle(3)
            assert len(publisher.pending) <= 8  # Rule: never more than max_in_flight unconfirmed
            publisher.reply_all()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == list(range(40)) and subscriber.completed
    # The first window, then one request per batch of replies, never one per item
    # (the last may ask past the end: the range tells it is done when asked again).
    assert set(requests) == {8} and len(requests) <= 6, requests
    subscriber.assert_clean()


@pytest.mark.parametrize("batched", [False, True], ids=["future_per_item", "confirmed_batches"])
def test_a_failure_inside_a_batch_emits_the_confirmations_before_it_then_publish_error(
    batched: bool,
) -> None:
    cancelled: list[bool] = []

    async def main() -> tuple[TestSubscriber[int], list[asyncio.Future[Any]]]:
        upstream = Flow.range(0, 100).do_on_cancel(lambda: cancelled.append(True))
        subscriber: TestSubscriber[int] = TestSubscriber(100)
        if batched:
            batches = BatchConfirmations()
            confirmed_batches(upstream, _tenfold, batches.publish_batch, 6).subscribe(subscriber)
            await _settle()
            batches.reply_all(fail_on=30)  # the payload of item 3
        else:
            publisher = FutureConfirmations()
            confirmed(upstream, publisher.publish, max_in_flight=6).subscribe(subscriber)
            await _settle()
            publisher.reply_all(fail_on=3)
        await _until(lambda: subscriber.is_terminated)
        await _settle()
        if batched:
            return subscriber, [future for _, future in batches.waiting]
        return subscriber, [future for _, future in publisher.pending]

    subscriber, still_open = asyncio.run(main())
    assert subscriber.items == [0, 1, 2]
    _assert_publish_error(subscriber, 3, OSError)
    assert cancelled == [True]
    # The confirmed items were handed over before the failure (and asked for as many
    # more); every publish still open when it failed was cancelled (a batch not yet
    # sent is dropped unsent).
    assert all(future.cancelled() for future in still_open), still_open
    subscriber.assert_clean()  # the replies after the failure are dropped, not reported


def test_a_publish_cancelled_by_the_client_is_publish_error_not_a_hang() -> None:
    """A client that cancels its pending waiters (its connection closed) must fail the
    stream: before, the cancelled future was taken for the subscription's own cancel
    and the stream waited forever."""

    async def main() -> TestSubscriber[int]:
        publisher = FutureConfirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(100)
        confirmed(Flow.range(0, 100), publisher.publish, max_in_flight=3).subscribe(subscriber)
        await _settle()
        (_, first), (_, second), (_, third) = publisher.pending
        first.set_result(b"ok")
        second.cancel()  # by the client, not by the subscription
        third.set_result(b"ok")
        await _until(lambda: subscriber.is_terminated)
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [0]
    _assert_publish_error(subscriber, 1, ConnectionError)
    subscriber.assert_clean()


def test_cancel_between_the_replies_and_their_hand_over_emits_nothing_more() -> None:
    async def main() -> TestSubscriber[int]:
        publisher = FutureConfirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(100)
        confirmed(Flow.range(0, 100), publisher.publish, max_in_flight=5).subscribe(subscriber)
        await _settle()
        # Resolved, one of them failed: their callbacks are ready, not yet run.
        publisher.reply_all(fail_on=2)
        subscriber.cancel()
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [] and not subscriber.is_terminated
    subscriber.assert_clean()  # and the failure after the cancel is not reported anywhere


def test_items_arriving_on_another_thread_are_published_on_the_loop() -> None:
    threads: list[int] = []

    async def main() -> TestSubscriber[int]:
        loop_thread = threading.get_ident()
        publisher = FutureConfirmations()

        def publish(item: int) -> asyncio.Future[bytes]:
            threads.append(threading.get_ident() - loop_thread)
            return publisher.publish(item)

        subscriber: TestSubscriber[int] = TestSubscriber(1000)
        with ThreadPoolScheduler(1) as pool:
            # The upstream's items (and the requests it answers) come on the pool's thread.
            upstream = Flow.range(0, 30).subscribe_on(pool)
            confirmed(upstream, publish, max_in_flight=4).subscribe(subscriber)
            while not subscriber.is_terminated:
                await _settle(3)
                publisher.reply_all()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == list(range(30)) and subscriber.completed
    assert set(threads) == {0}  # every publish ran on the loop's thread
    subscriber.assert_clean()


@pytest.mark.parametrize("batched", [False, True], ids=["future_per_item", "confirmed_batches"])
def test_an_item_delivered_on_the_loop_is_never_published_ahead_of_an_earlier_one(
    batched: bool,
) -> None:
    """Item 0 arrives on another thread (its publish waits for the loop), item 1 then
    on the loop itself: 1 must not overtake 0, or the broker stores them swapped (the
    subscriber, ordered by slot, would not notice)."""

    async def main() -> tuple[list[int], TestSubscriber[int]]:
        upstream: TestPublisher[int] = TestPublisher()
        subscriber: TestSubscriber[int] = TestSubscriber(10)
        order: list[int] = []
        if batched:
            batches = BatchConfirmations()

            def prepare(item: int) -> int:
                order.append(item)
                return item

            confirmed_batches(upstream, prepare, batches.publish_batch, 4).subscribe(subscriber)
        else:
            publisher = FutureConfirmations()

            def publish(item: int) -> asyncio.Future[bytes]:
                order.append(item)
                return publisher.publish(item)

            confirmed(upstream, publish, max_in_flight=4).subscribe(subscriber)
        await _settle()
        sender = threading.Thread(target=upstream.send_next, args=(0,))
        sender.start()
        sender.join()  # the loop is held here: item 0's publish waits for it
        upstream.send_next(1)  # on the loop, after item 0 was delivered
        await _settle()
        if batched:
            batches.reply_all()
        else:
            publisher.reply_all()
        await _settle()
        subscriber.cancel()
        return order, subscriber

    order, subscriber = asyncio.run(main())
    assert order == [0, 1]
    assert subscriber.items == [0, 1]
    subscriber.assert_clean()


# -- confirmed_batches(): one future per batch (the Redis pipeline path) -----------------------


def test_batches_one_publish_per_loop_turn_within_the_window_in_order() -> None:
    requests: list[int] = []

    async def main() -> tuple[BatchConfirmations, TestSubscriber[int]]:
        publisher = BatchConfirmations()
        upstream = Flow.range(0, 50).do_on_request(requests.append)
        subscriber: TestSubscriber[int] = TestSubscriber(1000)
        confirmed_batches(upstream, _tenfold, publisher.publish_batch, 8).subscribe(subscriber)
        while not subscriber.is_terminated:
            await _settle(3)
            assert publisher.unconfirmed <= 8  # never more than max_in_flight unconfirmed
            publisher.reply_all()
        return publisher, subscriber

    publisher, subscriber = asyncio.run(main())
    assert subscriber.items == list(range(50)) and subscriber.completed  # items, in order
    # Payloads are prepare(item); the items of one turn are one batch, of the window.
    assert [p for batch in publisher.batches for p in batch] == [i * 10 for i in range(50)]
    assert [len(batch) for batch in publisher.batches] == [8] * 6 + [2]
    assert set(requests) == {8}
    subscriber.assert_clean()


def test_batches_wait_for_downstream_demand() -> None:
    async def main() -> tuple[BatchConfirmations, TestSubscriber[int]]:
        publisher = BatchConfirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(1)
        confirmed_batches(Flow.range(0, 100), _tenfold, publisher.publish_batch, 3).subscribe(
            subscriber
        )
        await _settle()
        publisher.reply_all()
        await _settle()
        # One delivered, two confirmed and held: only one more was published.
        assert subscriber.items == [0] and publisher.batches == [[0, 10, 20], [30]]
        subscriber.request(2)
        await _settle()
        assert subscriber.items == [0, 1, 2] and publisher.batches[2:] == [[40, 50]]
        subscriber.cancel()
        await _settle()
        return publisher, subscriber

    publisher, subscriber = asyncio.run(main())
    assert all(future.cancelled() for _, future in publisher.waiting)
    subscriber.assert_clean()


@pytest.mark.parametrize("how", ["set_exception", "cancel"])
def test_a_failed_or_client_cancelled_batch_fails_its_first_item(how: str) -> None:
    async def main() -> TestSubscriber[int]:
        publisher = BatchConfirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(100)
        confirmed_batches(Flow.range(0, 100), _tenfold, publisher.publish_batch, 4).subscribe(
            subscriber
        )
        await _settle()
        ((_, future),) = publisher.waiting
        if how == "cancel":
            future.cancel()  # by the client (its connection closed), not the subscription
        else:
            future.set_exception(ConnectionResetError("gone"))
        await _until(lambda: subscriber.is_terminated)
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == []
    _assert_publish_error(subscriber, 0, ConnectionError)
    subscriber.assert_clean()


def test_a_raising_prepare_fails_that_item_and_nothing_after_it_is_published() -> None:
    def prepare(item: int) -> int:
        if item == 2:
            raise ValueError("cannot encode 2")
        return item

    async def main() -> tuple[BatchConfirmations, TestSubscriber[int]]:
        publisher = BatchConfirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(100)
        confirmed_batches(Flow.range(0, 100), prepare, publisher.publish_batch, 5).subscribe(
            subscriber
        )
        await _until(lambda: subscriber.is_terminated)
        await _settle()
        return publisher, subscriber

    publisher, subscriber = asyncio.run(main())
    _assert_publish_error(subscriber, 2, ValueError)
    assert publisher.batches == []  # the turn's batch was dropped with the stream
    subscriber.assert_clean()


def test_cancel_from_another_thread_cancels_the_waiting_batches_and_publishes_nothing_more() -> (
    None
):
    async def main() -> tuple[BatchConfirmations, TestSubscriber[int]]:
        publisher = BatchConfirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(100)
        confirmed_batches(Flow.range(0, 100), _tenfold, publisher.publish_batch, 4).subscribe(
            subscriber
        )
        await _settle()
        ((_, future),) = publisher.waiting
        await asyncio.get_running_loop().run_in_executor(None, subscriber.cancel)
        await _settle()
        assert future.cancelled()
        publisher.reply_all()
        await _settle()
        return publisher, subscriber

    publisher, subscriber = asyncio.run(main())
    assert publisher.batches == [[0, 10, 20, 30]] and subscriber.items == []
    assert not subscriber.is_terminated
    subscriber.assert_clean()


def test_batches_of_items_from_another_thread_are_published_on_the_loop() -> None:
    async def main() -> tuple[BatchConfirmations, TestSubscriber[int], int]:
        publisher = BatchConfirmations()
        subscriber: TestSubscriber[int] = TestSubscriber(1000)
        with ThreadPoolScheduler(1) as pool:
            upstream = Flow.range(0, 30).subscribe_on(pool)
            confirmed_batches(upstream, _tenfold, publisher.publish_batch, 4).subscribe(subscriber)
            while not subscriber.is_terminated:
                await _settle(3)
                assert publisher.unconfirmed <= 4
                publisher.reply_all()
        return publisher, subscriber, threading.get_ident()

    publisher, subscriber, loop_thread = asyncio.run(main())
    assert subscriber.items == list(range(30)) and subscriber.completed
    assert publisher.threads == {loop_thread}
    subscriber.assert_clean()


# -- small pieces ------------------------------------------------------------------------------


def test_require_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"reactive-bp\[nope\]"):
        require("reactive_bp_no_such_client", "nope")


def test_stats_track_what_is_held() -> None:
    stats = ConnectorStats()
    stats.note_received(5)
    stats.delivered += 3
    stats.note_received(2)
    assert (stats.held, stats.max_held) == (4, 5)
    assert stats.as_dict()["held"] == 4
