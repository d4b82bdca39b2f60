"""The exception root of AdPlatform.

Every package defines its own errors under :class:`AdPlatformError`::

    AdPlatformError
    ├── ConfigError                 bad settings or profile
    ├── DataError                   malformed input data (names file and line)
    ├── PartWriterError             the event-log part writer process died
    ├── features.FeatureStoreError  online/offline store failures
    │   └── features.StoreUnavailable
    ├── serving.ServingError        model backends
    │   ├── serving.BackendUnavailable
    │   └── serving.BackendTimeout
    ├── decisioning.DecisionError   bad OpenRTB requests, campaign errors
    └── mlops.MLOpsError            registry, promotion gates
"""

from __future__ import annotations


class AdPlatformError(Exception):
    """Root of every error raised on purpose by AdPlatform."""


class ConfigError(AdPlatformError):
    """Settings or a profile are invalid."""


class DataError(AdPlatformError):
    """Input data is malformed; the message names the file and line where known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class PartWriterError(AdPlatformError):
    """The event-log part writer process died or could not start; the part was not
    written (:mod:`adplatform.partwriter`)."""
