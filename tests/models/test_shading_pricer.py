"""Shaded-bid argmax and the engine's pricer: floor, brute force, fallbacks, speed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np
import pytest

from decisioning.pricing import BidPricer
from features.context import RequestContext
from models.shading_km import BinnedLandscape
from models.shading_landscape import (
    ShadingPricer,
    mixture_cdf,
    mixture_quantile,
    optimal_bids,
    shade_single,
)
from serving.base import AuctionScores

LAND = np.array([[0.45, 0.35, 0.15, 0.05, np.log(0.5), np.log(1.8), np.log(5.5), np.log(1e-6),
                  0.55, 0.35, 0.30, 0.01]], dtype=np.float32)


def _ctx(floor: float) -> RequestContext:
    return RequestContext(ts=datetime(2026, 1, 5, tzinfo=UTC), request_id="r", imp_id="1",
                          bidfloor=floor)


def _scores(land: np.ndarray | None, k: int) -> AuctionScores:
    return AuctionScores(pctr=np.zeros(k, dtype=np.float32), shading=land)


def _brute(values: np.ndarray, floor: float, land: np.ndarray) -> np.ndarray:
    """Best surplus per value on a 200k-point grid."""
    grid = np.linspace(max(floor, 1e-3), max(values.max(), floor + 1e-3), 200_000)
    p = mixture_cdf(land)(grid[None, :])[0]
    surplus = (values[:, None] - grid[None, :]) * p[None, :]
    return np.maximum(surplus.max(axis=1), 0.0)


def _surplus(values: np.ndarray, bids: np.ndarray, land: np.ndarray) -> np.ndarray:
    p = mixture_cdf(land)(bids[None, :])[0]
    return np.where(bids > 0, (values - bids) * p, 0.0)


def test_pricer_implements_the_engine_protocol() -> None:
    assert isinstance(ShadingPricer(), BidPricer)
    assert ShadingPricer().policy == "shading_model"


@pytest.mark.parametrize("seed", range(6))
def test_bids_equal_brute_force_argmax_and_respect_the_floor(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pricer = ShadingPricer()
    floor = float(rng.choice([0.0, 0.3, 1.1, 2.5]))
    values = rng.lognormal(0.5, 1.0, 20)
    bids = pricer.price(values, _ctx(floor), _scores(LAND, 20), first_price=True)
    best = _brute(values, floor, LAND)
    got = _surplus(values, bids, LAND)
    assert np.all((bids == 0) | (bids >= floor))
    assert np.all(bids <= values)
    assert np.all(got >= best - 1e-5 * values), (got - best).min()
    assert np.all((bids == 0) == (best <= 0))
    # The general (N, K) search agrees with the serving fast path.
    general = optimal_bids(values[None, :], floor, mixture_cdf(LAND))[0]
    assert np.all(_surplus(values, general, LAND) >= best - 1e-5 * values)


def test_no_bid_when_value_does_not_clear_the_floor() -> None:
    values = np.array([0.5, 1.0, 1.2, 3.0])
    bids = shade_single(values, 1.2, LAND)
    assert bids[0] == 0.0 and bids[1] == 0.0 and bids[2] == 0.0
    assert bids[3] >= 1.2
    assert np.all(shade_single(values, 10.0, LAND) == 0.0)


def test_per_row_landscapes_and_step_landscapes() -> None:
    lands = np.repeat(LAND, 3, axis=0)
    lands[1, 4:8] += 1.0                          # a pricier market: bid higher
    values = np.array([4.0, 4.0, 4.0])
    bids = ShadingPricer().price(values, _ctx(0.2), _scores(lands, 3), first_price=True)
    assert bids[1] > bids[0] and np.isclose(bids[0], bids[2])
    # A Kaplan-Meier-like step landscape goes through the same argmax.
    edges = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    km = BinnedLandscape(edges, np.array([0.1, 0.4, 0.3, 0.2]))
    b = optimal_bids(np.array([[3.0]]), np.array([0.2]), km.cdf)[0, 0]
    grid = np.linspace(0.2, 3.0, 100_000)
    assert (3.0 - b) * km.cdf(b) >= ((3.0 - grid) * km.cdf(grid)).max() - 1e-6


def test_second_price_and_fallbacks() -> None:
    pricer = ShadingPricer()
    values = np.array([1.0, 2.0])
    assert np.array_equal(pricer.price(values, _ctx(0.5), _scores(LAND, 2), first_price=False),
                          values)
    fallback = pricer.price(values, _ctx(0.5), _scores(None, 2), first_price=True)
    assert np.allclose(fallback, 0.7 * values)
    bad = LAND.copy()
    bad[0, 5] = np.nan
    pricer.price(values, _ctx(0.5), _scores(bad, 2), first_price=True)
    assert pricer.fallbacks == 2


def test_quantiles_invert_the_cdf() -> None:
    q = mixture_quantile(LAND, 0.5)
    assert np.isclose(mixture_cdf(LAND)(q[:, None])[0, 0], 0.5, atol=1e-9)


def test_serving_side_imports_no_torch() -> None:
    import subprocess

    code = ("import sys, models.shading_landscape, models.shading_km; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_malformed_landscapes_fall_back() -> None:
    pricer = ShadingPricer()
    values = np.array([1.0, 2.0, 3.0])
    ctx = _ctx(0.1)
    for land in (LAND[:, :10], np.repeat(LAND, 2, axis=0), LAND * np.r_[np.ones(8), -np.ones(4)]):
        out = pricer.price(values, ctx, _scores(land.astype(np.float32), 3), first_price=True)
        assert np.allclose(out, 0.7 * values)
    assert pricer.fallbacks == 3
