"""Streams from and to the systems they really come from, with demand mapped onto each
one's own flow control.

One module per outside system: the brokers ``nats``, ``redis_streams`` and ``rabbitmq``,
and across the network ``rsocket`` (RSocket peers), ``asgi`` (HTTP servers: load
shedding, paced streaming responses) and ``http`` (HTTP clients: demand-paced bodies,
``Retry-After``). The brokers and ``http`` import their client lazily, so ``import
reactive_bp.connectors.<name>`` works without the extra and the first use names the
extra to install; ``rsocket`` needs rsocket-py at import. What the brokers share is
here: ``Message``
(``.value``, ``.metadata``, ``.ack()``, ``.nack(requeue=True)``), ``AckMode``,
``Settlement``, ``ConnectorStats`` and ``PublishError``.
"""

from ._common import AckMode as AckMode
from ._common import AlreadySettledError as AlreadySettledError
from ._common import ConnectorStats as ConnectorStats
from ._common import Message as Message
from ._common import PublishError as PublishError
from ._common import Settlement as Settlement

__all__ = [
    "AckMode",
    "AlreadySettledError",
    "ConnectorStats",
    "Message",
    "PublishError",
    "Settlement",
]
