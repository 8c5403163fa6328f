"""NATS JetStream: a pull consumer as a demand-paced source, confirmed publishes as a sink.

Needs the ``nats`` extra (``pip install 'reactive-bp[nats]'``, i.e. ``nats-py``); the
client is imported on first use, so importing this module never fails.

How demand maps onto JetStream:

* ``source`` binds (or creates) a *pull* consumer. Outstanding downstream demand
  ``d`` becomes one ``fetch(batch=min(d, max_batch), timeout=fetch_timeout)``; no
  fetch is made while ``d`` is 0, so the server delivers nothing nobody asked for.
  A fetch that times out empty is not an error: the pump asks again while demand
  remains. What the client holds undelivered is at most one batch; what the server
  counts as delivered-and-unacknowledged is at most what downstream requested and
  has not acknowledged yet (and never more than the consumer's ``max_ack_pending``).
* ``sink`` (an operator for ``Flow.pipe``) publishes each item to JetStream with a
  reply subject of its own (what ``js.publish`` does, without a task and a timer per
  message: the items of one event-loop turn are written together) and emits it once
  its ``PubAck`` came: at most ``max_in_flight`` are unconfirmed, one more item is
  requested upstream per confirmation.

Connections: pass a URL and each subscription opens its own connection, closed when
the stream ends or is cancelled (a source's once the messages it delivered are
settled, at most ``ack_wait`` later), or pass a connected ``nats.aio.client.Client``,
which stays yours (never closed here). Either way the connector runs on the event
loop the stream is subscribed on, or on ``loop=``.

This module is named ``nats``; it imports the client as the top-level ``nats``
package (absolute imports only), never itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Sequence
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from typing_extensions import override

from .._core._operator import OperatorSubscriber
from .._flow import Flow
from ._common import (
    AckMode,
    ConnectorStats,
    FetchFlow,
    LazyMetadata,
    Message,
    acked_on_delivery,
    confirmed,
    nack_after_delivery,
    require,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.api import ConsumerConfig
    from nats.js.client import JetStreamContext

    from ..abc import Subscriber

__all__ = ["sink", "source"]

T = TypeVar("T")

_EXTRA = "nats"
# How long an ephemeral consumer (durable=None) survives on the server without a
# fetch: long enough for a subscriber that holds its demand at 0 for minutes, short
# enough that one left behind by a crashed process goes away by itself.
_EPHEMERAL_INACTIVE_S = 300.0
# The server's ack_wait when a consumer does not set one.
_DEFAULT_ACK_WAIT_S = 30.0
# Server answers to a pull consumer's message (JetStream's ack protocol).
_NAK = b"-NAK"
_TERM = b"+TERM"


def _raw(data: bytes) -> bytes:
    return data


def _nats_module(name: str = "nats") -> ModuleType:
    return require(name, _EXTRA)


class _Link:
    """One NATS connection: the user's (borrowed, never closed here) or one opened from a URL.

    Runs on one event loop. An owned connection is opened once, by the first
    caller (concurrent callers share the attempt), and closed by ``aclose``,
    which flushes what was written to it first (acknowledgements, say).
    """

    __slots__ = ("_client", "_closed", "_connecting", "_url", "owned")

    def __init__(self, connection: str | Client) -> None:
        if isinstance(connection, str):
            self._url: str | None = connection
            self._client: Client | None = None
            self.owned = True
        else:
            # Rule 1.9: a client that cannot serve is refused at subscribe time.
            if connection.is_closed or connection.is_draining:
                raise ConnectionError("the NATS client is closed: pass a connected one")
            if not (connection.is_connected or connection.is_reconnecting):
                raise ConnectionError("the NATS client is not connected: await nats.connect()")
            self._url = None
            self._client = connection
            self.owned = False
        self._connecting: asyncio.Task[Client] | None = None
        self._closed = False

    async def client(self) -> Client:
        """The connected client (opened on first use when owned)."""
        client = self._client
        if client is not None:
            return client
        if self._closed:
            raise ConnectionError("the NATS connection of this stream is closed")
        if self._connecting is None:
            nats = _nats_module()
            connect = nats.connect
            self._connecting = asyncio.get_running_loop().create_task(
                connect(self._url, name="reactive_bp", allow_reconnect=True)
            )
        # Shielded: a caller cancelled while waiting must not cancel the shared attempt.
        client = await asyncio.shield(self._connecting)
        if self._closed:  # closed while connecting: aclose closes it
            raise ConnectionError("the NATS connection of this stream is closed")
        self._client = client
        return client

    def jetstream(self, client: Client, timeout: float) -> JetStreamContext:
        return client.jetstream(timeout=timeout)

    async def aclose(self) -> None:
        """Close an owned connection (flushing pending writes); a borrowed one stays open."""
        self._closed = True
        if not self.owned:
            return
        connecting = self._connecting
        if connecting is None:
            return
        try:
            client = await connecting
        except Exception:
            return  # it never connected: nothing to close
        if not client.is_closed:
            await client.close()  # flushes pending acks before the socket closes

    def close_soon(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """``aclose`` from any thread, without waiting (a sink's end)."""
        if not self.owned or self._connecting is None:
            self._closed = True
            return
        target = loop if loop is not None else self._connecting.get_loop()
        if target.is_closed():
            return
        target.call_soon_threadsafe(_spawn, target, self.aclose)


def _spawn(loop: asyncio.AbstractEventLoop, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop.create_task(start())


class _Metadata(LazyMetadata):
    """A JetStream message's metadata, parsed only when read.

    Keys: ``subject``, ``headers``, ``stream``, ``consumer``, ``stream_seq``,
    ``consumer_seq``, ``num_delivered`` (above 1: a redelivery), ``num_pending``,
    ``timestamp``.
    """

    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @override
    def _build(self) -> dict[str, object]:
        msg = self._msg
        meta = msg.metadata
        return {
            "subject": msg.subject,
            "headers": msg.headers,
            "stream": meta.stream,
            "consumer": meta.consumer,
            "stream_seq": meta.sequence.stream,
            "consumer_seq": meta.sequence.consumer,
            "num_delivered": meta.num_delivered,
            "num_pending": meta.num_pending,
            "timestamp": meta.timestamp,
        }


class _PullFetcher(Generic[T]):
    """The JetStream half of one source subscription: a bound pull consumer.

    Everything here runs on the connector's loop, called by the one pump task
    (``fetch``) or by the close task after it (``aclose``); settlements run on the
    same loop too (started inside ``ack()`` when called there, else as tasks). So
    no field needs a lock.
    """

    __slots__ = (
        "_ack_all",
        "_ack_mode",
        "_ack_wait",
        "_carry",
        "_closed",
        "_complete_when_drained",
        "_confirm_acks",
        "_consumer",
        "_decode",
        "_done_now",
        "_durable",
        "_ephemeral",
        "_fetch_timeout",
        "_grace",
        "_js",
        "_link",
        "_loop",
        "_max_ack_pending",
        "_request_timeout",
        "_settled",
        "_stats",
        "_stream",
        "_sub",
        "_subject",
        "_waiter",
    )

    def __init__(
        self,
        link: _Link,
        subject: str,
        *,
        stream: str | None,
        durable: str | None,
        decode: Callable[[bytes], T],
        ack: AckMode,
        fetch_timeout: float,
        request_timeout: float,
        ack_wait: float | None,
        max_ack_pending: int | None,
        confirm_acks: bool,
        complete_when_drained: bool,
        stats: ConnectorStats,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._link = link
        self._subject = subject
        self._stream = stream
        self._durable = durable
        self._decode = decode
        self._ack_mode = ack
        self._fetch_timeout = fetch_timeout
        self._request_timeout = request_timeout
        self._ack_wait = ack_wait
        self._max_ack_pending = max_ack_pending
        self._confirm_acks = confirm_acks
        self._complete_when_drained = complete_when_drained
        self._stats = stats
        self._loop = loop
        self._done_now: asyncio.Future[None] | None = None  # see _settled_future
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None
        self._ephemeral = False
        # The consumer's policy is AckAll: acknowledging a message acknowledges every
        # earlier one, so ON_DELIVERY settles a batch with one ack (of its last message).
        self._ack_all = False
        # Messages a fetch returned beyond what was asked (left in the subscription's
        # queue by an earlier pull request that expired as they arrived). Invariant:
        # handed out before anything is fetched again, so it never grows past one batch.
        self._carry: deque[Msg] = deque()
        self._closed = False
        # MANUAL settlements finished (either way). Invariant: <= stats.delivered; an
        # owned connection closes once they are equal (or after _grace seconds).
        self._settled = 0
        self._waiter: asyncio.Future[None] | None = None  # aclose waits on it
        self._grace = ack_wait if ack_wait is not None else _DEFAULT_ACK_WAIT_S

    # -- Fetcher ------------------------------------------------------------------------

    async def fetch(self, n: int) -> Sequence[Message[T]]:
        """At most ``n`` messages: one pull request for ``n``, or none after the wait."""
        try:
            return await self._fetch(n)
        except StopAsyncIteration:
            raise
        except Exception as error:
            if self._closed:
                # Cancelled: aclose closed the connection under the fetch before the
                # pump's cancellation arrived, and the client reports that as an error.
                # It is the cancellation, not a failure of the stream.
                raise asyncio.CancelledError from error
            raise

    async def _fetch(self, n: int) -> Sequence[Message[T]]:
        sub = self._sub
        if sub is None:
            sub = await self._open()
        carry = self._carry
        raw: list[Msg]
        if carry:
            raw = [carry.popleft() for _ in range(min(n, len(carry)))]
        else:
            try:
                raw = await sub.fetch(n, timeout=self._fetch_timeout)
            except TimeoutError:  # nats.errors.TimeoutError too: nothing within the wait
                if self._complete_when_drained:
                    raise StopAsyncIteration from None  # the pump completes the stream
                return ()  # the pump fetches again while demand remains
            if len(raw) > n:  # Rule 1.1: never hand the pump more than it asked for
                carry.extend(raw[n:])
                del raw[n:]
        decode = self._decode
        # A decode error fails the stream before anything of the batch is acked or
        # delivered: the broker redelivers the whole batch after ack_wait.
        values = [decode(msg.data) for msg in raw]
        loop = self._loop
        if self._ack_mode is AckMode.ON_DELIVERY:
            if raw:
                await self._ack_batch(raw)
            return [
                Message(
                    value,
                    _Metadata(msg),
                    ack=acked_on_delivery,
                    nack=nack_after_delivery,
                    loop=loop,
                )
                for value, msg in zip(values, raw, strict=True)
            ]
        ack, nack = self._start_ack, self._start_nack
        return [
            Message(
                value, _Metadata(msg), ack=partial(ack, msg), nack=partial(nack, msg), loop=loop
            )
            for value, msg in zip(values, raw, strict=True)
        ]

    async def aclose(self) -> None:
        """Stop pulling; unacknowledged messages go back to the server after ack_wait.

        Never raises (it runs as a fire-and-forget task): cleaning up after a broker
        that went away is best effort, the server expires what it cannot delete.
        """
        self._closed = True
        self._carry.clear()
        sub, self._sub = self._sub, None
        try:
            if sub is not None:
                with contextlib.suppress(Exception):  # the connection is gone, and the sub
                    await sub.unsubscribe()
            if self._ack_mode is AckMode.MANUAL and (self._link.owned or self._ephemeral):
                # Downstream may still be processing what it received (a take(n)
                # cancels before the last items are acked): keep the connection and
                # the consumer for their acks, at most ack_wait, after which the
                # server redelivers them anyway.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_settled(), self._grace)
            js, consumer = self._js, self._consumer
            if self._ephemeral and js is not None and consumer is not None and self._stream:
                # Best effort: the server removes it after _EPHEMERAL_INACTIVE_S anyway.
                with contextlib.suppress(Exception):
                    await js.delete_consumer(self._stream, consumer)
        finally:
            with contextlib.suppress(Exception):  # nothing more to release if it fails
                await self._link.aclose()

    async def _all_settled(self) -> None:
        while self._settled < self._stats.delivered:
            waiter = self._waiter = self._loop.create_future()
            await waiter

    def _note_settled(self) -> None:
        self._settled += 1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- setup --------------------------------------------------------------------------

    async def _open(self) -> JetStreamContext.PullSubscription:
        """Connect, bind or create the consumer, subscribe to its deliveries."""
        client = await self._link.client()
        js = self._js = self._link.jetstream(client, self._request_timeout)
        if self._stream is None:
            self._stream = await js.find_stream_name_by_subject(self._subject)
        consumer = self._consumer = await self._ensure_consumer(js, self._stream)
        sub = await js.pull_subscribe_bind(consumer=consumer, stream=self._stream)
        if self._closed:  # closed while we were setting up
            await sub.unsubscribe()
            raise ConnectionError("the source was closed while it connected")
        self._sub = sub
        return sub

    async def _ensure_consumer(self, js: JetStreamContext, stream: str) -> str:
        api = _nats_module("nats.js.api")
        errors = _nats_module("nats.js.errors")
        durable = self._durable
        if durable is not None:
            try:
                info = await js.consumer_info(stream, durable)
            except errors.NotFoundError:
                info = None
            if info is not None:
                await self._bind_existing(js, stream, info.config)
                return durable
        name = durable if durable is not None else f"rbp_{uuid.uuid4().hex}"
        policy = api.AckPolicy
        config = api.ConsumerConfig(
            name=name,
            durable_name=durable,
            # A consumer made for ON_DELIVERY acknowledges cumulatively: one ack per batch.
            ack_policy=policy.ALL if self._ack_mode is AckMode.ON_DELIVERY else policy.EXPLICIT,
            filter_subject=self._subject,
            ack_wait=self._ack_wait,
            max_ack_pending=self._max_ack_pending,
            inactive_threshold=_EPHEMERAL_INACTIVE_S if durable is None else None,
        )
        info = await js.add_consumer(stream, config)
        self._ephemeral = durable is None
        self._ack_all = self._ack_mode is AckMode.ON_DELIVERY
        return str(info.name)

    async def _bind_existing(
        self, js: JetStreamContext, stream: str, config: ConsumerConfig
    ) -> None:
        """Check that a durable consumer fits; update what the caller asked to change."""
        api = _nats_module("nats.js.api")
        filters = {config.filter_subject, *(config.filter_subjects or ())} - {None}
        if filters and self._subject not in filters:
            raise ValueError(
                f"durable consumer {self._durable!r} on stream {stream!r} filters "
                f"{sorted(str(f) for f in filters)}, not {self._subject!r}"
            )
        changes: dict[str, object] = {}
        if self._ack_wait is not None and config.ack_wait != self._ack_wait:
            changes["ack_wait"] = self._ack_wait
        if self._max_ack_pending is not None and config.max_ack_pending != self._max_ack_pending:
            changes["max_ack_pending"] = self._max_ack_pending
        if changes:
            # Only the fields asked for change: the rest of the user's config stays.
            await js.add_consumer(stream, config.evolve(**changes))
        if self._ack_wait is None and config.ack_wait:
            self._grace = config.ack_wait
        self._ack_all = config.ack_policy == api.AckPolicy.ALL

    # -- settlement ---------------------------------------------------------------------

    async def _ack_batch(self, raw: list[Msg]) -> None:
        """ON_DELIVERY: acknowledge a batch, confirmed by the server, before delivering it."""
        last = raw[-1]
        if not self._ack_all:
            for msg in raw[:-1]:
                await msg.ack()  # written in order on one connection, ahead of the last
        # The server answers the last ack only after processing the ones before it.
        await last.ack_sync(timeout=self._request_timeout)
        self._stats.acked += len(raw)

    def _start_ack(self, msg: Msg) -> asyncio.Future[None] | Coroutine[Any, Any, None]:
        return _start_on(self._loop, self._ack(msg), self._settled_future)

    def _start_nack(
        self, msg: Msg, requeue: bool
    ) -> asyncio.Future[None] | Coroutine[Any, Any, None]:
        return _start_on(self._loop, self._nack(msg, requeue), self._settled_future)

    def _settled_future(self) -> asyncio.Future[None]:
        """A done future of the loop, shared by the settlements that finished at once."""
        done = self._done_now
        if done is None:
            done = self._done_now = self._loop.create_future()
            done.set_result(None)
        return done

    async def _ack(self, msg: Msg) -> None:
        try:
            if self._confirm_acks:
                await msg.ack_sync(timeout=self._request_timeout)
            else:
                await msg.ack()
            self._stats.acked += 1
        finally:
            self._note_settled()

    async def _nack(self, msg: Msg, requeue: bool) -> None:
        try:
            if self._confirm_acks:
                client = await self._link.client()
                await client.request(
                    msg.reply, _NAK if requeue else _TERM, timeout=self._request_timeout
                )
            elif requeue:
                await msg.nak()
            else:
                await msg.term()
            self._stats.nacked += 1
        finally:
            self._note_settled()


def _start_on(
    loop: asyncio.AbstractEventLoop,
    coroutine: Coroutine[Any, Any, None],
    settled: Callable[[], asyncio.Future[None]],
) -> asyncio.Future[None] | Coroutine[Any, Any, None]:
    """Start a settlement at once when called on ``loop``'s own thread.

    An ack without confirmation only writes to the connection's buffer: run that way
    it finishes without ever suspending, so it needs no task of its own (a task per
    ack was most of what an ack cost). One that suspends is continued by a task from
    where it stopped. Called from another thread, the coroutine is returned as it is,
    for ``Settlement`` to run on ``loop`` (the client is not thread-safe). One that
    finished returns ``settled()``: a future already done, which the settlements
    that finished at once share (nothing can cancel a done future).
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not loop:
        return coroutine
    try:
        suspended_on = coroutine.send(None)
    except StopIteration:
        return settled()
    except Exception as error:
        failed: asyncio.Future[None] = loop.create_future()
        failed.set_exception(error)
        return failed
    return loop.create_task(_resume(coroutine, suspended_on))


async def _resume(coroutine: Coroutine[Any, Any, None], suspended_on: object) -> None:
    """Drive ``coroutine`` on from its first suspension (as ``await`` would have)."""
    await _Resumed(coroutine, suspended_on)


class _Resumed:
    """An awaitable handing a started coroutine's steps to the task that awaits it."""

    __slots__ = ("_coroutine", "_suspended_on")

    def __init__(self, coroutine: Coroutine[Any, Any, None], suspended_on: object) -> None:
        self._coroutine = coroutine
        self._suspended_on = suspended_on

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting = self._coroutine, self._suspended_on
        while True:
            try:
                sent = yield waiting  # the future it waits on, to the task (as yield from)
            except BaseException as thrown:  # the task's cancellation, say
                try:
                    waiting = coroutine.throw(thrown)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coroutine.send(sent)
                except StopIteration:
                    return


@overload
def source(
    client: str | Client,
    subject: str,
    *,
    decode: None = None,
    stream: str | None = None,
    durable: str | None = None,
    ack: AckMode = AckMode.MANUAL,
    max_batch: int = 100,
    fetch_timeout: float = 1.0,
    ack_wait: float | None = None,
    max_ack_pending: int | None = None,
    confirm_acks: bool = False,
    request_timeout: float = 5.0,
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[bytes]: ...
@overload
def source(
    client: str | Client,
    subject: str,
    *,
    decode: Callable[[bytes], T],
    stream: str | None = None,
    durable: str | None = None,
    ack: AckMode = AckMode.MANUAL,
    max_batch: int = 100,
    fetch_timeout: float = 1.0,
    ack_wait: float | None = None,
    max_ack_pending: int | None = None,
    confirm_acks: bool = False,
    request_timeout: float = 5.0,
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[T]: ...
def source(
    client: str | Client,
    subject: str,
    *,
    decode: Callable[[bytes], Any] | None = None,
    stream: str | None = None,
    durable: str | None = None,
    ack: AckMode = AckMode.MANUAL,
    max_batch: int = 100,
    fetch_timeout: float = 1.0,
    ack_wait: float | None = None,
    max_ack_pending: int | None = None,
    confirm_acks: bool = False,
    request_timeout: float = 5.0,
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[Any]:  # the overloads above are the typed signatures
    """Messages of a JetStream pull consumer, fetched only as downstream requests them.

    ::

        stream on the server: [m1 m2 m3 m4 m5 m6 ...]
        request(2)  -> fetch(batch=2)  ->  ^-m1-m2-
        (demand 0   -> no fetch)
        request(9)  -> fetch(batch=4)  ->  --m3-m4-m5-m6-    (max_batch=4)
                    -> fetch(batch=4)  ->  ...                (while demand remains)

    Each subscription binds the pull consumer ``durable`` of ``stream``, creating it
    (filtered on ``subject``) when it does not exist. A durable consumer keeps its
    position on the server, so the next subscription (after a restart or a crash)
    resumes after what was acknowledged. ``durable=None`` makes an ephemeral
    consumer for this one subscription, deleted when it ends.

    Args:
        client: A ``nats://`` URL (each subscription opens its own connection and
            closes it at the end) or a connected ``nats.aio.client.Client`` (left open).
        subject: The subject the consumer filters on.
        decode: Turns a message's bytes into its ``value`` (default: the bytes).
        stream: The stream's name; ``None`` looks it up from ``subject``.
        durable: The durable consumer's name; ``None`` for an ephemeral consumer.
        ack: ``AckMode.MANUAL`` (at-least-once, the default) or ``AckMode.ON_DELIVERY``.
        max_batch: The largest fetch, whatever the demand (>= 1).
        fetch_timeout: How long one fetch waits on the server for messages; a fetch
            that times out empty is not an error: the source fetches again while
            demand remains (a fetch returns as soon as messages are there).
        ack_wait: Seconds before the server redelivers an unacknowledged message,
            set on a consumer this creates (or updated on an existing durable);
            ``None`` keeps the consumer's (the server's default is 30 s).
        max_ack_pending: The server's own cap on delivered, unacknowledged messages
            of the consumer, across all its subscribers; ``None`` keeps the
            consumer's (the server's default is 1000).
        confirm_acks: ``True``: a ``Settlement`` of ``ack()``/``nack()`` resolves once
            the server confirmed it (one round trip each); ``False``: once written
            to the connection.
        request_timeout: The deadline of requests the server answers: consumer set
            up, confirmed acks, the ON_DELIVERY batch ack.
        complete_when_drained: Complete the stream when a fetch finds nothing
            within ``fetch_timeout`` (process a backlog, then stop).
        loop: The event loop to run on; default: the loop running at subscribe time.

    Returns:
        A ``Flow[Message[T]]`` whose ``stats`` count the latest subscription
        (``stats.max_held`` never exceeds ``max_batch``).

    Demand: nothing is fetched before the first request nor while demand is 0;
    outstanding demand ``d`` becomes ``fetch(batch=min(d, max_batch))``. The
    client holds at most ``max_batch`` messages downstream has not received;
    the server's ``num_ack_pending`` for this subscriber is at most what
    downstream requested and has not acknowledged.

    Cancellation: stops fetching (a fetch in progress is abandoned) and
    unsubscribes; once the messages already delivered are settled (MANUAL; at
    most ``ack_wait``), deletes an ephemeral consumer and closes an owned
    connection, flushing the acknowledgements made: a ``take(n)`` whose last
    messages are acked after it cancelled still acks them. Messages delivered
    and not acknowledged (and any the abandoned fetch still draws) stay on the
    server, which redelivers them after ``ack_wait`` to the durable consumer's
    next subscriber.

    Errors: a connection or consumer set-up that fails, a server error on fetch,
    a ``decode`` that raises (its batch is neither acknowledged nor delivered) and
    a failed ON_DELIVERY acknowledgement are ``on_error``. A failed ``ack()`` or
    ``nack()`` is kept in its ``Settlement`` (await it or call ``result()``).

    Delivery guarantee: with ``AckMode.MANUAL``, at-least-once: a message is done
    only when ``message.ack()`` is called; ``nack(requeue=True)`` has it redelivered
    at once, ``nack(requeue=False)`` terminates it (never redelivered); after a
    crash or cancel the server redelivers what was not acknowledged. With
    ``AckMode.ON_DELIVERY``, at-most-once: each batch is acknowledged, and the
    server confirmed it, before downstream receives it (one ack per batch on a
    consumer this created, whose ack policy is then "all").

    Example::

        from reactive_bp.connectors import nats as jetstream

        orders = jetstream.source(
            "nats://127.0.0.1:4222", "orders.new", durable="billing", decode=json.loads
        )

        async def bill(message: Message[dict]) -> dict:
            await charge(message.value)
            await message.ack()  # at-least-once: ack where processing really ends
            return message.value

        billed = await orders.map_async(bill, max_concurrency=8).take(1000).to_list_async()
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if fetch_timeout <= 0 or request_timeout <= 0:
        raise ValueError("fetch_timeout and request_timeout must be > 0")
    if max_ack_pending is not None and max_ack_pending < 1:
        raise ValueError(f"max_ack_pending must be >= 1 or None, got {max_ack_pending}")
    decoder: Callable[[bytes], Any] = _raw if decode is None else decode

    def open_fetcher(stats: ConnectorStats) -> _PullFetcher[Any]:
        fetcher_loop = loop if loop is not None else asyncio.get_running_loop()
        return _PullFetcher(
            _Link(client),
            subject,
            stream=stream,
            durable=durable,
            decode=decoder,
            ack=ack,
            fetch_timeout=fetch_timeout,
            request_timeout=request_timeout,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            confirm_acks=confirm_acks,
            complete_when_drained=complete_when_drained,
            stats=stats,
            loop=fetcher_loop,
        )

    where = durable if durable is not None else "ephemeral"
    return FetchFlow(
        open_fetcher, max_batch=max_batch, loop=loop, name=f"nats.source({subject!r}, {where})"
    )


class _CloseAtEnd(OperatorSubscriber[T, T]):
    """Passes items through; at the end (or cancel) closes the sink's ``PubAck`` inbox and
    the stream's own connection."""

    __slots__ = ("_link", "_loop", "_publisher")

    def __init__(
        self,
        actual: Subscriber[T],
        link: _Link,
        loop: asyncio.AbstractEventLoop | None,
        publisher: _PubAcks,
    ) -> None:
        super().__init__(actual)
        self._link = link
        self._loop = loop
        self._publisher = publisher

    def _close(self) -> None:
        publisher = self._publisher
        publisher.stop()  # at once: a write or a subscribe racing this close does not happen
        target = publisher.loop  # None: it never published, so it never subscribed either
        if target is None or target.is_closed():
            self._link.close_soon(self._loop)
            return
        link = self._link

        async def close() -> None:
            await publisher.aclose()
            # Best effort: closing the connection to a broker that went away fails, and
            # the stream that ended has nobody left to tell.
            with contextlib.suppress(Exception):
                await link.aclose()

        target.call_soon_threadsafe(_spawn, target, close)

    @override
    def hook_on_next(self, item: T) -> None:
        self.emit(item)

    @override
    def hook_on_error(self, error: Exception) -> None:
        self._close()
        super().hook_on_error(error)

    @override
    def hook_on_complete(self) -> None:
        self._close()  # every item was confirmed: nothing is pending
        super().hook_on_complete()

    @override
    def hook_on_cancel(self) -> None:
        self._close()


@overload
def sink(
    client: str | Client,
    subject: str | Callable[[bytes], str],
    *,
    encode: None = None,
    max_in_flight: int = 100,
    stream: str | None = None,
    request_timeout: float = 5.0,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[bytes]], Flow[bytes]]: ...
@overload
def sink(
    client: str | Client,
    subject: str | Callable[[T], str],
    *,
    encode: Callable[[T], bytes],
    max_in_flight: int = 100,
    stream: str | None = None,
    request_timeout: float = 5.0,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[T]], Flow[T]]: ...
def sink(
    client: str | Client,
    subject: str | Callable[[Any], str],
    *,
    encode: Callable[[Any], bytes] | None = None,
    max_in_flight: int = 100,
    stream: str | None = None,
    request_timeout: float = 5.0,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[Any]], Flow[Any]]:  # the overloads above are the typed signatures
    """Publish each item to JetStream, requesting more only as the server confirms them.

    ::

        ^-a-b-c-|   pipe(sink(url, "s"))   ^--a--b---c|   (each once its PubAck came)

    The operator goes into ``flow.pipe(...)``; what it emits, in order, is exactly
    what the server confirmed it stored. Subscribe to the result to drive it.

    Args:
        client: A ``nats://`` URL (each subscription opens its own connection,
            closed when the stream ends) or a connected ``nats.aio.client.Client``
            (left open).
        subject: The subject, or a function of the item that gives it.
        encode: Turns an item into the message's bytes (default: items are bytes).
        max_in_flight: The most publishes awaiting their ``PubAck`` at once (>= 1).
        stream: When given, the server refuses a publish its subject does not
            route to this stream (the ``Nats-Expected-Stream`` header).
        request_timeout: How long one publish waits for its ``PubAck``.
        loop: The event loop to publish on; default: the loop running at subscribe time.

    Returns:
        ``Callable[[Flow[T]], Flow[T]]``, for ``Flow.pipe``.

    Demand: upstream is asked for ``max_in_flight`` items, then for one more per
    confirmed item downstream received: never more than ``max_in_flight``
    unconfirmed publishes, and a slow downstream holds publishing back.

    Cancellation: cancels upstream and the publishes awaiting their ``PubAck``
    (they may be stored all the same), then closes an owned connection.

    Errors: a publish the server refuses (no stream for the subject, say) or
    does not confirm within ``request_timeout`` (a server gone away) ends the
    stream with ``PublishError(item)``, the client's error as its ``__cause__``;
    so does an ``encode`` that raises. Upstream errors pass through.

    Delivery guarantee: every item emitted downstream is stored. An item whose
    publish failed may be stored or not (the lost part may be the ``PubAck``):
    publishing it again is at-least-once (JetStream drops a duplicate with the
    same ``Nats-Msg-Id`` header within the stream's duplicate window).

    Example::

        from reactive_bp.connectors import nats as jetstream

        stored = await (
            Flow.range(0, 1000)
            .pipe(jetstream.sink(nc, "events", encode=lambda i: str(i).encode()))
            .to_list_async()
        )
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if request_timeout <= 0:
        raise ValueError(f"request_timeout must be > 0, got {request_timeout}")
    encoder: Callable[[Any], bytes] = _raw if encode is None else encode
    subject_of: Callable[[Any], str] = subject if callable(subject) else _fixed(subject)

    def operator(upstream: Flow[Any]) -> Flow[Any]:
        def per_subscription() -> Flow[Any]:
            link = _Link(client)
            publisher = _PubAcks(link, subject_of, encoder, stream, request_timeout)
            published = confirmed(upstream, publisher.publish, max_in_flight, loop)
            return published.lift(lambda actual: _CloseAtEnd(actual, link, loop, publisher))

        return Flow.defer(per_subscription)

    return operator


class _PubAcks:
    """JetStream publishes of one sink subscription, each confirmed by its ``PubAck``.

    Loop-confined. ``publish`` returns a plain future at once (no task per item):
    the items asked for in one event-loop turn are written by one flush task,
    each with its own reply subject under a private inbox, and the one
    subscription on that inbox resolves each future from its ``PubAck`` (what
    ``js.publish`` waits for, without its task and timer per message). The
    futures of one flush share one timer: a ``PubAck`` that has not come after
    ``timeout`` fails its publish with the client's ``TimeoutError``. The inbox
    subscription is removed when the stream ends.
    """

    __slots__ = (
        "_closed",
        "_encode",
        "_flush_task",
        "_headers",
        "_link",
        "_prefix",
        "_queue",
        "_sequence",
        "_subject_of",
        "_subscription",
        "_timeout",
        "_timers",
        "_waiting",
        "loop",
    )

    def __init__(
        self,
        link: _Link,
        subject_of: Callable[[Any], str],
        encode: Callable[[Any], bytes],
        stream: str | None,
        timeout: float,
    ) -> None:
        self._link = link
        self._subject_of = subject_of
        self._encode = encode
        self._headers = None if stream is None else {"Nats-Expected-Stream": stream}
        self._timeout = timeout
        # Publishes asked for and not written yet.
        self._queue: list[tuple[str, bytes, asyncio.Future[None]]] = []
        # Written, awaiting their PubAck, by reply token.
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._sequence = 0
        self._prefix = ""
        self._subscription: Any = None
        self._flush_task: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        # One PubAck timer per flushed batch, oldest first; cancelled at the end.
        self._timers: deque[asyncio.TimerHandle] = deque()
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the first publish
        self._closed = False

    def publish(self, item: Any) -> asyncio.Future[None]:
        """Queue one publish; the future resolves when its ``PubAck`` came."""
        subject = self._subject_of(item)
        payload = self._encode(item)  # an encode that raises fails this item at once
        loop = self.loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((subject, payload, done))
        if self._flush_task is None:
            self._flush_task = loop.create_task(self._flush())
        return done

    async def _flush(self) -> None:
        try:
            client = await self._link.client()
            if self._closed:
                return  # ended before anything was written: nothing to subscribe to
            if self._subscription is None:
                prefix = client.new_inbox() + "."
                subscription = await client.subscribe(prefix + "*", cb=self._on_reply)
                if self._closed:  # the stream ended while subscribing: do not leave it behind
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
                    return
                self._prefix, self._subscription = prefix, subscription
            loop = asyncio.get_running_loop()
            errors = _nats_module("nats.errors")
            per_item = (errors.BadSubjectError, errors.MaxPayloadError, TypeError, ValueError)
            while self._queue and not self._closed:
                batch, self._queue = self._queue, []
                # Every publish of the batch waits (and can fail) before the first is written.
                writes: list[tuple[str, bytes, str, asyncio.Future[None]]] = []
                for subject, payload, done in batch:
                    if done.done():
                        continue  # its publish was cancelled
                    self._sequence += 1
                    token = str(self._sequence)
                    self._waiting[token] = done
                    writes.append((subject, payload, token, done))
                tokens = [write[2] for write in writes]
                self._timers.append(loop.call_later(self._timeout, self._expire, tokens))
                for subject, payload, token, done in writes:
                    if self._closed:
                        return  # cancelled or ended while a write was awaited: write no more
                    if done.done():
                        continue  # cancelled meanwhile
                    try:
                        await client.publish(
                            subject, payload, reply=self._prefix + token, headers=self._headers
                        )
                    except per_item as refused:  # this item only (its subject, its size)
                        self._waiting.pop(token, None)
                        if not done.done():
                            done.set_exception(refused)
        except Exception as error:  # no connection: every publish not confirmed fails
            self._fail_all(error)
        finally:
            self._flush_task = None
        if self._queue and not self._closed:  # asked for while the last write was awaited
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _on_reply(self, msg: Msg) -> None:
        done = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if done is None or done.done():
            return  # expired, or cancelled by the subscription
        headers = msg.headers
        if headers and headers.get("Status") == "503":  # no stream listens on the subject
            done.set_exception(_nats_module("nats.js.errors").NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
        except ValueError as bad:
            done.set_exception(bad)
            return
        if isinstance(reply, dict) and "error" in reply:
            errors = _nats_module("nats.js.errors")
            done.set_exception(errors.APIError.from_error(reply["error"]))
        else:
            done.set_result(None)

    def _expire(self, tokens: list[str]) -> None:
        self._timers.popleft()  # the timers of equal delays fire in the order they were set
        waiting = self._waiting
        for token in tokens:
            done = waiting.pop(token, None)
            if done is not None and not done.done():
                done.set_exception(_nats_module("nats.errors").TimeoutError())

    def _fail_all(self, error: Exception) -> None:
        pending = [done for _, _, done in self._queue] + list(self._waiting.values())
        self._queue = []
        self._waiting.clear()
        for done in pending:
            if not done.done():
                done.set_exception(error)

    def stop(self) -> None:
        """Write nothing more (any thread): the stream is over."""
        self._closed = True

    async def aclose(self) -> None:
        """Stop listening for ``PubAck``s (the stream is over)."""
        self._closed = True
        subscription, self._subscription = self._subscription, None
        self._waiting.clear()
        while self._timers:
            self._timers.popleft().cancel()
        if subscription is not None:
            with contextlib.suppress(Exception):  # a closed connection took it already
                await subscription.unsubscribe()


def _fixed(subject: str) -> Callable[[object], str]:
    def fixed(_item: object) -> str:
        return subject

    return fixed
