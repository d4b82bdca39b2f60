"""Bid pricing: from the value of an impression to the price we bid.

:class:`ShadeFactorPricer` is the policy used before a bid-shading model exists: in a
first-price auction bid a fixed share of the value; in a second-price auction bid the
value (truthful bidding is optimal there). A shading model implements
:class:`BidPricer` with the landscape in :attr:`AuctionScores.shading`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from features.context import RequestContext
from serving.base import AuctionScores


@runtime_checkable
class BidPricer(Protocol):
    @property
    def policy(self) -> str:
        """The policy name written to the decision log."""
        ...

    def price(self, values: np.ndarray, ctx: RequestContext, scores: AuctionScores, *,
              first_price: bool) -> np.ndarray:
        """CPM prices (K,) for K candidates with CPM values ``values`` (K,).

        A price below ``ctx.bidfloor`` means no bid for that candidate.
        """
        ...

    def policy_for(self, scores: AuctionScores, n: int) -> str:
        """The policy that :meth:`price` applies to these scores for ``n`` candidates
        (a model-based pricer that falls back names its fallback): the logged label."""
        ...


class ShadeFactorPricer:
    """price = value × factor in first-price auctions, = value in second-price ones."""

    def __init__(self, factor: float = 0.7) -> None:
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"shade factor must be in (0, 1], got {factor}")
        self.factor = factor
        self._policy = f"shade_factor_{factor:g}"

    @property
    def policy(self) -> str:
        return self._policy

    def price(self, values: np.ndarray, ctx: RequestContext, scores: AuctionScores, *,
              first_price: bool) -> np.ndarray:
        return values * self.factor if first_price else values

    def policy_for(self, scores: AuctionScores, n: int) -> str:
        return self._policy


__all__ = ["BidPricer", "ShadeFactorPricer"]
