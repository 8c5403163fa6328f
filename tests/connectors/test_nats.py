"""NATS JetStream connector against a real nats-server (the session's ``nats_server``).

What each test shows, and the broken connector it would catch, is in its docstring.
Every test makes its own stream (unique names), so they share the session server
without seeing each other, and deletes it at the end. Waits for the broker are
polls of a condition with a deadline; the few fixed windows are "nothing more
happens" windows (as the TCK's no-signals timeout), never what a result depends on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats as nats_client
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerInfo, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError

from reactive_bp import Flow, NonPositiveRequestError
from reactive_bp.abc import Publisher
from reactive_bp.connectors import (
    AckMode,
    AlreadySettledError,
    Message,
    PublishError,
    Settlement,
)
from reactive_bp.connectors import nats as jetstream
from reactive_bp.testing import TestSubscriber
from reactive_bp.testing.servers import LoopbackServer, NatsServer, ServerUnavailable
from spec_tck import PublisherVerification, TestEnvironment

pytestmark = pytest.mark.no_undeliverable

R = TypeVar("R")
HERE = Path(__file__).resolve().parent
UNBOUNDED = 2**63 - 1
# The "nothing more happens" window: long enough for a fetch the connector should
# not make to reach the server and come back (loopback: well under a millisecond).
QUIET_S = 0.3


# -- helpers ---------------------------------------------------------------------------------


def run(main: Callable[[], Awaitable[R]], timeout: float = 30.0) -> R:
    """Run ``main()`` on a fresh event loop, bounded in time."""

    async def bounded() -> R:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


async def until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


def names() -> tuple[str, str]:
    """A unique stream name and the subject it stores."""
    name = f"T{uuid.uuid4().hex[:12]}"
    return name, f"{name}.data"


@contextlib.asynccontextmanager
async def admin(
    url: str, stream: str, subject: str
) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A raw client and a fresh stream for ``subject`` (deleted afterwards)."""
    nc = await nats_client.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])
    try:
        yield nc, js
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


async def backlog(nc: Client, js: JetStreamContext, stream: str, subject: str, n: int) -> None:
    """Publish ids ``0..n-1`` with the raw client in pipelined batches, wait until stored."""
    publish = nc.publish
    for start in range(0, n, 5000):
        for i in range(start, min(n, start + 5000)):
            await publish(subject, b"%d" % i)
        await nc.flush()
    stored = 0

    async def count() -> int:
        info = await js.stream_info(stream)
        return int(info.state.messages)

    deadline = time.monotonic() + 20
    while (stored := await count()) < n:
        assert time.monotonic() < deadline, f"only {stored} of {n} stored"
        await asyncio.sleep(0.02)
    assert stored == n


async def consumer(js: JetStreamContext, stream: str, durable: str) -> ConsumerInfo:
    info: ConsumerInfo = await js.consumer_info(stream, durable)
    return info


def acked_through(info: ConsumerInfo) -> int:
    """The stream sequence up to which everything is acknowledged."""
    assert info.ack_floor is not None
    return info.ack_floor.stream_seq


def ids(messages: list[Message[int]]) -> list[int]:
    return [message.value for message in messages]


def more_than(items: list[Message[int]], n: int) -> Callable[[], bool]:
    """A condition: more than ``n`` items arrived."""
    return lambda: len(items) > n


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# -- demand is the broker's flow control ------------------------------------------------------


