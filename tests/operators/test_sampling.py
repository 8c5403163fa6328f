"""sample, throttle_*, debounce, throttle, buffer_timeout, sample_every, sample_adaptive.

All timing runs in virtual time, plus one short real-time smoke test. The
Hypothesis test checks, for each operator, after every step of a random
schedule of items, requests and clock moves: produced == delivered + dropped +
depth; depth within the declared bound; delivered <= requested; order kept;
upstream demand within the declared bound; and never an error for lack of demand.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reactive_bp
from reactive_bp import (
    UNBOUNDED,
    BackpressureMeter,
    Flow,
    RateExceededError,
    adaptive_keep_rate,
)
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber

pytestmark = pytest.mark.no_undeliverable


def _setup(
    apply: Callable[[Flow[int], VirtualTimeScheduler], Flow[object]], request: int = 0
) -> tuple[TestPublisher[int], TestSubscriber[object], VirtualTimeScheduler]:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    subscriber: TestSubscriber[object] = TestSubscriber(request)
    apply(upstream, vts).subscribe(subscriber)
    return upstream, subscriber, vts


# -- sample -------------------------------------------------------------------------------------


def test_sample_delivers_the_newest_item_per_period() -> None:
    up, sub, vts = _setup(lambda f, s: f.sample(1.0, scheduler=s), UNBOUNDED)
    up.send_next(1, 2)
    vts.advance_by(1.0)
    up.send_next(3)
    vts.advance_by(1.0)
    vts.advance_by(1.0)  # nothing new: nothing sent
    up.send_next(4)
    up.send_complete()
    assert sub.items == [2, 3, 4] and sub.completed


def test_sample_without_emit_last_drops_the_unsampled_last_item() -> None:
    meter = BackpressureMeter("s")
    up, sub, vts = _setup(lambda f, s: f.sample(1.0, False, s, meter=meter), UNBOUNDED)
    up.send_next(1)
    up.send_complete()
    assert sub.items == [] and sub.completed
    assert meter.stats is not None and meter.stats.dropped_by_reason == {"emit_last": 1}
    assert vts.pending == 0


def test_sample_never_fails_for_lack_of_demand_it_keeps_the_newest() -> None:
    meter = BackpressureMeter("s")
    up, sub, vts = _setup(lambda f, s: f.sample(1.0, scheduler=s, meter=meter))
    for value in (1, 2, 3):
        up.send_next(value)
        vts.advance_by(1.0)  # a tick with no demand: Reactor would error here
    assert sub.items == [] and not sub.errors
    sub.request(1)
    assert sub.items == [3]
    stats = meter.stats
    assert stats is not None and stats.dropped_by_reason == {"stale": 2}
    assert stats.backpressured_seconds == pytest.approx(2.0)


def test_sample_stats_are_exact_between_ticks() -> None:
    """Replaced items are only counted aside per item; any read folds them in."""
    meter = BackpressureMeter("s")
    up, sub, vts = _setup(lambda f, s: f.sample(1.0, scheduler=s, meter=meter))
    stats = meter.stats
    assert stats is not None
    up.send_next(1, 2, 3, 4, 5)
    assert (stats.produced, stats.dropped, stats.depth) == (5, 4, 1)
    assert stats.dropped_by_reason == {"sampled": 4}
    up.send_next(6, 7)
    assert stats.snapshot()["produced"] == 7 and stats.snapshot()["dropped"] == 6
    vts.advance_by(1.0)  # 7 is ready, waiting for demand
    up.send_next(8, 9)
    assert (stats.produced, stats.delivered, stats.dropped, stats.depth) == (9, 0, 7, 2)
    sub.request(1)
    assert sub.items == [7]
    vts.advance_by(1.0)
    up.send_complete()
    sub.request(1)
    assert sub.items == [7, 9] and sub.completed
    assert stats.snapshot() == {
        **stats.snapshot(),
        "produced": 9,
        "delivered": 2,
        "dropped": 7,
        "dropped_by_reason": {"sampled": 7},
        "depth": 0,
    }


@pytest.mark.parametrize("demand_first", [False, True], ids=["tick_first", "demand_first"])
def test_sample_without_a_meter_delivers_a_tick_once_there_is_demand(demand_first: bool) -> None:
    # Without demand (and no meter to time the wait) a tick runs no drain pass:
    # the request that comes later must find the ready item itself.
    up, sub, vts = _setup(lambda f, s: f.sample(1.0, scheduler=s))
    if demand_first:
        sub.request(2)
    up.send_next(1, 2)
    vts.advance_by(1.0)
    up.send_next(3)
    vts.advance_by(1.0)
    if not demand_first:
        assert sub.items == []
        sub.request(2)
    assert sub.items == ([2, 3] if demand_first else [3])
    sub.assert_clean()


_LIBRARY = str(Path(reactive_bp.__file__).parent)
TraceFunction: TypeAlias = Callable[[FrameType, str, object], "TraceFunction | None"]


def _interleave(call: Callable[[], None], at: int, step: Callable[[], None]) -> bool:
    """Run ``call`` on a thread, and ``step`` while it is stopped at its ``at``-th line.

    Lines count in reactive_bp's code only. ``step`` runs on a third thread and
    gets 50 ms: it may need a lock the stopped thread holds, and then finishes
    after it. Returns whether ``call`` reached line ``at`` (else ``step`` ran after).
    """
    stopped = threading.Event()
    resume = threading.Event()
    seen = 0

    def tracer(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        nonlocal seen
        if event == "call":
            return tracer if frame.f_code.co_filename.startswith(_LIBRARY) else None
        if event == "line":
            seen += 1
            if seen == at:
                stopped.set()
                resume.wait(5)
        return tracer

    def traced() -> None:
        previous = sys.gettrace()  # a coverage tracer, say: restored after
        sys.settrace(tracer)
        try:
            call()
        finally:
            sys.settrace(previous)

    caller = threading.Thread(target=traced)
    caller.start()
    while not stopped.wait(0.001) and caller.is_alive():
        pass
    helper = threading.Thread(target=step)
    helper.start()
    helper.join(0.05)
    resume.set()
    caller.join(5)
    helper.join(5)
    return stopped.is_set()


def test_sample_tick_interrupted_anywhere_by_a_request_never_strands_the_sample() -> None:
    """The tick reads the demand without the drain lock: whichever comes second delivers.

    The request is made at every line of the tick in turn: a tick that read
    the demand before making its sample ready would skip the pass that the
    request, finding nothing ready yet, no longer makes.
    """
    at = 0
    while True:
        at += 1
        up, sub, vts = _setup(lambda f, s: f.sample(1.0, scheduler=s))
        up.send_next(at)
        reached = _interleave(partial(vts.advance_by, 1.0), at, partial(sub.request, 1))
        assert sub.items == [at], f"request at line {at} of the tick: the sample was stranded"
        sub.assert_clean()
        if not reached:
            break
    assert at > 10  # the tick's lines were all visited


def test_sample_ticks_while_a_synchronous_source_emits() -> None:
    """The clock runs from subscription, not from the end of the upstream request.

    Every item moves the virtual clock one period on, from inside the
    synchronous source, so each tick falls between two items.
    """
    vts = VirtualTimeScheduler()
    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(1, 6).do_on_next(lambda _: vts.advance_by(1.0)).sample(1.0, scheduler=vts).subscribe(
        subscriber
    )
    assert subscriber.items == [1, 2, 3, 4, 5] and subscriber.completed
    assert vts.pending == 0


def test_sample_cancelled_during_a_synchronous_source_stops_its_clock() -> None:
    vts = VirtualTimeScheduler()
    seen: list[int] = []

    def step(item: int) -> None:
        seen.append(item)
        vts.advance_by(1.0)

    subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
    Flow.range(1, 100).do_on_next(step).sample(1.0, scheduler=vts).take(2).subscribe(subscriber)
    assert subscriber.items == [1, 2] and subscriber.completed
    assert seen == [1, 2, 3]  # the third tick's sample completed take(2): the source stopped
    assert vts.pending == 0  # and the periodic timer went with it


def test_real_time_sample_ticks_during_a_long_synchronous_source() -> None:
    """The issue: 1,000,000 items of ``range(...).sample(0.005)`` gave one sample, the last.

    100,000 items keep the source busy for well over one period (about a
    second here), which is all the check needs.
    """
    count = 100_000
    samples = Flow.range(count).sample(0.005).to_list(timeout=30)
    assert len(samples) > 1 and samples[0] < count - 1, samples[:3]
    assert samples == sorted(set(samples)) and samples[-1] == count - 1  # emit_last
    deadline = time.monotonic() + 2.0
    while any(t.name == "reactive_bp-timer" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the periodic timer outlived the stream"
        time.sleep(0.01)


# -- throttle_first / throttle_latest / debounce -----------------------------------------------


def test_throttle_first_opens_a_window_per_accepted_item() -> None:
    up, sub, vts = _setup(lambda f, s: f.throttle_first(1.0, s), UNBOUNDED)
    up.send_next(1, 2)
    vts.advance_by(0.5)
    up.send_next(3)
    vts.advance_by(0.5)
    up.send_next(4, 5)
    assert sub.items == [1, 4]


def test_throttle_first_holds_the_accepted_item_until_demand() -> None:
    meter = BackpressureMeter("tf")
    up, sub, vts = _setup(lambda f, s: f.throttle_first(1.0, s, meter=meter))
    up.send_next(1)
    vts.advance_by(2.0)
    up.send_next(2)  # the window is over, but 1 still waits
    sub.request(5)
    assert sub.items == [1] and not sub.errors
    assert meter.stats is not None and meter.stats.dropped_by_reason == {"no_demand": 1}


def test_throttle_latest_emits_at_once_then_the_newest_per_period() -> None:
    up, sub, vts = _setup(lambda f, s: f.throttle_latest(1.0, s), UNBOUNDED)
    up.send_next(1, 2, 3)
    assert sub.items == [1]
    vts.advance_by(1.0)
    assert sub.items == [1, 3]
    vts.advance_by(1.0)  # window ended quietly
    up.send_next(4)
    assert sub.items == [1, 3, 4]
    up.send_next(5)
    up.send_complete()
    assert sub.items == [1, 3, 4, 5] and sub.completed


def test_throttle_latest_without_emit_last() -> None:
    up, sub, _vts = _setup(lambda f, s: f.throttle_latest(1.0, s, emit_last=False), UNBOUNDED)
    up.send_next(1, 2)
    up.send_complete()
    assert sub.items == [1] and sub.completed


def test_debounce_waits_for_quiet() -> None:
    up, sub, vts = _setup(lambda f, s: f.debounce(1.0, s), UNBOUNDED)
    up.send_next(1)
    vts.advance_by(0.5)
    up.send_next(2)
    vts.advance_by(0.9)
    assert sub.items == []
    vts.advance_by(0.1)
    assert sub.items == [2]
    up.send_next(3)
    up.send_complete()
    assert sub.items == [2, 3] and sub.completed


def test_debounce_holds_a_settled_item_for_demand() -> None:
    up, sub, vts = _setup(lambda f, s: f.debounce(1.0, s))
    up.send_next(1)
    vts.advance_by(1.0)
    up.send_next(2)
    vts.advance_by(1.0)
    sub.request(3)
    assert sub.items == [2] and not sub.errors


# -- throttle ------------------------------------------------------------------------------------


def test_throttle_shapes_to_the_rate_after_the_burst() -> None:
    vts = VirtualTimeScheduler()
    upstream: TestPublisher[int] = TestPublisher()
    seen: list[tuple[int, float]] = []
    upstream.throttle(2, per=1.0, burst=2, scheduler=vts).do_on_next(
        lambda x: seen.append((x, vts.now()))
    ).subscribe(TestSubscriber(UNBOUNDED))
    assert upstream.requests == [2]  # credit: the burst
    sent = 0
    while sent < 6:
        sent = upstream.emit_all_requested(sent)
        vts.advance_by(0.25)
    vts.advance_by(5)
    assert [x for x, _ in seen] == list(range(6))
    assert [t for _, t in seen] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]  # the burst, then 2 per second
    assert upstream.peak_outstanding <= 2


def test_throttle_enforce_fails_when_the_bucket_is_empty() -> None:
    up, sub, vts = _setup(
        lambda f, s: f.throttle(1, per=1.0, burst=2, mode="enforce", scheduler=s), UNBOUNDED
    )
    up.send_next(1, 2)
    vts.advance_by(0.5)
    up.send_next(3)
    assert sub.items == [1, 2]
    assert [type(e) for e in sub.errors] == [RateExceededError] and up.cancelled


def test_throttle_validates() -> None:
    with pytest.raises(ValueError):
        Flow.range(3).throttle(0, per=1.0)
    with pytest.raises(ValueError):
        Flow.range(3).throttle(1, per=1.0, mode="bounce")  # type: ignore[arg-type]


# -- buffer_timeout --------------------------------------------------------------------------------


def test_buffer_timeout_flushes_on_size_or_time() -> None:
    up, sub, vts = _setup(lambda f, s: f.buffer_timeout(3, 1.0, s), UNBOUNDED)
    up.send_next(1, 2, 3, 4)
    assert sub.items == [[1, 2, 3]]
    vts.advance_by(1.0)
    assert sub.items == [[1, 2, 3], [4]]
    vts.advance_by(5.0)  # never an empty batch
    up.send_next(5)
    up.send_complete()
    assert sub.items == [[1, 2, 3], [4], [5]] and sub.completed


def test_buffer_timeout_holds_a_due_batch_and_stops_asking_upstream() -> None:
    up, sub, vts = _setup(lambda f, s: f.buffer_timeout(3, 1.0, s))
    assert up.requests == [3]
    up.send_next(1)
    vts.advance_by(1.0)  # due, no demand: held, no error (Reactor fails here)
    up.send_next(2, 3)  # keeps filling up to max_size
    assert up.outstanding == 0 and not sub.errors
    vts.advance_by(10.0)
    sub.request(1)
    assert sub.items == [[1, 2, 3]] and up.outstanding == 3


# -- sample_every / sample_adaptive --------------------------------------------------------------


def test_sample_every_asks_exactly_n_per_kept_item() -> None:
    upstream: TestPublisher[int] = TestPublisher()
    subscriber: TestSubscriber[int] = TestSubscriber()
    upstream.sample_every(3).subscribe(subscriber)
    subscriber.request(2)
    assert upstream.requests == [6]
    upstream.emit_all_requested(1)
    assert subscriber.items == [3, 6]


def test_adaptive_keep_rate_follows_the_model() -> None:
    assert adaptive_keep_rate(0.5, 1.0, 0.01, 0.7) == 1.0
    assert adaptive_keep_rate(0.85, 1.0, 0.01, 0.7) == pytest.approx(0.5)
    assert adaptive_keep_rate(1.0, 1.0, 0.01, 0.7) == 0.01
    assert adaptive_keep_rate(0.9, 0.5, 0.1, 0.8) == pytest.approx(0.25)


def test_sample_adaptive_is_reproducible_with_a_seeded_random() -> None:
    def run(seed: int) -> tuple[list[int], dict[str, int]]:
        meter = BackpressureMeter("a")
        subscriber: TestSubscriber[int] = TestSubscriber()
        Flow.range(200).sample_adaptive(
            1.0, 0.1, 0.5, 20, random.Random(seed), meter=meter
        ).subscribe(subscriber)
        subscriber.request(UNBOUNDED)
        assert meter.stats is not None
        return subscriber.items, dict(meter.stats.dropped_by_reason)

    first, reasons = run(7)
    assert run(7) == (first, reasons) and run(8) != (first, reasons)
    assert first[:10] == list(range(10))  # below the threshold: everything kept
    assert 10 < len(first) <= 20 and reasons["sampled"] > 0


# -- invariants under random schedules -----------------------------------------------------------

Apply = Callable[[Flow[int], VirtualTimeScheduler, BackpressureMeter], Flow[object]]

# name -> (operator, most items held, most upstream demand outstanding + held)
TIMED_OPS: dict[str, tuple[Apply, int, int]] = {
    "sample": (lambda f, s, m: f.sample(1.0, scheduler=s, meter=m), 2, UNBOUNDED),
    "throttle_first": (lambda f, s, m: f.throttle_first(1.0, s, meter=m), 1, UNBOUNDED),
    "throttle_latest": (lambda f, s, m: f.throttle_latest(1.0, s, meter=m), 2, UNBOUNDED),
    "debounce": (lambda f, s, m: f.debounce(0.7, s, meter=m), 2, UNBOUNDED),
    "throttle": (lambda f, s, m: f.throttle(2, 1.0, 3, scheduler=s, meter=m), 3, 3),
    "buffer_timeout": (lambda f, s, m: f.buffer_timeout(4, 1.0, s, meter=m), 4, 4),
    "sample_every": (lambda f, s, m: f.sample_every(3, meter=m), 0, UNBOUNDED),
    "sample_adaptive": (
        lambda f, s, m: f.sample_adaptive(1.0, 0.2, 0.5, 5, random.Random(3), meter=m),
        5,
        UNBOUNDED,
    ),
}

steps_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 6)),
        st.tuples(st.just("request"), st.integers(1, 4)),
        st.tuples(st.just("advance"), st.sampled_from([0.3, 0.5, 1.0, 2.5])),
        st.tuples(st.sampled_from(["complete", "cancel"]), st.just(0)),
    ),
    max_size=40,
)


def _flat(items: Sequence[object]) -> list[object]:
    out: list[object] = []
    for item in items:
        out.extend(item if isinstance(item, list) else [item])
    return out


@pytest.mark.parametrize("name", sorted(TIMED_OPS))
@settings(max_examples=60, deadline=None)
@given(steps=steps_strategy)
def test_timed_operators_keep_every_invariant(name: str, steps: list[tuple[str, float]]) -> None:
    apply, held_bound, upstream_bound = TIMED_OPS[name]
    meter = BackpressureMeter(name)
    up, sub, vts = _setup(lambda f, s: apply(f, s, meter))
    stats = meter.stats
    assert stats is not None
    sent = 0
    for action, n in steps:
        if action == "send":
            count = int(n) if up.outstanding >= n else up.outstanding
            up.send_next(*range(sent, sent + count))
            sent += count
        elif action == "request":
            sub.request(int(n))
        elif action == "advance":
            vts.advance_by(n)
        elif action == "complete" and not up.cancelled:
            up.send_complete()
        elif action == "cancel":
            sub.cancel()
        assert stats.produced == stats.delivered + stats.dropped + stats.depth
        assert stats.depth <= held_bound
        assert len(sub.items) <= sub.requested
        flat = _flat(sub.items)
        assert stats.delivered == len(flat) and flat == sorted(set(flat))  # type: ignore[type-var]
        if upstream_bound != UNBOUNDED:
            assert up.outstanding + stats.depth <= upstream_bound
        assert not sub.errors  # never "lack of requests"
        sub.assert_clean()
        if sub.completed:
            break
    sub.cancel()
    assert vts.pending == 0 or up.cancelled or sub.completed


# -- real time -------------------------------------------------------------------------------------


def test_real_time_smoke_timed_operators() -> None:
    """Each timed family on the default scheduler, with short periods and tolerant checks."""
    started = time.monotonic()
    assert Flow.range(50).throttle(1000, per=1.0, burst=10).to_list(timeout=5) == list(range(50))
    batches = Flow.range(10).buffer_timeout(4, 0.05).to_list(timeout=5)
    assert _flat(batches) == list(range(10))
    assert Flow.range(10).debounce(0.01).to_list(timeout=5) == [9]
    assert Flow.range(10).sample(0.01).to_list(timeout=5) == [9]
    assert Flow.range(10).throttle_first(0.01).to_list(timeout=5) == [0]
    assert Flow.range(10).throttle_latest(0.01).to_list(timeout=5) == [0, 9]
    assert time.monotonic() - started < 5
