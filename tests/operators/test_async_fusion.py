"""Fused chains over async iterables, and ``aiter`` straight through them.

``Flow.from_async_iterable(agen).map(f).filter(p)...`` is fused into one
source (``reactive_bp/operators/_async_fusion.py``), and ``aiter()`` of such a
flow iterates one compiled async generator (consumer fusion). The reference is
the same chain over ``Flow.defer(...)``, which is not fusable: every operator
is lifted and the pump task feeds them. Both runs share one kind of event log
-- every pull from the source, every call of a user function, the source's
close, every signal -- and the logs must be equal.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import types
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reactive_bp import UNBOUNDED, Flow, NoneItemError, NonPositiveRequestError
from reactive_bp.abc import Publisher
from reactive_bp.operators._async_fusion import FusedAsyncIterableFlow
from reactive_bp.sources._async import AsyncIterableFlow
from reactive_bp.testing import TestSubscriber
from spec_tck.components import PublisherEntry, verification_for
from tests.operators.test_fusion import Stage, _build, _describe, tails
from tests.scenarios import Boom

pytestmark = pytest.mark.no_undeliverable

Log = list[str]


async def _counting(
    items: Sequence[int | None], log: Log, suspend: bool = False
) -> AsyncIterator[int]:
    """The source: logs each pull and its close; ``suspend`` awaits the loop before each item."""
    try:
        for item in items:
            if suspend:
                await asyncio.sleep(0)
            log.append(f"pull {item!r}")
            yield item  # type: ignore[misc]
        log.append("source exhausted")
    finally:
        log.append("source closed")


async def _settle(rounds: int = 30) -> None:
    """Let the pump task and the close tasks run (no timing: loop turns only)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class _Iterator:
    """A hand-written async iterator: counts ``aclose`` calls; ``__aiter__`` is optional."""

    def __init__(self, items: Sequence[int | None], log: Log) -> None:
        self._items = list(items)
        self._log = log
        self.closes = 0

    async def __anext__(self) -> int:
        if not self._items:
            raise StopAsyncIteration
        item = self._items.pop(0)
        self._log.append(f"pull {item!r}")
        return item  # type: ignore[return-value]

    async def aclose(self) -> None:
        self.closes += 1
        self._log.append("source closed")


class _SelfIterator(_Iterator):
    def __aiter__(self) -> _SelfIterator:
        return self


class _Iterable:
    """Re-iterable: each ``__aiter__`` logs ``open`` and starts over."""

    def __init__(self, items: Sequence[int | None], log: Log, with_aiter: bool = True) -> None:
        self._items = items
        self._log = log
        self._with_aiter = with_aiter
        self.iterators: list[_Iterator] = []

    def __aiter__(self) -> AsyncIterator[int]:
        self._log.append("open")
        kind = _SelfIterator if self._with_aiter else _Iterator
        iterator = kind(self._items, self._log)
        self.iterators.append(iterator)
        return iterator  # type: ignore[return-value]


def _is_consumer_fused(iterator: AsyncGenerator[object, None]) -> bool:
    """Whether ``aiter`` returned the compiled generator (not the bridge)."""
    assert isinstance(iterator, types.AsyncGeneratorType)
    return iterator.ag_code.co_filename.startswith("<reactive_bp fused async")


# -- subscriber path: fused == unfused --------------------------------------------------------


async def _drive(
    flow: Flow[int], log: Log, schedule: list[int], cancel_at: int | None, rounds: int
) -> None:
    subscriber: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(subscriber)
    await _settle(rounds)
    for step, n in enumerate(schedule):
        if step == cancel_at:
            subscriber.cancel()
            log.append("cancel")
        subscriber.request(n)
        await _settle(rounds)
        log.append(
            f"request({n}) -> items={subscriber.items} completed={subscriber.completed} "
            f"errors={[_describe(e) for e in subscriber.errors]}"
        )
    subscriber.assert_clean()


def _unfused(items: Sequence[int | None], log: Log, suspend: bool) -> Flow[int]:
    return Flow.defer(lambda: Flow.from_async_iterable(_counting(items, log, suspend)))


stages = st.builds(
    Stage,
    kind=st.sampled_from(["map", "map", "filter", "skip", "take", "take_while", "skip_while"]),
    param=st.integers(1, 6),
    fail_at=st.none() | st.integers(0, 40),
    fail_with=st.sampled_from(["raise", "none", "stop", "stop_async"]),
)
data_with_none = st.builds(
    lambda data, at: data if at is None or at > len(data) else [*data[:at], None, *data[at:]],
    st.lists(st.integers(0, 40), max_size=20),
    st.none() | st.integers(0, 20),
)


