"""Ground truth: click-through and conversion probabilities, and realised outcomes.

Human click-through is a logistic model::

    logit = base + affinity[user_group, creative_topic] + user effect + creative quality
            + publisher effect + size/format effect + local-hour effect + device effect
            + app effect

Bots ignore all of it: each bot kind clicks at its own flat rate (see
:mod:`simulator.bots`) and never converts. A share of human clicks convert, minutes to
hours later.

Outcomes are drawn from per-request uniforms fixed when the request was generated
(common random numbers): a request shown a given creative gives the same clicks whatever
policy bid on it, so policies can be compared on the same traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from simulator.bots import CLICK_BEHAVIOUR
from simulator.population import HUMAN

if TYPE_CHECKING:
    from simulator.traffic import RequestBatch
    from simulator.world import World

_US = 1_000_000
RENDER_MEDIAN_S = 0.15        # request -> impression (ad rendered)
CONVERSION_MEDIAN_S = 2700.0  # click -> conversion: median 45 minutes, sigma 1 (minutes-hours)
ORDER_VALUE_MEDIAN = 40.0     # USD, conversions of CPC campaigns


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class CtrModel:
    base: float
    affinity: np.ndarray        # (groups, topics), logit
    size_effect: np.ndarray     # (sizes,) by index into inventory.SIZES
    hour_effect: np.ndarray     # (24,) by local hour
    device_effect: np.ndarray   # by position in devices.DEVICE_TYPES
    app_effect: float
    bot_ctr: np.ndarray         # by source kind code; [0] (humans) unused
    cvr_base: float
    cvr_affinity: float

    @classmethod
    def build(cls, rng: np.random.Generator, *, n_groups: int, base: float, affinity_match: float,
              affinity_sd: float, hour_amplitude: float, bot_ctr: tuple[float, float, float],
              cvr_base: float, cvr_affinity: float) -> CtrModel:
        affinity = rng.normal(-0.15, affinity_sd, size=(n_groups, n_groups))
        diag = np.arange(n_groups)
        affinity[diag, diag] = affinity_match + rng.normal(0.0, 0.1, size=n_groups)
        hours = np.arange(24)
        return cls(
            base=base, affinity=affinity,
            # 300x250, 728x90, 320x50, 160x600, video 640x480
            size_effect=np.array([0.0, -0.25, -0.45, -0.35, 0.45]),
            hour_effect=hour_amplitude * np.cos(2 * np.pi * (hours - 21) / 24),
            device_effect=np.array([0.0, 0.15, 0.05]),   # PC, phone, tablet
            app_effect=0.1,
            bot_ctr=np.array([0.0, *bot_ctr]),
            cvr_base=cvr_base, cvr_affinity=cvr_affinity,
        )


def _affinity(world: World, batch: RequestBatch, creative: np.ndarray) -> np.ndarray:
    group = np.where(batch.kind == HUMAN, batch.group, 0)
    return world.ctr.affinity[group, world.catalog.topic[creative]]


def true_ctr(world: World, batch: RequestBatch, creative: np.ndarray) -> np.ndarray:
    """P(click) of showing ``creative[i]`` on request ``i`` of the batch."""
    cm, cat = world.ctr, world.catalog
    logit = (cm.base + _affinity(world, batch, creative) + batch.quality + cat.quality[creative]
             + world.publishers.effect[batch.publisher] + cm.size_effect[batch.size]
             + cm.hour_effect[batch.local_hour] + cm.device_effect[batch.device]
             + cm.app_effect * batch.is_app)
    return np.where(batch.kind == HUMAN, _sigmoid(logit), cm.bot_ctr[batch.kind])


def true_cvr(world: World, batch: RequestBatch, creative: np.ndarray) -> np.ndarray:
    """P(conversion | click) of ``creative[i]`` on request ``i``; 0 for bots."""
    cm, cat = world.ctr, world.catalog
    logit = (cm.cvr_base + cm.cvr_affinity * _affinity(world, batch, creative)
             + cat.cvr_effect[cat.campaign[creative]])
    return np.where(batch.kind == HUMAN, _sigmoid(logit), 0.0)


@dataclass(frozen=True)
class Outcomes:
    """What happened after impressions: one entry per batch row, then per event."""

    impression_ts: np.ndarray   # int64 µs, per row
    true_ctr: np.ndarray        # per row
    clicked: np.ndarray         # bool, per row
    click_row: np.ndarray       # int64 row of each click (a row repeats for repeated clicks)
    click_ts: np.ndarray        # int64 µs
    conv_row: np.ndarray        # int64 row of each conversion (at most one per impression)
    conv_ts: np.ndarray         # int64 µs
    conv_value: np.ndarray      # USD


_DELAY = np.array([b.delay_median_s for b in CLICK_BEHAVIOUR])
_DELAY_SIGMA = np.array([b.delay_sigma for b in CLICK_BEHAVIOUR])
_REPEAT = np.array([b.repeat_p for b in CLICK_BEHAVIOUR])
_MAX_CLICKS = np.array([b.max_clicks for b in CLICK_BEHAVIOUR])
_GAP = np.array([b.gap_median_s for b in CLICK_BEHAVIOUR])


def _us(seconds: np.ndarray) -> np.ndarray:
    return np.round(seconds * _US).astype(np.int64)


def realise(world: World, batch: RequestBatch, creative: np.ndarray) -> Outcomes:
    """Impressions of ``creative[i]`` on every row of ``batch``: clicks and conversions."""
    imp_ts = batch.ts + _us(RENDER_MEDIAN_S * np.exp(0.5 * batch.z_render))
    ctr = true_ctr(world, batch, creative)
    clicked = batch.u_click < ctr
    rows = np.flatnonzero(clicked)
    kind = batch.kind[rows]
    first = imp_ts[rows] + _us(_DELAY[kind] * np.exp(_DELAY_SIGMA[kind] * batch.z_delay[rows]))
    p = _REPEAT[kind]
    # Geometric number of extra clicks: P(extra >= j) = p**j (u_repeat is in (0, 1]).
    log_p = np.log(np.where(p > 0, p, 0.5))
    extra = np.where(p > 0, np.floor(np.log(batch.u_repeat[rows]) / log_p), 0)
    n_clicks = 1 + np.minimum(extra, _MAX_CLICKS[kind] - 1).astype(np.int64)
    click_row = np.repeat(rows, n_clicks)
    starts = np.repeat(np.cumsum(n_clicks) - n_clicks, n_clicks)
    j = np.arange(len(click_row)) - starts
    gap = np.repeat(_GAP[kind] * np.exp(0.5 * batch.z_gap[rows]), n_clicks)
    click_ts = np.repeat(first, n_clicks) + _us(j * gap)

    conv_p = true_cvr(world, batch.take(rows), creative[rows])
    converts = (kind == HUMAN) & (batch.u_conv[rows] < conv_p)
    conv_row = rows[converts]
    conv_ts = first[converts] + _us(CONVERSION_MEDIAN_S * np.exp(batch.z_conv_delay[conv_row]))
    camp = world.catalog.campaign[creative[conv_row]]
    cpa = world.catalog.cpa[camp]
    order = np.round(ORDER_VALUE_MEDIAN * np.exp(0.6 * batch.z_value[conv_row]), 2)
    value = np.where(np.isnan(cpa), order, cpa)
    return Outcomes(imp_ts, ctr, clicked, click_row, click_ts, conv_row, conv_ts, value)


__all__ = ["CONVERSION_MEDIAN_S", "CtrModel", "Outcomes", "realise", "true_ctr", "true_cvr"]
