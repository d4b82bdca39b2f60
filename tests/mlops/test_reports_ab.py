"""The A/B report end to end on synthetic event logs with a known effect."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlops.reports import (
    CampaignInfo,
    ExperimentSpec,
    Outcomes,
    ReportError,
    ab_report,
    decision_outcomes,
    infer_experiment,
    load_experiment,
)

START = datetime(2026, 3, 10, tzinfo=UTC)
CAMPAIGNS = {
    "c1": CampaignInfo("c1", "cpc", 0.5, None, 100.0, "active"),
    "c2": CampaignInfo("c2", "cpa", None, 10.0, 100.0, "active"),
}


def synthetic_log(seed: int, *, users: int = 4000, lift: float = 0.0, share: float = 0.5,
                  days: int = 3, pre_days: int = 2, ctr: float = 0.02, name: str = "exp"
                  ) -> tuple[pd.DataFrame, Outcomes]:
    """Decisions and outcome tables: ``pre_days`` of variant ``explore``, then ``days`` of
    ``exp:control`` / ``exp:treatment`` assigned per user; the treatment multiplies every
    user's click probability by ``1 + lift``. 30% of clicks are logged twice."""
    rng = np.random.default_rng(seed)
    p_user = rng.beta(1.0, (1 - ctr) / ctr, users)
    treated = rng.random(users) < share
    per_user = 1 + rng.poisson(3.0 * (days + pre_days), users)
    user = np.repeat(np.arange(users), per_user)
    n = len(user)
    t0 = START - timedelta(days=pre_days)
    ts = pd.Series(pd.Timestamp(t0) + pd.to_timedelta(rng.random(n) * (days + pre_days) * 86400,
                                                    "s"))
    in_exp = (ts >= START).to_numpy()
    arm = np.where(treated[user], "treatment", "control")
    variant = np.where(in_exp, np.char.add(f"{name}:", arm.astype(str)), "explore")
    rid = np.char.add("r", np.arange(n).astype(str)).astype(object)
    bid = rng.random(n) < 0.9
    won = bid & (rng.random(n) < 0.6)
    price = np.where(bid, rng.lognormal(1.5, 0.3, n), np.nan)
    campaign = np.where(rng.random(n) < 0.7, "c1", "c2").astype(object)
    boost = np.where(in_exp & treated[user], 1 + lift, 1.0)
    clicked = won & (rng.random(n) < p_user[user] * boost)
    converted = clicked & (rng.random(n) < 0.1)
    decisions = pd.DataFrame({
        "ts": ts, "request_id": rid, "imp_id": "1", "bid": bid, "price": price,
        "campaign_id": pd.Series(campaign).where(bid, None), "variant": variant, "policy": "p",
        "pctr": np.where(bid, ctr, np.nan), "model_version": "ctr=1", "reason": "bid"})
    uid = np.char.add("u", user.astype(str)).astype(object)
    requests = pd.DataFrame({"ts": ts, "request_id": rid, "imp_id": "1", "user_id": uid,
                             "device_id": uid, "publisher_id": "pub1"})
    auctions = pd.DataFrame({"ts": ts[bid], "request_id": rid[bid], "imp_id": "1",
                             "bid_price": price[bid], "won": won[bid],
                             "paid_price": np.where(won, price, 0.0)[bid],
                             "min_bid_to_win": np.nan})
    impressions = pd.DataFrame({"ts": ts[won], "request_id": rid[won], "imp_id": "1",
                                "campaign_id": campaign[won], "publisher_id": "pub1",
                                "cost": price[won] / 1000.0})
    twice = clicked & (rng.random(n) < 0.3)
    click_rows = np.r_[np.flatnonzero(clicked), np.flatnonzero(twice)]
    clicks = pd.DataFrame({"ts": ts[click_rows], "request_id": rid[click_rows], "imp_id": "1"})
    conversions = pd.DataFrame({"ts": ts[converted], "request_id": rid[converted],
                                "imp_id": "1", "campaign_id": campaign[converted],
                                "value": 20.0})
    return decisions, Outcomes(requests, auctions, impressions, clicks, conversions)