@settings(max_examples=150, deadline=None)
@given(
    items=data_with_none,
    chain=st.lists(stages, min_size=1, max_size=5),
    tail=tails,
    schedule=st.lists(st.integers(1, 6) | st.just(UNBOUNDED), min_size=1, max_size=8),
    cancel_at=st.none() | st.integers(0, 8),
    suspend=st.booleans(),
)
def test_fused_equals_unfused_on_random_chains_and_demand(
    items: list[int | None],
    chain: list[Stage],
    tail: str,
    schedule: list[int],
    cancel_at: int | None,
    suspend: bool,
) -> None:
    """Same pulls, same user calls, same close, same signals, after every request."""
    rounds = 3 * len(items) + 20
    fused_log: Log = []
    fused = _build(
        Flow.from_async_iterable(_counting(items, fused_log, suspend)), chain, tail, fused_log
    )
    asyncio.run(_drive(fused, fused_log, schedule, cancel_at, rounds))
    plain_log: Log = []
    plain = _build(_unfused(items, plain_log, suspend), chain, tail, plain_log)
    asyncio.run(_drive(plain, plain_log, schedule, cancel_at, rounds))
    assert fused_log == plain_log


# -- consumer path: aiter() of a fused flow ---------------------------------------------------


def _consumer_error(error: Exception | None) -> str | None:
    """How ``aiter`` surfaces an error, as the subscriber saw it.

    A ``StopIteration`` from a user function cannot leave a (async) generator:
    ``async for`` raises ``RuntimeError`` from it, fused or not.
    """
    if error is None:
        return None
    if isinstance(error, RuntimeError) and isinstance(
        error.__cause__, StopIteration | StopAsyncIteration
    ):
        return _describe(error.__cause__)
    return _describe(error)


async def _consume(flow: Flow[int], limit: int | None) -> tuple[list[int], Exception | None, bool]:
    items: list[int] = []
    error: Exception | None = None
    direct = False
    try:
        async with aclosing(flow.aiter()) as iterator:
            direct = _is_consumer_fused(iterator)
            async for item in iterator:
                items.append(item)
                if limit is not None and len(items) >= limit:
                    break
    except Exception as failure:
        error = failure
    await _settle()
    return items, error, direct


async def _reference(flow: Flow[int], limit: int | None, rounds: int) -> TestSubscriber[int]:
    """The unfused chain asked for exactly ``limit`` items (all if None), then cancelled."""
    subscriber: TestSubscriber[int] = TestSubscriber()
    flow.subscribe(subscriber)
    subscriber.request(UNBOUNDED if limit is None else limit)
    await _settle(rounds)
    subscriber.cancel()
    await _settle(rounds)
    return subscriber


@settings(max_examples=150, deadline=None)
@given(
    items=data_with_none,
    chain=st.lists(stages, max_size=5),
    limit=st.none() | st.integers(1, 12),
    suspend=st.booleans(),
)
def test_aiter_of_a_fused_flow_equals_the_unfused_chain(
    items: list[int | None], chain: list[Stage], limit: int | None, suspend: bool
) -> None:
    """Same items, same error, and exactly the pulls needed for what was consumed."""
    rounds = 3 * len(items) + 20
    fused_log: Log = []
    fused = _build(
        Flow.from_async_iterable(_counting(items, fused_log, suspend)), chain, "none", fused_log
    )
    assume(type(fused) in (FusedAsyncIterableFlow, AsyncIterableFlow))
    got, error, direct = asyncio.run(_consume(fused, limit))
    assert direct
    ref_log: Log = []
    reference = asyncio.run(
        _reference(_build(_unfused(items, ref_log, suspend), chain, "none", ref_log), limit, rounds)
    )
    assert got == reference.items
    assert _consumer_error(error) == next((_describe(e) for e in reference.errors), None)
    assert fused_log == ref_log  # pulls, user calls and the close: no pull beyond consumption
    if limit is None:  # consumed to the end: also what the unfused aiter does
        bridge_log: Log = []
        bridged, bridge_error, bridge_direct = asyncio.run(
            _consume(_build(_unfused(items, bridge_log, suspend), chain, "none", bridge_log), None)
        )
        assert not bridge_direct
        assert (bridged, _consumer_error(bridge_error)) == (got, _consumer_error(error))
        assert type(bridge_error) is type(error)
        assert bridge_log == fused_log


