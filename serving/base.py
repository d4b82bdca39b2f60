"""The one model-backend interface: score a whole auction in one call.

The decision engine builds :class:`AuctionInputs` with the online feature reader and
hands it to a :class:`ModelBackend`; it never knows whether ONNX Runtime runs in
process or Triton/BentoML run it remotely (one round trip per auction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(slots=True)
class AuctionInputs:
    """Model inputs for one auction: K candidate ads."""

    ctr: np.ndarray                         # (K, F_ctr) float32, column order = CTR feature list
    fraud: np.ndarray | None = None         # (1, F_fraud) float32
    # The competition does not depend on our ad: one row per auction (R = 1), though
    # backends accept any R.
    shading: np.ndarray | None = None       # (R, F_shading) float32


@dataclass(slots=True)
class AuctionScores:
    pctr: np.ndarray                        # (K,) float32, calibrated click probability
    fraud: float | None = None              # P(invalid traffic)
    # Landscape parameters per candidate for the shading argmax; shape set by the model.
    shading: np.ndarray | None = None       # (R, P) float32
    versions: dict[str, str] = field(default_factory=dict)  # model name -> registry version


@runtime_checkable
class ModelBackend(Protocol):
    """Scores auctions. Implementations: onnx (in-process), triton, bentoml."""

    def score(self, inputs: AuctionInputs) -> AuctionScores: ...

    def versions(self) -> dict[str, str]: ...

    def close(self) -> None: ...
