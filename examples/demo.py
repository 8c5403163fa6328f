# supports: --quick
"""The main job: a fast producer and a deliberately slow consumer, without and with demand.

The same producer (sensor readings, as fast as the CPU allows) feeds the same
slow consumer (0.5 ms per reading, like a write to a slow disk) twice:

1. **No backpressure**: a producer thread puts every reading into an unbounded
   ``queue.Queue``; a consumer thread takes them out. Nothing tells the
   producer to slow down, so the queue grows until the producer stops at a
   cap, which is here only so the demo cannot hurt the machine.
2. **reactive_bp**: the consumer pulls readings with ``request(n)`` batches
   (the arithmetic of ``RequestPolicy.batch(256)``: ask for 256, ask for 192
   more each time 192 are done). The producer is only pulled as far as asked,
   so at most 256 readings ever wait between the two.

The producer releases the GIL after each reading (``time.sleep(0)``, as a real
producer does when it reads a socket or polls a sensor): a pure-Python loop
that never does would keep the GIL for a whole switch interval (5 ms) each
time the consumer thread wants it back, and the consumer would look ten times
slower than it is (``Settings.yield_every`` = 64 shows it). So every
scenario's consumer works at its own speed, and the comparison is about what
each design does with the excess, not about GIL starvation.

The demo prints produced / delivered / dropped / peak queue / peak memory as a
table, then checks that every bounded scenario stayed within its bound (exit
status 1 otherwise). Run ``python examples/demo.py`` (about 13 s) or ``--quick`` (about 2 s).
Ctrl-C stops it at once: "interrupted" on stderr, exit status 130.

The last table is a hot source shared by two subscribers: one producer thread
offers readings into a ``MulticastProcessor``; a fast subscriber keeps up, a slow
one takes ``consumer_delay`` per reading. Under each ``SlowSubscriberPolicy`` it
shows who received what, and that ``WAIT`` holds at most ``buffer_size``
readings while pacing the producer by the slow subscriber.

The ``strategy:`` rows push the same readings from a thread that never waits
for demand through a backpressure strategy (``examples/strategies.py`` and
``docs/choosing-a-strategy.md`` compare all of them); more rows: write a
scenario function and add it to ``SCENARIOS``.
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from typing_extensions import override

from reactive_bp import (
    BackpressureMeter,
    BaseSubscriber,
    Emitter,
    Flow,
    OfferResult,
    OverflowStrategy,
    RequestPolicy,
)
from reactive_bp.processors import MulticastProcessor, SlowSubscriberPolicy
from reactive_bp.schedulers import ThreadPoolScheduler

Reading = tuple[int, float]  # (sequence number, value)


@dataclass(frozen=True)
class Settings:
    """How long and how hard the demo runs.

    Attributes:
        seconds: How long each scenario runs.
        cap: The producer stops after this many readings, whatever happens.
        batch: The reactive_bp consumer's request size.
        consumer_delay: Seconds the consumer spends on each reading.
        progress_every: Seconds between progress lines when stdout is not a TTY.
        yield_every: The producer releases the GIL (``time.sleep(0)``) after
            this many readings, so the consumer thread gets its turn.
    """

    seconds: float
    cap: int
    batch: int
    consumer_delay: float
    progress_every: float
    yield_every: int = 1


FULL = Settings(seconds=3.0, cap=300_000, batch=256, consumer_delay=0.0005, progress_every=1.0)
QUICK = Settings(seconds=0.35, cap=30_000, batch=256, consumer_delay=0.0005, progress_every=1.0)


class Stats:
    """What one scenario did, updated live by its threads and read by the progress line.

    Each counter has a single writer thread; int writes are atomic under the
    GIL, and the printer only reads. A strategy scenario sets ``meter``: the
    readings its operator dropped are read from there (exact at any time, see
    ``BufferStats``).
    """

    def __init__(self) -> None:
        self.produced = 0  # readings the producer made (written by the producer)
        self.taken = 0  # readings the consumer picked up (written by the consumer)
        self.delivered = 0  # readings the consumer finished (written by the consumer)
        self.peak_queue = 0  # max of queued (written by the producer or the consumer loop)
        self.meter: BackpressureMeter | None = None  # set by a strategy scenario
        self.notes: list[str] = []

    @property
    def dropped(self) -> int:
        """Readings a strategy dropped on purpose (not those discarded by the final cancel)."""
        stats = self.meter.stats if self.meter is not None else None
        if stats is None:
            return 0
        return stats.dropped - stats.dropped_by_reason.get("cancelled", 0)

    @property
    def queued(self) -> int:
        """Readings made, not dropped, and not yet picked up by the consumer."""
        return max(0, self.produced - self.taken - self.dropped)


def readings(settings: Settings, stats: Stats, stop: threading.Event) -> Iterator[Reading]:
    """The fast producer: yields readings as fast as it is pulled, up to ``settings.cap``.

    It records how far it was pulled (``stats.produced``) and the backlog it
    left behind (``stats.peak_queue``). Every ``settings.yield_every`` readings
    it releases the GIL, as a producer waiting on I/O would.
    """
    for seq in range(settings.cap):
        if seq % settings.yield_every == 0:
            time.sleep(0)  # let the consumer thread run (see the module docstring)
        if stop.is_set():
            stats.notes.append(
                f"the producer was stopped by the time limit with {stats.queued:,} readings "
                "still queued, and the queue was still growing"
            )
            return
        stats.produced += 1
        backlog = stats.produced - stats.taken
        if backlog > stats.peak_queue:
            stats.peak_queue = backlog
        yield (seq, seq * 0.001)
    stats.notes.append(
        f"the producer stopped at its cap of {settings.cap:,} readings; "
        "without the cap the queue would have kept growing"
    )


def slow_consume(reading: Reading, settings: Settings) -> None:
    """The deliberately slow consumer (think: one write to a slow disk per reading)."""
    time.sleep(settings.consumer_delay)


# -- scenarios ------------------------------------------------------------------------------
# A scenario runs until `stop` is set (or its producer is exhausted), updating `stats`.
# Every loop the demo runs on a thread checks `stop`, and every such thread is a daemon:
# Ctrl-C sets `stop`, and a thread that has not noticed yet cannot hold the interpreter open.


def no_backpressure(settings: Settings, stats: Stats, stop: threading.Event) -> None:
    """Producer thread -> unbounded ``queue.Queue`` -> consumer thread; nothing pushes back."""
    buffer: queue.Queue[Reading] = queue.Queue()  # unbounded: put() never waits

    def produce() -> None:
        for reading in readings(settings, stats, stop):
            buffer.put(reading)

    def consume() -> None:
        while not stop.is_set():
            try:
                reading = buffer.get(timeout=0.05)
            except queue.Empty:
                continue
            stats.taken += 1
            slow_consume(reading, settings)
            stats.delivered += 1

    threads = [
        threading.Thread(target=produce, name="demo-producer", daemon=True),
        threading.Thread(target=consume, name="demo-consumer", daemon=True),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class _PullingConsumer(BaseSubscriber[Reading]):
    """Receives readings into an inbox; the consumer loop decides when to ``request`` more."""

    def __init__(self) -> None:
        super().__init__(RequestPolicy.manual())  # no automatic demand: the loop asks
        # Invariant: only the consumer loop pops from the inbox. A synchronous source
        # appends on that same thread (it delivers inside request()); a pushed one
        # appends on the producer's thread, which deque.append/popleft allow.
        self.inbox: deque[Reading] = deque()
        self.finished = False

    @override
    def hook_on_next(self, item: Reading) -> None:
        self.inbox.append(item)

    @override
    def hook_on_complete(self) -> None:
        self.finished = True

    @override
    def hook_on_error(self, error: Exception) -> None:
        self.finished = True
        super().hook_on_error(error)


def pulled_by_demand(
    shape: Callable[[Flow[Reading]], Flow[Reading]] = lambda flow: flow,
) -> Callable[[Settings, Stats, threading.Event], None]:
    """Build a scenario where a consumer pulls ``shape(producer)`` in ``request(n)`` batches.

    Args:
        shape: Operators to put between the producer and the consumer.

    Returns:
        The scenario function.
    """

    def scenario(settings: Settings, stats: Stats, stop: threading.Event) -> None:
        consumer = _PullingConsumer()
        shape(Flow.from_iterable(readings(settings, stats, stop))).subscribe(consumer)
        replenish = settings.batch - settings.batch // 4  # RequestPolicy.batch's arithmetic
        consumer.request(settings.batch)
        done_since_request = 0
        while not stop.is_set():
            if not consumer.inbox:
                if consumer.finished:
                    break
                time.sleep(0.001)  # an asynchronous shape may deliver later
                continue
            reading = consumer.inbox.popleft()
            stats.taken += 1
            slow_consume(reading, settings)
            stats.delivered += 1
            done_since_request += 1
            if done_since_request == replenish:
                done_since_request = 0
                consumer.request(replenish)
        consumer.cancel()

    return scenario


def pushed_through(
    shape: Callable[[Flow[Reading], BackpressureMeter], Flow[Reading]],
) -> Callable[[Settings, Stats, threading.Event], None]:
    """Build a scenario where the producer pushes from its own thread, never waiting for demand.

    The same readings go through ``shape`` (a strategy operator), which decides
    what the slow consumer gets and drops the rest (the ``dropped`` column).
    Here "peak queue" counts what the operator held *plus* what it had already
    delivered into the consumer's inbox: the consumer asks for ``batch`` at a
    time, so up to ``batch`` readings may wait there on top of the operator's
    capacity. A note after the table gives both parts at the peak.

    Args:
        shape: The strategy, given the producer's flow and a meter to count into.

    Returns:
        The scenario function.
    """

    def scenario(settings: Settings, stats: Stats, stop: threading.Event) -> None:
        meter = BackpressureMeter("demo")
        stats.meter = meter
        # readings() would count every reading not yet taken as queued, dropped ones
        # included; here the consumer loop measures the queue, so that bookkeeping
        # goes to a shadow.
        shadow = Stats()

        def producer(emitter: Emitter[Reading]) -> None:
            def run() -> None:
                for reading in readings(settings, shadow, stop):
                    stats.produced += 1
                    emitter.emit(reading)
                emitter.complete()

            threading.Thread(target=run, name="demo-producer", daemon=True).start()

        consumer = _PullingConsumer()
        # The strategy below asks for everything, so this buffer never fills and
        # emit() never waits: the operator decides what happens to the excess.
        source = Flow.create(producer, capacity=64, overflow=OverflowStrategy.WAIT)
        shape(source, meter).subscribe(consumer)
        replenish = settings.batch - settings.batch // 4
        consumer.request(settings.batch)
        done_since_request = 0
        at_peak = (0, 0)  # (held by the operator, waiting in the inbox) when peak_queue was set
        while not stop.is_set():
            held = meter.stats.depth if meter.stats is not None else 0
            inbox = len(consumer.inbox)
            if held + inbox > stats.peak_queue:
                stats.peak_queue = held + inbox
                at_peak = (held, inbox)
            if not inbox:
                if consumer.finished:
                    break
                time.sleep(0.001)
                continue
            reading = consumer.inbox.popleft()
            stats.taken += 1
            slow_consume(reading, settings)
            stats.delivered += 1
            done_since_request += 1
            if done_since_request == replenish:
                done_since_request = 0
                consumer.request(replenish)
        consumer.cancel()
        counted = meter.stats
        if counted is None:
            return
        held, inbox = at_peak
        stats.notes.append(
            f"peak queue {stats.peak_queue:,} = {held:,} held by the strategy (it held at most "
            f"{counted.peak_depth:,}) + {inbox:,} already delivered into the consumer's inbox "
            f"(it asks for {settings.batch} at a time)"
        )
        reasons = {k: v for k, v in counted.dropped_by_reason.items() if k != "cancelled"}
        if reasons:
            listed = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items()))
            stats.notes.append(
                f"the strategy dropped {sum(reasons.values()):,} readings ({listed})"
            )

    return scenario


@dataclass(frozen=True)
class Scenario:
    """One row of the table.

    Attributes:
        name: The row label.
        run: Runs the scenario until the stop event is set.
        bound: The most readings that may ever wait between producer and
            consumer (checked after the run), or None for no bound.
        note: Printed under the table, to read the row correctly.
    """

    name: str
    run: Callable[[Settings, Stats, threading.Event], None]
    bound: Callable[[Settings], int] | None = None
    note: str | None = None


SCENARIOS: list[Scenario] = [
    Scenario("no backpressure (thread + unbounded queue.Queue)", no_backpressure),
    Scenario(
        "reactive_bp, consumer pulls with request(256)",
        pulled_by_demand(),
        bound=lambda settings: settings.batch,
    ),
    # Strategies: a producer that cannot wait, the same slow consumer.
    Scenario(
        "strategy: on_backpressure_buffer(256, DROP_OLDEST)",
        pushed_through(
            lambda flow, meter: flow.on_backpressure_buffer(
                256, OverflowStrategy.DROP_OLDEST, meter=meter
            )
        ),
        bound=lambda settings: 256 + settings.batch,
    ),
    Scenario(
        "strategy: sample(10 ms)",
        pushed_through(lambda flow, meter: flow.sample(0.01, meter=meter)),
        bound=lambda settings: 2 + settings.batch,
        note="sample passes at most one reading per 10 ms (100/s) by design: its delivered "
        "count is the rate it was given, not a slow consumer",
    ),
]


# -- harness ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """A finished scenario: its counters and the peak memory it allocated."""

    scenario: Scenario
    stats: Stats
    peak_memory: int  # bytes, tracemalloc peak above the starting point


def _progress_line(name: str, stats: Stats) -> str:
    return (
        f"  {name:<50} produced {stats.produced:>9,}  delivered {stats.delivered:>6,}  "
        f"dropped {stats.dropped:>9,}  queued {stats.queued:>7,}"
    )


# After Ctrl-C, how long the main thread waits for a scenario's threads to leave their loops
# (they notice `stop` within about 50 ms); whatever is left is a daemon and cannot block exit.
WIND_DOWN_S = 0.5


def run_scenario(scenario: Scenario, settings: Settings, live: bool) -> Outcome:
    """Run one scenario for ``settings.seconds``, showing progress, and measure its memory.

    Ctrl-C raises ``KeyboardInterrupt`` here, on the main thread; on the way out
    it sets the scenario's ``stop`` event and waits at most ``WIND_DOWN_S``.
    """
    stats = Stats()
    stop = threading.Event()
    # Set by the worker as it ends. The main thread waits on this rather than on
    # Thread.join/is_alive: on CPython 3.11 (at least) a join interrupted by Ctrl-C
    # marks a still-running thread as stopped, so neither can be trusted afterwards.
    finished = threading.Event()

    def work() -> None:
        try:
            scenario.run(settings, stats, stop)
        finally:
            finished.set()

    worker = threading.Thread(target=work, name=f"demo: {scenario.name}", daemon=True)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        worker.start()
        last_line = started
        while not finished.is_set():
            now = time.monotonic()
            if now - started >= settings.seconds:
                stop.set()
            if live:
                print("\r" + _progress_line(scenario.name, stats), end="", flush=True)
            elif now - last_line >= settings.progress_every:
                last_line = now
                print(_progress_line(scenario.name, stats), flush=True)
            finished.wait(0.1)
        worker.join()
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        # A no-op after a normal run; after Ctrl-C, this is what stops the threads.
        stop.set()
        finished.wait(WIND_DOWN_S)
        tracemalloc.stop()
    print(("\r" if live else "") + _progress_line(scenario.name, stats) + "  done", flush=True)
    return Outcome(scenario, stats, max(0, peak))


def _size(n_bytes: int) -> str:
    if n_bytes >= 1024 * 1024:
        return f"{n_bytes / (1024 * 1024):.1f} MiB"
    return f"{n_bytes / 1024:.1f} KiB"


def markdown_table(outcomes: Sequence[Outcome]) -> str:
    """Return the outcomes as a markdown table."""
    lines = [
        "| scenario | produced | delivered | dropped | peak queue | peak memory |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        s = o.stats
        lines.append(
            f"| {o.scenario.name} | {s.produced:,} | {s.delivered:,} | {s.dropped:,} "
            f"| {s.peak_queue:,} | {_size(o.peak_memory)} |"
        )
    return "\n".join(lines)


def verdict(outcomes: Sequence[Outcome]) -> str:
    """Return one line comparing the unbounded baseline (first row) with the bounded rows."""
    baseline = outcomes[0]
    pulled = [o for o in outcomes if o.scenario.bound is not None and o.stats.meter is None]
    lossy = [o for o in outcomes if o.stats.meter is not None]
    if not pulled:
        return "Verdict: no bounded scenario ran."
    parts = [
        f"Verdict: same producer, same slow consumer. Without backpressure "
        f"{baseline.stats.peak_queue:,} readings ({_size(baseline.peak_memory)}) piled up and "
        f"{baseline.stats.delivered:,} were delivered. Pulled by demand: at most "
        f"{max(o.stats.peak_queue for o in pulled):,} waiting "
        f"({_size(max(o.peak_memory for o in pulled))}), "
        f"{', '.join(f'{o.stats.delivered:,}' for o in pulled)} delivered, nothing lost."
    ]
    if lossy:
        each = "; ".join(
            f"{o.scenario.name.removeprefix('strategy: ')} delivered {o.stats.delivered:,} "
            f"and dropped {o.stats.dropped:,}"
            for o in lossy
        )
        parts.append(
            f" With a strategy: {each}; at most {max(o.stats.peak_queue for o in lossy):,} "
            f"waiting ({_size(max(o.peak_memory for o in lossy))})."
        )
    return "".join(parts)


def check_bounds(outcomes: Sequence[Outcome], settings: Settings) -> list[str]:
    """Return a message for every scenario whose peak queue exceeded its bound."""
    failures = []
    for o in outcomes:
        if o.scenario.bound is None:
            continue
        bound = o.scenario.bound(settings)
        if o.stats.peak_queue > bound:
            failures.append(f"{o.scenario.name}: peak queue {o.stats.peak_queue:,} > {bound:,}")
    return failures


MULTICAST_BUFFER = 64


class _HotSubscriber(BaseSubscriber[Reading]):
    """Takes one reading at a time, spending ``delay`` on each (0: as fast as it can)."""

    def __init__(self, delay: float) -> None:
        super().__init__(RequestPolicy.batch(1))
        self.delay = delay
        self.received = 0
        self.ended = threading.Event()
        self.error: Exception | None = None

    @override
    def hook_on_next(self, item: Reading) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.received += 1

    @override
    def hook_on_complete(self) -> None:
        self.ended.set()

    @override
    def hook_on_error(self, error: Exception) -> None:
        self.error = error
        self.ended.set()


@dataclass(frozen=True)
class HotOutcome:
    """One policy's run of the multicast scene."""

    policy: SlowSubscriberPolicy
    offered: int
    fast: tuple[int, int]  # received, missed
    slow: tuple[int, int, str]  # received, missed, how it ended
    peak_held: int