# -- what fuses ----------------------------------------------------------------------------


def test_the_chains_are_really_fused_and_keep_the_unfused_repr() -> None:
    async def numbers() -> AsyncIterator[int]:
        yield 1

    source = Flow.from_async_iterable(numbers())
    chain = source.map(str).filter(bool).skip(1).skip_while(bool).take_while(bool).take(3)
    assert isinstance(chain, FusedAsyncIterableFlow)
    assert repr(chain) == (
        "Flow.from_async_iterable(async_generator)"
        ".map(...).filter(...).skip(...).skip_while(...).take_while(...).take(...)"
    )
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    assert isinstance(Flow.from_queue(queue).map(str), FusedAsyncIterableFlow)
    assert isinstance(source.take(3).map(str), FusedAsyncIterableFlow)  # a map commutes
    assert not isinstance(source.take(3).filter(bool), FusedAsyncIterableFlow)
    assert not isinstance(source.take(0), FusedAsyncIterableFlow)  # completes on subscribe
    assert not isinstance(Flow.defer(lambda: source).map(str), FusedAsyncIterableFlow)
    assert not isinstance(source.do_on_next(print).map(str), FusedAsyncIterableFlow)


# -- the subscriber path ----------------------------------------------------------------------


def test_nothing_is_pulled_beyond_demand_and_take_completes_at_once() -> None:
    log: Log = []

    async def main() -> TestSubscriber[int]:
        subscriber: TestSubscriber[int] = TestSubscriber()
        flow = Flow.from_async_iterable(_counting(range(100), log)).map(lambda x: x + 1).take(5)
        flow.subscribe(subscriber)
        await _settle()
        assert log == []
        subscriber.request(2)
        await _settle()
        assert log == ["pull 0", "pull 1"] and subscriber.items == [1, 2]
        subscriber.request(3)  # exactly the rest of the take
        await _settle()
        assert subscriber.completed  # at the 5th item, without a further request
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [1, 2, 3, 4, 5]
    assert log == [f"pull {i}" for i in range(5)] + ["source closed"]
    subscriber.assert_clean()


def test_pulls_never_exceed_requests_under_a_random_schedule() -> None:
    pulled: list[int] = []

    async def numbers() -> AsyncIterator[int]:
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    async def main() -> None:
        subscriber: TestSubscriber[int] = TestSubscriber()
        Flow.from_async_iterable(numbers()).map(lambda x: x * 2).subscribe(subscriber)
        requested = 0
        for n in (1, 3, 1, 7, 2, 64, 65, 5):
            subscriber.request(n)
            requested += n
            await _settle()
            assert len(pulled) == requested  # all of the demand, and not one more
        subscriber.cancel()
        await _settle()

    asyncio.run(main())


def test_a_filter_pulls_until_an_item_passes_and_counts_only_accepted_items() -> None:
    log: Log = []

    async def main() -> TestSubscriber[int]:
        subscriber: TestSubscriber[int] = TestSubscriber(1)
        source = Flow.from_async_iterable(_counting([1, 3, 5, 6, 7, 8, 10], log))
        source.filter(lambda x: x % 2 == 0).subscribe(subscriber)
        await _settle()
        assert subscriber.items == [6] and log == ["pull 1", "pull 3", "pull 5", "pull 6"]
        subscriber.request(1)
        await _settle()
        subscriber.cancel()
        await _settle()
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == [6, 8]
    assert log == ["pull 1", "pull 3", "pull 5", "pull 6", "pull 7", "pull 8", "source closed"]


def test_a_raising_mapper_signals_its_own_error_and_closes_the_source_once() -> None:
    log: Log = []
    error = Boom("mapper failed")

    def mapper(x: int) -> int:
        if x == 2:
            raise error
        return x

    async def main() -> tuple[TestSubscriber[int], _Iterable]:
        iterable = _Iterable([0, 1, 2, 3], log)
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        Flow.from_async_iterable(iterable).map(mapper).filter(lambda x: True).subscribe(subscriber)
        await _settle()
        subscriber.cancel()  # after the ending: nothing more to close
        await _settle()
        return subscriber, iterable

    subscriber, iterable = asyncio.run(main())
    assert subscriber.items == [0, 1]
    assert subscriber.errors == [error]  # the very object
    assert log == ["open", "pull 0", "pull 1", "pull 2", "source closed"]
    assert [i.closes for i in iterable.iterators] == [1]


