"""Bid-shading evaluation: realised surplus on the simulator, likelihood on iPinYou (DRSA).

**Simulator.** The held-out days are regenerated in memory from the workspace's world
file (same seed, same requests; :func:`simulator.iter_days`), which gives what the event
log hides: every auction's highest competing bid, the true distribution it was drawn
from, and the true click-through of the creative the policy chose. On the human
auctions of the held-out days every pricing policy bids for the same impression with
the same value ``v`` (its expected value, CPM: true CTR x CPC, or x CVR x CPA):

* ``surplus``: our model's landscape, ``argmax_b (v - b) P(win | b, x)``;
* ``oracle_surplus``: the same argmax under the TRUE landscape of the simulator's
  competition model (it knows the publisher, the user and the local hour; it does not
  know the realised bid);
* ``best_constant_surplus``: ``b = max(alpha v, floor)``, alpha tuned on the training
  days' realised surplus (with their true competing bids: a generous baseline);
* ``km_surplus``: the argmax under one context-free nonparametric landscape fitted on
  the training auctions (Kaplan-Meier generalised to left censoring: Turnbull);
* ``truthful_surplus``: ``b = v``, zero surplus by construction in first price.

A bid wins iff ``b >= max(competing, floor)``; realised surplus is ``sum (v - b)`` over
won auctions, in USD (CPM / 1000).

**DRSA (iPinYou campaign 2259).** Held-out log-likelihood of the censored market price
on integer price bins, for the mixture network on the rows' multi-hot features and for
Kaplan-Meier fitted on the training split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from adplatform.config import Settings
from adplatform.errors import DataError
from models.shading import CensoredData, Censoring, ShadingConfig, fit, predict_landscape
from models.shading_km import BinnedLandscape, kaplan_meier
from models.shading_landscape import RowCdf, mixture_cdf, optimal_bids

if TYPE_CHECKING:
    from simulator.competition import CompetitionModel

log = logging.getLogger(__name__)

# Shading factors tried for the best-constant baseline.
ALPHAS = np.round(np.arange(0.05, 1.0001, 0.01), 2)
CHUNK = 50_000          # rows priced at once (memory: rows x grid floats per array)
# Location of the "no other bidder" atom in the true landscape (C = 0): far below any floor.
_NONE_MU, _NONE_SIGMA = float(np.log(1e-6)), 0.01


# ---------------------------------------------------------------------- simulator truth

def true_landscape(c: CompetitionModel, publisher: np.ndarray, size: np.ndarray, device: np.ndarray,
                   local_hour: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """The simulator's true distribution of C per request, as a landscape (N, 3(K+1)).

    Mirrors :meth:`simulator.competition.CompetitionModel.sample`: K log-normal buyer
    components with context-dependent weights and locations, and an atom at 0 (no other
    bidder) encoded as a very narrow component far below any floor.
    """
    logits = (c.weight + c.pub_weight[publisher] + c.size_weight[size]
              + c.dev_weight[device] + c.hour_weight[local_hour])
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)                                             # (N, K)
    shift = (c.pub_loc[publisher] + c.size_loc[size] + c.dev_loc[device]
             + c.hour_loc[local_hour] + c.user_coupling * quality)
    mu = c.loc[None, :] + c.pub_kloc[publisher] + shift[:, None]
    sigma = np.broadcast_to(c.sigma, mu.shape)
    p_none = 1.0 / (1.0 + np.exp(-c.pub_none[publisher]))
    n = len(publisher)
    return np.column_stack([w * (1.0 - p_none)[:, None], p_none, mu, np.full(n, _NONE_MU),
                            sigma, np.full(n, _NONE_SIGMA)])


@dataclass
class TruthRows:
    """Human auctions of some days: value, floor, realised competing bid (all CPM)."""

    request_id: np.ndarray
    value: np.ndarray
    floor: np.ndarray
    competing: np.ndarray
    oracle: np.ndarray | None = None       # (N, 3(K+1)) true landscapes, held-out only


def _concat(parts: list[TruthRows]) -> TruthRows:
    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0)

    oracle = [p.oracle for p in parts if p.oracle is not None]
    return TruthRows(cat("request_id"), cat("value"), cat("floor"), cat("competing"),
                     oracle=np.concatenate(oracle) if oracle else None)


def regenerate(settings: Settings, holdout_ids: pd.Index) -> tuple[TruthRows, TruthRows]:
    """(training days, held-out days) truth rows, regenerated from the world file.

    Held-out days are those holding any of ``holdout_ids``; training days are the days
    before the first of them.
    """
    from simulator import SimulationError, read_run
    from simulator.outcomes import true_ctr, true_cvr
    from simulator.population import HUMAN

    try:
        run = read_run(settings.workspace)
    except SimulationError as exc:
        raise DataError(f"{exc} (the workspace was not written by the simulator)") from exc
    world = run.world
    cat = world.catalog
    train: list[TruthRows] = []
    held: list[TruthRows] = []
    found = 0
    for ev in run.iter_days():
        b, dec = ev.batch, ev.decisions
        rows = np.flatnonzero(dec.bid & (b.kind == HUMAN))
        in_holdout = holdout_ids.get_indexer(pd.Index(b.request_id[rows])) >= 0
        if not in_holdout.any() and held:
            continue                       # a day after the held-out ones starts
        sub, creative = b.take(rows), dec.creative[rows]
        camp = cat.campaign[creative]
        per_click = np.where(np.isnan(cat.cpc[camp]), cat.cpa[camp] * true_cvr(world, sub, creative),
                             cat.cpc[camp])
        value = 1000.0 * true_ctr(world, sub, creative) * per_click
        part = TruthRows(sub.request_id, value, sub.floor, sub.competing)
        if in_holdout.any():
            keep = np.flatnonzero(in_holdout)
            found += len(keep)
            s = sub.take(keep)
            held.append(TruthRows(s.request_id, value[keep], s.floor, s.competing,
                                  true_landscape(world.competition, s.publisher, s.size,
                                                 s.device, s.local_hour, s.quality)))
        else:
            train.append(part)
    if not held:
        raise DataError("none of the held-out auctions was regenerated: the event log was "
                        "not written by simulate() with this workspace's world.json")
    log.info("shading eval: %d held-out human auctions regenerated", found)
    return _concat(train), _concat(held)


# ---------------------------------------------------------------------- policies

def realised(values: np.ndarray, bids: np.ndarray, competing: np.ndarray,
             floors: np.ndarray) -> dict[str, float]:
    """Surplus (USD), win rate and spend (USD) of ``bids`` (0 = no bid)."""
    won = (bids > 0) & (bids >= np.maximum(competing, floors))
    return {"surplus": float(np.sum((values - bids) * won) / 1000.0),
            "win_rate": float(won.mean()) if len(won) else 0.0,
            "spend": float(np.sum(bids * won) / 1000.0)}


def constant_bids(values: np.ndarray, floors: np.ndarray, alpha: float) -> np.ndarray:
    """``max(alpha v, floor)`` where the value clears the floor, else no bid."""
    return np.where(values > floors, np.maximum(alpha * values, floors), 0.0)


def tune_constant(truth: TruthRows, alphas: np.ndarray = ALPHAS, *,
                  max_rows: int = 500_000, seed: int = 0) -> float:
    """The shading factor with the highest realised surplus on ``truth``."""
    idx = np.arange(len(truth.value))
    if len(idx) > max_rows:
        idx = np.random.default_rng(seed).choice(idx, size=max_rows, replace=False)
    v, f, c = truth.value[idx], truth.floor[idx], truth.competing[idx]
    gains = [realised(v, constant_bids(v, f, a), c, f)["surplus"] for a in alphas]
    return float(alphas[int(np.argmax(gains))])


def price_rows(values: np.ndarray, floors: np.ndarray,
               cdf_for: Callable[[slice], RowCdf]) -> np.ndarray:
    """Shaded bids (N,) for one value per row, in chunks; ``cdf_for(rows)`` gives the cdf."""
    out = np.zeros(len(values))
    for s in range(0, len(values), CHUNK):
        sl = slice(s, min(len(values), s + CHUNK))
        out[sl] = optimal_bids(values[sl, None], floors[sl], cdf_for(sl))[:, 0]
    return out


def evaluate_simulator(settings: Settings, request_ids: pd.Series | np.ndarray,
                       landscape: np.ndarray, train: CensoredData, *,
                       km: BinnedLandscape | None = None) -> dict[str, float]:
    """Realised surplus of the model and the baselines on held-out simulator auctions.

    ``request_ids`` (N,) and ``landscape`` (N, 3M) are the model's held-out auctions (any
    order; bots are dropped here); ``train`` the training auctions for the KM baseline.
    """
    from training.shading import fit_turnbull

    ids = pd.Index(np.asarray(request_ids, dtype=object))
    if len(ids) != landscape.shape[0]:
        raise DataError(f"{len(ids)} request ids but {landscape.shape[0]} landscapes")
    if not ids.is_unique:
        raise DataError("held-out request ids must be unique (one auction per request)")
    train_truth, held = regenerate(settings, ids)
    rows = ids.get_indexer(pd.Index(held.request_id))
    land = landscape[rows]
    v, f, c = held.value, held.floor, held.competing
    km = km or fit_turnbull(train)
    alpha = tune_constant(train_truth) if len(train_truth.value) else 0.7
    oracle = held.oracle
    if oracle is None:
        raise DataError("no true landscapes for the held-out auctions")
    bids = {
        "model": price_rows(v, f, lambda sl: mixture_cdf(land[sl])),
        "oracle": price_rows(v, f, lambda sl: mixture_cdf(oracle[sl])),
        "best_constant": constant_bids(v, f, alpha),
        "km": price_rows(v, f, lambda sl: km.cdf),
        "truthful": np.where(v >= f, v, 0.0),
    }
    res = {name: realised(v, b, c, f) for name, b in bids.items()}
    out = {
        "surplus": res["model"]["surplus"], "oracle_surplus": res["oracle"]["surplus"],
        "best_constant_surplus": res["best_constant"]["surplus"],
        "km_surplus": res["km"]["surplus"], "truthful_surplus": res["truthful"]["surplus"],
        "win_rate": res["model"]["win_rate"], "spend": res["model"]["spend"],
        "best_constant_factor": alpha, "n_auctions": float(len(v)),
        "value_total": float(v.sum() / 1000.0),
    }
    for name in ("oracle", "best_constant", "km", "truthful"):
        out[f"{name}_win_rate"] = res[name]["win_rate"]
        out[f"{name}_spend"] = res[name]["spend"]
    oracle_s = out["oracle_surplus"]
    out["surplus_share_of_oracle"] = out["surplus"] / oracle_s if oracle_s > 0 else float("nan")
    for base in ("best_constant", "km"):
        b = out[f"{base}_surplus"]
        out[f"lift_vs_{base}"] = out["surplus"] / b - 1.0 if b > 0 else float("nan")
    return out


# ---------------------------------------------------------------------- DRSA

# Small data (8k rows, ~350 one-hot inputs): a narrow net with strong weight decay.
DRSA_CONFIG = ShadingConfig(n_components=4, hidden=16, n_layers=1, weight_decay=1e-2,
                            batch_size=256, lr=1e-3, max_epochs=200, patience=10)
DRSA_MIN_COUNT = 10       # a feature value must occur this often in train to get a column


def drsa_censoring(market_price: np.ndarray, observed: np.ndarray,
                   bid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer prices on bins ``(k - .5, k + .5]``: a win shows z's bin, a loss z >= b."""
    z = market_price.astype(np.float64)
    b = bid.astype(np.float64)
    kind = np.where(observed, np.where(z <= 0, Censoring.LEFT, Censoring.INTERVAL),
                    Censoring.RIGHT).astype(np.int64)
    lo = np.where(observed, np.maximum(z - 0.5, 0.0), b - 0.5)
    hi = np.where(observed, z + 0.5, 1.0)
    return kind, lo, hi


