"""A thread producer that cannot be told to slow down by itself, held back by WAIT."""

# supports: --quick

from __future__ import annotations

import sys
import threading
import time

from reactive_bp import Emitter, Flow, OverflowStrategy


def sensor_thread(emitter: Emitter[int], count: int) -> None:
    """Pushes readings as fast as it can; ``emit`` blocks while the buffer is full."""

    def run() -> None:
        for reading in range(count):
            if emitter.is_cancelled:
                return
            emitter.emit(reading)
        emitter.complete()

    threading.Thread(target=run, name="sensor", daemon=True).start()


def main(quick: bool) -> None:
    count = 2_000 if quick else 20_000
    emitters: list[Emitter[int]] = []

    def producer(emitter: Emitter[int]) -> None:
        emitters.append(emitter)
        sensor_thread(emitter, count)

    flow = Flow.create(producer, capacity=64, overflow=OverflowStrategy.WAIT)
    total = 0
    for reading in flow.blocking_iter(prefetch=16):  # a consumer thread that pulls
        total += reading
        if reading % 500 == 0:
            time.sleep(0.001)  # the consumer is the slow side
    stats = emitters[0].stats
    print(f"consumed {count} readings, sum {total}")
    print(f"buffer: peak depth {stats.peak_depth} of 64, dropped {stats.dropped}")
    assert total == count * (count - 1) // 2 and stats.dropped == 0 and stats.peak_depth <= 64


if __name__ == "__main__":
    main("--quick" in sys.argv)
