"""What CTR quality is attainable on a simulated log: the oracle's gap, decomposed.

The issue scores a CTR model against the oracle (the simulator's true CTR). The oracle
knows each impression's latent user terms — the user's interest group and personal
click propensity (``quality``) — which no log reveals; a model can only infer them from
the user's own history of impressions and clicks. This module measures how much of
the oracle's log-loss gain that history can buy, with predictors that know *everything
else* exactly (the true coefficients of every observable term):

* ``no_user`` — the true model with the user's group and quality integrated out over
  their priors: what is attainable with no history at all;
* ``no_group`` / ``no_quality`` — one of the two latent terms integrated out, the other
  known: how much each is worth;
* ``history`` — the Bayes-optimal predictor keyed by the true person (so it is never
  fooled by a user id that changes across devices): a posterior over (group, quality)
  per user, on a grid (groups × Gauss-Hermite nodes of the quality prior), updated with
  every impression of the training days, then hour by hour through the held-out days.

All four are upper bounds for a model of the log: each knows the true structure and
coefficients, and ``history`` also the person behind every request. Where ``history``
captures less than a threshold, no model trained on that log can meet it. Everything
is regenerated from ``world.json`` (the same days :func:`simulator.simulate` wrote).

``python -m training.ctr_ceiling [--home DIR] [--holdout-days N]`` prints the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass

import numpy as np

from adplatform.config import Settings
from adplatform.errors import DataError
from training.metrics import auc, logloss

log = logging.getLogger(__name__)

US_PER_HOUR = 3_600_000_000


@dataclass
class CeilingConfig:
    holdout_days: int = 4      # the same last days as the CTR model's test split (full size)
    quality_nodes: int = 21    # Gauss-Hermite nodes: E[sigmoid] within 0.2% of Monte Carlo (test)
    update_every_s: int = 3600  # held-out days: each hour's outcomes are learnt before the next
    chunk: int = 50_000        # impressions per likelihood block: 50k x 8 x 21 float64 = 67 MB


@dataclass(frozen=True)
class _Impressions:
    """Human impressions of the run, in time order, with the oracle's logit split up."""

    ts: np.ndarray          # (n,) int64 µs
    person: np.ndarray      # (n,) int64 true user index
    topic: np.ndarray       # (n,) int64 creative topic
    rest: np.ndarray        # (n,) float64 logit without the affinity and user quality terms
    group: np.ndarray       # (n,) int64 true group
    quality: np.ndarray     # (n,) float64 true quality
    clicked: np.ndarray     # (n,) bool
    held: np.ndarray        # (n,) bool, on a held-out day


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _collect(settings: Settings, holdout_days: int) -> tuple[_Impressions, np.ndarray, float]:
    """(impressions, affinity (groups, topics), quality prior sd) regenerated from the run."""
    from simulator import SimulationError, read_run
    from simulator.population import HUMAN

    try:
        run = read_run(settings.workspace)
    except SimulationError as exc:
        raise DataError(f"{exc} (the CTR ceiling needs a simulated workspace)") from exc
    if not 1 <= holdout_days < run.days:
        raise DataError(f"holdout_days must be in [1, {run.days - 1}], got {holdout_days}")
    world = run.world
    cm, cat, pubs = world.ctr, world.catalog, world.publishers
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _Impressions.__dataclass_fields__}
    for ev in run.iter_days():
        st = ev.settlement
        human = ev.batch.kind[st.won_rows] == HUMAN        # over impressions (outcomes)
        rows = st.won_rows[human]                          # over the day's requests
        b, creative = ev.batch.take(rows), st.creative[rows]
        topic = cat.topic[creative].astype(np.int64)
        rest = (cm.base + cat.quality[creative] + pubs.effect[b.publisher]
                + cm.size_effect[b.size] + cm.hour_effect[b.local_hour]
                + cm.device_effect[b.device] + cm.app_effect * b.is_app)
        group = b.group.astype(np.int64)
        # The split must rebuild the simulator's own probability, or the bounds are moot.
        truth = st.outcomes.true_ctr[human]
        rebuilt = _sigmoid(rest + cm.affinity[group, topic] + b.quality)
        if not np.allclose(rebuilt, truth, rtol=0, atol=1e-12):
            raise DataError("the CTR ceiling's logit split no longer matches "
                            "simulator.outcomes.true_ctr; update training.ctr_ceiling")
        cols["ts"].append(st.outcomes.impression_ts[human])
        cols["person"].append(world.agents.user[b.agent])
        cols["topic"].append(topic)
        cols["rest"].append(rest)
        cols["group"].append(group)
        cols["quality"].append(b.quality)
        cols["clicked"].append(st.outcomes.clicked[human])
        cols["held"].append(np.full(len(rows), ev.day >= run.days - holdout_days))
    merged = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(merged["ts"], kind="stable")
    imps = _Impressions(**{k: v[order] for k, v in merged.items()})
    return imps, cm.affinity, float(world.config.user_re_sd)


def _grid(sd: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Quality values and prior weights: Gauss-Hermite for N(0, sd^2). Shapes (J,), (J,)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)      # weight exp(-x^2 / 2)
    return sd * x, w / w.sum()


def _probs(imps: _Impressions, idx: np.ndarray, affinity: np.ndarray,
           q: np.ndarray) -> np.ndarray:
    """P(click) on every grid point: (len(idx), groups, J)."""
    aff = affinity[:, imps.topic[idx]].T                  # (m, G)
    logit = imps.rest[idx, None, None] + aff[:, :, None] + q[None, None, :]
    return _sigmoid(logit)


