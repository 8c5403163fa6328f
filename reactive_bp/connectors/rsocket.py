"""RSocket: ``request(n)`` carried between processes as ``REQUEST_N`` frames, both ways.

Needs the ``rsocket`` extra (``pip install 'reactive-bp[rsocket]'``, i.e. rsocket-py
0.4.20). RSocket is the wire protocol of Reactive Streams: a requester opens a stream with
``REQUEST_STREAM`` (or ``REQUEST_CHANNEL``) carrying an initial request-n, asks for more
with ``REQUEST_N``, stops with ``CANCEL``; the responder answers with ``PAYLOAD`` frames,
ending with ``COMPLETE`` or ``ERROR``. rsocket-py moves those frames but does not keep the
demand: its requester sends ``MAX_REQUEST_N`` at subscribe time (items arrive before any
``request``) and nothing validates ``request(n <= 0)`` (``tests/spec_tck/test_rsocket.py``
pins every rule its publishers break). This module puts reactive_bp's demand on both ends.

How demand maps (``MAX_REQUEST_N = 2**31 - 1`` is RSocket's "unbounded"):

=============================================  ============================================
reactive_bp                                    on the wire
=============================================  ============================================
client: first ``request(n)``                   ``REQUEST_STREAM``, initial request-n ``n``
client: each later ``request(n)``              ``REQUEST_N n``
client: ``request(UNBOUNDED)``                 request-n ``MAX_REQUEST_N``, once
client: ``cancel()``                           ``CANCEL``
server: ``request(n)`` on the route's flow     initial request-n ``n`` / ``REQUEST_N n``
server: ``request(UNBOUNDED)``                 request-n ``MAX_REQUEST_N``
server: ``cancel()`` on the route's flow       ``CANCEL``, or the connection lost
server: ``on_next`` / ``on_complete``          ``PAYLOAD`` / ``COMPLETE``
server: ``on_error(e)``                        ``ERROR`` ``"<type name>: <message>"``
=============================================  ============================================

Server side: ``FlowRoutes`` registers handlers that return a ``Flow`` (any publisher) for a
route (the standard routing metadata, ``message/x.rsocket.routing.v0`` inside composite
metadata); ``RSocketServer(transport, handler_factory=routes.handler)`` serves them.
Client side: ``remote_flow(client, route, data)`` is a cold ``Flow[bytes]``; each
subscription is one ``REQUEST_STREAM``, opened by the first ``request(n)``.
``remote_channel`` does both at once (``REQUEST_CHANNEL``).

How the rules hold on the client (``_RemoteSubscription``, a ``QueueDrain``):

* Rule 1.1: items are delivered from a queue only against downstream demand, and the
  wire is granted exactly the downstream demand (``_covered`` tracks what was granted and
  not yet delivered), so a compliant server never sends more than was asked. A remote that
  sends more than it was granted fails the stream (``ProtocolViolationError``) and is
  cancelled.
* Rule 1.3: the ``QueueDrain`` loop serializes every signal, whichever thread brings the
  work (a frame on the loop, a ``request`` from another thread).
* Rule 3.9: ``request(n <= 0)`` becomes ``on_error(NonPositiveRequestError)`` and
  ``CANCEL``; nothing is raised to the caller.
* Rule 3.17: downstream demand saturates at ``UNBOUNDED``, which is granted as
  ``MAX_REQUEST_N``. A large finite demand is never sent as ``MAX_REQUEST_N`` (that would
  mean "unbounded" to the server): at most ``2**31 - 2`` credits are outstanding at the
  remote, topped up as items arrive.
* Threads: ``request`` and ``cancel`` may come from any thread; the frames are sent on the
  client's event loop (``call_soon_threadsafe`` when called from elsewhere). rsocket-py is
  not thread-safe, so nothing here touches it off its loop.

On the server (``_ResponseBridge``): the route's flow is subscribed per request, each wire
request-n becomes exactly one ``request(n)`` on it, and its signals are put on the wire in
order on the server's loop (they may come from any thread). A synchronous flow produces
inside the ``REQUEST_N`` handling, on the loop: fine for the windows a ``remote_flow``
grants, but a requester asking ``MAX_REQUEST_N`` (rsocket-py's own requesters always do)
makes an endless synchronous flow keep the loop: give such routes ``subscribe_on(...)``, or
produce with ``Flow.from_async_iterable``. rsocket-py's send queue is unbounded and does
not push back on TCP, so the requester's demand is the only thing that bounds the server's
memory.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, overload

from typing_extensions import override

from .._core._arbiter import SubscriptionArbiter, refuse_second_subscription
from .._core._demand import UNBOUNDED, add_cap
from .._core._hooks import ProtocolViolationError, report_undeliverable
from .._core._operator import EmptySubscription
from .._core._queue_drain import QueueDrain
from .._core._signals import signal_error
from .._flow import Flow
from ..sources._iterable import NoneItemError

try:
    from rsocket.error_codes import ErrorCode
    from rsocket.exceptions import RSocketProtocolError
    from rsocket.extensions.composite_metadata import CompositeMetadata
    from rsocket.extensions.helpers import composite
    from rsocket.extensions.helpers import route as routing_item
    from rsocket.extensions.mimetypes import WellKnownMimeTypes
    from rsocket.extensions.routing import RoutingMetadata
    from rsocket.frame import MAX_REQUEST_N
    from rsocket.payload import Payload
    from rsocket.request_handler import BaseRequestHandler
except ImportError as missing:  # pragma: no cover - the extra is installed in dev
    raise ImportError(
        "reactive_bp.connectors.rsocket needs rsocket-py: pip install 'reactive-bp[rsocket]'"
    ) from missing

if TYPE_CHECKING:
    from rsocket.rsocket import RSocket

    from ..abc import Publisher, Subscriber, Subscription

__all__ = [
    "MAX_REQUEST_N",
    "FlowRoutes",
    "RSocketConnectionError",
    "RSocketRemoteError",
    "UnknownRouteError",
    "remote_channel",
    "remote_flow",
]

T = TypeVar("T")
R = TypeVar("R")
StreamHandlerT = TypeVar("StreamHandlerT", bound="Callable[[Any], Publisher[Any]]")
ChannelHandlerT = TypeVar("ChannelHandlerT", bound="Callable[[Any, Flow[bytes]], Publisher[Any]]")

_MAX_CREDIT: Final = MAX_REQUEST_N - 1
"""The most finite credit ever outstanding at a remote: one more would read as unbounded."""

_COMPOSITE: Final[bytes] = WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA.value.name
_ROUTING: Final[bytes] = WellKnownMimeTypes.MESSAGE_RSOCKET_ROUTING.value.name
_TYPE_PREFIX: Final = re.compile(r"([A-Za-z_][\w.]*): ")
_CONNECTION_CODES: Final = frozenset(
    {ErrorCode.CONNECTION_ERROR, ErrorCode.CONNECTION_ERROR_NO_RETRY}
)


# -- errors --------------------------------------------------------------------------------


class RSocketRemoteError(Exception):
    """The remote end ended the stream with an ``ERROR`` frame.

    Attributes:
        message: the frame's text; a reactive_bp server sends ``"<type name>: <message>"``.
        error_code: the RSocket error code (``0x201`` APPLICATION_ERROR for handler errors).
        remote_type: the remote exception's type name when the text starts with one
            (``"ValueError"``), else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        error_code: int = ErrorCode.APPLICATION_ERROR,
        remote_type: str | None = None,
    ) -> None:
        """Record the remote error."""
        super().__init__(message)
        self.message = message
        self.error_code = int(error_code)
        self.remote_type = remote_type

    def __str__(self) -> str:
        if self.error_code == ErrorCode.APPLICATION_ERROR:
            return self.message
        try:
            code = ErrorCode(self.error_code).name
        except ValueError:
            code = hex(self.error_code)
        return f"{code}: {self.message}" if self.message else code


