"""Hot publishers: one upstream (or a producer's pushes) shared by many subscribers.

``MulticastProcessor`` (slow-subscriber policies), ``ReplayProcessor`` and
``UnicastProcessor``, one module each; ``ConnectableFlow`` is what
``Flow.publish()`` and ``Flow.replay()`` return.
"""

from ._connectable import ConnectableFlow as ConnectableFlow
from ._multicast import DisconnectedError as DisconnectedError
from ._multicast import MulticastProcessor as MulticastProcessor
from ._multicast import MulticastSubscription as MulticastSubscription
from ._multicast import SlowSubscriberPolicy as SlowSubscriberPolicy
from ._multicast import SubscriberStats as SubscriberStats
from ._replay import ReplayProcessor as ReplayProcessor
from ._unicast import UnicastProcessor as UnicastProcessor

__all__ = [
    "ConnectableFlow",
    "DisconnectedError",
    "MulticastProcessor",
    "MulticastSubscription",
    "ReplayProcessor",
    "SlowSubscriberPolicy",
    "SubscriberStats",
    "UnicastProcessor",
]
