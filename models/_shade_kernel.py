"""Compiled (numba) shaded-bid argmax for one auction: the serving fast path.

:func:`models.shading_landscape.shade_single` defines the serving argmax in numpy: a
shared log grid from the floor to the highest value, each candidate's best grid point,
then the vertex of the parabola through it and its neighbours. On an auction (20
candidates, a 96-point grid) its cost is about 30 numpy calls, not the arithmetic. The
kernel here runs the same steps in one compiled loop:

* the same grid (``linspace(0, 1, grid)``: ``g / (grid - 1)``, the last point exactly 1),
  the same first-maximum argmax and the same parabola, clamp and acceptance rule;
* ``ndtr`` as SciPy computes it (cephes: ``erf`` near 0, ``erfc`` in the tails), but on
  the C library's ``erf``/``erfc``, and the mixture sum as a loop instead of BLAS; so
  prices agree with :func:`shade_single` to rounding (tests/models/test_shade_kernel.py
  compares them on random landscapes), not bit for bit.

:func:`landscape_ok` is :meth:`ShadingPricer._usable`'s value check (finite, sigma > 0)
in one pass. Both compile on first use (numba caches the machine code);
:func:`warm` compiles them up front, which the decision service's pricer does when it is
built, so that no auction pays for the compilation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_SQRTH = math.sqrt(0.5)          # cephes ndtr: x / sqrt(2)
_compiled: dict[str, Any] = {}
_helpers_registered = False


def _ndtr(a: float) -> float:
    """Standard normal CDF, cephes' branches (as ``scipy.special.ndtr``)."""
    x = a * _SQRTH
    z = abs(x)
    if z < _SQRTH:
        return 0.5 + 0.5 * math.erf(x)
    y = 0.5 * math.erfc(z)
    return 1.0 - y if x > 0.0 else y


def _p_win(log_b: float, w: np.ndarray, mu: np.ndarray, inv: np.ndarray) -> float:
    """P(C <= exp(log_b)) under the mixture (M components)."""
    p = 0.0
    for m in range(w.shape[0]):
        p += _ndtr((log_b - mu[m]) * inv[m]) * w[m]
    return p


def _shade(vals: np.ndarray, lo: float, land: np.ndarray, grid: int, out: np.ndarray) -> None:
    """``out`` (K,) ← shade_single's prices for values ``vals`` (K,), floor ``lo`` (≥
    MIN_PRICE) and one landscape row ``land`` (1, 3M); ``grid`` ≥ 3."""
    m_n = land.shape[1] // 3
    w, mu, inv = np.empty(m_n), np.empty(m_n), np.empty(m_n)    # (M,) float64
    for m in range(m_n):
        w[m] = land[0, m]
        mu[m] = land[0, m_n + m]
        inv[m] = 1.0 / np.float64(land[0, 2 * m_n + m])
    k_n = vals.shape[0]
    top = -np.inf
    for k in range(k_n):
        top = max(top, vals[k])
    if top <= lo:
        for k in range(k_n):
            out[k] = 0.0
        return
    log_lo = math.log(lo)
    span = math.log(top) - log_lo
    last = grid - 1
    step = 1.0 / last
    price = np.empty(grid)                                       # (G,)
    p_win = np.empty(grid)                                       # (G,)
    for g in range(grid):
        u = 1.0 if g == last else g * step                       # linspace's grid
        log_b = log_lo + span * u
        price[g] = math.exp(log_b)
        p_win[g] = _p_win(log_b, w, mu, inv)
    for k in range(k_n):
        v = vals[k]
        best, s_best = 0, (v - price[0]) * p_win[0]
        for g in range(1, grid):
            s = (v - price[g]) * p_win[g]
            if s > s_best:                                       # first maximum, as argmax
                best, s_best = g, s
        mid = min(max(best, 1), last - 1)
        left = (v - price[mid - 1]) * p_win[mid - 1]
        centre = (v - price[mid]) * p_win[mid]
        right = (v - price[mid + 1]) * p_win[mid + 1]
        curv = min(left - 2.0 * centre + right, -1e-300)
        shift = min(max(0.5 * (left - right) / curv, -1.0), 1.0)
        u_star = (mid + shift) * step
        log_star = log_lo + span * u_star
        s_star = (v - math.exp(log_star)) * _p_win(log_star, w, mu, inv)
        u_best = u_star if s_star > s_best else best * step
        bid = max(math.exp(log_lo + span * u_best), lo)
        out[k] = bid if (v > lo and (s_star > 0.0 or s_best > 0.0)) else 0.0


def _landscape_ok(land: np.ndarray) -> bool:
    """Every entry finite and every sigma (the last third of each row) > 0."""
    m = land.shape[1] // 3
    for r in range(land.shape[0]):
        for j in range(land.shape[1]):
            a = land[r, j]
            if not np.isfinite(a) or (j >= 2 * m and not a > 0.0):
                return False
    return True


def _kernel(name: str) -> Any:
    fn = _compiled.get(name)
    if fn is None:
        import numba
        from numba.extending import register_jitable

        global _helpers_registered
        if not _helpers_registered:
            # The helpers become callable from compiled code (they stay plain functions
            # for Python callers); once, here, not at import: importing costs no numba.
            register_jitable(_ndtr)
            register_jitable(_p_win)
            _helpers_registered = True
        fn = _compiled[name] = numba.njit(cache=True, nogil=True)(
            {"shade": _shade, "ok": _landscape_ok}[name])
    return fn


def shade(values: np.ndarray, lo: float, landscape: np.ndarray, grid: int) -> np.ndarray:
    """Prices (K,) for float64 ``values`` (K,), floor ``lo`` ≥ MIN_PRICE and one mixture
    landscape row (1, 3M) with positive sigmas; see :func:`shade_single`."""
    out = np.empty(values.shape[0])
    _kernel("shade")(values, lo, landscape, grid, out)
    return out


def landscape_ok(landscape: np.ndarray) -> bool:
    """All finite, sigmas > 0, for a (R, 3M) landscape (any float dtype)."""
    return bool(_kernel("ok")(landscape))


def warm() -> None:
    """Compile (or load from numba's cache) the kernels for float32 landscapes, writable
    and read-only: the backend's landscape memo hands out read-only arrays, a type of
    their own to numba, which otherwise loaded it on the first auction (~10 ms)."""
    for writeable in (True, False):
        land = np.array([[1.0, 0.0, 1.0]], dtype=np.float32)
        land.flags.writeable = writeable
        landscape_ok(land)
        shade(np.array([1.0, 2.0]), 0.5, land, 5)


__all__ = ["landscape_ok", "shade", "warm"]
