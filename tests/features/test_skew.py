"""Skew check: clean after materialization, and catches injected skew."""

from __future__ import annotations

import pandas as pd

from adplatform.config import Settings
from features.skew import skew_check
from features.store import materialized_until, offline_dir, open_store


def test_no_skew_after_materialize(trained_workspace: Settings) -> None:
    report = skew_check(trained_workspace, sample=200)
    assert report.mismatch, "the check compared nothing"
    assert report.ok, {k: v for k, v in report.mismatch.items() if v > 0}


def test_injected_skew_is_caught(trained_workspace: Settings) -> None:
    store = open_store(trained_workspace)
    as_of = materialized_until(store, "ad_stats")
    assert as_of is not None
    latest = pd.read_parquet(offline_dir(trained_workspace) / "ad_stats.parquet")
    # What the online store holds: each ad's last row up to the materialization's end
    # (later rows are the windows' future zeros).
    latest = latest[latest["event_timestamp"] <= pd.Timestamp(as_of)]
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


def test_online_store_serves_the_log_end_not_the_windows_future_zeros(
        trained_workspace: Settings) -> None:
    """Materialization stops at the log's last event: the busiest publisher's counts
    are what they were then (non-zero), not the zeros its windows decay to a week later,
    which the offline store already holds."""
    from adplatform.eventlog import last_event_time, read_events
    from features.ops import materialize

    ws = trained_workspace.workspace
    # Other tests append to this workspace's log: materialize what it holds now.
    result = materialize(trained_workspace)
    end = last_event_time(ws.events)
    requests = read_events(ws.events, "requests")
    assert end is not None and end >= requests["ts"].max()
    assert pd.Timestamp(result.end) == end + pd.Timedelta(seconds=1)
    store = open_store(trained_workspace)
    (as_of,) = {materialized_until(store, v) for v in ("publisher_stats", "ad_stats",
                                                      "user_stats")}
    assert pd.Timestamp(as_of) == pd.Timestamp(result.end)
    offline = pd.read_parquet(offline_dir(trained_workspace) / "publisher_stats.parquet")
    assert offline["event_timestamp"].max() > pd.Timestamp(as_of)   # the future zeros
    busiest = str(requests["publisher_id"].value_counts().index[0])
    mine = offline[(offline["publisher_id"] == busiest)
                   & (offline["event_timestamp"] <= pd.Timestamp(as_of))]
    expected = float(mine.sort_values("event_timestamp").iloc[-1]["pub_requests_7d"])
    assert expected > 0
    assert _online(trained_workspace, busiest) == expected

    # A run that loaded past the log's end (what materialize did before 2026-12-06)
    # leaves the windows' zeros online; the next default run loads the log end again.
    materialize(trained_workspace, end=(end + pd.Timedelta(days=8)).to_pydatetime())
    assert _online(trained_workspace, busiest) == 0.0
    materialize(trained_workspace)
    assert _online(trained_workspace, busiest) == expected


def _online(settings: Settings, publisher: str) -> float:
    from features.reader import OnlineReader, ReaderConfig

    store = open_store(settings)
    fields = [f.name for f in store.get_feature_view("publisher_stats").features]
    row = OnlineReader(store, ReaderConfig(cache_size=0)).read("publisher_stats", [publisher])
    return float(dict(zip(fields, row[0], strict=True))["pub_requests_7d"])
