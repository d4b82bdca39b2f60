"""MLOps errors."""

from adplatform.errors import AdPlatformError


class MLOpsError(AdPlatformError):
    """Registry, tracking or promotion failure."""


class ModelNotFound(MLOpsError):
    """No registered model version answers ``models:/NAME@ALIAS``."""