class RSocketConnectionError(RSocketRemoteError):
    """The connection closed (or was closed) before the stream ended."""


class UnknownRouteError(LookupError):
    """A request named a route that the server's ``FlowRoutes`` does not have."""


def _type_name(text: str) -> str | None:
    match = _TYPE_PREFIX.match(text)
    return match.group(1) if match else None


def _remote_error(error: Exception) -> RSocketRemoteError:
    """What rsocket-py hands a requester's ``on_error``, as the error downstream sees."""
    if isinstance(error, RSocketRemoteError):
        return error
    if isinstance(error, RSocketProtocolError):
        code = int(error.error_code)
        text = error.data if isinstance(error.data, str) else ""
        if code in _CONNECTION_CODES:
            return RSocketConnectionError(text or "the RSocket connection closed", error_code=code)
        return RSocketRemoteError(text, error_code=code, remote_type=_type_name(text))
    # rsocket-py turns an APPLICATION_ERROR frame into RuntimeError(text).
    text = str(error)
    return RSocketRemoteError(text, remote_type=_type_name(text))


def _wire_error(error: Exception) -> Exception:
    """What an ``ERROR`` frame carries for ``error``: its type name and message."""
    if isinstance(error, RSocketProtocolError):
        chosen: Exception = error  # the handler chose the code
        return chosen
    if isinstance(error, RSocketRemoteError):
        text = error.message  # relayed from further away: keep its text
    else:
        detail = str(error)
        name = type(error).__name__
        text = f"{name}: {detail}" if detail else name
    # rsocket-py puts str() of this in the frame; the original stays reachable in process.
    wire = RuntimeError(text)
    wire.__cause__ = error
    return wire


# -- payloads --------------------------------------------------------------------------------


def _payload(value: object) -> Any:
    """``value`` as an rsocket-py ``Payload``: a ``Payload``, bytes-like, or ``str`` (UTF-8)."""
    if isinstance(value, Payload):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return Payload(bytes(value))
    if isinstance(value, str):
        return Payload(value.encode())
    raise TypeError(
        f"cannot send a {type(value).__name__} over RSocket: items must be bytes, str or "
        "Payload; pass encode= to convert them"
    )


def _request(payload: Any) -> Any:
    """A request as handlers see it: ``data`` is ``bytes`` (rsocket-py parses a bytearray)."""
    metadata = payload.metadata
    return Payload(_data(payload), None if metadata is None else bytes(metadata))


def _identity(data: bytes) -> bytes:
    return data


def _data(payload: Any) -> bytes:
    data = payload.data
    return b"" if data is None else bytes(data)


def _route_metadata(route: str | None, extra: Sequence[Any]) -> bytes | None:
    """Composite metadata naming ``route`` (``message/x.rsocket.routing.v0``) plus ``extra``."""
    items = [*([] if route is None else [routing_item(route)]), *extra]
    return composite(*items) if items else None


# -- event-loop plumbing -------------------------------------------------------------------


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    return asyncio._get_running_loop() is loop


def _loop_of(
    endpoint: object, loop: asyncio.AbstractEventLoop | None
) -> asyncio.AbstractEventLoop | None:
    """The loop ``endpoint`` (an rsocket-py client or server) runs on."""
    if loop is not None:
        return loop
    for name in ("_reconnect_task", "_receiver_task", "_sender_task"):
        task = getattr(endpoint, name, None)
        if isinstance(task, asyncio.Task):
            return task.get_loop()
    return asyncio._get_running_loop()


def _is_closed(endpoint: object) -> bool:
    """Whether ``endpoint``'s connection is closed or gone (rsocket-py has no public flag)."""
    if getattr(endpoint, "_is_closing", False):
        return True
    receiver = getattr(endpoint, "_receiver_task", None)
    return isinstance(receiver, asyncio.Task) and receiver.done()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> bool:
    """Run ``fn(*args)`` on ``loop``; ``False`` if the loop is closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True


# -- the server side: a local publisher behind rsocket-py's responder ------------------------

_NEXT: Final = 0
_COMPLETE: Final = 1
_ERROR: Final = 2
_CANCELLED: Final = 3  # how a response ended: the remote cancelled it (or the connection went)


class _ResponsePublisher(Generic[T]):
    """What rsocket-py's responder (or channel requester) subscribes: a local publisher.

    rsocket-py's publishers are one object per stream; each ``subscribe`` here makes a
    fresh ``_ResponseBridge`` over a fresh subscription to ``source``. ``bridge`` is the
    last one made (a channel requester links its inbound to it). ``inbound`` (a server's
    channel) is the requester's stream, ended with the response (``_ResponseBridge``).
    """

    __slots__ = ("_encode", "_inbound", "_loop", "_source", "bridge")

    def __init__(
        self,
        source: Publisher[T],
        encode: Callable[[T], object],
        loop: asyncio.AbstractEventLoop,
        inbound: _Wire | None = None,
    ) -> None:
        self._source = source
        self._encode = encode
        self._loop = loop
        self._inbound = inbound
        self.bridge: _ResponseBridge[T] | None = None

    def subscribe(self, wire: Any) -> None:
        """rsocket-py's ``subscribe``: ``wire`` is its stream subscriber (loop thread)."""
        bridge = _ResponseBridge[T](wire, self._encode, self._loop, self._inbound)
        self.bridge = bridge
        wire.on_subscribe(bridge)  # rsocket-py asks for the initial request-n right after
        try:
            self._source.subscribe(bridge)
        except Exception as error:  # Rule 1.9: a publisher that cannot subscribe
            bridge.fail(error)

    def __repr__(self) -> str:
        return f"_ResponsePublisher({self._source!r})"


