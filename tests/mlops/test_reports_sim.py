"""The reports over a simulated event log: an A/B test of two bidding policies, the
delivery report, the drift report and the ``adplatform report`` commands.

Day 0 is bootstrap-policy traffic (variant ``explore``: the CUPED pre-period). On day 1
users are split by a hash of their id: ``bidexp:control`` keeps the bootstrap policy,
``bidexp:treatment`` bids e^0.5 ≈ 1.65 times higher. Higher bids must win more often and
spend more, and the report must say so.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import fields, replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from adplatform.eventlog import read_events, write_events
from adplatform.workspace import Workspace
from mlops.reports import (
    REQUEST_FEATURE_COLUMNS,
    ExperimentSpec,
    Outcomes,
    ReportError,
    Window,
    ab_report,
    default_windows,
    delivery_report,
    drift_report,
    load_campaigns,
    load_decisions,
)
from mlops.reports.cli import register
from simulator import BootstrapPolicy, WorldConfig, build_world, decisions_frame
from simulator.exchange import event_tables, settle
from simulator.policy import Decisions, Eligibility
from simulator.traffic import Clock, TrafficModel, generate, request_ids
from simulator.world import CAMPAIGNS_FILE

SEED = 5
RPD = 20_000
SMALL = WorldConfig(n_users=4_000, n_crawlers=8, n_datacenter_bots=4, datacenter_id_pool=40,
                    n_residential_bots=60)
DAY1 = date(2026, 1, 2)


def _treated(user_id: np.ndarray, device_id: np.ndarray) -> np.ndarray:
    key = np.where(user_id != "", user_id, device_id)
    return np.fromiter((zlib.crc32(str(k).encode()) % 2 == 1 for k in key), dtype=bool,
                       count=len(key))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    world = build_world(SMALL, seed=SEED)
    ws = Workspace(tmp_path_factory.mktemp("reports") / "ws").ensure()
    (ws.world / CAMPAIGNS_FILE).write_text(json.dumps(world.campaigns_document()))
    model, clock = TrafficModel.for_world(world), Clock.for_world(world, RPD)
    eligibility = Eligibility.for_world(world)
    for day in (0, 1):
        rng = np.random.default_rng(np.random.SeedSequence([SEED, 1, day]))
        batch = generate(model, rng, clock.day_times(rng, day, RPD),
                         request_ids("b", day, 0, RPD))
        base = BootstrapPolicy().decide(world, eligibility, batch,
                                        np.random.default_rng([SEED, 2, day]))
        variant = np.full(len(batch), "explore", dtype=object)
        dec = base
        if day == 1:
            high = BootstrapPolicy(price_shift=0.5).decide(
                world, eligibility, batch, np.random.default_rng([SEED, 3, day]))
            treat = _treated(batch.user_id, batch.device_id)
            dec = Decisions(**{f.name: np.where(treat, getattr(high, f.name),
                                                getattr(base, f.name))
                               for f in fields(Decisions)})
            variant = np.where(treat, "bidexp:treatment", "bidexp:control").astype(object)
        tables = event_tables(world, settle(world, batch, dec.price, dec.creative))
        tables["decisions"] = decisions_frame(world, batch, dec).assign(variant=variant)
        for name, frame in tables.items():
            if name != "truth":
                write_events(ws.events, name, frame, part=day)
    return ws


SPEC = ExperimentSpec("bidexp", {"control": 0.5, "treatment": 0.5}, "control")


def test_higher_bids_win_more_and_spend_more(workspace: Workspace, tmp_path: Path) -> None:
    decisions = load_decisions(workspace)
    outcomes = Outcomes.from_events(workspace.events)
    campaigns = load_campaigns(workspace.world / CAMPAIGNS_FILE)
    rep = ab_report(decisions, outcomes, SPEC, campaigns=campaigns)
    assert not rep.srm.mismatch
    assert rep.cuped.applied and rep.cuped.units_with_pre > 0.5
    for metric in ("win_rate", "spend_per_1k", "ecpm"):
        r = rep.result(metric)
        assert r.verdict == "higher" and r.sequential_verdict == "higher", metric
    assert rep.result("bid_rate").verdict == "inconclusive"
    control, treatment = rep.arm("control"), rep.arm("treatment")
    assert treatment.metrics["win_rate"] > control.metrics["win_rate"] + 0.05
    html, js = rep.write(tmp_path)
    assert html.name == "ab_bidexp.html" and json.loads(js.read_text())["report"] == "ab"


def test_delivery_report_adds_up(workspace: Workspace, tmp_path: Path) -> None:
    decisions = load_decisions(workspace, start=DAY1, end=DAY1)
    outcomes = Outcomes.from_events(workspace.events)
    campaigns = load_campaigns(workspace.world / CAMPAIGNS_FILE)
    busiest = max(campaigns)
    rep = delivery_report(decisions, outcomes, campaigns, DAY1)
    imps = read_events(workspace.events, "impressions")
    day_imps = imps.loc[imps["request_id"].str.startswith("b0001-")]
    assert rep.totals.requests == RPD
    assert rep.totals.impressions == len(day_imps)
    assert rep.totals.spend == pytest.approx(day_imps["cost"].sum())
    assert sum(r.spend for r in rep.campaigns) == pytest.approx(rep.totals.spend)
    assert sum(r.requests for r in rep.publishers) == RPD
    assert sum(r.impressions for r in rep.publishers) == rep.totals.impressions
    row = rep.campaigns[0]
    assert row.pacing == pytest.approx(row.spend / campaigns[row.key].daily_budget)
    assert rep.day_fraction > 0.99
    # A tiny budget overspends; a paused campaign that delivers is flagged.
    top = rep.campaigns[0].key
    changed = {**campaigns, top: replace(campaigns[top], daily_budget=1.0),
               busiest: replace(campaigns[busiest], status="paused")}
    flagged = delivery_report(decisions, outcomes, changed, DAY1)
    assert "over budget" in flagged.campaign(top).flags
    if flagged.campaign(busiest).impressions:
        assert "paused but delivering" in flagged.campaign(busiest).flags
    html, js = flagged.write(tmp_path)
    assert "over budget" in html.read_text(encoding="utf-8")
    assert json.loads(js.read_text())["day"] == DAY1.isoformat()
    with pytest.raises(ReportError, match="no decisions"):
        delivery_report(decisions, outcomes, campaigns, date(2030, 1, 1))


def test_drift_report_flags_calibration_and_feature_shift(workspace: Workspace,
                                                           tmp_path: Path) -> None:
    decisions = load_decisions(workspace)
    outcomes = Outcomes.from_events(workspace.events, request_columns=REQUEST_FEATURE_COLUMNS)
    ref, cur = default_windows(decisions["ts"])
    assert cur.end.date() == DAY1 and (cur.end - cur.start).days == 1
    rng = np.random.default_rng(0)
    hours = pd.date_range("2026-01-01", periods=48, freq="h", tz="UTC")
    feats = pd.DataFrame({"entity": np.tile(np.arange(50), 48),
                          "event_timestamp": np.repeat(hours, 50),
                          "stable": rng.normal(size=2400),
                          "shifted": rng.normal(size=2400) + np.repeat(np.arange(48) >= 24, 50)})
    rep = drift_report(decisions, outcomes, reference=ref, current=cur,
                       feature_tables={"toy_stats": feats})
    # The bootstrap policy logs a 1% prior as pCTR; the world clicks about twice as often.
    cal = {(c.model_version, c.window): c for c in rep.calibration}
    assert cal[("(none)", "current")].status == "miscalibrated"
    assert cal[("(none)", "current")].ratio > 1.1
    # The same traffic model on both days: the request context is stable.
    for name in ("device_type", "os", "country", "format", "size", "hour"):
        assert rep.feature("requests", name).status == "ok", name
    assert rep.feature("toy_stats", "shifted").status == "drift"
    assert rep.feature("toy_stats", "stable").status == "ok"
    assert rep.feature("toy_stats", "entity").status == "ok"
    # Half the traffic bids 1.65x higher on day 1: bids and wins move.
    market = {m.metric: m for m in rep.market}
    assert market["win rate"].current > market["win rate"].reference
    assert market["mean bid (CPM)"].change > 0.1
    assert any("toy_stats.shifted" in f for f in rep.flagged)
    html, js = rep.write(tmp_path)
    assert html.read_text(encoding="utf-8").count("<img ") == 3
    assert json.loads(js.read_text())["flagged"] == rep.flagged
    window = Window.parse("2026-01-01T00:00:00+00:00/2026-01-01T23:59:59+00:00")
    assert window.end.date() == date(2026, 1, 1)
    with pytest.raises(ReportError):
        Window.parse("yesterday")


@pytest.fixture
def cli(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[typer.Typer]:
    from adplatform.config import get_settings

    monkeypatch.setenv("ADPLATFORM_HOME", str(workspace.root))
    get_settings.cache_clear()
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root."""

    register(app)
    yield app
    get_settings.cache_clear()


def test_cli_commands(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(cli, ["report", "ab", "--experiment", "bidexp", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "ab_bidexp.html").exists() and "experiment bidexp" in res.output
    res = runner.invoke(cli, ["report", "ab", "--experiment", "nope", "--out", str(out)])
    assert res.exit_code == 2 and "variants seen" in res.output
    res = runner.invoke(cli, ["report", "delivery", "--date", DAY1.isoformat(), "--out",
                              str(out)])
    assert res.exit_code == 0, res.output
    assert (out / f"delivery_{DAY1.isoformat()}.html").exists()
    res = runner.invoke(cli, ["report", "drift", "--out", str(out), "--fail-on-drift"])
    assert res.exit_code == 1, res.output            # the 1% prior is miscalibrated
    assert "flagged: calibration" in res.output and (out / "drift.html").exists()
    res = runner.invoke(cli, ["report", "drift", "--out", str(out), "--reference",
                              "2026-01-01T00:00:00/2026-01-01T23:59:59", "--current",
                              "2026-01-02T00:00:00/2026-01-02T23:59:59"])
    assert res.exit_code == 0, res.output
