"""Context-free nonparametric bid landscapes: Kaplan-Meier and its generalisation.

The baseline every shading model must beat: one distribution of the highest competing
bid C for all auctions, estimated without a parametric family.

* :func:`kaplan_meier` -- the classic product-limit estimator for exact observations and
  right-censoring (the DRSA setting: a win reveals the market price, a loss says only
  ``z >= b``), on integer price bins.
* :func:`turnbull` -- the nonparametric MLE when observations are also left-censored
  (our first-price exchange: a win says only ``C <= b``). Turnbull's self-consistency
  EM; with exact and right-censored data only it converges to Kaplan-Meier.

Both give a :class:`BinnedLandscape` (mass per price bin), which prices bids through
:func:`models.shading_landscape.optimal_bids` like any other landscape. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Codes as in models.shading.Censoring (kept numeric so this module needs no torch).
EXACT, LEFT, RIGHT, INTERVAL = 0, 1, 2, 3


@dataclass(frozen=True)
class BinnedLandscape:
    """Mass ``pmf[j]`` on price bin ``(edges[j], edges[j+1]]``, plus ``tail`` above the top."""

    edges: np.ndarray      # (J + 1,) increasing
    pmf: np.ndarray        # (J,)
    tail: float = 0.0      # P(C > edges[-1])

    def __post_init__(self) -> None:
        if self.edges.ndim != 1 or self.pmf.shape != (len(self.edges) - 1,):
            raise ValueError("BinnedLandscape: edges (J + 1,) and pmf (J,) required")

    @property
    def cum(self) -> np.ndarray:
        """(J + 1,) P(C <= edges[j])."""
        return np.concatenate([[0.0], np.cumsum(self.pmf)])

    def cdf(self, prices: np.ndarray) -> np.ndarray:
        """P(C <= price), linear within a bin; any shape (a context-free RowCdf)."""
        return np.interp(prices, self.edges, self.cum, left=0.0, right=float(self.cum[-1]))

    def smoothed(self, eps: float) -> BinnedLandscape:
        """Mixed with ``eps`` of a uniform over the bins: no zero-probability bin."""
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        j = len(self.pmf)
        return BinnedLandscape(self.edges, (1.0 - eps) * self.pmf + eps / j,
                               (1.0 - eps) * self.tail)

    def loglik(self, kind: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per-row log-likelihood of censored observations (codes as :func:`turnbull`).

        EXACT and INTERVAL rows get the mass of the bin(s) they fall in: compare with a
        continuous model on the same bins (bin-aligned bounds), not on densities.
        """
        full = np.concatenate([[0.0], np.cumsum(np.append(self.pmf, self.tail))])  # (J + 2,)
        first, last = _bin_range(self.edges, np.asarray(kind), np.asarray(lo, dtype=np.float64),
                                 np.asarray(hi, dtype=np.float64))
        mass = full[last + 1] - full[first]
        with np.errstate(divide="ignore"):
            return np.log(np.maximum(mass, 0.0))


