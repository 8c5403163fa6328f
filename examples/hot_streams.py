"""One hot source, a fast and a slow subscriber, under each slow-subscriber policy.

A producer offers one reading per tick into a ``MulticastProcessor``; the
"dashboard" subscriber asks for one reading every tick, the "archiver" for one
every fourth tick. The run is a loop of ticks on one thread, so it is exact and
the same every time. Printed per policy and per subscriber: what it was offered
while subscribed (``offered``), what it received, what it missed, and how long the producer had
to wait (only ``WAIT`` makes it wait: there the slowest subscriber sets the pace).

Run: python examples/hot_streams.py
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reactive_bp import OfferResult, Subscription
from reactive_bp.processors import (
    MulticastProcessor,
    MulticastSubscription,
    SlowSubscriberPolicy,
)

READINGS = 200
BUFFER = 8


@dataclass
class Consumer:
    """A subscriber that asks for one reading every ``every`` ticks."""

    name: str
    every: int
    received: list[int] = field(default_factory=list)
    error: Exception | None = None
    done: bool = False
    subscription: Subscription | None = None

    def on_subscribe(self, subscription: Subscription) -> None:
        self.subscription = subscription

    def on_next(self, item: int) -> None:
        self.received.append(item)

    def on_error(self, error: Exception) -> None:
        self.error = error

    def on_complete(self) -> None:
        self.done = True

    def tick(self, now: int) -> None:
        if self.subscription is not None and now % self.every == 0:
            self.subscription.request(1)


@dataclass
class Result:
    policy: SlowSubscriberPolicy
    ticks: int
    producer_waited: int
    rows: list[tuple[str, int, int, int, str]]


def run(policy: SlowSubscriberPolicy) -> Result:
    dropped: dict[int, int] = {}

    def on_dropped(subscriber_id: int, item: int) -> None:
        dropped[subscriber_id] = dropped.get(subscriber_id, 0) + 1

    hub = MulticastProcessor[int](buffer_size=BUFFER, policy=policy, on_dropped=on_dropped)
    consumers = [Consumer("dashboard", every=1), Consumer("archiver", every=4)]
    for consumer in consumers:
        hub.subscribe(consumer)
    ids = {consumer.name: index for index, consumer in enumerate(consumers)}

    next_reading, waited, now = 0, 0, 0
    while not all(consumer.done or consumer.error for consumer in consumers):
        now += 1
        if next_reading < READINGS:
            if hub.offer(next_reading) is OfferResult.FULL:
                waited += 1  # WAIT: the buffer is full until the slowest asks
            else:
                next_reading += 1
            if next_reading == READINGS:
                hub.complete()
        for consumer in consumers:
            consumer.tick(now)
        if now > 100 * READINGS:
            raise RuntimeError("the run did not end")

    rows = []
    for consumer in consumers:
        ending = "completed" if consumer.done else type(consumer.error).__name__
        missed = dropped.get(ids[consumer.name], 0)
        subscription = consumer.subscription
        assert isinstance(subscription, MulticastSubscription)
        stats = subscription.stats  # its final counters, readable after it ended
        assert stats.delivered == len(consumer.received) and stats.dropped == missed
        rows.append((consumer.name, stats.produced, stats.delivered, stats.dropped, ending))
        # Nothing is ever delivered out of order, whatever the policy.
        assert consumer.received == sorted(consumer.received)
    return Result(policy, now, waited, rows)


def main() -> None:
    print(f"{READINGS} readings, one offered per tick; buffer_size={BUFFER}")
    print("dashboard asks for 1 reading every tick, archiver 1 every 4 ticks\n")
    print(
        f"{'policy':<7} {'subscriber':<10} {'offered':>7} {'received':>8} {'missed':>6}"
        f" {'ended':<20} {'ticks':>5} {'producer waited':>15}"
    )
    for policy in SlowSubscriberPolicy:
        result = run(policy)
        for index, (name, offered, received, missed, ending) in enumerate(result.rows):
            label = policy.name if index == 0 else ""
            extra = f" {result.ticks:>5} {result.producer_waited:>15}" if index == 0 else ""
            line = f"{label:<7} {name:<10} {offered:>7} {received:>8} {missed:>6} {ending:<20}"
            print((line + extra).rstrip())


if __name__ == "__main__":
    main()
