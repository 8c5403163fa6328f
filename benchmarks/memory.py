"""Memory: a fast producer, a deliberately slow consumer, with and without demand.

``N`` ints (default 2,000,000) come from a producer that could emit millions
per second; the consumer sleeps about 50 µs per item. Without backpressure
the difference piles up somewhere; with demand (``request(n)``) the producer is
pulled only as fast as the consumer asks.

Contenders (one fresh subprocess each, because ``ru_maxrss`` is a per-process,
never-decreasing peak):

* **reactivex** ``from_iterable(...).pipe(observe_on(ThreadPoolScheduler(1)))``:
  reactivex has no backpressure, so ``observe_on`` is an unbounded queue (a
  Python list) between the producer thread and the pool thread.
* **reactive_bp** with a slow ``BaseSubscriber`` and ``RequestPolicy.batch(256)``
  (and ``one_by_one()``): the source is pulled on the consumer's thread, only as
  far as the outstanding demand allows.

Every contender stops at a wall-clock budget (default 10 s) or an RSS cap
(default 2 GiB), whichever comes first, so a run cannot hurt the machine.

To add a contender (for instance reactive_bp's ``publish_on`` once it lands:
a thread hop whose queue is bounded by demand), write a ``_run_*(probe)``
function and add one line to ``CONTENDERS``.

Run: ``.venv/bin/python benchmarks/memory.py [--quick] [--budget S] [--n N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from _machine import machine_info, machine_summary
from typing_extensions import override

from reactive_bp import UNBOUNDED, BaseSubscriber, Flow, RequestPolicy, SignalType

try:
    import reactivex
    from reactivex import operators as rx_ops
    from reactivex.scheduler import ThreadPoolScheduler
except ImportError:  # reactivex is an optional extra ("reactive-bp[rx]")
    reactivex = None  # type: ignore[assignment]
    rx_ops = None  # type: ignore[assignment]
    ThreadPoolScheduler = None  # type: ignore[assignment,misc]

__all__ = ["CONTENDERS", "Contender", "Probe", "Sample", "main"]

_MIB = 1024 * 1024
_CHECK_EVERY = 1024  # the producer looks at the clock and RSS once per this many items


def _peak_rss_bytes() -> int:
    """This process's peak resident set size so far (monotonic)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class Probe:
    """Counters shared by the producer and the consumer of one contender.

    Each counter has one writer thread; the other thread only reads it, and
    int reads and writes are atomic under the GIL, so no lock is needed. A
    stale read can only make ``max_in_flight`` larger, never hide a backlog.
    """

    def __init__(self, n: int, budget_s: float, delay_s: float, max_rss_bytes: int) -> None:
        self.n = n
        self.delay_s = delay_s
        self.max_rss_bytes = max_rss_bytes
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.produced = 0  # written by the producer
        self.consumed = 0  # written by the consumer
        self.max_in_flight = 0  # produced but not yet consumed; written by the producer
        self.requested = 0  # total finite demand signalled upstream
        self.max_ahead: int | None = None  # demand not yet consumed; None: no demand signal
        self.ended_by = ""  # why the run stopped early, if it did

    def over_budget(self) -> bool:
        """Whether the wall-clock budget is spent (and record it as the reason to stop)."""
        if time.monotonic() >= self.deadline:
            self.ended_by = self.ended_by or "time budget"
            return True
        return False

    def source(self) -> Iterator[int]:
        """The fast producer: yields ``0..n-1``, stopping early at the budget or RSS cap."""
        for i in range(self.n):
            if i % _CHECK_EVERY == 0:
                if self.over_budget():
                    return
                if _peak_rss_bytes() > self.max_rss_bytes:
                    self.ended_by = self.ended_by or "RSS cap"
                    return
            self.produced = i + 1
            in_flight = self.produced - self.consumed
            if in_flight > self.max_in_flight:
                self.max_in_flight = in_flight
            yield i

    def consume(self, item: int) -> None:
        """The slow consumer: sleeps ``delay_s`` per item."""
        time.sleep(self.delay_s)
        self.consumed += 1

    def on_request(self, n: int) -> None:
        """Record a ``request(n)`` seen upstream (attach with ``do_on_request``)."""
        if n >= UNBOUNDED:
            self.requested = UNBOUNDED
        else:
            self.requested = min(UNBOUNDED, self.requested + n)
        ahead = self.requested - self.consumed
        if self.max_ahead is None or ahead > self.max_ahead:
            self.max_ahead = ahead


# -- contenders ---------------------------------------------------------------------------
# Each runs in its own process, on the main thread, and returns once the run is over:
# the stream completed, or the budget or RSS cap stopped it. Threads it leaves behind
# are killed by the worker's os._exit.


