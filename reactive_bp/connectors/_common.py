"""What every broker connector shares: messages and their settlement, and the fetch pump.

A broker source is a ``Flow[Message[T]]`` whose subscription turns downstream
demand into the broker's own flow control. The broker-specific part is a
``Fetcher``: ``fetch(n)`` returns at most ``n`` messages (fewer, or none, when
the broker had fewer within its wait), ``aclose()`` releases the consumer. The
pump here (``FetchFlow``) calls ``fetch`` only while demand is outstanding, with
``n = min(outstanding demand, max_batch)``, so what the client holds is bounded
by one batch and nothing is fetched for a subscriber that asked for nothing.

Rules, and where they hold:

* Rule 1.1: a batch is asked for no more than the demand read at its start,
  and a fetcher that returns more is a protocol violation (``on_error``).
* Rule 1.3: every signal comes from the one pump task on the connector's loop;
  ``request`` and ``cancel`` from any thread only record and wake it.
* Rule 3.9: a bad request is recorded in the ``Terminal`` and signalled by the
  pump (``_AsyncPullSubscription``, which this pump extends).
* Cancel (Rule 3.5/3.13): the pump task is cancelled, the fetcher closed; what
  was fetched and not delivered stays unacknowledged, so the broker redelivers it.

Settlement (``Message.ack``/``nack``) is thread-safe: it runs on the
connector's loop and returns a ``Settlement`` that can be awaited on any loop
or waited on from a thread. The first settlement of a message wins; the same
call again returns it; the other kind raises ``AlreadySettledError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import importlib
import threading
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from typing_extensions import override

from .._core._demand import produced
from .._core._hooks import ProtocolViolationError
from .._core._operator import EmptySubscription
from .._core._signals import signal_error
from .._flow import Flow
from ..operators._concurrency import Completion, _MapAsyncSubscriber, _Slot, _TaskHandle
from ..sources._async import _AsyncPullSubscription

if TYPE_CHECKING:
    from ..abc import Subscriber
    from ..schedulers import Cancellable

__all__ = [
    "AckMode",
    "AlreadySettledError",
    "ConnectorStats",
    "FetchFlow",
    "Fetcher",
    "LazyMetadata",
    "Message",
    "PublishError",
    "Settlement",
    "acked_on_delivery",
    "confirmed",
    "confirmed_batches",
    "nack_after_delivery",
    "require",
]

T = TypeVar("T")
P = TypeVar("P")
T_co = TypeVar("T_co", covariant=True)


def require(module: str, extra: str) -> ModuleType:
    """Import a broker client lazily; a missing one names the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as missing:
        raise ImportError(
            f"{module} is not installed: pip install 'reactive-bp[{extra}]'"
        ) from missing


class AckMode(enum.Enum):
    """When a source's messages are acknowledged to the broker."""

    MANUAL = "manual"
    """At-least-once: the user calls ``message.ack()`` where processing really ends.
    A message never acknowledged is redelivered after a crash or cancel."""
    ON_DELIVERY = "on_delivery"
    """At-most-once: each batch is acknowledged as it is handed downstream; a crash
    after that loses what was not processed yet."""


class AlreadySettledError(RuntimeError):
    """A message was acknowledged and then negatively acknowledged, or the reverse."""


class PublishError(Exception):
    """A sink could not publish ``item``; the broker's error is the ``__cause__``."""

    def __init__(self, item: object, cause: BaseException) -> None:
        super().__init__(f"publishing {item!r} failed: {cause!r}")
        self.item = item
        self.__cause__ = cause