def test_no_fetch_without_demand_then_exactly_the_requested_are_outstanding(
    nats_server: LoopbackServer,
) -> None:
    """Over a 100,000-message backlog: nothing is fetched (not even a consumer made) before
    demand; request(5) makes the broker show exactly 5 delivered-unacked and the rest
    pending; with demand back at 0 nothing more moves. A source that prefetches, or
    fetches max_batch regardless of demand, fails the broker-side counts."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            await backlog(nc, js, stream, subject, 100_000)
            source = jetstream.source(
                nats_server.url, subject, durable="slow", decode=int, max_batch=50
            )
            subscriber: TestSubscriber[Message[int]] = TestSubscriber()
            source.subscribe(subscriber)
            await asyncio.sleep(QUIET_S)
            assert source.stats.fetches == 0
            assert [c.name for c in await js.consumers_info(stream)] == []

            subscriber.request(5)
            await until(lambda: len(subscriber.items) == 5)
            await asyncio.sleep(QUIET_S)  # a source that over-fetches does it now
            info = await consumer(js, stream, "slow")
            assert info.num_ack_pending == 5
            assert info.num_pending == 100_000 - 5
            assert ids(subscriber.items) == [0, 1, 2, 3, 4]
            assert source.stats.fetches == 1 and source.stats.received == 5
            subscriber.cancel()
            assert subscriber.violations == []

    run(main)


def test_slow_consumer_over_100k_backlog_holds_at_most_a_batch_and_rss_stays_flat(
    nats_server: LoopbackServer,
) -> None:
    """A slow consumer keeps a window of 200 requested over a 100,000-message backlog,
    acking each message: the client never holds more than max_batch (stats), the broker
    never has more than the window delivered-unacked and keeps the rest pending, and
    RSS does not grow while 3,000 messages go through. An unbounded source (fetching
    ahead of demand) breaks all three."""
    stream, subject = names()
    window, batch, total = 200, 50, 3_000

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            await backlog(nc, js, stream, subject, 100_000)
            source = jetstream.source(
                nats_server.url, subject, durable="slow", decode=int, max_batch=batch
            )
            subscriber: TestSubscriber[Message[int]] = TestSubscriber(window)
            source.subscribe(subscriber)
            processed = 0
            samples: list[tuple[int, int, int]] = []
            rss_at: dict[int, int] = {}
            while processed < total:
                await until(more_than(subscriber.items, processed))
                message = subscriber.items[processed]
                assert message.value == processed
                await asyncio.sleep(0.0002)  # slow processing
                await message.ack()
                processed += 1
                subscriber.request(1)
                if processed % 250 == 0:
                    info = await consumer(js, stream, "slow")
                    samples.append((processed, info.num_ack_pending or 0, info.num_pending or 0))
                if processed in (500, total):
                    rss_at[processed] = rss_bytes()
            subscriber.cancel()
            assert subscriber.violations == []
            assert source.stats.max_held <= batch, source.stats
            for done, ack_pending, pending in samples:
                # The last ack travels on the source's connection, the probe on another:
                # the server may count the message fetched after it before that ack.
                assert ack_pending <= window + 1, samples
                assert pending >= 100_000 - done - window, samples
            growth = rss_at[total] - rss_at[500]
            assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB: {rss_at}"

    run(main, timeout=60)


def test_cancel_mid_stream_stops_within_one_batch_and_leaves_the_rest(
    nats_server: LoopbackServer,
) -> None:
    """With unbounded demand and max_batch=10, cancel at the 55th message: nothing more is
    fetched (fetches and received frozen, at most the batch in progress received), the
    broker keeps everything else, and a later subscription to the same durable gets
    every id (the unacked ones redelivered after ack_wait). A source that keeps pulling
    after cancel, or acks what it did not deliver, fails."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            await backlog(nc, js, stream, subject, 1_000)
            source = jetstream.source(
                nats_server.url, subject, durable="c", decode=int, max_batch=10, ack_wait=1.0
            )
            first: TestSubscriber[Message[int]] = TestSubscriber(UNBOUNDED, cancel_after=55)
            source.subscribe(first)
            await until(lambda: first.cancelled)
            stats = source.stats
            fetches, received = stats.fetches, stats.received
            await asyncio.sleep(QUIET_S)
            assert (stats.fetches, stats.received) == (fetches, received)
            assert received <= 60 and fetches <= 6, stats
            info = await consumer(js, stream, "c")
            assert info.num_ack_pending == received
            assert info.num_pending == 1_000 - received

            second: TestSubscriber[Message[int]] = TestSubscriber(UNBOUNDED)
            source.subscribe(second)
            await until(lambda: len({m.value for m in second.items}) == 1_000, 15)
            for message in second.items:
                message.ack()
            second.cancel()
            assert first.violations == [] and second.violations == []

    run(main)


