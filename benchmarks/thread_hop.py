"""Throughput across a thread hop: producer on one thread, consumer on another.

``N`` ints (default 200,000) cross from a producer thread to a consumer that
sums them as fast as it can. Contenders, all in one process, interleaved, the
median of ``--repeat`` rounds after a warm-up:

* reactivex ``from_iterable(...).pipe(observe_on(ThreadPoolScheduler(1)))``:
  no backpressure, an unbounded list as the queue;
* reactive_bp ``from_iterable(...).publish_on(ThreadPoolScheduler(1), 256)``
  with a ``batch(256)`` subscriber: the queue is bounded by demand;
* an asyncio pipeline: a producer task and a consumer task around
  ``asyncio.Queue(maxsize=256)`` (one thread, cooperative);
* two threads around ``queue.Queue(maxsize=256)``: the hand-written baseline.

Run: ``.venv/bin/python benchmarks/thread_hop.py [--n N] [--repeat R]`` (part of
``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence

from _machine import machine_summary

from reactive_bp import Flow, RequestPolicy
from reactive_bp.schedulers import ThreadPoolScheduler

try:
    import reactivex
    from reactivex import operators as rx_ops
    from reactivex.scheduler import ThreadPoolScheduler as RxPool
except ImportError:  # reactivex is an optional extra ("reactive-bp[rx]")
    reactivex = None  # type: ignore[assignment]


def _reactive_bp(n: int) -> int:
    total = 0
    done = threading.Event()

    def add(item: int) -> None:
        nonlocal total
        total += item

    with ThreadPoolScheduler(1) as pool:
        Flow.from_iterable(range(n)).publish_on(pool, prefetch=256).subscribe_with(
            add, on_complete=done.set, request=RequestPolicy.batch(256)
        )
        done.wait()
    return total


def _reactivex(n: int) -> int:
    total = 0
    done = threading.Event()

    def add(item: int) -> None:
        nonlocal total
        total += item

    pool = RxPool(1)
    reactivex.from_iterable(range(n)).pipe(rx_ops.observe_on(pool)).subscribe(
        add, on_completed=done.set
    )
    done.wait()
    pool.executor.shutdown()
    return total


def _asyncio_queue(n: int) -> int:
    async def main() -> int:
        channel: asyncio.Queue[int | None] = asyncio.Queue(maxsize=256)

        async def produce() -> None:
            for item in range(n):
                await channel.put(item)
            await channel.put(None)

        producer = asyncio.create_task(produce())
        total = 0
        while (item := await channel.get()) is not None:
            total += item
        await producer
        return total

    return asyncio.run(main())


def _thread_queue(n: int) -> int:
    channel: queue.Queue[int | None] = queue.Queue(maxsize=256)

    def produce() -> None:
        for item in range(n):
            channel.put(item)
        channel.put(None)

    producer = threading.Thread(target=produce)
    producer.start()
    total = 0
    while (item := channel.get()) is not None:
        total += item
    producer.join()
    return total


CONTENDERS: list[tuple[str, str, Callable[[int], int]]] = [
    ("reactivex observe_on(ThreadPoolScheduler(1))", "none (unbounded list)", _reactivex),
    (
        "reactive_bp publish_on(ThreadPoolScheduler(1), 256)",
        "prefetch 256, batch(256)",
        _reactive_bp,
    ),
    ("asyncio tasks + Queue(maxsize=256)", "bounded queue", _asyncio_queue),
    ("threads + queue.Queue(maxsize=256)", "bounded queue", _thread_queue),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    contenders = [c for c in CONTENDERS if reactivex is not None or c[2] is not _reactivex]
    expected = args.n * (args.n - 1) // 2
    times: dict[str, list[float]] = {label: [] for label, _, _ in contenders}
    for _, _, run in contenders:  # warm-up, and a correctness check
        assert run(min(args.n, 1000)) == min(args.n, 1000) * (min(args.n, 1000) - 1) // 2
    for round_ in range(args.repeat):
        order = contenders[round_ % len(contenders) :] + contenders[: round_ % len(contenders)]
        for label, _, run in order:
            start = time.perf_counter()
            assert run(args.n) == expected, label
            times[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(values) for label, values in times.items()}
    baseline = medians.get(contenders[0][0])
    print(f"# Thread hop: {args.n:,} ints, producer thread -> consumer, summed")
    print(machine_summary())
    print(f"Median of {args.repeat} interleaved rounds after a warm-up.\n")
    print("| pipeline | demand | median s | items/s | vs reactivex |")
    print("|---|---|---:|---:|---:|")
    for label, demand, _ in contenders:
        seconds = medians[label]
        ratio = f"{baseline / seconds:.2f}x" if baseline else "n/a"
        print(f"| {label} | {demand} | {seconds:.3f} | {args.n / seconds:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
