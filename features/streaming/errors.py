"""Streaming errors."""

from features.errors import FeatureStoreError


class StreamingError(FeatureStoreError):
    """A streaming-feature operation failed (bad event, transport failure)."""


class BusError(StreamingError):
    """The event transport failed (unreachable server, publish not acknowledged)."""


__all__ = ["BusError", "StreamingError"]
