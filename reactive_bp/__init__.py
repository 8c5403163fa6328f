"""reactive_bp: Reactive Streams for Python with demand-based backpressure.

A consumer says ``request(n)`` and never receives more than it asked for, so a
fast producer can never exhaust a slow consumer's memory.
"""

from ._core._demand import UNBOUNDED as UNBOUNDED
from ._core._demand import NonPositiveRequestError as NonPositiveRequestError
from ._core._hooks import ProtocolViolationError as ProtocolViolationError
from ._core._hooks import get_undeliverable_hook as get_undeliverable_hook
from ._core._hooks import set_undeliverable_hook as set_undeliverable_hook
from ._core._operator import OperatorSubscriber as OperatorSubscriber
from ._core._push import BufferOverflowError as BufferOverflowError
from ._core._push import BufferStats as BufferStats
from ._core._push import OfferResult as OfferResult
from ._core._push import OverflowStrategy as OverflowStrategy
from ._core._push import WaterMarks as WaterMarks
from ._flow import Flow as Flow
from .abc import Processor as Processor
from .abc import Publisher as Publisher
from .abc import Subscriber as Subscriber
from .abc import Subscription as Subscription
from .metrics import BackpressureMeter as BackpressureMeter
from .operators._grouping import AlreadySubscribedError as AlreadySubscribedError
from .operators._grouping import GroupedFlow as GroupedFlow
from .operators._grouping import TooManyGroupsError as TooManyGroupsError
from .operators._retry import Backoff as Backoff
from .operators._retry import RetryExhaustedError as RetryExhaustedError
from .operators._retry import RetryPolicy as RetryPolicy
from .operators._sampling import RateExceededError as RateExceededError
from .operators._sampling import adaptive_keep_rate as adaptive_keep_rate
from .operators._timing import FlowTimeoutError as FlowTimeoutError
from .processors._connectable import ConnectableFlow as ConnectableFlow
from .processors._multicast import DisconnectedError as DisconnectedError
from .processors._multicast import MulticastProcessor as MulticastProcessor
from .processors._multicast import SlowSubscriberPolicy as SlowSubscriberPolicy
from .processors._multicast import SubscriberStats as SubscriberStats
from .processors._replay import ReplayProcessor as ReplayProcessor
from .processors._unicast import UnicastProcessor as UnicastProcessor
from .schedulers._threads import RejectedExecutionError as RejectedExecutionError
from .sources._generate import SynchronousSink as SynchronousSink
from .sources._iterable import NoneItemError as NoneItemError
from .sources._push import Emitter as Emitter
from .sources._push import SourceQueue as SourceQueue
from .subscribers._base import BaseSubscriber as BaseSubscriber
from .subscribers._base import RequestPolicy as RequestPolicy
from .subscribers._base import SignalType as SignalType
from .subscribers._blocking import EmptyFlowError as EmptyFlowError
from .subscribers._lambda import Disposable as Disposable
from .subscribers._lambda import LambdaSubscriber as LambdaSubscriber

__all__ = [
    "UNBOUNDED",
    "AlreadySubscribedError",
    "Backoff",
    "BackpressureMeter",
    "BaseSubscriber",
    "BufferOverflowError",
    "BufferStats",
    "ConnectableFlow",
    "DisconnectedError",
    "Disposable",
    "Emitter",
    "EmptyFlowError",
    "Flow",
    "FlowTimeoutError",
    "GroupedFlow",
    "LambdaSubscriber",
    "MulticastProcessor",
    "NonPositiveRequestError",
    "NoneItemError",
    "OfferResult",
    "OperatorSubscriber",
    "OverflowStrategy",
    "Processor",
    "ProtocolViolationError",
    "Publisher",
    "RateExceededError",
    "RejectedExecutionError",
    "ReplayProcessor",
    "RequestPolicy",
    "RetryExhaustedError",
    "RetryPolicy",
    "SignalType",
    "SlowSubscriberPolicy",
    "SourceQueue",
    "Subscriber",
    "SubscriberStats",
    "Subscription",
    "SynchronousSink",
    "TooManyGroupsError",
    "UnicastProcessor",
    "WaterMarks",
    "adaptive_keep_rate",
    "get_undeliverable_hook",
    "set_undeliverable_hook",
]

__version__ = "0.1.0"
