"""The highest competing bid: a context-dependent mixture of lognormals.

Three kinds of competitors show up in every auction — remnant buyers, performance
buyers and premium/brand buyers — each a lognormal in CPM. Which one sets the price
(the mixture weights) and where each sits (the locations) depend on the publisher, the
slot size/format, the device type and the local hour, with interactions (premium buyers
crowd desktop and video in the evening; remnant buyers own small mobile banners at
night). A publisher-specific share of auctions has no other bidder at all (competing
bid 0, so only the floor counts). Other bidders also pay a little more for users who
click more. None of this is a simple parametric family, on purpose: bid-shading
models have to learn it from censored outcomes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_HOURS = np.arange(24)


def _bump(center: float, width: float) -> np.ndarray:
    """A smooth circular bump over the 24 hours, 1 at ``center``."""
    d = np.minimum(np.abs(_HOURS - center), 24 - np.abs(_HOURS - center))
    return np.exp(-0.5 * (d / width) ** 2)


@dataclass(frozen=True)
class CompetitionModel:
    loc: np.ndarray          # (K,) log-CPM of each component
    sigma: np.ndarray        # (K,)
    weight: np.ndarray       # (K,) base weight logits
    pub_loc: np.ndarray      # (P,) shift of all locations
    pub_kloc: np.ndarray     # (P, K) per-component shift
    pub_weight: np.ndarray   # (P, K)
    pub_none: np.ndarray     # (P,) logit of "no other bidder"
    size_loc: np.ndarray     # (S,)
    size_weight: np.ndarray  # (S, K)
    dev_loc: np.ndarray      # (D,) by position in devices.DEVICE_TYPES
    dev_weight: np.ndarray   # (D, K)
    hour_loc: np.ndarray     # (24,) by local hour
    hour_weight: np.ndarray  # (24, K)
    user_coupling: float     # location shift per unit of the user's CTR random effect

    @classmethod
    def build(cls, rng: np.random.Generator, *, n_publishers: int, no_competition_rate: float,
              user_coupling: float) -> CompetitionModel:
        k = 3
        evening = _bump(20.0, 2.5)
        night = _bump(3.0, 3.0)
        hour_weight = np.stack([0.7 * night, np.zeros(24), 0.8 * evening - 0.3 * night], axis=1)
        return cls(
            loc=np.log([3.0, 9.0, 22.0]),
            sigma=np.array([0.55, 0.35, 0.30]),
            weight=np.array([0.0, 0.3, -1.0]),
            pub_loc=rng.normal(0.0, 0.35, size=n_publishers),
            pub_kloc=rng.normal(0.0, 0.15, size=(n_publishers, k)),
            pub_weight=rng.normal(0.0, 0.6, size=(n_publishers, k)),
            pub_none=math.log(no_competition_rate / (1 - no_competition_rate))
            + rng.normal(0.0, 0.8, size=n_publishers),
            # sizes: 300x250, 728x90, 320x50, 160x600, video 640x480
            size_loc=np.array([0.0, -0.25, -0.6, -0.4, 1.0]),
            size_weight=np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -0.3], [0.8, 0.0, -0.8],
                                  [0.3, 0.0, -0.3], [-0.5, 0.0, 1.0]]),
            # device types: PC, phone, tablet
            dev_loc=np.array([0.0, -0.2, -0.05]),
            dev_weight=np.array([[0.0, 0.0, 0.3], [0.3, 0.0, -0.2], [0.0, 0.0, 0.0]]),
            hour_loc=0.12 * np.cos(2 * np.pi * (_HOURS - 20) / 24),
            hour_weight=hour_weight,
            user_coupling=user_coupling,
        )

    def sample(self, rng: np.random.Generator, *, publisher: np.ndarray, size: np.ndarray,
               device: np.ndarray, local_hour: np.ndarray, quality: np.ndarray) -> np.ndarray:
        """Highest competing bid (CPM, 0 when nobody else bids) for each request."""
        n = len(publisher)
        logits = (self.weight + self.pub_weight[publisher] + self.size_weight[size]
                  + self.dev_weight[device] + self.hour_weight[local_hour])
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        u = rng.random((n, 2))
        comp = (u[:, :1] > cdf[:, :-1]).sum(axis=1)
        mu = (self.loc[comp] + self.pub_loc[publisher] + self.pub_kloc[publisher, comp]
              + self.size_loc[size] + self.dev_loc[device] + self.hour_loc[local_hour]
              + self.user_coupling * quality)
        bid = np.exp(mu + self.sigma[comp] * rng.standard_normal(n))
        none = u[:, 1] < 1.0 / (1.0 + np.exp(-self.pub_none[publisher]))
        return np.where(none, 0.0, np.round(bid, 4))


__all__ = ["CompetitionModel"]
