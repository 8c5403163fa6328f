"""Hot publishers: one upstream (or a producer's pushes) shared by many subscribers.

``MulticastProcessor`` (slow-subscriber policies), ``ReplayProcessor`` and
``UnicastProcessor``, one module each; ``ConnectableFlow`` is what
``Flow.publish()`` and ``Flow.replay()`` return.
"""