def multicast_run(policy: SlowSubscriberPolicy, seconds: float, delay: float) -> HotOutcome:
    """A producer thread offers readings for ``seconds``; two subscribers share them."""
    hub = MulticastProcessor[Reading](buffer_size=MULTICAST_BUFFER, policy=policy)
    fast, slow = _HotSubscriber(0.0), _HotSubscriber(delay)
    # Each subscriber on its own thread, as consumers are: the producer's thread
    # only hands readings over (publish_on holds at most 8 per subscriber).
    pool = ThreadPoolScheduler(2)
    hub.publish_on(pool, prefetch=8).subscribe(fast)
    hub.publish_on(pool, prefetch=8).subscribe(slow)
    offered = 0
    peak = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            result = hub.offer_blocking((offered, 0.0), timeout=0.05)
            if result is OfferResult.CLOSED:
                break
            if result is not OfferResult.FULL:
                offered += 1
            if offered % 64 == 0:
                stats = hub.subscriber_stats().values()
                peak = max(peak, max((s.buffered for s in stats), default=0))
            time.sleep(0)  # a real producer does some work between readings
        hub.complete()
        fast.ended.wait(10)
        slow.ended.wait(10)
    finally:
        pool.shutdown()
    ending = "completed" if slow.error is None else type(slow.error).__name__
    return HotOutcome(
        policy,
        offered,
        (fast.received, offered - fast.received),
        (slow.received, offered - slow.received, ending),
        peak,
    )


