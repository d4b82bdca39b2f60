"""Data tests for the batch pipeline: windows are point-in-time and 7 days long."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from adplatform.eventlog import write_events
from features.pipeline import compute_views


def _ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def _write(root: Path, rows: list[tuple[str, str, str, bool]]) -> None:
    """rows: (ts, user, creative, clicked)."""
    req, imp, clk = [], [], []
    for i, (ts, user, cr, clicked) in enumerate(rows):
        rid = f"r{i}"
        req.append(dict(ts=_ts(ts), request_id=rid, imp_id="1", user_id=user, device_id="d",
                        ip="1.2.3.4", ua="ua", device_type=2, os="", country="US", region="",
                        publisher_id="p1", domain="x.com", is_app=False, slot_id="s",
                        format="banner", w=300, h=250, bidfloor=0.1, tmax=100))
        imp.append(dict(ts=_ts(ts), request_id=rid, imp_id="1", user_id=user, campaign_id="c",
                        creative_id=cr, publisher_id="p1", cost=0.001))
        if clicked:
            clk.append(dict(ts=_ts(ts) + pd.Timedelta(seconds=5), request_id=rid, imp_id="1",
                            user_id=user, campaign_id="c", creative_id=cr))
    events = root / "events"
    write_events(events, "requests", req)
    write_events(events, "impressions", imp)
    write_events(events, "clicks", clk)
    (root / "world").mkdir(parents=True)
    (root / "world" / "campaigns.json").write_text(json.dumps({"version": 1, "campaigns": [
        {"campaign_id": "c", "creatives": [{"creative_id": "cr1", "topic": 2},
                                           {"creative_id": "cr2", "topic": 5}]}]}))


def test_windows_are_point_in_time(tmp_path: Path) -> None:
    _write(tmp_path, [
        ("2026-01-01 10:00", "u1", "cr1", True),
        ("2026-01-01 11:00", "u1", "cr2", False),
        ("2026-01-03 09:00", "u1", "cr1", False),
        ("2026-01-09 12:00", "u2", "cr1", False),   # 8 days later: u1's first day has left
    ])
    views = compute_views(tmp_path / "events")
    u = views["user_stats"].set_index(["user_id", "event_timestamp"])
    # Snapshot at 01-02 00:00 sees day 01-01 only; nothing from later days leaks in.
    row = u.loc[("u1", _ts("2026-01-02"))]
    assert (row["user_imps_7d"], row["user_clicks_7d"]) == (2, 1)
    assert (row["user_imps_7d_t2"], row["user_clicks_7d_t2"], row["user_imps_7d_t5"]) == (1, 1, 1)
    assert u.loc[("u1", _ts("2026-01-04"))]["user_imps_7d"] == 3
    # 01-08 00:00 covers [01-01, 01-08): still all three; 01-09 drops 01-01.
    assert u.loc[("u1", _ts("2026-01-08"))]["user_imps_7d"] == 3
    assert u.loc[("u1", _ts("2026-01-09"))]["user_imps_7d"] == 1
    # No snapshot at a boundary before the first event.
    assert _ts("2026-01-01") not in set(views["user_stats"]["event_timestamp"])
    ad = views["ad_stats"].set_index(["creative_id", "event_timestamp"])
    assert ad.loc[("cr1", _ts("2026-01-02"))]["ad_clicks_7d"] == 1


def test_empty_log_gives_empty_views(tmp_path: Path) -> None:
    views = compute_views(tmp_path / "events")
    assert all(len(df) == 0 for df in views.values())