def drsa_onehot(indices: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """(N, len(vocab)) float32 one-hot of the rows' feature indices (N, fields)."""
    col = np.full(int(max(indices.max(initial=0), vocab.max(initial=0))) + 1, -1)
    col[vocab] = np.arange(len(vocab))
    mapped = col[indices]
    x = np.zeros((indices.shape[0], len(vocab)), dtype=np.float32)
    r, k = np.nonzero(mapped >= 0)
    x[r, mapped[r, k]] = 1.0
    return x


def evaluate_drsa(config: ShadingConfig | None = None, *,
                  min_count: int = DRSA_MIN_COUNT) -> dict[str, float]:
    """Test log-likelihood per auction of the mixture network vs Kaplan-Meier (DRSA 2259)."""
    from training.loaders.drsa import load_drsa_sample
    from training.shading import model_loglik

    cfg = config or DRSA_CONFIG
    train, test = load_drsa_sample("train"), load_drsa_sample("test")
    tr_idx, te_idx = train.features.index_matrix(), test.features.index_matrix()
    vocab = np.flatnonzero(np.bincount(tr_idx.ravel()) >= min_count)
    data = CensoredData(drsa_onehot(tr_idx, vocab),
                        *drsa_censoring(train.market_price, train.observed, train.bid))
    test_data = CensoredData(drsa_onehot(te_idx, vocab),
                             *drsa_censoring(test.market_price, test.observed, test.bid))
    perm = np.random.default_rng(cfg.seed).permutation(len(data))
    n_val = max(1, int(len(data) * cfg.val_share))
    result = fit(data.take(perm[n_val:]), data.take(perm[:n_val]), cfg)
    ll_model = model_loglik(predict_landscape(result.model, test_data.x), test_data)
    top = int(max(train.market_price.max(), test.market_price.max(), test.bid.max())) + 1
    km = kaplan_meier(train.market_price, train.observed, train.bid, max_price=top)
    # A tiny uniform share keeps a test price KM never saw from scoring -inf.
    ll_km = km.smoothed(1e-6).loglik(test_data.kind, test_data.lo, test_data.hi)
    return {"loglik_model": float(ll_model.mean()), "loglik_km": float(ll_km.mean()),
            "n_train": float(len(train)), "n_test": float(len(test)),
            "n_inputs": float(len(vocab)), "epochs": float(result.epochs)}


__all__ = ["ALPHAS", "DRSA_CONFIG", "TruthRows", "constant_bids", "drsa_censoring",
           "drsa_onehot", "evaluate_drsa", "evaluate_simulator", "price_rows", "realised",
           "regenerate", "true_landscape", "tune_constant"]