def spec(**kw: object) -> ExperimentSpec:
    base: dict[str, object] = {"name": "exp", "split": {"control": 0.5, "treatment": 0.5},
                               "control": "control"}
    return ExperimentSpec(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def lifted() -> tuple[pd.DataFrame, Outcomes]:
    return synthetic_log(1, users=10_000, lift=0.3)


def test_known_ctr_lift_is_found_with_cuped_and_sequential(
        lifted: tuple[pd.DataFrame, Outcomes], tmp_path: Path) -> None:
    decisions, outcomes = lifted
    rep = ab_report(decisions, outcomes, spec(), campaigns=CAMPAIGNS)
    ctr = rep.result("ctr")
    assert ctr.verdict == "better" and ctr.sequential_verdict == "better"
    assert ctr.comparison.lift_ci[0] < 0.3 < ctr.comparison.lift_ci[1]
    assert ctr.comparison.cuped and rep.cuped.applied and rep.cuped.units_with_pre > 0.9
    assert ctr.first_significant_look is not None
    assert not rep.srm.mismatch
    assert START <= rep.start < START + timedelta(minutes=5)
    assert rep.result("cpc").verdict in ("better", "inconclusive")
    assert rep.result("bid_rate").verdict in ("inconclusive", "higher", "lower")
    # Clicks are deduplicated: one per clicked impression.
    exp_rows = decisions["ts"] >= START
    clicked = set(outcomes.clicks["request_id"]) & set(decisions.loc[exp_rows, "request_id"])
    assert sum(a.totals["clicked"] for a in rep.arms) == len(clicked)
    html, js = rep.write(tmp_path)
    page = html.read_text(encoding="utf-8")
    assert page.count("<img ") == 3 and "data:image/png;base64," in page
    doc = json.loads(js.read_text(encoding="utf-8"))
    assert doc["experiment"]["name"] == "exp" and doc["srm"]["mismatch"] is False
    ctr_doc = next(r for r in doc["results"] if r["metric"] == "ctr")
    assert ctr_doc["verdict"] == "better" and ctr_doc["comparison"]["cuped"] is True


def test_value_and_surplus_use_the_campaign_goal(lifted: tuple[pd.DataFrame, Outcomes]
                                                 ) -> None:
    decisions, outcomes = lifted
    j = decision_outcomes(decisions, outcomes, CAMPAIGNS)
    cpc, cpa = j["campaign_id"] == "c1", j["campaign_id"] == "c2"
    assert j.loc[cpc, "value"].sum() == pytest.approx(0.5 * j.loc[cpc, "clicked"].sum())
    assert j.loc[cpa, "value"].sum() == pytest.approx(10.0 * j.loc[cpa, "converted"].sum())
    assert (j["surplus"] == j["value"] - j["cost"]).all()
    assert j["clicked"].max() == 1.0 and (j["clicked"] <= j["impression"]).all()
    no_campaigns = decision_outcomes(decisions, outcomes)
    assert no_campaigns["value"].isna().all()


def test_aa_gives_no_verdict_on_ctr() -> None:
    decisions, outcomes = synthetic_log(2, users=3000)
    rep = ab_report(decisions, outcomes, spec(), campaigns=CAMPAIGNS)
    assert rep.result("ctr").verdict == "inconclusive"
    assert rep.result("ctr").sequential_verdict == "inconclusive"
    assert not rep.srm.mismatch


def test_sample_ratio_mismatch_is_reported_first(tmp_path: Path) -> None:
    decisions, outcomes = synthetic_log(3, users=4000, share=0.56)
    rep = ab_report(decisions, outcomes, spec(), campaigns=CAMPAIGNS)
    assert rep.srm.mismatch
    assert rep.warnings[0].startswith("sample ratio mismatch")
    html, _ = rep.write(tmp_path)
    page = html.read_text(encoding="utf-8")
    assert page.index("sample ratio mismatch") < page.index("<h2>Arms</h2>")


def test_request_unit_without_pre_period_and_without_campaigns() -> None:
    decisions, outcomes = synthetic_log(4, users=1500, pre_days=0, lift=0.3)
    rep = ab_report(decisions, outcomes, spec(unit="request"))
    assert not rep.cuped.applied
    assert all(r.metric not in ("roi", "surplus_per_1k") for r in rep.results)
    assert any("no campaigns" in w for w in rep.warnings)
    assert rep.srm.counts["control"] + rep.srm.counts["treatment"] == len(decisions)


def test_experiment_specs(tmp_path: Path, lifted: tuple[pd.DataFrame, Outcomes]) -> None:
    decisions, _ = lifted
    inferred = infer_experiment("exp", decisions)
    assert inferred.split == {"control": 1.0, "treatment": 1.0} and inferred.control == "control"
    with pytest.raises(ReportError, match="variants seen"):
        infer_experiment("other", decisions)
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"name": "exp", "split": {"a": 0.9, "b": 0.1},
                                "start": "2026-03-10T00:00:00", "unit": "request"}))
    loaded = load_experiment(path)
    assert loaded.control == "a" and loaded.start == START and loaded.unit == "request"
    assert ExperimentSpec.from_json(loaded.to_json()) == loaded
    for bad in ({"split": {"control": 1.0}}, {"control": "nope"},
                {"split": {"control": 0.5, "treatment": 0.0}}, {"unit": "device"},
                {"start": START, "end": START}):
        with pytest.raises(ReportError):
            spec(**bad)
    weighted = SimpleNamespace(name="shade", variants=[
        SimpleNamespace(name="control", weight=9.0), SimpleNamespace(name="treatment", weight=1.0),
        SimpleNamespace(name="off", weight=0.0)])
    from_exp = ExperimentSpec.from_experiment(weighted)
    assert from_exp.split == {"control": 9.0, "treatment": 1.0} and from_exp.control == "control"
    shadows = pd.Series(["control", "exp:treatment", "control:shadow:challenger", "other"])
    assert spec().arm_of(shadows).tolist()[:2] == ["control", "treatment"]
    assert spec().arm_of(shadows).iloc[2:].isna().all()
    with_shadow = pd.concat([decisions, decisions.head(5).assign(
        variant="exp:control:shadow:challenger")])
    assert infer_experiment("exp", with_shadow).split == inferred.split
    with pytest.raises(ReportError, match="no decisions of arms"):
        ab_report(decisions, lifted[1], spec(name="zzz", split={"x": 1, "y": 1}, control="x"))


