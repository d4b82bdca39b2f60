"""Model backends behind one interface: in-process ONNX Runtime, Triton, BentoML.

Errors::

    AdPlatformError
    └── ServingError
        ├── BackendUnavailable   the backend is down or refused the connection
        └── BackendTimeout       the backend did not answer within its timeout
"""

from serving.base import AuctionInputs, AuctionScores, ModelBackend
from serving.errors import BackendTimeout, BackendUnavailable, ServingError

__all__ = [
    "AuctionInputs", "AuctionScores", "BackendTimeout", "BackendUnavailable", "ModelBackend",
    "ServingError",
]