@pytest.mark.parametrize("stop", [StopIteration("mapper"), StopAsyncIteration("mapper")])
def test_a_stop_iteration_from_a_user_function_is_signalled_as_itself(
    stop: StopIteration | StopAsyncIteration,
) -> None:
    def mapper(x: int) -> int:
        raise stop

    async def main() -> TestSubscriber[str]:
        subscriber: TestSubscriber[str] = TestSubscriber(UNBOUNDED)
        Flow.from_async_iterable(_counting([1, 2], [])).map(mapper).map(str).subscribe(subscriber)
        await _settle()
        return subscriber

    assert asyncio.run(main()).errors == [stop]


def test_none_from_the_source_and_from_a_mapper() -> None:
    calls: Log = []

    def logged(x: int) -> int:
        calls.append(f"map({x})")
        return x

    def none_at_two(x: int) -> int:
        return None if x == 2 else x  # type: ignore[return-value]

    async def main() -> tuple[TestSubscriber[int], TestSubscriber[int]]:
        from_source: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        Flow.from_async_iterable(_counting([1, None, 3], [])).map(logged).subscribe(from_source)
        from_mapper: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        mapped = Flow.from_async_iterable(_counting([1, 2, 3], [])).map(none_at_two)
        mapped.filter(lambda x: x > 0).subscribe(from_mapper)
        await _settle()
        return from_source, from_mapper

    from_source, from_mapper = asyncio.run(main())
    assert from_source.items == [1] and calls == ["map(1)"]
    [error] = from_source.errors
    assert type(error) is NoneItemError and "from_async_iterable" in str(error)
    assert from_mapper.items == [1]
    [error] = from_mapper.errors
    assert type(error) is NoneItemError and "returned None for 2" in str(error)


def test_cancel_closes_the_source_once_and_drops_the_subscriber_rule_3_13() -> None:
    log: Log = []

    async def main() -> tuple[_Iterable, weakref.ref[TestSubscriber[int]]]:
        iterable = _Iterable(list(range(10)), log)
        subscriber: TestSubscriber[int] = TestSubscriber(2)
        Flow.from_async_iterable(iterable).map(lambda x: x).take(5).subscribe(subscriber)
        await _settle()
        subscriber.cancel()
        subscriber.cancel()
        ref = weakref.ref(subscriber)
        del subscriber
        await _settle()
        gc.collect()
        return iterable, ref

    iterable, ref = asyncio.run(main())
    assert ref() is None
    assert log == ["open", "pull 0", "pull 1", "source closed"]
    assert [i.closes for i in iterable.iterators] == [1]


def test_a_bad_request_is_signalled_rule_3_9() -> None:
    async def main() -> TestSubscriber[int]:
        subscriber: TestSubscriber[int] = TestSubscriber()
        Flow.from_async_iterable(_counting(range(10), [])).filter(bool).take(3).subscribe(
            subscriber
        )
        subscriber.request(0)
        await _settle()
        return subscriber

    assert [type(e) for e in asyncio.run(main()).errors] == [NonPositiveRequestError]


def test_subscribing_without_a_loop_fails_cleanly_and_loop_is_honoured() -> None:
    with pytest.raises(RuntimeError, match="event loop"):
        Flow.from_async_iterable(_counting([1], [])).map(str).to_list()
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="test-async-fusion-loop")
    runner.start()
    try:
        threads: list[str] = []

        def mapper(x: int) -> int:
            threads.append(threading.current_thread().name)
            return x * 10

        flow = Flow.from_async_iterable(_counting([1, 2, 3], []), loop=loop).map(mapper)
        assert flow.to_list(timeout=10) == [10, 20, 30]  # subscribed from this thread
        assert set(threads) == {"test-async-fusion-loop"}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()


def test_fused_flows_resubscribe_and_the_original_still_works() -> None:
    log: Log = []
    iterable = _Iterable([1, 2, 3, 4], log)
    numbers = Flow.from_async_iterable(iterable)
    doubled = numbers.map(lambda x: x * 2)
    evens = doubled.filter(lambda x: x % 4 == 0)

    async def main() -> list[list[int]]:
        results = []
        for flow in (evens, evens, doubled, numbers, doubled.take(1)):
            subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
            flow.subscribe(subscriber)  # the pump path
            await _settle()
            results.append(subscriber.items)
            results.append([x async for x in flow])  # the consumer path
        return results

    assert asyncio.run(main()) == [[4, 8]] * 4 + [[2, 4, 6, 8]] * 2 + [[1, 2, 3, 4]] * 2 + [[2]] * 2
    assert log.count("open") == 10
    assert all(i.closes == 1 for i in iterable.iterators)


