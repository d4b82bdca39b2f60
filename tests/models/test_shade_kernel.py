"""The compiled serving argmax (models/_shade_kernel.py) against its numpy definition,
:func:`models.shading_landscape.shade_single`, and the landscape check against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from models import _shade_kernel
from models.shading_landscape import MIN_PRICE, shade_single


def _landscape(rng: np.random.Generator, m: int) -> np.ndarray:
    """A random mixture row (1, 3M) as the shading model outputs it (float32)."""
    w = rng.dirichlet(np.ones(m))
    mu = rng.normal(0.3, 1.2, m)
    sigma = rng.uniform(0.05, 1.5, m)
    return np.concatenate([w, mu, sigma])[None, :].astype(np.float32)


@pytest.mark.parametrize("m", [1, 4, 8])
def test_prices_match_the_numpy_definition(m: int) -> None:
    rng = np.random.default_rng(m)
    worst = 0.0
    for _ in range(300):
        land = _landscape(rng, m)
        k = int(rng.integers(1, 40))
        values = rng.lognormal(0.5, 1.2, k)
        floor = float(rng.choice([0.0, 1e-4, 0.3, 1.1, 2.5, 50.0]))
        grid = int(rng.choice([3, 17, 96]))
        want = shade_single(values, floor, land, grid=grid)
        got = _shade_kernel.shade(values, max(floor, MIN_PRICE), land, grid)
        assert np.array_equal(got == 0.0, want == 0.0)          # the same no-bids
        assert np.all((got == 0.0) | (got >= floor))
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(want, 1e-300))))
    # erf/erfc from the C library and a looped mixture sum instead of scipy and BLAS:
    # rounding, not a different argmax (a different grid point would be ~1e-2 off).
    assert worst < 1e-9, worst


def test_ties_and_edges_match() -> None:
    land = np.array([[1.0, 0.0, 0.5]], dtype=np.float32)           # one log-normal
    for values, floor in ((np.array([1.0, 1.0, 1.0]), 0.0),       # identical candidates
                          (np.array([0.5, 0.2]), 0.5),             # nothing clears the floor
                          (np.array([]), 0.1),                     # no candidates
                          (np.array([2.0, 0.5000001]), 0.5)):      # barely above the floor
        want = shade_single(values, floor, land)
        got = _shade_kernel.shade(values, max(floor, MIN_PRICE), land, 96)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0.0)


def test_landscape_check_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    base = _landscape(rng, 4)
    cases = [base, np.repeat(base, 3, axis=0), base.astype(np.float64)]
    for j, bad in ((5, np.nan), (0, np.inf), (9, 0.0), (11, -1.0), (4, -np.inf)):
        broken = base.copy()
        broken[0, j] = bad
        cases.append(broken)
    for land in cases:
        m = land.shape[1] // 3
        want = bool(np.all(np.isfinite(land)) and land[:, 2 * m:].min() > 0.0)
        assert _shade_kernel.landscape_ok(land) is want


def test_warm_loads_the_kernels_for_read_only_landscapes() -> None:
    # The backend's landscape memo hands out read-only arrays, a numba type of their own:
    # without it in warm(), the first auction loaded that variant (~10 ms).
    _shade_kernel.warm()
    shade, ok = _shade_kernel._kernel("shade"), _shade_kernel._kernel("ok")
    known = (len(shade.signatures), len(ok.signatures))
    land = np.array([[0.5, 0.5, 0.0, 1.0, 1.0, 2.0]], dtype=np.float32)
    land.flags.writeable = False
    assert _shade_kernel.landscape_ok(land)
    _shade_kernel.shade(np.array([1.0, 2.0, 3.0]), 0.5, land, 96)
    assert (len(shade.signatures), len(ok.signatures)) == known
