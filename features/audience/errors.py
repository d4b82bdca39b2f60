"""Audience errors."""

from __future__ import annotations

from features.errors import FeatureStoreError


class AudienceError(FeatureStoreError):
    """An audience operation failed: bad input, no embeddings, unknown segment."""


class IndexUnavailable(AudienceError):
    """The Milvus server (or Milvus Lite file) cannot be opened."""


class SegmentNotFound(AudienceError):
    """No segment of that name in the workspace's segment store."""


__all__ = ["AudienceError", "IndexUnavailable", "SegmentNotFound"]