def _marginals(imps: _Impressions, idx: np.ndarray, affinity: np.ndarray, q: np.ndarray,
               wq: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """The partial oracles on rows ``idx``: one latent term (or both) integrated out."""
    g_prior = np.full(affinity.shape[0], 1.0 / affinity.shape[0])
    out = {k: np.empty(len(idx)) for k in ("no_quality", "no_group", "no_user")}
    for s in range(0, len(idx), chunk):
        part = idx[s:s + chunk]
        p = _probs(imps, part, affinity, q)                # (m, G, J)
        own_g = p[np.arange(len(part)), imps.group[part], :]   # (m, J)
        known_q = _sigmoid(imps.rest[part, None] + affinity[:, imps.topic[part]].T
                           + imps.quality[part, None])     # (m, G)
        out["no_quality"][s:s + chunk] = own_g @ wq
        out["no_group"][s:s + chunk] = known_q @ g_prior
        out["no_user"][s:s + chunk] = np.einsum("mgj,g,j->m", p, g_prior, wq)
    return out


def _history(imps: _Impressions, affinity: np.ndarray, q: np.ndarray, wq: np.ndarray,
             cfg: CeilingConfig) -> np.ndarray:
    """Bayes-optimal P(click) of each held-out impression from its person's past."""
    people, person = np.unique(imps.person, return_inverse=True)
    n_groups = affinity.shape[0]
    # Log-posterior per person on the grid, starting at the prior (uniform groups).
    prior = np.log(np.full(n_groups, 1.0 / n_groups))[:, None] + np.log(wq)[None, :]
    logpost = np.zeros((len(people), n_groups, len(q)))  # log-likelihood so far; prior added

    def learn(part: np.ndarray, p: np.ndarray) -> None:
        """Add the outcomes of impressions ``part`` (P(click) on the grid: ``p``)."""
        y = imps.clicked[part][:, None, None]
        np.add.at(logpost, person[part], np.where(y, np.log(p), np.log1p(-p)))  # (m, G, J)

    def predict(part: np.ndarray, p: np.ndarray) -> np.ndarray:
        lp = logpost[person[part]] + prior                 # (m, G, J)
        lp -= lp.max(axis=(1, 2), keepdims=True)
        post = np.exp(lp)
        post /= post.sum(axis=(1, 2), keepdims=True)
        return np.einsum("mgj,mgj->m", post, p)

    train = np.flatnonzero(~imps.held)
    for s in range(0, len(train), cfg.chunk):
        part = train[s:s + cfg.chunk]
        learn(part, _probs(imps, part, affinity, q))
    held = np.flatnonzero(imps.held)
    out = np.empty(len(held))
    step = cfg.update_every_s * 1_000_000
    slot = (imps.ts[held] - imps.ts[held[0]]) // step
    bounds = np.flatnonzero(np.diff(slot)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(held)], strict=True):
        block = held[lo:hi]                  # one hour: a few thousand impressions
        p = _probs(imps, block, affinity, q)
        out[lo:hi] = predict(block, p)       # only what was known before this hour
        learn(block, p)
    return out


def ctr_ceiling(settings: Settings, cfg: CeilingConfig | None = None) -> dict[str, float]:
    """``ceiling_*`` figures on the held-out days of the workspace's simulated run."""
    cfg = cfg or CeilingConfig()
    imps, affinity, sd = _collect(settings, cfg.holdout_days)
    q, wq = _grid(sd, cfg.quality_nodes)
    held = np.flatnonzero(imps.held)
    y = imps.clicked[held]
    if y.sum() == 0 or (~imps.held).sum() == 0:
        raise DataError("the CTR ceiling needs clicks on the held-out days and training days")
    base = float(imps.clicked[~imps.held].mean())          # LL_base: the training base rate
    oracle = _sigmoid(imps.rest[held] + affinity[imps.group[held], imps.topic[held]]
                      + imps.quality[held])
    ll_base = logloss(y, np.full(len(held), base))
    ll_oracle = logloss(y, oracle)
    out = {"ceiling_n": float(len(held)), "ceiling_clicks": float(y.sum()),
           "ceiling_base_logloss": ll_base, "ceiling_oracle_logloss": ll_oracle,
           "ceiling_oracle_auc": auc(y, oracle)}
    preds = _marginals(imps, held, affinity, q, wq, cfg.chunk)
    preds["history"] = _history(imps, affinity, q, wq, cfg)
    for name, p in preds.items():
        ll = logloss(y, p)
        out[f"ceiling_{name}_logloss"] = ll
        out[f"ceiling_{name}_captured_gain"] = (ll_base - ll) / (ll_base - ll_oracle)
        out[f"ceiling_{name}_auc"] = auc(y, p)
    log.info("CTR ceiling: history captures %.3f of the oracle's gain (AUC %.4f vs %.4f)",
             out["ceiling_history_captured_gain"], out["ceiling_history_auc"],
             out["ceiling_oracle_auc"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ctr_ceiling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", help="workspace home (default: ADPLATFORM_HOME)")
    parser.add_argument("--holdout-days", type=int, default=CeilingConfig.holdout_days)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(home=args.home) if args.home else Settings()
    result = ctr_ceiling(settings, CeilingConfig(holdout_days=args.holdout_days))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["CeilingConfig", "ctr_ceiling"]
