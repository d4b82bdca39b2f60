"""Batch simulation: determinism, schema conformance, no leak of the latent group."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from adplatform.eventlog import SCHEMAS, TABLES, read_events
from adplatform.workspace import Workspace
from simulator import SimulationError, SimulationSummary, simulate
from tests.simulator.conftest import SMALL, SMALL_DAYS, SMALL_RPD, run_small

EVENT_TABLES = [t for t in TABLES if t != "truth"]


def _hashes(ws: Workspace) -> dict[str, str]:
    out = {}
    for sub in ("events", "truth", "world"):
        for f in sorted((ws.root / sub).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(ws.root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_same_seed_gives_byte_identical_files(small_run: tuple[Workspace, SimulationSummary],
                                              tmp_path: Path) -> None:
    ws, _ = small_run
    again, _ = run_small(tmp_path / "again")
    first = _hashes(ws)
    assert first == _hashes(again)
    assert any(k.startswith("events/clicks/") for k in first)
    other, _ = run_small(tmp_path / "other", seed=6)
    assert _hashes(other) != first


def test_every_file_conforms_to_the_schema(small_run: tuple[Workspace, SimulationSummary]
                                           ) -> None:
    ws, _ = small_run
    for table in TABLES:
        root = ws.truth if table == "truth" else ws.events
        files = sorted((root / table).glob("date=*/part-*.parquet"))
        assert files, f"no files for {table}"
        for f in files:
            assert pq.read_schema(f).equals(SCHEMAS[table], check_metadata=False), f
            day = f.parent.name.removeprefix("date=")
            ts = pq.read_table(f, columns=["ts"]).column("ts").to_pandas()
            assert (ts.dt.strftime("%Y-%m-%d") == day).all()


def test_layout_and_time_range(small_run: tuple[Workspace, SimulationSummary]) -> None:
    ws, summary = small_run
    req = read_events(ws.events, "requests")
    assert len(req) == summary.requests == SMALL_DAYS * SMALL_RPD
    assert req["ts"].min() >= pd.Timestamp("2026-01-01", tz="UTC")
    assert req["ts"].max() < pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=SMALL_DAYS)
    assert req["request_id"].is_unique
    assert (req["imp_id"] == "1").all()
    assert set(req["format"]) == {"banner", "video"}
    assert set(req["device_type"]) <= {2, 4, 5}
    app = req[req["is_app"]]
    assert app["domain"].str.startswith("com.").all()
    assert (req.loc[~req["is_app"], "domain"].str.endswith(".example")).all()
    assert sorted(p.name for p in ws.world.iterdir()) == ["campaigns.json", "world.json"]
    doc = json.loads((ws.world / "world.json").read_text())
    assert doc["days"] == SMALL_DAYS and doc["requests_per_day"] == SMALL_RPD


def test_summary_matches_the_files(small_run: tuple[Workspace, SimulationSummary]) -> None:
    ws, s = small_run
    counts = {t: len(read_events(ws.events, t)) for t in EVENT_TABLES}
    assert counts["impressions"] == s.impressions == s.wins
    assert counts["clicks"] == s.clicks and counts["conversions"] == s.conversions
    assert counts["auctions"] == s.bids
    assert counts["decisions"] == s.requests
    assert s.clicks > 0 and s.conversions > 0
    assert 0.08 < s.bot_share < 0.12
    assert 0.3 < s.win_rate < 0.9
    assert s.files and all(f.endswith(".parquet") for f in s.files)


def test_latent_group_never_reaches_the_event_log(small_run: tuple[Workspace, SimulationSummary]
                                                  ) -> None:
    ws, _ = small_run
    for table in EVENT_TABLES:
        assert "user_group" not in SCHEMAS[table].names
        df = read_events(ws.events, table)
        assert not {c for c in df.columns if "group" in c or "bot" in c}
    truth = read_events(ws.truth, "truth")
    assert set(truth["user_group"].unique()) <= set(range(8)) | {-1}
    campaigns = (ws.world / "campaigns.json").read_text()
    assert "user_group" not in campaigns and "quality" not in campaigns
    assert not (ws.events / "truth").exists()


def test_decisions_are_logged_with_propensities(small_run: tuple[Workspace, SimulationSummary]
                                                ) -> None:
    ws, _ = small_run
    dec = read_events(ws.events, "decisions")
    assert set(dec["policy"]) == {"bootstrap"} and set(dec["variant"]) == {"explore"}
    assert set(dec["reason"]) <= {"bid", "no_eligible", "explore_nobid"}
    assert (dec["propensity"] > 0).all()
    bids = dec[dec["bid"]]
    assert (bids["reason"] == "bid").all()
    assert bids["campaign_id"].notna().all() and bids["creative_id"].notna().all()
    assert dec.loc[~dec["bid"], "price"].isna().all()
    assert dec.loc[~dec["bid"], "creative_id"].isna().all()
    req = read_events(ws.events, "requests").set_index("request_id")
    floor = req.loc[bids["request_id"], "bidfloor"].to_numpy()
    assert (bids["price"].to_numpy() >= floor).all()
    assert bids["price"].std() / bids["price"].mean() > 0.3      # real bid variation


def test_rerun_replaces_previous_tables(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").ensure()
    simulate(days=3, seed=1, workspace=ws, config=SMALL, requests_per_day=500)
    simulate(days=1, seed=1, workspace=ws, config=SMALL, requests_per_day=500)
    days = {p.name for p in (ws.events / "requests").iterdir()}
    assert days == {"date=2026-01-01"}


def test_bad_arguments_are_errors(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").ensure()
    with pytest.raises(SimulationError):
        simulate(days=0, seed=1, workspace=ws, config=SMALL, requests_per_day=10)
    with pytest.raises(SimulationError):
        simulate(days=1, seed=1, workspace=ws, config=SMALL, requests_per_day=0)
