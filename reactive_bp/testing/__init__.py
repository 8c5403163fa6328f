"""Test support: a recording subscriber, a manual publisher, hook capture.

Used by reactive_bp's own tests and meant for users testing their operators.
"""

from ._capture import capture_undeliverable as capture_undeliverable
from ._publisher import TestPublisher as TestPublisher
from ._subscriber import TestSubscriber as TestSubscriber

__all__ = ["TestPublisher", "TestSubscriber", "capture_undeliverable"]
