"""RabbitMQ (AMQP 0-9-1) queues as sources and sinks whose flow control is demand.

``source(client, queue)`` consumes a queue on a channel of its own whose
``basic.qos(prefetch_count=prefetch)`` bounds what the broker pushes: at most
``prefetch`` deliveries are unacknowledged at any time, and the client's local
buffer holds only unacknowledged deliveries, so it never holds more than
``prefetch``. ``basic.consume`` is sent at the first fetch, i.e. on the first
downstream demand; the pump (``FetchFlow``) fetches only while demand is
outstanding, ``min(demand, max_batch)`` at a time.

``sink(client, routing_key)`` publishes each item on a channel in
publisher-confirm mode; an item counts as published when the broker's
``basic.ack`` for it arrived, and at most ``max_in_flight`` publishes are
unconfirmed at any time (upstream is asked for one more per confirmation).

The client is aio-pika (the ``amqp`` extra): ``client`` is a URL or an
aio-pika connection. The per-message calls (deliveries,
``basic.ack``/``basic.reject``, ``basic.publish``) go to the channel's
underlying aiormq channel, one wrapper object less per message; a URL gets
its own aiormq connection (why: ``_open_channel``). A connection lost fails
the stream; resubscribe (``retry``) to go on: the broker gave the
unacknowledged messages back to the queue.

Everything here runs on the connector's event loop (the loop running at
subscribe time, or ``loop=``); the fetcher and the publisher are confined to
it, so their fields need no lock. ``Message.ack``/``nack`` may be called from
any thread: they hop to the loop (``Settlement``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, overload

from typing_extensions import override

from .._core._operator import OperatorSubscriber
from .._core._signals import signal_complete, signal_error
from .._flow import Flow
from ..operators._lift import LiftFlow
from ._common import (
    AckMode,
    ConnectorStats,
    FetchFlow,
    Message,
    acked_on_delivery,
    confirmed,
    nack_after_delivery,
    require,
)

if TYPE_CHECKING:
    import aiormq.abc
    from aio_pika.abc import AbstractConnection

    from ..abc import Subscriber

__all__ = ["ConsumerCancelledError", "sink", "source"]

T = TypeVar("T")

_EXTRA: Final = "amqp"
# How long a broker round trip made while closing may take (basic.cancel,
# channel.close) before the close goes on without it: a broker that went away
# must not keep a cancelled subscription's task alive.
_CLOSE_STEP_TIMEOUT_S: Final = 5.0
# Tasks that close channels after the stream that used them ended; kept here so
# that the event loop does not garbage-collect them half-way.
_closing_tasks: set[asyncio.Task[None]] = set()
# complete_when_drained: how often an empty buffer looks at the queue again.
_DRAIN_POLL_S: Final = 0.5


class ConsumerCancelledError(ConnectionError):
    """The broker cancelled the consumer (the queue was deleted, say)."""


def _in_background(
    coroutine: Coroutine[Any, Any, None],
    loop: asyncio.AbstractEventLoop,
    then: Callable[[], None] | None = None,
) -> None:
    """Run ``coroutine`` on ``loop`` from any thread, then ``then()`` on the loop.

    The task is kept referenced until it ends. When the loop is closed already
    (its connections went with it) ``then()`` runs at once, here.
    """

    async def run() -> None:
        try:
            await coroutine
        finally:
            if then is not None:
                then()

    def start() -> None:
        task = loop.create_task(run())
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        start()
        return
    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:
        coroutine.close()
        if then is not None:
            then()


async def _open_channel(
    connection: str | AbstractConnection, *, publisher_confirms: bool
) -> tuple[aiormq.abc.AbstractConnection | None, aiormq.abc.AbstractChannel]:
    """Open a channel; return (the connection when we opened it, the channel).

    A URL gets a connection of its own, opened with aiormq (aio-pika's
    transport) rather than aio-pika: an aio-pika ``Connection.close()`` that is
    cancelled (at loop shutdown, say) never returns, and the stream's close runs
    in a background task that shutdown may cancel. For an aio-pika connection
    the channel is aio-pika's; either way the channel used is the aiormq one.
    """
    if isinstance(connection, str):
        owned = await require("aiormq", _EXTRA).connect(connection)
        try:
            raw: aiormq.abc.AbstractChannel = await owned.channel(
                publisher_confirms=publisher_confirms, on_return_raises=publisher_confirms
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await owned.close()
            raise
        return owned, raw
    channel = await connection.channel(
        publisher_confirms=publisher_confirms, on_return_raises=publisher_confirms
    )
    return None, await channel.get_underlay_channel()


async def _close_quietly(
    channel: aiormq.abc.AbstractChannel | None, connection: aiormq.abc.AbstractConnection | None
) -> None:
    """Close the connection when we opened it (that closes its channels), else the channel.

    A broker gone away is no error here: there is nothing left to close.
    """
    closing = connection if connection is not None else channel
    if closing is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing.close(), _CLOSE_STEP_TIMEOUT_S)


# -- the source ------------------------------------------------------------------------------


class _SourceSettings(Generic[T]):
    """What ``source(...)`` was called with; shared by its subscriptions (read-only)."""

    __slots__ = (
        "ack",
        "complete_when_drained",
        "connection",
        "consumer_tag",
        "declare",
        "decode",
        "exclusive",
        "prefetch",
        "queue",
        "settle_timeout",
    )

    def __init__(
        self,
        connection: str | AbstractConnection,
        queue: str,
        prefetch: int,
        ack: AckMode,
        decode: Callable[[bytes], T],
        declare: bool,
        consumer_tag: str | None,
        exclusive: bool,
        settle_timeout: float,
        complete_when_drained: bool,
    ) -> None:
        self.connection = connection
        self.queue = queue
        self.prefetch = prefetch
        self.ack = ack
        self.decode = decode
        self.declare = declare
        self.consumer_tag = consumer_tag
        self.exclusive = exclusive
        self.settle_timeout = settle_timeout
        self.complete_when_drained = complete_when_drained


class _QueueFetcher(Generic[T]):
    """One subscription's consumer, on a channel of its own, confined to the loop.

    The broker pushes deliveries into ``_buffer`` (``_on_delivery``), never more
    than ``prefetch`` unacknowledged ones (``basic.qos``). ``fetch(n)`` waits
    until at least one is buffered and returns up to ``n``. In MANUAL mode a
    delivery stays unacknowledged until the user settles it, so deliveries
    handed downstream and not settled count against the prefetch too: a
    pipeline that never acks stalls once ``prefetch`` are outstanding (that is
    the bound). In ON_DELIVERY mode each batch is acknowledged with one
    ``basic.ack(multiple=True)`` before it is returned.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_closing_observer",
        "_connection",
        "_consumer_tag",
        "_consuming",
        "_failure",
        "_lost",
        "_raw",
        "_settings",
        "_settled",
        "_stats",
        "_unsettled",
        "_waiter",
    )

    def __init__(self, settings: _SourceSettings[T], stats: ConnectorStats) -> None:
        self._settings = settings
        self._stats = stats
        # Invariant: deliveries received and not yet returned by fetch, in
        # delivery-tag order; all unacknowledged, so len <= prefetch.
        self._buffer: deque[aiormq.abc.DeliveredMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None  # a fetch waiting for deliveries
        # Set once: why the consumer cannot go on. ``_lost``: the channel is
        # gone, so buffered deliveries cannot be acked and are not handed out.
        self._failure: Exception | None = None
        self._lost = False
        # The channel, from when it is open; the connection only when we opened it.
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._closing_observer: asyncio.Future[Any] | None = None
        self._consumer_tag: str | None = None
        self._consuming = False  # basic.consume was answered
        # MANUAL: handed downstream and not settled yet; aclose waits for them
        # (at most settle_timeout) before it closes the channel.
        self._unsettled = 0
        self._settled: asyncio.Event | None = None
        self._closed = False

    # -- the Fetcher protocol --------------------------------------------------------

    async def fetch(self, n: int) -> Sequence[Message[T]]:
        buffer = self._buffer
        while not buffer or self._lost:
            if self._failure is not None:
                raise self._failure
            if not self._consuming:
                await self._start()  # basic.consume on the first demand
                continue
            drain_check = self._settings.complete_when_drained
            if drain_check and await self._drained():
                raise StopAsyncIteration  # the pump completes the stream
            if buffer or self._failure is not None:
                continue
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if drain_check:
                    # Ready messages that do not come (the prefetch is used up by
                    # unsettled ones): look again now and then.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(waiter), _DRAIN_POLL_S)
                else:
                    await waiter
            finally:
                self._waiter = None
        count = min(n, len(buffer))
        deliveries = [buffer.popleft() for _ in range(count)]
        settings = self._settings
        decode = settings.decode
        raw = self._raw
        assert raw is not None
        loop = asyncio.get_running_loop()
        messages: list[Message[T]] = []
        # A decode that raises fails the stream here: nothing of this batch was
        # acknowledged, and closing the channel gives it back to the queue.
        if settings.ack is AckMode.MANUAL:
            ack, nack = self._ack, self._nack
            for delivery in deliveries:
                tag = _tag(delivery)
                messages.append(
                    Message(
                        decode(delivery.body),
                        _metadata(delivery),
                        ack=partial(ack, tag),
                        nack=partial(nack, tag),
                        loop=loop,
                    )
                )
            self._unsettled += count
        else:
            for delivery in deliveries:
                messages.append(
                    Message(
                        decode(delivery.body),
                        _metadata(delivery),
                        ack=acked_on_delivery,
                        nack=nack_after_delivery,
                        loop=loop,
                    )
                )
            # One broker call per batch: tags up to the last one are this batch
            # (earlier ones were acknowledged with earlier batches).
            last = _tag(deliveries[-1])
            await raw.basic_ack(last, multiple=True)
            self._stats.acked += count
        # Invariant: ``stats.received`` counts a delivery when it arrives (so
        # ``held`` includes this buffer); the pump counts the batch again when
        # fetch returns, so take it out here. No await between here and the pump.
        self._stats.received -= count
        return messages

    async def aclose(self) -> None:
        """Cancel the consumer, give back what downstream never saw, close the channel.

        MANUAL messages already handed downstream keep the channel open for at
        most ``settle_timeout`` seconds, so that acks in flight still land;
        whatever is unsettled then goes back to the queue with the channel.
        """
        if self._closed:
            return
        self._closed = True
        self._wake()
        raw, tag = self._raw, self._consumer_tag
        try:
            # Closing the channel alone cancels its consumer and requeues every
            # unacknowledged delivery. Only when delivered messages may still be
            # settled does the channel stay open a while, without a consumer.
            if raw is not None and not raw.is_closed and self._awaits_settlements():
                if tag is not None:
                    with contextlib.suppress(Exception):
                        await raw.basic_cancel(tag, timeout=_CLOSE_STEP_TIMEOUT_S)
                await self._requeue_buffer(raw)
                settled = self._settled = asyncio.Event()
                if self._unsettled > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(settled.wait(), self._settings.settle_timeout)
        finally:
            observer = self._closing_observer
            if observer is not None and not observer.done():
                observer.cancel()
            connection, self._connection = self._connection, None
            await _close_quietly(raw, connection)

    async def _drained(self) -> bool:
        """Whether the queue has no ready message and nothing arrived meanwhile."""
        raw = self._raw
        assert raw is not None
        for _ in range(2):  # twice: a delivery may trail the first DeclareOk
            declared = await raw.queue_declare(self._settings.queue, passive=True)
            if self._buffer or declared.message_count:
                return False
        return True

    # -- starting --------------------------------------------------------------------

    async def _start(self) -> None:
        settings = self._settings
        self._connection, raw = await _open_channel(settings.connection, publisher_confirms=False)
        self._raw = raw
        await raw.basic_qos(prefetch_count=settings.prefetch)
        if settings.declare:
            await raw.queue_declare(settings.queue, durable=True)
        observer = self._closing_observer = raw.closing
        observer.add_done_callback(self._on_channel_closed)
        raw.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        consume_ok = await raw.basic_consume(
            settings.queue,
            self._on_delivery,
            exclusive=settings.exclusive,
            consumer_tag=settings.consumer_tag,
        )
        self._consumer_tag = consume_ok.consumer_tag
        self._consuming = True
        if self._closed:
            # aclose ran while we were starting: make sure nothing stays open.
            await _close_quietly(raw, self._connection)
            raise asyncio.CancelledError

    # -- broker callbacks (on the loop) ----------------------------------------------------

    async def _on_delivery(self, delivery: aiormq.abc.DeliveredMessage) -> None:
        if self._closed:
            # Between basic.cancel and its CancelOk: nobody will take it.
            raw = self._raw
            if raw is not None:
                with contextlib.suppress(Exception):
                    await raw.basic_reject(_tag(delivery), requeue=True)
            return
        self._buffer.append(delivery)
        self._stats.note_received(1)
        self._wake()

    def _on_channel_closed(self, observer: asyncio.Future[Any]) -> None:
        reason = None if observer.cancelled() else observer.exception()
        if self._settled is not None:
            self._settled.set()  # aclose waits for settlements no more: none can land
        if self._closed or self._lost:
            return
        failure = ConnectionError(
            f"RabbitMQ channel of queue {self._settings.queue!r} closed: {reason!r}"
        )
        failure.__cause__ = reason
        # Supersedes a consumer cancelled by the broker: the buffered deliveries
        # died with the channel (the broker requeued them), none is handed out.
        self._failure = failure
        self._lost = True
        self._wake()

    def _on_broker_cancel(self, frame: object) -> None:
        if self._failure is None and not self._closed:
            self._failure = ConsumerCancelledError(
                f"the broker cancelled the consumer of queue {self._settings.queue!r} "
                "(was the queue deleted?)"
            )
            self._wake()  # buffered deliveries are still handed out first

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- settlement (MANUAL) ---------------------------------------------------------------

    async def _ack(self, tag: int) -> None:
        raw = self._raw
        assert raw is not None
        try:
            await raw.basic_ack(tag)
        except Exception as error:
            raise self._settle_failure("ack", raw, error) from error
        finally:
            self._settled_one()
        self._stats.acked += 1

    async def _nack(self, tag: int, requeue: bool) -> None:
        raw = self._raw
        assert raw is not None
        try:
            await raw.basic_reject(tag, requeue=requeue)
        except Exception as error:
            raise self._settle_failure("nack", raw, error) from error
        finally:
            self._settled_one()
        self._stats.nacked += 1

    def _settle_failure(
        self, kind: str, raw: aiormq.abc.AbstractChannel, error: Exception
    ) -> Exception:
        if not raw.is_closed:
            return error
        return ConnectionError(
            f"{kind}(): the channel this message came on is closed (the subscription "
            "ended or the connection was lost); the broker redelivers the message"
        )

    def _settled_one(self) -> None:
        self._unsettled -= 1
        if self._unsettled == 0 and self._settled is not None:
            self._settled.set()

    # -- closing ------------------------------------------------------------------------

    async def _requeue_buffer(self, raw: aiormq.abc.AbstractChannel) -> None:
        buffer = self._buffer
        while buffer:
            delivery = buffer.popleft()
            with contextlib.suppress(Exception):
                await raw.basic_reject(_tag(delivery), requeue=True)

    def _awaits_settlements(self) -> bool:
        return (
            self._settings.ack is AckMode.MANUAL
            and self._unsettled > 0
            and self._settings.settle_timeout > 0
            and not self._lost
        )


def _tag(delivery: aiormq.abc.DeliveredMessage) -> int:
    frame: Any = delivery.delivery  # a Basic.Deliver: consumer deliveries carry a tag
    tag: int = frame.delivery_tag
    return tag


def _metadata(delivery: aiormq.abc.DeliveredMessage) -> dict[str, object]:
    frame: Any = delivery.delivery  # a Basic.Deliver
    properties = delivery.header.properties
    return {
        "delivery_tag": frame.delivery_tag,
        "redelivered": frame.redelivered,
        "exchange": frame.exchange,
        "routing_key": frame.routing_key,
        "consumer_tag": frame.consumer_tag,
        "message_id": properties.message_id,
        "correlation_id": properties.correlation_id,
        "headers": properties.headers,
        "content_type": properties.content_type,
        "properties": properties,
    }


@overload
def source(
    client: str | AbstractConnection,
    queue: str,
    *,
    decode: None = None,
    ack: AckMode = AckMode.MANUAL,
    prefetch: int = 100,
    max_batch: int | None = None,
    declare: bool = False,
    consumer_tag: str | None = None,
    exclusive: bool = False,
    settle_timeout: float = 5.0,
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[bytes]: ...
@overload
def source(
    client: str | AbstractConnection,
    queue: str,
    *,
    decode: Callable[[bytes], T],
    ack: AckMode = AckMode.MANUAL,
    prefetch: int = 100,
    max_batch: int | None = None,
    declare: bool = False,
    consumer_tag: str | None = None,
    exclusive: bool = False,
    settle_timeout: float = 5.0,
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[T]: ...
def source(
    client: str | AbstractConnection,
    queue: str,
    *,
    decode: Callable[[bytes], Any] | None = None,
    ack: AckMode = AckMode.MANUAL,
    prefetch: int = 100,
    max_batch: int | None = None,
    declare: bool = False,
    consumer_tag: str | None = None,
    exclusive: bool = False,
    settle_timeout: float = 5.0,
    complete_when_drained: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> FetchFlow[Any]:  # the overloads above are the typed signatures
    """Consume the RabbitMQ queue ``queue`` as a flow of ``Message``, paced by demand.

    ::

        queue: a b c d e f ...
        source(url, "q", prefetch=3)   ^-a-b-c------d-e-...   (d once a, b or c is acked)

    Each subscription opens a channel of its own (on ``client``, or on a
    connection of its own to the URL ``client``, closed at the end), sets
    ``basic.qos(prefetch_count=prefetch)`` and, at the first ``request``,
    starts ``basic.consume``. ``.stats`` counts the latest subscription.

    Demand: downstream demand becomes fetches of ``min(demand, max_batch)``
    from the local buffer, none while demand is 0; a fetch waits for at least
    one delivery. The broker pushes at most ``prefetch`` unacknowledged
    deliveries, so the buffer (what the client holds) never exceeds
    ``prefetch``. With ``AckMode.MANUAL`` a message counts against the prefetch
    until it is acked or nacked: a pipeline that never settles its messages
    stalls after ``prefetch`` of them (that is the bound, not a bug). With
    ``AckMode.ON_DELIVERY`` each batch is acknowledged, with one
    ``basic.ack(multiple=True)``, before it goes downstream, and the broker
    refills the buffer as batches are fetched.

    Cancellation: closing the channel cancels the consumer and the broker
    requeues every unacknowledged delivery (redelivered with
    ``redelivered=True``). When MANUAL messages already went downstream and
    are not settled, the consumer is cancelled first (``basic.cancel``), the
    buffered deliveries are rejected with ``requeue=True``, and the channel
    stays open until those messages are settled or ``settle_timeout`` seconds
    passed, so that acks still in flight land (as Alpakka does). The same
    happens after an error.

    Errors: a connection or channel lost is ``on_error(ConnectionError)``; a
    consumer cancelled by the broker (its queue deleted) is
    ``on_error(ConsumerCancelledError)`` once the buffered messages went
    downstream; a missing queue is aiormq's ``ChannelNotFoundEntity``; a
    ``decode`` that raises is ``on_error`` with its error, and the messages of
    that batch stay unacknowledged (the broker redelivers them). An ``ack()``
    after the channel closed fails its ``Settlement`` with ``ConnectionError``.

    Delivery guarantee: ``AckMode.MANUAL`` (default) is at-least-once: a
    message acked where processing ends is never lost, one unacked at a crash
    or cancel is redelivered. ``AckMode.ON_DELIVERY`` is at-most-once.

    Args:
        client: an ``amqp://`` URL, or an open aio-pika connection (shared:
            only the subscription's channel is closed).
        queue: the queue to consume.
        decode: turns a body into ``Message.value`` (default: the bytes).
        ack: ``AckMode.MANUAL`` (at-least-once) or ``AckMode.ON_DELIVERY``.
        prefetch: the ``basic.qos`` prefetch count, the bound on unacknowledged
            deliveries (>= 1; AMQP's 0, "unbounded", is refused).
        max_batch: the most messages one fetch hands downstream (default
            ``prefetch``).
        declare: declare ``queue`` (durable, no arguments) before consuming.
        consumer_tag: the consumer tag (default: one the client makes up).
        exclusive: ask for exclusive access to the queue.
        settle_timeout: at cancel or error, how long the channel waits for
            MANUAL messages already delivered to be settled (0: not at all).
        complete_when_drained: complete the stream when the buffer runs empty
            and a passive ``queue.declare`` shows no ready message (for batch
            jobs; a message requeued or published later waits for the next
            consumer).
        loop: the event loop to run on (default: the one running at subscribe).

    Example::

        flow = rabbitmq.source(url, "orders", prefetch=64, decode=json.loads)
        async with contextlib.aclosing(flow.aiter(16)) as orders:
            async for message in orders:
                await handle(message.value)
                await message.ack()
    """
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1 (0 would mean unbounded), got {prefetch}")
    if settle_timeout < 0:
        raise ValueError(f"settle_timeout must be >= 0, got {settle_timeout}")
    settings: _SourceSettings[Any] = _SourceSettings(
        client,
        queue,
        prefetch,
        ack,
        bytes if decode is None else decode,
        declare,
        consumer_tag,
        exclusive,
        settle_timeout,
        complete_when_drained,
    )

    def open_fetcher(stats: ConnectorStats) -> _QueueFetcher[Any]:
        return _QueueFetcher(settings, stats)

    return FetchFlow(
        open_fetcher,
        max_batch=prefetch if max_batch is None else max_batch,
        loop=loop,
        name=f"rabbitmq.source({queue!r}, prefetch={prefetch}, ack={ack.name})",
    )


# -- the sink --------------------------------------------------------------------------------


_Opened = tuple["aiormq.abc.AbstractConnection | None", "aiormq.abc.AbstractChannel"]


class _SinkSettings(Generic[T]):
    """What ``sink(...)`` was called with (read-only)."""

    __slots__ = ("connection", "encode", "exchange", "mandatory", "persistent", "routing_key")

    def __init__(
        self,
        connection: str | AbstractConnection,
        exchange: str,
        routing_key: str | Callable[[T], str],
        encode: Callable[[T], bytes],
        mandatory: bool,
        persistent: bool,
    ) -> None:
        self.connection = connection
        self.exchange = exchange
        self.routing_key = routing_key
        self.encode = encode
        self.mandatory = mandatory
        self.persistent = persistent


class _ConfirmingPublisher(Generic[T]):
    """One subscription's publisher: a confirm-mode channel, opened on the first item."""

    __slots__ = (
        "_ack",
        "_closed",
        "_delivery_mode",
        "_loop",
        "_opening",
        "_properties",
        "_raw",
        "_settings",
    )

    def __init__(self, settings: _SinkSettings[T]) -> None:
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        # The channel being opened, shared by the first max_in_flight publishes.
        self._opening: asyncio.Task[_Opened] | None = None
        self._raw: aiormq.abc.AbstractChannel | None = None
        # Set with _raw: aiormq's Basic.Ack and Basic.Properties classes.
        self._ack: type = type(None)
        self._properties: Callable[..., Any] = dict
        self._delivery_mode = 2 if settings.persistent else 1
        self._closed = False

    async def publish(self, item: T) -> None:
        """Publish ``item`` and return once the broker confirmed it."""
        raw = self._raw
        if raw is None:
            raw = await self._open()
        settings = self._settings
        routing_key = settings.routing_key
        key = routing_key if isinstance(routing_key, str) else routing_key(item)
        confirmation = await raw.basic_publish(
            settings.encode(item),
            exchange=settings.exchange,
            routing_key=key,
            # Fresh properties per message: aiormq writes a message id into them.
            properties=self._properties(delivery_mode=self._delivery_mode),
            mandatory=settings.mandatory,
        )
        # With on_return_raises, a returned (unroutable) message raised aiormq's
        # PublishError and a basic.nack raised DeliveryError already; anything
        # but an ack is a failure all the same.
        if type(confirmation) is not self._ack:
            raise ConnectionError(f"the broker did not confirm the publish: {confirmation!r}")

    async def _open(self) -> aiormq.abc.AbstractChannel:
        opening = self._opening
        if opening is None:
            self._loop = asyncio.get_running_loop()
            opening = self._opening = self._loop.create_task(self._open_channel())
        # Shielded: a publish cancelled while waiting must not cancel the opening
        # the other publishes wait for.
        _, raw = await asyncio.shield(opening)
        return raw

    async def _open_channel(self) -> _Opened:
        spec = require("aiormq", _EXTRA).spec
        connection, raw = await _open_channel(self._settings.connection, publisher_confirms=True)
        self._ack = spec.Basic.Ack
        self._properties = spec.Basic.Properties
        self._raw = raw
        return connection, raw

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Close the channel (and our connection), then call ``then()``; from any thread."""
        loop, opening = self._loop, self._opening
        if self._closed or loop is None or opening is None:
            self._closed = True  # nothing was published, so nothing was opened
            if then is not None:
                then()
            return
        self._closed = True
        _in_background(self._aclose(opening), loop, then)

    @staticmethod
    async def _aclose(opening: asyncio.Task[_Opened]) -> None:
        try:
            connection, channel = await opening
        except BaseException:
            return  # it never opened
        await _close_quietly(channel, connection)


class _CloseAtEnd(OperatorSubscriber[T, T]):
    """Passes items through; closes the publisher's channel at the end, however it ends.

    A completion or an error goes downstream once the channel is closed, so a
    caller that awaited the end finds nothing left open; a cancel closes it in
    the background.
    """

    __slots__ = ("_publisher",)

    def __init__(self, actual: Subscriber[T], publisher: _ConfirmingPublisher[T]) -> None:
        super().__init__(actual)
        self._publisher = publisher

    @override
    def hook_on_next(self, item: T) -> None:
        self._actual.on_next(item)

    @override
    def hook_on_error(self, error: Exception) -> None:
        # Upstream ended (Rule 1.7): this is the last signal, sent later on the loop.
        self._publisher.close(lambda: signal_error(self._actual, error, self))

    @override
    def hook_on_complete(self) -> None:
        self._publisher.close(lambda: signal_complete(self._actual, self))

    @override
    def hook_on_cancel(self) -> None:
        self._publisher.close()


def _identity_bytes(item: bytes) -> bytes:
    if not isinstance(item, bytes | bytearray | memoryview):
        raise TypeError(
            f"rabbitmq.sink: {type(item).__name__} is not bytes; pass encode= to serialize it"
        )
    return bytes(item)


@overload
def sink(
    client: str | AbstractConnection,
    routing_key: str | Callable[[bytes], str],
    *,
    encode: None = None,
    max_in_flight: int = 100,
    exchange: str = "",
    mandatory: bool = True,
    persistent: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[bytes]], Flow[bytes]]: ...
@overload
def sink(
    client: str | AbstractConnection,
    routing_key: str | Callable[[T], str],
    *,
    encode: Callable[[T], bytes],
    max_in_flight: int = 100,
    exchange: str = "",
    mandatory: bool = True,
    persistent: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[T]], Flow[T]]: ...
def sink(
    client: str | AbstractConnection,
    routing_key: str | Callable[[Any], str],
    *,
    encode: Callable[[Any], bytes] | None = None,
    max_in_flight: int = 100,
    exchange: str = "",
    mandatory: bool = True,
    persistent: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[Flow[Any]], Flow[Any]]:  # the overloads above are the typed signatures
    """An operator that publishes each item to RabbitMQ and emits it once confirmed.

    ::

        ^-a-b-c-|   .pipe(sink(url, "q"))   ^--a--b--c-|   (each once its basic.ack came)
        ^-a-b-c-|   (b unroutable)          ^--a--X        X = PublishError(b)

    Each subscription publishes on a channel of its own in publisher-confirm
    mode, opened at the first item on ``client`` (or on a connection of its
    own to the URL ``client``, closed at the end), to ``exchange`` (default:
    the default exchange, where the routing key names a queue) with
    ``routing_key`` (a string, or a function of the item).

    Demand: ``max_in_flight`` items are requested upstream at first, then one
    more per confirmed item that downstream received, so at most
    ``max_in_flight`` publishes are unconfirmed at any time. Items are emitted
    in upstream order.

    Cancellation: cancels upstream and the publishes in flight (the broker may
    have taken them or not) and closes the channel. A completion or an error
    reaches downstream after the channel closed.

    Errors: a ``basic.nack`` from the broker (aiormq's ``DeliveryError``), a
    message returned as unroutable with ``mandatory=True`` (aiormq's
    ``PublishError``), a connection lost, or an ``encode`` that raises ends the
    stream with ``PublishError(item)``, the cause attached, and cancels upstream.

    Delivery guarantee: an item emitted downstream is in the broker (on disk
    for a durable queue when ``persistent``); after an error, the items not
    emitted may or may not be there: resend them for at-least-once.

    Args:
        client: an ``amqp://`` URL, or an open aio-pika connection (shared:
            only the subscription's channel is closed).
        routing_key: the routing key, or a function of the item returning it.
        encode: turns an item into the message body (default: items are bytes).
        max_in_flight: the most unconfirmed publishes (>= 1).
        exchange: the exchange to publish to ("" is the default exchange).
        mandatory: have the broker return a message no queue takes (an error).
        persistent: ``delivery_mode=2``, kept across a broker restart on a
            durable queue.
        loop: the event loop to publish on (default: the one running at subscribe).

    Example::

        confirmed = await (
            Flow.from_iterable(orders)
            .pipe(rabbitmq.sink(url, "orders", encode=lambda o: json.dumps(o).encode()))
            .to_list_async()
        )
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    settings: _SinkSettings[Any] = _SinkSettings(
        client,
        exchange,
        routing_key,
        _identity_bytes if encode is None else encode,
        mandatory,
        persistent,
    )

    def operator(upstream: Flow[Any]) -> Flow[Any]:
        def per_subscription() -> Flow[Any]:
            publisher: _ConfirmingPublisher[Any] = _ConfirmingPublisher(settings)
            published = confirmed(upstream, publisher.publish, max_in_flight, loop)
            return LiftFlow(published, partial(_CloseAtEnd, publisher=publisher), "sink")

        return Flow.defer(per_subscription)

    return operator
