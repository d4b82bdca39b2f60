"""An A/B test in the simulator where the treatment is truly better: the report must say so.

Day 0 is served by the bootstrap policy (variant ``explore``): random creatives, random
prices around a prior value, propensities logged. From day 0's logged outcomes alone a
*learned policy* is fitted:

* CTR per creative, smoothed towards the base rate (impressions and clicks of day 0);
* the project's bid-shading model (:func:`models.shading.fit`, the censored mixture
  network) on day 0's auctions, censored as in training (:func:`training.shading.censoring`);

and it bids on the creative with the highest expected value, at the shaded price
``argmax_b (v − b) P(win | b)`` (:func:`models.shading_landscape.optimal_bids`).

On day 1 users (requests without a user id) are split by a hash: ``policyexp:control`` keeps the bootstrap
policy, ``policyexp:treatment`` runs the learned one. That the treatment is better is
established from the ground truth first: both policies are replayed on *all* of day 1's
requests (common random numbers, so each request gives the same clicks whatever policy
shows it an ad) and the learned policy earns more surplus and pays less per click. The
report, which sees each arm on its own half of the traffic, must then call surplus and
ROI better (fixed-horizon and always-valid sequential), with no sample-ratio mismatch,
and its interval must cover the whole-day difference.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest

from adplatform.eventlog import write_events
from adplatform.workspace import Workspace
from mlops.reports import ExperimentSpec, Outcomes, ab_report, load_campaigns, load_decisions
from models.shading import CensoredData, ShadingConfig, ShadingNet, fit, predict_landscape
from models.shading_landscape import mixture_cdf, optimal_bids
from simulator import BootstrapPolicy, WorldConfig, build_world, decisions_frame
from simulator.devices import DEVICE_TYPES
from simulator.exchange import Settlement, event_tables, settle
from simulator.inventory import SIZES
from simulator.policy import Decisions, Eligibility
from simulator.traffic import Clock, RequestBatch, TrafficModel, generate, request_ids
from simulator.world import CAMPAIGNS_FILE, World
from training.shading import censoring

pytestmark = pytest.mark.slow

SEED = 11
RPD = 60_000
# The unit is the user and activity is heavy-tailed: the power comes from the number of
# users (4,000 users gave z ~ 3.4 on surplus at any volume; 20,000 give ~ 5.7).
WORLD = WorldConfig(n_users=20_000, n_crawlers=8, n_datacenter_bots=4, datacenter_id_pool=40,
                    n_residential_bots=60)
SPEC = ExperimentSpec("policyexp", {"control": 0.5, "treatment": 0.5}, "control")
CTR_PRIOR_WEIGHT = 20.0   # impressions of pseudo-evidence at the base rate per creative


def _treated(user_id: np.ndarray, request_id: np.ndarray) -> np.ndarray:
    """The decision engine's split: by user id, or by request where there is none (the
    report's randomisation unit, :func:`mlops.reports.events.unit_ids`)."""
    key = np.where(user_id != "", user_id, request_id)
    return np.fromiter((zlib.crc32(f"policyexp:{k}".encode()) % 2 == 1 for k in key),
                       dtype=bool, count=len(key))


def _context(world: World, batch: RequestBatch) -> np.ndarray:
    """(n, F) float32 context the shading model reads: one-hots of publisher, size, device;
    is_app; local hour (the model encodes it as sin/cos)."""
    n, p = len(batch), len(world.publishers.domain)
    x = np.zeros((n, p + len(SIZES) + len(DEVICE_TYPES) + 2), dtype=np.float32)
    rows = np.arange(n)
    x[rows, batch.publisher] = 1.0
    x[rows, p + batch.size] = 1.0
    x[rows, p + len(SIZES) + batch.device] = 1.0
    x[:, -2] = batch.is_app
    x[:, -1] = batch.local_hour
    return x


@dataclass(frozen=True)
class LearnedPolicy:
    """Greedy on expected value, priced by the shading model; learned from logged day 0."""

    ctr: np.ndarray           # (C,) smoothed CTR per creative
    shading: ShadingNet

    @classmethod
    def fit(cls, world: World, day0: RequestBatch, dec: Decisions, s: Settlement
            ) -> LearnedPolicy:
        n_creatives = len(world.catalog.campaign)
        shown = s.creative[s.won_rows]
        imps = np.bincount(shown, minlength=n_creatives)
        clicks = np.bincount(shown[s.outcomes.clicked], minlength=n_creatives)
        base = clicks.sum() / imps.sum()
        ctr = (clicks + CTR_PRIOR_WEIGHT * base) / (imps + CTR_PRIOR_WEIGHT)
        kind, lo, hi, keep = censoring(dec.price, s.auction.won, s.auction.min_bid_to_win,
                                       day0.floor)
        rows = np.flatnonzero(keep & dec.bid)
        x = _context(world, day0)
        data = CensoredData(x[rows], kind[rows], lo[rows], hi[rows])
        n_val = len(data) // 10          # the last tenth by time validates
        res = fit(data.take(slice(0, len(data) - n_val)), data.take(slice(len(data) - n_val,
                                                                          None)),
                  ShadingConfig(max_epochs=30), hour_columns=(x.shape[1] - 1,))
        return cls(ctr=ctr, shading=res.model)

    def decide(self, world: World, eligibility: Eligibility, batch: RequestBatch) -> Decisions:
        per_click = BootstrapPolicy().value_per_click(world, np.arange(len(self.ctr)))
        value = np.where(eligibility.mask(batch), self.ctr * per_click, -1.0)
        creative = value.argmax(axis=1)                                  # (n,)
        v = value.max(axis=1)                                            # (n,) USD / imp
        landscape = predict_landscape(self.shading, _context(world, batch))
        price = optimal_bids(np.maximum(v, 0.0)[:, None] * 1000.0, batch.floor,
                             mixture_cdf(landscape))[:, 0]               # (n,) CPM, 0 = none
        bid = (v > 0) & (price > 0)
        return Decisions(
            bid=bid, price=np.where(bid, price, np.nan),
            creative=np.where(bid, creative, -1),
            reason=np.where(v <= 0, "no_eligible", np.where(bid, "bid", "below_floor")
                            ).astype(object),
            propensity=np.ones(len(batch)),                              # deterministic
            pctr=np.where(bid, self.ctr[creative], np.nan),
            value=np.where(bid, v, np.nan))


