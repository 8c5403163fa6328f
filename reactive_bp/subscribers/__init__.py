"""Subscribers and sinks: where a ``Flow`` ends."""
