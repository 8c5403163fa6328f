"""Redis Streams connector against a real redis-server (the session's, or a private one).

Every test uses its own stream key. The broker's own view (``XPENDING``,
``XINFO GROUPS``' last-delivered id, ``XLEN``, ``CLIENT LIST``) is read with the
plain synchronous client, next to the connector's ``ConnectorStats``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
import redis.exceptions

from reactive_bp import Flow, NonPositiveRequestError
from reactive_bp.abc import Publisher, Subscription
from reactive_bp.connectors import (
    AckMode,
    AlreadySettledError,
    Message,
    PublishError,
    Settlement,
    redis_streams,
)
from reactive_bp.connectors._common import FetchFlow
from reactive_bp.testing import TestSubscriber
from reactive_bp.testing.servers import LoopbackServer, RedisServer, ServerUnavailable
from spec_tck import PublisherVerification, TestEnvironment

pytestmark = pytest.mark.no_undeliverable

CRASH_CONSUMER = Path(__file__).with_name("_crash_consumer_redis.py")

# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def url(redis_server: LoopbackServer) -> str:
    return redis_server.url


@pytest.fixture
def admin(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def _key() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _publish(
    admin: redis.Redis, key: str, payloads: Iterable[bytes], chunk: int = 5000
) -> list[bytes]:
    """XADD every payload (field ``value``) in pipelined chunks; return the entry ids."""
    ids: list[bytes] = []
    pipe = admin.pipeline(transaction=False)
    queued = 0
    for payload in payloads:
        pipe.xadd(key, {"value": payload})
        queued += 1
        if queued == chunk:
            ids.extend(pipe.execute())
            queued = 0
    if queued:
        ids.extend(pipe.execute())
    return ids


_GENERATE = """
local ids = {}
local first = tonumber(ARGV[1])
for i = first, first + tonumber(ARGV[2]) - 1 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'value', string.format('%06d|', i) .. ARGV[3])
end
return ids
"""


def _publish_generated(admin: redis.Redis, key: str, count: int, padding: bytes) -> list[bytes]:
    """XADD ``count`` entries ``"%06d|" + padding`` server-side (a Lua script per 10,000)."""
    script = admin.register_script(_GENERATE)
    ids: list[bytes] = []
    for first in range(0, count, 10_000):
        ids.extend(script(keys=[key], args=[first, min(10_000, count - first), padding]))
    return ids


def _pending(admin: redis.Redis, key: str, group: str, consumer: str | None = None) -> list[bytes]:
    """The ids in the group's pending entries list (of ``consumer``, if given)."""
    rows = admin.xpending_range(key, group, "-", "+", 100_000, consumername=consumer)
    return [cast("bytes", row["message_id"]) for row in rows]


Entry = tuple[bytes, dict[bytes, bytes]]


def _xrange(admin: redis.Redis, key: str, count: int | None = None) -> list[Entry]:
    return cast("list[Entry]", admin.xrange(key, count=count))


def _last_delivered(admin: redis.Redis, key: str, group: str) -> bytes:
    (info,) = [g for g in admin.xinfo_groups(key) if g["name"] == group.encode()]
    last: bytes = info["last-delivered-id"]
    return last


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


class Holder:
    """A subscriber that keeps only the messages not yet taken, and checks Rule 1.1 itself."""

    def __init__(self, on_message: Callable[[Message[bytes]], None] | None = None) -> None:
        self.subscription: Subscription | None = None
        self.requested = 0
        self.received = 0
        self.held: list[Message[bytes]] = []
        self.errors: list[Exception] = []
        self.completed = False
        self.violations: list[str] = []
        self.on_message = on_message

    def on_subscribe(self, subscription: Subscription) -> None:
        self.subscription = subscription

    def on_next(self, message: Message[bytes]) -> None:
        self.received += 1
        if self.received > self.requested:
            self.violations.append(f"Rule 1.1: item {self.received} of {self.requested}")
        if self.on_message is not None:
            self.on_message(message)
        self.held.append(message)

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)

    def on_complete(self) -> None:
        self.completed = True

    def request(self, n: int) -> None:
        self.requested += n
        assert self.subscription is not None
        self.subscription.request(n)

    def take(self) -> list[Message[bytes]]:
        taken, self.held = self.held, []
        return taken

    @property
    def terminated(self) -> bool:
        return self.completed or bool(self.errors)


