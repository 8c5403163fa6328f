"""Every public source and operator of reactive_bp, as something the compliance kit can run.

This is how reactive_bp verifies itself (``python -m spec_tck.self_report``, and the
test suite's ``tests/test_self_verification.py``).

``PUBLISHERS`` maps a name to a factory ``create(elements)`` that returns a
publisher emitting exactly ``elements`` items and then completing (the
contract of ``PublisherVerification.create_publisher``). ``covers`` names the
``Flow`` members an entry exercises; ``tests/test_registry.py`` fails when a
public ``Flow`` member is neither covered nor exempted with a reason, so a new
operator cannot be added without being verified.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

try:
    import reactivex
except ImportError:  # the "rx" extra is not installed: that entry is left out
    reactivex = None  # type: ignore[assignment]

from reactive_bp import (
    UNBOUNDED,
    Emitter,
    Flow,
    OperatorSubscriber,
    OverflowStrategy,
    SourceQueue,
    Subscriber,
    SynchronousSink,
)
from reactive_bp.abc import Processor, Publisher
from reactive_bp.schedulers import ThreadPoolScheduler, VirtualTimeScheduler

from ._env import SkipCheck
from ._processor import IdentityProcessorVerification
from ._publisher import PublisherVerification

Kind = Literal["sync", "thread", "asyncio"]
# "As many as asked for, then complete" (the kit reads UNBOUNDED itself as "never completes").
INFINITE = UNBOUNDED - 1


@dataclass(frozen=True)
class PublisherEntry:
    """One publisher factory for the verifications."""

    name: str
    create: Callable[[int], Publisher[object]]
    covers: tuple[str, ...]
    max_elements: int = 1000
    kind: Kind = "sync"
    # (check id, reason): checks whose outcome for this publisher would depend on timing,
    # not on its contract; reported as skipped with the reason, so the report is stable.
    skips: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return self.name


def _numbers(elements: int) -> Flow[int]:
    """``range(elements)``, or an endless count for ``INFINITE``."""
    if elements >= INFINITE:
        return Flow.from_iterable(itertools.count())
    return Flow.range(elements)


def _counter(elements: int) -> Flow[int]:
    def step(state: int, sink: SynchronousSink[int]) -> int:
        if state >= elements:
            sink.complete()
        else:
            sink.next(state)
        return state + 1

    return Flow.generate(lambda: 0, step)


def _created(elements: int) -> Flow[int]:
    """A producer that emits only what was requested (no overflow ever happens)."""

    def producer(emitter: Emitter[int]) -> None:
        sent = [0]
        # on_request callbacks may run on several requesting threads at once:
        # one pump at a time, or two could both emit the last item.
        lock = threading.RLock()

        def pump(_: int = 0) -> None:
            with lock:
                while emitter.requested > 0 and sent[0] < elements and not emitter.is_cancelled:
                    sent[0] += 1  # first: emit may re-enter pump through on_request
                    emitter.emit(sent[0] - 1)
                if sent[0] >= elements:
                    emitter.complete()

        emitter.on_request(pump)
        pump()  # demand may have arrived before the callback was registered

    return Flow.create(producer, capacity=16, overflow=OverflowStrategy.WAIT)


def _queued(elements: int) -> Flow[int]:
    queue: SourceQueue[int] = SourceQueue(max(elements, 1))
    for i in range(elements):
        queue.offer(i)
    queue.complete()
    return queue.flow


class _Identity(OperatorSubscriber[int, int]):
    def hook_on_next(self, item: int) -> None:
        self.emit(item)


def _identity(flow: Flow[int]) -> Flow[int]:
    return flow.lift(_Identity)


class DuckPublisher:
    """A publisher that never imports reactive_bp's Flow: adopted with ``from_publisher``."""

    def __init__(self, elements: int) -> None:
        self._elements = elements

    def subscribe(self, subscriber: Subscriber[int]) -> None:
        Flow.range(self._elements).subscribe(subscriber)


async def _async_numbers(elements: int) -> AsyncIterator[int]:
    for i in range(elements):
        yield i


def _from_queue(elements: int) -> Flow[int]:
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    for i in range(elements):
        queue.put_nowait(i)
    queue.put_nowait(None)
    return Flow.from_queue(queue)


# One pool for all thread-based entries (its threads are named "registry-pool" and
# start only when used; shutdown_pool() ends them).
POOL_PREFIX = "registry-pool"
_POOL = ThreadPoolScheduler(2, thread_name_prefix=POOL_PREFIX)


