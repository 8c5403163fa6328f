"""Redis Streams: a consumer group as a source paced by demand, ``XADD`` as a sink.

Source: one consumer (``consumer``) of a consumer group (``group``) on one stream
key. Downstream demand is the only thing that makes it read:

* ``XREADGROUP GROUP g c COUNT min(demand, max_batch) BLOCK fetch_timeout STREAMS key >``
  is sent only while demand is outstanding, so the entries the client holds
  that downstream has not received never exceed ``max_batch``, and the group's
  pending entries list (PEL) grows only by what downstream asked for.
* On start, this consumer's own pending entries (``XREADGROUP ... STREAMS key
  0``: delivered to this consumer name before, never acknowledged) are read
  again first, then ``XAUTOCLAIM`` takes over entries idle longer than
  ``claim_idle`` from consumers that died; the claim sweep repeats every
  ``claim_interval``. Both run inside fetches, so they too deliver only within
  demand.

Settlement: ``ack()`` is ``XACK`` (the acks of one event-loop turn go out as one
``XACK`` with all their ids). Redis has no negative acknowledgement:
``nack(requeue=True)`` leaves the entry in the PEL and this source redelivers it
on its next fetch with ``XCLAIM`` to itself (the entry's delivery counter goes
up); should the source stop first, the entry stays pending and is claimed by
any consumer after ``claim_idle``, or re-read by this consumer name on restart.
``nack(requeue=False)`` acknowledges it (``XACK``), after copying it to
``dead_letter_stream`` when one is configured (``XADD`` and ``XACK`` in one
``MULTI``/``EXEC``).

Sink: ``XADD key * <field> <encoded item>`` (optionally ``MAXLEN ~ n``), the
reply being the confirmation. The ``XADD`` calls of one event-loop turn go out
as one pipeline, one pipeline at a time, so entries land in the stream in the
order of the items, and ``max_in_flight`` bounds the unconfirmed ones.

State of a source subscription (its ``_RedisFetcher``) is confined to the
connector's event loop: fetches run in the pump task, and settlements run on
the same loop (an ``ack()`` called there joins the next ``XACK`` at once; one
called from another thread is a coroutine sent to the loop), so no lock is
needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from typing_extensions import override

from .._core._operator import OperatorSubscriber
from .._flow import Flow
from ._common import (
    AckMode,
    AlreadySettledError,
    ConnectorStats,
    FetchFlow,
    LazyMetadata,
    Message,
    confirmed_batches,
    require,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.typing import StreamIdT

    from ..abc import Subscriber

__all__ = ["publish", "sink", "source"]

T = TypeVar("T")

_EXTRA = "redis"
_NO_ENTRY = "0-0"


def _redis() -> Any:
    return require("redis.asyncio", _EXTRA)


def _response_error() -> type[Exception]:
    error: type[Exception] = require("redis.exceptions", _EXTRA).ResponseError
    return error


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _check_client(client: str | Redis) -> None:
    if isinstance(client, str):
        return
    if client.get_connection_kwargs().get("decode_responses"):  # type: ignore[no-untyped-call]
        raise ValueError(
            "redis_streams needs a client with decode_responses=False: "
            "entries are bytes, decoded by your decode/encode functions"
        )


def _entries(reply: object) -> list[tuple[bytes | None, dict[bytes, bytes] | None]]:
    """The entries of a one-stream ``XREADGROUP``/``XCLAIM`` reply (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {key: [entries]} (or {key: [[entries]]})
        (entries,) = reply.values()
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        return list(entries)
    assert isinstance(reply, list)
    first = reply[0]
    if isinstance(first, list) and len(first) == 2 and isinstance(first[1], list):
        return list(first[1])  # RESP2 XREADGROUP: [[key, [entries]]]
    return list(reply)  # XCLAIM: [entries]


class _EntryMetadata(LazyMetadata):
    """A stream entry's metadata, built only when read.

    Keys: ``stream``, ``id`` (text), ``group``, ``consumer``, ``redelivered``
    (claimed from another consumer or redelivered after a nack), ``fields`` (the
    entry's raw fields).
    """

    __slots__ = ("_entry_fields", "_entry_id", "_fetcher", "_where")

    def __init__(
        self,
        where: tuple[str, str, str, bool],
        entry_id: bytes,
        fields: Mapping[bytes, bytes],
        fetcher: _RedisFetcher[Any],
    ) -> None:
        self._where = where  # (stream, group, consumer, redelivered): shared by a batch
        self._entry_id = entry_id
        self._entry_fields = fields
        self._fetcher = fetcher

    # The message's ack/nack (bound methods of what the metadata holds anyway: no
    # closure per message).
    def _start_ack(self) -> asyncio.Future[None] | Coroutine[Any, Any, None]:
        """Join the next ``XACK``: a future of Redis' reply, or (off the loop) a
        coroutine that joins it on the loop."""
        fetcher = self._fetcher
        if _running_loop() is fetcher._loop:
            return fetcher._join_xack(self._entry_id)
        return fetcher._join_xack_later(self._entry_id)

    def _start_nack(self, requeue: bool) -> Coroutine[Any, Any, None]:
        return self._fetcher._nack(self._entry_id, self._entry_fields, requeue)

    @override
    def _build(self) -> dict[str, object]:
        stream, group, consumer, redelivered = self._where
        return {
            "stream": stream,
            "id": self._entry_id.decode(),
            "group": group,
            "consumer": consumer,
            "redelivered": redelivered,
            "fields": self._entry_fields,
        }


class _RedisFetcher(Generic[T]):
    """The broker half of one source subscription (loop-confined, see the module doc)."""

    def __init__(
        self,
        client: str | Redis,
        stream: str,
        group: str,
        consumer: str,
        decode: Callable[[bytes], T],
        ack: AckMode,
        fetch_timeout: float,
        start_id: str,
        create_group: bool,
        claim_idle: float | None,
        claim_interval: float,
        dead_letter_stream: str | None,
        field: str,
        complete_when_drained: bool,
        stats: ConnectorStats,
    ) -> None:
        self._owned = isinstance(client, str)
        # A URL is parsed here, at subscribe time (a bad one fails the subscription);
        # the connection is made by the first fetch.
        self._client: Redis = (
            _redis().Redis.from_url(client, socket_timeout=max(5.0, fetch_timeout + 5.0))
            if isinstance(client, str)
            else client
        )
        self._opened = False
        self._stream = stream
        self._key = stream.encode()
        self._group = group
        self._consumer = consumer
        self._decode = decode
        self._manual = ack is AckMode.MANUAL
        self._block_ms = max(1, round(fetch_timeout * 1000))
        self._start_id = start_id
        self._create_group = create_group
        self._claim_idle_ms = None if claim_idle is None else max(0, round(claim_idle * 1000))
        self._claim_interval = claim_interval
        self._dead_letter = dead_letter_stream
        self._field = field.encode()
        self._drain = complete_when_drained
        self._stats = stats
        # Invariant: an id is in _unsettled from its delivery (MANUAL) until its ack or
        # nack(requeue=False) was confirmed; a claim sweep never redelivers one of them
        # (XAUTOCLAIM also picks this consumer's own idle entries).
        self._unsettled: set[bytes] = set()
        # Decides the first settlement of each message of this subscription.
        self._message_lock = threading.Lock()
        # nack(requeue=True) ids, redelivered (XCLAIM to self) ahead of new entries.
        self._requeue: deque[bytes] = deque()
        # The own-pending pass: the id to read after, None once it found nothing more.
        self._pending_cursor: bytes | None = b"0"
        # The claim sweep: its XAUTOCLAIM cursor while one runs, and when the next starts.
        self._claim_cursor: bytes | None = None
        self._next_claim = 0.0
        # Acks waiting for the next XACK, its future, and whether a flush task sends them.
        self._acks: list[bytes] = []
        self._acked: asyncio.Future[None] | None = None
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        self._busy = 0  # fetches and settlement calls to the broker in progress
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the pump's, from the first batch

    # -- fetching (the pump task) ---------------------------------------------------------

    async def fetch(self, n: int) -> Sequence[Message[T]]:
        # The client closes only between broker calls: closing it under a read in
        # flight would turn a cancelled fetch into a connection error.
        self._busy += 1
        try:
            return await self._fetch(n)
        finally:
            self._busy -= 1
            await self._close_if_idle()

    async def _fetch(self, n: int) -> Sequence[Message[T]]:
        client = self._client
        if not self._opened:
            await self._open()
        while True:
            if self._requeue:
                ids: list[StreamIdT] = [
                    self._requeue.popleft() for _ in range(min(n, len(self._requeue)))
                ]
                self._unsettled.difference_update(ids)  # delivered anew, below
                claimed: object = await client.xclaim(
                    self._key, self._group, self._consumer, 0, ids
                )
                batch = await self._deliver(_entries(claimed), redelivered=True)
                if batch:
                    return batch
                continue
            if self._pending_cursor is not None:
                pending: object = await client.xreadgroup(
                    self._group, self._consumer, {self._key: self._pending_cursor}, count=n
                )
                entries = _entries(pending)
                if not entries:
                    self._pending_cursor = None
                    continue
                last = entries[-1][0]
                assert last is not None
                self._pending_cursor = last
                batch = await self._deliver(entries, redelivered=True)
                if batch:
                    return batch
                continue
            if self._claim_due():
                assert self._claim_idle_ms is not None
                swept: list[Any] = await client.xautoclaim(
                    self._key,
                    self._group,
                    self._consumer,
                    self._claim_idle_ms,
                    self._claim_cursor or _NO_ENTRY,
                    count=n,
                )
                cursor = _as_bytes(swept[0])
                if cursor == b"0-0":
                    self._claim_cursor = None
                    self._next_claim = asyncio.get_running_loop().time() + self._claim_interval
                else:
                    self._claim_cursor = cursor
                batch = await self._deliver(list(swept[1]), redelivered=True)
                if batch:
                    return batch
                continue
            fresh: object = await client.xreadgroup(
                self._group,
                self._consumer,
                {self._key: ">"},
                count=n,
                block=None if self._drain else self._block_ms,
            )
            batch = await self._deliver(_entries(fresh), redelivered=False)
            if batch or not self._drain:
                return batch  # an empty batch: the pump looks at demand and cancel, then again
            if not self._requeue:
                raise StopAsyncIteration  # drained: nothing new, pending or claimable

    def _claim_due(self) -> bool:
        if self._claim_idle_ms is None:
            return False
        return (
            self._claim_cursor is not None or asyncio.get_running_loop().time() >= self._next_claim
        )

    async def _open(self) -> None:
        client = self._client
        if self._create_group:
            try:
                await client.xgroup_create(self._key, self._group, self._start_id, mkstream=True)
            except _response_error() as error:
                if "BUSYGROUP" not in str(error):
                    raise
        self._opened = True

    async def _deliver(
        self,
        entries: Sequence[tuple[bytes | None, Mapping[bytes, bytes] | None]],
        *,
        redelivered: bool,
    ) -> list[Message[T]]:
        """Decode ``entries`` into messages; a decode that raises fails the fetch.

        Deleted entries (no fields) still pending are acknowledged and skipped, and
        so are this subscription's own unsettled entries that a claim picked again.
        With ``ON_DELIVERY`` the batch is acknowledged in one ``XACK`` once every
        entry decoded, before it is handed downstream.
        """
        if not entries:
            return []
        loop = asyncio.get_running_loop()
        decode = self._decode
        field = self._field
        manual = self._manual
        unsettled = self._unsettled
        stream = self._stream
        where = (stream, self._group, self._consumer, redelivered)
        lock = self._message_lock
        self._loop = loop
        batch: list[Message[T]] = []
        ids: list[bytes] = []
        deleted: list[bytes] = []
        for entry_id, fields in entries:
            if entry_id is None:
                continue  # Redis 6.2's XAUTOCLAIM names no deleted entry: nothing to do
            if not fields:
                deleted.append(entry_id)
                continue
            if entry_id in unsettled:
                continue  # ours, still being processed downstream
            try:
                payload = fields[field]
            except KeyError:
                raise KeyError(
                    f"redis_streams: entry {_text(entry_id)} of {stream!r} has no field "
                    f"{_text(field)!r} (its fields: {sorted(_text(k) for k in fields)})"
                ) from None
            value = decode(payload)  # raising fails the stream: the batch stays pending
            metadata = _EntryMetadata(where, entry_id, fields, self)
            if manual:
                message = Message(
                    value,
                    metadata,
                    ack=metadata._start_ack,
                    nack=metadata._start_nack,
                    loop=loop,
                    lock=lock,
                )
            else:
                message = Message(
                    value, metadata, ack=_settled, nack=_nack_after_delivery, loop=loop, lock=lock
                )
            batch.append(message)
            ids.append(entry_id)
        if deleted:
            await self._xack(deleted)
        if not batch:
            return batch
        if manual:
            unsettled.update(ids)
        else:
            await self._xack(ids)
            self._stats.acked += len(ids)
        return batch

    async def _xack(self, ids: Sequence[bytes]) -> None:
        await self._client.xack(self._key, self._group, *ids)

    # -- settlement (coroutines on the loop, one per ack/nack) ----------------------------

    async def _join_xack_later(self, entry_id: bytes) -> None:
        # Shielded: this task is cancelled when its waiter (on another thread or loop)
        # gives up, and must not cancel the XACK future the other acks share.
        await asyncio.shield(self._join_xack(entry_id))

    def _join_xack(self, entry_id: bytes) -> asyncio.Future[None]:
        loop = self._loop
        assert loop is not None
        # One future per XACK, shared by its acks: a Settlement never cancels it
        # (an awaiter is shielded from it), and this flush retrieves its failure.
        self._acks.append(entry_id)
        done = self._acked
        if done is None:
            done = self._acked = loop.create_future()
        if not self._flushing:
            self._flushing = True
            self._busy += 1
            self._flush_task = loop.create_task(self._flush_acks())
        return done

    async def _flush_acks(self) -> None:
        """Send the acks gathered so far as one ``XACK``, until none is left."""
        try:
            while self._acks:
                ids, self._acks = self._acks, []
                done, self._acked = self._acked, None
                assert done is not None
                try:
                    await self._client.xack(self._key, self._group, *ids)
                except Exception as error:
                    if not done.done():
                        done.set_exception(error)
                        done.exception()  # retrieved: kept by the settlements, not logged
                    continue
                self._unsettled.difference_update(ids)
                self._stats.acked += len(ids)
                if not done.done():
                    done.set_result(None)
        finally:
            self._flushing = False
            self._busy -= 1
            await self._close_if_idle()

    async def _nack(self, entry_id: bytes, fields: Mapping[bytes, bytes], requeue: bool) -> None:
        if requeue:
            # Redis has no nack: the entry stays pending; the next fetch claims it again.
            if entry_id in self._unsettled and not self._closing:
                self._requeue.append(entry_id)
            self._stats.nacked += 1
            return
        self._busy += 1
        try:
            client = self._client
            if self._dead_letter is None:
                await client.xack(self._key, self._group, entry_id)
            else:
                dead = dict(fields)
                dead[b"origin-stream"] = self._key
                dead[b"origin-id"] = entry_id
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xadd(self._dead_letter, dead)  # type: ignore[arg-type]
                    pipe.xack(self._key, self._group, entry_id)
                    await pipe.execute()
            self._unsettled.discard(entry_id)
            self._stats.nacked += 1
        finally:
            self._busy -= 1
            await self._close_if_idle()

    # -- closing --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop: close the client this source opened once no settlement is in progress.

        Entries fetched and not delivered, and delivered and not acknowledged, stay
        pending in the group. An ack after this still works (the client reconnects
        for it) and closes the client again.
        """
        self._closing = True
        self._requeue.clear()
        await self._close_if_idle()

    async def _close_if_idle(self) -> None:
        if self._closing and self._busy == 0 and self._owned:
            await self._client.aclose()


async def _settled() -> None:
    """``ack()`` of a message acknowledged on delivery: nothing left to do."""


async def _nack_after_delivery(requeue: bool) -> None:
    raise AlreadySettledError(
        "nack(): this message was acknowledged on delivery (AckMode.ON_DELIVERY)"
    )


def _identity(payload: bytes) -> bytes:
    return payload


@overload
def source(
    client: str | Redis,
    stream: str,
    *,
    group: str,
    consumer: str,
    decode: None = None,
    ack: AckMode = AckMode.MANUAL,
    max_batch: int = 100,
    fetch_timeout: float = 1.0,
    start_id: str = "$",
    create_group: bool = True,
    claim_idle: float | None = 60.0,
    claim_interval: float = 30.0,
    dead_letter_stream: str | None = None,
    field: str = "value",
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[bytes]: ...
@overload
def source(
    client: str | Redis,
    stream: str,
    *,
    group: str,
    consumer: str,
    decode: Callable[[bytes], T],
    ack: AckMode = AckMode.MANUAL,
    max_batch: int = 100,
    fetch_timeout: float = 1.0,
    start_id: str = "$",
    create_group: bool = True,
    claim_idle: float | None = 60.0,
    claim_interval: float = 30.0,
    dead_letter_stream: str | None = None,
    field: str = "value",
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[T]: ...
def source(
    client: str | Redis,
    stream: str,
    *,
    group: str,
    consumer: str,
    decode: Callable[[bytes], object] | None = None,
    ack: AckMode = AckMode.MANUAL,
    max_batch: int = 100,
    fetch_timeout: float = 1.0,
    start_id: str = "$",
    create_group: bool = True,
    claim_idle: float | None = 60.0,
    claim_interval: float = 30.0,
    dead_letter_stream: str | None = None,
    field: str = "value",
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[Any]:
    """Consume a Redis stream as consumer ``consumer`` of group ``group``, paced by demand.

    ::

        stream:  1-0 2-0 3-0 4-0 5-0 ...
        request(2) --> XREADGROUP COUNT 2 -->  ^-m(1-0)-m(2-0)
        request(3) --> XREADGROUP COUNT 3 -->  -m(3-0)-m(4-0)-m(5-0)
        (no demand: no XREADGROUP, the rest waits in Redis)

    Each subscription is one consumer: it creates the group if missing
    (``XGROUP CREATE key group start_id MKSTREAM``; ``start_id="$"``: only
    entries added from now on, ``"0"``: the whole stream), re-reads its own
    pending entries, claims those of dead consumers, then reads new entries.
    A message's ``value`` is ``decode(entry[field])``; its ``metadata`` holds
    ``stream``, ``id``, ``group``, ``consumer``, ``redelivered`` (from the
    pending list, a claim or a nack) and ``fields`` (the whole entry).

    Args:
        client: a ``redis://`` URL (the source opens a client per subscription
            and closes it), or a ``redis.asyncio.Redis`` made with
            ``decode_responses=False`` (yours to close; its ``socket_timeout``
            must exceed ``fetch_timeout``).
        stream: the stream key.
        group: the consumer group.
        consumer: this consumer's name in the group; a consumer restarted with
            the same name re-reads what it had not acknowledged.
        decode: turns an entry's ``field`` into the message value (default:
            the ``bytes``).
        ack: ``AckMode.MANUAL`` (at-least-once) or ``AckMode.ON_DELIVERY``
            (at-most-once: each batch is ``XACK``-ed before it goes downstream).
        max_batch: the largest ``COUNT`` of one read, the bound on what the
            client holds.
        fetch_timeout: seconds one ``XREADGROUP`` waits for new entries (its
            ``BLOCK``); an empty wait just reads again while demand lasts.
        start_id: where a group created here starts.
        create_group: create the group if missing; ``False``: a missing group
            is an error.
        claim_idle: seconds an entry must be pending with another consumer
            before this one claims it (``XAUTOCLAIM``); ``None``: never claim.
            Longer than your slowest processing, or live consumers lose work
            to each other (still at-least-once, with duplicates).
        claim_interval: seconds between claim sweeps (one runs on start).
        dead_letter_stream: where ``nack(requeue=False)`` copies an entry
            (with ``origin-stream`` and ``origin-id`` fields) before ``XACK``.
        field: the entry field that holds the payload.
        complete_when_drained: complete once nothing is pending, claimable or
            new (reads do not block): process a backlog and stop.
        loop: the event loop to run on (default: the loop running at
            subscribe time).

    Demand: ``XREADGROUP ... COUNT min(outstanding demand, max_batch)`` only
    while demand is outstanding (also the pending re-read, ``XCLAIM`` of
    nacked entries and ``XAUTOCLAIM``), so the client never holds more than
    ``max_batch`` undelivered messages and the group's pending list grows by
    at most what downstream requested.

    Cancellation: stops reading within the batch in flight (a blocked
    ``XREADGROUP`` is abandoned) and closes the client it opened. Entries
    read and not delivered, or delivered and not acknowledged, stay pending:
    this consumer name re-reads them on restart, other consumers claim them
    after ``claim_idle``. Entries never read stay in the stream.

    Errors: a lost connection, a missing group, an entry without ``field``,
    a ``decode`` that raises (its batch stays pending, unacknowledged) and a
    bad ``request(n)`` (Rule 3.9) end the stream with ``on_error``.

    Delivery: ``MANUAL`` is at-least-once: a message is redelivered until it
    is acknowledged; after a crash, duplicates are at most the entries the
    consumer had received and not acknowledged. ``ON_DELIVERY`` is
    at-most-once. ``ack()`` is ``XACK``; ``nack(requeue=True)`` redelivers the
    entry on the next fetch (Redis has no nack: it ``XCLAIM``-s the entry to
    itself); ``nack(requeue=False)`` acknowledges it, copying it to
    ``dead_letter_stream`` first if set.

    Example::

        from reactive_bp.connectors import redis_streams

        orders = redis_streams.source(
            "redis://127.0.0.1:6379", "orders", group="billing", consumer="billing-1",
            decode=json.loads, max_batch=50,
        )

        async def bill(message: Message[dict[str, object]]) -> str:
            await charge(message.value)
            await message.ack()            # processing really ended here
            return message.metadata["id"]

        await orders.map_async(bill, max_concurrency=8).to_list()
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if fetch_timeout <= 0:
        raise ValueError(f"fetch_timeout must be > 0 seconds, got {fetch_timeout}")
    if claim_idle is not None and claim_idle < 0:
        raise ValueError(f"claim_idle must be >= 0 seconds or None, got {claim_idle}")
    if claim_interval <= 0:
        raise ValueError(f"claim_interval must be > 0 seconds, got {claim_interval}")
    _redis()  # fail now, naming the extra, if the client is not installed
    _check_client(client)
    decoder: Callable[[bytes], object] = _identity if decode is None else decode

    def open_fetcher(stats: ConnectorStats) -> _RedisFetcher[object]:
        return _RedisFetcher(
            client,
            stream,
            group,
            consumer,
            decoder,
            ack,
            fetch_timeout,
            start_id,
            create_group,
            claim_idle,
            claim_interval,
            dead_letter_stream,
            field,
            complete_when_drained,
            stats,
        )

    return FetchFlow(
        open_fetcher,
        max_batch=max_batch,
        loop=loop,
        name=f"redis_streams.source({stream!r}, group={group!r}, consumer={consumer!r})",
    )