class Settlement:
    """The outcome of one ``ack``/``nack``: await it (any loop) or ``result()`` (a thread).

    Nobody has to wait for it: the settlement runs anyway. A failure (the
    connection closed, say) is kept here, never raised elsewhere.

    Settled on the connector's loop (the common case: ``ack()`` in a pipeline
    stage), it holds the loop's own future — no thread-safe future per message;
    one is made only if a thread calls ``result()`` while it is pending.
    Settled from another thread, it holds the ``concurrent.futures.Future`` of
    ``run_coroutine_threadsafe``.
    """

    __slots__ = ("_future", "_local", "_loop", "kind")

    def __init__(
        self,
        kind: str,
        coroutine: Coroutine[Any, Any, None] | asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.kind = kind
        self._loop = loop
        # Exactly one of the two is set. _local: a future of ``loop`` (touched on
        # that loop, or read once done); _future: a thread-safe future.
        self._local: asyncio.Future[None] | None = None
        self._future: concurrent.futures.Future[None] | None = None
        if isinstance(coroutine, asyncio.Future) and not isinstance(coroutine, asyncio.Task):
            # A plain future of ``loop`` already under way (a connector batching its
            # acks returns one on that loop; what is done with it here and later is
            # safe from any thread) is kept as it is. Its failure is the connector's
            # to retrieve (see Message); one already failed is retrieved now. No
            # callback, and no look-up of the running loop, per settlement.
            if coroutine.done():
                _retrieve(coroutine)
            self._local = coroutine
            return
        if _running_loop() is loop:
            # A coroutine becomes a task; a task's failure is kept here, not logged.
            if isinstance(coroutine, asyncio.Task):
                local: asyncio.Future[None] = coroutine
            else:
                local = loop.create_task(coroutine)
            local.add_done_callback(_retrieve)
            self._local = local
            return
        if isinstance(coroutine, asyncio.Future):
            coroutine = _wait(coroutine)
        try:
            self._future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError as closed:  # the loop is closed
            coroutine.close()
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            error = ConnectionError(f"cannot {kind}: the connector's event loop is closed")
            error.__cause__ = closed
            failed.set_exception(error)
            self._future = failed

    def done(self) -> bool:
        """Whether the broker answered (or the settlement failed)."""
        local = self._local
        return local.done() if local is not None else self._threadsafe().done()

    def result(self, timeout: float | None = None) -> None:
        """Block until the broker confirmed; raise its error. Not on the connector's loop."""
        local = self._local
        if local is not None and local.done():
            _raise_outcome(local)
            return
        if _running_loop() is self._loop:
            raise RuntimeError(f"{self.kind}().result() would block the loop it runs on: await it")
        self._threadsafe().result(timeout)

    def __await__(self) -> Generator[Any, None, None]:
        local = self._local
        if local is not None and _running_loop() is self._loop:
            return _await_shielded(local).__await__()
        # Shielded too: a waiter on another loop that gives up must not cancel the
        # thread-safe future, which would cancel the settlement's task on its loop.
        return _await_shielded(asyncio.wrap_future(self._threadsafe())).__await__()

    def _threadsafe(self) -> concurrent.futures.Future[None]:
        """The thread-safe view of the outcome (made on first need for a local future)."""
        future = self._future
        if future is not None:
            return future
        local = self._local
        assert local is not None
        future = concurrent.futures.Future()
        if local.done():
            _copy_outcome(local, future)
        else:
            try:
                # Futures of a loop are touched on that loop only.
                self._loop.call_soon_threadsafe(_chain, local, future)
            except RuntimeError as closed:  # the loop closed with the settlement pending
                future.set_exception(ConnectionError(f"{self.kind}: the loop closed: {closed}"))
        self._future = future
        return future

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<Settlement {self.kind} {state}>"


async def _await_shielded(future: asyncio.Future[None]) -> None:
    # Awaited through a coroutine so that a caller's cancellation does not cancel the
    # settlement itself (it runs anyway).
    await asyncio.shield(future)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _chain(local: asyncio.Future[None], future: concurrent.futures.Future[None]) -> None:
    if local.done():
        _copy_outcome(local, future)
    else:
        local.add_done_callback(lambda done: _copy_outcome(done, future))


def _raise_outcome(local: asyncio.Future[None]) -> None:
    if local.cancelled():
        raise concurrent.futures.CancelledError()
    error = local.exception()
    if error is not None:
        raise error


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _wait(future: asyncio.Future[None]) -> None:
    await future


def _copy_outcome(task: asyncio.Future[None], future: concurrent.futures.Future[None]) -> None:
    if task.cancelled():
        future.cancel()
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(None)


class LazyMetadata(Mapping[str, object]):
    """A message's metadata as a read-only mapping, built only when first read.

    A connector subclass keeps what it received (the raw message, the entry) in
    its slots and builds the dict in ``_build``; a consumer that never reads the
    metadata never pays for it.
    """

    __slots__ = ("_fields",)

    _fields: dict[str, object]  # unset until first read: no __init__ to call per message

    def _build(self) -> dict[str, object]:
        raise NotImplementedError

    def _parsed(self) -> dict[str, object]:
        try:
            return self._fields
        except AttributeError:
            fields = self._fields = self._build()
            return fields

    @override
    def __getitem__(self, key: str) -> object:
        return self._parsed()[key]

    @override
    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    @override
    def __len__(self) -> int:
        return len(self._parsed())

    @override
    def __repr__(self) -> str:
        return f"{type(self).__name__.lstrip('_')}({self._parsed()!r})"


class Message(Generic[T_co]):
    """One broker message: ``value`` (decoded), ``metadata`` and its settlement.

    ``ack()`` tells the broker the message is processed; ``nack(requeue=True)``
    gives it back (redelivered when ``requeue``, dropped or dead-lettered when not,
    as the broker does). Both are thread-safe and return a ``Settlement``.

    A connector's ``ack``/``nack`` callables return a coroutine (run as a task on
    ``loop``) or, when called on ``loop`` itself, an ``asyncio.Future`` already
    under way (no task per settlement; several messages may share one, the
    future of the batch their settlement joined). A plain future's failure is
    the connector's to retrieve (``future.exception()`` after setting it), so
    that a settlement nobody awaits is not logged as a failure never
    retrieved; the ``Settlement`` keeps it. ``lock`` guards the first-settlement-wins
    decision; a connector passes one lock for all the messages of a subscription
    (settling is rare next to the lock's cost per message), else each has its own.
    """

    __slots__ = ("_ack", "_lock", "_loop", "_nack", "_settlement", "metadata", "value")

    def __init__(
        self,
        value: T_co,
        metadata: Mapping[str, object],
        *,
        ack: Callable[[], Coroutine[Any, Any, None] | asyncio.Future[None]],
        nack: Callable[[bool], Coroutine[Any, Any, None] | asyncio.Future[None]],
        loop: asyncio.AbstractEventLoop,
        lock: threading.Lock | None = None,
    ) -> None:
        self.value = value
        self.metadata = metadata
        self._ack = ack
        self._nack = nack
        self._loop = loop
        self._lock = threading.Lock() if lock is None else lock
        self._settlement: Settlement | None = None  # guarded by _lock; set once

    def ack(self) -> Settlement:
        """Acknowledge: the broker will not deliver this message again."""
        return self._settle("ack", self._ack)

    def nack(self, requeue: bool = True) -> Settlement:
        """Negatively acknowledge: redelivered when ``requeue``, else dropped/dead-lettered."""
        return self._settle("nack", lambda: self._nack(requeue))

    @property
    def settled(self) -> str | None:
        """``"ack"``, ``"nack"`` or ``None`` when not settled yet."""
        settlement = self._settlement
        return None if settlement is None else settlement.kind

    def _settle(
        self, kind: str, start: Callable[[], Coroutine[Any, Any, None] | asyncio.Future[None]]
    ) -> Settlement:
        lock = self._lock
        lock.acquire()  # not ``with``: about half the cost on 3.11, once per message
        try:
            settlement = self._settlement
            if settlement is None:
                settlement = self._settlement = Settlement(kind, start(), self._loop)
                return settlement
        finally:
            lock.release()
        if settlement.kind != kind:
            raise AlreadySettledError(f"{kind}(): this message was already {settlement.kind}ed")
        return settlement

    def __repr__(self) -> str:
        return f"Message({self.value!r}, settled={self.settled})"


async def acked_on_delivery() -> None:
    """``ack`` of an ``AckMode.ON_DELIVERY`` message: the broker was told before delivery."""


async def nack_after_delivery(requeue: bool) -> None:
    """``nack`` of an ``AckMode.ON_DELIVERY`` message: too late, it was acknowledged."""
    raise AlreadySettledError(
        "nack(): AckMode.ON_DELIVERY acknowledged this message when it was delivered"
    )


class ConnectorStats:
    """Counters of one source subscription, written on its loop, readable from anywhere.

    ``held`` is what the client holds that downstream has not received:
    fetched/received and not yet delivered. ``max_held`` is its high-water mark,
    the number that shows demand bounded the broker (it never exceeds the
    batch size or the prefetch).
    """

    __slots__ = ("acked", "delivered", "fetches", "max_held", "nacked", "received")

    def __init__(self) -> None:
        self.fetches = 0
        self.received = 0
        self.delivered = 0
        self.acked = 0
        self.nacked = 0
        self.max_held = 0

    @property
    def held(self) -> int:
        """Received from the broker, not yet handed downstream."""
        return self.received - self.delivered

    def note_received(self, n: int) -> None:
        """Count ``n`` messages that arrived from the broker."""
        self.received += n
        held = self.received - self.delivered
        if held > self.max_held:
            self.max_held = held

    def as_dict(self) -> dict[str, int]:
        """A snapshot, e.g. for logging."""
        return {name: getattr(self, name) for name in (*self.__slots__, "held")}

    def __repr__(self) -> str:
        return f"ConnectorStats({self.as_dict()})"


class Fetcher(Protocol[T_co]):
    """The broker-specific half of a source (one per subscription)."""

    async def fetch(self, n: int) -> Sequence[Message[T_co]]:
        """Return at most ``n`` (>= 1) messages; fewer or none after the broker's wait.

        Raise ``StopAsyncIteration`` to complete the stream; any other error fails it.
        """
        ...

    async def aclose(self) -> None:
        """Stop consuming and release the connection; unsettled messages go back."""
        ...


class _FetchSubscription(_AsyncPullSubscription[Message[T]]):
    """``_AsyncPullSubscription`` whose pump fetches batches sized by outstanding demand."""

    __slots__ = ("_fetcher", "_max_batch", "_stats")

    def __init__(
        self,
        actual: Subscriber[Message[T]],
        fetcher: Fetcher[T],
        loop: asyncio.AbstractEventLoop,
        source: object,
        max_batch: int,
        stats: ConnectorStats,
    ) -> None:
        # The fetcher stands where the iterator was: cancel closes it (aclose).
        super().__init__(actual, fetcher, loop, source)  # type: ignore[arg-type]
        self._fetcher = fetcher
        self._max_batch = max_batch
        self._stats = stats

    @override
    async def _pump(self) -> None:
        terminal = self._terminal
        fetch = self._fetcher.fetch
        stats = self._stats
        while True:
            with self._lock:
                actual = self._actual
                if terminal.is_closed or actual is None:
                    self._running = False
                    return
                ending = terminal.ending
                budget = self._requested
                if ending is None and budget == 0:
                    self._running = False  # no demand: no fetch
                    return
            if ending is not None:
                self._finish(actual, None)  # delivers the recorded ending (Rule 3.9)
                return
            want = min(budget, self._max_batch)
            try:
                batch = await fetch(want)
            except StopAsyncIteration:
                self._finish(actual, None)
                return
            except asyncio.CancelledError:
                with self._lock:
                    self._running = False
                raise
            except Exception as failure:
                self._finish(actual, failure)
                return
            stats.fetches += 1
            stats.note_received(len(batch))
            if len(batch) > want:
                self._finish(
                    actual,
                    ProtocolViolationError(
                        f"Rule 1.1: {self._source!r} fetched {len(batch)} messages for {want}"
                    ),
                )
                return
            emitted = 0
            for message in batch:
                if self._actual is None:
                    return  # cancelled (Rule 3.6): the rest stays unacknowledged
                if message is None:
                    self._finish(actual, TypeError(f"{self._source!r} fetched None (Rule 2.13)"))
                    return
                try:
                    actual.on_next(message)
                except Exception as fault:  # Rule 2.13
                    self._finish(actual, fault)
                    return
                emitted += 1
                stats.delivered += 1
            with self._lock:
                self._requested = produced(self._requested, emitted)


class FetchFlow(Flow[Message[T]]):
    """A source that fetches from a broker only what downstream requested.

    ``open_fetcher(stats)`` makes the broker half for each subscriber; the pump
    runs on ``loop`` (default: the loop running at subscribe time).
    """

    __slots__ = ("_loop", "_max_batch", "_name", "_open_fetcher", "stats")

    def __init__(
        self,
        open_fetcher: Callable[[ConnectorStats], Fetcher[T]],
        *,
        max_batch: int,
        loop: asyncio.AbstractEventLoop | None,
        name: str,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._open_fetcher = open_fetcher
        self._max_batch = max_batch
        self._loop = loop
        self._name = name
        # The counters of the latest subscription (one source, one subscriber is the
        # common case; each subscription has its own).
        self.stats = ConnectorStats()

    @override
    def _subscribe(self, subscriber: Subscriber[Message[T]]) -> None:
        try:
            loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        except RuntimeError:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(
                subscriber,
                RuntimeError(f"{self._name}: subscribe inside a running event loop or pass loop="),
                self,
            )
            return
        stats = self.stats = ConnectorStats()
        try:
            fetcher = self._open_fetcher(stats)
        except Exception as error:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(subscriber, error, self)
            return
        subscription = _FetchSubscription(subscriber, fetcher, loop, self, self._max_batch, stats)
        try:
            subscriber.on_subscribe(subscription)
        except Exception as fault:  # Rule 2.13
            subscription.cancel()
            signal_error(subscriber, fault, self)

    def __repr__(self) -> str:
        return self._name


class _InOrder:
    """Hands what is submitted, from any thread, to a loop-confined ``take`` in submission order.

    A runner's ``submit`` runs on the thread that delivered the item: the loop's
    own (``take`` at once) or another (``take`` later, on the loop). Taking an
    item submitted on the loop at once could put it ahead of an earlier item
    still on its way from another thread, and a broker would then store them
    out of order. So every submission joins one queue (submissions are serial,
    Rule 1.3, so its order is the items' order) and the loop takes the queue
    from its head; a ``take`` that submits again (a failure asking upstream
    for more) only queues behind the one running.
    """

    __slots__ = ("_arrivals", "_loop", "_take", "_taking")

    def __init__(self, loop: asyncio.AbstractEventLoop, take: Callable[..., None]) -> None:
        self._loop = loop
        self._take = take
        self._arrivals: deque[tuple[Any, ...]] = deque()  # append/popleft: thread-safe
        self._taking = False  # loop-confined

    def submit(self, *arguments: Any) -> None:
        self._arrivals.append(arguments)
        loop = self._loop
        if _running_loop() is loop:
            self._take_all()
        else:
            loop.call_soon_threadsafe(self._take_all)  # a closed loop raises: the caller's

    def _take_all(self) -> None:
        if self._taking:
            return  # the take running now reaches these
        arrivals = self._arrivals
        take = self._take
        self._taking = True
        try:
            while arrivals:
                take(*arrivals.popleft())
        finally:
            self._taking = False


class _ConfirmRunner(Generic[T]):
    """Starts ``publish(item)`` on the loop and reports its confirmation: no task per item.

    ``publish`` returns an awaitable. An ``asyncio`` future (the Redis appender's
    reply, a NATS ``PubAck`` waiter) is watched with ``add_done_callback``; a
    coroutine (aio-pika's confirmation) becomes a task. The result reported is
    the item itself; a failure is ``PublishError(item)`` with the cause.

    Confirmations that arrive together (a pipeline's replies resolve all their
    futures in one go) are handed to the limiter as one batch at the end of the
    loop's pass over their callbacks (loop-confined ``_confirmed``): one drain
    emits them all and asks upstream for as many more with one ``request``.
    """

    __slots__ = ("_confirmed", "_finish", "_in_order", "_loop", "_publish")

    def __init__(
        self, publish: Callable[[T], Awaitable[object]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._publish = publish
        self._loop = loop
        self._in_order = _InOrder(loop, self._start)
        # Loop-confined: confirmations not yet handed over, in the order they came.
        self._confirmed: list[tuple[_Slot[T], T, _TaskHandle]] = []
        # Set by the flow once the limiter exists: its batched success path.
        self._finish: Callable[[list[tuple[_Slot[T], T]]], None] | None = None

    def submit(self, item: T, slot: _Slot[T], on_done: Completion[T]) -> Cancellable | None:
        handle = _TaskHandle(self._loop)
        self._in_order.submit(item, slot, on_done, handle)  # published in item order
        return handle

    def _start(self, item: T, slot: _Slot[T], on_done: Completion[T], handle: _TaskHandle) -> None:
        if handle._cancelled:
            return
        try:
            waiter = self._publish(item)
            future = waiter if isinstance(waiter, asyncio.Future) else _as_task(waiter, self._loop)
        except Exception as error:  # encode raised, the client refused at once
            self._hand_over()
            on_done(slot, None, PublishError(item, error))
            return
        handle._task = future
        future.add_done_callback(partial(self._confirmation, item, slot, on_done, handle))

    def _confirmation(
        self,
        item: T,
        slot: _Slot[T],
        on_done: Completion[T],
        handle: _TaskHandle,
        future: asyncio.Future[object],
    ) -> None:
        if handle._cancelled:
            # Cancelled by the subscription, which no longer wants the outcome (the
            # waiter may have been resolved before the cancel reached it).
            return
        if future.cancelled():
            # Cancelled by someone else (a client failing its waiters as its connection
            # closes): the item was not confirmed, which is a failure, never a silence.
            error: BaseException | None = ConnectionError("the publish was cancelled by the client")
        else:
            error = future.exception()
        if error is None:
            confirmed = self._confirmed
            confirmed.append((slot, item, handle))
            if len(confirmed) == 1:
                self._loop.call_soon(self._hand_over)  # after the other callbacks ready now
            return
        self._hand_over()  # the confirmations before the failure first
        if not isinstance(error, Exception):  # pragma: no cover - a BaseException escaped
            error = RuntimeError(repr(error))
        on_done(slot, None, PublishError(item, error))

    def _hand_over(self) -> None:
        confirmed, self._confirmed = self._confirmed, []
        finish = self._finish
        if confirmed and finish is not None:
            finish([(slot, item) for slot, item, handle in confirmed if not handle._cancelled])

    def close(self) -> None:
        pass  # the handles cancel the waiters one by one


def _as_task(waiter: Awaitable[object], loop: asyncio.AbstractEventLoop) -> asyncio.Future[object]:
    if asyncio.iscoroutine(waiter):
        return loop.create_task(waiter)
    return asyncio.ensure_future(waiter, loop=loop)


class _BatchConfirmRunner(Generic[T, P]):
    """Publishes the items submitted in one event-loop turn as one batch.

    For a client that answers many publishes at once (a Redis pipeline):
    ``prepare(item)`` turns each item into its payload as it arrives (a raising
    ``prepare`` fails that item), and at the end of the turn
    ``publish_batch(payloads)`` publishes them all and returns one ``asyncio``
    future of their replies, in order. A reply that is an exception fails its
    item; a failed or cancelled future fails the batch's first item. No
    future, task, callback or handle per item: the replies of a batch are
    handed to the limiter as one list (``_MapAsyncSubscriber._calls_done``).

    Loop-confined: ``submit`` from another thread is sent to the loop; ``close``
    (cancel, from any thread) runs there too, drops what was not published
    and cancels the futures still waiting, so the client skips the batches it
    has not sent (what it already sent may still be appended).
    """

    __slots__ = (
        "_closed",
        "_finish",
        "_in_order",
        "_loop",
        "_on_done",
        "_payloads",
        "_pending",
        "_prepare",
        "_publish_batch",
        "_waiting",
    )

    def __init__(
        self,
        prepare: Callable[[T], P],
        publish_batch: Callable[[list[P]], asyncio.Future[Sequence[object]]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._prepare = prepare
        self._publish_batch = publish_batch
        self._loop = loop
        # Loop-confined: this turn's items (with their slots) and payloads, not yet
        # published; the batches published and not answered; closed by cancel.
        self._pending: list[tuple[_Slot[T], T]] = []
        self._payloads: list[P] = []
        self._waiting: set[asyncio.Future[Sequence[object]]] = set()
        self._closed = False
        self._on_done: Completion[T] | None = None
        self._in_order = _InOrder(loop, self._add)
        # Set by the flow once the limiter exists: its batched success path.
        self._finish: Callable[[list[tuple[_Slot[T], T]]], None] | None = None

    def submit(self, item: T, slot: _Slot[T], on_done: Completion[T]) -> Cancellable | None:
        self._in_order.submit(item, slot, on_done)  # batched in item order
        return None  # close() cancels what is under way, batch by batch

    def _add(self, item: T, slot: _Slot[T], on_done: Completion[T]) -> None:
        if self._closed:
            return
        self._on_done = on_done
        try:
            payload = self._prepare(item)
        except Exception as error:  # encode raised: this item fails, the stream ends
            on_done(slot, None, PublishError(item, error))
            return
        pending = self._pending
        pending.append((slot, item))
        self._payloads.append(payload)
        if len(pending) == 1:
            self._loop.call_soon(self._publish)  # after the rest of this turn's items

    def _publish(self) -> None:
        batch, self._pending = self._pending, []
        payloads, self._payloads = self._payloads, []
        if not batch:
            return  # closed meanwhile: _close dropped the turn's items
        try:
            future = self._publish_batch(payloads)
        except Exception as error:  # the client refused at once
            self._failed(batch[0], error)
            return
        self._waiting.add(future)
        future.add_done_callback(partial(self._replied, batch))

    def _replied(
        self, batch: list[tuple[_Slot[T], T]], future: asyncio.Future[Sequence[object]]
    ) -> None:
        self._waiting.discard(future)
        # Retrieved even when closed: a failure nobody reads is not logged at exit.
        error = None if future.cancelled() else future.exception()
        if self._closed:
            return  # cancelled by the subscription, which no longer wants the outcome
        if future.cancelled():
            # Cancelled by the client (failing its waiters as its connection closes):
            # not confirmed, which is a failure, never a silence.
            error = ConnectionError("the publish was cancelled by the client")
        if error is not None:
            self._failed(batch[0], error)
            return
        replies = future.result()
        if len(replies) != len(batch):  # pragma: no cover - a client answering out of step
            self._failed(batch[0], RuntimeError(f"{len(replies)} replies to {len(batch)} items"))
            return
        confirmed: list[tuple[_Slot[T], T]] = []
        for entry, reply in zip(batch, replies):  # noqa: B905 - lengths checked above
            if isinstance(reply, BaseException):
                self._hand_over(confirmed)  # the confirmations before the failure first
                self._failed(entry, reply)
                return
            confirmed.append(entry)
        self._hand_over(confirmed)

    def _hand_over(self, confirmed: list[tuple[_Slot[T], T]]) -> None:
        finish = self._finish
        if confirmed and finish is not None:
            finish(confirmed)

    def _failed(self, entry: tuple[_Slot[T], T], error: BaseException) -> None:
        slot, item = entry
        on_done = self._on_done
        if not isinstance(error, Exception):  # pragma: no cover - a BaseException escaped
            error = RuntimeError(repr(error))
        if on_done is not None:
            on_done(slot, None, PublishError(item, error))

    def close(self) -> None:
        loop = self._loop
        if _running_loop() is loop:
            self._close()
            return
        with contextlib.suppress(RuntimeError):  # a closed loop runs nothing of ours any more
            loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        self._closed = True
        self._pending = []
        self._payloads = []
        waiting, self._waiting = self._waiting, set()
        for future in waiting:
            future.cancel()


class _ConfirmedFlow(Flow[T]):
    __slots__ = ("_loop", "_max_in_flight", "_publish", "_runner", "_source")

    def __init__(
        self,
        source: Flow[T],
        publish: Callable[[T], Awaitable[object]] | None,
        max_in_flight: int,
        loop: asyncio.AbstractEventLoop | None,
        runner: Callable[[asyncio.AbstractEventLoop], _BatchConfirmRunner[T, Any]] | None = None,
    ) -> None:
        self._source = source
        self._publish = publish
        self._max_in_flight = max_in_flight
        self._loop = loop
        self._runner = runner

    @override
    def _subscribe(self, subscriber: Subscriber[T]) -> None:
        loop = self._loop if self._loop is not None else _running_loop()
        if loop is None:
            subscriber.on_subscribe(EmptySubscription())
            signal_error(
                subscriber,
                RuntimeError("a broker sink needs a running event loop at subscribe time, or loop"),
                self,
            )
            return
        runner: _ConfirmRunner[T] | _BatchConfirmRunner[T, Any]
        if self._runner is not None:
            runner = self._runner(loop)
        else:
            assert self._publish is not None
            runner = _ConfirmRunner(self._publish, loop)
        limiter = _MapAsyncSubscriber(subscriber, runner, self._max_in_flight, True)
        runner._finish = limiter._calls_done
        self._source.subscribe(limiter)

    def __repr__(self) -> str:
        publish = self._publish if self._runner is None else "<batches>"
        return f"{self._source!r}.confirmed({publish!r}, {self._max_in_flight})"


def confirmed(
    flow: Flow[T],
    publish: Callable[[T], Awaitable[object]],
    max_in_flight: int,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Flow[T]:
    """Publish each item with ``publish`` (which resolves when the broker confirmed it).

    At most ``max_in_flight`` publishes are unconfirmed at any time: upstream is
    asked for ``max_in_flight`` items, then one more per confirmation that
    downstream received. Emits each item once it is confirmed, in order. A
    failed publish ends the stream with ``PublishError(item)`` (the broker's
    error as its cause) and cancels upstream and the other publishes.

    ``publish`` runs on ``loop`` (default: the loop running at subscribe time);
    when it returns an ``asyncio`` future, its confirmation is watched without
    a task (the window and its ordering are ``map_async``'s limiter).
    """
    return _ConfirmedFlow(flow, publish, max_in_flight, loop)


def confirmed_batches(
    flow: Flow[T],
    prepare: Callable[[T], P],
    publish_batch: Callable[[list[P]], asyncio.Future[Sequence[object]]],
    max_in_flight: int,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Flow[T]:
    """``confirmed`` for a client that publishes a batch at once and answers it as one.

    The items that arrive in one event-loop turn are published together:
    ``prepare(item)`` makes each payload (a raising ``prepare`` is
    ``PublishError(item)``), ``publish_batch(payloads)`` returns one future of
    the replies in order, an exception instance for an item that failed. The
    window, the order, the errors and cancellation are ``confirmed``'s; what
    is saved is a future and a callback per item.
    """

    def runner(running: asyncio.AbstractEventLoop) -> _BatchConfirmRunner[T, Any]:
        return _BatchConfirmRunner(prepare, publish_batch, running)

    return _ConfirmedFlow(flow, None, max_in_flight, loop, runner)
