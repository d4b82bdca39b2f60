"""The featurizer protocol the decision engine depends on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from features.context import AdRef, RequestContext
from serving.base import AuctionInputs


class AuctionFeaturizer(Protocol):
    """Builds every model input for one auction from online features.

    Raises :class:`features.StoreUnavailable` when the online store cannot be reached.
    """

    def build(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs: ...

    def defaults(self, ctx: RequestContext, ads: Sequence[AdRef]) -> AuctionInputs:
        """Inputs from request-time features only (the fallback when the store is down)."""
        ...
