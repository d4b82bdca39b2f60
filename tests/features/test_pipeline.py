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
    write_events(events, "auctions", [dict(ts=r["ts"], request_id=r["request_id"], imp_id="1",
                                           bid_price=1.0, won=True, paid_price=1.0,
                                           min_bid_to_win=None) for r in req])
    (root / "world").mkdir(parents=True)
    (root / "world" / "campaigns.json").write_text(json.dumps({"version": 1, "campaigns": [
        {"campaign_id": "c", "creatives": [{"creative_id": "cr1", "topic": 2},
                                           {"creative_id": "cr2", "topic": 5}]}]}))


def test_windows_are_point_in_time(tmp_path: Path) -> None:
    _write(tmp_path, [
        ("2026-01-01 10:00", "u1", "cr1", True),
        ("2026-01-01 10:30", "u1", "cr2", False),
        ("2026-01-03 09:00", "u1", "cr1", False),
        ("2026-01-09 12:00", "u2", "cr1", False),
    ])
    views = compute_views(tmp_path / "events")
    u = views["user_stats"].set_index(["user_id", "event_timestamp"])
    # The snapshot at 11:00 sees the 10:xx hour; nothing from later hours leaks in.
    row = u.loc[("u1", _ts("2026-01-01 11:00"))]
    assert (row["user_imps_7d"], row["user_clicks_7d"], row["user_imps_1d"]) == (2, 1, 2)
    assert (row["user_imps_7d_t2"], row["user_clicks_7d_t2"], row["user_imps_7d_t5"]) == (1, 1, 1)
    # The 1-day window empties 24 h later and says so with an explicit zero.
    row = u.loc[("u1", _ts("2026-01-02 11:00"))]
    assert (row["user_imps_1d"], row["user_imps_7d"]) == (0, 2)
    assert u.loc[("u1", _ts("2026-01-03 10:00"))]["user_imps_7d"] == 3
    # 7 days (168 h) after 01-01 10:xx the first two impressions leave the window.
    assert u.loc[("u1", _ts("2026-01-08 11:00"))]["user_imps_7d"] == 1
    assert u.loc[("u1", _ts("2026-01-10 10:00"))]["user_imps_7d"] == 0
    assert views["user_stats"]["event_timestamp"].min() == _ts("2026-01-01 11:00")
    ad = views["ad_stats"].set_index(["creative_id", "event_timestamp"])
    assert ad.loc[("cr1", _ts("2026-01-01 11:00"))]["ad_clicks_7d"] == 1
    dev = views["device_stats"].set_index(["device_id", "event_timestamp"])
    assert dev.loc[("d", _ts("2026-01-01 11:00"))]["dev_clicks_1h"] == 1
    assert dev.loc[("d", _ts("2026-01-01 11:00"))]["dev_click_delay_1d"] == 5.0


def test_empty_log_gives_empty_views(tmp_path: Path) -> None:
    views = compute_views(tmp_path / "events")
    assert all(len(df) == 0 for df in views.values())