def _source(url: str, key: str, **options: object) -> FetchFlow[bytes]:
    settings: dict[str, object] = {"group": "g", "consumer": "c", "start_id": "0"}
    settings.update(options)
    return redis_streams.source(url, key, **settings)  # type: ignore[call-overload, no-any-return]


# -- demand is the broker's flow control --------------------------------------------------------


def test_demand_is_the_flow_control_on_a_100k_backlog(url: str, admin: redis.Redis) -> None:
    """100,000 entries wait in Redis; a slow consumer holds at most one batch of them.

    A source that read ahead (no demand check, COUNT without the min, a prefetch of its
    own) shows up three ways: the group's pending list and last-delivered id run ahead of
    what was requested, ``max_held`` exceeds the batch, and RSS grows by tens of MB.
    """
    key = _key()
    ids = _publish_generated(admin, key, 100_000, b"x" * 500)
    assert admin.xlen(key) == 100_000
    batch = 50

    async def main() -> None:
        source = _source(url, key, group="slow", consumer="slow-1", max_batch=batch)
        holder = Holder()
        source.subscribe(holder)
        await asyncio.sleep(0.2)
        # Subscribed, nothing requested: not even the group exists yet.
        assert admin.xinfo_groups(key) == [] and source.stats.fetches == 0

        holder.request(5)
        await _until(lambda: holder.received == 5)
        await asyncio.sleep(0.3)  # watch: nothing more is read while demand is 0
        assert _last_delivered(admin, key, "slow") == ids[4]
        assert _pending(admin, key, "slow") == ids[:5]
        assert source.stats.fetches == 1 and holder.received == 5
        await asyncio.gather(*(message.ack() for message in holder.take()))
        assert _pending(admin, key, "slow") == []

        rss_before = 0
        max_pending = 0
        rounds = 100
        for round_ in range(rounds):
            holder.request(batch)
            expected = 5 + batch * (round_ + 1)
            await _until(lambda: holder.received == expected)  # noqa: B023
            messages = holder.take()
            max_pending = max(max_pending, len(_pending(admin, key, "slow")))
            await asyncio.sleep(0.002)  # the slow part
            await asyncio.gather(*(message.ack() for message in messages))
            del messages
            if round_ == 9:
                rss_before = _rss_kib()
        rss_after = _rss_kib()
        consumed = 5 + batch * rounds
        assert holder.received == consumed and holder.violations == []
        assert source.stats.max_held <= batch
        assert source.stats.acked == consumed
        assert 0 < max_pending <= batch
        # The broker delivered exactly what was requested: nothing was read ahead.
        assert _last_delivered(admin, key, "slow") == ids[consumed - 1]
        assert admin.xlen(key) == 100_000
        # Reading the backlog would cost ~60 MB; what was consumed slowly costs nothing lasting.
        assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
        assert holder.subscription is not None
        holder.subscription.cancel()
        await asyncio.sleep(0.05)

    asyncio.run(main())


def test_a_bad_request_is_on_error_and_reads_nothing(url: str, admin: redis.Redis) -> None:
    key = _key()
    _publish(admin, key, [b"a", b"b"])

    async def main() -> TestSubscriber[Message[bytes]]:
        subscriber: TestSubscriber[Message[bytes]] = TestSubscriber()
        _source(url, key).subscribe(subscriber)
        subscriber.request(0)
        await _until(lambda: subscriber.is_terminated)
        await asyncio.sleep(0.05)
        return subscriber

    subscriber = asyncio.run(main())
    assert isinstance(subscriber.errors[0], NonPositiveRequestError)
    assert subscriber.items == [] and admin.xinfo_groups(key) == []
    subscriber.assert_clean()


