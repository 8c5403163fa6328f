# supports: --quick
"""Every backpressure strategy on the same bursty producer and the same slow consumer.

The producer sends bursts (30 readings in 0.15 s, every 2 s: 15 readings/s on
average); the consumer takes 10 readings/s, one ``request(1)`` every 0.1 s.
Each strategy answers "what happens to the readings the consumer cannot take
yet?" differently. The run is in virtual time (``VirtualTimeScheduler``), so it
is exact and instant; the operators are the real ones. The table shows what
each strategy's ``BackpressureMeter`` counted; ``scripts/plot_strategies.py``
draws the same runs over time into ``docs/img/``.

Run ``python examples/strategies.py`` (20 virtual seconds) or ``--quick`` (6).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reactive_bp import BackpressureMeter, Flow, OverflowStrategy
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber

Shape = Callable[[Flow[int], VirtualTimeScheduler, BackpressureMeter], Flow[object]]

TICK = 0.05  # seconds between producer/consumer steps
BURST_EVERY = 2.0  # seconds
BURST_SIZE = 30  # readings per burst, spread over three ticks
CONSUME_EVERY = 0.1  # seconds per reading taken by the consumer


@dataclass(frozen=True)
class Strategy:
    """One row: a name, what the data means, and the operator."""

    name: str
    meaning: str
    shape: Shape


STRATEGIES: list[Strategy] = [
    Strategy(
        "on_backpressure_buffer(20, DROP_OLDEST)",
        "every reading matters, recent ones most",
        lambda f, s, m: f.on_backpressure_buffer(20, OverflowStrategy.DROP_OLDEST, meter=m),
    ),
    Strategy(
        "on_backpressure_buffer(20, DROP_NEWEST)",
        "first come, first served",
        lambda f, s, m: f.on_backpressure_buffer(20, OverflowStrategy.DROP_NEWEST, meter=m),
    ),
    Strategy(
        "on_backpressure_buffer(20, ttl=1.0)",
        "a reading is useless after 1 s",
        lambda f, s, m: f.on_backpressure_buffer(
            20, OverflowStrategy.DROP_OLDEST, ttl=1.0, scheduler=s, meter=m
        ),
    ),
    Strategy(
        "on_backpressure_drop()",
        "only live readings matter",
        lambda f, s, m: f.on_backpressure_drop(meter=m),
    ),
    Strategy(
        "on_backpressure_latest()",
        "the current state is all that matters",
        lambda f, s, m: f.on_backpressure_latest(meter=m),
    ),
    Strategy(
        "on_backpressure_reduce(sum)",
        "readings add up (counts, totals)",
        lambda f, s, m: f.on_backpressure_reduce(lambda a, b: a + b, meter=m),
    ),
    Strategy(
        "sample(0.5)",
        "a steady refresh rate (dashboards)",
        lambda f, s, m: f.sample(0.5, scheduler=s, meter=m),
    ),
    Strategy(
        "throttle_first(0.5)",
        "react to the first event, ignore repeats",
        lambda f, s, m: f.throttle_first(0.5, s, meter=m),
    ),
    Strategy(
        "debounce(0.3)",
        "only the settled value matters (search box)",
        lambda f, s, m: f.debounce(0.3, s, meter=m),
    ),
    Strategy(
        "throttle(10, per=1.0, burst=5)",
        "lossless, but at a fixed rate (API quotas)",
        lambda f, s, m: f.throttle(10, 1.0, 5, scheduler=s, meter=m),
    ),
    Strategy(
        "buffer_timeout(10, 0.5)",
        "lossless batches for bulk writes",
        lambda f, s, m: f.buffer_timeout(10, 0.5, s, meter=m),
    ),
    Strategy(
        "sample_adaptive(1.0, 0.1, 0.5, 20)",
        "a representative share (logs, traces)",
        lambda f, s, m: f.sample_adaptive(1.0, 0.1, 0.5, 20, random.Random(42), meter=m),
    ),
]


@dataclass
class Timeline:
    """What one strategy did, sampled at every tick."""

    name: str
    times: list[float] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    produced: int = 0
    not_sent: int = 0  # readings the producer held back because nobody asked (lossless shaping)
    peak_depth: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def simulate(strategy: Strategy, seconds: float) -> Timeline:
    """Run ``strategy`` against the bursty producer for ``seconds`` of virtual time."""
    vts = VirtualTimeScheduler()
    meter = BackpressureMeter(strategy.name)
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    consumer: TestSubscriber[object] = TestSubscriber()
    strategy.shape(upstream, vts, meter).subscribe(consumer)
    timeline = Timeline(strategy.name)
    steps = round(seconds / TICK)
    per_consume = round(CONSUME_EVERY / TICK)
    per_burst = round(BURST_EVERY / TICK)
    sent = 0
    for step in range(steps):
        if step % per_burst < 3:  # a burst: three ticks of 10
            count = BURST_SIZE // 3
            allowed = min(count, upstream.outstanding)
            upstream.send_next(*range(sent, sent + allowed))
            sent += allowed
            timeline.not_sent += count - allowed
        if step % per_consume == 0:
            consumer.request(1)
        vts.advance_by(TICK)
        stats = meter.stats
        assert stats is not None
        timeline.times.append(vts.now())
        timeline.depth.append(stats.depth)
        timeline.delivered.append(stats.delivered)
        timeline.dropped.append(stats.dropped)
    consumer.cancel()
    stats = meter.stats
    assert stats is not None
    timeline.produced = stats.produced
    timeline.peak_depth = stats.peak_depth
    timeline.reasons = {k: v for k, v in stats.dropped_by_reason.items() if k != "cancelled"}
    return timeline


def table(timelines: Sequence[Timeline]) -> str:
    """The runs as a markdown table."""
    lines = [
        "| strategy | produced | delivered | dropped (by reason) | held back | peak depth |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for t in timelines:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(t.reasons.items())) or "-"
        lines.append(
            f"| {t.name} | {t.produced} | {t.delivered[-1]} | {reasons} | {t.not_sent} "
            f"| {t.peak_depth} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every strategy and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="6 virtual seconds instead of 20")
    args = parser.parse_args(argv)
    seconds = 6.0 if args.quick else 20.0
    print(
        f"Bursty producer ({BURST_SIZE} readings every {BURST_EVERY:g} s), consumer "
        f"{1 / CONSUME_EVERY:g} readings/s, {seconds:g} virtual seconds.\n"
    )
    timelines = [simulate(strategy, seconds) for strategy in STRATEGIES]
    print(table(timelines))
    print(
        "\nheld back: readings a lossless, demand-driven strategy never asked for "
        "(they stay with the producer)."
    )
    for t in timelines:
        bound = 40  # every strategy above declares a bound of at most 20 (+1 batch)
        if t.peak_depth > bound:
            print(f"FAILED: {t.name} held {t.peak_depth} > {bound}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