def multicast_scene(settings: Settings) -> list[str]:
    """Each policy for a quarter of a scenario's time; returns the table and any bound broken."""
    outcomes = [
        multicast_run(policy, settings.seconds / 4, settings.consumer_delay)
        for policy in SlowSubscriberPolicy
    ]
    print(
        f"A hot source shared by two subscribers (MulticastProcessor, buffer_size="
        f"{MULTICAST_BUFFER}): fast, and slow ({settings.consumer_delay * 1000:g} ms/reading)."
    )
    print()
    print(
        "| policy | offered | fast received | slow received | slow missed | slow ended "
        "| peak held (sampled) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for o in outcomes:
        print(
            f"| {o.policy.name} | {o.offered:,} | {o.fast[0]:,} | {o.slow[0]:,} | "
            f"{o.slow[1]:,} | {o.slow[2]} | {o.peak_held:,} |"
        )
    print()
    print(
        "WAIT paces the producer by the slow subscriber (nothing missed); DROP and LATEST "
        "let it run and the slow one misses readings; ERROR fails the slow one alone."
    )
    failures = []
    for o in outcomes:
        if o.peak_held > MULTICAST_BUFFER:
            failures.append(f"multicast {o.policy.name}: held {o.peak_held} > {MULTICAST_BUFFER}")
        if o.policy is SlowSubscriberPolicy.WAIT and (o.fast[1] or o.slow[1]):
            failures.append(f"multicast WAIT lost readings: {o}")
    return failures


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    """Run every scenario, print the table and verdict; return 1 if a bound was broken.

    Ctrl-C prints "interrupted" on stderr and returns ``EXIT_INTERRUPTED``.
    """
    live = sys.stdout.isatty()
    try:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
        parser.add_argument("--quick", action="store_true", help="about 2 s in total (for tests)")
        args = parser.parse_args(argv)
        return run_all(QUICK if args.quick else FULL, live)
    except KeyboardInterrupt:
        if live:
            print(flush=True)  # end the progress line that "\r" kept rewriting
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_all(settings: Settings, live: bool) -> int:
    """Run every scenario, print the table and verdict; return 1 if a bound was broken."""
    print(
        f"Fast producer, slow consumer ({settings.consumer_delay * 1000:g} ms per reading), "
        f"{settings.seconds:g} s per scenario.\n"
    )
    outcomes = [run_scenario(scenario, settings, live) for scenario in SCENARIOS]
    print()
    print(markdown_table(outcomes))
    print()
    for o in outcomes:
        notes = [*o.stats.notes, *([o.scenario.note] if o.scenario.note else [])]
        for note in notes:
            print(f"Note ({o.scenario.name}): {note}.")
    print(
        "delivered: readings the consumer finished (it spends "
        f"{settings.consumer_delay * 1000:g} ms on each; the producer releases the GIL after "
        f"{'each reading' if settings.yield_every == 1 else f'every {settings.yield_every}'}, "
        "so every consumer can run at that speed)."
    )
    print("dropped: readings a strategy discarded on purpose (counted by its meter).")
    print(
        "peak queue: readings made, not dropped, and not yet picked up by the consumer "
        "(for a strategy: what it held plus what it had delivered into the consumer's inbox)."
    )
    print("peak memory: tracemalloc peak during the scenario (Python allocations).")
    print()
    print(verdict(outcomes))
    print()
    failures = check_bounds(outcomes, settings) + multicast_scene(settings)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    status = main()
    # The run is over and printed: a late Ctrl-C must not turn its exit into a SIGINT death.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)