def _bin_range(edges: np.ndarray, kind: np.ndarray, lo: np.ndarray,
               hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last bin (inclusive) an observation allows.

    Bin j < J is ``(e_j, e_j+1]``; bin J is the tail above the top edge.
    """
    j = len(edges) - 1

    def containing(x: np.ndarray) -> np.ndarray:          # the bin holding x
        return np.clip(np.searchsorted(edges, x, side="left") - 1, 0, j)

    def above(x: np.ndarray) -> np.ndarray:               # the first bin with prices > x
        return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, j)

    first = np.select([kind == EXACT, kind == LEFT], [containing(lo), 0], default=above(lo))
    last = np.select([kind == EXACT, kind == RIGHT], [containing(lo), j], default=containing(hi))
    return first, np.maximum(last, first)


def kaplan_meier(z: np.ndarray, observed: np.ndarray, censor_at: np.ndarray, *,
                 max_price: int | None = None) -> BinnedLandscape:
    """Product-limit estimate of an integer price ``z >= 0`` on bins ``(k - .5, k + .5]``.

    ``observed[i]``: ``z[i]`` is known; otherwise only ``z >= censor_at[i]`` is. The
    hazard of bin k is ``d_k / n_k`` with ``d_k`` the exact prices equal to k and ``n_k``
    the rows still at risk at k (exact ``z >= k`` or censored at ``b > k``). Mass the
    data cannot place (the last rows censored) goes to ``tail``.
    """
    z = np.asarray(z, dtype=np.int64)
    obs = np.asarray(observed, dtype=bool)
    cens = np.asarray(censor_at, dtype=np.int64)
    top = int(max_price if max_price is not None else max(z[obs].max(initial=0),
                                                        cens[~obs].max(initial=0)))
    k = top + 1
    deaths = np.bincount(z[obs], minlength=k)[:k]
    # At risk at bin k: exact z >= k (reverse cumsum) + censored with b > k, i.e. b - 1 >= k.
    exact_ge = np.cumsum(np.bincount(z[obs], minlength=k)[::-1])[::-1][:k]
    cens_last = np.clip(cens[~obs] - 1, -1, k - 1)
    cens_ge = np.cumsum(np.bincount(cens_last[cens_last >= 0], minlength=k)[::-1])[::-1][:k]
    at_risk = exact_ge + cens_ge
    hazard = np.where(at_risk > 0, deaths / np.maximum(at_risk, 1), 0.0)
    surv_before = np.concatenate([[1.0], np.cumprod(1.0 - hazard)[:-1]])
    pmf = surv_before * hazard
    edges = np.arange(k + 1, dtype=np.float64) - 0.5
    return BinnedLandscape(edges, pmf, float(max(0.0, 1.0 - pmf.sum())))


def turnbull(kind: np.ndarray, lo: np.ndarray, hi: np.ndarray, edges: np.ndarray, *,
             iters: int = 2000, tol: float = 1e-9) -> BinnedLandscape:
    """Turnbull's nonparametric MLE of C on fixed bins from mixed-censored observations.

    ``kind`` codes: 0 exact (``C = lo``), 1 left (``C <= hi``), 2 right (``C > lo``),
    3 interval (``lo < C <= hi``); each becomes the range of bins it allows, and EM
    (``p_j <- mean_i 1[j in A_i] p_j / P(A_i)``) finds the masses. Observations are
    grouped by bin range first, so an iteration costs O(ranges + bins), not O(rows).
    """
    edges = np.asarray(edges, dtype=np.float64)
    j = len(edges) - 1
    first, last = _bin_range(edges, np.asarray(kind), np.asarray(lo, dtype=np.float64),
                             np.asarray(hi, dtype=np.float64))
    # Group rows by allowed range; bins are 0..J (J the tail above the top edge).
    key = first * (j + 1) + last
    uniq, count = np.unique(key, return_counts=True)
    f, la = uniq // (j + 1), uniq % (j + 1)
    weight = count / count.sum()
    p = np.full(j + 1, 1.0 / (j + 1))
    for _ in range(iters):
        cum = np.concatenate([[0.0], np.cumsum(p)])                    # (J + 2,)
        a = weight / np.maximum(cum[la + 1] - cum[f], 1e-300)          # (U,)
        diff = (np.bincount(f, weights=a, minlength=j + 2)
                - np.bincount(la + 1, weights=a, minlength=j + 2))
        new = p * np.cumsum(diff)[:j + 1]
        new /= new.sum()
        done = float(np.abs(new - p).max()) < tol
        p = new
        if done:
            break
    return BinnedLandscape(edges, p[:j], float(p[j]))


def log_edges(low: float, high: float, n: int) -> np.ndarray:
    """``n`` log-spaced bins from ``low`` to ``high`` with a first bin ``(0, low]``."""
    if not 0.0 < low < high or n < 2:
        raise ValueError("need 0 < low < high and n >= 2")
    return np.concatenate([[0.0], np.geomspace(low, high, n)])


__all__ = ["EXACT", "INTERVAL", "LEFT", "RIGHT", "BinnedLandscape", "kaplan_meier",
           "log_edges", "turnbull"]