# -- nothing lost across a crash ----------------------------------------------------------------


def test_nothing_is_lost_when_a_consumer_is_killed_mid_stream(
    url: str, admin: redis.Redis, tmp_path: Path
) -> None:
    """A child consumer is SIGKILLed; a second consumer of the group claims its pending
    entries (XAUTOCLAIM) and finishes. Every id is processed; the only duplicates are
    entries the dead consumer had not acknowledged, at most its batch."""
    key, group, total, batch = _key(), "workers", 3000, 20
    ids = _publish(admin, key, (str(i).encode() for i in range(total)))
    out = tmp_path / "doomed.txt"
    child = subprocess.Popen(
        [sys.executable, str(CRASH_CONSUMER), url, key, group, "doomed", str(out), str(batch)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists() or out.read_bytes().count(b"\n") < 300:
            assert child.poll() is None, child.stderr.read() if child.stderr else b""
            assert time.monotonic() < deadline, "the child consumer did not get going"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stderr is not None:
            child.stderr.close()
    by_doomed = out.read_bytes().decode().split()
    assert 300 <= len(by_doomed) < total, "killed mid-stream"
    unacked_at_kill = set(_pending(admin, key, group, "doomed"))
    assert 0 < len(unacked_at_kill) <= batch

    async def survive() -> list[tuple[str, bool]]:
        source = _source(
            url,
            key,
            group=group,
            consumer="survivor",
            claim_idle=0.0,
            complete_when_drained=True,
            max_batch=100,
        )
        seen: list[tuple[str, bool]] = []
        settlements = []
        async for message in source.aiter(prefetch=100):
            seen.append((message.value.decode(), bool(message.metadata["redelivered"])))
            settlements.append(message.ack())
        for settlement in settlements:
            await settlement
        return seen

    by_survivor = asyncio.run(survive())
    processed = collections.Counter(by_doomed + [value for value, _ in by_survivor])
    assert set(processed) == {str(i) for i in range(total)}  # nothing lost
    duplicates = {ids[int(value)] for value, count in processed.items() if count > 1}
    assert max(processed.values()) <= 2
    assert duplicates <= unacked_at_kill  # only what was unacknowledged at the kill
    claimed = {ids[int(value)] for value, redelivered in by_survivor if redelivered}
    assert claimed == unacked_at_kill  # each of those came back, marked redelivered
    assert _pending(admin, key, group) == []


def test_a_restarted_consumer_rereads_its_own_pending_entries_first(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    ids = _publish(admin, key, (str(i).encode() for i in range(10)))

    async def main() -> list[tuple[bytes, bool]]:
        first = Holder()
        _source(url, key, consumer="same", claim_idle=None).subscribe(first)
        first.request(5)
        await _until(lambda: first.received == 5)
        taken = first.take()
        await asyncio.gather(*(message.ack() for message in taken[:2]))
        assert first.subscription is not None
        first.subscription.cancel()  # 3 delivered, unacknowledged: pending for "same"

        again = Holder()
        _source(url, key, consumer="same", claim_idle=None).subscribe(again)
        again.request(6)
        await _until(lambda: again.received == 6)
        seen = [(m.value, bool(m.metadata["redelivered"])) for m in again.take()]
        assert again.subscription is not None
        again.subscription.cancel()
        await asyncio.sleep(0.05)
        return seen

    seen = asyncio.run(main())
    assert seen == [
        (b"2", True),
        (b"3", True),
        (b"4", True),
        (b"5", False),
        (b"6", False),
        (b"7", False),
    ]
    assert _pending(admin, key, "g") == ids[2:8]


def test_claims_from_a_dead_consumer_come_periodically_after_claim_idle(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    ids = _publish(admin, key, (str(i).encode() for i in range(5)))
    # "dead" read all five and died without acknowledging.
    admin.xgroup_create(key, "g", "0")
    admin.xreadgroup("g", "dead", {key: ">"}, count=5)
    claim_idle = 0.6

    async def main() -> tuple[float, float, list[Message[bytes]]]:
        started = time.monotonic()
        holder = Holder()
        source = _source(
            url,
            key,
            consumer="alive",
            claim_idle=claim_idle,
            claim_interval=0.1,
            fetch_timeout=0.05,
        )
        source.subscribe(holder)
        holder.request(10)
        await asyncio.sleep(0.2)
        early = holder.received  # the first sweep ran; the entries were not idle enough
        await _until(lambda: holder.received == 5)
        arrived = time.monotonic() - started
        messages = holder.take()
        await asyncio.gather(*(message.ack() for message in messages))
        assert holder.subscription is not None
        holder.subscription.cancel()
        await asyncio.sleep(0.05)
        return early, arrived, messages

    early, arrived, messages = asyncio.run(main())
    assert early == 0
    assert arrived >= claim_idle - 0.05
    assert [m.metadata["id"] for m in messages] == [i.decode() for i in ids]
    assert all(m.metadata["redelivered"] for m in messages)
    assert _pending(admin, key, "g") == []


def test_from_a_plain_thread_with_blocking_iter_and_acks_that_wait(
    url: str, admin: redis.Redis
) -> None:
    """The source runs on a loop in another thread; this thread iterates and acks."""
    key = _key()
    _publish(admin, key, (str(i).encode() for i in range(50)))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="redis-loop")
    runner.start()
    try:
        source = redis_streams.source(
            url, key, group="g", consumer="c", start_id="0", decode=int, loop=loop,
            max_batch=8, complete_when_drained=True,
        )  # fmt: skip
        seen = []
        for message in source.blocking_iter(prefetch=8, timeout=10):
            seen.append(message.value)
            message.ack().result(5)  # confirmed by Redis before the next one
        assert seen == list(range(50))
        assert _pending(admin, key, "g") == []
        assert source.stats.acked == 50 and source.stats.max_held <= 8
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_mid_stream_stops_within_one_batch_and_leaves_the_rest(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    ids = _publish(admin, key, (str(i).encode() for i in range(1000)))
    clients_before = len(admin.client_list())

    async def main() -> TestSubscriber[Message[bytes]]:
        subscriber: TestSubscriber[Message[bytes]] = TestSubscriber(1000, cancel_after=25)
        _source(url, key, max_batch=10).subscribe(subscriber)
        await _until(lambda: subscriber.cancelled)
        await asyncio.sleep(0.3)
        return subscriber

    subscriber = asyncio.run(main())
    assert len(subscriber.items) == 25
    read = ids.index(_last_delivered(admin, key, "g")) + 1
    assert 25 <= read <= 25 + 10  # stopped within the batch in flight
    assert read == 30  # batches of 10: the third was in flight
    time.sleep(0.2)
    assert ids.index(_last_delivered(admin, key, "g")) + 1 == read  # and stays stopped
    assert _pending(admin, key, "g", "c") == ids[:read]  # unacked, left for redelivery
    # The consumer's connection is closed.
    deadline = time.monotonic() + 5
    while len(admin.client_list()) > clients_before:
        assert time.monotonic() < deadline, admin.client_list()
        time.sleep(0.01)
    # The rest is still on the broker, for any consumer of the group.
    rest = cast("list[tuple[bytes, list[Entry]]]", admin.xreadgroup("g", "other", {key: ">"}))
    assert [entry_id for entry_id, _ in rest[0][1]] == ids[read:]
    subscriber.assert_clean()


# -- ack modes, nack, errors --------------------------------------------------------------------


def test_manual_ack_leaves_each_message_pending_until_it_is_acked(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    ids = _publish(admin, key, (str(i).encode() for i in range(7)))
    pending_at_delivery: list[int] = []

    async def main() -> FetchFlow[bytes]:
        holder = Holder(lambda m: pending_at_delivery.append(len(_pending(admin, key, "g"))))
        source = _source(url, key)
        source.subscribe(holder)
        holder.request(7)
        await _until(lambda: holder.received == 7)
        messages = holder.take()
        await asyncio.gather(*(m.ack() for m in messages[:3]))
        assert _pending(admin, key, "g") == ids[3:]
        assert messages[0].ack().done()  # the same settlement, already confirmed
        with pytest.raises(AlreadySettledError):
            messages[0].nack()
        assert holder.subscription is not None
        holder.subscription.cancel()
        await asyncio.sleep(0.05)
        return source

    source = asyncio.run(main())
    assert pending_at_delivery == [7] * 7  # the batch was pending while delivered
    assert source.stats.acked == 3


def test_acks_share_one_xack_and_a_waiter_that_gives_up_cancels_no_ack(
    url: str, admin: redis.Redis
) -> None:
    """Acks of one turn share one XACK future. Waiters that give up (on the loop, or on
    another thread's loop) cancel nothing: every ack still runs and is confirmed."""
    key = _key()
    _publish(admin, key, (str(i).encode() for i in range(4)))
    logged: list[dict[str, object]] = []

    def give_up_from_a_thread(message: Message[bytes]) -> Settlement:
        settlement = message.ack()  # off the connector's loop: sent to it

        async def wait_then_cancel() -> None:
            waiter = asyncio.ensure_future(_wait(settlement))
            await asyncio.sleep(0)
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

        asyncio.run(wait_then_cancel())
        return settlement

    async def main() -> FetchFlow[bytes]:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: logged.append(context))
        holder = Holder()
        source = _source(url, key)
        source.subscribe(holder)
        holder.request(4)
        await _until(lambda: holder.received == 4)
        first, second, third, fourth = holder.take()
        on_loop = [first.ack(), second.ack()]
        given_up = asyncio.ensure_future(_wait(on_loop[0]))
        await asyncio.sleep(0)
        given_up.cancel()  # the caller gives up; the ack it waited for goes on
        loop = asyncio.get_running_loop()
        from_threads = await asyncio.gather(
            loop.run_in_executor(None, give_up_from_a_thread, third),
            loop.run_in_executor(None, give_up_from_a_thread, fourth),
        )
        await asyncio.gather(*(_wait(s) for s in on_loop))
        for settlement in from_threads:
            await loop.run_in_executor(None, settlement.result, 5)
        await _until(lambda: _pending(admin, key, "g") == [])
        assert holder.subscription is not None
        holder.subscription.cancel()
        await asyncio.sleep(0.05)
        return source

    source = asyncio.run(main())
    assert source.stats.acked == 4
    assert logged == []


async def _wait(settlement: Settlement) -> None:
    await settlement


def test_on_delivery_acks_each_batch_before_handing_it_downstream(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    _publish(admin, key, (str(i).encode() for i in range(7)))
    pending_at_delivery: list[int] = []

    async def main() -> FetchFlow[bytes]:
        holder = Holder(lambda m: pending_at_delivery.append(len(_pending(admin, key, "g"))))
        source = _source(url, key, ack=AckMode.ON_DELIVERY, max_batch=4)
        source.subscribe(holder)
        holder.request(7)
        await _until(lambda: holder.received == 7)
        messages = holder.take()
        await messages[0].ack()  # nothing left to do
        with pytest.raises(AlreadySettledError):
            await messages[1].nack()
        assert holder.subscription is not None
        holder.subscription.cancel()
        await asyncio.sleep(0.05)
        return source

    source = asyncio.run(main())
    assert pending_at_delivery == [0] * 7  # acknowledged before on_next
    assert source.stats.acked == 7 and source.stats.fetches == 2
    assert _pending(admin, key, "g") == []


def test_nack_requeue_redelivers_and_nack_without_requeue_dead_letters(
    url: str, admin: redis.Redis
) -> None:
    key, dead = _key(), _key()
    ids = _publish(admin, key, [b"retry-me", b"poison", b"fine"])

    async def main() -> list[Message[bytes]]:
        holder = Holder()
        source = _source(url, key, dead_letter_stream=dead, fetch_timeout=0.05)
        source.subscribe(holder)
        holder.request(3)
        await _until(lambda: holder.received == 3)
        retry, poison, fine = holder.take()
        await retry.nack(requeue=True)
        await poison.nack(requeue=False)
        await fine.ack()
        assert _pending(admin, key, "g") == [ids[0]]  # the requeued one is still pending
        holder.request(1)
        await _until(lambda: holder.received == 4)
        (again,) = holder.take()
        await again.ack()
        assert source.stats.nacked == 2 and source.stats.acked == 2
        assert holder.subscription is not None
        holder.subscription.cancel()
        await asyncio.sleep(0.05)
        return [retry, again]

    retry, again = asyncio.run(main())
    assert again.value == b"retry-me" and again.metadata["id"] == retry.metadata["id"]
    assert again.metadata["redelivered"] is True and retry.metadata["redelivered"] is False
    assert _pending(admin, key, "g") == []
    ((_, fields),) = _xrange(admin, dead)
    assert fields == {b"value": b"poison", b"origin-stream": key.encode(), b"origin-id": ids[1]}


def test_a_decode_that_raises_fails_the_stream_and_leaves_the_message_pending(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    ids = _publish(admin, key, [b"1", b"not a number", b"3"])

    async def main() -> TestSubscriber[Message[int]]:
        subscriber: TestSubscriber[Message[int]] = TestSubscriber()
        source = redis_streams.source(url, key, group="g", consumer="c", start_id="0", decode=int)
        source.subscribe(subscriber)
        subscriber.request(1)
        await _until(lambda: len(subscriber.items) == 1)
        await subscriber.items[0].ack()
        subscriber.request(1)
        await _until(lambda: subscriber.is_terminated)
        return subscriber

    subscriber = asyncio.run(main())
    assert [m.value for m in subscriber.items] == [1]
    assert isinstance(subscriber.errors[0], ValueError)
    assert _pending(admin, key, "g") == [ids[1]]  # left unacknowledged, for redelivery
    subscriber.assert_clean()


def test_a_missing_group_without_create_group_is_on_error(url: str, admin: redis.Redis) -> None:
    key = _key()
    _publish(admin, key, [b"a"])

    async def main() -> TestSubscriber[Message[bytes]]:
        subscriber: TestSubscriber[Message[bytes]] = TestSubscriber(1)
        _source(url, key, create_group=False).subscribe(subscriber)
        await _until(lambda: subscriber.is_terminated)
        return subscriber

    subscriber = asyncio.run(main())
    assert "NOGROUP" in str(subscriber.errors[0])
    subscriber.assert_clean()


def test_arguments_are_checked_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        redis_streams.source(url, "k", group="g", consumer="c", max_batch=0)
    with pytest.raises(ValueError, match="fetch_timeout"):
        redis_streams.source(url, "k", group="g", consumer="c", fetch_timeout=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        redis_streams.sink(url, "k", max_in_flight=0)
    text_client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        redis_streams.source(text_client, "k", group="g", consumer="c")


# -- sink ---------------------------------------------------------------------------------------


def test_the_sink_keeps_at_most_max_in_flight_unconfirmed_in_order(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    entered = [0]
    emitted = [0]
    most_unconfirmed = [0]

    def enter(_: int) -> None:
        entered[0] += 1  # handed to the sink: its XADD is sent
        most_unconfirmed[0] = max(most_unconfirmed[0], entered[0] - emitted[0])

    def confirm(_: int) -> None:
        emitted[0] += 1  # Redis replied to its XADD

    async def main() -> list[int]:
        numbers = Flow.range(0, 2000).do_on_next(enter)
        published = redis_streams.publish(
            numbers, url, key, encode=lambda n: b"%d" % n, max_in_flight=32
        )
        return await published.do_on_next(confirm).to_list_async()

    out = asyncio.run(main())
    assert out == list(range(2000))
    assert most_unconfirmed[0] == 32  # pipelined up to the bound, never beyond
    assert [fields[b"value"] for _, fields in _xrange(admin, key)] == [
        b"%d" % n for n in range(2000)
    ]


def test_the_sink_requests_only_as_a_slow_downstream_takes_confirmed_items(
    url: str, admin: redis.Redis
) -> None:
    key = _key()
    entered = [0]

    async def main() -> TestSubscriber[int]:
        subscriber: TestSubscriber[int] = TestSubscriber()

        def encode(n: int) -> bytes:
            return b"%d" % n

        (
            Flow.range(0, 1_000_000)
            .do_on_next(lambda _: entered.__setitem__(0, entered[0] + 1))
            .pipe(redis_streams.sink(url, key, encode=encode, max_in_flight=8))
            .subscribe(subscriber)
        )
        for step in range(1, 21):
            subscriber.request(5)
            await _until(lambda: len(subscriber.items) == 5 * step)  # noqa: B023
            await asyncio.sleep(0.01)
            assert entered[0] <= len(subscriber.items) + 8
            assert admin.xlen(key) <= entered[0]
        subscriber.cancel()
        await asyncio.sleep(0.05)
        return subscriber

    subscriber = asyncio.run(main())
    assert subscriber.items == list(range(100))
    assert admin.xlen(key) <= 100 + 8
    subscriber.assert_clean()


def test_a_cancel_from_a_thread_before_the_first_pipeline_sends_nothing_and_leaves_no_client(
    url: str, admin: redis.Redis
) -> None:
    """The first batch is on its way to its pipeline (it goes out at the end of the
    loop's turn) when a cancel comes from another thread, and the cancel reaches the
    publishing machinery only after a slow upstream cancel. Before, the sink's own
    client saw the close before it was opened, then opened for that batch (appended
    after the cancel) and was never closed."""
    key = _key()
    name = f"sink-{key}"
    closing = threading.Event()

    def slow_upstream_cancel() -> None:
        closing.set()  # the sink's close ran: it comes before the upstream cancel
        time.sleep(0.3)

    async def main() -> TestSubscriber[bytes]:
        subscriber: TestSubscriber[bytes] = TestSubscriber(10)
        upstream = Flow.range(0, 1000).map(lambda n: b"%d" % n).do_on_cancel(slow_upstream_cancel)
        upstream.pipe(redis_streams.sink(f"{url}?client_name={name}", key)).subscribe(subscriber)
        canceller = threading.Thread(target=subscriber.cancel)
        canceller.start()
        assert closing.wait(5)  # the loop is held until then: the batch is not out yet
        await asyncio.sleep(0.6)  # the batch's turn comes while the cancel is still going
        canceller.join()
        await asyncio.sleep(0.1)
        return subscriber

    subscriber = asyncio.run(main())
    assert admin.xlen(key) == 0
    assert [c for c in admin.client_list() if c.get("name") == name] == []
    assert subscriber.items == [] and not subscriber.is_terminated


def test_the_sink_trims_with_maxlen_on_a_client_it_leaves_open(
    url: str, admin: redis.Redis
) -> None:
    key = _key()

    async def main() -> list[bytes]:
        client = redis.asyncio.Redis.from_url(url)  # the caller's: the sink must not close it
        appended = await (
            Flow.range(0, 500)
            .map(lambda n: b"%d" % n)
            .pipe(redis_streams.sink(client, key, maxlen=100, approximate=False))
            .to_list_async()
        )
        await asyncio.sleep(0.05)
        # Still connected: nothing closed it (a command would reconnect, so look first).
        assert any(c.is_connected for c in client.connection_pool._available_connections)
        assert await client.xlen(key) == 100
        await client.aclose()
        return appended

    assert len(asyncio.run(main())) == 500
    assert admin.xlen(key) == 100
    assert _xrange(admin, key, count=1)[0][1] == {b"value": b"400"}


def test_a_failing_xadd_is_publish_error_with_its_item(url: str, admin: redis.Redis) -> None:
    key = _key()
    admin.set(key, "not a stream")  # XADD to it: WRONGTYPE

    async def main() -> TestSubscriber[bytes]:
        subscriber: TestSubscriber[bytes] = TestSubscriber(10)
        Flow.just(b"a", b"b").pipe(redis_streams.sink(url, key)).subscribe(subscriber)
        await _until(lambda: subscriber.is_terminated)
        return subscriber

    subscriber = asyncio.run(main())
    (error,) = subscriber.errors
    assert isinstance(error, PublishError) and error.item == b"a"
    assert "WRONGTYPE" in str(error.__cause__)
    subscriber.assert_clean()


def test_a_broker_killed_mid_stream_fails_sink_and_source_in_bounded_time() -> None:
    try:
        server = RedisServer()
    except ServerUnavailable as missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must provide this server: {missing}")
        pytest.skip(str(missing))
    with server:

        async def main() -> tuple[TestSubscriber[bytes], TestSubscriber[Message[bytes]], float]:
            published: TestSubscriber[bytes] = TestSubscriber(2**63 - 1)
            (
                Flow.range(0, 10**9)
                .map(lambda n: b"%d" % n)
                .pipe(redis_streams.sink(server.url, "out", max_in_flight=16))
                .subscribe(published)
            )
            consumed: TestSubscriber[Message[bytes]] = TestSubscriber(10)
            _source(server.url, "in", fetch_timeout=0.5).subscribe(consumed)  # waits in XREADGROUP
            await _until(lambda: len(published.items) >= 2000)
            killed = time.monotonic()
            server.kill()
            await _until(lambda: published.is_terminated and consumed.is_terminated, 15.0)
            return published, consumed, time.monotonic() - killed

        published, consumed, took = asyncio.run(main())
    assert took < 15.0, took
    (error,) = published.errors
    assert isinstance(error, PublishError)
    assert isinstance(error.__cause__, redis.exceptions.ConnectionError | OSError)
    assert isinstance(consumed.errors[0], redis.exceptions.ConnectionError | OSError)
    published.assert_clean()
    consumed.assert_clean()


# -- Reactive Streams compliance of the source --------------------------------------------------

_TCK_URL: list[str] = []
_TCK_BACKLOG_CAP = 200


@pytest.fixture(autouse=True)
def _tck_url(redis_server: LoopbackServer) -> Iterator[None]:
    _TCK_URL[:] = [redis_server.url]
    yield


class TestRedisStreamSourceVerification(PublisherVerification[Message[bytes]]):
    """The source over a pre-published backlog of ``elements`` entries per publisher.

    ``complete_when_drained`` makes it complete once the backlog is consumed, as a
    finite publisher must; a check asking for more than ``_TCK_BACKLOG_CAP`` items only
    needs its first few (Rule 3.17's overflow: 11), so it gets that many and a stream
    that does not complete.
    """

    asyncio = True

    def __init__(self) -> None:
        super().__init__(TestEnvironment(default_timeout_ms=2000, gc_timeout_ms=2000))

    def create_publisher(self, elements: int) -> Publisher[Message[bytes]]:
        (url,) = _TCK_URL
        key = _key()
        finite = elements <= _TCK_BACKLOG_CAP
        with contextlib.closing(redis.Redis.from_url(url)) as admin:
            admin.xgroup_create(key, "tck", "0", mkstream=True)
            _publish(admin, key, (b"%d" % i for i in range(min(elements, _TCK_BACKLOG_CAP))))
        return redis_streams.source(
            url,
            key,
            group="tck",
            consumer="c",
            claim_idle=None,
            fetch_timeout=0.1,
            complete_when_drained=finite,
        )

    def create_failed_publisher(self) -> Publisher[Message[bytes]] | None:
        # A URL redis-py cannot parse fails each subscription at subscribe time.
        return redis_streams.source("nope://127.0.0.1", _key(), group="tck", consumer="c")
