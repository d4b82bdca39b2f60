"""Feature-store errors."""

from adplatform.errors import AdPlatformError


class FeatureStoreError(AdPlatformError):
    """A feature-store operation failed."""


class StoreUnavailable(FeatureStoreError):
    """The online store cannot be reached; callers degrade to defaults."""