class _ResponseBridge(Generic[T]):
    """One remote subscription to a local publisher.

    Two faces: the ``Subscriber`` of the local publisher (signals from any thread), and
    the subscription rsocket-py's stream subscriber (``_wire``) holds, whose ``request``
    and ``cancel`` rsocket-py calls on the loop when ``REQUEST_N`` and ``CANCEL`` arrive.

    * Demand: each wire request-n becomes one ``request(n)`` upstream, ``MAX_REQUEST_N``
      becoming ``UNBOUNDED`` (``_arbiter`` carries it until the upstream is attached, and
      forwards a bad ``n`` so the publisher answers it with ``on_error``, Rule 3.9).
    * Order (Rule 1.3 on the wire): signals go through ``_outbox`` and are sent by one
      flush at a time on the loop; a signal made on the loop with nothing queued is sent
      at once (the common synchronous case, no hop).
    * Rule 1.1 at the wire: ``_credit`` (loop only) is what the remote granted and was not
      sent yet; an item beyond it is the local publisher's violation and fails the stream.
    * A channel: ``_inbound`` is the other direction (``_Wire.response_ended``). On the
      server the response is the route's whole answer, so when it ends (sent ``COMPLETE``
      or ``ERROR``) or the remote cancels it, the inbound is ended too; otherwise a route
      that never subscribed its inbound would leave the channel registered, half-open,
      forever. On the client, an outbound that fails (``ERROR`` ends both directions)
      fails the inbound with its error.
    """

    __slots__ = (
        "_arbiter",
        "_closed",
        "_credit",
        "_encode",
        "_flushing",
        "_inbound",
        "_lock",
        "_loop",
        "_outbox",
        "_subscribed",
        "_wire",
    )

    def __init__(
        self,
        wire: Any,
        encode: Callable[[T], object],
        loop: asyncio.AbstractEventLoop,
        inbound: _Wire | None = None,
    ) -> None:
        self._wire: Any = wire  # loop only; None once the stream ended or was cancelled
        # Loop only: a server channel's inbound, ended with the response; None after.
        self._inbound = inbound
        self._encode = encode
        self._loop = loop
        self._arbiter = SubscriptionArbiter()
        self._lock = threading.Lock()
        # Guarded by _lock: signals not yet on the wire, in order.
        self._outbox: deque[tuple[int, Any]] = deque()
        # Guarded by _lock: a flush is scheduled or running (it empties _outbox).
        self._flushing = False
        # Guarded by _lock, set once: a terminal signal was queued, or the remote cancelled.
        self._closed = False
        # Guarded by _lock, set once: the local publisher called on_subscribe.
        self._subscribed = False
        # Loop only. Invariant: granted by the remote minus sent, capped at UNBOUNDED.
        self._credit = 0

    # -- the wire side (rsocket-py, on the loop) --------------------------------------------

    def request(self, n: int) -> None:
        """A remote request-n: ``MAX_REQUEST_N`` is unbounded, anything else is exact."""
        demand = UNBOUNDED if n >= MAX_REQUEST_N else n
        if demand > 0:
            self._credit = add_cap(self._credit, demand)
        self._arbiter.request(demand)  # a bad n reaches the publisher: Rule 3.9

    def cancel(self) -> None:
        """The remote cancelled, or the connection is gone (rsocket-py's ``dispose``)."""
        with self._lock:
            self._closed = True
            self._outbox.clear()
        self._wire = None  # Rule 3.13
        self._arbiter.cancel()
        self._end_inbound(_CANCELLED)

    def stop(self) -> None:
        """This side cancelled its channel: cancel the outbound and end its direction.

        Loop only. Sends ``COMPLETE`` for the outbound direction unless it already ended
        (its terminal frame was sent, or the remote cancelled it): RSocket ends a
        requester's direction only with ``COMPLETE``/``ERROR`` (or the remote's ``CANCEL``),
        and the remote keeps the channel registered until it does.
        """
        with self._lock:
            self._closed = True
            self._outbox.clear()
        wire, self._wire = self._wire, None  # Rule 3.13
        self._arbiter.cancel()
        if wire is not None:
            try:
                wire.on_complete()  # COMPLETE, and rsocket-py marks the direction done
            except Exception as error:
                report_undeliverable(error, f"{self!r} sending COMPLETE")

    def _end_inbound(self, how: int, error: Exception | None = None) -> None:
        """This direction ended (``how``: ``_COMPLETE``, ``_ERROR`` with ``error``,
        ``_CANCELLED``); tell the channel's other direction (loop only)."""
        inbound, self._inbound = self._inbound, None
        if inbound is not None:
            inbound.response_ended(how, error)

    # -- the Subscriber side (the local publisher, any thread) ------------------------------

    def on_subscribe(self, subscription: Subscription) -> None:
        """Attach the upstream; it receives the demand already granted."""
        if subscription is None:
            raise TypeError("Rule 2.13: on_subscribe(None) is not allowed")
        with self._lock:
            second = self._subscribed
            self._subscribed = True
        if second:
            refuse_second_subscription(subscription, repr(self))  # Rule 2.5
            return
        self._arbiter.set_upstream(subscription)

    def on_next(self, item: T) -> None:
        """Encode ``item`` (on the calling thread) and queue it for the wire."""
        if item is None:
            raise TypeError("Rule 2.13: on_next(None) is not allowed; None is not an item")
        try:
            payload = _payload(self._encode(item))
        except Exception as error:  # a raising encoder: cancel upstream, ERROR downstream
            self.fail(error)
            return
        self._push(_NEXT, payload)

    def on_error(self, error: Exception) -> None:
        """Queue an ``ERROR`` frame carrying ``error``'s type name and message."""
        if error is None:
            raise TypeError("Rule 2.13: on_error(None) is not allowed")
        self._arbiter.clear_upstream()  # Rule 3.13: the upstream is done
        self._push(_ERROR, error)

    def on_complete(self) -> None:
        """Queue the ``COMPLETE`` frame."""
        self._arbiter.clear_upstream()
        self._push(_COMPLETE, None)

    def fail(self, error: Exception) -> None:
        """Fail the stream from this side: cancel the upstream, send ``ERROR``."""
        self._arbiter.cancel()
        self._push(_ERROR, error)

    # -- the outbox ----------------------------------------------------------------------------

    def _push(self, kind: int, value: Any) -> None:
        with self._lock:
            if self._closed:
                if kind == _ERROR:  # after the end or a cancel: reported, never swallowed
                    report_undeliverable(value, f"{self!r} after terminal/cancel (Rule 1.7)")
                return  # late items after a cancel are dropped (Rule 2.8)
            if kind != _NEXT:
                self._closed = True
            self._outbox.append((kind, value))
            if self._flushing:
                return  # the running flush sends it, in order
            self._flushing = True
        if _on_loop(self._loop):
            self._flush()
        elif not _call_soon(self._loop, self._flush):
            self._abandon(RuntimeError("the RSocket server's event loop is closed"))

    def _flush(self) -> None:
        """Send what is queued, in order (loop only; one flush at a time)."""
        lock = self._lock
        outbox = self._outbox
        while True:
            with lock:
                if not outbox:
                    self._flushing = False
                    return
                kind, value = outbox.popleft()
            self._send(kind, value)

    def _send(self, kind: int, value: Any) -> None:
        wire = self._wire
        if wire is None:
            return  # cancelled by the remote: nothing more goes out
        try:
            if kind == _NEXT:
                credit = self._credit
                if credit == 0:  # the local publisher broke Rule 1.1
                    self._wire = None
                    self._arbiter.cancel()
                    with self._lock:
                        self._closed = True
                        self._outbox.clear()
                    violation = ProtocolViolationError(
                        "Rule 1.1: the stream's publisher sent more items than the remote requested"
                    )
                    wire.on_error(_wire_error(violation))
                    self._end_inbound(_ERROR, violation)
                    return
                if credit != UNBOUNDED:
                    self._credit = credit - 1
                wire.on_next(value)
            elif kind == _COMPLETE:
                self._wire = None  # Rule 3.13
                wire.on_complete()
                self._end_inbound(_COMPLETE)
            else:
                self._wire = None
                wire.on_error(_wire_error(value))
                self._end_inbound(_ERROR, value)
        except Exception as error:  # rsocket-py failed to queue the frame
            report_undeliverable(error, f"{self!r} sending a frame")
            self._abandon(error)

    def _abandon(self, error: Exception) -> None:
        with self._lock:
            self._closed = True
            self._outbox.clear()
        self._arbiter.cancel()
        report_undeliverable(error, repr(self))

    def __repr__(self) -> str:
        return f"<_ResponseBridge credit={self._credit} {'closed' if self._closed else 'open'}>"


