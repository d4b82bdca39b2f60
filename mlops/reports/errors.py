"""Report errors."""

from mlops.errors import MLOpsError


class ReportError(MLOpsError):
    """A report cannot be built from its inputs (no data, bad experiment spec, bad file)."""


__all__ = ["ReportError"]