# -- nothing lost across a crash ---------------------------------------------------------------


def test_sigkilled_consumer_loses_nothing_and_duplicates_only_its_unacked(
    nats_server: LoopbackServer, tmp_path: Path
) -> None:
    """A consumer in a child process is SIGKILLed mid-stream; a second consumer on the
    same durable finishes. Every id is processed at least once, and an id processed
    twice is one the child processed but whose ack the server had not confirmed
    (at most the batch). A source that acks on fetch (or loses the unacked) fails."""
    stream, subject = names()
    total, batch, ack_wait = 2_000, 20, 1.0
    out = tmp_path / "child.log"

    def child_lines() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            await backlog(nc, js, stream, subject, total)
            child = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "_crash_consumer_nats.py"),
                    nats_server.url,
                    subject,
                    "crash",
                    str(out),
                    str(batch),
                    str(ack_wait),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                await until(
                    lambda: (
                        sum(line.startswith("A ") for line in child_lines()) >= 300
                        or child.poll() is not None
                    ),
                    20,
                    "the child to ack 300 messages",
                )
                assert child.poll() is None, child.stderr.read() if child.stderr else ""
                os.kill(child.pid, signal.SIGKILL)
                child.wait(10)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(10)
                if child.stderr is not None:
                    child.stderr.close()
            lines = child_lines()
            processed = [int(line[2:]) for line in lines if line.startswith("P ")]
            acked = {int(line[2:]) for line in lines if line.startswith("A ")}
            assert 300 <= len(processed) < total

            source = jetstream.source(
                nats_server.url, subject, durable="crash", decode=int, max_batch=100
            )
            second: TestSubscriber[Message[int]] = TestSubscriber(UNBOUNDED)
            source.subscribe(second)
            # Acked as they come: the consumer's max_ack_pending (1000) would stop it.
            acked_upto = 0
            deadline = time.monotonic() + 20
            while set(processed).union(m.value for m in second.items) < set(range(total)):
                assert time.monotonic() < deadline, "the second consumer did not finish"
                arrived = second.items[acked_upto:]
                acked_upto += len(arrived)
                for message in arrived:
                    await message.ack()
                await asyncio.sleep(0.005)
            second.cancel()

            again = [m.value for m in second.items]
            duplicates = set(processed) & set(again)
            assert duplicates <= set(processed) - acked, (duplicates, set(processed) - acked)
            assert len(duplicates) <= batch
            assert len(processed) == len(set(processed))  # the child saw each id once
            assert set(processed) | set(again) == set(range(total))

    run(main, timeout=60)


# -- ack modes, nack, errors ---------------------------------------------------------------