def shutdown_pool() -> None:
    """End the registry's worker threads; entries made later get a fresh pool.

    (The entries look ``_POOL`` up when they build a publisher, so a report that
    shut the pool down does not leave later verifications with a dead one.)
    """
    global _POOL
    pool, _POOL = _POOL, ThreadPoolScheduler(2, thread_name_prefix=POOL_PREFIX)
    pool.shutdown()


# Rule 1.11's multicast checks compare the items several subscribers saw. Each subscriber of
# `interval` has its own real-time clock, and a tick that finds no demand is coalesced: which
# tick numbers a subscriber sees depends on when it requested, so these checks passed or not
# with the machine's load. They are declared skipped, which keeps the self-report stable.
_CLOCK_REASON = (
    "each subscriber has its own real-time clock and a tick that finds no demand is "
    "coalesced, so the tick numbers it sees depend on when it requests (timing, not a contract)"
)
_PER_SUBSCRIBER_CLOCK = tuple(
    (
        "optional_spec111_multicast_must_produce_the_same_elements_in_the_same_sequence_"
        f"to_all_of_its_subscribers_when_{when}",
        _CLOCK_REASON,
    )
    for when in (
        "requesting_one_by_one",
        "requesting_many_upfront",
        "requesting_many_upfront_and_complete_as_expected",
    )
)