def _run_reactivex_observe_on(probe: Probe) -> None:
    # No backpressure: the producer pushes into observe_on's unbounded queue.
    assert reactivex is not None and rx_ops is not None and ThreadPoolScheduler is not None
    done = threading.Event()
    reactivex.from_iterable(probe.source()).pipe(
        rx_ops.observe_on(ThreadPoolScheduler(1))
    ).subscribe(probe.consume, lambda _error: done.set(), done.set)
    # subscribe() returns when the producer is done; the consumer may still be draining.
    if not done.wait(max(0.0, probe.deadline - time.monotonic())):
        probe.ended_by = probe.ended_by or "time budget"


class _SlowSubscriber(BaseSubscriber[int]):
    """Consumes slowly and cancels itself once the budget is spent."""

    def __init__(self, probe: Probe, policy: RequestPolicy) -> None:
        super().__init__(policy)
        self._probe = probe

    @override
    def hook_on_next(self, item: int) -> None:
        self._probe.consume(item)
        if self._probe.over_budget():
            self.cancel()


def _run_reactive_bp(policy: Callable[[], RequestPolicy]) -> Callable[[Probe], None]:
    def run(probe: Probe) -> None:
        # The source is pulled on this thread, only against outstanding demand.
        Flow.from_iterable(probe.source()).do_on_request(probe.on_request).subscribe(
            _SlowSubscriber(probe, policy())
        )

    return run


def _run_reactive_bp_publish_on(probe: Probe) -> None:
    # A real thread hop, like observe_on, but the queue between the threads is
    # bounded by demand: prefetch 256, replenished at 75%.
    from reactive_bp.schedulers import ThreadPoolScheduler as RbpPool

    done = threading.Event()

    class Consumer(_SlowSubscriber):
        @override
        def hook_finally(self, signal: SignalType) -> None:
            done.set()

    with RbpPool(1) as pool:
        Flow.from_iterable(probe.source()).do_on_request(probe.on_request).publish_on(
            pool, prefetch=256
        ).subscribe(Consumer(probe, RequestPolicy.batch(256)))
        done.wait()


def _run_asyncio_queue(probe: Probe) -> None:
    # The asyncio answer: a bounded asyncio.Queue between a producer task and a
    # consumer task (no operators, no demand accounting beyond the queue size).
    import asyncio

    async def main() -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=256)

        async def produce() -> None:
            for item in probe.source():
                await queue.put(item)
            await queue.put(None)

        async def consume() -> None:
            while (item := await queue.get()) is not None:
                probe.consume(item)
                if probe.over_budget():
                    return

        producer = asyncio.create_task(produce())
        await consume()
        producer.cancel()

    asyncio.run(main())


@dataclass(frozen=True)
class Contender:
    """One row of the table.

    Attributes:
        key: Short id, used by ``--only`` and to start the worker process.
        label: The row label.
        demand: How the consumer asks for items.
        run: Runs the contender against a probe until done, budget or RSS cap.
        available: Whether its libraries are installed.
    """

    key: str
    label: str
    demand: str
    run: Callable[[Probe], None]
    available: bool = True


CONTENDERS: list[Contender] = [
    Contender(
        "reactivex-observe-on",
        "reactivex from_iterable.pipe(observe_on(ThreadPoolScheduler(1)))",
        "none (unbounded queue)",
        _run_reactivex_observe_on,
        available=reactivex is not None,
    ),
    Contender(
        "rbp-batch-256",
        "reactive_bp from_iterable, slow BaseSubscriber",
        "batch(256)",
        _run_reactive_bp(lambda: RequestPolicy.batch(256)),
    ),
    Contender(
        "rbp-one-by-one",
        "reactive_bp from_iterable, slow BaseSubscriber",
        "one_by_one()",
        _run_reactive_bp(RequestPolicy.one_by_one),
    ),
    Contender(
        "rbp-publish-on",
        "reactive_bp from_iterable.publish_on(ThreadPoolScheduler(1)), slow subscriber",
        "prefetch 256, batch(256)",
        _run_reactive_bp_publish_on,
    ),
    Contender(
        "asyncio-queue",
        "asyncio producer task -> Queue(maxsize=256) -> slow consumer task",
        "bounded queue (put waits)",
        _run_asyncio_queue,
    ),
]


# -- worker (one contender, one process) -----------------------------------------------------


@dataclass
class Sample:
    """What one worker process measured."""

    key: str
    n: int
    produced: int
    consumed: int
    max_in_flight: int
    max_ahead: int | None
    rss_start_bytes: int
    rss_peak_bytes: int
    seconds: float
    ended_by: str