def test_units_in_both_arms_are_flagged() -> None:
    decisions, outcomes = synthetic_log(5, users=800)
    d = decisions.copy()
    in_exp = d["ts"] >= START
    flip = np.random.default_rng(0).random(len(d)) < 0.5     # randomised per request
    d.loc[in_exp, "variant"] = np.where(flip[in_exp.to_numpy()], "exp:treatment", "exp:control")
    rep = ab_report(d, outcomes, spec())
    assert any("more than one arm" in w for w in rep.warnings)
    assert math.isfinite(rep.result("ctr").comparison.p_value)


def test_public_api_resolves() -> None:
    import mlops.reports as reports

    assert sorted(reports.__all__) == sorted(reports._EXPORTS)
    for name in reports.__all__:
        assert getattr(reports, name) is not None
    with pytest.raises(AttributeError):
        reports.__getattr__("nope")


def test_a_metric_without_events_in_one_arm_is_insufficient_data(
        lifted: tuple[pd.DataFrame, Outcomes]) -> None:
    decisions, outcomes = lifted
    # Drop every conversion of the control arm: CVR's control side is 0/N.
    control = set(decisions.loc[decisions["variant"] == "exp:control", "request_id"])
    kept = outcomes.conversions[~outcomes.conversions["request_id"].isin(control)]
    rep = ab_report(decisions, dataclasses.replace(outcomes, conversions=kept), spec(),
                    campaigns=CAMPAIGNS)
    cvr = rep.result("cvr")
    assert cvr.verdict == "insufficient data" and cvr.sequential_verdict == "insufficient data"
    assert cvr.first_significant_look is None
    assert rep.result("ctr").verdict == "better"         # other metrics are unaffected
