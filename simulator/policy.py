"""The bootstrap bidding policy: explore before any model exists, and log propensities.

For each request the policy

1. finds the eligible creatives: campaign active, creative size/format equal to the
   slot's, campaign targeting (countries, device types, domains, formats) satisfied;
2. answers no-bid with probability ``nobid_rate`` (reason ``explore_nobid``);
3. otherwise picks one eligible creative uniformly at random and bids a price drawn
   from a lognormal around a rough value estimate (``cpc × prior_ctr × 1000`` CPM, or
   ``cpa × prior_ctr × prior_cvr × 1000``), truncated to ``[floor, ∞)``.

The logged ``propensity`` is the probability density of the logged action under the
policy: ``(1 − nobid_rate) × 1/n_eligible × f(price)`` for a bid (``f`` the truncated
lognormal density, per CPM), ``nobid_rate`` for an exploratory no-bid, and 1 when
nothing was eligible (a deterministic no-bid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.devices import DEVICE_TYPES
from simulator.geo import COUNTRIES
from simulator.inventory import SIZES
from simulator.traffic import RequestBatch
from simulator.world import World

POLICY = "bootstrap"
VARIANT = "explore"


@dataclass(frozen=True)
class Eligibility:
    """Boolean tables (category, creative); a request's row is their AND."""

    size: np.ndarray       # (sizes, C)
    country: np.ndarray    # (countries, C)
    device: np.ndarray     # (device types, C)
    publisher: np.ndarray  # (publishers, C)

    @classmethod
    def for_world(cls, world: World) -> Eligibility:
        cat = world.catalog
        camps = cat.campaigns
        t = [camps[c].targeting for c in cat.campaign]
        active = cat.active[cat.campaign]
        size = (np.arange(len(SIZES))[:, None] == cat.size[None, :]) & active[None, :]
        fmt = np.asarray([SIZES[s].format for s in cat.size])
        fmt_ok = np.asarray([not x.formats or f in x.formats for x, f in zip(t, fmt, strict=True)])
        size &= fmt_ok[None, :]
        country = np.asarray([[not x.countries or c.code in x.countries for x in t]
                              for c in COUNTRIES])
        device = np.asarray([[not x.device_types or d in x.device_types for x in t]
                             for d in DEVICE_TYPES])
        domains = world.publishers.domain
        publisher = np.asarray([[not x.domains or d in x.domains for x in t] for d in domains])
        return cls(size, country, device, publisher)

    def mask(self, batch: RequestBatch) -> np.ndarray:
        """(n, C) eligible creatives of each request."""
        return (self.size[batch.size] & self.country[batch.country]
                & self.device[batch.device] & self.publisher[batch.publisher])


@dataclass(frozen=True)
class Decisions:
    bid: np.ndarray          # bool
    price: np.ndarray        # CPM; NaN when no bid
    creative: np.ndarray     # int64 creative index; -1 when no bid
    reason: np.ndarray       # object: "bid" | "no_eligible" | "explore_nobid"
    propensity: np.ndarray   # see the module docstring
    pctr: np.ndarray         # the policy's click-through estimate (its prior); NaN on no-bid
    value: np.ndarray        # value estimate in USD per impression; NaN on no-bid


@dataclass(frozen=True)
class BootstrapPolicy:
    prior_ctr: float = 0.01      # rough CTR before any model (display ~1%)
    prior_cvr: float = 0.05      # rough conversions per click, for CPA campaigns
    price_sigma: float = 0.6     # lognormal spread of the price: wide, for bid variation
    price_shift: float = 0.0     # log-multiplier on the value estimate (0: centred on value)
    nobid_rate: float = 0.05     # exploratory no-bids

    def value_per_click(self, world: World, creative: np.ndarray) -> np.ndarray:
        """USD a click on ``creative`` is worth: the campaign's CPC, or CPA x prior CVR."""
        camp = world.catalog.campaign[creative]
        cpc, cpa = world.catalog.cpc[camp], world.catalog.cpa[camp]
        return np.where(np.isnan(cpc), cpa * self.prior_cvr, cpc)

    def value_cpm(self, world: World, creative: np.ndarray) -> np.ndarray:
        """Rough value of an impression of ``creative`` in CPM."""
        return self.value_per_click(world, creative) * self.prior_ctr * 1000.0

    def decide(self, world: World, eligibility: Eligibility, batch: RequestBatch,
               rng: np.random.Generator) -> Decisions:
        # scipy.special costs ~0.5 s to import: only bidding needs it, not the CLI start.
        from scipy.special import ndtr, ndtri

        n = len(batch)
        elig = eligibility.mask(batch)
        count = elig.sum(axis=1)
        u = rng.random((n, 3))
        pick = np.minimum(np.floor(u[:, 0] * count), np.maximum(count - 1, 0)).astype(np.int64)
        creative = np.argmax(np.cumsum(elig, axis=1, dtype=np.int16) > pick[:, None], axis=1)
        explore_nobid = u[:, 1] < self.nobid_rate
        bid = (count > 0) & ~explore_nobid
        creative = np.where(bid, creative, -1)
        # Truncated lognormal price on [floor, inf): sample the normal's upper tail.
        value = self.value_cpm(world, np.where(bid, creative, 0))
        mu = np.log(value) + self.price_shift
        floor = batch.floor
        a = np.where(floor > 0, (np.log(np.where(floor > 0, floor, 1.0)) - mu) / self.price_sigma,
                     -np.inf)
        tail = ndtr(-a)                                   # P(X >= floor)
        z = -ndtri(np.clip(u[:, 2] * tail, 1e-300, 1.0))
        price = np.exp(mu + self.price_sigma * np.maximum(z, a))
        price = np.maximum(price, floor)
        density = (np.exp(-0.5 * ((np.log(price) - mu) / self.price_sigma) ** 2)
                   / (price * self.price_sigma * math.sqrt(2 * math.pi)) / tail)
        propensity = np.where(bid, (1 - self.nobid_rate) / np.maximum(count, 1) * density,
                              np.where(count > 0, self.nobid_rate, 1.0))
        reason = np.where(count == 0, "no_eligible",
                          np.where(explore_nobid, "explore_nobid", "bid")).astype(object)
        return Decisions(
            bid=bid, price=np.where(bid, price, np.nan), creative=creative, reason=reason,
            propensity=propensity, pctr=np.where(bid, self.prior_ctr, np.nan),
            value=np.where(bid, value / 1000.0, np.nan),
        )


__all__ = ["POLICY", "VARIANT", "BootstrapPolicy", "Decisions", "Eligibility"]