def test_manual_ack_settles_only_what_was_acked(nats_server: LoopbackServer) -> None:
    """MANUAL: 10 delivered, none acked -> the broker has 10 pending acks; 4 acks
    (confirmed) -> 6; the stats count them. A source that acks by itself fails."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            await backlog(nc, js, stream, subject, 20)
            source = jetstream.source(
                nats_server.url, subject, durable="m", decode=int, confirm_acks=True
            )
            subscriber: TestSubscriber[Message[int]] = TestSubscriber(10)
            source.subscribe(subscriber)
            await until(lambda: len(subscriber.items) == 10)
            assert (await consumer(js, stream, "m")).num_ack_pending == 10
            for message in subscriber.items[:4]:
                await message.ack()
            assert subscriber.items[0].settled == "ack"
            assert (await consumer(js, stream, "m")).num_ack_pending == 6
            assert source.stats.acked == 4
            subscriber.cancel()

    run(main)


def test_on_delivery_acks_each_batch_before_handing_it_downstream(
    nats_server: LoopbackServer,
) -> None:
    """ON_DELIVERY on a consumer it creates (ack policy "all"): the 10 delivered are
    already acked on the broker, ack() is a no-op, nack() fails in its Settlement
    (at-most-once: it cannot be redelivered). On an existing explicit-ack durable it
    acks every message. A source that leaves them pending fails."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            await backlog(nc, js, stream, subject, 40)
            auto = jetstream.source(
                nats_server.url, subject, durable="auto", decode=int, ack=AckMode.ON_DELIVERY
            )
            subscriber: TestSubscriber[Message[int]] = TestSubscriber(10)
            auto.subscribe(subscriber)
            await until(lambda: len(subscriber.items) == 10)
            info = await consumer(js, stream, "auto")
            assert info.config.ack_policy == AckPolicy.ALL
            assert info.num_ack_pending == 0 and acked_through(info) == 10
            assert auto.stats.acked == 10
            await subscriber.items[0].ack()
            with pytest.raises(AlreadySettledError):
                await subscriber.items[1].nack()
            subscriber.cancel()

            # An explicit-ack durable made by a MANUAL subscription first.
            manual = jetstream.source(nats_server.url, subject, durable="explicit", decode=int)
            first: TestSubscriber[Message[int]] = TestSubscriber(1)
            manual.subscribe(first)
            await until(lambda: len(first.items) == 1)
            await first.items[0].ack()
            first.cancel()
            bound = jetstream.source(
                nats_server.url,
                subject,
                durable="explicit",
                decode=int,
                ack=AckMode.ON_DELIVERY,
                max_batch=7,
            )
            second: TestSubscriber[Message[int]] = TestSubscriber(20)
            bound.subscribe(second)
            await until(lambda: len(second.items) == 20)
            info = await consumer(js, stream, "explicit")
            assert info.config.ack_policy == AckPolicy.EXPLICIT
            assert info.num_ack_pending == 0 and acked_through(info) == 21
            assert ids(second.items) == list(range(1, 21))
            second.cancel()

    run(main)


def test_nack_requeue_redelivers_and_nack_without_requeue_terminates(
    nats_server: LoopbackServer,
) -> None:
    """nack(requeue=True) -> the same message comes again (num_delivered 2);
    nack(requeue=False) -> terminated: not pending, never redelivered. A nack that
    acks (or does nothing) fails."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            await backlog(nc, js, stream, subject, 3)
            source = jetstream.source(
                nats_server.url, subject, durable="n", decode=int, confirm_acks=True, ack_wait=0.5
            )
            subscriber: TestSubscriber[Message[int]] = TestSubscriber(1)
            source.subscribe(subscriber)
            await until(lambda: len(subscriber.items) == 1)
            await subscriber.items[0].nack(requeue=True)
            subscriber.request(1)
            await until(lambda: len(subscriber.items) == 2)
            redelivered = subscriber.items[1]
            assert redelivered.value == 0 and redelivered.metadata["num_delivered"] == 2
            await redelivered.ack()

            subscriber.request(1)
            await until(lambda: len(subscriber.items) == 3)
            await subscriber.items[2].nack(requeue=False)
            assert subscriber.items[2].value == 1
            assert (await consumer(js, stream, "n")).num_ack_pending == 0
            subscriber.request(2)
            await until(lambda: len(subscriber.items) == 4)
            await subscriber.items[3].ack()
            await asyncio.sleep(1.0)  # twice ack_wait: a terminated message would be back
            assert ids(subscriber.items) == [0, 0, 1, 2]
            assert source.stats.nacked == 2 and source.stats.acked == 2
            subscriber.cancel()

    run(main)


def test_bad_request_is_on_error_through_the_stream(nats_server: LoopbackServer) -> None:
    """request(0) is on_error(NonPositiveRequestError) (Rule 3.9), never raised; nothing
    is fetched."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject):
            source = jetstream.source(nats_server.url, subject, durable="b")
            subscriber: TestSubscriber[Message[bytes]] = TestSubscriber()
            source.subscribe(subscriber)
            subscriber.request(0)
            await until(lambda: subscriber.is_terminated)
            assert isinstance(subscriber.errors[0], NonPositiveRequestError)
            assert source.stats.fetches == 0

    run(main)