# -- the client side: a remote stream as a Flow ----------------------------------------------

_IDLE: Final = 0
_OPEN: Final = 1
_DONE: Final = 2


class _Wire:
    """The rsocket-py end of one stream we receive: opens it, grants credit, cancels it.

    It is the subscriber rsocket-py signals (``on_subscribe``, ``on_next(payload,
    is_complete)``, ``on_error``, ``on_complete``, all on the loop) and forwards to
    ``target``, the ``_RemoteSubscription`` of the local subscriber. ``grant`` and
    ``cancel`` may be called from any thread; they run on the loop.

    ``opener(wire, n)`` (client streams and channels) sends the request frame with
    initial request-n ``n`` on the first grant; without one (a server's channel inbound) the
    subscription rsocket-py hands over is asked with ``REQUEST_N``.

    A channel ends in both directions on an ``ERROR`` (either way). On the client, a local
    cancel ends it too: ``CANCEL`` for the inbound, then the outbound (``partner``) is
    cancelled and its direction ended with ``COMPLETE`` (``_ResponseBridge.stop``). On the
    server, the inbound ends with the response (``response_ended``); a local cancel of the
    inbound alone sends ``CANCEL`` and leaves the response going.

    Every field but ``target`` is touched on the loop only.
    """

    __slots__ = (
        "_channel",
        "_early",
        "_granted",
        "_loop",
        "_pending",
        "_received",
        "_requester",
        "_state",
        "_subscription",
        "opener",
        "partner",
        "target",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        opener: Callable[[_Wire, int], None] | None = None,
    ) -> None:
        self._loop = loop
        self.opener = opener
        # The client end (it opens the stream); a server's channel inbound has no opener.
        self._requester = opener is not None
        self.target: _RemoteSubscription[Any] | None = None
        # A channel's other direction (the client's outbound, the server's response):
        # stopped when the remote fails, and on the client when this side cancels.
        self.partner: _ResponsePublisher[Any] | None = None
        # rsocket-py's subscription (REQUEST_N/CANCEL); None once this direction ended.
        self._subscription: Any = None
        # A channel's rsocket-py handler, kept until its other direction was stopped.
        self._channel: Any = None
        self._state = _IDLE if opener is not None else _OPEN
        # Invariant: _received <= _granted unless the remote broke Rule 1.1.
        self._granted = 0  # total credit sent, UNBOUNDED once MAX_REQUEST_N was
        self._received = 0
        # Credit granted before rsocket-py handed over its subscription (sent on arrival).
        self._pending = 0
        # A remote ending that came before a target was attached (a server's inbound).
        self._early: Exception | bool | None = None

    # -- from the local side (any thread) ----------------------------------------------------

    def attach(self, target: _RemoteSubscription[Any]) -> None:
        """Make ``target`` the receiver of this stream's signals."""
        if _on_loop(self._loop):
            self._attach(target)
        elif not _call_soon(self._loop, self._attach, target):
            target.lost(RSocketConnectionError("the RSocket endpoint's event loop is closed"))

    def grant(self, n: int) -> None:
        """Give the remote ``n`` more credit (``UNBOUNDED``: ``MAX_REQUEST_N``)."""
        if _on_loop(self._loop):
            self._grant(n)
        elif not _call_soon(self._loop, self._grant, n):
            target = self.target
            if target is not None:
                target.lost(RSocketConnectionError("the RSocket endpoint's event loop is closed"))

    def cancel(self) -> None:
        """Send ``CANCEL`` if the stream is open; no later grant opens it (idempotent)."""
        if _on_loop(self._loop):
            self._cancel()
        else:
            _call_soon(self._loop, self._cancel)  # a closed loop has nothing left to cancel

    # -- on the loop ---------------------------------------------------------------------------

    def _attach(self, target: _RemoteSubscription[Any]) -> None:
        self.target = target
        early, self._early = self._early, None
        if early is True:
            target.remote_complete()
        elif isinstance(early, Exception):
            target.remote_error(_remote_error(early))

    def _grant(self, n: int) -> None:
        if self._state == _DONE or self._granted == UNBOUNDED:
            return
        if n == UNBOUNDED:
            wire_n = MAX_REQUEST_N
            self._granted = UNBOUNDED
        else:
            wire_n = n
            self._granted += n
        try:
            if self._state == _IDLE:
                self._state = _OPEN
                opener = self.opener
                assert opener is not None
                self.opener = None
                opener(self, wire_n)
            elif self._subscription is None:
                self._pending = min(self._pending + wire_n, MAX_REQUEST_N)
            else:
                self._subscription.request(wire_n)
        except Exception as error:
            self._state = _DONE
            target = self.target
            if target is not None:
                target.lost(error)

    def _cancel(self) -> None:
        state = self._state
        self._state = _DONE
        subscription, self._subscription = self._subscription, None
        self.opener = None
        if state == _OPEN and subscription is not None:
            try:
                subscription.cancel()  # CANCEL
            except Exception as error:
                report_undeliverable(error, f"{self!r} sending CANCEL")
        if self._requester:  # the server's response goes on without its inbound
            self._stop_partner(local=True)

    def _stop_partner(self, *, local: bool) -> None:
        """End the channel's other direction: ``local`` (our cancel) or the remote's ERROR."""
        partner, self.partner = self.partner, None
        channel, self._channel = self._channel, None
        if partner is None:
            return
        bridge = partner.bridge
        if local and bridge is not None:
            bridge.stop()  # our outbound stops, and COMPLETE ends its direction
            return
        if bridge is not None:
            bridge.cancel()  # an ERROR ended both directions: nothing more is sent
        finish = getattr(channel, "mark_completed_and_finish", None)
        if finish is not None:
            finish(sent=True)  # rsocket-py keeps a half-ended channel registered otherwise

    def response_ended(self, how: int, error: Exception | None = None) -> None:
        """The channel's other direction ended (loop only): end this one too if it must.

        ``how`` is ``_COMPLETE``, ``_ERROR`` (``error``: what was sent) or ``_CANCELLED``
        (by the remote, or the connection went). On the client only the outbound's
        ``ERROR`` matters: it ended both directions, so the subscriber gets ``error``. On
        the server: once the route's flow completed, a subscribed inbound is left to its
        subscriber (RSocket's half-closed channel: the requester may go on sending).
        Otherwise the inbound ends now: ``CANCEL`` asks the requester to stop sending (not
        after an ``ERROR``, which already ended both directions), and the subscriber, now
        or when it comes, gets ``on_error(RSocketRemoteError)`` with code ``CANCELED``.
        """
        target = self.target
        if self._state == _DONE:
            return
        if self._requester:
            if how != _ERROR or error is None:
                return  # our outbound completed or was cancelled: the inbound goes on
            self._state = _DONE
            self.partner = None
            self._subscription = None
            channel, self._channel = self._channel, None
            finish = getattr(channel, "mark_completed_and_finish", None)
            if finish is not None:
                finish(received=True)  # nothing more comes after our ERROR
            if target is not None:
                target.remote_error(error)
            return
        if how == _COMPLETE and target is not None:
            return
        self._state = _DONE
        self.partner = None  # the response is what ended
        subscription, self._subscription = self._subscription, None
        self._channel = None
        if subscription is not None:
            try:
                if how == _ERROR:
                    subscription.mark_completed_and_finish(received=True)
                else:
                    subscription.cancel()  # CANCEL; rsocket-py marks the direction done
            except Exception as error:
                report_undeliverable(error, f"{self!r} ending a channel's inbound")
        if how == _CANCELLED:
            text = "the requester cancelled the channel"
        elif how == _ERROR:
            text = "the channel's response failed, which ends both directions"
        else:
            text = "the channel's response completed before its inbound was subscribed"
        ending = RSocketRemoteError(text, error_code=ErrorCode.CANCELED)
        if target is None:
            self._early = ending  # a late subscriber is told, not left waiting
        else:
            target.remote_error(ending)

    # -- rsocket-py's subscriber interface (on the loop) -----------------------------------------

    def on_subscribe(self, subscription: Any) -> None:
        """rsocket-py's requester (or channel) is the subscription: ``REQUEST_N``/``CANCEL``."""
        if self._state == _DONE:
            subscription.cancel()
            return
        self._subscription = subscription
        if self.partner is not None:
            self._channel = subscription
        pending, self._pending = self._pending, 0
        if pending:
            subscription.request(pending)

    def on_next(self, payload: Any, is_complete: bool = False) -> None:
        """A ``PAYLOAD`` frame (``is_complete``: it also completes the stream)."""
        target = self.target
        if self._state == _DONE or target is None:
            if target is None and self._state != _DONE:
                report_undeliverable(
                    ProtocolViolationError("Rule 1.1: the remote sent an item nobody requested"),
                    repr(self),
                )
            return  # after cancel, items still in flight are dropped (Rule 2.8)
        self._received += 1
        if self._granted != UNBOUNDED and self._received > self._granted:
            target.overflow(self._granted)  # cancels: CANCEL goes out
            return
        target.remote_item(_data(payload))
        if is_complete:
            self.on_complete()

    def on_error(self, error: Exception) -> None:
        """An ``ERROR`` frame, or the connection lost (rsocket-py's ``CONNECTION_ERROR``)."""
        done = self._state == _DONE
        self._state = _DONE  # first: stopping the partner must not end this inbound again
        self._subscription = None
        self._stop_partner(local=False)  # ERROR ends a channel in both directions
        if done:
            return
        target = self.target
        if target is None:
            self._early = error
        else:
            target.remote_error(_remote_error(error))

    def on_complete(self) -> None:
        """The remote's ``COMPLETE`` (a channel's other direction may go on)."""
        if self._state == _DONE:
            return
        self._state = _DONE
        self._subscription = None
        target = self.target
        if target is None:
            self._early = True
        else:
            target.remote_complete()

    def __repr__(self) -> str:
        state = ("idle", "open", "done")[self._state]
        granted = "unbounded" if self._granted == UNBOUNDED else str(self._granted)
        return f"<_Wire {state} granted={granted} received={self._received}>"


