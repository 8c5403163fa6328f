# supports: --quick
"""Every backpressure strategy on the same bursty producer and the same slow consumer.

The producer sends bursts (30 readings in 0.15 s, every 2 s: 15 readings/s on
average); the consumer takes one reading at a time, at most 10 readings/s: every
0.1 s, if the reading it asked for has arrived, it asks for the next one
(``request(1)``), so an idle consumer never piles up demand. Each strategy
answers "what happens to the readings the consumer cannot take yet?"
differently. The run is in virtual time (``VirtualTimeScheduler``), so it is
exact and instant; the operators are the real ones. The table shows what each
strategy's ``BackpressureMeter`` counted; ``scripts/plot_strategies.py`` draws
the same runs over time into ``docs/img/``, with what became of each reading.

Run ``python examples/strategies.py`` (20 virtual seconds) or ``--quick`` (6).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reactive_bp import BackpressureMeter, BufferStats, Flow, OverflowStrategy
from reactive_bp.schedulers import VirtualTimeScheduler
from reactive_bp.testing import TestPublisher, TestSubscriber

# (producer's flow, clock, meter, on_dropped) -> the strategy applied to the flow
Shape = Callable[
    [Flow[int], VirtualTimeScheduler, BackpressureMeter, Callable[[int], object]], Flow[object]
]

TICK = 0.05  # seconds between producer/consumer steps
BURST_EVERY = 2.0  # seconds
BURST_SIZE = 30  # readings per burst, spread over three ticks
CONSUME_EVERY = 0.1  # the consumer asks for its next reading at most this often


@dataclass(frozen=True)
class Strategy:
    """One row: a name, what the data means, and the operator.

    ``items`` marks a strategy that delivers the producer's readings themselves
    and reports each one it drops to ``on_dropped``: ``simulate`` then records
    what became of every reading (its ``fates``).
    """

    name: str
    meaning: str
    shape: Shape
    items: bool = False


STRATEGIES: list[Strategy] = [
    Strategy(
        "on_backpressure_buffer(20, DROP_OLDEST)",
        "every reading matters, recent ones most",
        lambda f, s, m, d: f.on_backpressure_buffer(20, OverflowStrategy.DROP_OLDEST, d, meter=m),
        items=True,
    ),
    Strategy(
        "on_backpressure_buffer(20, DROP_NEWEST)",
        "first come, first served",
        lambda f, s, m, d: f.on_backpressure_buffer(20, OverflowStrategy.DROP_NEWEST, d, meter=m),
        items=True,
    ),
    Strategy(
        "on_backpressure_buffer(20, ttl=1.0)",
        "a reading is useless after 1 s",
        lambda f, s, m, d: f.on_backpressure_buffer(
            20, OverflowStrategy.DROP_OLDEST, d, ttl=1.0, scheduler=s, meter=m
        ),
        items=True,
    ),
    Strategy(
        "on_backpressure_drop()",
        "only live readings matter",
        lambda f, s, m, d: f.on_backpressure_drop(d, meter=m),
        items=True,
    ),
    Strategy(
        "on_backpressure_latest()",
        "the current state is all that matters",
        lambda f, s, m, d: f.on_backpressure_latest(d, meter=m),
        items=True,
    ),
    Strategy(
        "on_backpressure_reduce(sum)",
        "readings add up (counts, totals)",
        lambda f, s, m, d: f.on_backpressure_reduce(lambda a, b: a + b, meter=m),
    ),
    Strategy(
        "sample(0.5)",
        "a steady refresh rate (dashboards)",
        lambda f, s, m, d: f.sample(0.5, scheduler=s, meter=m),
        items=True,
    ),
    Strategy(
        "throttle_first(0.5)",
        "react to the first event, ignore repeats",
        lambda f, s, m, d: f.throttle_first(0.5, s, meter=m),
        items=True,
    ),
    Strategy(
        "debounce(0.3)",
        "only the settled value matters (search box)",
        lambda f, s, m, d: f.debounce(0.3, s, meter=m),
        items=True,
    ),
    Strategy(
        "throttle(10, per=1.0, burst=5)",
        "lossless, but at a fixed rate (API quotas)",
        lambda f, s, m, d: f.throttle(10, 1.0, 5, scheduler=s, meter=m),
    ),
    Strategy(
        "buffer_timeout(10, 0.5)",
        "lossless batches for bulk writes",
        lambda f, s, m, d: f.buffer_timeout(10, 0.5, s, meter=m),
    ),
    Strategy(
        "sample_adaptive(1.0, 0.1, 0.5, 20)",
        "a representative share (logs, traces)",
        lambda f, s, m, d: f.sample_adaptive(1.0, 0.1, 0.5, 20, random.Random(42), meter=m),
        items=True,
    ),
]


@dataclass
class Timeline:
    """What one strategy did, sampled at every tick.

    The lists hold one value per tick (at ``times``); ``offered``, ``delivered``,
    ``dropped`` and ``held_back`` are cumulative, ``depth`` is what the operator
    held at that moment. ``fates`` (only for a strategy with ``items``) maps each
    reading the producer sent to ``"delivered"``, ``"held"`` (still in the
    operator when the run ended) or the reason it was dropped (``"drop_oldest"``,
    ``"ttl"``, ...), as the operator's meter counted it.
    """

    name: str
    times: list[float] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    held_back: list[int] = field(default_factory=list)
    produced: int = 0
    not_sent: int = 0  # readings the producer held back because nobody asked (lossless shaping)
    peak_depth: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    fates: dict[int, str] = field(default_factory=dict)


class _Fates:
    """Records each dropped reading with the reason the meter counted for it.

    The operator counts a drop under its reason before it calls ``on_dropped``
    (a ttl sweep counts all the readings it expires, then calls back once per
    reading), so the reason of a callback is the one whose count is ahead of
    the readings attributed to it so far.
    """

    def __init__(self, meter: BackpressureMeter) -> None:
        self.meter = meter
        self.fates: dict[int, str] = {}
        self._attributed: dict[str, int] = {}

    def on_dropped(self, item: int) -> None:
        stats = self.meter.stats
        assert stats is not None
        reason = next(
            (
                reason
                for reason, count in sorted(stats.dropped_by_reason.items())
                if count > self._attributed.get(reason, 0)
            ),
            "dropped",
        )
        self._attributed[reason] = self._attributed.get(reason, 0) + 1
        self.fates[item] = reason


def _settle_fates(
    sent: int, delivered: Sequence[object], reported: dict[int, str], stats: BufferStats
) -> dict[int, str]:
    """What became of each of the ``sent`` readings, checked against the meter's counts.

    Delivered readings are the consumer's items; dropped ones are those reported
    to ``on_dropped`` (with their reason). The rest are still held (the newest
    ``stats.depth`` of them: every strategy here holds the readings that came
    last) or were dropped by an operator without ``on_dropped``, under the one
    reason the meter has not accounted for yet.
    """
    fates = dict(reported)
    fates.update(dict.fromkeys((x for x in delivered if isinstance(x, int)), "delivered"))
    rest = [i for i in range(sent) if i not in fates]
    held = rest[len(rest) - stats.depth :] if stats.depth else []
    fates.update(dict.fromkeys(held, "held"))
    unattributed = rest[: len(rest) - len(held)]
    if unattributed:
        counted = Counter(fates.values())
        open_reasons = [
            reason
            for reason, count in stats.dropped_by_reason.items()
            if count > counted[reason] and reason != "cancelled"
        ]
        assert len(open_reasons) == 1, f"cannot attribute {len(unattributed)} drops: {stats}"
        fates.update(dict.fromkeys(unattributed, open_reasons[0]))
    # Every reading is accounted for exactly as the meter counted it.
    counted = Counter(fates.values())
    assert counted["delivered"] == stats.delivered, (counted, stats)
    assert counted["held"] == stats.depth, (counted, stats)
    for reason, count in stats.dropped_by_reason.items():
        assert counted[reason] == count, (reason, counted, stats)
    return {i: fates[i] for i in range(sent)}


def simulate(strategy: Strategy, seconds: float) -> Timeline:
    """Run ``strategy`` against the bursty producer for ``seconds`` of virtual time."""
    vts = VirtualTimeScheduler()
    meter = BackpressureMeter(strategy.name)
    fates = _Fates(meter)
    upstream: TestPublisher[int] = TestPublisher(strict=False)
    consumer: TestSubscriber[object] = TestSubscriber()
    strategy.shape(upstream, vts, meter, fates.on_dropped).subscribe(consumer)
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
        # The consumer takes one reading at a time: it asks for the next one (at its pace)
        # only once the previous one has arrived, so an idle consumer does not pile up demand.
        if step % per_consume == 0 and len(consumer.items) == consumer.requested:
            consumer.request(1)
        vts.advance_by(TICK)
        stats = meter.stats
        assert stats is not None
        timeline.times.append(vts.now())
        timeline.depth.append(stats.depth)
        timeline.offered.append(sent + timeline.not_sent)
        timeline.delivered.append(stats.delivered)
        timeline.dropped.append(stats.dropped)
        timeline.held_back.append(timeline.not_sent)
    stats = meter.stats
    assert stats is not None
    timeline.produced = stats.produced
    timeline.peak_depth = stats.peak_depth
    if strategy.items:
        timeline.fates = _settle_fates(sent, consumer.items, fates.fates, stats)
    consumer.cancel()
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
        f"Bursty producer ({BURST_SIZE} readings every {BURST_EVERY:g} s), consumer taking "
        f"one reading at a time, at most {1 / CONSUME_EVERY:g}/s, {seconds:g} virtual seconds.\n"
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