def test_decode_error_is_on_error_and_leaves_the_batch_unacked(
    nats_server: LoopbackServer,
) -> None:
    """A decode that raises ends the stream with its error; nothing of the batch is
    delivered or acked (the broker has all 3 pending acks, to redeliver)."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (_, js):
            for payload in (b"1", b"bad", b"3"):
                await js.publish(subject, payload)
            source = jetstream.source(nats_server.url, subject, durable="d", decode=int)
            subscriber: TestSubscriber[Message[int]] = TestSubscriber(3)
            source.subscribe(subscriber)
            await until(lambda: subscriber.is_terminated)
            assert isinstance(subscriber.errors[0], ValueError)
            assert subscriber.items == []
            assert (await consumer(js, stream, "d")).num_ack_pending == 3

    run(main)


def test_a_closed_client_is_refused_at_subscribe(nats_server: LoopbackServer) -> None:
    """A borrowed client that is closed: on_subscribe then on_error (Rule 1.9), no request
    needed."""

    async def main() -> None:
        nc = await nats_client.connect(nats_server.url)
        await nc.close()
        subscriber: TestSubscriber[Message[bytes]] = TestSubscriber()
        jetstream.source(nc, "any.subject").subscribe(subscriber)
        assert isinstance(subscriber.errors[0], ConnectionError)

    run(main)


class LoopThread:
    """An event loop running in a thread of its own, stopped and joined by ``close()``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name)
        self._thread.start()

    def call(self, awaitable: Awaitable[R], timeout: float = 20) -> R:
        """Run ``awaitable`` on the loop and wait for its result."""

        async def wrapped() -> R:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def test_consumed_and_acked_from_another_thread(nats_server: LoopbackServer) -> None:
    """The source runs on a loop in one thread; a plain thread iterates it with
    blocking_iter and waits for each confirmed ack with Settlement.result()."""
    stream, subject = names()
    runner = LoopThread("nats-loop")
    try:
        context = admin(nats_server.url, stream, subject)
        nc, js = runner.call(context.__aenter__())
        runner.call(backlog(nc, js, stream, subject, 30))
        source = jetstream.source(
            nats_server.url, subject, durable="t", decode=int, confirm_acks=True, loop=runner.loop
        )
        seen = []
        for message in source.take(20).blocking_iter(prefetch=10, timeout=10):
            message.ack().result(10)
            seen.append(message.value)
        assert seen == list(range(20))
        assert acked_through(runner.call(consumer(js, stream, "t"))) == 20
        runner.call(context.__aexit__(None, None, None))
    finally:
        runner.close()


