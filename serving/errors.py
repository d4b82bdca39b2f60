"""Serving errors."""

from adplatform.errors import AdPlatformError


class ServingError(AdPlatformError):
    """A model backend failed."""


class BackendUnavailable(ServingError):
    """The backend is down or refused the connection."""


class BackendTimeout(ServingError):
    """The backend did not answer within its timeout."""