def test_an_iterator_without_aiter_is_pulled_by_both_paths() -> None:
    log: Log = []
    iterable = _Iterable([1, 2, 3], log, with_aiter=False)
    flow = Flow.from_async_iterable(iterable).map(lambda x: -x)

    async def main() -> tuple[list[int], list[int]]:
        subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
        flow.subscribe(subscriber)
        await _settle()
        return subscriber.items, [x async for x in flow]

    assert asyncio.run(main()) == ([-1, -2, -3], [-1, -2, -3])


def test_a_take_and_a_request_racing_from_threads_deliver_each_item_once() -> None:
    """request() from other threads against the pump counting a take (switch every µs)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        async def main() -> None:
            for _ in range(60):
                subscriber: TestSubscriber[int] = TestSubscriber()
                flow = Flow.from_async_iterable(_counting(range(50), [])).map(lambda x: x + 1)
                flow.take(20).subscribe(subscriber)

                def request(subscriber: TestSubscriber[int] = subscriber) -> None:
                    for _ in range(15):
                        subscriber.request(1)

                requesters = [threading.Thread(target=request) for _ in range(2)]
                for thread in requesters:
                    thread.start()
                while any(thread.is_alive() for thread in requesters):
                    await asyncio.sleep(0)
                await _settle()
                assert subscriber.items == list(range(1, 21)) and subscriber.completed
                subscriber.assert_clean()

        asyncio.run(main())
    finally:
        sys.setswitchinterval(interval)


# -- the consumer path ------------------------------------------------------------------------


def test_aiter_pulls_one_item_per_item_consumed() -> None:
    log: Log = []

    async def main() -> None:
        flow = Flow.from_async_iterable(_counting(range(5), log)).map(lambda x: x)
        iterator = flow.aiter(prefetch=256)
        assert _is_consumer_fused(iterator)
        async for item in iterator:
            log.append(f"got {item}")
            await _settle()  # time for a pump to run ahead, if there were one

    asyncio.run(main())
    assert log == [entry for i in range(5) for entry in (f"pull {i}", f"got {i}")] + [
        "source exhausted",
        "source closed",
    ]


def test_break_closes_the_source_once_when_the_generator_closes() -> None:
    log: Log = []
    iterable = _Iterable(list(range(10)), log)

    async def main() -> None:
        async with aclosing(Flow.from_async_iterable(iterable).filter(bool).aiter()) as items:
            async for item in items:
                if item == 2:
                    break
            assert log == ["open", "pull 0", "pull 1", "pull 2"]  # still open: not closed yet
        assert log[-1] == "source closed"  # aclose() closed it, before it returned
        await items.aclose()

    asyncio.run(main())
    assert [i.closes for i in iterable.iterators] == [1]


def test_an_error_in_the_loop_body_or_a_stage_closes_the_source() -> None:
    log: Log = []
    error = Boom("stage")

    def failing(x: int) -> int:
        if x == 1:
            raise error
        return x

    async def main() -> None:
        with pytest.raises(Boom) as raised:
            async for _ in Flow.from_async_iterable(_counting(range(5), log)).map(failing):
                pass
        assert raised.value is error
        assert log == ["pull 0", "pull 1", "source closed"]  # closed before it was raised
        log.clear()
        with pytest.raises(KeyError):
            async for _ in Flow.from_async_iterable(_counting(range(5), log)):
                raise KeyError
        await _settle()  # the generator is closed when it is collected
        assert log == ["pull 0", "source closed"]

    asyncio.run(main())


def test_task_cancellation_closes_the_source() -> None:
    log: Log = []

    async def main() -> None:
        gate = asyncio.Event()

        async def slow() -> AsyncIterator[int]:
            try:
                yield 1
                gate.set()
                await asyncio.Event().wait()  # never
                yield 2
            finally:
                log.append("source closed")

        async def consume() -> None:
            async for _ in Flow.from_async_iterable(slow()).map(lambda x: x):
                pass

        task = asyncio.create_task(consume())
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == ["source closed"]


def test_a_take_closes_the_source_before_the_last_item_is_handed_out() -> None:
    log: Log = []

    async def main() -> None:
        async for item in Flow.from_async_iterable(_counting(range(10), log)).take(2):
            log.append(f"got {item}")

    asyncio.run(main())
    assert log == ["pull 0", "got 0", "pull 1", "source closed", "got 1"]


def test_none_and_errors_from_aiter_are_those_of_the_unfused_chain() -> None:
    async def main() -> None:
        with pytest.raises(NoneItemError, match="from_async_iterable"):
            async for _ in Flow.from_async_iterable(_counting([1, None], [])):
                pass
        stop = StopIteration("mapper")

        def mapper(x: int) -> int:
            raise stop

        for flow in (
            Flow.from_async_iterable(_counting([1], [])).map(mapper),
            Flow.defer(lambda: Flow.from_async_iterable(_counting([1], []))).map(mapper),
        ):
            with pytest.raises(RuntimeError) as raised:
                async for _ in flow:
                    pass
            assert raised.value.__cause__ is stop

    asyncio.run(main())


def test_an_aclose_error_goes_to_the_undeliverable_hook(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    failure = Boom("aclose failed")

    class Failing(_SelfIterator):
        async def aclose(self) -> None:
            raise failure

    async def main() -> list[int]:
        async with aclosing(Flow.from_async_iterable(Failing([1, 2, 3], [])).aiter()) as items:
            async for item in items:
                return [item]
        return []

    assert asyncio.run(main()) == [1]
    assert [error for error, _ in undeliverable] == [failure]


def test_aiter_bridges_when_the_source_runs_on_another_loop() -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="test-async-fusion-other-loop")
    runner.start()
    threads: list[str] = []

    def mapper(x: int) -> int:
        threads.append(threading.current_thread().name)
        return x

    async def main() -> list[int]:
        flow = Flow.from_async_iterable(_counting([1, 2, 3], []), loop=loop).map(mapper)
        iterator = flow.aiter()
        assert not _is_consumer_fused(iterator)
        return [x async for x in iterator]

    async def on_its_own_loop() -> tuple[bool, list[int]]:
        flow = Flow.from_async_iterable(_counting([4], []), loop=asyncio.get_running_loop())
        iterator = flow.aiter()
        return _is_consumer_fused(iterator), [x async for x in iterator]

    try:
        assert asyncio.run(main()) == [1, 2, 3]
        assert set(threads) == {"test-async-fusion-other-loop"}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
    assert asyncio.run(on_its_own_loop()) == (True, [4])


def test_a_bad_prefetch_is_still_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="prefetch"):
            async for _ in Flow.from_async_iterable(_counting([1], [])).aiter(prefetch=0):
                pass

    asyncio.run(main())


def test_first_and_list_async_use_the_consumer_path() -> None:
    log: Log = []

    async def main() -> tuple[int, list[int]]:
        flow = Flow.from_async_iterable(_Iterable(list(range(100)), log)).skip(3)
        return await flow.first_async(), await flow.take(2).to_list_async()

    assert asyncio.run(main()) == (3, [3, 4])
    # first_async pulled 4 items, not a prefetch of them.
    assert log[: log.index("source closed") + 1] == ["open"] + [f"pull {i}" for i in range(4)] + [
        "source closed"
    ]


# -- the compliance kit ------------------------------------------------------------------------


async def _numbers(elements: int) -> AsyncIterator[int]:
    for i in range(elements):
        yield i


_FUSED: list[tuple[str, Callable[[int], Publisher[object]]]] = [
    (
        "fused_async_map_filter",
        lambda n: Flow.from_async_iterable(_numbers(n)).map(lambda x: x + 1).filter(bool),
    ),
    (
        "fused_async_skip_take",
        lambda n: (
            Flow.from_async_iterable(_numbers(2 * n + 3)).skip(3).map(str).take(max(n, 1))
            if n
            else Flow.from_async_iterable(_numbers(0)).map(str)
        ),
    ),
]


@pytest.mark.parametrize(("name", "create"), _FUSED, ids=[name for name, _ in _FUSED])
def test_fused_async_flows_pass_the_compliance_kit(
    name: str, create: Callable[[int], Publisher[object]]
) -> None:
    entry = PublisherEntry(name, create, (name,), kind="asyncio")
    results = verification_for(entry).run()
    failed = [result for result in results if result.status == "failed"]
    assert not failed, failed
    assert any(result.status == "passed" for result in results)