def test_threads_racing_to_ack_and_nack_settle_each_message_once(
    nats_server: LoopbackServer,
) -> None:
    """200 messages; 4 threads race (switch interval 1e-6 s) to ack() (two of them) or
    nack(requeue=False) (the other two) every one: each is settled once, by the first
    caller (the other kind raises AlreadySettledError), the stats count each once and
    the broker has none left pending. A settlement that is not atomic settles twice."""
    stream, subject = names()
    total = 200
    runner = LoopThread("nats-loop")
    interval = sys.getswitchinterval()
    try:
        context = admin(nats_server.url, stream, subject)
        nc, js = runner.call(context.__aenter__())
        runner.call(backlog(nc, js, stream, subject, total))
        source = jetstream.source(
            nats_server.url, subject, durable="r", decode=int, confirm_acks=True, loop=runner.loop
        )
        messages = list(source.take(total).blocking_iter(prefetch=50, timeout=10))
        outcomes: list[list[str]] = [[] for _ in range(4)]
        settlements: list[list[Settlement]] = [[] for _ in range(4)]

        def settle(index: int) -> None:
            for message in messages:
                try:
                    settlement = message.ack() if index < 2 else message.nack(requeue=False)
                except AlreadySettledError:
                    outcomes[index].append("lost")
                else:
                    outcomes[index].append(settlement.kind)
                    settlements[index].append(settlement)

        sys.setswitchinterval(1e-6)
        threads = [threading.Thread(target=settle, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        sys.setswitchinterval(interval)
        for batch in settlements:
            for settlement in batch:
                settlement.result(10)
        kinds = [message.settled for message in messages]
        assert None not in kinds
        stats = source.stats
        assert stats.acked + stats.nacked == total
        assert stats.acked == kinds.count("ack") and stats.nacked == kinds.count("nack")
        for index in range(4):
            mine = "ack" if index < 2 else "nack"
            assert len(outcomes[index]) == total
            assert all(outcome in (mine, "lost") for outcome in outcomes[index])
        info = runner.call(consumer(js, stream, "r"))
        assert info.num_ack_pending == 0 and info.num_pending == 0
        runner.call(context.__aexit__(None, None, None))
    finally:
        sys.setswitchinterval(interval)
        runner.close()


def test_a_settlement_on_the_loop_runs_at_once_and_resumes_after_suspending() -> None:
    """The settle coroutine starts inside ack() on the connector's loop: one that never
    suspends (an ack written to the buffer) is done at once, without a task; one that
    suspends goes on in a task from where it stopped, with its awaits, result and
    errors intact, and can be cancelled there. Off the loop it is left to Settlement."""
    steps: list[str] = []

    async def quick() -> None:
        steps.append("quick")

    async def slow() -> None:
        steps.append("slow 1")
        await asyncio.sleep(0)
        steps.append("slow 2")
        await asyncio.sleep(0.01)
        steps.append("slow 3")

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("refused")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def refused_at_once() -> None:
        raise ConnectionError("closed")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        shared: asyncio.Future[None] = loop.create_future()
        shared.set_result(None)

        def settled() -> asyncio.Future[None]:
            return shared

        done = jetstream._start_on(loop, quick(), settled)
        assert done is shared and steps == ["quick"]  # finished at once: the shared done future
        running = jetstream._start_on(loop, slow(), settled)
        assert isinstance(running, asyncio.Task) and steps == ["quick", "slow 1"]
        await running
        assert steps == ["quick", "slow 1", "slow 2", "slow 3"]
        refused = jetstream._start_on(loop, failing(), settled)
        assert isinstance(refused, asyncio.Future)
        with pytest.raises(ValueError, match="refused"):
            await refused
        at_once = jetstream._start_on(loop, refused_at_once(), settled)
        assert isinstance(at_once, asyncio.Future) and at_once is not shared
        with pytest.raises(ConnectionError, match="closed"):
            await at_once
        stuck = jetstream._start_on(loop, forever(), settled)
        assert isinstance(stuck, asyncio.Future)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        other = asyncio.new_event_loop()
        elsewhere = quick()
        try:
            assert jetstream._start_on(other, elsewhere, settled) is elsewhere
        finally:
            elsewhere.close()
            other.close()

    run(main)


# -- the sink ----------------------------------------------------------------------------------


def test_sink_never_has_more_than_max_in_flight_unconfirmed(nats_server: LoopbackServer) -> None:
    """300 items through sink(max_in_flight=8) on a client whose publish() is
    instrumented: at every publish that asks for a PubAck, published minus emitted
    (an upper bound of the unconfirmed) is at most 8 and reaches 8; upstream is never
    asked for more than emitted + 8; every item is stored once, in order, and emitted
    only after its PubAck. An unbounded or request-ahead sink fails."""
    stream, subject = names()
    limit = 8

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):
            published = 0
            emitted = 0
            most = 0
            requested = 0
            over: list[str] = []
            original = nc.publish

            async def counted(
                subject: str, payload: bytes = b"", reply: str = "", headers: Any = None
            ) -> None:
                nonlocal published, most
                if reply:  # a publish awaiting its PubAck
                    published += 1
                    most = max(most, published - emitted)
                    if published - emitted > limit:
                        over.append(f"published {published} with {emitted} emitted")
                await original(subject, payload, reply=reply, headers=headers)

            nc.publish = counted  # type: ignore[method-assign]
            subscriptions_before = set(nc._subs)

            def on_request(n: int) -> None:
                nonlocal requested
                requested += n
                if requested > emitted + limit:
                    over.append(f"requested {requested} with {emitted} emitted")

            def on_emitted(_: int) -> None:
                nonlocal emitted
                emitted += 1

            result = await (
                Flow.range(0, 300)
                .do_on_request(on_request)
                .pipe(
                    jetstream.sink(
                        nc, subject, encode=lambda i: str(i).encode(), max_in_flight=limit
                    )
                )
                .do_on_next(on_emitted)
                .to_list_async()
            )
            assert result == list(range(300))
            assert most == limit, most  # the window is used, never exceeded
            assert over == []
            # The sink's PubAck inbox is removed when the stream ends (a borrowed client).
            await until(lambda: set(nc._subs) <= subscriptions_before)
            stored = await js.pull_subscribe(subject, durable="check", stream=stream)
            messages = await stored.fetch(300, timeout=5)
            assert [int(m.data) for m in messages] == list(range(300))

    run(main)


def test_sink_failure_is_publish_error_with_the_item(nats_server: LoopbackServer) -> None:
    """A subject no stream stores: on_error(PublishError) naming the first item, the
    client's error as its cause, and nothing emitted (max_in_flight=1: the second item
    is never published)."""

    async def main() -> None:
        subscriber: TestSubscriber[bytes] = TestSubscriber(UNBOUNDED)
        Flow.just(b"a", b"b").pipe(
            jetstream.sink(
                nats_server.url, f"nobody.{uuid.uuid4().hex}", max_in_flight=1, request_timeout=2
            )
        ).subscribe(subscriber)
        await until(lambda: subscriber.is_terminated)
        (error,) = subscriber.errors
        assert isinstance(error, PublishError) and error.item == b"a"
        assert isinstance(error.__cause__, NoStreamResponseError)
        assert subscriber.items == []

    run(main)


def test_sink_a_subject_the_client_refuses_fails_that_item_only(
    nats_server: LoopbackServer,
) -> None:
    """Item 5's subject has a space, which the client refuses before writing, while items
    0-4 are in flight: the stream ends with PublishError naming item 5 (its cause the
    client's BadSubjectError), and items 0-4 are still written and stored. Before, the
    refusal failed every publish in flight and named item 0."""
    stream, subject = names()

    async def main() -> None:
        async with admin(nats_server.url, stream, subject) as (nc, js):

            def subject_of(item: int) -> str:
                return f"{subject} bad" if item == 5 else subject

            subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
            Flow.range(0, 10).pipe(
                jetstream.sink(nc, subject_of, encode=lambda i: str(i).encode(), max_in_flight=10)
            ).subscribe(subscriber)
            await until(lambda: subscriber.is_terminated)
            (error,) = subscriber.errors
            assert isinstance(error, PublishError) and error.item == 5
            assert isinstance(error.__cause__, nats_client.errors.BadSubjectError)
            assert set(subscriber.items) <= {0, 1, 2, 3, 4}
            stored = await js.pull_subscribe(subject, durable="check", stream=stream)
            messages = await stored.fetch(10, timeout=5)
            kept = {int(m.data) for m in messages}
            # 0-4 stored; 5 never written; 6-9 may be (written before the error ended it).
            assert {0, 1, 2, 3, 4} <= kept and 5 not in kept

    run(main)


def test_sink_errors_when_the_broker_is_killed_mid_stream(
    undeliverable: list[tuple[BaseException, str]],
) -> None:
    """A private server killed while 16 publishes are in flight: on_error (PublishError,
    from the PubAck timeout or the closed connection) within a bounded time, no hang.
    The other in-flight publishes that fail after it go to the undeliverable hook (never
    swallowed), each a PublishError too."""
    try:
        server = NatsServer()
    except ServerUnavailable as missing:
        pytest.skip(str(missing))
    stream, subject = names()
    with server:

        async def main() -> None:
            nc = await nats_client.connect(server.url)
            await nc.jetstream().add_stream(name=stream, subjects=[subject])
            await nc.close()
            subscriber: TestSubscriber[int] = TestSubscriber(UNBOUNDED)
            Flow.range(0, 10**9).pipe(
                jetstream.sink(
                    server.url,
                    subject,
                    encode=lambda i: str(i).encode(),
                    max_in_flight=16,
                    request_timeout=1.0,
                )
            ).subscribe(subscriber)
            await until(lambda: len(subscriber.items) >= 200)
            server.kill()
            killed = time.monotonic()
            await until(lambda: subscriber.is_terminated, 10, "on_error after the kill")
            assert time.monotonic() - killed < 10
            (error,) = subscriber.errors
            assert isinstance(error, PublishError), error
            assert subscriber.items == list(range(len(subscriber.items)))
            assert all(isinstance(late, PublishError) for late, _ in undeliverable), undeliverable

        run(main)


# -- Reactive Streams compliance over the real server ----------------------------------------


class _Backlogs:
    """Publishes a check's backlog from a loop of its own (the kit's loop is busy)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stream = f"TCK{uuid.uuid4().hex[:8]}"
        self._counter = itertools.count()
        self._runner = LoopThread("tck-backlogs")
        self._nc: Client = self._runner.call(nats_client.connect(url))
        self._js = self._nc.jetstream()
        self._runner.call(
            self._js.add_stream(
                name=self.stream, subjects=[f"{self.stream}.>"], storage=StorageType.MEMORY
            )
        )

    def subject_with(self, elements: int) -> str:
        """A new subject holding exactly ``elements`` stored messages ``0..elements-1``."""
        subject = f"{self.stream}.{next(self._counter)}"

        async def publish() -> None:
            acks = [await self._js.publish_async(subject, b"%d" % i) for i in range(elements)]
            await asyncio.gather(*acks)

        self._runner.call(publish())
        return subject

    def closed_client(self) -> Client:
        async def closed() -> Client:
            nc = await nats_client.connect(self.url)
            await nc.close()
            return nc

        return self._runner.call(closed())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.call(self._js.delete_stream(self.stream))
        self._runner.call(self._nc.close())
        self._runner.close()


_BACKLOGS: list[_Backlogs] = []


@pytest.fixture(scope="module", autouse=True)
def _tck_backlogs(nats_server: LoopbackServer) -> Iterator[None]:
    """The TCK classes cannot take fixtures: they find the server through this."""
    backlogs = _Backlogs(nats_server.url)
    _BACKLOGS.append(backlogs)
    yield
    _BACKLOGS.remove(backlogs)
    backlogs.close()


class TestNatsSourceVerification(PublisherVerification[Message[int]]):
    """The source over a subject with exactly ``elements`` stored messages, completing
    when drained (a fetch that finds nothing within 0.2 s); each subscription makes its
    own ephemeral consumer and connection."""

    asyncio = True

    def __init__(self) -> None:
        super().__init__(TestEnvironment(default_timeout_ms=3000))

    def create_publisher(self, elements: int) -> Publisher[Message[int]]:
        backlogs = _BACKLOGS[0]
        # Only Rule 3.17's overflow checks ask for more (2**31-1): they read 11 items
        # and cancel, without waiting for completion.
        stored = min(elements, 64)
        return jetstream.source(
            backlogs.url,
            backlogs.subject_with(stored),
            stream=backlogs.stream,
            decode=int,
            max_batch=4,
            fetch_timeout=0.2,
            complete_when_drained=True,
        )

    def create_failed_publisher(self) -> Publisher[Message[int]] | None:
        return jetstream.source(_BACKLOGS[0].closed_client(), "never.used", decode=int)

    def iterations_per_stochastic_test(self) -> int:
        return 10  # each iteration connects, makes a consumer and waits out a drain
