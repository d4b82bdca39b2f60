"""Skew check: clean after materialization, and catches injected skew."""

from __future__ import annotations

import pandas as pd

from adplatform.config import Settings
from features.skew import skew_check
from features.store import offline_dir, open_store


def test_no_skew_after_materialize(trained_workspace: Settings) -> None:
    report = skew_check(trained_workspace, sample=200)
    assert report.mismatch, "the check compared nothing"
    assert report.ok, {k: v for k, v in report.mismatch.items() if v > 0}


def test_injected_skew_is_caught(trained_workspace: Settings) -> None:
    store = open_store(trained_workspace)
    latest = pd.read_parquet(offline_dir(trained_workspace) / "ad_stats.parquet")
    latest = latest.sort_values("event_timestamp").groupby("creative_id").tail(1)
    bad = latest.copy()
    bad["ad_clicks_7d"] = bad["ad_clicks_7d"] + 1000      # a writer that bypassed the pipeline
    store.write_to_online_store("ad_stats", bad)
    try:
        report = skew_check(trained_workspace, sample=200)
        assert report.mismatch["ad_stats:ad_clicks_7d"] > 0.9
        assert not report.ok
        assert report.mismatch["ad_stats:ad_imps_7d"] == 0.0
    finally:
        store.write_to_online_store("ad_stats", latest)    # leave the shared workspace clean
