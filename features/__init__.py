"""Feast feature repo, feature pipelines and the online reader.

Errors::

    AdPlatformError
    └── FeatureStoreError       any feature-store failure
        └── StoreUnavailable    the online store cannot be reached (engine falls back)
"""

from features.context import AdRef, RequestContext
from features.errors import FeatureStoreError, StoreUnavailable

__all__ = ["AdRef", "FeatureStoreError", "RequestContext", "StoreUnavailable"]