# -- sink -------------------------------------------------------------------------------------


class _Appender:
    """Pipelined ``XADD`` for one sink subscription (loop-confined).

    Every batch of ``XADD`` asked for in one event-loop turn goes out in one
    pipeline (one round trip), one pipeline at a time: entries are appended
    in item order and each item's reply (its entry id) is its confirmation.
    A batch cancelled before its pipeline was built is never sent.
    """

    def __init__(
        self,
        client: str | Redis,
        stream: str,
        field: str,
        maxlen: int | None,
        approximate: bool,
    ) -> None:
        self._target = client
        self._client: Redis | None = None
        self.owned = isinstance(client, str)
        self._key = stream.encode()
        self._field = field.encode()
        self._maxlen = maxlen
        self._approximate = approximate
        self._queue: list[tuple[list[bytes], asyncio.Future[Sequence[object]]]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        self._close_task: asyncio.Task[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def xadd_batch(self, payloads: list[bytes]) -> asyncio.Future[Sequence[object]]:
        """Queue one ``XADD`` per payload; the future is their replies (an entry id, or
        the error of an ``XADD`` that failed), in order."""
        loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[Sequence[object]] = loop.create_future()
        self._queue.append((payloads, done))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        return done

    async def _flush(self) -> None:
        try:
            while self._queue:
                if self._closing:
                    # Cancelled or failed: nothing more is sent. The runner cancels
                    # the futures of these batches (it closes with the stream).
                    self._queue = []
                    break
                queued = [(p, done) for p, done in self._queue if not done.done()]
                self._queue = []
                if not queued:
                    continue  # every batch was cancelled before it was sent
                payloads = [payload for batch, _ in queued for payload in batch]
                try:
                    replies = await self._append(payloads)
                except Exception as error:  # the connection: every XADD of the pipeline
                    for _, done in queued:
                        if not done.done():
                            done.set_exception(error)
                    continue
                start = 0
                for batch, done in queued:
                    end = start + len(batch)
                    if not done.done():  # else its publish was cancelled
                        done.set_result(replies[start:end])
                    start = end
        finally:
            self._flushing = False
            await self._close_if_idle()

    async def _append(self, payloads: list[bytes]) -> list[object]:
        client = self._client
        if client is None:
            target = self._target
            client = self._client = (
                _redis().Redis.from_url(target) if isinstance(target, str) else target
            )
        pipe = client.pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(
                self._key,
                {self._field: payload},
                maxlen=self._maxlen,
                approximate=self._approximate,
            )
        replies: list[object] = await pipe.execute(raise_on_error=False)
        return replies

    def close(self) -> None:
        """The stream ended (any thread): send nothing more, close the client this sink
        opened once nothing is in flight.

        ``_closing`` is set first: a pipeline that starts after it (the first batch may
        still be on its way to the loop when a cancel comes from another thread) sends
        nothing, and the flush running now closes the client when it ends.
        """
        self._closing = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # nothing was sent yet: no client was opened

        def start() -> None:
            self._close_task = loop.create_task(self._close_if_idle())

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(start)

    async def _close_if_idle(self) -> None:
        client = self._client
        if self._closing and not self._flushing and self.owned and client is not None:
            self._client = None
            await client.aclose()


class _ClosingSubscriber(OperatorSubscriber[T, T]):
    """Passes everything through; closes the sink's client when the stream ends."""

    __slots__ = ("_appender",)

    def __init__(self, actual: Subscriber[T], appender: _Appender) -> None:
        super().__init__(actual)
        self._appender = appender

    @override
    def hook_on_next(self, item: T) -> None:
        self.emit(item)

    @override
    def hook_on_complete(self) -> None:
        self._appender.close()
        super().hook_on_complete()

    @override
    def hook_on_error(self, error: Exception) -> None:
        self._appender.close()
        super().hook_on_error(error)

    @override
    def hook_on_cancel(self) -> None:
        self._appender.close()


def _encode_bytes(item: bytes) -> bytes:
    return item


@overload
def publish(
    flow: Flow[bytes],
    client: str | Redis,
    stream: str,
    *,
    encode: None = None,
    max_in_flight: int = 100,
    field: str = "value",
    maxlen: int | None = None,
    approximate: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Flow[bytes]: ...
@overload
def publish(
    flow: Flow[T],
    client: str | Redis,
    stream: str,
    *,
    encode: Callable[[T], bytes],
    max_in_flight: int = 100,
    field: str = "value",
    maxlen: int | None = None,
    approximate: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Flow[T]: ...
def publish(
    flow: Flow[Any],
    client: str | Redis,
    stream: str,
    *,
    encode: Callable[[Any], bytes] | None = None,
    max_in_flight: int = 100,
    field: str = "value",
    maxlen: int | None = None,
    approximate: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Flow[Any]:  # the overloads above are the typed signatures
    """Append each item of ``flow`` to a Redis stream, requesting more only as Redis confirms.

    ::

        ^-a-b-c-|   publish(flow, url, "out")   ^--a-b---c|   (each once XADD replied)

    Each item becomes ``XADD stream * <field> encode(item)`` (with ``MAXLEN ~
    maxlen`` when ``maxlen`` is set; ``approximate=False`` trims exactly), and
    is emitted downstream once Redis replied, in order. Subscribe to the
    result to drive it. ``sink(...)`` is the same as an operator for
    ``flow.pipe(...)``; this function form lets a type checker infer the item
    type of a ``lambda`` given as ``encode``.

    Args:
        flow: the items to append.
        client: a ``redis://`` URL (a client per subscription, closed when the
            stream ends) or a ``redis.asyncio.Redis`` (yours to close).
        stream: the stream key to append to.
        encode: turns an item into the entry's payload (default: items are
            ``bytes``).
        max_in_flight: the most ``XADD`` calls awaiting their reply (>= 1).
        field: the entry field that holds the payload.
        maxlen: trim the stream to about this many entries on each append.
        approximate: trim with ``~`` (cheap, may keep a few more entries).
        loop: the event loop to publish on (default: the loop running at
            subscribe time).

    Demand: upstream is asked for ``max_in_flight`` items, then one more per
    confirmed item that downstream received: at most ``max_in_flight``
    entries are unconfirmed, and a slow downstream holds publishing back.
    The ``XADD`` calls of one event-loop turn share one pipeline (one round
    trip), one pipeline at a time, so entries keep the items' order.

    Cancellation: cancels upstream and stops waiting for the replies (an
    ``XADD`` already sent may still be appended), then closes an owned client.

    Errors: an ``XADD`` that fails (a lost connection, a key that is not a
    stream, an ``encode`` that raises) ends the stream with
    ``PublishError(item)``, the cause attached, and cancels upstream.
    Upstream errors pass through.

    Delivery guarantee: an item emitted downstream is in the stream. After an
    error, items not emitted may or may not have been appended (publishing
    them again is at-least-once).

    Example::

        appended = await redis_streams.publish(
            Flow.range(0, 1000), "redis://127.0.0.1:6379", "numbers",
            encode=lambda n: str(n).encode(), max_in_flight=64,
        ).to_list_async()
    """
    return sink(
        client,
        stream,
        encode=encode,
        max_in_flight=max_in_flight,
        field=field,
        maxlen=maxlen,
        approximate=approximate,
        loop=loop,
    )(flow)


@overload
def sink(
    client: str | Redis,
    stream: str,
    *,
    encode: None = None,
    max_in_flight: int = 100,
    field: str = "value",
    maxlen: int | None = None,
    approximate: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[bytes]], Flow[bytes]]: ...
@overload
def sink(
    client: str | Redis,
    stream: str,
    *,
    encode: Callable[[T], bytes],
    max_in_flight: int = 100,
    field: str = "value",
    maxlen: int | None = None,
    approximate: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[T]], Flow[T]]: ...
def sink(
    client: str | Redis,
    stream: str,
    *,
    encode: Callable[[Any], bytes] | None = None,
    max_in_flight: int = 100,
    field: str = "value",
    maxlen: int | None = None,
    approximate: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[Any]], Flow[Any]]:  # the overloads above are the typed signatures
    """``publish`` as an operator: ``flow.pipe(redis_streams.sink(url, "out"))``.

    ::

        ^-a-b-c-|   pipe(sink(url, "out"))   ^--a-b---c|   (each once XADD replied)

    Parameters, demand, cancellation, errors and the delivery guarantee are
    ``publish``'s. A type checker cannot infer the item type of a ``lambda``
    ``encode`` inside ``pipe(...)``: pass a typed function, map to ``bytes``
    first (the default ``encode``), or use ``publish(flow, ...)``.

    Demand: at most ``max_in_flight`` unconfirmed ``XADD`` calls; one more item
    requested per confirmed item downstream received.

    Cancellation: cancels upstream and stops waiting for replies.

    Errors: a failed ``XADD`` is ``PublishError(item)``, the cause attached.

    Example::

        confirmed = await (
            Flow.range(1000)
            .map(lambda n: str(n).encode())
            .pipe(redis_streams.sink("redis://127.0.0.1:6379", "numbers", max_in_flight=64))
            .to_list_async()
        )
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if maxlen is not None and maxlen < 0:
        raise ValueError(f"maxlen must be >= 0 or None, got {maxlen}")
    _redis()  # fail now, naming the extra, if the client is not installed
    _check_client(client)
    encoder: Callable[[Any], bytes] = _encode_bytes if encode is None else encode

    def operator(upstream: Flow[Any]) -> Flow[Any]:
        def per_subscription() -> Flow[Any]:
            appender = _Appender(client, stream, field, maxlen, approximate)
            published = confirmed_batches(
                upstream, encoder, appender.xadd_batch, max_in_flight, loop
            )
            if not appender.owned:
                return published
            return published.lift(lambda downstream: _ClosingSubscriber(downstream, appender))

        return Flow.defer(per_subscription)

    return operator