def _day(world: World, day: int) -> RequestBatch:
    model, clock = TrafficModel.for_world(world), Clock.for_world(world, RPD)
    rng = np.random.default_rng(np.random.SeedSequence([SEED, 1, day]))
    return generate(model, rng, clock.day_times(rng, day, RPD), request_ids("p", day, 0, RPD))


def _surplus(world: World, s: Settlement) -> tuple[float, float, int]:
    """(surplus, cost, clicks) of a settlement, valued as the report values it."""
    cat = world.catalog
    camp = cat.campaign[s.creative[s.won_rows]]
    clicks = s.outcomes.clicked
    conv = np.zeros(len(s.won_rows), dtype=bool)
    conv[s.outcomes.conv_row] = True
    value = np.where(np.isnan(cat.cpc[camp]), cat.cpa[camp] * conv,
                     np.nan_to_num(cat.cpc[camp]) * clicks)
    cost = float(s.price[s.won_rows].sum()) / 1000.0
    return float(value.sum()) - cost, cost, int(clicks.sum())


@dataclass(frozen=True)
class Experiment:
    workspace: Workspace
    full_day: dict[str, tuple[float, float, int]]   # policy -> (surplus, cost, clicks) on all


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    world = build_world(WORLD, seed=SEED)
    ws = Workspace(tmp_path_factory.mktemp("policyexp") / "ws").ensure()
    (ws.world / CAMPAIGNS_FILE).write_text(json.dumps(world.campaigns_document()))
    eligibility = Eligibility.for_world(world)
    bootstrap = BootstrapPolicy()

    def log(day: int, batch: RequestBatch, dec: Decisions, variant: np.ndarray) -> Settlement:
        s = settle(world, batch, dec.price, dec.creative)
        tables = event_tables(world, s)
        tables["decisions"] = decisions_frame(world, batch, dec).assign(variant=variant)
        for name, frame in tables.items():
            if name != "truth":
                write_events(ws.events, name, frame, part=day)
        return s

    day0 = _day(world, 0)
    dec0 = bootstrap.decide(world, eligibility, day0, np.random.default_rng([SEED, 2, 0]))
    s0 = log(0, day0, dec0, np.full(len(day0), "explore", dtype=object))
    learned = LearnedPolicy.fit(world, day0, dec0, s0)

    day1 = _day(world, 1)
    base = bootstrap.decide(world, eligibility, day1, np.random.default_rng([SEED, 2, 1]))
    better = learned.decide(world, eligibility, day1)
    full = {name: _surplus(world, settle(world, day1, d.price, d.creative))
            for name, d in (("bootstrap", base), ("learned", better))}
    treat = _treated(day1.user_id, day1.request_id)
    dec1 = Decisions(**{f.name: np.where(treat, getattr(better, f.name), getattr(base, f.name))
                        for f in fields(Decisions)})
    log(1, day1, dec1, np.where(treat, "policyexp:treatment", "policyexp:control"
                                ).astype(object))
    return Experiment(ws, full)


def test_the_learned_policy_is_truly_better_on_the_whole_day(experiment: Experiment) -> None:
    boot, learned = experiment.full_day["bootstrap"], experiment.full_day["learned"]
    assert learned[0] > boot[0] * 1.5                    # surplus
    assert learned[1] / learned[2] < boot[1] / boot[2]   # cost per click


def test_the_report_finds_the_better_policy(experiment: Experiment, tmp_path: Path) -> None:
    ws = experiment.workspace
    rep = ab_report(load_decisions(ws), Outcomes.from_events(ws.events), SPEC,
                    campaigns=load_campaigns(ws.world / CAMPAIGNS_FILE))
    assert not rep.srm.mismatch
    assert rep.cuped.applied
    # Fixed-horizon and always-valid sequential, both in the right direction.
    for metric in ("surplus_per_1k", "roi"):
        r = rep.result(metric)
        assert r.verdict == "better" and r.sequential_verdict == "better", (metric, r)
    # The estimate covers the truth: the whole-day replay's surplus difference per 1000
    # requests lies in the report's 95% interval (one seeded draw of a 95% interval).
    boot, learned = experiment.full_day["bootstrap"], experiment.full_day["learned"]
    truth = (learned[0] - boot[0]) / RPD * 1000.0
    lo, hi = rep.result("surplus_per_1k").comparison.diff_ci
    assert lo <= truth <= hi, (lo, truth, hi)
    html, js = rep.write(tmp_path)
    doc = json.loads(js.read_text())
    assert doc["report"] == "ab" and html.exists()