def _entries() -> list[PublisherEntry]:
    e = PublisherEntry
    return [
        # -- sources
        e("from_iterable", lambda n: _numbers(n), ("from_iterable",), max_elements=INFINITE),
        e("range", lambda n: Flow.range(n), ("range",), INFINITE),
        e("just", lambda n: Flow.just(*range(n)), ("just",)),
        e("empty", lambda n: Flow.empty(), ("empty",), max_elements=0),
        e("defer", lambda n: Flow.defer(lambda: _numbers(n)), ("defer",), INFINITE),
        e("generate", _counter, ("generate",), INFINITE),
        e(
            "from_publisher",
            lambda n: Flow.from_publisher(DuckPublisher(n)),
            ("from_publisher",),
            INFINITE,
        ),
        e("create", _created, ("create",)),
        e("source_queue", _queued, ()),
        e(
            "from_observable",
            lambda n: Flow.from_observable(reactivex.from_iterable(range(n)), capacity=max(n, 1)),
            ("from_observable",),
        ),
        e(
            "from_async_iterable",
            lambda n: Flow.from_async_iterable(_async_numbers(n)),
            ("from_async_iterable",),
            kind="asyncio",
        ),
        e("from_queue", _from_queue, ("from_queue",), kind="asyncio"),
        # -- operators shaped to emit exactly n items
        e("map", lambda n: _numbers(n).map(lambda x: x + 1), ("map",), INFINITE),
        e("filter", lambda n: _numbers(n).filter(lambda x: x >= 0), ("filter",), INFINITE),
        e("take", lambda n: _numbers(2 * n + 1).take(n), ("take",), INFINITE),
        e("skip", lambda n: _numbers(n + 3).skip(3), ("skip",), INFINITE),
        e(
            "take_while",
            lambda n: Flow.range(n + 5).take_while(lambda x: x < n),
            ("take_while",),
        ),
        e("skip_while", lambda n: Flow.range(n + 2).skip_while(lambda x: x < 2), ("skip_while",)),
        e(
            "distinct_until_changed",
            lambda n: Flow.from_iterable([i // 2 for i in range(2 * n)]).distinct_until_changed(),
            ("distinct_until_changed",),
        ),
        e("scan", lambda n: _numbers(n).scan(lambda a, x: x), ("scan",), INFINITE),
        e("reduce", lambda n: Flow.range(n).reduce(lambda a, x: a + x), ("reduce",), 1),
        e("buffer", lambda n: Flow.range(3 * n).buffer(3), ("buffer",), INFINITE),
        e("flat_map", lambda n: _numbers(n).flat_map(Flow.just), ("flat_map",), INFINITE),
        e("concat_map", lambda n: _numbers(n).concat_map(Flow.just), ("concat_map",), INFINITE),
        e("merge", lambda n: Flow.merge(_numbers(n), Flow.empty()), ("merge",), INFINITE),
        e(
            "concat",
            lambda n: Flow.concat(Flow.range(n // 2), Flow.range(n - n // 2)),
            ("concat",),
        ),
        e("zip", lambda n: Flow.zip(_numbers(n), _numbers(n)), ("zip",), INFINITE),
        e("merge_with", lambda n: _numbers(n).merge_with(Flow.empty()), ("merge_with",), INFINITE),
        e(
            "concat_with",
            lambda n: Flow.range(n // 2).concat_with(Flow.range(n - n // 2)),
            ("concat_with",),
        ),
        e("zip_with", lambda n: _numbers(n).zip_with(_numbers(n)), ("zip_with",), INFINITE),
        # -- hot: one subscription of the source shared (publish, replay)
        e("share", lambda n: _numbers(n).share(), ("share",), INFINITE),
        e(
            "publish",
            lambda n: _numbers(n).publish(16).auto_connect(),
            ("publish",),
            INFINITE,
        ),
        e("replay", lambda n: _numbers(n).replay(8).ref_count(), ("replay",), INFINITE),
        e("cache", lambda n: Flow.range(n).cache(), ("cache",)),
        e("balance", lambda n: _numbers(n).balance(1, buffer_size=4)[0], ("balance",), INFINITE),
        # -- splitting, flattened back so the items can be counted
        e(
            "group_by",
            lambda n: _numbers(n).group_by(lambda x: x % 4, group_buffer=8).flat_map(lambda g: g),
            ("group_by",),
            INFINITE,
        ),
        e(
            "window",
            lambda n: _numbers(n).window(3).concat_map(lambda w: w),
            ("window",),
            INFINITE,
        ),
        e(
            "window_timeout",
            lambda n: (
                Flow.range(n)
                .window_timeout(3, 60.0, scheduler=VirtualTimeScheduler())
                .concat_map(lambda w: w)
            ),
            ("window_timeout",),
        ),
        e(
            "on_error_resume",
            lambda n: _numbers(n).on_error_resume(lambda error: Flow.empty()),
            ("on_error_resume",),
            INFINITE,
        ),
        e(
            "on_error_return",
            lambda n: (
                Flow.concat(Flow.range(n - 1), Flow.error(KeyError("k"))).on_error_return(-1)
                if n
                else Flow.empty()
            ),
            ("on_error_return",),
        ),
        e("limit_rate", lambda n: _numbers(n).limit_rate(8), ("limit_rate",), INFINITE),
        e(
            "do_on_next",
            lambda n: _numbers(n).do_on_next(lambda x: None),
            ("do_on_next",),
            INFINITE,
        ),
        e(
            "do_on_request",
            lambda n: _numbers(n).do_on_request(lambda k: None),
            ("do_on_request",),
            INFINITE,
        ),
        e(
            "do_on_cancel",
            lambda n: _numbers(n).do_on_cancel(lambda: None),
            ("do_on_cancel",),
            INFINITE,
        ),
        e(
            "do_on_subscribe",
            lambda n: _numbers(n).do_on_subscribe(lambda s: None),
            ("do_on_subscribe",),
            INFINITE,
        ),
        e(
            "do_on_error",
            lambda n: _numbers(n).do_on_error(lambda error: None),
            ("do_on_error",),
            INFINITE,
        ),
        e(
            "do_on_complete",
            lambda n: _numbers(n).do_on_complete(lambda: None),
            ("do_on_complete",),
            INFINITE,
        ),
        e(
            "do_on_terminate",
            lambda n: _numbers(n).do_on_terminate(lambda: None),
            ("do_on_terminate",),
            INFINITE,
        ),
        e(
            "do_finally",
            lambda n: _numbers(n).do_finally(lambda signal: None),
            ("do_finally",),
            INFINITE,
        ),
        e("lift", lambda n: _identity(_numbers(n)), ("lift",), INFINITE),
        e("pipe", lambda n: _numbers(n).pipe(_identity), ("pipe",), INFINITE),
        e(
            "publish_on",
            lambda n: _numbers(n).publish_on(_POOL, prefetch=16),
            ("publish_on",),
            INFINITE,
            kind="thread",
        ),
        e(
            "subscribe_on",
            lambda n: _numbers(n).subscribe_on(_POOL),
            ("subscribe_on",),
            INFINITE,
            kind="thread",
        ),
        # -- time, retry and concurrency
        e(
            "interval",
            lambda n: Flow.interval(0.001).take(n),
            ("interval",),
            max_elements=50,
            kind="thread",
            skips=_PER_SUBSCRIBER_CLOCK,
        ),
        e("timer", lambda n: Flow.timer(0.001).take(n), ("timer",), max_elements=1, kind="thread"),
        e(
            "delay",
            lambda n: Flow.range(n).delay(0.001),
            ("delay",),
            max_elements=50,
            kind="thread",
        ),
        e("timeout", lambda n: _numbers(n).timeout(30), ("timeout",), INFINITE, kind="thread"),
        e("retry", lambda n: _numbers(n).retry(3), ("retry",), INFINITE),
        e(
            "map_async",
            lambda n: _numbers(n).map_async(lambda x: x * 2, max_concurrency=4),
            ("map_async",),
            INFINITE,
            kind="thread",
        ),
        # -- backpressure strategies, in configurations that keep every item
        e(
            "on_backpressure_buffer",
            lambda n: Flow.range(n).on_backpressure_buffer(max(n, 1)),
            ("on_backpressure_buffer",),
        ),
        e(
            "on_backpressure_buffer_unbounded",
            lambda n: _numbers(n).on_backpressure_buffer_unbounded(),
            ("on_backpressure_buffer_unbounded",),
        ),
        e("sample_every", lambda n: _numbers(n).sample_every(1), ("sample_every",), INFINITE),
        e(
            "buffer_timeout",
            lambda n: Flow.range(3 * n).buffer_timeout(3, 60.0, scheduler=VirtualTimeScheduler()),
            ("buffer_timeout",),
        ),
        e(
            "throttle",
            lambda n: Flow.range(n).throttle(
                10**6, 1.0, burst=10**4, scheduler=VirtualTimeScheduler()
            ),
            ("throttle",),
        ),
    ]


PUBLISHERS: list[PublisherEntry] = [
    entry for entry in _entries() if entry.name != "from_observable" or reactivex is not None
]

# Flow members that are not publishers to verify, and why.
EXEMPT: dict[str, str] = {
    "subscribe": "the Publisher method itself: exercised by every verification",
    "subscribe_with": "a sink: verified with the subscriber verifications",
    "to_list": "a blocking sink built on BaseSubscriber",
    "first": "a blocking sink built on BaseSubscriber",
    "last": "a blocking sink built on reduce and BaseSubscriber",
    "aiter": "a consumer adapter: verified with the subscriber verifications",
    "blocking_iter": "a consumer adapter: verified with the subscriber verifications",
    "to_list_async": "a sink built on aiter",
    "first_async": "a sink built on aiter",
    "last_async": "a sink built on aiter",
    "to_observable": "an Observer has no demand; tested in tests/adapters/test_rx.py",
    "error": "emits no items: it is the failed publisher of every verification",
    "never": "never completes and emits nothing: covered by test_sources.py",
}
_LOSSY = "drops by design: tests/test_operator_demand.py and its virtual-time tests check it"
EXEMPT.update(
    dict.fromkeys(
        [
            "on_backpressure_drop",
            "on_backpressure_latest",
            "on_backpressure_error",
            "on_backpressure_reduce",
            "sample",
            "sample_adaptive",
            "throttle_first",
            "throttle_latest",
            "debounce",
        ],
        _LOSSY,
    )
)


def verification_for(entry: PublisherEntry) -> PublisherVerification[object]:
    """A ``PublisherVerification`` whose factories come from ``entry``."""

    class EntryVerification(PublisherVerification[object]):
        asyncio = entry.kind == "asyncio"

        def create_publisher(self, elements: int) -> Publisher[object]:
            return entry.create(elements)

        def create_failed_publisher(self) -> Publisher[object] | None:
            return Flow.error(RuntimeError(f"{entry.name} failed on purpose"))

        def max_elements_from_publisher(self) -> int:
            return entry.max_elements

    for check, reason in entry.skips:
        if not callable(getattr(EntryVerification, check, None)):
            raise ValueError(f"{entry.name}: skips names no check {check!r}")

        def skipped(self: object, reason: str = reason) -> None:
            raise SkipCheck(reason)

        setattr(EntryVerification, check, skipped)
    EntryVerification.__name__ = EntryVerification.__qualname__ = f"{entry.name}_verification"
    return EntryVerification()


# -- processors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessorEntry:
    """A processor of reactive_bp as ``IdentityProcessorVerification`` checks it.

    ``create(buffer_size)`` returns a fresh pass-through processor; ``lossy``
    processors skip the publisher-view checks (they drop what nobody asked for);
    ``skips`` maps a check to the reason it does not apply to this configuration
    (printed with the check's result).
    """

    name: str
    create: Callable[[int], Processor[object, object]]
    coordinated: bool = False
    buffer_size: int = 16
    max_subscribers: int = UNBOUNDED
    lossy: bool = False
    skips: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return self.name


_LOSSY_PROCESSOR = (
    "items that arrive before a subscriber, or beyond its demand, are dropped (or fail it) "
    "by design; the publisher view is verified under WAIT"
)
# A replay processor replays its history to a late subscriber: Rule 4.1's check expects the
# late one to start at the live item.
_REPLAYS_HISTORY = (
    "required_spec401_must_request_from_upstream_for_elements_that_have_been_requested_long_ago",
    "a replay processor replays its history to a late subscriber by design "
    "(replay_live runs this check with history=0)",
)


def _multicast(policy_name: str) -> Callable[[int], Processor[object, object]]:
    def create(buffer_size: int) -> Processor[object, object]:
        from reactive_bp.processors import MulticastProcessor, SlowSubscriberPolicy

        return MulticastProcessor(buffer_size, SlowSubscriberPolicy[policy_name])

    return create


def _replay(history: int | None) -> Callable[[int], Processor[object, object]]:
    def create(buffer_size: int) -> Processor[object, object]:
        from reactive_bp.processors import ReplayProcessor

        return ReplayProcessor(history, buffer_size=buffer_size, auto_cancel=True)

    return create


def _unicast(buffer_size: int) -> Processor[object, object]:
    from reactive_bp.processors import UnicastProcessor

    return UnicastProcessor(buffer_size)


def _processor_entries() -> list[ProcessorEntry]:
    p = ProcessorEntry
    # Rule 4.1 under DROP: a late subscriber with no demand when the item came misses it.
    drop_skips = (
        (
            _REPLAYS_HISTORY[0],
            "DROP: the late subscriber had no demand when the item came, so it missed it "
            "by design (LATEST and ERROR keep it and pass this check)",
        ),
    )
    # Rule 3.8's check wants a downstream request(3), made after two items were consumed,
    # to show up upstream: a 75%-replenishing prefetch does that with buffer_size 2.
    return [
        p("multicast_wait", _multicast("WAIT"), coordinated=True, buffer_size=2),
        p("multicast_drop", _multicast("DROP"), buffer_size=2, lossy=True, skips=drop_skips),
        p("multicast_latest", _multicast("LATEST"), buffer_size=2, lossy=True),
        p("multicast_error", _multicast("ERROR"), buffer_size=2, lossy=True),
        p("replay_live", _replay(0), coordinated=True),
        p("replay_all", _replay(None), coordinated=True, skips=(_REPLAYS_HISTORY,)),
        p("replay_last3", _replay(3), coordinated=True, skips=(_REPLAYS_HISTORY,)),
        p("unicast", _unicast, max_subscribers=1),
    ]


PROCESSORS: list[ProcessorEntry] = _processor_entries()


def processor_verification_for(entry: ProcessorEntry) -> IdentityProcessorVerification[object]:
    """An ``IdentityProcessorVerification`` of ``entry``'s processor."""

    class EntryVerification(IdentityProcessorVerification[object]):
        def create_identity_processor(self, buffer_size: int) -> Processor[object, object]:
            return entry.create(buffer_size)

        def create_element(self, index: int) -> object:
            return index

        def processor_buffer_size(self) -> int:
            return entry.buffer_size

        def max_supported_subscribers(self) -> int:
            return entry.max_subscribers

        def does_coordinated_emission(self) -> bool:
            return entry.coordinated

        def create_publisher(self, elements: int) -> Publisher[object]:
            if entry.lossy:
                raise SkipCheck(_LOSSY_PROCESSOR)
            return super().create_publisher(elements)

        def create_failed_publisher(self) -> Publisher[object] | None:
            processor = entry.create(4)
            processor.on_error(RuntimeError(f"{entry.name} failed on purpose"))
            return processor

    for check, reason in entry.skips:

        def skipped(self: object, reason: str = reason) -> None:
            raise SkipCheck(reason)

        setattr(EntryVerification, check, skipped)
    EntryVerification.__name__ = EntryVerification.__qualname__ = f"Verify_{entry.name}"
    return EntryVerification()