class _RemoteSubscription(QueueDrain[R]):
    """The local subscriber's subscription to a remote stream: demand in, items out.

    A ``QueueDrain``: items arrive on the loop (``remote_item``), are queued, and the drain
    loop delivers them against downstream demand. Each pass also tops up the remote's
    credit (``_replenish``) so that what was granted equals what downstream asked for.
    A remote error is delivered after the items that came before it (``delay_error``).
    """

    __slots__ = ("_covered", "_decode", "_queue", "_wire")

    delay_error = True

    def __init__(self, actual: Subscriber[R], wire: _Wire, decode: Callable[[bytes], R]) -> None:
        super().__init__(actual)
        self._wire = wire
        self._decode = decode
        # Appended on the loop, popped by the drain loop owner (deque ops are atomic).
        self._queue: deque[R] = deque()
        # Drain loop owner only. Invariant: credit granted to the wire minus items
        # delivered downstream (queued + still owed by the remote); <= the outstanding
        # demand; UNBOUNDED once the wire was granted MAX_REQUEST_N.
        self._covered = 0

    # -- from the wire (on the loop) -------------------------------------------------------------

    def remote_item(self, data: bytes) -> None:
        """A payload arrived: decode it and queue it."""
        if self._halted or self._upstream_done:
            return
        try:
            item = self._decode(data)
        except Exception as error:  # a raising decoder: CANCEL, on_error
            self._fail(error)
            return
        if item is None:
            self._fail(NoneItemError(f"{self!r}: decode returned None for {data!r}"))
            return
        self._queue.append(item)
        self._schedule()

    def remote_complete(self) -> None:
        """The remote completed: delivered after the queued items."""
        self._upstream_complete()

    def remote_error(self, error: Exception) -> None:
        """The remote failed (or the connection went): delivered after the queued items.

        An error that crossed this side's own ending (a ``cancel()`` whose ``CANCEL`` had
        not reached the remote yet, a failed decode) is dropped quietly: it is the remote
        answering a stream we already left, not a fault of the subscriber's.
        """
        if self._terminal.fail(error, supersede=False, quiet=True):
            self._schedule()  # delay_error: after the queued items

    def overflow(self, granted: int) -> None:
        """The remote sent more than the ``granted`` credit: it broke Rule 1.1."""
        self._fail(
            ProtocolViolationError(
                f"Rule 1.1: the remote sent more than the {granted} items requested of it"
            )
        )

    def lost(self, error: Exception) -> None:
        """The stream could not be opened or continued (closed client, closed loop)."""
        if not isinstance(error, RSocketRemoteError):
            wrapped = RSocketConnectionError(f"{type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        self._fail(error)

    # -- QueueDrain hooks ----------------------------------------------------------------------

    @override
    def hook_drain(self, actual: Subscriber[R], requested: int) -> int:
        queue = self._queue
        on_next = actual.on_next
        emitted = 0
        while emitted != requested and queue and not self._halted:
            on_next(queue.popleft())
            emitted += 1
        # The ending is recorded after the last item was queued (both on the loop), so
        # "ended and empty" is final.
        ended = self._terminal._ending is not None
        if ended and not queue and not self._halted:
            self._terminate(actual)
            return emitted
        if not ended and not self._halted:
            self._replenish(requested, emitted)
        return emitted

    def _replenish(self, requested: int, emitted: int) -> None:
        """Grant the wire what downstream asked for and the wire was not given yet."""
        covered = self._covered
        if covered == UNBOUNDED:
            return
        covered -= emitted
        if requested == UNBOUNDED:
            self._covered = UNBOUNDED
            self._wire.grant(UNBOUNDED)  # MAX_REQUEST_N, once
            return
        deficit = (requested - emitted) - covered
        if deficit > 0:
            # What the remote still owes; the queue may have grown since, which only
            # makes this larger than the truth (a smaller grant, never a larger one).
            owed = covered - len(self._queue)
            grant = min(deficit, _MAX_CREDIT - owed)
            # Past the 31-bit limit, top up in halves rather than an item at a time.
            if grant > 0 and (grant == deficit or owed <= _MAX_CREDIT // 2):
                covered += grant
                self._wire.grant(grant)
        self._covered = covered

    @override
    def hook_cancel_upstreams(self) -> None:
        self._wire.cancel()

    @override
    def hook_clear(self) -> None:
        self._queue.clear()

    def __repr__(self) -> str:
        return f"<remote stream {self._wire!r} queued={len(self._queue)}>"


def _start(subscriber: Subscriber[R], subscription: _RemoteSubscription[R], origin: object) -> None:
    try:
        subscriber.on_subscribe(subscription)
    except Exception as fault:  # Rule 2.13
        subscription.cancel()
        signal_error(subscriber, fault, origin)


def _refuse(subscriber: Subscriber[R], error: Exception, origin: object) -> None:
    """Rule 1.9: a subscription that cannot be served is ``on_subscribe`` then ``on_error``."""
    subscriber.on_subscribe(EmptySubscription())
    signal_error(subscriber, error, origin)


class _RemoteFlow(Flow[R]):
    """``remote_flow`` / ``remote_channel``: a cold flow, one RSocket stream per subscription."""

    __slots__ = (
        "_data",
        "_decode",
        "_encode",
        "_endpoint",
        "_loop",
        "_metadata",
        "_outbound",
        "_route",
    )

    def __init__(
        self,
        endpoint: RSocket,
        route: str | None,
        data: bytes,
        metadata: bytes | None,
        decode: Callable[[bytes], R],
        loop: asyncio.AbstractEventLoop | None,
        outbound: Publisher[Any] | None = None,
        encode: Callable[[Any], object] = _identity,
    ) -> None:
        self._endpoint = endpoint
        self._route = route
        self._data = data
        self._metadata = metadata
        self._decode = decode
        self._loop = loop
        self._outbound = outbound
        self._encode = encode

    @override
    def _subscribe(self, subscriber: Subscriber[R]) -> None:
        loop = _loop_of(self._endpoint, self._loop)
        if loop is None or loop.is_closed():
            _refuse(
                subscriber,
                RuntimeError(
                    f"{self!r}: no event loop for the RSocket client: subscribe on its loop "
                    "or pass loop="
                ),
                self,
            )
            return
        if _is_closed(self._endpoint):
            _refuse(subscriber, RSocketConnectionError("the RSocket client is closed"), self)
            return
        wire = _Wire(loop, self._opener(loop))
        subscription = _RemoteSubscription(subscriber, wire, self._decode)
        wire.target = subscription  # before anything reaches the loop: no hop needed
        _start(subscriber, subscription, self)

    def _opener(self, loop: asyncio.AbstractEventLoop) -> Callable[[_Wire, int], None]:
        endpoint = self._endpoint
        payload = Payload(self._data, self._metadata)
        outbound = self._outbound
        encode = self._encode

        def open_stream(wire: _Wire, initial_n: int) -> None:  # on the loop, first grant
            if _is_closed(endpoint):
                raise RSocketConnectionError("the RSocket client is closed")
            if outbound is None:
                requester = endpoint.request_stream(payload)
            else:
                publisher = _ResponsePublisher[Any](outbound, encode, loop, wire)
                wire.partner = publisher
                requester = endpoint.request_channel(payload, publisher=publisher)
            requester.initial_request_n(initial_n)
            requester.subscribe(wire)  # on_subscribe, then the REQUEST_STREAM/CHANNEL frame

        return open_stream

    def __repr__(self) -> str:
        kind = "remote_flow" if self._outbound is None else "remote_channel"
        return f"{kind}({self._route!r})"


@overload
def remote_flow(
    client: RSocket,
    route: str | None,
    data: bytes = ...,
    *,
    metadata: Sequence[Any] = ...,
    loop: asyncio.AbstractEventLoop | None = ...,
) -> Flow[bytes]: ...


@overload
def remote_flow(
    client: RSocket,
    route: str | None,
    data: bytes = ...,
    *,
    decode: Callable[[bytes], R],
    metadata: Sequence[Any] = ...,
    loop: asyncio.AbstractEventLoop | None = ...,
) -> Flow[R]: ...


def remote_flow(
    client: RSocket,
    route: str | None,
    data: bytes = b"",
    *,
    decode: Callable[[bytes], Any] | None = None,
    metadata: Sequence[Any] = (),
    loop: asyncio.AbstractEventLoop | None = None,
) -> Flow[Any]:
    """A remote ``request_stream`` as a cold ``Flow``: one stream per subscription.

    ::

        remote_flow(client, "ticks"):  ^-a-b-c-|   (each item a PAYLOAD frame's data)

    Demand: nothing goes on the wire until the first ``request(n)``, which sends
    ``REQUEST_STREAM`` with initial request-n ``n``; each later ``request(n)`` sends
    ``REQUEST_N n``. ``request(UNBOUNDED)`` (or demand that adds up to it) is sent as
    ``MAX_REQUEST_N`` once; a large finite demand keeps at most ``2**31 - 2`` credits
    outstanding at the server, topped up as items arrive. Items are queued only when they
    came before downstream was ready for them, so what is held is at most what downstream
    requested.

    Cancellation: sends ``CANCEL`` (if the stream was opened).

    Errors: an ``ERROR`` frame becomes ``on_error(RSocketRemoteError)`` (its ``message``,
    ``error_code``, ``remote_type``), after the items that came before it. A connection that
    closes becomes ``on_error(RSocketConnectionError)``, also for a client closed before
    subscribing. ``request(n <= 0)`` is ``on_error(NonPositiveRequestError)`` and
    ``CANCEL`` (Rule 3.9). A raising ``decode`` cancels and fails the stream; a remote
    that sends more than it was granted fails it with ``ProtocolViolationError``.

    Args:
        client: a connected rsocket-py ``RSocketClient`` (or server, to request from its
            client). For ``route`` its SETUP must declare composite metadata:
            ``metadata_encoding=WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA``.
        route: the route (routing metadata); ``None`` sends no route.
        data: the request payload's data.
        decode: turns each payload's data into an item (default: the bytes as they are).
        metadata: more composite metadata items (``rsocket.extensions.helpers``:
            ``authenticate_simple(...)``, say).
        loop: the client's event loop, if it cannot be found from the client.

    Example::

        async with RSocketClient(single_transport_provider(TransportTCP(reader, writer)),
                                 metadata_encoding=COMPOSITE) as client:
            numbers = await remote_flow(client, "numbers", b"10", decode=int).to_list_async()
    """
    return _RemoteFlow(
        client,
        route,
        data,
        _route_metadata(route, metadata),
        _identity if decode is None else decode,
        loop,
    )


@overload
def remote_channel(
    client: RSocket,
    route: str | None,
    outbound: Publisher[T],
    data: bytes = ...,
    *,
    encode: Callable[[T], bytes | Payload] | None = ...,
    metadata: Sequence[Any] = ...,
    loop: asyncio.AbstractEventLoop | None = ...,
) -> Flow[bytes]: ...


@overload
def remote_channel(
    client: RSocket,
    route: str | None,
    outbound: Publisher[T],
    data: bytes = ...,
    *,
    encode: Callable[[T], bytes | Payload] | None = ...,
    decode: Callable[[bytes], R],
    metadata: Sequence[Any] = ...,
    loop: asyncio.AbstractEventLoop | None = ...,
) -> Flow[R]: ...


def remote_channel(
    client: RSocket,
    route: str | None,
    outbound: Publisher[T],
    data: bytes = b"",
    *,
    encode: Callable[[T], bytes | Payload] | None = None,
    decode: Callable[[bytes], Any] | None = None,
    metadata: Sequence[Any] = (),
    loop: asyncio.AbstractEventLoop | None = None,
) -> Flow[Any]:
    """A remote ``request_channel``: ``outbound`` goes up with the server's demand, the
    server's stream comes back with ours.

    ::

        outbound:                  ^-x-y-|
        remote_channel(c, "echo"): ^--X--Y--|   (what the server answers)

    Demand: inbound exactly as ``remote_flow`` (the first ``request(n)`` sends
    ``REQUEST_CHANNEL`` with initial request-n ``n``, which also subscribes ``outbound``);
    outbound: each ``REQUEST_N`` from the server becomes ``request(n)`` on ``outbound``
    (``MAX_REQUEST_N``: unbounded). ``data`` is the channel's first payload (the request
    rsocket-py hands the server's handler); ``outbound``'s items follow it.

    Cancellation: cancelling the returned flow sends ``CANCEL``, cancels ``outbound`` and
    ends its direction with ``COMPLETE`` (unless it already ended): the channel is over on
    both ends. The server's ``COMPLETE`` ends the inbound only; ``outbound`` goes on until
    it ends or the server cancels it (a ``FlowRoutes`` route that completes without having
    subscribed its inbound does).

    Errors: as ``remote_flow``; a server ``ERROR`` also cancels ``outbound`` (an ERROR ends
    both directions). ``outbound``'s own error is sent as ``ERROR`` and, for the same
    reason, fails the returned flow with that error.

    Example::

        shouted = await remote_channel(client, "upper", Flow.just(b"a", b"b")).to_list_async()
    """
    return _RemoteFlow(
        client,
        route,
        data,
        _route_metadata(route, metadata),
        _identity if decode is None else decode,
        loop,
        outbound,
        _identity if encode is None else encode,
    )


# -- the server: routes whose handlers return flows -----------------------------------------


class _Route:
    __slots__ = ("encode", "handler")

    def __init__(self, handler: Callable[..., Publisher[Any]], encode: Callable[[Any], object]):
        self.handler = handler
        self.encode = encode


class _InboundFlow(Flow[bytes]):
    """A channel's inbound on the server: a remote stream, subscribed at most once."""

    __slots__ = ("_subscribed", "_wire")

    def __init__(self, wire: _Wire) -> None:
        self._wire = wire
        self._subscribed = threading.Lock()

    @override
    def _subscribe(self, subscriber: Subscriber[bytes]) -> None:
        if not self._subscribed.acquire(blocking=False):
            _refuse(
                subscriber,
                RuntimeError("a channel's inbound stream can be subscribed only once"),
                self,
            )
            return
        subscription = _RemoteSubscription(subscriber, self._wire, _identity)
        self._wire.attach(subscription)
        _start(subscriber, subscription, self)

    def __repr__(self) -> str:
        return "<RSocket channel inbound>"


class FlowRoutes:
    """Routes for an ``RSocketServer`` whose handlers return flows.

    Each ``REQUEST_STREAM`` subscribes the route's flow and maps demand exactly: the
    initial request-n and every ``REQUEST_N n`` become ``request(n)`` (``MAX_REQUEST_N``:
    ``request(UNBOUNDED)``), ``CANCEL`` (or the connection lost) cancels, ``on_error(e)``
    becomes ``ERROR "<type name>: <message>"``. Routes are read from the standard routing
    metadata (``message/x.rsocket.routing.v0``, inside composite metadata or alone, as the
    client's SETUP declares); an unknown route is answered with ``ERROR
    "UnknownRouteError: ..."`` naming the known ones.

    Example::

        routes = FlowRoutes()

        @routes.stream("numbers", encode=lambda n: str(n).encode())
        def numbers(request: Payload) -> Flow[int]:
            return Flow.range(int(request.data))

        RSocketServer(TransportTCP(reader, writer), handler_factory=routes.handler)
    """

    __slots__ = ("_channels", "_streams")

    def __init__(self) -> None:
        """An empty set of routes."""
        self._streams: dict[str, _Route] = {}
        self._channels: dict[str, _Route] = {}

    def add_stream(
        self,
        route: str,
        handler: Callable[[Any], Publisher[T]],
        *,
        encode: Callable[[T], bytes | Payload] | None = None,
    ) -> None:
        """Serve ``request_stream`` on ``route`` with ``handler(request)``'s publisher.

        ``encode`` turns each item into bytes or a ``Payload``; by default items must be
        bytes, ``str`` (UTF-8) or ``Payload``.
        """
        self._add(self._streams, route, handler, encode)

    def add_channel(
        self,
        route: str,
        handler: Callable[[Any, Flow[bytes]], Publisher[T]],
        *,
        encode: Callable[[T], bytes | Payload] | None = None,
    ) -> None:
        """Serve ``request_channel`` on ``route``: ``handler(request, inbound)``.

        ``inbound`` is the requester's stream as a ``Flow[bytes]`` (subscribe it at most
        once); it is asked with ``REQUEST_N`` exactly as far as it is requested. It ends
        with the handler's flow unless subscribed and still wanted: when that flow is
        cancelled by the requester, fails, or completes before subscribing ``inbound``,
        the requester is sent ``CANCEL`` and a subscriber of ``inbound`` (then or later)
        gets ``on_error(RSocketRemoteError)`` with code ``CANCELED``.
        """
        self._add(self._channels, route, handler, encode)

    def stream(
        self, route: str, *, encode: Callable[[Any], bytes | Payload] | None = None
    ) -> Callable[[StreamHandlerT], StreamHandlerT]:
        """Decorator form of ``add_stream`` (``encode`` cannot be checked against the
        handler's item type here; ``add_stream`` checks it)."""

        def register(handler: StreamHandlerT) -> StreamHandlerT:
            self._add(self._streams, route, handler, encode)
            return handler

        return register

    def channel(
        self, route: str, *, encode: Callable[[Any], bytes | Payload] | None = None
    ) -> Callable[[ChannelHandlerT], ChannelHandlerT]:
        """Decorator form of ``add_channel``."""

        def register(handler: ChannelHandlerT) -> ChannelHandlerT:
            self._add(self._channels, route, handler, encode)
            return handler

        return register

    def handler(self) -> Any:
        """A new rsocket-py ``RequestHandler`` over these routes (``handler_factory=``)."""
        return _RoutesHandler(self)

    @property
    def routes(self) -> tuple[list[str], list[str]]:
        """The stream routes and the channel routes, sorted."""
        return sorted(self._streams), sorted(self._channels)

    def _add(
        self,
        table: dict[str, _Route],
        route: str,
        handler: Callable[..., Publisher[Any]],
        encode: Callable[[Any], object] | None,
    ) -> None:
        if not route:
            raise ValueError("a route must be a non-empty string")
        if route in table:
            raise ValueError(f"route {route!r} is already registered")
        table[route] = _Route(handler, _identity if encode is None else encode)

    def _lookup(self, table: dict[str, _Route], kind: str, route: str) -> _Route:
        entry = table.get(route)
        if entry is None:
            known = ", ".join(sorted(table)) or "none"
            raise UnknownRouteError(f"no {kind} route {route!r} (known: {known})")
        return entry

    def __repr__(self) -> str:
        streams, channels = self.routes
        return f"FlowRoutes(streams={streams}, channels={channels})"


class _RoutesHandler(BaseRequestHandler):  # type: ignore[misc]  # rsocket-py is untyped
    """The ``RequestHandler`` of one connection, serving a ``FlowRoutes``."""

    def __init__(self, routes: FlowRoutes) -> None:
        super().__init__()
        self._routes = routes
        self._metadata_encoding = b""

    async def on_setup(self, data_encoding: bytes, metadata_encoding: bytes, payload: Any) -> None:
        self._metadata_encoding = bytes(metadata_encoding or b"")

    def _route(self, payload: Any) -> str:
        metadata = payload.metadata or b""
        encoding = self._metadata_encoding
        tags: list[bytes] = []
        if encoding == _COMPOSITE:
            for item in CompositeMetadata().parse(metadata).items:
                if isinstance(item, RoutingMetadata):
                    tags = list(item.tags or [])
                    break
        elif encoding == _ROUTING:
            routing = RoutingMetadata()
            routing.parse(metadata)
            tags = list(routing.tags or [])
        else:
            raise UnknownRouteError(
                f"the connection's metadata encoding is {encoding.decode(errors='replace')!r}; "
                f"routes need {_COMPOSITE.decode()} (RSocketClient(..., metadata_encoding="
                "WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA))"
            )
        if not tags:
            raise UnknownRouteError("the request names no route (no routing metadata)")
        return bytes(tags[0]).decode()

    async def request_stream(self, payload: Any) -> Any:
        payload = _request(payload)
        loop = asyncio.get_running_loop()
        encode: Callable[[Any], object] = _identity
        try:
            route = self._routes._lookup(self._routes._streams, "stream", self._route(payload))
            encode = route.encode
            source: Publisher[Any] = route.handler(payload)
        except Exception as error:  # answered with ERROR, not rsocket-py's logged traceback
            source = Flow.error(error)
        return _ResponsePublisher(source, encode, loop)

    async def request_channel(self, payload: Any) -> tuple[Any, Any]:
        payload = _request(payload)
        loop = asyncio.get_running_loop()
        inbound = _Wire(loop)
        encode: Callable[[Any], object] = _identity
        try:
            route = self._routes._lookup(self._routes._channels, "channel", self._route(payload))
            encode = route.encode
            source: Publisher[Any] = route.handler(payload, _InboundFlow(inbound))
        except Exception as error:
            source = Flow.error(error)
        response = _ResponsePublisher(source, encode, loop, inbound)
        inbound.partner = response  # the requester's ERROR cancels the response
        return response, inbound