def _worker(contender: Contender, n: int, budget_s: float, delay_s: float, max_rss: int) -> None:
    """Run ``contender`` and print a ``Sample`` as one JSON line; never returns."""
    rss_start = _peak_rss_bytes()  # after imports: both libraries are loaded in every worker
    probe = Probe(n, budget_s, delay_s, max_rss)
    contender.run(probe)
    ended_by = "completed" if probe.consumed == n else (probe.ended_by or "stopped")
    sample = Sample(
        key=contender.key,
        n=n,
        produced=probe.produced,
        consumed=probe.consumed,
        max_in_flight=probe.max_in_flight,
        max_ahead=probe.max_ahead,
        rss_start_bytes=rss_start,
        rss_peak_bytes=_peak_rss_bytes(),
        seconds=time.monotonic() - probe.started,
        ended_by=ended_by,
    )
    sys.stdout.write(json.dumps(asdict(sample)) + "\n")
    sys.stdout.flush()
    # Skip interpreter shutdown: it would join pool threads still draining a backlog.
    os._exit(0)


# -- parent ---------------------------------------------------------------------------------


def _spawn(contender: Contender, args: argparse.Namespace) -> Sample:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        contender.key,
        "--n",
        str(args.n),
        "--budget",
        str(args.budget),
        "--delay-us",
        str(args.delay_us),
        "--max-rss-mb",
        str(args.max_rss_mb),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=args.budget + 60, check=False
    )
    if completed.returncode != 0 or not completed.stdout.strip():
        raise SystemExit(
            f"{contender.key}: worker failed (exit {completed.returncode})\n{completed.stderr}"
        )
    data = json.loads(completed.stdout.strip().splitlines()[-1])
    return Sample(**data)


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / _MIB:,.1f}"


def markdown_table(rows: Sequence[tuple[Contender, Sample]]) -> str:
    """Return the samples as a markdown table, ready to paste into the README."""
    lines = [
        "| pipeline | demand | produced | consumed | max in flight | max demand ahead "
        "| RSS start MiB | RSS peak MiB | growth MiB | ended by | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for contender, s in rows:
        ahead = "n/a (no demand)" if s.max_ahead is None else f"{s.max_ahead:,}"
        lines.append(
            f"| {contender.label} | {contender.demand} | {s.produced:,} | {s.consumed:,} "
            f"| {s.max_in_flight:,} | {ahead} | {_mib(s.rss_start_bytes)} "
            f"| {_mib(s.rss_peak_bytes)} | {_mib(s.rss_peak_bytes - s.rss_start_bytes)} "
            f"| {s.ended_by} | {s.seconds:.1f} |"
        )
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, help="items to produce (default 2M; 200k with --quick)")
    parser.add_argument(
        "--budget", type=float, help="wall-clock seconds per contender (default 10; 2 with --quick)"
    )
    parser.add_argument(
        "--delay-us", type=float, default=50.0, help="consumer sleep per item, µs (default 50)"
    )
    parser.add_argument(
        "--max-rss-mb", type=int, default=2048, help="stop a producer past this RSS (default 2048)"
    )
    parser.add_argument("--quick", action="store_true", help="small N and a 2 s budget")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--only",
        action="append",
        metavar="KEY",
        help="run only these contenders (repeatable): " + ", ".join(c.key for c in CONTENDERS),
    )
    parser.add_argument("--worker", metavar="KEY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 200_000 if args.quick else 2_000_000
    if args.budget is None:
        args.budget = 2.0 if args.quick else 10.0
    if args.n < 1 or args.budget <= 0 or args.delay_us < 0 or args.max_rss_mb < 1:
        parser.error("--n, --budget and --max-rss-mb must be positive, --delay-us not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every contender in its own process and print the table; return the exit status."""
    args = _parse_args(argv)
    by_key = {c.key: c for c in CONTENDERS}
    if args.worker is not None:
        _worker(
            by_key[args.worker], args.n, args.budget, args.delay_us / 1e6, args.max_rss_mb * _MIB
        )
    selected = [c for c in CONTENDERS if not args.only or c.key in args.only]
    unknown = set(args.only or ()) - set(by_key)
    if unknown:
        raise SystemExit(f"unknown contender(s): {', '.join(sorted(unknown))}")
    print(
        f"# Memory: fast producer of {args.n:,} ints, consumer sleeping {args.delay_us:g} µs/item"
    )
    print(machine_summary())
    print(
        f"Each contender runs in a fresh process, for at most {args.budget:g} s "
        f"or {args.max_rss_mb:,} MiB RSS."
    )
    print(flush=True)
    rows: list[tuple[Contender, Sample]] = []
    for contender in selected:
        if not contender.available:
            print(f"  {contender.key}: skipped (library not installed)", file=sys.stderr)
            continue
        print(f"  running {contender.key} ...", file=sys.stderr, flush=True)
        rows.append((contender, _spawn(contender, args)))
    print(markdown_table(rows))
    print()
    print(
        "max in flight: items produced but not yet consumed. max demand ahead: items requested "
        "but not yet consumed (reactivex has no demand signal, so nothing bounds its queue)."
    )
    if args.json is not None:
        payload = {
            "benchmark": "fast producer, slow consumer",
            "n": args.n,
            "budget_s": args.budget,
            "delay_us": args.delay_us,
            "machine": machine_info(),
            "results": [{"pipeline": c.label, "demand": c.demand, **asdict(s)} for c, s in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
